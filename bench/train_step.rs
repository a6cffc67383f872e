//! Training-step throughput of the trainable model (`train::net`) on MiniLM with a fresh
//! 2-label classification head: a batch of 32 real MRPC dev sentence pairs padded to 128 tokens
//! (the same tensor PyTorch gets; we compute its real tokens only, packed, unless
//! SECATEUR_BENCH_PADDED=1), dropout on, forward + cross-entropy + backward + clipping at
//! 1.0 + AdamW. Median over SECATEUR_BENCH_RUNS steps after a warm-up step, with the median
//! forward, backward and optimizer times and the process's peak resident memory. With
//! SECATEUR_BENCH_INPUT set, writes the batch there for bench/torch_train.py.
//!
//!   bench/train.sh      # interleaved with PyTorch; see BENCHMARKS.md

use candle_core::Device;
use secateur::engine::model::heads::{Head, HeadKind};
use secateur::engine::model::{EncoderConfig, Weights};
use secateur::train::batch::Padded;
use secateur::train::loss::{task_loss, Targets};
use secateur::train::net::Net;
use secateur::train::optim::{clip_grad_norm, AdamW, AdamWConfig, Param};
use std::time::Instant;

#[path = "mrpc_batch.rs"]
mod mrpc_batch;
use mrpc_batch::{MrpcBatch, BATCH, SEQ};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    secateur::app::tune_allocator();
    let runs: usize = std::env::var("SECATEUR_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = std::path::PathBuf::from(std::env::var("SECATEUR_MINILM_DIR").expect("SECATEUR_MINILM_DIR"));
    let input = MrpcBatch::load(&dir);
    let real = input.real_tokens();
    let labels = input.labels;
    let b = Padded { rows: BATCH, len: SEQ, ids: input.ids, mask: input.mask, type_ids: input.type_ids };
    let config_json = std::fs::read(dir.join("config.json")).unwrap();
    let w = Weights::from_safetensors(
        &std::fs::read(dir.join("model.safetensors")).unwrap(),
        secateur::engine::model::arch::Family::Bert,
        &Device::Cpu,
    )
    .unwrap();
    let config = EncoderConfig::from_checkpoint(&config_json, &w.shapes()).unwrap();
    let head = Head::load_or_init(&w, config.family, HeadKind::Classification(2), config.hidden, 0.02, 42).unwrap();
    let dropout = secateur::engine::model::ModelConfig::parse(&config_json).unwrap().dropout;
    let mut net = Net::new(config, &w, &head, dropout).unwrap();
    drop((w, head));
    // SECATEUR_BENCH_PADDED=1: compute every padded position, as PyTorch does.
    net.packing = std::env::var("SECATEUR_BENCH_PADDED").map_or(true, |v| v != "1");
    let label = if net.packing { "secateur" } else { "secateur-padded" };
    let mut adam = AdamW::new(AdamWConfig::default());
    let mut grads = net.zero_grads();
    let targets = Targets::Classes(labels);
    let (mut fw, mut bw, mut st, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut loss = 0.0;
    for i in 0..=runs {
        let t0 = Instant::now();
        grads.zero();
        let out = net.forward(&b, Some(i as u64)).unwrap();
        let (l, d) = task_loss(&out.logits, &targets, b.len, None);
        loss = l;
        let t1 = Instant::now();
        net.backward(&out.tape, &d, &mut grads, None);
        drop(out);
        let mut gs: Vec<&mut [f32]> = grads.0.iter_mut().map(|g| g.as_mut_slice()).collect();
        clip_grad_norm(&mut gs, 1.0);
        let t2 = Instant::now();
        let mut params: Vec<Param> = net
            .params
            .iter_mut()
            .zip(&grads.0)
            .map(|(p, g)| Param { name: &p.name, value: &mut p.value, grad: g })
            .collect();
        adam.update(&mut params, 5e-5);
        let t3 = Instant::now();
        if i > 0 {
            fw.push((t1 - t0).as_secs_f64() * 1e3);
            bw.push((t2 - t1).as_secs_f64() * 1e3);
            st.push((t3 - t2).as_secs_f64() * 1e3);
            total.push((t3 - t0).as_secs_f64() * 1e3);
        }
    }
    let ms = median(total);
    println!(
        "{label}\tstep_ms={ms:.1}\tseq_per_s={:.2}\tforward_ms={:.1}\tbackward_ms={:.1}\toptimizer_ms={:.1}\tpeak_rss_mb={:.0}\tloss={loss:.4}\treal_tokens={real:.3}\truns={runs}\tthreads={}",
        BATCH as f64 * 1e3 / ms,
        median(fw),
        median(bw),
        median(st),
        peak_rss_mb(),
        rayon::current_num_threads()
    );
}
