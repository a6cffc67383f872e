//! The input of the forward and training-step benches: the first `BATCH` MRPC dev sentence
//! pairs (with their labels), tokenized with a model's tokenizer and padded to `SEQ` tokens —
//! the tensor PyTorch is given too (written as JSON where SECATEUR_BENCH_INPUT says).

pub const BATCH: usize = 32;
pub const SEQ: usize = 128;

/// Row-major `BATCH × SEQ` token ids, attention mask and token types, and one label per pair.
pub struct MrpcBatch {
    pub ids: Vec<u32>,
    pub mask: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub labels: Vec<usize>,
}

impl MrpcBatch {
    /// With the tokenizer of the model in `model_dir`.
    pub fn load(model_dir: &std::path::Path) -> MrpcBatch {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mrpc = std::fs::read_to_string(root.join("../shared/data/glue/MRPC/dev.tsv")).expect("MRPC dev.tsv");
        let rows: Vec<(String, String, usize)> = mrpc
            .trim_start_matches('\u{feff}')
            .lines()
            .skip(1)
            .take(BATCH)
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f[3].to_string(), f[4].to_string(), f[0].parse().unwrap())
            })
            .collect();
        let mut tok = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
        tok.with_truncation(Some(tokenizers::TruncationParams { max_length: SEQ, ..Default::default() })).unwrap();
        tok.with_padding(Some(tokenizers::PaddingParams {
            strategy: tokenizers::PaddingStrategy::Fixed(SEQ),
            ..Default::default()
        }));
        let enc =
            tok.encode_batch(rows.iter().map(|(a, b, _)| (a.as_str(), b.as_str())).collect::<Vec<_>>(), true).unwrap();
        let flat =
            |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| enc.iter().flat_map(|e| f(e).to_vec()).collect::<Vec<u32>>();
        let batch = MrpcBatch {
            ids: flat(&|e| e.get_ids()),
            mask: flat(&|e| e.get_attention_mask()),
            type_ids: flat(&|e| e.get_type_ids()),
            labels: rows.iter().map(|r| r.2).collect(),
        };
        if let Ok(path) = std::env::var("SECATEUR_BENCH_INPUT") {
            let json = serde_json::json!({"input_ids": batch.ids, "attention_mask": batch.mask, "token_type_ids": batch.type_ids, "labels": batch.labels, "batch": BATCH, "seq": SEQ});
            std::fs::write(path, json.to_string()).unwrap();
        }
        batch
    }

    /// The fraction of positions that are real tokens.
    pub fn real_tokens(&self) -> f64 {
        self.mask.iter().filter(|m| **m == 1).count() as f64 / self.mask.len() as f64
    }
}
