//! Wanda and SparseGPT on the real MiniLM with 128 calibration sentences (the first 128 rows of
//! SST-2 train, up to 128 tokens), 50% unstructured and 2:4, timed end to end through the job
//! code (`secateur prune` runs the same): tokenizing, calibration forward passes, pruning,
//! writing the model, masks and report. Medians of 5 runs, with the calibration and pruning
//! stages split out from the progress reports.
//!
//!   cargo bench --bench calibrated     # the MiniLM directory in SECATEUR_MINILM_DIR

use secateur::data::{Format, Task};
use secateur::jobs::{run_local, LocalDataset};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let model = std::path::PathBuf::from(
        std::env::var("SECATEUR_MINILM_DIR").expect("SECATEUR_MINILM_DIR: the MiniLM model directory"),
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sst2 = std::fs::read_to_string(root.join("../shared/data/glue/SST-2/train.tsv"))
        .expect("../shared/data/glue/SST-2/train.tsv");
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("calibration.tsv");
    std::fs::write(&cal, sst2.lines().take(129).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let threads = rayon::current_num_threads();
    for (method, pruning) in [
        ("wanda 50%", r#"{"method": "wanda", "sparsity": 0.5}"#),
        ("wanda 2:4", r#"{"method": "wanda", "granularity": "n:m", "pattern": "2:4"}"#),
        ("sparsegpt 50%", r#"{"method": "sparsegpt", "sparsity": 0.5}"#),
        ("sparsegpt 2:4", r#"{"method": "sparsegpt", "granularity": "n:m", "pattern": "2:4"}"#),
    ] {
        let spec = format!(r#"{{"pruning": {pruning}, "calibration": {{"samples": 128, "max_seq_len": 128}}}}"#);
        let (mut total, mut calibrating, mut pruning_ms) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..RUNS {
            let out = dir.path().join(format!("out-{run}"));
            let stages: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
            let s = stages.clone();
            let t = Instant::now();
            run_local(
                spec.as_bytes(),
                &model,
                Some(LocalDataset { path: &cal, format: Format::GlueTsv, task: Some(Task::Sst2) }),
                &out,
                move |p| {
                    let mut s = s.lock().unwrap();
                    if s.last().map(|(stage, _)| stage != &p.stage).unwrap_or(true) {
                        s.push((p.stage.clone(), Instant::now()));
                    }
                },
            )
            .unwrap();
            total.push(t.elapsed().as_secs_f64() * 1e3);
            let s = stages.lock().unwrap();
            let at = |name: &str| s.iter().find(|(n, _)| n == name).map(|(_, i)| *i);
            // Wanda: calibrating → pruning → writing; SparseGPT interleaves both in "pruning".
            let (cal_start, prune_start, write_start) =
                (at("calibrating"), at("pruning").unwrap(), at("writing").unwrap());
            calibrating.push(cal_start.map(|c| (prune_start - c).as_secs_f64() * 1e3).unwrap_or(f64::NAN));
            pruning_ms.push((write_start - prune_start).as_secs_f64() * 1e3);
            std::fs::remove_dir_all(&out).unwrap();
        }
        println!(
            "{method}\ttotal_ms={:.0}\tcalibrating_ms={:.0}\tpruning_ms={:.0}\tthreads={threads}\truns={RUNS}",
            median(total),
            median(calibrating),
            median(pruning_ms)
        );
    }
}
