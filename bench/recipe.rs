//! The GLUE reference recipe of BENCHMARKS.md, with Secateur's trainer: MiniLM + a fresh
//! classification head, dense fine-tuning on the first TRAIN_ROWS rows of a task's train file
//! (file order), then for each pruning configuration: one-shot pruning of the dense model's
//! encoder linear weights, evaluation, recovery fine-tuning with the masks locked (optionally
//! distilled from the dense model), evaluation on the full dev file. One epoch per stage, batch
//! 32, dynamic padding, AdamW (weight decay 0.01 except biases and LayerNorm), 6% linear
//! warm-up, clipping at 1.0, seed 42 (SEED) — the PyTorch reference's budget.
//!
//!   SECATEUR_MINILM_DIR=... TASK=sst2 TRAIN_ROWS=8000 MAX_LEN=64 \
//!     CONFIGS=magnitude:0.5,magnitude:0.8,magnitude:0.8:distill,magnitude:2:4 \
//!     cargo bench --bench recipe
//!
//! A configuration is `CRITERION:SPARSITY[:distill]` or `CRITERION:N:M[:distill]` with
//! CRITERION one of magnitude, taylor, movement (movement: scores accumulated during the
//! recovery epoch, cubic schedule to the target over its first 70% of steps).

use candle_core::Device;
use secateur::data::{self, Format, Task};
use secateur::engine::heads::Head;
use secateur::engine::magnitude::{NmPattern, Scope};
use secateur::engine::model::{EncoderConfig, Weights};
use secateur::train::experiment::{evaluate, examples, head_kind, linear_targets, prune_one_shot, sparsity_of, Shape};
use secateur::train::gradual::{Criterion, GradualPruner, Ramp, Scores};
use secateur::train::loss::Distill;
use secateur::train::net::{Dropout, Net};
use secateur::train::trainer::{train, Masks, Quiet, Schedule, State};
use std::time::Instant;

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
    let w = Weights::from_safetensors(&std::fs::read(dir.join("model.safetensors")).unwrap(), secateur::engine::arch::Family::Bert, &Device::Cpu).unwrap();
    let config = EncoderConfig::from_checkpoint(&config_json, &w.shapes()).unwrap();
    let head = Head::load_or_init(&w, config.family, head_kind(task).unwrap(), config.hidden, 0.02, seed).unwrap();
    let mut dense = Net::new(config, &w, &head, Dropout::from_config(&config_json, secateur::engine::arch::Family::Bert)).unwrap();
    drop((w, head));
    let sched = |lr: f32| Schedule { epochs: 1, learning_rate: lr, batch_size: 32, seed, ..Default::default() };
    let t = Instant::now();
    let s = sched(5e-5);
    let mut state = State::new(&s);
    let mut no_masks = Masks::none(&dense);
    let loss = train(&mut dense, &train_set, &s, &mut no_masks, &mut state, None, &mut Quiet).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let base = evaluate(&dense, task, &dev, 64).unwrap();
    if configs.is_empty() {
        println!("dense\tseed={seed}\tmetrics={:?}\ttrain_loss={loss:.4}\tsteps={}\ttrain_s={secs:.0}", base.metrics, state.step);
        return;
    }
    println!("dense\tmetrics={:?}\ttrain_loss={loss:.4}\tsteps={}\ttrain_s={secs:.0}\tseq_per_s={:.1}", base.metrics, state.step, train_set.len() as f64 / secs);
    let targets = linear_targets(&dense);
    for c in configs.split(',') {
        let parts: Vec<&str> = c.split(':').collect();
        let criterion = match parts[0] {
            "magnitude" => Criterion::Magnitude,
            "taylor" => Criterion::Taylor,
            "movement" => Criterion::Movement,
            other => panic!("unknown criterion {other}"),
        };
        let distill = parts.last() == Some(&"distill");
        let nums: Vec<&str> = parts[1..].iter().copied().filter(|p| *p != "distill").collect();
        let shape = if nums.len() == 2 {
            Shape::NM(NmPattern { n: nums[0].parse().unwrap(), m: nums[1].parse().unwrap() })
        } else {
            Shape::Unstructured { sparsity: nums[0].parse().unwrap(), scope: Scope::Global }
        };
        let mut net = dense.clone();
        let s = sched(3e-5);
        let mut state = State::new(&s);
        let teacher = distill.then_some((&dense, Distill { temperature: 2.0, alpha: 0.5 }));
        let t = Instant::now();
        let (one_shot, loss) = if criterion == Criterion::Movement {
            // Gradual: movement scores accumulated during recovery, cubic ramp over 70% of it.
            let Shape::Unstructured { sparsity, scope } = shape else { panic!("movement is unstructured here") };
            let total = s.total_steps(train_set.len());
            let mut pruner = GradualPruner { scores: Scores::new(&net, targets.clone(), Criterion::Movement), ramp: Ramp::Cubic, start: 0, end: total * 7 / 10, every: (total / 20).max(1), target: sparsity, scope, reached: 0.0 };
            let mut masks = Masks::none(&net);
            let loss = train(&mut net, &train_set, &s, &mut masks, &mut state, teacher, &mut pruner).unwrap();
            (None, loss)
        } else {
            let mut masks = prune_one_shot(&mut net, criterion, &train_set[..train_set.len().min(1024)], 32, shape).unwrap();
            let one = evaluate(&net, task, &dev, 64).unwrap();
            let loss = train(&mut net, &train_set, &s, &mut masks, &mut state, teacher, &mut Quiet).unwrap();
            (Some(one.metrics), loss)
        };
        let after = evaluate(&net, task, &dev, 64).unwrap();
        println!("{c}\tsparsity={:.4}\tone_shot={:?}\trecovered={:?}\ttrain_loss={loss:.4}\ttrain_s={:.0}", sparsity_of(&net, &targets), one_shot, after.metrics, t.elapsed().as_secs_f64());
    }
}
