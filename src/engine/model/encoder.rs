//! Our BERT-family encoder. Unlike `candle_transformers::models::bert`, every layer has its own
//! head count and FFN width (read from the tensor shapes), so a structurally pruned checkpoint
//! loads. Post-LayerNorm blocks as in BERT, RoBERTa and DistilBERT; tensor names with or
//! without the family prefix; f32/f16/bf16 checkpoints computed in f32 on the CPU with the
//! kernels of [`crate::engine::cpu`] (the composition is here, the kernels there, as for the
//! decoders).

pub use super::arch::Site;
use super::arch::{canonical_name, Family, LayerNames};
use super::config::ModelConfig;
use crate::engine::cpu::activation::Activation;
use crate::engine::cpu::fused::{self, Attn, Seq};
use crate::engine::cpu::linear;
pub use crate::engine::cpu::matrix::Choice;
use crate::engine::cpu::matrix::Matrix;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

pub use super::error::ModelError;

pub type Result<T> = std::result::Result<T, ModelError>;

/// One batch of token ids `[batch, seq]` as the encoder takes it: `(input_ids, attention_mask,
/// token_type_ids)`, u32, padded to the batch's longest sequence.
pub type Batch = (Tensor, Tensor, Tensor);

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(ModelError::Invalid(msg.into()))
}

/// Heads and FFN width of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    pub heads: usize,
    pub ffn: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub family: Family,
    pub hidden: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    /// 0 for DistilBERT (no token type embeddings).
    pub type_vocab: usize,
    pub eps: f64,
    pub pad_token_id: u32,
    pub activation: Activation,
    pub layers: Vec<LayerShape>,
}

impl EncoderConfig {
    /// Read `config.json` and take each layer's head count and FFN width from the tensors
    /// (`shapes` maps tensor names, with or without prefix, to shapes).
    pub fn from_checkpoint(config_json: &[u8], shapes: &HashMap<String, Vec<usize>>) -> Result<EncoderConfig> {
        let cfg = ModelConfig::parse(config_json).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
        EncoderConfig::new(&cfg, shapes)
    }

    /// The encoder's configuration: `cfg`'s sizes, each layer's head count and FFN width from
    /// the tensors.
    pub fn new(cfg: &ModelConfig, shapes: &HashMap<String, Vec<usize>>) -> Result<EncoderConfig> {
        let family = cfg.encoder_family().map_err(ModelError::Invalid)?;
        let (hidden, heads, layers) = (cfg.hidden_size as usize, cfg.num_heads as usize, cfg.num_layers as usize);
        let act_name = cfg.activation.as_str();
        let activation = Activation::parse(act_name)
            .ok_or_else(|| ModelError::Invalid(format!("unsupported activation {act_name:?}")))?;
        let canon: HashMap<&str, &Vec<usize>> = shapes.iter().map(|(k, s)| (canonical_name(family, k), s)).collect();
        let names = family.layer_names();
        let head_dim = hidden / heads;
        let mut shapes_out = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = family.layer_prefix(i);
            let rows = |m: &str| canon.get(format!("{p}{m}.weight").as_str()).map(|s| s[0]);
            let q =
                rows(names.query).ok_or_else(|| ModelError::Invalid(format!("missing {p}{}.weight", names.query)))?;
            let ffn =
                rows(names.ffn_in).ok_or_else(|| ModelError::Invalid(format!("missing {p}{}.weight", names.ffn_in)))?;
            if q % head_dim != 0 {
                return invalid(format!("layer {i}: query has {q} rows, not a multiple of the head size {head_dim}"));
            }
            shapes_out.push(LayerShape { heads: q / head_dim, ffn });
        }
        let max_positions = cfg
            .max_positions
            .ok_or_else(|| ModelError::Invalid("config.json: missing or bad max_position_embeddings".into()))?;
        Ok(EncoderConfig {
            family,
            hidden,
            head_dim,
            vocab: cfg.vocab_size as usize,
            max_positions: max_positions as usize,
            type_vocab: cfg.type_vocab as usize,
            eps: cfg.layer_norm_eps,
            pad_token_id: cfg.pad_token_id,
            activation,
            layers: shapes_out,
        })
    }
}

impl EncoderConfig {
    /// The position of each token of a padded batch (`ids` flattened `[batch, seq]`) in the
    /// position table: `0..seq` per row, or for RoBERTa counted from pad + 1 over the non-pad
    /// tokens (padding gets `pad`). A sequence longer than the table is an error.
    pub fn position_ids(&self, ids: &[u32], seq: usize) -> Result<Vec<u32>> {
        if seq > self.max_positions {
            return invalid(format!("sequence length {seq} exceeds max_position_embeddings {}", self.max_positions));
        }
        Ok(match self.family {
            Family::Roberta => {
                let pad = self.pad_token_id;
                ids.chunks(seq.max(1))
                    .flat_map(|row| {
                        let mut n = 0u32;
                        row.iter()
                            .map(|&id| {
                                if id == pad {
                                    pad
                                } else {
                                    n += 1;
                                    pad + n
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect()
            }
            _ => (0..ids.len()).map(|i| (i % seq.max(1)) as u32).collect(),
        })
    }
}

/// Tensors by canonical name (family prefix stripped), converted to f32. Cloning is cheap
/// (tensors share their storage).
#[derive(Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Load a safetensors file's bytes.
    pub fn from_safetensors(bytes: &[u8], family: Family, device: &Device) -> Result<Weights> {
        let raw = candle_core::safetensors::load_buffer(bytes, device)?;
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, t) in raw {
            let t = if t.dtype().is_float() && t.dtype() != DType::F32 { t.to_dtype(DType::F32)? } else { t };
            tensors.insert(canonical_name(family, &name).to_string(), t);
        }
        Ok(Weights { tensors })
    }

    /// Tensors already keyed by canonical name.
    pub fn from_map(tensors: HashMap<String, Tensor>) -> Weights {
        Weights { tensors }
    }

    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        self.tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect()
    }

    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::Invalid(format!("the checkpoint has no tensor {name}")))
    }

    /// The tensor `name` as f32 values, checked to have `shape`.
    fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return invalid(format!("tensor {name}: shape {:?}, expected {shape:?}", t.dims()));
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// `{prefix}.weight` (`[out, inp]`) and `{prefix}.bias` (`[out]`).
    fn linear(&self, prefix: &str, out: usize, inp: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.values(&format!("{prefix}.weight"), &[out, inp])?, self.values(&format!("{prefix}.bias"), &[out])?))
    }
}

/// The linear maps of a layer, in the order [`Maps`] holds them.
#[derive(Debug, Clone, Copy)]
enum Map {
    /// Query, key and value stacked: `[3·heads·head_dim, hidden]`.
    Qkv,
    /// `[hidden, heads·head_dim]`.
    AttnOut,
    /// `[ffn, hidden]`.
    FfnIn,
    /// `[hidden, ffn]`.
    FfnOut,
}

const MAPS: [Map; 4] = [Map::Qkv, Map::AttnOut, Map::FfnIn, Map::FfnOut];

/// One layer's f32 weights, row-major (the dense values the maps are built from and that
/// calibration runs on).
struct Layer {
    heads: usize,
    /// Query, key, value weights stacked (`[3·heads·head_dim, hidden]`) and their biases.
    wqkv: Vec<f32>,
    bqkv: Vec<f32>,
    wo: Vec<f32>,
    bo: Vec<f32>,
    ln1: (Vec<f32>, Vec<f32>),
    wi: Vec<f32>,
    bi: Vec<f32>,
    wf: Vec<f32>,
    bf: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
}

impl Layer {
    /// The dense weights of `map` and its `(out, inp)`.
    fn dense(&self, map: Map, hidden: usize) -> (&[f32], usize, usize) {
        let (attn, ffn) = (self.bqkv.len() / 3, self.bi.len());
        match map {
            Map::Qkv => (&self.wqkv, 3 * attn, hidden),
            Map::AttnOut => (&self.wo, hidden, attn),
            Map::FfnIn => (&self.wi, ffn, hidden),
            Map::FfnOut => (&self.wf, hidden, ffn),
        }
    }
}

/// Every layer's linear maps in the representation the runtime chose (dense, sparse or int8),
/// indexed by [`Map`].
type Maps = Vec<[Matrix; 4]>;

/// The token ids of one padded batch, flattened `[batch·seq]`, with the positions each token
/// reads in the position table.
struct Tokens {
    batch: usize,
    seq: usize,
    ids: Vec<u32>,
    types: Option<Vec<u32>>,
    mask: Vec<u32>,
    positions: Vec<u32>,
}

/// What calibration sees of a forward: `(layer, site, input)` for the input of every linear map.
pub type Observer<'a> = dyn FnMut(usize, Site, &[f32]) -> Result<()> + 'a;

/// A BERT-family encoder on the CPU in f32: embeddings, then post-LayerNorm blocks, each
/// layer with its own head count and FFN width. One forward ([`Encoder::forward_observed`]'s
/// layer loop) serves inference, the packed inference of the experiments and calibration.
pub struct Encoder {
    pub config: EncoderConfig,
    runtime: Choice,
    /// The maps as `runtime` represents them, built when inference first runs.
    maps: std::sync::OnceLock<Maps>,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Option<Vec<f32>>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn load(config: EncoderConfig, w: &Weights) -> Result<Encoder> {
        let (family, h) = (config.family, config.hidden);
        let n: LayerNames = family.layer_names();
        let norm = |prefix: &str| -> Result<(Vec<f32>, Vec<f32>)> {
            Ok((w.values(&format!("{prefix}.weight"), &[h])?, w.values(&format!("{prefix}.bias"), &[h])?))
        };
        let mut layers = Vec::with_capacity(config.layers.len());
        for (i, shape) in config.layers.iter().enumerate() {
            let p = family.layer_prefix(i);
            let attn = shape.heads * config.head_dim;
            let (mut wqkv, mut bqkv) = (Vec::with_capacity(3 * attn * h), Vec::with_capacity(3 * attn));
            if shape.heads > 0 {
                for m in [n.query, n.key, n.value] {
                    let (wm, bm) = w.linear(&format!("{p}{m}"), attn, h)?;
                    wqkv.extend(wm);
                    bqkv.extend(bm);
                }
            }
            let (wo, bo) = w.linear(&format!("{p}{}", n.attn_out), h, attn)?;
            let (wi, bi) = w.linear(&format!("{p}{}", n.ffn_in), shape.ffn, h)?;
            let (wf, bf) = w.linear(&format!("{p}{}", n.ffn_out), h, shape.ffn)?;
            layers.push(Layer {
                heads: shape.heads,
                wqkv,
                bqkv,
                wo,
                bo,
                ln1: norm(&format!("{p}{}", n.attn_norm))?,
                wi,
                bi,
                wf,
                bf,
                ln2: norm(&format!("{p}{}", n.out_norm))?,
            });
        }
        let table = |name: &str, rows: usize| w.values(name, &[rows, h]);
        Ok(Encoder {
            word: table("embeddings.word_embeddings.weight", config.vocab)?,
            position: table("embeddings.position_embeddings.weight", config.max_positions)?,
            token_type: if config.type_vocab > 0 {
                Some(table("embeddings.token_type_embeddings.weight", config.type_vocab)?)
            } else {
                None
            },
            emb_ln: norm("embeddings.LayerNorm")?,
            layers,
            config,
            maps: std::sync::OnceLock::new(),
            runtime: Choice::default(),
        })
    }

    /// Load `config.json` + `model.safetensors` bytes.
    pub fn from_files(config_json: &[u8], safetensors: &[u8], device: &Device) -> Result<Encoder> {
        let cfg = ModelConfig::parse(config_json).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
        Encoder::from_weights(&cfg, safetensors, device)
    }

    /// Load `model.safetensors` bytes described by a parsed `config.json`.
    pub fn from_weights(cfg: &ModelConfig, safetensors: &[u8], device: &Device) -> Result<Encoder> {
        let w = Weights::from_safetensors(safetensors, cfg.encoder_family().map_err(ModelError::Invalid)?, device)?;
        let config = EncoderConfig::new(cfg, &w.shapes())?;
        Encoder::load(config, &w)
    }

    /// The batch's token ids, token types and mask as flat vectors, with each token's position
    /// ([`EncoderConfig::position_ids`]). Ids, token types and positions past their tables are
    /// errors.
    fn tokens(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>, attention_mask: &Tensor) -> Result<Tokens> {
        let (batch, seq) = input_ids.dims2()?;
        let c = &self.config;
        if attention_mask.dims2()? != (batch, seq) {
            return invalid(format!("attention mask {:?} for input ids {:?}", attention_mask.dims(), input_ids.dims()));
        }
        let ids = input_ids.flatten_all()?.to_vec1::<u32>()?;
        let mask: Vec<u32> = attention_mask
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|m| u32::from(m != 0.0))
            .collect();
        let types = match (&self.token_type, token_type_ids) {
            (Some(_), Some(tt)) => Some(tt.flatten_all()?.to_vec1::<u32>()?),
            (Some(_), None) => Some(vec![0; ids.len()]),
            (None, _) => None,
        };
        let positions = c.position_ids(&ids, seq)?;
        let check = |values: &[u32], what: &str, size: usize| match values.iter().find(|v| **v as usize >= size) {
            Some(v) => invalid(format!("{what} {v} out of range (table of {size})")),
            None => Ok(()),
        };
        check(&ids, "token id", c.vocab)?;
        check(&positions, "position", c.max_positions)?;
        if let Some(t) = &types {
            if t.len() != ids.len() {
                return invalid(format!("{} token type ids for {} input ids", t.len(), ids.len()));
            }
            check(t, "token type id", c.type_vocab)?;
        }
        Ok(Tokens { batch, seq, ids, types, mask, positions })
    }

    /// The embedding block's output (word + position (+ token type), then LayerNorm) for the
    /// tokens at `rows` of the batch: `[rows.len(), hidden]`.
    fn embed(&self, tok: &Tokens, rows: &[usize]) -> Vec<f32> {
        let h = self.config.hidden;
        let mut x = vec![0f32; rows.len() * h];
        for (out, &r) in x.chunks_exact_mut(h).zip(rows) {
            let word = &self.word[tok.ids[r] as usize * h..][..h];
            let pos = &self.position[tok.positions[r] as usize * h..][..h];
            out.iter_mut().zip(word.iter().zip(pos)).for_each(|(o, (a, b))| *o = a + b);
            if let (Some(table), Some(types)) = (&self.token_type, &tok.types) {
                let t = &table[types[r] as usize * h..][..h];
                out.iter_mut().zip(t).for_each(|(o, v)| *o += v);
            }
        }
        fused::layer_norm(&mut x, &self.emb_ln.0, &self.emb_ln.1, self.config.eps as f32);
        x
    }

    /// Last hidden state `[batch, seq, hidden]`. `input_ids` u32 `[batch, seq]`;
    /// `attention_mask` `[batch, seq]` with 1 for real tokens and 0 for padding. Every position
    /// is computed, padding too, as Hugging Face does.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let tok = self.tokens(input_ids, token_type_ids, attention_mask)?;
        let all: Vec<usize> = (0..tok.ids.len()).collect();
        let seqs = Seq::padded(&tok.mask, tok.seq);
        let x = self.run(Some(self.maps()), self.embed(&tok, &all), &seqs, &mut |_, _, _| Ok(()))?;
        Ok(Tensor::from_vec(x, (tok.batch, tok.seq, self.config.hidden), input_ids.device())?)
    }

    /// As [`Encoder::forward`] at the real tokens, computing nothing for padding: the real
    /// tokens of every sequence are packed back to back through the layers (attention stays
    /// within each sequence), and padding positions of the result are 0 (the reference computes
    /// values there that nothing should read).
    pub fn forward_packed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let tok = self.tokens(input_ids, token_type_ids, attention_mask)?;
        let (x, seqs) = self.packed(&tok);
        let h = self.config.hidden;
        let xs = self.run(Some(self.maps()), x, &seqs, &mut |_, _, _| Ok(()))?;
        let mut out = vec![0f32; tok.ids.len() * h];
        for (row, i) in xs.chunks_exact(h).zip(tok.mask.iter().enumerate().filter(|(_, m)| **m != 0).map(|(i, _)| i)) {
            out[i * h..(i + 1) * h].copy_from_slice(row);
        }
        Ok(Tensor::from_vec(out, (tok.batch, tok.seq, h), input_ids.device())?)
    }

    /// The embedding output of the real tokens, packed sequence after sequence, and the
    /// sequences as the attention reads them.
    fn packed(&self, tok: &Tokens) -> (Vec<f32>, Vec<Seq>) {
        let real: Vec<usize> = (0..tok.ids.len()).filter(|&i| tok.mask[i] != 0).collect();
        let lengths: Vec<usize> =
            tok.mask.chunks(tok.seq.max(1)).map(|m| m.iter().filter(|v| **v != 0).count()).collect();
        (self.embed(tok, &real), Seq::packed(&lengths))
    }

    /// The embeddings' output for calibration: the real tokens of `(input_ids, attention_mask,
    /// token_type_ids)` packed as [`Encoder::layer_forward_observed`] takes them.
    pub fn calibration_input(&self, batch: &Batch) -> Result<(Vec<f32>, Vec<Seq>)> {
        let (ids, mask, tt) = batch;
        Ok(self.packed(&self.tokens(ids, Some(tt), mask)?))
    }

    /// The forward of the real tokens (packed), showing `observe(layer, site, input)` the
    /// input of every linear map (`[real tokens, features]`, row-major) as it reads it:
    /// calibration-based pruning reads its statistics here. The maps run dense, on the f32
    /// weights, whatever the runtime representation.
    pub fn forward_observed(&self, batch: &Batch, observe: &mut Observer<'_>) -> Result<()> {
        let (x, seqs) = self.calibration_input(batch)?;
        self.run(None, x, &seqs, observe).map(|_| ())
    }

    /// Runs layer `i` alone (dense) on its input `x` (`[rows, hidden]` of `seqs`), showing
    /// `observe` the input of each linear map. Layer-wise methods (SparseGPT) step through the
    /// model with this and [`Encoder::set_weight`].
    pub fn layer_forward_observed(
        &self,
        i: usize,
        x: &[f32],
        seqs: &[Seq],
        observe: &mut dyn FnMut(Site, &[f32]) -> Result<()>,
    ) -> Result<Vec<f32>> {
        if i >= self.layers.len() {
            return invalid(format!("layer {i} out of range"));
        }
        self.layer(None, i, x, seqs, observe)
    }

    /// Every layer on `x`, with the runtime's `maps` or (`None`) the dense weights.
    fn run(&self, maps: Option<&Maps>, mut x: Vec<f32>, seqs: &[Seq], observe: &mut Observer<'_>) -> Result<Vec<f32>> {
        for i in 0..self.layers.len() {
            x = self.layer(maps, i, &x, seqs, &mut |site, input| observe(i, site, input))?;
        }
        Ok(x)
    }

    /// Layer `i` on `x [rows, hidden]`: stacked Q/K/V, attention, output map + bias + residual +
    /// LayerNorm, FFN in + bias + activation, FFN out + bias + residual + LayerNorm.
    fn layer(
        &self,
        maps: Option<&Maps>,
        i: usize,
        x: &[f32],
        seqs: &[Seq],
        observe: &mut dyn FnMut(Site, &[f32]) -> Result<()>,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let (l, h, eps) = (&self.layers[i], c.hidden, c.eps as f32);
        let n = x.len() / h.max(1);
        let apply = |map: Map, input: &[f32], bias: Option<&[f32]>| match maps {
            Some(m) => m[i][map as usize].apply(input, n, bias),
            None => {
                let (w, out, inp) = l.dense(map, h);
                linear(input, n, inp, w, out, bias)
            }
        };
        let mut a = if l.heads == 0 {
            // Every head removed: the block adds only the output map's bias.
            vec![0.0; n * h]
        } else {
            observe(Site::Attention, x)?;
            let qkv = apply(Map::Qkv, x, Some(&l.bqkv));
            let ctx = fused::attention(&qkv, seqs, n, &Attn::bidirectional(l.heads, c.head_dim));
            drop(qkv);
            observe(Site::AttentionOutput, &ctx)?;
            apply(Map::AttnOut, &ctx, None)
        };
        fused::add_layer_norm(&mut a, &l.bo, x, &l.ln1.0, &l.ln1.1, eps);
        observe(Site::FfnIn, &a)?;
        let mut f = apply(Map::FfnIn, &a, None);
        fused::activate(&mut f, &l.bi, c.activation);
        observe(Site::FfnOut, &f)?;
        let mut o = apply(Map::FfnOut, &f, None);
        drop(f);
        fused::add_layer_norm(&mut o, &l.bf, &a, &l.ln2.0, &l.ln2.1, eps);
        Ok(o)
    }

    /// The maps as [`Encoder::set_runtime`] chose, built on first use.
    fn maps(&self) -> &Maps {
        self.maps.get_or_init(|| {
            let h = self.config.hidden;
            self.layers
                .iter()
                .map(|l| {
                    MAPS.map(|m| {
                        let (w, out, inp) = l.dense(m, h);
                        Matrix::choose(w.to_vec(), out, inp, self.runtime)
                    })
                })
                .collect()
        })
    }

    /// How the inference forward represents each linear map (by default dense or sparse,
    /// whichever runs faster, measured when the forward first runs). Calibration always runs
    /// the dense f32 weights.
    pub fn set_runtime(&mut self, choice: Choice) {
        self.runtime = choice;
        self.maps = std::sync::OnceLock::new();
    }

    /// Per layer, the representation each linear map of the inference forward runs with
    /// (`qkv`, `attention_output`, `ffn_in`, `ffn_out`: `dense`, `sparse` or `int8`).
    pub fn representations(&self) -> Vec<[(&'static str, &'static str); 4]> {
        let names = ["qkv", "attention_output", "ffn_in", "ffn_out"];
        self.maps().iter().map(|l| [0, 1, 2, 3].map(|k| (names[k], l[k].kind()))).collect()
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Replaces the weight (`[out, in]`) of linear map `module` (a name relative to the layer,
    /// e.g. `attention.self.query`) of layer `i`, keeping its bias. The shape must not change.
    pub fn set_weight(&mut self, i: usize, module: &str, weight: &[f32]) -> Result<()> {
        let n = self.config.family.layer_names();
        let (h, hd) = (self.config.hidden, self.config.head_dim);
        let layer = self.layers.get_mut(i).ok_or_else(|| ModelError::Invalid(format!("layer {i} out of range")))?;
        let attn = layer.heads * hd;
        let (buf, range) = match module {
            m if m == n.query => (&mut layer.wqkv, 0..attn * h),
            m if m == n.key => (&mut layer.wqkv, attn * h..2 * attn * h),
            m if m == n.value => (&mut layer.wqkv, 2 * attn * h..3 * attn * h),
            m if m == n.attn_out => (&mut layer.wo, 0..h * attn),
            m if m == n.ffn_in => (&mut layer.wi, 0..layer.bi.len() * h),
            m if m == n.ffn_out => (&mut layer.wf, 0..h * layer.bi.len()),
            _ => return invalid(format!("layer {i} has no linear map {module}")),
        };
        if range.is_empty() || range.len() != weight.len() || range.end > buf.len() {
            return invalid(format!(
                "layer {i} {module}: {} values cannot replace a map of {}",
                weight.len(),
                range.len()
            ));
        }
        buf[range].copy_from_slice(weight);
        self.maps = std::sync::OnceLock::new();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::io::st::Dtype;
    use crate::engine::testing::TinyModel;

    fn ids(b: usize, t: usize, vocab: u32, pad_last: usize) -> (Tensor, Tensor) {
        let mut v = Vec::new();
        let mut m = Vec::new();
        for i in 0..b {
            for j in 0..t {
                let is_pad = i == b - 1 && j >= t - pad_last;
                v.push(if is_pad { 0 } else { 5 + ((i * 7 + j * 3) as u32 % (vocab - 5)) });
                m.push(if is_pad { 0u32 } else { 1 });
            }
        }
        (Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap(), Tensor::from_vec(m, (b, t), &Device::Cpu).unwrap())
    }

    /// The encoder computed with candle's stock ops, as Hugging Face writes it (token type 0
    /// everywhere): the reference the forward is held to.
    pub(crate) fn reference(cfg: &EncoderConfig, w: &Weights, ids: &Tensor, mask: &Tensor) -> Tensor {
        use candle_core::{Module, D};
        let (b, t) = ids.dims2().unwrap();
        let h = cfg.hidden;
        let n = cfg.family.layer_names();
        let get = |name: String| w.get(&name).unwrap();
        let lin = |p: String| candle_nn::Linear::new(get(format!("{p}.weight")), Some(get(format!("{p}.bias"))));
        let ln = |p: String, x: &Tensor| {
            candle_nn::ops::layer_norm_slow(x, &get(format!("{p}.weight")), &get(format!("{p}.bias")), cfg.eps as f32)
                .unwrap()
        };
        let pad = cfg.pad_token_id;
        let positions: Vec<u32> = match cfg.family {
            Family::Roberta => ids
                .to_vec2::<u32>()
                .unwrap()
                .iter()
                .flat_map(|row| {
                    row.iter()
                        .scan(0, |k, &id| {
                            Some(if id == pad {
                                pad
                            } else {
                                *k += 1;
                                pad + *k
                            })
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
            _ => (0..b * t).map(|i| (i % t) as u32).collect(),
        };
        let emb = |name: &str, idx: &Tensor| {
            get(format!("embeddings.{name}.weight"))
                .embedding(&idx.flatten_all().unwrap())
                .unwrap()
                .reshape((b, t, h))
                .unwrap()
        };
        let mut x = (emb("word_embeddings", ids)
            + emb("position_embeddings", &Tensor::from_vec(positions, (b, t), &Device::Cpu).unwrap()))
        .unwrap();
        if cfg.type_vocab > 0 {
            x = (x + emb("token_type_embeddings", &ids.zeros_like().unwrap())).unwrap();
        }
        let mut x = ln("embeddings.LayerNorm".into(), &x);
        let m = mask.to_dtype(DType::F32).unwrap();
        let bias =
            ((m.ones_like().unwrap() - &m).unwrap() * f64::from(f32::MIN)).unwrap().reshape((b, 1, 1, t)).unwrap();
        for (i, shape) in cfg.layers.iter().enumerate() {
            let p = cfg.family.layer_prefix(i);
            let o = lin(format!("{p}{}", n.attn_out));
            let attn = if shape.heads == 0 {
                o.bias().unwrap().reshape((1, 1, h)).unwrap().broadcast_as((b, t, h)).unwrap().contiguous().unwrap()
            } else {
                let (nh, hd) = (shape.heads, cfg.head_dim);
                let split = |m: &str| {
                    let y = lin(format!("{p}{m}")).forward(&x).unwrap();
                    y.reshape((b, t, nh, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
                };
                let (q, k, v) = (split(n.query), split(n.key), split(n.value));
                let scores = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
                let probs = candle_nn::ops::softmax(&scores.broadcast_add(&bias).unwrap(), D::Minus1).unwrap();
                let ctx = probs.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, t, nh * hd)).unwrap();
                o.forward(&ctx).unwrap()
            };
            x = ln(format!("{p}{}", n.attn_norm), &(attn + &x).unwrap());
            let f = lin(format!("{p}{}", n.ffn_in)).forward(&x).unwrap();
            let f = match cfg.activation {
                Activation::Gelu => f.gelu_erf(),
                Activation::GeluTanh => f.gelu(),
                Activation::Relu => f.relu(),
            }
            .unwrap();
            let f = lin(format!("{p}{}", n.ffn_out)).forward(&f).unwrap();
            x = ln(format!("{p}{}", n.out_norm), &(f + &x).unwrap());
        }
        x
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn forward_matches_candle_ops() {
        for family in ["bert", "roberta", "distilbert"] {
            let m = TinyModel { model_type: family, layers: 3, ..Default::default() };
            let w = Weights::from_safetensors(&m.safetensors(), Family::parse(family).unwrap(), &Device::Cpu).unwrap();
            let cfg = EncoderConfig::from_checkpoint(m.config_json().as_bytes(), &w.shapes()).unwrap();
            let enc = Encoder::load(cfg.clone(), &w).unwrap();
            // Padding at the end of one row, and a row of padding only.
            let (i, mut mask) = ids(3, 9, 64, 4);
            mask = Tensor::cat(
                &[mask.narrow(0, 0, 2).unwrap(), Tensor::zeros((1, 9), DType::U32, &Device::Cpu).unwrap()],
                0,
            )
            .unwrap();
            let slow = reference(&cfg, &w, &i, &mask);
            let fast = enc.forward(&i, None, &mask).unwrap();
            assert!(max_diff(&fast, &slow) < 1e-5, "{family}: {}", max_diff(&fast, &slow));
            // Packed: the same at real tokens, 0 at padding.
            let packed = enc.forward_packed(&i, None, &mask).unwrap();
            let keep = |m: &Tensor| m.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
            let masked = slow.broadcast_mul(&keep(&mask)).unwrap();
            assert!(max_diff(&packed, &masked) < 1e-5, "{family} packed: {}", max_diff(&packed, &masked));
            // A mask with a hole (left and middle padding) packs the same way.
            let holes = Tensor::from_vec(
                (0..27u32).map(|j| u32::from(j % 9 != 0 && j % 9 != 4)).collect::<Vec<_>>(),
                (3, 9),
                &Device::Cpu,
            )
            .unwrap();
            let s = reference(&cfg, &w, &i, &holes).broadcast_mul(&keep(&holes)).unwrap();
            let p = enc.forward_packed(&i, None, &holes).unwrap();
            assert!(max_diff(&p, &s) < 1e-5, "{family} holes: {}", max_diff(&p, &s));
            let f = enc.forward(&i, None, &holes).unwrap().broadcast_mul(&keep(&holes)).unwrap();
            assert!(max_diff(&f, &s) < 1e-5, "{family} holes, padded: {}", max_diff(&f, &s));
        }
    }

    #[test]
    fn calibration_sees_every_map_input_of_the_real_tokens() {
        let m = TinyModel { layers: 2, ..Default::default() };
        let mut enc = Encoder::from_files(m.config_json().as_bytes(), &m.safetensors(), &Device::Cpu).unwrap();
        let (i, mask) = ids(2, 7, 64, 3);
        let batch = (i.clone(), mask.clone(), i.zeros_like().unwrap());
        let mut seen = Vec::new();
        enc.forward_observed(&batch, &mut |layer, site, x| {
            seen.push((layer, site, x.len()));
            Ok(())
        })
        .unwrap();
        // 11 real tokens; hidden 32, 4 heads of 8, FFN 64.
        let per_layer = |l| {
            [
                (l, Site::Attention, 11 * 32),
                (l, Site::AttentionOutput, 11 * 32),
                (l, Site::FfnIn, 11 * 32),
                (l, Site::FfnOut, 11 * 64),
            ]
        };
        assert_eq!(seen, [per_layer(0), per_layer(1)].concat());
        // Layer by layer gives the packed forward; a new weight changes what follows.
        let (x0, seqs) = enc.calibration_input(&batch).unwrap();
        let step = |enc: &Encoder, x: &[f32]| {
            (0..2).fold(x.to_vec(), |x, l| enc.layer_forward_observed(l, &x, &seqs, &mut |_, _| Ok(())).unwrap())
        };
        let packed = enc.forward_packed(&i, None, &mask).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let real: Vec<f32> = packed
            .chunks(32)
            .zip(mask.flatten_all().unwrap().to_vec1::<u32>().unwrap())
            .filter(|(_, m)| *m != 0)
            .flat_map(|(r, _)| r.to_vec())
            .collect();
        let by_layer = step(&enc, &x0);
        assert!(by_layer.iter().zip(&real).all(|(a, b)| (a - b).abs() < 1e-5));
        enc.set_weight(1, "output.dense", &vec![0.0; 32 * 64]).unwrap();
        assert!(step(&enc, &x0).iter().zip(&by_layer).any(|(a, b)| a != b));
        assert!(enc.set_weight(1, "output.dense", &[0.0; 3]).is_err());
        assert!(enc.set_weight(5, "output.dense", &vec![0.0; 32 * 64]).is_err());
        assert!(enc.layer_forward_observed(2, &x0, &seqs, &mut |_, _| Ok(())).is_err());
    }

    #[test]
    fn token_ids_past_their_tables_are_errors() {
        let m = TinyModel::default();
        let enc = Encoder::from_files(m.config_json().as_bytes(), &m.safetensors(), &Device::Cpu).unwrap();
        let (_, mask) = ids(1, 4, 64, 0);
        let i = Tensor::from_vec(vec![5u32, 6, 64, 7], (1, 4), &Device::Cpu).unwrap();
        let err = enc.forward(&i, None, &mask).unwrap_err().to_string();
        assert!(err.contains("token id 64 out of range"), "{err}");
        let long = Tensor::zeros((1, enc.config.max_positions + 1), DType::U32, &Device::Cpu).unwrap();
        assert!(enc.forward(&long, None, &long.ones_like().unwrap()).is_err());
    }

    #[test]
    fn reads_per_layer_shapes_and_runs_every_family() {
        for family in ["bert", "roberta", "distilbert"] {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                let m = TinyModel {
                    model_type: family,
                    dtype,
                    with_prefix_and_head: dtype == Dtype::F16,
                    ..Default::default()
                };
                let enc = Encoder::from_files(m.config_json().as_bytes(), &m.safetensors(), &Device::Cpu).unwrap();
                assert_eq!(enc.config.layers, vec![LayerShape { heads: 4, ffn: 64 }; 2]);
                let (i, mask) = ids(2, 7, 64, 3);
                let out = enc.forward(&i, None, &mask).unwrap();
                assert_eq!(out.dims(), &[2, 7, 32]);
                let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(v.iter().all(|x| x.is_finite()), "{family} {dtype:?}");
            }
        }
    }
}
