//! `/v1/datasets`: upload (parsed and validated before it is accepted), list, get, delete.

use super::auth::Auth;
use super::problem::{ApiError, ApiResult};
use super::{path_id, upload, AppState, List, PageQuery};
use crate::artifacts::dataset_path;
use crate::data::{self, Format, Summary, Task};
use crate::store::{now_ms, rfc3339, DatasetRow, DeleteOutcome, ResourceTable};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// A stored dataset.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dataset {
    pub id: String,
    pub name: Option<String>,
    pub format: Format,
    pub task: Option<Task>,
    /// Examples: TSV/JSONL rows, SQuAD questions.
    pub rows: i64,
    /// What the file holds: columns, labels seen (or the label range), SQuAD counts.
    pub summary: Summary,
    pub bytes: i64,
    pub sha256: String,
    pub created_at: String,
}

impl From<DatasetRow> for Dataset {
    fn from(r: DatasetRow) -> Self {
        Dataset {
            format: Format::parse(&r.format).unwrap_or(Format::Jsonl),
            task: r.task.as_deref().and_then(Task::parse),
            summary: serde_json::from_str(&r.summary).unwrap_or_default(),
            id: r.id,
            name: r.name,
            rows: r.num_rows,
            bytes: r.bytes,
            sha256: r.sha256,
            created_at: rfc3339(r.created_at),
        }
    }
}

/// Multipart body of `POST /v1/datasets`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DatasetUpload {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// `glue_tsv`, `jsonl` or `squad_json`.
    format: Format,
    /// Checks the task's column layout and labels (e.g. `sst2`, `cola`, `rte`, `squad`).
    task: Option<Task>,
    name: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_dataset, list_datasets))
        .layer(DefaultBodyLimit::disable())
        .routes(routes!(get_dataset, delete_dataset))
}

/// Upload a dataset (multipart: `file`, `format`, optional `task` and `name`).
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets",
    request_body(content = DatasetUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = Dataset),
        (status = 413, body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 415, body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file failed validation (the fault names its line); nothing was stored", body = super::problem::Problem, content_type = "application/problem+json"),
    ))]
async fn create_dataset(
    State(st): State<AppState>,
    Auth(p): Auth,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Dataset>)> {
    let limit = st.max_upload_bytes.min(st.max_dataset_bytes);
    let mut mp = upload::open(&headers, body, limit)?;
    let (mut file, mut format, mut task, mut name) = (None::<Vec<u8>>, None::<String>, None::<String>, None::<String>);
    while let Some(mut field) = mp.next_field().await.map_err(upload::malformed)? {
        let part = field.name().unwrap_or("").to_string();
        let slot = match part.as_str() {
            "format" => &mut format,
            "task" => &mut task,
            "name" => &mut name,
            "file" => {
                if file.is_some() {
                    return Err(ApiError::invalid("file", "only one file per dataset"));
                }
                let mut buf = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(upload::malformed)? {
                    if (buf.len() + chunk.len()) as u64 > limit {
                        return Err(ApiError::PayloadTooLarge(format!(
                            "the dataset exceeds the limit of {limit} bytes"
                        )));
                    }
                    buf.extend_from_slice(&chunk);
                }
                file = Some(buf);
                continue;
            }
            other => {
                return Err(ApiError::invalid(
                    if other.is_empty() { "(unnamed part)" } else { other },
                    "unexpected part; expected file, format, task, name",
                ))
            }
        };
        let mut text = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(upload::malformed)? {
            text.extend_from_slice(&chunk);
            if text.len() > 1024 {
                return Err(ApiError::invalid(part, "too long"));
            }
        }
        let text = String::from_utf8(text).map_err(|_| ApiError::invalid(&part, "not valid UTF-8"))?;
        *slot = Some(text.trim().to_string());
    }
    let file = file.ok_or_else(|| ApiError::invalid("file", "the part `file` is required"))?;
    let format_s = format.ok_or_else(|| ApiError::invalid("format", format!("required: {}", data::FORMAT_NAMES)))?;
    let format = Format::parse(&format_s).ok_or_else(|| {
        ApiError::invalid("format", format!("unknown format {format_s:?}; expected {}", data::FORMAT_NAMES))
    })?;
    let task = match task.filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(Task::parse(&t).ok_or_else(|| {
            ApiError::invalid("task", format!("unknown task {t:?}; expected one of {}", data::TASK_NAMES))
        })?),
    };
    let bytes = bytes::Bytes::from(file);
    let parsed = {
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || data::validate(format, task, &b)).await.map_err(ApiError::internal)?
    };
    let summary = parsed.map_err(|e| ApiError::invalid("file", e.to_string()))?;
    let id = uuid::Uuid::now_v7().to_string();
    let stored = st.artifacts.put(&dataset_path(&id), bytes).await?;
    let row = DatasetRow {
        id: id.clone(),
        tenant_id: p.tenant_id,
        name: name.filter(|n| !n.is_empty()),
        format: format.name().to_string(),
        task: task.map(Task::name),
        num_rows: summary.rows as i64,
        summary: serde_json::to_string(&summary).map_err(ApiError::internal)?,
        bytes: stored.bytes as i64,
        sha256: stored.sha256,
        created_at: now_ms(),
    };
    if let Err(e) = st.store.insert_dataset(&row).await {
        let _ = st.artifacts.delete_prefix(&crate::artifacts::dataset_prefix(&id)).await;
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// List datasets, newest first.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", params(PageQuery), responses((status = 200, body = List<Dataset>)))]
async fn list_datasets(
    State(st): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<List<Dataset>>> {
    let page = q.parse()?;
    let rows = st.store.list_datasets(&p.tenant_id, page.before.as_deref(), page.limit).await?;
    Ok(Json(List::new(rows.into_iter().map(Dataset::from).collect(), page.limit, |d| d.id.clone())))
}

/// Get a dataset.
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets", params(("id" = String, Path)),
    responses((status = 200, body = Dataset), (status = 404, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn get_dataset(State(st): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult<Json<Dataset>> {
    let id = path_id(&id)?;
    let row = st
        .store
        .get_dataset(&p.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no dataset with this id".into()))?;
    Ok(Json(row.into()))
}

/// Delete a dataset (409 while a queued or running job uses it).
#[utoipa::path(delete, path = "/v1/datasets/{id}", tag = "datasets", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 409, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn delete_dataset(State(st): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = path_id(&id)?;
    match st.store.delete_resource(ResourceTable::Datasets, &p.tenant_id, &id).await? {
        DeleteOutcome::NotFound => Err(ApiError::NotFound("no dataset with this id".into())),
        DeleteOutcome::InUse => Err(ApiError::Conflict("a queued or running job uses this dataset".into())),
        DeleteOutcome::Deleted => {
            st.artifacts.delete_prefix(&crate::artifacts::dataset_prefix(&id)).await?;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}
