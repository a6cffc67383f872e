//! Interoperability with Hugging Face transformers 5 (PyTorch), through the reference
//! environment (`scripts/reference-env.sh`): our encoder matches it on the real MiniLM, and the
//! `hf` exports of pruning jobs load with `AutoModel.from_pretrained` as they are and compute
//! what our encoder computes on them.

mod common;

use candle_core::Device;
use common::minilm::{max_diff_unpadded, sst2_batch};
use secateur::engine::model::Encoder;
use std::path::Path;

fn ours(dir: &Path, ids: &candle_core::Tensor, mask: &candle_core::Tensor, tt: &candle_core::Tensor) -> candle_core::Tensor {
    let cfg = std::fs::read(dir.join("config.json")).unwrap();
    let w = std::fs::read(dir.join("model.safetensors")).unwrap();
    Encoder::from_files(&cfg, &w, &Device::Cpu).unwrap().forward(ids, Some(tt), mask).unwrap()
}

#[test]
fn minilm_and_its_hf_exports_match_transformers() {
    let model = common::minilm::dir();
    let work = tempfile::tempdir().unwrap();
    let specs = [
        ("heads", r#"{"pruning": {"method": "magnitude", "granularity": "heads", "scope": "local", "sparsity": 0.5}, "export": {"compact": true}}"#),
        ("neurons", r#"{"pruning": {"method": "magnitude", "granularity": "neurons", "scope": "local", "sparsity": 0.5}, "export": {"compact": true}}"#),
        ("neurons-global", r#"{"pruning": {"method": "magnitude", "granularity": "neurons", "scope": "global", "sparsity": 0.3}}"#),
        ("nm", r#"{"pruning": {"method": "magnitude", "granularity": "n:m", "pattern": "2:4"}}"#),
        ("global", r#"{"pruning": {"method": "magnitude", "scope": "global", "sparsity": 0.6}}"#),
        ("layers", r#"{"pruning": {"method": "magnitude", "granularity": "layers", "sparsity": 0.5}}"#),
    ];
    let mut dirs = vec![model.clone()];
    for (name, spec) in specs {
        let out = work.path().join(name);
        secateur::jobs::run_local(spec.as_bytes(), &model, &out, |_| {}).unwrap();
        dirs.push(out);
    }
    let (ids, mask, tt) = sst2_batch(&model, 8);
    let refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let theirs = common::refenv::hf_last_hidden(&refs, &ids, &mask, &tt);
    for (dir, hf) in dirs.iter().zip(&theirs) {
        let mine = ours(dir, &ids, &mask, &tt);
        let d = max_diff_unpadded(&mine, hf, &mask);
        eprintln!("{}: max abs difference to transformers {d:e}", dir.file_name().unwrap().to_string_lossy());
        assert!(d < 1e-4, "{}: {d}", dir.display());
    }
    // The compact layouts (our runtime only) compute the same as their hf twins.
    for name in ["heads", "neurons"] {
        let hf_dir = work.path().join(name);
        let a = ours(&hf_dir, &ids, &mask, &tt);
        let b = ours(&hf_dir.join("compact"), &ids, &mask, &tt);
        let d = max_diff_unpadded(&a, &b, &mask);
        assert!(d < 1e-5, "{name}: compact vs hf {d}");
    }
}
