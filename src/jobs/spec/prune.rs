//! Job specs: what `POST /v1/jobs` accepts. Unknown fields are rejected and every field is
//! validated with a message that names it.

pub use crate::catalog::ModelShape;
use crate::engine::model::arch::{Arch, DecoderKind};
use crate::engine::prune::Scope;
use crate::validation::{deserialize_named, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Prune a model and export it.
    #[default]
    Prune,
    /// Fine-tune, prune, recover and evaluate a model on a task (see `ExperimentRequest`).
    Experiment,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Prune => "prune",
            JobKind::Experiment => "experiment",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// |w|: the smallest weights are removed.
    Magnitude,
    /// Wanda: |w| times the L2 norm of its input feature over calibration text, compared
    /// within each output row (unstructured or n:m; needs `calibration`).
    Wanda,
    /// SparseGPT: layer by layer, each linear map pruned and its remaining weights updated to
    /// reconstruct its outputs on calibration text (unstructured or n:m; needs `calibration`).
    Sparsegpt,
}

impl Method {
    /// Methods that read calibration text.
    pub fn calibrated(self) -> bool {
        matches!(self, Method::Wanda | Method::Sparsegpt)
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::Sparsegpt => "sparsegpt",
        }
    }
}

/// How structured units are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// The norm of the unit's weights (a head's query/key/value/output slices, a neuron's input
    /// row and output column).
    Weights,
    /// The norm of the unit's output over calibration text: a head's context projected by its
    /// slice of the attention output map; a neuron's activation times its output column.
    Activations,
    /// Granularity layers on decoder models: ShortGPT's Block Influence, 1 − the mean cosine
    /// between a block's input and output hidden states over the calibration tokens (the
    /// blocks that change them least go first). Needs `calibration`.
    BlockInfluence,
}

fn default_samples() -> usize {
    128
}
fn default_max_seq_len() -> usize {
    128
}

/// Calibration text for methods that look at activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSpec {
    /// A dataset of this tenant (a `glue_tsv` dataset needs its task).
    pub dataset_id: String,
    /// Examples used, from the start of the file (1..=4096).
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Tokens per example, truncated (8..=512). For a decoder model calibrated on `text` or
    /// `jsonl` text: the length of each window.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Decoder models calibrated on `text` or `jsonl` text: the seed of the windows' offsets
    /// (`samples` windows of `max_seq_len` tokens at random offsets of the tokenized text, as
    /// the SparseGPT and Wanda papers take them).
    #[serde(default)]
    pub seed: u64,
}

/// What is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// Individual weights are set to zero.
    #[default]
    Unstructured,
    /// Semi-structured N:M (`pattern`, e.g. "2:4"): at most N non-zeros in every group of M
    /// consecutive weights along the input dimension.
    #[serde(rename = "n:m")]
    NM,
    /// Whole attention heads (scored by the norm of their query/key/value rows and output columns).
    Heads,
    /// Whole FFN neurons (scored by the norm of their input row and output column).
    Neurons,
    /// Whole encoder layers (scored by the norm of all their linear weights); `scope` must be
    /// `global`.
    Layers,
}

/// Extra export layouts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// Also write the `compact` layout under `compact/`: every removed unit physically gone,
    /// per-layer shapes in `config.json` (loaded by Secateur's own runtime).
    #[serde(default)]
    pub compact: bool,
}

/// The quantization method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuantMethod {
    /// 8-bit integers, symmetric, one scale per output channel of each weight.
    Int8,
}

/// How activations are quantized when the model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuantScheme {
    /// Per token, from its own range, at run time.
    #[default]
    Dynamic,
}

/// Quantization of the pruned model: the blocks' linear weights (the attention and FFN/MLP
/// projections; embeddings, norms, biases and heads stay in floating point) to int8, written as
/// `compressed/` in the compressed-tensors `int-quantized` format, which transformers loads with
/// the `compressed-tensors` package. `report.json`'s `quantization` gives the bytes before and
/// after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizationSpec {
    pub method: QuantMethod,
    #[serde(default)]
    pub scheme: QuantScheme,
}

/// How to prune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruningSpec {
    pub method: Method,
    #[serde(default)]
    pub granularity: Granularity,
    /// `global`: one threshold across all prunable tensors; `local`: the sparsity in each
    /// (wanda: in each output row; sparsegpt: in each tensor; their only choice). Default: global
    /// (wanda and sparsegpt: local).
    #[serde(default)]
    pub scope: Option<Scope>,
    /// In [0, 1): for `unstructured`, the fraction of the prunable weights set to zero; for
    /// `heads`/`neurons`, the fraction of units removed (in each layer with `local`, across the
    /// model with `global`). Required, except for `n:m`, where the pattern sets it.
    #[serde(default)]
    pub sparsity: Option<f64>,
    /// `heads`/`neurons`/`layers` only, instead of `sparsity`: the number of units removed (in
    /// each layer with `local`, across the model with `global`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `heads`/`neurons` only: how units are scored. `weights` (default): the norm of the unit's
    /// weights; `activations`: the norm of the unit's contribution to the layer output over
    /// calibration text (needs `calibration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<Importance>,
    /// `n:m` only: the pattern, e.g. "2:4" or "4:8".
    #[serde(default)]
    pub pattern: Option<String>,
    /// Regular expressions on tensor names; when given, they choose the prunable tensors
    /// instead of the default (the encoder's linear weights).
    #[serde(default)]
    pub include: Vec<String>,
    /// Regular expressions on tensor names removed from the prunable set.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `sparsegpt` only: columns per lazy-update block (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<usize>,
    /// `sparsegpt` only: dampening added to the Hessian's diagonal, as a fraction of its mean
    /// (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dampening: Option<f64>,
}

/// The body of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model_id": "0192f7a0-0000-7000-8000-000000000000", "pruning": {"method": "magnitude", "granularity": "heads", "scope": "local", "sparsity": 0.5}, "export": {"compact": true}}))]
pub struct JobRequest {
    #[serde(default)]
    pub kind: JobKind,
    /// The model to prune (an id from `POST /v1/models`).
    pub model_id: String,
    pub pruning: PruningSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSpec>,
    #[serde(default)]
    pub export: ExportSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationSpec>,
}

impl PruningSpec {
    /// The scope in effect.
    pub fn scope(&self) -> Scope {
        self.scope.unwrap_or(if self.method.calibrated() { Scope::Local } else { Scope::Global })
    }
}

/// Parse a prune request body, turning serde's complaint into a field error.
pub fn parse_request(body: &[u8]) -> Result<JobRequest, FieldError> {
    let req: JobRequest = deserialize_named(body)?;
    if req.kind != JobKind::Prune {
        return Err(FieldError::new("kind", "this body is a prune job's"));
    }
    let errors = req.validate();
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(req),
    }
}

impl JobRequest {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if uuid::Uuid::parse_str(&self.model_id).is_err() {
            errs.push(FieldError::new("model_id", "model_id must be a model id (a UUID)"));
        }
        let p = &self.pruning;
        match (p.granularity, p.sparsity, &p.pattern) {
            (Granularity::NM, sparsity, pattern) => {
                if sparsity.is_some() {
                    errs.push(FieldError::new(
                        "pruning.sparsity",
                        "leave pruning.sparsity out for n:m: pruning.pattern sets it",
                    ));
                }
                if p.count.is_some() {
                    errs.push(FieldError::new("pruning.count", "pruning.count applies to heads, neurons and layers"));
                }
                match pattern {
                    None => errs
                        .push(FieldError::new("pruning.pattern", "pruning.pattern is required for n:m (e.g. \"2:4\")")),
                    Some(pat) => {
                        if let Err(e) = crate::engine::prune::NmPattern::parse(pat) {
                            errs.push(FieldError::new("pruning.pattern", e));
                        }
                    }
                }
            }
            (g, sparsity, pattern) => {
                let structured = matches!(g, Granularity::Heads | Granularity::Neurons | Granularity::Layers);
                match (sparsity, p.count) {
                    (Some(_), Some(_)) => {
                        errs.push(FieldError::new("pruning.count", "give pruning.sparsity or pruning.count, not both"))
                    }
                    (None, Some(0)) => errs.push(FieldError::new("pruning.count", "pruning.count must be at least 1")),
                    (None, Some(_)) if !structured => errs.push(FieldError::new(
                        "pruning.count",
                        "pruning.count applies to heads, neurons and layers; use pruning.sparsity",
                    )),
                    (None, Some(_)) => {}
                    (None, None) if structured => errs.push(FieldError::new(
                        "pruning.sparsity",
                        "pruning.sparsity (a fraction) or pruning.count (a number of units) is required",
                    )),
                    (None, None) => errs.push(FieldError::new("pruning.sparsity", "pruning.sparsity is required")),
                    (Some(s), None) if !(s.is_finite() && (0.0..1.0).contains(&s)) => {
                        errs.push(FieldError::new("pruning.sparsity", "pruning.sparsity must be in [0, 1)"))
                    }
                    (Some(_), None) => {}
                }
                if pattern.is_some() {
                    errs.push(FieldError::new("pruning.pattern", "pruning.pattern applies to granularity n:m only"));
                }
            }
        }
        if p.method.calibrated() {
            let m = p.method.name();
            if !matches!(p.granularity, Granularity::Unstructured | Granularity::NM) {
                errs.push(FieldError::new("pruning.granularity", format!("{m} prunes unstructured or n:m")));
            }
            if p.scope == Some(Scope::Global) {
                let why = if p.method == Method::Wanda {
                    "compares weights within each output row"
                } else {
                    "reconstructs each linear map on its own"
                };
                errs.push(FieldError::new("pruning.scope", format!("{m} {why}: pruning.scope must be local")));
            }
            if self.calibration.is_none() {
                errs.push(FieldError::new(
                    "calibration",
                    format!("{m} needs calibration text: {{\"dataset_id\": ...}}"),
                ));
            }
        }
        if p.method == Method::Sparsegpt {
            if let Some(b) = p.block_size {
                if !(1..=4096).contains(&b) {
                    errs.push(FieldError::new("pruning.block_size", "pruning.block_size must be in 1..=4096"));
                }
            }
            if let Some(d) = p.dampening {
                if !(d.is_finite() && d > 0.0 && d <= 1.0) {
                    errs.push(FieldError::new("pruning.dampening", "pruning.dampening must be in (0, 1]"));
                }
            }
        } else {
            for (set, name) in [(p.block_size.is_some(), "block_size"), (p.dampening.is_some(), "dampening")] {
                if set {
                    errs.push(FieldError::new(
                        format!("pruning.{name}"),
                        format!("pruning.{name} applies to method sparsegpt only"),
                    ));
                }
            }
        }
        let by_activations = matches!(p.importance, Some(Importance::Activations | Importance::BlockInfluence));
        let units = matches!(p.granularity, Granularity::Heads | Granularity::Neurons);
        if p.importance == Some(Importance::BlockInfluence) && p.granularity != Granularity::Layers {
            errs.push(FieldError::new("pruning.importance", "block_influence scores granularity layers"));
        } else if p.importance.is_some_and(|i| i != Importance::BlockInfluence) && !units {
            errs.push(FieldError::new(
                "pruning.importance",
                "pruning.importance weights or activations applies to granularity heads or neurons (layers: block_influence)",
            ));
        } else if by_activations && self.calibration.is_none() {
            errs.push(FieldError::new(
                "calibration",
                "importance from activations needs calibration text: {\"dataset_id\": ...}",
            ));
        }
        if let Some(c) = &self.calibration {
            if uuid::Uuid::parse_str(&c.dataset_id).is_err() {
                errs.push(FieldError::new(
                    "calibration.dataset_id",
                    "calibration.dataset_id must be a dataset id (a UUID)",
                ));
            }
            if !(1..=4096).contains(&c.samples) {
                errs.push(FieldError::new("calibration.samples", "calibration.samples must be in 1..=4096"));
            }
            if !(8..=512).contains(&c.max_seq_len) {
                errs.push(FieldError::new("calibration.max_seq_len", "calibration.max_seq_len must be in 8..=512"));
            }
            if !p.method.calibrated() && !by_activations {
                errs.push(FieldError::new(
                    "calibration",
                    "calibration text is used by wanda, sparsegpt, importance from activations and block_influence only",
                ));
            }
        }
        if p.granularity == Granularity::Layers && p.scope == Some(Scope::Local) {
            errs.push(FieldError::new(
                "pruning.scope",
                "layers are removed across the model: pruning.scope must be global",
            ));
        }
        if matches!(p.granularity, Granularity::Heads | Granularity::Neurons | Granularity::Layers) {
            for (list, name) in [(&p.include, "include"), (&p.exclude, "exclude")] {
                if !list.is_empty() {
                    errs.push(FieldError::new(
                        format!("pruning.{name}"),
                        format!("pruning.{name} applies to unstructured pruning only"),
                    ));
                }
            }
        }
        for (list, name) in [(&p.include, "include"), (&p.exclude, "exclude")] {
            for (i, pat) in list.iter().enumerate() {
                if let Err(e) = regex::Regex::new(pat) {
                    let first = e.to_string().lines().last().unwrap_or_default().trim().to_string();
                    errs.push(FieldError::new(
                        format!("pruning.{name}[{i}]"),
                        format!("not a valid regular expression: {first}"),
                    ));
                }
            }
        }
        errs
    }
}

/// Checks that need the model: an N:M group size must divide the input dimension of every
/// default target (the hidden size and the FFN width); a unit count must fit the model as its
/// config states it (a compact checkpoint with fewer units in some layer is checked when the
/// job runs).
pub fn check_against_model(req: &JobRequest, model: &ModelShape) -> Result<(), FieldError> {
    check_family_supports(&req.pruning, model)?;
    if req.quantization.is_some() && Arch::parse(&model.model_type) == Some(Arch::Decoder(DecoderKind::Gpt2)) {
        return Err(FieldError::new(
            "quantization",
            "GPT-2's Conv1D weights are not nn.Linear modules, which the compressed-tensors format quantizes",
        ));
    }
    if let Some(count) = req.pruning.count {
        let local = req.pruning.scope() == Scope::Local;
        let (layers, heads, ffn) = (model.num_layers, model.num_heads, model.intermediate_size);
        // Every head of a layer may go (the block then adds its output bias); every neuron or
        // every layer may not.
        let (max, what) = match (req.pruning.granularity, local) {
            (Granularity::Heads, true) => (heads, format!("{heads} heads per layer")),
            (Granularity::Heads, false) => (layers * heads, format!("{} heads", layers * heads)),
            (Granularity::Neurons, true) => (ffn - 1, format!("{ffn} FFN neurons per layer, one of which must stay")),
            (Granularity::Neurons, false) => {
                (layers * ffn - 1, format!("{} FFN neurons, one of which must stay", layers * ffn))
            }
            (Granularity::Layers, _) => (layers - 1, format!("{layers} layers, one of which must stay")),
            _ => (u64::MAX, String::new()),
        };
        if count > max {
            return Err(FieldError::new(
                "pruning.count",
                format!("pruning.count {count} is more than the model allows: it has {what}"),
            ));
        }
    }
    if let (Granularity::NM, Some(p), true) =
        (req.pruning.granularity, &req.pruning.pattern, req.pruning.include.is_empty())
    {
        check_nm_fits(p, model)?;
    }
    Ok(())
}

/// What runs on a decoder family so far: the weight-level methods (magnitude, Wanda, SparseGPT;
/// unstructured or N:M). Structured granularities are refused with the field at fault before a
/// job is queued.
pub(super) fn check_family_supports(p: &PruningSpec, model: &ModelShape) -> Result<(), FieldError> {
    let Some(arch) = Arch::parse(&model.model_type).filter(|a| a.is_decoder()) else {
        if p.importance == Some(Importance::BlockInfluence) {
            return Err(FieldError::new(
                "pruning.importance",
                format!("block_influence scores decoder blocks; the layers of {} are scored by weight norm (leave importance out)", model.model_type),
            ));
        }
        return Ok(());
    };
    let family = arch.name();
    if !matches!(p.granularity, Granularity::Unstructured | Granularity::NM | Granularity::Layers) {
        return Err(FieldError::new(
            "pruning.granularity",
            format!(
                "heads and neurons of decoder models ({family}) are not written yet: use unstructured, n:m or layers"
            ),
        ));
    }
    Ok(())
}

/// An N:M group size must divide the input dimension of every default target: the hidden size
/// and the FFN width.
pub fn check_nm_fits(pattern: &str, model: &ModelShape) -> Result<(), FieldError> {
    if let Ok(pat) = crate::engine::prune::NmPattern::parse(pattern) {
        for (what, n) in [("hidden size", model.hidden_size), ("FFN width", model.intermediate_size)] {
            if !(n as usize).is_multiple_of(pat.m) {
                return Err(FieldError::new("pruning.pattern", format!("M = {} must divide the input dimension of every pruned matrix, which is not a multiple of M here: the model's {what} is {n}", pat.m)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> (String, String) {
        let e = parse_request(body.as_bytes()).unwrap_err();
        (e.field, e.message)
    }

    #[test]
    fn valid_spec_parses_with_defaults() {
        let r = parse_request(
            br#"{"model_id":"0192f7a0-0000-7000-8000-000000000000","pruning":{"method":"magnitude","sparsity":0.5}}"#,
        )
        .unwrap();
        assert_eq!(r.kind, JobKind::Prune);
        assert_eq!(r.pruning.scope(), Scope::Global);
        assert!(r.pruning.include.is_empty());
    }

    #[test]
    fn every_fault_names_its_field() {
        let id = "0192f7a0-0000-7000-8000-000000000000";
        let cases = [
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":1.0}}}}"#),
                "pruning.sparsity",
                "must be in [0, 1)",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":-0.1}}}}"#),
                "pruning.sparsity",
                "must be in [0, 1)",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":"half"}}}}"#),
                "pruning.sparsity",
                "invalid type",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"wanda2","sparsity":0.5}}}}"#),
                "pruning.method",
                "unknown variant",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","scope":"world","sparsity":0.5}}}}"#),
                "pruning.scope",
                "unknown variant",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":0.5,"bogus":1}}}}"#),
                "pruning.bogus",
                "unknown field",
            ),
            (format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude"}}}}"#), "pruning.sparsity", "is required"),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"n:m"}}}}"#),
                "pruning.pattern",
                "is required",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"n:m","pattern":"4:2"}}}}"#
                ),
                "pruning.pattern",
                "0 < N < M",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"n:m","pattern":"2:4","sparsity":0.5}}}}"#
                ),
                "pruning.sparsity",
                "leave pruning.sparsity out",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":0.5,"pattern":"2:4"}}}}"#),
                "pruning.pattern",
                "n:m only",
            ),
            (
                format!(r#"{{"model_id":"{id}","extra":true,"pruning":{{"method":"magnitude","sparsity":0.5}}}}"#),
                "extra",
                "unknown field",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":0.5,"include":["ok","(unclosed"]}}}}"#
                ),
                "pruning.include[1]",
                "regular expression",
            ),
            (r#"{"model_id":"nope","pruning":{"method":"magnitude","sparsity":0.5}}"#.to_string(), "model_id", "UUID"),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"rows","sparsity":0.5}}}}"#
                ),
                "pruning.granularity",
                "unknown variant",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"heads","sparsity":0.5,"include":["x"]}}}}"#
                ),
                "pruning.include",
                "unstructured pruning only",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":0.5}},"export":{{"compact":1}}}}"#
                ),
                "export.compact",
                "invalid type",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"layers","scope":"local","sparsity":0.5}}}}"#
                ),
                "pruning.scope",
                "must be global",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"wanda","sparsity":0.5}}}}"#),
                "calibration",
                "needs calibration",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"wanda","scope":"global","sparsity":0.5}},"calibration":{{"dataset_id":"{id}"}}}}"#
                ),
                "pruning.scope",
                "must be local",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"wanda","granularity":"heads","sparsity":0.5}},"calibration":{{"dataset_id":"{id}"}}}}"#
                ),
                "pruning.granularity",
                "unstructured or n:m",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"wanda","sparsity":0.5}},"calibration":{{"dataset_id":"{id}","samples":0}}}}"#
                ),
                "calibration.samples",
                "1..=4096",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":0.5}},"calibration":{{"dataset_id":"{id}"}}}}"#
                ),
                "calibration",
                "used by wanda, sparsegpt, importance from activations and block_influence",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"heads","sparsity":0.5,"count":2}}}}"#
                ),
                "pruning.count",
                "not both",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"heads"}}}}"#),
                "pruning.sparsity",
                "or pruning.count",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"heads","count":0}}}}"#),
                "pruning.count",
                "at least 1",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","count":10}}}}"#),
                "pruning.count",
                "heads, neurons and layers",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"n:m","pattern":"2:4","count":10}}}}"#
                ),
                "pruning.count",
                "heads, neurons and layers",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"layers","count":1,"importance":"activations"}}}}"#
                ),
                "pruning.importance",
                "heads or neurons",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"heads","count":1,"importance":"activations"}}}}"#
                ),
                "calibration",
                "needs calibration",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","granularity":"heads","count":1,"importance":"neurons"}}}}"#
                ),
                "pruning.importance",
                "unknown variant",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"sparsegpt","scope":"global","sparsity":0.5}},"calibration":{{"dataset_id":"{id}"}}}}"#
                ),
                "pruning.scope",
                "must be local",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"sparsegpt","sparsity":0.5}}}}"#),
                "calibration",
                "sparsegpt needs calibration",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"sparsegpt","granularity":"layers","sparsity":0.5}},"calibration":{{"dataset_id":"{id}"}}}}"#
                ),
                "pruning.granularity",
                "unstructured or n:m",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"sparsegpt","sparsity":0.5,"dampening":0}},"calibration":{{"dataset_id":"{id}"}}}}"#
                ),
                "pruning.dampening",
                "(0, 1]",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"sparsegpt","sparsity":0.5,"block_size":0}},"calibration":{{"dataset_id":"{id}"}}}}"#
                ),
                "pruning.block_size",
                "1..=4096",
            ),
            (
                format!(r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":0.5,"dampening":0.1}}}}"#),
                "pruning.dampening",
                "sparsegpt only",
            ),
            (
                format!(
                    r#"{{"model_id":"{id}","pruning":{{"method":"magnitude","sparsity":0.5}},"export":{{"layout":"hf"}}}}"#
                ),
                "export.layout",
                "unknown field",
            ),
            ("{\"model_id\":".to_string(), "body", "EOF"),
        ];
        for (body, field, msg) in cases {
            let (f, m) = field_of(&body);
            assert_eq!(f, field, "{body}: {m}");
            assert!(m.contains(msg), "{body}: {m}");
        }
    }
}
