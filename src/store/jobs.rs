//! Jobs: creation with idempotency keys, the leased queue (claim, heartbeat, guarded state
//! changes) and job artifacts. Every state change a worker makes is guarded by
//! `status = 'running' AND lease_owner = $me`, so a worker that lost its lease (or a job that
//! was cancelled meanwhile) cannot overwrite the outcome.

use super::{is_unique_violation, now_ms, Backend, Store};
use sqlx::Row;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub tenant_id: String,
    pub kind: String,
    pub model_id: String,
    pub spec: String,
    #[sqlx(try_from = "String")]
    pub status: JobStatus,
    pub stage: Option<String>,
    pub progress: f64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub error: Option<String>,
    pub cancel_requested: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

impl JobRow {
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// Where a job stands; stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled];

    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|j| j.name() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

impl TryFrom<String> for JobStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        JobStatus::parse(&s).ok_or_else(|| format!("unknown job status {s:?}"))
    }
}

/// How a running job ended, as the worker records it (guarded by its lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsuccessful {
    Failed,
    Cancelled,
}

const JOB_COLS: &str = "id, tenant_id, kind, model_id, spec, status, stage, progress, attempts, max_attempts, error, \
    cancel_requested, lease_owner, lease_expires_at, idempotency_key, request_hash, created_at, started_at, finished_at, updated_at";

#[derive(Debug)]
pub enum CreateOutcome {
    Created(JobRow),
    /// The same idempotency key with the same request: the job created the first time.
    Existing(JobRow),
    /// The same idempotency key with another request.
    KeyConflict,
}

#[derive(Debug)]
pub enum CancelOutcome {
    /// A queued job, cancelled at once.
    Cancelled(JobRow),
    /// A running job, asked to stop at its next check.
    Requested(JobRow),
    /// Already finished.
    Finished(JobRow),
    NotFound,
}

#[derive(Debug, Clone)]
pub struct ArtifactRow {
    pub name: String,
    pub bytes: i64,
    pub sha256: String,
}

/// What a heartbeat learned.
#[derive(Debug, PartialEq, Eq)]
pub enum Heartbeat {
    Renewed {
        cancel_requested: bool,
    },
    /// The lease is no longer ours (expired and re-claimed, or the job was finished elsewhere).
    Lost,
}

pub struct NewJob<'a> {
    pub tenant_id: &'a str,
    pub kind: &'a str,
    pub model_id: &'a str,
    pub spec: &'a str,
    pub inputs: &'a [String],
    pub max_attempts: i64,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a str,
}

impl Store {
    async fn job_by_key(&self, tenant_id: &str, key: &str) -> anyhow::Result<Option<JobRow>> {
        Ok(sqlx::query_as::<_, JobRow>(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2"
        ))
        .bind(tenant_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn create_job(&self, new: NewJob<'_>) -> anyhow::Result<CreateOutcome> {
        let same = |row: JobRow| {
            if row.request_hash.as_deref() == Some(new.request_hash) {
                CreateOutcome::Existing(row)
            } else {
                CreateOutcome::KeyConflict
            }
        };
        if let Some(key) = new.idempotency_key {
            if let Some(row) = self.job_by_key(new.tenant_id, key).await? {
                return Ok(same(row));
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, tenant_id, kind, model_id, spec, status, stage, progress, attempts, max_attempts, \
             idempotency_key, request_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'queued', 'queued', 0, 0, $6, $7, $8, $9, $9)",
        )
        .bind(&id)
        .bind(new.tenant_id)
        .bind(new.kind)
        .bind(new.model_id)
        .bind(new.spec)
        .bind(new.max_attempts)
        .bind(new.idempotency_key)
        .bind(new.request_hash)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                // A concurrent request with the same key won the race.
                drop(tx);
                let key = new.idempotency_key.unwrap_or_default();
                return match self.job_by_key(new.tenant_id, key).await? {
                    Some(row) => Ok(same(row)),
                    None => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        for input in new.inputs {
            sqlx::query("INSERT INTO job_inputs (job_id, resource_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(&id)
                .bind(input)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let row = self.get_job_any(&id).await?.ok_or_else(|| anyhow::anyhow!("job vanished after insert"))?;
        Ok(CreateOutcome::Created(row))
    }

    pub async fn get_job(&self, tenant_id: &str, id: &str) -> anyhow::Result<Option<JobRow>> {
        Ok(sqlx::query_as::<_, JobRow>(&format!("SELECT {JOB_COLS} FROM jobs WHERE tenant_id = $1 AND id = $2"))
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// A job by id regardless of tenant (for workers).
    pub async fn get_job_any(&self, id: &str) -> anyhow::Result<Option<JobRow>> {
        Ok(sqlx::query_as::<_, JobRow>(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_jobs(
        &self,
        tenant_id: &str,
        status: Option<JobStatus>,
        before: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<JobRow>> {
        Ok(sqlx::query_as::<_, JobRow>(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE tenant_id = $1 AND ($2 = '' OR status = $2) AND ($3 = '' OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        ))
        .bind(tenant_id)
        .bind(status.map(JobStatus::name).unwrap_or(""))
        .bind(before.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn cancel_job(&self, tenant_id: &str, id: &str) -> anyhow::Result<CancelOutcome> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE jobs SET status = 'cancelled', stage = 'cancelled', finished_at = $3, updated_at = $3 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'queued'",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            let row = self.get_job(tenant_id, id).await?.ok_or_else(|| anyhow::anyhow!("job vanished"))?;
            return Ok(CancelOutcome::Cancelled(row));
        }
        let asked = sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, updated_at = $3 WHERE tenant_id = $1 AND id = $2 AND status = 'running'",
        )
        .bind(tenant_id)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = self.get_job(tenant_id, id).await?;
        Ok(match row {
            None => CancelOutcome::NotFound,
            Some(row) if asked.rows_affected() == 1 => CancelOutcome::Requested(row),
            // Between the two updates the job may have been claimed (then finished): report
            // what it is now.
            Some(row) if row.is_terminal() => CancelOutcome::Finished(row),
            Some(row) if row.status == JobStatus::Running => {
                // It was queued at the first update and claimed before the second: ask again.
                Box::pin(self.cancel_job(tenant_id, id)).await?
            }
            Some(row) => CancelOutcome::Finished(row),
        })
    }

    /// Jobs whose lease expired with no attempts left end `failed` (or `cancelled`, when a
    /// cancel was asked for).
    pub async fn fail_exhausted(&self) -> anyhow::Result<u64> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE jobs SET \
               status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'failed' END, \
               stage = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'failed' END, \
               error = CASE WHEN cancel_requested = 1 THEN error \
                       ELSE 'the worker running this job stopped responding (lease expired) on each of ' || attempts || ' attempts' END, \
               finished_at = $1, updated_at = $1, lease_owner = NULL, lease_expires_at = NULL \
             WHERE status = 'running' AND lease_expires_at < $1 AND (attempts >= max_attempts OR cancel_requested = 1)",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Claim the oldest queued job, or a running one whose lease expired, for `owner`.
    pub async fn claim_job(&self, owner: &str, lease_ms: i64) -> anyhow::Result<Option<JobRow>> {
        self.fail_exhausted().await?;
        let now = now_ms();
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            // SQLite runs one writer at a time: the UPDATE below is atomic on its own.
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, \
               started_at = COALESCE(started_at, $3), updated_at = $3, stage = 'starting' \
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' \
                           OR (status = 'running' AND lease_expires_at < $3 AND attempts < max_attempts AND cancel_requested = 0) \
                         ORDER BY created_at, id LIMIT 1 {lock}) \
             RETURNING {JOB_COLS}"
        );
        Ok(sqlx::query_as::<_, JobRow>(&sql)
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn heartbeat(&self, id: &str, owner: &str, lease_ms: i64) -> anyhow::Result<Heartbeat> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1, updated_at = $2 \
             WHERE id = $3 AND status = 'running' AND lease_owner = $4 RETURNING cancel_requested",
        )
        .bind(now + lease_ms)
        .bind(now)
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Heartbeat::Lost,
            Some(r) => Heartbeat::Renewed { cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0 },
        })
    }

    pub async fn set_progress(&self, id: &str, owner: &str, stage: &str, progress: f64) -> anyhow::Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET stage = $1, progress = $2, updated_at = $3 WHERE id = $4 AND status = 'running' AND lease_owner = $5",
        )
        .bind(stage)
        .bind(progress.clamp(0.0, 1.0))
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Record the artifacts and mark the job succeeded, only if the lease is still ours.
    pub async fn finish_succeeded(&self, id: &str, owner: &str, artifacts: &[ArtifactRow]) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE jobs SET status = 'succeeded', stage = 'done', progress = 1, finished_at = $1, updated_at = $1, \
               lease_owner = NULL, lease_expires_at = NULL, error = NULL \
             WHERE id = $2 AND status = 'running' AND lease_owner = $3",
        )
        .bind(now)
        .bind(id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM job_artifacts WHERE job_id = $1").bind(id).execute(&mut *tx).await?;
        for a in artifacts {
            sqlx::query("INSERT INTO job_artifacts (job_id, name, bytes, sha256) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(&a.name)
                .bind(a.bytes)
                .bind(&a.sha256)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// End a running job `failed` or `cancelled` (guarded by the lease).
    pub async fn finish_unsuccessful(
        &self,
        id: &str,
        owner: &str,
        status: Unsuccessful,
        error: Option<&str>,
    ) -> anyhow::Result<bool> {
        let status = match status {
            Unsuccessful::Failed => JobStatus::Failed,
            Unsuccessful::Cancelled => JobStatus::Cancelled,
        };
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE jobs SET status = $1, stage = $1, error = $2, finished_at = $3, updated_at = $3, \
               lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $4 AND status = 'running' AND lease_owner = $5",
        )
        .bind(status.name())
        .bind(error)
        .bind(now)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Put a running job back in the queue (graceful shutdown); the attempt does not count.
    pub async fn release_job(&self, id: &str, owner: &str) -> anyhow::Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET status = 'queued', stage = 'queued', progress = 0, attempts = attempts - 1, \
               lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE id = $2 AND status = 'running' AND lease_owner = $3",
        )
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The models and datasets a job reads.
    pub async fn job_inputs(&self, job_id: &str) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query("SELECT resource_id FROM job_inputs WHERE job_id = $1 ORDER BY resource_id")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|r| Ok(r.try_get("resource_id")?)).collect()
    }

    pub async fn list_artifacts(&self, job_id: &str) -> anyhow::Result<Vec<ArtifactRow>> {
        let rows = sqlx::query("SELECT name, bytes, sha256 FROM job_artifacts WHERE job_id = $1 ORDER BY name")
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ArtifactRow { name: r.try_get("name")?, bytes: r.try_get("bytes")?, sha256: r.try_get("sha256")? })
            })
            .collect()
    }

    /// Number of jobs in each status (all tenants), for metrics.
    pub async fn job_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetch_all(&self.pool).await?;
        rows.into_iter().map(|r| Ok((r.try_get("status")?, r.try_get("n")?))).collect()
    }
}

/// A worker's hold on a claimed job: every write it makes is guarded by the lease (`status =
/// 'running' AND lease_owner = owner`), so a worker that lost the lease writes nothing more. The
/// queue renews it, the executor records progress and stages through it, and the queue ends it.
#[derive(Clone)]
pub struct Claim {
    store: Store,
    job_id: String,
    owner: String,
}

impl Claim {
    /// Renew the lease for `lease_ms`; also says whether a cancel was asked for.
    pub async fn heartbeat(&self, lease_ms: i64) -> anyhow::Result<Heartbeat> {
        self.store.heartbeat(&self.job_id, &self.owner, lease_ms).await
    }

    pub async fn progress(&self, stage: &str, fraction: f64) -> anyhow::Result<bool> {
        self.store.set_progress(&self.job_id, &self.owner, stage, fraction).await
    }

    /// Record stage `position`'s outcome (see [`Store::record_stage`]); false: the lease is gone.
    pub async fn record_stage(&self, position: i64, stage: Stage, result: &str) -> anyhow::Result<bool> {
        self.store.record_stage(&self.job_id, &self.owner, position, stage, result).await
    }

    pub async fn succeed(&self, artifacts: &[ArtifactRow]) -> anyhow::Result<bool> {
        self.store.finish_succeeded(&self.job_id, &self.owner, artifacts).await
    }

    pub async fn end(&self, how: Unsuccessful, error: Option<&str>) -> anyhow::Result<bool> {
        self.store.finish_unsuccessful(&self.job_id, &self.owner, how, error).await
    }

    /// Put the job back in the queue (shutdown); the attempt does not count.
    pub async fn release(&self) -> anyhow::Result<bool> {
        self.store.release_job(&self.job_id, &self.owner).await
    }
}

impl Store {
    /// Claim the oldest claimable job for `owner` (see [`Store::claim_job`]) and hand back the
    /// hold on it.
    pub async fn claim(&self, owner: &str, lease_ms: i64) -> anyhow::Result<Option<(JobRow, Claim)>> {
        Ok(self.claim_job(owner, lease_ms).await?.map(|job| {
            let claim = Claim { store: self.clone(), job_id: job.id.clone(), owner: owner.to_string() };
            (job, claim)
        }))
    }
}

/// A stage whose outcome a job records (`job_stages`), served by `GET /v1/jobs/{id}/result`. An
/// experiment runs them in this order (those its spec asks for); a prune job records `export`.
/// Stored as its snake_case name, which is also the progress stage while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Loading,
    BaselineEval,
    Finetune,
    DenseEval,
    Prune,
    Recover,
    FinalEval,
    Export,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Loading,
        Stage::BaselineEval,
        Stage::Finetune,
        Stage::DenseEval,
        Stage::Prune,
        Stage::Recover,
        Stage::FinalEval,
        Stage::Export,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Loading => "loading",
            Stage::BaselineEval => "baseline_eval",
            Stage::Finetune => "finetune",
            Stage::DenseEval => "dense_eval",
            Stage::Prune => "prune",
            Stage::Recover => "recover",
            Stage::FinalEval => "final_eval",
            Stage::Export => "export",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.name() == s)
    }
}

impl TryFrom<String> for Stage {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Stage::parse(&s).ok_or_else(|| format!("unknown stage {s:?}"))
    }
}

/// One recorded stage of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    pub position: i64,
    pub stage: Stage,
    pub attempt: i64,
    /// JSON.
    pub result: String,
    pub recorded_at: i64,
}

impl Store {
    /// Records the outcome of stage `position` of a job, only while the lease is ours; position 0
    /// starts the record over (a job claimed again runs its stages again).
    pub async fn record_stage(
        &self,
        job_id: &str,
        owner: &str,
        position: i64,
        stage: Stage,
        result: &str,
    ) -> anyhow::Result<bool> {
        // Single statements guarded by the lease (no read-then-write transaction: SQLite would
        // refuse to upgrade it while the progress updater writes).
        if position == 0 {
            sqlx::query("DELETE FROM job_stages WHERE job_id = $1 AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND status = 'running' AND lease_owner = $2)")
                .bind(job_id)
                .bind(owner)
                .execute(&self.pool)
                .await?;
        }
        let r = sqlx::query(
            "INSERT INTO job_stages (job_id, position, name, attempt, result, recorded_at)
             SELECT id, $2, $3, attempts, $4, $5 FROM jobs WHERE id = $1 AND status = 'running' AND lease_owner = $6
             ON CONFLICT (job_id, position) DO UPDATE SET name = excluded.name, attempt = excluded.attempt, result = excluded.result, recorded_at = excluded.recorded_at",
        )
        .bind(job_id)
        .bind(position)
        .bind(stage.name())
        .bind(result)
        .bind(now_ms())
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The recorded stages of a job, in order.
    pub async fn job_stages(&self, job_id: &str) -> anyhow::Result<Vec<StageRow>> {
        let rows = sqlx::query(
            "SELECT position, name, attempt, result, recorded_at FROM job_stages WHERE job_id = $1 ORDER BY position",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StageRow {
                    position: r.try_get("position")?,
                    stage: Stage::try_from(r.try_get::<String, _>("name")?).map_err(anyhow::Error::msg)?,
                    attempt: r.try_get("attempt")?,
                    result: r.try_get("result")?,
                    recorded_at: r.try_get("recorded_at")?,
                })
            })
            .collect()
    }
}
