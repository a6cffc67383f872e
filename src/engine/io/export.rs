//! Writing a (possibly reshaped) model back as a Hugging Face directory: every tensor under its
//! original name and dtype, in the original file order; `config.json` updated for the layout.

use super::st::{self, Dtype, Header};
use crate::engine::model::arch::{canonical_name, Family};
use crate::engine::model::{EncoderConfig, ModelError, Result, Weights};
use candle_core::{DType, Tensor};
use serde_json::Value;

fn to_candle(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::U32 => DType::U32,
        Dtype::U8 => DType::U8,
        _ => return None,
    })
}

/// Little-endian bytes of a tensor converted to `dtype`.
pub fn tensor_bytes(t: &Tensor, dtype: Dtype) -> Result<Vec<u8>> {
    let cd = to_candle(dtype).ok_or_else(|| ModelError::Invalid(format!("cannot write dtype {}", dtype.name())))?;
    let t = t.to_dtype(cd)?.flatten_all()?;
    Ok(match cd {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => t.to_vec1::<i64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I32 => t.to_vec1::<i32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I16 => t.to_vec1::<i16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U32 => t.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        other => return Err(ModelError::Invalid(format!("cannot write dtype {other:?}"))),
    })
}

/// Serialize `w` with the names, dtypes, order and metadata of the original file; shapes are
/// those of `w` (smaller after physical removal).
pub fn write_like(original: &Header, family: Family, w: &Weights) -> Result<Vec<u8>> {
    write_renamed(original, family, w, &|n| Some(n.to_string()))
}

/// As [`write_like`], with `rename` mapping each original canonical name to its name in `w`
/// (`None`: the tensor is dropped). The family prefix of the original name is kept.
pub fn write_renamed(
    original: &Header,
    family: Family,
    w: &Weights,
    rename: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<u8>> {
    let order = original.in_file_order();
    let mut out = Vec::with_capacity(order.len());
    for (name, info) in order {
        let canonical = canonical_name(family, name);
        let Some(new) = rename(canonical) else { continue };
        let t = w.get(&new)?;
        let prefix = &name[..name.len() - canonical.len()];
        let shape = t.dims().iter().map(|&d| d as u64).collect();
        out.push((format!("{prefix}{new}"), info.dtype, shape, tensor_bytes(&t, info.dtype)?));
    }
    Ok(st::serialize(&out, original.metadata_to_keep()))
}

/// `config.json` for an export: `intermediate_size` set when every layer has the same FFN width;
/// for the compact layout, each layer's head count and FFN width under `secateur_layers`.
pub fn config_json(original: &[u8], cfg: &EncoderConfig, compact: bool) -> Result<Vec<u8>> {
    let mut v: Value =
        serde_json::from_slice(original).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
    let o = v.as_object_mut().ok_or_else(|| ModelError::Invalid("config.json is not an object".into()))?;
    let distil = cfg.family == Family::DistilBert;
    let (layers_key, ffn_key) =
        if distil { ("n_layers", "hidden_dim") } else { ("num_hidden_layers", "intermediate_size") };
    o.insert(layers_key.into(), cfg.layers.len().into());
    let widths: std::collections::BTreeSet<usize> = cfg.layers.iter().map(|l| l.ffn).collect();
    if widths.len() == 1 {
        o.insert(ffn_key.into(), (*widths.iter().next().unwrap()).into());
    }
    // Shapes that config.json's standard keys cannot state (heads physically removed from some
    // layer, uneven FFN widths: e.g. pruning a model that is already compact) keep the per-layer
    // record even in the hf layout; otherwise a stale one is dropped.
    let heads_key = if distil { "n_heads" } else { "num_attention_heads" };
    let heads = o.get(heads_key).and_then(Value::as_u64).unwrap_or(0) as usize;
    let standard = widths.len() <= 1 && cfg.layers.iter().all(|l| l.heads == heads);
    if compact || !standard {
        let layers: Vec<Value> = cfg
            .layers
            .iter()
            .map(|l| serde_json::json!({"num_attention_heads": l.heads, "intermediate_size": l.ffn}))
            .collect();
        o.insert("secateur_layout".into(), "compact".into());
        o.insert("secateur_layers".into(), layers.into());
    } else {
        o.remove("secateur_layout");
        o.remove("secateur_layers");
    }
    Ok(serde_json::to_vec_pretty(&v).expect("JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::TinyModel;
    use candle_core::Device;

    #[test]
    fn writing_an_unchanged_model_reproduces_the_file() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            for prefix in [false, true] {
                let m = TinyModel { dtype, with_prefix_and_head: prefix, ..Default::default() };
                let bytes = m.safetensors();
                let h = st::parse(&bytes).unwrap();
                let w = Weights::from_safetensors(&bytes, Family::Bert, &Device::Cpu).unwrap();
                let again = write_like(&h, Family::Bert, &w).unwrap();
                assert_eq!(again, bytes, "{dtype:?} prefix={prefix}");
            }
        }
    }
}
