//! int8 linear maps: `y = x · wᵀ (+ b)` with the weights quantized symmetrically per output
//! channel (`w ≈ q · scale[n]`, `q` in −127..=127) and the activations quantized symmetrically per
//! row (token) when the map runs (dynamic quantization), or with a fixed scale calibrated before
//! (static). The products are summed exactly in i32, so every instruction set gives the same
//! integers; [`dequantize`] turns them into floats in one place, so every path gives the same
//! bits as the scalar reference in the tests.
//!
//! Paths, chosen at run time ([`Isa::detect`]):
//! - AVX-512 VNNI (`vpdpbusd` on 512 bits: 64 multiply-adds an instruction): activations stored
//!   as unsigned bytes `q + 128` and the `128 · Σ q_w` that adds taken off per output channel;
//! - AVX-VNNI (the same instruction on 256 bits, Intel's hybrid cores and Zen 5);
//! - AVX2: `vpmaddubsw` on |x| and w with x's sign moved onto w (no 16-bit saturation: two
//!   products are at most 2 · 127 · 127 < 2¹⁵), `vpmaddwd` to 32 bits;
//! - portable scalar code.
//!
//! Weights are packed once into panels of [`NR`] output channels: for each group of 4 inputs,
//! the 4 bytes of every channel of the panel side by side, so one vector load serves 16 (512-bit)
//! or 8 (256-bit) channels and one broadcast of 4 activation bytes multiplies them all.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output channels per packed panel.
pub const NR: usize = 32;
/// Rows per micro-tile.
const MR: usize = 8;
/// Rows per parallel task (a multiple of [`MR`]).
const CHUNK: usize = 64;

/// The instruction set an int8 product runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512Vnni,
    AvxVnni,
    Avx2,
    Portable,
}

impl Isa {
    /// The fastest path this CPU has.
    pub fn detect() -> Isa {
        Isa::available().into_iter().next().unwrap_or(Isa::Portable)
    }

    /// Every path this CPU can run, fastest first (the portable one always).
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                v.push(Isa::Avx512Vnni);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni") {
                v.push(Isa::AvxVnni);
            }
            if is_x86_feature_detected!("avx2") {
                v.push(Isa::Avx2);
            }
        }
        v.push(Isa::Portable);
        v
    }

    /// Whether this path reads activations as unsigned bytes `q + 128`.
    fn unsigned(self) -> bool {
        matches!(self, Isa::Avx512Vnni | Isa::AvxVnni)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512vnni",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// Symmetric int8 of `v` with the scale `amax / 127` (`amax` the largest magnitude), as
/// [`quantize_with_scale`]. A row of zeros gets the scale 1 and zeros.
pub fn quantize_symmetric(v: &[f32], q: &mut [i8]) -> f32 {
    let amax = amax(v);
    quantize_with_scale(v, if amax > 0.0 { amax / 127.0 } else { 1.0 }, q)
}

/// The largest magnitude in `v` (0 for an empty slice).
fn amax(v: &[f32]) -> f32 {
    let scalar = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(v: &[f32], tail: impl Fn(&[f32]) -> f32) -> f32 {
            use std::arch::x86_64::*;
            let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
            let mut m = _mm256_setzero_ps();
            let mut chunks = v.chunks_exact(8);
            for c in chunks.by_ref() {
                m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(c.as_ptr()), abs));
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            lanes.iter().fold(tail(chunks.remainder()), |a, b| a.max(*b))
        }
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2(v, scalar) };
    }
    scalar(v)
}

/// Symmetric int8 of `v` with a given scale: `q = round(v / scale)` (ties to even, as PyTorch
/// rounds) clamped to −127..=127 (static quantization uses it with a calibrated scale).
/// Returns `scale`.
pub fn quantize_with_scale(v: &[f32], scale: f32, q: &mut [i8]) -> f32 {
    fn scalar(v: &[f32], scale: f32, q: &mut [i8]) {
        for (o, x) in q.iter_mut().zip(v) {
            *o = (x / scale).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        /// The same operations 8 at a time: divide, round to nearest even, clamp, narrow.
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(v: &[f32], scale: f32, q: &mut [i8]) {
            use std::arch::x86_64::*;
            let n = v.len().min(q.len());
            let (s, lo, hi) = (_mm256_set1_ps(scale), _mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
            let mut i = 0;
            while i + 8 <= n {
                let x = _mm256_div_ps(_mm256_loadu_ps(v.as_ptr().add(i)), s);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
                let d = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
                let d16 = _mm_packs_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256::<1>(d));
                _mm_storel_epi64(q.as_mut_ptr().add(i) as *mut __m128i, _mm_packs_epi16(d16, d16));
                i += 8;
            }
            scalar(&v[i..n], scale, &mut q[i..n]);
        }
        // SAFETY: the CPU has AVX2.
        unsafe { avx2(v, scale, q) };
        return scale;
    }
    scalar(v, scale, q);
    scale
}

/// `w [out, inp]` (row-major) quantized symmetrically per output channel: the int8 weights
/// (row-major) and one scale per channel ([`quantize_symmetric`] on each row).
pub fn quantize_per_channel(w: &[f32], out: usize, inp: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), out * inp, "weights are not [out, inp]");
    let mut q = vec![0i8; out * inp];
    let scales = if inp == 0 {
        vec![1.0; out]
    } else {
        w.chunks_exact(inp).zip(q.chunks_exact_mut(inp)).map(|(r, qr)| quantize_symmetric(r, qr)).collect()
    };
    (q, scales)
}

/// The float of an exact i32 sum of int8 products: `acc · (x_scale · w_scale) + bias`. Every
/// path and the reference call this, so they agree bit for bit.
#[inline(always)]
pub fn dequantize(acc: i32, x_scale: f32, w_scale: f32, bias: f32) -> f32 {
    acc as f32 * (x_scale * w_scale) + bias
}

/// A `[out, inp]` weight matrix quantized per output channel and packed for the kernels.
#[derive(Clone)]
pub struct QuantMatrix {
    out: usize,
    inp: usize,
    /// `inp` rounded up to a multiple of 4.
    kp: usize,
    /// `out.div_ceil(NR)` panels of `kp / 4` groups of `NR × 4` bytes (zeros past `out`/`inp`).
    panels: Vec<i8>,
    scales: Vec<f32>,
    /// `128 · Σ_k q[n][k]` per channel of the panels: what the unsigned activations add.
    offsets: Vec<i32>,
}

impl QuantMatrix {
    /// Quantizes `w [out, inp]` (row-major f32) symmetrically per output channel.
    pub fn quantize(w: &[f32], out: usize, inp: usize) -> QuantMatrix {
        let (q, scales) = quantize_per_channel(w, out, inp);
        QuantMatrix::from_quantized(&q, scales, out, inp)
    }

    /// Packs already quantized weights `q [out, inp]` with their per-channel scales.
    pub fn from_quantized(q: &[i8], scales: Vec<f32>, out: usize, inp: usize) -> QuantMatrix {
        assert_eq!(q.len(), out * inp, "weights are not [out, inp]");
        assert_eq!(scales.len(), out, "one scale per output channel");
        let kp = inp.div_ceil(4) * 4;
        let np = out.div_ceil(NR);
        let mut panels = vec![0i8; np * kp * NR];
        let mut offsets = vec![0i32; np * NR];
        for n in 0..out {
            let (p, j) = (n / NR, n % NR);
            let row = &q[n * inp..(n + 1) * inp];
            for (k, &v) in row.iter().enumerate() {
                panels[p * kp * NR + ((k / 4) * NR + j) * 4 + k % 4] = v;
            }
            offsets[n] = 128 * row.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
        QuantMatrix { out, inp, kp, panels, scales, offsets }
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inp(&self) -> usize {
        self.inp
    }

    /// The per-output-channel scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The quantized weights `[out, inp]`, row-major.
    pub fn weights(&self) -> Vec<i8> {
        let mut q = vec![0i8; self.out * self.inp];
        for n in 0..self.out {
            let (p, j) = (n / NR, n % NR);
            for k in 0..self.inp {
                q[n * self.inp + k] = self.panels[p * self.kp * NR + ((k / 4) * NR + j) * 4 + k % 4];
            }
        }
        q
    }

    /// Bytes the packed weights and scales take in memory.
    pub fn bytes(&self) -> usize {
        self.panels.len() + 4 * (self.scales.len() + self.offsets.len())
    }
}

/// How the activations are quantized: per row at run time, or with one calibrated scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activations {
    Dynamic,
    Static(f32),
}

/// `x [rows, inp] · wᵀ (+ b)` in int8 on the fastest path of this CPU.
pub fn linear(x: &[f32], rows: usize, m: &QuantMatrix, act: Activations, bias: Option<&[f32]>) -> Vec<f32> {
    linear_on(Isa::detect(), x, rows, m, act, bias)
}

/// [`linear`] on a chosen path (`isa` must be one of [`Isa::available`]).
pub fn linear_on(
    isa: Isa,
    x: &[f32],
    rows: usize,
    m: &QuantMatrix,
    act: Activations,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(Isa::available().contains(&isa), "{} is not available on this CPU", isa.name());
    assert_eq!(x.len(), rows * m.inp, "activations are not [rows, inp]");
    if let Some(b) = bias {
        assert_eq!(b.len(), m.out, "one bias per output channel");
    }
    let out = m.out;
    if rows == 0 || out == 0 {
        return vec![0f32; rows * out];
    }
    let kp = m.kp;
    let np = out.div_ceil(NR);
    // Every element is written once below (`dequantize_row`): no zeroing pass over the output.
    let mut y: Vec<f32> = Vec::with_capacity(rows * out);
    y.spare_capacity_mut()[..rows * out].par_chunks_mut(CHUNK * out).enumerate().for_each(|(c, ys)| {
        let r0 = c * CHUNK;
        let nrows = ys.len() / out;
        let tiles = nrows.div_ceil(MR);
        // This task's rows quantized, padded to whole tiles and to `kp` columns with zeros.
        let mut xq = vec![0i8; tiles * MR * kp];
        let mut sx = vec![1f32; tiles * MR];
        for i in 0..nrows {
            let src = &x[(r0 + i) * m.inp..(r0 + i + 1) * m.inp];
            let dst = &mut xq[i * kp..i * kp + m.inp];
            sx[i] = match act {
                Activations::Dynamic => quantize_symmetric(src, dst),
                Activations::Static(s) => quantize_with_scale(src, s, dst),
            };
        }
        if isa.unsigned() {
            // q + 128 as an unsigned byte is q with its top bit flipped; padding's 128 meets
            // zero weights.
            for v in xq.iter_mut() {
                *v ^= i8::MIN;
            }
        }
        let zeros = [0f32; NR];
        let no_offsets = [0i32; NR];
        let mut acc = [[0i32; NR]; MR];
        for p in 0..np {
            let panel = &m.panels[p * kp * NR..(p + 1) * kp * NR];
            let n0 = p * NR;
            let nn = NR.min(out - n0);
            let offsets = if isa.unsigned() { &m.offsets[n0..n0 + nn] } else { &no_offsets[..nn] };
            let b = bias.map_or(&zeros[..nn], |b| &b[n0..n0 + nn]);
            let sw = &m.scales[n0..n0 + nn];
            for t in 0..tiles {
                let xs = &xq[t * MR * kp..(t + 1) * MR * kp];
                tile(isa, xs, kp, panel, &mut acc);
                for (i, a) in acc.iter().enumerate().take(nrows.saturating_sub(t * MR).min(MR)) {
                    let r = t * MR + i;
                    dequantize_row(&a[..nn], offsets, sx[r], sw, b, &mut ys[r * out + n0..r * out + n0 + nn]);
                }
            }
        }
    });
    // SAFETY: every row of every chunk was written, panel by panel, in full.
    unsafe { y.set_len(rows * out) };
    y
}

/// [`dequantize`] over one row of a tile: `y[j] = (acc[j] − offsets[j]) · (sx · sw[j]) + b[j]`,
/// vectorised (the same operations in the same order as the scalar function: same bits).
fn dequantize_row(acc: &[i32], offsets: &[i32], sx: f32, sw: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
    #[inline(always)]
    fn imp(acc: &[i32], offsets: &[i32], sx: f32, sw: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
        for ((((y, a), o), w), b) in y.iter_mut().zip(acc).zip(offsets).zip(sw).zip(b) {
            *y = MaybeUninit::new(dequantize(a - o, sx, *w, *b));
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(acc: &[i32], offsets: &[i32], sx: f32, sw: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
            imp(acc, offsets, sx, sw, b, y)
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(acc, offsets, sx, sw, b, y) };
        }
    }
    imp(acc, offsets, sx, sw, b, y)
}

/// `acc[i][j] = Σ_k xs[i][k] · w[j][k]` for the [`MR`] rows of `xs` (`[MR, kp]`) and the [`NR`]
/// channels of one panel.
fn tile(isa: Isa, xs: &[i8], kp: usize, panel: &[i8], acc: &mut [[i32; NR]; MR]) {
    debug_assert_eq!(xs.len(), MR * kp);
    debug_assert_eq!(panel.len(), kp * NR);
    match isa {
        // SAFETY (each arm): `linear_on` checked that the CPU has the path's features; the
        // slices have the lengths the kernels read (asserted above).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { x86::tile_avx512vnni(xs, kp, panel, acc) },
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => unsafe { x86::tile_avxvnni(xs, kp, panel, acc) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::tile_avx2(xs, kp, panel, acc) },
        _ => tile_portable(xs, kp, panel, acc),
    }
}

fn tile_portable(xs: &[i8], kp: usize, panel: &[i8], acc: &mut [[i32; NR]; MR]) {
    for (i, a) in acc.iter_mut().enumerate() {
        let x = &xs[i * kp..(i + 1) * kp];
        for (j, s) in a.iter_mut().enumerate() {
            let mut sum = 0i32;
            for g in 0..kp / 4 {
                let w = &panel[(g * NR + j) * 4..(g * NR + j) * 4 + 4];
                for t in 0..4 {
                    sum += i32::from(x[g * 4 + t]) * i32::from(w[t]);
                }
            }
            *s = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// 4 activation bytes of row `i`, group `g`, broadcast as one i32.
    #[inline(always)]
    unsafe fn four(xs: &[i8], kp: usize, i: usize, g: usize) -> i32 {
        (xs.as_ptr().add(i * kp + g * 4) as *const i32).read_unaligned()
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_avx512vnni(xs: &[i8], kp: usize, panel: &[i8], acc: &mut [[i32; NR]; MR]) {
        let mut a = [_mm512_setzero_si512(); 2 * MR];
        for g in 0..kp / 4 {
            let wp = panel.as_ptr().add(g * NR * 4);
            let w0 = _mm512_loadu_si512(wp as *const __m512i);
            let w1 = _mm512_loadu_si512(wp.add(64) as *const __m512i);
            for i in 0..MR {
                let xb = _mm512_set1_epi32(four(xs, kp, i, g));
                a[2 * i] = _mm512_dpbusd_epi32(a[2 * i], xb, w0);
                a[2 * i + 1] = _mm512_dpbusd_epi32(a[2 * i + 1], xb, w1);
            }
        }
        for (i, row) in acc.iter_mut().enumerate() {
            _mm512_storeu_si512(row.as_mut_ptr() as *mut __m512i, a[2 * i]);
            _mm512_storeu_si512(row.as_mut_ptr().add(16) as *mut __m512i, a[2 * i + 1]);
        }
    }

    /// The 256-bit paths work on 4 rows × 16 channels at a time (8 accumulators), four passes
    /// per tile.
    #[inline(always)]
    unsafe fn tile_256(
        xs: &[i8],
        kp: usize,
        panel: &[i8],
        acc: &mut [[i32; NR]; MR],
        step: impl Fn(__m256i, i32, __m256i) -> __m256i,
    ) {
        for rh in 0..MR / 4 {
            for ch in 0..NR / 16 {
                let mut a = [_mm256_setzero_si256(); 8];
                for g in 0..kp / 4 {
                    let wp = panel.as_ptr().add(g * NR * 4 + ch * 64);
                    let w0 = _mm256_loadu_si256(wp as *const __m256i);
                    let w1 = _mm256_loadu_si256(wp.add(32) as *const __m256i);
                    for i in 0..4 {
                        let x = four(xs, kp, rh * 4 + i, g);
                        a[2 * i] = step(a[2 * i], x, w0);
                        a[2 * i + 1] = step(a[2 * i + 1], x, w1);
                    }
                }
                for i in 0..4 {
                    let row = acc[rh * 4 + i].as_mut_ptr().add(ch * 16);
                    _mm256_storeu_si256(row as *mut __m256i, a[2 * i]);
                    _mm256_storeu_si256(row.add(8) as *mut __m256i, a[2 * i + 1]);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn tile_avxvnni(xs: &[i8], kp: usize, panel: &[i8], acc: &mut [[i32; NR]; MR]) {
        tile_256(xs, kp, panel, acc, |a, x, w| _mm256_dpbusd_avx_epi32(a, _mm256_set1_epi32(x), w))
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2(xs: &[i8], kp: usize, panel: &[i8], acc: &mut [[i32; NR]; MR]) {
        let ones = _mm256_set1_epi16(1);
        tile_256(xs, kp, panel, acc, |a, x, w| {
            let xb = _mm256_set1_epi32(x);
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(xb), _mm256_sign_epi8(w, xb));
            _mm256_add_epi32(a, _mm256_madd_epi16(p, ones))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The definition: quantize the weights and each row, sum the integer products, dequantize.
    fn reference(
        x: &[f32],
        rows: usize,
        w: &[f32],
        out: usize,
        inp: usize,
        act: Activations,
        b: Option<&[f32]>,
    ) -> Vec<f32> {
        let m = QuantMatrix::quantize(w, out, inp);
        let q = m.weights();
        let mut y = vec![0f32; rows * out];
        let mut xq = vec![0i8; inp];
        for r in 0..rows {
            let xr = &x[r * inp..(r + 1) * inp];
            let sx = match act {
                Activations::Dynamic => quantize_symmetric(xr, &mut xq),
                Activations::Static(s) => quantize_with_scale(xr, s, &mut xq),
            };
            for n in 0..out {
                let acc: i32 = (0..inp).map(|k| i32::from(xq[k]) * i32::from(q[n * inp + k])).sum();
                y[r * out + n] = dequantize(acc, sx, m.scales()[n], b.map_or(0.0, |b| b[n]));
            }
        }
        y
    }

    fn random(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
    }

    #[test]
    fn every_path_equals_the_reference_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Tiny, not multiples of the vector widths or of 4, one panel exactly, several.
        for &(rows, inp, out) in
            &[(1, 1, 1), (3, 5, 7), (8, 4, 32), (9, 33, 33), (70, 130, 65), (64, 384, 96), (130, 17, 100)]
        {
            let x = random(&mut rng, rows * inp, 3.0);
            let w = random(&mut rng, out * inp, 0.1);
            let b = random(&mut rng, out, 1.0);
            for act in [Activations::Dynamic, Activations::Static(0.02)] {
                for bias in [None, Some(&b[..])] {
                    let want = reference(&x, rows, &w, out, inp, act, bias);
                    let m = QuantMatrix::quantize(&w, out, inp);
                    for isa in Isa::available() {
                        let got = linear_on(isa, &x, rows, &m, act, bias);
                        let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} differs from the reference on {rows}x{inp}x{out} {act:?}", isa.name());
                    }
                }
            }
        }
    }

    #[test]
    fn adversarial_values_zero_rows_and_saturation() {
        let (rows, inp, out) = (12, 64, 40);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut x = random(&mut rng, rows * inp, 1.0);
        // A zero row, a row at ±amax everywhere (every product ±127·127), a huge outlier.
        x[inp..2 * inp].fill(0.0);
        for (k, v) in x[2 * inp..3 * inp].iter_mut().enumerate() {
            *v = if k % 2 == 0 { 5.0 } else { -5.0 };
        }
        x[3 * inp] = 1e6;
        let mut w = random(&mut rng, out * inp, 1.0);
        w[..inp].fill(0.0);
        for (k, v) in w[inp..2 * inp].iter_mut().enumerate() {
            *v = if k % 2 == 0 { -2.0 } else { 2.0 };
        }
        let want = reference(&x, rows, &w, out, inp, Activations::Dynamic, None);
        let m = QuantMatrix::quantize(&w, out, inp);
        for isa in Isa::available() {
            let got = linear_on(isa, &x, rows, &m, Activations::Dynamic, None);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{}", isa.name());
        }
        // Row 2 · channel 1: 64 products of (−127)·(−127)... exactly −64·127·127 · scales.
        assert_eq!(want[2 * out + 1], -(64.0 * 127.0 * 127.0) * ((5.0 / 127.0) * (2.0 / 127.0)));
        assert!(want[out..2 * out].iter().all(|v| *v == 0.0));
        assert!(want.iter().step_by(out).all(|v| *v == 0.0));
    }

    #[test]
    fn within_the_quantization_error_of_fp32() {
        let (rows, inp, out) = (20, 96, 48);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let x = random(&mut rng, rows * inp, 2.0);
        let w = random(&mut rng, out * inp, 0.2);
        let m = QuantMatrix::quantize(&w, out, inp);
        let got = linear(&x, rows, &m, Activations::Dynamic, None);
        for r in 0..rows {
            let xr = &x[r * inp..(r + 1) * inp];
            let sx = xr.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            for n in 0..out {
                let wr = &w[n * inp..(n + 1) * inp];
                let sw = m.scales()[n];
                let exact: f64 = xr.iter().zip(wr).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                // |x·w − x̂·ŵ| ≤ Σ |x||ŵ − w| + |ŵ||x̂ − x| ≤ Σ (|x| sw/2 + (|w| + sw/2) sx/2).
                let bound: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(a, b)| f64::from(a.abs() * sw / 2.0 + (b.abs() + sw / 2.0) * sx / 2.0))
                    .sum();
                let err = (f64::from(got[r * out + n]) - exact).abs();
                assert!(err <= bound * 1.001 + 1e-6, "row {r} channel {n}: error {err} over the bound {bound}");
            }
        }
    }

    #[test]
    fn the_vectorised_quantizer_follows_the_definition() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let scale = 0.25f32;
        for n in 0..40 {
            // Random values, exact ties (k + 0.5 steps), values past the clamp, zeros.
            let v: Vec<f32> = (0..n)
                .map(|i| match i % 4 {
                    0 => rng.gen_range(-40.0..40.0),
                    1 => (rng.gen_range(-60i32..60) as f32 + 0.5) * scale,
                    2 => rng.gen_range(-1e4..1e4),
                    _ => 0.0,
                })
                .collect();
            let mut q = vec![0i8; n];
            quantize_with_scale(&v, scale, &mut q);
            let want: Vec<i8> = v.iter().map(|x| (x / scale).round_ties_even().clamp(-127.0, 127.0) as i8).collect();
            assert_eq!(q, want, "length {n}");
            let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let s = quantize_symmetric(&v, &mut q);
            assert_eq!(s, if amax > 0.0 { amax / 127.0 } else { 1.0 }, "length {n}");
        }
    }

    #[test]
    fn quantizes_per_channel_symmetrically_and_unpacks() {
        let w = [0.2, -1.0, 0.3, 0.0, 0.0, 0.0, 3.0, 1.0, -0.75];
        let m = QuantMatrix::quantize(&w, 3, 3);
        assert_eq!(m.scales(), &[1.0 / 127.0, 1.0, 3.0 / 127.0]);
        // 0.2·127 = 25.4 → 25; 0.3·127 = 38.1 → 38; 127/3 = 42.3 → 42; −0.75·127/3 = −31.75 → −32.
        assert_eq!(m.weights(), vec![25, -127, 38, 0, 0, 0, 127, 42, -32]);
        let mut q = [0i8; 4];
        assert_eq!(quantize_with_scale(&[1000.0, -1000.0, 0.5, 1.5], 1.0, &mut q), 1.0);
        // Ties go to even: 0.5 → 0, 1.5 → 2.
        assert_eq!(q, [127, -127, 0, 2]);
    }
}
