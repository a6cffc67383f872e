//! The decoder families (GPT-2, Llama, Qwen2): their checkpoints' tensor naming and our
//! forward pass, composed of `engine::cpu`'s kernels (the same linear, attention, norms and
//! activations the encoder uses, with grouped-query and causal attention, RMSNorm, the SwiGLU
//! unit and rotary positions added there once).
//!
//! Pre-norm blocks: `h = x + attn(norm₁(x))`, `out = h + mlp(norm₂(h))`, a final norm, then the
//! LM head (`lm_head.weight`, or the token embeddings when tied). Every layer's head counts,
//! key/value head counts and MLP width are read from its tensors, so structurally pruned
//! checkpoints load. Weights of any float dtype are computed in f32. Positions are those
//! transformers uses when it is given no `position_ids`: 0, 1, … along each padded row (so a
//! left-padded sequence's first real token is not at position 0, exactly as in transformers).
//!
//! The model is also usable layer by layer ([`Embeddings::embed`], [`DecoderLayer::forward`],
//! [`Decoder::head`]), which calibration and sequential pruning need.

pub mod config;
pub mod rope;

pub use crate::engine::model::arch::DecoderKind;
pub use config::{DecoderConfig, Mlp, RopeConfig, RopeScaling};

use crate::engine::cpu::fused::{self, Attn, Seq};
use crate::engine::cpu::{linear, transpose};
use crate::engine::io::st;
use crate::engine::model::arch::{Arch, Site};
use crate::engine::model::error::ModelError;
use rope::Rope;
use std::collections::BTreeMap;

pub type Result<T> = std::result::Result<T, ModelError>;

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(ModelError::Invalid(msg.into()))
}

/// A checkpoint's tensors by canonical name (the base model's prefix stripped; `lm_head.weight`
/// stays as it is), read on demand from the safetensors bytes. Messages name tensors as the
/// file does.
pub struct Tensors<'a> {
    data: &'a [u8],
    tensors: BTreeMap<String, st::TensorInfo>,
    /// The base model's prefix, when the file's tensors carry it (a `…ForCausalLM` checkpoint).
    prefix: &'static str,
}

impl<'a> Tensors<'a> {
    pub fn parse(safetensors: &'a [u8], kind: DecoderKind) -> Result<Tensors<'a>> {
        let header = st::parse(safetensors).map_err(|e| ModelError::Invalid(format!("model.safetensors: {e}")))?;
        Ok(Tensors::new(safetensors, &header, kind))
    }

    /// The tensors of a file whose header is already parsed.
    pub fn new(safetensors: &'a [u8], header: &st::Header, kind: DecoderKind) -> Tensors<'a> {
        let data = &safetensors[header.data_start as usize..];
        Tensors { data, ..Tensors::shapes_only(header, kind) }
    }

    /// A header's tensors without their data: shapes can be checked, values not read.
    fn shapes_only(header: &st::Header, kind: DecoderKind) -> Tensors<'static> {
        let p = kind.prefix();
        let prefix = if header.tensors.keys().any(|k| k.starts_with(p)) { p } else { "" };
        let tensors =
            header.tensors.iter().map(|(k, t)| (k.strip_prefix(p).unwrap_or(k).to_string(), t.clone())).collect();
        Tensors { data: &[], tensors, prefix }
    }

    /// A canonical name as the file spells it.
    fn label(&self, name: &str) -> String {
        match name {
            "lm_head.weight" => name.to_string(),
            _ => format!("{}{name}", self.prefix),
        }
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.iter().map(|&d| d as usize).collect())
    }

    /// The tensor's entry, its shape checked against `shape`.
    fn expect(&self, name: &str, shape: &[usize]) -> Result<&st::TensorInfo> {
        let Some(t) = self.tensors.get(name) else {
            return invalid(format!("the checkpoint has no tensor {}", self.label(name)));
        };
        if !t.shape.iter().map(|&d| d as usize).eq(shape.iter().copied()) {
            return invalid(format!("tensor {} has shape {:?}, expected {shape:?}", self.label(name), t.shape));
        }
        if !t.dtype.is_float() {
            return invalid(format!("tensor {} has dtype {}, not a float", self.label(name), t.dtype.name()));
        }
        Ok(t)
    }

    /// A float tensor's values in f32, with its shape checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.expect(name, shape)?;
        st::floats(&self.data[t.begin as usize..t.end as usize], t.dtype).ok_or_else(|| {
            ModelError::Invalid(format!("tensor {} has dtype {}, not a float", self.label(name), t.dtype.name()))
        })
    }

    fn optional(&self, name: &str, shape: &[usize], present: bool) -> Result<Option<Vec<f32>>> {
        present.then(|| self.get(name, shape)).transpose()
    }

    /// The rows of a 2-D tensor.
    fn rows(&self, name: &str) -> Result<usize> {
        self.matrix(name).map(|s| s[0])
    }

    fn matrix(&self, name: &str) -> Result<Vec<usize>> {
        match self.shape(name) {
            Some(s) if s.len() == 2 => Ok(s),
            Some(s) => invalid(format!("tensor {} has shape {s:?}, expected a matrix", self.label(name))),
            None => invalid(format!("the checkpoint has no tensor {}", self.label(name))),
        }
    }
}

/// One block's sizes, as its tensors give them (a structurally pruned layer has fewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
}

impl LayerDims {
    /// Layer `i`'s head counts (from its query and key maps, or GPT-2's fused `c_attn`) and
    /// MLP width (from its MLP input map).
    fn read(t: &Tensors, cfg: &DecoderConfig, i: usize) -> Result<LayerDims> {
        let p = cfg.kind.layer_prefix(i);
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let per_head = |name: &str, rows: usize| -> Result<usize> {
            if !rows.is_multiple_of(hd) {
                return invalid(format!(
                    "tensor {} has {rows} rows, not a multiple of the head size {hd}",
                    t.label(name)
                ));
            }
            Ok(rows / hd)
        };
        match cfg.kind {
            DecoderKind::Gpt2 => {
                let c_attn = format!("{p}attn.c_attn.weight");
                let s = t.matrix(&c_attn)?;
                if s[0] != h || s[1] % 3 != 0 {
                    return invalid(format!(
                        "tensor {} has shape {s:?}, expected [{h}, 3·heads·{hd}]",
                        t.label(&c_attn)
                    ));
                }
                let heads = per_head(&c_attn, s[1] / 3)?;
                let c_fc = format!("{p}mlp.c_fc.weight");
                let s = t.matrix(&c_fc)?;
                if s[0] != h {
                    return invalid(format!("tensor {} has shape {s:?}, expected [{h}, width]", t.label(&c_fc)));
                }
                Ok(LayerDims { heads, kv_heads: heads, ffn: s[1] })
            }
            DecoderKind::Llama | DecoderKind::Qwen2 => {
                let (q, k) = (format!("{p}self_attn.q_proj.weight"), format!("{p}self_attn.k_proj.weight"));
                let heads = per_head(&q, t.rows(&q)?)?;
                let kv_heads = per_head(&k, t.rows(&k)?)?;
                if (kv_heads == 0) != (heads == 0) || (kv_heads > 0 && heads % kv_heads != 0) {
                    return invalid(format!(
                        "layer {i}: {heads} query heads cannot share {kv_heads} key/value heads evenly"
                    ));
                }
                Ok(LayerDims { heads, kv_heads, ffn: t.rows(&format!("{p}mlp.gate_proj.weight"))? })
            }
        }
    }

    /// Every tensor of a block with these sizes (names relative to the layer) and its stored
    /// shape: what [`check`] verifies and [`DecoderLayer::load`] reads.
    fn tensors(self, cfg: &DecoderConfig) -> BTreeMap<&'static str, Vec<usize>> {
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let (q, kv, f) = (self.heads * hd, self.kv_heads * hd, self.ffn);
        let mut m: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
        match cfg.kind {
            DecoderKind::Gpt2 => {
                for (n, s) in [
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
                    m.insert(n, s);
                }
            }
            DecoderKind::Llama | DecoderKind::Qwen2 => {
                for (n, s) in [
                    ("input_layernorm.weight", vec![h]),
                    ("self_attn.q_proj.weight", vec![q, h]),
                    ("self_attn.k_proj.weight", vec![kv, h]),
                    ("self_attn.v_proj.weight", vec![kv, h]),
                    ("self_attn.o_proj.weight", vec![h, q]),
                    ("post_attention_layernorm.weight", vec![h]),
                    ("mlp.gate_proj.weight", vec![f, h]),
                    ("mlp.up_proj.weight", vec![f, h]),
                    ("mlp.down_proj.weight", vec![h, f]),
                ] {
                    m.insert(n, s);
                }
                if cfg.qkv_bias {
                    m.insert("self_attn.q_proj.bias", vec![q]);
                    m.insert("self_attn.k_proj.bias", vec![kv]);
                    m.insert("self_attn.v_proj.bias", vec![kv]);
                }
                if cfg.out_bias {
                    m.insert("self_attn.o_proj.bias", vec![h]);
                }
                if cfg.mlp_bias {
                    m.insert("mlp.gate_proj.bias", vec![f]);
                    m.insert("mlp.up_proj.bias", vec![f]);
                    m.insert("mlp.down_proj.bias", vec![h]);
                }
            }
        }
        m
    }
}

/// The tensors outside the blocks (embeddings, learned positions, final norm, an untied LM
/// head) with their shapes.
fn model_tensors(cfg: &DecoderConfig) -> Vec<(&'static str, Vec<usize>)> {
    let (v, h) = (cfg.vocab, cfg.hidden);
    let mut out = match cfg.kind {
        DecoderKind::Gpt2 => vec![
            ("wte.weight", vec![v, h]),
            ("wpe.weight", vec![cfg.max_positions, h]),
            ("ln_f.weight", vec![h]),
            ("ln_f.bias", vec![h]),
        ],
        DecoderKind::Llama | DecoderKind::Qwen2 => vec![("embed_tokens.weight", vec![v, h]), ("norm.weight", vec![h])],
    };
    if !cfg.tie_embeddings {
        out.push(("lm_head.weight", vec![v, h]));
    }
    out
}

/// Check a checkpoint's header against its configuration without reading the weights: exactly
/// `layers` blocks, each with every tensor the config's sizes imply (as transformers requires
/// to load it), and the model's own tensors. Other tensors (GPT-2's old causal-mask buffers,
/// say) are allowed.
pub fn check(cfg: &DecoderConfig, header: &st::Header) -> std::result::Result<(), String> {
    let t = Tensors::shapes_only(header, cfg.kind);
    let msg = |e: ModelError| e.to_string();
    let arch = Arch::Decoder(cfg.kind);
    let found = header.tensors.keys().filter_map(|n| arch.split_layer(n)).map(|(i, _)| i + 1).max().unwrap_or(0);
    if found != cfg.layers {
        return Err(format!("config.json says {} layers but the checkpoint has {found}", cfg.layers));
    }
    for (name, shape) in model_tensors(cfg) {
        t.expect(name, &shape).map_err(msg)?;
    }
    let dims = LayerDims { heads: cfg.heads, kv_heads: cfg.kv_heads, ffn: cfg.intermediate };
    for i in 0..cfg.layers {
        let p = cfg.kind.layer_prefix(i);
        for (m, shape) in dims.tensors(cfg) {
            t.expect(&format!("{p}{m}"), &shape).map_err(msg)?;
        }
    }
    Ok(())
}

/// LayerNorm (γ, β) or RMSNorm (γ).
pub struct Norm {
    gamma: Vec<f32>,
    beta: Option<Vec<f32>>,
    eps: f32,
}

impl Norm {
    fn load(t: &Tensors, prefix: &str, cfg: &DecoderConfig) -> Result<Norm> {
        let h = [cfg.hidden];
        let layer_norm = cfg.kind == DecoderKind::Gpt2;
        Ok(Norm {
            gamma: t.get(&format!("{prefix}.weight"), &h)?,
            beta: t.optional(&format!("{prefix}.bias"), &h, layer_norm)?,
            eps: cfg.eps as f32,
        })
    }

    /// The normalised copy of `x [rows, hidden]`.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = x.to_vec();
        match &self.beta {
            Some(beta) => fused::layer_norm(&mut y, &self.gamma, beta, self.eps),
            None => fused::rms_norm(&mut y, &self.gamma, self.eps),
        }
        y
    }
}

/// One decoder block's weights, row-major f32, each linear map `[out, in]`.
pub struct DecoderLayer {
    pub attn: Attn,
    /// The MLP's width.
    pub ffn: usize,
    mlp: Mlp,
    hidden: usize,
    norm1: Norm,
    /// Query, key and value maps stacked: `[attn.qkv_width(), hidden]`.
    wqkv: Vec<f32>,
    bqkv: Option<Vec<f32>>,
    /// `[hidden, heads·head_dim]`.
    wo: Vec<f32>,
    bo: Option<Vec<f32>>,
    norm2: Norm,
    /// `[ffn, hidden]`, or gate and up stacked `[2·ffn, hidden]` for SwiGLU.
    w_in: Vec<f32>,
    b_in: Option<Vec<f32>>,
    /// `[hidden, ffn]`.
    w_out: Vec<f32>,
    b_out: Option<Vec<f32>>,
}

impl DecoderLayer {
    /// Layer `i` of the checkpoint, its head counts and MLP width read from its tensors.
    pub fn load(t: &Tensors, cfg: &DecoderConfig, i: usize) -> Result<DecoderLayer> {
        let p = cfg.kind.layer_prefix(i);
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let dims = LayerDims::read(t, cfg, i)?;
        let spec = dims.tensors(cfg);
        let get = |m: &str| t.get(&format!("{p}{m}"), &spec[m]);
        let opt = |m: &str| spec.contains_key(m).then(|| get(m)).transpose();
        let scale = {
            let mut s = if cfg.scale_attn_weights { (hd as f64).powf(-0.5) } else { 1.0 };
            if cfg.scale_attn_by_inverse_layer_idx {
                s /= (i + 1) as f64;
            }
            s as f32
        };
        let LayerDims { heads, kv_heads, ffn } = dims;
        let attn = Attn { heads, kv_heads, head_dim: hd, scale, causal: true };
        let q = heads * hd;
        let cat = |parts: Vec<Vec<f32>>| parts.concat();
        let (wqkv, bqkv, wo, bo, w_in, b_in, w_out, b_out, n1, n2);
        match cfg.kind {
            DecoderKind::Gpt2 => {
                wqkv = transpose(&get("attn.c_attn.weight")?, h, 3 * q);
                bqkv = opt("attn.c_attn.bias")?;
                wo = transpose(&get("attn.c_proj.weight")?, q, h);
                bo = opt("attn.c_proj.bias")?;
                w_in = transpose(&get("mlp.c_fc.weight")?, h, ffn);
                b_in = opt("mlp.c_fc.bias")?;
                w_out = transpose(&get("mlp.c_proj.weight")?, ffn, h);
                b_out = opt("mlp.c_proj.bias")?;
                (n1, n2) = ("ln_1", "ln_2");
            }
            DecoderKind::Llama | DecoderKind::Qwen2 => {
                let a = |m: &str| get(&format!("self_attn.{m}"));
                wqkv = cat(vec![a("q_proj.weight")?, a("k_proj.weight")?, a("v_proj.weight")?]);
                bqkv = match cfg.qkv_bias {
                    true => Some(cat(vec![a("q_proj.bias")?, a("k_proj.bias")?, a("v_proj.bias")?])),
                    false => None,
                };
                wo = a("o_proj.weight")?;
                bo = opt("self_attn.o_proj.bias")?;
                w_in = cat(vec![get("mlp.gate_proj.weight")?, get("mlp.up_proj.weight")?]);
                b_in = match cfg.mlp_bias {
                    true => Some(cat(vec![get("mlp.gate_proj.bias")?, get("mlp.up_proj.bias")?])),
                    false => None,
                };
                w_out = get("mlp.down_proj.weight")?;
                b_out = opt("mlp.down_proj.bias")?;
                (n1, n2) = ("input_layernorm", "post_attention_layernorm");
            }
        }
        Ok(DecoderLayer {
            attn,
            ffn,
            mlp: cfg.mlp,
            hidden: h,
            norm1: Norm::load(t, &format!("{p}{n1}"), cfg)?,
            wqkv,
            bqkv,
            wo,
            bo,
            norm2: Norm::load(t, &format!("{p}{n2}"), cfg)?,
            w_in,
            b_in,
            w_out,
            b_out,
        })
    }

    /// The block on the residual stream `x [rows, hidden]`, in place. `rope` holds the rows'
    /// rotary tables (`cos`, `sin`, each `[rows, head_dim/2]`) for the rotary families.
    pub fn forward(&self, x: &mut [f32], seqs: &[Seq], rope: Option<&(Vec<f32>, Vec<f32>)>) {
        self.forward_observed(x, seqs, rope, &mut |_, _| {});
    }

    /// [`forward`](Self::forward), handing `observe` the input of each linear map as it reads
    /// it: `[rows, features]`, row-major (calibration: Wanda's norms, SparseGPT's Hessians).
    pub fn forward_observed(
        &self,
        x: &mut [f32],
        seqs: &[Seq],
        rope: Option<&(Vec<f32>, Vec<f32>)>,
        observe: &mut dyn FnMut(Site, &[f32]),
    ) {
        let (h, rows) = (self.hidden, x.len() / self.hidden.max(1));
        let a = &self.attn;
        if a.heads > 0 {
            let n = self.norm1.apply(x);
            observe(Site::Attention, &n);
            let mut qkv = linear(&n, rows, h, &self.wqkv, a.qkv_width(), self.bqkv.as_deref());
            drop(n);
            if let Some((cos, sin)) = rope {
                fused::rope(&mut qkv, a, cos, sin);
            }
            let ctx = fused::attention(&qkv, seqs, rows, a);
            drop(qkv);
            observe(Site::AttentionOutput, &ctx);
            let out = linear(&ctx, rows, a.heads * a.head_dim, &self.wo, h, self.bo.as_deref());
            fused::add_into(x, &out);
        } else if let Some(bo) = &self.bo {
            // No head left: the attention output is its bias alone.
            x.chunks_exact_mut(h).for_each(|r| r.iter_mut().zip(bo).for_each(|(v, b)| *v += b));
        }
        let n = self.norm2.apply(x);
        observe(Site::FfnIn, &n);
        let act = match self.mlp {
            Mlp::Plain(activation) => {
                let mut f = linear(&n, rows, h, &self.w_in, self.ffn, None);
                // `load` reads GPT-2's `c_fc.bias` (its only plain MLP), so the bias is there.
                fused::activate(&mut f, self.b_in.as_deref().expect("a plain MLP's input bias"), activation);
                f
            }
            Mlp::SwiGlu => {
                let gate_up = linear(&n, rows, h, &self.w_in, 2 * self.ffn, None);
                fused::silu_mul(&gate_up, self.b_in.as_deref().unwrap_or(&[]), self.ffn)
            }
        };
        drop(n);
        observe(Site::FfnOut, &act);
        let out = linear(&act, rows, self.ffn, &self.w_out, h, self.b_out.as_deref());
        fused::add_into(x, &out);
    }

    /// Replaces one linear map's weight (`module` as the checkpoint names it, e.g.
    /// `self_attn.k_proj` or `attn.c_attn`) with `w`, given `[out, in]` whatever the stored
    /// layout: sequential pruning runs the next tokens through the pruned map.
    pub fn set_weight(&mut self, module: &str, w: &[f32]) -> Result<()> {
        let (h, a) = (self.hidden, &self.attn);
        let (q, kv, f) = (a.heads * a.head_dim, a.kv_heads * a.head_dim, self.ffn);
        let (buf, range) = match module {
            "attn.c_attn" => (&mut self.wqkv, 0..3 * q * h),
            "self_attn.q_proj" => (&mut self.wqkv, 0..q * h),
            "self_attn.k_proj" => (&mut self.wqkv, q * h..(q + kv) * h),
            "self_attn.v_proj" => (&mut self.wqkv, (q + kv) * h..(q + 2 * kv) * h),
            "attn.c_proj" | "self_attn.o_proj" => (&mut self.wo, 0..h * q),
            "mlp.c_fc" | "mlp.gate_proj" => (&mut self.w_in, 0..f * h),
            "mlp.up_proj" => (&mut self.w_in, f * h..2 * f * h),
            "mlp.c_proj" | "mlp.down_proj" => (&mut self.w_out, 0..h * f),
            other => return invalid(format!("{other} is not a linear map of a decoder block")),
        };
        if range.len() != w.len() || range.end > buf.len() {
            return invalid(format!("{module}: {} values given for a map of {}", w.len(), range.len()));
        }
        buf[range].copy_from_slice(w);
        Ok(())
    }
}

/// What a forward pass returns: the final hidden states (after the final norm) and the LM
/// head's logits, both row-major over the batch's rows.
pub struct DecoderOutput {
    pub hidden: Vec<f32>,
    pub logits: Vec<f32>,
}

/// What turns token ids into the first block's input: the token embeddings, GPT-2's learned
/// positions, and the rotary tables of the rotary families.
pub struct Embeddings {
    vocab: usize,
    hidden: usize,
    max_positions: usize,
    /// `[vocab, hidden]`.
    table: Vec<f32>,
    /// GPT-2's learned positions `[max_positions, hidden]`.
    positions: Option<Vec<f32>>,
    rope: Option<Rope>,
}

impl Embeddings {
    pub fn load(t: &Tensors, config: &DecoderConfig) -> Result<Embeddings> {
        let spec: BTreeMap<&str, Vec<usize>> = model_tensors(config).into_iter().collect();
        let get = |n: &str| t.get(n, &spec[n]);
        let (table, positions) = match config.kind {
            DecoderKind::Gpt2 => (get("wte.weight")?, Some(get("wpe.weight")?)),
            DecoderKind::Llama | DecoderKind::Qwen2 => (get("embed_tokens.weight")?, None),
        };
        Ok(Embeddings {
            vocab: config.vocab,
            hidden: config.hidden,
            max_positions: config.max_positions,
            table,
            positions,
            rope: config.rope.as_ref().map(|r| Rope::new(r, config.head_dim)),
        })
    }

    /// Each row's position: 0, 1, … along its sequence.
    fn row_positions(seqs: &[Seq], rows: usize) -> Vec<usize> {
        let mut pos = vec![0; rows];
        for s in seqs {
            for (i, p) in pos[s.row..s.row + s.queries].iter_mut().enumerate() {
                *p = i;
            }
        }
        pos
    }

    /// The residual stream entering the first block, `[ids.len(), hidden]`, and the rows'
    /// rotary tables (rotary families).
    #[allow(clippy::type_complexity)]
    pub fn embed(&self, ids: &[u32], seqs: &[Seq]) -> Result<(Vec<f32>, Option<(Vec<f32>, Vec<f32>)>)> {
        let h = self.hidden;
        let pos = Embeddings::row_positions(seqs, ids.len());
        let mut x = Vec::with_capacity(ids.len() * h);
        for (&id, &p) in ids.iter().zip(&pos) {
            let id = id as usize;
            if id >= self.vocab {
                return invalid(format!("token id {id} is outside the vocabulary of {}", self.vocab));
            }
            let row = &self.table[id * h..(id + 1) * h];
            match &self.positions {
                Some(wpe) => {
                    if p >= self.max_positions {
                        return invalid(format!(
                            "position {p} is past the model's {} learned positions",
                            self.max_positions
                        ));
                    }
                    x.extend(row.iter().zip(&wpe[p * h..(p + 1) * h]).map(|(a, b)| a + b));
                }
                None => x.extend_from_slice(row),
            }
        }
        let tables = self.rope.as_ref().map(|r| r.tables(pos.into_iter()));
        Ok((x, tables))
    }
}

pub struct Decoder {
    pub config: DecoderConfig,
    pub embeddings: Embeddings,
    pub layers: Vec<DecoderLayer>,
    final_norm: Norm,
    /// `[vocab, hidden]`; `None` when tied to the embeddings.
    lm_head: Option<Vec<f32>>,
}

impl Decoder {
    /// Load a checkpoint's `config.json` and `model.safetensors`.
    pub fn from_files(config_json: &[u8], safetensors: &[u8]) -> Result<Decoder> {
        let config = DecoderConfig::parse(config_json).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
        let t = Tensors::parse(safetensors, config.kind)?;
        Decoder::load(config, &t)
    }

    pub fn load(config: DecoderConfig, t: &Tensors) -> Result<Decoder> {
        let embeddings = Embeddings::load(t, &config)?;
        let layers = (0..config.layers).map(|i| DecoderLayer::load(t, &config, i)).collect::<Result<Vec<_>>>()?;
        let norm_name = if config.kind == DecoderKind::Gpt2 { "ln_f" } else { "norm" };
        let final_norm = Norm::load(t, norm_name, &config)?;
        let untied = model_tensors(&config).into_iter().find(|(n, _)| *n == "lm_head.weight");
        let lm_head = untied.map(|(n, s)| t.get(n, &s)).transpose()?;
        Ok(Decoder { config, embeddings, layers, final_norm, lm_head })
    }

    /// The final norm and the LM head on the last block's output.
    pub fn head(&self, x: &[f32]) -> DecoderOutput {
        let h = self.config.hidden;
        let hidden = self.final_norm.apply(x);
        let w = self.lm_head.as_deref().unwrap_or(&self.embeddings.table);
        let logits = linear(&hidden, hidden.len() / h, h, w, self.config.vocab, None);
        DecoderOutput { hidden, logits }
    }

    /// The forward pass over `ids` laid out as `seqs` describe.
    pub fn forward(&self, ids: &[u32], seqs: &[Seq]) -> Result<DecoderOutput> {
        let (mut x, tables) = self.embeddings.embed(ids, seqs)?;
        for l in &self.layers {
            l.forward(&mut x, seqs, tables.as_ref());
        }
        Ok(self.head(&x))
    }

    /// A padded batch `[batch, seq]` of ids with its attention mask (1 real, 0 padding).
    pub fn forward_padded(&self, ids: &[u32], mask: &[u32], seq: usize) -> Result<DecoderOutput> {
        if ids.len() != mask.len() || seq == 0 || !ids.len().is_multiple_of(seq) {
            return invalid("input ids and attention mask must both be [batch, seq]");
        }
        self.forward(ids, &Seq::padded(mask, seq))
    }
}
