//! What the service stores as a model, and how an upload is checked while it streams: which
//! files a model directory may hold, and the inspection of each (the safetensors header through
//! `engine::io::st::StreamProbe`, `config.json` against the tensors through `engine::model::arch`, the
//! tokenizer files for shape). The HTTP layer streams the parts and stores them; this decides
//! whether they form a model.

use crate::engine::io::compressed;
use crate::engine::io::st::{self, Dtype};
use crate::engine::model::config::{self, ModelConfig};
use crate::validation::FieldError;
use serde::Deserialize;

/// Files a model may hold (each an upload part named after the file).
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

enum Probe {
    Weights(st::StreamProbe),
    Small(Vec<u8>),
}

/// The upload of one model, inspected part by part.
#[derive(Default)]
pub struct ModelUpload {
    parts: Vec<(String, Probe)>,
    /// Accept a model without tokenizer files (a local directory pruned by magnitude needs
    /// none; an upload always brings one, since jobs that read text tokenize with it).
    tokenizer_optional: bool,
}

/// What an accepted upload is: the columns of its `models` row.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    pub model_type: String,
    pub shape: ModelShape,
    pub parameters: u64,
    pub dtype: String,
}

/// The dimensions of a model that a job spec is checked against (as its `config.json` states
/// them; a compact checkpoint may have fewer units in some layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    /// `config.json`'s `model_type`, one of the supported families.
    pub model_type: String,
    pub num_layers: u64,
    pub num_heads: u64,
    pub hidden_size: u64,
    pub intermediate_size: u64,
}

impl ModelUpload {
    /// A new part named `name` starts.
    pub fn begin(&mut self, name: &str) -> Result<(), FieldError> {
        if !MODEL_FILES.contains(&name) {
            let field = if name.is_empty() { "(unnamed part)" } else { name };
            return Err(FieldError::new(
                field,
                format!("unexpected part; a model upload holds the files {}", MODEL_FILES.join(", ")),
            ));
        }
        if self.parts.iter().any(|(n, _)| n == name) {
            return Err(FieldError::new(name, "this file appears twice"));
        }
        let probe = if name == "model.safetensors" {
            Probe::Weights(st::StreamProbe::default())
        } else {
            Probe::Small(Vec::new())
        };
        self.parts.push((name.to_string(), probe));
        Ok(())
    }

    /// The next bytes of the part begun last.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), FieldError> {
        let Some((name, probe)) = self.parts.last_mut() else {
            return Err(FieldError::new("body", "no part has begun"));
        };
        match probe {
            Probe::Weights(p) => p.feed(chunk),
            Probe::Small(buf) => {
                if buf.len() + chunk.len() > MAX_SMALL_FILE {
                    return Err(FieldError::new(name.as_str(), format!("larger than {MAX_SMALL_FILE} bytes")));
                }
                buf.extend_from_slice(chunk);
            }
        }
        Ok(())
    }

    /// All parts received: the required files are there and every file is valid.
    pub fn finish(mut self) -> Result<ModelSummary, Vec<FieldError>> {
        let present = |n: &str| self.parts.iter().any(|(p, _)| p == n);
        let mut missing = Vec::new();
        for required in ["config.json", "model.safetensors"] {
            if !present(required) {
                missing.push(FieldError::new(required, "required file is missing"));
            }
        }
        if !self.tokenizer_optional && !present("tokenizer.json") && !present("vocab.txt") {
            missing.push(FieldError::new("tokenizer.json", "a tokenizer is required: tokenizer.json or vocab.txt"));
        }
        if !missing.is_empty() {
            return Err(missing);
        }
        let one = |e: FieldError| vec![e];
        let wi = self.parts.iter().position(|(n, _)| n == "model.safetensors").unwrap();
        let header = match std::mem::replace(&mut self.parts[wi].1, Probe::Small(Vec::new())) {
            Probe::Weights(p) => p.finish().map_err(|e| one(FieldError::new("model.safetensors", e)))?,
            Probe::Small(_) => unreachable!("model.safetensors is always probed"),
        };
        let small = |n: &str| -> Option<&[u8]> {
            match &self.parts.iter().find(|(p, _)| p == n)?.1 {
                Probe::Small(b) => Some(b.as_slice()),
                Probe::Weights(_) => None,
            }
        };
        let (cfg, totals) = ModelConfig::parse(small("config.json").unwrap())
            .and_then(|cfg| config::check(&cfg, &header).map(|t| (cfg, t)))
            .map_err(|e| one(FieldError::new("config.json", e)))?;
        // A compressed-tensors int8 checkpoint: its scales and format, before anything reads it.
        let int8 = compressed::check(&header, small("config.json").unwrap())
            .map_err(|(file, e)| one(FieldError::new(file, e)))?;
        for n in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] {
            if let Some(bytes) = small(n) {
                check_json_file(n, bytes).map_err(one)?;
            }
        }
        if let Some(v) = small("vocab.txt") {
            let text = std::str::from_utf8(v).map_err(|_| one(FieldError::new("vocab.txt", "not valid UTF-8")))?;
            if text.lines().count() == 0 {
                return Err(one(FieldError::new("vocab.txt", "empty vocabulary")));
            }
        }
        Ok(ModelSummary {
            model_type: cfg.arch.name().to_string(),
            shape: ModelShape {
                model_type: cfg.arch.name().to_string(),
                num_layers: cfg.num_layers,
                num_heads: cfg.num_heads,
                hidden_size: cfg.hidden_size,
                intermediate_size: cfg.intermediate_size,
            },
            parameters: if int8 { compressed::parameters(&header) } else { totals.parameters },
            dtype: if int8 { Dtype::I8.name().into() } else { totals.dtype.name().to_string() },
        })
    }
}

/// Inspects a model directory on disk as an upload of its files would be (the local commands
/// validate as the API does), reading each file in bounded chunks.
pub fn inspect_dir(dir: &std::path::Path) -> Result<ModelSummary, Vec<FieldError>> {
    use std::io::Read;
    let mut upload = ModelUpload { tokenizer_optional: true, ..Default::default() };
    for name in MODEL_FILES.iter().filter(|f| dir.join(f).is_file()) {
        upload.begin(name).map_err(|e| vec![e])?;
        let mut f = std::fs::File::open(dir.join(name)).map_err(|e| vec![FieldError::new(*name, e.to_string())])?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| vec![FieldError::new(*name, e.to_string())])?;
            if n == 0 {
                break;
            }
            upload.feed(&buf[..n]).map_err(|e| vec![e])?;
        }
    }
    upload.finish()
}

/// Check a JSON side file without building it in memory (a tokenizer.json with a large
/// vocabulary would take several times its size as a `serde_json::Value`).
fn check_json_file(name: &str, bytes: &[u8]) -> Result<(), FieldError> {
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
        FieldError::new(name, msg)
    })
}
