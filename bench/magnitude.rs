//! Global magnitude pruning of all encoder linear weights, timed (median of runs), against a
//! plain copy of the same bytes; and local (layer-wise: each tensor to the sparsity on its own).
//! Models: the real MiniLM (path in SECATEUR_MINILM_DIR) and a BERT-base-sized random model
//! built in memory.
//!
//!   cargo bench --bench magnitude            # or bench/magnitude.sh for the PyTorch comparison

use secateur::engine::io::st;
use secateur::engine::model::arch::{Arch, Family};
use secateur::engine::prune::magnitude::{prune_in_place, select_targets};
use secateur::engine::prune::Scope;
use secateur::engine::testing::TinyModel;
use std::time::Instant;

const RUNS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(label: &str, file: &[u8]) {
    let header = st::parse(file).unwrap();
    let targets = select_targets(Arch::Encoder(Family::Bert), &header, &[], &[]);
    let n: u64 = targets.iter().map(|t| header.tensors[t].numel()).sum();
    let bytes: usize = targets.iter().map(|t| (header.tensors[t].end - header.tensors[t].begin) as usize).sum();
    let mut prune_ms = Vec::new();
    let mut local_ms = Vec::new();
    let mut copy_ms = Vec::new();
    for _ in 0..RUNS {
        let mut out = file.to_vec();
        let t = Instant::now();
        prune_in_place(&mut out, &header, &targets, Scope::Global, 0.5, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
        prune_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(&out);
        let mut out = file.to_vec();
        let t = Instant::now();
        prune_in_place(&mut out, &header, &targets, Scope::Local, 0.5, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
        local_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(&out);
        // The physical limit: one pass over the same bytes, into memory already touched.
        let src = &file[header.data_start as usize..header.data_start as usize + bytes];
        let mut dst = vec![1u8; bytes];
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(src));
        copy_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(&dst);
    }
    println!(
        "{label}\tweights={n}\tglobal_magnitude_ms={:.2}\tlocal_magnitude_ms={:.2}\tcopy_ms={:.2}",
        median(prune_ms),
        median(local_ms),
        median(copy_ms)
    );
}

fn main() {
    if let Ok(dir) = std::env::var("SECATEUR_MINILM_DIR") {
        let file = std::fs::read(std::path::Path::new(&dir).join("model.safetensors")).unwrap();
        bench("minilm", &file);
    }
    let base =
        TinyModel { layers: 12, hidden: 768, heads: 12, ffn: 3072, vocab: 1000, ..Default::default() }.safetensors();
    bench("bert-base-random", &base);
    // So that PyTorch is measured on the same bytes (bench/magnitude.sh).
    if let Ok(dir) = std::env::var("SECATEUR_BENCH_OUT") {
        std::fs::write(std::path::Path::new(&dir).join("bert-base-random.safetensors"), &base).unwrap();
    }
}
