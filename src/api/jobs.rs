//! `/v1/jobs`: submit (idempotent with `Idempotency-Key`), list, get, cancel, follow (SSE),
//! artifacts.

use super::auth::Auth;
use super::problem::{ApiError, ApiResult};
use super::{download, path_id, AppState, List, PageQuery};
use crate::artifacts::job_artifact_path;
use crate::jobs::spec::ExperimentRequest;
use crate::jobs::spec::{parse_spec, JobRequest, JobSpec};
use crate::store::{rfc3339, CancelOutcome, CreateOutcome, JobRow, NewJob, Stage};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use crate::store::JobStatus;

/// A job and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub model_id: String,
    pub status: JobStatus,
    /// What the job is doing (`queued`, `loading`, `pruning`, `writing`, `done`, …).
    pub stage: Option<String>,
    /// 0..1.
    pub progress: f64,
    /// Estimated seconds until the job ends, from its progress so far (running jobs with some
    /// progress only).
    pub eta_seconds: Option<f64>,
    /// Claims so far (a job whose worker died is claimed again).
    pub attempts: i64,
    pub max_attempts: i64,
    /// Why the job failed.
    pub error: Option<String>,
    pub cancel_requested: bool,
    /// The spec as submitted (with defaults filled in).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl From<JobRow> for Job {
    fn from(r: JobRow) -> Self {
        Job {
            status: r.status,
            spec: serde_json::from_str(&r.spec).unwrap_or_default(),
            id: r.id,
            kind: r.kind,
            model_id: r.model_id,
            eta_seconds: match (r.status, r.started_at) {
                (JobStatus::Running, Some(started)) if r.progress > 0.0 && r.progress < 1.0 => {
                    let elapsed = (crate::store::now_ms() - started).max(0) as f64 / 1e3;
                    Some((elapsed * (1.0 - r.progress) / r.progress).round())
                }
                _ => None,
            },
            stage: r.stage,
            progress: r.progress,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            error: r.error,
            cancel_requested: r.cancel_requested != 0,
            created_at: rfc3339(r.created_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Artifact {
    pub name: String,
    pub bytes: i64,
    pub sha256: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// Only jobs in this status.
    pub status: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(job_events))
        .routes(routes!(list_artifacts))
        .routes(routes!(get_result))
        .routes(routes!(get_artifact))
}

async fn load(st: &AppState, tenant: &str, id: &str) -> ApiResult<JobRow> {
    let id = path_id(id)?;
    st.store.get_job(tenant, &id).await?.ok_or_else(|| ApiError::NotFound("no job with this id".into()))
}

/// Submit a job. With an `Idempotency-Key` header, a retry with the same body returns the same
/// job, and the same key with another body answers 409.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = JobSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe (at most 255 characters)")),
    responses(
        (status = 202, description = "Job queued (or, for a repeated idempotent request, the job queued the first time)", body = Job),
        (status = 409, description = "Idempotency-Key reused with another body", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 415, body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::problem::Problem, content_type = "application/problem+json"),
    ))]
async fn create_job(State(st): State<AppState>, Auth(p): Auth, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !(ctype.starts_with("application/json") || ctype.contains("+json")) {
        return Err(ApiError::UnsupportedMediaType("expected application/json".into()));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| ApiError::invalid("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))?
                .to_string(),
        ),
    };
    let spec = parse_spec(&body).map_err(|e| ApiError::Validation(vec![e]))?;
    let kind = spec.kind();
    let model_id = uuid::Uuid::parse_str(spec.model_id()).map_err(ApiError::internal)?.to_string();
    let Some(model) = st.store.get_model(&p.tenant_id, &model_id).await? else {
        return Err(ApiError::invalid("model_id", "no model with this id"));
    };
    let mut inputs = vec![model_id.clone()];
    // Stored with every default written out, so that the same request spelled differently is
    // the same request for Idempotency-Key.
    let spec = match spec {
        JobSpec::Prune(req) => {
            crate::jobs::spec::check_against_model(&req, &model_shape(&model))
                .map_err(|e| ApiError::Validation(vec![e]))?;
            if let Some(c) = &req.calibration {
                let id = uuid::Uuid::parse_str(&c.dataset_id).map_err(ApiError::internal)?.to_string();
                if st.store.get_dataset(&p.tenant_id, &id).await?.is_none() {
                    return Err(ApiError::invalid("calibration.dataset_id", "no dataset with this id"));
                }
                inputs.push(id);
            }
            let mut normalized = JobRequest { model_id: model_id.clone(), ..req.clone() };
            normalized.pruning.scope = Some(req.pruning.scope());
            serde_json::to_string(&normalized).map_err(ApiError::internal)?
        }
        JobSpec::Experiment(req) => {
            let normalized = check_experiment(&st, &p.tenant_id, req, &model, &mut inputs).await?;
            serde_json::to_string(&normalized).map_err(ApiError::internal)?
        }
    };
    let hash = hex::encode(Sha256::digest(spec.as_bytes()));
    let outcome = st
        .store
        .create_job(NewJob {
            tenant_id: &p.tenant_id,
            kind: kind.name(),
            model_id: &model_id,
            spec: &spec,
            inputs: &inputs,
            max_attempts: st.max_attempts as i64,
            idempotency_key: key.as_deref(),
            request_hash: &hash,
        })
        .await?;
    let row = match outcome {
        CreateOutcome::Created(r) => {
            tracing::info!(job_id = %r.id, "job queued");
            r
        }
        CreateOutcome::Existing(r) => r,
        CreateOutcome::KeyConflict => {
            return Err(ApiError::Conflict("this Idempotency-Key was used with a different request".into()))
        }
    };
    let location = format!("/v1/jobs/{}", row.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(Job::from(row))).into_response())
}

/// Checks of an experiment that need the stored model and datasets; returns the spec to store
/// (ids normalised, defaults written out).
async fn check_experiment(
    st: &AppState,
    tenant: &str,
    mut req: ExperimentRequest,
    model: &crate::store::ModelRow,
    inputs: &mut Vec<String>,
) -> ApiResult<ExperimentRequest> {
    req.model_id = model.id.clone();
    if !model.files.contains("tokenizer.json") {
        return Err(ApiError::invalid(
            "model_id",
            "experiments tokenize with the model's own tokenizer: this model was uploaded without tokenizer.json",
        ));
    }
    let task = req.task.name;
    let mut ids = vec![("task.dataset_id", req.task.dataset_id.clone())];
    if let Some(e) = &req.task.eval_dataset_id {
        ids.push(("task.eval_dataset_id", e.clone()));
    }
    for (field, id) in ids {
        let id = uuid::Uuid::parse_str(&id).map_err(ApiError::internal)?.to_string();
        let Some(d) = st.store.get_dataset(tenant, &id).await? else {
            return Err(ApiError::invalid(field, "no dataset with this id"));
        };
        let dtask = d.task.as_deref().and_then(crate::data::Task::parse);
        let squad = task == crate::data::Task::Squad;
        let format = crate::data::Format::parse(&d.format);
        if task == crate::data::Task::CausalLm {
            if !matches!(format, Some(crate::data::Format::Text | crate::data::Format::Jsonl)) {
                return Err(ApiError::invalid(
                    field,
                    format!("task causal_lm reads running text (format text or jsonl); the dataset is {}", d.format),
                ));
            }
        } else if format == Some(crate::data::Format::Text) {
            return Err(ApiError::invalid(field, "the dataset is plain text: it holds no labelled examples"));
        }
        if (format == Some(crate::data::Format::SquadJson)) != squad
            || (format == Some(crate::data::Format::GlueTsv) && dtask != Some(task))
        {
            let what = d.task.clone().unwrap_or_else(|| d.format.clone());
            return Err(ApiError::invalid(field, format!("the dataset is for {what}, not {}", task.name())));
        }
        if field == "task.dataset_id" {
            req.task.dataset_id = id.clone();
        } else {
            req.task.eval_dataset_id = Some(id.clone());
        }
        if !inputs.contains(&id) {
            inputs.push(id);
        }
    }
    req.check_against_model(&model_shape(model)).map_err(|e| ApiError::Validation(vec![e]))?;
    Ok(req)
}

fn model_shape(m: &crate::store::ModelRow) -> crate::jobs::spec::ModelShape {
    crate::jobs::spec::ModelShape {
        model_type: m.model_type.clone(),
        num_layers: m.num_layers as u64,
        num_heads: m.num_heads as u64,
        hidden_size: m.hidden_size as u64,
        intermediate_size: m.intermediate_size as u64,
    }
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobListQuery), responses((status = 200, body = List<Job>)))]
async fn list_jobs(
    State(st): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<JobListQuery>,
) -> ApiResult<Json<List<Job>>> {
    let page = PageQuery { limit: q.limit, cursor: q.cursor }.parse()?;
    let status = match &q.status {
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::invalid("status", "status must be one of queued, running, succeeded, failed, cancelled")
        })?),
        None => None,
    };
    let rows = st.store.list_jobs(&p.tenant_id, status, page.before.as_deref(), page.limit).await?;
    Ok(Json(List::new(rows.into_iter().map(Job::from).collect(), page.limit, |j| j.id.clone())))
}

/// Get a job.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn get_job(State(st): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(load(&st, &p.tenant_id, &id).await?.into()))
}

/// What an experiment found so far: metrics before (the dense model: after fine-tuning when
/// there is a fine-tuning stage) and after (pruned and recovered), and each stage's record.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResult {
    pub job_id: String,
    pub kind: String,
    pub status: JobStatus,
    /// Whether every stage has run (the job succeeded).
    pub complete: bool,
    /// `baseline` (as uploaded), `before` (dense), `pruned` (one-shot, before recovery),
    /// `after`: each a map of metric name (`accuracy`, `f1`, `matthews`, `pearson`,
    /// `spearman`) to value, when that stage has run.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    /// Sparsity, size and latency before and after, once the export stage has run.
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
    pub stages: Vec<StageResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StageResult {
    /// The stage (experiments run them in the order listed).
    pub name: Stage,
    /// The claim of the job that ran it.
    pub attempt: i64,
    pub recorded_at: String,
    #[schema(value_type = Object)]
    pub result: serde_json::Value,
}

/// The results of a job's stages as they are recorded. An experiment records one per stage; a
/// prune job records `export`, whose `summary` holds its report's totals (the per-tensor and
/// per-layer lists are in the `report.json` artifact).
#[utoipa::path(get, path = "/v1/jobs/{id}/result", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = JobResult), (status = 404, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn get_result(State(st): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult<Json<JobResult>> {
    let job = load(&st, &p.tenant_id, &id).await?;
    let rows = st.store.job_stages(&job.id).await?;
    let stages: Vec<StageResult> = rows
        .into_iter()
        .map(|r| StageResult {
            name: r.stage,
            attempt: r.attempt,
            recorded_at: rfc3339(r.recorded_at),
            result: serde_json::from_str(&r.result).unwrap_or_default(),
        })
        .collect();
    let recorded = |stage: Stage| stages.iter().find(|s| s.name == stage).map(|s| &s.result);
    let metric = |stage: Stage| recorded(stage).and_then(|r| r.get("metrics").cloned());
    let baseline = metric(Stage::BaselineEval);
    let before = metric(Stage::DenseEval).or_else(|| baseline.clone());
    let pruned = metric(Stage::Prune);
    let exported = recorded(Stage::Export);
    let after = metric(Stage::FinalEval).or_else(|| exported.and(before.clone()));
    let summary = exported.and_then(|r| r.get("summary").cloned()).unwrap_or_default();
    let status = job.status;
    Ok(Json(JobResult {
        job_id: job.id,
        kind: job.kind,
        complete: status == JobStatus::Succeeded,
        status,
        metrics: serde_json::json!({"baseline": baseline, "before": before, "pruned": pruned, "after": after}),
        summary,
        stages,
    }))
}

/// Cancel a job: a queued job is cancelled at once (200); a running job is asked to stop and
/// ends `cancelled` within seconds (202); a finished job answers 409.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 202, body = Job),
        (status = 404, body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 409, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn cancel_job(State(st): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult<Response> {
    let id = path_id(&id)?;
    match st.store.cancel_job(&p.tenant_id, &id).await? {
        CancelOutcome::Cancelled(r) => Ok((StatusCode::OK, Json(Job::from(r))).into_response()),
        CancelOutcome::Requested(r) => Ok((StatusCode::ACCEPTED, Json(Job::from(r))).into_response()),
        CancelOutcome::Finished(r) => {
            Err(ApiError::Conflict(format!("the job has already ended ({})", r.status.name())))
        }
        CancelOutcome::NotFound => Err(ApiError::NotFound("no job with this id".into())),
    }
}

/// Follow a job: Server-Sent Events (`event: job`, data = the job) on every change of status,
/// stage, progress or attempts; the stream ends after the job ends.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", body = String, description = "`event: job` lines whose data is a Job"),
        (status = 404, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn job_events(State(st): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let first = load(&st, &p.tenant_id, &id).await?;
    let follow = Follow { id: first.id.clone(), st, tenant: p.tenant_id, next: Some(first), last: None, done: false };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            let row = match f.next.take() {
                Some(r) => r,
                None => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    match f.st.store.get_job(&f.tenant, &f.id).await {
                        Ok(Some(r)) => r,
                        // Deleted, or the store is unreachable: end the stream.
                        _ => return None,
                    }
                }
            };
            let key = (row.status, row.stage.clone(), row.progress, row.attempts);
            if f.last.as_ref() != Some(&key) {
                f.done = row.is_terminal();
                f.last = Some(key);
                let ev = Event::default().event("job").json_data(Job::from(row)).unwrap_or_default();
                return Some((Ok::<_, std::convert::Infallible>(ev), f));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Follow {
    id: String,
    st: AppState,
    tenant: String,
    next: Option<JobRow>,
    last: Option<(JobStatus, Option<String>, f64, i64)>,
    done: bool,
}

/// List a job's artifacts (present once the job has succeeded).
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Vec<Artifact>), (status = 404, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn list_artifacts(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Artifact>>> {
    let job = load(&st, &p.tenant_id, &id).await?;
    let rows = st.store.list_artifacts(&job.id).await?;
    Ok(Json(rows.into_iter().map(|a| Artifact { name: a.name, bytes: a.bytes, sha256: a.sha256 }).collect()))
}

/// Download one artifact of a job.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts/{name}", tag = "jobs", params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn get_artifact(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let job = load(&st, &p.tenant_id, &id).await?;
    let rows = st.store.list_artifacts(&job.id).await?;
    if !rows.iter().any(|a| a.name == name) {
        return Err(ApiError::NotFound(format!("the job has no artifact {name}")));
    }
    download(&st.artifacts, &job_artifact_path(&job.id, &name), &name).await
}
