//! The forward kernels on the CPU in f32, without candle's op-by-op tensors. The model code
//! (`engine::model`'s encoder and decoder) composes them into layers.
//!
//! Stock candle spends most of an encoder forward outside the matrix multiplies: one fresh
//! buffer per element-wise op, four layout copies per attention block, a scalar erf in GELU and
//! softmax with separate scale/mask passes (`docs/design-notes.md` measured 0.5x PyTorch). Here:
//! - every linear map is one product (dense `gemm` into a buffer pre-filled with its bias, or
//!   the sparse or int8 kernel of a [`super::matrix::Matrix`]); query/key/value are one map
//!   with the three weights stacked;
//! - attention reads each head straight out of the stacked Q/K/V rows (strided gemm), applies
//!   the 1/√d scale, the additive mask and the softmax in one pass per row, multiplies by V into
//!   the head's columns of the output, one (sequence, head) pair per task; keys past a
//!   sequence's last real token are skipped (their softmax weight is exactly 0 in the reference
//!   too: exp(f32::MIN) underflows);
//! - residual + LayerNorm and GELU are fused row-wise passes, vectorised with AVX2/FMA when the
//!   CPU has them (chosen at run time), with a rational erf approximation and a polynomial exp.
//!
//! The encoder's and the decoders' inference and calibration forwards run on these; training
//! (`crate::engine::cpu::backprop`) adds what its backward needs kept. tests/it/encoder.rs,
//! tests/it/heads.rs and tests/it/decoder.rs check the forwards against candle-transformers
//! and Hugging Face.

use super::activation::Activation;
use super::simd;
use gemm::Parallelism;
use rayon::prelude::*;

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

/// The shape of one attention map: `heads` query heads sharing `kv_heads` key/value heads
/// (grouped-query attention; query head h reads key/value head h / (heads / kv_heads)), scores
/// scaled by `scale`, and with `causal` each query sees only the keys up to its own position.
#[derive(Debug, Clone, Copy)]
pub struct Attn {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
}

impl Attn {
    /// BERT's: every head its own keys and values, 1/√d, no causal mask.
    pub fn bidirectional(heads: usize, head_dim: usize) -> Attn {
        Attn { heads, kv_heads: heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt(), causal: false }
    }
    /// Columns of one row of the stacked query|key|value map.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// Dropout on a block of probabilities (its offset in the kept buffer, a copy of the block).
pub type Dropout = dyn Fn(usize, &mut [f32]) + Sync;

/// What training keeps of an attention pass ([`attention_keeping`]).
pub struct Keep<'a> {
    /// Every (sequence, head) block of softmax probabilities, `[queries, keys]` at
    /// `offsets[sequence][head]`; blocks must not overlap.
    pub probs: &'a mut [f32],
    pub offsets: &'a [Vec<usize>],
    /// Applied to a copy of the block at the given offset before it weighs the values (training's
    /// dropout); the kept block stays as the softmax wrote it.
    pub dropout: Option<&'a Dropout>,
}

/// Attention of every head: `qkv [rows, (heads + 2·kv_heads)·hd]` (queries, then keys, then
/// values) → context `[rows, heads·hd]`; rows that are no sequence's query stay 0.
pub fn attention(qkv: &[f32], seqs: &[Seq], rows: usize, a: &Attn) -> Vec<f32> {
    attention_keeping(qkv, seqs, rows, a, None)
}

/// [`attention`], with `keep` writing each block of probabilities where training's backward
/// reads them, and applying its dropout.
pub fn attention_keeping(qkv: &[f32], seqs: &[Seq], rows: usize, a: &Attn, keep: Option<Keep>) -> Vec<f32> {
    let (hd, heads) = (a.head_dim, a.heads);
    let width = heads * hd;
    let rs = a.qkv_width();
    debug_assert_eq!(qkv.len(), rows * rs);
    let group = heads / a.kv_heads.max(1);
    let mut ctx = vec![0f32; rows * width];
    let out = SharedMut(ctx.as_mut_ptr());
    let (kept, offsets, dropout) = match keep {
        Some(k) => (Some((SharedMut(k.probs.as_mut_ptr()), k.probs.len())), k.offsets, k.dropout),
        None => (None, &[][..], None),
    };
    (0..seqs.len() * heads).into_par_iter().for_each(|task| {
        let (si, h) = (task / heads, task % heads);
        let sq = &seqs[si];
        let (t, keys) = (sq.queries, sq.bias.len());
        if t == 0 || keys == 0 {
            return;
        }
        let row0 = sq.row * rs;
        let (q, k, v) = (row0 + h * hd, row0 + width + (h / group) * hd, row0 + width + (a.kv_heads + h / group) * hd);
        let mut scratch = Vec::new();
        // Captures the whole `SharedMut` (Send + Sync), not its raw-pointer field.
        #[allow(clippy::redundant_locals)]
        let kept = kept;
        let s: &mut [f32] = match kept {
            Some((probs, len)) => {
                let off = offsets[si][h];
                assert!(off + t * keys <= len, "the kept probabilities are too short");
                // SAFETY: in bounds (checked), and each (sequence, head) block is this task's alone.
                unsafe { std::slice::from_raw_parts_mut(probs.0.add(off), t * keys) }
            }
            None => {
                scratch.resize(t * keys, 0f32);
                &mut scratch
            }
        };
        // SAFETY: Q of this head and K, V of its group are `[t, hd]` / `[keys, hd]` windows of
        // `qkv` with row stride `rs`; `s` is `[t, keys]`; the context window `[t, hd]` at column
        // h·hd of rows sq.row.. is written by this task only (sequences do not overlap).
        unsafe {
            gemm::gemm(
                t,
                keys,
                hd,
                s.as_mut_ptr(),
                1,
                keys as isize,
                false,
                qkv.as_ptr().add(q),
                1,
                rs as isize,
                qkv.as_ptr().add(k),
                rs as isize,
                1,
                0.0,
                a.scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for (i, row) in s.chunks_exact_mut(keys).enumerate() {
            if a.causal {
                let seen = (i + 1).min(keys);
                simd::softmax_row(&mut row[..seen], &sq.bias[..seen]);
                row[seen..].fill(0.0);
            } else {
                simd::softmax_row(row, &sq.bias);
            }
        }
        let dropped;
        let pv: &[f32] = match dropout {
            Some(f) => {
                let mut copy = s.to_vec();
                f(offsets[si][h], &mut copy);
                dropped = copy;
                &dropped
            }
            None => s,
        };
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
                pv.as_ptr(),
                1,
                keys as isize,
                qkv.as_ptr().add(v),
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

const ROWS_PER_TASK: usize = 16;

/// `y ← LayerNorm(y + bias + residual)` row by row.
pub fn add_layer_norm(y: &mut [f32], bias: &[f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
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

/// `x ← act(x + bias)` row by row (rows as wide as `bias`).
pub fn activate(x: &mut [f32], bias: &[f32], act: Activation) {
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

/// `y ← RMSNorm(y)` row by row.
pub fn rms_norm(y: &mut [f32], gamma: &[f32], eps: f32) {
    y.par_chunks_mut(gamma.len() * ROWS_PER_TASK).for_each(|ys| {
        for row in ys.chunks_exact_mut(gamma.len()) {
            simd::rms_norm_row(row, gamma, eps);
        }
    });
}

/// The SwiGLU unit: `gate_up [rows, 2·f]` (the stacked gate|up map, before its optional
/// stacked `bias`) → `silu(gate)·up [rows, f]`.
pub fn silu_mul(gate_up: &[f32], bias: &[f32], f: usize) -> Vec<f32> {
    let rows = gate_up.len() / (2 * f).max(1);
    let mut y = vec![0f32; rows * f];
    if f == 0 {
        return y;
    }
    y.par_chunks_mut(f * ROWS_PER_TASK).zip(gate_up.par_chunks(2 * f * ROWS_PER_TASK)).for_each(|(ys, gs)| {
        for (row, g) in ys.chunks_exact_mut(f).zip(gs.chunks_exact(2 * f)) {
            simd::silu_mul(row, g, bias);
        }
    });
    y
}

/// Rotary positions on the query and key heads of `qkv [rows, a.qkv_width()]`, in place:
/// row r is rotated by its angles `cos`/`sin [rows, hd/2]` (every head of a row alike).
pub fn rope(qkv: &mut [f32], a: &Attn, cos: &[f32], sin: &[f32]) {
    let (hd, rs) = (a.head_dim, a.qkv_width());
    let half = hd / 2;
    qkv.par_chunks_mut(rs).zip(cos.par_chunks(half)).zip(sin.par_chunks(half)).for_each(|((row, c), s)| {
        for head in row[..(a.heads + a.kv_heads) * hd].chunks_exact_mut(hd) {
            simd::rope_row(head, c, s);
        }
    });
}

/// `x ← x + y`, the residual stream's update.
pub fn add_into(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096).zip(y.par_chunks(4096)).for_each(|(x, y)| {
        for (a, b) in x.iter_mut().zip(y) {
            *a += *b;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention computed naively, one query at a time, in f64.
    fn naive(qkv: &[f32], seqs: &[Seq], rows: usize, a: &Attn) -> Vec<f32> {
        let (hd, rs) = (a.head_dim, a.qkv_width());
        let mut out = vec![0f32; rows * a.heads * hd];
        for sq in seqs {
            for i in 0..sq.queries {
                for h in 0..a.heads {
                    let g = h / (a.heads / a.kv_heads);
                    let q = &qkv[(sq.row + i) * rs + h * hd..][..hd];
                    let keys = if a.causal { (i + 1).min(sq.bias.len()) } else { sq.bias.len() };
                    let scores: Vec<f64> = (0..keys)
                        .map(|j| {
                            let k = &qkv[(sq.row + j) * rs + (a.heads + g) * hd..][..hd];
                            let dot: f64 = q.iter().zip(k).map(|(x, y)| *x as f64 * *y as f64).sum();
                            dot * a.scale as f64 + if sq.bias[j] == 0.0 { 0.0 } else { -1e30 }
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let z: f64 = w.iter().sum();
                    for d in 0..hd {
                        let v: f64 = (0..keys)
                            .map(|j| w[j] / z * qkv[(sq.row + j) * rs + (a.heads + a.kv_heads + g) * hd + d] as f64)
                            .sum();
                        out[(sq.row + i) * a.heads * hd + h * hd + d] = v as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn grouped_causal_attention_equals_the_naive_sum() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // Two padded sequences of 5: the first with its last two positions padding, the second
        // left-padded by one.
        let seqs = Seq::padded(&[1, 1, 1, 0, 0, 0, 1, 1, 1, 1], 5);
        for (heads, kv_heads, causal) in [(4, 4, false), (4, 2, true), (6, 1, true), (2, 2, true)] {
            let a = Attn { heads, kv_heads, head_dim: 4, scale: 0.37, causal };
            let qkv: Vec<f32> = (0..10 * a.qkv_width()).map(|_| rnd()).collect();
            let ours = attention(&qkv, &seqs, 10, &a);
            let want = naive(&qkv, &seqs, 10, &a);
            // Rows that are padding: their values are never read; compare the real tokens.
            for r in [0, 1, 2, 6, 7, 8, 9] {
                for c in 0..heads * 4 {
                    let (x, y) = (ours[r * heads * 4 + c], want[r * heads * 4 + c]);
                    assert!((x - y).abs() < 1e-5, "{heads}/{kv_heads} causal {causal}: row {r} col {c}: {x} vs {y}");
                }
            }
        }
    }
}
