//! The trainable model's row kernels with their backward passes: gemm-backed linear maps
//! (forward and both gradients), column sums for bias gradients, dropout masks recomputed from a
//! counter-based hash instead of stored, LayerNorm keeping what its backward needs, and attention
//! per (sequence, head) with the probabilities kept for the backward pass.

use super::{mm, simd, threads, View};
use crate::engine::cpu::fused::{self, Attn, Keep, Seq};
use gemm::Parallelism;
use rayon::prelude::*;

/// Backward of `y = x·wᵀ + b`: dw += dyᵀ·x, db += Σ dy; returns dx = dy·w when asked for, or
/// adds it to `dx_acc`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_back(
    dy: &[f32],
    x: &[f32],
    rows: usize,
    w: &[f32],
    out: usize,
    inp: usize,
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<(&mut [f32], bool)>,
) {
    unsafe {
        mm(out, inp, rows, dw.as_mut_ptr(), inp, true, View::rows(dy, out).t(), View::rows(x, inp), threads());
    }
    col_sums(dy, out, db);
    if let Some((dx, acc)) = dx {
        unsafe { mm(rows, inp, out, dx.as_mut_ptr(), inp, acc, View::rows(dy, out), View::rows(w, inp), threads()) };
    }
}

/// `acc[j] += Σ_i m[i, j]` for row-major `m` with `cols` columns.
pub(crate) fn col_sums(m: &[f32], cols: usize, acc: &mut [f32]) {
    if cols == 0 {
        return;
    }
    let rows = m.len() / cols;
    let chunk = rows.div_ceil(rayon::current_num_threads().max(1)).max(64);
    let partial: Vec<Vec<f32>> = m
        .par_chunks(chunk * cols)
        .map(|c| {
            let mut s = vec![0f32; cols];
            for row in c.chunks_exact(cols) {
                for (a, v) in s.iter_mut().zip(row) {
                    *a += v;
                }
            }
            s
        })
        .collect();
    for p in partial {
        for (a, v) in acc.iter_mut().zip(p) {
            *a += v;
        }
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash (dropout masks, per-step seeds).
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A dropout mask that is never stored: element `i` is kept when a hash of (key, i) clears
/// the threshold, so the backward pass recomputes the same mask.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mask {
    pub(crate) key: u64,
    pub(crate) threshold: u32,
    pub(crate) scale: f32,
}

impl Mask {
    pub(crate) fn new(seed: Option<u64>, p: f32, site: u64) -> Option<Mask> {
        let seed = seed?;
        if p <= 0.0 {
            return None;
        }
        Some(Mask {
            key: splitmix(seed ^ splitmix(site)),
            threshold: (f64::from(p) * 4_294_967_296.0).min(4_294_967_295.0) as u32,
            scale: 1.0 / (1.0 - p),
        })
    }
    #[inline]
    pub(crate) fn factor(&self, i: usize) -> f32 {
        if (splitmix(self.key.wrapping_add(i as u64)) >> 32) as u32 >= self.threshold {
            self.scale
        } else {
            0.0
        }
    }
    /// x ← x·mask/(1−p) over a buffer whose first element has index `start`.
    pub(crate) fn apply(&self, x: &mut [f32], start: usize) {
        x.par_chunks_mut(1 << 14).enumerate().for_each(|(c, xs)| {
            let base = start + c * (1 << 14);
            for (j, v) in xs.iter_mut().enumerate() {
                *v *= self.factor(base + j);
            }
        });
    }
}

pub(crate) fn apply_drop(d: Option<Mask>, x: &mut [f32]) {
    if let Some(d) = d {
        d.apply(x, 0);
    }
}

/// LayerNorm state kept for the backward pass.
pub(crate) struct Ln {
    pub(crate) xhat: Vec<f32>,
    pub(crate) rstd: Vec<f32>,
}

pub(crate) const ROWS: usize = 16;

/// y ← LayerNorm(y + residual) row by row (`residual` empty: none), keeping x̂ and 1/σ.
pub(crate) fn layer_norm_keep(y: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Ln {
    let h = gamma.len();
    let rows = y.len() / h;
    let mut xhat = vec![0f32; y.len()];
    let mut rstd = vec![0f32; rows];
    let zeros = vec![0f32; h];
    y.par_chunks_mut(h * ROWS).zip(xhat.par_chunks_mut(h * ROWS)).zip(rstd.par_chunks_mut(ROWS)).enumerate().for_each(
        |(c, ((ys, xs), rs))| {
            for (r, (row, xh)) in ys.chunks_exact_mut(h).zip(xs.chunks_exact_mut(h)).enumerate() {
                let res = if residual.is_empty() {
                    &zeros[..]
                } else {
                    &residual[(c * ROWS + r) * h..(c * ROWS + r + 1) * h]
                };
                rs[r] = simd::add_layer_norm_keep(row, res, gamma, beta, eps, xh);
            }
        },
    );
    Ln { xhat, rstd }
}

/// LayerNorm backward in place on `dy`, accumulating dγ, dβ.
pub(crate) fn layer_norm_back(dy: &mut [f32], ln: &Ln, gamma: &[f32], dgamma: &mut [f32], dbeta: &mut [f32]) {
    let h = gamma.len();
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dy
        .par_chunks_mut(h * ROWS * 4)
        .zip(ln.xhat.par_chunks(h * ROWS * 4))
        .zip(ln.rstd.par_chunks(ROWS * 4))
        .map(|((ds, xs), rs)| {
            let (mut dg, mut db) = (vec![0f32; h], vec![0f32; h]);
            for ((d, x), r) in ds.chunks_exact_mut(h).zip(xs.chunks_exact(h)).zip(rs) {
                simd::layer_norm_grad_row(d, x, *r, gamma, &mut dg, &mut db);
            }
            (dg, db)
        })
        .collect();
    for (dg, db) in partial {
        dgamma.iter_mut().zip(dg).for_each(|(a, v)| *a += v);
        dbeta.iter_mut().zip(db).for_each(|(a, v)| *a += v);
    }
}

/// Two distinct gradients mutably.
pub(crate) fn two(g: &mut [Vec<f32>], a: usize, b: usize) -> (&mut [f32], &mut [f32]) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = g.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = g.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// Training attention: `qkv [n, 3w]` → context `[n, w]`, filling each (sequence, head) block
/// of `probs` with softmax(QKᵀ/√d + mask) before dropout: the inference kernel
/// ([`fused::attention_keeping`]) keeping what the backward reads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_forward(
    qkv: &[f32],
    seqs: &[Seq],
    offsets: &[Vec<usize>],
    probs: &mut [f32],
    n: usize,
    heads: usize,
    hd: usize,
    mask: Option<Mask>,
) -> Vec<f32> {
    let drop = mask
        .map(|d| move |off: usize, v: &mut [f32]| v.iter_mut().enumerate().for_each(|(j, x)| *x *= d.factor(off + j)));
    let dropout = drop.as_ref().map(|f| f as &fused::Dropout);
    fused::attention_keeping(qkv, seqs, n, &Attn::bidirectional(heads, hd), Some(Keep { probs, offsets, dropout }))
}

/// Backward of [`attention_forward`]: dQ, dK, dV into a new `[n, 3w]` buffer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    qkv: &[f32],
    probs: &[f32],
    dctx: &[f32],
    seqs: &[Seq],
    offsets: &[Vec<usize>],
    n: usize,
    heads: usize,
    hd: usize,
    mask: Option<Mask>,
) -> Vec<f32> {
    let width = heads * hd;
    let rs = 3 * width;
    let mut dqkv = vec![0f32; n * rs];
    let out = Shared(dqkv.as_mut_ptr());
    let scale = 1.0 / (hd as f32).sqrt();
    (0..seqs.len() * heads).into_par_iter().for_each(|task| {
        let (si, hh) = (task / heads, task % heads);
        let sq = &seqs[si];
        let (t, keys) = (sq.queries, sq.bias.len());
        if t == 0 || keys == 0 {
            return;
        }
        let off = offsets[si][hh];
        let base = sq.row * rs + hh * hd;
        let pblock = &probs[off..off + t * keys];
        let dc = View { ptr: unsafe { dctx.as_ptr().add(sq.row * width + hh * hd) }, rs: width as isize, cs: 1 };
        unsafe {
            // dV = P_dropᵀ · dctx
            let pd: Vec<f32> = match mask {
                Some(d) => pblock.iter().enumerate().map(|(j, v)| v * d.factor(off + j)).collect(),
                None => pblock.to_vec(),
            };
            mm(keys, hd, t, out.at(base + 2 * width), rs, false, View::rows(&pd, keys).t(), dc, Parallelism::None);
            // dP_drop = dctx · Vᵀ, dP = mask(dP_drop)
            let mut dp = vec![0f32; t * keys];
            mm(
                t,
                keys,
                hd,
                dp.as_mut_ptr(),
                keys,
                false,
                dc,
                View { ptr: qkv.as_ptr().add(base + 2 * width), rs: rs as isize, cs: 1 }.t(),
                Parallelism::None,
            );
            if let Some(d) = mask {
                for (j, x) in dp.iter_mut().enumerate() {
                    *x *= d.factor(off + j);
                }
            }
            // dS = P ⊙ (dP − Σ dP·P) · scale
            for (drow, prow) in dp.chunks_exact_mut(keys).zip(pblock.chunks_exact(keys)) {
                let dot: f32 = drow.iter().zip(prow).map(|(a, b)| a * b).sum();
                for (d, p) in drow.iter_mut().zip(prow) {
                    *d = p * (*d - dot) * scale;
                }
            }
            // dQ = dS · K, dK = dSᵀ · Q
            mm(
                t,
                hd,
                keys,
                out.at(base),
                rs,
                false,
                View::rows(&dp, keys),
                View { ptr: qkv.as_ptr().add(base + width), rs: rs as isize, cs: 1 },
                Parallelism::None,
            );
            mm(
                keys,
                hd,
                t,
                out.at(base + width),
                rs,
                false,
                View::rows(&dp, keys).t(),
                View { ptr: qkv.as_ptr().add(base), rs: rs as isize, cs: 1 },
                Parallelism::None,
            );
        }
    });
    dqkv
}
