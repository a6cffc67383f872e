//! The model engine: checkpoint container validation, architecture checks, pruning.
//! Plain Rust, no HTTP and no database.

pub mod activation;
pub mod arch;
pub mod export;
pub mod fast;
pub mod heads;
pub mod magnitude;
pub mod model;
pub mod sparsegpt;
pub mod st;
pub mod structured;
pub mod testing;
pub mod wanda;
