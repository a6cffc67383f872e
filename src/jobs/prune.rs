//! The `prune` job: magnitude pruning of a stored model, exported in the Hugging Face layout.

use super::spec::{JobRequest, Method};
use super::{Executor, JobContext, JobError};
use crate::engine::{arch, magnitude, st};
use bytes::Bytes;

pub struct PruneExecutor;

/// Files copied unchanged from the model (everything but the weights).
fn passthrough(files: &[String]) -> impl Iterator<Item = &String> {
    files.iter().filter(|f| f.as_str() != "model.safetensors")
}

impl Executor for PruneExecutor {
    fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let req: JobRequest = serde_json::from_str(&ctx.job.spec).map_err(|e| JobError::Internal(e.into()))?;
        ctx.progress("loading", 0.0)?;
        let config = ctx.read_model_file("config.json")?;
        let weights = ctx.read_model_file("model.safetensors")?;
        let header = st::parse(&weights).map_err(|e| JobError::Failed(format!("model.safetensors: {e}")))?;
        let summary = arch::summarize(&config, &header).map_err(|e| JobError::Failed(format!("config.json: {e}")))?;
        let compile = |v: &[String]| v.iter().map(|p| regex::Regex::new(p)).collect::<Result<Vec<_>, _>>();
        let include = compile(&req.pruning.include).map_err(|e| JobError::Failed(e.to_string()))?;
        let exclude = compile(&req.pruning.exclude).map_err(|e| JobError::Failed(e.to_string()))?;
        let targets = magnitude::select_targets(summary.family, &header, &include, &exclude);
        if targets.is_empty() {
            return Err(JobError::Failed("no tensor is left to prune after applying include/exclude".into()));
        }
        ctx.progress("pruning", 0.1)?;
        let Method::Magnitude = req.pruning.method;
        let mut out = weights.to_vec();
        drop(weights);
        let pruned = magnitude::prune_in_place(&mut out, &header, &targets, req.pruning.scope, req.pruning.sparsity, |done, total| {
            ctx.progress("pruning", 0.1 + 0.7 * done as f64 / total as f64)
        })
        .map_err(JobError::Failed)?;
        pruned?;
        ctx.progress("writing", 0.85)?;
        let (tensors, totals) = magnitude::measure(&out, &header, &targets);
        let report = magnitude::Report {
            method: "magnitude".into(),
            scope: req.pruning.scope,
            requested_sparsity: req.pruning.sparsity,
            include: req.pruning.include.clone(),
            exclude: req.pruning.exclude.clone(),
            tensors,
            totals,
        };
        ctx.write_artifact("model.safetensors", Bytes::from(out))?;
        for f in passthrough(&ctx.model_files) {
            ctx.copy_model_file(f)?;
        }
        let report = serde_json::to_vec_pretty(&report).map_err(|e| JobError::Internal(e.into()))?;
        ctx.write_artifact("report.json", Bytes::from(report))?;
        ctx.progress("writing", 1.0)
    }
}
