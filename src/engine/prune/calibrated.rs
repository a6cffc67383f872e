//! The calibrated methods, Wanda and SparseGPT, each driven once over [`Matrices`]: the view of
//! a model's weight matrices that both a checkpoint's bytes ([`Checkpoint`]) and the trainable
//! net (`train::net`) provide. The prune job and the experiment's pruning stage call
//! [`prune`]; neither walks the layers itself.

use super::sparsegpt::{self, Options};
use super::wanda::{self, Rule};
use crate::engine::io::st::{self, Header};
use crate::engine::model::arch::{self, Family};
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
/// (e.g. with DistilBERT's or a task model's prefix), found by their canonical names.
pub struct Checkpoint<'a> {
    bytes: &'a mut [u8],
    header: &'a Header,
    names: HashMap<String, String>,
}

impl<'a> Checkpoint<'a> {
    pub fn new(bytes: &'a mut [u8], header: &'a Header, family: Family, targets: &[String]) -> Checkpoint<'a> {
        let names = targets.iter().map(|n| (arch::canonical_name(family, n).to_string(), n.clone())).collect();
        Checkpoint { bytes, header, names }
    }

    /// The canonical names of the targets, in the order given.
    pub fn canonical(family: Family, targets: &[String]) -> Vec<String> {
        targets.iter().map(|n| arch::canonical_name(family, n).to_string()).collect()
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
        self.tensor(name).ok().map(|(t, _)| t.shape.iter().map(|&d| d as usize).collect())
    }

    fn read(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (t, r) = self.tensor(name)?;
        st::floats(&self.bytes[r], t.dtype).ok_or_else(|| {
            ModelError::Invalid(format!(
                "tensor {}: pruning needs a float tensor, not {}",
                self.label(name),
                t.dtype.name()
            ))
        })
    }

    fn write(&mut self, name: &str, values: &[f32]) -> Result<Vec<f32>, ModelError> {
        let (t, r) = self.tensor(name)?;
        let dtype = t.dtype;
        if !st::write_floats(values, dtype, &mut self.bytes[r.clone()]) {
            return Err(ModelError::Invalid(format!(
                "tensor {}: cannot write {} values as {}",
                self.label(name),
                values.len(),
                dtype.name()
            )));
        }
        Ok(st::floats(&self.bytes[r], dtype).expect("written as floats"))
    }

    fn zero(&mut self, name: &str, prune: &[bool]) -> Result<(), ModelError> {
        let (t, r) = self.tensor(name)?;
        let size = t.dtype.size() as usize;
        let data = &mut self.bytes[r];
        for (j, _) in prune.iter().enumerate().filter(|(_, p)| **p) {
            data[j * size..(j + 1) * size].fill(0);
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

fn not_linear(method: Method, m: &dyn Matrices, name: &str) -> ModelError {
    ModelError::Invalid(format!(
        "{} applies to the encoder's linear weights; {} is not one",
        method.name(),
        m.label(name)
    ))
}

/// The columns of a 2-D target fed by `features` inputs, or the message saying why not.
fn columns(m: &dyn Matrices, name: &str, features: usize) -> Result<usize, ModelError> {
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
        let cols = columns(m, name, n.len())?;
        if let Rule::NM(p) = rule {
            if !cols.is_multiple_of(p.m) {
                return Err(ModelError::Invalid(format!(
                    "tensor {}: its input dimension {cols} is not a multiple of M = {}",
                    m.label(name),
                    p.m
                ))
                .into());
            }
        }
        let values = m.read(name)?;
        m.zero(name, &wanda::mask(&values, cols, n, rule))?;
        progress(Step::Pruned(i + 1, targets.len()))?;
    }
    Ok(())
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
            let cols = columns(m, name, h.cols())?;
            let mut values = m.read(name)?;
            sparsegpt::prune(&mut values, cols, h, rule, opts)
                .map_err(|e| ModelError::Invalid(format!("tensor {}: {e}", m.label(name))))?;
            // Later layers see the map as written (rounded to its dtype).
            let written = m.write(name, &values)?;
            let rows = written.len() / cols;
            Ok(candle_core::Tensor::from_vec(written, (rows, cols), &candle_core::Device::Cpu)
                .map_err(ModelError::from)?)
        },
        &mut |l| progress(Step::Pruned(l + 1, last + 1)),
    )
}
