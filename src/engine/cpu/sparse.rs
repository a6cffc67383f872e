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

/// Output channels computed between two write-backs.
const NB: usize = 16;

/// `x [rows, inp] · wᵀ (+ b)` on the fastest path of this CPU.
pub fn linear(x: &[f32], rows: usize, m: &SparseMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    linear_on(Isa::detect(), x, rows, m, bias)
}

/// [`linear`] on a chosen path (`isa` must be one of [`Isa::available`]).
pub fn linear_on(isa: Isa, x: &[f32], rows: usize, m: &SparseMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    assert!(Isa::available().contains(&isa), "{} is not available on this CPU", isa.name());
    assert_eq!(x.len(), rows * m.inp, "activations are not [rows, inp]");
    if let Some(b) = bias {
        assert_eq!(b.len(), m.out, "one bias per output channel");
    }
    let (out, inp) = (m.out, m.inp);
    let mut y = vec![0f32; rows * out];
    if rows == 0 || out == 0 {
        return y;
    }
    let rb = isa.rows();
    y.par_chunks_mut(rb * out).enumerate().for_each(|(c, ys)| {
        let r0 = c * rb;
        let nr = ys.len() / out;
        let mut xt = vec![0f32; inp * rb];
        for i in 0..nr {
            for (k, v) in x[(r0 + i) * inp..(r0 + i + 1) * inp].iter().enumerate() {
                xt[k * rb + i] = *v;
            }
        }
        let mut yt = vec![0f32; NB * rb];
        for n0 in (0..out).step_by(NB) {
            let nn = NB.min(out - n0);
            channels(isa, &xt, m, n0, nn, &mut yt);
            for i in 0..nr {
                let yr = &mut ys[i * out + n0..i * out + n0 + nn];
                for (j, v) in yr.iter_mut().enumerate() {
                    *v = yt[j * rb + i] + bias.map_or(0.0, |b| b[n0 + j]);
                }
            }
        }
    });
    y
}

fn channels(isa: Isa, xt: &[f32], m: &SparseMatrix, n0: usize, nn: usize, yt: &mut [f32]) {
    match isa {
        // SAFETY: `linear_on` checked that the CPU has the path's features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { channels_avx512(xt, m, n0, nn, yt) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { channels_avx2(xt, m, n0, nn, yt) },
        _ => channels_with::<16, false>(xt, m, n0, nn, yt),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn channels_avx512(xt: &[f32], m: &SparseMatrix, n0: usize, nn: usize, yt: &mut [f32]) {
    channels_with::<128, true>(xt, m, n0, nn, yt)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn channels_avx2(xt: &[f32], m: &SparseMatrix, n0: usize, nn: usize, yt: &mut [f32]) {
    channels_with::<64, true>(xt, m, n0, nn, yt)
}

/// `yt[j][..RB] = Σ w[n0 + j][k] · xt[k][..RB]` over channel `n0 + j`'s non-zeros.
#[inline(always)]
fn channels_with<const RB: usize, const FMA: bool>(xt: &[f32], m: &SparseMatrix, n0: usize, nn: usize, yt: &mut [f32]) {
    assert!(xt.len() >= m.inp * RB && yt.len() >= nn * RB);
    for j in 0..nn {
        let (a, b) = (m.row_ptr[n0 + j] as usize, m.row_ptr[n0 + j + 1] as usize);
        let mut acc = [0f32; RB];
        for (&k, &v) in m.cols[a..b].iter().zip(&m.vals[a..b]) {
            // SAFETY: every column is below `inp` (from_dense), and `xt` holds `inp` rows of
            // RB values (asserted above).
            let xr = unsafe { &*(xt.as_ptr().add(k as usize * RB) as *const [f32; RB]) };
            for i in 0..RB {
                acc[i] = if FMA { v.mul_add(xr[i], acc[i]) } else { acc[i] + v * xr[i] };
            }
        }
        yt[j * RB..(j + 1) * RB].copy_from_slice(&acc);
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
