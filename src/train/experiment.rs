//! The pieces of a prune-and-recover experiment on a GLUE task, as plain functions: features
//! and targets from parsed examples, evaluation with the task's GLUE metrics and per-example
//! predictions, and one-shot pruning of the trainable model's encoder weights (magnitude,
//! first-order Taylor, movement; unstructured or N:M) with the masks that recovery keeps.

use super::features;
use super::gradual::{Criterion, Scores};
use super::net::Net;
use super::trainer::{batch_of, predict, Example, Masks, Target};
use crate::data::{self, Label, Task};
use crate::engine::model::heads::HeadKind;
use crate::engine::model::{Batch, Encoder, ModelError};
use crate::engine::prune::calibrated::{self, Method};
use crate::engine::prune::structured::{self, unit_edits, UnitEdit, UnitPlan};
use crate::engine::prune::wanda::Rule;
use crate::engine::prune::{select, NmPattern, Scope};
use crate::metrics;
use candle_core::{Device, Tensor};
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
        let g: Vec<f64> =
            gold.iter().map(|t| if let Target::Score(s) = t { f64::from(*s) } else { f64::NAN }).collect();
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
            _ => {
                l.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, v)| if *v > best.1 { (i, *v) } else { best })
                    .0 as f64
            }
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
pub fn squad_train_examples(
    tok: &tokenizers::Tokenizer,
    qs: &[data::SquadQuestion],
    max_len: usize,
) -> Result<Vec<Example>, String> {
    let mut out = Vec::new();
    for q in qs.iter().filter(|q| !q.answers.is_empty()) {
        let (start, text) = &q.answers[0];
        let ws =
            super::squad::windows(tok, &q.question, &q.context, Some((*start, text)), max_len, squad_stride(max_len))
                .map_err(|e| format!("question {}: {e}", q.id))?;
        for w in ws {
            let (s, e) = w.label.unwrap_or((0, 0));
            out.push(Example { ids: w.input_ids, type_ids: w.type_ids, target: Target::Span(s, e) });
        }
    }
    Ok(out)
}

/// A SQuAD evaluation: `exact_match` and `f1` (percent, SQuAD v1.1) and the answer per
/// question.
pub fn squad_evaluate(
    net: &Net,
    tok: &tokenizers::Tokenizer,
    qs: &[data::SquadQuestion],
    max_len: usize,
    batch: usize,
) -> Result<(BTreeMap<String, f64>, Vec<String>), String> {
    let mut windows = Vec::new();
    let mut examples = Vec::new();
    for q in qs {
        let ws = super::squad::windows(tok, &q.question, &q.context, None, max_len, squad_stride(max_len))
            .map_err(|e| format!("question {}: {e}", q.id))?;
        for w in &ws {
            examples.push(Example {
                ids: w.input_ids.clone(),
                type_ids: w.type_ids.clone(),
                target: Target::Span(0, 0),
            });
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
    let gold: Vec<(String, Vec<String>)> =
        qs.iter().map(|q| (q.id.clone(), q.answers.iter().map(|a| a.1.clone()).collect())).collect();
    let (em, f1) = metrics::squad(&gold, &predictions);
    let mut m = BTreeMap::new();
    m.insert("exact_match".to_string(), em);
    m.insert("f1".to_string(), f1);
    Ok((m, answers))
}

pub use super::net::linear_targets;

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
            let keep = select::select(scores, &vec![None; targets.len()], sparsity, scope);
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
pub fn prune_one_shot(
    net: &mut Net,
    criterion: Criterion,
    data: &[Example],
    batch: usize,
    shape: Shape,
) -> Result<Masks, ModelError> {
    let targets = linear_targets(net);
    let mut scores = Scores::new(net, targets.clone(), criterion);
    if criterion != Criterion::Magnitude {
        super::gradual::gradient_pass(net, data, batch, Some(&mut scores))?;
    }
    let current = scores.current(net);
    Ok(prune_by_scores(net, &targets, &current, shape))
}

/// `(input_ids, attention_mask, token_type_ids)` batches of 8 examples, padded to their longest
/// (`batch::encoder_batches`, as the prune job batches its calibration text).
fn calibration_batches(net: &Net, calib: &[Example]) -> Result<Vec<Batch>, ModelError> {
    let seqs: Vec<(&[u32], &[u32])> = calib.iter().map(|e| (e.ids.as_slice(), e.type_ids.as_slice())).collect();
    Ok(super::batch::encoder_batches(&seqs, 8, net.config.pad_token_id)?)
}

/// Wanda or SparseGPT (`engine::prune::calibrated`, the code the prune job runs) over the net's
/// encoder linear weights, with the token ids of `calib` as calibration inputs. Returns the
/// masks that keep the pruned weights at zero during recovery.
pub fn prune_calibrated(net: &mut Net, method: Method, calib: &[Example], rule: Rule) -> Result<Masks, ModelError> {
    if calib.is_empty() {
        return Err(ModelError::Invalid("calibrated pruning needs at least one calibration example".into()));
    }
    let names: Vec<String> = linear_targets(net).into_iter().map(|i| net.params[i].name.clone()).collect();
    let batches = calibration_batches(net, calib)?;
    let (w, _) = net.to_weights()?;
    let mut enc = Encoder::load(net.config.clone(), &w)?;
    drop(w);
    calibrated::prune::<ModelError>(method, net, &mut enc, &batches, &names, rule, &mut |_| Ok(()))?;
    Ok(Masks::from_zeros(net, |n| names.iter().any(|t| t == n)))
}

/// The `count` layers with the lowest norm of all their linear weights (the engine's layer
/// score), sorted by index. Ties go to the lower index.
pub fn lowest_layers(net: &Net, count: usize) -> Result<Vec<usize>, ModelError> {
    let (w, _) = net.to_weights()?;
    let scores = structured::layer_norm_scores(&w, &net.config)?;
    Ok(select::lowest_units(&[scores], Some(count), None).remove(0))
}

/// `net` with the layers `removed` physically gone and the rest renumbered (the engine's
/// `remove_layers`), its head, dropout and packing kept.
pub fn without_layers(net: &Net, removed: &[usize]) -> Result<Net, ModelError> {
    let (w, head) = net.to_weights()?;
    let (w, cfg) = structured::remove_layers(&w, &net.config, removed);
    let mut out = Net::new(cfg, &w, &head, net.dropout)?;
    out.packing = net.packing;
    Ok(out)
}

/// The heads and FFN neurons a structurally pruned net has lost: a head whose attention-output
/// columns are all zero, a neuron whose FFN-output column is all zero (what the masks of
/// structured pruning keep at zero), read from the weights themselves.
pub fn removed_units(net: &Net) -> UnitPlan {
    let names = net.config.family.layer_names();
    let hd = net.config.head_dim;
    let mut plan = UnitPlan::default();
    for l in 0..net.config.layers.len() {
        let prefix = net.config.family.layer_prefix(l);
        let zero_cols = |module: &str, group: usize| -> Vec<usize> {
            let Some(i) = net.index_of(&format!("{prefix}{module}.weight")) else { return Vec::new() };
            let p = &net.params[i];
            let (rows, cols) = (p.shape[0], p.shape[1]);
            (0..cols / group)
                .filter(|u| {
                    (0..rows)
                        .all(|r| p.value[r * cols + u * group..r * cols + (u + 1) * group].iter().all(|v| *v == 0.0))
                })
                .collect()
        };
        plan.heads.push(zero_cols(names.attn_out, hd));
        plan.neurons.push(zero_cols(names.ffn_out, 1));
    }
    plan
}

pub use crate::engine::prune::structured::PerLayer;

/// The norm scores of every head (its query/key/value rows and attention-output columns) and
/// FFN neuron (its input row and output column), per layer.
pub fn unit_norm_scores(net: &Net) -> Result<(PerLayer, PerLayer), ModelError> {
    let (w, _) = net.to_weights()?;
    Ok((structured::head_norm_scores(&w, &net.config)?, structured::neuron_norm_scores(&w, &net.config)?))
}

/// The lowest-scoring `sparsity` of the units, across the model (`Global`) or in each layer.
pub fn lowest_units(scores: &[Vec<f32>], sparsity: f64, scope: Scope) -> Vec<Vec<usize>> {
    let total: usize = scores.iter().map(Vec::len).sum();
    match scope {
        Scope::Global => select::lowest_units(scores, Some((total as f64 * sparsity).round() as usize), None),
        Scope::Local => {
            let counts: Vec<usize> = scores.iter().map(|s| (s.len() as f64 * sparsity).round() as usize).collect();
            select::lowest_units(scores, None, Some(&counts))
        }
    }
}

/// Median wall time (ms) of `runs` forward passes of `batch` through Secateur's inference
/// encoder built from the net; with `compact`, the heads and neurons the net has lost
/// ([`removed_units`]) are physically removed first, so the smaller model is what runs.
pub fn forward_ms(net: &Net, batch: &[Example], compact: bool, runs: usize) -> Result<f64, ModelError> {
    let (mut w, _) = net.to_weights()?;
    let config = if compact {
        structured::apply(&mut w, &net.config, &removed_units(net), structured::Surgery::Remove)?
    } else {
        net.config.clone()
    };
    let enc = Encoder::load(config, &w)?;
    let idx: Vec<usize> = (0..batch.len()).collect();
    let (b, _) = batch_of(batch, &idx, net.config.pad_token_id);
    let t = |v: &[u32]| Tensor::from_vec(v.to_vec(), (b.rows, b.len), &Device::Cpu);
    let (ids, mask, tt) = (t(&b.ids)?, t(&b.mask)?, t(&b.type_ids)?);
    enc.forward(&ids, Some(&tt), &mask)?;
    let mut ms = (0..runs.max(1))
        .map(|_| {
            let s = std::time::Instant::now();
            enc.forward(&ids, Some(&tt), &mask).map(|_| s.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<Vec<f64>, _>>()?;
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// Zeroes whole units (`Heads`: their query/key/value rows and attention-output columns;
/// `Neurons`: their FFN input rows and output columns) chosen by `plan`, adding to `masks` so
/// that recovery keeps them at zero.
pub fn zero_units(net: &mut Net, plan: &UnitPlan, masks: &mut Masks) {
    for l in 0..net.config.layers.len() {
        for UnitEdit { module, units, group, rows, .. } in unit_edits(&net.config, l, plan) {
            if units.is_empty() {
                continue;
            }
            let Some(i) = net.index_of(&format!("{module}.weight")) else { continue };
            let (r, c) = (net.params[i].shape[0], net.params[i].shape[1]);
            let keep = masks.0[i].get_or_insert_with(|| vec![true; r * c]);
            for &u in units {
                if rows {
                    keep[u * group * c..(u + 1) * group * c].iter_mut().for_each(|k| *k = false);
                } else {
                    (0..r).for_each(|row| {
                        keep[row * c + u * group..row * c + (u + 1) * group].iter_mut().for_each(|k| *k = false)
                    });
                }
            }
        }
    }
    masks.apply(net);
}

/// Fraction of zeros over the targets.
pub fn sparsity_of(net: &Net, targets: &[usize]) -> f64 {
    let (z, n) = targets.iter().fold((0usize, 0usize), |(z, n), &i| {
        (z + net.params[i].value.iter().filter(|v| **v == 0.0).count(), n + net.params[i].value.len())
    });
    if n == 0 {
        0.0
    } else {
        z as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::prune::wanda;
    use crate::train::testing::{calibration, tiny_net};

    #[test]
    fn nm_keeps_the_largest_n_of_every_m() {
        let s = [1.0, 4.0, 3.0, 2.0, 0.0, 0.0, 5.0, 0.0];
        assert_eq!(nm_keep(&s, 8, NmPattern { n: 2, m: 4 }), vec![false, true, true, false, true, false, true, false]);
    }

    /// Last hidden state of `enc` on the calibration batches.
    fn run(enc: &Encoder, net: &Net, calib: &[Example]) -> Vec<f32> {
        calibration_batches(net, calib)
            .unwrap()
            .iter()
            .flat_map(|(ids, mask, tt)| {
                enc.forward(ids, Some(tt), mask).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect()
    }

    /// Last hidden state of the net's encoder on the calibration batches.
    fn hidden(net: &Net, calib: &[Example]) -> Vec<f32> {
        let (w, _) = net.to_weights().unwrap();
        run(&Encoder::load(net.config.clone(), &w).unwrap(), net, calib)
    }

    fn error(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn calibrated_pruning_of_the_trainable_model() {
        let dense = tiny_net();
        let calib = calibration(24);
        let targets = linear_targets(&dense);
        let reference = hidden(&dense, &calib);
        // Wanda, unstructured 50%: exactly half of every output row, masks = the zeros.
        let mut net = dense.clone();
        let masks = prune_calibrated(&mut net, Method::Wanda, &calib, Rule::Unstructured(0.5)).unwrap();
        for &i in &targets {
            let p = &net.params[i];
            for row in p.value.chunks(p.shape[1]) {
                assert_eq!(row.iter().filter(|v| **v == 0.0).count(), p.shape[1] / 2, "{}", p.name);
            }
            assert_eq!(masks.0[i].as_ref().unwrap().iter().filter(|k| !**k).count(), p.value.len() / 2);
        }
        assert!(masks.0.iter().enumerate().all(|(i, m)| m.is_some() == targets.contains(&i)));
        // Wanda's rule on these weights with norms from the engine's own encoder.
        let (w, _) = dense.to_weights().unwrap();
        let norms = wanda::input_norms(
            &Encoder::load(dense.config.clone(), &w).unwrap(),
            &calibration_batches(&dense, &calib).unwrap(),
            &mut |_| Ok::<(), ModelError>(()),
        )
        .unwrap();
        let q = targets[0];
        let direct = wanda::mask(
            &dense.params[q].value,
            dense.params[q].shape[1],
            &norms[&dense.params[q].name],
            Rule::Unstructured(0.5),
        );
        assert_eq!(masks.0[q].as_ref().unwrap().iter().map(|k| !k).collect::<Vec<_>>(), direct);
        // SparseGPT 2:4: every group of 4 inputs keeps at most 2, and the reconstruction beats
        // magnitude 2:4 on the calibration inputs' final hidden states.
        let pat = NmPattern { n: 2, m: 4 };
        let mut gpt = dense.clone();
        prune_calibrated(&mut gpt, Method::SparseGpt(Default::default()), &calib, Rule::NM(pat)).unwrap();
        for &i in &targets {
            assert!(
                gpt.params[i].value.chunks(4).all(|g| g.iter().filter(|v| **v != 0.0).count() <= 2),
                "{}",
                gpt.params[i].name
            );
        }
        let mut mag = dense.clone();
        prune_one_shot(&mut mag, Criterion::Magnitude, &calib, 8, Shape::NM(pat)).unwrap();
        let (e_gpt, e_mag) = (error(&hidden(&gpt, &calib), &reference), error(&hidden(&mag, &calib), &reference));
        assert!(e_gpt < e_mag, "sparsegpt {e_gpt} vs magnitude {e_mag}");
        assert!(prune_calibrated(&mut dense.clone(), Method::Wanda, &[], Rule::Unstructured(0.5)).is_err());
    }

    #[test]
    fn the_weakest_layer_is_removed_and_the_rest_renumbered() {
        let mut net = tiny_net();
        let layers = net.config.layers.len();
        assert!(layers >= 2);
        // Layer 0 made the weakest by norm.
        let prefix = net.config.family.layer_prefix(0);
        for p in net.params.iter_mut().filter(|p| p.name.starts_with(&prefix) && p.shape.len() == 2) {
            p.value.iter_mut().for_each(|v| *v *= 0.01);
        }
        assert_eq!(lowest_layers(&net, 1).unwrap(), vec![0]);
        let smaller = without_layers(&net, &[0]).unwrap();
        assert_eq!(smaller.config.layers.len(), layers - 1);
        let per_layer =
            |n: &Net| n.params.iter().filter(|p| p.name.starts_with(&n.config.family.layer_prefix(0))).count();
        assert_eq!(smaller.params.len(), net.params.len() - per_layer(&net));
        // Each later layer moves down by one with its values; the head is unchanged.
        for (from, to) in (1..layers).map(|l| (l, l - 1)) {
            let (a, b) = (net.config.family.layer_prefix(from), smaller.config.family.layer_prefix(to));
            for p in net.params.iter().filter(|p| p.name.starts_with(&a)) {
                let q = &smaller.params[smaller.index_of(&p.name.replacen(&a, &b, 1)).expect("renumbered")];
                assert_eq!(p.value, q.value, "{}", p.name);
            }
        }
        let head: Vec<&Vec<f32>> =
            net.params.iter().filter(|p| p.name.starts_with("classifier")).map(|p| &p.value).collect();
        assert!(!head.is_empty());
        assert_eq!(
            head,
            smaller.params.iter().filter(|p| p.name.starts_with("classifier")).map(|p| &p.value).collect::<Vec<_>>()
        );
        let calib = calibration(4);
        let (b, _) = super::super::trainer::batch_of(&calib, &[0, 1, 2, 3], smaller.config.pad_token_id);
        assert!(smaller.forward(&b, None).unwrap().logits.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn zeroed_units_are_read_back_and_equal_their_physical_removal() {
        use crate::engine::prune::structured::{apply, Surgery};
        let mut net = tiny_net();
        let plan = UnitPlan { heads: vec![vec![1], vec![0, 3]], neurons: vec![vec![2, 5, 63], vec![]] };
        let mut masks = Masks::none(&net);
        zero_units(&mut net, &plan, &mut masks);
        assert_eq!(removed_units(&net), plan);
        let calib = calibration(6);
        let zeroed = hidden(&net, &calib);
        let (mut w, _) = net.to_weights().unwrap();
        let cfg = apply(&mut w, &net.config, &plan, Surgery::Remove).unwrap();
        assert_eq!(cfg.layers[1].heads, 2);
        assert_eq!(cfg.layers[0].ffn, 61);
        let removed = run(&Encoder::load(cfg, &w).unwrap(), &net, &calib);
        assert!(zeroed.iter().zip(&removed).all(|(a, b)| (a - b).abs() < 1e-5));
        // The masks keep them at zero.
        for p in net.params.iter_mut() {
            p.value.iter_mut().for_each(|v| *v += 0.5);
        }
        masks.apply(&mut net);
        assert_eq!(removed_units(&net), plan);
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
