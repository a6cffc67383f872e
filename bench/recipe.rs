//! The GLUE reference recipe of BENCHMARKS.md, with Secateur's trainer: MiniLM + a fresh
//! classification head, dense fine-tuning on the first TRAIN_ROWS rows of a task's train file
//! (file order), then for each pruning configuration: one-shot pruning of the dense model's
//! encoder linear weights, evaluation, recovery fine-tuning with the masks locked (optionally
//! distilled from the dense model), evaluation on the full dev file. One epoch per stage, batch
//! 32, dynamic padding, AdamW (weight decay 0.01 except biases and LayerNorm), 6% linear
//! warm-up, clipping at 1.0, seed 42 (SEED) — the PyTorch reference's budget. EPOCHS (1 by
//! default) sets the epochs of the dense stage, for the smaller GLUE tasks, RECOVERY_EPOCHS
//! (EPOCHS) those of recovery; LR (5e-5) and RECOVERY_LR (3e-5) the peak learning rates of the dense and
//! the recovery stages.
//!
//!   SECATEUR_MINILM_DIR=... TASK=sst2 TRAIN_ROWS=8000 MAX_LEN=64 \
//!     CONFIGS=magnitude:0.5,magnitude:0.8,magnitude:0.8:distill,magnitude:2:4 \
//!     cargo bench --bench recipe
//!
//! A configuration is `CRITERION:SPARSITY[:FLAG...]` or `CRITERION:N:M[:FLAG...]` with
//! CRITERION one of magnitude, taylor, movement, wanda, sparsegpt (the calibrated two: the first
//! 128 training examples as calibration inputs), or random (uniformly random scores, seeded,
//! never updated: the control that says what a criterion gains over chance; one-shot, or on
//! the gradual ramp with `cubic`) and FLAGs:
//! - `distill`: recovery distils from the dense model (T = 2, α = 0.5);
//! - `cubic`: gradual instead of one-shot: scores accumulated during the recovery epoch, cubic
//!   ramp to the target over its first 70% of steps, pruning every 5% (movement is always so);
//! - `pretrained`: the pruning run starts from the pretrained model with a fresh head and the
//!   dense stage's learning rate (LR) — movement pruning's own setting, pruning while the task
//!   is learnt — instead of from the fine-tuned dense model (implies `cubic`);
//! - `late`: the gradual ramp starts at half of the epoch and ends at 90% of it (scores
//!   accumulated over half an epoch before the first pruning);
//! - `local`: the same sparsity in every tensor instead of one global ranking;
//! - `sticky`: movement keeps an element pruned once pruned (weight zeroed), instead of
//!   re-choosing the top-k at every step of the ramp with the pruned weights kept behind the
//!   masks (movement pruning's own rule, the default, as in experiment jobs);
//! - `plain`: movement scores sum −w·g as it comes instead of Adam-normalised steps (the
//!   default, as the paper's reference implementation learns its scores, and experiment jobs).
//!
//! Gradual rows also print what the masks did: `churn` (the mean fraction of the targets whose
//! keep flag changed per step while the ramp ran, after the first pruning) and `overlap` (the
//! fraction of the finally pruned weights that one-shot magnitude pruning of the starting model
//! at the same sparsity and scope would also prune; chance level = the sparsity), the least and
//! most pruned tensor's sparsity and how many tensors lost more than 90%, how many output rows
//! (`dead_rows`) and input columns (`dead_cols`) kept less than 10% of their weights, and which
//! fraction of each tensor's largest 1% of starting weights got pruned (`largest_1pct_pruned`;
//! chance = the sparsity). Standard error gets each step's loss and sparsity (`step N loss L
//! sparsity S`), to see when a ramp hurts.
//!
//! `structured:H:N` removes the fraction H of the heads and N of the FFN neurons in every layer
//! (lowest norm), recovers with them locked, and also prints the forward time of 32 dev
//! examples before and with the units physically removed (median of 9 runs).

use candle_core::Device;
use secateur::data::{self, Format, Task};
use secateur::engine::model::heads::Head;
use secateur::engine::model::{EncoderConfig, Weights};
use secateur::engine::prune::select::select;
use secateur::engine::prune::structured::UnitPlan;
use secateur::engine::prune::wanda::Rule;
use secateur::engine::prune::{calibrated, NmPattern, Scope};
use secateur::train::experiment::{
    evaluate, examples, forward_ms, head_kind, linear_targets, lowest_units, prune_by_scores, prune_calibrated,
    prune_one_shot, sparsity_of, unit_norm_scores, zero_units, Shape,
};
use secateur::train::gradual::{Criterion, GradualPruner, Ramp, Scores};
use secateur::train::loss::Distill;
use secateur::train::net::{Grads, Net};
use secateur::train::trainer::{train, Control, Masks, Observer, Quiet, Schedule, State, StepInfo};
use std::time::Instant;

/// Delegates to the pruner and counts how many keep flags change at each step.
/// With `frozen`, the pruner's scores are not updated (the gradual random control).
struct Watch<'a> {
    pruner: &'a mut GradualPruner,
    last: Option<Vec<Vec<bool>>>,
    flips: (f64, u64),
    frozen: bool,
}

impl Observer for Watch<'_> {
    fn gradients(&mut self, net: &Net, grads: &Grads, info: &StepInfo) {
        if !self.frozen {
            self.pruner.gradients(net, grads, info);
        }
    }
    fn stepped(&mut self, net: &mut Net, masks: &mut Masks, state: &State, info: &StepInfo) -> Control {
        let c = self.pruner.stepped(net, masks, state, info);
        eprintln!("step {} loss {:.4} sparsity {:.4}", info.step, info.loss, self.pruner.reached);
        let now: Vec<Vec<bool>> =
            self.pruner.scores.targets.iter().map(|&i| masks.0[i].clone().unwrap_or_default()).collect();
        if let Some(last) = &self.last {
            if info.step <= self.pruner.end && last.iter().all(|m| !m.is_empty()) {
                let (changed, n) = last.iter().zip(&now).fold((0usize, 0usize), |(c, n), (a, b)| {
                    (c + a.iter().zip(b).filter(|(x, y)| x != y).count(), n + a.len())
                });
                self.flips.0 += changed as f64 / n as f64;
                self.flips.1 += 1;
            }
        }
        self.last = Some(now);
        c
    }
}

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

fn main() {
    secateur::app::tune_allocator();
    let dir = std::path::PathBuf::from(env("SECATEUR_MINILM_DIR", ""));
    let task = Task::parse(&env("TASK", "sst2")).expect("TASK");
    let rows: usize = env("TRAIN_ROWS", "8000").parse().unwrap();
    let max_len: usize = env("MAX_LEN", "64").parse().unwrap();
    let configs = env("CONFIGS", "magnitude:0.5,magnitude:0.8,magnitude:0.8:distill,magnitude:2:4");
    let seed: u64 = env("SEED", "42").parse().unwrap();
    let epochs: u32 = env("EPOCHS", "1").parse().unwrap();
    let (lr, recovery_lr): (f32, f32) =
        (env("LR", "5e-5").parse().unwrap(), env("RECOVERY_LR", "3e-5").parse().unwrap());
    let recovery_epochs: u32 = env("RECOVERY_EPOCHS", &epochs.to_string()).parse().unwrap();
    let folder = match task {
        Task::Sst2 => "SST-2",
        Task::Cola => "CoLA",
        Task::Mrpc => "MRPC",
        Task::Stsb => "STS-B",
        Task::Rte => "RTE",
        Task::Qnli => "QNLI",
        _ => panic!("no folder for {task:?}"),
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue").join(folder);
    let read = |f: &str| data::examples(Format::GlueTsv, Some(task), &std::fs::read(root.join(f)).unwrap()).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let mut train_rows = read("train.tsv");
    train_rows.truncate(rows);
    let train_set = examples(&tok, &train_rows, max_len).unwrap();
    let dev = examples(&tok, &read("dev.tsv"), max_len).unwrap();
    eprintln!("{task:?}: {} training examples, {} dev", train_set.len(), dev.len());

    let config_json = std::fs::read(dir.join("config.json")).unwrap();
    let w = Weights::from_safetensors(
        &std::fs::read(dir.join("model.safetensors")).unwrap(),
        secateur::engine::model::arch::Family::Bert,
        &Device::Cpu,
    )
    .unwrap();
    let config = EncoderConfig::from_checkpoint(&config_json, &w.shapes()).unwrap();
    let head = Head::load_or_init(&w, config.family, head_kind(task).unwrap(), config.hidden, 0.02, seed).unwrap();
    let mut dense =
        Net::new(config, &w, &head, secateur::engine::model::ModelConfig::parse(&config_json).unwrap().dropout)
            .unwrap();
    let fresh = dense.clone();
    drop((w, head));
    let sched =
        |lr: f32, epochs: u32| Schedule { epochs, learning_rate: lr, batch_size: 32, seed, ..Default::default() };
    let t = Instant::now();
    let s = sched(lr, epochs);
    let mut state = State::new(&s);
    let mut no_masks = Masks::none(&dense);
    let loss = train(&mut dense, &train_set, &s, &mut no_masks, &mut state, None, &mut Quiet).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let base = evaluate(&dense, task, &dev, 64).unwrap();
    if configs.is_empty() {
        println!(
            "dense\tseed={seed}\tmetrics={:?}\ttrain_loss={loss:.4}\tsteps={}\ttrain_s={secs:.0}",
            base.metrics, state.step
        );
        return;
    }
    println!(
        "dense\tmetrics={:?}\ttrain_loss={loss:.4}\tsteps={}\ttrain_s={secs:.0}\tseq_per_s={:.1}",
        base.metrics,
        state.step,
        train_set.len() as f64 / secs
    );
    let targets = linear_targets(&dense);
    for c in configs.split(',') {
        let parts: Vec<&str> = c.split(':').collect();
        if parts[0] == "structured" {
            let (h, n): (f64, f64) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
            let mut net = dense.clone();
            let t = Instant::now();
            let (hs, ns) = unit_norm_scores(&net).unwrap();
            let plan =
                UnitPlan { heads: lowest_units(&hs, h, Scope::Local), neurons: lowest_units(&ns, n, Scope::Local) };
            let mut masks = Masks::none(&net);
            zero_units(&mut net, &plan, &mut masks);
            let one = evaluate(&net, task, &dev, 64).unwrap();
            let s = sched(recovery_lr, recovery_epochs);
            let mut state = State::new(&s);
            let teacher = parts.contains(&"distill").then_some((&dense, Distill { temperature: 2.0, alpha: 0.5 }));
            let loss = train(&mut net, &train_set, &s, &mut masks, &mut state, teacher, &mut Quiet).unwrap();
            let after = evaluate(&net, task, &dev, 64).unwrap();
            let batch = &dev[..dev.len().min(32)];
            let (before_ms, after_ms) =
                (forward_ms(&dense, batch, false, 9).unwrap(), forward_ms(&net, batch, true, 9).unwrap());
            println!("{c}\tsparsity={:.4}\tone_shot={:?}\trecovered={:?}\ttrain_loss={loss:.4}\ttrain_s={:.0}\tforward_ms_dense={before_ms:.1}\tforward_ms_pruned={after_ms:.1}\tspeedup={:.2}", sparsity_of(&net, &targets), Some(one.metrics), after.metrics, t.elapsed().as_secs_f64(), before_ms / after_ms);
            continue;
        }
        let flags = ["distill", "cubic", "pretrained", "late", "local", "sticky", "plain"];
        let has = |f: &str| parts.contains(&f);
        let (distill, pretrained) = (has("distill"), has("pretrained"));
        let calibrated = match parts[0] {
            "wanda" => Some(calibrated::Method::Wanda),
            "sparsegpt" => Some(calibrated::Method::SparseGpt(Default::default())),
            _ => None,
        };
        let criterion = match parts[0] {
            "magnitude" | "wanda" | "sparsegpt" | "random" => Criterion::Magnitude,
            "taylor" => Criterion::Taylor,
            "movement" => Criterion::Movement,
            other => panic!("unknown criterion {other}"),
        };
        let gradual = has("cubic") || pretrained || criterion == Criterion::Movement;
        let nums: Vec<&str> = parts[1..].iter().copied().filter(|p| !flags.contains(p)).collect();
        let shape = if nums.len() == 2 {
            Shape::NM(NmPattern { n: nums[0].parse().unwrap(), m: nums[1].parse().unwrap() })
        } else {
            Shape::Unstructured {
                sparsity: nums[0].parse().unwrap(),
                scope: if has("local") { Scope::Local } else { Scope::Global },
            }
        };
        let mut net = if pretrained { fresh.clone() } else { dense.clone() };
        let s = if pretrained { sched(lr, epochs) } else { sched(recovery_lr, recovery_epochs) };
        let mut state = State::new(&s);
        let teacher = distill.then_some((&dense, Distill { temperature: 2.0, alpha: 0.5 }));
        let t = Instant::now();
        let mut gradual_stats = String::new();
        let (one_shot, loss) = if gradual {
            let Shape::Unstructured { sparsity, scope } = shape else { panic!("gradual pruning is unstructured here") };
            assert!(calibrated.is_none(), "wanda and sparsegpt prune once");
            let total = s.total_steps(train_set.len());
            let (start, end) = if has("late") { (total / 2, total * 9 / 10) } else { (0, total * 7 / 10) };
            let mut scores = if parts[0] == "random" {
                // Fixed uniformly random scores (never updated: see `Watch::frozen`), the
                // control for a gradual ramp; a criterion that keeps score values.
                use rand::{Rng, SeedableRng};
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut scores = Scores::new(&net, targets.clone(), Criterion::Taylor);
                scores.values.iter_mut().for_each(|v| v.iter_mut().for_each(|x| *x = rng.gen::<f32>()));
                scores
            } else {
                Scores::new(&net, targets.clone(), criterion)
            };
            if has("plain") {
                scores = scores.plain();
            }
            let mut pruner =
                GradualPruner::new(scores, Ramp::Cubic, (start, end, (total / 20).max(1)), sparsity, scope);
            if criterion == Criterion::Movement && !has("sticky") {
                pruner = pruner.regrowing(&net);
            }
            let mut masks = Masks::none(&net);
            let magnitudes: Vec<Vec<f32>> =
                targets.iter().map(|&i| net.params[i].value.iter().map(|v| v.abs()).collect()).collect();
            let by_magnitude = select(&magnitudes, &vec![None; targets.len()], sparsity, scope);
            // The largest 1% of each tensor's starting weights (by |w|): the outliers a ranking
            // must not prune.
            let largest = select(&magnitudes, &vec![None; targets.len()], 0.99, Scope::Local);
            let mut watch = Watch { pruner: &mut pruner, last: None, flips: (0.0, 0), frozen: parts[0] == "random" };
            let loss = train(&mut net, &train_set, &s, &mut masks, &mut state, teacher, &mut watch).unwrap();
            let churn = watch.flips.0 / watch.flips.1.max(1) as f64;
            let (both, pruned) = targets.iter().zip(&by_magnitude).fold((0usize, 0usize), |(b, p), (&i, m)| {
                let k = masks.0[i].as_deref().unwrap_or(&[]);
                (b + k.iter().zip(m).filter(|(k, m)| !**k && !**m).count(), p + k.iter().filter(|k| !**k).count())
            });
            // How the pruning spreads over tensors: the least and most pruned, and how many
            // tensors lost more than 90% (a path through the model cut).
            let per: Vec<f64> = targets
                .iter()
                .map(|&i| {
                    masks.0[i].as_deref().map_or(0.0, |k| k.iter().filter(|k| !**k).count() as f64 / k.len() as f64)
                })
                .collect();
            let (lo, hi) = per.iter().fold((1f64, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
            let over = per.iter().filter(|&&v| v > 0.9).count();
            let (top, top_pruned) = targets.iter().zip(&largest).fold((0usize, 0usize), |(n, p), (&i, l)| {
                let k = masks.0[i].as_deref().unwrap_or(&[]);
                (n + l.iter().filter(|l| **l).count(), p + k.iter().zip(l).filter(|(k, l)| **l && !**k).count())
            });
            // How the pruning spreads inside tensors: output rows and input columns that kept
            // less than 10% of their weights (a whole unit or input dimension cut), over all
            // targets.
            let (mut dead_rows, mut dead_cols) = (0usize, 0usize);
            for &i in &targets {
                let (shape, Some(k)) = (&net.params[i].shape, masks.0[i].as_deref()) else { continue };
                let (rows, cols) = (shape[0], shape[1]);
                let mut col_kept = vec![0usize; cols];
                for r in 0..rows {
                    let row = &k[r * cols..(r + 1) * cols];
                    let kept = row.iter().filter(|k| **k).count();
                    dead_rows += usize::from(kept * 10 < cols);
                    row.iter().zip(col_kept.iter_mut()).for_each(|(k, c)| *c += usize::from(*k));
                }
                let dead: Vec<usize> =
                    col_kept.iter().enumerate().filter(|(_, c)| **c * 10 < rows).map(|(j, _)| j).collect();
                dead_cols += dead.len();
                if !dead.is_empty() {
                    eprintln!(
                        "{c}: {} input columns of {} kept <10%: {:?}",
                        dead.len(),
                        net.params[i].name,
                        &dead[..dead.len().min(20)]
                    );
                }
            }
            eprintln!("{c}: churn {churn:.5} overlap {:.4} per-tensor {per:.3?}", both as f64 / pruned.max(1) as f64);
            gradual_stats = format!("\tchurn={churn:.5}\toverlap={:.4}\ttensor_sparsity={lo:.3}..{hi:.3}\ttensors_over_90={over}\tdead_rows={dead_rows}\tdead_cols={dead_cols}\tlargest_1pct_pruned={:.4}", both as f64 / pruned.max(1) as f64, top_pruned as f64 / top.max(1) as f64);
            (None, loss)
        } else {
            let calib = &train_set[..train_set.len().min(1024)];
            let mut masks = match calibrated {
                None if parts[0] == "random" => {
                    use rand::{Rng, SeedableRng};
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let scores: Vec<Vec<f32>> = targets
                        .iter()
                        .map(|&i| (0..net.params[i].value.len()).map(|_| rng.gen::<f32>()).collect())
                        .collect();
                    prune_by_scores(&mut net, &targets, &scores, shape)
                }
                Some(how) => {
                    let rule = match shape {
                        Shape::NM(p) => Rule::NM(p),
                        Shape::Unstructured { sparsity, .. } => Rule::Unstructured(sparsity),
                    };
                    prune_calibrated(&mut net, how, &calib[..calib.len().min(128)], rule).unwrap()
                }
                None => prune_one_shot(&mut net, criterion, calib, 32, shape).unwrap(),
            };
            let one = evaluate(&net, task, &dev, 64).unwrap();
            let loss = train(&mut net, &train_set, &s, &mut masks, &mut state, teacher, &mut Quiet).unwrap();
            (Some(one.metrics), loss)
        };
        let after = evaluate(&net, task, &dev, 64).unwrap();
        println!(
            "{c}\tsparsity={:.4}\tone_shot={:?}\trecovered={:?}\ttrain_loss={loss:.4}\ttrain_s={:.0}{gradual_stats}",
            sparsity_of(&net, &targets),
            one_shot,
            after.metrics,
            t.elapsed().as_secs_f64()
        );
    }
}
