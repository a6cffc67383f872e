//! Language modelling on a decoder: the evaluation text cut into windows, and each window's
//! negative log-likelihood under the model, from which perplexity is
//! `exp(total NLL / predicted tokens)` (`metrics::perplexity`).

use super::loss::token_nll;
use crate::engine::cpu::fused::Seq;
use crate::engine::model::decoder::Decoder;
use crate::engine::model::ModelError;

/// Rows (tokens) per forward pass when scoring windows.
const ROWS: usize = 2048;

/// Consecutive non-overlapping windows of `len` tokens from the start of `ids`; a last partial
/// window is dropped, and at most `max` windows are taken.
pub fn eval_windows(ids: &[u32], len: usize, max: Option<usize>) -> Vec<&[u32]> {
    if len == 0 {
        return Vec::new();
    }
    ids.chunks_exact(len).take(max.unwrap_or(usize::MAX)).collect()
}

/// The NLL of each window: the sum over its positions 1.. of −log p(token | the window's
/// tokens before it) (a window of n tokens predicts n − 1). `done(k)` follows each pass.
pub fn window_nlls<E: From<ModelError>>(
    model: &Decoder,
    windows: &[&[u32]],
    done: &mut dyn FnMut(usize) -> Result<(), E>,
) -> Result<Vec<f64>, E> {
    let vocab = model.config.vocab;
    let mut out = Vec::with_capacity(windows.len());
    let mut start = 0;
    while start < windows.len() {
        let mut end = start + 1;
        let mut rows = windows[start].len();
        while end < windows.len() && rows + windows[end].len() <= ROWS {
            rows += windows[end].len();
            end += 1;
        }
        let group = &windows[start..end];
        let lengths: Vec<usize> = group.iter().map(|w| w.len()).collect();
        let ids: Vec<u32> = group.iter().flat_map(|w| w.iter().copied()).collect();
        let logits = model.forward(&ids, &Seq::packed(&lengths))?.logits;
        let mut row = 0;
        for w in group {
            let nll: f64 = (0..w.len().saturating_sub(1))
                .map(|i| token_nll(&logits[(row + i) * vocab..(row + i + 1) * vocab], w[i + 1] as usize))
                .sum();
            out.push(nll);
            row += w.len();
        }
        start = end;
        done(end)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_consecutive_and_the_partial_one_is_dropped() {
        let ids: Vec<u32> = (0..25).collect();
        let w = eval_windows(&ids, 8, None);
        assert_eq!(w, vec![&ids[0..8], &ids[8..16], &ids[16..24]]);
        assert_eq!(eval_windows(&ids, 8, Some(2)).len(), 2);
        assert!(eval_windows(&ids, 30, None).is_empty());
    }

    #[test]
    fn a_window_scores_the_same_alone_and_packed_with_others() {
        use crate::engine::testing::TinyDecoder;
        let m = TinyDecoder::default();
        let model = Decoder::from_files(m.config_json().as_bytes(), &m.safetensors()).unwrap();
        let ids: Vec<u32> = (0..40).map(|i| (i * 17 + 3) % 64).collect();
        let windows = eval_windows(&ids, 10, None);
        let together = window_nlls::<ModelError>(&model, &windows, &mut |_| Ok(())).unwrap();
        for (w, nll) in windows.iter().zip(&together) {
            let alone = window_nlls::<ModelError>(&model, &[w], &mut |_| Ok(())).unwrap()[0];
            assert!((alone - nll).abs() < 1e-9 * nll.abs().max(1.0), "{alone} vs {nll}");
            // A random model is close to uniform over its 64 tokens: about ln 64 per prediction.
            let per_token = nll / 9.0;
            assert!((per_token - 64f64.ln()).abs() < 1.5, "{per_token}");
        }
    }
}
