//! A linear map's weights in the representation that runs it: dense f32 ([`super::linear`]),
//! compressed sparse rows ([`super::sparse`]) or int8 ([`super::int8`]). The inference forward
//! holds every map as a [`Matrix`] and calls [`Matrix::apply`], whatever the representation.
//!
//! Dense or sparse is decided per matrix by measuring ([`Matrix::fastest`]): both products run
//! on a probe of random rows and the sparse form is kept only when it was clearly faster, so a
//! matrix never runs slower than dense beyond the noise of the probe. A matrix denser than
//! [`PROBE_DENSITY`] is kept dense without probing (the sparse kernel does a load per
//! multiply-add and cannot win there).

use super::int8::{self, Activations, QuantMatrix};
use super::sparse::{self, SparseMatrix};

/// Above this fraction of non-zeros a matrix stays dense without being measured.
pub const PROBE_DENSITY: f64 = 0.6;
/// Rows of the probe: enough blocks for every thread of the sparse kernel.
const PROBE_ROWS: usize = 512;
/// The sparse form is kept only if it takes at most this fraction of the dense time.
const MARGIN: f64 = 0.9;

/// How a model's linear maps are to be represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    /// Dense or compressed sparse rows, whichever runs faster ([`Matrix::fastest`]).
    #[default]
    Fastest,
    /// Every map dense f32.
    Dense,
    /// Every map int8, activations quantized per row when it runs.
    Int8Dynamic,
}

enum Repr {
    Dense(Vec<f32>),
    Sparse(SparseMatrix),
    Int8(QuantMatrix, Activations),
}

/// `[out, inp]` weights of one linear map.
pub struct Matrix {
    out: usize,
    inp: usize,
    repr: Repr,
}

impl Matrix {
    /// Dense f32 weights `[out, inp]`, row-major.
    pub fn dense(w: Vec<f32>, out: usize, inp: usize) -> Matrix {
        assert_eq!(w.len(), out * inp, "weights are not [out, inp]");
        Matrix { out, inp, repr: Repr::Dense(w) }
    }

    /// int8 weights (already quantized and packed) with how the activations are quantized.
    pub fn int8(q: QuantMatrix, act: Activations) -> Matrix {
        Matrix { out: q.out(), inp: q.inp(), repr: Repr::Int8(q, act) }
    }

    /// The f32 weights `[out, inp]` represented as `choice` says.
    pub fn choose(w: Vec<f32>, out: usize, inp: usize, choice: Choice) -> Matrix {
        match choice {
            Choice::Fastest => Matrix::fastest(w, out, inp),
            Choice::Dense => Matrix::dense(w, out, inp),
            Choice::Int8Dynamic => Matrix::int8(QuantMatrix::quantize(&w, out, inp), Activations::Dynamic),
        }
    }

    /// The f32 weights `[out, inp]` as dense or compressed rows, whichever runs faster here.
    pub fn fastest(w: Vec<f32>, out: usize, inp: usize) -> Matrix {
        let nnz = w.iter().filter(|v| **v != 0.0).count();
        if out * inp == 0 || nnz as f64 > PROBE_DENSITY * (out * inp) as f64 {
            return Matrix::dense(w, out, inp);
        }
        let candidate = Matrix { out, inp, repr: Repr::Sparse(SparseMatrix::from_dense(&w, out, inp)) };
        let dense = Matrix::dense(w, out, inp);
        let probe: Vec<f32> = (0..PROBE_ROWS * inp).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let time = |m: &Matrix| -> f64 {
            (0..3)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(m.apply(&probe, PROBE_ROWS, None));
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        // Dense first, then sparse, then dense again: both measured with warm caches.
        let d = time(&dense);
        let s = time(&candidate);
        let d = d.min(time(&dense));
        if s <= MARGIN * d {
            candidate
        } else {
            dense
        }
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    /// What runs this map: `dense`, `sparse` or `int8`.
    pub fn kind(&self) -> &'static str {
        match self.repr {
            Repr::Dense(_) => "dense",
            Repr::Sparse(_) => "sparse",
            Repr::Int8(..) => "int8",
        }
    }

    /// `x [rows, inp] · wᵀ (+ b)`, a new `[rows, out]` buffer.
    pub fn apply(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        match &self.repr {
            Repr::Dense(w) => super::linear(x, rows, self.inp, w, self.out, bias),
            Repr::Sparse(s) => sparse::linear(x, rows, s, bias),
            Repr::Int8(q, act) => int8::linear(x, rows, q, *act, bias),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_representation_computes_the_same_map() {
        let (rows, inp, out) = (40, 96, 64);
        let x: Vec<f32> = (0..rows * inp).map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0).collect();
        // 90% zeros: the sparse form is a candidate.
        let w: Vec<f32> =
            (0..out * inp).map(|i| if i % 10 == 3 { ((i % 13) as f32 - 6.0) / 10.0 } else { 0.0 }).collect();
        let b: Vec<f32> = (0..out).map(|i| i as f32 / 100.0).collect();
        let dense = Matrix::dense(w.clone(), out, inp).apply(&x, rows, Some(&b));
        let fastest = Matrix::fastest(w.clone(), out, inp);
        let sparse = Matrix { out, inp, repr: Repr::Sparse(SparseMatrix::from_dense(&w, out, inp)) };
        for m in [&fastest, &sparse] {
            let y = m.apply(&x, rows, Some(&b));
            assert!(y.iter().zip(&dense).all(|(a, d)| (a - d).abs() <= 1e-5 * (1.0 + d.abs())), "{}", m.kind());
        }
        let q = Matrix::int8(QuantMatrix::quantize(&w, out, inp), Activations::Dynamic);
        assert_eq!((q.kind(), q.out(), q.inp()), ("int8", out, inp));
        let y = q.apply(&x, rows, Some(&b));
        assert!(y.iter().zip(&dense).all(|(a, d)| (a - d).abs() < 0.05), "int8 within its quantization error");
        // A dense matrix is not probed.
        assert_eq!(Matrix::fastest(vec![1.0; out * inp], out, inp).kind(), "dense");
    }
}
