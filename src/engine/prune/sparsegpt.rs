//! SparseGPT (Frantar & Alistarh, 2023): layer-wise optimal brain surgeon reconstruction.
//!
//! For a linear map `W` (`[rows, cols]`) with calibration inputs `X` (`[tokens, cols]`), the
//! Hessian of the layer-output error ‖XWᵀ − XŴᵀ‖² is `H = XᵀX`. Columns are processed left to
//! right in blocks (lazy batch updates): a weight pruned in column `i` has its error
//! `(w − 0) / [H⁻¹]ᵢᵢ` spread over the columns still to come along row `i` of the upper Cholesky
//! factor of `H⁻¹`. The mask is chosen per block from `w² / [H⁻¹]ᵢᵢ²` (adaptive mask selection),
//! over the whole block for unstructured sparsity, or per group of `M` inputs for N:M.
//! `H` is dampened by `damp × mean(diag H)` on its diagonal, as the reference code does.
//!
//! Follows the authors' `SparseGPT.fasterprune` step for step; the differences are that we keep
//! exactly `floor(rows × block × sparsity)` weights per block (the reference keeps one more on
//! ties at the threshold) and that `H` and its factor are computed in f64.

use super::wanda::Rule;
use super::NmPattern;
use crate::engine::model::{Batch, Encoder, ModelError, Site};
use candle_core::{DType, Tensor};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatRef, Par, Side};

/// `XᵀX` accumulated over the calibration tokens of one linear map's input.
#[derive(Debug, Clone)]
pub struct Hessian {
    cols: usize,
    /// `[cols, cols]`, F64 (each batch's product is computed in f32, the sum in f64).
    xtx: Option<Tensor>,
    tokens: u64,
}

impl Hessian {
    pub fn new(cols: usize) -> Hessian {
        Hessian { cols, xtx: None, tokens: 0 }
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Calibration tokens seen so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Adds every row of `x` (`[rows, cols]`, row-major), each a token.
    pub fn add_rows(&mut self, x: &[f32]) -> candle_core::Result<()> {
        let rows = x.len() / self.cols.max(1);
        if rows * self.cols != x.len() {
            candle_core::bail!("{} values are not rows of {} features", x.len(), self.cols);
        }
        let t = Tensor::from_slice(x, (rows, self.cols), &candle_core::Device::Cpu)?;
        self.accumulate(&t, rows as u64)
    }

    fn accumulate(&mut self, rows: &Tensor, tokens: u64) -> candle_core::Result<()> {
        let g = rows.t()?.contiguous()?.matmul(rows)?.to_dtype(DType::F64)?;
        self.xtx = Some(match self.xtx.take() {
            Some(acc) => (acc + g)?,
            None => g,
        });
        self.tokens += tokens;
        Ok(())
    }

    /// Row-major `[cols, cols]` (zeros before any token).
    pub fn values(&self) -> candle_core::Result<Vec<f64>> {
        match &self.xtx {
            Some(t) => t.flatten_all()?.to_vec1::<f64>(),
            None => Ok(vec![0.0; self.cols * self.cols]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Columns per lazy-update block (the paper's B = 128).
    pub block: usize,
    /// Dampening as a fraction of the mean diagonal of H (the paper's λ = 1%).
    pub damp: f64,
}

impl Default for Options {
    fn default() -> Options {
        Options { block: 128, damp: 0.01 }
    }
}

/// The upper triangular `U` with `UᵀU = H⁻¹` (H symmetric positive definite, `[n, n]`).
/// One Cholesky factorisation of the index-reversed `H` and one triangular inverse: if
/// `PHP = LLᵀ` with `P` the reversal, then `U = P L⁻¹ P`.
fn upper_factor_of_inverse(h: &Mat<f64>) -> Result<Mat<f64>, String> {
    let n = h.nrows();
    let reversed = h.as_ref().reverse_rows_and_cols().to_owned();
    let llt = reversed.llt(Side::Lower).map_err(|_| "the dampened Hessian is not positive definite".to_string())?;
    // Only the lower triangle is written: the rest stays zero.
    let mut inv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(inv.as_mut(), llt.L(), faer::get_global_parallelism());
    Ok(inv.as_ref().reverse_rows_and_cols().to_owned())
}

/// Prunes and reconstructs a row-major `[rows, cols]` weight in place. Pruned weights become
/// exactly zero; the others are updated to compensate.
pub fn prune(weight: &mut [f32], cols: usize, hessian: &Hessian, rule: Rule, opts: Options) -> Result<(), String> {
    if cols == 0 || !weight.len().is_multiple_of(cols) {
        return Err(format!("a weight of {} elements is not a matrix of {cols} columns", weight.len()));
    }
    if hessian.cols != cols {
        return Err(format!("the weight has {cols} inputs but its calibration inputs have {}", hessian.cols));
    }
    let rows = weight.len() / cols;
    let block = match rule {
        Rule::NM(NmPattern { m, .. }) => {
            if !cols.is_multiple_of(m) {
                return Err(format!("the input dimension {cols} is not a multiple of M = {m}"));
            }
            (opts.block / m).max(1) * m
        }
        Rule::Unstructured(s) if !(0.0..=1.0).contains(&s) => return Err(format!("sparsity {s} is outside [0, 1]")),
        Rule::Unstructured(_) => opts.block.max(1),
    };
    let w64: Vec<f64> = weight.iter().map(|v| f64::from(*v)).collect();
    let mut w = MatRef::from_row_major_slice(&w64, rows, cols).to_owned();
    drop(w64);
    let hv = hessian.values().map_err(|e| e.to_string())?;
    let mut h = MatRef::from_row_major_slice(&hv, cols, cols).to_owned();
    drop(hv);
    // Inputs never active carry no information: their weights go (as in the reference).
    for i in 0..cols {
        if h[(i, i)] == 0.0 {
            h[(i, i)] = 1.0;
            w.col_mut(i).fill(0.0);
        }
    }
    let mean_diag = (0..cols).map(|i| h[(i, i)]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        h[(i, i)] += opts.damp * mean_diag;
    }
    let u = upper_factor_of_inverse(&h)?;
    drop(h);

    // Indexing faer matrices element by element is slow without optimisation (tests): the loops
    // below go through column slices.
    let diag: Vec<f64> = (0..cols).map(|i| u[(i, i)]).collect();
    let mut err = Mat::<f64>::zeros(rows, block);
    let mut prune_mask = vec![false; rows * block];
    let mut order: Vec<usize> = Vec::new();
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        let mut w1 = w.submatrix(0, i1, rows, count).to_owned();
        let pm = &mut prune_mask[..rows * count]; // column-major [rows, count]
        pm.fill(false);
        // w² / [H⁻¹]ᵢᵢ² of column c (the Cholesky diagonal squared is [H⁻¹]ᵢᵢ in the paper's code).
        let score = |x: f64, c: usize| x * x / (diag[i1 + c] * diag[i1 + c]);
        if let Rule::Unstructured(s) = rule {
            let k = ((rows * count) as f64 * s) as usize;
            if k > 0 {
                let scores: Vec<f64> =
                    (0..count).flat_map(|c| w1.col_as_slice(c).iter().map(move |x| score(*x, c))).collect();
                order.clear();
                order.extend(0..rows * count);
                // Ties go in index order, so the selection is deterministic.
                order.select_nth_unstable_by(k - 1, |&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
                for &e in &order[..k] {
                    pm[e] = true;
                }
            }
        }
        for i in 0..count {
            if let Rule::NM(p) = rule {
                if i % p.m == 0 {
                    let group: Vec<&[f64]> = (i..i + p.m).map(|c| w1.col_as_slice(c)).collect();
                    let mut sc = vec![0.0; p.m];
                    for r in 0..rows {
                        for (k, col) in group.iter().enumerate() {
                            sc[k] = score(col[r], i + k);
                        }
                        order.clear();
                        order.extend(0..p.m);
                        order.sort_by(|&a, &b| sc[a].total_cmp(&sc[b]));
                        for c in order[..p.m - p.n].iter().map(|k| i + k) {
                            pm[c * rows + r] = true;
                        }
                    }
                }
            }
            let d = diag[i1 + i];
            let col = w1.col_as_slice_mut(i);
            let e = err.col_as_slice_mut(i);
            for r in 0..rows {
                let q = if pm[i * rows + r] { 0.0 } else { col[r] };
                e[r] = (col[r] - q) / d;
                col[r] = q;
            }
            if i + 1 < count {
                // The columns still to come in the block absorb the error (rank-1 update).
                matmul(
                    w1.submatrix_mut(0, i + 1, rows, count - i - 1),
                    Accum::Add,
                    err.submatrix(0, i, rows, 1),
                    u.submatrix(i1 + i, i1 + i + 1, 1, count - i - 1),
                    -1.0,
                    Par::Seq,
                );
            }
        }
        w.submatrix_mut(0, i1, rows, count).copy_from(&w1);
        if i2 < cols {
            matmul(
                w.submatrix_mut(0, i2, rows, cols - i2),
                Accum::Add,
                err.submatrix(0, 0, rows, count),
                u.submatrix(i1, i2, count, cols - i2),
                -1.0,
                faer::get_global_parallelism(),
            );
        }
    }
    for c in 0..cols {
        for (r, v) in w.col_as_slice(c).iter().enumerate() {
            weight[r * cols + c] = *v as f32;
        }
    }
    Ok(())
}

/// A linear map that [`prune_sequentially`] visits: its layer, its module (as
/// [`Site::modules`] names it) and the site whose input feeds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub layer: usize,
    pub module: &'static str,
    pub site: Site,
}

/// Prunes one target from its input's Hessian, returning its new `[out, in]` weights.
pub type PruneOne<'a, E> = dyn FnMut(Target, &Hessian) -> Result<Vec<f32>, E> + 'a;

/// SparseGPT's sequential pass over an encoder: layer by layer, the Hessian of each site's
/// input is accumulated over the real tokens of `batches` (input ids, attention mask, token type ids) as they come
/// out of the layers already pruned; `prune` turns each of the layer's targets and its Hessian
/// into the new weight (`[out, in]`), which is set in `enc`; then the batches go on through the
/// pruned layer. `layer_done(l)` follows each layer up to the last one with a target.
pub fn prune_sequentially<E: From<ModelError>>(
    enc: &mut Encoder,
    batches: &[Batch],
    targets: &[Target],
    prune: &mut PruneOne<'_, E>,
    layer_done: &mut dyn FnMut(usize) -> Result<(), E>,
) -> Result<(), E> {
    let Some(last) = targets.iter().map(|t| t.layer).max() else { return Ok(()) };
    let mut inputs = batches.iter().map(|b| enc.calibration_input(b)).collect::<Result<Vec<_>, _>>()?;
    let hidden = enc.config.hidden;
    for l in 0..=last {
        let chosen: Vec<Target> = targets.iter().filter(|t| t.layer == l).copied().collect();
        if !chosen.is_empty() {
            let mut hessians: Vec<(Site, Option<Hessian>)> = Vec::new();
            for t in &chosen {
                if !hessians.iter().any(|(s, _)| *s == t.site) {
                    hessians.push((t.site, None));
                }
            }
            for (x, seqs) in &inputs {
                let rows = x.len() / hidden.max(1);
                enc.layer_forward_observed(l, x, seqs, &mut |site, input| {
                    if let Some((_, h)) = hessians.iter_mut().find(|(s, _)| *s == site) {
                        h.get_or_insert_with(|| Hessian::new(input.len() / rows.max(1))).add_rows(input)?;
                    }
                    Ok(())
                })?;
            }
            for t in chosen {
                let h = hessians.iter().find(|(s, _)| *s == t.site).and_then(|(_, h)| h.as_ref());
                let h = h.ok_or_else(|| {
                    ModelError::Invalid(format!("no calibration input reached layer {l}'s {}", t.module))
                })?;
                let w = prune(t, h)?;
                enc.set_weight(l, t.module, &w)?;
            }
        }
        if l < last {
            for (x, seqs) in inputs.iter_mut() {
                *x = enc.layer_forward_observed(l, x, seqs, &mut |_, _| Ok(()))?;
            }
        }
        layer_done(l)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A deterministic pseudo-random stream in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Correlated inputs (what makes OBS worth it): x = z A with a random mixing matrix.
    fn inputs(tokens: usize, cols: usize) -> Tensor {
        let z = Tensor::from_vec(noise(1, tokens * cols), (1, tokens, cols), &Device::Cpu).unwrap();
        let a = Tensor::from_vec(noise(2, cols * cols), (cols, cols), &Device::Cpu).unwrap();
        z.broadcast_matmul(&a).unwrap()
    }

    fn rel_error(x: &Tensor, w: &[f32], w_hat: &[f32], cols: usize) -> f64 {
        let rows = w.len() / cols;
        let x = x.squeeze(0).unwrap();
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (rows, cols), &Device::Cpu).unwrap();
        let y = x.matmul(&t(w).t().unwrap()).unwrap();
        let diff: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
        let e = x.matmul(&t(&diff).t().unwrap()).unwrap();
        let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        (n(&e) / n(&y)).sqrt()
    }

    #[test]
    fn upper_factor_times_itself_is_the_inverse() {
        let n = 7;
        let a = Mat::from_fn(n, n, |i, j| ((i * 3 + j * 5) % 11) as f64 / 11.0);
        let h = &a * a.transpose() + Mat::<f64>::identity(n, n);
        let u = upper_factor_of_inverse(&h).unwrap();
        let prod = u.transpose() * &u * &h;
        for i in 0..n {
            for j in 0..n {
                assert!(j >= i || u[(i, j)] == 0.0);
                assert!((prod[(i, j)] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10, "{i} {j} {}", prod[(i, j)]);
            }
        }
    }

    #[test]
    fn hessian_sums_the_rows_products() {
        let mut h = Hessian::new(2);
        h.add_rows(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        h.add_rows(&[0.0, 0.0]).unwrap();
        assert_eq!(h.tokens(), 3);
        assert_eq!(h.values().unwrap(), vec![10.0, 14.0, 14.0, 20.0]);
        assert!(h.add_rows(&[1.0, 2.0, 3.0]).is_err());
    }

    #[test]
    fn reaches_the_sparsity_and_beats_magnitude_on_correlated_inputs() {
        let (rows, cols) = (48, 256);
        let x = inputs(1024, cols);
        let mut h = Hessian::new(cols);
        h.add_rows(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
        let w = noise(3, rows * cols);
        let mut sg = w.clone();
        prune(&mut sg, cols, &h, Rule::Unstructured(0.5), Options::default()).unwrap();
        assert_eq!(sg.iter().filter(|v| **v == 0.0).count(), rows * cols / 2);
        // Magnitude within each row at the same sparsity.
        let mut mag = w.clone();
        for row in mag.chunks_exact_mut(cols) {
            let mut idx: Vec<usize> = (0..cols).collect();
            idx.sort_by(|&a, &b| row[a].abs().total_cmp(&row[b].abs()));
            for &j in &idx[..cols / 2] {
                row[j] = 0.0;
            }
        }
        let (e_sg, e_mag) = (rel_error(&x, &w, &sg, cols), rel_error(&x, &w, &mag, cols));
        assert!(e_sg < 0.8 * e_mag, "sparsegpt {e_sg} vs magnitude {e_mag}");
    }

    #[test]
    fn n_m_groups_hold_at_most_n_nonzeros() {
        let (rows, cols) = (16, 96);
        let x = inputs(256, cols);
        let mut h = Hessian::new(cols);
        h.add_rows(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
        for (n, m) in [(2, 4), (1, 4), (4, 8), (3, 6)] {
            let mut w = noise(4, rows * cols);
            // Block 64 is not a multiple of 6: groups must still line up with multiples of M.
            prune(&mut w, cols, &h, Rule::NM(NmPattern { n, m }), Options { block: 64, damp: 0.01 }).unwrap();
            for g in w.chunks_exact(m) {
                assert_eq!(g.iter().filter(|v| **v != 0.0).count(), n, "{n}:{m}");
            }
        }
        let mut w = noise(4, rows * cols);
        assert!(prune(&mut w, cols, &h, Rule::NM(NmPattern { n: 2, m: 5 }), Options::default())
            .unwrap_err()
            .contains("multiple of M"));
    }

    #[test]
    fn zero_sparsity_keeps_the_weights_and_dead_inputs_are_dropped() {
        let (rows, cols) = (4, 8);
        let mut x = inputs(64, cols).squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for row in &mut x {
            row[3] = 0.0;
        }
        let x = Tensor::new(x, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mut h = Hessian::new(cols);
        h.add_rows(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
        let w = noise(5, rows * cols);
        let mut out = w.clone();
        prune(&mut out, cols, &h, Rule::Unstructured(0.0), Options::default()).unwrap();
        for (r, (a, b)) in w.chunks_exact(cols).zip(out.chunks_exact(cols)).enumerate() {
            assert_eq!(b[3], 0.0);
            for c in (0..cols).filter(|c| *c != 3) {
                assert!((a[c] - b[c]).abs() < 1e-6, "row {r} col {c}");
            }
        }
        assert!(prune(&mut out, 5, &h, Rule::Unstructured(0.5), Options::default()).is_err());
    }
}
