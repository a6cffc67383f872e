//! Bytes in and out: the safetensors container (`st`: strict validation, incremental probing for
//! uploads, the serializer, dtype decoding) and the export layouts (`export`).

pub mod compressed;
pub mod export;
pub mod st;
