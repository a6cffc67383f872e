//! The calibrated methods, Wanda and SparseGPT, each driven once over [`Matrices`]: the view of
//! a model's weight matrices that both a checkpoint's bytes ([`Checkpoint`]) and the trainable
//! net (`train::net`) provide. The prune job and the experiment's pruning stage call
//! [`prune`]; neither walks the layers itself.

use super::sparsegpt::{self, Options};
use super::wanda::{self, Rule};
use crate::engine::cpu::transpose;
use crate::engine::io::st::{self, Header};
use crate::engine::model::arch::Arch;
use crate::engine::model::{Batch, Encoder, ModelError, Site};
use std::collections::HashMap;

/// Weight matrices by canonical name (`encoder.layer.0.attention.self.query.weight`), read and
/// written as f32.
pub trait Matrices {
    /// The tensor's shape, `None` when the model has no tensor of that name.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The values, row-major.
    fn read(&self, name: &str) -> Result<Vec<f32>, ModelError>;
    /// Overwrites the values and returns them as stored (rounded to the tensor's dtype).
    fn write(&mut self, name: &str, values: &[f32]) -> Result<Vec<f32>, ModelError>;
    /// Sets the flagged elements to exactly zero, leaving the others untouched.
    fn zero(&mut self, name: &str, prune: &[bool]) -> Result<(), ModelError>;
    /// How messages name the tensor (the checkpoint's own spelling).
    fn label(&self, name: &str) -> String {
        name.to_string()
    }
}

/// A checkpoint's bytes as [`Matrices`]: `targets` are its tensor names as the file spells them
/// (e.g. with DistilBERT's or a task model's prefix), found by their canonical names. A weight
/// stored `[in, out]` (GPT-2's `Conv1D`) is seen as `[out, in]`, like every other.
pub struct Checkpoint<'a> {
    bytes: &'a mut [u8],
    header: &'a Header,
    names: HashMap<String, String>,
    arch: Arch,
}

impl<'a> Checkpoint<'a> {
    pub fn new(bytes: &'a mut [u8], header: &'a Header, arch: Arch, targets: &[String]) -> Checkpoint<'a> {
        let names = targets.iter().map(|n| (arch.canonical_name(n).to_string(), n.clone())).collect();
        Checkpoint { bytes, header, names, arch }
    }

    /// The canonical names of the targets, in the order given.
    pub fn canonical(arch: Arch, targets: &[String]) -> Vec<String> {
        targets.iter().map(|n| arch.canonical_name(n).to_string()).collect()
    }

    /// The checkpoint's bytes as they stand.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// The stored `[in, out]` sizes of a weight this view transposes.
    fn transposed(&self, name: &str, t: &st::TensorInfo) -> Option<(usize, usize)> {
        (t.shape.len() == 2 && self.arch.stores_transposed(&self.label(name)))
            .then(|| (t.shape[0] as usize, t.shape[1] as usize))
    }

    fn tensor(&self, name: &str) -> Result<(&st::TensorInfo, std::ops::Range<usize>), ModelError> {
        let file = self.names.get(name).map(String::as_str).unwrap_or(name);
        let t = self
            .header
            .tensors
            .get(file)
            .ok_or_else(|| ModelError::Invalid(format!("the model has no tensor {file}")))?;
        Ok((t, (self.header.data_start + t.begin) as usize..(self.header.data_start + t.end) as usize))
    }
}

impl Matrices for Checkpoint<'_> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (t, _) = self.tensor(name).ok()?;
        match self.transposed(name, t) {
            Some((inp, out)) => Some(vec![out, inp]),
            None => Some(t.shape.iter().map(|&d| d as usize).collect()),
        }
    }

    fn read(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (t, r) = self.tensor(name)?;
        let v = st::floats(&self.bytes[r], t.dtype).ok_or_else(|| {
            ModelError::Invalid(format!(
                "tensor {}: pruning needs a float tensor, not {}",
                self.label(name),
                t.dtype.name()
            ))
        })?;
        Ok(match self.transposed(name, t) {
            Some((inp, out)) => transpose(&v, inp, out),
            None => v,
        })
    }

    fn write(&mut self, name: &str, values: &[f32]) -> Result<Vec<f32>, ModelError> {
        let (t, r) = self.tensor(name)?;
        let (dtype, flip) = (t.dtype, self.transposed(name, t));
        let stored = match flip {
            Some((inp, out)) if values.len() == inp * out => transpose(values, out, inp),
            _ => values.to_vec(),
        };
        if !st::write_floats(&stored, dtype, &mut self.bytes[r.clone()]) {
            return Err(ModelError::Invalid(format!(
                "tensor {}: cannot write {} values as {}",
                self.label(name),
                values.len(),
                dtype.name()
            )));
        }
        let back = st::floats(&self.bytes[r], dtype).expect("written as floats");
        Ok(match flip {
            Some((inp, out)) => transpose(&back, inp, out),
            None => back,
        })
    }

    fn zero(&mut self, name: &str, prune: &[bool]) -> Result<(), ModelError> {
        let (t, r) = self.tensor(name)?;
        let (size, flip) = (t.dtype.size() as usize, self.transposed(name, t));
        let data = &mut self.bytes[r];
        for (j, _) in prune.iter().enumerate().filter(|(_, p)| **p) {
            // Element (o, i) of the `[out, in]` view is (i, o) of a transposed tensor.
            let at = match flip {
                Some((inp, out)) => (j % inp) * out + j / inp,
                None => j,
            };
            data[at * size..(at + 1) * size].fill(0);
        }
        Ok(())
    }

    fn label(&self, name: &str) -> String {
        self.names.get(name).cloned().unwrap_or_else(|| name.to_string())
    }
}

/// Which calibrated method, with its options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// |w|·‖X_j‖₂ compared within each output row (Sun et al. 2023).
    Wanda,
    /// Layer-wise OBS reconstruction (Frantar & Alistarh 2023), layer by layer through the
    /// layers already pruned.
    SparseGpt(Options),
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Wanda => "wanda",
            Method::SparseGpt(_) => "sparsegpt",
        }
    }
}

/// How far [`prune`] has come: calibration batches seen (Wanda), then targets pruned (Wanda) or
/// layers done (SparseGPT), each as `(done, total)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Calibrated(usize, usize),
    Pruned(usize, usize),
}

/// Prunes the `targets` (canonical names of encoder linear weights) of `m` by `method` and
/// `rule`, with `enc` (the same model, for its activations: SparseGPT also writes the pruned
/// maps into it) run on the calibration `batches`.
pub fn prune<E: From<ModelError>>(
    method: Method,
    m: &mut dyn Matrices,
    enc: &mut Encoder,
    batches: &[Batch],
    targets: &[String],
    rule: Rule,
    progress: &mut dyn FnMut(Step) -> Result<(), E>,
) -> Result<(), E> {
    if batches.is_empty() {
        return Err(ModelError::Invalid("calibrated pruning needs at least one calibration example".into()).into());
    }
    match method {
        Method::Wanda => run_wanda(m, enc, batches, targets, rule, progress),
        Method::SparseGpt(opts) => run_sparsegpt(m, enc, batches, targets, rule, opts, progress),
    }
}

pub(super) fn not_linear(method: Method, m: &dyn Matrices, name: &str) -> ModelError {
    ModelError::Invalid(format!(
        "{} applies to the blocks' linear weights; {} is not one",
        method.name(),
        m.label(name)
    ))
}

/// The columns of a 2-D target fed by `features` inputs, or the message saying why not.
pub(super) fn columns(m: &dyn Matrices, name: &str, features: usize) -> Result<usize, ModelError> {
    let shape = m.shape(name).unwrap_or_default();
    let cols = shape.last().copied().unwrap_or(0);
    if shape.len() != 2 || cols != features {
        return Err(ModelError::Invalid(format!(
            "tensor {}: shape {shape:?} does not match its input of {features} features",
            m.label(name)
        )));
    }
    Ok(cols)
}

fn run_wanda<E: From<ModelError>>(
    m: &mut dyn Matrices,
    enc: &Encoder,
    batches: &[Batch],
    targets: &[String],
    rule: Rule,
    progress: &mut dyn FnMut(Step) -> Result<(), E>,
) -> Result<(), E> {
    let norms = wanda::input_norms(enc, batches, &mut |done| progress(Step::Calibrated(done, batches.len())))?;
    for (i, name) in targets.iter().enumerate() {
        let n = norms.get(name).ok_or_else(|| not_linear(Method::Wanda, m, name))?;
        wanda_one(m, name, n, rule)?;
        progress(Step::Pruned(i + 1, targets.len()))?;
    }
    Ok(())
}

/// Wanda on one target (`[out, in]` as `m` shows it): its mask from the input norms, the
/// chosen weights zeroed.
pub(super) fn wanda_one(m: &mut dyn Matrices, name: &str, norms: &[f64], rule: Rule) -> Result<(), ModelError> {
    let cols = columns(m, name, norms.len())?;
    if let Rule::NM(p) = rule {
        if !cols.is_multiple_of(p.m) {
            return Err(ModelError::Invalid(format!(
                "tensor {}: its input dimension {cols} is not a multiple of M = {}",
                m.label(name),
                p.m
            )));
        }
    }
    let values = m.read(name)?;
    m.zero(name, &wanda::mask(&values, cols, norms, rule))
}

/// SparseGPT on one target: pruned and reconstructed from the Hessian of its input, written
/// back; returns the values as written (rounded to the tensor's dtype), `[out, in]`.
pub(super) fn sparsegpt_one(
    m: &mut dyn Matrices,
    name: &str,
    h: &sparsegpt::Hessian,
    rule: Rule,
    opts: Options,
) -> Result<Vec<f32>, ModelError> {
    let cols = columns(m, name, h.cols())?;
    let mut values = m.read(name)?;
    sparsegpt::prune(&mut values, cols, h, rule, opts)
        .map_err(|e| ModelError::Invalid(format!("tensor {}: {e}", m.label(name))))?;
    m.write(name, &values)
}

fn run_sparsegpt<E: From<ModelError>>(
    m: &mut dyn Matrices,
    enc: &mut Encoder,
    batches: &[Batch],
    targets: &[String],
    rule: Rule,
    opts: Options,
    progress: &mut dyn FnMut(Step) -> Result<(), E>,
) -> Result<(), E> {
    let family = enc.config.family;
    let sites = [Site::Attention, Site::AttentionOutput, Site::FfnIn, Site::FfnOut];
    let mut chosen: Vec<(sparsegpt::Target, &String)> = Vec::new();
    for name in targets {
        let found = (0..enc.num_layers()).find_map(|layer| {
            sites.iter().find_map(|&site| {
                site.modules(family)
                    .into_iter()
                    .find(|module| *name == format!("{}{module}.weight", family.layer_prefix(layer)))
                    .map(|module| sparsegpt::Target { layer, module, site })
            })
        });
        chosen.push((found.ok_or_else(|| not_linear(Method::SparseGpt(opts), m, name))?, name));
    }
    let last = chosen.iter().map(|(t, _)| t.layer).max().unwrap_or(0);
    let order: Vec<sparsegpt::Target> = chosen.iter().map(|(t, _)| *t).collect();
    sparsegpt::prune_sequentially::<E>(
        enc,
        batches,
        &order,
        &mut |target, h| {
            let name = chosen.iter().find(|(t, _)| *t == target).map(|(_, n)| *n).expect("a chosen target");
            // Later layers see the map as written (rounded to its dtype).
            Ok(sparsegpt_one(m, name, h, rule, opts)?)
        },
        &mut |l| progress(Step::Pruned(l + 1, last + 1)),
    )
}
