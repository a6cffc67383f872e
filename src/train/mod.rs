//! Fine-tuning and evaluation: batches, features built with the model's own tokenizer, the
//! trainable model with its hand-written backward pass, losses (with distillation) and the
//! optimizer.

pub mod batch;
pub mod experiment;
pub mod features;
pub mod gradual;
pub mod lm;
pub mod loss;
pub mod net;
pub mod optim;
pub mod squad;
pub mod trainer;

/// A small random trainable model and examples for it, for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::net::Net;
    use super::trainer::{Example, Target};
    use crate::engine::model::heads::HeadKind;

    pub fn tiny_net() -> Net {
        use crate::engine::model::arch::Family;
        use crate::engine::model::heads::Head;
        use crate::engine::model::{EncoderConfig, Weights};
        let m = crate::engine::testing::TinyModel { ffn: 64, ..Default::default() };
        let w = Weights::from_safetensors(&m.safetensors(), Family::Bert, &candle_core::Device::Cpu).unwrap();
        let config = EncoderConfig::from_checkpoint(m.config_json().as_bytes(), &w.shapes()).unwrap();
        let head = Head::load_or_init(&w, Family::Bert, HeadKind::Classification(2), config.hidden, 0.02, 1).unwrap();
        Net::new(config, &w, &head, super::net::Dropout::NONE).unwrap()
    }

    /// `n` short token sequences of varying length with alternating labels.
    pub fn calibration(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| Example {
                ids: (0..6 + i % 5).map(|j| 2 + ((i * 13 + j * 7) % 60) as u32).collect(),
                type_ids: vec![0; 6 + i % 5],
                target: Target::Class(i % 2),
            })
            .collect()
    }
}
