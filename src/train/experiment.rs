//! The pieces of a prune-and-recover experiment on a GLUE task, as plain functions: features
//! and targets from parsed examples, evaluation with the task's GLUE metrics and per-example
//! predictions, and one-shot pruning of the trainable model's encoder weights (magnitude,
//! first-order Taylor, movement; unstructured or N:M) with the masks that recovery keeps.

use super::features;
use super::gradual::{select, Criterion, Scores};
use super::net::Net;
use super::trainer::{predict, Example, Masks, Target};
use crate::data::{self, Label, Task};
use crate::engine::heads::HeadKind;
use crate::engine::magnitude::{NmPattern, Scope};
use crate::engine::model::ModelError;
use crate::metrics;
use std::collections::BTreeMap;

/// The head a GLUE task needs.
pub fn head_kind(task: Task) -> Option<HeadKind> {
    match task {
        Task::Squad => Some(HeadKind::QuestionAnswering),
        Task::Stsb => Some(HeadKind::Regression),
        t => t.label_names().map(|l| HeadKind::Classification(l.len())),
    }
}

/// Training/evaluation examples of a classification or regression task: tokenized with the
/// model's tokenizer (truncated to `max_len`), with their targets. Unlabelled rows are refused.
pub fn examples(tok: &tokenizers::Tokenizer, rows: &[data::Example], max_len: usize) -> Result<Vec<Example>, String> {
    let enc = features::encode(tok, rows, max_len)?;
    rows.iter()
        .zip(enc)
        .map(|(r, e)| {
            let target = match r.label {
                Some(Label::Class(c)) => Target::Class(c),
                Some(Label::Score(s)) => Target::Score(s as f32),
                None => return Err(format!("line {}: the example has no label", r.line)),
            };
            Ok(Example { ids: e.ids, type_ids: e.type_ids, target })
        })
        .collect()
}

/// One evaluation: the task's metrics (GLUE names: `accuracy`, `f1`, `matthews`, `pearson`,
/// `spearman`) and a prediction per example (class index or score).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub metrics: BTreeMap<String, f64>,
    pub predictions: Vec<f64>,
}

/// The task's metrics of predictions against gold targets.
pub fn score(task: Task, pred: &[f64], gold: &[Target]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    if task == Task::Stsb {
        let g: Vec<f64> = gold.iter().map(|t| if let Target::Score(s) = t { f64::from(*s) } else { f64::NAN }).collect();
        m.insert("pearson".into(), metrics::pearson(pred, &g));
        m.insert("spearman".into(), metrics::spearman(pred, &g));
        return m;
    }
    let p: Vec<i64> = pred.iter().map(|v| *v as i64).collect();
    let g: Vec<i64> = gold.iter().map(|t| if let Target::Class(c) = t { *c as i64 } else { -1 }).collect();
    m.insert("accuracy".into(), metrics::accuracy(&p, &g));
    match task {
        Task::Cola => drop(m.insert("matthews".into(), metrics::matthews(&p, &g))),
        Task::Mrpc | Task::Qqp => drop(m.insert("f1".into(), metrics::f1_positive(&p, &g))),
        _ => {}
    }
    m
}

/// Evaluates `net` on labelled examples.
pub fn evaluate(net: &Net, task: Task, data: &[Example], batch: usize) -> Result<Evaluation, ModelError> {
    let logits = predict(net, data, batch)?;
    let predictions: Vec<f64> = logits
        .iter()
        .map(|l| match net.kind {
            HeadKind::Regression => f64::from(l[0]),
            _ => l.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, v)| if *v > best.1 { (i, *v) } else { best }).0 as f64,
        })
        .collect();
    let gold: Vec<Target> = data.iter().map(|e| e.target).collect();
    Ok(Evaluation { metrics: score(task, &predictions, &gold), predictions })
}

/// Document stride of SQuAD windows for a maximum length (Hugging Face's 128 at 384 tokens).
pub fn squad_stride(max_len: usize) -> usize {
    (max_len / 3).min(128)
}

/// SQuAD training examples: every window of every question with an answer, labelled with the
/// first gold answer's tokens (or `[CLS]` when the window does not hold it).
pub fn squad_train_examples(tok: &tokenizers::Tokenizer, qs: &[data::SquadQuestion], max_len: usize) -> Result<Vec<Example>, String> {
    let mut out = Vec::new();
    for q in qs.iter().filter(|q| !q.answers.is_empty()) {
        let (start, text) = &q.answers[0];
        let ws = super::squad::windows(tok, &q.question, &q.context, Some((*start, text)), max_len, squad_stride(max_len)).map_err(|e| format!("question {}: {e}", q.id))?;
        for w in ws {
            let (s, e) = w.label.unwrap_or((0, 0));
            out.push(Example { ids: w.input_ids, type_ids: w.type_ids, target: Target::Span(s, e) });
        }
    }
    Ok(out)
}

/// A SQuAD evaluation: `exact_match` and `f1` (percent, SQuAD v1.1) and the answer per
/// question.
pub fn squad_evaluate(net: &Net, tok: &tokenizers::Tokenizer, qs: &[data::SquadQuestion], max_len: usize, batch: usize) -> Result<(BTreeMap<String, f64>, Vec<String>), String> {
    let mut windows = Vec::new();
    let mut examples = Vec::new();
    for q in qs {
        let ws = super::squad::windows(tok, &q.question, &q.context, None, max_len, squad_stride(max_len)).map_err(|e| format!("question {}: {e}", q.id))?;
        for w in &ws {
            examples.push(Example { ids: w.input_ids.clone(), type_ids: w.type_ids.clone(), target: Target::Span(0, 0) });
        }
        windows.push(ws);
    }
    let logits = predict(net, &examples, batch).map_err(|e| e.to_string())?;
    let mut next = 0;
    let mut answers = Vec::with_capacity(qs.len());
    let mut predictions = std::collections::HashMap::new();
    for (q, ws) in qs.iter().zip(&windows) {
        let rows = &logits[next..next + ws.len()];
        next += ws.len();
        let starts: Vec<Vec<f32>> = rows.iter().map(|r| r.iter().step_by(2).copied().collect()).collect();
        let ends: Vec<Vec<f32>> = rows.iter().map(|r| r.iter().skip(1).step_by(2).copied().collect()).collect();
        let a = super::squad::decode(&q.context, ws, &starts, &ends, 20, 30);
        predictions.insert(q.id.clone(), a.clone());
        answers.push(a);
    }
    let gold: Vec<(String, Vec<String>)> = qs.iter().map(|q| (q.id.clone(), q.answers.iter().map(|a| a.1.clone()).collect())).collect();
    let (em, f1) = metrics::squad(&gold, &predictions);
    let mut m = BTreeMap::new();
    m.insert("exact_match".to_string(), em);
    m.insert("f1".to_string(), f1);
    Ok((m, answers))
}

/// The encoder's linear weights (query, key, value, attention output, FFN in and out of every
/// layer): the default pruning targets, as parameter indices.
pub fn linear_targets(net: &Net) -> Vec<usize> {
    let names = net.config.family.layer_names();
    let modules = [names.query, names.key, names.value, names.attn_out, names.ffn_in, names.ffn_out];
    net.params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.shape.len() == 2 && modules.iter().any(|m| p.name.ends_with(&format!(".{m}.weight"))) && (p.name.starts_with("encoder.") || p.name.starts_with("transformer.")))
        .map(|(i, _)| i)
        .collect()
}

/// How one-shot pruning chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Unstructured { sparsity: f64, scope: Scope },
    NM(NmPattern),
}

/// Keep flags with at most `n` of every `m` consecutive weights along the input dimension
/// (rows of `cols`), the highest scores kept; ties to the lower index.
pub fn nm_keep(scores: &[f32], cols: usize, p: NmPattern) -> Vec<bool> {
    let mut keep = vec![false; scores.len()];
    let mut order: Vec<usize> = Vec::with_capacity(p.m);
    for (r, row) in scores.chunks_exact(cols).enumerate() {
        for g in (0..cols).step_by(p.m) {
            let end = (g + p.m).min(cols);
            order.clear();
            order.extend(g..end);
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for &j in order.iter().take(p.n) {
                keep[r * cols + j] = true;
            }
        }
    }
    keep
}

/// Prunes the `targets` of `net` by `scores` (one per target) and returns the masks to lock.
pub fn prune_by_scores(net: &mut Net, targets: &[usize], scores: &[Vec<f32>], shape: Shape) -> Masks {
    let mut masks = Masks::none(net);
    match shape {
        Shape::Unstructured { sparsity, scope } => {
            let keep = select(scores, &vec![None; targets.len()], sparsity, scope);
            for (&i, k) in targets.iter().zip(keep) {
                masks.0[i] = Some(k);
            }
        }
        Shape::NM(p) => {
            for (&i, s) in targets.iter().zip(scores) {
                let cols = net.params[i].shape[1];
                masks.0[i] = Some(nm_keep(s, cols, p));
            }
        }
    }
    masks.apply(net);
    masks
}

/// One-shot pruning by a criterion: magnitude needs nothing else; Taylor and movement
/// accumulate their scores over one pass of `data` (eval mode, no update).
pub fn prune_one_shot(net: &mut Net, criterion: Criterion, data: &[Example], batch: usize, shape: Shape) -> Result<Masks, ModelError> {
    let targets = linear_targets(net);
    let mut scores = Scores::new(net, targets.clone(), criterion);
    if criterion != Criterion::Magnitude {
        super::gradual::gradient_pass(net, data, batch, Some(&mut scores))?;
    }
    let current = scores.current(net);
    Ok(prune_by_scores(net, &targets, &current, shape))
}

/// Fraction of zeros over the targets.
pub fn sparsity_of(net: &Net, targets: &[usize]) -> f64 {
    let (z, n) = targets.iter().fold((0usize, 0usize), |(z, n), &i| (z + net.params[i].value.iter().filter(|v| **v == 0.0).count(), n + net.params[i].value.len()));
    if n == 0 {
        0.0
    } else {
        z as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nm_keeps_the_largest_n_of_every_m() {
        let s = [1.0, 4.0, 3.0, 2.0, 0.0, 0.0, 5.0, 0.0];
        assert_eq!(nm_keep(&s, 8, NmPattern { n: 2, m: 4 }), vec![false, true, true, false, true, false, true, false]);
    }

    #[test]
    fn metrics_by_task() {
        let gold = [Target::Class(1), Target::Class(0), Target::Class(1), Target::Class(0)];
        let m = score(Task::Mrpc, &[1.0, 0.0, 0.0, 0.0], &gold);
        assert_eq!(m["accuracy"], 0.75);
        assert!((m["f1"] - 2.0 / 3.0).abs() < 1e-12);
        assert!(score(Task::Cola, &[1.0, 0.0, 1.0, 0.0], &gold)["matthews"] > 0.99);
        let s = score(Task::Stsb, &[0.1, 0.2, 0.3], &[Target::Score(1.0), Target::Score(2.0), Target::Score(3.5)]);
        assert!((s["spearman"] - 1.0).abs() < 1e-12);
        assert!(s["pearson"] > 0.98);
    }
}
