//! Secateur: pruning-as-a-service for BERT-family transformer models.
//!
//! See `docs/architecture.md` for the modules and how a job flows through them.

pub mod api;
pub mod app;
pub mod artifacts;
pub mod catalog;
pub mod config;
pub mod data;
pub mod engine;
pub mod jobs;
pub mod metrics;
pub mod queue;
pub mod store;
pub mod train;
pub mod validation;
