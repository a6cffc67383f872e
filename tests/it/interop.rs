//! Interoperability with Hugging Face transformers 5 (PyTorch), through the reference
//! environment (`scripts/reference-env.sh`): our encoder matches it on the real MiniLM, and the
//! `hf` exports of pruning jobs load with `AutoModel.from_pretrained` as they are and compute
//! what our encoder computes on them.

use crate::common;

use candle_core::Device;
use common::minilm::{max_diff_unpadded, sst2_batch};
use secateur::engine::model::{Encoder, ModelError};
use std::path::Path;

fn ours(
    dir: &Path,
    ids: &candle_core::Tensor,
    mask: &candle_core::Tensor,
    tt: &candle_core::Tensor,
) -> candle_core::Tensor {
    let cfg = std::fs::read(dir.join("config.json")).unwrap();
    let w = std::fs::read(dir.join("model.safetensors")).unwrap();
    Encoder::from_files(&cfg, &w, &Device::Cpu).unwrap().forward(ids, Some(tt), mask).unwrap()
}

#[test]
fn minilm_and_its_hf_exports_match_transformers() {
    let model = common::minilm::dir();
    let work = tempfile::tempdir().unwrap();
    let specs = [
        (
            "heads",
            r#"{"pruning": {"method": "magnitude", "granularity": "heads", "scope": "local", "sparsity": 0.5}, "export": {"compact": true}}"#,
        ),
        (
            "neurons",
            r#"{"pruning": {"method": "magnitude", "granularity": "neurons", "scope": "local", "sparsity": 0.5}, "export": {"compact": true}}"#,
        ),
        (
            "neurons-global",
            r#"{"pruning": {"method": "magnitude", "granularity": "neurons", "scope": "global", "sparsity": 0.3}}"#,
        ),
        ("nm", r#"{"pruning": {"method": "magnitude", "granularity": "n:m", "pattern": "2:4"}}"#),
        ("global", r#"{"pruning": {"method": "magnitude", "scope": "global", "sparsity": 0.6}}"#),
        ("layers", r#"{"pruning": {"method": "magnitude", "granularity": "layers", "sparsity": 0.5}}"#),
    ];
    let mut dirs = vec![model.clone()];
    for (name, spec) in specs {
        let out = work.path().join(name);
        secateur::jobs::run_local(spec.as_bytes(), &model, None, &out, |_| {}).unwrap();
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

/// Our Wanda mask equals the paper's rule computed directly in PyTorch on the real MiniLM, with
/// activations taken from real sentences: every encoder linear map, except entries whose score
/// ties the row's threshold to within f32 rounding of the activations (at most 8 per map).
#[test]
fn wanda_mask_equals_the_paper_rule_in_pytorch() {
    use secateur::engine::prune::wanda::{input_norms, mask, Rule};
    let model = common::minilm::dir();
    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let sst2 = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue/SST-2/dev.tsv"))
        .unwrap();
    let seqs: Vec<Vec<u32>> = sst2
        .lines()
        .skip(1)
        .take(16)
        .map(|l| tok.encode(l.split('\t').next().unwrap().trim(), true).unwrap().get_ids().to_vec())
        .collect();
    // One sentence per batch: no padding, as in the paper's calibration.
    let batches: Vec<_> = seqs
        .iter()
        .map(|ids| {
            let t = candle_core::Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
            (t.clone(), t.ones_like().unwrap(), t.zeros_like().unwrap())
        })
        .collect();
    let cfg = std::fs::read(model.join("config.json")).unwrap();
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let enc = Encoder::from_files(&cfg, &bytes, &Device::Cpu).unwrap();
    let norms = input_norms::<ModelError>(&enc, &batches, &mut |_| Ok(())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, serde_json::to_vec(&seqs).unwrap()).unwrap();
    let out = dir.path().join("masks.safetensors");
    let r = std::process::Command::new(common::refenv::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/wanda_mask.py"))
        .arg(&model)
        .arg(&tokens)
        .arg("0.5")
        .arg(&out)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let theirs = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(theirs.len(), 36);
    let weights = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    for (name, their_mask) in &theirs {
        let w = &weights[name];
        let (rows, cols) = w.dims2().unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ours = mask(&values, cols, &norms[name], Rule::Unstructured(0.5));
        let theirs: Vec<bool> =
            their_mask.flatten_all().unwrap().to_vec1::<u8>().unwrap().into_iter().map(|b| b == 1).collect();
        assert_eq!(ours.len(), rows * cols);
        // Both sides compute the activations in f32 with their own kernels (our polynomial exp
        // and rational erf, PyTorch's): the norms agree to ~1e-6 relative, so an entry may
        // flip only where its score ties the row's threshold at that precision.
        let mut differ = 0;
        for r in 0..rows {
            let score: Vec<f64> = (0..cols).map(|j| f64::from(values[r * cols + j].abs()) * norms[name][j]).collect();
            let mut sorted = score.clone();
            sorted.sort_by(f64::total_cmp);
            let threshold = sorted[cols / 2 - 1];
            for j in (0..cols).filter(|&j| ours[r * cols + j] != theirs[r * cols + j]) {
                differ += 1;
                let gap = (score[j] - threshold).abs() / threshold;
                assert!(gap < 1e-5, "{name} row {r} col {j}: score {} is {gap:e} from the threshold", score[j]);
            }
        }
        assert!(differ <= 8, "{name}: {differ} of {} mask entries differ", rows * cols);
        if differ > 0 {
            eprintln!("{name}: {differ} of {} entries differ, each a tie at f32 precision", rows * cols);
        }
    }
}

/// A prune job's int8 export (`"quantization": {"method": "int8"}`, compressed-tensors
/// `int-quantized`) loads in transformers 5 with the compressed-tensors package, every weight
/// matched, and stays within the quantization error of the unquantized export: cosine ≥ 0.99
/// between the two last hidden states at every real token of an SST-2 batch, on MiniLM.
#[test]
fn int8_compressed_exports_load_in_transformers_within_the_quantization_error() {
    let model = common::minilm::dir();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("q");
    let spec = r#"{"pruning": {"method": "magnitude", "scope": "global", "sparsity": 0.5}, "quantization": {"method": "int8"}}"#;
    secateur::jobs::run_local(spec.as_bytes(), &model, None, &out, |_| {}).unwrap();
    let compressed = out.join("compressed");
    let (hf_bytes, q_bytes) = (
        std::fs::metadata(out.join("model.safetensors")).unwrap().len(),
        std::fs::metadata(compressed.join("model.safetensors")).unwrap().len(),
    );
    eprintln!("model.safetensors: {hf_bytes} bytes, compressed/: {q_bytes} bytes");
    // Each linear weight goes from 4 bytes to 1, plus a 4-byte scale per output channel; the
    // rest (embeddings: most of MiniLM's bytes) is unchanged; headers differ by little.
    let h = secateur::engine::io::st::parse(&std::fs::read(compressed.join("model.safetensors")).unwrap()).unwrap();
    let count =
        |f: &dyn Fn(&String) -> bool| h.tensors.iter().filter(|(n, _)| f(n)).map(|(_, t)| t.numel()).sum::<u64>();
    let int8 = count(&|n| h.tensors[n].dtype == secateur::engine::io::st::Dtype::I8);
    let scales = count(&|n| n.ends_with("_scale"));
    assert_eq!(int8, 10_616_832, "every linear weight of the 6 layers");
    let expected = hf_bytes - 3 * int8 + 4 * scales;
    assert!(q_bytes.abs_diff(expected) < 64 * 1024, "{q_bytes} bytes, expected about {expected}");
    let (ids, mask, tt) = sst2_batch(&model, 8);
    // hf_outputs.py refuses a model with missing, unexpected or mismatched weights.
    let theirs = common::refenv::hf_last_hidden(&[&out, &compressed], &ids, &mask, &tt);
    let (a, b) = (theirs[0].to_vec3::<f32>().unwrap(), theirs[1].to_vec3::<f32>().unwrap());
    let m = mask.to_vec2::<u32>().unwrap();
    let mut worst = f64::INFINITY;
    for (s, row) in m.iter().enumerate() {
        for (t, real) in row.iter().enumerate() {
            if *real == 0 {
                continue;
            }
            let (x, y) = (&a[s][t], &b[s][t]);
            let dot: f64 = x.iter().zip(y).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
            let norm = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            worst = worst.min(dot / (norm(x) * norm(y)));
        }
    }
    eprintln!("int8 export vs the unquantized export in transformers: lowest per-token cosine {worst:.5}");
    assert!(worst >= 0.99, "{worst}");
}
