//! CPU kernels, each written once and used by inference, calibration and training alike:
//! - here, the matrix products: [`linear`] (`x · wᵀ (+ b)`, one `gemm` call) and [`mm`] over
//!   strided [`View`]s (the backward products and per-head attention), and the thread policy;
//! - [`simd`]: the element-wise kernels (exp, erf, GELU, softmax, LayerNorm and their gradients)
//!   with AVX2/FMA chosen at run time;
//! - [`fused`]: the inference layer (stacked Q/K/V, strided per-head attention, fused
//!   bias/GELU and residual/LayerNorm passes);
//! - [`backprop`]: what training adds — the linear maps' gradients, dropout masks recomputed from
//!   a counter-based hash, LayerNorm keeping what its backward needs, attention with the
//!   probabilities kept, and their backward passes;
//! - [`activation`]: the activation functions a config may name;
//! - [`int8`]: int8 linear maps (weights per output channel, activations per row or with a
//!   calibrated scale), exact i32 sums on AVX-512 VNNI, AVX-VNNI, AVX2 or portable code;
//! - [`sparse`]: sparse × dense linear maps over compressed rows, for unstructured sparsity;
//! - [`matrix`]: a linear map's weights in the representation that runs it (dense, sparse or
//!   int8; dense or sparse chosen by measuring both).

use gemm::Parallelism;

pub mod activation;
pub mod backprop;
pub mod fused;
pub mod int8;
pub mod matrix;
pub mod simd;
pub mod sparse;

pub(crate) fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `[rows, cols]` → `[cols, rows]`, row-major (GPT-2's `Conv1D` stores its weights as
/// `[in, out]`; the kernels take `[out, in]`).
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// `x [rows, inp] · wᵀ (+ b)` with `w [out, inp]`: a new `[rows, out]` buffer. Without `b`
/// the product is written straight into fresh memory (the caller adds the bias in its next
/// row-wise pass); with it, the buffer is pre-filled with the bias and accumulated into.
pub(crate) fn linear(x: &[f32], rows: usize, inp: usize, w: &[f32], out: usize, b: Option<&[f32]>) -> Vec<f32> {
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

/// Matrix view for gemm: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) ptr: *const f32,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

impl View {
    pub(crate) fn rows(s: &[f32], cols: usize) -> View {
        View { ptr: s.as_ptr(), rs: cols as isize, cs: 1 }
    }
    pub(crate) fn t(self) -> View {
        View { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// `dst [m, n]` (row stride `dst_rs`) ← (`dst` +) `a [m, k] · b [k, n]`.
///
/// # Safety
/// The views and `dst` must describe memory valid for those shapes; `dst` must not alias them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    a: View,
    b: View,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                std::ptr::write_bytes(dst.add(i * dst_rs), 0, n);
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        acc,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}
