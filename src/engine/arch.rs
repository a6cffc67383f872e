//! BERT-family architectures as far as their checkpoints show them: `config.json` parsing, the
//! tensor naming of each family, the check that config and tensors agree, and which tensors
//! are the encoder's linear weights (the default pruning targets).

use super::st::{Dtype, Header};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
    DistilBert,
}

impl Family {
    pub fn parse(model_type: &str) -> Option<Family> {
        match model_type {
            "bert" => Some(Family::Bert),
            "roberta" => Some(Family::Roberta),
            "distilbert" => Some(Family::DistilBert),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::DistilBert => "distilbert",
        }
    }
    /// Checkpoints of task models prefix the encoder's tensors with this.
    fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta => "roberta.",
            Family::DistilBert => "distilbert.",
        }
    }
    fn layer_root(self) -> &'static str {
        match self {
            Family::Bert | Family::Roberta => "encoder.layer.",
            Family::DistilBert => "transformer.layer.",
        }
    }
    /// Names (relative to a layer) of query, key, value, attention output, FFN in, FFN out.
    fn linear_names(self) -> [&'static str; 6] {
        let n = self.layer_names();
        [n.query, n.key, n.value, n.attn_out, n.ffn_in, n.ffn_out]
    }

    /// Module names inside one encoder layer.
    pub fn layer_names(self) -> LayerNames {
        match self {
            Family::Bert | Family::Roberta => LayerNames {
                query: "attention.self.query",
                key: "attention.self.key",
                value: "attention.self.value",
                attn_out: "attention.output.dense",
                attn_norm: "attention.output.LayerNorm",
                ffn_in: "intermediate.dense",
                ffn_out: "output.dense",
                out_norm: "output.LayerNorm",
            },
            Family::DistilBert => LayerNames {
                query: "attention.q_lin",
                key: "attention.k_lin",
                value: "attention.v_lin",
                attn_out: "attention.out_lin",
                attn_norm: "sa_layer_norm",
                ffn_in: "ffn.lin1",
                ffn_out: "ffn.lin2",
                out_norm: "output_layer_norm",
            },
        }
    }

    /// Prefix of layer `i`'s modules, e.g. `encoder.layer.3.`.
    pub fn layer_prefix(self, i: usize) -> String {
        format!("{}{i}.", self.layer_root())
    }
}

/// Module names inside one encoder layer (post-LayerNorm BERT block).
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attn_out: &'static str,
    pub attn_norm: &'static str,
    pub ffn_in: &'static str,
    pub ffn_out: &'static str,
    pub out_norm: &'static str,
}

/// The sizes of a model as config.json states them, checked against its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub family: Family,
    pub num_layers: u64,
    pub hidden_size: u64,
    pub num_heads: u64,
    pub intermediate_size: u64,
    pub vocab_size: u64,
    /// Elements of all floating-point tensors.
    pub parameters: u64,
    /// The floating-point dtype holding most parameters.
    pub dtype: Dtype,
}

fn get_u64(cfg: &serde_json::Map<String, Value>, key: &str) -> Result<u64, String> {
    match cfg.get(key) {
        None => Err(format!("missing {key}")),
        Some(v) => v.as_u64().filter(|&n| n > 0).ok_or_else(|| format!("{key} must be a positive integer")),
    }
}

/// Strip a family prefix (`bert.`, `roberta.`, `distilbert.`) from a tensor name.
pub fn canonical_name(family: Family, name: &str) -> &str {
    name.strip_prefix(family.prefix()).unwrap_or(name)
}

/// Whether a tensor is one of the encoder's linear weights (attention Q/K/V/output, FFN in/out).
pub fn is_encoder_linear_weight(family: Family, name: &str) -> bool {
    let n = canonical_name(family, name);
    let Some(rest) = n.strip_prefix(family.layer_root()) else { return false };
    let Some((idx, rest)) = rest.split_once('.') else { return false };
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Some(module) = rest.strip_suffix(".weight") else { return false };
    family.linear_names().contains(&module)
}

/// Parse config.json and check it against the checkpoint's tensors.
pub fn summarize(config_json: &[u8], header: &Header) -> Result<ModelSummary, String> {
    let cfg: Value = serde_json::from_slice(config_json).map_err(|e| format!("not valid JSON: {e}"))?;
    let cfg = cfg.as_object().ok_or("not a JSON object")?;
    let model_type = cfg.get("model_type").and_then(Value::as_str).ok_or("missing model_type")?;
    let family = Family::parse(model_type)
        .ok_or_else(|| format!("model_type {model_type:?} is not supported (supported: bert, roberta, distilbert)"))?;
    let (layers, hidden, heads, ffn) = match family {
        Family::DistilBert => {
            (get_u64(cfg, "n_layers")?, get_u64(cfg, "dim")?, get_u64(cfg, "n_heads")?, get_u64(cfg, "hidden_dim")?)
        }
        _ => (
            get_u64(cfg, "num_hidden_layers")?,
            get_u64(cfg, "hidden_size")?,
            get_u64(cfg, "num_attention_heads")?,
            get_u64(cfg, "intermediate_size")?,
        ),
    };
    let vocab = get_u64(cfg, "vocab_size")?;
    if hidden % heads != 0 {
        return Err(format!("hidden size {hidden} is not a multiple of the head count {heads}"));
    }
    let head_dim = hidden / heads;
    let pruned_heads = parse_pruned_heads(cfg.get("pruned_heads"), layers, heads)?;
    // Secateur's compact layout: each layer's heads and FFN width.
    let per_layer = parse_secateur_layers(cfg.get("secateur_layers"), layers, heads)?;
    if per_layer.is_some() && !pruned_heads.is_empty() {
        return Err("give pruned_heads or secateur_layers, not both".into());
    }

    let tensors: BTreeMap<&str, &super::st::TensorInfo> =
        header.tensors.iter().map(|(n, t)| (canonical_name(family, n), t)).collect();
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
    Ok(ModelSummary {
        family,
        num_layers: layers,
        hidden_size: hidden,
        num_heads: heads,
        intermediate_size: ffn,
        vocab_size: vocab,
        parameters,
        dtype,
    })
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

    #[test]
    fn encoder_linear_weights_are_recognised() {
        assert!(is_encoder_linear_weight(Family::Bert, "encoder.layer.0.attention.self.query.weight"));
        assert!(is_encoder_linear_weight(Family::Bert, "bert.encoder.layer.11.output.dense.weight"));
        assert!(is_encoder_linear_weight(Family::Roberta, "roberta.encoder.layer.3.intermediate.dense.weight"));
        assert!(is_encoder_linear_weight(Family::DistilBert, "distilbert.transformer.layer.5.ffn.lin2.weight"));
        assert!(!is_encoder_linear_weight(Family::Bert, "encoder.layer.0.attention.self.query.bias"));
        assert!(!is_encoder_linear_weight(Family::Bert, "encoder.layer.0.attention.output.LayerNorm.weight"));
        assert!(!is_encoder_linear_weight(Family::Bert, "embeddings.word_embeddings.weight"));
        assert!(!is_encoder_linear_weight(Family::Bert, "pooler.dense.weight"));
        assert!(!is_encoder_linear_weight(Family::Bert, "classifier.weight"));
        assert!(!is_encoder_linear_weight(Family::Bert, "encoder.layer.x.output.dense.weight"));
    }
}
