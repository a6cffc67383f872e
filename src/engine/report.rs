//! `report.json`: what a pruning run did, measured from the bytes it wrote (per tensor, per layer
//! with heads and FFN neurons, totals), and the masks file.

use super::io::st::count_nonzeros;
use super::prune::Scope;
use crate::engine::io::st::{Dtype, Header, TensorInfo};
use crate::engine::model::arch::Family;
use serde::{Deserialize, Serialize};

/// Per-tensor line of `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorReport {
    pub name: String,
    pub dtype: String,
    pub shape_before: Vec<u64>,
    pub shape: Vec<u64>,
    pub numel: u64,
    pub nonzeros: u64,
    pub sparsity: f64,
    /// Whether the tensor was a pruning target.
    pub pruned: bool,
    /// Stored densely.
    pub bytes_dense: u64,
    /// Stored as a bitmask (one bit per element) plus the non-zero values.
    pub bytes_sparse: u64,
}

/// Per encoder layer: its tensors together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerReport {
    pub layer: usize,
    pub parameters: u64,
    pub nonzeros: u64,
    pub sparsity: f64,
    /// Attention heads of the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<Units>,
    /// FFN neurons (intermediate width) of the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn: Option<Units>,
}

/// A layer's heads or FFN neurons: as the input stored them, as the output stores them (tensor
/// shapes), and how many of those still add anything to the layer's output. A head is active when
/// its value projection (rows or bias) and its slice of the attention output weight both hold a
/// non-zero; a neuron when its FFN input (row or bias) and its FFN output column do. A zero-filled
/// unit is stored but not active.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Units {
    pub before: usize,
    pub stored: usize,
    pub active: usize,
}

/// Which columns (`by_column`) or rows of a row-major 2-D tensor hold a non-zero; for a 1-D
/// tensor (a bias), which elements are non-zero.
fn nonzero_lines(file: &[u8], header: &Header, t: &TensorInfo, by_column: bool) -> Vec<bool> {
    let cols = *t.shape.last().unwrap_or(&0) as usize;
    let a = (header.data_start + t.begin) as usize;
    let b = (header.data_start + t.end) as usize;
    let s = t.dtype.size() as usize;
    if t.shape.len() == 1 {
        return file[a..b].chunks_exact(s).map(|v| count_nonzeros(v, t.dtype) == 1).collect();
    }
    if cols == 0 || t.shape.len() != 2 {
        return Vec::new();
    }
    let mut out = vec![false; if by_column { cols } else { t.shape[0] as usize }];
    for (r, row) in file[a..b].chunks_exact(cols * s).enumerate() {
        for (c, v) in row.chunks_exact(s).enumerate() {
            if count_nonzeros(v, t.dtype) == 1 {
                out[if by_column { c } else { r }] = true;
            }
        }
    }
    out
}

/// Fills `heads` and `ffn` of each layer report from the written file (and the input's header,
/// for `before`). `head_dim` is hidden size / attention heads of the original config.
pub fn fill_units(
    layers: &mut [LayerReport],
    file: &[u8],
    header: &Header,
    before: &Header,
    family: Family,
    head_dim: usize,
) {
    let names = family.layer_names();
    let find = |h: &Header, layer: usize, module: &str, kind: &str| -> Option<TensorInfo> {
        let canonical = format!("{}{module}.{kind}", family.layer_prefix(layer));
        h.tensors
            .iter()
            .find(|(n, _)| crate::engine::model::arch::canonical_name(family, n) == canonical)
            .map(|(_, t)| t.clone())
    };
    let cols = |t: &TensorInfo| *t.shape.last().unwrap_or(&0) as usize;
    // Units whose input side (rows of `input` or its bias) and output side (columns of `output`)
    // both hold a non-zero; `width` elements per unit.
    let active = |layer: usize, input: &str, output: &str, width: usize| -> Option<(usize, usize)> {
        let out_t = find(header, layer, output, "weight")?;
        let in_t = find(header, layer, input, "weight")?;
        let out_nz = nonzero_lines(file, header, &out_t, true);
        let mut in_nz = nonzero_lines(file, header, &in_t, false);
        if let Some(b) = find(header, layer, input, "bias") {
            in_nz.iter_mut().zip(nonzero_lines(file, header, &b, false)).for_each(|(a, b)| *a |= b);
        }
        if width == 0 || out_nz.len() != in_nz.len() || !out_nz.len().is_multiple_of(width) {
            return None;
        }
        let n = out_nz
            .chunks(width)
            .zip(in_nz.chunks(width))
            .filter(|(o, i)| o.iter().any(|x| *x) && i.iter().any(|x| *x))
            .count();
        Some((cols(&out_t) / width, n))
    };
    for l in layers.iter_mut() {
        if let Some((stored, n)) = active(l.layer, names.value, names.attn_out, head_dim) {
            let before_n = find(before, l.layer, names.attn_out, "weight").map_or(stored, |b| cols(&b) / head_dim);
            l.heads = Some(Units { before: before_n, stored, active: n });
        }
        if let Some((stored, n)) = active(l.layer, names.ffn_in, names.ffn_out, 1) {
            let before_n = find(before, l.layer, names.ffn_out, "weight").map_or(stored, |b| cols(&b));
            l.ffn = Some(Units { before: before_n, stored, active: n });
        }
    }
}

/// The block a tensor belongs to, from its name: `encoder.layer.N.` (BERT, RoBERTa),
/// `transformer.layer.N.` (DistilBERT), `h.N.` (GPT-2), `layers.N.` (Llama, Qwen2), with or
/// without the base model's prefix.
pub fn layer_of(name: &str) -> Option<usize> {
    ["encoder.layer.", "transformer.layer.", "h.", "layers."].iter().find_map(|root| {
        let at = name.find(root)?;
        if at > 0 && !name[..at].ends_with('.') {
            return None;
        }
        name[at + root.len()..].split('.').next()?.parse().ok()
    })
}

/// Per-layer totals of the tensors.
pub fn per_layer(tensors: &[TensorReport]) -> Vec<LayerReport> {
    let mut by: std::collections::BTreeMap<usize, (u64, u64)> = Default::default();
    for t in tensors {
        if let Some(l) = layer_of(&t.name) {
            let e = by.entry(l).or_default();
            e.0 += t.numel;
            e.1 += t.nonzeros;
        }
    }
    by.into_iter()
        .map(|(layer, (n, nz))| LayerReport {
            layer,
            parameters: n,
            nonzeros: nz,
            sparsity: ratio(n - nz, n),
            heads: None,
            ffn: None,
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    /// Elements of the floating-point tensors before pruning.
    pub parameters_before: u64,
    pub parameters: u64,
    pub nonzeros: u64,
    pub sparsity: f64,
    pub target_parameters: u64,
    pub target_nonzeros: u64,
    pub target_sparsity: f64,
    /// Size of the written checkpoint.
    pub bytes: u64,
    /// Every tensor stored densely.
    pub bytes_dense: u64,
    /// Each floating-point tensor stored the smaller way: densely, or as a bitmask plus its
    /// non-zero values.
    pub bytes_sparse: u64,
    /// Multiply-adds (×2) of the encoder's linear maps per token, counting every weight.
    pub flops_per_token: u64,
    /// The same, counting only non-zero weights (what a sparse kernel would do).
    pub flops_per_token_sparse: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub method: String,
    /// Everything the method was run with: the job's pruning spec with defaults resolved, its
    /// calibration, and what the method measured on the way (e.g. calibration tokens seen).
    #[serde(default)]
    pub parameters: serde_json::Value,
    pub granularity: String,
    pub scope: Scope,
    pub requested_sparsity: f64,
    /// The N:M pattern, for `n:m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Units removed per layer (structured granularities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<RemovedUnits>,
    /// Per encoder layer.
    pub layers: Vec<LayerReport>,
    pub tensors: Vec<TensorReport>,
    pub totals: Totals,
    /// Totals of the `compact` export, when one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact: Option<Totals>,
    /// The quantization step, when the spec asked for one (the `compressed/` export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<crate::engine::io::compressed::Quantized>,
}

/// What a report says was asked: its first fields (the rest is measured).
pub struct Request {
    pub method: String,
    pub parameters: serde_json::Value,
    pub granularity: String,
    pub scope: Scope,
    pub requested_sparsity: f64,
    pub pattern: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

impl Report {
    /// The report of `asked` with what was measured on the written file: its tensors, their
    /// totals, and per layer (from the tensors, or as the caller filled them in).
    pub fn new(
        asked: Request,
        removed: Option<RemovedUnits>,
        tensors: Vec<TensorReport>,
        layers: Vec<LayerReport>,
        totals: Totals,
    ) -> Report {
        Report {
            method: asked.method,
            parameters: asked.parameters,
            granularity: asked.granularity,
            scope: asked.scope,
            requested_sparsity: asked.requested_sparsity,
            pattern: asked.pattern,
            include: asked.include,
            exclude: asked.exclude,
            removed,
            layers,
            tensors,
            totals,
            compact: None,
            quantization: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemovedUnits {
    /// Per layer (indices of the original model).
    pub heads: Vec<Vec<usize>>,
    pub neurons: Vec<Vec<usize>>,
    /// Layers removed (indices of the original model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<usize>,
}

fn ratio(zeros: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        zeros as f64 / n as f64
    }
}

/// Per-tensor and total counts, recomputed from the written file. `before` gives each
/// tensor's shape before pruning (the written shape when absent).
pub fn measure(file: &[u8], header: &Header, targets: &[String]) -> (Vec<TensorReport>, Totals) {
    measure_against(file, header, targets, header)
}

pub fn measure_against(
    file: &[u8],
    header: &Header,
    targets: &[String],
    before: &Header,
) -> (Vec<TensorReport>, Totals) {
    let mut tensors = Vec::new();
    let mut totals = Totals {
        parameters_before: before.tensors.values().filter(|t| t.dtype.is_float()).map(|t| t.numel()).sum(),
        parameters: 0,
        nonzeros: 0,
        sparsity: 0.0,
        target_parameters: 0,
        target_nonzeros: 0,
        target_sparsity: 0.0,
        bytes: file.len() as u64,
        bytes_dense: 0,
        bytes_sparse: 0,
        flops_per_token: 0,
        flops_per_token_sparse: 0,
    };
    for (name, t) in &header.tensors {
        let dense = t.end - t.begin;
        totals.bytes_dense += dense;
        if !t.dtype.is_float() {
            totals.bytes_sparse += dense;
            continue;
        }
        let a = (header.data_start + t.begin) as usize;
        let b = (header.data_start + t.end) as usize;
        let nz = count_nonzeros(&file[a..b], t.dtype);
        let n = t.numel();
        let sparse = n.div_ceil(8) + nz * t.dtype.size();
        totals.bytes_sparse += dense.min(sparse);
        let pruned = targets.contains(name);
        totals.parameters += n;
        totals.nonzeros += nz;
        if pruned {
            totals.target_parameters += n;
            totals.target_nonzeros += nz;
        }
        if t.shape.len() == 2 && name.ends_with(".weight") && layer_of(name).is_some() {
            totals.flops_per_token += 2 * n;
            totals.flops_per_token_sparse += 2 * nz;
        }
        let shape_before = before.tensors.get(name).map_or_else(|| t.shape.clone(), |b| b.shape.clone());
        tensors.push(TensorReport {
            name: name.clone(),
            dtype: t.dtype.name().into(),
            shape_before,
            shape: t.shape.clone(),
            numel: n,
            nonzeros: nz,
            sparsity: ratio(n - nz, n),
            pruned,
            bytes_dense: dense,
            bytes_sparse: sparse,
        });
    }
    totals.sparsity = ratio(totals.parameters - totals.nonzeros, totals.parameters);
    totals.target_sparsity = ratio(totals.target_parameters - totals.target_nonzeros, totals.target_parameters);
    (tensors, totals)
}

/// The masks of unstructured / N:M pruning as a safetensors file: for every target a U8 tensor
/// of its shape, 1 where the weight is kept (so later fine-tuning can keep the zeros at zero).
pub fn masks_file(file: &[u8], header: &Header, targets: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in targets {
        let t = &header.tensors[name];
        let a = (header.data_start + t.begin) as usize;
        let b = (header.data_start + t.end) as usize;
        let s = t.dtype.size() as usize;
        let bits: Vec<u8> = file[a..b].chunks_exact(s).map(|c| (count_nonzeros(c, t.dtype) == 1) as u8).collect();
        out.push((name.clone(), Dtype::U8, t.shape.clone(), bits));
    }
    crate::engine::io::st::serialize(&out, None)
}

#[cfg(test)]
mod tests {
    use super::layer_of;

    #[test]
    fn every_family_names_its_blocks() {
        for (name, want) in [
            ("bert.encoder.layer.11.output.dense.weight", Some(11)),
            ("distilbert.transformer.layer.2.ffn.lin1.weight", Some(2)),
            ("transformer.h.3.attn.c_attn.weight", Some(3)),
            ("h.0.mlp.c_proj.bias", Some(0)),
            ("model.layers.7.self_attn.q_proj.weight", Some(7)),
            ("lm_head.weight", None),
            ("transformer.wte.weight", None),
            ("model.embed_tokens.weight", None),
            ("embeddings.LayerNorm.weight", None),
            ("classifier.weight", None),
        ] {
            assert_eq!(layer_of(name), want, "{name}");
        }
    }
}
