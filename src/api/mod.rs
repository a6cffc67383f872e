//! The HTTP API: one router per resource, the auth extractor, problem+json errors, and the
//! operational endpoints. Handlers are thin: they parse, call the store / artifacts / domain
//! code, and shape responses.

pub mod auth;
pub mod datasets;
pub mod jobs;
pub mod models;
pub mod ops;
pub mod problem;
pub mod upload;

use crate::artifacts::Artifacts;
use crate::store::Store;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use problem::{problem_response, ApiError, PROBLEM_JSON};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub artifacts: Artifacts,
    pub max_upload_bytes: u64,
    pub max_dataset_bytes: u64,
    pub max_attempts: u32,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Secateur", description = "Pruning-as-a-service for BERT-family transformer models. Every `/v1` route needs `Authorization: Bearer <api key>`; errors are RFC 9457 `application/problem+json`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(problem::Problem, problem::FieldError)),
    tags((name = "models"), (name = "datasets"), (name = "jobs"), (name = "operations"))
)]
struct ApiDoc;

struct BearerAuth;
impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(models::router())
        .merge(datasets::router())
        .merge(jobs::router())
        .merge(ops::router())
}

/// The OpenAPI description, as served at `/openapi.json` and printed by `secateur openapi`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let (router, spec) = api_router().split_for_parts();
    let x_request_id = HeaderName::from_static("x-request-id");
    router
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", spec))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn(problem_for_plain_errors))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// Errors produced outside our handlers (unknown method, extractor rejections, panics) come as
/// plain text or empty bodies: turn them into problem+json too.
async fn problem_for_plain_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if is_problem {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(resp.into_body(), 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let detail = if status.is_server_error() {
        tracing::error!(status = status.as_u16(), body = %text, "internal error outside a handler");
        Some("an internal error occurred; it has been logged".to_string())
    } else if text.is_empty() {
        None
    } else {
        Some(text)
    };
    let mut out = problem_response(status, detail, vec![]);
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("secateur_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("secateur_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Query of list routes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1..=200 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

pub struct Page {
    pub limit: i64,
    pub before: Option<String>,
}

impl PageQuery {
    pub fn parse(&self) -> Result<Page, ApiError> {
        let limit = match &self.limit {
            None => 50,
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=200).contains(n))
                .ok_or_else(|| ApiError::invalid("limit", "limit must be an integer in 1..=200"))?,
        };
        let before = match &self.cursor {
            None => None,
            Some(c) => Some(
                uuid::Uuid::parse_str(c)
                    .map_err(|_| ApiError::invalid("cursor", "cursor is not one this API returned"))?
                    .to_string(),
            ),
        };
        Ok(Page { limit, before })
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> List<T> {
    pub fn new(items: Vec<T>, limit: i64, id: impl Fn(&T) -> String) -> Self {
        let next_cursor = if items.len() as i64 == limit { items.last().map(&id) } else { None };
        List { items, next_cursor }
    }
}

/// Ids in paths are UUIDs; anything else is simply not found.
pub fn path_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id).map(|u| u.to_string()).map_err(|_| ApiError::NotFound("not found".into()))
}

/// Stream a stored object as a download.
pub async fn download(artifacts: &Artifacts, path: &crate::artifacts::Key, name: &str) -> Result<Response, ApiError> {
    let Some((size, stream)) = artifacts.get_stream(path).await? else {
        return Err(ApiError::NotFound(format!("file {name} not found")));
    };
    let ctype = if name.ends_with(".json") {
        "application/json"
    } else if name.ends_with(".txt") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""))
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}
