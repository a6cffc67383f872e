//! The one entry point that prunes a checkpoint: [`run`] takes a validated [`Plan`], the
//! checkpoint ([`Source`]) and, for the methods that need them, calibration batches; it prunes,
//! hands the written model directories to a [`Sink`] (which stores them: the engine does no
//! I/O) and returns the [`Report`] measured from the written bytes.
//!
//! Weight-level methods (magnitude unstructured and N:M, Wanda, SparseGPT) zero the chosen
//! tensors in place, so every layout is the same file; structured ones (heads, neurons, layers)
//! cut the model through [`structured`] and write an `hf` layout that transformers loads and,
//! when asked, a `compact` one with everything removed.

use super::calibrated::{self, Checkpoint, Step};
use super::wanda::Rule;
use super::{blocks, decoder, magnitude, select, structured, Scope};
use crate::engine::io::st::{self, Header};
use crate::engine::io::{compressed, export};
use crate::engine::model::arch::{self, Arch, Family};
use crate::engine::model::{Batch, Encoder, EncoderConfig, ModelConfig, ModelError, Weights};
use crate::engine::report::{self, RemovedUnits, Report, Totals};
use bytes::Bytes;
use candle_core::Device;

/// What to prune and how, with every default resolved (built from a validated job spec).
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: Kind,
    pub scope: Scope,
    /// Regular expressions choosing the weight-level methods' tensors (empty: the encoder's
    /// linear weights) and removing some of them.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// The N:M pattern as the spec wrote it (for the report).
    pub pattern: Option<String>,
    /// Also write the `compact` layout.
    pub compact: bool,
    /// Quantize the pruned model (the `compressed` layout).
    pub quantization: Option<Quantization>,
    /// The spec as run, the report's `parameters`; the method adds what it measured.
    pub parameters: serde_json::Value,
}

/// A quantization step after pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// int8 weights per output channel, activations per token at run time, written in the
    /// compressed-tensors `int-quantized` format.
    Int8Dynamic,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Magnitude, unstructured (`scope`) or N:M.
    Magnitude(Rule),
    /// Wanda or SparseGPT on calibration batches.
    Calibrated(calibrated::Method, Rule),
    /// Attention heads or FFN neurons removed, scored by `importance`.
    Units { unit: Unit, amount: Amount, importance: Importance },
    /// Whole layers (blocks) removed, scored by the norm of their weights or (decoders) by
    /// their block influence on the calibration tokens.
    Layers(Amount, Importance),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Heads,
    Neurons,
}

/// How many units a structured plan removes: a number (per layer with `local` scope), or a
/// fraction rounded to the nearest unit.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    Count(usize),
    Sparsity(f64),
}

impl Amount {
    /// The sparsity asked for: the fraction given, or for a count what it came to (`achieved`).
    fn requested(self, achieved: f64) -> f64 {
        match self {
            Amount::Sparsity(s) => s,
            Amount::Count(_) => achieved,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    /// The norm of the unit's weights.
    Weights,
    /// The norm of the unit's output over the calibration batches.
    Activations,
    /// A decoder block's influence (ShortGPT): 1 − the mean cosine between its input and output
    /// over the calibration tokens.
    BlockInfluence,
}

impl Plan {
    /// Whether [`run`] needs calibration batches for this plan.
    pub fn needs_calibration(&self) -> bool {
        matches!(
            self.kind,
            Kind::Calibrated(..)
                | Kind::Units { importance: Importance::Activations, .. }
                | Kind::Layers(_, Importance::BlockInfluence)
        )
    }
}

/// The checkpoint to prune: its `config.json` (parsed as `model`, and as bytes so the export
/// keeps every field it does not change) and its weights with their parsed header.
pub struct Source<'a> {
    pub config_json: &'a [u8],
    pub model: &'a ModelConfig,
    pub weights: Bytes,
    pub header: &'a Header,
}

/// Where a model directory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The layout transformers loads unchanged (the job's main output).
    Hf,
    /// Every removed unit sliced out (`compact/`).
    Compact,
    /// The `hf` layout quantized, in the compressed-tensors format (`compressed/`).
    Compressed,
}

/// What [`run`] produces, as it produces it, and how far it is.
pub trait Sink<E> {
    fn progress(&mut self, stage: &str, fraction: f64) -> Result<(), E>;
    /// A model directory's weights and `config.json`.
    fn model(&mut self, layout: Layout, weights: Bytes, config: Bytes) -> Result<(), E>;
    /// `masks.safetensors` (weight-level methods): which weights of each target are kept.
    fn masks(&mut self, masks: Bytes) -> Result<(), E>;
}

/// Prunes `src` by `plan`, writing through `sink`; `calibration` must be given when
/// [`Plan::needs_calibration`]. Errors the user can fix are `ModelError::Invalid`.
pub fn run<E: From<ModelError>>(
    plan: &Plan,
    src: Source,
    calibration: Option<&[Batch]>,
    sink: &mut dyn Sink<E>,
) -> Result<Report, E> {
    match plan.quantization {
        None => prune(plan, src, calibration, sink),
        Some(Quantization::Int8Dynamic) => {
            let mut q = Quantizing { inner: sink, arch: src.model.arch, done: None };
            let mut report = prune(plan, src, calibration, &mut q)?;
            report.quantization = q.done;
            Ok(report)
        }
    }
}

/// A sink that also quantizes the `hf` model it is handed and passes both on.
struct Quantizing<'s, E> {
    inner: &'s mut dyn Sink<E>,
    arch: Arch,
    done: Option<compressed::Quantized>,
}

impl<E: From<ModelError>> Sink<E> for Quantizing<'_, E> {
    fn progress(&mut self, stage: &str, fraction: f64) -> Result<(), E> {
        self.inner.progress(stage, fraction)
    }
    fn model(&mut self, layout: Layout, weights: Bytes, config: Bytes) -> Result<(), E> {
        if layout != Layout::Hf {
            return self.inner.model(layout, weights, config);
        }
        self.inner.progress("quantizing", 0.95)?;
        let header = st::parse(&weights).map_err(ModelError::Invalid)?;
        // The blocks' linear weights of the model as written (structured methods change them).
        let targets = magnitude::select_targets(self.arch, &header, &[], &[]);
        let (w, c, done) = compressed::int8_dynamic(&weights, &header, &config, self.arch, &targets)?;
        self.inner.model(Layout::Hf, weights, config)?;
        self.inner.model(Layout::Compressed, Bytes::from(w), Bytes::from(c))?;
        self.done = Some(done);
        Ok(())
    }
    fn masks(&mut self, masks: Bytes) -> Result<(), E> {
        self.inner.masks(masks)
    }
}

/// [`run`] without the quantization step.
fn prune<E: From<ModelError>>(
    plan: &Plan,
    src: Source,
    calibration: Option<&[Batch]>,
    sink: &mut dyn Sink<E>,
) -> Result<Report, E> {
    let batches = || calibration.ok_or_else(|| ModelError::Invalid("this plan needs calibration batches".into()));
    match plan.kind {
        Kind::Magnitude(rule) => magnitude_plan(plan, rule, src, sink),
        Kind::Calibrated(method, rule) => calibrated_plan(plan, method, rule, src, batches()?, sink),
        Kind::Units { unit, amount, importance } => {
            let batches = if importance == Importance::Activations { Some(batches()?) } else { None };
            units_plan(plan, unit, amount, batches, src, sink)
        }
        Kind::Layers(amount, importance) => {
            let sequences = match importance {
                Importance::BlockInfluence => Some(real_sequences(batches()?)?),
                _ => None,
            };
            layers_plan(plan, amount, sequences, src, sink)
        }
    }
}

/// The report's first fields, what was asked; the rest is measured.
struct Asked<'a> {
    method: &'a str,
    granularity: &'a str,
    requested_sparsity: f64,
    weight_level: bool,
    extra: serde_json::Value,
}

fn report(plan: &Plan, asked: Asked, removed: Option<RemovedUnits>, measured: Measured) -> Report {
    let mut parameters = plan.parameters.clone();
    if let (Some(map), serde_json::Value::Object(extra)) = (parameters.as_object_mut(), asked.extra) {
        map.extend(extra);
    }
    let list = |v: &Vec<String>| if asked.weight_level { v.clone() } else { Vec::new() };
    let request = report::Request {
        method: asked.method.into(),
        parameters,
        granularity: asked.granularity.into(),
        scope: plan.scope,
        requested_sparsity: asked.requested_sparsity,
        pattern: plan.pattern.clone().filter(|_| asked.weight_level),
        include: list(&plan.include),
        exclude: list(&plan.exclude),
    };
    let mut report = Report::new(request, removed, measured.tensors, measured.layers, measured.totals);
    report.compact = measured.compact;
    report
}

struct Measured {
    tensors: Vec<report::TensorReport>,
    layers: Vec<report::LayerReport>,
    totals: Totals,
    compact: Option<Totals>,
}

/// Per-tensor and per-layer figures of a written file against the checkpoint it came from.
fn measure(file: &[u8], header: &Header, targets: &[String], before: &Header, model: &ModelConfig) -> Measured {
    let (tensors, totals) = report::measure_against(file, header, targets, before);
    let mut layers = report::per_layer(&tensors);
    // Heads and neurons are counted on the encoder's block; a decoder's report has none yet.
    if let Some(family) = model.family() {
        report::fill_units(&mut layers, file, header, before, family, model.head_dim() as usize);
    }
    Measured { tensors, layers, totals, compact: None }
}

/// The weight-level methods' tensors: the blocks' linear weights, or the `include`/`exclude`
/// choice.
fn targets(plan: &Plan, header: &Header, arch: Arch) -> Result<Vec<String>, ModelError> {
    let compile = |v: &[String]| v.iter().map(|p| regex::Regex::new(p)).collect::<Result<Vec<_>, _>>();
    let include = compile(&plan.include).map_err(|e| ModelError::Invalid(e.to_string()))?;
    let exclude = compile(&plan.exclude).map_err(|e| ModelError::Invalid(e.to_string()))?;
    let targets = magnitude::select_targets(arch, header, &include, &exclude);
    if targets.is_empty() {
        return Err(ModelError::Invalid("no tensor is left to prune after applying include/exclude".into()));
    }
    Ok(targets)
}

fn magnitude_plan<E: From<ModelError>>(
    plan: &Plan,
    rule: Rule,
    src: Source,
    sink: &mut dyn Sink<E>,
) -> Result<Report, E> {
    let arch = src.model.arch;
    let targets = targets(plan, src.header, arch)?;
    sink.progress("pruning", 0.1)?;
    // The checkpoint's own buffer when nothing else holds it (no copy), else a copy.
    let mut out = Vec::from(src.weights);
    let step = |done: usize, total: usize| sink.progress("pruning", 0.1 + 0.7 * done as f64 / total as f64);
    let done = match rule {
        Rule::NM(pat) => magnitude::prune_nm_in_place(&mut out, src.header, arch, &targets, pat, step),
        Rule::Unstructured(s) => magnitude::prune_in_place(&mut out, src.header, &targets, plan.scope, s, step),
    };
    done.map_err(ModelError::Invalid)??;
    sink.progress("writing", 0.85)?;
    let asked = Asked {
        method: "magnitude",
        granularity: granularity(rule),
        requested_sparsity: requested(rule),
        weight_level: true,
        extra: serde_json::Value::Null,
    };
    finish_in_place(plan, asked, src.config_json, src.model, out, src.header, &targets, sink)
}

/// The share of weights a rule zeroes.
fn requested(rule: Rule) -> f64 {
    match rule {
        Rule::NM(pat) => pat.sparsity(),
        Rule::Unstructured(s) => s,
    }
}

fn granularity(rule: Rule) -> &'static str {
    match rule {
        Rule::NM(_) => "n:m",
        Rule::Unstructured(_) => "unstructured",
    }
}

/// After weights were zeroed in place (shapes unchanged): the masks, the model (also as
/// `compact` when asked: for these methods it is the same file) and the report.
#[allow(clippy::too_many_arguments)]
fn finish_in_place<E: From<ModelError>>(
    plan: &Plan,
    asked: Asked,
    config_json: &[u8],
    model: &ModelConfig,
    out: Vec<u8>,
    header: &Header,
    targets: &[String],
    sink: &mut dyn Sink<E>,
) -> Result<Report, E> {
    sink.progress("writing", 0.9)?;
    let measured = measure(&out, header, targets, header, model);
    let report = report(plan, asked, None, measured);
    sink.masks(Bytes::from(report::masks_file(&out, header, targets)))?;
    let (out, config) = (Bytes::from(out), Bytes::copy_from_slice(config_json));
    sink.model(Layout::Hf, out.clone(), config.clone())?;
    if plan.compact {
        sink.model(Layout::Compact, out, config)?;
    }
    Ok(report)
}

/// Wanda or SparseGPT (`calibrated`) over the checkpoint's bytes: the calibration batches
/// through our encoder, the chosen tensors zeroed (Wanda) or reconstructed (SparseGPT) in place,
/// written like magnitude pruning.
fn calibrated_plan<E: From<ModelError>>(
    plan: &Plan,
    method: calibrated::Method,
    rule: Rule,
    src: Source,
    batches: &[Batch],
    sink: &mut dyn Sink<E>,
) -> Result<Report, E> {
    let arch = src.model.arch;
    let targets = targets(plan, src.header, arch)?;
    sink.progress("calibrating", 0.05)?;
    let mut progress = |step| match (method, step, &src.model.decoder) {
        (_, Step::Calibrated(i, n), _) => sink.progress("calibrating", 0.05 + 0.45 * i as f64 / n as f64),
        (calibrated::Method::Wanda, Step::Pruned(i, n), None) => {
            sink.progress("pruning", 0.5 + 0.35 * i as f64 / n as f64)
        }
        (_, Step::Pruned(l, n), _) => sink.progress("pruning", 0.05 + 0.8 * l as f64 / n as f64),
    };
    let mut out;
    match &src.model.decoder {
        // Decoders: block by block through the blocks already pruned, for both methods.
        Some(cfg) => {
            out = Vec::from(src.weights);
            let sequences = real_sequences(batches)?;
            decoder::prune::<E>(method, &mut out, src.header, cfg, &targets, &sequences, rule, &mut progress)?;
        }
        None => {
            let mut enc = Encoder::from_weights(src.model, &src.weights, &Device::Cpu)?;
            out = Vec::from(src.weights);
            let mut view = Checkpoint::new(&mut out, src.header, arch, &targets);
            let canonical = Checkpoint::canonical(arch, &targets);
            calibrated::prune::<E>(method, &mut view, &mut enc, batches, &canonical, rule, &mut progress)?;
        }
    }
    let (sequences, tokens) = (batches.iter().map(|b| b.0.dims()[0]).sum::<usize>(), real_tokens(batches)?);
    let extra = match method {
        calibrated::Method::SparseGpt(o) => {
            serde_json::json!({"block_size": o.block, "dampening": o.damp, "calibration_sequences": sequences, "calibration_tokens": tokens})
        }
        calibrated::Method::Wanda => {
            serde_json::json!({"calibration_sequences": sequences, "calibration_tokens": tokens})
        }
    };
    let asked = Asked {
        method: method.name(),
        granularity: granularity(rule),
        requested_sparsity: requested(rule),
        weight_level: true,
        extra,
    };
    finish_in_place(plan, asked, src.config_json, src.model, out, src.header, &targets, sink)
}

/// Each row's real (non-padding) tokens, in order: the decoders' calibration sequences.
fn real_sequences(batches: &[Batch]) -> Result<Vec<Vec<u32>>, ModelError> {
    let mut out = Vec::new();
    for (ids, mask, _) in batches {
        for (row, m) in ids.to_vec2::<u32>()?.into_iter().zip(mask.to_vec2::<u32>()?) {
            out.push(row.into_iter().zip(m).filter(|(_, m)| *m != 0).map(|(id, _)| id).collect());
        }
    }
    Ok(out)
}

/// Real (non-padding) tokens in the calibration batches.
fn real_tokens(batches: &[Batch]) -> Result<u64, ModelError> {
    let mut n = 0u64;
    for (_, mask, _) in batches {
        n += mask.to_dtype(candle_core::DType::F64).and_then(|m| m.sum_all()?.to_scalar::<f64>())? as u64;
    }
    Ok(n)
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

/// How many of `of` units `amount` removes.
fn count(amount: Amount, of: usize) -> usize {
    match amount {
        Amount::Count(c) => c,
        Amount::Sparsity(s) => (s * of as f64).round() as usize,
    }
}

/// Heads or neurons: scored, the lowest removed (across the model or in each layer). The `hf`
/// layout zero-fills heads, and removes neurons when every layer loses the same number (one
/// `intermediate_size`), zero-filling them otherwise; `compact` removes everything.
fn units_plan<E: From<ModelError>>(
    plan: &Plan,
    unit: Unit,
    amount: Amount,
    calibration: Option<&[Batch]>,
    src: Source,
    sink: &mut dyn Sink<E>,
) -> Result<Report, E> {
    let (family, header) = (encoder_family(src.model)?, src.header);
    let (w, cfg) = load_for_surgery(&src, sink)?;
    let heads = unit == Unit::Heads;
    let units: Vec<usize> = cfg.layers.iter().map(|l| if heads { l.heads } else { l.ffn }).collect();
    let scores: Vec<Vec<f32>> = match calibration {
        Some(batches) => {
            let enc = Encoder::load(cfg.clone(), &w)?;
            let (h, n) = structured::activation_scores(&enc, &w, batches)?;
            if heads {
                h
            } else {
                n
            }
        }
        None if heads => structured::head_norm_scores(&w, &cfg)?,
        None => structured::neuron_norm_scores(&w, &cfg)?,
    };
    let what = if heads { "heads" } else { "neurons" };
    let total: usize = units.iter().sum();
    let removed = match plan.scope {
        Scope::Global => {
            let n = count(amount, total);
            if n > total || (!heads && n == total) {
                return Err(ModelError::Invalid(format!("cannot remove {n} of the model's {total} {what}")).into());
            }
            select::lowest_units(&scores, Some(n), None)
        }
        Scope::Local => {
            let mut per = Vec::with_capacity(units.len());
            for (i, &u) in units.iter().enumerate() {
                let n = count(amount, u);
                if n > u || (!heads && n == u) {
                    return Err(ModelError::Invalid(format!("cannot remove {n} of layer {i}'s {u} {what}")).into());
                }
                per.push(n);
            }
            select::lowest_units(&scores, None, Some(&per))
        }
    };
    let achieved = removed.iter().map(Vec::len).sum::<usize>() as f64 / total.max(1) as f64;
    let none = vec![Vec::new(); cfg.layers.len()];
    let cut = if heads {
        structured::UnitPlan { heads: removed, neurons: none.clone() }
    } else {
        structured::UnitPlan { heads: none.clone(), neurons: removed }
    };
    sink.progress("pruning", 0.4)?;
    let mut hf = w.clone();
    let heads_only = structured::UnitPlan { heads: cut.heads.clone(), neurons: none.clone() };
    let mut hf_cfg = structured::apply(&mut hf, &cfg, &heads_only, structured::Surgery::Zero)?;
    let counts: std::collections::BTreeSet<usize> = cut.neurons.iter().map(Vec::len).collect();
    let neuron_surgery = if counts.len() == 1 { structured::Surgery::Remove } else { structured::Surgery::Zero };
    let neurons_only = structured::UnitPlan { heads: none, neurons: cut.neurons.clone() };
    hf_cfg = structured::apply(&mut hf, &hf_cfg, &neurons_only, neuron_surgery)?;
    let hf_bytes = export::write_like(header, family, &hf)?;
    drop(hf);
    sink.progress("writing", 0.6)?;
    let targets = touched(family, header, &cut);
    let mut measured = measure(&hf_bytes, &parsed(&hf_bytes)?, &targets, header, src.model);
    sink.model(Layout::Hf, Bytes::from(hf_bytes), Bytes::from(export::config_json(src.config_json, &hf_cfg, false)?))?;
    if plan.compact {
        sink.progress("writing", 0.8)?;
        let mut c = w.clone();
        let c_cfg = structured::apply(&mut c, &cfg, &cut, structured::Surgery::Remove)?;
        let c_bytes = export::write_like(header, family, &c)?;
        measured.compact = Some(report::measure_against(&c_bytes, &parsed(&c_bytes)?, &targets, header).1);
        sink.model(
            Layout::Compact,
            Bytes::from(c_bytes),
            Bytes::from(export::config_json(src.config_json, &c_cfg, true)?),
        )?;
    }
    let asked = Asked {
        method: "magnitude",
        granularity: what,
        requested_sparsity: amount.requested(achieved),
        weight_level: false,
        extra: serde_json::Value::Null,
    };
    let removed = RemovedUnits { heads: cut.heads, neurons: cut.neurons, layers: vec![] };
    Ok(report(plan, asked, Some(removed), measured))
}

/// The checkpoint as weights and per-layer sizes, for the structured methods' scores and surgery.
fn load_for_surgery<E: From<ModelError>>(src: &Source, sink: &mut dyn Sink<E>) -> Result<(Weights, EncoderConfig), E> {
    let w = Weights::from_safetensors(&src.weights, encoder_family(src.model)?, &Device::Cpu)?;
    let cfg = EncoderConfig::new(src.model, &w.shapes())?;
    sink.progress("scoring", 0.2)?;
    Ok((w, cfg))
}

/// The encoder family of a checkpoint that an encoder-only method is asked to prune.
fn encoder_family(model: &ModelConfig) -> Result<Family, ModelError> {
    model.encoder_family().map_err(ModelError::Invalid)
}

/// The header of a file the engine just wrote (a failure is a bug, not the user's).
fn parsed(bytes: &[u8]) -> Result<Header, ModelError> {
    st::parse(bytes).map_err(|e| ModelError::Candle(candle_core::Error::Msg(format!("re-reading our own export: {e}"))))
}

/// Whole layers, the lowest by weight norm: removed physically in every layout (transformers
/// loads fewer layers), so the `hf` and `compact` files are the same.
fn layers_plan<E: From<ModelError>>(
    plan: &Plan,
    amount: Amount,
    sequences: Option<Vec<Vec<u32>>>,
    src: Source,
    sink: &mut dyn Sink<E>,
) -> Result<Report, E> {
    let header = src.header;
    let lowest = |scores: Vec<f32>| -> Result<(usize, Vec<usize>), ModelError> {
        let layers = scores.len();
        let n = count(amount, layers);
        if n >= layers {
            return Err(ModelError::Invalid(format!("removing {n} of {layers} layers would leave none")));
        }
        Ok((layers, select::lowest_units(&[scores], Some(n), None).remove(0)))
    };
    let (bytes, config, compact_config, layers, removed) = match src.model.arch {
        Arch::Decoder(kind) => {
            let cfg =
                src.model.decoder.as_ref().ok_or_else(|| ModelError::Invalid("a decoder without its config".into()))?;
            sink.progress("scoring", 0.0)?;
            let scores = match &sequences {
                Some(seqs) => decoder::block_influence(&src.weights, header, cfg, seqs)?,
                None => blocks::block_norms(&src.weights, header, src.model.arch, cfg.layers)?,
            };
            let (layers, removed) = lowest(scores)?;
            sink.progress("pruning", 0.4)?;
            let (bytes, config) =
                blocks::without_blocks(&src.weights, header, kind, src.config_json, layers, &removed)?;
            (bytes, config.clone(), config, layers, removed)
        }
        Arch::Encoder(_) if sequences.is_some() => {
            return Err(ModelError::Invalid(
                "block influence scores decoder blocks; an encoder's layers are scored by weight norm".into(),
            )
            .into())
        }
        Arch::Encoder(family) => {
            let (w, cfg) = load_for_surgery(&src, sink)?;
            let (layers, removed) = lowest(structured::layer_norm_scores(&w, &cfg)?)?;
            sink.progress("pruning", 0.4)?;
            let (pruned, new_cfg) = structured::remove_layers(&w, &cfg, &removed);
            let rename = |name: &str| structured::renumbered(Arch::Encoder(family), &removed, name);
            let bytes = export::write_renamed(header, family, &pruned, &rename)?;
            let hf = export::config_json(src.config_json, &new_cfg, false)?;
            (bytes, hf, export::config_json(src.config_json, &new_cfg, true)?, layers, removed)
        }
    };
    let n = removed.len();
    sink.progress("writing", 0.7)?;
    let mut measured = measure(&bytes, &parsed(&bytes)?, &[], header, src.model);
    if plan.compact {
        measured.compact = Some(measured.totals.clone());
    }
    let bytes = Bytes::from(bytes);
    sink.model(Layout::Hf, bytes.clone(), Bytes::from(config))?;
    if plan.compact {
        sink.model(Layout::Compact, bytes, Bytes::from(compact_config))?;
    }
    let asked = Asked {
        method: "magnitude",
        granularity: "layers",
        requested_sparsity: amount.requested(n as f64 / layers as f64),
        weight_level: false,
        extra: serde_json::Value::Null,
    };
    let removed = RemovedUnits { heads: vec![], neurons: vec![], layers: removed };
    Ok(report(plan, asked, Some(removed), measured))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::TinyModel;

    /// Keeps what `run` hands over.
    #[derive(Default)]
    struct Kept {
        models: Vec<(Layout, Bytes, Bytes)>,
        masks: Option<Bytes>,
        stages: Vec<String>,
    }

    impl Sink<ModelError> for Kept {
        fn progress(&mut self, stage: &str, _: f64) -> Result<(), ModelError> {
            self.stages.push(stage.into());
            Ok(())
        }
        fn model(&mut self, layout: Layout, weights: Bytes, config: Bytes) -> Result<(), ModelError> {
            self.models.push((layout, weights, config));
            Ok(())
        }
        fn masks(&mut self, masks: Bytes) -> Result<(), ModelError> {
            self.masks = Some(masks);
            Ok(())
        }
    }

    fn plan(kind: Kind, scope: Scope, compact: bool) -> Plan {
        Plan {
            kind,
            scope,
            include: vec![],
            exclude: vec![],
            pattern: None,
            compact,
            quantization: None,
            parameters: serde_json::json!({"asked": true}),
        }
    }

    fn prune(m: &TinyModel, plan: &Plan) -> (Result<Report, ModelError>, Kept) {
        prune_files(&m.config_json(), m.safetensors(), plan)
    }

    fn prune_files(config: &str, weights: Vec<u8>, plan: &Plan) -> (Result<Report, ModelError>, Kept) {
        let header = st::parse(&weights).unwrap();
        let model = ModelConfig::parse(config.as_bytes()).unwrap();
        let src =
            Source { config_json: config.as_bytes(), model: &model, weights: Bytes::from(weights), header: &header };
        let mut kept = Kept::default();
        (run(plan, src, None, &mut kept), kept)
    }

    #[test]
    fn magnitude_zeroes_exactly_the_requested_share_and_writes_one_file_per_layout() {
        let p = plan(Kind::Magnitude(Rule::Unstructured(0.5)), Scope::Global, true);
        let (report, kept) = prune(&TinyModel::default(), &p);
        let report = report.unwrap();
        assert_eq!(report.method, "magnitude");
        assert_eq!(report.granularity, "unstructured");
        assert_eq!(report.parameters, serde_json::json!({"asked": true}));
        let t = &report.totals;
        assert_eq!(t.target_parameters - t.target_nonzeros, t.target_parameters / 2);
        let layouts: Vec<Layout> = kept.models.iter().map(|m| m.0).collect();
        assert_eq!(layouts, [Layout::Hf, Layout::Compact]);
        assert_eq!(kept.models[0].1, kept.models[1].1, "in-place methods write the same file twice");
        assert!(kept.masks.is_some());
        assert_eq!(kept.stages.last().map(String::as_str), Some("writing"));
        let header = st::parse(&kept.models[0].1).unwrap();
        assert_eq!(report::measure(&kept.models[0].1, &header, &[]).1.nonzeros, t.nonzeros);
    }

    #[test]
    fn heads_are_counted_per_layer_and_compact_removes_them() {
        let kind = Kind::Units { unit: Unit::Heads, amount: Amount::Count(1), importance: Importance::Weights };
        let (report, kept) = prune(&TinyModel::default(), &plan(kind, Scope::Local, true));
        let report = report.unwrap();
        let removed = report.removed.unwrap();
        assert!(removed.heads.iter().all(|h| h.len() == 1), "{:?}", removed.heads);
        assert_eq!(report.requested_sparsity, 0.25);
        assert!(kept.masks.is_none());
        let (hf, compact) = (&kept.models[0], &kept.models[1]);
        assert!(compact.1.len() < hf.1.len(), "compact drops the heads' rows and columns");
        assert_eq!(report.compact.unwrap().bytes, compact.1.len() as u64);
    }

    #[test]
    fn impossible_plans_are_refused_before_anything_is_written() {
        let m = TinyModel::default();
        let (r, kept) = prune(&m, &plan(Kind::Layers(Amount::Count(2), Importance::Weights), Scope::Global, false));
        assert!(matches!(r, Err(ModelError::Invalid(ref e)) if e.contains("would leave none")), "{r:?}");
        assert!(kept.models.is_empty());
        let kind = Kind::Units { unit: Unit::Neurons, amount: Amount::Sparsity(1.0), importance: Importance::Weights };
        let (r, kept) = prune(&m, &plan(kind, Scope::Global, false));
        assert!(matches!(r, Err(ModelError::Invalid(ref e)) if e.contains("cannot remove 128")), "{r:?}");
        assert!(kept.models.is_empty());
        let mut p = plan(Kind::Magnitude(Rule::Unstructured(0.5)), Scope::Global, false);
        p.include = vec!["^nothing$".into()];
        let (r, _) = prune(&m, &p);
        assert!(matches!(r, Err(ModelError::Invalid(ref e)) if e.contains("no tensor is left")), "{r:?}");
        let kind = Kind::Calibrated(calibrated::Method::Wanda, Rule::Unstructured(0.5));
        let (r, _) = prune(&m, &plan(kind, Scope::Local, false));
        assert!(matches!(r, Err(ModelError::Invalid(ref e)) if e.contains("calibration")), "{r:?}");
    }

    #[test]
    fn decoders_take_weight_level_magnitude_pruning_and_layers_and_refuse_the_rest() {
        use crate::engine::prune::magnitude::satisfies_nm;
        use crate::engine::prune::NmPattern;
        use crate::engine::testing::TinyDecoder;
        for (model_type, tied) in [("gpt2", true), ("llama", false), ("qwen2", true)] {
            let m = TinyDecoder { model_type, tied, dtype: st::Dtype::BF16, ..Default::default() };
            let arch = Arch::parse(model_type).unwrap();
            let (config, weights) = (m.config_json(), m.safetensors());
            let header = st::parse(&weights).unwrap();
            let linear: Vec<&String> = header.tensors.keys().filter(|n| arch.is_linear_weight(n)).collect();
            assert_eq!(linear.len(), if model_type == "gpt2" { 8 } else { 14 }, "{model_type}");
            let pattern = NmPattern { n: 2, m: 4 };
            for rule in [Rule::Unstructured(0.5), Rule::NM(pattern)] {
                let (report, kept) =
                    prune_files(&config, weights.clone(), &plan(Kind::Magnitude(rule), Scope::Global, false));
                let report = report.unwrap();
                let out = &kept.models[0].1;
                assert_eq!(report.layers.len(), 2, "{model_type}: per-layer figures");
                let t = &report.totals;
                assert_eq!(t.target_parameters - t.target_nonzeros, t.target_parameters / 2, "{model_type} {rule:?}");
                for (name, info) in &header.tensors {
                    let r = (header.data_start + info.begin) as usize..(header.data_start + info.end) as usize;
                    let pruned = report.tensors.iter().find(|x| &x.name == name).unwrap().pruned;
                    assert_eq!(pruned, linear.contains(&name), "{name}");
                    if !pruned {
                        assert_eq!(out[r.clone()], weights[r], "{name} must stay as it was");
                    } else if let Rule::NM(p) = rule {
                        assert!(
                            satisfies_nm(&out[r], info.dtype, &info.shape, arch.stores_transposed(name), p),
                            "{name}"
                        );
                    }
                }
                // The written file is what our decoder loads.
                let d = crate::engine::model::decoder::Decoder::from_files(config.as_bytes(), out).unwrap();
                assert_eq!(d.layers.len(), 2);
            }
            let refuse = |kind: Kind| {
                let (r, kept) = prune_files(&config, weights.clone(), &plan(kind, Scope::Local, false));
                assert!(kept.models.is_empty());
                match r {
                    Err(ModelError::Invalid(e)) => e,
                    other => panic!("{other:?}"),
                }
            };
            // Whole blocks go (the file tested in engine::prune::blocks); heads do not yet.
            let (r, kept) = prune_files(
                &config,
                weights.clone(),
                &plan(Kind::Layers(Amount::Count(1), Importance::Weights), Scope::Global, false),
            );
            assert_eq!(r.unwrap().removed.unwrap().layers.len(), 1);
            let (_, file, cfg) = &kept.models[0];
            assert_eq!(crate::engine::model::decoder::Decoder::from_files(cfg, file).unwrap().layers.len(), 1);
            let units = Kind::Units { unit: Unit::Heads, amount: Amount::Count(1), importance: Importance::Weights };
            assert!(refuse(units).contains("decoder family"));
        }
    }
}
