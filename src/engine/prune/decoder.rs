//! Wanda and SparseGPT on a decoder checkpoint, block by block as both papers' code runs them:
//! the calibration tokens enter block `l` as they come out of the blocks already pruned, the
//! inputs of its linear maps give each map's statistics (Wanda: ‖X_j‖₂ per input feature;
//! SparseGPT: the Hessian XᵀX), the block's targets are pruned in the checkpoint's bytes
//! (through the same per-map steps as the encoder's, in `calibrated`), and the tokens pass
//! through the pruned block into the next. Only one block's weights are held in f32 at a time;
//! the tokens go through in chunks of whole sequences, so the activations stay bounded too.

use super::calibrated::{not_linear, sparsegpt_one, wanda_one, Checkpoint, Matrices, Method, Step};
use super::sparsegpt::{Hessian, Options};
use super::wanda::Rule;
use crate::engine::cpu::fused::Seq;
use crate::engine::io::st::Header;
use crate::engine::model::arch::{Arch, Site};
use crate::engine::model::decoder::{DecoderConfig, DecoderLayer, Embeddings, Tensors};
use crate::engine::model::ModelError;

/// Rows (tokens) per chunk of calibration sequences.
const CHUNK_ROWS: usize = 4096;

/// One chunk of packed calibration sequences and its residual stream.
struct Chunk {
    seqs: Vec<Seq>,
    x: Vec<f32>,
    rope: Option<(Vec<f32>, Vec<f32>)>,
}

/// A target: the file's tensor name, its block, its module in the block and the input it reads.
struct Target<'a> {
    name: &'a String,
    layer: usize,
    module: &'static str,
    site: Site,
}

/// What a site's input adds up to over the calibration tokens, for the method that reads it.
enum Stat {
    /// Wanda.
    SquaredNorms(Vec<f64>),
    /// SparseGPT, with its options.
    Hessian(Hessian, Options),
}

/// Prunes `targets` (tensor names as the file spells them: the blocks' linear weights) of the
/// decoder checkpoint `bytes` in place by `method` and `rule`, calibrated on `sequences` of
/// token ids. `progress` gets `Step::Pruned(blocks done, blocks)`.
#[allow(clippy::too_many_arguments)]
pub fn prune<E: From<ModelError>>(
    method: Method,
    bytes: &mut [u8],
    header: &Header,
    cfg: &DecoderConfig,
    targets: &[String],
    sequences: &[Vec<u32>],
    rule: Rule,
    progress: &mut dyn FnMut(Step) -> Result<(), E>,
) -> Result<(), E> {
    let arch = Arch::Decoder(cfg.kind);
    if sequences.iter().all(|s| s.is_empty()) {
        return Err(ModelError::Invalid("calibrated pruning needs at least one calibration token".into()).into());
    }
    let mut chosen = Vec::with_capacity(targets.len());
    for name in targets {
        let found = arch.split_layer(name).and_then(|(layer, rest)| {
            let module = rest.strip_suffix(".weight")?;
            Site::ALL.iter().find_map(|&site| {
                let m = site.decoder_modules(cfg.kind).iter().find(|m| **m == module)?;
                Some(Target { name, layer, module: m, site })
            })
        });
        let view = Checkpoint::new(bytes, header, arch, std::slice::from_ref(name));
        chosen.push(found.ok_or_else(|| not_linear(method, &view, name))?);
    }
    let Some(last) = chosen.iter().map(|t| t.layer).max() else { return Ok(()) };
    let mut chunks = chunks(&Embeddings::load(&Tensors::new(bytes, header, cfg.kind), cfg)?, sequences)?;
    for l in 0..=last {
        let mut layer = DecoderLayer::load(&Tensors::new(bytes, header, cfg.kind), cfg, l)?;
        let here: Vec<&Target> = chosen.iter().filter(|t| t.layer == l).collect();
        if !here.is_empty() {
            let mut stats: Vec<(Site, Option<Stat>)> = Vec::new();
            for t in &here {
                if !stats.iter().any(|(s, _)| *s == t.site) {
                    stats.push((t.site, None));
                }
            }
            let mut failed: Option<candle_core::Error> = None;
            for c in &chunks {
                let mut x = c.x.clone();
                layer.forward_observed(&mut x, &c.seqs, c.rope.as_ref(), &mut |site, input| {
                    let Some((_, stat)) = stats.iter_mut().find(|(s, _)| *s == site) else { return };
                    let features = input.len() / c.seqs.iter().map(|s| s.queries).sum::<usize>().max(1);
                    let stat = stat.get_or_insert_with(|| match method {
                        Method::Wanda => Stat::SquaredNorms(vec![0.0; features]),
                        Method::SparseGpt(opts) => Stat::Hessian(Hessian::new(features), opts),
                    });
                    match stat {
                        Stat::SquaredNorms(acc) => {
                            for row in input.chunks_exact(features) {
                                acc.iter_mut().zip(row).for_each(|(a, v)| *a += (*v as f64) * (*v as f64));
                            }
                        }
                        Stat::Hessian(h, _) => {
                            if let Err(e) = h.add_rows(input) {
                                failed.get_or_insert(e);
                            }
                        }
                    }
                });
                if let Some(e) = failed.take() {
                    return Err(ModelError::from(e).into());
                }
            }
            for t in here {
                let stat = stats.iter().find(|(s, _)| *s == t.site).and_then(|(_, s)| s.as_ref());
                let stat = stat.ok_or_else(|| {
                    ModelError::Invalid(format!("no calibration input reached layer {l}'s {}", t.module))
                })?;
                let mut view = Checkpoint::new(bytes, header, arch, std::slice::from_ref(t.name));
                let name = arch.canonical_name(t.name).to_string();
                let written = match stat {
                    Stat::SquaredNorms(sq) => {
                        let norms: Vec<f64> = sq.iter().map(|v| v.sqrt()).collect();
                        wanda_one(&mut view, &name, &norms, rule)?;
                        view.read(&name)?
                    }
                    Stat::Hessian(h, opts) => sparsegpt_one(&mut view, &name, h, rule, *opts)?,
                };
                // The block's next tokens go through the map as pruned (rounded to its dtype).
                layer.set_weight(t.module, &written)?;
            }
        }
        if l < last {
            for c in &mut chunks {
                layer.forward(&mut c.x, &c.seqs, c.rope.as_ref());
            }
        }
        progress(Step::Pruned(l + 1, last + 1))?;
    }
    Ok(())
}

/// ShortGPT's Block Influence of each block: 1 − the mean, over the calibration tokens, of the
/// cosine between the block's input and its output (the residual stream before and after it).
/// A block that changes little scores low. One block is loaded in f32 at a time; the tokens
/// go through the model in chunks, as for [`prune`].
pub fn block_influence(
    bytes: &[u8],
    header: &Header,
    cfg: &DecoderConfig,
    sequences: &[Vec<u32>],
) -> Result<Vec<f32>, ModelError> {
    if sequences.iter().all(|s| s.is_empty()) {
        return Err(ModelError::Invalid("block influence needs at least one calibration token".into()));
    }
    let t = Tensors::new(bytes, header, cfg.kind);
    let mut chunks = chunks(&Embeddings::load(&t, cfg)?, sequences)?;
    let h = cfg.hidden;
    let mut scores = Vec::with_capacity(cfg.layers);
    for l in 0..cfg.layers {
        let layer = DecoderLayer::load(&t, cfg, l)?;
        let (mut cosines, mut tokens) = (0f64, 0usize);
        for c in &mut chunks {
            let before = c.x.clone();
            layer.forward(&mut c.x, &c.seqs, c.rope.as_ref());
            for (a, b) in before.chunks_exact(h).zip(c.x.chunks_exact(h)) {
                let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
                let na: f64 = a.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
                let nb: f64 = b.iter().map(|x| f64::from(*x) * f64::from(*x)).sum();
                cosines += if na > 0.0 && nb > 0.0 { dot / (na.sqrt() * nb.sqrt()) } else { 1.0 };
                tokens += 1;
            }
        }
        scores.push((1.0 - cosines / tokens.max(1) as f64) as f32);
    }
    Ok(scores)
}

/// The non-empty `sequences`, embedded, in chunks of whole sequences of at most
/// [`CHUNK_ROWS`] tokens (a longer sequence is a chunk of its own).
fn chunks(emb: &Embeddings, sequences: &[Vec<u32>]) -> Result<Vec<Chunk>, ModelError> {
    let mut out = Vec::new();
    let mut group: Vec<&Vec<u32>> = Vec::new();
    let rows = |g: &[&Vec<u32>]| g.iter().map(|s| s.len()).sum::<usize>();
    for s in sequences.iter().filter(|s| !s.is_empty()) {
        if !group.is_empty() && rows(&group) + s.len() > CHUNK_ROWS {
            out.push(chunk(emb, &group)?);
            group.clear();
        }
        group.push(s);
    }
    out.push(chunk(emb, &group)?);
    Ok(out)
}

/// Sequences packed back to back (no padding), embedded.
fn chunk(emb: &Embeddings, group: &[&Vec<u32>]) -> Result<Chunk, ModelError> {
    let lengths: Vec<usize> = group.iter().map(|s| s.len()).collect();
    let ids: Vec<u32> = group.iter().flat_map(|s| s.iter().copied()).collect();
    let seqs = Seq::packed(&lengths);
    let (x, rope) = emb.embed(&ids, &seqs)?;
    Ok(Chunk { seqs, x, rope })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::io::st::{self, Dtype};
    use crate::engine::model::decoder::Decoder;
    use crate::engine::prune::magnitude::{satisfies_nm, select_targets};
    use crate::engine::prune::sparsegpt;
    use crate::engine::prune::{wanda, NmPattern};
    use crate::engine::testing::TinyDecoder;

    fn sequences() -> Vec<Vec<u32>> {
        (0..6u32).map(|s| (0..(9 + s as usize)).map(|i| (i as u32 * 13 + s * 7 + 3) % 64).collect()).collect()
    }

    /// Recomputes what block `l` must hold after sequential pruning, independently of the
    /// driver's bookkeeping: the calibration tokens run through the *pruned* output's blocks
    /// `0..l`, then through the *original* block `l` (all of a block's maps are pruned from one
    /// pass, as the papers' code does), whose inputs give the statistics; the method is applied
    /// to the original weights.
    #[allow(clippy::too_many_arguments)]
    fn expected_block(
        method: Method,
        rule: Rule,
        original: &[u8],
        pruned: &[u8],
        cfg: &DecoderConfig,
        l: usize,
        name: &str,
        site: Site,
    ) -> Vec<f32> {
        let out = Decoder::load(cfg.clone(), &Tensors::parse(pruned, cfg.kind).unwrap()).unwrap();
        let seqs_ids = sequences();
        let lengths: Vec<usize> = seqs_ids.iter().map(Vec::len).collect();
        let ids: Vec<u32> = seqs_ids.concat();
        let seqs = Seq::packed(&lengths);
        let (mut x, rope) = out.embeddings.embed(&ids, &seqs).unwrap();
        for layer in &out.layers[..l] {
            layer.forward(&mut x, &seqs, rope.as_ref());
        }
        let mut input = Vec::new();
        let dense = DecoderLayer::load(&Tensors::parse(original, cfg.kind).unwrap(), cfg, l).unwrap();
        dense.forward_observed(&mut x.clone(), &seqs, rope.as_ref(), &mut |s, v| {
            if s == site {
                input = v.to_vec();
            }
        });
        let header = st::parse(original).unwrap();
        let mut bytes = original.to_vec();
        let arch = Arch::Decoder(cfg.kind);
        let mut view = Checkpoint::new(&mut bytes, &header, arch, &[name.to_string()]);
        let canonical = arch.canonical_name(name).to_string();
        let w = view.read(&canonical).unwrap();
        let cols = view.shape(&canonical).unwrap()[1];
        match method {
            Method::Wanda => {
                let mut norms = vec![0f64; cols];
                for row in input.chunks_exact(cols) {
                    norms.iter_mut().zip(row).for_each(|(n, v)| *n += (*v as f64) * (*v as f64));
                }
                norms.iter_mut().for_each(|n| *n = n.sqrt());
                let mask = wanda::mask(&w, cols, &norms, rule);
                w.iter().zip(mask).map(|(v, m)| if m { 0.0 } else { *v }).collect()
            }
            Method::SparseGpt(opts) => {
                let mut h = Hessian::new(cols);
                h.add_rows(&input).unwrap();
                let mut w = w;
                sparsegpt::prune(&mut w, cols, &h, rule, opts).unwrap();
                view.write(&canonical, &w).unwrap()
            }
        }
    }

    #[test]
    fn blocks_are_pruned_in_order_on_the_tokens_of_the_pruned_blocks_before() {
        let half = Rule::Unstructured(0.5);
        let nm = Rule::NM(NmPattern { n: 2, m: 4 });
        let sgpt = Method::SparseGpt(Options { block: 16, damp: 0.01 });
        for (model_type, tied, dtype) in
            [("gpt2", true, Dtype::F32), ("llama", false, Dtype::BF16), ("qwen2", true, Dtype::F32)]
        {
            let m = TinyDecoder { model_type, tied, dtype, layers: 3, ..Default::default() };
            let original = m.safetensors();
            let header = st::parse(&original).unwrap();
            let cfg = DecoderConfig::parse(m.config_json().as_bytes()).unwrap();
            let arch = Arch::Decoder(cfg.kind);
            let targets = select_targets(arch, &header, &[], &[]);
            for (method, rule) in [(Method::Wanda, half), (Method::Wanda, nm), (sgpt, half), (sgpt, nm)] {
                let mut out = original.clone();
                let mut steps = Vec::new();
                prune::<ModelError>(method, &mut out, &header, &cfg, &targets, &sequences(), rule, &mut |s| {
                    steps.push(s);
                    Ok(())
                })
                .unwrap();
                assert_eq!(steps.last(), Some(&Step::Pruned(3, 3)));
                let view = Checkpoint::new(&mut out, &header, arch, &targets);
                for name in &targets {
                    let canonical = arch.canonical_name(name).to_string();
                    let (layer, rest) = arch.split_layer(name).unwrap();
                    let module = rest.strip_suffix(".weight").unwrap();
                    let site = *Site::ALL.iter().find(|s| s.decoder_modules(cfg.kind).contains(&module)).unwrap();
                    let got = view.read(&canonical).unwrap();
                    let cols = view.shape(&canonical).unwrap()[1];
                    // Every output row of the [out, in] view holds the rule's share of zeros (Wanda,
                    // N:M); SparseGPT's unstructured mask is chosen per block of columns.
                    let per_row = method == Method::Wanda || matches!(rule, Rule::NM(_));
                    for row in got.chunks_exact(if per_row { cols } else { got.len() }) {
                        let zeros = row.iter().filter(|v| **v == 0.0).count();
                        assert_eq!(zeros, row.len() / 2, "{model_type} {method:?} {name}");
                    }
                    if let Rule::NM(p) = rule {
                        let t = &header.tensors[name];
                        let r = (header.data_start + t.begin) as usize..(header.data_start + t.end) as usize;
                        let ok = satisfies_nm(&view.bytes()[r], t.dtype, &t.shape, arch.stores_transposed(name), p);
                        assert!(ok, "{model_type} {name}");
                    }
                    let pruned = view.bytes().to_vec();
                    let want = expected_block(method, rule, &original, &pruned, &cfg, layer, name, site);
                    assert_eq!(got, want, "{model_type} {method:?} {rule:?} {name}");
                }
                // Everything else is byte-identical.
                for (name, t) in &header.tensors {
                    if !targets.contains(name) {
                        let r = (header.data_start + t.begin) as usize..(header.data_start + t.end) as usize;
                        assert_eq!(view.bytes()[r.clone()], original[r], "{name}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_tensor_outside_the_blocks_linear_maps_is_refused() {
        let m = TinyDecoder::default();
        let mut bytes = m.safetensors();
        let header = st::parse(&bytes).unwrap();
        let cfg = DecoderConfig::parse(m.config_json().as_bytes()).unwrap();
        let targets = vec!["model.embed_tokens.weight".to_string()];
        let r = prune::<ModelError>(
            Method::Wanda,
            &mut bytes,
            &header,
            &cfg,
            &targets,
            &sequences(),
            Rule::Unstructured(0.5),
            &mut |_| Ok(()),
        );
        assert!(
            matches!(r, Err(ModelError::Invalid(ref e)) if e.contains("model.embed_tokens.weight is not one")),
            "{r:?}"
        );
        let r = prune::<ModelError>(
            Method::Wanda,
            &mut bytes,
            &header,
            &cfg,
            &[],
            &[vec![]],
            Rule::Unstructured(0.5),
            &mut |_| Ok(()),
        );
        assert!(matches!(r, Err(ModelError::Invalid(ref e)) if e.contains("at least one calibration token")), "{r:?}");
    }

    /// A block whose output maps are zero leaves the residual stream as it was: its influence
    /// is 0, the lowest; the others change it and score above 0.
    #[test]
    fn a_block_that_changes_nothing_has_no_influence() {
        for model_type in ["gpt2", "llama", "qwen2"] {
            let m = TinyDecoder { model_type, layers: 3, ..Default::default() };
            let cfg = DecoderConfig::from_value(&serde_json::from_str(&m.config_json()).unwrap()).unwrap();
            let mut bytes = m.safetensors();
            let header = st::parse(&bytes).unwrap();
            let arch = Arch::Decoder(cfg.kind);
            for (name, t) in &header.tensors {
                let idle = arch.split_layer(name).is_some_and(|(l, rest)| {
                    l == 1
                        && ["attn.c_proj", "mlp.c_proj", "self_attn.o_proj", "mlp.down_proj"]
                            .iter()
                            .any(|m| rest.starts_with(m))
                });
                if idle {
                    let r = (header.data_start + t.begin) as usize..(header.data_start + t.end) as usize;
                    bytes[r].fill(0);
                }
            }
            let scores = block_influence(&bytes, &header, &cfg, &sequences()).unwrap();
            assert_eq!(scores.len(), 3);
            assert!(scores[1].abs() < 1e-6, "{model_type}: {scores:?}");
            assert!(scores[0] > 1e-4 && scores[2] > 1e-4, "{model_type}: {scores:?}");
        }
        let m = TinyDecoder::default();
        let cfg = DecoderConfig::from_value(&serde_json::from_str(&m.config_json()).unwrap()).unwrap();
        let bytes = m.safetensors();
        assert!(block_influence(&bytes, &st::parse(&bytes).unwrap(), &cfg, &[vec![]]).is_err());
    }
}
