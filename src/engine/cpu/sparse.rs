//! Sparse × dense products for unstructured sparsity: `y = x · wᵀ (+ b)` with `w [out, inp]`
//! stored as compressed rows (CSR: per output channel, the columns and values of its non-zeros),
//! so the work is proportional to the non-zeros instead of `out · inp`.
//!
//! The kernel works on blocks of `RB` rows of `x` at a time, transposed to `[inp, RB]`: each
//! non-zero `w[n][k]` then multiplies one contiguous row `xᵀ[k]` of `RB` values into `RB`
//! accumulators held in vector registers (8 independent chains, enough to keep both FMA ports
//! busy), and the `RB` outputs of channel `n` are written once. The transposed block stays in
//! the core's L2 cache while every channel reads it. `RB` is 128 with AVX-512, 64 with AVX2/FMA,
//! 16 on the portable path (chosen at run time, [`Isa::detect`]). Sums run over each channel's
//! non-zeros in column order, so results differ from the dense product only in rounding.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A `[out, inp]` matrix in compressed sparse rows.
#[derive(Clone)]
pub struct SparseMatrix {
    out: usize,
    inp: usize,
    /// `row_ptr[n]..row_ptr[n + 1]` index channel `n`'s non-zeros in `cols`/`vals`.
    row_ptr: Vec<u32>,
    cols: Vec<u32>,
    vals: Vec<f32>,
}

impl SparseMatrix {
    /// The non-zeros of `w [out, inp]` (row-major f32).
    pub fn from_dense(w: &[f32], out: usize, inp: usize) -> SparseMatrix {
        assert_eq!(w.len(), out * inp, "weights are not [out, inp]");
        assert!(u32::try_from(out * inp).is_ok(), "matrix too large for 32-bit indices");
        let nnz = w.iter().filter(|v| **v != 0.0).count();
        let (mut cols, mut vals) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
        let mut row_ptr = Vec::with_capacity(out + 1);
        row_ptr.push(0);
        for n in 0..out {
            for (k, &v) in w[n * inp..(n + 1) * inp].iter().enumerate() {
                if v != 0.0 {
                    cols.push(k as u32);
                    vals.push(v);
                }
            }
            row_ptr.push(cols.len() as u32);
        }
        SparseMatrix { out, inp, row_ptr, cols, vals }
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    pub fn nnz(&self) -> usize {
        self.vals.len()
    }

    /// Non-zeros over `out · inp` (1 for an empty matrix).
    pub fn density(&self) -> f64 {
        if self.out * self.inp == 0 {
            1.0
        } else {
            self.nnz() as f64 / (self.out * self.inp) as f64
        }
    }

    /// Bytes the matrix takes in memory.
    pub fn bytes(&self) -> usize {
        4 * (self.row_ptr.len() + self.cols.len() + self.vals.len())
    }
}

/// The instruction set a sparse product runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    pub fn detect() -> Isa {
        Isa::available()[0]
    }

    /// Every path this CPU can run, fastest first.
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
        }
        v.push(Isa::Portable);
        v
    }

    /// Rows of `x` per block.
    fn rows(self) -> usize {
        match self {
            Isa::Avx512 => 128,
            Isa::Avx2 => 64,
            Isa::Portable => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// Bytes of the transposed activations one pass over the channels reads: a block of input
/// columns small enough to stay in the core's L1 cache while every channel's non-zeros in it
/// are applied.
const BLOCK_BYTES: usize = 16 * 1024;

/// `x [rows, inp] · wᵀ (+ b)` on the fastest path of this CPU.
pub fn linear(x: &[f32], rows: usize, m: &SparseMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    linear_on(Isa::detect(), x, rows, m, bias)
}

/// [`linear`] on a chosen path (`isa` must be one of [`Isa::available`]).
///
/// Per block of `RB` rows (one task each): the rows transposed to `xt [inp, RB]`; then, block
/// of input columns by block of input columns (each `RB · kb` floats, [`BLOCK_BYTES`]), every
/// channel's non-zeros in that block added into its `RB` sums `yt[n]` (kept in registers while
/// the channel's non-zeros in the block are applied, in memory between blocks); at the end `yt`
/// is transposed back into the output rows with the bias.
pub fn linear_on(isa: Isa, x: &[f32], rows: usize, m: &SparseMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    assert!(Isa::available().contains(&isa), "{} is not available on this CPU", isa.name());
    assert_eq!(x.len(), rows * m.inp, "activations are not [rows, inp]");
    if let Some(b) = bias {
        assert_eq!(b.len(), m.out, "one bias per output channel");
    }
    let (out, inp) = (m.out, m.inp);
    if rows == 0 || out == 0 {
        return vec![0f32; rows * out];
    }
    // Every element is written once below (the final `transpose`): no zeroing pass over the output.
    let mut y: Vec<f32> = Vec::with_capacity(rows * out);
    let rb = isa.rows();
    let kb = (BLOCK_BYTES / (4 * rb)).max(1);
    y.spare_capacity_mut()[..rows * out].par_chunks_mut(rb * out).enumerate().for_each(|(c, ys)| {
        let r0 = c * rb;
        let nr = ys.len() / out;
        SCRATCH.with_borrow_mut(|(xt, yt)| {
            // Reused between calls on this thread, never cleared: the rows past `nr` of the
            // last block hold stale values whose sums nobody reads, and a channel's sums start
            // from zero at its first non-zero (below).
            if xt.len() < inp * rb {
                xt.resize(inp * rb, 0.0);
            }
            if yt.len() < out * rb {
                yt.resize(out * rb, 0.0);
            }
            // SAFETY: viewing initialised floats as possibly uninitialised ones is sound.
            let xt_out = unsafe { &mut *(xt.as_mut_slice() as *mut [f32] as *mut [MaybeUninit<f32>]) };
            transpose(&x[r0 * inp..(r0 + nr) * inp], inp, nr, inp, None, xt_out, rb);
            // Each channel's next non-zero not yet applied.
            let mut pos = m.row_ptr[..out].to_vec();
            for k0 in (0..inp).step_by(kb) {
                let limit = (k0 + kb).min(inp) as u32;
                columns(isa, xt, m, &mut pos, limit, yt);
            }
            // Channels without any non-zero never started.
            for n in (0..out).filter(|&n| m.row_ptr[n] == m.row_ptr[n + 1]) {
                yt[n * rb..(n + 1) * rb].fill(0.0);
            }
            // yt [out, rb] back into the rows, with the bias: every element of `ys` written.
            transpose(yt, rb, out, nr, bias, ys, out);
        });
    });
    // SAFETY: the final `transpose` wrote every element of every chunk.
    unsafe { y.set_len(rows * out) };
    y
}

thread_local! {
    /// Per thread: the transposed rows and the channels' sums of the block being computed.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `dst[c][r] = src[r][c] (+ add[r])` for every `r < rows`, `c < cols`, with `src`'s rows
/// `src_stride` floats apart and `dst`'s `dst_stride` apart, in 8 × 8 tiles (AVX shuffles where
/// the CPU has them). Both transposes of the kernel: the rows in, and the sums back out with
/// the bias.
fn transpose(
    src: &[f32],
    src_stride: usize,
    rows: usize,
    cols: usize,
    add: Option<&[f32]>,
    dst: &mut [MaybeUninit<f32>],
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(cols <= src_stride && rows <= dst_stride);
    assert!(src.len() >= (rows - 1) * src_stride + cols && dst.len() >= (cols - 1) * dst_stride + rows);
    assert!(add.is_none_or(|a| a.len() >= rows));
    for r0 in (0..rows).step_by(8) {
        let rr = 8.min(rows - r0);
        for c0 in (0..cols).step_by(8) {
            let cc = 8.min(cols - c0);
            #[cfg(target_arch = "x86_64")]
            if rr == 8 && cc == 8 && is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has AVX; the tile is inside both buffers (asserted above).
                unsafe {
                    let to = (dst.as_mut_ptr() as *mut f32).add(c0 * dst_stride + r0);
                    tile8_avx(src.as_ptr().add(r0 * src_stride + c0), src_stride, to, dst_stride, add.map(|a| &a[r0..]))
                };
                continue;
            }
            for r in r0..r0 + rr {
                let plus = add.map_or(0.0, |a| a[r]);
                for c in c0..c0 + cc {
                    dst[c * dst_stride + r] = MaybeUninit::new(src[r * src_stride + c] + plus);
                }
            }
        }
    }
}

/// One 8 × 8 tile transposed: `dst[c][r] = src[r][c] (+ add[r])`, rows `src_stride` and
/// `dst_stride` floats apart.
///
/// # Safety
/// The CPU must have AVX; both tiles must lie inside their buffers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile8_avx(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize, add: Option<&[f32]>) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let mut c = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    if let Some(b) = add {
        let b = _mm256_loadu_ps(b.as_ptr());
        for v in c.iter_mut() {
            *v = _mm256_add_ps(*v, b);
        }
    }
    for (i, v) in c.iter().enumerate() {
        _mm256_storeu_ps(dst.add(i * dst_stride), *v);
    }
}

fn columns(isa: Isa, xt: &[f32], m: &SparseMatrix, pos: &mut [u32], limit: u32, yt: &mut [f32]) {
    match isa {
        // SAFETY: `linear_on` checked that the CPU has the path's features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { columns_avx512(xt, m, pos, limit, yt) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { columns_avx2(xt, m, pos, limit, yt) },
        _ => columns_with::<16, false>(xt, m, pos, limit, yt),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn columns_avx512(xt: &[f32], m: &SparseMatrix, pos: &mut [u32], limit: u32, yt: &mut [f32]) {
    columns_with::<128, true>(xt, m, pos, limit, yt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn columns_avx2(xt: &[f32], m: &SparseMatrix, pos: &mut [u32], limit: u32, yt: &mut [f32]) {
    columns_with::<64, true>(xt, m, pos, limit, yt)
}

/// For every channel `n`: `yt[n][..RB] += Σ w[n][k] · xt[k][..RB]` over its non-zeros from
/// `pos[n]` on with a column below `limit`; `pos[n]` moves past them. A channel's sums start
/// from zero at its first non-zero (`pos[n]` still at its row's start): `yt` is not cleared
/// between calls.
#[inline(always)]
fn columns_with<const RB: usize, const FMA: bool>(
    xt: &[f32],
    m: &SparseMatrix,
    pos: &mut [u32],
    limit: u32,
    yt: &mut [f32],
) {
    assert!(xt.len() >= m.inp * RB && yt.len() >= m.out * RB && pos.len() >= m.out);
    for (n, (p, ys)) in pos.iter_mut().zip(yt.chunks_exact_mut(RB)).enumerate() {
        let (start, end) = (m.row_ptr[n] as usize, m.row_ptr[n + 1] as usize);
        let mut i = *p as usize;
        if i == end || m.cols[i] >= limit {
            continue;
        }
        let mut acc = [0f32; RB];
        if i != start {
            acc.copy_from_slice(ys);
        }
        while i < end && m.cols[i] < limit {
            let (k, v) = (m.cols[i] as usize, m.vals[i]);
            // SAFETY: every column is below `inp` (from_dense), and `xt` holds `inp` rows of
            // RB values (asserted above).
            let xr = unsafe { &*(xt.as_ptr().add(k * RB) as *const [f32; RB]) };
            for j in 0..RB {
                acc[j] = if FMA { v.mul_add(xr[j], acc[j]) } else { acc[j] + v * xr[j] };
            }
            i += 1;
        }
        ys.copy_from_slice(&acc);
        *p = i as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sparse_random(rng: &mut impl Rng, n: usize, density: f64) -> Vec<f32> {
        (0..n).map(|_| if rng.gen_bool(density) { rng.gen_range(-1.0..1.0) } else { 0.0 }).collect()
    }

    #[test]
    fn every_path_equals_the_dense_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for &(rows, inp, out) in &[(1, 1, 1), (3, 7, 5), (17, 33, 15), (64, 64, 16), (130, 100, 37), (200, 384, 48)] {
            for density in [0.0, 0.05, 0.5, 1.0] {
                let x: Vec<f32> = (0..rows * inp).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let mut w = sparse_random(&mut rng, out * inp, density);
                // An all-zero channel and a fully dense one.
                w[..inp].fill(0.0);
                if out > 1 {
                    for v in &mut w[inp..2 * inp] {
                        *v = rng.gen_range(-1.0..1.0);
                    }
                }
                let b: Vec<f32> = (0..out).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let m = SparseMatrix::from_dense(&w, out, inp);
                let dense = crate::engine::cpu::linear(&x, rows, inp, &w, out, Some(&b));
                for isa in Isa::available() {
                    let got = linear_on(isa, &x, rows, &m, Some(&b));
                    for r in 0..rows {
                        for n in 0..out {
                            // 1e-5 of the sum of the products' magnitudes: relative error of a sum.
                            let mag: f32 =
                                b[n].abs() + (0..inp).map(|k| (x[r * inp + k] * w[n * inp + k]).abs()).sum::<f32>();
                            let (g, d) = (got[r * out + n], dense[r * out + n]);
                            assert!(
                                (g - d).abs() <= 1e-5 * mag + f32::MIN_POSITIVE,
                                "{} {rows}x{inp}x{out} density {density}: [{r}, {n}] {g} vs {d}",
                                isa.name()
                            );
                        }
                    }
                    // The zero channel is exactly its bias.
                    assert!((0..rows).all(|r| got[r * out] == b[0]));
                }
            }
        }
    }

    #[test]
    fn counts_non_zeros() {
        let m = SparseMatrix::from_dense(&[0.0, 1.0, 0.0, -2.0, 0.0, 0.0], 2, 3);
        assert_eq!((m.nnz(), m.out(), m.inp()), (2, 2, 3));
        assert!((m.density() - 1.0 / 3.0).abs() < 1e-12);
        let y = linear(&[1.0, 2.0, 3.0], 1, &m, None);
        assert_eq!(y, vec![2.0, -2.0]);
    }
}
