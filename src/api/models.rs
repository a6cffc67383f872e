//! `/v1/models`: upload (streamed, validated before it is accepted), list, get, file download,
//! delete.

use super::auth::Auth;
use super::problem::{ApiError, ApiResult, FieldError};
use super::{download, path_id, upload, AppState, List, PageQuery};
use crate::artifacts::{model_path, Writer};
use crate::engine::{arch, st};
use crate::store::{now_ms, rfc3339, DeleteOutcome, ModelRow, ResourceTable};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Files a model upload may hold (each a multipart part named after the file).
pub const MODEL_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
/// Small files are also kept in memory while they stream, to be validated; this bounds them.
const MAX_SMALL_FILE: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A stored model.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub name: Option<String>,
    /// `bert`, `roberta` or `distilbert`.
    pub model_type: String,
    pub num_layers: i64,
    pub hidden_size: i64,
    pub num_heads: i64,
    /// FFN width.
    pub intermediate_size: i64,
    /// Elements of all floating-point tensors.
    pub parameters: i64,
    /// Floating-point dtype holding most parameters (`F32`, `F16`, `BF16`, …).
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
            files: serde_json::from_str(&r.files).unwrap_or_default(),
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

enum Probe {
    Weights(st::StreamProbe),
    Small(Vec<u8>),
}

struct Received {
    file: ModelFile,
    probe: Probe,
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
    let row = match result.and_then(|files| validate_model(&id, &p.tenant_id, q.name, files)) {
        Ok(row) => row,
        Err(e) => {
            if let Err(del) = st.artifacts.delete_prefix(&format!("models/{id}")).await {
                tracing::error!(error = %format!("{del:#}"), model_id = %id, "cleaning up a rejected upload failed");
            }
            return Err(e);
        }
    };
    if let Err(e) = st.store.insert_model(&row).await {
        let _ = st.artifacts.delete_prefix(&format!("models/{id}")).await;
        return Err(e.into());
    }
    tracing::info!(model_id = %id, bytes = row.bytes, "model stored");
    Ok((StatusCode::CREATED, Json(row.into())))
}

async fn receive_model(st: &AppState, id: &str, mp: &mut multer::Multipart<'static>) -> ApiResult<Vec<Received>> {
    let limit = st.max_upload_bytes;
    let mut received: Vec<Received> = Vec::new();
    let mut total = 0u64;
    while let Some(mut field) = mp.next_field().await.map_err(upload::malformed)? {
        let name = field.name().unwrap_or("").to_string();
        if !MODEL_FILES.contains(&name.as_str()) {
            return Err(ApiError::invalid(
                if name.is_empty() { "(unnamed part)".to_string() } else { name.clone() },
                format!("unexpected part; a model upload holds the files {}", MODEL_FILES.join(", ")),
            ));
        }
        if received.iter().any(|r| r.file.name == name) {
            return Err(ApiError::invalid(&name, "this file appears twice"));
        }
        let mut writer: Writer = st.artifacts.writer(&model_path(id, &name)).await?;
        let mut probe = if name == "model.safetensors" {
            Probe::Weights(st::StreamProbe::default())
        } else {
            Probe::Small(Vec::new())
        };
        let outcome: ApiResult<()> = async {
            while let Some(chunk) = field.chunk().await.map_err(upload::malformed)? {
                total += chunk.len() as u64;
                if total > limit {
                    return Err(ApiError::PayloadTooLarge(format!("the upload exceeds the limit of {limit} bytes")));
                }
                match &mut probe {
                    Probe::Weights(p) => p.feed(&chunk),
                    Probe::Small(buf) => {
                        if buf.len() + chunk.len() > MAX_SMALL_FILE {
                            return Err(ApiError::invalid(&name, format!("larger than {MAX_SMALL_FILE} bytes")));
                        }
                        buf.extend_from_slice(&chunk);
                    }
                }
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
        received.push(Received { file: ModelFile { name, bytes: stored.bytes, sha256: stored.sha256 }, probe });
    }
    Ok(received)
}

fn validate_model(id: &str, tenant_id: &str, name: Option<String>, mut received: Vec<Received>) -> ApiResult<ModelRow> {
    let present = |n: &str| received.iter().any(|r| r.file.name == n);
    let mut missing = Vec::new();
    for required in ["config.json", "model.safetensors"] {
        if !present(required) {
            missing.push(FieldError::new(required, "required file is missing"));
        }
    }
    if !present("tokenizer.json") && !present("vocab.txt") {
        missing.push(FieldError::new("tokenizer.json", "a tokenizer is required: tokenizer.json or vocab.txt"));
    }
    if !missing.is_empty() {
        return Err(ApiError::Validation(missing));
    }
    let wi = received.iter().position(|r| r.file.name == "model.safetensors").unwrap();
    let header = match std::mem::replace(&mut received[wi].probe, Probe::Small(Vec::new())) {
        Probe::Weights(p) => p.finish().map_err(|e| ApiError::invalid("model.safetensors", e))?,
        Probe::Small(_) => unreachable!("model.safetensors is always probed"),
    };
    let weights_sha = received[wi].file.sha256.clone();
    let find = |n: &str| received.iter().find(|r| r.file.name == n);
    let small = |n: &str| -> Option<&[u8]> {
        match &find(n)?.probe {
            Probe::Small(b) => Some(b.as_slice()),
            Probe::Weights(_) => None,
        }
    };
    let summary =
        arch::summarize(small("config.json").unwrap(), &header).map_err(|e| ApiError::invalid("config.json", e))?;
    for n in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
        if let Some(bytes) = small(n) {
            check_json_file(n, bytes)?;
        }
    }
    if let Some(v) = small("vocab.txt") {
        let text = std::str::from_utf8(v).map_err(|_| ApiError::invalid("vocab.txt", "not valid UTF-8"))?;
        if text.lines().count() == 0 {
            return Err(ApiError::invalid("vocab.txt", "empty vocabulary"));
        }
    }
    let files: Vec<ModelFile> = received.iter().map(|r| r.file.clone()).collect();
    Ok(ModelRow {
        id: id.to_string(),
        tenant_id: tenant_id.to_string(),
        name,
        model_type: summary.family.name().to_string(),
        num_layers: summary.num_layers as i64,
        hidden_size: summary.hidden_size as i64,
        num_heads: summary.num_heads as i64,
        intermediate_size: summary.intermediate_size as i64,
        parameters: summary.parameters as i64,
        dtype: summary.dtype.name().to_string(),
        bytes: files.iter().map(|f| f.bytes as i64).sum(),
        sha256: weights_sha,
        files: serde_json::to_string(&files).map_err(ApiError::internal)?,
        created_at: now_ms(),
    })
}

/// Check a JSON side file without building it in memory (a tokenizer.json with a large
/// vocabulary would take several times its size as a `serde_json::Value`).
fn check_json_file(name: &str, bytes: &[u8]) -> ApiResult<()> {
    use serde::de::IgnoredAny;
    #[derive(Deserialize)]
    struct TokenizerFile {
        #[serde(rename = "model")]
        _model: TokenizerModel,
    }
    #[derive(Deserialize)]
    struct TokenizerModel {
        #[serde(rename = "type")]
        _kind: Option<IgnoredAny>,
    }
    let r = if name == "tokenizer.json" {
        serde_json::from_slice::<TokenizerFile>(bytes).map(drop)
    } else {
        serde_json::from_slice::<std::collections::HashMap<String, IgnoredAny>>(bytes).map(drop)
    };
    r.map_err(|e| {
        let msg = if e.is_data() { format!("not a {name} file: {e}") } else { format!("not valid JSON: {e}") };
        ApiError::invalid(name, msg)
    })
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
            st.artifacts.delete_prefix(&format!("models/{id}")).await?;
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
    let files: Vec<ModelFile> = serde_json::from_str(&row.files).unwrap_or_default();
    if !files.iter().any(|f| f.name == name) {
        return Err(ApiError::NotFound(format!("the model has no file {name}")));
    }
    download(&st.artifacts, &model_path(&id, &name), &name).await
}
