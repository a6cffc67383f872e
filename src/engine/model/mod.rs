//! What a checkpoint is: `config.json` parsed once per family (`config`), the families' tensor
//! naming and the check that config and tensors agree (`arch`), the encoder that
//! runs it with per-layer head counts and FFN widths read from the tensors (`encoder`), and the
//! task heads with Hugging Face's names (`heads`); the decoder families (GPT-2, Llama, Qwen2)
//! with their configs, rotary tables and forward (`decoder`).

pub mod arch;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod heads;
pub mod keys;

pub use config::{Dropout, ModelConfig};
pub use encoder::*;
