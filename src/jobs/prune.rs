//! The `prune` job: reads the stored model (and the calibration text, for the methods that need
//! it), turns the validated spec into an `engine::prune::run::Plan`, runs it, and stores what it
//! writes — the model in the Hugging Face layout (and `compact/` on request, `compressed/`
//! when the spec asks for quantization), the masks, and
//! `report.json`, whose summary becomes the job's `export` stage.

use super::spec::{CalibrationSpec, Granularity, Importance, JobRequest, Method, QuantMethod, QuantScheme};
use super::{Executor, JobContext, JobError};
use crate::engine::io::st;
use crate::engine::model::config;
use crate::engine::model::{Batch, ModelConfig};
use crate::engine::prune::calibrated;
use crate::engine::prune::run::{self, Amount, Kind, Layout, Plan, Quantization, Sink, Source, Unit};
use crate::engine::prune::sparsegpt::Options;
use crate::engine::prune::wanda::Rule;
use crate::engine::prune::NmPattern;
use crate::engine::report::Report;
use crate::store::Stage;
use bytes::Bytes;

pub struct PruneExecutor;

/// Files copied unchanged from the model (everything but the weights and config).
fn side_files(files: &[String]) -> impl Iterator<Item = &String> {
    files.iter().filter(|f| f.as_str() != "model.safetensors" && f.as_str() != "config.json")
}

/// Write a model directory among the artifacts: `model.safetensors`, `config.json` and the
/// model's other files unchanged, under `prefix` (`""` or `"compact/"`).
pub(super) fn write_model(ctx: &JobContext, prefix: &str, weights: Bytes, config: Bytes) -> Result<(), JobError> {
    ctx.write_artifact(&format!("{prefix}model.safetensors"), weights)?;
    ctx.write_artifact(&format!("{prefix}config.json"), config)?;
    for f in side_files(&ctx.model_files) {
        ctx.write_artifact(&format!("{prefix}{f}"), ctx.read_model_file(f)?)?;
    }
    Ok(())
}

pub(super) fn model_err(e: crate::engine::model::ModelError) -> JobError {
    JobError::from(e)
}

/// Writes `report.json` and records its summary (what was asked, the totals, the units removed;
/// not the per-tensor and per-layer lists) as the job's `export` stage, so that
/// `GET /v1/jobs/{id}/result` serves it from the database.
fn finish(ctx: &JobContext, report: &Report) -> Result<(), JobError> {
    let bytes = serde_json::to_vec_pretty(report).map(Bytes::from).map_err(|e| JobError::Internal(e.into()))?;
    ctx.write_artifact("report.json", bytes)?;
    let summary = serde_json::json!({
        "method": report.method,
        "granularity": report.granularity,
        "scope": report.scope,
        "requested_sparsity": report.requested_sparsity,
        "pattern": report.pattern,
        "removed": report.removed,
        "totals": report.totals,
        "compact": report.compact,
        "quantization": report.quantization,
    });
    ctx.record_stage(Stage::Export, serde_json::json!({ "summary": summary }))
}

/// The engine's output stored as the job's artifacts, its progress as the job's.
struct Artifacts<'a>(&'a JobContext);

impl Sink<JobError> for Artifacts<'_> {
    fn progress(&mut self, stage: &str, fraction: f64) -> Result<(), JobError> {
        self.0.progress(stage, fraction)
    }
    fn model(&mut self, layout: Layout, weights: Bytes, config: Bytes) -> Result<(), JobError> {
        let prefix = match layout {
            Layout::Hf => "",
            Layout::Compact => "compact/",
            Layout::Compressed => "compressed/",
        };
        write_model(self.0, prefix, weights, config)
    }
    fn masks(&mut self, masks: Bytes) -> Result<(), JobError> {
        self.0.write_artifact("masks.safetensors", masks)
    }
}

impl Executor for PruneExecutor {
    fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let req: JobRequest = serde_json::from_str(&ctx.job.spec).map_err(|e| JobError::Internal(e.into()))?;
        ctx.progress("loading", 0.0)?;
        let (config, weights) = ctx.read_checkpoint()?;
        let header = st::parse(&weights).map_err(|e| JobError::Failed(format!("model.safetensors: {e}")))?;
        let model = ModelConfig::parse(&config)
            .and_then(|m| config::check(&m, &header).map(|_| m))
            .map_err(|e| JobError::Failed(format!("config.json: {e}")))?;
        let plan = plan(&req)?;
        let batches = match plan.needs_calibration() {
            true => {
                let method = req.pruning.method.name();
                let cal = req.calibration.as_ref().ok_or_else(|| {
                    JobError::Internal(anyhow::anyhow!("a validated {method} spec lacks calibration"))
                })?;
                Some(calibration_batches(ctx, method, cal, model.pad_token_id, model.arch.is_decoder())?)
            }
            false => None,
        };
        let src = Source { config_json: &config, model: &model, weights, header: &header };
        let report = run::run(&plan, src, batches.as_deref(), &mut Artifacts(ctx))?;
        finish(ctx, &report)?;
        ctx.progress("writing", 1.0)
    }
}

/// The engine's plan for a validated spec.
fn plan(req: &JobRequest) -> Result<Plan, JobError> {
    let p = &req.pruning;
    let sparsity =
        || p.sparsity.ok_or_else(|| JobError::Internal(anyhow::anyhow!("a validated spec lacks pruning.sparsity")));
    let rule = || -> Result<Rule, JobError> {
        Ok(match (p.granularity, &p.pattern) {
            (Granularity::NM, Some(pat)) => Rule::NM(NmPattern::parse(pat).map_err(JobError::Failed)?),
            _ => Rule::Unstructured(sparsity()?),
        })
    };
    let amount = || -> Result<Amount, JobError> {
        Ok(match p.count {
            Some(c) => Amount::Count(c as usize),
            None => Amount::Sparsity(sparsity()?),
        })
    };
    let kind = match (p.method, p.granularity) {
        (Method::Magnitude, Granularity::Unstructured | Granularity::NM) => Kind::Magnitude(rule()?),
        (Method::Magnitude, Granularity::Heads | Granularity::Neurons) => Kind::Units {
            unit: if p.granularity == Granularity::Heads { Unit::Heads } else { Unit::Neurons },
            amount: amount()?,
            importance: match p.importance {
                Some(Importance::Activations) => run::Importance::Activations,
                _ => run::Importance::Weights,
            },
        },
        (Method::Magnitude, Granularity::Layers) => Kind::Layers(
            amount()?,
            if p.importance == Some(Importance::BlockInfluence) {
                run::Importance::BlockInfluence
            } else {
                run::Importance::Weights
            },
        ),
        (Method::Wanda, _) => Kind::Calibrated(calibrated::Method::Wanda, rule()?),
        (Method::Sparsegpt, _) => {
            let d = Options::default();
            let opts = Options { block: p.block_size.unwrap_or(d.block), damp: p.dampening.unwrap_or(d.damp) };
            Kind::Calibrated(calibrated::Method::SparseGpt(opts), rule()?)
        }
    };
    Ok(Plan {
        kind,
        scope: p.scope(),
        include: p.include.clone(),
        exclude: p.exclude.clone(),
        pattern: p.pattern.clone().filter(|_| p.granularity == Granularity::NM),
        compact: req.export.compact,
        quantization: req.quantization.as_ref().map(|q| match (q.method, q.scheme) {
            (QuantMethod::Int8, QuantScheme::Dynamic) => Quantization::Int8Dynamic,
        }),
        parameters: parameters(req),
    })
}

/// The report's `parameters`: the pruning spec as run (defaults resolved) and the calibration
/// spec (the engine adds what the method measured).
fn parameters(req: &JobRequest) -> serde_json::Value {
    let mut p = serde_json::to_value(&req.pruning).unwrap_or_default();
    if let Some(map) = p.as_object_mut() {
        map.insert("scope".into(), serde_json::to_value(req.pruning.scope()).unwrap_or_default());
        if let Some(c) = &req.calibration {
            map.insert("calibration".into(), serde_json::to_value(c).unwrap_or_default());
        }
    }
    p
}

/// The job's calibration text, tokenized with the model's own tokenizer, cut into batches of 8
/// padded to their longest with the model's pad token (`train::batch::encoder_batches`). A
/// decoder calibrated on running text (`text`, or `jsonl` rows' `text`) gets `samples` windows
/// of `max_seq_len` tokens at offsets drawn with `seed` from the whole text, tokenized without
/// special tokens (`train::batch::token_windows`); every other case takes the first `samples`
/// examples truncated to `max_seq_len` as experiments tokenize theirs
/// (`train::features::encode_texts`: Hugging Face's longest-first split of pairs).
pub(super) fn calibration_batches(
    ctx: &JobContext,
    method: &str,
    cal: &CalibrationSpec,
    pad_id: u32,
    decoder: bool,
) -> Result<Vec<Batch>, JobError> {
    let (format, task, data) = ctx.read_dataset(&cal.dataset_id)?;
    let windows = decoder && matches!(format, crate::data::Format::Text | crate::data::Format::Jsonl);
    let limit = if windows { usize::MAX } else { cal.samples };
    let texts = crate::data::texts(format, task, &data, limit)
        .map_err(|e| JobError::Failed(format!("calibration dataset: {e}")))?;
    if texts.is_empty() {
        return Err(JobError::Failed("the calibration dataset holds no text".into()));
    }
    if !ctx.model_files.iter().any(|f| f == "tokenizer.json") {
        return Err(JobError::Failed(format!(
            "{method} tokenizes calibration text with the model's tokenizer.json, which this model lacks"
        )));
    }
    let tok = tokenizers::Tokenizer::from_bytes(ctx.read_model_file("tokenizer.json")?)
        .map_err(|e| JobError::Failed(format!("tokenizer.json: {e}")))?;
    if windows {
        let ids = tok
            .encode(crate::data::running_text(&texts), false)
            .map_err(|e| JobError::Failed(format!("tokenizing calibration text: {e}")))?
            .get_ids()
            .to_vec();
        let windows = crate::train::batch::token_windows(&ids, cal.samples, cal.max_seq_len, cal.seed)
            .map_err(JobError::Failed)?;
        let zeros = vec![0u32; cal.max_seq_len];
        let seqs: Vec<(&[u32], &[u32])> = windows.into_iter().map(|w| (w, zeros.as_slice())).collect();
        return crate::train::batch::encoder_batches(&seqs, 8, pad_id).map_err(|e| JobError::Internal(e.into()));
    }
    let texts: Vec<(&str, Option<&str>)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_deref())).collect();
    let encoded = crate::train::features::encode_texts(&tok, &texts, cal.max_seq_len)
        .map_err(|e| JobError::Failed(format!("tokenizing calibration text: {e}")))?;
    let seqs: Vec<(&[u32], &[u32])> = encoded.iter().map(|e| (e.ids.as_slice(), e.type_ids.as_slice())).collect();
    crate::train::batch::encoder_batches(&seqs, 8, pad_id).map_err(|e| JobError::Internal(e.into()))
}
