//! The `experiment` job: evaluate a model on a GLUE task or SQuAD, fine-tune it (optionally), prune it
//! (one-shot, or gradually during recovery), recover with the masks locked (optionally
//! distilled from the dense model), evaluate again, and export the pruned task model with its
//! report and predictions. Each stage's outcome is recorded as it ends (`JobContext::record_stage`:
//! the database, served by `GET /v1/jobs/{id}/result`), and `result.json` sums them up.

use super::prune::{model_err, write_model};
use super::spec::Granularity;
use super::spec::{ExperimentMethod, ExperimentRequest, ScheduleKind, TrainSpec};
use super::{Executor, JobContext, JobError};
use crate::data::{self, Task};
use crate::engine::io::export;
use crate::engine::io::st;
use crate::engine::model::heads::{export_task_model, Head};
use crate::engine::model::{EncoderConfig, ModelConfig, Weights};
use crate::engine::prune::structured::{self, Surgery, UnitPlan};
use crate::engine::prune::wanda::Rule;
use crate::engine::prune::{NmPattern, Scope};
use crate::engine::report::{self, Report};
use crate::store::Stage;
use crate::train::experiment::{
    evaluate, examples, forward_ms, head_kind, linear_targets, lowest_layers, lowest_units, prune_calibrated,
    prune_one_shot, removed_units, sparsity_of, squad_evaluate, squad_train_examples, unit_norm_scores, without_layers,
    zero_units, Calibrated, Shape,
};
use crate::train::gradual::{gradient_pass, Criterion, GradualPruner, Ramp, Scores};
use crate::train::loss::Distill;
use crate::train::net::Net;
use crate::train::trainer::{self, Control, Example, Masks, Observer, Schedule, State, StepInfo};
use bytes::Bytes;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

pub struct ExperimentExecutor;

/// The trainer's schedule for a training stage (fine-tuning, or recovery through
/// `RecoverySpec::training`).
fn schedule(t: &TrainSpec, group_by_length: bool) -> Schedule {
    Schedule {
        epochs: t.epochs,
        max_steps: t.max_steps,
        learning_rate: t.learning_rate as f32,
        batch_size: t.batch_size,
        seed: t.seed,
        group_by_length,
        ..Default::default()
    }
}

/// Share of the job's progress each stage takes (loading and evaluations are small).
struct Plan {
    stages: Vec<(Stage, f64)>,
}

impl Plan {
    fn new(req: &ExperimentRequest) -> Plan {
        let mut stages = vec![(Stage::Loading, 0.02), (Stage::BaselineEval, 0.04)];
        if req.finetune.is_some() {
            stages.push((Stage::Finetune, 0.4));
            stages.push((Stage::DenseEval, 0.04));
        }
        if req.pruning.is_some() {
            stages.push((Stage::Prune, 0.06));
        }
        if req.recovery.is_some() {
            stages.push((Stage::Recover, 0.4));
        }
        if req.pruning.is_some() {
            stages.push((Stage::FinalEval, 0.04));
        }
        stages.push((Stage::Export, 0.02));
        let total: f64 = stages.iter().map(|s| s.1).sum();
        Plan { stages: stages.into_iter().map(|(n, w)| (n, w / total)).collect() }
    }
    /// The job's progress at `fraction` of stage `name`.
    fn at(&self, name: Stage, fraction: f64) -> f64 {
        let mut before = 0.0;
        for (n, w) in &self.stages {
            if *n == name {
                return (before + w * fraction.clamp(0.0, 1.0)).min(1.0);
            }
            before += w;
        }
        before.min(1.0)
    }
}

/// What a checkpoint remembers besides the training state: the stage it was taken in and what
/// the stages before it recorded, so that a job claimed again goes on from there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Resume {
    /// The stage the checkpoint was taken in.
    stage: Option<Stage>,
    stages: Vec<(Stage, serde_json::Value)>,
    baseline: BTreeMap<String, f64>,
    before: BTreeMap<String, f64>,
    pruned: Option<BTreeMap<String, f64>>,
    losses: Vec<f64>,
    reached: f64,
    latency_before: Option<f64>,
    /// Layers the prune stage removed (indices in the model as loaded); a checkpoint taken
    /// after it holds the smaller model, so resuming removes them again before restoring.
    #[serde(default)]
    removed_layers: Vec<usize>,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// Reports training progress, stops on request, forwards to the gradual pruner, and writes a
/// checkpoint now and then (every tenth of the stage's steps, at most once per
/// `JobContext::checkpoint_interval`).
struct Progress<'a> {
    ctx: &'a JobContext,
    plan: &'a Plan,
    stage: Stage,
    pruner: Option<GradualPruner>,
    stopped: bool,
    failed: Option<JobError>,
    losses: Vec<f64>,
    resume: Resume,
    teacher: Option<&'a Net>,
    last_checkpoint: (u64, Instant),
}

impl Progress<'_> {
    fn checkpoint(&mut self, net: &Net, masks: &Masks, state: &State) -> Result<(), JobError> {
        let mut extra = BTreeMap::new();
        if let Some(t) = self.teacher {
            for p in &t.params {
                extra.insert(format!("teacher/{}", p.name), p.value.clone());
            }
        }
        let mut resume = self.resume.clone();
        resume.stage = Some(self.stage);
        resume.losses = self.losses.clone();
        if let Some(pr) = self.pruner.as_mut() {
            resume.reached = pr.reached;
            extra.extend(pr.buffers());
        }
        let notes = serde_json::to_string(&resume).map_err(|e| JobError::Internal(e.into()))?;
        self.ctx
            .write_scratch(CHECKPOINT, Bytes::from(trainer::checkpoint_with_notes(net, masks, state, &extra, &notes)))
    }
}

impl Observer for Progress<'_> {
    fn gradients(&mut self, net: &Net, grads: &crate::train::net::Grads, info: &StepInfo) {
        if let Some(p) = self.pruner.as_mut() {
            p.gradients(net, grads, info);
        }
    }
    fn stepped(&mut self, net: &mut Net, masks: &mut Masks, state: &State, info: &StepInfo) -> Control {
        if let Some(p) = self.pruner.as_mut() {
            p.stepped(net, masks, state, info);
        }
        self.losses.push(info.loss);
        let every = (info.total / 10).max(1);
        if info.step < info.total
            && info.step >= self.last_checkpoint.0 + every
            && self.last_checkpoint.1.elapsed() >= self.ctx.checkpoint_interval
        {
            masks.apply(net);
            if let Err(e) = self.checkpoint(net, masks, state) {
                self.failed = Some(e);
                return Control::Stop;
            }
            self.last_checkpoint = (info.step, Instant::now());
        }
        if self
            .ctx
            .progress(self.stage.name(), self.plan.at(self.stage, info.step as f64 / info.total.max(1) as f64))
            .is_err()
        {
            self.stopped = true;
            return Control::Stop;
        }
        Control::Continue
    }
}

/// Training and evaluation data of the task.
enum TaskData {
    Glue { rows: Vec<data::Example>, eval_rows: Vec<data::Example> },
    Squad { questions: Vec<data::SquadQuestion>, eval_questions: Vec<data::SquadQuestion> },
}

fn read_rows(ctx: &JobContext, id: &str, task: Task, field: &str) -> Result<Vec<data::Example>, JobError> {
    let (format, dtask, bytes) = ctx.read_dataset(id)?;
    if format == data::Format::GlueTsv && dtask != Some(task) {
        return Err(JobError::Failed(format!(
            "{field}: the dataset is a {} file, not {}",
            dtask.map_or("task-less".into(), |t| t.name()),
            task.name()
        )));
    }
    let rows = data::examples(format, Some(task), &bytes).map_err(|e| JobError::Failed(format!("{field}: {e}")))?;
    if rows.iter().any(|r| r.label.is_none()) {
        return Err(JobError::Failed(format!(
            "{field}: the dataset has unlabelled rows (a GLUE test file?); experiments need labels"
        )));
    }
    if rows.is_empty() {
        return Err(JobError::Failed(format!("{field}: the dataset holds no examples")));
    }
    Ok(rows)
}

fn read_questions(ctx: &JobContext, id: &str, field: &str) -> Result<Vec<data::SquadQuestion>, JobError> {
    let (format, _, bytes) = ctx.read_dataset(id)?;
    if format != data::Format::SquadJson {
        return Err(JobError::Failed(format!("{field}: task squad reads squad_json datasets")));
    }
    data::squad_questions(&bytes).map_err(|e| JobError::Failed(format!("{field}: {e}")))
}

fn load_data(ctx: &JobContext, req: &ExperimentRequest) -> Result<TaskData, JobError> {
    let t = &req.task;
    let max_eval = req.evaluation.max_eval_samples.unwrap_or(usize::MAX);
    if t.name == Task::Squad {
        let mut questions = read_questions(ctx, &t.dataset_id, "task.dataset_id")?;
        let mut eval_questions = match (&t.eval_dataset_id, t.eval_fraction) {
            (Some(id), _) => read_questions(ctx, id, "task.eval_dataset_id")?,
            (None, Some(f)) => {
                // Whole articles are held out (the last ones), at least `f` of the questions.
                let want = ((questions.len() as f64) * f).ceil() as usize;
                let mut cut = questions.len();
                while cut > 0 && questions.len() - cut < want {
                    let article = questions[cut - 1].article;
                    while cut > 0 && questions[cut - 1].article == article {
                        cut -= 1;
                    }
                }
                if cut == 0 {
                    return Err(JobError::Failed("task.eval_fraction leaves no training article".into()));
                }
                questions.split_off(cut)
            }
            (None, None) => return Err(JobError::Failed("no evaluation data".into())),
        };
        eval_questions.truncate(max_eval);
        return Ok(TaskData::Squad { questions, eval_questions });
    }
    let mut rows = read_rows(ctx, &t.dataset_id, t.name, "task.dataset_id")?;
    let mut eval_rows = match (&t.eval_dataset_id, t.eval_fraction) {
        (Some(id), _) => read_rows(ctx, id, t.name, "task.eval_dataset_id")?,
        (None, Some(f)) => {
            let held = ((rows.len() as f64) * f).round().max(1.0) as usize;
            if held >= rows.len() {
                return Err(JobError::Failed("task.eval_fraction leaves no training examples".into()));
            }
            rows.split_off(rows.len() - held)
        }
        (None, None) => return Err(JobError::Failed("no evaluation data".into())),
    };
    eval_rows.truncate(max_eval);
    Ok(TaskData::Glue { rows, eval_rows })
}

/// An evaluation: the task's metrics and one `predictions.jsonl` line per example (GLUE: line
/// number, predicted label, gold label; SQuAD: question id, answer, gold answers).
struct Scored {
    metrics: BTreeMap<String, f64>,
    lines: Vec<serde_json::Value>,
}

fn metrics_json(e: &Scored) -> serde_json::Value {
    json!(e.metrics)
}

fn latency(net: &Net, batch: &[Example], compact: bool) -> Result<f64, JobError> {
    forward_ms(net, batch, compact, 5).map_err(model_err)
}

fn shape_of(p: &super::spec::ExperimentPruning) -> Result<Shape, JobError> {
    Ok(match p.granularity {
        Granularity::NM => {
            Shape::NM(NmPattern::parse(p.pattern.as_deref().unwrap_or_default()).map_err(JobError::Failed)?)
        }
        _ => Shape::Unstructured { sparsity: p.sparsity.unwrap_or(0.0), scope: p.scope.unwrap_or(Scope::Global) },
    })
}

/// Zeroes the FFN neurons with the lowest norm (input row and output column), adding them to
/// `masks`.
fn prune_neurons(net: &mut Net, sparsity: f64, scope: Scope, mut masks: Masks) -> Result<Masks, JobError> {
    let (_, scores) = unit_norm_scores(net).map_err(model_err)?;
    let plan = UnitPlan { heads: Vec::new(), neurons: lowest_units(&scores, sparsity, scope) };
    zero_units(net, &plan, &mut masks);
    Ok(masks)
}

/// Zeroes the heads with the lowest scores (their query/key/value rows and attention-output
/// columns) and returns masks that keep them at zero.
fn prune_heads(net: &mut Net, scores: &[Vec<f32>], sparsity: f64, scope: Scope) -> Masks {
    let plan = UnitPlan { heads: lowest_units(scores, sparsity, scope), neurons: Vec::new() };
    let mut masks = Masks::none(net);
    zero_units(net, &plan, &mut masks);
    masks
}

impl Executor for ExperimentExecutor {
    fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let req: ExperimentRequest = serde_json::from_str(&ctx.job.spec).map_err(|e| JobError::Internal(e.into()))?;
        let plan = Plan::new(&req);
        let task = req.task.name;
        ctx.progress(Stage::Loading.name(), 0.0)?;
        let started = Instant::now();
        let config_json = ctx.read_model_file("config.json")?;
        let weights = ctx.read_model_file("model.safetensors")?;
        let tok_bytes = ctx.read_model_file("tokenizer.json").map_err(|_| {
            JobError::Failed(
                "experiments tokenize with the model's own tokenizer: upload tokenizer.json with the model".into(),
            )
        })?;
        let tok = tokenizers::Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| JobError::Failed(format!("tokenizer.json: {e}")))?;
        let model_config =
            ModelConfig::parse(&config_json).map_err(|e| JobError::Failed(format!("config.json: {e}")))?;
        let family = model_config.family;
        let w = Weights::from_safetensors(&weights, family, &Device::Cpu).map_err(model_err)?;
        let config = EncoderConfig::new(&model_config, &w.shapes()).map_err(model_err)?;
        let kind = head_kind(task).ok_or_else(|| JobError::Failed(format!("task {} has no head", task.name())))?;
        let init_std = model_config.initializer_range;
        let seed = req.finetune.as_ref().map_or(42, |f| f.seed);
        let head = Head::load_or_init(&w, family, kind, config.hidden, init_std, seed).map_err(model_err)?;
        let fresh_head = head.fresh;
        let mut net = Net::new(config, &w, &head, model_config.dropout).map_err(model_err)?;
        drop((w, head, weights));
        let data = load_data(ctx, &req)?;
        let eval_len = req
            .recovery
            .as_ref()
            .map(|r| r.max_seq_len)
            .or(req.finetune.as_ref().map(|f| f.max_seq_len))
            .unwrap_or(128);
        let glue_eval = match &data {
            TaskData::Glue { eval_rows, .. } => examples(&tok, eval_rows, eval_len).map_err(JobError::Failed)?,
            TaskData::Squad { .. } => Vec::new(),
        };
        let train_set = |len: usize, max: Option<usize>| -> Result<Vec<Example>, JobError> {
            match &data {
                TaskData::Glue { rows, .. } => {
                    examples(&tok, &rows[..max.unwrap_or(usize::MAX).min(rows.len())], len).map_err(JobError::Failed)
                }
                TaskData::Squad { questions, .. } => {
                    squad_train_examples(&tok, &questions[..max.unwrap_or(usize::MAX).min(questions.len())], len)
                        .map_err(JobError::Failed)
                }
            }
        };
        let score = |net: &Net| -> Result<Scored, JobError> {
            match &data {
                TaskData::Glue { eval_rows, .. } => {
                    let e = evaluate(net, task, &glue_eval, 64).map_err(model_err)?;
                    let names = task.label_names();
                    let show = |v: f64| -> serde_json::Value {
                        match names {
                            Some(n) => json!(n.get(v as usize).copied().unwrap_or("?")),
                            None => json!(v),
                        }
                    };
                    let lines = eval_rows
                        .iter()
                        .zip(&e.predictions)
                        .zip(&glue_eval)
                        .map(|((row, pred), ex)| {
                            let label = match ex.target {
                                trainer::Target::Class(c) => show(c as f64),
                                trainer::Target::Score(s) => json!(s),
                                trainer::Target::Span(..) => json!(null),
                            };
                            json!({"id": row.line, "prediction": show(*pred), "label": label})
                        })
                        .collect();
                    Ok(Scored { metrics: e.metrics, lines })
                }
                TaskData::Squad { eval_questions, .. } => {
                    let (metrics, answers) =
                        squad_evaluate(net, &tok, eval_questions, eval_len, 32).map_err(JobError::Failed)?;
                    let lines = eval_questions.iter().zip(answers).map(|(q, a)| json!({"id": q.id, "prediction": a, "label": q.answers.iter().map(|x| x.1.clone()).collect::<Vec<_>>()})).collect();
                    Ok(Scored { metrics, lines })
                }
            }
        };
        let (train_count, eval_count) = match &data {
            TaskData::Glue { rows, eval_rows } => (rows.len(), eval_rows.len()),
            TaskData::Squad { questions, eval_questions } => (questions.len(), eval_questions.len()),
        };
        ctx.record_stage(Stage::Loading, json!({"seconds": started.elapsed().as_secs_f64(), "train_examples": train_count, "eval_examples": eval_count, "fresh_head": fresh_head}))?;
        let group_by_length = task == Task::Squad;

        let latency_batch: Vec<Example> = match &data {
            TaskData::Glue { .. } => glue_eval.iter().take(32).cloned().collect(),
            TaskData::Squad { .. } => train_set(eval_len, Some(32))?.into_iter().take(32).collect(),
        };
        let measure_latency = req.evaluation.latency;
        let mut targets = linear_targets(&net);
        let layers_loaded = net.config.layers.len();
        // A checkpoint left by an earlier claim of this job: go on from its stage.
        let checkpoint = ctx.read_scratch(CHECKPOINT)?;
        let resumed: Option<Resume> =
            checkpoint.as_ref().and_then(|b| trainer::checkpoint_notes(b)).and_then(|n| serde_json::from_str(&n).ok());
        let mut resume = Resume::default();
        let mut teacher_values: Option<BTreeMap<String, Vec<f32>>> = None;
        let mut restored: Option<(Masks, State, BTreeMap<String, Vec<f32>>)> = None;
        // The model as loaded, kept when resuming after layer removal (the teacher's shape).
        let mut unreduced = None;
        if let (Some(r), Some(bytes)) = (&resumed, &checkpoint) {
            if !r.removed_layers.is_empty() {
                let smaller = without_layers(&net, &r.removed_layers).map_err(model_err)?;
                unreduced = Some(std::mem::replace(&mut net, smaller));
                targets = linear_targets(&net);
            }
            let (m, st, extra) = trainer::restore(&mut net, bytes).map_err(model_err)?;
            for (stage, value) in r.stages.iter().filter(|(n, _)| *n != Stage::Loading) {
                ctx.record_stage(*stage, value.clone())?;
            }
            teacher_values = Some(
                extra
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("teacher/").map(|n| (n.to_string(), v.clone())))
                    .collect(),
            );
            restored = Some((m, st, extra));
            resume = r.clone();
            tracing::info!(job_id = %ctx.job.id, stage = ?r.stage, step = restored.as_ref().map_or(0, |x| x.1.step), "resuming from a checkpoint");
        }
        let resume_at = resumed.as_ref().and_then(|r| r.stage);
        let mut last_eval: Option<Scored> = None;
        // Baseline.
        if resume_at.is_none() {
            ctx.progress(Stage::BaselineEval.name(), plan.at(Stage::BaselineEval, 0.0))?;
            let t = Instant::now();
            let baseline = score(&net)?;
            let rec = json!({"metrics": metrics_json(&baseline), "seconds": t.elapsed().as_secs_f64(), "fresh_head": fresh_head});
            ctx.record_stage(Stage::BaselineEval, rec.clone())?;
            resume.stages = ctx.stages();
            resume.baseline = baseline.metrics.clone();
            resume.before = baseline.metrics.clone();
            last_eval = Some(baseline);
        }
        // Dense fine-tuning.
        if let (Some(f), true) = (&req.finetune, resume_at.is_none_or(|s| s == Stage::Finetune)) {
            let t = Instant::now();
            let set = train_set(f.max_seq_len, f.max_train_samples)?;
            let s = schedule(f, group_by_length);
            let (mut free, mut state) = match restored.take() {
                Some((m, st, _)) => (m, st),
                None => (Masks::none(&net), State::new(&s)),
            };
            let mut obs = Progress {
                ctx,
                plan: &plan,
                stage: Stage::Finetune,
                pruner: None,
                stopped: false,
                failed: None,
                losses: resume.losses.clone(),
                resume: resume.clone(),
                teacher: None,
                last_checkpoint: (state.step, Instant::now()),
            };
            trainer::train(&mut net, &set, &s, &mut free, &mut state, None, &mut obs).map_err(model_err)?;
            if let Some(e) = obs.failed {
                return Err(e);
            }
            if obs.stopped {
                return Err(JobError::Stopped);
            }
            let loss = obs.losses.iter().sum::<f64>() / obs.losses.len().max(1) as f64;
            ctx.record_stage(Stage::Finetune, json!({"steps": state.step, "mean_loss": loss, "last_loss": obs.losses.last(), "seconds": t.elapsed().as_secs_f64(), "resumed": resume_at.is_some()}))?;
            ctx.progress(Stage::DenseEval.name(), plan.at(Stage::DenseEval, 0.0))?;
            let before = score(&net)?;
            ctx.record_stage(Stage::DenseEval, json!({"metrics": metrics_json(&before)}))?;
            resume.stages = ctx.stages();
            resume.before = before.metrics.clone();
            resume.losses.clear();
            last_eval = Some(before);
        }
        let latency_before = match resume_at {
            Some(Stage::Recover) => resume.latency_before,
            _ if measure_latency => Some(latency(&net, &latency_batch, false)?),
            _ => None,
        };
        resume.latency_before = latency_before;
        if let Some(p) = &req.pruning {
            // The teacher: the dense model (restored from the checkpoint when resuming).
            let dense = match &teacher_values {
                Some(values) if resume_at == Some(Stage::Recover) => {
                    let mut d = unreduced.take().unwrap_or_else(|| net.clone());
                    for param in d.params.iter_mut() {
                        if let Some(v) = values.get(&param.name) {
                            param.value = v.clone();
                        }
                    }
                    d
                }
                _ => net.clone(),
            };
            let rec = req.recovery.as_ref();
            let gradual = p.schedule.kind != ScheduleKind::OneShot;
            let criterion = match p.method {
                ExperimentMethod::Magnitude => Criterion::Magnitude,
                ExperimentMethod::Taylor => Criterion::Taylor,
                ExperimentMethod::Movement | ExperimentMethod::HeadImportance => Criterion::Movement,
                ExperimentMethod::Wanda | ExperimentMethod::Sparsegpt => Criterion::Magnitude,
            };
            let mut masks = Masks::none(&net);
            if resume_at != Some(Stage::Recover) {
                ctx.progress(Stage::Prune.name(), plan.at(Stage::Prune, 0.0))?;
                let t = Instant::now();
                let score_set = train_set(
                    rec.map_or(128, |r| r.max_seq_len),
                    Some(rec.and_then(|r| r.max_train_samples).unwrap_or(usize::MAX).min(1024)),
                )?;
                let mut head_scores = None;
                if !gradual {
                    masks = match (p.granularity, p.method) {
                        (Granularity::Layers, _) => {
                            let n = net.config.layers.len();
                            let count = ((n as f64) * p.sparsity.unwrap_or(0.0)).round() as usize;
                            if count >= n {
                                return Err(JobError::Failed(format!(
                                    "pruning.sparsity {} would remove all {n} layers",
                                    p.sparsity.unwrap_or(0.0)
                                )));
                            }
                            resume.removed_layers = lowest_layers(&net, count).map_err(model_err)?;
                            net = without_layers(&net, &resume.removed_layers).map_err(model_err)?;
                            targets = linear_targets(&net);
                            Masks::none(&net)
                        }
                        (Granularity::Heads, ExperimentMethod::HeadImportance) => {
                            let imp = gradient_pass(&net, &score_set, 32, None).map_err(model_err)?;
                            head_scores = Some(imp.clone());
                            prune_heads(&mut net, &imp, p.sparsity.unwrap_or(0.0), p.scope.unwrap_or(Scope::Global))
                        }
                        (Granularity::Heads, _) => {
                            let (norms, _) = unit_norm_scores(&net).map_err(model_err)?;
                            head_scores = Some(norms.clone());
                            prune_heads(&mut net, &norms, p.sparsity.unwrap_or(0.0), p.scope.unwrap_or(Scope::Global))
                        }
                        (Granularity::Neurons, _) => {
                            let none = Masks::none(&net);
                            prune_neurons(&mut net, p.sparsity.unwrap_or(0.0), p.scope.unwrap_or(Scope::Global), none)?
                        }
                        (_, ExperimentMethod::Wanda | ExperimentMethod::Sparsegpt) => {
                            let how = if p.method == ExperimentMethod::Wanda {
                                Calibrated::Wanda
                            } else {
                                Calibrated::SparseGpt
                            };
                            let rule = match shape_of(p)? {
                                Shape::NM(pat) => Rule::NM(pat),
                                Shape::Unstructured { sparsity, .. } => Rule::Unstructured(sparsity),
                            };
                            let n = p.calibration_samples.unwrap_or(128).min(score_set.len());
                            prune_calibrated(&mut net, how, &score_set[..n], rule).map_err(model_err)?
                        }
                        _ => prune_one_shot(&mut net, criterion, &score_set, 32, shape_of(p)?).map_err(model_err)?,
                    };
                    if let Some(ns) = p.neuron_sparsity.filter(|_| p.granularity == Granularity::Heads) {
                        masks = prune_neurons(&mut net, ns, p.scope.unwrap_or(Scope::Global), masks)?;
                    }
                    let e = score(&net)?;
                    ctx.record_stage(Stage::Prune, json!({"metrics": metrics_json(&e), "sparsity": sparsity_of(&net, &targets), "seconds": t.elapsed().as_secs_f64(), "head_scores": head_scores, "layers_removed": (p.granularity == Granularity::Layers).then_some(&resume.removed_layers)}))?;
                    resume.pruned = Some(e.metrics);
                } else {
                    ctx.record_stage(
                        Stage::Prune,
                        json!({"schedule": p.schedule.kind, "note": "pruning happens during recovery"}),
                    )?;
                }
                resume.stages = ctx.stages();
            }
            if let Some(r) = rec {
                let t = Instant::now();
                let set = train_set(r.max_seq_len, r.max_train_samples)?;
                let s = schedule(&r.training(), group_by_length);
                let total = s.total_steps(set.len());
                let mut state = State::new(&s);
                let mut scores_back = None;
                if let Some((m, st, extra)) = restored.take() {
                    masks = m;
                    state = st;
                    scores_back = Some(extra);
                }
                let pruner = if gradual {
                    let end = p.schedule.end_step.unwrap_or(total * 7 / 10).max(p.schedule.start_step + 1);
                    let ramp = if p.schedule.kind == ScheduleKind::Cubic {
                        Ramp::Cubic
                    } else {
                        Ramp::Iterative { rounds: ((end - p.schedule.start_step) / p.schedule.every.max(1)).max(1) }
                    };
                    let scores = Scores::new(&net, targets.clone(), criterion);
                    let mut pruner = GradualPruner::new(
                        scores,
                        ramp,
                        (p.schedule.start_step, end, p.schedule.every),
                        p.sparsity.unwrap_or(0.0),
                        p.scope.unwrap_or(Scope::Global),
                    );
                    if criterion == Criterion::Movement {
                        // Movement pruning's own top-k: masks re-chosen at every step of the ramp.
                        pruner = pruner.regrowing(&net);
                    }
                    if let Some(extra) = &scores_back {
                        pruner.reached = resume.reached;
                        pruner
                            .restore_buffers(extra)
                            .map_err(|e| JobError::Internal(anyhow::anyhow!("resuming the recovery stage: {e}")))?;
                    }
                    Some(pruner)
                } else {
                    None
                };
                let teacher = r
                    .distill
                    .as_ref()
                    .map(|d| (&dense, Distill { temperature: d.temperature as f32, alpha: d.alpha as f32 }));
                let losses = if resume_at == Some(Stage::Recover) { resume.losses.clone() } else { Vec::new() };
                let mut obs = Progress {
                    ctx,
                    plan: &plan,
                    stage: Stage::Recover,
                    pruner,
                    stopped: false,
                    failed: None,
                    losses,
                    resume: resume.clone(),
                    teacher: teacher.map(|t| t.0),
                    last_checkpoint: (state.step, Instant::now()),
                };
                trainer::train(&mut net, &set, &s, &mut masks, &mut state, teacher, &mut obs).map_err(model_err)?;
                if let Some(e) = obs.failed {
                    return Err(e);
                }
                if obs.stopped {
                    return Err(JobError::Stopped);
                }
                if let Some(pr) = obs.pruner.as_mut() {
                    // A schedule ending after the last step still reaches its target.
                    if pr.reached < pr.target {
                        pr.reached = 0.0;
                        let last = pr.end;
                        pr.prune(&mut net, &mut masks, last);
                        masks.apply(&mut net);
                    }
                }
                let loss = obs.losses.iter().sum::<f64>() / obs.losses.len().max(1) as f64;
                ctx.record_stage(Stage::Recover, json!({"steps": state.step, "mean_loss": loss, "last_loss": obs.losses.last(), "distill": r.distill, "seconds": t.elapsed().as_secs_f64(), "resumed": resume_at == Some(Stage::Recover)}))?;
            }
            ctx.progress(Stage::FinalEval.name(), plan.at(Stage::FinalEval, 0.0))?;
            let after = score(&net)?;
            ctx.record_stage(
                Stage::FinalEval,
                json!({"metrics": metrics_json(&after), "sparsity": sparsity_of(&net, &targets)}),
            )?;
            last_eval = Some(after);
        }
        let after = match last_eval {
            Some(e) => e,
            None => score(&net)?,
        };
        let (baseline_m, before_m, pruned_m) = (resume.baseline.clone(), resume.before.clone(), resume.pruned.clone());
        let structured_pruning = req
            .pruning
            .as_ref()
            .is_some_and(|p| matches!(p.granularity, Granularity::Heads | Granularity::Neurons | Granularity::Layers));
        let latency_after =
            if measure_latency { Some(latency(&net, &latency_batch, structured_pruning)?) } else { None };
        let units = structured_pruning.then(|| {
            let plan = removed_units(&net);
            let count = |v: &[Vec<usize>]| v.iter().map(Vec::len).sum::<usize>();
            json!({"heads_removed": count(&plan.heads), "heads": net.config.layers.iter().map(|l| l.heads).sum::<usize>(), "neurons_removed": count(&plan.neurons), "neurons": net.config.layers.iter().map(|l| l.ffn).sum::<usize>(), "layers_removed": resume.removed_layers, "layers": layers_loaded})
        });

        // Export.
        ctx.progress(Stage::Export.name(), plan.at(Stage::Export, 0.0))?;
        let (mut w, head) = net.to_weights().map_err(model_err)?;
        // config.json with the layer count (and FFN width) of the model as trained.
        let out_json = export::config_json(&config_json, &net.config, false).map_err(model_err)?;
        let (cfg, st_bytes) = export_task_model(&out_json, &w, &head, task.label_names()).map_err(model_err)?;
        let header = st::parse(&st_bytes).map_err(|e| JobError::Internal(anyhow::anyhow!(e)))?;
        let names: Vec<String> = targets.iter().map(|&i| format!("{}.{}", family.name(), net.params[i].name)).collect();
        let (tensors, totals) = report::measure(&st_bytes, &header, &names);
        let mut report = Report {
            method: req.pruning.as_ref().map_or("none".into(), |p| {
                serde_json::to_value(p.method).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            }),
            parameters: json!(req.pruning),
            granularity: req.pruning.as_ref().map_or("unstructured".into(), |p| {
                serde_json::to_value(p.granularity).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            }),
            scope: req.pruning.as_ref().and_then(|p| p.scope).unwrap_or(
                if req.pruning.as_ref().is_some_and(|p| p.method.calibrated()) { Scope::Local } else { Scope::Global },
            ),
            requested_sparsity: req.pruning.as_ref().and_then(|p| p.sparsity).unwrap_or(0.0),
            pattern: req.pruning.as_ref().and_then(|p| p.pattern.clone()),
            include: Vec::new(),
            exclude: Vec::new(),
            removed: None,
            layers: report::per_layer(&tensors),
            tensors,
            totals: totals.clone(),
            compact: None,
        };
        let masks_bytes = report::masks_file(&st_bytes, &header, &names);
        if req.export.compact {
            // The same task model with the removed units sliced out (nothing to slice after
            // unstructured pruning: then the files equal the default ones).
            let c_cfg =
                structured::apply(&mut w, &net.config, &removed_units(&net), Surgery::Remove).map_err(model_err)?;
            let c_json = export::config_json(&config_json, &c_cfg, true).map_err(model_err)?;
            let (c_config, c_bytes) = export_task_model(&c_json, &w, &head, task.label_names()).map_err(model_err)?;
            let c_header = st::parse(&c_bytes).map_err(|e| JobError::Internal(anyhow::anyhow!(e)))?;
            report.compact = Some(report::measure_against(&c_bytes, &c_header, &names, &header).1);
            write_model(ctx, "compact/", Bytes::from(c_bytes), Bytes::from(c_config))?;
        }
        write_model(ctx, "", Bytes::from(st_bytes), Bytes::from(cfg))?;
        if req.pruning.is_some() {
            ctx.write_artifact("masks.safetensors", Bytes::from(masks_bytes))?;
        }
        ctx.write_artifact(
            "report.json",
            Bytes::from(serde_json::to_vec_pretty(&report).map_err(|e| JobError::Internal(e.into()))?),
        )?;
        let mut lines = String::new();
        for l in &after.lines {
            lines.push_str(&l.to_string());
            lines.push('\n');
        }
        ctx.write_artifact("predictions.jsonl", Bytes::from(lines))?;
        let result = json!({
            "task": task.name(),
            "metrics": {"baseline": baseline_m, "before": before_m, "pruned": pruned_m, "after": after.metrics},
            "retention": after.metrics.iter().filter_map(|(k, v)| before_m.get(k).filter(|b| **b != 0.0).map(|b| (k.clone(), v / b))).collect::<BTreeMap<_, _>>(),
            "sparsity": sparsity_of(&net, &targets),
            "size": {"bytes": totals.bytes, "bytes_sparse": totals.bytes_sparse, "parameters": totals.parameters, "nonzeros": totals.nonzeros},
            "units": units,
            "latency_ms": {"before": latency_before, "after": latency_after, "speedup": latency_before.zip(latency_after).map(|(b, a)| b / a), "batch": latency_batch.len(),
                "note": if structured_pruning { "median of 5 forwards of one evaluation batch in Secateur's runtime; after: removed heads, neurons and layers physically gone (the compact layout)" } else { "median of 5 forwards of one evaluation batch in Secateur's runtime (dense kernels: zeroed weights are still multiplied)" }},
        });
        ctx.write_artifact(
            "result.json",
            Bytes::from(serde_json::to_vec_pretty(&result).map_err(|e| JobError::Internal(e.into()))?),
        )?;
        ctx.record_stage(Stage::Export, json!({"summary": result}))?;
        ctx.clear_scratch()?;
        ctx.progress("done", 1.0)
    }
}
