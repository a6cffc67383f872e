//! Wanda (Sun et al. 2023): weights scored by |W_ij| · ‖X_j‖₂, where ‖X_j‖₂ is the norm of input
//! feature j over the calibration tokens, compared within each output row. Unstructured (the
//! lowest `floor(in × sparsity)` of every row, as the paper's code does) or N:M.

use super::NmPattern;
use crate::engine::model::{Batch, Encoder, ModelError};
use candle_core::DType;
use std::collections::HashMap;

/// ‖X_j‖₂ over the non-padding tokens of every batch, for the input of every encoder linear map,
/// by canonical weight name (e.g. `encoder.layer.0.attention.self.query.weight`).
/// `seen(n)` follows each batch (n batches done).
pub fn input_norms<E: From<ModelError>>(
    enc: &Encoder,
    batches: &[Batch],
    seen: &mut dyn FnMut(usize) -> std::result::Result<(), E>,
) -> std::result::Result<HashMap<String, Vec<f64>>, E> {
    let family = enc.config.family;
    let mut sums: HashMap<String, Vec<f64>> = HashMap::new();
    for (i, batch) in batches.iter().enumerate() {
        let tokens = real_tokens(batch).map_err(ModelError::from)?;
        enc.forward_observed(batch, &mut |layer, site, x| {
            let features = x.len() / tokens.max(1);
            let mut sq = vec![0f64; features];
            for row in x.chunks_exact(features.max(1)) {
                sq.iter_mut().zip(row).for_each(|(a, v)| *a += f64::from(*v) * f64::from(*v));
            }
            for module in site.modules(family) {
                let name = format!("{}{module}.weight", family.layer_prefix(layer));
                let acc = sums.entry(name).or_insert_with(|| vec![0.0; sq.len()]);
                acc.iter_mut().zip(&sq).for_each(|(a, b)| *a += b);
            }
            Ok(())
        })?;
        seen(i + 1)?;
    }
    Ok(sums.into_iter().map(|(k, v)| (k, v.into_iter().map(f64::sqrt).collect())).collect())
}

/// The real (non-padding) tokens of a batch: the rows [`Encoder::forward_observed`] shows.
pub fn real_tokens((_, mask, _): &Batch) -> candle_core::Result<usize> {
    Ok(mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().filter(|m| **m != 0.0).count())
}

/// The Wanda mask (true = prune) of a row-major `[out, in]` weight.
pub fn mask(weight: &[f32], cols: usize, norms: &[f64], rule: Rule) -> Vec<bool> {
    assert_eq!(norms.len(), cols);
    let mut out = vec![false; weight.len()];
    let mut order: Vec<usize> = Vec::with_capacity(cols);
    for (r, row) in weight.chunks_exact(cols).enumerate() {
        let score: Vec<f64> = row.iter().zip(norms).map(|(w, n)| (w.abs() as f64) * n).collect();
        let mut prune_group = |lo: usize, hi: usize, count: usize| {
            order.clear();
            order.extend(lo..hi);
            // Stable: equal scores go in index order, as torch.sort(stable=True) does.
            order.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
            for &j in &order[..count] {
                out[r * cols + j] = true;
            }
        };
        match rule {
            Rule::Unstructured(s) => prune_group(0, cols, (cols as f64 * s) as usize),
            Rule::NM(p) => {
                for g in (0..cols).step_by(p.m) {
                    prune_group(g, g + p.m, p.m - p.n);
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
pub enum Rule {
    Unstructured(f64),
    NM(NmPattern),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::TinyModel;
    use candle_core::{Device, Tensor};

    #[test]
    fn norms_cover_every_linear_and_ignore_padding() {
        let m = TinyModel::default();
        let enc = Encoder::from_files(m.config_json().as_bytes(), &m.safetensors(), &Device::Cpu).unwrap();
        let ids = Tensor::from_vec((0..16u32).map(|i| 5 + i % 50).collect::<Vec<_>>(), (2, 8), &Device::Cpu).unwrap();
        let full = Tensor::ones((2, 8), DType::U32, &Device::Cpu).unwrap();
        let tt = ids.zeros_like().unwrap();
        let mut seen = Vec::new();
        let norms = input_norms::<ModelError>(&enc, &[(ids.clone(), full.clone(), tt.clone())], &mut |n| {
            seen.push(n);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [1]);
        assert_eq!(norms.len(), 12);
        assert_eq!(norms["encoder.layer.1.output.dense.weight"].len(), 64);
        assert!(norms.values().all(|v| v.iter().all(|x| *x > 0.0)));
        // Padding tokens do not count: padding half of row 1 changes the norms.
        let half =
            Tensor::from_vec([vec![1u32; 8], vec![1, 1, 1, 1, 0, 0, 0, 0]].concat(), (2, 8), &Device::Cpu).unwrap();
        let n2 = input_norms::<ModelError>(&enc, &[(ids, half, tt)], &mut |_| Ok(())).unwrap();
        assert!(
            n2["encoder.layer.0.attention.self.query.weight"][0]
                < norms["encoder.layer.0.attention.self.query.weight"][0]
        );
    }

    #[test]
    fn mask_follows_the_rule() {
        let w = vec![1.0, -2.0, 3.0, -4.0, 0.5, 0.5, 0.5, 0.5];
        let norms = vec![4.0, 1.0, 1.0, 0.1];
        // Row 0 scores 4, 2, 3, 0.4; row 1 scores 2, 0.5, 0.5, 0.05.
        assert_eq!(
            mask(&w, 4, &norms, Rule::Unstructured(0.5)),
            vec![false, true, false, true, false, true, false, true]
        );
        let nm = Rule::NM(NmPattern { n: 1, m: 2 });
        assert_eq!(mask(&w, 4, &norms, nm), vec![false, true, false, true, false, true, false, true]);
    }
}
