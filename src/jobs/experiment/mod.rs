//! The `experiment` job: evaluate a model on a GLUE task or SQuAD (a decoder on `causal_lm`: `lm.rs`), fine-tune it (optionally), prune it
//! (one-shot, or gradually during recovery), recover with the masks locked (optionally
//! distilled from the dense model), evaluate again, and export the pruned task model with its
//! report and predictions. Each stage's outcome is recorded as it ends (`JobContext::record_stage`:
//! the database, served by `GET /v1/jobs/{id}/result`), and `result.json` sums them up.

mod data;
mod lm;
mod progress;

use super::prune::{model_err, write_model};
use super::spec::Granularity;
use super::spec::{ExperimentMethod, ExperimentPruning, ExperimentRequest, RecoverySpec, ScheduleKind, TrainSpec};
use super::{Executor, JobContext, JobError};
use crate::data::Task;
use crate::engine::io::export;
use crate::engine::io::st;
use crate::engine::model::arch::Family;
use crate::engine::model::heads::{export_task_model, Head};
use crate::engine::model::{EncoderConfig, ModelConfig, Weights};
use crate::engine::prune::calibrated;
use crate::engine::prune::structured::{self, Surgery, UnitPlan};
use crate::engine::prune::wanda::Rule;
use crate::engine::prune::{NmPattern, Scope};
use crate::engine::report::{self, Report};
use crate::store::Stage;
use crate::train::experiment::{
    evaluate, examples, forward_ms, head_kind, linear_targets, lowest_layers, lowest_units, prune_calibrated,
    prune_one_shot, removed_units, sparsity_of, squad_evaluate, squad_train_examples, unit_norm_scores, without_layers,
    zero_units, Shape,
};
use crate::train::gradual::{gradient_pass, Criterion, GradualPruner, Ramp, Scores};
use crate::train::loss::Distill;
use crate::train::net::Net;
use crate::train::trainer::{self, Example, Masks, Schedule, State};
use bytes::Bytes;
use candle_core::Device;
use data::{load_data, TaskData};
use progress::{Plan, Progress, Resume, CHECKPOINT};
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

fn shape_of(p: &ExperimentPruning) -> Result<Shape, JobError> {
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
        if req.task.name == Task::CausalLm {
            return lm::run(ctx, &req);
        }
        let mut run = Run::load(ctx, &req)?;
        run.resume_from_checkpoint()?;
        if run.resume_at.is_none() {
            run.baseline()?;
        }
        if let Some(f) = req.finetune.as_ref().filter(|_| run.resume_at.is_none_or(|s| s == Stage::Finetune)) {
            run.finetune(f)?;
        }
        let latency_before = match run.resume_at {
            Some(Stage::Recover) => run.resume.latency_before,
            _ if req.evaluation.latency => Some(latency(&run.net, &run.latency_batch, false)?),
            _ => None,
        };
        run.resume.latency_before = latency_before;
        if let Some(p) = &req.pruning {
            let dense = run.teacher();
            let criterion = match p.method {
                ExperimentMethod::Magnitude => Criterion::Magnitude,
                ExperimentMethod::Taylor => Criterion::Taylor,
                ExperimentMethod::Movement | ExperimentMethod::HeadImportance => Criterion::Movement,
                ExperimentMethod::Wanda | ExperimentMethod::Sparsegpt => Criterion::Magnitude,
            };
            let masks =
                if run.resume_at == Some(Stage::Recover) { Masks::none(&run.net) } else { run.prune(p, criterion)? };
            if let Some(r) = &req.recovery {
                run.recover(p, r, criterion, &dense, masks)?;
            }
            run.final_eval()?;
        }
        run.export(latency_before)
    }
}

/// What the stages of one experiment share: its inputs as loaded, the model as the stages change
/// it, and what a checkpoint remembers (`resume`). Each stage is a method, called in order by
/// [`ExperimentExecutor::run`]; whether and where an earlier claim's checkpoint resumes is
/// decided once, by [`Run::resume_from_checkpoint`].
struct Run<'a> {
    ctx: &'a JobContext,
    req: &'a ExperimentRequest,
    plan: Plan,
    task: Task,
    tok: tokenizers::Tokenizer,
    data: TaskData,
    /// The GLUE evaluation examples (empty for SQuAD, which windows its questions itself).
    glue_eval: Vec<Example>,
    eval_len: usize,
    group_by_length: bool,
    config_json: Bytes,
    family: Family,
    fresh_head: bool,
    net: Net,
    /// The prunable linear weights (indices into `net.params`).
    targets: Vec<usize>,
    layers_loaded: usize,
    latency_batch: Vec<Example>,
    resume: Resume,
    /// The stage in which an earlier claim's checkpoint was taken.
    resume_at: Option<Stage>,
    restored: Option<(Masks, State, BTreeMap<String, Vec<f32>>)>,
    teacher_values: Option<BTreeMap<String, Vec<f32>>>,
    /// The model as loaded, kept when resuming after layer removal (the teacher's shape).
    unreduced: Option<Net>,
    last_eval: Option<Scored>,
}

impl<'a> Run<'a> {
    /// The `loading` stage: the model (with a fresh head if the checkpoint has none for the
    /// task), its tokenizer and the task's data.
    fn load(ctx: &'a JobContext, req: &'a ExperimentRequest) -> Result<Run<'a>, JobError> {
        let plan = Plan::new(req);
        let task = req.task.name;
        ctx.progress(Stage::Loading.name(), 0.0)?;
        let started = Instant::now();
        let (config_json, weights) = ctx.read_checkpoint()?;
        let tok_bytes = ctx.read_model_file("tokenizer.json").map_err(|_| {
            JobError::Failed(
                "experiments tokenize with the model's own tokenizer: upload tokenizer.json with the model".into(),
            )
        })?;
        let tok = tokenizers::Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| JobError::Failed(format!("tokenizer.json: {e}")))?;
        let model_config =
            ModelConfig::parse(&config_json).map_err(|e| JobError::Failed(format!("config.json: {e}")))?;
        let family = model_config.encoder_family().map_err(JobError::Failed)?;
        let w = Weights::from_safetensors(&weights, family, &Device::Cpu).map_err(model_err)?;
        let config = EncoderConfig::new(&model_config, &w.shapes()).map_err(model_err)?;
        let kind = head_kind(task).ok_or_else(|| JobError::Failed(format!("task {} has no head", task.name())))?;
        let init_std = model_config.initializer_range;
        let seed = req.finetune.as_ref().map_or(42, |f| f.seed);
        let head = Head::load_or_init(&w, family, kind, config.hidden, init_std, seed).map_err(model_err)?;
        let fresh_head = head.fresh;
        let net = Net::new(config, &w, &head, model_config.dropout).map_err(model_err)?;
        drop((w, head, weights));
        let data = load_data(ctx, req)?;
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
        let (train_count, eval_count) = match &data {
            TaskData::Glue { rows, eval_rows } => (rows.len(), eval_rows.len()),
            TaskData::Squad { questions, eval_questions } => (questions.len(), eval_questions.len()),
        };
        ctx.record_stage(Stage::Loading, json!({"seconds": started.elapsed().as_secs_f64(), "train_examples": train_count, "eval_examples": eval_count, "fresh_head": fresh_head}))?;
        let mut run = Run {
            ctx,
            req,
            plan,
            task,
            tok,
            data,
            glue_eval,
            eval_len,
            group_by_length: task == Task::Squad,
            config_json,
            family,
            fresh_head,
            targets: linear_targets(&net),
            layers_loaded: net.config.layers.len(),
            net,
            latency_batch: Vec::new(),
            resume: Resume::default(),
            resume_at: None,
            restored: None,
            teacher_values: None,
            unreduced: None,
            last_eval: None,
        };
        run.latency_batch = match &run.data {
            TaskData::Glue { .. } => run.glue_eval.iter().take(32).cloned().collect(),
            TaskData::Squad { .. } => run.train_set(eval_len, Some(32))?.into_iter().take(32).collect(),
        };
        Ok(run)
    }

    /// A checkpoint left by an earlier claim of this job: restore the model, the training state
    /// and the teacher, re-record the stages it had recorded, and go on from its stage.
    fn resume_from_checkpoint(&mut self) -> Result<(), JobError> {
        let checkpoint = self.ctx.read_scratch(CHECKPOINT)?;
        let resumed: Option<Resume> =
            checkpoint.as_ref().and_then(|b| trainer::checkpoint_notes(b)).and_then(|n| serde_json::from_str(&n).ok());
        if let (Some(r), Some(bytes)) = (&resumed, &checkpoint) {
            if !r.removed_layers.is_empty() {
                let smaller = without_layers(&self.net, &r.removed_layers).map_err(model_err)?;
                self.unreduced = Some(std::mem::replace(&mut self.net, smaller));
                self.targets = linear_targets(&self.net);
            }
            let (m, st, extra) = trainer::restore(&mut self.net, bytes).map_err(model_err)?;
            for (stage, value) in r.stages.iter().filter(|(n, _)| *n != Stage::Loading) {
                self.ctx.record_stage(*stage, value.clone())?;
            }
            self.teacher_values = Some(
                extra
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("teacher/").map(|n| (n.to_string(), v.clone())))
                    .collect(),
            );
            self.restored = Some((m, st, extra));
            self.resume = r.clone();
            tracing::info!(job_id = %self.ctx.job.id, stage = ?r.stage, step = self.restored.as_ref().map_or(0, |x| x.1.step), "resuming from a checkpoint");
        }
        self.resume_at = resumed.as_ref().and_then(|r| r.stage);
        Ok(())
    }

    /// Training examples at `len` tokens, the first `max` of them.
    fn train_set(&self, len: usize, max: Option<usize>) -> Result<Vec<Example>, JobError> {
        match &self.data {
            TaskData::Glue { rows, .. } => {
                examples(&self.tok, &rows[..max.unwrap_or(usize::MAX).min(rows.len())], len).map_err(JobError::Failed)
            }
            TaskData::Squad { questions, .. } => {
                squad_train_examples(&self.tok, &questions[..max.unwrap_or(usize::MAX).min(questions.len())], len)
                    .map_err(JobError::Failed)
            }
        }
    }

    /// Evaluate the model as it is now.
    fn score(&self) -> Result<Scored, JobError> {
        let (net, task, tok) = (&self.net, self.task, &self.tok);
        match &self.data {
            TaskData::Glue { eval_rows, .. } => {
                let e = evaluate(net, task, &self.glue_eval, 64).map_err(model_err)?;
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
                    .zip(&self.glue_eval)
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
                    squad_evaluate(net, tok, eval_questions, self.eval_len, 32).map_err(JobError::Failed)?;
                let lines = eval_questions.iter().zip(answers).map(|(q, a)| json!({"id": q.id, "prediction": a, "label": q.answers.iter().map(|x| x.1.clone()).collect::<Vec<_>>()})).collect();
                Ok(Scored { metrics, lines })
            }
        }
    }

    /// `baseline_eval`: the model as uploaded.
    fn baseline(&mut self) -> Result<(), JobError> {
        self.ctx.progress(Stage::BaselineEval.name(), self.plan.at(Stage::BaselineEval, 0.0))?;
        let t = Instant::now();
        let baseline = self.score()?;
        let rec = json!({"metrics": metrics_json(&baseline), "seconds": t.elapsed().as_secs_f64(), "fresh_head": self.fresh_head});
        self.ctx.record_stage(Stage::BaselineEval, rec)?;
        self.resume.stages = self.ctx.stages();
        self.resume.baseline = baseline.metrics.clone();
        self.resume.before = baseline.metrics.clone();
        self.last_eval = Some(baseline);
        Ok(())
    }

    /// `finetune` (dense) and `dense_eval`: the metrics "before".
    fn finetune(&mut self, f: &TrainSpec) -> Result<(), JobError> {
        let t = Instant::now();
        let set = self.train_set(f.max_seq_len, f.max_train_samples)?;
        let s = schedule(f, self.group_by_length);
        let (mut free, mut state) = match self.restored.take() {
            Some((m, st, _)) => (m, st),
            None => (Masks::none(&self.net), State::new(&s)),
        };
        let mut obs = Progress::new(self.ctx, &self.plan, Stage::Finetune, self.resume.losses.clone(), &self.resume);
        obs.last_checkpoint = (state.step, Instant::now());
        trainer::train(&mut self.net, &set, &s, &mut free, &mut state, None, &mut obs).map_err(model_err)?;
        obs.ended()?;
        let loss = obs.losses.iter().sum::<f64>() / obs.losses.len().max(1) as f64;
        self.ctx.record_stage(Stage::Finetune, json!({"steps": state.step, "mean_loss": loss, "last_loss": obs.losses.last(), "seconds": t.elapsed().as_secs_f64(), "resumed": self.resume_at.is_some()}))?;
        self.ctx.progress(Stage::DenseEval.name(), self.plan.at(Stage::DenseEval, 0.0))?;
        let before = self.score()?;
        self.ctx.record_stage(Stage::DenseEval, json!({"metrics": metrics_json(&before)}))?;
        self.resume.stages = self.ctx.stages();
        self.resume.before = before.metrics.clone();
        self.resume.losses.clear();
        self.last_eval = Some(before);
        Ok(())
    }

    /// The teacher of distillation: the dense model (restored from the checkpoint when
    /// resuming the recovery).
    fn teacher(&mut self) -> Net {
        match &self.teacher_values {
            Some(values) if self.resume_at == Some(Stage::Recover) => {
                let mut d = self.unreduced.take().unwrap_or_else(|| self.net.clone());
                for param in d.params.iter_mut() {
                    if let Some(v) = values.get(&param.name) {
                        param.value = v.clone();
                    }
                }
                d
            }
            _ => self.net.clone(),
        }
    }

    /// `prune`: one-shot pruning, evaluated (a gradual schedule prunes during recovery). The
    /// masks recovery keeps.
    fn prune(&mut self, p: &ExperimentPruning, criterion: Criterion) -> Result<Masks, JobError> {
        let mut masks = Masks::none(&self.net);
        self.ctx.progress(Stage::Prune.name(), self.plan.at(Stage::Prune, 0.0))?;
        let t = Instant::now();
        let rec = self.req.recovery.as_ref();
        let score_set = self.train_set(
            rec.map_or(128, |r| r.max_seq_len),
            Some(rec.and_then(|r| r.max_train_samples).unwrap_or(usize::MAX).min(1024)),
        )?;
        let mut head_scores = None;
        if p.schedule.kind == ScheduleKind::OneShot {
            let (sparsity, scope) = (p.sparsity.unwrap_or(0.0), p.scope.unwrap_or(Scope::Global));
            masks = match (p.granularity, p.method) {
                (Granularity::Layers, _) => {
                    let n = self.net.config.layers.len();
                    let count = ((n as f64) * sparsity).round() as usize;
                    if count >= n {
                        return Err(JobError::Failed(format!(
                            "pruning.sparsity {sparsity} would remove all {n} layers"
                        )));
                    }
                    self.resume.removed_layers = lowest_layers(&self.net, count).map_err(model_err)?;
                    self.net = without_layers(&self.net, &self.resume.removed_layers).map_err(model_err)?;
                    self.targets = linear_targets(&self.net);
                    Masks::none(&self.net)
                }
                (Granularity::Heads, ExperimentMethod::HeadImportance) => {
                    let imp = gradient_pass(&self.net, &score_set, 32, None).map_err(model_err)?;
                    head_scores = Some(imp.clone());
                    prune_heads(&mut self.net, &imp, sparsity, scope)
                }
                (Granularity::Heads, _) => {
                    let (norms, _) = unit_norm_scores(&self.net).map_err(model_err)?;
                    head_scores = Some(norms.clone());
                    prune_heads(&mut self.net, &norms, sparsity, scope)
                }
                (Granularity::Neurons, _) => {
                    let none = Masks::none(&self.net);
                    prune_neurons(&mut self.net, sparsity, scope, none)?
                }
                (_, ExperimentMethod::Wanda | ExperimentMethod::Sparsegpt) => {
                    // The engine's defaults: experiments do not take SparseGPT's block and dampening.
                    let how = if p.method == ExperimentMethod::Wanda {
                        calibrated::Method::Wanda
                    } else {
                        calibrated::Method::SparseGpt(Default::default())
                    };
                    let rule = match shape_of(p)? {
                        Shape::NM(pat) => Rule::NM(pat),
                        Shape::Unstructured { sparsity, .. } => Rule::Unstructured(sparsity),
                    };
                    let n = p.calibration_samples.unwrap_or(128).min(score_set.len());
                    prune_calibrated(&mut self.net, how, &score_set[..n], rule).map_err(model_err)?
                }
                _ => prune_one_shot(&mut self.net, criterion, &score_set, 32, shape_of(p)?).map_err(model_err)?,
            };
            if let Some(ns) = p.neuron_sparsity.filter(|_| p.granularity == Granularity::Heads) {
                masks = prune_neurons(&mut self.net, ns, scope, masks)?;
            }
            let e = self.score()?;
            self.ctx.record_stage(Stage::Prune, json!({"metrics": metrics_json(&e), "sparsity": sparsity_of(&self.net, &self.targets), "seconds": t.elapsed().as_secs_f64(), "head_scores": head_scores, "layers_removed": (p.granularity == Granularity::Layers).then_some(&self.resume.removed_layers)}))?;
            self.resume.pruned = Some(e.metrics);
        } else {
            self.ctx.record_stage(
                Stage::Prune,
                json!({"schedule": p.schedule.kind, "note": "pruning happens during recovery"}),
            )?;
        }
        self.resume.stages = self.ctx.stages();
        Ok(masks)
    }

    /// `recover`: fine-tuning with the masks locked (distilled from `dense` when asked), the
    /// gradual schedule raising the sparsity on the way.
    fn recover(
        &mut self,
        p: &ExperimentPruning,
        r: &RecoverySpec,
        criterion: Criterion,
        dense: &Net,
        mut masks: Masks,
    ) -> Result<(), JobError> {
        let t = Instant::now();
        let set = self.train_set(r.max_seq_len, r.max_train_samples)?;
        let s = schedule(&r.training(), self.group_by_length);
        let total = s.total_steps(set.len());
        let mut state = State::new(&s);
        let mut scores_back = None;
        if let Some((m, st, extra)) = self.restored.take() {
            masks = m;
            state = st;
            scores_back = Some(extra);
        }
        let pruner = if p.schedule.kind != ScheduleKind::OneShot {
            let end = p.schedule.end_step.unwrap_or(total * 7 / 10).max(p.schedule.start_step + 1);
            let ramp = if p.schedule.kind == ScheduleKind::Cubic {
                Ramp::Cubic
            } else {
                Ramp::Iterative { rounds: ((end - p.schedule.start_step) / p.schedule.every.max(1)).max(1) }
            };
            let scores = Scores::new(&self.net, self.targets.clone(), criterion);
            let mut pruner = GradualPruner::new(
                scores,
                ramp,
                (p.schedule.start_step, end, p.schedule.every),
                p.sparsity.unwrap_or(0.0),
                p.scope.unwrap_or(Scope::Global),
            );
            if criterion == Criterion::Movement {
                // Movement pruning's own top-k: masks re-chosen at every step of the ramp.
                pruner = pruner.regrowing(&self.net);
            }
            if let Some(extra) = &scores_back {
                pruner.reached = self.resume.reached;
                pruner
                    .restore_buffers(extra)
                    .map_err(|e| JobError::Internal(anyhow::anyhow!("resuming the recovery stage: {e}")))?;
            }
            Some(pruner)
        } else {
            None
        };
        let teacher =
            r.distill.as_ref().map(|d| (dense, Distill { temperature: d.temperature as f32, alpha: d.alpha as f32 }));
        let resuming = self.resume_at == Some(Stage::Recover);
        let losses = if resuming { self.resume.losses.clone() } else { Vec::new() };
        let mut obs = Progress::new(self.ctx, &self.plan, Stage::Recover, losses, &self.resume);
        obs.pruner = pruner;
        obs.teacher = teacher.map(|t| t.0);
        obs.last_checkpoint = (state.step, Instant::now());
        trainer::train(&mut self.net, &set, &s, &mut masks, &mut state, teacher, &mut obs).map_err(model_err)?;
        obs.ended()?;
        if let Some(pr) = obs.pruner.as_mut() {
            // A schedule ending after the last step still reaches its target.
            if pr.reached < pr.target {
                pr.reached = 0.0;
                let last = pr.end;
                pr.prune(&mut self.net, &mut masks, last);
                masks.apply(&mut self.net);
            }
        }
        let loss = obs.losses.iter().sum::<f64>() / obs.losses.len().max(1) as f64;
        self.ctx.record_stage(Stage::Recover, json!({"steps": state.step, "mean_loss": loss, "last_loss": obs.losses.last(), "distill": r.distill, "seconds": t.elapsed().as_secs_f64(), "resumed": resuming}))?;
        Ok(())
    }

    /// `final_eval`: the metrics "after".
    fn final_eval(&mut self) -> Result<(), JobError> {
        self.ctx.progress(Stage::FinalEval.name(), self.plan.at(Stage::FinalEval, 0.0))?;
        let after = self.score()?;
        self.ctx.record_stage(
            Stage::FinalEval,
            json!({"metrics": metrics_json(&after), "sparsity": sparsity_of(&self.net, &self.targets)}),
        )?;
        self.last_eval = Some(after);
        Ok(())
    }

    /// `export`: the task model (and its compact layout when asked), masks, `report.json`,
    /// `predictions.jsonl` and `result.json`.
    fn export(mut self, latency_before: Option<f64>) -> Result<(), JobError> {
        let after = match self.last_eval.take() {
            Some(e) => e,
            None => self.score()?,
        };
        let (ctx, req, net, targets, task, family) =
            (self.ctx, self.req, &self.net, &self.targets, self.task, self.family);
        let resume = &self.resume;
        let (baseline_m, before_m, pruned_m) = (resume.baseline.clone(), resume.before.clone(), resume.pruned.clone());
        let structured_pruning = req
            .pruning
            .as_ref()
            .is_some_and(|p| matches!(p.granularity, Granularity::Heads | Granularity::Neurons | Granularity::Layers));
        let latency_after =
            if req.evaluation.latency { Some(latency(net, &self.latency_batch, structured_pruning)?) } else { None };
        let units = structured_pruning.then(|| {
            let plan = removed_units(net);
            let count = |v: &[Vec<usize>]| v.iter().map(Vec::len).sum::<usize>();
            json!({"heads_removed": count(&plan.heads), "heads": net.config.layers.iter().map(|l| l.heads).sum::<usize>(), "neurons_removed": count(&plan.neurons), "neurons": net.config.layers.iter().map(|l| l.ffn).sum::<usize>(), "layers_removed": resume.removed_layers, "layers": self.layers_loaded})
        });

        ctx.progress(Stage::Export.name(), self.plan.at(Stage::Export, 0.0))?;
        let (mut w, head) = net.to_weights().map_err(model_err)?;
        // config.json with the layer count (and FFN width) of the model as trained.
        let out_json = export::config_json(&self.config_json, &net.config, false).map_err(model_err)?;
        let (cfg, st_bytes) = export_task_model(&out_json, &w, &head, task.label_names()).map_err(model_err)?;
        let header = st::parse(&st_bytes).map_err(|e| JobError::Internal(anyhow::anyhow!(e)))?;
        let names: Vec<String> = targets.iter().map(|&i| format!("{}.{}", family.name(), net.params[i].name)).collect();
        let (tensors, totals) = report::measure(&st_bytes, &header, &names);
        let name = |v: serde_json::Value| v.as_str().map(String::from).unwrap_or_default();
        let p = req.pruning.as_ref();
        let request = report::Request {
            method: p.map_or("none".into(), |p| serde_json::to_value(p.method).map(name).unwrap_or_default()),
            parameters: json!(req.pruning),
            granularity: p
                .map_or("unstructured".into(), |p| serde_json::to_value(p.granularity).map(name).unwrap_or_default()),
            scope: p.and_then(|p| p.scope).unwrap_or(if p.is_some_and(|p| p.method.calibrated()) {
                Scope::Local
            } else {
                Scope::Global
            }),
            requested_sparsity: p.and_then(|p| p.sparsity).unwrap_or(0.0),
            pattern: p.and_then(|p| p.pattern.clone()),
            include: Vec::new(),
            exclude: Vec::new(),
        };
        let layers = report::per_layer(&tensors);
        let mut report = Report::new(request, None, tensors, layers, totals.clone());
        let masks_bytes = report::masks_file(&st_bytes, &header, &names);
        if req.export.compact {
            // The same task model with the removed units sliced out (nothing to slice after
            // unstructured pruning: then the files equal the default ones).
            let c_cfg =
                structured::apply(&mut w, &net.config, &removed_units(net), Surgery::Remove).map_err(model_err)?;
            let c_json = export::config_json(&self.config_json, &c_cfg, true).map_err(model_err)?;
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
            "sparsity": sparsity_of(net, targets),
            "size": {"bytes": totals.bytes, "bytes_sparse": totals.bytes_sparse, "parameters": totals.parameters, "nonzeros": totals.nonzeros},
            "units": units,
            "latency_ms": {"before": latency_before, "after": latency_after, "speedup": latency_before.zip(latency_after).map(|(b, a)| b / a), "batch": self.latency_batch.len(),
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
