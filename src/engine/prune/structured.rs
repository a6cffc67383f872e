//! Structured pruning: attention heads and FFN neurons, scored, selected, and then either
//! physically removed (rows/columns sliced out, so tensors shrink) or zero-filled (shapes kept;
//! zero query/key/value rows and biases of a head, or a zero FFN input row and bias of a neuron,
//! give exactly the output of removing it).

use crate::engine::model::arch::{Arch, Family};
use crate::engine::model::{Batch, Encoder, EncoderConfig, LayerShape, Result, Site, Weights};
use candle_core::{Device, Tensor};

/// One score per unit (head or FFN neuron), per layer.
pub type PerLayer = Vec<Vec<f32>>;

/// Units removed from each layer (indices into the layer's current heads / neurons).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitPlan {
    pub heads: Vec<Vec<usize>>,
    pub neurons: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surgery {
    /// Slice the units out: tensors shrink.
    Remove,
    /// Zero the units' weights: shapes stay.
    Zero,
}

fn names(family: Family, i: usize) -> [String; 6] {
    let n = family.layer_names();
    let p = family.layer_prefix(i);
    [n.query, n.key, n.value, n.attn_out, n.ffn_in, n.ffn_out].map(|m| format!("{p}{m}"))
}

/// What removing units touches in one tensor of a layer.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitEdit<'a> {
    /// The module's full name (`….weight`, `….bias` appended).
    pub module: String,
    /// Units the tensor holds, and the rows/columns per unit (head_dim for heads, 1 for neurons).
    pub total: usize,
    pub group: usize,
    /// Units removed (indices).
    pub units: &'a [usize],
    /// The units are rows (query/key/value, FFN input) or columns (attention output, FFN output).
    pub rows: bool,
    /// The bias follows the rows.
    pub bias: bool,
}

/// The six tensors of layer `i` that `plan` edits: query, key and value rows and attention
/// output columns per head; FFN input rows and output columns per neuron. Shared by the
/// surgery on checkpoint weights ([`apply`]) and the masks of the trainable model.
pub fn unit_edits<'a>(cfg: &EncoderConfig, i: usize, plan: &'a UnitPlan) -> [UnitEdit<'a>; 6] {
    let [q, k, v, o, fi, fo] = names(cfg.family, i);
    let heads = plan.heads.get(i).map(Vec::as_slice).unwrap_or(&[]);
    let neurons = plan.neurons.get(i).map(Vec::as_slice).unwrap_or(&[]);
    let (shape, hd) = (cfg.layers[i], cfg.head_dim);
    let edit = |module, total, group, units, rows| UnitEdit { module, total, group, units, rows, bias: rows };
    [
        edit(q, shape.heads, hd, heads, true),
        edit(k, shape.heads, hd, heads, true),
        edit(v, shape.heads, hd, heads, true),
        edit(o, shape.heads, hd, heads, false),
        edit(fi, shape.ffn, 1, neurons, true),
        edit(fo, shape.ffn, 1, neurons, false),
    ]
}

/// Head scores: the L2 norm of each head's query, key, value rows and output columns together.
pub fn head_norm_scores(w: &Weights, cfg: &EncoderConfig) -> Result<Vec<Vec<f32>>> {
    let hd = cfg.head_dim;
    let mut out = Vec::new();
    for (i, shape) in cfg.layers.iter().enumerate() {
        let [q, k, v, o, _, _] = names(cfg.family, i);
        let mut scores = vec![0f32; shape.heads];
        for m in [&q, &k, &v] {
            let rows = w.get(&format!("{m}.weight"))?.sqr()?.sum(1)?; // [heads*hd]
            let per = rows.reshape((shape.heads, hd))?.sum(1)?.to_vec1::<f32>()?;
            scores.iter_mut().zip(per).for_each(|(s, p)| *s += p);
        }
        let cols = w.get(&format!("{o}.weight"))?.sqr()?.sum(0)?; // [heads*hd]
        let per = cols.reshape((shape.heads, hd))?.sum(1)?.to_vec1::<f32>()?;
        scores.iter_mut().zip(per).for_each(|(s, p)| *s = (*s + p).sqrt());
        out.push(scores);
    }
    Ok(out)
}

/// Neuron scores: the L2 norm of each FFN neuron's input row and output column together.
pub fn neuron_norm_scores(w: &Weights, cfg: &EncoderConfig) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for i in 0..cfg.layers.len() {
        let [_, _, _, _, fi, fo] = names(cfg.family, i);
        let rows = w.get(&format!("{fi}.weight"))?.sqr()?.sum(1)?;
        let cols = w.get(&format!("{fo}.weight"))?.sqr()?.sum(0)?;
        out.push((rows + cols)?.sqrt()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Head and neuron scores from calibration activations, summed over the real tokens of the
/// batches `(input_ids, attention_mask, token_type_ids)` run through `enc` (built from `w`):
/// a head scores ‖X_h W_Oₕᵀ‖ (its context projected by its slice of the attention output map:
/// exactly what it adds to the layer), a neuron ‖a_j‖·‖W_out[:, j]‖ (the norm of what it adds).
pub fn activation_scores(enc: &Encoder, w: &Weights, batches: &[Batch]) -> Result<(PerLayer, PerLayer)> {
    let cfg = &enc.config;
    let hd = cfg.head_dim;
    let mut heads: Vec<Vec<f64>> = cfg.layers.iter().map(|l| vec![0.0; l.heads]).collect();
    let mut neurons: Vec<Vec<f64>> = cfg.layers.iter().map(|l| vec![0.0; l.ffn]).collect();
    let out_maps: Vec<(Tensor, Tensor)> = (0..cfg.layers.len())
        .map(|i| {
            let [_, _, _, o, _, fo] = names(cfg.family, i);
            Ok((w.get(&format!("{o}.weight"))?, w.get(&format!("{fo}.weight"))?))
        })
        .collect::<Result<_>>()?;
    for batch in batches {
        enc.forward_observed(batch, &mut |layer, site, x| {
            match site {
                Site::AttentionOutput => {
                    let width = heads[layer].len() * hd;
                    let ctx = Tensor::from_slice(x, (x.len() / width.max(1), width), &Device::Cpu)?;
                    for (h, acc) in heads[layer].iter_mut().enumerate() {
                        let w_h = out_maps[layer].0.narrow(1, h * hd, hd)?; // [hidden, hd]
                        let y = ctx.narrow(1, h * hd, hd)?.matmul(&w_h.t()?)?;
                        *acc += f64::from(y.sqr()?.sum_all()?.to_scalar::<f32>()?);
                    }
                }
                Site::FfnOut => {
                    let acc = &mut neurons[layer];
                    for row in x.chunks_exact(acc.len().max(1)) {
                        acc.iter_mut().zip(row).for_each(|(a, v)| *a += f64::from(*v) * f64::from(*v));
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    let heads = heads.into_iter().map(|v| v.into_iter().map(|x| x.sqrt() as f32).collect()).collect();
    let mut out_neurons = Vec::new();
    for (acts, (_, fo)) in neurons.into_iter().zip(&out_maps) {
        let col_norms = fo.sqr()?.sum(0)?.sqrt()?.to_vec1::<f32>()?;
        out_neurons.push(acts.into_iter().zip(col_norms).map(|(a, c)| a.sqrt() as f32 * c).collect());
    }
    Ok((heads, out_neurons))
}

/// Layer scores: the L2 norm of all of a layer's linear weights together.
pub fn layer_norm_scores(w: &Weights, cfg: &EncoderConfig) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for i in 0..cfg.layers.len() {
        let mut total = 0f32;
        for m in names(cfg.family, i) {
            total += w.get(&format!("{m}.weight"))?.sqr()?.sum_all()?.to_scalar::<f32>()?;
        }
        out.push(total.sqrt());
    }
    Ok(out)
}

/// Where a tensor name goes when layers `removed` are dropped and the rest renumbered: `None`
/// for a tensor of a dropped layer, a later layer's index shifted down, every other name as it
/// was (the base-model prefix, e.g. `model.` or `bert.`, kept as spelled).
pub fn renumbered(arch: Arch, removed: &[usize], name: &str) -> Option<String> {
    let Some((i, tail)) = arch.split_layer(name) else { return Some(name.to_string()) };
    if removed.contains(&i) {
        return None;
    }
    let shift = removed.iter().filter(|&&r| r < i).count();
    let prefix = &name[..name.len() - arch.canonical_name(name).len()];
    Some(format!("{prefix}{}{}.{tail}", arch.layer_root(), i - shift))
}

/// Drop whole layers; the remaining ones are renumbered from 0.
pub fn remove_layers(w: &Weights, cfg: &EncoderConfig, removed: &[usize]) -> (Weights, EncoderConfig) {
    let map = w
        .names()
        .filter_map(|n| renumbered(Arch::Encoder(cfg.family), removed, n).map(|to| (to, w.get(n).expect("listed"))))
        .collect();
    let mut out = cfg.clone();
    out.layers = cfg.layers.iter().enumerate().filter(|(i, _)| !removed.contains(i)).map(|(_, l)| *l).collect();
    (Weights::from_map(map), out)
}

fn keep_index(total: usize, removed: &[usize], group: usize, device: &candle_core::Device) -> Result<Tensor> {
    let keep: Vec<u32> = (0..total)
        .filter(|u| !removed.contains(u))
        .flat_map(|u| (u * group..(u + 1) * group).map(|x| x as u32))
        .collect();
    Ok(Tensor::from_vec(keep.clone(), keep.len(), device)?)
}

/// 1 for kept elements, 0 for removed ones, over `total * group` entries.
fn keep_mask(total: usize, removed: &[usize], group: usize, device: &candle_core::Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..total * group).map(|x| if removed.contains(&(x / group)) { 0.0 } else { 1.0 }).collect();
    Ok(Tensor::from_vec(m, total * group, device)?)
}

/// Apply a plan to the weights; returns the encoder config after it.
pub fn apply(w: &mut Weights, cfg: &EncoderConfig, plan: &UnitPlan, how: Surgery) -> Result<EncoderConfig> {
    let mut out = cfg.clone();
    for (i, shape) in cfg.layers.iter().enumerate() {
        let edits = unit_edits(cfg, i, plan);
        let dev = w.get(&format!("{}.weight", edits[0].module))?.device().clone();
        for UnitEdit { module: m, total, group, units: removed, rows, bias } in edits {
            if removed.is_empty() {
                continue;
            }
            // A zero-filled head keeps its output columns: they now only ever see zeros.
            if how == Surgery::Zero && !rows {
                continue;
            }
            let wn = format!("{m}.weight");
            let weight = w.get(&wn)?;
            let dim = if rows { 0 } else { 1 };
            let new = match how {
                Surgery::Remove => weight.index_select(&keep_index(total, removed, group, &dev)?, dim)?,
                Surgery::Zero => {
                    let mask = keep_mask(total, removed, group, &dev)?.to_dtype(weight.dtype())?;
                    weight.broadcast_mul(&mask.unsqueeze(1)?)?
                }
            };
            w.insert(&wn, new);
            if bias {
                let bn = format!("{m}.bias");
                let b = w.get(&bn)?;
                let new = match how {
                    Surgery::Remove => b.index_select(&keep_index(total, removed, group, &dev)?, 0)?,
                    Surgery::Zero => b.mul(&keep_mask(total, removed, group, &dev)?.to_dtype(b.dtype())?)?,
                };
                w.insert(&bn, new);
            }
        }
        if how == Surgery::Remove {
            let removed = |u: &[Vec<usize>]| u.get(i).map_or(0, Vec::len);
            out.layers[i] =
                LayerShape { heads: shape.heads - removed(&plan.heads), ffn: shape.ffn - removed(&plan.neurons) };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::Encoder;
    use crate::engine::testing::TinyModel;
    use candle_core::{DType, Device};

    /// The forward runs per-layer shapes as the candle ops do, including a layer without heads
    /// and one without all but a few FFN neurons.
    #[test]
    fn removed_units_run_as_the_reference() {
        use crate::engine::model::encoder::tests::{max_diff, reference};
        let ids =
            Tensor::from_vec((0..27u32).map(|j| 5 + (j * 7) % 59).collect::<Vec<_>>(), (3, 9), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(
            (0..27u32).map(|j| u32::from(j < 23 && j % 9 < 7 || j < 9)).collect::<Vec<_>>(),
            (3, 9),
            &Device::Cpu,
        )
        .unwrap();
        for family in ["bert", "roberta", "distilbert"] {
            let (_, mut w, config) = setup(family);
            let plan = UnitPlan {
                heads: vec![vec![0, 2], vec![0, 1, 2, 3], vec![]],
                neurons: vec![vec![1, 2, 3], vec![], (0..40).collect()],
            };
            let cfg = apply(&mut w, &config, &plan, Surgery::Remove).unwrap();
            let small = Encoder::load(cfg.clone(), &w).unwrap();
            let (fast, slow) = (small.forward(&ids, None, &mask).unwrap(), reference(&cfg, &w, &ids, &mask));
            assert!(max_diff(&fast, &slow) < 1e-5, "{family} compact: {}", max_diff(&fast, &slow));
        }
    }

    fn setup(family: &'static str) -> (TinyModel, Weights, EncoderConfig) {
        let m = TinyModel { model_type: family, layers: 3, ..Default::default() };
        let fam = Family::parse(family).unwrap();
        let w = Weights::from_safetensors(&m.safetensors(), fam, &Device::Cpu).unwrap();
        let cfg = EncoderConfig::from_checkpoint(m.config_json().as_bytes(), &w.shapes()).unwrap();
        (m, w, cfg)
    }

    fn run(w: &Weights, cfg: &EncoderConfig) -> Tensor {
        let enc = Encoder::load(cfg.clone(), w).unwrap();
        let ids =
            Tensor::from_vec((0..2 * 10).map(|i| 5 + (i * 7 % 50) as u32).collect::<Vec<_>>(), (2, 10), &Device::Cpu)
                .unwrap();
        let mask =
            Tensor::from_vec([vec![1u32; 10], [vec![1u32; 6], vec![0u32; 4]].concat()].concat(), (2, 10), &Device::Cpu)
                .unwrap();
        enc.forward(&ids, None, &mask).unwrap()
    }

    #[test]
    fn activation_scores_measure_what_each_unit_adds() {
        let (_, w, cfg) = setup("bert");
        let ids =
            Tensor::from_vec((0..2 * 10).map(|i| 5 + (i * 7 % 50) as u32).collect::<Vec<_>>(), (2, 10), &Device::Cpu)
                .unwrap();
        let full = Tensor::ones((2, 10), DType::U32, &Device::Cpu).unwrap();
        let batch = |mask: &Tensor| vec![(ids.clone(), mask.clone(), ids.zeros_like().unwrap())];
        let scores = |w: &Weights, mask: &Tensor| {
            activation_scores(&Encoder::load(cfg.clone(), w).unwrap(), w, &batch(mask)).unwrap()
        };
        let (heads, neurons) = scores(&w, &full);
        assert_eq!(heads.iter().map(Vec::len).collect::<Vec<_>>(), vec![4; 3]);
        assert_eq!(neurons.iter().map(Vec::len).collect::<Vec<_>>(), vec![64; 3]);
        assert!(heads.iter().chain(&neurons).flatten().all(|s| *s > 0.0));
        // A head's context does not depend on the attention output map: doubling head 1's slice
        // of it doubles that head's score, zeroing head 2's makes it 0; the same for a neuron.
        let o = "encoder.layer.0.attention.output.dense.weight";
        let fo = "encoder.layer.0.output.dense.weight";
        let mut w2 = Weights::from_map(w.names().map(|n| (n.clone(), w.get(n).unwrap())).collect());
        let hd = cfg.head_dim;
        let scale = |t: &Tensor, from: usize, len: usize, by: f64| {
            let cols = t.dim(1).unwrap();
            let f: Vec<f32> =
                (0..cols).map(|c| if (from..from + len).contains(&c) { by as f32 } else { 1.0 }).collect();
            t.broadcast_mul(&Tensor::new(f, &Device::Cpu).unwrap()).unwrap()
        };
        w2.insert(o, scale(&scale(&w.get(o).unwrap(), hd, hd, 2.0), 2 * hd, hd, 0.0));
        let (h2, _) = scores(&w2, &full);
        // (The FFN's inputs depend on the attention output: change only its output map.)
        let mut w3 = Weights::from_map(w.names().map(|n| (n.clone(), w.get(n).unwrap())).collect());
        w3.insert(fo, scale(&w.get(fo).unwrap(), 7, 1, 0.0));
        let (_, n2) = scores(&w3, &full);
        assert!((h2[0][1] / heads[0][1] - 2.0).abs() < 1e-4, "{} vs {}", h2[0][1], heads[0][1]);
        assert_eq!(h2[0][2], 0.0);
        assert!((h2[0][0] - heads[0][0]).abs() < 1e-4 * heads[0][0]);
        assert_eq!(n2[0][7], 0.0);
        assert!((n2[0][8] - neurons[0][8]).abs() < 1e-4 * neurons[0][8]);
        // Padding tokens add nothing: masking the last 4 tokens of row 1 lowers every score.
        let half =
            Tensor::from_vec([vec![1u32; 10], [vec![1u32; 6], vec![0u32; 4]].concat()].concat(), (2, 10), &Device::Cpu)
                .unwrap();
        let (h3, n3) = scores(&w, &half);
        assert!(h3[0].iter().zip(&heads[0]).all(|(a, b)| a < b));
        assert!(n3[0].iter().zip(&neurons[0]).all(|(a, b)| a <= b));
    }

    #[test]
    fn removing_units_equals_zeroing_them() {
        for family in ["bert", "roberta", "distilbert"] {
            let (_, w, cfg) = setup(family);
            // Layer 0: two heads and half the neurons; layer 1: every head; layer 2: nothing.
            let plan = UnitPlan {
                heads: vec![vec![1, 3], vec![0, 1, 2, 3], vec![]],
                neurons: vec![(0..64).step_by(2).collect(), vec![5], vec![]],
            };
            let mut removed = Weights::from_map(w.names().map(|n| (n.clone(), w.get(n).unwrap())).collect());
            let cfg_removed = apply(&mut removed, &cfg, &plan, Surgery::Remove).unwrap();
            assert_eq!(
                cfg_removed.layers,
                vec![
                    LayerShape { heads: 2, ffn: 32 },
                    LayerShape { heads: 0, ffn: 63 },
                    LayerShape { heads: 4, ffn: 64 }
                ]
            );
            let mut zeroed = Weights::from_map(w.names().map(|n| (n.clone(), w.get(n).unwrap())).collect());
            let cfg_zeroed = apply(&mut zeroed, &cfg, &plan, Surgery::Zero).unwrap();
            assert_eq!(cfg_zeroed, cfg);
            // The compact checkpoint's shapes are what a fresh load reads back.
            assert_eq!(
                EncoderConfig::from_checkpoint(
                    TinyModel { model_type: family, layers: 3, ..Default::default() }.config_json().as_bytes(),
                    &removed.shapes()
                )
                .unwrap(),
                cfg_removed
            );
            let a = run(&removed, &cfg_removed);
            let b = run(&zeroed, &cfg_zeroed);
            let d = (a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "{family}: {d}");
            let dense = run(&w, &cfg);
            let changed =
                (dense - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(changed > 1e-3, "{family}: pruning should change the output");
        }
    }

    #[test]
    fn dropping_layers_equals_running_the_rest() {
        for family in ["bert", "distilbert"] {
            let (_, w, cfg) = setup(family);
            let fam = Family::parse(family).unwrap();
            let arch = Arch::Encoder(fam);
            assert_eq!(
                renumbered(arch, &[1], &format!("{}attention.q_lin.weight", fam.layer_prefix(2))),
                Some(format!("{}attention.q_lin.weight", fam.layer_prefix(1)))
            );
            assert_eq!(renumbered(arch, &[1], &format!("{}x", fam.layer_prefix(1))), None);
            assert_eq!(
                renumbered(arch, &[1], "embeddings.word_embeddings.weight"),
                Some("embeddings.word_embeddings.weight".into())
            );
            let (w2, cfg2) = remove_layers(&w, &cfg, &[1]);
            assert_eq!(cfg2.layers.len(), 2);
            let again = EncoderConfig::from_checkpoint(
                TinyModel { model_type: family, layers: 2, ..Default::default() }.config_json().as_bytes(),
                &w2.shapes(),
            )
            .unwrap();
            assert_eq!(again, cfg2, "the renumbered tensors read back as a 2-layer model");
            // Dropping the last layer is running the first two of the original.
            let (w3, cfg3) = remove_layers(&w, &cfg, &[2]);
            let mut first_two = cfg.clone();
            first_two.layers.truncate(2);
            let d = (run(&w3, &cfg3) - run(&w, &first_two))
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0);
            let scores = layer_norm_scores(&w, &cfg).unwrap();
            assert_eq!(scores.len(), 3);
        }
    }

    #[test]
    fn scores_and_selection() {
        let (_, w, cfg) = setup("bert");
        let hs = head_norm_scores(&w, &cfg).unwrap();
        assert_eq!(hs.len(), 3);
        assert!(hs.iter().all(|l| l.len() == 4 && l.iter().all(|s| *s > 0.0)));
        let ns = neuron_norm_scores(&w, &cfg).unwrap();
        assert!(ns.iter().all(|l| l.len() == 64));
    }
}
