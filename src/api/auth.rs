//! API keys: random 256-bit tokens shown once and stored as SHA-256 hashes (a fast hash is
//! right for high-entropy secrets). The [`Auth`] extractor resolves the tenant of a request.

use super::problem::ApiError;
use super::AppState;
use crate::store::{Principal, Store};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "sk_";

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (`sk_` + 43 base64url characters = 256 bits).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Create a key for `tenant` (created if missing); returns the key, which is not stored.
pub async fn create_key(store: &Store, tenant: &str, admin: bool) -> anyhow::Result<String> {
    let tenant_id = store.ensure_tenant(tenant).await?;
    let key = generate_key();
    store.insert_api_key(&tenant_id, &hash_key(&key), &key[..KEY_PREFIX.len() + 6], admin).await?;
    Ok(key)
}

/// On first start with an empty store: create an admin key and write it to `path` (mode 0600).
/// Returns whether a key was created. The key itself is never logged.
pub async fn bootstrap_admin_key(store: &Store, path: &std::path::Path) -> anyhow::Result<bool> {
    if store.count_api_keys().await? > 0 {
        return Ok(false);
    }
    let key = create_key(store, "default", true).await?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(key.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(true)
}

/// The authenticated caller.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization header (expected: Bearer <api key>)".into())
        })?;
        let value = header.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be: Bearer <api key>".into()))?;
        match state.store.find_principal(&hash_key(key)).await? {
            Some(p) => Ok(Auth(p)),
            None => Err(ApiError::Unauthorized("invalid API key".into())),
        }
    }
}
