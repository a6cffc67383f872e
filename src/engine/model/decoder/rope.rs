//! Rotary position tables, computed in f32 in transformers' order of operations
//! (`modeling_rope_utils.py`): the inverse frequencies `1/θ^(2j/d)` with the configured
//! scaling, then per position `cos(p·f)` and `sin(p·f)` times the attention factor.

use super::config::{RopeConfig, RopeScaling};

/// The inverse frequencies of one head size and the factor cos and sin are multiplied by.
#[derive(Debug, Clone)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
}

impl Rope {
    pub fn new(cfg: &RopeConfig, head_dim: usize) -> Rope {
        let dim = head_dim as f32;
        let base = cfg.theta as f32;
        // base^(2j/d) in f32, as `base ** (torch.arange(0, dim, 2).float() / dim)`.
        let pos_freqs: Vec<f32> = (0..head_dim / 2).map(|j| base.powf((2 * j) as f32 / dim)).collect();
        let default: Vec<f32> = pos_freqs.iter().map(|p| 1.0 / p).collect();
        match &cfg.scaling {
            RopeScaling::Default => Rope { inv_freq: default, attention_factor: 1.0 },
            RopeScaling::Linear { factor } => {
                Rope { inv_freq: default.iter().map(|f| f / *factor as f32).collect(), attention_factor: 1.0 }
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => {
                let (factor, low, high, old) =
                    (*factor as f32, *low_freq_factor as f32, *high_freq_factor as f32, *original_max_positions as f32);
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                let inv_freq = default
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            scaled
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        }
                    })
                    .collect();
                Rope { inv_freq, attention_factor: 1.0 }
            }
            RopeScaling::Yarn { factor, attention_factor, beta_fast, beta_slow, original_max_positions, truncate } => {
                let d = head_dim as f64;
                let correction_dim = |rotations: f64| {
                    (d * (original_max_positions / (rotations * 2.0 * std::f64::consts::PI)).ln())
                        / (2.0 * cfg.theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let (low, high) = (low as f32, high as f32);
                let factor = *factor as f32;
                let inv_freq = pos_freqs
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        let ramp = ((j as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (1.0 / (factor * p)) * (1.0 - extrapolation) + (1.0 / p) * extrapolation
                    })
                    .collect();
                Rope { inv_freq, attention_factor: *attention_factor as f32 }
            }
        }
    }

    /// `cos` and `sin`, each `[positions.len(), head_dim/2]`.
    pub fn tables(&self, positions: impl Iterator<Item = usize>) -> (Vec<f32>, Vec<f32>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in positions {
            for f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos() * self.attention_factor);
                sin.push(angle.sin() * self.attention_factor);
            }
        }
        (cos, sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let plain = Rope::new(&RopeConfig { theta: 500000.0, scaling: RopeScaling::Default }, 64);
        let scaled = Rope::new(
            &RopeConfig {
                theta: 500000.0,
                scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_positions: 8192.0,
                },
            },
            64,
        );
        assert_eq!(plain.inv_freq[0], 1.0);
        assert_eq!(scaled.inv_freq[0], plain.inv_freq[0]);
        assert_eq!(scaled.inv_freq[31], plain.inv_freq[31] / 8.0);
        let (cos, sin) = plain.tables([0, 3].into_iter());
        assert_eq!((cos[0], sin[0]), (1.0, 0.0));
        assert!((cos[32] - 3f32.cos()).abs() < 1e-7 && (sin[32] - 3f32.sin()).abs() < 1e-7);
    }
}
