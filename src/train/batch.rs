//! Batches for fine-tuning and evaluation: grouped by length so that padding stays small, and
//! padded to the longest sequence of each batch (never to a fixed length).

use crate::engine::model::Batch;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Training order as Hugging Face's `LengthGroupedSampler` builds it: the indices shuffled with
/// `seed`, cut into mega-batches of `50 × batch`, each sorted by length (longest first) and cut
/// into batches; the batch holding the longest example goes first (a memory peak is met at once,
/// not late in an epoch).
pub fn length_grouped(lengths: &[usize], batch: usize, seed: u64) -> Vec<Vec<usize>> {
    assert!(batch > 0, "batch size 0");
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for mega in order.chunks(50 * batch) {
        let mut mega = mega.to_vec();
        mega.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
        batches.extend(mega.chunks(batch).map(<[usize]>::to_vec));
    }
    if let Some(longest) =
        batches.iter().position(|b| b.iter().any(|&i| Some(lengths[i]) == lengths.iter().max().copied()))
    {
        batches.swap(0, longest);
    }
    batches
}

/// Training order as Hugging Face's default `RandomSampler`: the indices shuffled with `seed`,
/// cut into batches in that order.
pub fn shuffled(n: usize, batch: usize, seed: u64) -> Vec<Vec<usize>> {
    assert!(batch > 0, "batch size 0");
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    order.chunks(batch).map(<[usize]>::to_vec).collect()
}

/// Evaluation order: consecutive batches of examples sorted by length (stable), so the results
/// can be put back in file order by index.
pub fn by_length(lengths: &[usize], batch: usize) -> Vec<Vec<usize>> {
    assert!(batch > 0, "batch size 0");
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order.chunks(batch).map(<[usize]>::to_vec).collect()
}

/// A padded batch: row-major `[rows, len]` token ids, attention mask and token type ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Padded {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<u32>,
    pub mask: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// Pads `(ids, type_ids)` sequences with `pad_id` to the longest of them.
pub fn pad(seqs: &[(&[u32], &[u32])], pad_id: u32) -> Padded {
    let len = seqs.iter().map(|(i, _)| i.len()).max().unwrap_or(0);
    let mut p = Padded {
        rows: seqs.len(),
        len,
        ids: Vec::with_capacity(seqs.len() * len),
        mask: Vec::with_capacity(seqs.len() * len),
        type_ids: Vec::with_capacity(seqs.len() * len),
    };
    for (ids, tt) in seqs {
        assert_eq!(ids.len(), tt.len(), "ids and type ids differ in length");
        p.ids.extend_from_slice(ids);
        p.ids.extend(std::iter::repeat_n(pad_id, len - ids.len()));
        p.mask.extend(std::iter::repeat_n(1, ids.len()));
        p.mask.extend(std::iter::repeat_n(0, len - ids.len()));
        p.type_ids.extend_from_slice(tt);
        p.type_ids.extend(std::iter::repeat_n(0, len - ids.len()));
    }
    p
}

/// The sequences in consecutive batches of `size`, each padded with `pad_id` to its longest, as
/// the encoder takes them: the calibration inputs of Wanda and SparseGPT, from a prune job's text
/// and an experiment's examples alike.
/// A decoder's calibration text as the SparseGPT and Wanda papers cut it: `samples` windows of
/// `len` consecutive tokens of the tokenized text `ids`, each at an offset drawn uniformly from
/// those that fit (seeded, so a job is repeatable). Windows may overlap.
pub fn token_windows(ids: &[u32], samples: usize, len: usize, seed: u64) -> Result<Vec<&[u32]>, String> {
    use rand::Rng;
    if len == 0 || ids.len() < len {
        return Err(format!(
            "the calibration text holds {} tokens, fewer than one window of max_seq_len = {len}",
            ids.len()
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Ok((0..samples)
        .map(|_| {
            let at = rng.gen_range(0..=ids.len() - len);
            &ids[at..at + len]
        })
        .collect())
}

pub fn encoder_batches(seqs: &[(&[u32], &[u32])], size: usize, pad_id: u32) -> candle_core::Result<Vec<Batch>> {
    assert!(size > 0, "batch size 0");
    seqs.chunks(size)
        .map(|c| {
            let p = pad(c, pad_id);
            let t = |v: &[u32]| Tensor::from_slice(v, (p.rows, p.len), &Device::Cpu);
            Ok((t(&p.ids)?, t(&p.mask)?, t(&p.type_ids)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_grouping_covers_everything_once_and_keeps_padding_small() {
        let lengths: Vec<usize> = (0..1000).map(|i| 5 + (i * 37) % 120).collect();
        let batches = length_grouped(&lengths, 8, 42);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| b.len() <= 8));
        assert_eq!(batches.iter().filter(|b| b.len() < 8).count(), 0, "1000 = 125 × 8");
        assert!(batches[0].iter().any(|&i| lengths[i] == 124), "the longest example comes first");
        // Padding: tokens in padded batches vs real tokens, far below a random order's.
        let cost = |bs: &[Vec<usize>]| {
            bs.iter().map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap()).sum::<usize>() as f64
        };
        let real: usize = lengths.iter().sum();
        let random: Vec<Vec<usize>> = (0..1000).collect::<Vec<_>>().chunks(8).map(<[usize]>::to_vec).collect();
        assert!(cost(&batches) < 1.1 * real as f64, "{} vs {real}", cost(&batches));
        assert!(cost(&random) > 1.4 * real as f64);
        assert_eq!(batches, length_grouped(&lengths, 8, 42), "seeded");
        assert_ne!(batches, length_grouped(&lengths, 8, 43));
        let eval = by_length(&lengths, 16);
        assert_eq!(eval.iter().flatten().count(), 1000);
    }

    #[test]
    fn padding_reaches_the_longest_only() {
        let p = pad(&[(&[2, 7, 3], &[0, 0, 0]), (&[2, 3], &[0, 0])], 0);
        assert_eq!((p.rows, p.len), (2, 3));
        assert_eq!(p.ids, vec![2, 7, 3, 2, 3, 0]);
        assert_eq!(p.mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(p.type_ids, vec![0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn encoder_batches_cut_in_order_and_pad_each_to_its_own_longest() {
        let seqs: Vec<(Vec<u32>, Vec<u32>)> =
            vec![(vec![5, 6, 7], vec![0, 0, 1]), (vec![8], vec![0]), (vec![9, 10], vec![0, 1])];
        let refs: Vec<(&[u32], &[u32])> = seqs.iter().map(|(i, t)| (i.as_slice(), t.as_slice())).collect();
        let b = encoder_batches(&refs, 2, 1).unwrap();
        assert_eq!(b.len(), 2);
        let v = |t: &Tensor| t.to_vec2::<u32>().unwrap();
        assert_eq!(v(&b[0].0), [[5, 6, 7], [8, 1, 1]]);
        assert_eq!(v(&b[0].1), [[1, 1, 1], [1, 0, 0]]);
        assert_eq!(v(&b[0].2), [[0, 0, 1], [0, 0, 0]]);
        // The last batch holds the rest, padded to its own longest (2), not the first batch's.
        assert_eq!(v(&b[1].0), [[9, 10]]);
        assert_eq!(v(&b[1].1), [[1, 1]]);
    }

    #[test]
    fn token_windows_are_seeded_and_fit_the_text() {
        let ids: Vec<u32> = (0..100).collect();
        let w = token_windows(&ids, 16, 10, 3).unwrap();
        assert_eq!(w.len(), 16);
        for x in &w {
            assert_eq!(x.len(), 10);
            assert!(x.windows(2).all(|p| p[1] == p[0] + 1), "consecutive tokens");
        }
        assert_eq!(w, token_windows(&ids, 16, 10, 3).unwrap(), "the same seed, the same windows");
        assert_ne!(w, token_windows(&ids, 16, 10, 4).unwrap());
        let starts: std::collections::BTreeSet<u32> = w.iter().map(|x| x[0]).collect();
        assert!(starts.len() > 8, "offsets spread over the text: {starts:?}");
        assert_eq!(token_windows(&ids, 2, 100, 0).unwrap(), vec![&ids[..], &ids[..]]);
        assert!(token_windows(&ids, 2, 101, 0).unwrap_err().contains("100 tokens"));
    }
}
