//! BERT-family architectures as far as their checkpoints show them: the tensor naming of each
//! family and which tensors are the encoder's linear weights (the default pruning targets).

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
    pub(crate) fn layer_root(self) -> &'static str {
        match self {
            Family::Bert | Family::Roberta => "encoder.layer.",
            Family::DistilBert => "transformer.layer.",
        }
    }
    /// Names (relative to a layer) of query, key, value, attention output, FFN in, FFN out.
    pub(crate) fn linear_names(self) -> [&'static str; 6] {
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
