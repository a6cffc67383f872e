//! The worker loop: claim a job with a lease, run its executor on a blocking thread, renew the
//! lease by heartbeats (which also carry cancel requests), and record the outcome with
//! lease-guarded updates. On shutdown: stop claiming, let running jobs finish within the grace
//! period, then put the rest back in the queue.

use crate::artifacts::Artifacts;
use crate::config::WorkerArgs;
use crate::jobs::{executor_for, JobContext, JobError, Progress};
use crate::store::{Claim, Heartbeat, JobRow, Store, Unsuccessful};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct Worker {
    pub store: Store,
    pub artifacts: Artifacts,
    pub args: WorkerArgs,
    /// Unique name of this worker process (the lease owner).
    pub owner: String,
}

pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", host.trim(), std::process::id(), &suffix[..8])
}

/// How a claimed job ended for this worker (its `outcome` label in logs and metrics).
enum Ended {
    Succeeded,
    Failed(String),
    Cancelled,
    /// Another worker owns the job now: nothing more is written.
    LeaseLost,
    /// Shutdown: handed back to the queue.
    Released,
    /// Success could not be written; the lease will expire and the job be claimed again.
    NotRecorded,
}

impl Ended {
    fn name(&self) -> &'static str {
        match self {
            Ended::Succeeded => "succeeded",
            Ended::Failed(_) => "failed",
            Ended::Cancelled => "cancelled",
            Ended::LeaseLost => "lease_lost",
            Ended::Released => "released",
            Ended::NotRecorded => "error",
        }
    }
}

/// Why a running job stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    LeaseLost,
    Shutdown,
}

impl Worker {
    /// Run until `shutdown` fires, then drain (see module docs). Returns when every job slot is
    /// free.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.args.workers.max(1)));
        let release = CancellationToken::new();
        let mut running = JoinSet::new();
        tracing::info!(worker = %self.owner, slots = self.args.workers, "worker started");
        loop {
            while running.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => p.expect("semaphore closed"),
            };
            match self.store.claim(&self.owner, self.args.lease().as_millis() as i64).await {
                Ok(Some((job, claim))) => {
                    let me = self.clone();
                    let release = release.clone();
                    running.spawn(async move {
                        me.run_job(job, claim, release).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(self.args.poll_ms)) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %format!("{e:#}"), "claiming a job failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let grace = Duration::from_secs(self.args.shutdown_grace_seconds);
        if !running.is_empty() {
            tracing::info!(jobs = running.len(), grace_s = grace.as_secs(), "shutting down: waiting for running jobs");
        }
        let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::info!(jobs = running.len(), "grace period over: putting running jobs back in the queue");
            release.cancel();
            while running.join_next().await.is_some() {}
        }
        tracing::info!(worker = %self.owner, "worker stopped");
    }

    async fn run_job(&self, job: JobRow, claim: Claim, release: CancellationToken) {
        let started = Instant::now();
        let span = tracing::info_span!("job", job_id = %job.id, kind = %job.kind, attempt = job.attempts);
        tracing::info!(parent: &span, job_id = %job.id, worker = %self.owner, "job claimed");
        let outcome = self.execute(&job, &claim, &release).await;
        let ended = match outcome {
            Outcome::Succeeded(artifacts) => match claim.succeed(&artifacts).await {
                Ok(true) => Ended::Succeeded,
                Ok(false) => Ended::LeaseLost,
                Err(e) => {
                    tracing::error!(parent: &span, error = %format!("{e:#}"), "recording success failed");
                    Ended::NotRecorded
                }
            },
            Outcome::Failed(msg) => Ended::Failed(msg),
            Outcome::Stopped(StopReason::Cancelled) => Ended::Cancelled,
            Outcome::Stopped(StopReason::LeaseLost) => Ended::LeaseLost,
            Outcome::Stopped(StopReason::Shutdown) => Ended::Released,
        };
        let recorded = match &ended {
            Ended::Failed(msg) => claim.end(Unsuccessful::Failed, Some(msg)).await,
            Ended::Cancelled => claim.end(Unsuccessful::Cancelled, None).await,
            Ended::Released => claim.release().await,
            Ended::Succeeded | Ended::LeaseLost | Ended::NotRecorded => Ok(true),
        };
        let (status, error) = (
            ended.name(),
            match &ended {
                Ended::Failed(m) => Some(m.clone()),
                _ => None,
            },
        );
        if let Err(e) = recorded {
            tracing::error!(parent: &span, error = %format!("{e:#}"), "recording the job's outcome failed; its lease will expire");
        }
        let secs = started.elapsed().as_secs_f64();
        metrics::counter!("secateur_jobs_finished_total", "kind" => job.kind.clone(), "outcome" => status).increment(1);
        metrics::histogram!("secateur_job_duration_seconds", "kind" => job.kind.clone(), "outcome" => status)
            .record(secs);
        tracing::info!(parent: &span, job_id = %job.id, worker = %self.owner, outcome = status, error = error.as_deref().unwrap_or(""), seconds = secs, "job ended");
    }

    async fn execute(&self, job: &JobRow, claim: &Claim, release: &CancellationToken) -> Outcome {
        let Some(executor) = executor_for(&job.kind) else {
            return Outcome::Failed(format!("unknown job kind {:?}", job.kind));
        };
        let model = match self.store.get_model(&job.tenant_id, &job.model_id).await {
            Ok(Some(m)) => m,
            Ok(None) => return Outcome::Failed("the job's model no longer exists".into()),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "loading the job's model failed");
                return Outcome::Failed("internal error while loading the model (see the worker log)".into());
            }
        };
        let mut datasets = std::collections::HashMap::new();
        let inputs = match self.store.job_inputs(&job.id).await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "loading the job's inputs failed");
                return Outcome::Failed("internal error while loading the job's inputs (see the worker log)".into());
            }
        };
        for id in inputs.iter().filter(|i| **i != job.model_id) {
            if let Ok(Some(d)) = self.store.get_dataset(&job.tenant_id, id).await {
                if let Some(format) = crate::data::Format::parse(&d.format) {
                    datasets.insert(id.clone(), (format, d.task.as_deref().and_then(crate::data::Task::parse)));
                }
            }
        }
        let stop = CancellationToken::new();
        let (ptx, mut prx) = watch::channel(Progress { stage: "starting".into(), fraction: 0.0 });
        let ctx = JobContext {
            job: job.clone(),
            model_files: model.files.names().map(str::to_string).collect(),
            artifacts: self.artifacts.clone(),
            rt: tokio::runtime::Handle::current(),
            progress: ptx,
            stop: stop.clone(),
            step_delay: Duration::from_millis(self.args.job_step_delay_ms),
            produced: Mutex::new(Vec::new()),
            datasets,
            claim: Some(claim.clone()),
            stages: Mutex::new(Vec::new()),
            checkpoint_interval: Duration::from_secs(self.args.checkpoint_interval_secs),
        };
        let mut handle = tokio::task::spawn_blocking(move || {
            let r = executor.run(&ctx);
            r.map(|()| ctx.produced())
        });
        let lease_ms = self.args.lease().as_millis() as i64;
        let mut beat = tokio::time::interval(self.args.heartbeat());
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reason: Option<StopReason> = None;
        let mut progress_open = true;
        let result = loop {
            tokio::select! {
                r = &mut handle => break r,
                _ = beat.tick() => {
                    match claim.heartbeat(lease_ms).await {
                        Ok(Heartbeat::Renewed { cancel_requested: true }) => {
                            reason.get_or_insert(StopReason::Cancelled);
                            stop.cancel();
                        }
                        Ok(Heartbeat::Renewed { .. }) => {}
                        Ok(Heartbeat::Lost) => {
                            tracing::warn!("lease lost; abandoning the job");
                            stop.cancel();
                            // Do not wait for the executor: another worker owns the job now.
                            return Outcome::Stopped(StopReason::LeaseLost);
                        }
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "heartbeat failed"),
                    }
                }
                changed = prx.changed(), if progress_open => {
                    if changed.is_err() { progress_open = false; continue; }
                    let p = prx.borrow_and_update().clone();
                    if let Err(e) = claim.progress(&p.stage, p.fraction).await {
                        tracing::warn!(error = %format!("{e:#}"), "recording progress failed");
                    }
                }
                _ = release.cancelled(), if reason.is_none() => {
                    reason = Some(StopReason::Shutdown);
                    stop.cancel();
                }
            }
        };
        match result {
            Ok(Ok(artifacts)) => Outcome::Succeeded(artifacts),
            Ok(Err(JobError::Stopped)) => Outcome::Stopped(reason.unwrap_or(StopReason::Cancelled)),
            Ok(Err(JobError::Failed(msg))) => Outcome::Failed(msg),
            Ok(Err(JobError::Internal(e))) => {
                tracing::error!(error = %format!("{e:#}"), "job failed with an internal error");
                Outcome::Failed("internal error (see the worker log)".into())
            }
            Err(join) => {
                tracing::error!(error = %join, "job panicked");
                Outcome::Failed("internal error: the job's executor panicked (see the worker log)".into())
            }
        }
    }
}

enum Outcome {
    Succeeded(Vec<crate::store::ArtifactRow>),
    Failed(String),
    Stopped(StopReason),
}
