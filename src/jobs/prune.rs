//! The `prune` job: a stored model pruned by magnitude (unstructured or N:M weights zeroed in
//! place; attention heads, FFN neurons or whole layers removed), by Wanda or by SparseGPT
//! (`engine::prune::calibrated`, on calibration text), exported in the Hugging Face layout and,
//! on request, in the `compact` layout under `compact/`.

use super::spec::{Granularity, JobRequest, Method};
use super::{Executor, JobContext, JobError};
use crate::engine::io::export;
use crate::engine::io::st::{self, Header};
use crate::engine::model::arch::{self, Family};
use crate::engine::model::config;
use crate::engine::model::{Batch, EncoderConfig, ModelConfig, ModelError, Weights};
use crate::engine::prune::structured;
use crate::engine::prune::{self, magnitude, select};
use crate::engine::report::{self, RemovedUnits, Report};
use crate::store::Stage;
use bytes::Bytes;
use candle_core::Device;

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

pub(super) fn model_err(e: ModelError) -> JobError {
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
    });
    ctx.record_stage(Stage::Export, serde_json::json!({ "summary": summary }))
}

impl Executor for PruneExecutor {
    fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let req: JobRequest = serde_json::from_str(&ctx.job.spec).map_err(|e| JobError::Internal(e.into()))?;
        ctx.progress("loading", 0.0)?;
        let config = ctx.read_model_file("config.json")?;
        let weights = ctx.read_model_file("model.safetensors")?;
        let header = st::parse(&weights).map_err(|e| JobError::Failed(format!("model.safetensors: {e}")))?;
        let model = ModelConfig::parse(&config)
            .and_then(|m| config::check(&m, &header).map(|_| m))
            .map_err(|e| JobError::Failed(format!("config.json: {e}")))?;
        if req.pruning.method != Method::Magnitude {
            calibrated_job(ctx, &req, &config, weights, &header, &model)?;
            return ctx.progress("writing", 1.0);
        }
        match req.pruning.granularity {
            Granularity::Unstructured | Granularity::NM => unstructured(ctx, &req, &config, weights, &header, &model)?,
            Granularity::Heads | Granularity::Neurons => structured_job(ctx, &req, &config, &weights, &header, &model)?,
            Granularity::Layers => layers_job(ctx, &req, &config, &weights, &header, &model)?,
        }
        ctx.progress("writing", 1.0)
    }
}

fn unstructured(
    ctx: &JobContext,
    req: &JobRequest,
    config: &Bytes,
    weights: Bytes,
    header: &Header,
    model: &ModelConfig,
) -> Result<(), JobError> {
    let family = model.family;
    let targets = chosen_targets(req, header, family)?;
    ctx.progress("pruning", 0.1)?;
    let mut out = weights.to_vec();
    drop(weights);
    let step = |done: usize, total: usize| ctx.progress("pruning", 0.1 + 0.7 * done as f64 / total as f64);
    let (requested, pattern) = match (req.pruning.granularity, &req.pruning.pattern) {
        (Granularity::NM, Some(p)) => {
            let pat = prune::NmPattern::parse(p).map_err(JobError::Failed)?;
            magnitude::prune_nm_in_place(&mut out, header, &targets, pat, step).map_err(JobError::Failed)??;
            (pat.sparsity(), Some(p.clone()))
        }
        _ => {
            let s = sparsity(req)?;
            magnitude::prune_in_place(&mut out, header, &targets, req.pruning.scope(), s, step)
                .map_err(JobError::Failed)??;
            (s, None)
        }
    };
    ctx.progress("writing", 0.85)?;
    finish_in_place(
        ctx,
        req,
        model,
        "magnitude",
        config,
        out,
        header,
        &targets,
        requested,
        pattern,
        serde_json::Value::Null,
    )
}

/// The tensors to prune: the encoder's linear weights, or the `include`/`exclude` choice.
fn chosen_targets(req: &JobRequest, header: &Header, family: Family) -> Result<Vec<String>, JobError> {
    let compile = |v: &[String]| v.iter().map(|p| regex::Regex::new(p)).collect::<Result<Vec<_>, _>>();
    let include = compile(&req.pruning.include).map_err(|e| JobError::Failed(e.to_string()))?;
    let exclude = compile(&req.pruning.exclude).map_err(|e| JobError::Failed(e.to_string()))?;
    let targets = magnitude::select_targets(family, header, &include, &exclude);
    if targets.is_empty() {
        return Err(JobError::Failed("no tensor is left to prune after applying include/exclude".into()));
    }
    Ok(targets)
}

/// After weights were zeroed in place (shapes unchanged): the report, the masks, the model
/// (also as `compact/` when asked: for these methods it is the same file).
/// Per-layer report of a written file: parameters, non-zeros, and heads / FFN neurons before,
/// stored and active.
fn layer_reports(
    tensors: &[report::TensorReport],
    file: &[u8],
    header: &Header,
    before: &Header,
    head_dim: usize,
    family: Family,
) -> Vec<report::LayerReport> {
    let mut layers = report::per_layer(tensors);
    report::fill_units(&mut layers, file, header, before, family, head_dim);
    layers
}

/// The report's `parameters`: the pruning spec as run (defaults resolved), the calibration spec,
/// and the method's own extras (an object, or null).
fn parameters(req: &JobRequest, extra: serde_json::Value) -> serde_json::Value {
    let mut p = serde_json::to_value(&req.pruning).unwrap_or_default();
    if let Some(map) = p.as_object_mut() {
        map.insert("scope".into(), serde_json::to_value(req.pruning.scope()).unwrap_or_default());
        if let Some(c) = &req.calibration {
            map.insert("calibration".into(), serde_json::to_value(c).unwrap_or_default());
        }
        if let serde_json::Value::Object(extra) = extra {
            map.extend(extra);
        }
    }
    p
}

#[allow(clippy::too_many_arguments)]
fn finish_in_place(
    ctx: &JobContext,
    req: &JobRequest,
    model: &ModelConfig,
    method: &str,
    config: &Bytes,
    out: Vec<u8>,
    header: &Header,
    targets: &[String],
    requested: f64,
    pattern: Option<String>,
    extra: serde_json::Value,
) -> Result<(), JobError> {
    ctx.progress("writing", 0.9)?;
    let (tensors, totals) = report::measure(&out, header, targets);
    let report = Report {
        method: method.into(),
        parameters: parameters(req, extra),
        granularity: if pattern.is_some() { "n:m" } else { "unstructured" }.into(),
        scope: req.pruning.scope(),
        requested_sparsity: requested,
        pattern,
        include: req.pruning.include.clone(),
        exclude: req.pruning.exclude.clone(),
        removed: None,
        layers: layer_reports(&tensors, &out, header, header, model.head_dim() as usize, model.family),
        tensors,
        totals,
        compact: None,
    };
    ctx.write_artifact("masks.safetensors", Bytes::from(report::masks_file(&out, header, targets)))?;
    let out = Bytes::from(out);
    write_model(ctx, "", out.clone(), config.clone())?;
    if req.export.compact {
        write_model(ctx, "compact/", out, config.clone())?;
    }
    finish(ctx, &report)
}

/// The names of the tensors a structured plan touches (for the report's `pruned` flag).
fn touched(family: Family, header: &Header, plan: &structured::UnitPlan) -> Vec<String> {
    let n = family.layer_names();
    let mut out = Vec::new();
    for name in header.tensors.keys() {
        let c = arch::canonical_name(family, name);
        for (i, (h, u)) in plan.heads.iter().zip(&plan.neurons).enumerate() {
            let p = family.layer_prefix(i);
            let mut mods: Vec<&str> = Vec::new();
            if !h.is_empty() {
                mods.extend([n.query, n.key, n.value, n.attn_out]);
            }
            if !u.is_empty() {
                mods.extend([n.ffn_in, n.ffn_out]);
            }
            if mods.iter().any(|m| c == format!("{p}{m}.weight") || c == format!("{p}{m}.bias")) {
                out.push(name.clone());
            }
        }
    }
    out
}

fn structured_job(
    ctx: &JobContext,
    req: &JobRequest,
    config: &Bytes,
    weights: &Bytes,
    header: &Header,
    model: &ModelConfig,
) -> Result<(), JobError> {
    let family = model.family;
    let w = Weights::from_safetensors(weights, family, &Device::Cpu).map_err(model_err)?;
    let cfg = EncoderConfig::new(model, &w.shapes()).map_err(model_err)?;
    ctx.progress("scoring", 0.2)?;
    let heads = req.pruning.granularity == Granularity::Heads;
    let units: Vec<usize> = cfg.layers.iter().map(|l| if heads { l.heads } else { l.ffn }).collect();
    let scores: Vec<Vec<f32>> = if req.pruning.importance == Some(crate::jobs::spec::Importance::Activations) {
        let batches = calibration_batches(ctx, req, model.pad_token_id)?;
        let enc = crate::engine::model::Encoder::load(cfg.clone(), &w).map_err(model_err)?;
        let (h, n) = structured::activation_scores(&enc, &w, &batches).map_err(model_err)?;
        if heads {
            h
        } else {
            n
        }
    } else if heads {
        structured::head_norm_scores(&w, &cfg).map_err(model_err)?
    } else {
        structured::neuron_norm_scores(&w, &cfg).map_err(model_err)?
    };
    let what = if heads { "heads" } else { "neurons" };
    let total: usize = units.iter().sum();
    let removed = match req.pruning.scope() {
        prune::Scope::Global => {
            let n = match req.pruning.count {
                Some(c) => c as usize,
                None => (sparsity(req)? * total as f64).round() as usize,
            };
            if n > total || (!heads && n == total) {
                return Err(JobError::Failed(format!("cannot remove {n} of the model's {total} {what}")));
            }
            select::lowest_units(&scores, Some(n), None)
        }
        prune::Scope::Local => {
            let mut per = Vec::with_capacity(units.len());
            for (i, &u) in units.iter().enumerate() {
                let n = match req.pruning.count {
                    Some(c) => c as usize,
                    None => (sparsity(req)? * u as f64).round() as usize,
                };
                if n > u || (!heads && n == u) {
                    return Err(JobError::Failed(format!("cannot remove {n} of layer {i}'s {u} {what}")));
                }
                per.push(n);
            }
            select::lowest_units(&scores, None, Some(&per))
        }
    };
    let s = removed.iter().map(Vec::len).sum::<usize>() as f64 / total.max(1) as f64;
    let none = vec![Vec::new(); cfg.layers.len()];
    let plan = if heads {
        structured::UnitPlan { heads: removed, neurons: none }
    } else {
        structured::UnitPlan { heads: none, neurons: removed }
    };
    ctx.progress("pruning", 0.4)?;
    // hf layout: loads unchanged in transformers. Heads are zero-filled; neurons are removed
    // when every layer loses the same number (one intermediate_size), zero-filled otherwise.
    let mut hf = w.clone();
    let heads_only = structured::UnitPlan { heads: plan.heads.clone(), neurons: none_like(&plan.neurons) };
    let mut hf_cfg = structured::apply(&mut hf, &cfg, &heads_only, structured::Surgery::Zero).map_err(model_err)?;
    let counts: std::collections::BTreeSet<usize> = plan.neurons.iter().map(Vec::len).collect();
    let neuron_surgery = if counts.len() == 1 { structured::Surgery::Remove } else { structured::Surgery::Zero };
    let neurons_only = structured::UnitPlan { heads: none_like(&plan.heads), neurons: plan.neurons.clone() };
    hf_cfg = structured::apply(&mut hf, &hf_cfg, &neurons_only, neuron_surgery).map_err(model_err)?;
    let hf_bytes = export::write_like(header, family, &hf).map_err(model_err)?;
    drop(hf);
    ctx.progress("writing", 0.6)?;
    let hf_header = st::parse(&hf_bytes).map_err(|e| JobError::Internal(anyhow::anyhow!(e)))?;
    let targets = touched(family, header, &plan);
    let (tensors, totals) = report::measure_against(&hf_bytes, &hf_header, &targets, header);
    let layers = layer_reports(&tensors, &hf_bytes, &hf_header, header, model.head_dim() as usize, family);
    write_model(
        ctx,
        "",
        Bytes::from(hf_bytes),
        Bytes::from(export::config_json(config, &hf_cfg, false).map_err(model_err)?),
    )?;
    let mut compact_totals = None;
    if req.export.compact {
        ctx.progress("writing", 0.8)?;
        let mut c = w.clone();
        let c_cfg = structured::apply(&mut c, &cfg, &plan, structured::Surgery::Remove).map_err(model_err)?;
        let c_bytes = export::write_like(header, family, &c).map_err(model_err)?;
        let c_header = st::parse(&c_bytes).map_err(|e| JobError::Internal(anyhow::anyhow!(e)))?;
        compact_totals = Some(report::measure_against(&c_bytes, &c_header, &targets, header).1);
        write_model(
            ctx,
            "compact/",
            Bytes::from(c_bytes),
            Bytes::from(export::config_json(config, &c_cfg, true).map_err(model_err)?),
        )?;
    }
    let report = Report {
        method: "magnitude".into(),
        parameters: parameters(req, serde_json::Value::Null),
        granularity: if heads { "heads" } else { "neurons" }.into(),
        scope: req.pruning.scope(),
        requested_sparsity: req.pruning.sparsity.unwrap_or(s),
        pattern: None,
        include: vec![],
        exclude: vec![],
        removed: Some(RemovedUnits { heads: plan.heads, neurons: plan.neurons, layers: vec![] }),
        layers,
        tensors,
        totals,
        compact: compact_totals,
    };
    finish(ctx, &report)
}

/// The job's calibration text, tokenized with the model's own tokenizer (truncated to
/// `max_seq_len`) and cut into batches of 8 padded to their longest with the model's pad token
/// (`train::batch::encoder_batches`, as experiments batch theirs).
fn calibration_batches(ctx: &JobContext, req: &JobRequest, pad_id: u32) -> Result<Vec<Batch>, JobError> {
    let method = req.pruning.method.name();
    let cal = req
        .calibration
        .as_ref()
        .ok_or_else(|| JobError::Internal(anyhow::anyhow!("a validated {method} spec lacks calibration")))?;
    let (format, task, data) = ctx.read_dataset(&cal.dataset_id)?;
    let texts = crate::data::texts(format, task, &data, cal.samples)
        .map_err(|e| JobError::Failed(format!("calibration dataset: {e}")))?;
    if texts.is_empty() {
        return Err(JobError::Failed("the calibration dataset holds no text".into()));
    }
    if !ctx.model_files.iter().any(|f| f == "tokenizer.json") {
        return Err(JobError::Failed(format!(
            "{method} tokenizes calibration text with the model's tokenizer.json, which this model lacks"
        )));
    }
    let mut tok = tokenizers::Tokenizer::from_bytes(ctx.read_model_file("tokenizer.json")?)
        .map_err(|e| JobError::Failed(format!("tokenizer.json: {e}")))?;
    tok.with_truncation(Some(tokenizers::TruncationParams { max_length: cal.max_seq_len, ..Default::default() }))
        .map_err(|e| JobError::Failed(format!("tokenizer.json: {e}")))?;
    // Padding is the batches' own (whatever tokenizer.json says).
    tok.with_padding(None);
    let inputs: Vec<tokenizers::EncodeInput> = texts
        .iter()
        .map(|(a, b)| match b {
            Some(b) => (a.as_str(), b.as_str()).into(),
            None => a.as_str().into(),
        })
        .collect();
    let encodings =
        tok.encode_batch(inputs, true).map_err(|e| JobError::Failed(format!("tokenizing calibration text: {e}")))?;
    let seqs: Vec<(&[u32], &[u32])> = encodings.iter().map(|e| (e.get_ids(), e.get_type_ids())).collect();
    crate::train::batch::encoder_batches(&seqs, 8, pad_id).map_err(|e| JobError::Internal(e.into()))
}

/// Real (non-padding) tokens in the calibration batches.
fn calibration_tokens(batches: &[Batch]) -> Result<u64, JobError> {
    let mut n = 0u64;
    for (_, mask, _) in batches {
        n += mask
            .to_dtype(candle_core::DType::F64)
            .and_then(|m| m.sum_all()?.to_scalar::<f64>())
            .map_err(|e| JobError::Internal(e.into()))? as u64;
    }
    Ok(n)
}

/// The rule of an unstructured or N:M spec, the sparsity it asks for, and its pattern.
fn calibrated_rule(req: &JobRequest) -> Result<(crate::engine::prune::wanda::Rule, f64, Option<String>), JobError> {
    use crate::engine::prune::wanda::Rule;
    Ok(match (req.pruning.granularity, &req.pruning.pattern) {
        (Granularity::NM, Some(p)) => {
            let pat = prune::NmPattern::parse(p).map_err(JobError::Failed)?;
            (Rule::NM(pat), pat.sparsity(), Some(p.clone()))
        }
        _ => {
            let s = sparsity(req)?;
            (Rule::Unstructured(s), s, None)
        }
    })
}

/// Wanda or SparseGPT (`engine::prune::calibrated`) over the checkpoint's bytes: calibration
/// text through our encoder, the chosen tensors zeroed (Wanda) or reconstructed (SparseGPT) in
/// place, written like magnitude pruning.
fn calibrated_job(
    ctx: &JobContext,
    req: &JobRequest,
    config: &Bytes,
    weights: Bytes,
    header: &Header,
    model: &ModelConfig,
) -> Result<(), JobError> {
    use crate::engine::prune::calibrated::{self, Checkpoint, Step};
    use crate::engine::prune::sparsegpt::Options;
    let family = model.family;
    let batches = calibration_batches(ctx, req, model.pad_token_id)?;
    let mut enc = crate::engine::model::Encoder::from_weights(model, &weights, &Device::Cpu).map_err(model_err)?;
    let targets = chosen_targets(req, header, family)?;
    let (rule, requested, pattern) = calibrated_rule(req)?;
    let defaults = Options::default();
    let opts = Options {
        block: req.pruning.block_size.unwrap_or(defaults.block),
        damp: req.pruning.dampening.unwrap_or(defaults.damp),
    };
    let method = match req.pruning.method {
        Method::Wanda => calibrated::Method::Wanda,
        _ => calibrated::Method::SparseGpt(opts),
    };
    ctx.progress("calibrating", 0.05)?;
    let mut out = weights.to_vec();
    drop(weights);
    let mut view = Checkpoint::new(&mut out, header, family, &targets);
    calibrated::prune::<JobError>(
        method,
        &mut view,
        &mut enc,
        &batches,
        &Checkpoint::canonical(family, &targets),
        rule,
        &mut |step| match (method, step) {
            (_, Step::Calibrated(i, n)) => ctx.progress("calibrating", 0.05 + 0.45 * i as f64 / n as f64),
            (calibrated::Method::Wanda, Step::Pruned(i, n)) => {
                ctx.progress("pruning", 0.5 + 0.35 * i as f64 / n as f64)
            }
            (_, Step::Pruned(l, n)) => ctx.progress("pruning", 0.05 + 0.8 * l as f64 / n as f64),
        },
    )?;
    drop(enc);
    let (sequences, tokens) = (batches.iter().map(|b| b.0.dims()[0]).sum::<usize>(), calibration_tokens(&batches)?);
    let extra = match method {
        calibrated::Method::SparseGpt(o) => {
            serde_json::json!({"block_size": o.block, "dampening": o.damp, "calibration_sequences": sequences, "calibration_tokens": tokens})
        }
        calibrated::Method::Wanda => {
            serde_json::json!({"calibration_sequences": sequences, "calibration_tokens": tokens})
        }
    };
    finish_in_place(ctx, req, model, method.name(), config, out, header, &targets, requested, pattern, extra)
}

/// Whole layers: removed physically in every layout (transformers loads fewer layers), so the
/// `hf` and `compact` files are the same.
fn layers_job(
    ctx: &JobContext,
    req: &JobRequest,
    config: &Bytes,
    weights: &Bytes,
    header: &Header,
    model: &ModelConfig,
) -> Result<(), JobError> {
    let family = model.family;
    let w = Weights::from_safetensors(weights, family, &Device::Cpu).map_err(model_err)?;
    let cfg = EncoderConfig::new(model, &w.shapes()).map_err(model_err)?;
    ctx.progress("scoring", 0.2)?;
    let scores = structured::layer_norm_scores(&w, &cfg).map_err(model_err)?;
    let n = match req.pruning.count {
        Some(c) => c as usize,
        None => (sparsity(req)? * cfg.layers.len() as f64).round() as usize,
    };
    if n >= cfg.layers.len() {
        return Err(JobError::Failed(format!("removing {n} of {} layers would leave none", cfg.layers.len())));
    }
    let removed = select::lowest_units(&[scores], Some(n), None).remove(0);
    ctx.progress("pruning", 0.4)?;
    let (pruned, new_cfg) = structured::remove_layers(&w, &cfg, &removed);
    let bytes = export::write_renamed(header, family, &pruned, &|name| structured::renumbered(family, &removed, name))
        .map_err(model_err)?;
    let out_header = st::parse(&bytes).map_err(|e| JobError::Internal(anyhow::anyhow!(e)))?;
    ctx.progress("writing", 0.7)?;
    let (tensors, totals) = report::measure_against(&bytes, &out_header, &[], header);
    let layers = layer_reports(&tensors, &bytes, &out_header, header, model.head_dim() as usize, family);
    let bytes = Bytes::from(bytes);
    write_model(ctx, "", bytes.clone(), Bytes::from(export::config_json(config, &new_cfg, false).map_err(model_err)?))?;
    if req.export.compact {
        write_model(
            ctx,
            "compact/",
            bytes,
            Bytes::from(export::config_json(config, &new_cfg, true).map_err(model_err)?),
        )?;
    }
    let report = Report {
        method: "magnitude".into(),
        parameters: parameters(req, serde_json::Value::Null),
        granularity: "layers".into(),
        scope: req.pruning.scope(),
        requested_sparsity: req.pruning.sparsity.unwrap_or(n as f64 / cfg.layers.len() as f64),
        pattern: None,
        include: vec![],
        exclude: vec![],
        removed: Some(RemovedUnits { heads: vec![], neurons: vec![], layers: removed }),
        compact: req.export.compact.then(|| totals.clone()),
        layers,
        tensors,
        totals,
    };
    finish(ctx, &report)
}

/// The validated sparsity (present for every granularity but n:m).
fn sparsity(req: &JobRequest) -> Result<f64, JobError> {
    req.pruning.sparsity.ok_or_else(|| JobError::Internal(anyhow::anyhow!("a validated spec lacks pruning.sparsity")))
}

fn none_like(v: &[Vec<usize>]) -> Vec<Vec<usize>> {
    vec![Vec::new(); v.len()]
}
