//! Task data for fine-tuning and evaluation: batches, and features built with the model's own
//! tokenizer.
//! (Training itself, distillation and checkpoints belong to the recovery issue and are not here
//! yet.)

pub mod batch;
pub mod squad;
