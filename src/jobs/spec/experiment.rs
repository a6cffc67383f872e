//! The spec of an `experiment` job: fine-tune (optionally), prune, recover and evaluate a model
//! on a task, with metrics before and after. Unknown fields are refused; every field is
//! validated with a message that names it.

use super::prune::Granularity;
use crate::data::Task;
use crate::engine::prune::Scope;
use crate::validation::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

fn d_epochs_ft() -> u32 {
    3
}
fn d_epochs_rec() -> u32 {
    2
}
fn d_lr_ft() -> f64 {
    5e-5
}
fn d_lr_rec() -> f64 {
    3e-5
}
fn d_batch() -> usize {
    32
}
fn d_len() -> usize {
    128
}
fn d_seed() -> u64 {
    42
}
fn d_true() -> bool {
    true
}
fn d_temperature() -> f64 {
    2.0
}
fn d_alpha() -> f64 {
    0.5
}
fn d_every() -> u64 {
    100
}

/// The task and its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// One of cola, sst2, mrpc, qqp, stsb, mnli, mnli_mismatched, qnli, rte, wnli, squad
    /// (metrics: `exact_match` and `f1`, in percent; windows with a stride of a third of
    /// `max_seq_len`, at most 128), or causal_lm (decoder models: `perplexity` and `loss` on
    /// `eval_dataset_id`'s text, `text` or `jsonl` datasets; `dataset_id` is the calibration
    /// text of wanda and sparsegpt).
    pub name: Task,
    /// The training data: a dataset of this tenant, labelled, of this task.
    pub dataset_id: String,
    /// The evaluation data (e.g. the GLUE dev file). Give this or `eval_fraction`.
    #[serde(default)]
    pub eval_dataset_id: Option<String>,
    /// Instead of `eval_dataset_id`: hold out this fraction of the training data (its last
    /// rows; for squad its last whole articles), in (0, 0.5], for evaluation.
    #[serde(default)]
    pub eval_fraction: Option<f64>,
}

/// A fine-tuning stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Passes over the training data (1..=100).
    #[serde(default = "d_epochs_ft")]
    pub epochs: u32,
    /// Stop after this many optimizer steps instead (1..=1000000).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Peak learning rate of AdamW (linear warm-up over 6% of the steps, then linear decay), in
    /// (0, 0.1].
    #[serde(default = "d_lr_ft")]
    pub learning_rate: f64,
    /// Examples per batch (1..=1024).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Tokens per example, truncated (8..=512, at most the model's positions).
    #[serde(default = "d_len")]
    pub max_seq_len: usize,
    /// Use only the first N training examples.
    #[serde(default)]
    pub max_train_samples: Option<usize>,
    #[serde(default = "d_seed")]
    pub seed: u64,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            epochs: d_epochs_ft(),
            max_steps: None,
            learning_rate: d_lr_ft(),
            batch_size: d_batch(),
            max_seq_len: d_len(),
            max_train_samples: None,
            seed: d_seed(),
        }
    }
}

/// Knowledge distillation from the dense model (after fine-tuning) during recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    /// Softmax temperature T of the soft loss (KL at T, scaled by T²), in (0, 100].
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    /// Weight α of the soft loss; the hard loss gets 1 − α. In [0, 1].
    #[serde(default = "d_alpha")]
    pub alpha: f64,
}

/// The recovery stage: fine-tuning the pruned model with its masks locked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverySpec {
    /// Passes over the training data with the masks locked (1..=100; default 2).
    #[serde(default = "d_epochs_rec")]
    pub epochs: u32,
    /// Stop after this many optimizer steps instead (1..=1000000).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Peak learning rate of AdamW (linear warm-up over 6% of the steps, then linear decay), in
    /// (0, 0.1]; default 3e-5.
    #[serde(default = "d_lr_rec")]
    pub learning_rate: f64,
    /// Examples per batch (1..=1024).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Tokens per example, truncated (8..=512, at most the model's positions).
    #[serde(default = "d_len")]
    pub max_seq_len: usize,
    /// Use only the first N training examples.
    #[serde(default)]
    pub max_train_samples: Option<usize>,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Distil from the dense model; absent: the task loss alone.
    #[serde(default)]
    pub distill: Option<DistillSpec>,
}

impl RecoverySpec {
    /// The training run it asks for (its own defaults: 2 epochs at 3e-5), as a fine-tuning
    /// stage would be given: one type for validation and the trainer. (The wire format keeps
    /// the fields at the top of `recovery`, with their own defaults and docs; serde cannot
    /// flatten a struct into one that denies unknown fields.)
    pub fn training(&self) -> TrainSpec {
        TrainSpec {
            epochs: self.epochs,
            max_steps: self.max_steps,
            learning_rate: self.learning_rate,
            batch_size: self.batch_size,
            max_seq_len: self.max_seq_len,
            max_train_samples: self.max_train_samples,
            seed: self.seed,
        }
    }
}

/// How pruning criteria are computed in an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentMethod {
    /// |w|.
    Magnitude,
    /// First-order Taylor |w·g|, gradients over the training data.
    Taylor,
    /// Movement −w·g, summed in Adam-normalised steps: over one pass of the training data
    /// (one_shot) or accumulated during recovery (cubic, iterative; there the masks are
    /// re-chosen at every step of the ramp and pruned weights can come back).
    Movement,
    /// Attention heads by the gradient of the loss with respect to a head mask (Michel et al.
    /// 2019); granularity `heads`.
    HeadImportance,
    /// Wanda (|w|·‖X_j‖₂ within each output row), calibrated on the first
    /// `calibration_samples` training examples; one_shot, unstructured or n:m, scope local.
    Wanda,
    /// SparseGPT (layer-wise OBS reconstruction, block 128, dampening 1%), calibrated on the
    /// first `calibration_samples` training examples; one_shot, unstructured or n:m, scope local.
    Sparsegpt,
}

impl ExperimentMethod {
    pub fn calibrated(self) -> bool {
        matches!(self, ExperimentMethod::Wanda | ExperimentMethod::Sparsegpt)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Prune once, before recovery.
    #[default]
    OneShot,
    /// During recovery: at `start_step` and every `every` steps until `end_step`, each round
    /// removing the same fraction of the remaining weights.
    Iterative,
    /// During recovery: the cubic ramp of Zhu & Gupta (2017) from 0 at `start_step` to the
    /// target at `end_step`, pruning every `every` steps.
    Cubic,
}

/// When pruning happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Recovery step of the first pruning (gradual schedules).
    #[serde(default)]
    pub start_step: u64,
    /// Recovery step at which the target is reached (default: 70% of the recovery steps).
    #[serde(default)]
    pub end_step: Option<u64>,
    /// Steps between pruning rounds (1..=1000000).
    #[serde(default = "d_every")]
    pub every: u64,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        ScheduleSpec { kind: ScheduleKind::OneShot, start_step: 0, end_step: None, every: d_every() }
    }
}

/// What to prune and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentPruning {
    pub method: ExperimentMethod,
    /// `unstructured` (default), `n:m`, `heads` (magnitude, head_importance) or `neurons`
    /// (magnitude: the norm of each FFN neuron's input row and output column).
    #[serde(default)]
    pub granularity: Granularity,
    /// `global` (default; wanda and sparsegpt: `local`, their only choice) or `local`.
    #[serde(default)]
    pub scope: Option<Scope>,
    /// The fraction removed, in [0, 1): of the encoder's linear weights (unstructured), of the
    /// heads (heads), of the FFN neurons (neurons), or of the layers (layers: the lowest-norm
    /// round(fraction × layers) layers, physically removed). Not for n:m.
    #[serde(default)]
    pub sparsity: Option<f64>,
    /// Granularity `heads` only: also remove this fraction of the FFN neurons, in [0, 1)
    /// (scored by their norm; same scope). Latency after pruning is measured with removed
    /// heads and neurons physically gone.
    #[serde(default)]
    pub neuron_sparsity: Option<f64>,
    /// wanda and sparsegpt: calibration inputs, the first N training examples (1..=4096,
    /// default 128) at the recovery's `max_seq_len`.
    #[serde(default)]
    pub calibration_samples: Option<usize>,
    /// `n:m` only: e.g. "2:4".
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub schedule: ScheduleSpec,
}

/// Evaluation options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Measure forward latency (median of 5 runs of one evaluation batch) before and after.
    #[serde(default = "d_true")]
    pub latency: bool,
    /// Evaluate on the first N evaluation examples only (causal_lm: the first N windows).
    #[serde(default)]
    pub max_eval_samples: Option<usize>,
    /// causal_lm only: tokens per evaluation window (2..=8192, default 512; each window
    /// predicts all its tokens but the first). The evaluation text, tokenized whole without
    /// special tokens, is cut into consecutive windows; a last partial one is dropped.
    #[serde(default)]
    pub max_seq_len: Option<usize>,
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        EvaluationSpec { latency: true, max_eval_samples: None, max_seq_len: None }
    }
}

/// causal_lm's evaluation window when the spec gives none.
pub const LM_WINDOW: usize = 512;

/// The body of `POST /v1/jobs` with `"kind": "experiment"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "experiment", "model_id": "0192f7a0-0000-7000-8000-000000000000",
    "task": {"name": "rte", "dataset_id": "0192f7a0-0000-7000-8000-000000000001", "eval_dataset_id": "0192f7a0-0000-7000-8000-000000000002"},
    "finetune": {"epochs": 3, "learning_rate": 5e-5, "batch_size": 32, "max_seq_len": 128, "seed": 42},
    "pruning": {"method": "movement", "granularity": "unstructured", "scope": "global", "sparsity": 0.8,
                "schedule": {"kind": "cubic", "start_step": 0, "end_step": 1000, "every": 100}},
    "recovery": {"epochs": 2, "learning_rate": 3e-5, "batch_size": 32, "max_seq_len": 128, "distill": {"temperature": 2.0, "alpha": 0.5}},
    "evaluation": {"latency": true}}))]
pub struct ExperimentRequest {
    /// `experiment`.
    pub kind: super::prune::JobKind,
    /// The model (an id from `POST /v1/models`); with a task head for this task, or without
    /// one (a fresh head is initialised; give `finetune` then).
    pub model_id: String,
    pub task: TaskSpec,
    /// Dense fine-tuning before pruning (for a model without a task head).
    #[serde(default)]
    pub finetune: Option<TrainSpec>,
    /// Without it the experiment only fine-tunes and evaluates.
    #[serde(default)]
    pub pruning: Option<ExperimentPruning>,
    /// Fine-tuning after pruning with the masks locked (required by gradual schedules).
    #[serde(default)]
    pub recovery: Option<RecoverySpec>,
    #[serde(default)]
    pub evaluation: EvaluationSpec,
    /// `{"compact": true}` also writes the pruned task model under `compact/` with removed heads
    /// and FFN neurons physically gone and per-layer shapes in its `config.json` (Secateur's
    /// runtime loads it); the default files keep them zero-filled (transformers loads those).
    #[serde(default)]
    pub export: super::prune::ExportSpec,
}

fn uuid_ok(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

fn check_training(errs: &mut Vec<FieldError>, at: &str, t: &TrainSpec) {
    let (epochs, max_steps, lr, batch, len, samples) =
        (t.epochs, t.max_steps, t.learning_rate, t.batch_size, t.max_seq_len, t.max_train_samples);
    if !(1..=100).contains(&epochs) {
        errs.push(FieldError::new(format!("{at}.epochs"), format!("{at}.epochs must be in 1..=100")));
    }
    if let Some(s) = max_steps {
        if !(1..=1_000_000).contains(&s) {
            errs.push(FieldError::new(format!("{at}.max_steps"), format!("{at}.max_steps must be in 1..=1000000")));
        }
    }
    if !(lr.is_finite() && lr > 0.0 && lr <= 0.1) {
        errs.push(FieldError::new(format!("{at}.learning_rate"), format!("{at}.learning_rate must be in (0, 0.1]")));
    }
    if !(1..=1024).contains(&batch) {
        errs.push(FieldError::new(format!("{at}.batch_size"), format!("{at}.batch_size must be in 1..=1024")));
    }
    if !(8..=512).contains(&len) {
        errs.push(FieldError::new(format!("{at}.max_seq_len"), format!("{at}.max_seq_len must be in 8..=512")));
    }
    if samples == Some(0) {
        errs.push(FieldError::new(
            format!("{at}.max_train_samples"),
            format!("{at}.max_train_samples must be at least 1"),
        ));
    }
}

impl ExperimentRequest {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if !uuid_ok(&self.model_id) {
            errs.push(FieldError::new("model_id", "model_id must be a model id (a UUID)"));
        }
        let t = &self.task;
        if !uuid_ok(&t.dataset_id) {
            errs.push(FieldError::new("task.dataset_id", "task.dataset_id must be a dataset id (a UUID)"));
        }
        match (&t.eval_dataset_id, t.eval_fraction) {
            (Some(_), Some(_)) => errs.push(FieldError::new("task.eval_fraction", "give task.eval_dataset_id or task.eval_fraction, not both")),
            (None, None) => errs.push(FieldError::new("task.eval_dataset_id", "task.eval_dataset_id (an evaluation dataset) or task.eval_fraction (held out from the training data) is required")),
            (Some(id), None) if !uuid_ok(id) => errs.push(FieldError::new("task.eval_dataset_id", "task.eval_dataset_id must be a dataset id (a UUID)")),
            (None, Some(f)) if !(f.is_finite() && f > 0.0 && f <= 0.5) => errs.push(FieldError::new("task.eval_fraction", "task.eval_fraction must be in (0, 0.5]")),
            _ => {}
        }
        if let Some(f) = &self.finetune {
            check_training(&mut errs, "finetune", f);
        }
        if let Some(r) = &self.recovery {
            check_training(&mut errs, "recovery", &r.training());
            if let Some(d) = &r.distill {
                if !(d.temperature.is_finite() && d.temperature > 0.0 && d.temperature <= 100.0) {
                    errs.push(FieldError::new(
                        "recovery.distill.temperature",
                        "recovery.distill.temperature must be in (0, 100]",
                    ));
                }
                if !(d.alpha.is_finite() && (0.0..=1.0).contains(&d.alpha)) {
                    errs.push(FieldError::new("recovery.distill.alpha", "recovery.distill.alpha must be in [0, 1]"));
                }
            }
        }
        if t.name == Task::CausalLm {
            self.check_causal_lm(&mut errs);
        } else if self.evaluation.max_seq_len.is_some() {
            errs.push(FieldError::new(
                "evaluation.max_seq_len",
                "evaluation.max_seq_len applies to task causal_lm (the training settings set the others' lengths)",
            ));
        }
        if let Some(e) = self.evaluation.max_eval_samples {
            if e == 0 {
                errs.push(FieldError::new(
                    "evaluation.max_eval_samples",
                    "evaluation.max_eval_samples must be at least 1",
                ));
            }
        }
        if let Some(p) = &self.pruning {
            let m =
                serde_json::to_value(p.method).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            match p.granularity {
                Granularity::Unstructured => {}
                Granularity::NM if p.method != ExperimentMethod::HeadImportance => {}
                Granularity::Heads
                    if matches!(p.method, ExperimentMethod::Magnitude | ExperimentMethod::HeadImportance) => {}
                Granularity::Neurons | Granularity::Layers if p.method == ExperimentMethod::Magnitude => {}
                g => {
                    let g =
                        serde_json::to_value(g).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                    errs.push(FieldError::new("pruning.granularity", format!("method {m} with granularity {g} is not available in experiment jobs (unstructured and n:m: magnitude, taylor, movement, wanda, sparsegpt; heads: magnitude, head_importance; neurons and layers: magnitude)")));
                }
            }
            if p.method.calibrated() {
                if p.scope == Some(Scope::Global) {
                    let why = if p.method == ExperimentMethod::Wanda {
                        "compares weights within each output row"
                    } else {
                        "reconstructs each linear map on its own"
                    };
                    errs.push(FieldError::new(
                        "pruning.scope",
                        format!("pruning.scope must be local for {m}: it {why}"),
                    ));
                }
                if p.schedule.kind != ScheduleKind::OneShot {
                    errs.push(FieldError::new(
                        "pruning.schedule.kind",
                        format!("{m} prunes once (one_shot) before recovery"),
                    ));
                }
                if let Some(n) = p.calibration_samples {
                    if !(1..=4096).contains(&n) {
                        errs.push(FieldError::new(
                            "pruning.calibration_samples",
                            "pruning.calibration_samples must be in 1..=4096",
                        ));
                    }
                }
            } else if p.calibration_samples.is_some() {
                errs.push(FieldError::new(
                    "pruning.calibration_samples",
                    "pruning.calibration_samples applies to methods wanda and sparsegpt only",
                ));
            }
            match p.neuron_sparsity {
                Some(_) if p.granularity != Granularity::Heads => errs.push(FieldError::new("pruning.neuron_sparsity", "pruning.neuron_sparsity applies to granularity heads only (granularity neurons uses pruning.sparsity)")),
                Some(s) if !(s.is_finite() && (0.0..1.0).contains(&s)) => errs.push(FieldError::new("pruning.neuron_sparsity", "pruning.neuron_sparsity must be in [0, 1)")),
                _ => {}
            }
            if p.granularity == Granularity::Layers && p.scope == Some(Scope::Local) {
                errs.push(FieldError::new(
                    "pruning.scope",
                    "granularity layers removes the weakest layers of the model: pruning.scope must be global",
                ));
            }
            if p.method == ExperimentMethod::HeadImportance && p.granularity != Granularity::Heads {
                errs.push(FieldError::new("pruning.granularity", "head_importance prunes granularity heads"));
            }
            match (p.granularity, p.sparsity, &p.pattern) {
                (Granularity::NM, s, pat) => {
                    if s.is_some() {
                        errs.push(FieldError::new(
                            "pruning.sparsity",
                            "leave pruning.sparsity out for n:m: pruning.pattern sets it",
                        ));
                    }
                    match pat.as_deref().map(crate::engine::prune::NmPattern::parse) {
                        None => errs.push(FieldError::new(
                            "pruning.pattern",
                            "pruning.pattern is required for n:m (e.g. \"2:4\")",
                        )),
                        Some(Err(e)) => errs.push(FieldError::new("pruning.pattern", e)),
                        Some(Ok(_)) => {}
                    }
                }
                (_, s, pat) => {
                    match s {
                        None => errs.push(FieldError::new("pruning.sparsity", "pruning.sparsity is required")),
                        Some(s) if !(s.is_finite() && (0.0..1.0).contains(&s)) => {
                            errs.push(FieldError::new("pruning.sparsity", "pruning.sparsity must be in [0, 1)"))
                        }
                        _ => {}
                    }
                    if pat.is_some() {
                        errs.push(FieldError::new(
                            "pruning.pattern",
                            "pruning.pattern applies to granularity n:m only",
                        ));
                    }
                }
            }
            let sch = &p.schedule;
            if sch.kind != ScheduleKind::OneShot {
                if self.recovery.is_none() {
                    errs.push(FieldError::new(
                        "pruning.schedule.kind",
                        "a gradual schedule prunes during recovery: give recovery",
                    ));
                }
                if p.granularity != Granularity::Unstructured {
                    errs.push(FieldError::new("pruning.schedule.kind", "gradual schedules prune unstructured weights"));
                }
                if !(1..=1_000_000).contains(&sch.every) {
                    errs.push(FieldError::new(
                        "pruning.schedule.every",
                        "pruning.schedule.every must be in 1..=1000000",
                    ));
                }
                if let Some(end) = sch.end_step {
                    if end <= sch.start_step {
                        errs.push(FieldError::new(
                            "pruning.schedule.end_step",
                            "pruning.schedule.end_step must be after start_step",
                        ));
                    }
                }
            } else if sch.start_step != 0 || sch.end_step.is_some() {
                errs.push(FieldError::new(
                    "pruning.schedule.start_step",
                    "start_step and end_step apply to gradual schedules (iterative, cubic)",
                ));
            }
        } else if self.recovery.is_some() {
            errs.push(FieldError::new("recovery", "recovery fine-tunes a pruned model: give pruning"));
        }
        errs
    }
}
impl ExperimentRequest {
    /// What causal_lm experiments run today: one-shot magnitude, Wanda or SparseGPT
    /// (unstructured or n:m) between two perplexity evaluations on `eval_dataset_id`.
    fn check_causal_lm(&self, errs: &mut Vec<FieldError>) {
        let not_yet = "causal_lm experiments do not train yet (language-model training of decoders is not written)";
        if self.finetune.is_some() {
            errs.push(FieldError::new("finetune", not_yet));
        }
        if self.recovery.is_some() {
            errs.push(FieldError::new("recovery", not_yet));
        }
        if self.task.eval_fraction.is_some() {
            errs.push(FieldError::new(
                "task.eval_fraction",
                "causal_lm evaluates on the text of task.eval_dataset_id: give it instead",
            ));
        }
        if let Some(n) = self.evaluation.max_seq_len {
            if !(2..=8192).contains(&n) {
                errs.push(FieldError::new("evaluation.max_seq_len", "evaluation.max_seq_len must be in 2..=8192"));
            }
        }
        if let Some(p) = &self.pruning {
            if !matches!(p.method, ExperimentMethod::Magnitude | ExperimentMethod::Wanda | ExperimentMethod::Sparsegpt)
            {
                errs.push(FieldError::new(
                    "pruning.method",
                    "causal_lm experiments prune with magnitude, wanda or sparsegpt (the others score with training)",
                ));
            }
            if !matches!(p.granularity, Granularity::Unstructured | Granularity::NM) {
                errs.push(FieldError::new(
                    "pruning.granularity",
                    "causal_lm experiments prune unstructured or n:m (heads, neurons and layers of decoders are not written yet)",
                ));
            }
        }
    }

    /// The checks that need the stored model: causal_lm runs on decoders, the other tasks on
    /// the encoder families, and an N:M group size must fit the model's matrices.
    pub fn check_against_model(&self, model: &super::prune::ModelShape) -> Result<(), FieldError> {
        let decoder = crate::engine::model::arch::Arch::parse(&model.model_type).is_some_and(|a| a.is_decoder());
        if decoder != (self.task.name == Task::CausalLm) {
            let why = if decoder {
                format!("task {} needs a classification or QA head on an encoder (bert, roberta, distilbert); a decoder ({}) runs task causal_lm", self.task.name.name(), model.model_type)
            } else {
                format!("task causal_lm runs on decoder models (gpt2, llama, qwen2), not {}", model.model_type)
            };
            return Err(FieldError::new("model_id", why));
        }
        match &self.pruning {
            Some(p) => match (p.granularity, &p.pattern) {
                (Granularity::NM, Some(pat)) => super::prune::check_nm_fits(pat, model),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}
