//! The linear-map kernels on MiniLM's shapes (4096 rows = batch 32 × 128 tokens), against this
//! CPU's physical limit: dense f32 (gemm), int8 on each instruction set the CPU has, sparse f32
//! at 50/80/90% zeros on each path; and the peak multiply-add rates measured with register-only
//! loops (no memory traffic) on every thread. Each figure is the median of RUNS timings.
//!
//!   cargo bench --bench kernels            # SECATEUR_BENCH_RUNS (default 7), RAYON_NUM_THREADS

use rand::{Rng, SeedableRng};
use secateur::engine::cpu::int8::{self, Activations, QuantMatrix};
use secateur::engine::cpu::matrix::Matrix;
use secateur::engine::cpu::sparse::{self, SparseMatrix};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Multiply-adds per second of `kernel(iters)` (which does `macs_per_iter` each iteration) run
/// on every thread of the pool at once.
fn peak(macs_per_iter: f64, kernel: fn(u64) -> u64) -> f64 {
    let iters = 20_000_000u64;
    let threads = rayon::current_num_threads();
    kernel(iters / 10);
    let t = Instant::now();
    let sink: u64 = rayon::broadcast(|_| kernel(iters)).into_iter().sum();
    std::hint::black_box(sink);
    threads as f64 * iters as f64 * macs_per_iter / t.elapsed().as_secs_f64()
}

#[cfg(target_arch = "x86_64")]
mod loops {
    use std::arch::x86_64::*;

    macro_rules! chains {
        ($acc:ident, $n:expr, $body:expr) => {
            for _ in 0..$n {
                for a in $acc.iter_mut() {
                    *a = $body(*a);
                }
            }
        };
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma256(n: u64) -> u64 {
        let (x, y) = (_mm256_set1_ps(0.999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        chains!(acc, n, |a| _mm256_fmadd_ps(a, x, y));
        acc.iter().map(|a| _mm256_cvtss_f32(*a) as u64).sum()
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn fma512(n: u64) -> u64 {
        let (x, y) = (_mm512_set1_ps(0.999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); 12];
        chains!(acc, n, |a| _mm512_fmadd_ps(a, x, y));
        acc.iter().map(|a| _mm512_reduce_add_ps(*a) as u64).sum()
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpbusd512(n: u64) -> u64 {
        let (x, y) = (_mm512_set1_epi8(1), _mm512_set1_epi8(1));
        let mut acc = [_mm512_setzero_si512(); 12];
        chains!(acc, n, |a| _mm512_dpbusd_epi32(a, x, y));
        acc.iter().map(|a| _mm512_reduce_add_epi32(*a) as u64).sum()
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn dpbusd256(n: u64) -> u64 {
        let (x, y) = (_mm256_set1_epi8(1), _mm256_set1_epi8(1));
        let mut acc = [_mm256_setzero_si256(); 12];
        chains!(acc, n, |a| _mm256_dpbusd_avx_epi32(a, x, y));
        acc.iter().map(|a| _mm256_extract_epi32::<0>(*a) as u64).sum()
    }

    /// The AVX2 int8 step of the kernel (sign, maddubs, madd, add) on six accumulators, each
    /// with its own weights; the activations change every iteration so that nothing is hoisted.
    #[target_feature(enable = "avx2")]
    unsafe fn maddubs256(n: u64) -> u64 {
        let (ones, step) = (_mm256_set1_epi16(1), _mm256_set1_epi8(1));
        let w = [1i8, -2, 3, -4, 5, -6].map(|v| _mm256_set1_epi8(v));
        let mut x = _mm256_set1_epi8(3);
        let mut acc = [_mm256_setzero_si256(); 6];
        for _ in 0..n {
            x = _mm256_add_epi8(x, step);
            let ax = _mm256_abs_epi8(x);
            for (a, w) in acc.iter_mut().zip(&w) {
                let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(*w, x));
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(p, ones));
            }
        }
        acc.iter().map(|a| _mm256_extract_epi32::<0>(*a) as u64).sum()
    }

    /// A peak loop: its name, multiply-adds per iteration, and the loop.
    pub type Loop = (&'static str, f64, fn(u64) -> u64);

    /// Every loop this CPU can run.
    pub fn available() -> Vec<Loop> {
        let mut v: Vec<Loop> = Vec::new();
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(("f32 fma avx2", 12.0 * 8.0, |n| unsafe { fma256(n) }));
            v.push(("int8 maddubs avx2", 6.0 * 32.0, |n| unsafe { maddubs256(n) }));
        }
        if is_x86_feature_detected!("avx512f") {
            v.push(("f32 fma avx512", 12.0 * 16.0, |n| unsafe { fma512(n) }));
        }
        if is_x86_feature_detected!("avx512vnni") {
            v.push(("int8 vpdpbusd avx512", 12.0 * 64.0, |n| unsafe { dpbusd512(n) }));
        }
        if is_x86_feature_detected!("avxvnni") {
            v.push(("int8 vpdpbusd avx-vnni", 12.0 * 32.0, |n| unsafe { dpbusd256(n) }));
        }
        v
    }
}

fn main() {
    // As the secateur binary runs: large buffers kept by the allocator instead of fresh pages.
    secateur::app::tune_allocator();
    let runs: usize = std::env::var("SECATEUR_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    println!("threads={}", rayon::current_num_threads());
    #[cfg(target_arch = "x86_64")]
    for (name, macs, f) in loops::available() {
        println!("peak\t{name}\t{:.1} GMAC/s", peak(macs, f) / 1e9);
    }
    let rows = 4096;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for (label, out, inp) in
        [("qkv", 1152, 384), ("attention_output", 384, 384), ("ffn_in", 1536, 384), ("ffn_out", 384, 1536)]
    {
        let x: Vec<f32> = (0..rows * inp).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..out * inp).map(|_| rng.gen_range(-0.1..0.1)).collect();
        let macs = (rows * out * inp) as f64;
        let report = |kernel: &str, s: f64, useful: f64| {
            println!(
                "{label} {rows}x{inp}->{out}\t{kernel}\t{:.2} ms\t{:.1} GMAC/s (of the dense product)\t{:.1} GMAC/s useful",
                s * 1e3,
                macs / s / 1e9,
                useful / s / 1e9
            );
        };
        let dense = Matrix::dense(w.clone(), out, inp);
        report("dense f32 gemm", time(runs, || drop(dense.apply(&x, rows, None))), macs);
        let q = QuantMatrix::quantize(&w, out, inp);
        for isa in int8::Isa::available() {
            let s = time(runs, || drop(int8::linear_on(isa, &x, rows, &q, Activations::Dynamic, None)));
            report(&format!("int8 dynamic {}", isa.name()), s, macs);
        }
        for sparsity in [0.5, 0.8, 0.9, 0.99, 1.0] {
            let ws: Vec<f32> = w.iter().map(|v| if rng.gen_bool(sparsity) { 0.0 } else { *v }).collect();
            let m = SparseMatrix::from_dense(&ws, out, inp);
            for isa in sparse::Isa::available() {
                let s = time(runs, || drop(sparse::linear_on(isa, &x, rows, &m, None)));
                report(&format!("sparse {:.0}% {}", sparsity * 100.0, isa.name()), s, (rows * m.nnz()) as f64);
            }
        }
    }
}
