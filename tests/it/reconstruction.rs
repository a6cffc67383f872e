//! Layer-output reconstruction error ‖XWᵀ − XŴᵀ‖ / ‖XWᵀ‖ of every encoder linear map of the real
//! MiniLM, at 50% unstructured sparsity and at 2:4: Wanda and SparseGPT (calibrated on 128 SST-2
//! sentences) against magnitude pruning (each tensor on its own), measured on 64 other
//! sentences. Both must do better than magnitude on the model as a whole and on most maps. The
//! figures are recorded in BENCHMARKS.md:
//!
//!   cargo test --test reconstruction -- --nocapture

use crate::common;

use candle_core::{DType, Device, Tensor};
use secateur::engine::io::st;
use secateur::engine::model::arch::{Arch, Family};
use secateur::engine::model::{Encoder, ModelError};
use secateur::engine::prune::magnitude::{prune_in_place, prune_nm_in_place};
use secateur::engine::prune::sparsegpt::{self, Hessian, Options};
use secateur::engine::prune::wanda::{input_norms, mask, Rule};
use secateur::engine::prune::{NmPattern, Scope};
use std::collections::HashMap;

/// One sentence per batch (no padding).
fn batches(model_dir: &std::path::Path, skip: usize, n: usize) -> Vec<(Tensor, Tensor, Tensor)> {
    let tok = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
    let sst2 = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue/SST-2/dev.tsv"),
    )
    .unwrap();
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
    for batch in batches {
        let tokens = batch.0.dim(1).unwrap();
        enc.forward_observed(batch, &mut |layer, site, x| {
            let rows = Tensor::from_slice(x, (tokens, x.len() / tokens), &Device::Cpu)?;
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
    let n = |t: &Tensor| {
        t.sqr().unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap().sqrt()
    };
    n(&e) / n(&y)
}

/// Hessians `XᵀX` of every linear map's input, by canonical weight name (the tokens of all
/// batches in one product per map: the batches here hold one sentence each).
fn hessians(enc: &Encoder, batches: &[(Tensor, Tensor, Tensor)]) -> HashMap<String, Hessian> {
    inputs(enc, batches)
        .into_iter()
        .map(|(name, x)| {
            let mut h = Hessian::new(x.dim(1).unwrap());
            h.add_rows(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap()).unwrap();
            (name, h)
        })
        .collect()
}

#[test]
fn wanda_and_sparsegpt_reconstruct_layer_outputs_better_than_magnitude() {
    let dir = common::minilm::dir();
    let cfg = std::fs::read(dir.join("config.json")).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let enc = Encoder::from_files(&cfg, &bytes, &Device::Cpu).unwrap();
    let calibration = batches(&dir, 0, 128);
    let norms = input_norms::<ModelError>(&enc, &calibration, &mut |_| Ok(())).unwrap();
    let hs = hessians(&enc, &calibration);
    let eval = inputs(&enc, &batches(&dir, 128, 64));
    let header = st::parse(&bytes).unwrap();
    let targets: Vec<String> =
        header.tensors.keys().filter(|n| Arch::Encoder(Family::Bert).is_linear_weight(n)).cloned().collect();
    let dense = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let pattern = NmPattern { n: 2, m: 4 };
    for rule in [Rule::Unstructured(0.5), Rule::NM(pattern)] {
        // Magnitude: 50% of each tensor, or the 2 largest of every 4.
        let mut mag = bytes.clone();
        match rule {
            Rule::Unstructured(s) => {
                prune_in_place(&mut mag, &header, &targets, Scope::Local, s, |_, _| Ok::<(), ()>(())).unwrap().unwrap()
            }
            Rule::NM(p) => {
                let bert = Arch::Encoder(Family::Bert);
                prune_nm_in_place(&mut mag, &header, bert, &targets, p, |_, _| Ok::<(), ()>(())).unwrap().unwrap()
            }
        }
        let magnitude = candle_core::safetensors::load_buffer(&mag, &Device::Cpu).unwrap();
        let (mut tot_m, mut tot_w, mut tot_s, mut wins_w, mut wins_s) = (0.0, 0.0, 0.0, 0, 0);
        for name in &targets {
            let w = &dense[name];
            let (rows, cols) = w.dims2().unwrap();
            let values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let m = mask(&values, cols, &norms[name], rule);
            let pruned: Vec<f32> = values.iter().zip(&m).map(|(v, p)| if *p { 0.0 } else { *v }).collect();
            let wanda = Tensor::from_vec(pruned, (rows, cols), &Device::Cpu).unwrap();
            let mut sg = values.clone();
            sparsegpt::prune(&mut sg, cols, &hs[name], rule, Options::default()).unwrap();
            let zeros = sg.iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros, rows * cols / 2, "{name}");
            let sg = Tensor::from_vec(sg, (rows, cols), &Device::Cpu).unwrap();
            let x = &eval[name];
            let (em, ew, es) = (rel_error(x, w, &magnitude[name]), rel_error(x, w, &wanda), rel_error(x, w, &sg));
            eprintln!("{rule:?} {name}: magnitude {em:.4}  wanda {ew:.4}  sparsegpt {es:.4}");
            tot_m += em;
            tot_w += ew;
            tot_s += es;
            wins_w += (ew < em) as usize;
            wins_s += (es < em) as usize;
        }
        let n = targets.len() as f64;
        eprintln!(
            "{rule:?}: mean relative error over {} maps: magnitude {:.4}, wanda {:.4}, sparsegpt {:.4}; lower than magnitude on {wins_w} (wanda) and {wins_s} (sparsegpt)",
            targets.len(),
            tot_m / n,
            tot_w / n,
            tot_s / n
        );
        assert!(tot_w < tot_m, "{rule:?}: wanda {tot_w} vs magnitude {tot_m}");
        assert!(tot_s < tot_m, "{rule:?}: sparsegpt {tot_s} vs magnitude {tot_m}");
        assert!(
            wins_w * 4 >= targets.len() * 3,
            "{rule:?}: wanda is better on only {wins_w} of {} maps",
            targets.len()
        );
        assert!(
            wins_s * 4 >= targets.len() * 3,
            "{rule:?}: sparsegpt is better on only {wins_s} of {} maps",
            targets.len()
        );
    }
}
