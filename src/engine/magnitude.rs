//! Unstructured magnitude pruning, global or local, working in place on a safetensors file's
//! bytes: the header is untouched (same names, dtypes, shapes), pruned weights become zero in
//! their own dtype, and every other byte stays as it was.

use super::arch::{is_encoder_linear_weight, Family};
use super::st::{Dtype, Header, TensorInfo};
use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One threshold over all prunable tensors.
    Global,
    /// The requested sparsity in every prunable tensor.
    Local,
}

/// Which tensors are pruned: with no `include` pattern, the encoder's linear weights; with
/// `include`, every floating-point tensor whose name matches one of them. `exclude` removes
/// matches from either set. Patterns are searched anywhere in the name (anchor them with
/// `^`/`$` when needed).
pub fn select_targets(family: Family, header: &Header, include: &[Regex], exclude: &[Regex]) -> Vec<String> {
    header
        .tensors
        .iter()
        .filter(|(_, t)| t.dtype.is_float())
        .map(|(n, _)| n)
        .filter(|n| {
            if include.is_empty() {
                is_encoder_linear_weight(family, n)
            } else {
                include.iter().any(|r| r.is_match(n))
            }
        })
        .filter(|n| !exclude.iter().any(|r| r.is_match(n)))
        .cloned()
        .collect()
}

fn check_prunable_dtype(name: &str, d: Dtype) -> Result<(), String> {
    match d {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64 => Ok(()),
        _ => Err(format!("tensor {name}: dtype {} cannot be pruned (supported: F32, F16, BF16, F64)", d.name())),
    }
}

/// The targets' tensor entries, checked to be of a prunable dtype.
fn resolve_targets<'h>(header: &'h Header, targets: &[String]) -> Result<Vec<&'h TensorInfo>, String> {
    targets
        .iter()
        .map(|n| {
            let t = header.tensors.get(n).ok_or_else(|| format!("no tensor named {n}"))?;
            check_prunable_dtype(n, t.dtype)?;
            Ok(t)
        })
        .collect()
}

/// |w| of every element, as f32 (ordering is all that matters).
pub fn magnitudes(data: &[u8], dtype: Dtype) -> Vec<f32> {
    let mut v = super::st::floats(data, dtype).expect("checked by check_prunable_dtype");
    v.iter_mut().for_each(|x| *x = x.abs());
    v
}

/// Number of non-zero elements (±0 both count as zero).
pub fn count_nonzeros(data: &[u8], dtype: Dtype) -> u64 {
    let s = dtype.size() as usize;
    match dtype {
        Dtype::F32 => {
            data.chunks_exact(4).filter(|c| f32::from_le_bytes((*c).try_into().unwrap()) != 0.0).count() as u64
        }
        Dtype::F64 => {
            data.chunks_exact(8).filter(|c| f64::from_le_bytes((*c).try_into().unwrap()) != 0.0).count() as u64
        }
        // f16/bf16: zero iff all bits but the sign are zero.
        Dtype::F16 | Dtype::BF16 => {
            data.chunks_exact(2).filter(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7fff) != 0).count() as u64
        }
        _ => data.chunks_exact(s).filter(|c| c.iter().any(|&b| b != 0)).count() as u64,
    }
}

/// The k-th smallest value (0-based) of `v` under total order; `v` is reordered.
fn kth_smallest(v: &mut [f32], k: usize) -> f32 {
    *v.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
}

/// Zero the elements of `data` whose magnitude is below `threshold`, then up to `ties` of those
/// equal to it (in element order). Returns how many ties were used.
fn apply(data: &mut [u8], dtype: Dtype, mags: &[f32], threshold: f32, mut ties: u64) -> u64 {
    let s = dtype.size() as usize;
    let start = ties;
    for (i, m) in mags.iter().enumerate() {
        let prune = match m.total_cmp(&threshold) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal if ties > 0 => {
                ties -= 1;
                true
            }
            _ => false,
        };
        if prune {
            data[i * s..(i + 1) * s].fill(0);
        }
    }
    start - ties
}

fn count_below(mags: &[f32], t: f32) -> u64 {
    mags.iter().filter(|m| m.total_cmp(&t).is_lt()).count() as u64
}

fn tensor_bytes<'a>(file: &'a mut [u8], header: &Header, t: &TensorInfo) -> &'a mut [u8] {
    let a = (header.data_start + t.begin) as usize;
    let b = (header.data_start + t.end) as usize;
    &mut file[a..b]
}

/// Prune `targets` in place. Exactly `round(sparsity × n)` elements are zeroed: over all
/// targets together (global) or in each target (local); elements that are already zero are
/// the smallest and so count towards it; among equal magnitudes the earlier (in target order,
/// then element order) goes first. `step(done, total)` is called as work completes and may
/// abort by returning an error.
///
/// F32/F16/BF16 targets are selected in parallel on the magnitude's f32 bits (see [`radix`]: a
/// sampled bracket around the threshold, with a two-pass radix select as the fallback); F64
/// targets use [`prune_by_sorting`].
pub fn prune_in_place<E>(
    file: &mut [u8],
    header: &Header,
    targets: &[String],
    scope: Scope,
    sparsity: f64,
    mut step: impl FnMut(usize, usize) -> Result<(), E>,
) -> Result<Result<(), E>, String> {
    assert!((0.0..1.0).contains(&sparsity));
    let infos = resolve_targets(header, targets)?;
    if infos.iter().any(|t| t.dtype == Dtype::F64) {
        return prune_by_sorting(file, header, targets, scope, sparsity, step);
    }
    let base = header.data_start as usize;
    match scope {
        Scope::Global => {
            let n: u64 = infos.iter().map(|t| t.numel()).sum();
            let k = (sparsity * n as f64).round() as u64;
            radix::prune_smallest(file, base, &infos, k);
            if let Err(e) = step(infos.len(), infos.len()) {
                return Ok(Err(e));
            }
        }
        Scope::Local => {
            for (i, t) in infos.iter().enumerate() {
                let k = (sparsity * t.numel() as f64).round() as u64;
                radix::prune_smallest(file, base, std::slice::from_ref(t), k);
                if let Err(e) = step(i + 1, infos.len()) {
                    return Ok(Err(e));
                }
            }
        }
    }
    Ok(Ok(()))
}

/// The reference implementation: magnitudes as f32, `select_nth_unstable`, then a mask pass.
/// Same result as [`prune_in_place`] (tested); used for F64 targets.
pub fn prune_by_sorting<E>(
    file: &mut [u8],
    header: &Header,
    targets: &[String],
    scope: Scope,
    sparsity: f64,
    mut step: impl FnMut(usize, usize) -> Result<(), E>,
) -> Result<Result<(), E>, String> {
    assert!((0.0..1.0).contains(&sparsity));
    let infos = resolve_targets(header, targets)?;
    let total_steps = infos.len();
    match scope {
        Scope::Local => {
            for (i, t) in infos.iter().enumerate() {
                let data = tensor_bytes(file, header, t);
                let mags = magnitudes(data, t.dtype);
                let k = (sparsity * mags.len() as f64).round() as u64;
                if k > 0 {
                    let mut scratch = mags.clone();
                    let th = kth_smallest(&mut scratch, (k - 1) as usize);
                    let below = count_below(&mags, th);
                    apply(data, t.dtype, &mags, th, k - below);
                }
                if let Err(e) = step(i + 1, total_steps) {
                    return Ok(Err(e));
                }
            }
        }
        Scope::Global => {
            let all: Vec<Vec<f32>> = infos.iter().map(|t| magnitudes(tensor_bytes(file, header, t), t.dtype)).collect();
            let n: usize = all.iter().map(Vec::len).sum();
            let k = (sparsity * n as f64).round() as u64;
            if k > 0 {
                let mut flat: Vec<f32> = Vec::with_capacity(n);
                for m in &all {
                    flat.extend_from_slice(m);
                }
                let th = kth_smallest(&mut flat, (k - 1) as usize);
                drop(flat);
                let below: u64 = all.iter().map(|m| count_below(m, th)).sum();
                let mut ties = k - below;
                for (i, (t, mags)) in infos.iter().zip(&all).enumerate() {
                    ties -= apply(tensor_bytes(file, header, t), t.dtype, mags, th, ties);
                    if let Err(e) = step(i + 1, total_steps) {
                        return Ok(Err(e));
                    }
                }
            }
        }
    }
    Ok(Ok(()))
}

/// An N:M pattern: in every group of M consecutive weights along the input dimension (a row
/// of the `[out, in]` weight), at most N are non-zero (as sparse tensor cores expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NmPattern {
    pub n: usize,
    pub m: usize,
}

impl NmPattern {
    /// Parse `"2:4"`; requires 0 < N < M ≤ 64.
    pub fn parse(s: &str) -> Result<NmPattern, String> {
        let (a, b) = s.split_once(':').ok_or_else(|| format!("{s:?} is not of the form N:M (e.g. 2:4)"))?;
        let n: usize = a.trim().parse().map_err(|_| format!("{s:?}: N is not a whole number"))?;
        let m: usize = b.trim().parse().map_err(|_| format!("{s:?}: M is not a whole number"))?;
        if n == 0 || n >= m || m > 64 {
            return Err(format!("{s:?}: need 0 < N < M <= 64"));
        }
        Ok(NmPattern { n, m })
    }
    pub fn sparsity(self) -> f64 {
        1.0 - self.n as f64 / self.m as f64
    }
}

/// Prune every target to an N:M pattern in place: in each group of M consecutive weights of a
/// row, the M−N smallest by magnitude become zero (ties: the earlier one goes first).
pub fn prune_nm_in_place<E>(
    file: &mut [u8],
    header: &Header,
    targets: &[String],
    pattern: NmPattern,
    mut step: impl FnMut(usize, usize) -> Result<(), E>,
) -> Result<Result<(), E>, String> {
    let infos = resolve_targets(header, targets)?;
    for (i, (name, t)) in targets.iter().zip(infos).enumerate() {
        let cols = *t.shape.last().ok_or_else(|| format!("tensor {name} is a scalar"))? as usize;
        if t.shape.len() < 2 || !cols.is_multiple_of(pattern.m) {
            return Err(format!(
                "tensor {name} with shape {:?}: its input dimension is not a multiple of M = {}",
                t.shape, pattern.m
            ));
        }
        let s = t.dtype.size() as usize;
        let data = tensor_bytes(file, header, t);
        let mags = magnitudes(data, t.dtype);
        let mut order: Vec<usize> = Vec::with_capacity(pattern.m);
        for (g, group) in mags.chunks_exact(pattern.m).enumerate() {
            order.clear();
            order.extend(0..pattern.m);
            order.sort_by(|&a, &b| group[a].total_cmp(&group[b]).then(a.cmp(&b)));
            for &j in &order[..pattern.m - pattern.n] {
                let e = g * pattern.m + j;
                data[e * s..(e + 1) * s].fill(0);
            }
        }
        if let Err(e) = step(i + 1, targets.len()) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// Whether every group of M consecutive weights of every row holds at most N non-zeros.
pub fn satisfies_nm(data: &[u8], dtype: Dtype, pattern: NmPattern) -> bool {
    let s = dtype.size() as usize;
    data.chunks_exact(s * pattern.m).all(|g| count_nonzeros(g, dtype) as usize <= pattern.n)
}

/// Radix selection of the k smallest magnitudes over F32/F16/BF16 tensors, without sorting
/// or copying: each element's magnitude maps to the bits of `|x|` as f32 (exact for f16 and
/// bf16), whose integer order is the magnitude order. A histogram pass over the high 16 bits
/// finds the bucket holding the k-th element; a second pass zeroes every lower bucket and
/// collects the members of that bucket, whose low 16 bits then give the exact threshold and
/// the ties to prune (in order). Usually a sample decides first (`prune_by_bracket`): a read-only
/// pass counts the keys below a few sampled cut points, and one zeroing pass collects only the
/// keys of the narrow sub-range holding the threshold. Every pass runs in parallel over pieces
/// of the tensors.
pub mod radix {
    use super::{Dtype, TensorInfo};
    use rayon::prelude::*;

    const PIECE: usize = 1 << 18;

    struct Piece<'a> {
        /// Order of the piece in (target, element) order, for tie-breaking.
        rank: usize,
        dtype: Dtype,
        data: &'a mut [u8],
    }

    #[inline(always)]
    fn for_each_key(data: &[u8], dtype: Dtype, mut f: impl FnMut(usize, u32)) {
        match dtype {
            Dtype::F32 => {
                for (i, c) in data.chunks_exact(4).enumerate() {
                    f(i, f32_key(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                }
            }
            Dtype::BF16 => {
                for (i, c) in data.chunks_exact(2).enumerate() {
                    f(i, bf16_key(u16::from_le_bytes([c[0], c[1]])))
                }
            }
            Dtype::F16 => {
                for (i, c) in data.chunks_exact(2).enumerate() {
                    f(i, half::f16::from_le_bytes([c[0], c[1]]).to_f32().to_bits() & 0x7fff_ffff)
                }
            }
            _ => unreachable!("radix handles F32, F16 and BF16"),
        }
    }

    /// Split the tensors' bytes into disjoint mutable pieces, ranked in target order.
    fn pieces<'a>(file: &'a mut [u8], base: usize, infos: &[&TensorInfo]) -> Vec<Piece<'a>> {
        // (start, end, dtype, target index, piece index within target)
        let mut spans = Vec::new();
        for (ti, t) in infos.iter().enumerate() {
            let s = t.dtype.size() as usize;
            let (a, b) = (base + t.begin as usize, base + t.end as usize);
            let mut at = a;
            let mut pi = 0;
            while at < b {
                let end = (at + PIECE * s).min(b);
                spans.push((at, end, t.dtype, ti, pi));
                at = end;
                pi += 1;
            }
        }
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by_key(|&i| (spans[i].3, spans[i].4));
        let mut rank = vec![0; spans.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        let mut by_offset: Vec<usize> = (0..spans.len()).collect();
        by_offset.sort_by_key(|&i| spans[i].0);
        let mut out = Vec::with_capacity(spans.len());
        let mut rest: &'a mut [u8] = file;
        let mut consumed = 0;
        for i in by_offset {
            let (a, b, dtype, _, _) = spans[i];
            let tail = std::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut(a - consumed);
            let (piece, tail) = tail.split_at_mut(b - a);
            rest = tail;
            consumed = b;
            out.push(Piece { rank: rank[i], dtype, data: piece });
        }
        out.sort_by_key(|p| p.rank);
        out
    }

    /// Counts of the high 16 bits of every key.
    fn histogram(pieces: &[Piece]) -> Vec<u64> {
        // One table per thread (not per rayon split: a table per piece would cost more to clear
        // and merge than the counting itself). Four interleaved tables: neighbouring weights
        // often share a bucket, and one table would make each increment wait for the previous
        // one. u32 counters keep the tables at 1 MiB; they are flushed long before overflowing.
        let per = pieces.len().div_ceil(rayon::current_num_threads()).max(1);
        pieces
            .par_chunks(per)
            .map(|group| {
                let mut total = vec![0u64; 1 << 16];
                let mut h = vec![0u32; 4 << 16];
                let mut pending = 0usize;
                let flush = |h: &mut Vec<u32>, total: &mut Vec<u64>| {
                    for (j, t) in total.iter_mut().enumerate() {
                        *t += (h[j] + h[j | 1 << 16] + h[j | 2 << 16] + h[j | 3 << 16]) as u64;
                    }
                    h.iter_mut().for_each(|x| *x = 0);
                };
                for p in group {
                    let n = p.data.len() / p.dtype.size() as usize;
                    if pending + n > u32::MAX as usize / 4 {
                        flush(&mut h, &mut total);
                        pending = 0;
                    }
                    pending += n;
                    for_each_key(p.data, p.dtype, |i, k| h[((i & 3) << 16) | (k >> 16) as usize] += 1);
                }
                flush(&mut h, &mut total);
                total
            })
            .reduce(
                || vec![0u64; 1 << 16],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            )
    }

    /// The bucket holding the `k`-th smallest (0-based) and how many lie in lower buckets.
    pub(crate) fn locate(h: &[u64], k: u64) -> (usize, u64) {
        let mut below = 0;
        for (b, &n) in h.iter().enumerate() {
            if below + n > k {
                return (b, below);
            }
            below += n;
        }
        unreachable!("k is below the element count")
    }

    /// Keys sampled to bracket the threshold.
    const SAMPLE: usize = 1 << 16;

    /// Cut points of the counting pass: it counts the keys below each, which narrows the
    /// sampled bracket to one of `CUTS - 1` sub-ranges before anything is written. With AVX2
    /// the 8 lanes × 8 counters stay in registers.
    const CUTS: usize = 8;

    /// Ascending cut points such that the `k`-th smallest key (0-based `k - 1`) very likely lies
    /// in `[cuts[0], cuts[CUTS - 1])`, the ones between at evenly spaced sample ranks, from
    /// evenly spaced samples; or `None` when the samples say the range would hold too many keys
    /// (many equal magnitudes, e.g. a model already sparse) for the bracket pass to pay.
    fn sample_bracket(pieces: &[Piece], n: u64, k: u64) -> Option<[u32; CUTS]> {
        // Evenly spaced runs of RUN consecutive elements: one cache line each, so the sample
        // costs a few thousand memory accesses rather than one per key.
        const RUN: u64 = 16;
        let runs = (SAMPLE as u64 / RUN).min(n / RUN);
        if runs == 0 {
            return None;
        }
        let mut sample = Vec::with_capacity((runs * RUN) as usize);
        let (mut piece, mut start) = (0usize, 0u64);
        let len = |p: &Piece| (p.data.len() / p.dtype.size() as usize) as u64;
        for j in 0..runs {
            let g = ((2 * j + 1) * n) / (2 * runs);
            while start + len(&pieces[piece]) <= g {
                start += len(&pieces[piece]);
                piece += 1;
            }
            let p = &pieces[piece];
            let w = p.dtype.size() as usize;
            let i = (g - start).min(len(p).saturating_sub(RUN)) as usize;
            let end = (i + RUN as usize).min(len(p) as usize);
            for_each_key(&p.data[i * w..end * w], p.dtype, |_, key| sample.push(key));
        }
        let s = sample.len();
        // The k-th smallest sits near rank q·s among the samples; ±(4σ + 16) of a binomial.
        // Two selections find those ranks and a sort of the (few) samples between them the
        // cuts (a full sort of the sample costs more than a pass).
        let q = k as f64 / n as f64;
        let delta = 4.0 * (s as f64 * q * (1.0 - q)).sqrt() + 16.0;
        let center = q * s as f64;
        let lo_i = (center - delta).floor();
        let hi_i = (center + delta).ceil();
        let a = lo_i.max(0.0) as usize;
        let b = (hi_i as usize).clamp(a, s - 1);
        sample.select_nth_unstable(a);
        sample[a..].select_nth_unstable(b - a);
        sample[a..=b].sort_unstable();
        // Keys are below 2^31 and so are the cuts (the counting compares as i32); a threshold
        // at the largest key misses the bracket and goes to the histogram path.
        let mut cuts: [u32; CUTS] = std::array::from_fn(|j| sample[a + j * (b - a) / (CUTS - 1)]);
        cuts[0] = if lo_i < 0.0 { 0 } else { sample[a] };
        cuts[CUTS - 1] = if hi_i >= s as f64 { 0x7fff_ffff } else { (sample[b] + 1).min(0x7fff_ffff) };
        let inside = sample.iter().filter(|&&x| cuts[0] <= x && x < cuts[CUTS - 1]).count();
        (inside * 16 <= s).then_some(cuts)
    }

    /// The magnitude key of an F32 or BF16 element (as a little-endian word: safetensors is
    /// little-endian, and so are x86 and Arm, where the word paths read native words).
    #[inline(always)]
    fn f32_key(w: u32) -> u32 {
        w & 0x7fff_ffff
    }
    #[inline(always)]
    fn bf16_key(w: u16) -> u32 {
        ((w as u32) << 16) & 0x7fff_ffff
    }

    /// For each cut, how many of the words' keys lie below it, 8 lanes at a time. Keys and cuts
    /// are below 2^31: signed comparisons, which SSE2 has. (Indexed loops: a zipped inner loop
    /// over the cuts did not vectorise.)
    #[inline(always)]
    fn count_below_words<T: Copy>(words: &[T], key: impl Fn(T) -> u32, cuts: &[u32; CUTS]) -> [u64; CUTS] {
        let cuts = cuts.map(|c| c as i32);
        let mut lanes = [[0u32; 8]; CUTS];
        let blocks = words.chunks_exact(8);
        let tail = blocks.remainder();
        for block in blocks {
            for j in 0..8 {
                let k = key(block[j]) as i32;
                for c in 0..CUTS {
                    lanes[c][j] += (k < cuts[c]) as u32;
                }
            }
        }
        std::array::from_fn(|c| {
            let tail = tail.iter().filter(|&&w| (key(w) as i32) < cuts[c]).count();
            lanes[c].iter().map(|&x| x as u64).sum::<u64>() + tail as u64
        })
    }

    /// [`count_below_words`] written with AVX2 intrinsics for F32 or BF16 bytes (unaligned
    /// loads, so any tensor offset): the compiler's vectorisation of the portable loop proved
    /// fragile (2-10x slower depending on what else the function held), and this pass reads
    /// every weight. The 8 counters stay in registers.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn count_below_avx2<const BF16: bool>(data: &[u8], cuts: &[u32; CUTS]) -> [u64; CUTS] {
        use std::arch::x86_64::*;
        let width = if BF16 { 2 } else { 4 };
        let mask = _mm256_set1_epi32(0x7fff_ffff);
        let cut: [__m256i; CUTS] = std::array::from_fn(|c| _mm256_set1_epi32(cuts[c] as i32));
        let mut acc = [_mm256_setzero_si256(); CUTS];
        let blocks = data.chunks_exact(8 * width);
        let tail = blocks.remainder();
        for block in blocks {
            // SAFETY: `block` holds 8 elements (16 or 32 bytes); the loads are unaligned ones.
            let k = if BF16 {
                _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(block.as_ptr().cast()) }))
            } else {
                unsafe { _mm256_loadu_si256(block.as_ptr().cast()) }
            };
            let k = _mm256_and_si256(k, mask);
            for c in 0..CUTS {
                // cut > key sets the lane to -1: subtracting counts it.
                acc[c] = _mm256_sub_epi32(acc[c], _mm256_cmpgt_epi32(cut[c], k));
            }
        }
        let mut below: [u64; CUTS] = std::array::from_fn(|c| {
            // SAFETY: a __m256i is 8 i32 lanes.
            let lanes: [u32; 8] = unsafe { std::mem::transmute(acc[c]) };
            lanes.iter().map(|&x| x as u64).sum()
        });
        add_keys_below(&mut below, tail, if BF16 { Dtype::BF16 } else { Dtype::F32 }, cuts);
        below
    }

    /// Adds to each cut's count the keys of `data` below it, one key at a time.
    fn add_keys_below(below: &mut [u64; CUTS], data: &[u8], dtype: Dtype, cuts: &[u32; CUTS]) {
        for_each_key(data, dtype, |_, key| below.iter_mut().zip(cuts).for_each(|(b, &c)| *b += (key < c) as u64));
    }

    /// For each cut, how many keys of the piece lie below it.
    fn count_below_cuts(p: &Piece, cuts: &[u32; CUTS]) -> [u64; CUTS] {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                match p.dtype {
                    // SAFETY: the CPU has AVX2.
                    Dtype::F32 => return unsafe { count_below_avx2::<false>(p.data, cuts) },
                    Dtype::BF16 => return unsafe { count_below_avx2::<true>(p.data, cuts) },
                    _ => {}
                }
            }
        }
        if cfg!(target_endian = "little") {
            match p.dtype {
                Dtype::F32 => {
                    if let Ok(words) = bytemuck::try_cast_slice::<u8, u32>(p.data) {
                        return count_below_words(words, f32_key, cuts);
                    }
                }
                Dtype::BF16 => {
                    if let Ok(words) = bytemuck::try_cast_slice::<u8, u16>(p.data) {
                        return count_below_words(words, bf16_key, cuts);
                    }
                }
                _ => {}
            }
        }
        // F16, or a tensor not aligned to its element size in the file: one key at a time.
        let mut below = [0u64; CUTS];
        add_keys_below(&mut below, p.data, p.dtype, cuts);
        below
    }

    /// Zero the words whose key is below `lo` and return the index and key of those in
    /// `[lo, hi]`, 16 at a time: the zeroing is branch-free (the comparison becomes a mask,
    /// so the loop vectorises), and a block is looked at key by key only when it holds a key of
    /// `[lo, hi]` (rare: the sub-range the counting pass chose is narrow).
    #[inline(always)]
    fn zero_collect_words<T: Copy>(
        words: &mut [T],
        key: impl Fn(T) -> u32,
        keep: impl Fn(T, bool) -> T,
        lo: u32,
        hi: u32,
    ) -> Vec<(u32, u32)> {
        debug_assert!(lo <= hi && hi <= 0x7fff_ffff);
        let (lo, hi) = (lo as i32, hi as i32);
        let mut hits = Vec::new();
        let mut blocks = words.chunks_exact_mut(16);
        for (b, block) in blocks.by_ref().enumerate() {
            let mut any = false;
            for w in block.iter_mut() {
                let k = key(*w) as i32;
                any |= lo <= k && k <= hi;
                *w = keep(*w, k >= lo);
            }
            if any {
                for (j, &w) in block.iter().enumerate() {
                    let k = key(w) as i32;
                    if lo <= k && k <= hi {
                        hits.push(((b * 16 + j) as u32, k as u32));
                    }
                }
            }
        }
        let offset = words.len() / 16 * 16;
        for (j, w) in words[offset..].iter_mut().enumerate() {
            let k = key(*w) as i32;
            if lo <= k && k <= hi {
                hits.push(((offset + j) as u32, k as u32));
            }
            *w = keep(*w, k >= lo);
        }
        hits
    }

    /// [`zero_collect_words`] for F32 bytes with AVX2 intrinsics (unaligned loads and
    /// stores), 8 elements at a time; the lanes in `[lo, hi]` come out of one movemask.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn zero_collect_f32_avx2(data: &mut [u8], lo: u32, hi: u32) -> Vec<(u32, u32)> {
        use std::arch::x86_64::*;
        debug_assert!(lo <= hi && hi <= 0x7fff_ffff);
        let mask = _mm256_set1_epi32(0x7fff_ffff);
        // key ≥ lo as key > lo - 1 (lo - 1 ≥ -1), key ≤ hi as not key > hi.
        let lo_1 = _mm256_set1_epi32(lo as i32 - 1);
        let hi_v = _mm256_set1_epi32(hi as i32);
        let mut hits = Vec::new();
        let offset = data.len() / 32 * 8;
        let mut blocks = data.chunks_exact_mut(32);
        for (b, block) in blocks.by_ref().enumerate() {
            let p = block.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `block` is 32 bytes; the load and the store are unaligned ones.
            let w = unsafe { _mm256_loadu_si256(p) };
            let k = _mm256_and_si256(w, mask);
            let keep = _mm256_cmpgt_epi32(k, lo_1);
            unsafe { _mm256_storeu_si256(p, _mm256_and_si256(w, keep)) };
            let mut inside =
                _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(_mm256_cmpgt_epi32(k, hi_v), keep))) as u32;
            if inside != 0 {
                // SAFETY: a __m256i is 8 u32 lanes.
                let keys: [u32; 8] = unsafe { std::mem::transmute(k) };
                while inside != 0 {
                    let j = inside.trailing_zeros() as usize;
                    hits.push(((b * 8 + j) as u32, keys[j]));
                    inside &= inside - 1;
                }
            }
        }
        let tail = zero_collect_bytes(blocks.into_remainder(), Dtype::F32, lo, hi);
        hits.extend(tail.into_iter().map(|(j, key)| (offset as u32 + j, key)));
        hits
    }

    /// Zero the elements whose key is below `lo`, and return the index and key of those in
    /// `[lo, hi]`.
    fn zero_below_collect_range(data: &mut [u8], dtype: Dtype, lo: u32, hi: u32) -> Vec<(u32, u32)> {
        #[cfg(target_arch = "x86_64")]
        {
            if dtype == Dtype::F32 && is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { zero_collect_f32_avx2(data, lo, hi) };
            }
        }
        if cfg!(target_endian = "little") {
            match dtype {
                Dtype::F32 => {
                    if let Ok(words) = bytemuck::try_cast_slice_mut::<u8, u32>(data) {
                        return zero_collect_words(words, f32_key, |w, keep| w & (keep as u32).wrapping_neg(), lo, hi);
                    }
                }
                Dtype::BF16 => {
                    if let Ok(words) = bytemuck::try_cast_slice_mut::<u8, u16>(data) {
                        return zero_collect_words(words, bf16_key, |w, keep| w & (keep as u16).wrapping_neg(), lo, hi);
                    }
                }
                _ => {}
            }
        }
        // F16, or a tensor not aligned to its element size in the file: byte by byte.
        zero_collect_bytes(data, dtype, lo, hi)
    }

    /// [`zero_below_collect_range`] one element at a time, reading little-endian bytes.
    fn zero_collect_bytes(data: &mut [u8], dtype: Dtype, lo: u32, hi: u32) -> Vec<(u32, u32)> {
        let mut hits = Vec::new();
        let mut note = |i: usize, key: u32| {
            if key >= lo && key <= hi {
                hits.push((i as u32, key));
            }
        };
        match dtype {
            Dtype::F32 => data.chunks_exact_mut(4).enumerate().for_each(|(i, c)| {
                let bits = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let key = f32_key(bits);
                note(i, key);
                c.copy_from_slice(&(bits & ((key >= lo) as u32).wrapping_neg()).to_le_bytes());
            }),
            Dtype::BF16 => data.chunks_exact_mut(2).enumerate().for_each(|(i, c)| {
                let bits = u16::from_le_bytes([c[0], c[1]]);
                let key = bf16_key(bits);
                note(i, key);
                c.copy_from_slice(&(bits & ((key >= lo) as u16).wrapping_neg()).to_le_bytes());
            }),
            Dtype::F16 => data.chunks_exact_mut(2).enumerate().for_each(|(i, c)| {
                let bits = u16::from_le_bytes([c[0], c[1]]);
                let key = half::f16::from_bits(bits).to_f32().to_bits() & 0x7fff_ffff;
                note(i, key);
                c.copy_from_slice(&(bits & ((key >= lo) as u16).wrapping_neg()).to_le_bytes());
            }),
            _ => unreachable!("radix handles F32, F16 and BF16"),
        }
        hits
    }

    /// The sampled path: a read-only pass counts the keys below each cut of the sampled
    /// bracket, which checks that the bracket holds the threshold and picks the narrow
    /// sub-range `[lo, hi]` holding it; then one branch-free pass zeroes everything below `lo`
    /// and collects the (few) keys in `[lo, hi]`, among which the last decisions are made.
    /// False (nothing written) when the bracket missed.
    fn prune_by_bracket(pieces: &mut [Piece], k: u64) -> bool {
        let n: u64 = pieces.iter().map(|p| (p.data.len() / p.dtype.size() as usize) as u64).sum();
        let Some(cuts) = sample_bracket(pieces, n, k) else { return false };
        let below = pieces
            .par_iter()
            .map(|p| count_below_cuts(p, &cuts))
            .reduce(|| [0; CUTS], |a, b| std::array::from_fn(|c| a[c] + b[c]));
        // The sub-range [cuts[i], cuts[i + 1]) holding the key of rank k - 1.
        let Some(i) = (0..CUTS - 1).find(|&i| below[i] < k && k <= below[i + 1]) else { return false };
        let (lo, hi, below) = (cuts[i], cuts[i + 1] - 1, below[i]);
        let candidates: Vec<Vec<(u32, u32)>> =
            pieces.par_iter_mut().map(|p| zero_below_collect_range(p.data, p.dtype, lo, hi)).collect();
        let m = (k - below) as usize; // at least 1: below < k
                                      // The m-th smallest candidate key is the threshold: every candidate below it goes, and
                                      // of those equal to it the first ones in (piece, index) order, the order they were
                                      // collected in.
        let mut keys: Vec<u32> = candidates.iter().flat_map(|c| c.iter().map(|&(_, key)| key)).collect();
        let threshold = *keys.select_nth_unstable(m - 1).1;
        let less = keys.iter().filter(|&&key| key < threshold).count();
        zero_candidates(pieces, &candidates, threshold, (m - less) as u64);
        true
    }

    /// Zero, among each piece's collected `(index, key)` candidates, those whose key is below
    /// `threshold` and the first `ties` (in piece, then index order) equal to it.
    fn zero_candidates<K: Ord + Copy>(pieces: &mut [Piece], candidates: &[Vec<(u32, K)>], threshold: K, mut ties: u64) {
        for (p, c) in pieces.iter_mut().zip(candidates) {
            let s = p.dtype.size() as usize;
            for &(i, key) in c {
                let prune = match key.cmp(&threshold) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal if ties > 0 => {
                        ties -= 1;
                        true
                    }
                    _ => false,
                };
                if prune {
                    let i = i as usize;
                    p.data[i * s..(i + 1) * s].fill(0);
                }
            }
        }
    }

    /// Zero the `k` smallest magnitudes over `infos` (ties: earlier target, earlier element).
    /// True when the sampled bracket decided, false when the histogram passes did.
    pub fn prune_smallest(file: &mut [u8], base: usize, infos: &[&TensorInfo], k: u64) -> bool {
        if k == 0 {
            return false;
        }
        let mut pieces = pieces(file, base, infos);
        if prune_by_bracket(&mut pieces, k) {
            return true;
        }
        let hi = histogram(&pieces);
        let (bh, below_hi) = locate(&hi, k - 1);
        // Zero every element of a lower bucket, and collect (in order) the elements of the
        // bucket holding the threshold: usually a small fraction, so the last decisions need no
        // further pass over all the weights.
        let floor = (bh as u32) << 16;
        let candidates: Vec<Vec<(u32, u16)>> = pieces
            .par_iter_mut()
            .map(|p| {
                zero_below_collect_range(p.data, p.dtype, floor, floor | 0xffff)
                    .into_iter()
                    .map(|(i, key)| (i, key as u16))
                    .collect()
            })
            .collect();
        let mut lo = vec![0u64; 1 << 16];
        for c in &candidates {
            for &(_, l) in c {
                lo[l as usize] += 1;
            }
        }
        let (bl, below_lo) = locate(&lo, k - 1 - below_hi);
        zero_candidates(&mut pieces, &candidates, bl as u16, k - below_hi - below_lo);
        false
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Keys with ties and zeros, as F32 and BF16 bytes, at every offset 0-3 of a buffer.
        fn inputs() -> Vec<(Dtype, Vec<u8>, usize)> {
            let mut rng = 5u64;
            let values: Vec<f32> = (0..10_007)
                .map(|i| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let v = ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                    if i % 7 == 0 {
                        0.0
                    } else if i % 5 == 0 {
                        (v * 8.0).round() / 8.0
                    } else {
                        v
                    }
                })
                .collect();
            let mut out = Vec::new();
            for dtype in [Dtype::F32, Dtype::BF16] {
                for shift in 0..4 {
                    let mut bytes = vec![0u8; shift];
                    bytes.extend(crate::engine::testing::encode(&values, dtype));
                    out.push((dtype, bytes, shift));
                }
            }
            out
        }

        fn keys(data: &[u8], dtype: Dtype) -> Vec<u32> {
            let mut keys = Vec::new();
            for_each_key(data, dtype, |_, key| keys.push(key));
            keys
        }

        /// Each way of counting (AVX2 where the CPU has it, aligned words, one key at a time)
        /// gives the counts of a plain filter.
        #[test]
        fn every_counting_path_counts_the_keys_below_each_cut() {
            for (dtype, bytes, shift) in inputs() {
                let data = &bytes[shift..];
                let mut sorted = keys(data, dtype);
                sorted.sort_unstable();
                // Cuts at keys and just above keys (an off-by-one in the comparison shows).
                let cuts: [u32; CUTS] = std::array::from_fn(|c| {
                    if c == 0 {
                        0
                    } else {
                        sorted[c * (sorted.len() - 1) / (CUTS - 1)] + (c % 2) as u32
                    }
                });
                let want: [u64; CUTS] = cuts.map(|c| sorted.iter().filter(|&&k| k < c).count() as u64);
                let mut piece_bytes = data.to_vec();
                let piece = Piece { rank: 0, dtype, data: &mut piece_bytes };
                assert_eq!(count_below_cuts(&piece, &cuts), want, "{dtype:?} shift {shift}");
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    let got = unsafe {
                        if dtype == Dtype::BF16 {
                            count_below_avx2::<true>(data, &cuts)
                        } else {
                            count_below_avx2::<false>(data, &cuts)
                        }
                    };
                    assert_eq!(got, want, "avx2 {dtype:?} shift {shift}");
                }
                if shift == 0 {
                    let got = match dtype {
                        Dtype::F32 => count_below_words(
                            &data
                                .chunks_exact(4)
                                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect::<Vec<_>>(),
                            f32_key,
                            &cuts,
                        ),
                        _ => count_below_words(
                            &data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<_>>(),
                            bf16_key,
                            &cuts,
                        ),
                    };
                    assert_eq!(got, want, "words {dtype:?}");
                }
            }
        }

        /// Each way of zeroing and collecting gives the bytes and candidates of a plain loop.
        #[test]
        fn every_zeroing_path_zeroes_below_lo_and_collects_the_range() {
            for (dtype, bytes, shift) in inputs() {
                let data = &bytes[shift..];
                let keys = keys(data, dtype);
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                let (lo, hi) = (sorted[keys.len() * 4 / 10], sorted[keys.len() * 6 / 10]);
                let w = dtype.size() as usize;
                let mut want_bytes = data.to_vec();
                let mut want_hits = Vec::new();
                for (i, &k) in keys.iter().enumerate() {
                    if k < lo {
                        want_bytes[i * w..(i + 1) * w].fill(0);
                    }
                    if lo <= k && k <= hi {
                        want_hits.push((i as u32, k));
                    }
                }
                let mut got = data.to_vec();
                assert_eq!(zero_below_collect_range(&mut got, dtype, lo, hi), want_hits, "{dtype:?} shift {shift}");
                assert!(got == want_bytes, "{dtype:?} shift {shift}");
                #[cfg(target_arch = "x86_64")]
                if dtype == Dtype::F32 && is_x86_feature_detected!("avx2") {
                    let mut got = data.to_vec();
                    // SAFETY: the CPU has AVX2.
                    assert_eq!(unsafe { zero_collect_f32_avx2(&mut got, lo, hi) }, want_hits, "avx2 shift {shift}");
                    assert!(got == want_bytes, "avx2 shift {shift}");
                }
                if shift == 0 && dtype == Dtype::F32 {
                    let mut words: Vec<u32> =
                        data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                    let hits =
                        zero_collect_words(&mut words, f32_key, |w, keep| w & (keep as u32).wrapping_neg(), lo, hi);
                    assert_eq!(hits, want_hits, "words");
                    assert!(words.iter().flat_map(|w| w.to_le_bytes()).eq(want_bytes.iter().copied()), "words");
                }
            }
        }
    }
}

/// Per-tensor line of `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorReport {
    pub name: String,
    pub dtype: String,
    pub shape_before: Vec<u64>,
    pub shape: Vec<u64>,
    pub numel: u64,
    pub nonzeros: u64,
    pub sparsity: f64,
    /// Whether the tensor was a pruning target.
    pub pruned: bool,
    /// Stored densely.
    pub bytes_dense: u64,
    /// Stored as a bitmask (one bit per element) plus the non-zero values.
    pub bytes_sparse: u64,
}

/// Per encoder layer: its tensors together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerReport {
    pub layer: usize,
    pub parameters: u64,
    pub nonzeros: u64,
    pub sparsity: f64,
    /// Attention heads of the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<Units>,
    /// FFN neurons (intermediate width) of the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<Units>,
}

/// A layer's heads or FFN neurons: as the input stored them, as the output stores them (tensor
/// shapes), and how many of those still add anything to the layer's output. A head is active when
/// its value projection (rows or bias) and its slice of the attention output weight both hold a
/// non-zero; a neuron when its FFN input (row or bias) and its FFN output column do. A zero-filled
/// unit is stored but not active.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Units {
    pub before: usize,
    pub stored: usize,
    pub active: usize,
}

/// Which columns (`by_column`) or rows of a row-major 2-D tensor hold a non-zero; for a 1-D
/// tensor (a bias), which elements are non-zero.
fn nonzero_lines(file: &[u8], header: &Header, t: &TensorInfo, by_column: bool) -> Vec<bool> {
    let cols = *t.shape.last().unwrap_or(&0) as usize;
    let a = (header.data_start + t.begin) as usize;
    let b = (header.data_start + t.end) as usize;
    let s = t.dtype.size() as usize;
    if t.shape.len() == 1 {
        return file[a..b].chunks_exact(s).map(|v| count_nonzeros(v, t.dtype) == 1).collect();
    }
    if cols == 0 || t.shape.len() != 2 {
        return Vec::new();
    }
    let mut out = vec![false; if by_column { cols } else { t.shape[0] as usize }];
    for (r, row) in file[a..b].chunks_exact(cols * s).enumerate() {
        for (c, v) in row.chunks_exact(s).enumerate() {
            if count_nonzeros(v, t.dtype) == 1 {
                out[if by_column { c } else { r }] = true;
            }
        }
    }
    out
}

/// Fills `heads` and `ffn` of each layer report from the written file (and the input's header,
/// for `before`). `head_dim` is hidden size / attention heads of the original config.
pub fn fill_units(
    layers: &mut [LayerReport],
    file: &[u8],
    header: &Header,
    before: &Header,
    family: Family,
    head_dim: usize,
) {
    let names = family.layer_names();
    let find = |h: &Header, layer: usize, module: &str, kind: &str| -> Option<TensorInfo> {
        let canonical = format!("{}{module}.{kind}", family.layer_prefix(layer));
        h.tensors.iter().find(|(n, _)| super::arch::canonical_name(family, n) == canonical).map(|(_, t)| t.clone())
    };
    let cols = |t: &TensorInfo| *t.shape.last().unwrap_or(&0) as usize;
    // Units whose input side (rows of `input` or its bias) and output side (columns of `output`)
    // both hold a non-zero; `width` elements per unit.
    let active = |layer: usize, input: &str, output: &str, width: usize| -> Option<(usize, usize)> {
        let out_t = find(header, layer, output, "weight")?;
        let in_t = find(header, layer, input, "weight")?;
        let out_nz = nonzero_lines(file, header, &out_t, true);
        let mut in_nz = nonzero_lines(file, header, &in_t, false);
        if let Some(b) = find(header, layer, input, "bias") {
            in_nz.iter_mut().zip(nonzero_lines(file, header, &b, false)).for_each(|(a, b)| *a |= b);
        }
        if width == 0 || out_nz.len() != in_nz.len() || !out_nz.len().is_multiple_of(width) {
            return None;
        }
        let n = out_nz
            .chunks(width)
            .zip(in_nz.chunks(width))
            .filter(|(o, i)| o.iter().any(|x| *x) && i.iter().any(|x| *x))
            .count();
        Some((cols(&out_t) / width, n))
    };
    for l in layers.iter_mut() {
        if let Some((stored, n)) = active(l.layer, names.value, names.attn_out, head_dim) {
            let before_n = find(before, l.layer, names.attn_out, "weight").map_or(stored, |b| cols(&b) / head_dim);
            l.heads = Some(Units { before: before_n, stored, active: n });
        }
        if let Some((stored, n)) = active(l.layer, names.ffn_in, names.ffn_out, 1) {
            let before_n = find(before, l.layer, names.ffn_out, "weight").map_or(stored, |b| cols(&b));
            l.ffn = Some(Units { before: before_n, stored, active: n });
        }
    }
}

/// The encoder layer a tensor belongs to, from its name.
pub fn layer_of(name: &str) -> Option<usize> {
    ["encoder.layer.", "transformer.layer."].iter().find_map(|root| {
        let at = name.find(root)?;
        if at > 0 && !name[..at].ends_with('.') {
            return None;
        }
        name[at + root.len()..].split('.').next()?.parse().ok()
    })
}

/// Per-layer totals of the tensors.
pub fn per_layer(tensors: &[TensorReport]) -> Vec<LayerReport> {
    let mut by: std::collections::BTreeMap<usize, (u64, u64)> = Default::default();
    for t in tensors {
        if let Some(l) = layer_of(&t.name) {
            let e = by.entry(l).or_default();
            e.0 += t.numel;
            e.1 += t.nonzeros;
        }
    }
    by.into_iter()
        .map(|(layer, (n, nz))| LayerReport {
            layer,
            parameters: n,
            nonzeros: nz,
            sparsity: ratio(n - nz, n),
            heads: None,
            ffn: None,
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Elements of the floating-point tensors before pruning.
    pub parameters_before: u64,
    pub parameters: u64,
    pub nonzeros: u64,
    pub sparsity: f64,
    pub target_parameters: u64,
    pub target_nonzeros: u64,
    pub target_sparsity: f64,
    /// Size of the written checkpoint.
    pub bytes: u64,
    /// Every tensor stored densely.
    pub bytes_dense: u64,
    /// Each floating-point tensor stored the smaller way: densely, or as a bitmask plus its
    /// non-zero values.
    pub bytes_sparse: u64,
    /// Multiply-adds (×2) of the encoder's linear maps per token, counting every weight.
    pub flops_per_token: u64,
    /// The same, counting only non-zero weights (what a sparse kernel would do).
    pub flops_per_token_sparse: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub method: String,
    /// Everything the method was run with: the job's pruning spec with defaults resolved, its
    /// calibration, and what the method measured on the way (e.g. calibration tokens seen).
    #[serde(default)]
    pub parameters: serde_json::Value,
    pub granularity: String,
    pub scope: Scope,
    pub requested_sparsity: f64,
    /// The N:M pattern, for `n:m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Units removed per layer (structured granularities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<RemovedUnits>,
    /// Per encoder layer.
    pub layers: Vec<LayerReport>,
    pub tensors: Vec<TensorReport>,
    pub totals: Totals,
    /// Totals of the `compact` export, when one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact: Option<Totals>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemovedUnits {
    /// Per layer (indices of the original model).
    pub heads: Vec<Vec<usize>>,
    pub neurons: Vec<Vec<usize>>,
    /// Layers removed (indices of the original model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<usize>,
}

fn ratio(zeros: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        zeros as f64 / n as f64
    }
}

/// Per-tensor and total counts, recomputed from the written file. `before` gives each
/// tensor's shape before pruning (the written shape when absent).
pub fn measure(file: &[u8], header: &Header, targets: &[String]) -> (Vec<TensorReport>, Totals) {
    measure_against(file, header, targets, header)
}

pub fn measure_against(
    file: &[u8],
    header: &Header,
    targets: &[String],
    before: &Header,
) -> (Vec<TensorReport>, Totals) {
    let mut tensors = Vec::new();
    let mut totals = Totals {
        parameters_before: before.tensors.values().filter(|t| t.dtype.is_float()).map(|t| t.numel()).sum(),
        parameters: 0,
        nonzeros: 0,
        sparsity: 0.0,
        target_parameters: 0,
        target_nonzeros: 0,
        target_sparsity: 0.0,
        bytes: file.len() as u64,
        bytes_dense: 0,
        bytes_sparse: 0,
        flops_per_token: 0,
        flops_per_token_sparse: 0,
    };
    for (name, t) in &header.tensors {
        let dense = t.end - t.begin;
        totals.bytes_dense += dense;
        if !t.dtype.is_float() {
            totals.bytes_sparse += dense;
            continue;
        }
        let a = (header.data_start + t.begin) as usize;
        let b = (header.data_start + t.end) as usize;
        let nz = count_nonzeros(&file[a..b], t.dtype);
        let n = t.numel();
        let sparse = n.div_ceil(8) + nz * t.dtype.size();
        totals.bytes_sparse += dense.min(sparse);
        let pruned = targets.contains(name);
        totals.parameters += n;
        totals.nonzeros += nz;
        if pruned {
            totals.target_parameters += n;
            totals.target_nonzeros += nz;
        }
        if t.shape.len() == 2 && name.ends_with(".weight") && layer_of(name).is_some() {
            totals.flops_per_token += 2 * n;
            totals.flops_per_token_sparse += 2 * nz;
        }
        let shape_before = before.tensors.get(name).map_or_else(|| t.shape.clone(), |b| b.shape.clone());
        tensors.push(TensorReport {
            name: name.clone(),
            dtype: t.dtype.name().into(),
            shape_before,
            shape: t.shape.clone(),
            numel: n,
            nonzeros: nz,
            sparsity: ratio(n - nz, n),
            pruned,
            bytes_dense: dense,
            bytes_sparse: sparse,
        });
    }
    totals.sparsity = ratio(totals.parameters - totals.nonzeros, totals.parameters);
    totals.target_sparsity = ratio(totals.target_parameters - totals.target_nonzeros, totals.target_parameters);
    (tensors, totals)
}

/// The masks of unstructured / N:M pruning as a safetensors file: for every target a U8 tensor
/// of its shape, 1 where the weight is kept (so later fine-tuning can keep the zeros at zero).
pub fn masks_file(file: &[u8], header: &Header, targets: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in targets {
        let t = &header.tensors[name];
        let a = (header.data_start + t.begin) as usize;
        let b = (header.data_start + t.end) as usize;
        let s = t.dtype.size() as usize;
        let bits: Vec<u8> = file[a..b].chunks_exact(s).map(|c| (count_nonzeros(c, t.dtype) == 1) as u8).collect();
        out.push((name.clone(), Dtype::U8, t.shape.clone(), bits));
    }
    super::st::serialize(&out, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{st, testing::TinyModel};

    fn prune(m: &TinyModel, scope: Scope, s: f64) -> (Vec<u8>, Vec<u8>, Header, Vec<String>) {
        let orig = m.safetensors();
        let header = st::parse(&orig).unwrap();
        let family = Family::parse(m.model_type).unwrap();
        let targets = select_targets(family, &header, &[], &[]);
        let mut out = orig.clone();
        prune_in_place(&mut out, &header, &targets, scope, s, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
        (orig, out, header, targets)
    }

    #[test]
    fn local_gives_every_target_the_sparsity_and_leaves_the_rest() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let m = TinyModel { dtype, ..Default::default() };
            let (orig, out, header, targets) = prune(&m, Scope::Local, 0.6);
            assert_eq!(targets.len(), 12);
            let (tensors, _) = measure(&out, &header, &targets);
            for t in &tensors {
                let info = &header.tensors[&t.name];
                let range = (header.data_start + info.begin) as usize..(header.data_start + info.end) as usize;
                if t.pruned {
                    let want = (0.6 * t.numel as f64).round() as u64;
                    assert_eq!(t.numel - t.nonzeros, want, "{} ({dtype:?})", t.name);
                } else {
                    assert_eq!(&orig[range.clone()], &out[range], "{} changed", t.name);
                }
            }
            assert_eq!(&orig[..header.data_start as usize], &out[..header.data_start as usize]);
        }
    }

    #[test]
    fn global_hits_the_total_and_prunes_the_smallest() {
        let m = TinyModel::default();
        let (orig, out, header, targets) = prune(&m, Scope::Global, 0.5);
        let (_, totals) = measure(&out, &header, &targets);
        let want = (0.5 * totals.target_parameters as f64).round() as u64;
        assert_eq!(totals.target_parameters - totals.target_nonzeros, want);
        // Every kept weight is at least as large as every pruned one.
        let (mut max_pruned, mut min_kept) = (0f32, f32::MAX);
        for n in &targets {
            let t = &header.tensors[n];
            let r = (header.data_start + t.begin) as usize..(header.data_start + t.end) as usize;
            let before = magnitudes(&orig[r.clone()], t.dtype);
            let after = magnitudes(&out[r], t.dtype);
            for (b, a) in before.iter().zip(&after) {
                if *a == 0.0 {
                    max_pruned = max_pruned.max(*b);
                } else {
                    min_kept = min_kept.min(*b);
                }
            }
        }
        assert!(max_pruned <= min_kept, "{max_pruned} > {min_kept}");
        // Tensors differ in sparsity under a global threshold only by chance; here all are random.
    }

    #[test]
    fn radix_select_equals_sorting_exactly() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            for scope in [Scope::Global, Scope::Local] {
                for s in [0.0, 0.1, 0.5, 0.77, 0.99] {
                    let m = TinyModel { dtype, hidden: 64, ffn: 256, layers: 2, seed: 3, ..Default::default() };
                    let orig = m.safetensors();
                    let header = st::parse(&orig).unwrap();
                    let targets = select_targets(Family::Bert, &header, &[], &[]);
                    let mut a = orig.clone();
                    let mut b = orig.clone();
                    prune_in_place(&mut a, &header, &targets, scope, s, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
                    prune_by_sorting(&mut b, &header, &targets, scope, s, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
                    assert!(a == b, "{dtype:?} {scope:?} {s}");
                }
            }
        }
        // Many ties (a half-zero tensor, rounded bf16 values) across pieces.
        let values: Vec<f32> = (0..700_000).map(|i| if i % 2 == 0 { 0.0 } else { ((i % 7) as f32) * 0.25 }).collect();
        for dtype in [Dtype::F32, Dtype::BF16] {
            let file = st::serialize(
                &[("w".into(), dtype, vec![700, 1000], crate::engine::testing::encode(&values, dtype))],
                None,
            );
            let header = st::parse(&file).unwrap();
            for s in [0.3, 0.55, 0.6] {
                let (mut a, mut b) = (file.clone(), file.clone());
                prune_in_place(&mut a, &header, &["w".to_string()], Scope::Global, s, |_, _| Ok::<(), ()>(()))
                    .unwrap()
                    .unwrap();
                prune_by_sorting(&mut b, &header, &["w".to_string()], Scope::Global, s, |_, _| Ok::<(), ()>(()))
                    .unwrap()
                    .unwrap();
                assert!(a == b, "ties {dtype:?} {s}");
            }
        }
    }

    #[test]
    fn sampled_bracket_equals_sorting_exactly() {
        // Large enough for the sampled path (more elements than samples), three dtypes in one
        // global selection, one tensor a third zeros and one with few distinct values (ties
        // inside the bracket).
        let mut rng = 17u64;
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let a: Vec<f32> = (0..300_000).map(|_| next() * 0.05).collect();
        let b: Vec<f32> = (0..200_000).map(|i| if i % 3 == 0 { 0.0 } else { next() * 0.08 }).collect();
        let c: Vec<f32> = (0..250_000).map(|_| (next() * 40.0).round() / 1000.0).collect();
        let enc = crate::engine::testing::encode;
        let file = st::serialize(
            &[
                ("a".into(), Dtype::F32, vec![300, 1000], enc(&a, Dtype::F32)),
                ("b".into(), Dtype::BF16, vec![200, 1000], enc(&b, Dtype::BF16)),
                ("c".into(), Dtype::F16, vec![250, 1000], enc(&c, Dtype::F16)),
            ],
            None,
        );
        let header = st::parse(&file).unwrap();
        let targets: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let infos: Vec<&TensorInfo> = targets.iter().map(|t| &header.tensors[t]).collect();
        let n = 750_000f64;
        for s in [0.05, 0.3, 0.5, 0.8, 0.97] {
            let mut y = file.clone();
            let k = (s * n).round() as u64;
            prune_by_sorting(&mut y, &header, &targets, Scope::Global, s, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
            // The file shifted by 0-3 bytes: the tensors are aligned to their element size in
            // one of these (read as words) and not in the others (read byte by byte).
            for shift in 0..4 {
                let mut x = vec![0u8; shift];
                x.extend_from_slice(&file);
                let sampled = radix::prune_smallest(&mut x, header.data_start as usize + shift, &infos, k);
                // At 5% the threshold is 0, shared by the 9% of zeros: that goes to the histogram.
                assert_eq!(sampled, s > 0.1, "sparsity {s}: which path decided");
                assert!(x[shift..] == y[..], "sparsity {s}, shift {shift}");
            }
        }
        // A threshold among very many equal keys (two thirds zeros) goes to the histogram.
        let z: Vec<f32> = (0..300_000).map(|i| if i % 3 == 0 { next() } else { 0.0 }).collect();
        let file = st::serialize(&[("z".into(), Dtype::F32, vec![300, 1000], enc(&z, Dtype::F32))], None);
        let header = st::parse(&file).unwrap();
        let (mut x, mut y) = (file.clone(), file.clone());
        assert!(!radix::prune_smallest(&mut x, header.data_start as usize, &[&header.tensors["z"]], 150_000));
        prune_by_sorting(&mut y, &header, &["z".to_string()], Scope::Global, 0.5, |_, _| Ok::<(), ()>(()))
            .unwrap()
            .unwrap();
        assert!(x == y);
    }

    #[test]
    fn ties_are_broken_to_hit_the_exact_count() {
        let values = vec![1.0f32; 10];
        let file = st::serialize(
            &[("w".into(), Dtype::F32, vec![10], crate::engine::testing::encode(&values, Dtype::F32))],
            None,
        );
        let header = st::parse(&file).unwrap();
        let mut out = file.clone();
        prune_in_place(&mut out, &header, &["w".to_string()], Scope::Global, 0.3, |_, _| Ok::<(), ()>(()))
            .unwrap()
            .unwrap();
        let (t, _) = measure(&out, &header, &["w".to_string()]);
        assert_eq!(t[0].nonzeros, 7);
    }

    #[test]
    fn nm_keeps_the_n_largest_of_every_group() {
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            for pat in ["2:4", "4:8", "1:4"] {
                let p = NmPattern::parse(pat).unwrap();
                let m = TinyModel { dtype, ..Default::default() };
                let orig = m.safetensors();
                let header = st::parse(&orig).unwrap();
                let targets = select_targets(Family::Bert, &header, &[], &[]);
                let mut out = orig.clone();
                prune_nm_in_place(&mut out, &header, &targets, p, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
                for n in &targets {
                    let t = &header.tensors[n];
                    let r = (header.data_start + t.begin) as usize..(header.data_start + t.end) as usize;
                    assert!(satisfies_nm(&out[r.clone()], dtype, p), "{n} {pat}");
                    let before = magnitudes(&orig[r.clone()], dtype);
                    let after = magnitudes(&out[r], dtype);
                    for (gb, ga) in before.chunks(p.m).zip(after.chunks(p.m)) {
                        // Exactly N survive (random weights are non-zero) and they are the largest.
                        assert_eq!(ga.iter().filter(|x| **x != 0.0).count(), p.n);
                        let min_kept =
                            gb.iter().zip(ga).filter(|(_, a)| **a != 0.0).map(|(b, _)| *b).fold(f32::MAX, f32::min);
                        let max_cut =
                            gb.iter().zip(ga).filter(|(_, a)| **a == 0.0).map(|(b, _)| *b).fold(0.0, f32::max);
                        assert!(max_cut <= min_kept);
                    }
                }
                let (_, totals) = measure(&out, &header, &targets);
                assert!((totals.target_sparsity - p.sparsity()).abs() < 1e-9);
            }
        }
        assert!(NmPattern::parse("4:2").is_err());
        assert!(NmPattern::parse("0:4").is_err());
        assert!(NmPattern::parse("2-4").is_err());
        // Input dimension not a multiple of M.
        let m = TinyModel::default();
        let orig = m.safetensors();
        let header = st::parse(&orig).unwrap();
        let targets = select_targets(Family::Bert, &header, &[], &[]);
        let err =
            prune_nm_in_place(&mut orig.clone(), &header, &targets, NmPattern { n: 2, m: 24 }, |_, _| Ok::<(), ()>(()))
                .unwrap_err();
        assert!(err.contains("multiple of M"), "{err}");
    }

    #[test]
    fn include_and_exclude_override_the_default() {
        let m = TinyModel { with_prefix_and_head: true, ..Default::default() };
        let header = st::parse(&m.safetensors()).unwrap();
        let inc = vec![Regex::new(r"classifier\.weight$").unwrap(), Regex::new(r"pooler").unwrap()];
        let t = select_targets(Family::Bert, &header, &inc, &[Regex::new("bias").unwrap()]);
        assert_eq!(t, vec!["bert.pooler.dense.weight".to_string(), "classifier.weight".to_string()]);
        let t = select_targets(Family::Bert, &header, &[], &[Regex::new(r"layer\.1\.").unwrap()]);
        assert_eq!(t.len(), 6);
        assert!(t.iter().all(|n| n.contains("layer.0.")));
    }

    #[test]
    fn cancellation_stops_between_tensors() {
        let m = TinyModel::default();
        let orig = m.safetensors();
        let header = st::parse(&orig).unwrap();
        let targets = select_targets(Family::Bert, &header, &[], &[]);
        let mut out = orig.clone();
        let r = prune_in_place(&mut out, &header, &targets, Scope::Local, 0.5, |done, _| {
            if done == 3 {
                Err("stop")
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(r, Err("stop"));
    }
}
