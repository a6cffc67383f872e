//! The integration tests, as one test binary (one link of the crate and candle instead of one
//! per file). Each module is one area; `common` is the harness: a real server on port 0 over a
//! fresh SQLite or PostgreSQL database, the real MiniLM and the reference Python environment.

#[macro_use]
mod common;

mod api;
mod decoder;
mod encoder;
mod experiment;
mod features;
mod golden;
mod heads;
mod interop;
mod layers;
mod metrics;
mod openapi;
mod optim;
mod processes;
mod queue;
mod reconstruction;
mod squad_windows;
mod training;
