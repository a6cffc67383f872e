//! The one "lowest k" selection of every pruning method that chooses by score: keep flags with
//! the `k` lowest scores pruned, ties to the lower index (earlier tensor or layer, then earlier
//! element), over several tensors at once (global) or each on its own (local), with elements
//! already pruned staying pruned. Taylor, movement and gradual magnitude masks use [`select`];
//! head, neuron and layer removal use [`lowest_units`] on the same selection.
//!
//! Magnitude pruning of a checkpoint's bytes makes the same choice (ties to the lower index,
//! one threshold over all tensors or one per tensor) with its own radix selection
//! (`magnitude::radix`), which reads the weights in their stored dtype in place instead of as an
//! f32 copy of every score; it shares [`super::magnitude::radix::locate`] with this one, and
//! `tests::magnitude_prunes_what_select_chooses` shows the two agree.

use super::Scope;
use rayon::prelude::*;

/// Keep flags leaving `sparsity` of the elements pruned, the lowest scores first, over all
/// tensors together (`Global`) or in each tensor (`Local`). Elements already pruned (`false`
/// in `existing`) stay pruned and count towards the sparsity. Ties go to the lower index
/// (earlier tensor, then earlier element).
///
/// Regrowing masks call this at every optimizer step over all of MiniLM's 10.6M scores, so it
/// neither sorts nor copies them: a parallel histogram of the high 16 bits of an
/// order-preserving key finds the bucket that holds the threshold, only that bucket's elements
/// are collected for an exact selection, and one parallel pass writes the flags.
pub fn select(scores: &[Vec<f32>], existing: &[Option<&[bool]>], sparsity: f64, scope: Scope) -> Vec<Vec<bool>> {
    let count = |n: usize| (((n as f64) * sparsity).round() as usize).min(n);
    match scope {
        Scope::Global => {
            let parts: Vec<&[f32]> = scores.iter().map(|s| s.as_slice()).collect();
            let n = parts.iter().map(|p| p.len()).sum();
            select_lowest(&parts, existing, count(n))
        }
        Scope::Local => scores
            .iter()
            .zip(existing)
            .flat_map(|(s, e)| select_lowest(&[s.as_slice()], &[*e], count(s.len())))
            .collect(),
    }
}

/// The key of a score that orders as `f32::total_cmp` does; an element already pruned gets 0,
/// below every kept one.
#[inline]
fn rank_key(v: f32, kept: bool) -> u32 {
    let b = v.to_bits();
    let k = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    if kept {
        k.max(1)
    } else {
        0
    }
}

/// Keep flags with the `k` lowest (key, tensor, element) of `parts` pruned.
fn select_lowest(parts: &[&[f32]], existing: &[Option<&[bool]>], k: usize) -> Vec<Vec<bool>> {
    const CHUNK: usize = 1 << 16;
    let key = |t: usize, j: usize| rank_key(parts[t][j], existing[t].is_none_or(|e| e[j]));
    if k == 0 {
        return parts.iter().map(|p| vec![true; p.len()]).collect();
    }
    let chunks: Vec<(usize, usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(t, p)| (0..p.len()).step_by(CHUNK).map(move |a| (t, a, (a + CHUNK).min(p.len()))))
        .collect();
    let hist = chunks
        .par_iter()
        .fold(
            || vec![0u64; 1 << 16],
            |mut h, &(t, a, b)| {
                for j in a..b {
                    h[(key(t, j) >> 16) as usize] += 1;
                }
                h
            },
        )
        .reduce(
            || vec![0u64; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    // The bucket holding the k-th lowest, and how many lie in lower buckets.
    let (bucket, below) = super::magnitude::radix::locate(&hist, (k - 1) as u64);
    let below = below as usize;
    let mut inside: Vec<(u32, u32, u32)> = chunks
        .par_iter()
        .flat_map_iter(|&(t, a, b)| {
            (a..b).filter_map(move |j| {
                Some(key(t, j)).filter(|k| (k >> 16) as usize == bucket).map(|k| (k, t as u32, j as u32))
            })
        })
        .collect();
    let (_, threshold, _) = inside.select_nth_unstable(k - below - 1);
    let threshold = *threshold;
    parts
        .iter()
        .enumerate()
        .map(|(t, p)| {
            let mut keep = vec![false; p.len()];
            keep.par_iter_mut()
                .enumerate()
                .with_min_len(4096)
                .for_each(|(j, f)| *f = (key(t, j), t as u32, j as u32) > threshold);
            keep
        })
        .collect()
}

/// The lowest-scoring units (heads, neurons or layers): `count` of them across all layers
/// (`count_global`), or `per_layer[l]` in layer `l`. Ties go to the lower index. Returns the
/// sorted indices per layer.
pub fn lowest_units(scores: &[Vec<f32>], count_global: Option<usize>, per_layer: Option<&[usize]>) -> Vec<Vec<usize>> {
    let pruned = |keep: Vec<bool>| keep.iter().enumerate().filter(|(_, k)| !**k).map(|(i, _)| i).collect::<Vec<_>>();
    match (count_global, per_layer) {
        (Some(n), _) => {
            let parts: Vec<&[f32]> = scores.iter().map(Vec::as_slice).collect();
            let total = parts.iter().map(|p| p.len()).sum::<usize>();
            select_lowest(&parts, &vec![None; parts.len()], n.min(total)).into_iter().map(pruned).collect()
        }
        (None, Some(counts)) => scores
            .iter()
            .zip(counts)
            .map(|(s, &n)| pruned(select_lowest(&[s.as_slice()], &[None], n.min(s.len())).remove(0)))
            .collect(),
        (None, None) => vec![Vec::new(); scores.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule `select` implements, by sorting.
    fn select_by_sorting(
        scores: &[Vec<f32>],
        existing: &[Option<&[bool]>],
        sparsity: f64,
        scope: Scope,
    ) -> Vec<Vec<bool>> {
        let ranked =
            |t: usize, j: usize| if existing[t].is_some_and(|e| !e[j]) { f32::NEG_INFINITY } else { scores[t][j] };
        let groups: Vec<Vec<(usize, usize)>> = match scope {
            Scope::Global => {
                vec![scores.iter().enumerate().flat_map(|(t, s)| (0..s.len()).map(move |j| (t, j))).collect()]
            }
            Scope::Local => scores.iter().enumerate().map(|(t, s)| (0..s.len()).map(|j| (t, j)).collect()).collect(),
        };
        let mut keep: Vec<Vec<bool>> = scores.iter().map(|s| vec![true; s.len()]).collect();
        for mut g in groups {
            let k = ((g.len() as f64 * sparsity).round() as usize).min(g.len());
            g.sort_by(|a, b| ranked(a.0, a.1).total_cmp(&ranked(b.0, b.1)).then(a.cmp(b)));
            for &(t, j) in &g[..k] {
                keep[t][j] = false;
            }
        }
        keep
    }

    #[test]
    fn selection_matches_sorting_with_ties_signs_and_prior_masks() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..20 {
            // Sizes across the 65,536-element chunks; few distinct values (many ties, within
            // and across tensors), negative scores and zeros of both signs.
            let sizes = [rng.gen_range(1..3000), rng.gen_range(60_000..140_000), rng.gen_range(1..50)];
            let scores: Vec<Vec<f32>> = sizes
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| {
                            [-2.5, -0.0, 0.0, 1e-30, 0.25, 3.0, f32::MAX][rng.gen_range(0..7)]
                                * if round % 2 == 0 { 1.0 } else { rng.gen::<f32>() }
                        })
                        .collect()
                })
                .collect();
            let prior: Vec<Vec<bool>> =
                sizes.iter().map(|&n| (0..n).map(|_| rng.gen::<f32>() > 0.3).collect()).collect();
            let existing: Vec<Option<&[bool]>> =
                prior.iter().enumerate().map(|(t, p)| (t != 1 || round % 3 != 0).then_some(p.as_slice())).collect();
            for sparsity in [0.0, 0.1, 0.5, 0.8, 1.0, rng.gen::<f64>()] {
                for scope in [Scope::Global, Scope::Local] {
                    assert_eq!(
                        select(&scores, &existing, sparsity, scope),
                        select_by_sorting(&scores, &existing, sparsity, scope),
                        "round {round} sparsity {sparsity} {scope:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn selection_global_local_and_sticky() {
        let scores = vec![vec![5.0, 1.0, 3.0, 4.0], vec![0.5, 6.0]];
        let g = select(&scores, &[None, None], 0.5, Scope::Global);
        assert_eq!(g, vec![vec![true, false, false, true], vec![false, true]]);
        let l = select(&scores, &[None, None], 0.5, Scope::Local);
        assert_eq!(l, vec![vec![true, false, false, true], vec![false, true]]);
        // An element already pruned stays pruned even with the best score.
        let existing = [true, true, true, true];
        let prior = [false, true];
        let s = select(&scores, &[Some(&existing), Some(&prior)], 1.0 / 6.0, Scope::Global);
        assert_eq!(s, vec![vec![true; 4], vec![false, true]]);
        let s = select(&scores, &[None, Some(&[true, false])], 2.0 / 6.0, Scope::Global);
        assert_eq!(s, vec![vec![true; 4], vec![false, false]]);
    }

    #[test]
    fn lowest_units_global_per_layer_and_ties() {
        let scores = vec![vec![3.0, 0.5], vec![1.0, 9.0, 2.0]];
        assert_eq!(lowest_units(&scores, Some(3), None), vec![vec![1], vec![0, 2]]);
        assert_eq!(lowest_units(&scores, None, Some(&[1, 2])), vec![vec![1], vec![0, 2]]);
        assert_eq!(lowest_units(&[vec![1.0, 1.0, 1.0]], Some(2), None), vec![vec![0, 1]]);
        // Ties across layers go to the earlier layer; asking for more than there are takes all.
        assert_eq!(lowest_units(&[vec![1.0], vec![1.0]], Some(1), None), vec![vec![0], vec![]]);
        assert_eq!(lowest_units(&[vec![2.0, 1.0]], Some(5), None), vec![vec![0, 1]]);
        assert_eq!(lowest_units(&[vec![2.0, 1.0]], None, Some(&[5])), vec![vec![0, 1]]);
    }

    #[test]
    fn magnitude_prunes_what_select_chooses() {
        use crate::engine::io::st::{self, Dtype};
        use crate::engine::testing::TinyModel;
        let m = TinyModel { layers: 2, ..Default::default() };
        let file = m.safetensors();
        let header = st::parse(&file).unwrap();
        let targets: Vec<String> = header.tensors.keys().filter(|n| n.ends_with("dense.weight")).cloned().collect();
        let mags = |bytes: &[u8]| -> Vec<Vec<f32>> {
            let h = st::parse(bytes).unwrap();
            targets
                .iter()
                .map(|n| {
                    let t = &h.tensors[n];
                    let r = (h.data_start + t.begin) as usize..(h.data_start + t.end) as usize;
                    st::floats(&bytes[r], Dtype::F32).unwrap().iter().map(|v| v.abs()).collect()
                })
                .collect()
        };
        let before = mags(&file);
        for scope in [Scope::Global, Scope::Local] {
            for sparsity in [0.3, 0.5, 0.9] {
                let mut out = file.clone();
                let no = |_: usize, _: usize| Ok::<(), ()>(());
                super::super::magnitude::prune_in_place(&mut out, &header, &targets, scope, sparsity, no)
                    .unwrap()
                    .unwrap();
                let kept: Vec<Vec<bool>> = mags(&out).iter().map(|t| t.iter().map(|v| *v != 0.0).collect()).collect();
                let chosen = select(&before, &vec![None; targets.len()], sparsity, scope);
                assert_eq!(kept, chosen, "{scope:?} {sparsity}");
            }
        }
    }
}
