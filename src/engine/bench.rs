//! The inference forward of a checkpoint timed as this runtime runs it (`secateur bench`): a
//! seeded batch of random token ids of a given shape, no padding, the median of several runs,
//! and the representation (dense, sparse, int8) each linear map ran with.

use super::cpu::fused::Seq;
use super::cpu::matrix::Choice;
use super::io::{compressed, st};
use super::model::decoder::Decoder;
use super::model::{Encoder, ModelConfig, ModelError};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub batch: usize,
    pub seq_len: usize,
    /// Timed forwards (after one untimed warm-up, which also chooses the representations).
    pub runs: usize,
    pub seed: u64,
    pub choice: Choice,
}

/// What one benchmark measured.
#[derive(Debug, Serialize)]
pub struct Timing {
    pub model_type: String,
    pub batch: usize,
    pub seq_len: usize,
    pub runs: usize,
    pub threads: usize,
    /// How the maps were to be represented: `fastest`, `dense` or `int8_dynamic`.
    pub runtime: &'static str,
    /// Median wall time of one forward, milliseconds.
    pub ms: f64,
    pub ms_min: f64,
    pub ms_max: f64,
    pub seq_per_s: f64,
    /// The warm-up forward, including loading the weights into the runtime's representations.
    pub warmup_ms: f64,
    /// Per layer, each linear map's representation.
    pub layers: Vec<BTreeMap<&'static str, &'static str>>,
    /// How many maps ran with each representation.
    pub representations: BTreeMap<&'static str, usize>,
}

fn runtime_name(c: Choice) -> &'static str {
    match c {
        Choice::Fastest => "fastest",
        Choice::Dense => "dense",
        Choice::Int8Dynamic => "int8_dynamic",
    }
}

/// Random ids in the vocabulary, never the padding id (RoBERTa would count it as padding).
fn random_ids(n: usize, vocab: u32, pad: u32, seed: u64) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let id = rng.gen_range(0..vocab.saturating_sub(1).max(1));
            if id >= pad && vocab > 1 {
                id + 1
            } else {
                id
            }
        })
        .collect()
}

/// The batch `run` feeds the model: `batch × seq_len` ids drawn with the workload's seed
/// (row-major), the same for every model with the same vocabulary and padding id.
pub fn input_ids(cfg: &ModelConfig, w: &Workload) -> Result<Vec<u32>, ModelError> {
    let vocab = u32::try_from(cfg.vocab_size).map_err(|_| ModelError::Invalid("vocab_size too large".into()))?;
    Ok(random_ids(w.batch * w.seq_len, vocab, cfg.pad_token_id, w.seed))
}

/// A loaded model with its input batch.
enum Runner {
    Encoder(Encoder, Tensor, Tensor),
    Decoder(Decoder, Vec<u32>, Vec<Seq>),
}

impl Runner {
    fn forward(&self) -> Result<(), ModelError> {
        match self {
            Runner::Encoder(enc, ids, mask) => enc.forward(ids, None, mask).map(|_| ()),
            Runner::Decoder(dec, ids, seqs) => dec.forward(ids, seqs).map(|_| ()),
        }
    }

    /// Per layer, each linear map's representation (the decoders' maps are dense).
    fn layers(&self) -> Vec<BTreeMap<&'static str, &'static str>> {
        match self {
            Runner::Encoder(enc, ..) => enc.representations().into_iter().map(|l| l.into_iter().collect()).collect(),
            Runner::Decoder(dec, ..) => {
                let names = ["qkv", "attention_output", "mlp_in", "mlp_out"];
                dec.layers.iter().map(|_| names.iter().map(|n| (*n, "dense")).collect()).collect()
            }
        }
    }
}

/// Times the forward of the checkpoint `config.json` + `model.safetensors` on `w`.
pub fn run(config_json: &[u8], safetensors: &[u8], w: &Workload) -> Result<Timing, ModelError> {
    if w.batch == 0 || w.seq_len == 0 || w.runs == 0 {
        return Err(ModelError::Invalid("batch, sequence length and runs must be at least 1".into()));
    }
    let cfg = ModelConfig::parse(config_json).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
    let ids = input_ids(&cfg, w)?;
    // A compressed-tensors int8 checkpoint runs int8 (unless asked otherwise), from its own
    // int8 values: the loader reads floats, the runtime quantizes them back to the same ones.
    let header = st::parse(safetensors).map_err(ModelError::Invalid)?;
    let dequantized = compressed::decompress(safetensors, &header, config_json)?.map(|(weights, _)| weights);
    let choice = match w.choice {
        Choice::Fastest if dequantized.is_some() => Choice::Int8Dynamic,
        asked => asked,
    };
    let safetensors = dequantized.as_deref().unwrap_or(safetensors);
    let model = if cfg.decoder.is_some() {
        if choice != Choice::Dense && choice != Choice::Fastest {
            return Err(ModelError::Invalid(
                "the decoder runtime runs dense f32 only (int8 is not written yet)".into(),
            ));
        }
        let seqs = Seq::packed(&vec![w.seq_len; w.batch]);
        Runner::Decoder(Decoder::from_files(config_json, safetensors)?, ids, seqs)
    } else {
        let mut enc = Encoder::from_weights(&cfg, safetensors, &Device::Cpu)?;
        enc.set_runtime(choice);
        let t = |v: Vec<u32>| Tensor::from_vec(v, (w.batch, w.seq_len), &Device::Cpu);
        let (ids, mask) = (t(ids)?, t(vec![1u32; w.batch * w.seq_len])?);
        Runner::Encoder(enc, ids, mask)
    };
    let clock = std::time::Instant::now();
    model.forward()?;
    let warmup_ms = clock.elapsed().as_secs_f64() * 1e3;
    let mut ms = Vec::with_capacity(w.runs);
    for _ in 0..w.runs {
        let clock = std::time::Instant::now();
        model.forward()?;
        ms.push(clock.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let median = if ms.len() % 2 == 1 { ms[ms.len() / 2] } else { (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0 };
    let layers = model.layers();
    let mut representations = BTreeMap::new();
    for l in &layers {
        for kind in l.values() {
            *representations.entry(*kind).or_insert(0) += 1;
        }
    }
    Ok(Timing {
        model_type: cfg.arch.name().to_string(),
        batch: w.batch,
        seq_len: w.seq_len,
        runs: w.runs,
        threads: rayon::current_num_threads(),
        runtime: runtime_name(choice),
        ms: median,
        ms_min: ms[0],
        ms_max: ms[ms.len() - 1],
        seq_per_s: w.batch as f64 / (median / 1e3),
        warmup_ms,
        layers,
        representations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing;

    #[test]
    fn times_an_encoder_and_names_each_map() {
        let m = testing::TinyModel::default();
        let (config, weights) = (m.config_json().into_bytes(), m.safetensors());
        let w = Workload { batch: 2, seq_len: 8, runs: 3, seed: 1, choice: Choice::Dense };
        let t = run(&config, &weights, &w).unwrap();
        assert_eq!((t.model_type.as_str(), t.batch, t.seq_len, t.runs, t.runtime), ("bert", 2, 8, 3, "dense"));
        assert!(t.ms > 0.0 && t.ms_min <= t.ms && t.ms <= t.ms_max);
        assert!((t.seq_per_s - 2.0 / (t.ms / 1e3)).abs() < 1e-6);
        assert!(!t.layers.is_empty() && t.layers.iter().all(|l| l.len() == 4 && l.values().all(|k| *k == "dense")));
        assert_eq!(t.representations["dense"], 4 * t.layers.len());
        let q = run(&config, &weights, &Workload { choice: Choice::Int8Dynamic, ..w }).unwrap();
        assert_eq!(q.representations["int8"], 4 * q.layers.len());
        assert!(run(&config, &weights, &Workload { runs: 0, ..w }).is_err());
    }

    #[test]
    fn runs_a_compressed_int8_export_in_int8() {
        let m = testing::TinyModel::default();
        let (config, weights) = (m.config_json(), m.safetensors());
        let header = st::parse(&weights).unwrap();
        let arch = ModelConfig::parse(config.as_bytes()).unwrap().arch;
        let targets: Vec<String> = header.tensors.keys().filter(|n| arch.is_linear_weight(n)).cloned().collect();
        let (file, cfg, _) = compressed::int8_dynamic(&weights, &header, config.as_bytes(), arch, &targets).unwrap();
        let w = Workload { batch: 2, seq_len: 8, runs: 1, seed: 1, choice: Choice::Fastest };
        let t = run(&cfg, &file, &w).unwrap();
        assert_eq!((t.runtime, t.representations["int8"]), ("int8_dynamic", 8));
    }

    #[test]
    fn times_a_decoder() {
        let m = testing::TinyDecoder::default();
        let w = Workload { batch: 2, seq_len: 8, runs: 1, seed: 1, choice: Choice::Fastest };
        let t = run(m.config_json().as_bytes(), &m.safetensors(), &w).unwrap();
        assert_eq!((t.model_type.as_str(), t.layers.len()), ("llama", 2));
        assert_eq!(t.representations["dense"], 8);
        let err = run(m.config_json().as_bytes(), &m.safetensors(), &Workload { choice: Choice::Int8Dynamic, ..w });
        assert!(err.is_err());
    }

    #[test]
    fn random_ids_skip_padding() {
        let ids = random_ids(10_000, 5, 1, 3);
        assert!(ids.iter().all(|&i| i < 5 && i != 1));
        assert!((0..5).filter(|&v| v != 1).all(|v| ids.contains(&v)));
    }
}
