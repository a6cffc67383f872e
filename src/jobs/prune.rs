//! The `prune` job: magnitude pruning of a stored model, unstructured (weights zeroed in place)
//! or structured (attention heads, FFN neurons), exported in the Hugging Face layout and, on
//! request, in the `compact` layout under `compact/`.

use super::spec::{Granularity, JobRequest, Method};
use super::{Executor, JobContext, JobError};
use crate::engine::arch::{self, Family};
use crate::engine::magnitude::{self, RemovedUnits, Report};
use crate::engine::model::{EncoderConfig, ModelError, Weights};
use crate::engine::st::{self, Header};
use crate::engine::{export, structured};
use bytes::Bytes;
use candle_core::Device;

pub struct PruneExecutor;

/// Files copied unchanged from the model (everything but the weights and config).
fn side_files(files: &[String]) -> impl Iterator<Item = &String> {
    files.iter().filter(|f| f.as_str() != "model.safetensors" && f.as_str() != "config.json")
}

/// Write a model directory among the artifacts: `model.safetensors`, `config.json` and the
/// model's other files unchanged, under `prefix` (`""` or `"compact/"`).
fn write_model(ctx: &JobContext, prefix: &str, weights: Bytes, config: Bytes) -> Result<(), JobError> {
    ctx.write_artifact(&format!("{prefix}model.safetensors"), weights)?;
    ctx.write_artifact(&format!("{prefix}config.json"), config)?;
    for f in side_files(&ctx.model_files) {
        ctx.write_artifact(&format!("{prefix}{f}"), ctx.read_model_file(f)?)?;
    }
    Ok(())
}

fn model_err(e: ModelError) -> JobError {
    match e {
        ModelError::Invalid(m) => JobError::Failed(m),
        ModelError::Candle(e) => JobError::Internal(e.into()),
    }
}

fn json(report: &Report) -> Result<Bytes, JobError> {
    serde_json::to_vec_pretty(report).map(Bytes::from).map_err(|e| JobError::Internal(e.into()))
}

impl Executor for PruneExecutor {
    fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let req: JobRequest = serde_json::from_str(&ctx.job.spec).map_err(|e| JobError::Internal(e.into()))?;
        ctx.progress("loading", 0.0)?;
        let config = ctx.read_model_file("config.json")?;
        let weights = ctx.read_model_file("model.safetensors")?;
        let header = st::parse(&weights).map_err(|e| JobError::Failed(format!("model.safetensors: {e}")))?;
        let summary = arch::summarize(&config, &header).map_err(|e| JobError::Failed(format!("config.json: {e}")))?;
        let Method::Magnitude = req.pruning.method;
        match req.pruning.granularity {
            Granularity::Unstructured | Granularity::NM => unstructured(ctx, &req, &config, weights, &header, summary.family)?,
            Granularity::Heads | Granularity::Neurons => structured_job(ctx, &req, &config, &weights, &header, summary.family)?,
            Granularity::Layers => layers_job(ctx, &req, &config, &weights, &header, summary.family)?,
        }
        ctx.progress("writing", 1.0)
    }
}

fn unstructured(ctx: &JobContext, req: &JobRequest, config: &Bytes, weights: Bytes, header: &Header, family: Family) -> Result<(), JobError> {
    let compile = |v: &[String]| v.iter().map(|p| regex::Regex::new(p)).collect::<Result<Vec<_>, _>>();
    let include = compile(&req.pruning.include).map_err(|e| JobError::Failed(e.to_string()))?;
    let exclude = compile(&req.pruning.exclude).map_err(|e| JobError::Failed(e.to_string()))?;
    let targets = magnitude::select_targets(family, header, &include, &exclude);
    if targets.is_empty() {
        return Err(JobError::Failed("no tensor is left to prune after applying include/exclude".into()));
    }
    ctx.progress("pruning", 0.1)?;
    let mut out = weights.to_vec();
    drop(weights);
    let step = |done: usize, total: usize| ctx.progress("pruning", 0.1 + 0.7 * done as f64 / total as f64);
    let (requested, pattern) = match (req.pruning.granularity, &req.pruning.pattern) {
        (Granularity::NM, Some(p)) => {
            let pat = magnitude::NmPattern::parse(p).map_err(JobError::Failed)?;
            magnitude::prune_nm_in_place(&mut out, header, &targets, pat, step).map_err(JobError::Failed)??;
            (pat.sparsity(), Some(p.clone()))
        }
        _ => {
            let s = sparsity(req)?;
            magnitude::prune_in_place(&mut out, header, &targets, req.pruning.scope, s, step).map_err(JobError::Failed)??;
            (s, None)
        }
    };
    ctx.progress("writing", 0.85)?;
    let (tensors, totals) = magnitude::measure(&out, header, &targets);
    let report = Report {
        method: "magnitude".into(),
        granularity: if pattern.is_some() { "n:m" } else { "unstructured" }.into(),
        scope: req.pruning.scope,
        requested_sparsity: requested,
        pattern,
        include: req.pruning.include.clone(),
        exclude: req.pruning.exclude.clone(),
        removed: None,
        tensors,
        totals,
        compact: None,
    };
    // Unstructured pruning keeps every shape: the compact layout is the same file.
    let out = Bytes::from(out);
    write_model(ctx, "", out.clone(), config.clone())?;
    if req.export.compact {
        write_model(ctx, "compact/", out, config.clone())?;
    }
    ctx.write_artifact("report.json", json(&report)?)
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

fn structured_job(ctx: &JobContext, req: &JobRequest, config: &Bytes, weights: &Bytes, header: &Header, family: Family) -> Result<(), JobError> {
    let w = Weights::from_safetensors(weights, family, &Device::Cpu).map_err(model_err)?;
    let cfg = EncoderConfig::from_checkpoint(config, &w.shapes()).map_err(model_err)?;
    ctx.progress("scoring", 0.2)?;
    let heads = req.pruning.granularity == Granularity::Heads;
    let (scores, units): (Vec<Vec<f32>>, Vec<usize>) = if heads {
        (structured::head_norm_scores(&w, &cfg).map_err(model_err)?, cfg.layers.iter().map(|l| l.heads).collect())
    } else {
        (structured::neuron_norm_scores(&w, &cfg).map_err(model_err)?, cfg.layers.iter().map(|l| l.ffn).collect())
    };
    let s = sparsity(req)?;
    let removed = match req.pruning.scope {
        magnitude::Scope::Global => structured::select_lowest(&scores, Some((s * units.iter().sum::<usize>() as f64).round() as usize), None),
        magnitude::Scope::Local => {
            let per: Vec<usize> = units.iter().map(|&n| (s * n as f64).round() as usize).collect();
            structured::select_lowest(&scores, None, Some(&per))
        }
    };
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
    let (tensors, totals) = magnitude::measure_against(&hf_bytes, &hf_header, &targets, header);
    write_model(ctx, "", Bytes::from(hf_bytes), Bytes::from(export::config_json(config, &hf_cfg, false).map_err(model_err)?))?;
    let mut compact_totals = None;
    if req.export.compact {
        ctx.progress("writing", 0.8)?;
        let mut c = w.clone();
        let c_cfg = structured::apply(&mut c, &cfg, &plan, structured::Surgery::Remove).map_err(model_err)?;
        let c_bytes = export::write_like(header, family, &c).map_err(model_err)?;
        let c_header = st::parse(&c_bytes).map_err(|e| JobError::Internal(anyhow::anyhow!(e)))?;
        compact_totals = Some(magnitude::measure_against(&c_bytes, &c_header, &targets, header).1);
        write_model(ctx, "compact/", Bytes::from(c_bytes), Bytes::from(export::config_json(config, &c_cfg, true).map_err(model_err)?))?;
    }
    let report = Report {
        method: "magnitude".into(),
        granularity: if heads { "heads" } else { "neurons" }.into(),
        scope: req.pruning.scope,
        requested_sparsity: s,
        pattern: None,
        include: vec![],
        exclude: vec![],
        removed: Some(RemovedUnits { heads: plan.heads, neurons: plan.neurons, layers: vec![] }),
        tensors,
        totals,
        compact: compact_totals,
    };
    ctx.write_artifact("report.json", json(&report)?)
}

/// Whole layers: removed physically in every layout (transformers loads fewer layers), so the
/// `hf` and `compact` files are the same.
fn layers_job(ctx: &JobContext, req: &JobRequest, config: &Bytes, weights: &Bytes, header: &Header, family: Family) -> Result<(), JobError> {
    let w = Weights::from_safetensors(weights, family, &Device::Cpu).map_err(model_err)?;
    let cfg = EncoderConfig::from_checkpoint(config, &w.shapes()).map_err(model_err)?;
    ctx.progress("scoring", 0.2)?;
    let scores = structured::layer_norm_scores(&w, &cfg).map_err(model_err)?;
    let n = (sparsity(req)? * cfg.layers.len() as f64).round() as usize;
    if n >= cfg.layers.len() {
        return Err(JobError::Failed(format!("removing {n} of {} layers would leave none", cfg.layers.len())));
    }
    let removed = structured::select_lowest(&[scores], Some(n), None).remove(0);
    ctx.progress("pruning", 0.4)?;
    let (pruned, new_cfg) = structured::remove_layers(&w, &cfg, &removed);
    let bytes = export::write_renamed(header, family, &pruned, &|name| structured::renumbered(family, &removed, name)).map_err(model_err)?;
    let out_header = st::parse(&bytes).map_err(|e| JobError::Internal(anyhow::anyhow!(e)))?;
    ctx.progress("writing", 0.7)?;
    let (tensors, totals) = magnitude::measure_against(&bytes, &out_header, &[], header);
    let bytes = Bytes::from(bytes);
    write_model(ctx, "", bytes.clone(), Bytes::from(export::config_json(config, &new_cfg, false).map_err(model_err)?))?;
    if req.export.compact {
        write_model(ctx, "compact/", bytes, Bytes::from(export::config_json(config, &new_cfg, true).map_err(model_err)?))?;
    }
    let report = Report {
        method: "magnitude".into(),
        granularity: "layers".into(),
        scope: req.pruning.scope,
        requested_sparsity: sparsity(req)?,
        pattern: None,
        include: vec![],
        exclude: vec![],
        removed: Some(RemovedUnits { heads: vec![], neurons: vec![], layers: removed }),
        compact: req.export.compact.then(|| totals.clone()),
        tensors,
        totals,
    };
    ctx.write_artifact("report.json", json(&report)?)
}

/// The validated sparsity (present for every granularity but n:m).
fn sparsity(req: &JobRequest) -> Result<f64, JobError> {
    req.pruning.sparsity.ok_or_else(|| JobError::Internal(anyhow::anyhow!("a validated spec lacks pruning.sparsity")))
}

fn none_like(v: &[Vec<usize>]) -> Vec<Vec<usize>> {
    vec![Vec::new(); v.len()]
}
