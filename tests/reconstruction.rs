//! Layer-output reconstruction error ‖XWᵀ − XŴᵀ‖ / ‖XWᵀ‖ of every encoder linear map of the real
//! MiniLM at 50% sparsity: Wanda (calibrated on 32 SST-2 sentences) against magnitude pruning
//! (each tensor on its own), measured on 32 other sentences. Wanda must do better on the model
//! as a whole and on most maps. The figures are recorded in BENCHMARKS.md:
//!
//!   cargo test --test reconstruction -- --nocapture

mod common;

use candle_core::{DType, Device, Tensor};
use secateur::engine::arch::{is_encoder_linear_weight, Family};
use secateur::engine::magnitude::{prune_in_place, Scope};
use secateur::engine::model::Encoder;
use secateur::engine::st;
use secateur::engine::wanda::{input_norms, mask, Rule};
use std::collections::HashMap;

/// One sentence per batch (no padding).
fn batches(model_dir: &std::path::Path, skip: usize, n: usize) -> Vec<(Tensor, Tensor, Tensor)> {
    let tok = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
    let sst2 = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue/SST-2/dev.tsv")).unwrap();
    sst2.lines()
        .skip(1 + skip)
        .take(n)
        .map(|l| {
            let ids = tok.encode(l.split('\t').next().unwrap().trim(), true).unwrap().get_ids().to_vec();
            let t = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
            (t.clone(), t.ones_like().unwrap(), t.zeros_like().unwrap())
        })
        .collect()
}

/// Inputs of every linear map, rows = tokens, by canonical weight name.
fn inputs(enc: &Encoder, batches: &[(Tensor, Tensor, Tensor)]) -> HashMap<String, Tensor> {
    let family = enc.config.family;
    let mut parts: HashMap<String, Vec<Tensor>> = HashMap::new();
    for (ids, mask, tt) in batches {
        enc.forward_observed(ids, Some(tt), mask, &mut |layer, site, x| {
            let (b, t, f) = x.dims3()?;
            let rows = x.reshape((b * t, f))?;
            for m in site.modules(family) {
                parts.entry(format!("{}{m}.weight", family.layer_prefix(layer))).or_default().push(rows.clone());
            }
            Ok(())
        })
        .unwrap();
    }
    parts.into_iter().map(|(k, v)| (k, Tensor::cat(&v, 0).unwrap())).collect()
}

fn rel_error(x: &Tensor, w: &Tensor, w_hat: &Tensor) -> f64 {
    let y = x.matmul(&w.t().unwrap()).unwrap();
    let e = x.matmul(&(w - w_hat).unwrap().t().unwrap()).unwrap();
    let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap().sqrt();
    n(&e) / n(&y)
}

#[test]
fn wanda_reconstructs_layer_outputs_better_than_magnitude() {
    let dir = common::minilm::dir();
    let cfg = std::fs::read(dir.join("config.json")).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let enc = Encoder::from_files(&cfg, &bytes, &Device::Cpu).unwrap();
    let norms = input_norms(&enc, &batches(&dir, 0, 32)).unwrap();
    let eval = inputs(&enc, &batches(&dir, 32, 32));
    // Magnitude: 50% of each tensor.
    let header = st::parse(&bytes).unwrap();
    let targets: Vec<String> = header.tensors.keys().filter(|n| is_encoder_linear_weight(Family::Bert, n)).cloned().collect();
    let mut mag = bytes.clone();
    prune_in_place(&mut mag, &header, &targets, Scope::Local, 0.5, |_, _| Ok::<(), ()>(())).unwrap().unwrap();
    let dense = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let magnitude = candle_core::safetensors::load_buffer(&mag, &Device::Cpu).unwrap();
    let (mut tot_m, mut tot_w, mut wins) = (0.0, 0.0, 0);
    for name in &targets {
        let w = &dense[name];
        let (rows, cols) = w.dims2().unwrap();
        let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let m = mask(&values, cols, &norms[name], Rule::Unstructured(0.5));
        let pruned: Vec<f32> = values.iter().zip(&m).map(|(v, p)| if *p { 0.0 } else { *v }).collect();
        let wanda = Tensor::from_vec(pruned, (rows, cols), &Device::Cpu).unwrap();
        let x = &eval[name];
        let (em, ew) = (rel_error(x, w, &magnitude[name]), rel_error(x, w, &wanda));
        eprintln!("{name}: magnitude {em:.4}  wanda {ew:.4}");
        tot_m += em;
        tot_w += ew;
        wins += (ew < em) as usize;
    }
    let n = targets.len() as f64;
    eprintln!("mean relative error over {} maps: magnitude {:.4}, wanda {:.4}; wanda lower on {wins}", targets.len(), tot_m / n, tot_w / n);
    assert!(tot_w < tot_m, "wanda {tot_w} vs magnitude {tot_m}");
    assert!(wins * 4 >= targets.len() * 3, "wanda is better on only {wins} of {} maps", targets.len());
}
