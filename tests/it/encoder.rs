//! Our encoder against candle-transformers' `BertModel` (same outputs on an unpruned model):
//! on tiny random checkpoints, and on the real MiniLM with a padded batch of real sentences.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::minilm::max_diff_unpadded;
use secateur::engine::model::Encoder;
use secateur::engine::testing::TinyModel;

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
    let (ids, mask, tt) = common::minilm::sst2_batch(&dir, 8);
    let (b, t) = ids.dims2().unwrap();
    let a = ours.forward(&ids, Some(&tt), &mask).unwrap();
    let bref = theirs.forward(&ids, &tt, Some(&mask)).unwrap();
    let d = max_diff_unpadded(&a, &bref, &mask);
    eprintln!("MiniLM, {b}x{t} padded batch: max abs difference {d:e}");
    assert!(d < 1e-4, "max abs difference {d}");
}
