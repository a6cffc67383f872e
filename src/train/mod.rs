//! Fine-tuning and evaluation: batches, features built with the model's own tokenizer, the
//! trainable model with its hand-written backward pass, losses (with distillation) and the
//! optimizer.

pub mod batch;
pub mod experiment;
pub mod features;
pub mod gradual;
pub mod loss;
pub mod net;
pub mod optim;
pub mod squad;
pub mod trainer;
