//! The inference forward pass on the CPU in f32, without candle's op-by-op tensors.
//!
//! Stock candle spends most of an encoder forward outside the matrix multiplies: one fresh
//! buffer per element-wise op, four layout copies per attention block, a scalar erf in GELU and
//! softmax with separate scale/mask passes (`docs/design-notes.md` measured 0.5x PyTorch). Here:
//! - every linear map is one `gemm` call writing into a buffer pre-filled with its bias;
//!   query/key/value are one map with the three weights stacked;
//! - attention reads each head straight out of the stacked Q/K/V rows (strided gemm), applies
//!   the 1/√d scale, the additive mask and the softmax in one pass per row, multiplies by V into
//!   the head's columns of the output, one (sequence, head) pair per task; keys past a
//!   sequence's last real token are skipped (their softmax weight is exactly 0 in the reference
//!   too: exp(f32::MIN) underflows);
//! - residual + LayerNorm and GELU are fused row-wise passes, vectorised with AVX2/FMA when the
//!   CPU has them (chosen at run time), with a rational erf approximation and a polynomial exp.
//!
//! Used by [`crate::engine::model::Encoder::forward`]; `forward_observed` (calibration) and training keep
//! the candle path. Tests hold the two within 1e-4 (tests/it/encoder.rs also checks both against
//! Hugging Face).

use super::activation::Activation;
use super::{linear, simd};
use gemm::Parallelism;
use rayon::prelude::*;

/// One layer's weights, row-major f32.
pub struct FastLayer {
    pub heads: usize,
    /// `[3·heads·head_dim, hidden]`: query, key, value stacked (empty without heads).
    pub wqkv: Vec<f32>,
    pub bqkv: Vec<f32>,
    /// `[hidden, heads·head_dim]`.
    pub wo: Vec<f32>,
    pub bo: Vec<f32>,
    pub ln1: (Vec<f32>, Vec<f32>),
    /// `[ffn, hidden]`.
    pub wi: Vec<f32>,
    pub bi: Vec<f32>,
    /// `[hidden, ffn]`.
    pub wf: Vec<f32>,
    pub bf: Vec<f32>,
    pub ln2: (Vec<f32>, Vec<f32>),
}

pub struct FastModel {
    /// The embeddings' LayerNorm (γ, β).
    pub emb_ln: (Vec<f32>, Vec<f32>),
    pub layers: Vec<FastLayer>,
}

pub struct Dims {
    /// Rows (token positions) of the activations.
    pub rows: usize,
    pub hidden: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub activation: Activation,
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// One sequence's rows in the activations: its queries are rows `row..row + queries`, its keys
/// rows `row..row + bias.len()`, each key with an additive bias (0 or f32::MIN for padding).
pub struct Seq {
    pub row: usize,
    pub queries: usize,
    pub bias: Vec<f32>,
}

impl Seq {
    /// Padded batches, as the reference computes them: every position of each `[seq]` row of
    /// `mask` is a query; keys after a sequence's last real token are skipped (their weight is
    /// exactly 0 in the reference too: exp(f32::MIN − max) underflows); a sequence with no real
    /// token attends to every key alike, as the reference does.
    pub fn padded(mask: &[u32], seq: usize) -> Vec<Seq> {
        mask.chunks(seq)
            .enumerate()
            .map(|(b, m)| {
                let keys = m.iter().rposition(|v| *v != 0).map_or(seq, |i| i + 1);
                Seq {
                    row: b * seq,
                    queries: seq,
                    bias: m[..keys].iter().map(|v| if *v != 0 { 0.0 } else { f32::MIN }).collect(),
                }
            })
            .collect()
    }

    /// Packed sequences of the given lengths, back to back, with no padding at all.
    pub fn packed(lengths: &[usize]) -> Vec<Seq> {
        let mut row = 0;
        lengths
            .iter()
            .map(|&n| {
                let s = Seq { row, queries: n, bias: vec![0.0; n] };
                row += n;
                s
            })
            .collect()
    }
}

/// Attention of every head: `qkv [rows, 3·heads·hd]` → context `[rows, heads·hd]`; rows that
/// are no sequence's query stay 0.
fn attention(qkv: &[f32], seqs: &[Seq], d: &Dims, heads: usize) -> Vec<f32> {
    let hd = d.head_dim;
    let width = heads * hd;
    let rs = 3 * width;
    let mut ctx = vec![0f32; d.rows * width];
    let out = SharedMut(ctx.as_mut_ptr());
    let scale = 1.0 / (hd as f32).sqrt();
    (0..seqs.len() * heads).into_par_iter().for_each(|task| {
        let (sq, h) = (&seqs[task / heads], task % heads);
        let (t, keys) = (sq.queries, sq.bias.len());
        if t == 0 || keys == 0 {
            return;
        }
        let base = sq.row * rs + h * hd;
        let mut s = vec![0f32; t * keys];
        // SAFETY: Q and K of this head are `[t, hd]` / `[keys, hd]` windows of `qkv` with row
        // stride `rs`; `s` is `[t, keys]`; the context window `[t, hd]` at column h·hd of rows
        // sq.row.. is written by this task only (sequences do not overlap).
        unsafe {
            gemm::gemm(
                t,
                keys,
                hd,
                s.as_mut_ptr(),
                1,
                keys as isize,
                false,
                qkv.as_ptr().add(base),
                1,
                rs as isize,
                qkv.as_ptr().add(base + width),
                rs as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for row in s.chunks_exact_mut(keys) {
            simd::softmax_row(row, &sq.bias);
        }
        // Captures the whole `SharedMut` (Send + Sync), not its raw-pointer field, which a
        // closure would otherwise capture alone since edition 2021.
        #[allow(clippy::redundant_locals)]
        let out = out;
        unsafe {
            gemm::gemm(
                t,
                hd,
                keys,
                out.0.add(sq.row * width + h * hd),
                1,
                width as isize,
                false,
                s.as_ptr(),
                1,
                keys as isize,
                qkv.as_ptr().add(base + 2 * width),
                1,
                rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
    ctx
}

/// One encoder layer on `x [rows, hidden]`.
pub fn layer(x: &[f32], seqs: &[Seq], l: &FastLayer, d: &Dims) -> Vec<f32> {
    let n = d.rows;
    let h = d.hidden;
    let mut a = if l.heads == 0 {
        vec![0.0; n * h]
    } else {
        let qkv = linear(x, n, h, &l.wqkv, l.bqkv.len(), Some(&l.bqkv));
        let ctx = attention(&qkv, seqs, d, l.heads);
        drop(qkv);
        linear(&ctx, n, l.heads * d.head_dim, &l.wo, h, None)
    };
    add_layer_norm(&mut a, &l.bo, x, &l.ln1.0, &l.ln1.1, d.eps);
    let ffn = l.bi.len();
    let mut f = linear(&a, n, h, &l.wi, ffn, None);
    activate(&mut f, &l.bi, d.activation);
    let mut o = linear(&f, n, ffn, &l.wf, h, None);
    drop(f);
    add_layer_norm(&mut o, &l.bf, &a, &l.ln2.0, &l.ln2.1, d.eps);
    o
}

const ROWS_PER_TASK: usize = 16;

/// `y ← LayerNorm(y + bias + residual)` row by row.
fn add_layer_norm(y: &mut [f32], bias: &[f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let h = gamma.len();
    y.par_chunks_mut(h * ROWS_PER_TASK).zip(residual.par_chunks(h * ROWS_PER_TASK)).for_each(|(ys, rs)| {
        for (row, res) in ys.chunks_exact_mut(h).zip(rs.chunks_exact(h)) {
            simd::add_layer_norm_row(row, bias, res, gamma, beta, eps);
        }
    });
}

/// `y ← LayerNorm(y)` row by row.
pub fn layer_norm(y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let zeros = vec![0.0; gamma.len()];
    y.par_chunks_mut(gamma.len() * ROWS_PER_TASK).for_each(|ys| {
        for row in ys.chunks_exact_mut(gamma.len()) {
            simd::add_layer_norm_row(row, &zeros, &zeros, gamma, beta, eps);
        }
    });
}

/// `x ← act(x + bias)` row by row.
fn activate(x: &mut [f32], bias: &[f32], act: Activation) {
    let w = bias.len();
    if w == 0 {
        return;
    }
    x.par_chunks_mut(w * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_exact_mut(w) {
            match act {
                Activation::Gelu => simd::bias_gelu(row, bias),
                Activation::GeluTanh => simd::bias_gelu_tanh(row, bias),
                Activation::Relu => row.iter_mut().zip(bias).for_each(|(v, b)| *v = (*v + b).max(0.0)),
            }
        }
    });
}
