//! Forward throughput of our encoder: a batch of 32 real MRPC dev sentence pairs padded to 128
//! tokens, median over runs, of `Encoder::forward` (every position, as PyTorch) and of
//! `Encoder::forward_packed` (real tokens only; label suffix `-packed`). Models from SECATEUR_BENCH_MODELS ("DIR=LABEL,DIR=LABEL"; by default
//! the MiniLM in SECATEUR_MINILM_DIR as "dense"). With SECATEUR_BENCH_INPUT set, also writes the
//! batch there as JSON so that bench/torch_forward.py runs the same tokens.
//!
//!   bench/forward.sh      # interleaved with PyTorch; see BENCHMARKS.md

use candle_core::{Device, Tensor};
use secateur::engine::model::Encoder;
use std::time::Instant;

#[path = "mrpc_batch.rs"]
mod mrpc_batch;
use mrpc_batch::{MrpcBatch, BATCH, SEQ};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    secateur::app::tune_allocator();
    let runs: usize = std::env::var("SECATEUR_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let minilm = std::env::var("SECATEUR_MINILM_DIR").unwrap_or_default();
    let models = std::env::var("SECATEUR_BENCH_MODELS").unwrap_or_else(|_| format!("{minilm}=dense"));
    let models: Vec<(String, String)> = models
        .split(',')
        .map(|m| m.split_once('=').map(|(d, l)| (d.to_string(), l.to_string())).expect("DIR=LABEL"))
        .collect();
    let input = MrpcBatch::load(std::path::Path::new(&models[0].0));
    let real = input.real_tokens();
    let t = |v: &Vec<u32>| Tensor::from_vec(v.clone(), (BATCH, SEQ), &Device::Cpu).unwrap();
    let (ids, mask, tt) = (t(&input.ids), t(&input.mask), t(&input.type_ids));
    for (dir, label) in models {
        let dir = std::path::Path::new(&dir);
        let model = Encoder::from_files(
            &std::fs::read(dir.join("config.json")).unwrap(),
            &std::fs::read(dir.join("model.safetensors")).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        // `forward` computes every position as the reference does; `forward_packed` only the
        // real tokens (the same values there, 0 at padding).
        for (mode, packed) in [("", false), ("-packed", true)] {
            let run = || {
                if packed {
                    model.forward_packed(&ids, Some(&tt), &mask)
                } else {
                    model.forward(&ids, Some(&tt), &mask)
                }
            };
            run().unwrap(); // warm-up
            let mut ms = Vec::new();
            for _ in 0..runs {
                let start = Instant::now();
                std::hint::black_box(run().unwrap());
                ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
            let m = median(ms);
            println!(
                "{label}{mode}\tforward_ms={m:.1}\tseq_per_s={:.2}\treal_tokens={real:.3}\truns={runs}\tthreads={}",
                BATCH as f64 * 1e3 / m,
                rayon::current_num_threads()
            );
        }
    }
}
