//! Radix selection of the k smallest magnitudes over F32/F16/BF16 tensors, without sorting
//! or copying: each element's magnitude maps to the bits of `|x|` as f32 (exact for f16 and
//! bf16), whose integer order is the magnitude order. A histogram pass over the high 16 bits
//! finds the bucket holding the k-th element; a second pass zeroes every lower bucket and
//! collects the members of that bucket, whose low 16 bits then give the exact threshold and
//! the ties to prune (in order). Usually a sample decides first (`prune_by_bracket`): a read-only
//! pass counts the keys below a few sampled cut points, and one zeroing pass collects only the
//! keys of the narrow sub-range holding the threshold. Every pass runs in parallel over pieces
//! of the tensors.

use crate::engine::io::st::{Dtype, TensorInfo};
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
            if super::goes(key.cmp(&threshold), &mut ties) {
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
                        &data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(),
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
                let hits = zero_collect_words(&mut words, f32_key, |w, keep| w & (keep as u32).wrapping_neg(), lo, hi);
                assert_eq!(hits, want_hits, "words");
                assert!(words.iter().flat_map(|w| w.to_le_bytes()).eq(want_bytes.iter().copied()), "words");
            }
        }
    }
}
