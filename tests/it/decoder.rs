//! Our decoder forward (GPT-2, Llama, Qwen2) equals transformers 5 on small random checkpoints
//! that transformers itself writes (`tests/reference/decoder_outputs.py`), in f32 and bf16,
//! on a batch with right padding, left padding and none: the LM head's logits and the last
//! hidden state at every real token, to 1e-4. The cases cover grouped-query attention, an
//! explicit head size that is not hidden/heads, tied and untied LM heads, Qwen2's and Llama's
//! optional biases, and the rotary scalings default, linear, llama3 and YaRN. Magnitude exports
//! (unstructured and 2:4), Wanda and SparseGPT exports of three of them load in transformers
//! with every weight matched and give the same outputs as our forward.

use crate::common;
use bytes::Bytes;
use secateur::engine::io::st;
use secateur::engine::model::decoder::Decoder;
use secateur::engine::model::{ModelConfig, ModelError};
use secateur::engine::prune::calibrated;
use secateur::engine::prune::run::{run, Amount, Importance, Kind, Layout, Plan, Quantization, Sink, Source};
use secateur::engine::prune::sparsegpt::Options;
use secateur::engine::prune::wanda::Rule;
use secateur::engine::prune::{NmPattern, Scope};
use serde_json::{json, Value};

const SEQ: usize = 12;
const VOCAB: u32 = 96;

fn batch() -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let ids: Vec<Vec<u32>> =
        (0..3u32).map(|b| (0..SEQ as u32).map(|i| (i * 37 + b * 11 + 5) % VOCAB).collect()).collect();
    let mask = vec![
        (0..SEQ).map(|i| u32::from(i < 8)).collect(),  // right-padded
        (0..SEQ).map(|i| u32::from(i >= 3)).collect(), // left-padded
        vec![1; SEQ],
    ];
    (ids, mask)
}

fn cases() -> Vec<Value> {
    let gpt2 = json!({"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16,
        "bos_token_id": 0, "eos_token_id": 0});
    let mut gpt2_wide = gpt2.clone();
    gpt2_wide["n_inner"] = json!(48);
    gpt2_wide["scale_attn_by_inverse_layer_idx"] = json!(true);
    gpt2_wide["activation_function"] = json!("gelu");
    let llama = json!({"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}});
    let llama_biased = json!({"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 12, "attention_bias": true, "mlp_bias": true,
        "tie_word_embeddings": true, "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}});
    let qwen2 = json!({"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": true,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
            "original_max_position_embeddings": 16}});
    let qwen2_mqa = json!({"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 1});
    let mut out = Vec::new();
    for (name, class, config) in [
        ("gpt2", "gpt2", gpt2),
        ("gpt2-wide", "gpt2", gpt2_wide),
        ("llama-gqa-llama3", "llama", llama),
        ("llama-biased-linear", "llama", llama_biased),
        ("qwen2-yarn", "qwen2", qwen2),
        ("qwen2-mqa", "qwen2", qwen2_mqa),
    ] {
        for (i, dtype) in ["float32", "bfloat16"].into_iter().enumerate() {
            out.push(json!({"name": format!("{name}-{dtype}"), "class": class, "config": config, "dtype": dtype,
                "seed": 17 + i}));
        }
    }
    out
}

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        x => vec![x.as_f64().unwrap() as f32],
    }
}

#[test]
fn decoder_forward_equals_transformers() {
    let work = tempfile::tempdir().unwrap();
    let (ids, mask) = batch();
    let cases = cases();
    let theirs = common::refenv::run_json(
        "decoder_outputs.py",
        &[work.path()],
        &json!({"input_ids": ids, "attention_mask": mask, "cases": cases}),
    );
    let (ids, mask): (Vec<u32>, Vec<u32>) = (ids.concat(), mask.concat());
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    compare(work.path(), &names, &ids, &mask, &theirs);

    // Magnitude (unstructured and 2:4), Wanda, SparseGPT (2:4) and one-block-less (`layers`)
    // exports of one checkpoint per family and dtype mix: they load in transformers with no missing, unexpected or mismatched
    // weight (the script exits otherwise) and still give our outputs.
    let mut pruned = Vec::new();
    let windows: Vec<Vec<u32>> = (0..4u32).map(|w| (0..10).map(|i| (i * 29 + w * 17 + 1) % VOCAB).collect()).collect();
    let (half, nm) = (Rule::Unstructured(0.5), Rule::NM(NmPattern { n: 2, m: 4 }));
    let sparsegpt = calibrated::Method::SparseGpt(Options { block: 16, damp: 0.01 });
    for name in ["gpt2-float32", "llama-gqa-llama3-bfloat16", "qwen2-yarn-float32"] {
        for (tag, kind) in [
            ("half", Kind::Magnitude(half)),
            ("2of4", Kind::Magnitude(nm)),
            ("wanda", Kind::Calibrated(calibrated::Method::Wanda, half)),
            ("sparsegpt-2of4", Kind::Calibrated(sparsegpt, nm)),
            ("one-block-less", Kind::Layers(Amount::Count(1), Importance::BlockInfluence)),
        ] {
            let to = format!("{name}-{tag}");
            prune_into(&work.path().join(name), &work.path().join(&to), kind, &windows, None);
            pruned.push(to);
        }
    }
    let load: Vec<Value> = pruned.iter().map(|n| json!({"name": n, "load": true})).collect();
    let theirs = common::refenv::run_json(
        "decoder_outputs.py",
        &[work.path()],
        &json!({"input_ids": batch().0, "attention_mask": batch().1, "cases": load}),
    );
    let names: Vec<&str> = pruned.iter().map(String::as_str).collect();
    compare(work.path(), &names, &ids, &mask, &theirs);
}

/// The int8 exports (`quantization`, compressed-tensors `int-quantized`) of Llama (grouped-query
/// attention, bf16) and Qwen2 (q/k/v biases) checkpoints that transformers wrote load as
/// `AutoModelForCausalLM` with every weight matched (the script exits otherwise) and give the
/// logits of the unquantized export within the quantization error: cosine ≥ 0.99 at every real
/// token.
#[test]
fn int8_decoder_exports_load_in_transformers() {
    let work = tempfile::tempdir().unwrap();
    let (ids, mask) = batch();
    let names = ["llama-gqa-llama3-bfloat16", "qwen2-yarn-float32"];
    let cases: Vec<Value> = cases().into_iter().filter(|c| names.contains(&c["name"].as_str().unwrap())).collect();
    assert_eq!(cases.len(), names.len());
    common::refenv::run_json(
        "decoder_outputs.py",
        &[work.path()],
        &json!({"input_ids": ids, "attention_mask": mask, "cases": cases}),
    );
    let windows: Vec<Vec<u32>> = (0..4u32).map(|w| (0..10).map(|i| (i * 29 + w * 17 + 1) % VOCAB).collect()).collect();
    let mut load = Vec::new();
    for name in names {
        let to = work.path().join(format!("{name}-int8"));
        let kind = Kind::Magnitude(Rule::Unstructured(0.5));
        prune_into(&work.path().join(name), &to, kind, &windows, Some(Quantization::Int8Dynamic));
        load.push(json!({"name": format!("{name}-int8"), "load": true}));
        load.push(json!({"name": format!("{name}-int8/compressed"), "load": true}));
    }
    let theirs = common::refenv::run_json(
        "decoder_outputs.py",
        &[work.path()],
        &json!({"input_ids": ids, "attention_mask": mask, "cases": load}),
    );
    let mask = mask.concat();
    for name in names {
        let (a, b) = (
            flat(&theirs[format!("{name}-int8")]["logits"]),
            flat(&theirs[format!("{name}-int8/compressed")]["logits"]),
        );
        assert_eq!(a.len(), b.len());
        let width = a.len() / mask.len();
        let mut worst = f64::INFINITY;
        for (row, m) in mask.iter().enumerate() {
            if *m == 0 {
                continue;
            }
            let (x, y) = (&a[row * width..(row + 1) * width], &b[row * width..(row + 1) * width]);
            let dot: f64 = x.iter().zip(y).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
            let norm = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            worst = worst.min(dot / (norm(x) * norm(y)));
        }
        eprintln!("{name}: int8 export vs unquantized, lowest per-token cosine of the logits {worst:.5}");
        assert!(worst >= 0.99, "{name}: {worst}");
    }
}

/// The Wanda masks our sequential pass chooses on a decoder equal those of the paper's code run
/// in PyTorch (`tests/reference/decoder_wanda.py`: block by block through the pruned blocks) on
/// the same windows: GPT-2 (transposed weights), Llama with grouped-query attention (bf16) and
/// Qwen2.
#[test]
fn decoder_wanda_masks_equal_the_papers_code() {
    use secateur::engine::model::arch::Arch;
    use secateur::engine::testing::TinyDecoder;
    let work = tempfile::tempdir().unwrap();
    let windows: Vec<Vec<u32>> = (0..6u32).map(|w| (0..12).map(|i| (i * 31 + w * 13 + 2) % 64).collect()).collect();
    for (model_type, tied, dtype) in
        [("gpt2", true, st::Dtype::F32), ("llama", false, st::Dtype::BF16), ("qwen2", true, st::Dtype::F32)]
    {
        let m = TinyDecoder { model_type, tied, dtype, layers: 3, ..Default::default() };
        let dir = work.path().join(model_type);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), m.config_json()).unwrap();
        std::fs::write(dir.join("model.safetensors"), m.safetensors()).unwrap();
        let theirs =
            common::refenv::run_json("decoder_wanda.py", &[&dir], &json!({"windows": windows, "sparsity": 0.5}));
        let to = work.path().join(format!("{model_type}-wanda"));
        let wanda = Kind::Calibrated(calibrated::Method::Wanda, Rule::Unstructured(0.5));
        prune_into(&dir, &to, wanda, &windows, None);
        let out = std::fs::read(to.join("model.safetensors")).unwrap();
        let h = st::parse(&out).unwrap();
        let arch = Arch::parse(model_type).unwrap();
        let (mut compared, mut differ) = (0usize, 0usize);
        for (name, t) in &h.tensors {
            if !arch.is_linear_weight(name) {
                continue;
            }
            let r = (h.data_start + t.begin) as usize..(h.data_start + t.end) as usize;
            let ours: Vec<bool> =
                secateur::engine::prune::magnitude::magnitudes(&out[r], t.dtype).iter().map(|v| *v == 0.0).collect();
            let reference: Vec<bool> = flat(&theirs[name]).iter().map(|v| *v == 1.0).collect();
            assert_eq!(ours.len(), reference.len(), "{model_type} {name}");
            compared += 1;
            differ += ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
        }
        assert_eq!(compared, if model_type == "gpt2" { 12 } else { 21 }, "{model_type}");
        eprintln!("{model_type}: {differ} mask entries differ from the paper's code");
        assert_eq!(differ, 0, "{model_type}");
    }
}

/// Perplexity (`train::lm` windows and NLL, `metrics::perplexity`) equals transformers' (its
/// own loss with `labels`, `tests/reference/decoder_perplexity.py`) to 1e-5 relative, per window
/// and in total, on the three families, from checkpoints `engine::testing::TinyDecoder` writes
/// (which transformers loads with every weight matched).
#[test]
fn perplexity_equals_transformers() {
    use secateur::engine::testing::TinyDecoder;
    use secateur::train::lm::{eval_windows, window_nlls};
    let work = tempfile::tempdir().unwrap();
    let text: Vec<u32> = (0..230u32).map(|i| (i * i * 7 + i * 3 + 1) % 64).collect();
    let windows = eval_windows(&text, 32, Some(6));
    assert_eq!(windows.len(), 6);
    for (model_type, tied, dtype) in
        [("gpt2", true, st::Dtype::F32), ("llama", false, st::Dtype::BF16), ("qwen2", true, st::Dtype::F32)]
    {
        let m = TinyDecoder { model_type, tied, dtype, layers: 3, seed: 5, ..Default::default() };
        let dir = work.path().join(model_type);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), m.config_json()).unwrap();
        std::fs::write(dir.join("model.safetensors"), m.safetensors()).unwrap();
        let theirs = common::refenv::run_json("decoder_perplexity.py", &[&dir], &json!({"windows": windows}));
        let model = Decoder::from_files(m.config_json().as_bytes(), &m.safetensors()).unwrap();
        let ours = window_nlls::<ModelError>(&model, &windows, &mut |_| Ok(())).unwrap();
        for (i, (a, b)) in ours.iter().zip(flat(&theirs["nll"])).enumerate() {
            let rel = (a - b as f64).abs() / (b as f64).abs();
            assert!(rel < 1e-5, "{model_type} window {i}: {a} vs {b}");
        }
        let predicted = windows.iter().map(|w| w.len() as u64 - 1).sum();
        let ppl = secateur::metrics::perplexity(ours.iter().sum(), predicted);
        let want = theirs["perplexity"].as_f64().unwrap();
        eprintln!("{model_type}: perplexity {ppl} (transformers {want})");
        assert!((ppl - want).abs() / want < 1e-5, "{model_type}: {ppl} vs {want}");
    }
}

/// A model directory as the engine's [`Sink`] writes it.
struct Dir<'a>(&'a std::path::Path);

impl Sink<ModelError> for Dir<'_> {
    fn progress(&mut self, _: &str, _: f64) -> Result<(), ModelError> {
        Ok(())
    }
    fn model(&mut self, layout: Layout, weights: Bytes, config: Bytes) -> Result<(), ModelError> {
        let dir = match layout {
            Layout::Hf => self.0.to_path_buf(),
            Layout::Compressed => self.0.join("compressed"),
            Layout::Compact => panic!("no compact layout here"),
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), weights).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        Ok(())
    }
    fn masks(&mut self, _: Bytes) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Our forward on each named checkpoint against transformers' outputs, at every real token.
fn compare(work: &std::path::Path, names: &[&str], ids: &[u32], mask: &[u32], theirs: &Value) {
    for &name in names {
        let dir = work.join(name);
        let model = Decoder::from_files(
            &std::fs::read(dir.join("config.json")).unwrap(),
            &std::fs::read(dir.join("model.safetensors")).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours = model.forward_padded(ids, mask, SEQ).unwrap();
        for (what, mine, width) in
            [("logits", &ours.logits, VOCAB as usize), ("hidden", &ours.hidden, model.config.hidden)]
        {
            let reference = flat(&theirs[name][what]);
            assert_eq!(reference.len(), mine.len(), "{name} {what}");
            let mut worst = 0f32;
            for (row, m) in mask.iter().enumerate() {
                if *m == 0 {
                    continue;
                }
                for c in 0..width {
                    worst = worst.max((mine[row * width + c] - reference[row * width + c]).abs());
                }
            }
            eprintln!("{name} {what}: max abs difference to transformers {worst:e}");
            assert!(worst < 1e-4, "{name} {what}: {worst}");
        }
    }
}

/// Prune the checkpoint in `from` into a new directory `to` (and quantize it into
/// `to/compressed` when asked), through the engine's one entry point, as a prune job does
/// (calibrated methods on `windows` of token ids, of equal length).
fn prune_into(
    from: &std::path::Path,
    to: &std::path::Path,
    kind: Kind,
    windows: &[Vec<u32>],
    quantization: Option<Quantization>,
) {
    let config = std::fs::read(from.join("config.json")).unwrap();
    let weights = Bytes::from(std::fs::read(from.join("model.safetensors")).unwrap());
    let header = st::parse(&weights).unwrap();
    let model = ModelConfig::parse(&config).unwrap();
    let plan = Plan {
        kind,
        scope: Scope::Local,
        include: vec![],
        exclude: vec![],
        pattern: None,
        compact: false,
        quantization,
        parameters: json!({}),
    };
    std::fs::create_dir_all(to).unwrap();
    let src = Source { config_json: &config, model: &model, weights, header: &header };
    let zeros = vec![0u32; windows[0].len()];
    let seqs: Vec<(&[u32], &[u32])> = windows.iter().map(|w| (w.as_slice(), zeros.as_slice())).collect();
    let batches = secateur::train::batch::encoder_batches(&seqs, 8, 0).unwrap();
    let report = run(&plan, src, Some(&batches), &mut Dir(to)).unwrap();
    let t = &report.totals;
    assert_eq!(t.target_parameters - t.target_nonzeros, t.target_parameters / 2, "{}", to.display());
}
