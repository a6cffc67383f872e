//! The trainable task model: encoder + head over flat f32 parameters, a training forward pass
//! that keeps what its backward needs, and a hand-written backward pass.
//!
//! Why not candle's autograd: `docs/design-notes.md` measured it at 0.28x PyTorch per training
//! step (its fused LayerNorm and `softmax_last_dim` silently have no gradient; element-wise ops
//! allocate a fresh buffer each; AdamW over tensors is 10x slower). Here every linear map is one
//! `gemm` call forward and two backward; attention, LayerNorm, GELU and dropout are fused
//! row-wise passes with their own backward; dropout masks are never stored (a counter-based
//! hash of (seed, site, element) decides each element, and the backward pass asks again).
//!
//! Semantics follow Hugging Face's `*ForSequenceClassification` / `*ForQuestionAnswering` in
//! train mode: dropout after the embeddings' LayerNorm, on the attention probabilities, after
//! the attention output map (BERT, RoBERTa) and after the FFN, and in the classification head
//! where each family has it; padding ids get no embedding gradient (`padding_idx`). With dropout
//! off, gradients match PyTorch's (tests/it/training.rs).

use crate::engine::cpu::activation::Activation;
use crate::engine::cpu::fused::Seq;
use crate::engine::cpu::{simd, threads};
use crate::engine::model::arch::Family;
use crate::engine::model::heads::{Head, HeadKind};
use crate::engine::model::{EncoderConfig, ModelError, Weights};
use crate::engine::prune::calibrated::Matrices;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

pub(crate) use crate::engine::cpu::backprop::splitmix;
use crate::engine::cpu::backprop::*;
use crate::engine::cpu::{linear, mm, View};

/// One named parameter (canonical Hugging Face name without the family prefix for the
/// encoder; the head's own names otherwise), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
struct Lin {
    w: usize,
    b: usize,
    out: usize,
    inp: usize,
}

#[derive(Debug, Clone)]
struct LayerIx {
    /// Query, key, value (none when every head of the layer is removed).
    qkv: Option<[Lin; 3]>,
    heads: usize,
    o: Lin,
    ln1: [usize; 2],
    ffn_in: Lin,
    ffn_out: Lin,
    ln2: [usize; 2],
}

#[derive(Debug, Clone)]
struct Ix {
    word: usize,
    position: usize,
    token_type: Option<usize>,
    ln: [usize; 2],
    layers: Vec<LayerIx>,
    /// Classification: hidden map then output map; QA: the output map.
    head: Vec<Lin>,
}

pub use crate::engine::model::Dropout;

/// The gradient of every parameter, in the order of [`Net::params`].
#[derive(Debug, Clone, PartialEq)]
pub struct Grads(pub Vec<Vec<f32>>);

impl Grads {
    pub fn zero(&mut self) {
        self.0.par_iter_mut().for_each(|g| g.iter_mut().for_each(|v| *v = 0.0));
    }
}

/// Input of one batch: `[rows, len]` ids, attention mask and token types, padded to `len`.
pub use super::batch::Padded as Batch;

#[derive(Clone)]
pub struct Net {
    pub config: EncoderConfig,
    pub kind: HeadKind,
    pub params: Vec<Param>,
    pub dropout: Dropout,
    /// Compute real tokens only where the head allows it (see [`Net::forward`]); on by
    /// default, off to measure the padded computation.
    pub packing: bool,
    ix: Ix,
}

/// What a layer's backward pass needs from its forward pass.
struct LayerTape {
    qkv: Vec<f32>,
    /// Attention probabilities before dropout, one `[queries, keys]` block per (sequence, head).
    probs: Vec<f32>,
    ctx: Vec<f32>,
    ln1: Ln,
    /// LayerNorm output after attention (the FFN's input).
    a: Vec<f32>,
    /// FFN pre-activation.
    f0: Vec<f32>,
    ln2: Ln,
}

/// The forward pass's record of one batch.
pub struct Tape {
    rows: usize,
    /// Rows computed (all padded positions, or the real tokens packed).
    n: usize,
    /// The row of each sequence's first token.
    first_rows: Vec<usize>,
    seed: Option<u64>,
    seqs: Vec<Seq>,
    /// Offset of each (sequence, head) block in the probabilities.
    offsets: Vec<Vec<usize>>,
    word: Vec<u32>,
    position: Vec<u32>,
    token_type: Vec<u32>,
    emb_ln: Ln,
    /// The input of every layer, then the last hidden state.
    xs: Vec<Vec<f32>>,
    layers: Vec<LayerTape>,
    head: HeadTape,
}

struct HeadTape {
    /// Classification: the first token's state (after the RoBERTa input dropout), the hidden
    /// map's output after its activation (before dropout).
    first: Vec<f32>,
    hidden: Vec<f32>,
}

/// The outputs of a forward pass: `[rows, labels]` (classification), `[rows, 1]`
/// (regression), or `[rows, len, 2]` start/end pairs (question answering).
pub struct Output {
    pub logits: Vec<f32>,
    pub tape: Tape,
}

/// Sites of the dropout masks, for distinct hash streams.
fn site(layer: usize, which: u64) -> u64 {
    (layer as u64).wrapping_add(1).wrapping_mul(16).wrapping_add(which)
}

/// The classification head's dropout sites.
const HEAD: usize = usize::MAX - 2;

impl Net {
    /// The model of `config` from encoder weights (canonical names) and a head.
    pub fn new(config: EncoderConfig, w: &Weights, head: &Head, dropout: Dropout) -> Result<Net, ModelError> {
        struct Builder<'a> {
            w: &'a Weights,
            params: Vec<Param>,
        }
        impl Builder<'_> {
            fn add(&mut self, name: String, t: &Tensor) -> Result<usize, ModelError> {
                let shape = t.dims().to_vec();
                let value = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                self.params.push(Param { name, shape, value });
                Ok(self.params.len() - 1)
            }
            fn named(&mut self, name: String) -> Result<usize, ModelError> {
                let t = self.w.get(&name)?;
                self.add(name, &t)
            }
            fn norm(&mut self, prefix: String) -> Result<[usize; 2], ModelError> {
                Ok([self.named(format!("{prefix}.weight"))?, self.named(format!("{prefix}.bias"))?])
            }
            fn lin(&mut self, prefix: String) -> Result<Lin, ModelError> {
                let wt = self.w.get(&format!("{prefix}.weight"))?;
                let (out, inp) = wt.dims2()?;
                Ok(Lin {
                    w: self.add(format!("{prefix}.weight"), &wt)?,
                    b: self.named(format!("{prefix}.bias"))?,
                    out,
                    inp,
                })
            }
        }
        let mut b = Builder { w, params: Vec::new() };
        let word = b.named("embeddings.word_embeddings.weight".into())?;
        let position = b.named("embeddings.position_embeddings.weight".into())?;
        let token_type =
            if config.type_vocab > 0 { Some(b.named("embeddings.token_type_embeddings.weight".into())?) } else { None };
        let ln = b.norm("embeddings.LayerNorm".into())?;
        let names = config.family.layer_names();
        let mut layers = Vec::new();
        for (i, shape) in config.layers.iter().enumerate() {
            let p = config.family.layer_prefix(i);
            let qkv = if shape.heads == 0 {
                None
            } else {
                Some([
                    b.lin(format!("{p}{}", names.query))?,
                    b.lin(format!("{p}{}", names.key))?,
                    b.lin(format!("{p}{}", names.value))?,
                ])
            };
            let o = b.lin(format!("{p}{}", names.attn_out))?;
            let ln1 = b.norm(format!("{p}{}", names.attn_norm))?;
            let ffn_in = b.lin(format!("{p}{}", names.ffn_in))?;
            let ffn_out = b.lin(format!("{p}{}", names.ffn_out))?;
            let ln2 = b.norm(format!("{p}{}", names.out_norm))?;
            layers.push(LayerIx { qkv, heads: shape.heads, o, ln1, ffn_in, ffn_out, ln2 });
        }
        let mut head_ix = Vec::new();
        for pair in head.tensors().chunks(2) {
            let (out, inp) = pair[0].1.dims2()?;
            head_ix.push(Lin {
                w: b.add(pair[0].0.clone(), &pair[0].1)?,
                b: b.add(pair[1].0.clone(), &pair[1].1)?,
                out,
                inp,
            });
        }
        Ok(Net {
            kind: head.kind,
            params: b.params,
            dropout,
            packing: true,
            ix: Ix { word, position, token_type, ln, layers, head: head_ix },
            config,
        })
    }

    /// Zero gradients shaped like the parameters.
    pub fn zero_grads(&self) -> Grads {
        Grads(self.params.iter().map(|p| vec![0.0; p.value.len()]).collect())
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }

    /// The encoder's weights (canonical names) and the head, as candle tensors.
    pub fn to_weights(&self) -> Result<(Weights, Head), ModelError> {
        let t = |p: &Param| Tensor::from_vec(p.value.clone(), p.shape.as_slice(), &Device::Cpu);
        let head_names: std::collections::HashSet<usize> = self.ix.head.iter().flat_map(|l| [l.w, l.b]).collect();
        let mut map = std::collections::HashMap::new();
        let mut head = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            if head_names.contains(&i) {
                head.push((p.name.clone(), t(p)?));
            } else {
                map.insert(p.name.clone(), t(p)?);
            }
        }
        Ok((Weights::from_map(map), Head::from_tensors(self.config.family, self.kind, head)))
    }

    /// Number of heads of each layer.
    pub fn heads(&self) -> Vec<usize> {
        self.ix.layers.iter().map(|l| if l.qkv.is_some() { l.heads } else { 0 }).collect()
    }

    /// Forward pass over a padded batch. `seed`: train mode with dropout masks drawn from it
    /// (the caller gives each micro-batch its own), or `None` for eval mode.
    ///
    /// Rows computed: for classification and regression (when every sequence starts with a real
    /// token, whose state the head reads) only the real tokens, packed back to back: padded
    /// positions never reach those heads, so the loss and every gradient are the same as over
    /// the padded batch. Question answering computes every padded position, as its loss (like
    /// Hugging Face's) takes the softmax over all of them.
    pub fn forward(&self, b: &Batch, seed: Option<u64>) -> Result<Output, ModelError> {
        let c = &self.config;
        let h = c.hidden;
        let padded_rows = b.rows * b.len;
        if b.rows == 0 || b.len == 0 {
            return Err(ModelError::Invalid("an empty batch".into()));
        }
        if b.ids.len() != padded_rows || b.mask.len() != padded_rows || b.type_ids.len() != padded_rows {
            return Err(ModelError::Invalid(format!(
                "a batch of {} x {} needs that many ids, mask and type ids",
                b.rows, b.len
            )));
        }
        let packed =
            self.packing && self.kind != HeadKind::QuestionAnswering && (0..b.rows).all(|r| b.mask[r * b.len] != 0);
        let keep: Vec<usize> =
            if packed { (0..padded_rows).filter(|&i| b.mask[i] != 0).collect() } else { (0..padded_rows).collect() };
        let n = keep.len();
        let all_positions = c.position_ids(&b.ids, b.len)?;
        let position: Vec<u32> = keep.iter().map(|&i| all_positions[i]).collect();
        let ids: Vec<u32> = keep.iter().map(|&i| b.ids[i]).collect();
        let type_ids: Vec<u32> = keep.iter().map(|&i| b.type_ids[i]).collect();
        let p = |i: usize| &self.params[i].value;
        let types = if self.ix.token_type.is_some() { &b.type_ids[..] } else { &[] };
        for (&id, what, size) in b
            .ids
            .iter()
            .map(|i| (i, "token id", c.vocab))
            .chain(types.iter().map(|i| (i, "token type id", c.type_vocab)))
        {
            if id as usize >= size {
                return Err(ModelError::Invalid(format!("{what} {id} out of range (size {size})")));
            }
        }
        // Embeddings.
        let mut x = vec![0f32; n * h];
        x.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
            let w = &p(self.ix.word)[ids[r] as usize * h..][..h];
            let ps = &p(self.ix.position)[position[r] as usize * h..][..h];
            for j in 0..h {
                row[j] = w[j] + ps[j];
            }
            if let Some(t) = self.ix.token_type {
                let tt = &p(t)[type_ids[r] as usize * h..][..h];
                for j in 0..h {
                    row[j] += tt[j];
                }
            }
        });
        let eps = c.eps as f32;
        let emb_ln = layer_norm_keep(&mut x, &[], p(self.ix.ln[0]), p(self.ix.ln[1]), eps);
        apply_drop(Mask::new(seed, self.dropout.hidden, site(0, 0)), &mut x);
        let seqs = if packed {
            Seq::packed(&b.mask.chunks(b.len).map(|m| m.iter().filter(|v| **v != 0).count()).collect::<Vec<_>>())
        } else {
            Seq::padded(&b.mask, b.len)
        };
        let first_rows: Vec<usize> =
            if packed { seqs.iter().map(|s| s.row).collect() } else { (0..b.rows).map(|r| r * b.len).collect() };
        let mut offsets = Vec::with_capacity(seqs.len());
        let mut total = 0;
        let max_heads = self.ix.layers.iter().map(|l| l.heads).max().unwrap_or(0);
        for s in &seqs {
            offsets.push((0..max_heads).map(|hh| total + hh * s.queries * s.bias.len()).collect::<Vec<_>>());
            total += max_heads * s.queries * s.bias.len();
        }
        let mut xs = vec![x];
        let mut layers = Vec::with_capacity(self.ix.layers.len());
        for (li, l) in self.ix.layers.iter().enumerate() {
            let (y, tape) = self.layer_forward(li, l, xs.last().expect("input"), n, &seqs, &offsets, seed);
            xs.push(y);
            layers.push(tape);
        }
        let mut tape = Tape {
            rows: b.rows,
            n,
            first_rows,
            seed,
            seqs,
            offsets,
            word: ids,
            position,
            token_type: type_ids,
            emb_ln,
            xs,
            layers,
            head: HeadTape { first: Vec::new(), hidden: Vec::new() },
        };
        let logits = self.head_forward(&mut tape);
        Ok(Output { logits, tape })
    }

    fn head_forward(&self, tape: &mut Tape) -> Vec<f32> {
        let h = self.config.hidden;
        let last = tape.xs.last().expect("last hidden state");
        let p = |i: usize| &self.params[i].value;
        match self.kind {
            HeadKind::QuestionAnswering => {
                let l = self.ix.head[0];
                linear(last, tape.n, l.inp, p(l.w), l.out, Some(p(l.b)))
            }
            _ => {
                let mut first: Vec<f32> =
                    tape.first_rows.iter().flat_map(|&r| last[r * h..][..h].iter().copied()).collect();
                if self.config.family == Family::Roberta {
                    apply_drop(Mask::new(tape.seed, self.dropout.classifier, site(HEAD, 0)), &mut first);
                }
                let (l0, l1) = (self.ix.head[0], self.ix.head[1]);
                let mut hid = linear(&first, tape.rows, l0.inp, p(l0.w), l0.out, Some(p(l0.b)));
                match self.config.family {
                    Family::DistilBert => hid.iter_mut().for_each(|v| *v = v.max(0.0)),
                    _ => hid.iter_mut().for_each(|v| *v = v.tanh()),
                }
                let mut dropped = hid.clone();
                apply_drop(Mask::new(tape.seed, self.dropout.classifier, site(HEAD, 1)), &mut dropped);
                let logits = linear(&dropped, tape.rows, l1.inp, p(l1.w), l1.out, Some(p(l1.b)));
                tape.head = HeadTape { first, hidden: hid };
                logits
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        li: usize,
        l: &LayerIx,
        x: &[f32],
        n: usize,
        seqs: &[Seq],
        offsets: &[Vec<usize>],
        seed: Option<u64>,
    ) -> (Vec<f32>, LayerTape) {
        let c = &self.config;
        let h = c.hidden;
        let p = |i: usize| &self.params[i].value;
        let (qkv, probs, ctx, mut a) = match l.qkv {
            Some(maps) => {
                let w = l.heads * c.head_dim;
                let mut qkv = vec![0f32; n * 3 * w];
                qkv.par_chunks_mut(3 * w).for_each(|row| {
                    for (j, m) in maps.iter().enumerate() {
                        row[j * w..(j + 1) * w].copy_from_slice(p(m.b));
                    }
                });
                for (j, m) in maps.iter().enumerate() {
                    unsafe {
                        mm(
                            n,
                            w,
                            h,
                            qkv.as_mut_ptr().add(j * w),
                            3 * w,
                            true,
                            View::rows(x, h),
                            View::rows(p(m.w), h).t(),
                            threads(),
                        )
                    };
                }
                let mask = Mask::new(seed, self.dropout.attention, site(li, 1));
                let total =
                    offsets.iter().zip(seqs).map(|(o, s)| o[l.heads - 1] + s.queries * s.bias.len()).max().unwrap_or(0);
                let mut probs = vec![0f32; total];
                let ctx = attention_forward(&qkv, seqs, offsets, &mut probs, n, l.heads, c.head_dim, mask);
                let a = linear(&ctx, n, w, p(l.o.w), h, Some(p(l.o.b)));
                (qkv, probs, ctx, a)
            }
            None => (Vec::new(), Vec::new(), Vec::new(), (0..n).flat_map(|_| p(l.o.b).iter().copied()).collect()),
        };
        if c.family != Family::DistilBert {
            apply_drop(Mask::new(seed, self.dropout.hidden, site(li, 2)), &mut a);
        }
        let eps = c.eps as f32;
        let ln1 = layer_norm_keep(&mut a, x, p(l.ln1[0]), p(l.ln1[1]), eps);
        let ffn = l.ffn_in.out;
        let f0 = linear(&a, n, h, p(l.ffn_in.w), ffn, Some(p(l.ffn_in.b)));
        let g = self.activate(&f0, ffn);
        let mut o = linear(&g, n, ffn, p(l.ffn_out.w), h, Some(p(l.ffn_out.b)));
        drop(g);
        apply_drop(Mask::new(seed, self.dropout.hidden, site(li, 3)), &mut o);
        let ln2 = layer_norm_keep(&mut o, &a, p(l.ln2[0]), p(l.ln2[1]), eps);
        (o, LayerTape { qkv, probs, ctx, ln1, a, f0, ln2 })
    }

    fn activate(&self, f0: &[f32], width: usize) -> Vec<f32> {
        let mut g = vec![0f32; f0.len()];
        if width == 0 {
            return g;
        }
        let act = self.config.activation;
        g.par_chunks_mut(width * ROWS).zip(f0.par_chunks(width * ROWS)).for_each(|(y, x)| match act {
            Activation::Gelu => simd::gelu_into(y, x),
            Activation::GeluTanh => simd::gelu_tanh_into(y, x),
            Activation::Relu => y.iter_mut().zip(x).for_each(|(y, x)| *y = x.max(0.0)),
        });
        g
    }

    /// Backward pass from the logits' gradient, accumulating into `grads`. `head_grads`, when
    /// given, accumulates per layer and head the gradient with respect to a multiplicative
    /// mask on the head's context (Michel et al. 2019): Σ ∂L/∂ctx_h · ctx_h.
    pub fn backward(
        &self,
        tape: &Tape,
        dlogits: &[f32],
        grads: &mut Grads,
        mut head_grads: Option<&mut Vec<Vec<f32>>>,
    ) {
        let c = &self.config;
        let h = c.hidden;
        let n = tape.n;
        let p = |i: usize| &self.params[i].value;
        let g = &mut grads.0;
        // Head.
        let mut dx = vec![0f32; n * h];
        let last = tape.xs.last().expect("last hidden state");
        match self.kind {
            HeadKind::QuestionAnswering => {
                let l = self.ix.head[0];
                let (gw, gb) = two(g, l.w, l.b);
                linear_back(dlogits, last, n, p(l.w), l.out, l.inp, gw, gb, Some((&mut dx, false)));
            }
            _ => {
                let (l0, l1) = (self.ix.head[0], self.ix.head[1]);
                let rows = tape.rows;
                let mut dropped = tape.head.hidden.clone();
                let d1 = Mask::new(tape.seed, self.dropout.classifier, site(HEAD, 1));
                apply_drop(d1, &mut dropped);
                let mut dhid = vec![0f32; rows * l1.inp];
                {
                    let (gw, gb) = two(g, l1.w, l1.b);
                    linear_back(dlogits, &dropped, rows, p(l1.w), l1.out, l1.inp, gw, gb, Some((&mut dhid, false)));
                }
                apply_drop(d1, &mut dhid);
                for (d, y) in dhid.iter_mut().zip(&tape.head.hidden) {
                    *d *= match self.config.family {
                        Family::DistilBert => f32::from(*y > 0.0),
                        _ => 1.0 - y * y,
                    };
                }
                let mut dfirst = vec![0f32; rows * h];
                {
                    let (gw, gb) = two(g, l0.w, l0.b);
                    linear_back(
                        &dhid,
                        &tape.head.first,
                        rows,
                        p(l0.w),
                        l0.out,
                        l0.inp,
                        gw,
                        gb,
                        Some((&mut dfirst, false)),
                    );
                }
                if self.config.family == Family::Roberta {
                    apply_drop(Mask::new(tape.seed, self.dropout.classifier, site(HEAD, 0)), &mut dfirst);
                }
                for (r, &row) in tape.first_rows.iter().enumerate() {
                    dx[row * h..][..h].copy_from_slice(&dfirst[r * h..][..h]);
                }
            }
        }
        // Layers, last first.
        for (li, l) in self.ix.layers.iter().enumerate().rev() {
            let hg = head_grads.as_deref_mut().map(|v| &mut v[li]);
            dx = self.layer_backward(li, l, &tape.layers[li], &tape.xs[li], dx, tape, g, hg);
        }
        // Embeddings.
        apply_drop(Mask::new(tape.seed, self.dropout.hidden, site(0, 0)), &mut dx);
        {
            let (gg, gb) = two(g, self.ix.ln[0], self.ix.ln[1]);
            layer_norm_back(&mut dx, &tape.emb_ln, p(self.ix.ln[0]), gg, gb);
        }
        let pad = c.pad_token_id;
        let scatter = |grad: &mut [f32], ids: &[u32], skip: Option<u32>| {
            for (r, &id) in ids.iter().enumerate() {
                if Some(id) == skip {
                    continue;
                }
                let row = &mut grad[id as usize * h..][..h];
                for (a, v) in row.iter_mut().zip(&dx[r * h..][..h]) {
                    *a += v;
                }
            }
        };
        // `padding_idx`: the pad token's embedding (and RoBERTa's pad position) gets no gradient.
        scatter(&mut g[self.ix.word], &tape.word, Some(pad));
        scatter(&mut g[self.ix.position], &tape.position, (c.family == Family::Roberta).then_some(pad));
        if let Some(t) = self.ix.token_type {
            scatter(&mut g[t], &tape.token_type, None);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        li: usize,
        l: &LayerIx,
        t: &LayerTape,
        x: &[f32],
        mut dout: Vec<f32>,
        tape: &Tape,
        g: &mut [Vec<f32>],
        head_grads: Option<&mut Vec<f32>>,
    ) -> Vec<f32> {
        let c = &self.config;
        let h = c.hidden;
        let n = tape.n;
        let p = |i: usize| &self.params[i].value;
        let seed = tape.seed;
        // out = LN2(drop(o0) + a)
        {
            let (gg, gb) = two(g, l.ln2[0], l.ln2[1]);
            layer_norm_back(&mut dout, &t.ln2, p(l.ln2[0]), gg, gb);
        }
        let mut da = dout.clone();
        let mut do0 = dout;
        apply_drop(Mask::new(seed, self.dropout.hidden, site(li, 3)), &mut do0);
        let ffn = l.ffn_in.out;
        let act = self.activate(&t.f0, ffn);
        let mut dg = vec![0f32; n * ffn];
        {
            let (gw, gb) = two(g, l.ffn_out.w, l.ffn_out.b);
            linear_back(&do0, &act, n, p(l.ffn_out.w), h, ffn, gw, gb, Some((&mut dg, false)));
        }
        drop(act);
        drop(do0);
        if ffn > 0 {
            let kind = c.activation;
            dg.par_chunks_mut(ffn * ROWS).zip(t.f0.par_chunks(ffn * ROWS)).for_each(|(d, y)| match kind {
                Activation::Gelu => simd::gelu_grad(d, y),
                Activation::GeluTanh => simd::gelu_tanh_grad(d, y),
                Activation::Relu => d.iter_mut().zip(y).for_each(|(d, y)| *d *= f32::from(*y > 0.0)),
            });
        }
        {
            let (gw, gb) = two(g, l.ffn_in.w, l.ffn_in.b);
            linear_back(&dg, &t.a, n, p(l.ffn_in.w), ffn, h, gw, gb, Some((&mut da, true)));
        }
        drop(dg);
        // a = LN1(drop(a0) + x)
        {
            let (gg, gb) = two(g, l.ln1[0], l.ln1[1]);
            layer_norm_back(&mut da, &t.ln1, p(l.ln1[0]), gg, gb);
        }
        let mut dx = da.clone();
        let mut da0 = da;
        if c.family != Family::DistilBert {
            apply_drop(Mask::new(seed, self.dropout.hidden, site(li, 2)), &mut da0);
        }
        let Some(maps) = l.qkv else {
            col_sums(&da0, h, &mut g[l.o.b]);
            return dx;
        };
        let w = l.heads * c.head_dim;
        let mut dctx = vec![0f32; n * w];
        {
            let (gw, gb) = two(g, l.o.w, l.o.b);
            linear_back(&da0, &t.ctx, n, p(l.o.w), h, w, gw, gb, Some((&mut dctx, false)));
        }
        drop(da0);
        if let Some(hg) = head_grads {
            let hd = c.head_dim;
            let sums: Vec<f32> = (0..l.heads)
                .into_par_iter()
                .map(|hh| {
                    let mut s = 0f64;
                    for r in 0..n {
                        let o = r * w + hh * hd;
                        s += dctx[o..o + hd].iter().zip(&t.ctx[o..o + hd]).map(|(a, b)| f64::from(a * b)).sum::<f64>();
                    }
                    s as f32
                })
                .collect();
            for (a, s) in hg.iter_mut().zip(sums) {
                *a += s;
            }
        }
        let mask = Mask::new(seed, self.dropout.attention, site(li, 1));
        let dqkv = attention_backward(&t.qkv, &t.probs, &dctx, &tape.seqs, &tape.offsets, n, l.heads, c.head_dim, mask);
        drop(dctx);
        let mut bias_grads = vec![0f32; 3 * w];
        col_sums(&dqkv, 3 * w, &mut bias_grads);
        for (j, m) in maps.iter().enumerate() {
            let gw = &mut g[m.w];
            unsafe {
                mm(
                    w,
                    h,
                    n,
                    gw.as_mut_ptr(),
                    h,
                    true,
                    View { ptr: dqkv.as_ptr().add(j * w), rs: 3 * w as isize, cs: 1 }.t(),
                    View::rows(x, h),
                    threads(),
                )
            };
            g[m.b].iter_mut().zip(&bias_grads[j * w..(j + 1) * w]).for_each(|(a, v)| *a += v);
            unsafe {
                mm(
                    n,
                    h,
                    w,
                    dx.as_mut_ptr(),
                    h,
                    true,
                    View { ptr: dqkv.as_ptr().add(j * w), rs: 3 * w as isize, cs: 1 },
                    View::rows(p(m.w), h),
                    threads(),
                )
            };
        }
        dx
    }
}

/// The net's parameters as the calibrated methods' view of a model (f32: written exactly).
impl Matrices for Net {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index_of(name).map(|i| self.params[i].shape.clone())
    }

    fn read(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        Ok(self.param(name)?.value.clone())
    }

    fn write(&mut self, name: &str, values: &[f32]) -> Result<Vec<f32>, ModelError> {
        let p = self.param_mut(name)?;
        if p.value.len() != values.len() {
            return Err(ModelError::Invalid(format!("{name}: {} values for {} weights", values.len(), p.value.len())));
        }
        p.value.copy_from_slice(values);
        Ok(p.value.clone())
    }

    fn zero(&mut self, name: &str, prune: &[bool]) -> Result<(), ModelError> {
        let p = self.param_mut(name)?;
        p.value.iter_mut().zip(prune).filter(|(_, pr)| **pr).for_each(|(v, _)| *v = 0.0);
        Ok(())
    }
}

impl Net {
    fn param(&self, name: &str) -> Result<&Param, ModelError> {
        self.index_of(name)
            .map(|i| &self.params[i])
            .ok_or_else(|| ModelError::Invalid(format!("the model has no tensor {name}")))
    }

    fn param_mut(&mut self, name: &str) -> Result<&mut Param, ModelError> {
        let i = self.index_of(name).ok_or_else(|| ModelError::Invalid(format!("the model has no tensor {name}")))?;
        Ok(&mut self.params[i])
    }
}

/// The encoder's linear weights (query, key, value, attention output, FFN in and out of every
/// layer): the default pruning targets, as parameter indices.
pub fn linear_targets(net: &Net) -> Vec<usize> {
    let names = net.config.family.layer_names();
    let modules = [names.query, names.key, names.value, names.attn_out, names.ffn_in, names.ffn_out];
    net.params
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.shape.len() == 2
                && modules.iter().any(|m| p.name.ends_with(&format!(".{m}.weight")))
                && (p.name.starts_with("encoder.") || p.name.starts_with("transformer."))
        })
        .map(|(i, _)| i)
        .collect()
}
