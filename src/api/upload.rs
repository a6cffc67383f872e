//! Multipart uploads, parsed with `multer` straight from the request body so that every part
//! streams to the artifact store chunk by chunk (a 218 MB upload raises the server's peak RSS
//! by about 25 MB; `tests/it/processes.rs` holds it under 64 MB).

use super::problem::{ApiError, ApiResult};
use axum::body::Body;
use axum::http::{header, HeaderMap};

/// Open a multipart body: 415 for another content type, 413 when Content-Length announces
/// more than `limit` (the limit is also enforced while streaming, by the caller).
pub fn open(headers: &HeaderMap, body: Body, limit: u64) -> ApiResult<multer::Multipart<'static>> {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ctype.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(ApiError::UnsupportedMediaType("expected multipart/form-data".into()));
    }
    let boundary =
        multer::parse_boundary(ctype).map_err(|e| ApiError::BadRequest(format!("bad multipart Content-Type: {e}")))?;
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            linger(body);
            return Err(ApiError::PayloadTooLarge(format!(
                "the upload ({len} bytes) exceeds the limit of {limit} bytes"
            )));
        }
    }
    Ok(multer::Multipart::new(body.into_data_stream(), boundary))
}

/// Most bytes, and longest, that a refused body is read and discarded for.
const LINGER_BYTES: usize = 64 * 1024 * 1024;
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and discards a refused request body in the background (bounded in bytes and time), so
/// that a client still sending it reads our response instead of a reset connection: closing a
/// socket with unread input makes the kernel send RST, and clients such as reqwest then report a
/// broken pipe instead of the 413 (nginx calls this a lingering close).
fn linger(body: Body) {
    use futures::StreamExt;
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut seen = 0usize;
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(chunk)) = stream.next().await {
                seen += chunk.len();
                if seen > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

pub fn malformed(e: multer::Error) -> ApiError {
    ApiError::BadRequest(format!("malformed multipart body: {e}"))
}
