//! Field-level validation faults, shared by every layer that checks user input (job specs,
//! uploads, query parameters) and turned into problem+json by the API.

use serde::Serialize;
use utoipa::ToSchema;

/// One field-level fault inside a validation problem.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct FieldError {
    /// Where the fault is: a JSON path (`pruning.sparsity`), a multipart part name
    /// (`model.safetensors`) or a query parameter.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Deserialize JSON, turning serde's complaint into a field error naming the field at fault
/// (`body` for a syntax error).
pub fn deserialize_named<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // serde reports a missing field at its parent: name the field itself.
        let named = msg.split('`').nth(1).filter(|_| msg.starts_with("missing field"));
        let field = match (named, path.as_str()) {
            _ if inner.is_syntax() || inner.is_eof() => "body".to_string(),
            (Some(n), ".") => n.to_string(),
            (Some(n), p) => format!("{p}.{n}"),
            (None, ".") => "body".to_string(),
            (None, p) => p.to_string(),
        };
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        FieldError::new(field, msg)
    })
}
