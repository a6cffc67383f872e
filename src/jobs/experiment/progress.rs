//! How an experiment's progress is reported and remembered: each stage's share of the job
//! (`Plan`), what a checkpoint keeps besides the training state (`Resume`), and the trainer's
//! observer that reports progress, stops on request, drives the gradual pruner and writes
//! checkpoints (`Progress`).

use crate::jobs::spec::ExperimentRequest;
use crate::jobs::{JobContext, JobError};
use crate::store::Stage;
use crate::train::gradual::GradualPruner;
use crate::train::net::Net;
use crate::train::trainer::{self, Control, Masks, Observer, State, StepInfo};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Share of the job's progress each stage takes (loading and evaluations are small).
pub(super) struct Plan {
    stages: Vec<(Stage, f64)>,
}

impl Plan {
    pub(super) fn new(req: &ExperimentRequest) -> Plan {
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
    pub(super) fn at(&self, name: Stage, fraction: f64) -> f64 {
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
pub(super) struct Resume {
    /// The stage the checkpoint was taken in.
    pub(super) stage: Option<Stage>,
    pub(super) stages: Vec<(Stage, serde_json::Value)>,
    pub(super) baseline: BTreeMap<String, f64>,
    pub(super) before: BTreeMap<String, f64>,
    pub(super) pruned: Option<BTreeMap<String, f64>>,
    pub(super) losses: Vec<f64>,
    pub(super) reached: f64,
    pub(super) latency_before: Option<f64>,
    /// Layers the prune stage removed (indices in the model as loaded); a checkpoint taken
    /// after it holds the smaller model, so resuming removes them again before restoring.
    #[serde(default)]
    pub(super) removed_layers: Vec<usize>,
}

pub(super) const CHECKPOINT: &str = "checkpoint.safetensors";

/// Reports training progress, stops on request, forwards to the gradual pruner, and writes a
/// checkpoint now and then (every tenth of the stage's steps, at most once per
/// `JobContext::checkpoint_interval`).
pub(super) struct Progress<'a> {
    pub(super) ctx: &'a JobContext,
    pub(super) plan: &'a Plan,
    pub(super) stage: Stage,
    pub(super) pruner: Option<GradualPruner>,
    pub(super) stopped: bool,
    pub(super) failed: Option<JobError>,
    pub(super) losses: Vec<f64>,
    pub(super) resume: Resume,
    pub(super) teacher: Option<&'a Net>,
    pub(super) last_checkpoint: (u64, Instant),
}

impl<'a> Progress<'a> {
    pub(super) fn new(
        ctx: &'a JobContext,
        plan: &'a Plan,
        stage: Stage,
        losses: Vec<f64>,
        resume: &Resume,
    ) -> Progress<'a> {
        Progress {
            ctx,
            plan,
            stage,
            pruner: None,
            stopped: false,
            failed: None,
            losses,
            resume: resume.clone(),
            teacher: None,
            last_checkpoint: (0, Instant::now()),
        }
    }

    /// After training: the failure that stopped it, or `Stopped` when a stop was asked for.
    pub(super) fn ended(&mut self) -> Result<(), JobError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.stopped {
            return Err(JobError::Stopped);
        }
        Ok(())
    }

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
