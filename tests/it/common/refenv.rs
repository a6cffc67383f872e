//! The reference Python environment (PyTorch + transformers from PyPI), created once by
//! `scripts/reference-env.sh` outside the checkout. Tests that need it fail loudly when it
//! cannot be created.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The environment's python interpreter.
pub fn python() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("scripts/reference-env.sh"))
        .output()
        .expect("running scripts/reference-env.sh");
    assert!(
        out.status.success(),
        "the reference environment could not be created:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Outputs of Hugging Face models on one batch (`tests/reference/hf_outputs.py`): for each
/// (model directory, kind) — `base`, `classification` or `qa` — the tensors it returns by name.
#[allow(dead_code)]
pub fn hf_outputs(
    models: &[(&Path, &str)],
    ids: &Tensor,
    mask: &Tensor,
    token_types: &Tensor,
) -> Vec<HashMap<String, Tensor>> {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs.safetensors");
    let mut m = HashMap::new();
    m.insert("input_ids".to_string(), ids.to_dtype(DType::I64).unwrap());
    m.insert("attention_mask".to_string(), mask.to_dtype(DType::I64).unwrap());
    m.insert("token_type_ids".to_string(), token_types.to_dtype(DType::I64).unwrap());
    candle_core::safetensors::save(&m, &inputs).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/reference/hf_outputs.py")).arg(&inputs);
    let outs: Vec<PathBuf> = (0..models.len()).map(|i| dir.path().join(format!("out{i}.safetensors"))).collect();
    for ((model, kind), out) in models.iter().zip(&outs) {
        cmd.arg(model).arg(kind).arg(out);
    }
    let r = cmd.env("HF_HUB_OFFLINE", "1").env("TRANSFORMERS_OFFLINE", "1").output().unwrap();
    assert!(r.status.success(), "transformers failed:\n{}", String::from_utf8_lossy(&r.stderr));
    outs.iter().map(|o| candle_core::safetensors::load(o, &Device::Cpu).unwrap()).collect()
}

/// Last hidden states of `transformers.AutoModel` for each model directory, on one batch.
#[allow(dead_code)]
pub fn hf_last_hidden(models: &[&Path], ids: &Tensor, mask: &Tensor, token_types: &Tensor) -> Vec<Tensor> {
    let base: Vec<(&Path, &str)> = models.iter().map(|m| (*m, "base")).collect();
    hf_outputs(&base, ids, mask, token_types).into_iter().map(|mut o| o.remove("last_hidden_state").unwrap()).collect()
}

/// Runs `tests/reference/<script>` in the reference environment as `script [ARGS...] IN OUT`
/// with `input` as JSON in IN, and returns the JSON it writes to OUT (offline: no hub).
#[allow(dead_code)]
pub fn run_json(script: &str, args: &[&Path], input: &serde_json::Value) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&inp, input.to_string()).unwrap();
    let r = Command::new(python())
        .arg(root().join("tests/reference").join(script))
        .args(args)
        .arg(&inp)
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(r.status.success(), "{script} failed:\n{}", String::from_utf8_lossy(&r.stderr));
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}
