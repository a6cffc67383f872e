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
//! Used by [`super::model::Encoder::forward`]; `forward_observed` (calibration) and training keep
//! the candle path. Tests hold the two within 1e-4 (tests/it/encoder.rs also checks both against
//! Hugging Face).

use super::activation::Activation;
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

pub(crate) fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `x [rows, inp] · wᵀ (+ b)` with `w [out, inp]`: a new `[rows, out]` buffer. Without `b`
/// the product is written straight into fresh memory (the caller adds the bias in its next
/// row-wise pass); with it, the buffer is pre-filled with the bias and accumulated into.
fn linear(x: &[f32], rows: usize, inp: usize, w: &[f32], out: usize, b: Option<&[f32]>) -> Vec<f32> {
    debug_assert_eq!(x.len(), rows * inp);
    debug_assert_eq!(w.len(), out * inp);
    let mut y: Vec<f32> = match b {
        Some(b) => {
            let mut y = Vec::with_capacity(rows * out);
            for _ in 0..rows {
                y.extend_from_slice(b);
            }
            y
        }
        None if inp == 0 => vec![0.0; rows * out],
        None => Vec::with_capacity(rows * out),
    };
    if rows == 0 || out == 0 || inp == 0 {
        return y;
    }
    // SAFETY: the pointers and strides describe `x` ([rows, inp], row-major), wᵀ ([inp, out]:
    // element (k, n) is w[n·inp + k]) and `y` ([rows, out], row-major, capacity rows·out). With
    // `read_dst` false gemm writes every element of `y` without reading it, so its length can
    // be set afterwards.
    unsafe {
        gemm::gemm(
            rows,
            out,
            inp,
            y.as_mut_ptr(),
            1,
            out as isize,
            b.is_some(),
            x.as_ptr(),
            1,
            inp as isize,
            w.as_ptr(),
            inp as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            threads(),
        );
        y.set_len(rows * out);
    }
    y
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

/// Element-wise kernels: each has a portable body, compiled a second time with AVX2 and FMA
/// enabled and chosen at run time when the CPU has them.
pub(crate) mod simd {
    macro_rules! dispatch {
        ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
            $(#[$m])*
            pub fn $name($($arg: $ty),*) $(-> $ret)? {
                #[inline(always)]
                fn imp($($arg: $ty),*) $(-> $ret)? $body
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                        imp($($arg),*)
                    }
                    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                        // SAFETY: the CPU has the features `avx2` was compiled for.
                        return unsafe { avx2($($arg),*) };
                    }
                }
                imp($($arg),*)
            }
        };
    }

    /// e^x for x ≤ 0 ... 88, 2 ulp: 2^n · p(r) with x = n·ln2 + r, |r| ≤ ln2/2.
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        // Round to nearest with the 1.5·2^23 trick (vectorises, unlike `round`).
        const SHIFT: f32 = 12582912.0;
        let n = x * std::f32::consts::LOG2_E + SHIFT;
        let k = n.to_bits() as i32 - SHIFT.to_bits() as i32;
        let n = n - SHIFT;
        let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
        let p = 1.0
            + r * (1.0
                + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
        f32::from_bits(((k + 127) << 23) as u32) * p
    }

    /// erf with Eigen's rational approximation (`generic_fast_erf_float`, as XLA uses it):
    /// about 1e-7 absolute error; erf(±4) is ±1 in f32.
    #[inline(always)]
    pub fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
        p = x2 * p + -2.101_024e-6;
        p = x2 * p + -5.692_506_4e-5;
        p = x2 * p + -7.349_906_3e-4;
        p = x2 * p + -2.954_600_1e-3;
        p = x2 * p + -1.609_603_3e-2;
        p *= x;
        let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
        q = x2 * q + -1.682_827e-3;
        q = x2 * q + -7.373_329_2e-3;
        q = x2 * q + -1.426_474e-2;
        p / q
    }

    dispatch! {
        /// Exact GELU of x + bias: y·(1 + erf(y/√2))/2.
        pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
            for (v, b) in x.iter_mut().zip(bias) {
                let y = *v + *b;
                *v = 0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }

    dispatch! {
        /// GELU of x + bias, tanh approximation: y·(1 + tanh(√(2/π)(y + 0.044715y³)))/2, with
        /// tanh(u) = 1 − 2/(e^{2u} + 1).
        pub fn bias_gelu_tanh(x: &mut [f32], bias: &[f32]) {
            for (v, b) in x.iter_mut().zip(bias) {
                let y = *v + *b;
                let u = 0.797_884_6 * (y + 0.044715 * y * y * y);
                let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
                *v = 0.5 * y * (1.0 + t);
            }
        }
    }

    dispatch! {
        /// softmax(row + bias) in place.
        pub fn softmax_row(row: &mut [f32], bias: &[f32]) {
            let mut max = f32::NEG_INFINITY;
            for (v, b) in row.iter_mut().zip(bias) {
                *v += *b;
                max = max.max(*v);
            }
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = exp(*v - max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }

    dispatch! {
        /// row ← LayerNorm(row + bias + residual)·γ + β (two-pass mean and variance, as
        /// PyTorch).
        pub fn add_layer_norm_row(row: &mut [f32], bias: &[f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
            let h = row.len() as f32;
            let mut sum = 0.0;
            for ((v, b), r) in row.iter_mut().zip(bias).zip(residual) {
                *v += *b + *r;
                sum += *v;
            }
            let mean = sum / h;
            let mut var = 0.0;
            for v in row.iter() {
                let c = *v - mean;
                var += c * c;
            }
            let inv = 1.0 / (var / h + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inv * *g + *b;
            }
        }
    }
    dispatch! {
        /// Training LayerNorm: row ← LayerNorm(row + residual)·γ + β, keeping x̂ (the normalised
        /// input) for the backward pass; returns 1/σ.
        pub fn add_layer_norm_keep(row: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32, xhat: &mut [f32]) -> f32 {
            let h = row.len() as f32;
            let mut sum = 0.0;
            for (v, r) in row.iter_mut().zip(residual) {
                *v += *r;
                sum += *v;
            }
            let mean = sum / h;
            let mut var = 0.0;
            for v in row.iter() {
                let c = *v - mean;
                var += c * c;
            }
            let inv = 1.0 / (var / h + eps).sqrt();
            for (((v, x), g), b) in row.iter_mut().zip(xhat.iter_mut()).zip(gamma).zip(beta) {
                *x = (*v - mean) * inv;
                *v = *x * *g + *b;
            }
            inv
        }
    }

    dispatch! {
        /// LayerNorm backward for one row: `dy` (the output's gradient) becomes the input's,
        /// dx = (g − mean(g) − x̂·mean(g·x̂))/σ with g = dy·γ; dγ += dy·x̂, dβ += dy.
        pub fn layer_norm_grad_row(dy: &mut [f32], xhat: &[f32], rstd: f32, gamma: &[f32], dgamma: &mut [f32], dbeta: &mut [f32]) {
            let h = dy.len() as f32;
            let (mut sg, mut sgx) = (0.0, 0.0);
            for i in 0..dy.len() {
                dgamma[i] += dy[i] * xhat[i];
                dbeta[i] += dy[i];
                let g = dy[i] * gamma[i];
                sg += g;
                sgx += g * xhat[i];
            }
            let (mg, mgx) = (sg / h, sgx / h);
            for i in 0..dy.len() {
                dy[i] = (dy[i] * gamma[i] - mg - xhat[i] * mgx) * rstd;
            }
        }
    }

    dispatch! {
        /// dy ← dy·GELU'(y) (exact GELU): Φ(y) + y·φ(y).
        pub fn gelu_grad(dy: &mut [f32], y: &[f32]) {
            for (d, y) in dy.iter_mut().zip(y) {
                let cdf = 0.5 * (1.0 + erf(*y * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = 0.398_942_3 * exp(-0.5 * *y * *y);
                *d *= cdf + *y * pdf;
            }
        }
    }

    dispatch! {
        /// dy ← dy·GELU'(y), tanh approximation.
        pub fn gelu_tanh_grad(dy: &mut [f32], y: &[f32]) {
            for (d, y) in dy.iter_mut().zip(y) {
                let u = 0.797_884_6 * (*y + 0.044715 * *y * *y * *y);
                let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
                *d *= 0.5 * (1.0 + t) + 0.5 * *y * (1.0 - t * t) * 0.797_884_6 * (1.0 + 3.0 * 0.044715 * *y * *y);
            }
        }
    }

    dispatch! {
        /// y ← GELU(x) (exact), out of place.
        pub fn gelu_into(y: &mut [f32], x: &[f32]) {
            for (v, x) in y.iter_mut().zip(x) {
                *v = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }

    dispatch! {
        /// y ← GELU(x), tanh approximation, out of place.
        pub fn gelu_tanh_into(y: &mut [f32], x: &[f32]) {
            for (v, x) in y.iter_mut().zip(x) {
                let u = 0.797_884_6 * (*x + 0.044715 * *x * *x * *x);
                let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
                *v = 0.5 * *x * (1.0 + t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn exp_erf_and_gelu_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let e = simd::exp(x);
            let want = (x as f64).exp();
            assert!(((e as f64) - want).abs() <= 3e-7 * want, "exp({x}) = {e}, want {want}");
        }
        assert_eq!(simd::exp(f32::MIN), simd::exp(-87.0));
        assert!(simd::exp(f32::MIN) < 1e-37);
        let xs: Vec<f32> = (-1000..=1000).map(|i| i as f32 * 0.007).collect();
        let mut ours: Vec<f32> = xs.iter().map(|x| x - 0.5).collect();
        simd::bias_gelu(&mut ours, &vec![0.5; xs.len()]);
        let reference = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap().gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-6, "gelu differs from candle's gelu_erf by {worst}");
        let mut ours: Vec<f32> = xs.iter().map(|x| x + 0.25).collect();
        simd::bias_gelu_tanh(&mut ours, &vec![-0.25; xs.len()]);
        let reference = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap().gelu().unwrap().to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-6, "gelu_tanh differs from candle's gelu by {worst}");
    }

    #[test]
    fn softmax_and_layer_norm_rows() {
        let mut row = vec![1.0, 2.0, 3.0, 4.0];
        simd::softmax_row(&mut row, &[0.0, 0.0, f32::MIN, 0.0]);
        let z = 1f32.exp() + 2f32.exp() + 4f32.exp();
        for (v, w) in row.iter().zip([1f32.exp() / z, 2f32.exp() / z, 0.0, 4f32.exp() / z]) {
            assert!((v - w).abs() < 1e-6);
        }
        let mut row = vec![1.0, 2.0, 3.0, 6.0];
        simd::add_layer_norm_row(
            &mut row,
            &[0.5, 0.0, 0.0, 0.0],
            &[0.5, 0.0, 1.0, 0.0],
            &[1.0, 2.0, 1.0, 1.0],
            &[0.0, 0.0, 1.0, 0.0],
            0.0,
        );
        // row + bias + residual = 2, 2, 4, 6: mean 3.5, variance 2.75.
        let s = 2.75f32.sqrt();
        for (v, w) in row.iter().zip([-1.5 / s, -3.0 / s, 0.5 / s + 1.0, 2.5 / s]) {
            assert!((v - w).abs() < 1e-6, "{v} vs {w}");
        }
    }
}
