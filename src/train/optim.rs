//! The optimizer side of fine-tuning, fused over flat f32 buffers: AdamW with decoupled weight
//! decay (PyTorch's `torch.optim.AdamW` step, operation for operation), the linear warm-up and
//! decay schedule of Hugging Face's `get_linear_schedule_with_warmup`, and gradient clipping by
//! global norm as `torch.nn.utils.clip_grad_norm_`. Parameters are named so that weight decay
//! skips biases and LayerNorm weights, as the Hugging Face recipes do.

use rayon::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // PyTorch's defaults, with the 0.01 decay of the fine-tuning recipes.
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// Whether a parameter gets weight decay: not biases, not LayerNorm weights.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// AdamW state: the step count and both moments of every parameter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    /// name → (first moment, second moment).
    pub moments: HashMap<String, (Vec<f32>, Vec<f32>)>,
}

/// One parameter in a step: its name, values (updated in place) and gradient.
pub struct Param<'a> {
    pub name: &'a str,
    pub value: &'a mut [f32],
    pub grad: &'a [f32],
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> AdamW {
        AdamW { config, step: 0, moments: HashMap::new() }
    }

    /// One update of every parameter at learning rate `lr`.
    pub fn update(&mut self, params: &mut [Param], lr: f32) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = lr / bias1;
        for p in params.iter_mut() {
            assert_eq!(p.value.len(), p.grad.len(), "{}: values and gradient differ in length", p.name);
            let (m, v) = self
                .moments
                .entry(p.name.to_string())
                .or_insert_with(|| (vec![0.0; p.grad.len()], vec![0.0; p.grad.len()]));
            let decay = if decays(p.name) { 1.0 - lr * c.weight_decay } else { 1.0 };
            const CHUNK: usize = 1 << 14;
            p.value
                .par_chunks_mut(CHUNK)
                .zip(p.grad.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((w, g), (m, v))| {
                    for i in 0..w.len() {
                        // The order of torch's `_single_tensor_adamw`: decay, moments, then
                        // addcdiv with denom = sqrt(v) / sqrt(bias2) + eps.
                        w[i] *= decay;
                        m[i] += (g[i] - m[i]) * (1.0 - c.beta1);
                        v[i] = v[i] * c.beta2 + (1.0 - c.beta2) * g[i] * g[i];
                        let denom = v[i].sqrt() / bias2_sqrt + c.eps;
                        w[i] -= step_size * m[i] / denom;
                    }
                });
        }
    }
}

/// `get_linear_schedule_with_warmup`'s multiplier at scheduler step `step` (the update with
/// index `step`, from 0, uses it: the first update of a warm-up runs at 0).
pub fn linear_warmup_decay(step: u64, warmup: u64, total: u64) -> f32 {
    if step < warmup {
        step as f32 / warmup.max(1) as f32
    } else {
        ((total.saturating_sub(step)) as f32 / (total.saturating_sub(warmup)).max(1) as f32).max(0.0)
    }
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`
/// (`clip_grad_norm_`: coefficient max_norm / (norm + 1e-6), clamped to 1). Returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let total: f32 = grads.iter().map(|g| g.par_iter().map(|x| x * x).sum::<f32>()).sum::<f32>().sqrt();
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    for g in grads.iter_mut() {
        g.par_iter_mut().for_each(|x| *x *= coef);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_skips_biases_and_layer_norms() {
        assert!(decays("encoder.layer.0.attention.self.query.weight"));
        assert!(!decays("encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("encoder.layer.0.output.LayerNorm.weight"));
        assert!(!decays("transformer.layer.0.sa_layer_norm.weight"));
        assert!(decays("classifier.weight"));
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let l: Vec<f32> = (0..12).map(|s| linear_warmup_decay(s, 2, 10)).collect();
        assert_eq!(&l[..4], &[0.0, 0.5, 1.0, 0.875]);
        assert_eq!(l[10], 0.0);
        assert_eq!(l[11], 0.0);
        assert_eq!(linear_warmup_decay(0, 0, 10), 1.0);
    }

    #[test]
    fn first_adamw_step_moves_each_weight_by_lr() {
        // With bias correction the first step is lr · g / (|g| + eps·…) ≈ lr · sign(g).
        let mut opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() });
        let mut w = vec![1.0f32, -1.0, 0.5];
        let g = vec![0.3f32, -2.0, 0.0];
        opt.update(&mut [Param { name: "x.weight", value: &mut w, grad: &g }], 0.1);
        assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 0.9).abs() < 1e-6 && w[2] == 0.5, "{w:?}");
        let mut g2 = [vec![3.0f32, 4.0], vec![0.0f32]];
        let (a, b) = g2.split_at_mut(1);
        let norm = clip_grad_norm(&mut [&mut a[0][..], &mut b[0][..]], 1.0);
        assert_eq!(norm, 5.0);
        assert!((a[0][0] - 0.6).abs() < 1e-6 && (a[0][1] - 0.8).abs() < 1e-6);
    }
}
