//! Job kinds and their executors. The seam every job method plugs into:
//! a job kind → an [`Executor`] that reads its inputs, reports progress through
//! [`JobContext::progress`] (which is also where cancellation is noticed), and writes its
//! artifacts through [`JobContext::write_artifact`]. Executors run on a blocking thread.

pub mod prune;
pub mod spec;

use crate::artifacts::{job_artifact_path, model_path, Artifacts};
use crate::store::{ArtifactRow, JobRow};
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
        let path = model_path(&self.job.model_id, name);
        self.rt.block_on(self.artifacts.get(&path)).map_err(|e| match e {
            object_store::Error::NotFound { .. } => JobError::Failed(format!("the model's file {name} is missing from the artifact store")),
            e => JobError::Internal(e.into()),
        })
    }

    pub fn write_artifact(&self, name: &str, data: Bytes) -> Result<(), JobError> {
        let stored = self.rt.block_on(self.artifacts.put(&job_artifact_path(&self.job.id, name), data))?;
        self.record(name, stored);
        Ok(())
    }

    /// Copy one of the model's files into the job's artifacts unchanged.
    pub fn copy_model_file(&self, name: &str) -> Result<(), JobError> {
        let data = self.read_model_file(name)?;
        self.write_artifact(name, data)
    }

    fn record(&self, name: &str, stored: crate::artifacts::Stored) {
        let mut p = self.produced.lock().unwrap();
        p.retain(|a| a.name != name);
        p.push(ArtifactRow { name: name.to_string(), bytes: stored.bytes as i64, sha256: stored.sha256 });
    }

    pub fn produced(&self) -> Vec<ArtifactRow> {
        self.produced.lock().unwrap().clone()
    }
}

pub trait Executor: Send + Sync {
    fn run(&self, ctx: &JobContext) -> Result<(), JobError>;
}

/// The executor for a job kind.
pub fn executor_for(kind: &str) -> Option<Box<dyn Executor>> {
    match kind {
        "prune" => Some(Box::new(prune::PruneExecutor)),
        _ => None,
    }
}
