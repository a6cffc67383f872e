//! Our fused AdamW step, warm-up/decay schedule and gradient clipping against PyTorch's
//! `torch.optim.AdamW`, `LambdaLR` with `get_linear_schedule_with_warmup`'s rule and
//! `clip_grad_norm_`, on the same parameters and gradients, step by step.

use crate::common;

use secateur::train::optim::{clip_grad_norm, linear_warmup_decay, AdamW, AdamWConfig, Param};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[test]
fn adamw_schedule_and_clipping_match_pytorch() {
    let mut s = 99u64;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let sizes =
        [("enc.dense.weight", 3000), ("enc.dense.bias", 40), ("enc.LayerNorm.weight", 40), ("classifier.weight", 80)];
    let mut params: BTreeMap<String, Vec<f32>> =
        sizes.iter().map(|(n, k)| (n.to_string(), (0..*k).map(|_| next() * 0.1).collect())).collect();
    let (steps, warmup, lr, max_norm) = (7u64, 2u64, 5e-3f32, 1.0f32);
    // Gradients of varied scale: some steps are clipped, some not.
    let grads: Vec<BTreeMap<String, Vec<f32>>> = (0..steps)
        .map(|t| {
            sizes
                .iter()
                .map(|(n, k)| {
                    (n.to_string(), (0..*k).map(|_| next() * if t % 2 == 0 { 0.05 } else { 0.001 }).collect())
                })
                .collect()
        })
        .collect();
    let input = json!({"params": params, "grads": grads, "lr": lr, "weight_decay": 0.01, "warmup": warmup, "total": steps, "max_norm": max_norm});
    let theirs: Vec<Value> = serde_json::from_value(common::refenv::run_json("adamw.py", &[], &input)).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut clipped = 0;
    for (t, g) in grads.iter().enumerate() {
        let mut g: BTreeMap<String, Vec<f32>> = g.clone();
        let mut refs: Vec<&mut [f32]> = g.values_mut().map(|v| v.as_mut_slice()).collect();
        let norm = clip_grad_norm(&mut refs, max_norm);
        let want_norm = theirs[t]["norm"].as_f64().unwrap() as f32;
        assert!((norm - want_norm).abs() <= 1e-5 * want_norm, "step {t}: norm {norm} vs {want_norm}");
        clipped += (norm > max_norm) as usize;
        let rate = lr * linear_warmup_decay(t as u64, warmup, steps);
        let mut ps: Vec<Param> =
            params.iter_mut().map(|(n, v)| Param { name: n, value: v.as_mut_slice(), grad: &g[n] }).collect();
        opt.update(&mut ps, rate);
        let mut worst = 0f32;
        for (n, v) in &params {
            let want: Vec<f32> = serde_json::from_value(theirs[t]["params"][n].clone()).unwrap();
            worst = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        }
        eprintln!("step {t}: lr {rate:.2e}, grad norm {norm:.4}, max |ours - torch| = {worst:.2e}");
        assert!(worst < 1e-6, "step {t}: parameters differ by {worst}");
    }
    assert!(clipped > 0 && clipped < steps as usize, "the test should clip some steps, not all: {clipped}");
}
