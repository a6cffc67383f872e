//! Operational endpoints: liveness, readiness (checks the store), Prometheus metrics.

use super::problem::ApiError;
use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(metrics_text))
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, body = Health), (status = 503, body = super::problem::Problem, content_type = "application/problem+json")))]
async fn readyz(State(st): State<AppState>) -> Result<Json<Health>, axum::response::Response> {
    match st.store.ping().await {
        Ok(()) => Ok(Json(Health { status: "ready".into() })),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "readiness check failed");
            Err(super::problem::problem_response(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                Some("the store is not reachable".into()),
                vec![],
            ))
        }
    }
}

/// Prometheus metrics: HTTP requests by route and status, jobs by status, queue depth, job
/// durations.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics_text(State(st): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let counts = st.store.job_counts().await?;
    for s in ["queued", "running", "succeeded", "failed", "cancelled"] {
        let n = counts.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
        metrics::gauge!("secateur_jobs", "status" => s).set(n as f64);
        if s == "queued" {
            metrics::gauge!("secateur_queue_depth").set(n as f64);
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()))
}
