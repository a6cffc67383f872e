//! The pruning methods and their shared vocabulary: `Scope` (one threshold or one per tensor) and
//! `NmPattern`. `magnitude` (global/local and N:M in place on a checkpoint's bytes, with the
//! radix selection), `wanda` (|w|·‖x‖ per row), `sparsegpt` (OBS with lazy blocked updates, layer
//! by layer), `calibrated` (Wanda and SparseGPT driven over the `Matrices` view that a checkpoint
//! and the trainable net both provide), `structured` (head/neuron/layer scores, selection and
//! surgery), and `run`: the one entry point that prunes a checkpoint by a `Plan` and returns its
//! report.

use serde::{Deserialize, Serialize};

pub mod blocks;
pub mod calibrated;
pub mod decoder;
pub mod magnitude;
pub mod run;
pub mod select;
pub mod sparsegpt;
pub mod structured;
pub mod wanda;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One threshold over all prunable tensors.
    Global,
    /// The requested sparsity in every prunable tensor.
    Local,
}

/// An N:M pattern: in every group of M consecutive weights along the input dimension (a row
/// of the `[out, in]` weight), at most N are non-zero (as sparse tensor cores expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NmPattern {
    pub n: usize,
    pub m: usize,
}

impl NmPattern {
    /// Parse `"2:4"`; requires 0 < N < M ≤ 64.
    pub fn parse(s: &str) -> Result<NmPattern, String> {
        let (a, b) = s.split_once(':').ok_or_else(|| format!("{s:?} is not of the form N:M (e.g. 2:4)"))?;
        let n: usize = a.trim().parse().map_err(|_| format!("{s:?}: N is not a whole number"))?;
        let m: usize = b.trim().parse().map_err(|_| format!("{s:?}: M is not a whole number"))?;
        if n == 0 || n >= m || m > 64 {
            return Err(format!("{s:?}: need 0 < N < M <= 64"));
        }
        Ok(NmPattern { n, m })
    }
    pub fn sparsity(self) -> f64 {
        1.0 - self.n as f64 / self.m as f64
    }
}
