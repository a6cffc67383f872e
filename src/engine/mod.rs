//! The model engine: plain Rust, no HTTP and no database.
//!
//! - [`model`]: what a checkpoint is — the families' tensor naming and configuration, the check
//!   that config and tensors agree, the encoder with its weights and task heads;
//! - [`cpu`]: the CPU kernels (fused f32 forward, activations);
//! - [`prune`]: the pruning methods (magnitude with its radix selection, N:M, Wanda, SparseGPT,
//!   structured surgery) and their shared vocabulary (`Scope`, `NmPattern`);
//! - [`io`]: the safetensors container and the export layouts;
//! - [`report`]: `report.json`, measured from the written bytes, that every method produces;
//! - [`bench`]: a checkpoint's inference forward timed as the runtime runs it (`secateur bench`).

pub mod bench;
pub mod cpu;
pub mod io;
pub mod model;
pub mod prune;
pub mod report;
pub mod testing;
