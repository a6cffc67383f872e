//! `/v1/models`: upload (streamed, validated before it is accepted), list, get, file download,
//! delete.

use super::auth::Auth;
use super::problem::{ApiError, ApiResult};
use super::{download, path_id, upload, AppState, List, PageQuery};
use crate::artifacts::{model_path, Writer};
use crate::catalog;
use crate::store::{now_ms, rfc3339, DeleteOutcome, ModelFile, ModelFiles, ModelRow, ResourceTable};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// A stored model.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub name: Option<String>,
    /// The family: `bert`, `roberta`, `distilbert` (encoders), `gpt2`, `llama` or `qwen2`
    /// (decoders).
    pub model_type: String,
    pub num_layers: i64,
    pub hidden_size: i64,
    pub num_heads: i64,
    /// FFN width.
    pub intermediate_size: i64,
    /// Elements of all floating-point tensors (of a compressed-tensors int8 checkpoint: its int8
    /// weights and float tensors, the scales not counted).
    pub parameters: i64,
    /// Floating-point dtype holding most parameters (`F32`, `F16`, `BF16`, …), or `I8` for a
    /// compressed-tensors int8 checkpoint.
    pub dtype: String,
    /// Total bytes of all files.
    pub bytes: i64,
    /// SHA-256 of `model.safetensors`.
    pub sha256: String,
    pub files: Vec<ModelFile>,
    pub created_at: String,
}

impl From<ModelRow> for Model {
    fn from(r: ModelRow) -> Self {
        Model {
            files: r.files.0,
            id: r.id,
            name: r.name,
            model_type: r.model_type,
            num_layers: r.num_layers,
            hidden_size: r.hidden_size,
            num_heads: r.num_heads,
            intermediate_size: r.intermediate_size,
            parameters: r.parameters,
            dtype: r.dtype,
            bytes: r.bytes,
            sha256: r.sha256,
            created_at: rfc3339(r.created_at),
        }
    }
}

/// Multipart body of `POST /v1/models`: one part per file, named after the file.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelUpload {
    #[schema(rename = "config.json", value_type = String, format = Binary)]
    config: Vec<u8>,
    #[schema(rename = "model.safetensors", value_type = String, format = Binary)]
    weights: Vec<u8>,
    /// `tokenizer.json` or `vocab.txt` is required.
    #[schema(rename = "tokenizer.json", value_type = Option<String>, format = Binary)]
    tokenizer: Option<Vec<u8>>,
    #[schema(rename = "vocab.txt", value_type = Option<String>, format = Binary)]
    vocab: Option<Vec<u8>>,
    #[schema(rename = "tokenizer_config.json", value_type = Option<String>, format = Binary)]
    tokenizer_config: Option<Vec<u8>>,
    #[schema(rename = "special_tokens_map.json", value_type = Option<String>, format = Binary)]
    special_tokens_map: Option<Vec<u8>>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// A free-form name for the model.
    pub name: Option<String>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_model, list_models))
        // The upload limit is enforced while streaming (it is configurable at run time).
        .layer(DefaultBodyLimit::disable())
        .routes(routes!(get_model, delete_model))
        .routes(routes!(get_model_file))
}

/// Upload a model (multipart/form-data, one part per file of a Hugging Face model directory).
#[utoipa::path(post, path = "/v1/models", tag = "models", params(UploadQuery),
    request_body(content = ModelUpload, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Model stored", body = Model),
        (status = 413, description = "Upload over the configured limit", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not multipart/form-data", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A file failed validation; nothing was stored", body = super::problem::Problem, content_type = "application/problem+json"),
    ))]
async fn create_model(
    State(st): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Model>)> {
    let mut mp = upload::open(&headers, body, st.max_upload_bytes)?;
    let id = uuid::Uuid::now_v7().to_string();
    let result = receive_model(&st, &id, &mut mp).await;
    let row = match result.map(|(files, summary)| model_row(&id, &p.tenant_id, q.name, files, summary)) {
        Ok(row) => row,
        Err(e) => {
            if let Err(del) = st.artifacts.delete_prefix(&crate::artifacts::model_prefix(&id)).await {
                tracing::error!(error = %format!("{del:#}"), model_id = %id, "cleaning up a rejected upload failed");
            }
            return Err(e);
        }
    };
    if let Err(e) = st.store.insert_model(&row).await {
        let _ = st.artifacts.delete_prefix(&crate::artifacts::model_prefix(&id)).await;
        return Err(e.into());
    }
    tracing::info!(model_id = %id, bytes = row.bytes, "model stored");
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn receive_model(
    st: &AppState,
    id: &str,
    mp: &mut multer::Multipart<'static>,
) -> ApiResult<(Vec<ModelFile>, crate::catalog::ModelSummary)> {
    let limit = st.max_upload_bytes;
    let mut upload = catalog::ModelUpload::default();
    let mut files: Vec<ModelFile> = Vec::new();
    let mut total = 0u64;
    while let Some(mut field) = mp.next_field().await.map_err(upload::malformed)? {
        let name = field.name().unwrap_or("").to_string();
        upload.begin(&name).map_err(|e| ApiError::Validation(vec![e]))?;
        let mut writer: Writer = st.artifacts.writer(&model_path(id, &name)).await?;
        let outcome: ApiResult<()> = async {
            while let Some(chunk) = field.chunk().await.map_err(upload::malformed)? {
                total += chunk.len() as u64;
                if total > limit {
                    return Err(ApiError::PayloadTooLarge(format!("the upload exceeds the limit of {limit} bytes")));
                }
                upload.feed(&chunk).map_err(|e| ApiError::Validation(vec![e]))?;
                writer.write(&chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            writer.abort().await;
            return Err(e);
        }
        let stored = writer.finish().await?;
        files.push(ModelFile { name, bytes: stored.bytes, sha256: stored.sha256 });
    }
    let summary = upload.finish().map_err(ApiError::Validation)?;
    Ok((files, summary))
}

fn model_row(
    id: &str,
    tenant_id: &str,
    name: Option<String>,
    files: Vec<ModelFile>,
    s: crate::catalog::ModelSummary,
) -> ModelRow {
    ModelRow {
        id: id.to_string(),
        tenant_id: tenant_id.to_string(),
        name,
        model_type: s.model_type,
        num_layers: s.shape.num_layers as i64,
        hidden_size: s.shape.hidden_size as i64,
        num_heads: s.shape.num_heads as i64,
        intermediate_size: s.shape.intermediate_size as i64,
        parameters: s.parameters as i64,
        dtype: s.dtype,
        bytes: files.iter().map(|f| f.bytes as i64).sum(),
        sha256: files.iter().find(|f| f.name == "model.safetensors").map(|f| f.sha256.clone()).unwrap_or_default(),
        files: ModelFiles(files),
        created_at: now_ms(),
    }
}

/// List models, newest first.
#[utoipa::path(get, path = "/v1/models", tag = "models", params(PageQuery),
    responses((status = 200, body = List<Model>)))]
async fn list_models(
    State(st): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<List<Model>>> {
    let page = q.parse()?;
    let rows = st.store.list_models(&p.tenant_id, page.before.as_deref(), page.limit).await?;
    Ok(Json(List::new(rows.into_iter().map(Model::from).collect(), page.limit, |m| m.id.clone())))
}

/// Get a model.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", params(("id" = String, Path)),
    responses((status = 200, body = Model), (status = 404, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn get_model(State(st): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult<Json<Model>> {
    let id = path_id(&id)?;
    let row = st
        .store
        .get_model(&p.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no model with this id".into()))?;
    Ok(Json(row.into()))
}

/// Delete a model (409 while a queued or running job uses it).
#[utoipa::path(delete, path = "/v1/models/{id}", tag = "models", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 409, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn delete_model(State(st): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = path_id(&id)?;
    match st.store.delete_resource(ResourceTable::Models, &p.tenant_id, &id).await? {
        DeleteOutcome::NotFound => Err(ApiError::NotFound("no model with this id".into())),
        DeleteOutcome::InUse => Err(ApiError::Conflict("a queued or running job uses this model".into())),
        DeleteOutcome::Deleted => {
            st.artifacts.delete_prefix(&crate::artifacts::model_prefix(&id)).await?;
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

/// Download one of a model's files.
#[utoipa::path(get, path = "/v1/models/{id}/files/{name}", tag = "models", params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn get_model_file(
    State(st): State<AppState>,
    Auth(p): Auth,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = path_id(&id)?;
    let row = st
        .store
        .get_model(&p.tenant_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no model with this id".into()))?;
    if !row.files.contains(&name) {
        return Err(ApiError::NotFound(format!("the model has no file {name}")));
    }
    download(&st.artifacts, &model_path(&id, &name), &name).await
}
