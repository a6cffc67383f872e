//! `config.json`, parsed once and checked against the checkpoint's tensors: one serde struct per family with the keys that family's
//! checkpoints use (`num_hidden_layers`/`hidden_size`… for BERT and RoBERTa, `n_layers`/`dim`…
//! for DistilBERT), turned into one [`ModelConfig`] that the upload check, the encoder, the
//! executors and training all read. Keys Secateur does not use are ignored (and kept by the
//! exports, which edit the original file).
//!
//! The sizes must be positive integers. Optional keys that Hugging Face may write as `null` or
//! leave out (`pad_token_id`, `layer_norm_eps`, the dropout rates, …) fall back to the family's
//! default; so does a value of the wrong type, as the loaders did before this parser existed.

use super::arch::{Arch, Family};
use super::decoder::config::DecoderConfig;
use super::keys::{keys, lenient, Positive};
use crate::engine::io::st::{Dtype, Header, TensorInfo};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Dropout probabilities, as the checkpoint's `config.json` sets them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Embeddings, attention output (BERT, RoBERTa) and FFN output.
    pub hidden: f32,
    pub attention: f32,
    /// In the classification head.
    pub classifier: f32,
}

impl Dropout {
    pub const NONE: Dropout = Dropout { hidden: 0.0, attention: 0.0, classifier: 0.0 };
}

/// What Secateur reads of a checkpoint's `config.json`, the same for every family.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// A decoder family's whole configuration (`None` for the encoder families).
    pub decoder: Option<DecoderConfig>,
    pub num_layers: u64,
    pub hidden_size: u64,
    pub num_heads: u64,
    /// The FFN width the config states (each layer's own width is read from its tensors).
    pub intermediate_size: u64,
    pub vocab_size: u64,
    /// Required by the encoder, not by pruning on the checkpoint's bytes.
    pub max_positions: Option<u64>,
    /// 0 for DistilBERT (no token type embeddings); 2 when BERT's config leaves it out.
    pub type_vocab: u64,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    /// The activation's name as the config spells it (`gelu` when absent); the encoder decides
    /// whether it can compute it.
    pub activation: String,
    pub initializer_range: f64,
    pub dropout: Dropout,
    /// Hugging Face's `pruned_heads`: layer → removed head indices (sorted, deduplicated).
    pub pruned_heads: BTreeMap<u64, Vec<u64>>,
    /// Secateur's compact layout: each layer's (heads, FFN width).
    pub secateur_layers: Option<Vec<(u64, u64)>>,
}

/// The keys of every family.
#[derive(Deserialize)]
struct Common {
    vocab_size: Positive,
    #[serde(default, deserialize_with = "lenient")]
    max_position_embeddings: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pad_token_id: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    initializer_range: Option<f64>,
    #[serde(default)]
    pruned_heads: Option<Value>,
    #[serde(default)]
    secateur_layers: Option<Value>,
}

/// BERT and RoBERTa.
#[derive(Deserialize)]
struct BertKeys {
    num_hidden_layers: Positive,
    hidden_size: Positive,
    num_attention_heads: Positive,
    intermediate_size: Positive,
    #[serde(default, deserialize_with = "lenient")]
    type_vocab_size: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    layer_norm_eps: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    hidden_act: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    hidden_dropout_prob: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    attention_probs_dropout_prob: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    classifier_dropout: Option<f64>,
}

/// DistilBERT.
#[derive(Deserialize)]
struct DistilBertKeys {
    n_layers: Positive,
    dim: Positive,
    n_heads: Positive,
    hidden_dim: Positive,
    #[serde(default, deserialize_with = "lenient")]
    activation: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    dropout: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    attention_dropout: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    seq_classif_dropout: Option<f64>,
}

impl ModelConfig {
    /// Parse `config.json`. Errors say what is wrong without the file's name (callers add it).
    pub fn parse(config_json: &[u8]) -> Result<ModelConfig, String> {
        let v: Value = serde_json::from_slice(config_json).map_err(|e| format!("not valid JSON: {e}"))?;
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        let model_type = v.get("model_type").and_then(Value::as_str).ok_or("missing model_type")?;
        let arch = Arch::parse(model_type)
            .ok_or_else(|| format!("model_type {model_type:?} is not supported (supported: {})", Arch::SUPPORTED))?;
        let family = match arch {
            Arch::Encoder(f) => f,
            Arch::Decoder(_) => return ModelConfig::decoder(DecoderConfig::from_value(&v)?, &v),
        };
        let f32_or = |x: Option<f64>, d: f64| x.unwrap_or(d) as f32;
        let (layers, hidden, heads, ffn, type_vocab, eps, activation, dropout) = match family {
            Family::DistilBert => {
                let k: DistilBertKeys = keys(&v)?;
                let dropout = Dropout {
                    hidden: f32_or(k.dropout, 0.1),
                    attention: f32_or(k.attention_dropout, 0.1),
                    classifier: f32_or(k.seq_classif_dropout, 0.2),
                };
                (k.n_layers, k.dim, k.n_heads, k.hidden_dim, 0, 1e-12, k.activation, dropout)
            }
            Family::Bert | Family::Roberta => {
                let k: BertKeys = keys(&v)?;
                let hidden = f32_or(k.hidden_dropout_prob, 0.1);
                let dropout = Dropout {
                    hidden,
                    attention: f32_or(k.attention_probs_dropout_prob, 0.1),
                    classifier: k.classifier_dropout.map_or(hidden, |x| x as f32),
                };
                let eps = k.layer_norm_eps.unwrap_or(1e-12);
                let (l, h, n, f) = (k.num_hidden_layers, k.hidden_size, k.num_attention_heads, k.intermediate_size);
                (l, h, n, f, k.type_vocab_size.unwrap_or(2), eps, k.hidden_act, dropout)
            }
        };
        let common: Common = keys(&v)?;
        let (layers, hidden, heads) = (layers.0, hidden.0, heads.0);
        if hidden % heads != 0 {
            return Err(format!("hidden size {hidden} is not a multiple of the head count {heads}"));
        }
        let pruned_heads = parse_pruned_heads(common.pruned_heads.as_ref(), layers, heads)?;
        let secateur_layers = parse_secateur_layers(common.secateur_layers.as_ref(), layers, heads)?;
        if secateur_layers.is_some() && !pruned_heads.is_empty() {
            return Err("give pruned_heads or secateur_layers, not both".into());
        }
        Ok(ModelConfig {
            arch,
            decoder: None,
            num_layers: layers,
            hidden_size: hidden,
            num_heads: heads,
            intermediate_size: ffn.0,
            vocab_size: common.vocab_size.0,
            max_positions: common.max_position_embeddings,
            type_vocab,
            layer_norm_eps: eps,
            pad_token_id: common.pad_token_id.unwrap_or(0) as u32,
            activation: activation.unwrap_or_else(|| "gelu".into()),
            initializer_range: common.initializer_range.unwrap_or(0.02),
            dropout,
            pruned_heads,
            secateur_layers,
        })
    }

    /// A decoder's sizes in the fields every family has. Decoders are not trained yet, so their
    /// dropout keys are not read (no code path uses them).
    fn decoder(d: DecoderConfig, v: &Value) -> Result<ModelConfig, String> {
        let common: Common = keys(v)?;
        let activation = match d.mlp {
            super::decoder::config::Mlp::Plain(_) => {
                v.get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new").to_string()
            }
            super::decoder::config::Mlp::SwiGlu => "silu".into(),
        };
        Ok(ModelConfig {
            arch: Arch::Decoder(d.kind),
            num_layers: d.layers as u64,
            hidden_size: d.hidden as u64,
            num_heads: d.heads as u64,
            intermediate_size: d.intermediate as u64,
            vocab_size: d.vocab as u64,
            max_positions: Some(d.max_positions as u64),
            type_vocab: 0,
            layer_norm_eps: d.eps,
            pad_token_id: common.pad_token_id.unwrap_or(0) as u32,
            activation,
            initializer_range: common.initializer_range.unwrap_or(0.02),
            dropout: Dropout::NONE,
            pruned_heads: BTreeMap::new(),
            secateur_layers: None,
            decoder: Some(d),
        })
    }

    /// The encoder family, for the code that runs only BERT's block (`None` for a decoder).
    pub fn family(&self) -> Option<Family> {
        self.arch.encoder()
    }

    /// The encoder family, or the error that a decoder checkpoint reached encoder-only code.
    pub fn encoder_family(&self) -> Result<Family, String> {
        self.family().ok_or_else(|| {
            format!(
                "{} is a decoder family: this runs only on the encoder families (bert, roberta, distilbert)",
                self.arch.name()
            )
        })
    }

    /// The size of one attention head (a decoder may state it apart from hidden / heads).
    pub fn head_dim(&self) -> u64 {
        match &self.decoder {
            Some(d) => d.head_dim as u64,
            None => self.hidden_size / self.num_heads,
        }
    }
}

/// What the tensors add to a config's sizes, found while checking the two against each other.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorTotals {
    /// Elements of all floating-point tensors.
    pub parameters: u64,
    /// The floating-point dtype holding most parameters.
    pub dtype: Dtype,
}

/// Check a parsed config against the checkpoint's tensors: every layer's matrices have the
/// shapes the config (with its `pruned_heads` or `secateur_layers`) implies.
pub fn check(cfg: &ModelConfig, header: &Header) -> Result<TensorTotals, String> {
    if let Some(d) = &cfg.decoder {
        super::decoder::check(d, header)?;
        return totals(header);
    }
    let Some(family) = cfg.family() else {
        return Err(format!("a {} configuration without its decoder keys", cfg.arch.name()));
    };
    let (layers, hidden, heads, ffn, vocab) =
        (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size, cfg.vocab_size);
    let head_dim = cfg.head_dim();
    let (pruned_heads, per_layer) = (&cfg.pruned_heads, &cfg.secateur_layers);

    let tensors: BTreeMap<&str, &TensorInfo> =
        header.tensors.iter().map(|(n, t)| (cfg.arch.canonical_name(n), t)).collect();
    let shape_of = |name: &str| -> Result<&Vec<u64>, String> {
        tensors
            .get(name)
            .map(|t| &t.shape)
            .ok_or_else(|| format!("config.json describes tensor {name}, which the checkpoint lacks"))
    };
    let expect = |name: &str, want: [u64; 2]| -> Result<(), String> {
        let got = shape_of(name)?;
        if got.as_slice() != want {
            return Err(format!("tensor {name} has shape {got:?}, config.json implies {want:?}"));
        }
        Ok(())
    };
    expect("embeddings.word_embeddings.weight", [vocab, hidden])?;
    // Layers present in the checkpoint must be exactly 0..layers.
    let mut max_layer: Option<u64> = None;
    for name in tensors.keys() {
        if let Some(rest) = name.strip_prefix(family.layer_root()) {
            if let Some(i) = rest.split('.').next().and_then(|s| s.parse::<u64>().ok()) {
                max_layer = Some(max_layer.map_or(i, |m| m.max(i)));
            }
        }
    }
    let found = max_layer.map_or(0, |m| m + 1);
    if found != layers {
        return Err(format!("config.json says {layers} layers but the checkpoint has {found}"));
    }
    let [q, k, v, o, f_in, f_out] = family.linear_names();
    for i in 0..layers {
        let p = |m: &str| format!("{}{i}.{m}.weight", family.layer_root());
        let (kept, ffn) = match &per_layer {
            Some(l) => l[i as usize],
            None => (heads - pruned_heads.get(&i).map_or(0, |h| h.len() as u64), ffn),
        };
        let attn = kept * head_dim;
        if kept > 0 {
            for m in [q, k, v] {
                expect(&p(m), [attn, hidden])?;
            }
        }
        expect(&p(o), [hidden, attn])?;
        expect(&p(f_in), [ffn, hidden])?;
        expect(&p(f_out), [hidden, ffn])?;
    }
    totals(header)
}

/// The parameter count and main dtype of a checkpoint.
fn totals(header: &Header) -> Result<TensorTotals, String> {
    let mut per_dtype: BTreeMap<Dtype, u64> = BTreeMap::new();
    let mut parameters = 0u64;
    for t in header.tensors.values().filter(|t| t.dtype.is_float()) {
        parameters += t.numel();
        *per_dtype.entry(t.dtype).or_default() += t.numel();
    }
    let dtype = per_dtype
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(d, _)| *d)
        .ok_or("the checkpoint holds no floating-point tensor")?;
    Ok(TensorTotals { parameters, dtype })
}

/// `secateur_layers`: `[{"num_attention_heads": h, "intermediate_size": f}, ...]`, one per layer;
/// (heads, FFN width) per layer.
fn parse_secateur_layers(v: Option<&Value>, layers: u64, heads: u64) -> Result<Option<Vec<(u64, u64)>>, String> {
    let Some(v) = v else { return Ok(None) };
    let list = v.as_array().ok_or("secateur_layers must be an array")?;
    if list.len() as u64 != layers {
        return Err(format!("secateur_layers lists {} layers, the config {layers}", list.len()));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, l) in list.iter().enumerate() {
        let get = |k: &str| {
            l.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("secateur_layers[{i}].{k} must be a non-negative integer"))
        };
        let (h, f) = (get("num_attention_heads")?, get("intermediate_size")?);
        if h > heads {
            return Err(format!("secateur_layers[{i}] has {h} heads, more than num_attention_heads {heads}"));
        }
        if f == 0 {
            return Err(format!("secateur_layers[{i}].intermediate_size must be positive"));
        }
        out.push((h, f));
    }
    Ok(Some(out))
}

fn parse_pruned_heads(v: Option<&Value>, layers: u64, heads: u64) -> Result<BTreeMap<u64, Vec<u64>>, String> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    let obj = v.as_object().ok_or("pruned_heads must be an object")?;
    for (layer, hs) in obj {
        let l: u64 = layer.parse().map_err(|_| format!("pruned_heads key {layer:?} is not a layer index"))?;
        if l >= layers {
            return Err(format!("pruned_heads names layer {l}, past the last layer"));
        }
        let mut list = hs
            .as_array()
            .ok_or("pruned_heads values must be lists")?
            .iter()
            .map(|h| h.as_u64().filter(|&h| h < heads).ok_or_else(|| format!("pruned_heads[{l}] has a bad head index")))
            .collect::<Result<Vec<_>, _>>()?;
        list.sort();
        list.dedup();
        out.insert(l, list);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::TinyModel;

    #[test]
    fn every_family_reads_its_own_keys() {
        let bert = ModelConfig::parse(TinyModel::default().config_json().as_bytes()).unwrap();
        assert_eq!(bert.family(), Some(Family::Bert));
        assert_eq!((bert.num_layers, bert.type_vocab), (TinyModel::default().layers, 2));
        let distil = br#"{"model_type": "distilbert", "n_layers": 2, "dim": 8, "n_heads": 2, "hidden_dim": 16,
            "vocab_size": 30, "max_position_embeddings": 16, "dropout": 0.3, "activation": "gelu"}"#;
        let d = ModelConfig::parse(distil).unwrap();
        assert_eq!(
            (d.family(), d.num_layers, d.hidden_size, d.num_heads, d.intermediate_size),
            (Some(Family::DistilBert), 2, 8, 2, 16)
        );
        assert_eq!((d.type_vocab, d.head_dim(), d.max_positions), (0, 4, Some(16)));
        assert_eq!(d.dropout, Dropout { hidden: 0.3, attention: 0.1, classifier: 0.2 });
    }

    #[test]
    fn faults_name_the_key() {
        let base = r#""model_type": "bert", "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 30"#;
        let parse = |extra: &str| ModelConfig::parse(format!("{{{base}{extra}}}").as_bytes());
        assert_eq!(parse("").unwrap_err(), "missing num_hidden_layers");
        assert_eq!(parse(r#", "num_hidden_layers": 0"#).unwrap_err(), "num_hidden_layers must be a positive integer");
        assert_eq!(parse(r#", "num_hidden_layers": "2""#).unwrap_err(), "num_hidden_layers must be a positive integer");
        // Optional keys of the wrong type fall back to the default.
        let c = parse(r#", "num_hidden_layers": 2, "pad_token_id": null, "layer_norm_eps": "x""#).unwrap();
        assert_eq!((c.pad_token_id, c.layer_norm_eps, c.activation.as_str()), (0, 1e-12, "gelu"));
        assert!(ModelConfig::parse(br#"{"model_type": "albert"}"#).unwrap_err().contains("not supported"));
        assert!(ModelConfig::parse(b"[1]").unwrap_err().contains("not a JSON object"));
        assert!(parse(r#", "num_hidden_layers": 2, "num_attention_heads": 3"#).is_err());
    }

    #[test]
    fn decoders_are_checked_against_their_tensors() {
        use crate::engine::io::st;
        use crate::engine::testing::TinyDecoder;
        for (model_type, tied) in [("gpt2", true), ("llama", false), ("qwen2", true)] {
            let m = TinyDecoder { model_type, tied, ..Default::default() };
            let cfg = ModelConfig::parse(m.config_json().as_bytes()).unwrap();
            assert_eq!((cfg.arch.name(), cfg.family()), (model_type, None));
            assert_eq!((cfg.num_layers, cfg.hidden_size, cfg.intermediate_size), (2, 32, 48));
            assert_eq!(cfg.head_dim(), 8);
            let bytes = m.safetensors();
            let totals = check(&cfg, &st::parse(&bytes).unwrap()).unwrap();
            assert_eq!(
                totals.parameters,
                m.tensor_shapes().iter().map(|(_, s)| s.iter().product::<u64>()).sum::<u64>()
            );
            assert!(cfg.encoder_family().unwrap_err().contains("decoder family"));
        }
        // A tensor of the wrong shape, a missing one, a missing layer: each named.
        let m = TinyDecoder::default();
        let cfg = ModelConfig::parse(m.config_json().as_bytes()).unwrap();
        type Shapes = Vec<(String, Vec<u64>)>;
        let fault = |edit: &dyn Fn(&mut Shapes)| {
            let mut shapes = m.tensor_shapes();
            edit(&mut shapes);
            let tensors: Vec<_> = shapes
                .into_iter()
                .map(|(n, s)| {
                    let len = s.iter().product::<u64>() as usize * 4;
                    (n, Dtype::F32, s, vec![0u8; len])
                })
                .collect();
            check(&cfg, &st::parse(&st::serialize(&tensors, None)).unwrap()).unwrap_err()
        };
        let e = fault(&|t| t.iter_mut().find(|(n, _)| n.ends_with("0.mlp.up_proj.weight")).unwrap().1 = vec![40, 32]);
        assert!(e.contains("tensor model.layers.0.mlp.up_proj.weight has shape [40, 32], expected [48, 32]"), "{e}");
        let e = fault(&|t| t.retain(|(n, _)| n != "lm_head.weight"));
        assert!(e.contains("lm_head.weight"), "{e}");
        let e = fault(&|t| t.retain(|(n, _)| !n.contains("layers.1.")));
        assert!(e.contains("2 layers but the checkpoint has 1"), "{e}");
        let e =
            fault(&|t| t.iter_mut().find(|(n, _)| n.ends_with("0.self_attn.k_proj.weight")).unwrap().1 = vec![12, 32]);
        assert!(
            e.contains("tensor model.layers.0.self_attn.k_proj.weight has shape [12, 32], expected [16, 32]"),
            "{e}"
        );
    }
}
