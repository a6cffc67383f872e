//! Strict validation of the safetensors container, usable on a stream (uploads) or on bytes.
//!
//! Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data buffer. The
//! header maps tensor names to `{dtype, shape, data_offsets: [begin, end]}` relative to the data
//! buffer, plus an optional `__metadata__` map of strings. We require: a bounded N, valid
//! UTF-8 JSON, known dtypes, `end - begin == product(shape) * dtype size` (no overflow), and
//! the tensors, sorted by offset, tiling the data buffer exactly (no gap, no overlap).

use serde_json::Value;
use std::collections::BTreeMap;

/// Largest header accepted (the reference implementation uses 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E4M3" => Dtype::F8E4M3,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 | Dtype::F8E4M3 | Dtype::F8E5M2)
    }
}

/// The elements of a float tensor's little-endian bytes as f32 (`None` for other dtypes and F8).
pub fn floats(data: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        _ => return None,
    })
}

/// Number of non-zero elements (±0 both count as zero).
pub fn count_nonzeros(data: &[u8], dtype: Dtype) -> u64 {
    let s = dtype.size() as usize;
    match dtype {
        Dtype::F32 => {
            data.chunks_exact(4).filter(|c| f32::from_le_bytes((*c).try_into().unwrap()) != 0.0).count() as u64
        }
        Dtype::F64 => {
            data.chunks_exact(8).filter(|c| f64::from_le_bytes((*c).try_into().unwrap()) != 0.0).count() as u64
        }
        // f16/bf16: zero iff all bits but the sign are zero.
        Dtype::F16 | Dtype::BF16 => {
            data.chunks_exact(2).filter(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7fff) != 0).count() as u64
        }
        _ => data.chunks_exact(s).filter(|c| c.iter().any(|&b| b != 0)).count() as u64,
    }
}

/// Writes `values` into `out` in `dtype` (round to nearest); false for other dtypes or a length
/// mismatch, leaving `out` untouched.
pub fn write_floats(values: &[f32], dtype: Dtype, out: &mut [u8]) -> bool {
    let size = dtype.size() as usize;
    if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) || out.len() != values.len() * size {
        return false;
    }
    for (v, o) in values.iter().zip(out.chunks_exact_mut(size)) {
        match dtype {
            Dtype::F32 => o.copy_from_slice(&v.to_le_bytes()),
            Dtype::F16 => o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes()),
            Dtype::BF16 => o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes()),
            _ => o.copy_from_slice(&f64::from(*v).to_le_bytes()),
        }
    }
    true
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte range inside the data buffer.
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

#[derive(Debug, Clone)]
pub struct Header {
    /// Bytes before the data buffer (8 + header length).
    pub data_start: u64,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// The tensors in the order of their bytes in the file (the order a rewrite keeps).
    pub fn in_file_order(&self) -> Vec<(&String, &TensorInfo)> {
        let mut order: Vec<(&String, &TensorInfo)> = self.tensors.iter().collect();
        order.sort_by_key(|(_, t)| t.begin);
        order
    }

    /// The bytes of tensor `t` in `file`, the whole safetensors file this header was read from.
    pub fn data<'a>(&self, file: &'a [u8], t: &TensorInfo) -> &'a [u8] {
        &file[(self.data_start + t.begin) as usize..(self.data_start + t.end) as usize]
    }

    /// The `__metadata__` to write into a rewrite of the file ([`serialize`]): `None` when empty.
    pub fn metadata_to_keep(&self) -> Option<&BTreeMap<String, String>> {
        (!self.metadata.is_empty()).then_some(&self.metadata)
    }
}

/// Parse and check a header against the total file length.
pub fn parse_header(header_json: &[u8], header_len: u64, file_len: u64) -> Result<Header, String> {
    let data_start = 8 + header_len;
    if file_len < data_start {
        return Err(format!("file is {file_len} bytes, shorter than its declared header ({header_len} bytes)"));
    }
    let data_len = file_len - data_start;
    let text = std::str::from_utf8(header_json).map_err(|_| "header is not valid UTF-8".to_string())?;
    let value: Value =
        serde_json::from_str(text.trim_end_matches(' ')).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let obj = value.as_object().ok_or("header is not a JSON object")?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in obj {
        if name == "__metadata__" {
            let m = entry.as_object().ok_or("__metadata__ is not an object")?;
            for (k, v) in m {
                let s = v.as_str().ok_or_else(|| format!("__metadata__.{k} is not a string"))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let e = entry.as_object().ok_or_else(|| format!("tensor {name}: entry is not an object"))?;
        if let Some(extra) = e.keys().find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets")) {
            return Err(format!("tensor {name}: unknown key {extra:?}"));
        }
        let dtype_s = e.get("dtype").and_then(Value::as_str).ok_or_else(|| format!("tensor {name}: missing dtype"))?;
        let dtype = Dtype::parse(dtype_s).ok_or_else(|| format!("tensor {name}: unknown dtype {dtype_s:?}"))?;
        let shape = e
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("tensor {name}: missing shape"))?
            .iter()
            .map(|d| d.as_u64().ok_or_else(|| format!("tensor {name}: shape entries must be non-negative integers")))
            .collect::<Result<Vec<u64>, String>>()?;
        let offs = e
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .ok_or_else(|| format!("tensor {name}: data_offsets must be [begin, end]"))?;
        let begin = offs[0].as_u64().ok_or_else(|| format!("tensor {name}: bad data_offsets"))?;
        let end = offs[1].as_u64().ok_or_else(|| format!("tensor {name}: bad data_offsets"))?;
        if begin > end {
            return Err(format!("tensor {name}: data_offsets begin {begin} > end {end}"));
        }
        if end > data_len {
            return Err(format!("tensor {name}: data_offsets end {end} is past the data buffer ({data_len} bytes)"));
        }
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: shape {shape:?} overflows"))?;
        if end - begin != expected {
            return Err(format!(
                "tensor {name}: {} bytes stored but shape {shape:?} of {dtype_s} needs {expected}",
                end - begin
            ));
        }
        tensors.insert(name.clone(), TensorInfo { dtype, shape, begin, end });
    }
    let mut spans: Vec<(u64, u64, &String)> = tensors.iter().map(|(n, t)| (t.begin, t.end, n)).collect();
    spans.sort();
    let mut cursor = 0u64;
    for (b, e, n) in spans {
        if b < cursor {
            return Err(format!("tensor {n}: data overlaps the previous tensor"));
        }
        if b > cursor {
            return Err(format!("tensor {n}: gap of {} bytes before its data", b - cursor));
        }
        cursor = e;
    }
    if cursor != data_len {
        return Err(format!("tensors cover {cursor} bytes but the data buffer holds {data_len}"));
    }
    Ok(Header { data_start, tensors, metadata })
}

/// Parse a whole in-memory file.
pub fn parse(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < 8 {
        return Err("file is shorter than the 8-byte header length".into());
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if n > MAX_HEADER_BYTES {
        return Err(format!("header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes"));
    }
    let end =
        8usize.checked_add(n as usize).filter(|&e| e <= bytes.len()).ok_or("header runs past the end of the file")?;
    parse_header(&bytes[8..end], n, bytes.len() as u64)
}

/// Incremental validator: feed the file's chunks in order, then [`StreamProbe::finish`].
/// Keeps only the header in memory.
#[derive(Default)]
pub struct StreamProbe {
    head: Vec<u8>,
    header_len: Option<u64>,
    total: u64,
    error: Option<String>,
}

impl StreamProbe {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if self.error.is_some() {
            return;
        }
        loop {
            let want = match self.header_len {
                None => 8,
                Some(n) => 8 + n as usize,
            };
            if self.head.len() >= want || chunk.is_empty() {
                return;
            }
            let take = (want - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.header_len.is_none() && self.head.len() == 8 {
                let n = u64::from_le_bytes(self.head[..8].try_into().unwrap());
                if n > MAX_HEADER_BYTES {
                    self.error = Some(format!("header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes"));
                    return;
                }
                self.header_len = Some(n);
            }
        }
    }

    pub fn finish(self) -> Result<Header, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let n = self.header_len.ok_or("file is shorter than the 8-byte header length")?;
        if (self.head.len() as u64) < 8 + n {
            return Err("header runs past the end of the file".into());
        }
        parse_header(&self.head[8..], n, self.total)
    }
}

/// Build a safetensors file from (name, dtype, shape, raw little-endian bytes).
pub fn serialize(
    tensors: &[(String, Dtype, Vec<u64>, Vec<u8>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), serde_json::to_value(m).unwrap());
    }
    let mut offset = 0u64;
    for (name, dtype, shape, data) in tensors {
        let end = offset + data.len() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset as usize);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        serialize(
            &[("a".into(), Dtype::F32, vec![2, 3], vec![0u8; 24]), ("b".into(), Dtype::F16, vec![4], vec![1u8; 8])],
            None,
        )
    }

    fn with_header(json: &str, data_len: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    #[test]
    fn roundtrip_and_stream_agree() {
        let bytes = sample();
        let h = parse(&bytes).unwrap();
        assert_eq!(h.tensors["a"].shape, vec![2, 3]);
        assert_eq!(h.tensors["b"].dtype, Dtype::F16);
        for chunk in [1usize, 3, 7, 1000] {
            let mut p = StreamProbe::default();
            for c in bytes.chunks(chunk) {
                p.feed(c);
            }
            let h2 = p.finish().unwrap();
            assert_eq!(h2.tensors, h.tensors);
        }
    }

    #[test]
    fn rejects_malformed_files() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "shorter than the 8-byte"),
            (
                {
                    let mut v = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
                    v.extend([0u8; 8]);
                    v
                },
                "exceeds the limit",
            ),
            (with_header("{not json", 0), "not valid JSON"),
            (with_header(r#"{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#, 4), "unknown dtype"),
            (with_header(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, 4), "needs 8"),
            (with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 8), "cover 4 bytes"),
            (with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8), "gap of 4"),
            (
                with_header(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                    8,
                ),
                "overlaps",
            ),
            (with_header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 2), "past the data buffer"),
            (
                with_header(r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}}"#, 4),
                "overflows",
            ),
            (with_header(r#"{"__metadata__":{"k":1}}"#, 0), "not a string"),
        ];
        for (bytes, want) in cases {
            let err = parse(&bytes).unwrap_err();
            assert!(err.contains(want), "expected {want:?} in {err:?}");
            let mut p = StreamProbe::default();
            p.feed(&bytes);
            let err2 = p.finish().unwrap_err();
            assert!(err2.contains(want), "stream: expected {want:?} in {err2:?}");
        }
    }
}
