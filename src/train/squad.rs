//! SQuAD v1.1 features and answers, as Hugging Face's `run_qa` builds and decodes them.
//!
//! A question and its context become one or more windows of at most `max_len` tokens
//! (`[CLS] question [SEP] context-part [SEP]`), consecutive windows sharing `stride` context
//! tokens, each context token keeping its character span in the context. For training, a window
//! that holds the whole answer labels its first and last tokens; one that does not labels
//! `[CLS]` (index 0). Decoding takes the `n_best` highest start and end logits of every window,
//! keeps spans inside the context, in order, at most `max_answer_len` tokens long, and answers
//! with the context characters of the best-scoring span (start + end logit) over all windows.

use tokenizers::{Tokenizer, TruncationDirection};

#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub input_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Per token: its character span `[start, end)` in the context, for context tokens only.
    pub context_spans: Vec<Option<(usize, usize)>>,
    /// Training label: the answer's first and last token, or (0, 0) (`[CLS]`) when this window
    /// does not hold the whole answer; `None` without an answer.
    pub label: Option<(usize, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tokenizing: {0}")]
    Tokenizer(String),
    #[error("max_len {max_len} leaves no room for context after the question ({question} tokens) and stride {stride}")]
    NoRoom { max_len: usize, question: usize, stride: usize },
}

/// The windows of one question. `answer`: the answer's first character in the context and its
/// text (training); `None` for evaluation.
pub fn windows(
    tok: &Tokenizer,
    question: &str,
    context: &str,
    answer: Option<(usize, &str)>,
    max_len: usize,
    stride: usize,
) -> Result<Vec<Window>, Error> {
    use tokenizers::PostProcessor;
    let terr = |e: tokenizers::Error| Error::Tokenizer(e.to_string());
    let mut plain = tok.clone();
    plain.with_truncation(None).map_err(terr)?;
    plain.with_padding(None);
    // The question whole, the context cut into overlapping windows, then the model's own
    // template (`[CLS] q [SEP] c [SEP]`, `<s> q </s></s> c </s>`, ...) around each pair. (The
    // tokenizer's own pair truncation with a stride returns only the first overflow in this
    // version of `tokenizers`; cutting the context alone returns every window.)
    let q = plain.encode_char_offsets(question, false).map_err(terr)?;
    let added = plain.get_post_processor().map_or(0, |p| p.added_tokens(true));
    let room = max_len.saturating_sub(q.len() + added);
    if room <= stride {
        return Err(Error::NoRoom { max_len, question: q.len(), stride });
    }
    let mut c = plain.encode_char_offsets(context, false).map_err(terr)?;
    c.truncate(room, stride, TruncationDirection::Right);
    let mut parts = vec![];
    let rest = c.take_overflowing();
    parts.push(c);
    parts.extend(rest);
    let all = parts
        .into_iter()
        .map(|part| plain.post_process(q.clone(), Some(part), true).map_err(terr))
        .collect::<Result<Vec<_>, _>>()?;
    let answer_span = answer.map(|(start, text)| (start, start + text.chars().count()));
    Ok(all
        .into_iter()
        .map(|e| {
            let seq = e.get_sequence_ids();
            let context_spans: Vec<Option<(usize, usize)>> =
                seq.iter().zip(e.get_offsets()).map(|(s, o)| (*s == Some(1)).then_some(*o)).collect();
            let label = answer_span.map(|(a, b)| {
                let first = context_spans.iter().position(Option::is_some);
                let last = context_spans.iter().rposition(Option::is_some);
                match (first, last) {
                    (Some(f), Some(l)) if context_spans[f].unwrap().0 <= a && context_spans[l].unwrap().1 >= b => {
                        // First token ending after the answer's start; last token starting before its end.
                        let s = (f..=l).find(|&i| context_spans[i].unwrap().1 > a).unwrap_or(f);
                        let t = (f..=l).rev().find(|&i| context_spans[i].unwrap().0 < b).unwrap_or(l);
                        (s, t.max(s))
                    }
                    _ => (0, 0),
                }
            });
            Window { input_ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec(), context_spans, label }
        })
        .collect())
}

/// The answer text for one question from its windows and their start/end logits (one row per
/// window, one value per token); empty when no window has a valid span.
pub fn decode(
    context: &str,
    windows: &[Window],
    start_logits: &[Vec<f32>],
    end_logits: &[Vec<f32>],
    n_best: usize,
    max_answer_len: usize,
) -> String {
    let mut best: Option<(f32, usize, usize)> = None;
    for ((w, sl), el) in windows.iter().zip(start_logits).zip(end_logits) {
        let top = |v: &[f32]| -> Vec<usize> {
            let mut idx: Vec<usize> = (0..v.len().min(w.context_spans.len())).collect();
            idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
            idx.truncate(n_best);
            idx
        };
        for &s in &top(sl) {
            for &e in &top(el) {
                let (Some((cs, _)), Some((_, ce))) = (w.context_spans[s], w.context_spans[e]) else { continue };
                if e < s || e - s + 1 > max_answer_len {
                    continue;
                }
                let score = sl[s] + el[e];
                if best.is_none_or(|(b, _, _)| score > b) {
                    best = Some((score, cs, ce));
                }
            }
        }
    }
    match best {
        Some((_, a, b)) => context.chars().skip(a).take(b - a).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::TinyModel;

    fn tokenizer() -> Tokenizer {
        let m = TinyModel::default();
        Tokenizer::from_bytes(m.tokenizer_json().as_bytes()).unwrap()
    }

    #[test]
    fn windows_overlap_cover_the_context_and_label_the_answer() {
        let tok = tokenizer();
        let words: Vec<String> = (0..40).map(|i| format!("w{}", 5 + i)).collect();
        let context = words.join(" ");
        // The answer "w20 w21" starts at the character where w20 does.
        let start = context.find("w20").unwrap();
        let ws = windows(&tok, "w7 w8", &context, Some((start, "w20 w21")), 16, 4).unwrap();
        assert!(ws.len() > 3);
        let mut seen = std::collections::BTreeSet::new();
        for (i, w) in ws.iter().enumerate() {
            assert!(w.input_ids.len() <= 16);
            assert_eq!(w.context_spans.len(), w.input_ids.len());
            let spans: Vec<(usize, usize)> = w.context_spans.iter().flatten().copied().collect();
            seen.extend(spans.iter().copied());
            if i > 0 {
                // The previous window's last 4 context tokens open this one.
                let prev: Vec<(usize, usize)> = ws[i - 1].context_spans.iter().flatten().copied().collect();
                assert_eq!(&prev[prev.len() - 4..], &spans[..4], "window {i}");
            }
            match w.label.unwrap() {
                (0, 0) => {
                    assert!(!spans.iter().any(|s| s.0 == start) || !spans.iter().any(|s| &context[s.0..s.1] == "w21"))
                }
                (s, e) => assert_eq!(&context[w.context_spans[s].unwrap().0..w.context_spans[e].unwrap().1], "w20 w21"),
            }
        }
        assert_eq!(seen.len(), 40, "every context word is in some window");
        assert!(ws.iter().any(|w| w.label.unwrap() != (0, 0)));
        assert!(matches!(windows(&tok, "w7 w8", &context, None, 8, 4), Err(Error::NoRoom { .. })));
    }

    #[test]
    fn decode_picks_the_best_valid_span_across_windows() {
        let tok = tokenizer();
        let context = (0..40).map(|i| format!("w{}", 5 + i)).collect::<Vec<_>>().join(" ");
        let ws = windows(&tok, "w7", &context, None, 16, 4).unwrap();
        let mut sl: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0; w.input_ids.len()]).collect();
        let mut el = sl.clone();
        // Window 2: a good span over its 3rd-5th context tokens; window 0: a better score on
        // [CLS] (not context) and a reversed span, both invalid.
        let ctx_idx =
            |w: &Window, n: usize| w.context_spans.iter().enumerate().filter(|(_, s)| s.is_some()).nth(n).unwrap().0;
        let (s, e) = (ctx_idx(&ws[2], 2), ctx_idx(&ws[2], 4));
        sl[2][s] = 5.0;
        el[2][e] = 5.0;
        sl[0][0] = 20.0;
        el[0][0] = 20.0;
        let (a, b) = (ctx_idx(&ws[0], 5), ctx_idx(&ws[0], 1));
        sl[0][a] = 9.0;
        el[0][b] = 9.0;
        let want = &context[ws[2].context_spans[s].unwrap().0..ws[2].context_spans[e].unwrap().1];
        assert_eq!(decode(&context, &ws, &sl, &el, 20, 30), want);
        assert_eq!(want.split(' ').count(), 3);
        // Too long for max_answer_len 2: the next best valid span wins instead.
        assert_ne!(decode(&context, &ws, &sl, &el, 20, 2), want);
        assert_eq!(decode(&context, &[], &[], &[], 20, 30), "");
    }
}
