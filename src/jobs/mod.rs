//! Job kinds and their executors. The seam every job method plugs into:
//! a job kind → an [`Executor`] that reads its inputs, reports progress through
//! [`JobContext::progress`] (which is also where cancellation is noticed), and writes its
//! artifacts through [`JobContext::write_artifact`]. Executors run on a blocking thread.

pub mod experiment;
pub mod prune;
pub mod spec;

use crate::artifacts::{job_artifact_path, model_path, scratch_path, scratch_prefix, Artifacts};
use crate::store::{ArtifactRow, Claim, JobRow, Stage};
use bytes::Bytes;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job noticed a stop request (cancel, lost lease or shutdown) and stopped.
    #[error("stopped")]
    Stopped,
    /// The job cannot succeed with these inputs; the message is shown to the user.
    #[error("{0}")]
    Failed(String),
    /// Something broke on our side; logged, not shown.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// A model error is the user's (bad weights or spec) unless candle itself failed.
impl From<crate::engine::model::ModelError> for JobError {
    fn from(e: crate::engine::model::ModelError) -> JobError {
        match e {
            crate::engine::model::ModelError::Invalid(m) => JobError::Failed(m),
            crate::engine::model::ModelError::Candle(e) => JobError::Internal(e.into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub stage: String,
    pub fraction: f64,
}

/// What an executor gets: the job, its inputs, a progress channel, a stop signal, and where to
/// write artifacts.
pub struct JobContext {
    pub job: JobRow,
    /// Names of the files of the job's model.
    pub model_files: Vec<String>,
    pub(crate) artifacts: Artifacts,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) stop: CancellationToken,
    pub(crate) step_delay: Duration,
    pub(crate) produced: Mutex<Vec<ArtifactRow>>,
    /// Datasets the job may read, with their format and task.
    pub(crate) datasets: std::collections::HashMap<String, (crate::data::Format, Option<crate::data::Task>)>,
    /// The worker's hold on the job, through which stage outcomes are recorded (`None` for
    /// local runs).
    pub(crate) claim: Option<Claim>,
    /// Stages recorded by this run, in order.
    pub(crate) stages: Mutex<Vec<(Stage, serde_json::Value)>>,
    /// The least time between two checkpoints of a training stage.
    pub(crate) checkpoint_interval: Duration,
}

impl JobContext {
    /// Report progress (0..1 within the whole job) and stop here if asked to.
    pub fn progress(&self, stage: &str, fraction: f64) -> Result<(), JobError> {
        self.progress.send_replace(Progress { stage: stage.to_string(), fraction });
        if !self.step_delay.is_zero() {
            let deadline = std::time::Instant::now() + self.step_delay;
            while std::time::Instant::now() < deadline && !self.stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(20).min(self.step_delay));
            }
        }
        self.check()
    }

    pub fn check(&self) -> Result<(), JobError> {
        if self.stop.is_cancelled() {
            Err(JobError::Stopped)
        } else {
            Ok(())
        }
    }

    pub fn read_model_file(&self, name: &str) -> Result<Bytes, JobError> {
        self.rt
            .block_on(self.artifacts.get(&model_path(&self.job.model_id, name)))?
            .ok_or_else(|| JobError::Failed(format!("the model's file {name} is missing from the artifact store")))
    }

    /// The model's `config.json` and `model.safetensors` as the engine loads them: a
    /// compressed-tensors int8 upload is turned back into floats, its `quantization_config`
    /// dropped (`engine::io::compressed::decompress`).
    pub fn read_checkpoint(&self) -> Result<(Bytes, Bytes), JobError> {
        let config = self.read_model_file("config.json")?;
        let weights = self.read_model_file("model.safetensors")?;
        let header =
            crate::engine::io::st::parse(&weights).map_err(|e| JobError::Failed(format!("model.safetensors: {e}")))?;
        match crate::engine::io::compressed::decompress(&weights, &header, &config) {
            Ok(Some((w, c))) => Ok((Bytes::from(c), Bytes::from(w))),
            Ok(None) => Ok((config, weights)),
            Err(e) => Err(JobError::Failed(e.to_string())),
        }
    }

    /// A dataset the job reads: its format, task and bytes.
    pub fn read_dataset(&self, id: &str) -> Result<(crate::data::Format, Option<crate::data::Task>, Bytes), JobError> {
        let (format, task) = *self
            .datasets
            .get(id)
            .ok_or_else(|| JobError::Failed(format!("dataset {id} is not available to this job (deleted?)")))?;
        let bytes = self
            .rt
            .block_on(self.artifacts.get(&crate::artifacts::dataset_path(id)))?
            .ok_or_else(|| JobError::Failed(format!("dataset {id}'s file is missing from the artifact store")))?;
        Ok((format, task, bytes))
    }

    pub fn write_artifact(&self, name: &str, data: Bytes) -> Result<(), JobError> {
        let stored = self.rt.block_on(self.artifacts.put(&job_artifact_path(&self.job.id, name), data))?;
        self.record(name, stored);
        Ok(())
    }

    fn record(&self, name: &str, stored: crate::artifacts::Stored) {
        let mut p = self.produced.lock().unwrap();
        p.retain(|a| a.name != name);
        p.push(ArtifactRow { name: name.to_string(), bytes: stored.bytes as i64, sha256: stored.sha256 });
    }

    /// Keeps a file for this job's own later use (a checkpoint to resume from when the job is
    /// claimed again): beside the artifacts, but not one of them.
    pub fn write_scratch(&self, name: &str, data: Bytes) -> Result<(), JobError> {
        self.rt.block_on(self.artifacts.put(&scratch_path(&self.job.id, name), data))?;
        Ok(())
    }

    /// A file kept by [`JobContext::write_scratch`], if there is one.
    pub fn read_scratch(&self, name: &str) -> Result<Option<Bytes>, JobError> {
        Ok(self.rt.block_on(self.artifacts.get(&scratch_path(&self.job.id, name)))?)
    }

    /// Deletes the job's scratch files.
    pub fn clear_scratch(&self) -> Result<(), JobError> {
        self.rt.block_on(self.artifacts.delete_prefix(&scratch_prefix(&self.job.id)))?;
        Ok(())
    }

    /// Records what a stage found (served by `GET /v1/jobs/{id}/result`), in order.
    pub fn record_stage(&self, stage: Stage, result: serde_json::Value) -> Result<(), JobError> {
        let position = {
            let mut st = self.stages.lock().unwrap();
            st.push((stage, result.clone()));
            st.len() as i64 - 1
        };
        if let Some(claim) = &self.claim {
            let ours = self.rt.block_on(claim.record_stage(position, stage, &result.to_string()))?;
            if !ours {
                return Err(JobError::Stopped);
            }
        }
        Ok(())
    }

    /// The stages recorded by this run.
    pub fn stages(&self) -> Vec<(Stage, serde_json::Value)> {
        self.stages.lock().unwrap().clone()
    }

    pub fn produced(&self) -> Vec<ArtifactRow> {
        self.produced.lock().unwrap().clone()
    }
}

/// A data file of a local run and how to read it.
pub struct LocalDataset<'a> {
    pub path: &'a std::path::Path,
    pub format: crate::data::Format,
    pub task: Option<crate::data::Task>,
}

/// Run a prune spec locally, without a server or database (`secateur prune`): the model files
/// are read from `model_dir`, the artifacts are written into `out_dir` under the same names a
/// job would give them. `on_progress` sees every progress report.
pub fn run_local(
    spec_json: &[u8],
    model_dir: &std::path::Path,
    calibration: Option<LocalDataset>,
    out_dir: &std::path::Path,
    on_progress: impl Fn(&Progress) + Send + 'static,
) -> anyhow::Result<Vec<ArtifactRow>> {
    use anyhow::Context;
    let mut v: serde_json::Value = serde_json::from_slice(spec_json).context("the spec is not valid JSON")?;
    let obj = v.as_object_mut().context("the spec must be a JSON object")?;
    anyhow::ensure!(
        obj.get("kind").and_then(|k| k.as_str()).is_none_or(|k| k == "prune"),
        "this spec is not a prune job's (for an experiment, use `secateur experiment`)"
    );
    // The calibration file stands in for a dataset id.
    let mut datasets = Vec::new();
    if let Some(c) = calibration {
        let cal = obj.entry("calibration").or_insert_with(|| serde_json::json!({}));
        let cal = cal.as_object_mut().context("calibration must be an object")?;
        anyhow::ensure!(
            !cal.contains_key("dataset_id"),
            "the spec names calibration.dataset_id; locally the data is --calibration"
        );
        cal.insert("dataset_id".into(), LOCAL_IDS[0].into());
        datasets.push((LOCAL_IDS[0], c));
    } else {
        anyhow::ensure!(
            !obj.contains_key("calibration"),
            "the spec asks for calibration: give the data with --calibration FILE"
        );
    }
    run_local_spec(v, model_dir, datasets, out_dir, on_progress)
}

/// Ids that local files stand in for.
const LOCAL_IDS: [&str; 2] = ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"];

/// Run an experiment spec locally (`secateur experiment`): as [`run_local`], with the training
/// data (and evaluation data, unless the spec holds out `task.eval_fraction`) from files.
pub fn run_local_experiment(
    spec_json: &[u8],
    model_dir: &std::path::Path,
    train: LocalDataset,
    eval: Option<LocalDataset>,
    out_dir: &std::path::Path,
    on_progress: impl Fn(&Progress) + Send + 'static,
) -> anyhow::Result<Vec<ArtifactRow>> {
    use anyhow::Context;
    let mut v: serde_json::Value = serde_json::from_slice(spec_json).context("the spec is not valid JSON")?;
    let obj = v.as_object_mut().context("the spec must be a JSON object")?;
    obj.insert("kind".into(), "experiment".into());
    let task = obj.get_mut("task").and_then(|t| t.as_object_mut()).context("the spec needs task: {\"name\": ...}")?;
    for k in ["dataset_id", "eval_dataset_id"] {
        anyhow::ensure!(!task.contains_key(k), "the spec names task.{k}; locally the data is --train / --eval");
    }
    task.insert("dataset_id".into(), LOCAL_IDS[0].into());
    let mut datasets = vec![(LOCAL_IDS[0], train)];
    if let Some(e) = eval {
        task.insert("eval_dataset_id".into(), LOCAL_IDS[1].into());
        datasets.push((LOCAL_IDS[1], e));
    }
    run_local_spec(v, model_dir, datasets, out_dir, on_progress)
}

fn run_local_spec(
    mut v: serde_json::Value,
    model_dir: &std::path::Path,
    local: Vec<(&str, LocalDataset)>,
    out_dir: &std::path::Path,
    on_progress: impl Fn(&Progress) + Send + 'static,
) -> anyhow::Result<Vec<ArtifactRow>> {
    use anyhow::Context;
    let obj = v.as_object_mut().context("the spec must be a JSON object")?;
    anyhow::ensure!(!obj.contains_key("model_id"), "the spec names a model_id; locally the model is --model");
    let model_id = uuid::Uuid::nil().to_string();
    obj.insert("model_id".into(), model_id.clone().into());
    let spec = spec::parse_spec(&serde_json::to_vec(&v)?).map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
    let summary = crate::catalog::inspect_dir(model_dir).map_err(|errors| {
        let all: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        anyhow::anyhow!("{}: {}", model_dir.display(), all.join("; "))
    })?;
    spec::check_spec_against_model(&spec, &summary.shape).map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
    let kind = spec.kind();
    let executor = executor_for(kind.name()).context("unknown job kind")?;
    // A private artifact store: the model's files linked in, the outputs written under jobs/.
    let scratch = tempfile_dir(out_dir)?;
    let model_files: Vec<String> =
        crate::catalog::MODEL_FILES.iter().filter(|f| model_dir.join(f).is_file()).map(|f| f.to_string()).collect();
    anyhow::ensure!(
        model_files.iter().any(|f| f == "model.safetensors"),
        "{} has no model.safetensors",
        model_dir.display()
    );
    let models = scratch.join("models").join(&model_id);
    std::fs::create_dir_all(&models)?;
    for f in &model_files {
        let src = std::fs::canonicalize(model_dir.join(f))?;
        std::os::unix::fs::symlink(&src, models.join(f))?;
    }
    let mut datasets = std::collections::HashMap::new();
    for (id, c) in &local {
        let bytes = std::fs::read(c.path).with_context(|| format!("reading {}", c.path.display()))?;
        let summary = crate::data::validate(c.format, c.task, &bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", c.path.display()))?;
        anyhow::ensure!(summary.rows > 0, "{} holds no rows", c.path.display());
        let dir = scratch.join("datasets").join(id);
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::symlink(std::fs::canonicalize(c.path)?, dir.join("data"))?;
        datasets.insert(id.to_string(), (c.format, c.task));
    }
    let spec_text = match &spec {
        spec::JobSpec::Prune(r) => serde_json::to_string(r)?,
        spec::JobSpec::Experiment(r) => serde_json::to_string(r)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let artifacts = Artifacts::local(&scratch)?;
    let now = crate::store::now_ms();
    let job = JobRow {
        id: "local".into(),
        tenant_id: String::new(),
        kind: kind.name().into(),
        model_id,
        spec: spec_text,
        status: crate::store::JobStatus::Running,
        stage: None,
        progress: 0.0,
        attempts: 1,
        max_attempts: 1,
        error: None,
        cancel_requested: 0,
        lease_owner: None,
        lease_expires_at: None,
        idempotency_key: None,
        request_hash: None,
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        updated_at: now,
    };
    let (ptx, mut prx) = watch::channel(Progress { stage: "starting".into(), fraction: 0.0 });
    let watcher = std::thread::spawn(move || {
        while prx.has_changed().is_ok() {
            if prx.has_changed().unwrap_or(false) {
                on_progress(&prx.borrow_and_update());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let ctx = JobContext {
        job,
        model_files,
        artifacts,
        rt: rt.handle().clone(),
        progress: ptx,
        stop: CancellationToken::new(),
        step_delay: Duration::ZERO,
        produced: Mutex::new(Vec::new()),
        datasets,
        claim: None,
        stages: Mutex::new(Vec::new()),
        checkpoint_interval: Duration::from_secs(30),
    };
    let result = executor.run(&ctx);
    let produced = ctx.produced();
    drop(ctx);
    let _ = watcher.join();
    let outcome = match result {
        Ok(()) => {
            for a in &produced {
                let from = scratch.join("jobs/local").join(&a.name);
                let to = out_dir.join(&a.name);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if std::fs::rename(&from, &to).is_err() {
                    std::fs::copy(&from, &to).with_context(|| format!("writing {}", to.display()))?;
                }
            }
            Ok(produced)
        }
        Err(JobError::Failed(m)) => Err(anyhow::anyhow!(m)),
        Err(JobError::Stopped) => Err(anyhow::anyhow!("stopped")),
        Err(JobError::Internal(e)) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

/// A fresh scratch directory beside `out_dir` (same filesystem, so results are moved, not copied).
fn tempfile_dir(out_dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(out_dir)?;
    let dir = out_dir.join(format!(".secateur-scratch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub trait Executor: Send + Sync {
    fn run(&self, ctx: &JobContext) -> Result<(), JobError>;
}

/// The executor for a job kind.
pub fn executor_for(kind: &str) -> Option<Box<dyn Executor>> {
    match kind {
        "prune" => Some(Box::new(prune::PruneExecutor)),
        "experiment" => Some(Box::new(experiment::ExperimentExecutor)),
        _ => None,
    }
}
