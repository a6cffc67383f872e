//! Whole blocks of a decoder removed (granularity `layers`), in the checkpoint's bytes: each
//! block scored by the L2 norm of its linear weights (as the encoders' layers are), the lowest
//! dropped, the others renumbered from 0, and `config.json`'s block count (and a per-layer
//! `layer_types` list, which transformers 5 checks against it) cut to match. Every kept tensor
//! is copied byte for byte under its new name, so transformers loads the file as the smaller
//! model.

use super::structured::renumbered;
use crate::engine::io::st::{self, Header};
use crate::engine::model::arch::{Arch, DecoderKind};
use crate::engine::model::ModelError;

fn invalid<T>(m: String) -> Result<T, ModelError> {
    Err(ModelError::Invalid(m))
}

/// The L2 norm of each of the `layers` blocks' linear weights.
pub fn block_norms(bytes: &[u8], header: &Header, arch: Arch, layers: usize) -> Result<Vec<f32>, ModelError> {
    let mut sums = vec![0f64; layers];
    for (name, t) in &header.tensors {
        let Some((layer, _)) = arch.split_layer(name).filter(|_| arch.is_linear_weight(name)) else { continue };
        if layer >= layers {
            return invalid(format!("{name} is in block {layer}, but the model has {layers}"));
        }
        let values = st::floats(header.data(bytes, t), t.dtype)
            .ok_or_else(|| ModelError::Invalid(format!("{name} is not a float tensor")))?;
        sums[layer] += values.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>();
    }
    Ok(sums.into_iter().map(|s| s.sqrt() as f32).collect())
}

/// The checkpoint without blocks `removed` (of `layers`), the others renumbered from 0, and its
/// `config.json` with the block count cut to match.
pub fn without_blocks(
    bytes: &[u8],
    header: &Header,
    kind: DecoderKind,
    config_json: &[u8],
    layers: usize,
    removed: &[usize],
) -> Result<(Vec<u8>, Vec<u8>), ModelError> {
    let arch = Arch::Decoder(kind);
    if removed.iter().any(|&r| r >= layers) || removed.len() >= layers {
        return invalid(format!("cannot remove blocks {removed:?} of {layers}"));
    }
    let kept: Vec<(String, st::Dtype, Vec<u64>, Vec<u8>)> = header
        .in_file_order()
        .into_iter()
        .filter_map(|(name, t)| {
            renumbered(arch, removed, name).map(|to| (to, t.dtype, t.shape.clone(), header.data(bytes, t).to_vec()))
        })
        .collect();
    let file = st::serialize(&kept, header.metadata_to_keep());
    let mut config: serde_json::Value =
        serde_json::from_slice(config_json).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
    let Some(obj) = config.as_object_mut() else { return invalid("config.json is not an object".into()) };
    let left = layers - removed.len();
    // transformers 5 saves only the keys that differ from the class's defaults: the count is
    // written under the family's own key whether or not it was there.
    let key = if kind == DecoderKind::Gpt2 { "n_layer" } else { "num_hidden_layers" };
    obj.insert(key.into(), left.into());
    if let Some(serde_json::Value::Array(types)) = obj.get_mut("layer_types") {
        if types.len() == layers {
            let mut i = 0;
            types.retain(|_| {
                i += 1;
                !removed.contains(&(i - 1))
            });
        }
    }
    let config = serde_json::to_vec_pretty(&config).map_err(|e| ModelError::Invalid(e.to_string()))?;
    Ok((file, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::fused::Seq;
    use crate::engine::model::decoder::Decoder;
    use crate::engine::testing::TinyDecoder;

    #[test]
    fn a_decoder_without_a_block_runs_as_the_rest_of_it() {
        for model_type in ["gpt2", "llama", "qwen2"] {
            let m = TinyDecoder { model_type, layers: 3, ..Default::default() };
            let (config, bytes) = (m.config_json(), m.safetensors());
            let header = st::parse(&bytes).unwrap();
            let kind = DecoderKind::parse(model_type).unwrap();
            let arch = Arch::Decoder(kind);
            let norms = block_norms(&bytes, &header, arch, 3).unwrap();
            assert_eq!(norms.len(), 3);
            assert!(norms.iter().all(|n| *n > 0.0));
            let (file, cfg) = without_blocks(&bytes, &header, kind, config.as_bytes(), 3, &[1]).unwrap();
            let small = Decoder::from_files(&cfg, &file).unwrap();
            assert_eq!(small.layers.len(), 2, "{model_type}");
            // The same as the full model's embeddings, blocks 0 and 2, and head.
            let full = Decoder::from_files(config.as_bytes(), &bytes).unwrap();
            let ids: Vec<u32> = (0..12).map(|i| (i * 5 + 1) % 60).collect();
            let seqs = Seq::packed(&[12]);
            let (mut x, rope) = full.embeddings.embed(&ids, &seqs).unwrap();
            for l in [&full.layers[0], &full.layers[2]] {
                l.forward(&mut x, &seqs, rope.as_ref());
            }
            let want = full.head(&x).logits;
            let got = small.forward(&ids, &seqs).unwrap().logits;
            assert_eq!(got, want, "{model_type}");
            let c: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
            let key = if model_type == "gpt2" { "n_layer" } else { "num_hidden_layers" };
            assert_eq!(c[key], 2, "{model_type}");
            assert!(without_blocks(&bytes, &header, kind, config.as_bytes(), 3, &[0, 1, 2]).is_err());
        }
    }
}
