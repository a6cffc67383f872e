//! RFC 9457 `application/problem+json` errors with a stable `type` per error kind.
//!
//! Handlers return [`ApiError`]; internal errors are logged with the request id (the tracing
//! span carries it) and answered with a generic 500 that leaks nothing.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

pub use crate::validation::FieldError;

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the error kind, e.g. `urn:secateur:problem:validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Field-level faults (validation problems only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthorized(String),
    #[error("not found")]
    NotFound(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }
}

/// (type suffix, title) for a status code, used for errors produced outside our handlers
/// (unknown route, wrong method, extractor rejections).
pub fn kind_for_status(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 => ("bad-request", "Bad request"),
        401 => ("unauthorized", "Authentication required"),
        404 => ("not-found", "Not found"),
        405 => ("method-not-allowed", "Method not allowed"),
        409 => ("conflict", "Conflict"),
        413 => ("payload-too-large", "Payload too large"),
        415 => ("unsupported-media-type", "Unsupported media type"),
        422 => ("validation", "Validation failed"),
        408 => ("timeout", "Request timeout"),
        _ if status.is_server_error() => ("internal", "Internal server error"),
        _ => ("client-error", "Client error"),
    }
}

pub fn problem_response(status: StatusCode, detail: Option<String>, errors: Vec<FieldError>) -> Response {
    let (suffix, title) = kind_for_status(status);
    let body = Problem {
        kind: format!("urn:secateur:problem:{suffix}"),
        title: title.to_string(),
        status: status.as_u16(),
        detail,
        errors,
    };
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized(d) => {
                let mut r = problem_response(StatusCode::UNAUTHORIZED, Some(d), vec![]);
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            ApiError::NotFound(d) => problem_response(StatusCode::NOT_FOUND, Some(d), vec![]),
            ApiError::Validation(errors) => {
                let detail =
                    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
                problem_response(StatusCode::UNPROCESSABLE_ENTITY, Some(detail), errors)
            }
            ApiError::BadRequest(d) => problem_response(StatusCode::BAD_REQUEST, Some(d), vec![]),
            ApiError::Conflict(d) => problem_response(StatusCode::CONFLICT, Some(d), vec![]),
            ApiError::PayloadTooLarge(d) => {
                // The rest of the body is not read: tell the client not to reuse the connection.
                let mut r = problem_response(StatusCode::PAYLOAD_TOO_LARGE, Some(d), vec![]);
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
            ApiError::UnsupportedMediaType(d) => problem_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, Some(d), vec![]),
            ApiError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "internal error");
                problem_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some("an internal error occurred; it has been logged".into()),
                    vec![],
                )
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
