//! Classification and regression features: each example tokenized with the model's own
//! tokenizer (a sentence or a pair, with the model's special tokens), truncated to `max_len` the
//! way Hugging Face's `tokenizer(a, b, truncation=True, max_length=...)` does (longest first),
//! never padded here: batches pad to their own longest (`super::batch::pad`).

use crate::data::Example;
use tokenizers::{Tokenizer, TruncationDirection};

/// Token ids and token type ids of one example.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

pub fn encode(tok: &Tokenizer, examples: &[Example], max_len: usize) -> Result<Vec<Encoded>, String> {
    let texts: Vec<(&str, Option<&str>)> = examples.iter().map(|e| (e.text.as_str(), e.text_pair.as_deref())).collect();
    encode_texts(tok, &texts, max_len)
}

/// [`encode`] over plain sentences and pairs (a prune job's calibration text).
pub fn encode_texts(tok: &Tokenizer, texts: &[(&str, Option<&str>)], max_len: usize) -> Result<Vec<Encoded>, String> {
    use tokenizers::PostProcessor;
    let mut plain = tok.clone();
    plain.with_truncation(None).map_err(|e| e.to_string())?;
    plain.with_padding(None);
    let added = |pair: bool| plain.get_post_processor().map_or(0, |p| p.added_tokens(pair));
    let mut out = Vec::with_capacity(texts.len());
    for &(text, pair) in texts {
        let mut a = plain.encode(text, false).map_err(|e| e.to_string())?;
        let mut b = pair.map(|t| plain.encode(t, false)).transpose().map_err(|e| e.to_string())?;
        let budget = max_len.saturating_sub(added(b.is_some()));
        // Longest first, as the reference tokenizer (Python `tokenizers`, which `transformers`
        // calls) computes it: the shorter sequence keeps what it has, up to half the budget;
        // when both must be cut they get half each, the originally longer one the odd token.
        // (The `tokenizers` crate we link splits that odd token the other way.)
        let (mut n1, mut n2) = (a.len(), b.as_ref().map_or(0, |b| b.len()));
        if b.is_none() {
            n1 = n1.min(budget);
        } else if n1 + n2 > budget {
            let swap = n1 > n2;
            let (mut s, mut l) = if swap { (n2, n1) } else { (n1, n2) };
            l = if s > budget { s } else { l.min(s.max(budget - s)) };
            if s + l > budget {
                s = budget / 2;
                l = s + budget % 2;
            }
            (n1, n2) = if swap { (l, s) } else { (s, l) };
        }
        a.truncate(n1, 0, TruncationDirection::Right);
        if let Some(b) = b.as_mut() {
            b.truncate(n2, 0, TruncationDirection::Right);
        }
        let enc = plain.post_process(a, b, true).map_err(|e| e.to_string())?;
        out.push(Encoded { ids: enc.get_ids().to_vec(), type_ids: enc.get_type_ids().to_vec() });
    }
    Ok(out)
}
