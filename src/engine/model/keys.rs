//! What every `config.json` parser shares: sizes that must be positive integers, optional keys
//! whose wrong-typed values count as absent, and deserialization whose faults name the key.

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::Deserialize;
use serde_json::Value;

/// A size: a positive integer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Positive(pub(crate) u64);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        v.as_u64().filter(|&n| n > 0).map(Positive).ok_or_else(|| D::Error::custom("must be a positive integer"))
    }
}

/// An optional key whose value of the wrong type counts as absent.
pub(crate) fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(T::deserialize(Value::deserialize(d)?).ok())
}

/// Deserialize one family's keys from the config object; a fault names its key.
pub(crate) fn keys<T: DeserializeOwned>(cfg: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(cfg).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        match msg.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
            Some(field) => format!("missing {field}"),
            None => format!("{path} {msg}"),
        }
    })
}
