//! Model families as far as their checkpoints show them: the tensor naming of each family and
//! which tensors are its blocks' linear weights (the default pruning targets). [`Family`] is an
//! encoder family (BERT's post-LayerNorm block, whose modules [`LayerNames`] names),
//! [`DecoderKind`] a decoder family (GPT-2, Llama, Qwen2), and [`Arch`] either: what the code
//! that works on any checkpoint's tensors (magnitude and N:M pruning, the report, the upload
//! check) asks of a family.

/// The decoder block layouts Secateur runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// GPT-2: learned positions, pre-LayerNorm blocks, fused and transposed (`Conv1D`)
    /// `c_attn`, a GELU MLP, tied LM head.
    Gpt2,
    /// Llama: RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP.
    Llama,
    /// Qwen2: Llama's block with biases on the query, key and value maps.
    Qwen2,
}

impl DecoderKind {
    pub const ALL: [DecoderKind; 3] = [DecoderKind::Gpt2, DecoderKind::Llama, DecoderKind::Qwen2];

    pub fn parse(model_type: &str) -> Option<DecoderKind> {
        match model_type {
            "gpt2" => Some(DecoderKind::Gpt2),
            "llama" => Some(DecoderKind::Llama),
            "qwen2" => Some(DecoderKind::Qwen2),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DecoderKind::Gpt2 => "gpt2",
            DecoderKind::Llama => "llama",
            DecoderKind::Qwen2 => "qwen2",
        }
    }
    /// The prefix of the base model's tensors in a task or LM model's checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            DecoderKind::Gpt2 => "transformer.",
            DecoderKind::Llama | DecoderKind::Qwen2 => "model.",
        }
    }
    pub(crate) fn layer_root(self) -> &'static str {
        match self {
            DecoderKind::Gpt2 => "h.",
            DecoderKind::Llama | DecoderKind::Qwen2 => "layers.",
        }
    }
    /// Prefix of layer `i`'s modules, e.g. `layers.3.`.
    pub fn layer_prefix(self, i: usize) -> String {
        format!("{}{i}.", self.layer_root())
    }
    /// The linear maps of a block (relative to the layer), as the checkpoint names them.
    pub fn linear_modules(self) -> &'static [&'static str] {
        match self {
            DecoderKind::Gpt2 => &["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
            DecoderKind::Llama | DecoderKind::Qwen2 => &[
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ],
        }
    }
}

/// Any family Secateur reads: what code working on a checkpoint's tensors, whatever its block,
/// needs to know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Encoder(Family),
    Decoder(DecoderKind),
}

impl Arch {
    /// The `model_type`s accepted, as an error message lists them.
    pub const SUPPORTED: &'static str = "bert, roberta, distilbert, gpt2, llama, qwen2";

    pub fn parse(model_type: &str) -> Option<Arch> {
        Family::parse(model_type).map(Arch::Encoder).or_else(|| DecoderKind::parse(model_type).map(Arch::Decoder))
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Encoder(f) => f.name(),
            Arch::Decoder(d) => d.name(),
        }
    }
    /// The encoder family, for the code that runs only BERT's block.
    pub fn encoder(self) -> Option<Family> {
        match self {
            Arch::Encoder(f) => Some(f),
            Arch::Decoder(_) => None,
        }
    }
    pub fn is_decoder(self) -> bool {
        matches!(self, Arch::Decoder(_))
    }
    fn prefix(self) -> &'static str {
        match self {
            Arch::Encoder(f) => f.prefix(),
            Arch::Decoder(d) => d.prefix(),
        }
    }
    pub(crate) fn layer_root(self) -> &'static str {
        match self {
            Arch::Encoder(f) => f.layer_root(),
            Arch::Decoder(d) => d.layer_root(),
        }
    }
    /// A tensor's name without the base model's prefix (`bert.`, `transformer.`, `model.`, …).
    pub fn canonical_name(self, name: &str) -> &str {
        name.strip_prefix(self.prefix()).unwrap_or(name)
    }
    /// The block a tensor belongs to and its module inside the block, from its name:
    /// `("encoder.layer.3.output.dense.weight")` → `(3, "output.dense.weight")`.
    pub fn split_layer(self, name: &str) -> Option<(usize, &str)> {
        let rest = self.canonical_name(name).strip_prefix(self.layer_root())?;
        let (idx, rest) = rest.split_once('.')?;
        if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((idx.parse().ok()?, rest))
    }
    /// Whether a tensor is one of the blocks' linear weights (the default pruning targets:
    /// attention and MLP/FFN projections; embeddings, norms and the heads stay dense).
    pub fn is_linear_weight(self, name: &str) -> bool {
        let Some((_, rest)) = self.split_layer(name) else { return false };
        let Some(module) = rest.strip_suffix(".weight") else { return false };
        match self {
            Arch::Encoder(f) => f.linear_names().contains(&module),
            Arch::Decoder(d) => d.linear_modules().contains(&module),
        }
    }
    /// Whether a linear weight is stored `[in, out]` (GPT-2's `Conv1D`) rather than
    /// `[out, in]`: its input dimension is then its first, which N:M groups run along.
    pub fn stores_transposed(self, name: &str) -> bool {
        self == Arch::Decoder(DecoderKind::Gpt2) && self.is_linear_weight(name)
    }
}

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

/// Where a linear map's input is observed inside a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The layer input: read by the query, key and value maps.
    Attention,
    /// The attention context: read by the attention output map.
    AttentionOutput,
    /// After the attention LayerNorm (an encoder) or the second pre-norm (a decoder): read by
    /// the FFN/MLP input map(s).
    FfnIn,
    /// After the activation: read by the FFN output map.
    FfnOut,
}

impl Site {
    pub const ALL: [Site; 4] = [Site::Attention, Site::AttentionOutput, Site::FfnIn, Site::FfnOut];

    /// The modules (relative to the layer) reading this input in an encoder block.
    pub fn modules(self, family: Family) -> Vec<&'static str> {
        let n = family.layer_names();
        match self {
            Site::Attention => vec![n.query, n.key, n.value],
            Site::AttentionOutput => vec![n.attn_out],
            Site::FfnIn => vec![n.ffn_in],
            Site::FfnOut => vec![n.ffn_out],
        }
    }

    /// The modules reading this input in a decoder block (the MLP's input is read by GPT-2's
    /// `c_fc`, or by Llama's gate and up maps).
    pub fn decoder_modules(self, kind: DecoderKind) -> &'static [&'static str] {
        match (kind, self) {
            (DecoderKind::Gpt2, Site::Attention) => &["attn.c_attn"],
            (DecoderKind::Gpt2, Site::AttentionOutput) => &["attn.c_proj"],
            (DecoderKind::Gpt2, Site::FfnIn) => &["mlp.c_fc"],
            (DecoderKind::Gpt2, Site::FfnOut) => &["mlp.c_proj"],
            (_, Site::Attention) => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            (_, Site::AttentionOutput) => &["self_attn.o_proj"],
            (_, Site::FfnIn) => &["mlp.gate_proj", "mlp.up_proj"],
            (_, Site::FfnOut) => &["mlp.down_proj"],
        }
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
    Arch::Encoder(family).canonical_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_encoder_linear_weight(f: Family, name: &str) -> bool {
        Arch::Encoder(f).is_linear_weight(name)
    }

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

    #[test]
    fn decoder_linear_weights_and_their_layout() {
        let gpt2 = Arch::parse("gpt2").unwrap();
        let llama = Arch::parse("llama").unwrap();
        for n in ["transformer.h.0.attn.c_attn.weight", "h.3.mlp.c_proj.weight"] {
            assert!(gpt2.is_linear_weight(n) && gpt2.stores_transposed(n), "{n}");
        }
        for n in ["transformer.wte.weight", "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.bias"] {
            assert!(!gpt2.is_linear_weight(n) && !gpt2.stores_transposed(n), "{n}");
        }
        for n in ["model.layers.0.self_attn.k_proj.weight", "model.layers.11.mlp.gate_proj.weight"] {
            assert!(llama.is_linear_weight(n) && !llama.stores_transposed(n), "{n}");
        }
        for n in ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"] {
            assert!(!llama.is_linear_weight(n), "{n}");
        }
        assert_eq!(llama.split_layer("model.layers.7.mlp.up_proj.weight"), Some((7, "mlp.up_proj.weight")));
        assert_eq!(Arch::parse("bert").unwrap().encoder(), Some(Family::Bert));
        assert_eq!((gpt2.encoder(), gpt2.name()), (None, "gpt2"));
        assert!(Arch::SUPPORTED.split(", ").all(|t| Arch::parse(t).is_some()));
        assert!(Arch::parse("albert").is_none());
    }
}
