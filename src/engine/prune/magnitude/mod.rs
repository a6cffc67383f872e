//! Unstructured magnitude pruning, global or local, working in place on a safetensors file's
//! bytes: the header is untouched (same names, dtypes, shapes), pruned weights become zero in
//! their own dtype, and every other byte stays as it was.

use super::{NmPattern, Scope};
use crate::engine::io::st::{count_nonzeros, Dtype, Header, TensorInfo};
use crate::engine::model::arch::Arch;
use regex::Regex;

/// Which tensors are pruned: with no `include` pattern, the blocks' linear weights; with
/// `include`, every floating-point tensor whose name matches one of them. `exclude` removes
/// matches from either set. Patterns are searched anywhere in the name (anchor them with
/// `^`/`$` when needed).
pub fn select_targets(arch: Arch, header: &Header, include: &[Regex], exclude: &[Regex]) -> Vec<String> {
    header
        .tensors
        .iter()
        .filter(|(_, t)| t.dtype.is_float())
        .map(|(n, _)| n)
        .filter(|n| if include.is_empty() { arch.is_linear_weight(n) } else { include.iter().any(|r| r.is_match(n)) })
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
    let mut v = crate::engine::io::st::floats(data, dtype).expect("checked by check_prunable_dtype");
    v.iter_mut().for_each(|x| *x = x.abs());
    v
}

/// The k-th smallest value (0-based) of `v` under total order; `v` is reordered.
fn kth_smallest(v: &mut [f32], k: usize) -> f32 {
    *v.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
}

/// Whether an element is pruned, from how its magnitude compares with the threshold: below it
/// always; equal to it while `ties` are left, using one.
fn goes(ord: std::cmp::Ordering, ties: &mut u64) -> bool {
    match ord {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Equal if *ties > 0 => {
            *ties -= 1;
            true
        }
        _ => false,
    }
}

/// Zero the elements of `data` whose magnitude is below `threshold`, then up to `ties` of those
/// equal to it (in element order). Returns how many ties were used.
fn apply(data: &mut [u8], dtype: Dtype, mags: &[f32], threshold: f32, mut ties: u64) -> u64 {
    let s = dtype.size() as usize;
    let start = ties;
    for (i, m) in mags.iter().enumerate() {
        if goes(m.total_cmp(&threshold), &mut ties) {
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
    let mut done = 0;
    for group in groups(&infos, scope) {
        let n: u64 = group.iter().map(|t| t.numel()).sum();
        radix::prune_smallest(file, base, group, (sparsity * n as f64).round() as u64);
        done += group.len();
        if let Err(e) = step(done, infos.len()) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// The groups `scope` makes of the targets, each pruned to the sparsity on its own: all of
/// them together (global), or each alone (local).
fn groups<T>(infos: &[T], scope: Scope) -> Vec<&[T]> {
    match scope {
        Scope::Global => vec![infos],
        Scope::Local => infos.chunks(1).collect(),
    }
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
    let mut done = 0;
    for group in groups(&infos, scope) {
        let all: Vec<Vec<f32>> = group.iter().map(|t| magnitudes(tensor_bytes(file, header, t), t.dtype)).collect();
        let n: usize = all.iter().map(Vec::len).sum();
        let k = (sparsity * n as f64).round() as u64;
        // The k-th smallest magnitude, and how many equal to it go (the earlier ones).
        let mut threshold = (k > 0).then(|| {
            let mut flat: Vec<f32> = Vec::with_capacity(n);
            for m in &all {
                flat.extend_from_slice(m);
            }
            let th = kth_smallest(&mut flat, (k - 1) as usize);
            (th, k - all.iter().map(|m| count_below(m, th)).sum::<u64>())
        });
        for (t, mags) in group.iter().zip(&all) {
            if let Some((th, ties)) = threshold.as_mut() {
                *ties -= apply(tensor_bytes(file, header, t), t.dtype, mags, *th, *ties);
            }
            done += 1;
            if let Err(e) = step(done, infos.len()) {
                return Ok(Err(e));
            }
        }
    }
    Ok(Ok(()))
}

/// How a tensor's weights fall into N:M groups: M consecutive weights along its input
/// dimension, which is the last of an `[out, in]` matrix and the first of a transposed
/// `[in, out]` one (GPT-2's `Conv1D`), where a group is M weights of one column.
#[derive(Debug, Clone, Copy)]
pub struct NmGroups {
    m: usize,
    /// Elements along the stored last dimension.
    cols: usize,
    transposed: bool,
    groups: usize,
}

impl NmGroups {
    pub fn new(name: &str, shape: &[u64], transposed: bool, m: usize) -> Result<NmGroups, String> {
        let numel = shape.iter().product::<u64>() as usize;
        let cols = shape.last().copied().unwrap_or(0) as usize;
        let input = if transposed { shape.first() } else { shape.last() }.copied().unwrap_or(0) as usize;
        if shape.len() < 2 || (transposed && shape.len() != 2) || m == 0 || !input.is_multiple_of(m) {
            return Err(format!(
                "tensor {name} with shape {shape:?}: its input dimension is not a multiple of M = {m}"
            ));
        }
        Ok(NmGroups { m, cols, transposed, groups: numel / m })
    }

    /// The element index of weight `j` of group `g`.
    fn at(&self, g: usize, j: usize) -> usize {
        if self.transposed {
            ((g / self.cols) * self.m + j) * self.cols + g % self.cols
        } else {
            g * self.m + j
        }
    }
}

/// Prune every target to an N:M pattern in place: in each group of M consecutive weights along
/// the input dimension ([`NmGroups`]; `arch` says which targets are stored transposed), the M−N
/// smallest by magnitude become zero (ties: the earlier one goes first).
pub fn prune_nm_in_place<E>(
    file: &mut [u8],
    header: &Header,
    arch: Arch,
    targets: &[String],
    pattern: NmPattern,
    mut step: impl FnMut(usize, usize) -> Result<(), E>,
) -> Result<Result<(), E>, String> {
    let infos = resolve_targets(header, targets)?;
    let layouts = targets
        .iter()
        .zip(&infos)
        .map(|(name, t)| NmGroups::new(name, &t.shape, arch.stores_transposed(name), pattern.m))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, (t, groups)) in infos.into_iter().zip(layouts).enumerate() {
        let s = t.dtype.size() as usize;
        let data = tensor_bytes(file, header, t);
        let mags = magnitudes(data, t.dtype);
        let mut order: Vec<usize> = Vec::with_capacity(pattern.m);
        let mut group = vec![0f32; pattern.m];
        for g in 0..groups.groups {
            group.iter_mut().enumerate().for_each(|(j, v)| *v = mags[groups.at(g, j)]);
            order.clear();
            order.extend(0..pattern.m);
            order.sort_by(|&a, &b| group[a].total_cmp(&group[b]).then(a.cmp(&b)));
            for &j in &order[..pattern.m - pattern.n] {
                let e = groups.at(g, j);
                data[e * s..(e + 1) * s].fill(0);
            }
        }
        if let Err(e) = step(i + 1, targets.len()) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// Whether every N:M group ([`NmGroups`]) of a tensor's data holds at most N non-zeros.
pub fn satisfies_nm(data: &[u8], dtype: Dtype, shape: &[u64], transposed: bool, pattern: NmPattern) -> bool {
    let Ok(groups) = NmGroups::new("", shape, transposed, pattern.m) else { return false };
    let s = dtype.size() as usize;
    (0..groups.groups).all(|g| {
        let nz = (0..pattern.m).filter(|&j| {
            let e = groups.at(g, j);
            count_nonzeros(&data[e * s..(e + 1) * s], dtype) == 1
        });
        nz.count() <= pattern.n
    })
}

pub mod radix;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::arch::Family;
    use crate::engine::report::measure;
    use crate::engine::{io::st, testing::TinyModel};

    const BERT: Arch = Arch::Encoder(Family::Bert);

    fn prune(m: &TinyModel, scope: Scope, s: f64) -> (Vec<u8>, Vec<u8>, Header, Vec<String>) {
        let orig = m.safetensors();
        let header = st::parse(&orig).unwrap();
        let targets = select_targets(Arch::parse(m.model_type).unwrap(), &header, &[], &[]);
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
                    let targets = select_targets(BERT, &header, &[], &[]);
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
                let targets = select_targets(BERT, &header, &[], &[]);
                let mut out = orig.clone();
                prune_nm_in_place(&mut out, &header, BERT, &targets, p, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
                for n in &targets {
                    let t = &header.tensors[n];
                    let r = (header.data_start + t.begin) as usize..(header.data_start + t.end) as usize;
                    assert!(satisfies_nm(&out[r.clone()], dtype, &t.shape, false, p), "{n} {pat}");
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
        let targets = select_targets(BERT, &header, &[], &[]);
        let err = prune_nm_in_place(&mut orig.clone(), &header, BERT, &targets, NmPattern { n: 2, m: 24 }, |_, _| {
            Ok::<(), ()>(())
        })
        .unwrap_err();
        assert!(err.contains("multiple of M"), "{err}");
    }

    #[test]
    fn nm_groups_of_a_transposed_weight_run_down_its_columns() {
        // GPT-2's Conv1D stores [in, out]: groups are M rows of one column.
        let (rows, cols) = (8usize, 3usize);
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 101) as f32 + 1.0).collect();
        let name = "h.0.attn.c_attn.weight".to_string();
        let enc = crate::engine::testing::encode(&values, Dtype::F32);
        let file = st::serialize(&[(name.clone(), Dtype::F32, vec![rows as u64, cols as u64], enc)], None);
        let header = st::parse(&file).unwrap();
        let gpt2 = Arch::parse("gpt2").unwrap();
        let p = NmPattern { n: 2, m: 4 };
        let mut out = file.clone();
        prune_nm_in_place(&mut out, &header, gpt2, std::slice::from_ref(&name), p, |_, _| Ok::<(), ()>(()))
            .unwrap()
            .unwrap();
        let data = &out[header.data_start as usize..];
        let after = magnitudes(data, Dtype::F32);
        for c in 0..cols {
            for block in 0..rows / 4 {
                let idx: Vec<usize> = (0..4).map(|j| (block * 4 + j) * cols + c).collect();
                let kept: Vec<f32> = idx.iter().filter(|&&e| after[e] != 0.0).map(|&e| values[e]).collect();
                let cut: Vec<f32> = idx.iter().filter(|&&e| after[e] == 0.0).map(|&e| values[e]).collect();
                assert_eq!((kept.len(), cut.len()), (2, 2), "column {c}, block {block}");
                assert!(cut.iter().all(|x| kept.iter().all(|k| x <= k)));
            }
        }
        let shape = [rows as u64, cols as u64];
        assert!(satisfies_nm(data, Dtype::F32, &shape, true, p));
        // Rows of the stored matrix hold 3 weights: along them the pattern does not hold.
        assert!(!satisfies_nm(data, Dtype::F32, &[(rows * cols / 4) as u64, 4], false, NmPattern { n: 1, m: 4 }));
        // The input dimension is the first one: 6 rows do not split into groups of 4.
        let file = st::serialize(&[(name.clone(), Dtype::F32, vec![6, 4], vec![0u8; 96])], None);
        let header = st::parse(&file).unwrap();
        let err = prune_nm_in_place(&mut file.clone(), &header, gpt2, &[name], p, |_, _| Ok::<(), ()>(())).unwrap_err();
        assert!(err.contains("multiple of M"), "{err}");
    }

    #[test]
    fn include_and_exclude_override_the_default() {
        let m = TinyModel { with_prefix_and_head: true, ..Default::default() };
        let header = st::parse(&m.safetensors()).unwrap();
        let inc = vec![Regex::new(r"classifier\.weight$").unwrap(), Regex::new(r"pooler").unwrap()];
        let t = select_targets(BERT, &header, &inc, &[Regex::new("bias").unwrap()]);
        assert_eq!(t, vec!["bert.pooler.dense.weight".to_string(), "classifier.weight".to_string()]);
        let t = select_targets(BERT, &header, &[], &[Regex::new(r"layer\.1\.").unwrap()]);
        assert_eq!(t.len(), 6);
        assert!(t.iter().all(|n| n.contains("layer.0.")));
    }

    #[test]
    fn cancellation_stops_between_tensors() {
        let m = TinyModel::default();
        let orig = m.safetensors();
        let header = st::parse(&orig).unwrap();
        let targets = select_targets(BERT, &header, &[], &[]);
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
