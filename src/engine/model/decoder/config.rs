//! `config.json` of the decoder families (GPT-2, Llama, Qwen2), read as transformers 5 reads it.
//!
//! transformers 5 saves only the keys that differ from the configuration class's defaults, so a
//! missing key means the class default, not an error: the defaults below are those of
//! `GPT2Config`, `LlamaConfig` and `Qwen2Config` in transformers 5.24 (Qwen2's
//! `num_key_value_heads` defaults to 32, not to the head count as Llama's does). A key written
//! as `null` counts as missing; a key of the wrong type or a size that is not a positive integer
//! is an error naming the key. Rotary positions are read from transformers 5's
//! `rope_parameters` or from transformers 4's `rope_theta` and `rope_scaling`, with 4's
//! precedence rules (`rope_scaling` over `rope_parameters`; a top-level
//! `original_max_position_embeddings` over the one inside).

use crate::engine::cpu::activation::Activation;
use crate::engine::model::arch::DecoderKind;
use crate::engine::model::keys::{keys, Positive};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The MLP of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp {
    /// `out(act(in(x)))` (GPT-2).
    Plain(Activation),
    /// `down(silu(gate(x))·up(x))` (Llama, Qwen2).
    SwiGlu,
}

/// How rotary positions scale their frequencies (`rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: f64,
    },
    /// YaRN (Qwen2's long-context setting): interpolation blended with extrapolation over a
    /// ramp of dimensions, cos and sin multiplied by `attention_factor`.
    Yarn {
        factor: f64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        original_max_positions: f64,
        truncate: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub kind: DecoderKind,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    /// Query heads and key/value heads as the config states them (each layer's own counts are
    /// read from its tensors).
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub eps: f64,
    pub mlp: Mlp,
    /// `None` for learned positions (GPT-2).
    pub rope: Option<RopeConfig>,
    pub tie_embeddings: bool,
    /// Biases on the query, key and value maps; on the attention output; on the MLP's maps.
    pub qkv_bias: bool,
    pub out_bias: bool,
    pub mlp_bias: bool,
    /// GPT-2's attention scale options.
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
}

#[derive(Deserialize)]
struct Gpt2Keys {
    vocab_size: Option<Positive>,
    n_positions: Option<Positive>,
    n_embd: Option<Positive>,
    n_layer: Option<Positive>,
    n_head: Option<Positive>,
    n_inner: Option<Positive>,
    // transformers' attribute_map: a config may spell them the generic way.
    hidden_size: Option<Positive>,
    max_position_embeddings: Option<Positive>,
    num_attention_heads: Option<Positive>,
    num_hidden_layers: Option<Positive>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    tie_word_embeddings: Option<bool>,
    add_cross_attention: Option<bool>,
}

#[derive(Deserialize)]
struct LlamaKeys {
    vocab_size: Option<Positive>,
    hidden_size: Option<Positive>,
    intermediate_size: Option<Positive>,
    num_hidden_layers: Option<Positive>,
    num_attention_heads: Option<Positive>,
    num_key_value_heads: Option<Positive>,
    head_dim: Option<Positive>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<Positive>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    // Qwen2.
    use_sliding_window: Option<bool>,
    max_window_layers: Option<u64>,
    layer_types: Option<Vec<String>>,
}

fn size(v: Option<Positive>, default: u64) -> usize {
    v.map_or(default, |p| p.0) as usize
}

impl DecoderConfig {
    /// Parse `config.json` of a decoder family. Errors name the key at fault, without the
    /// file's name (callers add it).
    pub fn parse(config_json: &[u8]) -> Result<DecoderConfig, String> {
        let v: Value = serde_json::from_slice(config_json).map_err(|e| format!("not valid JSON: {e}"))?;
        DecoderConfig::from_value(&v)
    }

    /// [`parse`](Self::parse) on the JSON already read.
    pub fn from_value(v: &Value) -> Result<DecoderConfig, String> {
        let Some(obj) = v.as_object() else { return Err("not a JSON object".into()) };
        let model_type = obj.get("model_type").and_then(Value::as_str).ok_or("missing model_type")?;
        let kind = DecoderKind::parse(model_type)
            .ok_or_else(|| format!("model_type {model_type:?} is not a decoder family (gpt2, llama, qwen2)"))?;
        // `null` is the class default, as transformers reads it.
        let v = Value::Object(obj.iter().filter(|(_, x)| !x.is_null()).map(|(k, x)| (k.clone(), x.clone())).collect());
        let cfg = match kind {
            DecoderKind::Gpt2 => gpt2(keys(&v)?)?,
            DecoderKind::Llama | DecoderKind::Qwen2 => llama(kind, keys(&v)?, v.as_object().unwrap())?,
        };
        if cfg.heads == 0 || cfg.kv_heads == 0 || cfg.heads % cfg.kv_heads != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                cfg.heads, cfg.kv_heads
            ));
        }
        Ok(cfg)
    }
}

fn gpt2(k: Gpt2Keys) -> Result<DecoderConfig, String> {
    let hidden = size(k.n_embd.or(k.hidden_size), 768);
    let heads = size(k.n_head.or(k.num_attention_heads), 12);
    if !hidden.is_multiple_of(heads) {
        return Err(format!("n_embd {hidden} is not a multiple of n_head {heads}"));
    }
    if k.add_cross_attention == Some(true) {
        return Err("add_cross_attention: GPT-2 with cross-attention (an encoder-decoder) is not supported".into());
    }
    let act = k.activation_function.unwrap_or_else(|| "gelu_new".into());
    let activation = Activation::parse(&act).ok_or_else(|| format!("activation_function {act:?} is not supported"))?;
    Ok(DecoderConfig {
        kind: DecoderKind::Gpt2,
        vocab: size(k.vocab_size, 50257),
        hidden,
        layers: size(k.n_layer.or(k.num_hidden_layers), 12),
        heads,
        kv_heads: heads,
        head_dim: hidden / heads,
        intermediate: k.n_inner.map_or(4 * hidden, |p| p.0 as usize),
        max_positions: size(k.n_positions.or(k.max_position_embeddings), 1024),
        eps: k.layer_norm_epsilon.unwrap_or(1e-5),
        mlp: Mlp::Plain(activation),
        rope: None,
        tie_embeddings: k.tie_word_embeddings.unwrap_or(true),
        qkv_bias: true,
        out_bias: true,
        mlp_bias: true,
        scale_attn_weights: k.scale_attn_weights.unwrap_or(true),
        scale_attn_by_inverse_layer_idx: k.scale_attn_by_inverse_layer_idx.unwrap_or(false),
    })
}

fn llama(kind: DecoderKind, k: LlamaKeys, raw: &Map<String, Value>) -> Result<DecoderConfig, String> {
    let qwen = kind == DecoderKind::Qwen2;
    let hidden = size(k.hidden_size, 4096);
    let heads = size(k.num_attention_heads, 32);
    let kv_heads = match k.num_key_value_heads {
        Some(p) => p.0 as usize,
        None if qwen => 32,
        None => heads,
    };
    let head_dim = match k.head_dim {
        Some(p) => p.0 as usize,
        None if !hidden.is_multiple_of(heads) => {
            return Err(format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}"))
        }
        None => hidden / heads,
    };
    if head_dim % 2 != 0 {
        return Err(format!("head_dim {head_dim} must be even for rotary positions"));
    }
    let act = k.hidden_act.unwrap_or_else(|| "silu".into());
    if act != "silu" {
        return Err(format!("hidden_act {act:?} is not supported (the SwiGLU MLP needs silu)"));
    }
    let layers = size(k.num_hidden_layers, 32);
    if qwen && k.use_sliding_window == Some(true) {
        let window_from = k.max_window_layers.unwrap_or(28) as usize;
        let sliding = match &k.layer_types {
            Some(t) => t.iter().any(|t| t == "sliding_attention"),
            None => window_from < layers,
        };
        if sliding {
            return Err("use_sliding_window: sliding-window attention is not supported".into());
        }
    }
    let max_positions = size(k.max_position_embeddings, if qwen { 32768 } else { 2048 });
    Ok(DecoderConfig {
        kind,
        vocab: size(k.vocab_size, if qwen { 151936 } else { 32000 }),
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        intermediate: size(k.intermediate_size, if qwen { 22016 } else { 11008 }),
        max_positions,
        eps: k.rms_norm_eps.unwrap_or(1e-6),
        mlp: Mlp::SwiGlu,
        rope: Some(rope(raw, max_positions)?),
        tie_embeddings: k.tie_word_embeddings.unwrap_or(false),
        qkv_bias: qwen || k.attention_bias.unwrap_or(false),
        out_bias: !qwen && k.attention_bias.unwrap_or(false),
        mlp_bias: !qwen && k.mlp_bias.unwrap_or(false),
        scale_attn_weights: true,
        scale_attn_by_inverse_layer_idx: false,
    })
}

/// A number inside the rope parameters; `key` names it for errors.
fn number(p: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("rope_parameters.{key} must be a number")),
    }
}

fn required(p: &Map<String, Value>, key: &str, kind: &str) -> Result<f64, String> {
    number(p, key)?.ok_or_else(|| format!("rope_parameters.{key} is required for rope_type {kind:?}"))
}

/// Rotary positions as transformers 5 standardises them (`standardize_rope_params`).
fn rope(raw: &Map<String, Value>, max_positions: usize) -> Result<RopeConfig, String> {
    let empty = Map::new();
    let params = match (raw.get("rope_scaling"), raw.get("rope_parameters")) {
        (Some(Value::Object(m)), _) if !m.is_empty() => m,
        (Some(v), _) if !v.is_null() && !v.is_object() => return Err("rope_scaling must be an object".into()),
        (_, Some(Value::Object(m))) => m,
        (_, Some(v)) if !v.is_null() => return Err("rope_parameters must be an object".into()),
        _ => &empty,
    };
    let theta = match number(params, "rope_theta")? {
        Some(t) => t,
        None => match raw.get("rope_theta") {
            None | Some(Value::Null) => 10_000.0,
            Some(v) => v.as_f64().ok_or("rope_theta must be a number")?,
        },
    };
    if theta <= 0.0 {
        return Err("rope_theta must be positive".into());
    }
    let partial = match number(params, "partial_rotary_factor")? {
        Some(f) => Some(f),
        None => raw.get("partial_rotary_factor").and_then(Value::as_f64),
    };
    if partial.is_some_and(|f| f != 1.0) {
        return Err("partial_rotary_factor: rotary positions on part of a head are not supported".into());
    }
    let kind = match params.get("rope_type").or_else(|| params.get("type")) {
        None | Some(Value::Null) => "default",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("rope_parameters.rope_type must be a string".into()),
    };
    let original = || -> Result<f64, String> {
        match raw.get("original_max_position_embeddings").and_then(Value::as_f64) {
            Some(n) => Ok(n),
            None => Ok(number(params, "original_max_position_embeddings")?.unwrap_or(max_positions as f64)),
        }
    };
    let positive =
        |x: f64, key: &str| if x > 0.0 { Ok(x) } else { Err(format!("rope_parameters.{key} must be positive")) };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: positive(required(params, "factor", kind)?, "factor")? },
        "llama3" => {
            let (low, high) = (required(params, "low_freq_factor", kind)?, required(params, "high_freq_factor", kind)?);
            if high <= low {
                return Err("rope_parameters.high_freq_factor must be greater than low_freq_factor".into());
            }
            RopeScaling::Llama3 {
                factor: positive(required(params, "factor", kind)?, "factor")?,
                low_freq_factor: positive(low, "low_freq_factor")?,
                high_freq_factor: high,
                original_max_positions: positive(original()?, "original_max_position_embeddings")?,
            }
        }
        "yarn" => {
            let original_max_positions = positive(original()?, "original_max_position_embeddings")?;
            let factor = match number(params, "factor")? {
                Some(f) => positive(f, "factor")?,
                None => max_positions as f64 / original_max_positions,
            };
            let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor = match number(params, "attention_factor")? {
                Some(a) => a,
                None => match (number(params, "mscale")?, number(params, "mscale_all_dim")?) {
                    (Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                },
            };
            // `x or default`: 0 means the default too.
            let or = |x: Option<f64>, d: f64| x.filter(|v| *v != 0.0).unwrap_or(d);
            let truncate = match params.get("truncate") {
                None | Some(Value::Null) => true,
                Some(v) => v.as_bool().ok_or("rope_parameters.truncate must be true or false")?,
            };
            RopeScaling::Yarn {
                factor,
                attention_factor,
                beta_fast: or(number(params, "beta_fast")?, 32.0),
                beta_slow: or(number(params, "beta_slow")?, 1.0),
                original_max_positions,
                truncate,
            }
        }
        other => {
            return Err(format!(
                "rope_parameters.rope_type {other:?} is not supported (supported: default, linear, llama3, yarn)"
            ))
        }
    };
    Ok(RopeConfig { theta, scaling })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_take_the_class_defaults() {
        let g = DecoderConfig::parse(br#"{"model_type": "gpt2"}"#).unwrap();
        assert_eq!(
            (g.vocab, g.hidden, g.layers, g.heads, g.intermediate, g.max_positions),
            (50257, 768, 12, 12, 3072, 1024)
        );
        assert!(g.tie_embeddings && g.rope.is_none() && g.mlp == Mlp::Plain(Activation::GeluTanh));
        let l = DecoderConfig::parse(br#"{"model_type": "llama", "num_attention_heads": 8}"#).unwrap();
        assert_eq!((l.hidden, l.heads, l.kv_heads, l.head_dim, l.intermediate), (4096, 8, 8, 512, 11008));
        assert!(!l.tie_embeddings && !l.qkv_bias && !l.out_bias);
        assert_eq!(l.rope, Some(RopeConfig { theta: 10000.0, scaling: RopeScaling::Default }));
        // Qwen2's key/value heads default to 32 whatever the head count.
        let q = DecoderConfig::parse(br#"{"model_type": "qwen2", "num_attention_heads": 64}"#).unwrap();
        assert_eq!((q.heads, q.kv_heads, q.vocab, q.max_positions), (64, 32, 151936, 32768));
        assert!(q.qkv_bias && !q.out_bias && !q.mlp_bias);
        // null is the default.
        let n = DecoderConfig::parse(br#"{"model_type": "gpt2", "n_inner": null, "n_embd": 64, "n_head": 4}"#).unwrap();
        assert_eq!(n.intermediate, 256);
    }

    #[test]
    fn rope_in_both_formats() {
        let v4 = br#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}"#;
        let v5 = br#"{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#;
        let (a, b) = (DecoderConfig::parse(v4).unwrap(), DecoderConfig::parse(v5).unwrap());
        assert_eq!(a.rope, b.rope);
        let r = a.rope.unwrap();
        assert_eq!(r.theta, 500000.0);
        assert!(matches!(r.scaling, RopeScaling::Llama3 { factor: 8.0, original_max_positions: 8192.0, .. }));
        let yarn = br#"{"model_type": "qwen2", "max_position_embeddings": 131072,
            "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}"#;
        let RopeScaling::Yarn { attention_factor, beta_fast, beta_slow, truncate, .. } =
            DecoderConfig::parse(yarn).unwrap().rope.unwrap().scaling
        else {
            panic!()
        };
        assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
    }

    #[test]
    fn faults_name_their_key() {
        let bad = |s: &str| DecoderConfig::parse(s.as_bytes()).unwrap_err();
        assert!(bad(r#"{"model_type": "llama", "hidden_size": -4}"#).contains("hidden_size"));
        assert!(bad(
            r#"{"model_type": "llama", "hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 4}"#
        )
        .contains("num_key_value_heads"));
        assert!(bad(r#"{"model_type": "llama", "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}"#)
            .contains("dynamic"));
        assert!(bad(r#"{"model_type": "llama", "rope_parameters": {"rope_type": "linear"}}"#).contains("factor"));
        assert!(bad(r#"{"model_type": "llama", "hidden_act": "gelu"}"#).contains("hidden_act"));
        assert!(bad(r#"{"model_type": "qwen2", "use_sliding_window": true}"#).contains("sliding"));
        assert!(bad(r#"{"model_type": "gpt2", "n_embd": 10, "n_head": 4}"#).contains("n_head"));
        assert!(bad(r#"{"model_type": "gpt2", "activation_function": "swish"}"#).contains("activation_function"));
        assert!(bad(r#"{"model_type": "bert"}"#).contains("not a decoder"));
        assert!(bad(r#"{"model_type": "llama", "tie_word_embeddings": "yes"}"#).contains("tie_word_embeddings"));
    }
}
