//! Fine-tuning and evaluation: batches, features built with the model's own tokenizer, and the
//! optimizer. (The training loop, distillation and checkpoints belong to the recovery issue and
//! are not here yet.)

pub mod batch;
pub mod features;
pub mod optim;
pub mod squad;
