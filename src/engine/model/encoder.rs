//! Our BERT-family encoder in candle. Unlike `candle_transformers::models::bert`, every layer
//! has its own head count and FFN width (read from the tensor shapes), so a structurally pruned
//! checkpoint loads. Post-LayerNorm blocks as in BERT, RoBERTa and DistilBERT; tensor names
//! with or without the family prefix; f32/f16/bf16 checkpoints computed in f32.

pub use super::arch::Site;
use super::arch::{canonical_name, Family, LayerNames};
use super::config::ModelConfig;
use crate::engine::cpu::activation::Activation;
use crate::engine::cpu::fused;
pub use crate::engine::cpu::matrix::Choice;
use crate::engine::cpu::matrix::Matrix;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;
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

    fn linear(&self, prefix: &str) -> Result<Linear> {
        Ok(Linear::new(self.get(&format!("{prefix}.weight"))?, Some(self.get(&format!("{prefix}.bias"))?)))
    }

    fn norm(&self, prefix: &str, eps: f64) -> Result<Norm> {
        Ok(Norm {
            weight: self.get(&format!("{prefix}.weight"))?,
            bias: self.get(&format!("{prefix}.bias"))?,
            eps: eps as f32,
        })
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The differentiable path: candle's fused layer_norm has no backward (docs/design-notes.md).
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    shape: LayerShape,
    q: Option<Linear>,
    k: Option<Linear>,
    v: Option<Linear>,
    o: Linear,
    attn_norm: Norm,
    ffn_in: Linear,
    ffn_out: Linear,
    out_norm: Norm,
}

pub struct Encoder {
    pub config: EncoderConfig,
    /// The weights laid out for the fused CPU forward (`crate::engine::cpu::fused`), built on first use; `None`
    /// when the encoder is not on the CPU in f32.
    fast: std::sync::OnceLock<Option<fused::FastModel>>,
    runtime: Choice,
    word: Tensor,
    position: Tensor,
    token_type: Option<Tensor>,
    emb_norm: Norm,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn load(config: EncoderConfig, w: &Weights) -> Result<Encoder> {
        let family = config.family;
        let names: LayerNames = family.layer_names();
        let mut layers = Vec::with_capacity(config.layers.len());
        for (i, shape) in config.layers.iter().enumerate() {
            let p = family.layer_prefix(i);
            let opt = |m: &str| -> Result<Option<Linear>> {
                if shape.heads == 0 {
                    Ok(None)
                } else {
                    w.linear(&format!("{p}{m}")).map(Some)
                }
            };
            layers.push(Layer {
                shape: *shape,
                q: opt(names.query)?,
                k: opt(names.key)?,
                v: opt(names.value)?,
                o: w.linear(&format!("{p}{}", names.attn_out))?,
                attn_norm: w.norm(&format!("{p}{}", names.attn_norm), config.eps)?,
                ffn_in: w.linear(&format!("{p}{}", names.ffn_in))?,
                ffn_out: w.linear(&format!("{p}{}", names.ffn_out))?,
                out_norm: w.norm(&format!("{p}{}", names.out_norm), config.eps)?,
            });
        }
        Ok(Encoder {
            word: w.get("embeddings.word_embeddings.weight")?,
            position: w.get("embeddings.position_embeddings.weight")?,
            token_type: if config.type_vocab > 0 {
                Some(w.get("embeddings.token_type_embeddings.weight")?)
            } else {
                None
            },
            emb_norm: w.norm("embeddings.LayerNorm", config.eps)?,
            layers,
            config,
            fast: std::sync::OnceLock::new(),
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

    fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if t > self.config.max_positions {
            return invalid(format!(
                "sequence length {t} exceeds max_position_embeddings {}",
                self.config.max_positions
            ));
        }
        match self.config.family {
            Family::Roberta => {
                // RoBERTa counts positions from pad+1 over real tokens; padding gets `pad`.
                let pad = self.config.pad_token_id;
                let ids = input_ids.to_vec2::<u32>()?;
                let mut out = Vec::with_capacity(b * t);
                for row in ids {
                    let mut n = 0u32;
                    for id in row {
                        if id != pad {
                            n += 1;
                            out.push(pad + n);
                        } else {
                            out.push(pad);
                        }
                    }
                }
                Ok(Tensor::from_vec(out, (b, t), input_ids.device())?)
            }
            _ => Ok(Tensor::arange(0u32, t as u32, input_ids.device())?
                .unsqueeze(0)?
                .broadcast_as((b, t))?
                .contiguous()?),
        }
    }

    /// Last hidden state `[batch, seq, hidden]`. `input_ids` u32 `[batch, seq]`;
    /// `attention_mask` `[batch, seq]` with 1 for real tokens and 0 for padding.
    ///
    /// On the CPU in f32 this runs the fused path of [`crate::engine::cpu::fused`]; elsewhere candle's ops.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        match self.fast.get_or_init(|| self.fast_layers()) {
            Some(model) => self.forward_fast(model, input_ids, token_type_ids, attention_mask),
            None => self.forward_unfused(input_ids, token_type_ids, attention_mask),
        }
    }

    /// [`Encoder::forward`] with candle's stock ops only (the reference for the fused path).
    pub fn forward_unfused(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        self.forward_observed(input_ids, token_type_ids, attention_mask, &mut |_, _, _| Ok(()))
    }

    fn forward_fast(
        &self,
        model: &fused::FastModel,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let x = self.embedding_sum(input_ids, token_type_ids)?;
        let (b, t, h) = x.dims3()?;
        let mask = Self::mask_vec(attention_mask)?;
        let xs = self.run_fast(model, x.flatten_all()?.to_vec1::<f32>()?, &fused::Seq::padded(&mask, t), h);
        Ok(Tensor::from_vec(xs, (b, t, h), x.device())?)
    }

    /// The embeddings' LayerNorm and every layer of the fused path on `xs` (`[rows, hidden]`,
    /// the embedding sums of the rows `seqs` describe).
    fn run_fast(&self, model: &fused::FastModel, mut xs: Vec<f32>, seqs: &[fused::Seq], h: usize) -> Vec<f32> {
        let eps = self.config.eps as f32;
        fused::layer_norm(&mut xs, &model.emb_ln.0, &model.emb_ln.1, eps);
        let d = fused::Dims {
            rows: xs.len() / h.max(1),
            hidden: h,
            head_dim: self.config.head_dim,
            eps,
            activation: self.config.activation,
        };
        for l in &model.layers {
            xs = fused::layer(&xs, seqs, l, &d);
        }
        xs
    }

    /// 1 for a real token, 0 for padding, whatever the mask's dtype.
    fn mask_vec(attention_mask: &Tensor) -> Result<Vec<u32>> {
        Ok(attention_mask
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|m| u32::from(m != 0.0))
            .collect())
    }

    /// As [`Encoder::forward`] at the real tokens, computing nothing for padding: the real
    /// tokens of every sequence are packed back to back through the layers (attention stays
    /// within each sequence), and padding positions of the result are 0 (the reference computes
    /// values there that nothing should read). Where the fused path does not apply, this is
    /// `forward` with padding positions zeroed.
    pub fn forward_packed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let Some(model) = self.fast.get_or_init(|| self.fast_layers()) else {
            let y = self.forward(input_ids, token_type_ids, attention_mask)?;
            let m = Tensor::from_vec(Self::mask_vec(attention_mask)?, attention_mask.dims2()?, y.device())?
                .to_dtype(y.dtype())?
                .unsqueeze(D::Minus1)?;
            return Ok(y.broadcast_mul(&m)?);
        };
        let x = self.embedding_sum(input_ids, token_type_ids)?;
        let (b, t, h) = x.dims3()?;
        let all = x.flatten_all()?.to_vec1::<f32>()?;
        let mask = Self::mask_vec(attention_mask)?;
        let mut xs = Vec::with_capacity(all.len());
        let mut lengths = Vec::with_capacity(b);
        for (row, m) in mask.chunks(t).enumerate() {
            let mut n = 0;
            for (j, _) in m.iter().enumerate().filter(|(_, v)| **v != 0) {
                let p = (row * t + j) * h;
                xs.extend_from_slice(&all[p..p + h]);
                n += 1;
            }
            lengths.push(n);
        }
        drop(all);
        let xs = self.run_fast(model, xs, &fused::Seq::packed(&lengths), h);
        let mut out = vec![0f32; b * t * h];
        let mut src = xs.chunks_exact(h);
        for (i, m) in mask.iter().enumerate() {
            if *m != 0 {
                out[i * h..(i + 1) * h].copy_from_slice(src.next().expect("one packed row per real token"));
            }
        }
        Ok(Tensor::from_vec(out, (b, t, h), x.device())?)
    }

    /// Copies of the layers' weights for the fused path, when every one is an f32 CPU tensor,
    /// each linear map represented as [`Encoder::set_runtime`] chose.
    fn fast_layers(&self) -> Option<fused::FastModel> {
        let v = |t: &Tensor| -> Option<Vec<f32>> {
            if !t.device().is_cpu() || t.dtype() != DType::F32 {
                return None;
            }
            t.flatten_all().ok()?.to_vec1::<f32>().ok()
        };
        let lin = |l: &Linear| -> Option<(Vec<f32>, Vec<f32>)> { Some((v(l.weight())?, v(l.bias()?)?)) };
        let h = self.config.hidden;
        let mat = |w: Vec<f32>, out: usize, inp: usize| Matrix::choose(w, out, inp, self.runtime);
        let mut out = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let (mut wqkv, mut bqkv) = (Vec::new(), Vec::new());
            if let (Some(q), Some(k), Some(vv)) = (&l.q, &l.k, &l.v) {
                for m in [q, k, vv] {
                    let (w, b) = lin(m)?;
                    wqkv.extend(w);
                    bqkv.extend(b);
                }
            }
            let heads = if wqkv.is_empty() { 0 } else { l.shape.heads };
            let attn = heads * self.config.head_dim;
            let (wo, bo) = lin(&l.o)?;
            let (wi, bi) = lin(&l.ffn_in)?;
            let (wf, bf) = lin(&l.ffn_out)?;
            let ffn = bi.len();
            out.push(fused::FastLayer {
                heads,
                wqkv: mat(wqkv, bqkv.len(), h),
                bqkv,
                wo: mat(wo, h, attn),
                bo,
                ln1: (v(&l.attn_norm.weight)?, v(&l.attn_norm.bias)?),
                wi: mat(wi, ffn, h),
                bi,
                wf: mat(wf, h, ffn),
                bf,
                ln2: (v(&l.out_norm.weight)?, v(&l.out_norm.bias)?),
            });
        }
        Some(fused::FastModel { emb_ln: (v(&self.emb_norm.weight)?, v(&self.emb_norm.bias)?), layers: out })
    }

    /// How the fused forward represents each linear map (by default dense or sparse, whichever
    /// runs faster, measured when the forward first runs).
    pub fn set_runtime(&mut self, choice: Choice) {
        self.runtime = choice;
        self.fast = std::sync::OnceLock::new();
    }

    /// Per layer, the representation each linear map of the fused forward runs with
    /// (`qkv`, `attention_output`, `ffn_in`, `ffn_out`: `dense`, `sparse` or `int8`); `None`
    /// where the fused forward does not apply (not f32 on the CPU).
    pub fn representations(&self) -> Option<Vec<[(&'static str, &'static str); 4]>> {
        let model = self.fast.get_or_init(|| self.fast_layers()).as_ref()?;
        Some(
            model
                .layers
                .iter()
                .map(|l| {
                    [
                        ("qkv", l.wqkv.kind()),
                        ("attention_output", l.wo.kind()),
                        ("ffn_in", l.wi.kind()),
                        ("ffn_out", l.wf.kind()),
                    ]
                })
                .collect(),
        )
    }

    /// As [`Encoder::forward`], showing `observe(layer, site, input)` the input of every linear
    /// map (`[batch, seq, features]`): calibration-based pruning reads its statistics here.
    pub fn forward_observed(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
        observe: &mut dyn FnMut(usize, Site, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let mut x = self.embed(input_ids, token_type_ids)?;
        let bias = Self::attention_bias(attention_mask)?;
        for i in 0..self.layers.len() {
            x = self.layer_forward_observed(i, &x, &bias, &mut |site, input| observe(i, site, input))?;
        }
        Ok(x)
    }

    /// The embedding block's output `[batch, seq, hidden]` (the first layer's input).
    pub fn embed(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.emb_norm.forward(&self.embedding_sum(input_ids, token_type_ids)?)?)
    }

    /// Word + position (+ token type) embeddings, before their LayerNorm.
    fn embedding_sum(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let h = self.config.hidden;
        let lookup = |table: &Tensor, ids: &Tensor| -> candle_core::Result<Tensor> {
            table.embedding(&ids.flatten_all()?)?.reshape((b, t, h))
        };
        let mut x = (lookup(&self.word, input_ids)? + lookup(&self.position, &self.position_ids(input_ids)?)?)?;
        if let Some(tt) = &self.token_type {
            let ids = match token_type_ids {
                Some(ids) => ids.clone(),
                None => Tensor::zeros((b, t), DType::U32, input_ids.device())?,
            };
            x = (x + lookup(tt, &ids)?)?;
        }
        Ok(x)
    }

    /// The additive attention bias `[batch, 1, 1, seq]` of a `[batch, seq]` 0/1 mask, as Hugging
    /// Face builds it: (1 - mask) * finfo(f32).min.
    pub fn attention_bias(attention_mask: &Tensor) -> Result<Tensor> {
        let (b, t) = attention_mask.dims2()?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        Ok(((mask.ones_like()? - &mask)? * f64::from(f32::MIN))?.reshape((b, 1, 1, t))?)
    }

    /// Runs layer `i` alone on its input `x`, showing `observe` the input of each linear map.
    /// Layer-wise methods (SparseGPT) step through the model with this.
    pub fn layer_forward_observed(
        &self,
        i: usize,
        x: &Tensor,
        bias: &Tensor,
        observe: &mut dyn FnMut(Site, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let layer = self.layers.get(i).ok_or_else(|| ModelError::Invalid(format!("layer {i} out of range")))?;
        self.layer_forward(layer, x, bias, observe)
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Replaces the weight of linear map `module` (a name relative to the layer, e.g.
    /// `attention.self.query`) of layer `i`, keeping its bias. The shape must not change.
    pub fn set_weight(&mut self, i: usize, module: &str, weight: Tensor) -> Result<()> {
        let n = self.config.family.layer_names();
        let layer = self.layers.get_mut(i).ok_or_else(|| ModelError::Invalid(format!("layer {i} out of range")))?;
        let slot = match module {
            m if m == n.query => layer.q.as_mut(),
            m if m == n.key => layer.k.as_mut(),
            m if m == n.value => layer.v.as_mut(),
            m if m == n.attn_out => Some(&mut layer.o),
            m if m == n.ffn_in => Some(&mut layer.ffn_in),
            m if m == n.ffn_out => Some(&mut layer.ffn_out),
            _ => None,
        };
        let slot = slot.ok_or_else(|| ModelError::Invalid(format!("layer {i} has no linear map {module}")))?;
        if slot.weight().dims() != weight.dims() {
            return invalid(format!(
                "layer {i} {module}: shape {:?} cannot replace {:?}",
                weight.dims(),
                slot.weight().dims()
            ));
        }
        *slot = Linear::new(weight, slot.bias().cloned());
        self.fast = std::sync::OnceLock::new();
        Ok(())
    }

    fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        bias: &Tensor,
        observe: &mut dyn FnMut(Site, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        observe(Site::Attention, x)?;
        let attn = match (&l.q, &l.k, &l.v) {
            (Some(q), Some(k), Some(v)) => {
                let (nh, hd) = (l.shape.heads, self.config.head_dim);
                let split = |y: Tensor| -> candle_core::Result<Tensor> {
                    y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()
                };
                let q = split(q.forward(x)?)?;
                let k = split(k.forward(x)?)?;
                let v = split(v.forward(x)?)?;
                let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(bias)?;
                let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
                let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
                observe(Site::AttentionOutput, &ctx)?;
                l.o.forward(&ctx)?
            }
            // Every head removed: the block adds only the output projection's bias.
            _ => l.o.bias().expect("built with a bias").reshape((1, 1, h))?.broadcast_as((b, t, h))?.contiguous()?,
        };
        let x = l.attn_norm.forward(&(attn + x)?)?;
        observe(Site::FfnIn, &x)?;
        let f = self.config.activation.apply(&l.ffn_in.forward(&x)?)?;
        observe(Site::FfnOut, &f)?;
        let f = l.ffn_out.forward(&f)?;
        Ok(l.out_norm.forward(&(f + x)?)?)
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn fused_forward_matches_candle_ops() {
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        for family in ["bert", "roberta", "distilbert"] {
            let m = TinyModel { model_type: family, layers: 3, ..Default::default() };
            let enc = Encoder::from_files(m.config_json().as_bytes(), &m.safetensors(), &Device::Cpu).unwrap();
            // Padding at the end of one row, and a row of padding only.
            let (i, mut mask) = ids(3, 9, 64, 4);
            mask = Tensor::cat(
                &[mask.narrow(0, 0, 2).unwrap(), Tensor::zeros((1, 9), DType::U32, &Device::Cpu).unwrap()],
                0,
            )
            .unwrap();
            let (fast, slow) = (enc.forward(&i, None, &mask).unwrap(), enc.forward_unfused(&i, None, &mask).unwrap());
            assert!(max_diff(&fast, &slow) < 1e-5, "{family}: {}", max_diff(&fast, &slow));
            // Packed: the same at real tokens, 0 at padding.
            let packed = enc.forward_packed(&i, None, &mask).unwrap();
            let keep = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
            let masked = slow.broadcast_mul(&keep).unwrap();
            assert!(max_diff(&packed, &masked) < 1e-5, "{family} packed: {}", max_diff(&packed, &masked));
            // A mask with a hole (left and middle padding) packs the same way.
            let holes = Tensor::from_vec(
                (0..27u32).map(|j| u32::from(j % 9 != 0 && j % 9 != 4)).collect::<Vec<_>>(),
                (3, 9),
                &Device::Cpu,
            )
            .unwrap();
            let (p, s) =
                (enc.forward_packed(&i, None, &holes).unwrap(), enc.forward_unfused(&i, None, &holes).unwrap());
            let s = s.broadcast_mul(&holes.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap()).unwrap();
            assert!(max_diff(&p, &s) < 1e-5, "{family} holes: {}", max_diff(&p, &s));
            let f = enc
                .forward(&i, None, &holes)
                .unwrap()
                .broadcast_mul(&holes.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap())
                .unwrap();
            assert!(max_diff(&f, &s) < 1e-5, "{family} holes, padded: {}", max_diff(&f, &s));
        }
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
