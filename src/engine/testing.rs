//! Tiny random checkpoints built in code, for tests, benchmarks and demos: BERT-family encoders
//! ([`TinyModel`]) and decoders ([`TinyDecoder`]). Nothing here downloads anything.

use super::io::st::{serialize, Dtype};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct TinyModel {
    pub model_type: &'static str,
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub ffn: u64,
    pub vocab: u64,
    pub dtype: Dtype,
    /// Prefix tensor names with `bert.` (as task checkpoints do) and add a classifier head.
    pub with_prefix_and_head: bool,
    pub seed: u64,
}

impl Default for TinyModel {
    fn default() -> Self {
        TinyModel {
            model_type: "bert",
            layers: 2,
            hidden: 32,
            heads: 4,
            ffn: 64,
            vocab: 64,
            dtype: Dtype::F32,
            with_prefix_and_head: false,
            seed: 7,
        }
    }
}

pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::F64 => values.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(),
        other => panic!("encode: unsupported dtype {other:?}"),
    }
}

impl TinyModel {
    pub fn config_json(&self) -> String {
        let v = if self.model_type == "distilbert" {
            serde_json::json!({
                "model_type": "distilbert", "architectures": ["DistilBertModel"],
                "dim": self.hidden, "n_layers": self.layers, "n_heads": self.heads, "hidden_dim": self.ffn,
                "vocab_size": self.vocab, "max_position_embeddings": 64, "activation": "gelu",
            })
        } else {
            serde_json::json!({
                "model_type": self.model_type, "architectures": ["BertModel"],
                "hidden_size": self.hidden, "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "intermediate_size": self.ffn, "vocab_size": self.vocab, "max_position_embeddings": 64,
                "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
                "pad_token_id": if self.model_type == "roberta" { 1 } else { 0 },
            })
        };
        serde_json::to_string_pretty(&v).unwrap()
    }

    /// (name, shape) of every tensor, in file order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<u64>)> {
        let (h, f) = (self.hidden, self.ffn);
        let mut t: Vec<(String, Vec<u64>)> = Vec::new();
        let distil = self.model_type == "distilbert";
        let pre = match (self.with_prefix_and_head, self.model_type) {
            (false, _) => "",
            (true, "roberta") => "roberta.",
            (true, "distilbert") => "distilbert.",
            (true, _) => "bert.",
        };
        t.push((format!("{pre}embeddings.word_embeddings.weight"), vec![self.vocab, h]));
        t.push((format!("{pre}embeddings.position_embeddings.weight"), vec![64, h]));
        if !distil {
            t.push((format!("{pre}embeddings.token_type_embeddings.weight"), vec![2, h]));
        }
        t.push((format!("{pre}embeddings.LayerNorm.weight"), vec![h]));
        t.push((format!("{pre}embeddings.LayerNorm.bias"), vec![h]));
        for i in 0..self.layers {
            let linears: Vec<(&str, [u64; 2])> = if distil {
                vec![
                    ("attention.q_lin", [h, h]),
                    ("attention.k_lin", [h, h]),
                    ("attention.v_lin", [h, h]),
                    ("attention.out_lin", [h, h]),
                    ("ffn.lin1", [f, h]),
                    ("ffn.lin2", [h, f]),
                ]
            } else {
                vec![
                    ("attention.self.query", [h, h]),
                    ("attention.self.key", [h, h]),
                    ("attention.self.value", [h, h]),
                    ("attention.output.dense", [h, h]),
                    ("intermediate.dense", [f, h]),
                    ("output.dense", [h, f]),
                ]
            };
            let root = if distil { "transformer.layer" } else { "encoder.layer" };
            for (m, s) in linears {
                t.push((format!("{pre}{root}.{i}.{m}.weight"), s.to_vec()));
                t.push((format!("{pre}{root}.{i}.{m}.bias"), vec![s[0]]));
            }
            let norms: &[&str] = if distil {
                &["sa_layer_norm", "output_layer_norm"]
            } else {
                &["attention.output.LayerNorm", "output.LayerNorm"]
            };
            for n in norms {
                t.push((format!("{pre}{root}.{i}.{n}.weight"), vec![h]));
                t.push((format!("{pre}{root}.{i}.{n}.bias"), vec![h]));
            }
        }
        if !distil {
            t.push((format!("{pre}pooler.dense.weight"), vec![h, h]));
            t.push((format!("{pre}pooler.dense.bias"), vec![h]));
        }
        if self.with_prefix_and_head {
            t.push(("classifier.weight".into(), vec![2, h]));
            t.push(("classifier.bias".into(), vec![2]));
        }
        t
    }

    pub fn safetensors(&self) -> Vec<u8> {
        random_file(self.tensor_shapes(), self.dtype, self.seed, |name, rng| {
            if name.contains("LayerNorm") || name.contains("layer_norm") {
                let center = if name.ends_with("weight") { 1.0 } else { 0.0 };
                center + rng.gen_range(-0.1f32..0.1)
            } else {
                rng.gen_range(-0.2f32..0.2)
            }
        })
    }

    /// A small WordPiece `tokenizer.json` over the model's vocabulary size, with BERT's
    /// `[CLS] A [SEP] B [SEP]` template.
    pub fn tokenizer_json(&self) -> String {
        let mut vocab = serde_json::Map::new();
        let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
        for (i, s) in specials.iter().enumerate() {
            vocab.insert(s.to_string(), i.into());
        }
        for i in specials.len() as u64..self.vocab {
            vocab.insert(format!("w{i}"), i.into());
        }
        serde_json::to_string(&serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}
            },
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab},
        }))
        .unwrap()
    }
}

/// A tiny random decoder checkpoint (GPT-2, Llama or Qwen2) under the names and shapes a
/// `…ForCausalLM` checkpoint has (`transformer.`/`model.` prefix; `lm_head.weight` when untied).
#[derive(Debug, Clone)]
pub struct TinyDecoder {
    pub model_type: &'static str,
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub ffn: u64,
    pub vocab: u64,
    pub tied: bool,
    pub dtype: Dtype,
    pub seed: u64,
}

impl Default for TinyDecoder {
    fn default() -> Self {
        TinyDecoder {
            model_type: "llama",
            layers: 2,
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            ffn: 48,
            vocab: 64,
            tied: false,
            dtype: Dtype::F32,
            seed: 11,
        }
    }
}

impl TinyDecoder {
    pub fn config_json(&self) -> String {
        let v = if self.model_type == "gpt2" {
            serde_json::json!({
                "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": self.hidden,
                "n_layer": self.layers, "n_head": self.heads, "n_inner": self.ffn, "vocab_size": self.vocab,
                "n_positions": 64, "tie_word_embeddings": self.tied,
            })
        } else {
            let class = if self.model_type == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" };
            serde_json::json!({
                "model_type": self.model_type, "architectures": [class], "hidden_size": self.hidden,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads, "intermediate_size": self.ffn, "vocab_size": self.vocab,
                "max_position_embeddings": 64, "tie_word_embeddings": self.tied, "rms_norm_eps": 1e-6,
            })
        };
        serde_json::to_string_pretty(&v).unwrap()
    }

    /// (name, shape) of every tensor, as `GPT2LMHeadModel`, `LlamaForCausalLM` and
    /// `Qwen2ForCausalLM` save them (written out here, not taken from the loader, so that a
    /// test compares two independent statements of the layout).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<u64>)> {
        let (h, f, v) = (self.hidden, self.ffn, self.vocab);
        let hd = h / self.heads;
        let (q, kv) = (self.heads * hd, self.kv_heads * hd);
        let mut t: Vec<(String, Vec<u64>)> = Vec::new();
        if self.model_type == "gpt2" {
            t.push(("transformer.wte.weight".into(), vec![v, h]));
            t.push(("transformer.wpe.weight".into(), vec![64, h]));
            for i in 0..self.layers {
                for (m, s) in [
                    ("ln_1.weight", vec![h]),
                    ("ln_1.bias", vec![h]),
                    ("attn.c_attn.weight", vec![h, 3 * q]),
                    ("attn.c_attn.bias", vec![3 * q]),
                    ("attn.c_proj.weight", vec![q, h]),
                    ("attn.c_proj.bias", vec![h]),
                    ("ln_2.weight", vec![h]),
                    ("ln_2.bias", vec![h]),
                    ("mlp.c_fc.weight", vec![h, f]),
                    ("mlp.c_fc.bias", vec![f]),
                    ("mlp.c_proj.weight", vec![f, h]),
                    ("mlp.c_proj.bias", vec![h]),
                ] {
                    t.push((format!("transformer.h.{i}.{m}"), s));
                }
            }
            t.push(("transformer.ln_f.weight".into(), vec![h]));
            t.push(("transformer.ln_f.bias".into(), vec![h]));
        } else {
            t.push(("model.embed_tokens.weight".into(), vec![v, h]));
            for i in 0..self.layers {
                let mut block = vec![
                    ("input_layernorm.weight", vec![h]),
                    ("self_attn.q_proj.weight", vec![q, h]),
                    ("self_attn.k_proj.weight", vec![kv, h]),
                    ("self_attn.v_proj.weight", vec![kv, h]),
                    ("self_attn.o_proj.weight", vec![h, q]),
                    ("post_attention_layernorm.weight", vec![h]),
                    ("mlp.gate_proj.weight", vec![f, h]),
                    ("mlp.up_proj.weight", vec![f, h]),
                    ("mlp.down_proj.weight", vec![h, f]),
                ];
                if self.model_type == "qwen2" {
                    block.extend([
                        ("self_attn.q_proj.bias", vec![q]),
                        ("self_attn.k_proj.bias", vec![kv]),
                        ("self_attn.v_proj.bias", vec![kv]),
                    ]);
                }
                for (m, s) in block {
                    t.push((format!("model.layers.{i}.{m}"), s));
                }
            }
            t.push(("model.norm.weight".into(), vec![h]));
        }
        if !self.tied {
            t.push(("lm_head.weight".into(), vec![v, h]));
        }
        t
    }

    pub fn safetensors(&self) -> Vec<u8> {
        random_file(self.tensor_shapes(), self.dtype, self.seed, |name, rng| {
            let norm = name.contains("norm") || name.contains("ln_");
            if norm && name.ends_with("weight") {
                1.0 + rng.gen_range(-0.1f32..0.1)
            } else {
                rng.gen_range(-0.2f32..0.2)
            }
        })
    }
}

/// A safetensors file of `shapes` in that order, every value drawn by `value` (given the
/// tensor's name) from one stream seeded by `seed`, stored as `dtype`.
fn random_file(
    shapes: Vec<(String, Vec<u64>)>,
    dtype: Dtype,
    seed: u64,
    value: impl Fn(&str, &mut StdRng) -> f32,
) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let tensors: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: u64 = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|_| value(&name, &mut rng)).collect();
            let data = encode(&values, dtype);
            (name, dtype, shape, data)
        })
        .collect();
    serialize(&tensors, None)
}
