//! The trainable model's hand-written backward pass: with dropout off, the loss and the gradient
//! of every parameter equal PyTorch's (transformers' task models, same weights, same batch) for
//! BERT, RoBERTa and DistilBERT with classification, regression and QA heads, and for the real
//! MiniLM on real sentences, where every trainable tensor receives a non-zero gradient (candle's
//! fused LayerNorm silently blocks gradients: docs/design-notes.md). With dropout on, the
//! gradient is the derivative of the same (seeded) function.

use crate::common;

use candle_core::{DType, Device, Tensor};
use secateur::engine::model::arch::Family;
use secateur::engine::model::heads::{export_task_model, Head, HeadKind};
use secateur::engine::model::{EncoderConfig, ModelConfig, Weights};
use secateur::engine::testing::TinyModel;
use secateur::train::batch::Padded;
use secateur::train::loss::{task_loss, Targets};
use secateur::train::net::{Dropout, Net};
use std::collections::HashMap;
use std::path::Path;

/// The Hugging Face name of one of our parameters.
fn hf_name(family: Family, name: &str) -> String {
    if ["embeddings.", "encoder.", "transformer.", "pooler."].iter().any(|p| name.starts_with(p)) {
        format!("{}.{name}", family.name())
    } else {
        name.to_string()
    }
}

fn net_of(config_json: &[u8], safetensors: &[u8], kind: HeadKind, dropout: Dropout) -> (Net, Vec<u8>, Vec<u8>) {
    let v: serde_json::Value = serde_json::from_slice(config_json).unwrap();
    let family = Family::parse(v["model_type"].as_str().unwrap()).unwrap();
    let w = Weights::from_safetensors(safetensors, family, &Device::Cpu).unwrap();
    let config = EncoderConfig::from_checkpoint(config_json, &w.shapes()).unwrap();
    let head = Head::load_or_init(&w, family, kind, config.hidden, 0.02, 5).unwrap();
    let (c, s) = export_task_model(config_json, &w, &head, None).unwrap();
    (Net::new(config, &w, &head, dropout).unwrap(), c, s)
}

/// Loss and gradients from `tests/reference/train_grads.py`.
fn torch_grads(dir: &Path, kind: HeadKind, b: &Padded, targets: &Targets) -> HashMap<String, Tensor> {
    let tmp = tempfile::tempdir().unwrap();
    let t = |v: &[u32]| {
        Tensor::from_vec(v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(), (b.rows, b.len), &Device::Cpu).unwrap()
    };
    let mut m = HashMap::new();
    m.insert("input_ids".to_string(), t(&b.ids));
    m.insert("attention_mask".to_string(), t(&b.mask));
    m.insert("token_type_ids".to_string(), t(&b.type_ids));
    let col = |v: Vec<i64>| Tensor::from_vec(v, b.rows, &Device::Cpu).unwrap();
    match targets {
        Targets::Classes(c) => drop(m.insert("labels".into(), col(c.iter().map(|&x| x as i64).collect()))),
        Targets::Scores(s) => {
            drop(m.insert("labels".into(), Tensor::from_vec(s.clone(), b.rows, &Device::Cpu).unwrap()))
        }
        Targets::Spans(s) => {
            m.insert("start_positions".into(), col(s.iter().map(|p| p.0 as i64).collect()));
            m.insert("end_positions".into(), col(s.iter().map(|p| p.1 as i64).collect()));
        }
    }
    let inputs = tmp.path().join("in.safetensors");
    candle_core::safetensors::save(&m, &inputs).unwrap();
    let out = tmp.path().join("out.safetensors");
    let name = if kind == HeadKind::QuestionAnswering { "qa" } else { "classification" };
    let r = std::process::Command::new(common::refenv::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/train_grads.py"))
        .args([inputs.as_os_str(), dir.as_os_str(), name.as_ref(), out.as_os_str()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(r.status.success(), "train_grads.py failed:\n{}", String::from_utf8_lossy(&r.stderr));
    candle_core::safetensors::load(&out, &Device::Cpu).unwrap()
}

/// Compares our loss and gradients with PyTorch's; returns the worst relative difference.
fn compare(label: &str, net: &Net, b: &Padded, targets: &Targets, config: &[u8], st: &[u8]) -> f32 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), st).unwrap();
    let theirs = torch_grads(dir.path(), net.kind, b, targets);
    let out = net.forward(b, None).unwrap();
    let (loss, dlogits) = task_loss(&out.logits, targets, b.len, None);
    let mut grads = net.zero_grads();
    net.backward(&out.tape, &dlogits, &mut grads, None);
    let their_loss = theirs["loss"].to_vec1::<f32>().unwrap()[0];
    assert!(
        (loss as f32 - their_loss).abs() < 1e-5 * their_loss.abs().max(1.0),
        "{label}: loss {loss} vs {their_loss}"
    );
    let mut worst = 0f32;
    let mut names: Vec<&str> = Vec::new();
    // The largest gradient element anywhere: tensors whose true gradient is zero show rounding
    // noise far below it.
    let global = theirs
        .iter()
        .filter(|(k, _)| *k != "loss")
        .map(|(_, t)| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap())
        .fold(0f32, f32::max);
    for (p, g) in net.params.iter().zip(&grads.0) {
        let name = hf_name(net.config.family, &p.name);
        let t = theirs.get(&name).unwrap_or_else(|| panic!("{label}: PyTorch has no {name}"));
        let t = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(t.len(), g.len(), "{label} {name}");
        let scale = t.iter().fold(0f32, |a, v| a.max(v.abs()));
        let diff = t.iter().zip(g).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        let ours_max = g.iter().fold(0f32, |a, v| a.max(v.abs()));
        if scale < 1e-6 * global {
            // Exactly zero in exact arithmetic, rounding noise on both sides: the key bias adds
            // the same q·b to every score of a query (softmax ignores it); under a QA head the
            // last LayerNorm's bias moves every position's logit alike (so does the softmax over
            // positions).
            assert!(
                name.ends_with("key.bias") || name.ends_with("k_lin.bias") || net.kind == HeadKind::QuestionAnswering,
                "{label}: {name} has no gradient in PyTorch either"
            );
            assert!(
                ours_max < 1e-5 * global,
                "{label}: {name}: ours {ours_max:e}, torch {scale:e}, largest {global:e}"
            );
            names.push(&p.name);
            continue;
        }
        assert!(ours_max > 0.0, "{label}: {name} received no gradient");
        let rel = diff / scale.max(1e-12);
        assert!(rel < 1e-3, "{label}: {name}: max |ours - torch| = {diff:e} of {scale:e}");
        worst = worst.max(rel);
        names.push(&p.name);
    }
    let ours_count = net.params.len();
    let theirs_count = theirs.len() - 1;
    assert_eq!(ours_count, theirs_count, "{label}: we train {ours_count} tensors, PyTorch {theirs_count}");
    eprintln!("{label}: loss {loss:.6} (torch {their_loss:.6}), worst relative gradient difference {worst:.2e} over {} tensors", names.len());
    worst
}

fn tiny_batch(vocab: u32, pad: u32, rows: usize, len: usize, pairs: bool) -> Padded {
    let lengths: Vec<usize> = (0..rows).map(|r| len - (r * 3) % (len - 2)).collect();
    let mut p = Padded { rows, len, ids: Vec::new(), mask: Vec::new(), type_ids: Vec::new() };
    for (r, &n) in lengths.iter().enumerate() {
        for i in 0..len {
            let real = i < n;
            p.ids.push(if !real {
                pad
            } else if i == 0 {
                2
            } else {
                5 + ((r * 31 + i * 17) as u32 % (vocab - 5))
            });
            p.mask.push(u32::from(real));
            p.type_ids.push(u32::from(pairs && real && i >= n / 2));
        }
    }
    p
}

#[test]
fn gradients_equal_pytorch_on_every_family_and_head() {
    for family in ["bert", "roberta", "distilbert"] {
        let tm = TinyModel { model_type: family, ..Default::default() };
        let pad = if family == "roberta" { 1 } else { 0 };
        let b = tiny_batch(tm.vocab as u32, pad, 4, 9, family == "bert");
        for (kind, targets) in [
            (HeadKind::Classification(3), Targets::Classes(vec![0, 2, 1, 2])),
            (HeadKind::Regression, Targets::Scores(vec![0.5, -1.0, 2.5, 0.0])),
            (HeadKind::QuestionAnswering, Targets::Spans(vec![(1, 3), (0, 0), (4, 9), (2, 2)])),
        ] {
            let (net, c, s) = net_of(tm.config_json().as_bytes(), &tm.safetensors(), kind, Dropout::NONE);
            compare(&format!("{family} {kind:?}"), &net, &b, &targets, &c, &s);
        }
    }
}

#[test]
fn gradients_equal_pytorch_on_real_minilm_and_reach_every_tensor() {
    let dir = common::minilm::dir();
    let (ids, mask, tt) = common::minilm::sst2_batch(&dir, 8);
    let (rows, len) = ids.dims2().unwrap();
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let b = Padded { rows, len, ids: v(&ids), mask: v(&mask), type_ids: v(&tt) };
    let (net, c, s) = net_of(
        &std::fs::read(dir.join("config.json")).unwrap(),
        &std::fs::read(dir.join("model.safetensors")).unwrap(),
        HeadKind::Classification(2),
        Dropout::NONE,
    );
    let targets = Targets::Classes((0..rows).map(|i| i % 2).collect());
    let worst = compare("MiniLM SST-2", &net, &b, &targets, &c, &s);
    assert!(worst < 1e-3);
}

#[test]
fn dropout_gradients_are_the_derivative_of_the_seeded_function() {
    for family in ["bert", "roberta", "distilbert"] {
        let tm = TinyModel { model_type: family, ..Default::default() };
        let cfg = tm.config_json();
        let dropout = Dropout { hidden: 0.1, attention: 0.1, classifier: 0.2 };
        assert_eq!(ModelConfig::parse(cfg.as_bytes()).unwrap().dropout.hidden, 0.1);
        let b = tiny_batch(tm.vocab as u32, if family == "roberta" { 1 } else { 0 }, 4, 9, false);
        for (kind, targets) in [
            (HeadKind::Classification(2), Targets::Classes(vec![0, 1, 1, 0])),
            (HeadKind::QuestionAnswering, Targets::Spans(vec![(1, 3), (0, 0), (4, 6), (2, 2)])),
        ] {
            let (mut net, _, _) = net_of(cfg.as_bytes(), &tm.safetensors(), kind, dropout);
            let seed = Some(1234);
            let loss_at = |net: &Net| -> f64 {
                let o = net.forward(&b, seed).unwrap();
                task_loss(&o.logits, &targets, b.len, None).0
            };
            let o = net.forward(&b, seed).unwrap();
            let (l0, d) = task_loss(&o.logits, &targets, b.len, None);
            let eval = task_loss(&net.forward(&b, None).unwrap().logits, &targets, b.len, None).0;
            assert_ne!(l0, eval, "dropout changes the loss");
            assert_eq!(l0, loss_at(&net), "the same seed gives the same masks");
            let mut g = net.zero_grads();
            net.backward(&o.tape, &d, &mut g, None);
            // Directional derivative along a fixed random direction, by central differences.
            // Not along the padding embeddings: like Hugging Face (`padding_idx`), we give them no
            // gradient although padded positions' QA logits do depend on them.
            let pad = net.config.pad_token_id as usize;
            let h = net.config.hidden;
            let dir: Vec<Vec<f32>> = net
                .params
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let frozen = |j: usize| {
                        (p.name.contains("word_embeddings")
                            || (family == "roberta" && p.name.contains("position_embeddings")))
                            && j / h == pad
                    };
                    (0..p.value.len())
                        .map(|j| if frozen(j) { 0.0 } else { (((i * 7919 + j * 104729) % 1000) as f32 / 500.0) - 1.0 })
                        .collect()
                })
                .collect();
            let analytic: f64 =
                g.0.iter().zip(&dir).map(|(g, d)| g.iter().zip(d).map(|(a, b)| f64::from(a * b)).sum::<f64>()).sum();
            let eps = 1e-4f32;
            let shift = |net: &mut Net, s: f32| {
                for (p, d) in net.params.iter_mut().zip(&dir) {
                    p.value.iter_mut().zip(d).for_each(|(v, d)| *v += s * d);
                }
            };
            shift(&mut net, eps);
            let up = loss_at(&net);
            shift(&mut net, -2.0 * eps);
            let down = loss_at(&net);
            let numeric = (up - down) / (2.0 * f64::from(eps));
            assert!(
                (numeric - analytic).abs() < 2e-2 * analytic.abs().max(1e-2),
                "{family} {kind:?}: numeric {numeric} vs analytic {analytic}"
            );
        }
    }
}

mod loop_ {
    use super::*;
    use secateur::train::trainer::{
        checkpoint, predict, restore, train, Control, Example, Masks, Observer, Quiet, Schedule, State, StepInfo,
        Target,
    };
    use std::collections::BTreeMap;

    /// A learnable toy task on the tiny vocabulary: label 1 when token 9 occurs.
    fn toy(n: usize, seed: u64) -> Vec<Example> {
        (0..n)
            .map(|i| {
                let len = 4 + (i * 7 + seed as usize) % 9;
                let mut ids = vec![2u32];
                ids.extend((1..len - 1).map(|j| 10 + ((i * 13 + j * 5 + seed as usize) % 50) as u32));
                let label = i % 2;
                if label == 1 {
                    ids[1 + i % (len - 2)] = 9;
                }
                ids.push(3);
                Example { type_ids: vec![0; ids.len()], ids, target: Target::Class(label) }
            })
            .collect()
    }

    fn tiny_net(dropout: Dropout) -> Net {
        let tm = TinyModel::default();
        net_of(tm.config_json().as_bytes(), &tm.safetensors(), HeadKind::Classification(2), dropout).0
    }

    /// Prunes half of every encoder linear weight (every other element) and returns the masks.
    fn half_pruned(net: &mut Net) -> Masks {
        for p in net
            .params
            .iter_mut()
            .filter(|p| p.name.contains("layer.") && p.name.ends_with("weight") && p.shape.len() == 2)
        {
            p.value.iter_mut().step_by(2).for_each(|v| *v = 0.0);
        }
        Masks::from_zeros(net, |n| n.contains("layer.") && n.ends_with("weight") && !n.contains("LayerNorm"))
    }

    struct ZerosStayZero<'a>(&'a [Vec<bool>], usize);
    impl Observer for ZerosStayZero<'_> {
        fn stepped(&mut self, net: &mut Net, masks: &mut Masks, _: &State, _: &StepInfo) -> Control {
            for (i, m) in masks.0.iter().enumerate() {
                if let Some(m) = m {
                    assert_eq!(m, &self.0[i], "masks are not changed");
                    assert!(
                        net.params[i].value.iter().zip(m).all(|(v, k)| *k || *v == 0.0),
                        "{} has a pruned weight that is not zero",
                        net.params[i].name
                    );
                }
            }
            self.1 += 1;
            Control::Continue
        }
    }

    #[test]
    fn pruned_weights_stay_exactly_zero_and_training_learns() {
        let data = toy(64, 0);
        let mut net = tiny_net(Dropout { hidden: 0.1, attention: 0.1, classifier: 0.1 });
        let mut masks = half_pruned(&mut net);
        let (zeros, total) = masks.counts();
        assert!(zeros * 2 == total && zeros > 0, "{zeros} of {total}");
        let s = Schedule { epochs: 12, learning_rate: 2e-3, batch_size: 8, ..Default::default() };
        let flat: Vec<Vec<bool>> = masks.0.iter().map(|m| m.clone().unwrap_or_default()).collect();
        let before = predict(&net, &data, 16).unwrap();
        let mut state = State::new(&s);
        let mut obs = ZerosStayZero(&flat, 0);
        let first = {
            let o = net
                .forward(&secateur::train::trainer::batch_of(&data, &(0..64).collect::<Vec<_>>(), 0).0, None)
                .unwrap();
            task_loss(&o.logits, &Targets::Classes((0..64).map(|i| i % 2).collect()), 0, None).0
        };
        train(&mut net, &data, &s, &mut masks, &mut state, None, &mut obs).unwrap();
        assert_eq!(obs.1 as u64, s.total_steps(64), "every step observed");
        assert_eq!(state.step, 12 * 8);
        let after = predict(&net, &data, 16).unwrap();
        let correct = after.iter().enumerate().filter(|(i, l)| usize::from(l[1] > l[0]) == i % 2).count();
        let last = {
            let o = net
                .forward(&secateur::train::trainer::batch_of(&data, &(0..64).collect::<Vec<_>>(), 0).0, None)
                .unwrap();
            task_loss(&o.logits, &Targets::Classes((0..64).map(|i| i % 2).collect()), 0, None).0
        };
        eprintln!("toy task: loss {first:.4} -> {last:.4}, {correct}/64 correct");
        assert!(last < 0.5 * first, "training lowers the loss: {first} -> {last}");
        assert!(correct >= 56, "{correct}/64");
        assert_ne!(before, after);
    }

    struct StopAt(u64);
    impl Observer for StopAt {
        fn stepped(&mut self, _: &mut Net, _: &mut Masks, state: &State, _: &StepInfo) -> Control {
            if state.step == self.0 {
                Control::Stop
            } else {
                Control::Continue
            }
        }
    }

    #[test]
    fn a_resumed_run_ends_with_the_same_weights_and_runs_are_seeded() {
        let data = toy(40, 3);
        let s = Schedule { epochs: 3, learning_rate: 1e-3, batch_size: 4, accumulation: 2, ..Default::default() };
        let dropout = Dropout { hidden: 0.1, attention: 0.1, classifier: 0.1 };
        let run = |s: &Schedule| {
            let mut net = tiny_net(dropout);
            let mut masks = half_pruned(&mut net);
            let mut state = State::new(s);
            train(&mut net, &data, s, &mut masks, &mut state, None, &mut Quiet).unwrap();
            net.params
        };
        let straight = run(&s);
        assert_eq!(straight, run(&s), "the same seed gives the same weights");
        assert_ne!(straight, run(&Schedule { seed: 7, ..s.clone() }), "another seed gives other weights");
        // Interrupted after 7 of 15 steps (mid-epoch), checkpointed, restored into a fresh model.
        let mut net = tiny_net(dropout);
        let mut masks = half_pruned(&mut net);
        let mut state = State::new(&s);
        train(&mut net, &data, &s, &mut masks, &mut state, None, &mut StopAt(7)).unwrap();
        assert_eq!(state.step, 7);
        let mut extra = BTreeMap::new();
        extra.insert("scores".to_string(), vec![1.0f32, 2.0]);
        let bytes = checkpoint(&net, &masks, &state, &extra);
        drop(net);
        let mut fresh = tiny_net(dropout);
        let (mut masks2, mut state2, extra2) = restore(&mut fresh, &bytes).unwrap();
        assert_eq!((masks2.clone(), state2.clone(), extra2), (masks, state, extra));
        train(&mut fresh, &data, &s, &mut masks2, &mut state2, None, &mut Quiet).unwrap();
        assert_eq!(state2.step, s.total_steps(40));
        assert_eq!(fresh.params, straight, "resumed == uninterrupted, bit for bit");
        // A checkpoint of another architecture is refused.
        let tm = TinyModel { hidden: 16, heads: 2, ..Default::default() };
        let mut other = net_of(tm.config_json().as_bytes(), &tm.safetensors(), HeadKind::Classification(2), dropout).0;
        assert!(restore(&mut other, &bytes).is_err());
    }

    #[test]
    fn accumulated_half_batches_give_the_full_batch_gradient() {
        let data = toy(8, 1);
        let net = tiny_net(Dropout::NONE);
        let grad = |groups: &[Vec<usize>]| {
            let mut g = net.zero_grads();
            for idx in groups {
                let (b, t) = secateur::train::trainer::batch_of(&data, idx, 0);
                let o = net.forward(&b, None).unwrap();
                let (_, mut d) = task_loss(&o.logits, &t, b.len, None);
                d.iter_mut().for_each(|v| *v /= groups.len() as f32);
                net.backward(&o.tape, &d, &mut g, None);
            }
            g
        };
        let full = grad(&[(0..8).collect()]);
        let halves = grad(&[vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
        for ((a, b), p) in full.0.iter().zip(&halves.0).zip(&net.params) {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(d <= 1e-4 * scale, "{}: {d} of {scale}", p.name);
        }
    }
}

/// The head-mask gradient (Michel et al.) equals what scaling the head's value rows gives: a
/// head's context is linear in its value map, so ∂L/∂ξ_h = Σ (∂L/∂W_v · W_v + ∂L/∂b_v · b_v)
/// over the head's rows — checked against the gradients that match PyTorch above.
#[test]
fn head_mask_gradients_equal_the_value_rows_identity() {
    for family in ["bert", "distilbert"] {
        let tm = TinyModel { model_type: family, ..Default::default() };
        let b = tiny_batch(tm.vocab as u32, 0, 4, 9, false);
        let (net, _, _) =
            net_of(tm.config_json().as_bytes(), &tm.safetensors(), HeadKind::Classification(2), Dropout::NONE);
        let o = net.forward(&b, None).unwrap();
        let (_, d) = task_loss(&o.logits, &Targets::Classes(vec![0, 1, 1, 0]), b.len, None);
        let mut g = net.zero_grads();
        let mut hg: Vec<Vec<f32>> = net.heads().iter().map(|&h| vec![0.0; h]).collect();
        net.backward(&o.tape, &d, &mut g, Some(&mut hg));
        let head_dim = net.config.head_dim;
        let value = if family == "distilbert" { "attention.v_lin" } else { "attention.self.value" };
        for (layer, heads) in hg.iter().enumerate() {
            let prefix = if family == "distilbert" {
                format!("transformer.layer.{layer}.{value}")
            } else {
                format!("encoder.layer.{layer}.{value}")
            };
            let (wi, bi) =
                (net.index_of(&format!("{prefix}.weight")).unwrap(), net.index_of(&format!("{prefix}.bias")).unwrap());
            let cols = net.params[wi].shape[1];
            for (h, got) in heads.iter().enumerate() {
                let rows = h * head_dim..(h + 1) * head_dim;
                let w: f64 = rows
                    .clone()
                    .flat_map(|r| (0..cols).map(move |c| r * cols + c))
                    .map(|i| f64::from(g.0[wi][i]) * f64::from(net.params[wi].value[i]))
                    .sum();
                let bias: f64 = rows.map(|r| f64::from(g.0[bi][r]) * f64::from(net.params[bi].value[r])).sum();
                let want = w + bias;
                assert!(
                    (f64::from(*got) - want).abs() <= 1e-4 * want.abs().max(1e-3),
                    "{family} layer {layer} head {h}: {got} vs {want}"
                );
            }
        }
    }
}

/// The whole loop against PyTorch: the same batches in the same order through
/// `trainer::train` and through transformers + torch.optim.AdamW +
/// get_linear_schedule_with_warmup + clip_grad_norm_ (dropout off on both sides) end with the
/// same weights.
#[test]
fn training_steps_end_where_pytorch_ends() {
    use secateur::train::batch::shuffled;
    use secateur::train::trainer::{batch_of, train, Example, Masks, Quiet, Schedule, State, Target};
    let tm = TinyModel::default();
    let (mut net, c, s) =
        net_of(tm.config_json().as_bytes(), &tm.safetensors(), HeadKind::Classification(2), Dropout::NONE);
    let data: Vec<Example> = (0..24)
        .map(|i| {
            let len = 4 + (i * 5) % 7;
            let ids: Vec<u32> = std::iter::once(2)
                .chain((1..len - 1).map(|j| 5 + ((i * 11 + j * 3) % 59) as u32))
                .chain(std::iter::once(3))
                .collect();
            Example { type_ids: vec![0; ids.len()], ids, target: Target::Class(i % 2) }
        })
        .collect();
    let sched =
        Schedule { epochs: 2, learning_rate: 2e-3, batch_size: 4, warmup_ratio: 0.25, seed: 9, ..Default::default() };
    let total = sched.total_steps(data.len());
    // The batches in the trainer's order: epoch e shuffles with seed + e.
    let tmp = tempfile::tempdir().unwrap();
    let mut m = HashMap::new();
    let mut step = 0;
    for epoch in 0..2u64 {
        for idx in shuffled(data.len(), 4, sched.seed + epoch) {
            let (b, t) = batch_of(&data, &idx, 0);
            let Targets::Classes(labels) = t else { unreachable!() };
            let tensor = |v: &[u32]| {
                Tensor::from_vec(v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(), (b.rows, b.len), &Device::Cpu)
                    .unwrap()
            };
            m.insert(format!("input_ids_{step}"), tensor(&b.ids));
            m.insert(format!("attention_mask_{step}"), tensor(&b.mask));
            m.insert(format!("token_type_ids_{step}"), tensor(&b.type_ids));
            m.insert(
                format!("labels_{step}"),
                Tensor::from_vec(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), b.rows, &Device::Cpu).unwrap(),
            );
            step += 1;
        }
    }
    assert_eq!(step as u64, total);
    candle_core::safetensors::save(&m, tmp.path().join("batches.safetensors")).unwrap();
    let model_dir = tmp.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("config.json"), &c).unwrap();
    std::fs::write(model_dir.join("model.safetensors"), &s).unwrap();
    let cfg = serde_json::json!({"lr": 2e-3, "warmup": sched.warmup_steps(data.len()), "total": total, "weight_decay": 0.01, "max_grad_norm": 1.0});
    std::fs::write(tmp.path().join("cfg.json"), cfg.to_string()).unwrap();
    let out = tmp.path().join("out.safetensors");
    let r = std::process::Command::new(common::refenv::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/train_steps.py"))
        .args([tmp.path().join("batches.safetensors"), model_dir.clone(), tmp.path().join("cfg.json"), out.clone()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(r.status.success(), "train_steps.py failed:\n{}", String::from_utf8_lossy(&r.stderr));
    let theirs = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let before: Vec<Vec<f32>> = net.params.iter().map(|p| p.value.clone()).collect();
    let mut state = State::new(&sched);
    let mut free = Masks::none(&net);
    train(&mut net, &data, &sched, &mut free, &mut state, None, &mut Quiet).unwrap();
    let mut worst = 0f32;
    for (p, b) in net.params.iter().zip(&before) {
        let t = theirs[&hf_name(net.config.family, &p.name)].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let moved = t.iter().zip(b).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        let diff = t.iter().zip(&p.value).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        if p.name.ends_with("key.bias") {
            // Its gradient is exactly zero; AdamW normalises each side's rounding noise into
            // updates of its own, so only their size is comparable.
            assert!(diff <= 1e-2 * 2e-3 * total as f32, "{}: {diff:e}", p.name);
            continue;
        }
        assert!(
            diff <= 3e-3 * moved.max(1e-6) + 1e-6,
            "{}: ours and torch differ by {diff:e}; training moved it by {moved:e}",
            p.name
        );
        worst = worst.max(diff / moved.max(1e-6));
    }
    eprintln!("{total} steps: worst difference {worst:.2e} of how far training moved each tensor");
}
