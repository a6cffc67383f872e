//! Task models exported by Secateur (classification, regression, question answering; BERT,
//! RoBERTa, DistilBERT, and the real MiniLM) load in transformers 5 as
//! `AutoModelForSequenceClassification` / `AutoModelForQuestionAnswering` with no missing or
//! unexpected weights, and give our logits to 1e-4.

use crate::common;

use candle_core::{DType, Device, Tensor};
use secateur::engine::model::arch::Family;
use secateur::engine::model::heads::{export_task_model, Head, HeadKind};
use secateur::engine::model::{Encoder, Weights};
use secateur::engine::testing::TinyModel;
use std::path::PathBuf;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn task_models_load_in_transformers_with_our_logits() {
    let tmp = tempfile::tempdir().unwrap();
    // A padded batch: ids in the tiny vocabulary and in MiniLM's.
    let (b, t) = (3, 12);
    let ids = Tensor::from_vec((0..b * t).map(|i| 5 + (i as u32 * 7) % 50).collect::<Vec<_>>(), (b, t), &Device::Cpu)
        .unwrap();
    let mask = Tensor::from_vec(
        (0..b * t).map(|i| u32::from(!(i / t == 2 && i % t >= 7))).collect::<Vec<_>>(),
        (b, t),
        &Device::Cpu,
    )
    .unwrap();
    let tt =
        Tensor::from_vec((0..b * t).map(|i| u32::from(i % t >= 6)).collect::<Vec<_>>(), (b, t), &Device::Cpu).unwrap();

    // (config.json, model.safetensors) of every input model.
    let mut models: Vec<(String, Vec<u8>, Vec<u8>)> = ["bert", "roberta", "distilbert"]
        .iter()
        .map(|f| {
            let tm = TinyModel { model_type: f, ..Default::default() };
            (f.to_string(), tm.config_json().into_bytes(), tm.safetensors())
        })
        .collect();
    let real = common::minilm::dir();
    models.push((
        "minilm".into(),
        std::fs::read(real.join("config.json")).unwrap(),
        std::fs::read(real.join("model.safetensors")).unwrap(),
    ));

    let mut ours = Vec::new();
    let mut dirs: Vec<(PathBuf, &str)> = Vec::new();
    for (label, cfg, st) in &models {
        let v: serde_json::Value = serde_json::from_slice(cfg).unwrap();
        let family = Family::parse(v["model_type"].as_str().unwrap()).unwrap();
        let w = Weights::from_safetensors(st, family, &Device::Cpu).unwrap();
        let hidden = v.get("hidden_size").or_else(|| v.get("dim")).unwrap().as_u64().unwrap() as usize;
        for (kind, name) in [
            (HeadKind::Classification(3), "classification"),
            (HeadKind::Regression, "classification"),
            (HeadKind::QuestionAnswering, "qa"),
        ] {
            let head = Head::load_or_init(&w, family, kind, hidden, 0.02, 11).unwrap();
            let (c, s) = export_task_model(cfg, &w, &head, None).unwrap();
            let dir = tmp.path().join(format!("{label}-{kind:?}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.json"), &c).unwrap();
            std::fs::write(dir.join("model.safetensors"), &s).unwrap();
            // Ours, from the exported files.
            let enc = Encoder::from_files(&c, &s, &Device::Cpu).unwrap();
            let back = Weights::from_safetensors(&s, family, &Device::Cpu).unwrap();
            let h = Head::load_or_init(&back, family, kind, hidden, 0.02, 0).unwrap();
            assert!(!h.fresh);
            let logits = h.forward(&enc.forward(&ids, Some(&tt), &mask).unwrap()).unwrap();
            dirs.push((dir, name));
            ours.push((format!("{label} {kind:?}"), kind, logits));
        }
    }
    let models: Vec<(&std::path::Path, &str)> = dirs.iter().map(|(d, k)| (d.as_path(), *k)).collect();
    let theirs = common::refenv::hf_outputs(&models, &ids, &mask, &tt);
    for ((label, kind, logits), hf) in ours.into_iter().zip(theirs) {
        let d = match kind {
            HeadKind::QuestionAnswering => {
                let (s, e) = Head::split_qa(&logits).unwrap();
                // Only real tokens: padding positions are not compared.
                let keep = mask.to_dtype(DType::F32).unwrap();
                max_diff(&(s * &keep).unwrap(), &(&hf["start_logits"] * &keep).unwrap())
                    .max(max_diff(&(e * &keep).unwrap(), &(&hf["end_logits"] * &keep).unwrap()))
            }
            _ => max_diff(&logits, &hf["logits"]),
        };
        eprintln!("{label}: max |ours - transformers| = {d:.2e}");
        assert!(d < 1e-4, "{label}: logits differ by {d}");
    }
}
