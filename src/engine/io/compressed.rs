//! Exports in the `compressed-tensors` format, which llm-compressor writes and transformers 5
//! loads with the `compressed-tensors` package: here its `int-quantized` format (W8A8 int8).
//!
//! Every target weight `M.weight` (`[out, in]`, an `nn.Linear`'s) becomes int8 `M.weight` with
//! `M.weight_scale` (`[out, 1]`, in the weight's own float dtype): symmetric per output channel
//! (`engine::cpu::int8::quantize_per_channel`); every other tensor is copied byte for byte.
//! `config.json` gains `quantization_config` with one config group whose `targets` name exactly
//! the quantized modules (one anchored regular expression each, with or without the base-model
//! prefix, so the task classes load it as well as `AutoModel`): int8 weights per channel,
//! activations int8 per token at run time (`dynamic`).

use super::st::{self, Dtype, Header};
use crate::engine::cpu::int8;
use crate::engine::model::arch::Arch;
use crate::engine::model::ModelError;
use serde::{Deserialize, Serialize};

/// What the quantization step did (`report.json`'s `quantization`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantized {
    /// `int8`.
    pub method: String,
    /// `dynamic`: activations quantized per token at run time.
    pub scheme: String,
    /// The compressed-tensors format of the export.
    pub format: String,
    /// How the weights are quantized.
    pub weights: String,
    /// The quantized weight tensors.
    pub tensors: Vec<String>,
    /// `model.safetensors` of the model before quantization and of `compressed/`.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The int8 (`int-quantized`, dynamic per-token activations) export of a checkpoint: its
/// `model.safetensors` and `config.json`, and what was done. `targets` are weight tensors
/// named `….weight`, stored `[out, in]`.
pub fn int8_dynamic(
    weights: &[u8],
    header: &Header,
    config_json: &[u8],
    arch: Arch,
    targets: &[String],
) -> Result<(Vec<u8>, Vec<u8>, Quantized), ModelError> {
    let invalid = |m: String| ModelError::Invalid(m);
    let mut config: serde_json::Value =
        serde_json::from_slice(config_json).map_err(|e| invalid(format!("config.json: {e}")))?;
    let Some(obj) = config.as_object_mut() else { return Err(invalid("config.json is not an object".into())) };
    if targets.is_empty() {
        return Err(invalid("no linear weight to quantize".into()));
    }
    let order = header.in_file_order();
    let mut out = Vec::with_capacity(order.len() + targets.len());
    let mut modules = Vec::with_capacity(targets.len());
    for (name, t) in order {
        let data = header.data(weights, t);
        if !targets.contains(name) {
            out.push((name.clone(), t.dtype, t.shape.clone(), data.to_vec()));
            continue;
        }
        let module = name
            .strip_suffix(".weight")
            .ok_or_else(|| invalid(format!("{name}: only a module's `weight` can be quantized")))?;
        if arch.stores_transposed(name) {
            return Err(invalid(format!(
                "{name}: GPT-2's Conv1D weights are not nn.Linear modules, which compressed-tensors quantizes"
            )));
        }
        let [o, i] = t.shape[..] else { return Err(invalid(format!("{name}: shape {:?} is not [out, in]", t.shape))) };
        let w =
            st::floats(data, t.dtype).ok_or_else(|| invalid(format!("{name}: dtype {:?} is not a float", t.dtype)))?;
        let (q, scales) = int8::quantize_per_channel(&w, o as usize, i as usize);
        let mut scale_bytes = vec![0u8; scales.len() * t.dtype.size() as usize];
        st::write_floats(&scales, t.dtype, &mut scale_bytes);
        out.push((name.clone(), Dtype::I8, t.shape.clone(), q.iter().map(|v| *v as u8).collect()));
        out.push((format!("{module}.weight_scale"), t.dtype, vec![o, 1], scale_bytes));
        let canonical = arch.canonical_name(module);
        modules.push(format!("re:(^|.*\\.){}$", regex::escape(canonical)));
    }
    let file = st::serialize(&out, header.metadata_to_keep());
    obj.insert("quantization_config".into(), quantization_config(&modules));
    let config_out = serde_json::to_vec_pretty(&config).map_err(|e| invalid(e.to_string()))?;
    let report = Quantized {
        method: "int8".into(),
        scheme: "dynamic".into(),
        format: "int-quantized".into(),
        weights: "symmetric per output channel".into(),
        tensors: targets.to_vec(),
        bytes_before: weights.len() as u64,
        bytes_after: file.len() as u64,
    };
    Ok((file, config_out, report))
}

/// Which file a fault of a compressed checkpoint is in, and the fault.
pub type Fault = (&'static str, String);

/// The compressed-tensors side of a checkpoint, checked from `config.json` and the header alone
/// (an upload is checked before its weights are read): `Ok(false)` when `config.json` has no
/// compressed-tensors `quantization_config`; `Ok(true)` for an `int-quantized` checkpoint whose
/// every int8 tensor `[out, in]` has its float `…_scale` `[out, 1]` and every scale its int8
/// tensor; otherwise the fault. Other compressed-tensors formats are refused.
pub fn check(header: &Header, config_json: &[u8]) -> Result<bool, Fault> {
    let config: serde_json::Value =
        serde_json::from_slice(config_json).map_err(|e| ("config.json", format!("not JSON: {e}")))?;
    let q = &config["quantization_config"];
    if q["quant_method"] != "compressed-tensors" {
        return Ok(false);
    }
    if q["format"] != "int-quantized" {
        return Err((
            "config.json",
            format!("quantization_config.format {} is not supported (int-quantized is)", q["format"]),
        ));
    }
    let fault = |m: String| Err(("model.safetensors", m));
    let mut quantized = 0;
    for (name, t) in &header.tensors {
        if let Some(weight) = name.strip_suffix("_scale") {
            if header.tensors.get(weight).is_none_or(|w| w.dtype != Dtype::I8) {
                return fault(format!("{name} scales {weight}, which is not an int8 tensor of the file"));
            }
            continue;
        }
        if t.dtype != Dtype::I8 {
            continue;
        }
        let scale_name = format!("{name}_scale");
        let Some(s) = header.tensors.get(&scale_name) else {
            return fault(format!("{name} is int8 but {scale_name} is missing"));
        };
        let [o, _] = t.shape[..] else { return fault(format!("{name}: shape {:?} is not [out, in]", t.shape)) };
        if s.shape != [o, 1] || !s.dtype.is_float() {
            return fault(format!(
                "{scale_name}: {:?} of shape {:?}, expected floats of shape [{o}, 1]",
                s.dtype, s.shape
            ));
        }
        quantized += 1;
    }
    if quantized == 0 {
        return fault("config.json names a compressed-tensors int8 checkpoint but no tensor is int8".into());
    }
    Ok(true)
}

/// A decompressed checkpoint: `model.safetensors` and `config.json` bytes.
pub type Decompressed = (Vec<u8>, Vec<u8>);

/// The parameters of a compressed checkpoint: its int8 weights and float tensors, the scales
/// not counted.
pub fn parameters(header: &Header) -> u64 {
    header
        .tensors
        .iter()
        .filter(|(n, t)| t.dtype == Dtype::I8 || (t.dtype.is_float() && !n.ends_with("_scale")))
        .map(|(_, t)| t.numel())
        .sum()
}

/// A checkpoint as the float loaders read it: a compressed-tensors `int-quantized` one turned
/// back into floats — each int8 `M.weight` times its `M.weight_scale` (per output channel) in
/// the scale's dtype, the scales dropped, every other tensor copied — with `quantization_config`
/// taken out of `config.json`; `None` when the checkpoint is not compressed. Quantizing these
/// weights again with the same per-channel rule gives back the same int8 values (the runtime's
/// int8 representation, a new `quantization` step).
pub fn decompress(weights: &[u8], header: &Header, config_json: &[u8]) -> Result<Option<Decompressed>, ModelError> {
    let invalid = |(file, m): Fault| ModelError::Invalid(format!("{file}: {m}"));
    if !check(header, config_json).map_err(invalid)? {
        return Ok(None);
    }
    let data = |t: &st::TensorInfo| header.data(weights, t);
    let order = header.in_file_order();
    let mut out = Vec::with_capacity(order.len());
    for (name, t) in order {
        if name.ends_with("_scale") {
            continue;
        }
        if t.dtype != Dtype::I8 {
            out.push((name.clone(), t.dtype, t.shape.clone(), data(t).to_vec()));
            continue;
        }
        // `check` vouched for the scale's presence, shape and dtype.
        let s = &header.tensors[&format!("{name}_scale")];
        let cols = t.shape[1] as usize;
        let scales = st::floats(data(s), s.dtype).expect("a float scale");
        let w: Vec<f32> = data(t).iter().enumerate().map(|(k, b)| f32::from(*b as i8) * scales[k / cols]).collect();
        let mut bytes = vec![0u8; w.len() * s.dtype.size() as usize];
        st::write_floats(&w, s.dtype, &mut bytes);
        out.push((name.clone(), s.dtype, t.shape.clone(), bytes));
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(config_json).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
    if let Some(obj) = config.as_object_mut() {
        obj.remove("quantization_config");
    }
    let config = serde_json::to_vec_pretty(&config).map_err(|e| ModelError::Invalid(e.to_string()))?;
    Ok(Some((st::serialize(&out, header.metadata_to_keep()), config)))
}

/// compressed-tensors' `quantization_config` for W8A8: int8 weights per channel, int8
/// activations per token computed at run time, on the modules `targets` names.
fn quantization_config(targets: &[String]) -> serde_json::Value {
    let args = |strategy: &str, dynamic: bool| {
        serde_json::json!({
            "num_bits": 8, "type": "int", "symmetric": true, "strategy": strategy,
            "dynamic": dynamic, "group_size": null,
        })
    };
    serde_json::json!({
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": targets,
                "weights": args("channel", false),
                "input_activations": args("token", true),
                "output_activations": null,
                "format": "int-quantized",
            }
        },
        "ignore": [],
        "kv_cache_scheme": null,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::ModelConfig;
    use crate::engine::testing::TinyModel;

    #[test]
    fn writes_int8_weights_with_scales_and_leaves_the_rest_alone() {
        let m = TinyModel { with_prefix_and_head: true, ..TinyModel::default() };
        let (config, weights) = (m.config_json(), m.safetensors());
        let header = st::parse(&weights).unwrap();
        let arch = ModelConfig::parse(config.as_bytes()).unwrap().arch;
        let targets: Vec<String> = header.tensors.keys().filter(|n| arch.is_linear_weight(n)).cloned().collect();
        assert_eq!(targets.len(), 12, "6 linear maps per layer, 2 layers");
        let (file, cfg, report) = int8_dynamic(&weights, &header, config.as_bytes(), arch, &targets).unwrap();
        let out = st::parse(&file).unwrap();
        let tensor = |h: &Header, f: &[u8], n: &str| {
            let t = &h.tensors[n];
            (
                t.dtype,
                t.shape.clone(),
                f[h.data_start as usize + t.begin as usize..h.data_start as usize + t.end as usize].to_vec(),
            )
        };
        for name in header.tensors.keys() {
            let (dtype, shape, data) = tensor(&header, &weights, name);
            let (odtype, oshape, odata) = tensor(&out, &file, name);
            assert_eq!(oshape, shape, "{name}");
            if !targets.contains(name) {
                assert_eq!((odtype, odata), (dtype, data), "{name} is copied unchanged");
                continue;
            }
            assert_eq!(odtype, Dtype::I8, "{name}");
            let w = st::floats(&data, dtype).unwrap();
            let (q, scales) = int8::quantize_per_channel(&w, shape[0] as usize, shape[1] as usize);
            assert_eq!(odata, q.iter().map(|v| *v as u8).collect::<Vec<_>>(), "{name}");
            let scale_name = format!("{}_scale", name);
            let (sd, ss, sdata) = tensor(&out, &file, &scale_name);
            assert_eq!((sd, ss), (dtype, vec![shape[0], 1]));
            assert_eq!(st::floats(&sdata, sd).unwrap(), scales);
            // Dequantized, every weight is within half a step of the original.
            for (r, row) in w.chunks(shape[1] as usize).enumerate() {
                for (k, v) in row.iter().enumerate() {
                    let back = f32::from(q[r * shape[1] as usize + k]) * scales[r];
                    assert!((back - v).abs() <= scales[r] * 0.5 + 1e-7);
                }
            }
        }
        assert_eq!(out.tensors.len(), header.tensors.len() + targets.len());
        let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
        let q = &cfg["quantization_config"];
        assert_eq!(q["quant_method"], "compressed-tensors");
        assert_eq!(q["format"], "int-quantized");
        let group = &q["config_groups"]["group_0"];
        assert_eq!(group["weights"]["strategy"], "channel");
        assert_eq!(group["input_activations"]["strategy"], "token");
        assert_eq!(group["input_activations"]["dynamic"], true);
        let patterns: Vec<regex::Regex> = group["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| regex::Regex::new(t.as_str().unwrap().strip_prefix("re:").unwrap()).unwrap())
            .collect();
        // Each pattern names its module with or without the `bert.` prefix, and nothing else.
        assert!(patterns.iter().any(|p| p.is_match("bert.encoder.layer.1.output.dense")));
        assert!(patterns.iter().any(|p| p.is_match("encoder.layer.1.output.dense")));
        assert!(!patterns.iter().any(|p| p.is_match("classifier") || p.is_match("bert.pooler.dense")));
        assert_eq!(cfg["hidden_size"], 32, "the rest of config.json is kept");
        assert_eq!((report.bytes_before, report.bytes_after), (weights.len() as u64, file.len() as u64));
        assert!(report.bytes_after < report.bytes_before);
    }

    #[test]
    fn decompresses_what_it_wrote() {
        let m = TinyModel::default();
        let (config, weights) = (m.config_json(), m.safetensors());
        let header = st::parse(&weights).unwrap();
        let arch = ModelConfig::parse(config.as_bytes()).unwrap().arch;
        let targets: Vec<String> = header.tensors.keys().filter(|n| arch.is_linear_weight(n)).cloned().collect();
        let (file, cfg, _) = int8_dynamic(&weights, &header, config.as_bytes(), arch, &targets).unwrap();
        let qh = st::parse(&file).unwrap();
        assert_eq!(check(&qh, &cfg), Ok(true));
        let (back, back_cfg) = decompress(&file, &qh, &cfg).unwrap().unwrap();
        let back_cfg: serde_json::Value = serde_json::from_slice(&back_cfg).unwrap();
        assert!(back_cfg.get("quantization_config").is_none());
        assert_eq!(back_cfg["hidden_size"], 32);
        let bh = st::parse(&back).unwrap();
        assert_eq!(bh.tensors.keys().collect::<Vec<_>>(), header.tensors.keys().collect::<Vec<_>>());
        let floats = |h: &Header, f: &[u8], n: &str| {
            let t = &h.tensors[n];
            st::floats(&f[(h.data_start + t.begin) as usize..(h.data_start + t.end) as usize], t.dtype).unwrap()
        };
        for name in header.tensors.keys() {
            let (orig, got) = (floats(&header, &weights, name), floats(&bh, &back, name));
            if !targets.contains(name) {
                assert_eq!(got, orig, "{name}");
                continue;
            }
            let t = &header.tensors[name];
            let (q, scales) = int8::quantize_per_channel(&orig, t.shape[0] as usize, t.shape[1] as usize);
            let want: Vec<f32> =
                q.iter().enumerate().map(|(k, v)| f32::from(*v) * scales[k / t.shape[1] as usize]).collect();
            assert_eq!(got, want, "{name}");
            // Quantized again, the same int8 values.
            assert_eq!(int8::quantize_per_channel(&got, t.shape[0] as usize, t.shape[1] as usize).0, q, "{name}");
        }
        // Not compressed: nothing to do.
        assert_eq!(check(&header, config.as_bytes()), Ok(false));
        assert!(decompress(&weights, &header, config.as_bytes()).unwrap().is_none());
        // A scale missing, a stray scale, another format: each names its file.
        let without = |drop: &str| {
            let mut h = qh.clone();
            h.tensors.remove(drop);
            h
        };
        let scale = format!("{}_scale", targets[0]);
        let (file_at, msg) = check(&without(&scale), &cfg).unwrap_err();
        assert_eq!(file_at, "model.safetensors");
        assert!(msg.contains(&scale) && msg.contains("missing"), "{msg}");
        let (file_at, msg) = check(&without(&targets[0]), &cfg).unwrap_err();
        assert!(file_at == "model.safetensors" && msg.contains("not an int8 tensor"), "{msg}");
        let mut other: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
        other["quantization_config"]["format"] = "pack-quantized".into();
        let (file_at, msg) = check(&qh, &serde_json::to_vec(&other).unwrap()).unwrap_err();
        assert!(file_at == "config.json" && msg.contains("pack-quantized"), "{msg}");
        assert!(decompress(&file, &without(&scale), &cfg).is_err());
    }

    #[test]
    fn refuses_gpt2_conv1d() {
        let m = crate::engine::testing::TinyDecoder { model_type: "gpt2", ..Default::default() };
        let (config, weights) = (m.config_json(), m.safetensors());
        let header = st::parse(&weights).unwrap();
        let arch = ModelConfig::parse(config.as_bytes()).unwrap().arch;
        let targets: Vec<String> = header.tensors.keys().filter(|n| arch.is_linear_weight(n)).cloned().collect();
        let err = int8_dynamic(&weights, &header, config.as_bytes(), arch, &targets).unwrap_err();
        assert!(err.to_string().contains("Conv1D"), "{err}");
    }
}
