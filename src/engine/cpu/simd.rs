//! Element-wise kernels (exp, erf, GELU and its tanh form with their gradients, softmax with an
//! additive bias, LayerNorm with and without residual, its backward; the decoders' RMSNorm,
//! SwiGLU gate and rotary positions): each has a portable body, compiled again with AVX2 and FMA
//! and with AVX-512, the widest the CPU has chosen at run time. The bodies use no fused
//! multiply-add unless they write `mul_add`, and the compiler never contracts on its own, so
//! every width gives the same bits.
//! Inference (`fused`) and training (`backprop`) call the same ones.

macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
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
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
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

/// Σ f(v) in 8 lanes, the lanes added pairwise, then the tail: vectorises (one running sum is
/// one dependent add per element). Every row reduction of this module sums this way.
#[inline(always)]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut l = [0f32; 8];
    let mut chunks = v.chunks_exact(8);
    for c in chunks.by_ref() {
        for (s, x) in l.iter_mut().zip(c) {
            *s += f(*x);
        }
    }
    let mut sum = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    for x in chunks.remainder() {
        sum += f(*x);
    }
    sum
}

/// Exact GELU: y·(1 + erf(y/√2))/2.
#[inline(always)]
fn gelu(y: f32) -> f32 {
    0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU, tanh approximation: y·(1 + tanh(√(2/π)(y + 0.044715y³)))/2, with
/// tanh(u) = 1 − 2/(e^{2u} + 1).
#[inline(always)]
fn gelu_tanh(y: f32) -> f32 {
    let u = 0.797_884_6 * (y + 0.044715 * y * y * y);
    let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
    0.5 * y * (1.0 + t)
}

/// LayerNorm of a row in place, row ← (row − mean)/σ·γ + β, the sums in 8 lanes; with `xhat`,
/// keeps (row − mean)/σ there (training's backward reads it). Returns 1/σ.
#[inline(always)]
fn layer_norm_in_place(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32, xhat: Option<&mut [f32]>) -> f32 {
    let h = row.len() as f32;
    let mean = lane_sum(row, |v| v) / h;
    let var = lane_sum(row, |v| (v - mean) * (v - mean));
    let inv = 1.0 / (var / h + eps).sqrt();
    match xhat {
        Some(xhat) => {
            for (((v, x), g), b) in row.iter_mut().zip(xhat.iter_mut()).zip(gamma).zip(beta) {
                *x = (*v - mean) * inv;
                *v = *x * *g + *b;
            }
        }
        None => {
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inv * *g + *b;
            }
        }
    }
    inv
}

dispatch! {
    /// Exact GELU of x + bias ([`gelu`]).
    pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
        for (v, b) in x.iter_mut().zip(bias) {
            *v = gelu(*v + *b);
        }
    }
}

dispatch! {
    /// GELU of x + bias, tanh approximation ([`gelu_tanh`]).
    pub fn bias_gelu_tanh(x: &mut [f32], bias: &[f32]) {
        for (v, b) in x.iter_mut().zip(bias) {
            *v = gelu_tanh(*v + *b);
        }
    }
}

dispatch! {
    /// softmax(row + bias) in place; the maximum and the sum in 8 lanes ([`lane_sum`]).
    pub fn softmax_row(row: &mut [f32], bias: &[f32]) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += *b;
        }
        let mut lanes = [f32::NEG_INFINITY; 8];
        let mut chunks = row.chunks_exact(8);
        for c in chunks.by_ref() {
            for (m, v) in lanes.iter_mut().zip(c) {
                *m = m.max(*v);
            }
        }
        let max = chunks.remainder().iter().fold(lanes.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)), |a, b| a.max(*b));
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = 1.0 / lane_sum(row, |v| v);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

dispatch! {
    /// row ← LayerNorm(row + bias + residual)·γ + β (two-pass mean and variance, as
    /// PyTorch).
    pub fn add_layer_norm_row(row: &mut [f32], bias: &[f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
        for ((v, b), r) in row.iter_mut().zip(bias).zip(residual) {
            *v += *b + *r;
        }
        layer_norm_in_place(row, gamma, beta, eps, None);
    }
}
dispatch! {
    /// Training LayerNorm: row ← LayerNorm(row + residual)·γ + β, keeping x̂ (the normalised
    /// input) for the backward pass; returns 1/σ.
    pub fn add_layer_norm_keep(row: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32, xhat: &mut [f32]) -> f32 {
        for (v, r) in row.iter_mut().zip(residual) {
            *v += *r;
        }
        layer_norm_in_place(row, gamma, beta, eps, Some(xhat))
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
            *v = gelu(*x);
        }
    }
}

dispatch! {
    /// y ← GELU(x), tanh approximation, out of place.
    pub fn gelu_tanh_into(y: &mut [f32], x: &[f32]) {
        for (v, x) in y.iter_mut().zip(x) {
            *v = gelu_tanh(*x);
        }
    }
}

dispatch! {
    /// RMSNorm of one row, as Llama computes it: row ← (row·1/√(mean(row²) + ε))·γ.
    pub fn rms_norm_row(row: &mut [f32], gamma: &[f32], eps: f32) {
        let inv = 1.0 / (lane_sum(row, |v| v * v) / row.len() as f32 + eps).sqrt();
        for (v, g) in row.iter_mut().zip(gamma) {
            *v = (*v * inv) * *g;
        }
    }
}

dispatch! {
    /// The gated unit of a SwiGLU MLP: y ← silu(gate + b_gate)·(up + b_up), with silu(g) =
    /// g/(1 + e^−g). `gate_up` is one row of the stacked gate|up map (`2·y.len()` values),
    /// `bias` the stacked biases (empty without).
    pub fn silu_mul(y: &mut [f32], gate_up: &[f32], bias: &[f32]) {
        let (gate, up) = gate_up.split_at(y.len());
        if bias.is_empty() {
            for ((v, g), u) in y.iter_mut().zip(gate).zip(up) {
                *v = *g / (1.0 + exp(-*g)) * *u;
            }
        } else {
            let (bg, bu) = bias.split_at(y.len());
            for ((((v, g), u), bg), bu) in y.iter_mut().zip(gate).zip(up).zip(bg).zip(bu) {
                let g = *g + *bg;
                *v = g / (1.0 + exp(-g)) * (*u + *bu);
            }
        }
    }
}

dispatch! {
    /// Rotary positions on one head's row `x` (`2·cos.len()` values), Hugging Face's
    /// `rotate_half` pairing: (x_j, x_{j+d/2}) ← (x_j·cos_j − x_{j+d/2}·sin_j,
    /// x_{j+d/2}·cos_j + x_j·sin_j).
    pub fn rope_row(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let (a, b) = x.split_at_mut(cos.len());
        for (((a, b), c), s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
            let (x1, x2) = (*a, *b);
            *a = x1 * *c - x2 * *s;
            *b = x2 * *c + x1 * *s;
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
            let e = exp(x);
            let want = (x as f64).exp();
            assert!(((e as f64) - want).abs() <= 3e-7 * want, "exp({x}) = {e}, want {want}");
        }
        assert_eq!(exp(f32::MIN), exp(-87.0));
        assert!(exp(f32::MIN) < 1e-37);
        let xs: Vec<f32> = (-1000..=1000).map(|i| i as f32 * 0.007).collect();
        let mut ours: Vec<f32> = xs.iter().map(|x| x - 0.5).collect();
        bias_gelu(&mut ours, &vec![0.5; xs.len()]);
        let reference = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap().gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-6, "gelu differs from candle's gelu_erf by {worst}");
        let mut ours: Vec<f32> = xs.iter().map(|x| x + 0.25).collect();
        bias_gelu_tanh(&mut ours, &vec![-0.25; xs.len()]);
        let reference = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap().gelu().unwrap().to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-6, "gelu_tanh differs from candle's gelu by {worst}");
    }

    #[test]
    fn rms_norm_silu_and_rope_rows() {
        let mut row = vec![1.0, -2.0, 3.0, 4.0];
        rms_norm_row(&mut row, &[1.0, 0.5, 2.0, 1.0], 1e-6);
        // mean of squares 30/4 = 7.5.
        let inv = 1.0 / (7.5f32 + 1e-6).sqrt();
        for (v, w) in row.iter().zip([inv, -inv, 6.0 * inv, 4.0 * inv]) {
            assert!((v - w).abs() < 1e-6, "{v} vs {w}");
        }
        let silu = |g: f32| g / (1.0 + (-g).exp());
        let mut y = vec![0.0; 2];
        silu_mul(&mut y, &[-1.0, 2.0, 3.0, 0.5], &[]);
        assert!((y[0] - silu(-1.0) * 3.0).abs() < 1e-6 && (y[1] - silu(2.0) * 0.5).abs() < 1e-6, "{y:?}");
        silu_mul(&mut y, &[-1.0, 2.0, 3.0, 0.5], &[1.0, 0.0, 0.0, -0.5]);
        assert!(y[0].abs() < 1e-7 && (y[1] - 0.0).abs() < 1e-7, "{y:?}");
        silu_mul(&mut y, &[-100.0, 100.0, 1.0, 1.0], &[]);
        assert!(y[0].abs() < 1e-30 && (y[1] - 100.0).abs() < 1e-4, "{y:?}");
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        let (c, s) = (0.3f32.cos(), 0.3f32.sin());
        rope_row(&mut x, &[1.0, c], &[0.0, s]);
        for (v, w) in x.iter().zip([1.0, 2.0 * c - 4.0 * s, 3.0, 4.0 * c + 2.0 * s]) {
            assert!((v - w).abs() < 1e-6, "{v} vs {w}");
        }
    }

    #[test]
    fn softmax_and_layer_norm_rows() {
        let mut row = vec![1.0, 2.0, 3.0, 4.0];
        softmax_row(&mut row, &[0.0, 0.0, f32::MIN, 0.0]);
        let z = 1f32.exp() + 2f32.exp() + 4f32.exp();
        for (v, w) in row.iter().zip([1f32.exp() / z, 2f32.exp() / z, 0.0, 4f32.exp() / z]) {
            assert!((v - w).abs() < 1e-6);
        }
        let mut row = vec![1.0, 2.0, 3.0, 6.0];
        add_layer_norm_row(
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
