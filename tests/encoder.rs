//! Our encoder against candle-transformers' `BertModel` (same outputs on an unpruned model):
//! on tiny random checkpoints, and on the real MiniLM with a padded batch of real sentences.

mod common;

use candle_core::{DType, Device, Tensor};
use secateur::engine::model::Encoder;
use secateur::engine::testing::TinyModel;

/// Max |a - b| over positions where `mask` is 1.
fn max_diff_unpadded(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let d = (a - b).unwrap().abs().unwrap().broadcast_mul(&m).unwrap();
    d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn reference(config_json: &str, weights: &[u8]) -> candle_transformers::models::bert::BertModel {
    let cfg: candle_transformers::models::bert::Config = serde_json::from_str(config_json).unwrap();
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(weights.to_vec(), DType::F32, &Device::Cpu).unwrap();
    candle_transformers::models::bert::BertModel::load(vb, &cfg).unwrap()
}

#[test]
fn matches_candle_transformers_on_tiny_random_models() {
    for with_prefix in [false, true] {
        let m = TinyModel { with_prefix_and_head: with_prefix, layers: 3, seed: 11, ..Default::default() };
        let (cfg, w) = (m.config_json(), m.safetensors());
        let ours = Encoder::from_files(cfg.as_bytes(), &w, &Device::Cpu).unwrap();
        let theirs = reference(&cfg, &w);
        let ids: Vec<u32> = (0..2 * 9).map(|i| 5 + (i * 13 % 59) as u32).collect();
        let mut mask = vec![1u32; 18];
        for j in 6..9 {
            mask[9 + j] = 0;
        }
        let ids = Tensor::from_vec(ids, (2, 9), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(mask, (2, 9), &Device::Cpu).unwrap();
        let tt = ids.zeros_like().unwrap();
        let a = ours.forward(&ids, Some(&tt), &mask).unwrap();
        let b = theirs.forward(&ids, &tt, Some(&mask)).unwrap();
        let d = max_diff_unpadded(&a, &b, &mask);
        eprintln!("tiny (prefix={with_prefix}): max abs difference {d:e}");
        assert!(d < 1e-5, "max abs difference {d}");
    }
}

#[test]
fn matches_candle_transformers_on_real_minilm() {
    let dir = common::minilm::dir();
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let w = std::fs::read(dir.join("model.safetensors")).unwrap();
    let ours = Encoder::from_files(cfg.as_bytes(), &w, &Device::Cpu).unwrap();
    let theirs = reference(&cfg, &w);
    let mut tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tok.with_padding(Some(tokenizers::PaddingParams { strategy: tokenizers::PaddingStrategy::BatchLongest, ..Default::default() }));
    // Real sentences of different lengths (SST-2 dev), so the batch is padded.
    let sst2 = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue/SST-2/dev.tsv")).unwrap();
    let sentences: Vec<String> = sst2.lines().skip(1).take(8).map(|l| l.split('\t').next().unwrap().trim().to_string()).collect();
    let enc = tok.encode_batch(sentences, true).unwrap();
    let (b, t) = (enc.len(), enc[0].get_ids().len());
    let flat = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| Tensor::from_vec(enc.iter().flat_map(f).collect::<Vec<u32>>(), (b, t), &Device::Cpu).unwrap();
    let ids = flat(&|e| e.get_ids().to_vec());
    let mask = flat(&|e| e.get_attention_mask().to_vec());
    let tt = flat(&|e| e.get_type_ids().to_vec());
    let padded: u32 = mask.to_vec2::<u32>().unwrap().iter().flatten().filter(|&&m| m == 0).count() as u32;
    assert!(padded > 0, "the batch should be padded");
    let a = ours.forward(&ids, Some(&tt), &mask).unwrap();
    let bref = theirs.forward(&ids, &tt, Some(&mask)).unwrap();
    let d = max_diff_unpadded(&a, &bref, &mask);
    eprintln!("MiniLM, {b}x{t} padded batch: max abs difference {d:e}");
    assert!(d < 1e-4, "max abs difference {d}");
}
