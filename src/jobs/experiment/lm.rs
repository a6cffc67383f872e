//! The `causal_lm` experiment on a decoder: perplexity on the evaluation text, one-shot pruning
//! of the checkpoint (magnitude, Wanda or SparseGPT, unstructured or N:M, through the prune
//! job's engine entry point `engine::prune::run`), perplexity again, and the pruned model with
//! its report, per-window predictions and `result.json`. Training (fine-tuning, recovery) of
//! decoders is not written yet; the spec refuses it for this task.
//!
//! Evaluation: the whole evaluation text tokenized with the model's `tokenizer.json` without
//! special tokens, cut into consecutive windows of `evaluation.max_seq_len` tokens (the last
//! partial window dropped, at most `evaluation.max_eval_samples`), each window predicting all
//! its tokens but the first: `perplexity = exp(total NLL / predicted tokens)`, `loss` the mean
//! NLL. `predictions.jsonl` holds each window's NLL so anyone can recompute both.

use super::super::prune::{calibration_batches, model_err, write_model};
use super::progress::Plan;
use crate::data::{self, Format};
use crate::engine::io::st;
use crate::engine::model::decoder::Decoder;
use crate::engine::model::ModelConfig;
use crate::engine::prune::run::{self, Kind, Layout, Sink, Source};
use crate::engine::prune::sparsegpt::Options;
use crate::engine::prune::wanda::Rule;
use crate::engine::prune::{calibrated, NmPattern, Scope};
use crate::engine::report::Report;
use crate::jobs::spec::{CalibrationSpec, ExperimentMethod, ExperimentRequest, Granularity, LM_WINDOW};
use crate::jobs::{JobContext, JobError};
use crate::store::Stage;
use crate::train::lm::{eval_windows, window_nlls};
use bytes::Bytes;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

/// Calibration windows when the spec gives no `calibration_samples`.
const CALIBRATION_SAMPLES: usize = 128;

/// One perplexity evaluation: the metrics and one line per window.
struct Scored {
    metrics: BTreeMap<String, f64>,
    lines: Vec<serde_json::Value>,
}

/// The pruned model as the engine writes it, kept in memory until it has been evaluated.
#[derive(Default)]
struct Written {
    model: Option<(Bytes, Bytes)>,
    masks: Option<Bytes>,
}

struct Memory<'a> {
    ctx: &'a JobContext,
    plan: &'a Plan,
    out: Written,
}

impl Sink<JobError> for Memory<'_> {
    fn progress(&mut self, _stage: &str, fraction: f64) -> Result<(), JobError> {
        self.ctx.progress(Stage::Prune.name(), self.plan.at(Stage::Prune, fraction))
    }
    fn model(&mut self, layout: Layout, weights: Bytes, config: Bytes) -> Result<(), JobError> {
        if layout == Layout::Hf {
            self.out.model = Some((weights, config));
        }
        Ok(())
    }
    fn masks(&mut self, masks: Bytes) -> Result<(), JobError> {
        self.out.masks = Some(masks);
        Ok(())
    }
}

/// The text of a `text` dataset (the whole file) or a `jsonl` one (its rows' `text`, and
/// `text_pair` where given, joined by blank lines), tokenized without special tokens.
fn token_ids(ctx: &JobContext, id: &str, tok: &tokenizers::Tokenizer, field: &str) -> Result<Vec<u32>, JobError> {
    let (format, task, bytes) = ctx.read_dataset(id)?;
    let text = match format {
        Format::Text => {
            let text = std::str::from_utf8(&bytes).map_err(|_| JobError::Failed(format!("{field}: not UTF-8")))?;
            text.strip_prefix('\u{feff}').unwrap_or(text).to_string()
        }
        Format::Jsonl => data::running_text(
            &data::texts(format, task, &bytes, usize::MAX).map_err(|e| JobError::Failed(format!("{field}: {e}")))?,
        ),
        _ => return Err(JobError::Failed(format!("{field}: task causal_lm reads text or jsonl datasets"))),
    };
    Ok(tok.encode(text, false).map_err(|e| JobError::Failed(format!("{field}: tokenizing: {e}")))?.get_ids().to_vec())
}

/// Perplexity and loss of `model` over `windows`, with each window's NLL.
fn score(ctx: &JobContext, plan: &Plan, stage: Stage, model: &Decoder, windows: &[&[u32]]) -> Result<Scored, JobError> {
    let n = windows.len();
    let nlls = window_nlls::<JobError>(model, windows, &mut |done| {
        ctx.progress(stage.name(), plan.at(stage, done as f64 / n.max(1) as f64))
    })?;
    let predicted: u64 = windows.iter().map(|w| w.len().saturating_sub(1) as u64).sum();
    let total: f64 = nlls.iter().sum();
    let mut metrics = BTreeMap::new();
    metrics.insert("perplexity".to_string(), crate::metrics::perplexity(total, predicted));
    metrics.insert("loss".to_string(), total / predicted.max(1) as f64);
    let mut start = 0;
    let lines = windows
        .iter()
        .zip(&nlls)
        .enumerate()
        .map(|(i, (w, nll))| {
            let line = json!({"id": i, "first_token": start, "tokens": w.len(), "predicted": w.len().saturating_sub(1), "nll": nll});
            start += w.len();
            line
        })
        .collect();
    Ok(Scored { metrics, lines })
}

/// The engine's plan for the experiment's pruning (the spec validated it: magnitude, wanda or
/// sparsegpt; unstructured or n:m).
fn engine_plan(req: &ExperimentRequest) -> Result<Option<run::Plan>, JobError> {
    let Some(p) = &req.pruning else { return Ok(None) };
    let rule = match (p.granularity, &p.pattern) {
        (Granularity::NM, Some(pat)) => Rule::NM(NmPattern::parse(pat).map_err(JobError::Failed)?),
        _ => Rule::Unstructured(p.sparsity.unwrap_or(0.0)),
    };
    let kind = match p.method {
        ExperimentMethod::Magnitude => Kind::Magnitude(rule),
        ExperimentMethod::Wanda => Kind::Calibrated(calibrated::Method::Wanda, rule),
        ExperimentMethod::Sparsegpt => Kind::Calibrated(calibrated::Method::SparseGpt(Options::default()), rule),
        other => return Err(JobError::Failed(format!("causal_lm experiments do not prune with {other:?}"))),
    };
    let scope = p.scope.unwrap_or(if p.method.calibrated() { Scope::Local } else { Scope::Global });
    let mut parameters = json!(p);
    if let Some(m) = parameters.as_object_mut() {
        m.insert("scope".into(), json!(scope));
    }
    Ok(Some(run::Plan {
        kind,
        scope,
        include: Vec::new(),
        exclude: Vec::new(),
        pattern: p.pattern.clone().filter(|_| p.granularity == Granularity::NM),
        compact: false,
        quantization: None,
        parameters,
    }))
}

/// Runs a causal_lm experiment (`ExperimentExecutor::run` hands it over for that task).
pub(super) fn run(ctx: &JobContext, req: &ExperimentRequest) -> Result<(), JobError> {
    let plan = Plan::new(req);
    ctx.progress(Stage::Loading.name(), 0.0)?;
    let started = Instant::now();
    let (config, weights) = ctx.read_checkpoint()?;
    let model_config = ModelConfig::parse(&config).map_err(|e| JobError::Failed(format!("config.json: {e}")))?;
    if !model_config.arch.is_decoder() {
        return Err(JobError::Failed("task causal_lm runs on decoder models".into()));
    }
    let tok_bytes = ctx.read_model_file("tokenizer.json").map_err(|_| {
        JobError::Failed("causal_lm tokenizes with the model's own tokenizer: upload tokenizer.json with it".into())
    })?;
    let tok =
        tokenizers::Tokenizer::from_bytes(&tok_bytes).map_err(|e| JobError::Failed(format!("tokenizer.json: {e}")))?;
    let len = req.evaluation.max_seq_len.unwrap_or(LM_WINDOW);
    let eval_id = req
        .task
        .eval_dataset_id
        .as_deref()
        .ok_or_else(|| JobError::Failed("task causal_lm needs task.eval_dataset_id".into()))?;
    let ids = token_ids(ctx, eval_id, &tok, "task.eval_dataset_id")?;
    let windows = eval_windows(&ids, len, req.evaluation.max_eval_samples);
    if windows.is_empty() {
        return Err(JobError::Failed(format!(
            "task.eval_dataset_id: its text holds {} tokens, fewer than one window of evaluation.max_seq_len = {len}",
            ids.len()
        )));
    }
    ctx.record_stage(
        Stage::Loading,
        json!({"seconds": started.elapsed().as_secs_f64(), "eval_tokens": ids.len(), "eval_windows": windows.len(), "window": len}),
    )?;

    ctx.progress(Stage::BaselineEval.name(), plan.at(Stage::BaselineEval, 0.0))?;
    let t = Instant::now();
    let baseline = {
        let dense = Decoder::from_files(&config, &weights).map_err(model_err)?;
        score(ctx, &plan, Stage::BaselineEval, &dense, &windows)?
    };
    ctx.record_stage(Stage::BaselineEval, json!({"metrics": baseline.metrics, "seconds": t.elapsed().as_secs_f64()}))?;

    let Some(engine_plan) = engine_plan(req)? else {
        return export(ctx, req, &plan, (weights, config), None, None, &baseline, &baseline);
    };
    ctx.progress(Stage::Prune.name(), plan.at(Stage::Prune, 0.0))?;
    let t = Instant::now();
    let calibration = if engine_plan.needs_calibration() {
        let p = req.pruning.as_ref().expect("a plan comes from pruning");
        let method = if p.method == ExperimentMethod::Wanda { "wanda" } else { "sparsegpt" };
        let cal = CalibrationSpec {
            dataset_id: req.task.dataset_id.clone(),
            samples: p.calibration_samples.unwrap_or(CALIBRATION_SAMPLES),
            max_seq_len: len,
            seed: 0,
        };
        Some(calibration_batches(ctx, method, &cal, model_config.pad_token_id, true)?)
    } else {
        None
    };
    let header = st::parse(&weights).map_err(|e| JobError::Failed(format!("model.safetensors: {e}")))?;
    let mut sink = Memory { ctx, plan: &plan, out: Written::default() };
    let src = Source { config_json: &config, model: &model_config, weights: weights.clone(), header: &header };
    let report = run::run(&engine_plan, src, calibration.as_deref(), &mut sink)?;
    let (pruned_weights, pruned_config) =
        sink.out.model.ok_or_else(|| JobError::Internal(anyhow::anyhow!("the engine wrote no pruned model")))?;
    // The pruned model's perplexity is both the prune stage's (as in the GLUE experiments) and,
    // with no recovery, the final one.
    let after = {
        let pruned = Decoder::from_files(&pruned_config, &pruned_weights).map_err(model_err)?;
        score(ctx, &plan, Stage::Prune, &pruned, &windows)?
    };
    ctx.record_stage(
        Stage::Prune,
        json!({"metrics": after.metrics, "seconds": t.elapsed().as_secs_f64(), "sparsity": report.totals.target_sparsity, "method": report.method}),
    )?;
    ctx.record_stage(Stage::FinalEval, json!({"metrics": after.metrics, "note": "no recovery: the pruned model"}))?;
    export(ctx, req, &plan, (pruned_weights, pruned_config), sink.out.masks, Some(&report), &baseline, &after)
}

/// `export`: the model (pruned, or as loaded), masks and `report.json` when pruned,
/// `predictions.jsonl` of the last evaluation, and `result.json`.
#[allow(clippy::too_many_arguments)]
fn export(
    ctx: &JobContext,
    req: &ExperimentRequest,
    plan: &Plan,
    (weights, config): (Bytes, Bytes),
    masks: Option<Bytes>,
    report: Option<&Report>,
    baseline: &Scored,
    after: &Scored,
) -> Result<(), JobError> {
    ctx.progress(Stage::Export.name(), plan.at(Stage::Export, 0.0))?;
    let size = json!({"bytes": weights.len()});
    write_model(ctx, "", weights, config)?;
    if let Some(m) = masks {
        ctx.write_artifact("masks.safetensors", m)?;
    }
    if let Some(r) = report {
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| JobError::Internal(e.into()))?;
        ctx.write_artifact("report.json", Bytes::from(bytes))?;
    }
    let mut lines = String::new();
    for l in &after.lines {
        lines.push_str(&l.to_string());
        lines.push('\n');
    }
    ctx.write_artifact("predictions.jsonl", Bytes::from(lines))?;
    let ratio = |k: &str| Some(after.metrics.get(k)? / baseline.metrics.get(k).filter(|b| **b != 0.0)?);
    let result = json!({
        "task": req.task.name.name(),
        "metrics": {"baseline": baseline.metrics, "before": baseline.metrics, "pruned": report.map(|_| &after.metrics), "after": after.metrics},
        "perplexity_ratio": ratio("perplexity"),
        "sparsity": report.map(|r| r.totals.target_sparsity),
        "size": report.map_or(size, |r| json!({"bytes": r.totals.bytes, "bytes_sparse": r.totals.bytes_sparse, "parameters": r.totals.parameters, "nonzeros": r.totals.nonzeros})),
        "windows": after.lines.len(),
    });
    ctx.write_artifact(
        "result.json",
        Bytes::from(serde_json::to_vec_pretty(&result).map_err(|e| JobError::Internal(e.into()))?),
    )?;
    ctx.record_stage(Stage::Export, json!({"summary": result}))?;
    ctx.progress("done", 1.0)
}
