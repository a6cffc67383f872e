//! The fine-tuning loop: length-grouped batches padded to their longest, dropout, gradient
//! accumulation, global-norm clipping, AdamW with linear warm-up and decay, masks that keep
//! pruned weights exactly zero, optional distillation from a teacher, and checkpoints that
//! resume to the same weights as an uninterrupted run.
//!
//! Everything random is a function of the seed and the position in training: the batch order
//! of epoch e is `shuffled(seed + e)` (or `length_grouped`), the dropout masks of micro-batch j of optimizer step
//! s hash (seed, s, j). A checkpoint therefore only needs the weights, the optimizer moments,
//! the masks and the step count (the data position is the step).

use super::batch::{by_length, length_grouped, pad, shuffled, Padded};
use super::loss::{task_loss, Distill, Targets};
use super::net::{splitmix, Grads, Net};
use super::optim::{clip_grad_norm, linear_warmup_decay, AdamW, AdamWConfig, Param};
use crate::engine::io::st::{self, Dtype};
use crate::engine::model::heads::HeadKind;
use crate::engine::model::ModelError;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The gold answer of one training example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Class(usize),
    Score(f32),
    /// Start and end token (question answering).
    Span(usize, usize),
}

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub target: Target,
}

/// How long and how fast to train.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub epochs: u32,
    /// Stop after this many optimizer steps (overrides `epochs`, as Hugging Face's `max_steps`).
    pub max_steps: Option<u64>,
    pub learning_rate: f32,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    pub warmup_ratio: f32,
    pub weight_decay: f32,
    pub max_grad_norm: Option<f32>,
    pub seed: u64,
    /// Batches of similar lengths (Hugging Face's `group_by_length`) instead of a plain shuffle
    /// (its default). Classification and regression compute real tokens only, so padding
    /// costs them nothing and the plain shuffle is the default here too.
    pub group_by_length: bool,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            epochs: 1,
            max_steps: None,
            learning_rate: 5e-5,
            batch_size: 32,
            accumulation: 1,
            warmup_ratio: 0.06,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            seed: 42,
            group_by_length: false,
        }
    }
}

impl Schedule {
    /// Optimizer steps in one epoch over `n` examples.
    pub fn steps_per_epoch(&self, n: usize) -> u64 {
        (n.div_ceil(self.batch_size.max(1)).div_ceil(self.accumulation.max(1))) as u64
    }
    pub fn total_steps(&self, n: usize) -> u64 {
        let by_epochs = u64::from(self.epochs) * self.steps_per_epoch(n);
        self.max_steps.unwrap_or(by_epochs)
    }
    /// Warm-up steps: ⌈total · ratio⌉, as Hugging Face's `get_warmup_steps`.
    pub fn warmup_steps(&self, n: usize) -> u64 {
        (self.total_steps(n) as f64 * f64::from(self.warmup_ratio)).ceil() as u64
    }
}

/// Masks that training keeps: for each parameter of the net, `None` (free) or a keep flag per
/// element. Masked weights are zero after every optimizer step and their gradients are zero
/// before clipping (as PyTorch's pruning reparametrisation `w = w_orig · mask` gives).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Masks(pub Vec<Option<Vec<bool>>>);

impl Masks {
    pub fn none(net: &Net) -> Masks {
        Masks(vec![None; net.params.len()])
    }

    /// Masks keeping exactly the non-zero elements of the parameters `select` picks by name.
    pub fn from_zeros(net: &Net, select: impl Fn(&str) -> bool) -> Masks {
        Masks(net.params.iter().map(|p| select(&p.name).then(|| p.value.iter().map(|v| *v != 0.0).collect())).collect())
    }

    /// Zeroes the masked weights.
    pub fn apply(&self, net: &mut Net) {
        for (p, m) in net.params.iter_mut().zip(&self.0) {
            if let Some(m) = m {
                p.value.par_iter_mut().zip(m.par_iter()).for_each(|(v, k)| {
                    if !*k {
                        *v = 0.0;
                    }
                });
            }
        }
    }

    fn apply_grads(&self, grads: &mut Grads) {
        for (g, m) in grads.0.iter_mut().zip(&self.0) {
            if let Some(m) = m {
                g.par_iter_mut().zip(m.par_iter()).for_each(|(v, k)| {
                    if !*k {
                        *v = 0.0;
                    }
                });
            }
        }
    }

    /// (masked elements, elements under a mask).
    pub fn counts(&self) -> (usize, usize) {
        self.0.iter().flatten().fold((0, 0), |(z, n), m| (z + m.iter().filter(|k| !**k).count(), n + m.len()))
    }
}

/// Where training stands: optimizer steps taken (which is also the data position) and the
/// optimizer's state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub step: u64,
    pub adam: AdamW,
}

impl State {
    pub fn new(s: &Schedule) -> State {
        State { step: 0, adam: AdamW::new(AdamWConfig { weight_decay: s.weight_decay, ..Default::default() }) }
    }
}

/// What an observer tells the loop after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// One optimizer step as observers see it.
pub struct StepInfo {
    /// Steps done, this one included.
    pub step: u64,
    pub total: u64,
    pub loss: f64,
    pub learning_rate: f32,
}

/// Hooks into the loop: gradient-based pruning reads the gradients, gradual pruning changes
/// the masks, jobs report progress, write checkpoints and stop on cancellation.
pub trait Observer {
    /// The step's accumulated, unclipped gradients, before the update and before the masks
    /// zero those of pruned elements: for a pruned element it is the gradient with respect to
    /// the effective (zero) weight, which is what regrowing masks score it by.
    fn gradients(&mut self, _net: &Net, _grads: &Grads, _info: &StepInfo) {}
    /// After the update (masked weights are zero). May change `masks`; they are applied at once.
    fn stepped(&mut self, _net: &mut Net, _masks: &mut Masks, _state: &State, _info: &StepInfo) -> Control {
        Control::Continue
    }
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// A padded batch of examples and their targets.
pub fn batch_of(examples: &[Example], idx: &[usize], pad_id: u32) -> (Padded, Targets) {
    let seqs: Vec<(&[u32], &[u32])> =
        idx.iter().map(|&i| (examples[i].ids.as_slice(), examples[i].type_ids.as_slice())).collect();
    let b = pad(&seqs, pad_id);
    let targets = match examples.get(idx[0]).map(|e| e.target) {
        Some(Target::Score(_)) => Targets::Scores(
            idx.iter().map(|&i| if let Target::Score(s) = examples[i].target { s } else { f32::NAN }).collect(),
        ),
        Some(Target::Span(..)) => Targets::Spans(
            idx.iter()
                .map(|&i| if let Target::Span(s, e) = examples[i].target { (s, e) } else { (usize::MAX, usize::MAX) })
                .collect(),
        ),
        _ => Targets::Classes(
            idx.iter().map(|&i| if let Target::Class(c) = examples[i].target { c } else { 0 }).collect(),
        ),
    };
    (b, targets)
}

fn check_targets(kind: HeadKind, data: &[Example]) -> Result<(), ModelError> {
    for (i, e) in data.iter().enumerate() {
        let ok = match (kind, e.target) {
            (HeadKind::Classification(n), Target::Class(c)) => c < n,
            (HeadKind::Regression, Target::Score(s)) => s.is_finite(),
            (HeadKind::QuestionAnswering, Target::Span(s, t)) => s <= t,
            _ => false,
        };
        if !ok {
            return Err(ModelError::Invalid(format!(
                "example {i}: target {:?} does not fit a {kind:?} head",
                e.target
            )));
        }
    }
    Ok(())
}

/// Trains `net` from `state` until the schedule's last step (or an observer stops it).
/// Returns the mean loss of the steps run here.
pub fn train(
    net: &mut Net,
    data: &[Example],
    s: &Schedule,
    masks: &mut Masks,
    state: &mut State,
    teacher: Option<(&Net, Distill)>,
    obs: &mut dyn Observer,
) -> Result<f64, ModelError> {
    if data.is_empty() {
        return Err(ModelError::Invalid("no training examples".into()));
    }
    check_targets(net.kind, data)?;
    let lengths: Vec<usize> = data.iter().map(|e| e.ids.len()).collect();
    let (total, warmup, per_epoch) =
        (s.total_steps(data.len()), s.warmup_steps(data.len()), s.steps_per_epoch(data.len()));
    let pad_id = net.config.pad_token_id;
    let mut grads = net.zero_grads();
    let mut order: Option<(u64, Vec<Vec<usize>>)> = None;
    let (mut sum, mut count) = (0f64, 0u64);
    masks.apply(net);
    while state.step < total {
        let epoch = state.step / per_epoch;
        if order.as_ref().map(|o| o.0) != Some(epoch) {
            let seed = s.seed.wrapping_add(epoch);
            order = Some((
                epoch,
                if s.group_by_length {
                    length_grouped(&lengths, s.batch_size, seed)
                } else {
                    shuffled(lengths.len(), s.batch_size, seed)
                },
            ));
        }
        let batches = &order.as_ref().expect("order").1;
        let k = (state.step % per_epoch) as usize * s.accumulation;
        let group = &batches[k..(k + s.accumulation).min(batches.len())];
        grads.zero();
        let mut loss = 0f64;
        for (j, idx) in group.iter().enumerate() {
            let (b, targets) = batch_of(data, idx, pad_id);
            let seed = splitmix(s.seed ^ splitmix(state.step.wrapping_mul(1 << 16) + j as u64));
            let out = net.forward(&b, Some(seed))?;
            let t_logits = teacher.map(|(t, _)| t.forward(&b, None).map(|o| o.logits)).transpose()?;
            let (l, mut d) = task_loss(&out.logits, &targets, b.len, t_logits.as_deref().zip(teacher.map(|t| t.1)));
            let scale = 1.0 / group.len() as f32;
            d.iter_mut().for_each(|v| *v *= scale);
            loss += l / group.len() as f64;
            net.backward(&out.tape, &d, &mut grads, None);
        }
        let lr = s.learning_rate * linear_warmup_decay(state.step, warmup, total);
        let info = StepInfo { step: state.step + 1, total, loss, learning_rate: lr };
        obs.gradients(net, &grads, &info);
        masks.apply_grads(&mut grads);
        if let Some(max) = s.max_grad_norm {
            let mut gs: Vec<&mut [f32]> = grads.0.iter_mut().map(|g| g.as_mut_slice()).collect();
            clip_grad_norm(&mut gs, max);
        }
        let mut params: Vec<Param> = net
            .params
            .iter_mut()
            .zip(&grads.0)
            .map(|(p, g)| Param { name: &p.name, value: &mut p.value, grad: g })
            .collect();
        state.adam.update(&mut params, lr);
        masks.apply(net);
        state.step += 1;
        sum += loss;
        count += 1;
        let control = obs.stepped(net, masks, state, &info);
        masks.apply(net);
        if control == Control::Stop {
            break;
        }
    }
    Ok(if count == 0 { 0.0 } else { sum / count as f64 })
}

/// Logits of every example in file order (eval mode): one `Vec` per example (`[labels]`, or
/// `[len, 2]` start/end pairs over its own tokens for question answering).
pub fn predict(net: &Net, data: &[Example], batch: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let lengths: Vec<usize> = data.iter().map(|e| e.ids.len()).collect();
    let mut out = vec![Vec::new(); data.len()];
    for idx in by_length(&lengths, batch) {
        let (b, _) = batch_of(data, &idx, net.config.pad_token_id);
        let o = net.forward(&b, None)?;
        let per = o.logits.len() / b.rows;
        for (r, &i) in idx.iter().enumerate() {
            let row = &o.logits[r * per..(r + 1) * per];
            out[i] = match net.kind {
                HeadKind::QuestionAnswering => row[..2 * lengths[i]].to_vec(),
                _ => row.to_vec(),
            };
        }
    }
    Ok(out)
}

/// A checkpoint: weights, optimizer state, masks, step, and any extra named buffers an
/// observer keeps (movement scores, say), as one safetensors file.
pub fn checkpoint(net: &Net, masks: &Masks, state: &State, extra: &BTreeMap<String, Vec<f32>>) -> Vec<u8> {
    checkpoint_with_notes(net, masks, state, extra, "")
}

/// [`checkpoint`] with a free-form text (a caller's own JSON, say) kept in the file's metadata.
pub fn checkpoint_with_notes(
    net: &Net,
    masks: &Masks,
    state: &State,
    extra: &BTreeMap<String, Vec<f32>>,
    notes: &str,
) -> Vec<u8> {
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut t: Vec<(String, Dtype, Vec<u64>, Vec<u8>)> = Vec::new();
    for (i, p) in net.params.iter().enumerate() {
        let shape: Vec<u64> = p.shape.iter().map(|d| *d as u64).collect();
        t.push((format!("param/{}", p.name), Dtype::F32, shape.clone(), f(&p.value)));
        if let Some((m, v)) = state.adam.moments.get(&p.name) {
            t.push((format!("adam_m/{}", p.name), Dtype::F32, shape.clone(), f(m)));
            t.push((format!("adam_v/{}", p.name), Dtype::F32, shape.clone(), f(v)));
        }
        if let Some(m) = &masks.0[i] {
            t.push((format!("mask/{}", p.name), Dtype::U8, shape, m.iter().map(|k| u8::from(*k)).collect()));
        }
    }
    for (k, v) in extra {
        t.push((format!("extra/{k}"), Dtype::F32, vec![v.len() as u64], f(v)));
    }
    let mut meta = BTreeMap::new();
    meta.insert("step".to_string(), state.step.to_string());
    meta.insert("adam_step".to_string(), state.adam.step.to_string());
    meta.insert("notes".to_string(), notes.to_string());
    meta.insert(
        "adam_config".to_string(),
        serde_json::json!([
            state.adam.config.beta1,
            state.adam.config.beta2,
            state.adam.config.eps,
            state.adam.config.weight_decay
        ])
        .to_string(),
    );
    st::serialize(&t, Some(&meta))
}

/// What [`restore`] gives back besides the weights: masks, state and the extra buffers.
pub type Restored = (Masks, State, BTreeMap<String, Vec<f32>>);

/// The notes of a checkpoint written by [`checkpoint_with_notes`].
pub fn checkpoint_notes(bytes: &[u8]) -> Option<String> {
    st::parse(bytes).ok()?.metadata.get("notes").cloned()
}

/// Restores a [`checkpoint`] into `net` (same architecture) and returns masks, state and the
/// extra buffers.
pub fn restore(net: &mut Net, bytes: &[u8]) -> Result<Restored, ModelError> {
    let bad = |m: String| ModelError::Invalid(format!("checkpoint: {m}"));
    let h = st::parse(bytes).map_err(bad)?;
    let data = &bytes[h.data_start as usize..];
    let floats = |name: &str| -> Option<Vec<f32>> {
        let t = h.tensors.get(name)?;
        st::floats(&data[t.begin as usize..t.end as usize], t.dtype)
    };
    let meta = |k: &str| h.metadata.get(k).ok_or_else(|| bad(format!("no {k}")));
    let step: u64 = meta("step")?.parse().map_err(|_| bad("bad step".into()))?;
    let adam_step: u64 = meta("adam_step")?.parse().map_err(|_| bad("bad adam_step".into()))?;
    let cfg: Vec<f32> = serde_json::from_str(meta("adam_config")?).map_err(|e| bad(e.to_string()))?;
    let [beta1, beta2, eps, weight_decay] = cfg[..] else { return Err(bad("bad adam_config".into())) };
    let mut adam = AdamW::new(AdamWConfig { beta1, beta2, eps, weight_decay });
    adam.step = adam_step;
    let mut masks = Masks::none(net);
    for (i, p) in net.params.iter_mut().enumerate() {
        let v = floats(&format!("param/{}", p.name)).ok_or_else(|| bad(format!("no parameter {}", p.name)))?;
        if v.len() != p.value.len() {
            return Err(bad(format!("{} has {} values, the model {}", p.name, v.len(), p.value.len())));
        }
        p.value = v;
        if let (Some(m), Some(v)) = (floats(&format!("adam_m/{}", p.name)), floats(&format!("adam_v/{}", p.name))) {
            adam.moments.insert(p.name.clone(), (m, v));
        }
        if let Some(t) = h.tensors.get(&format!("mask/{}", p.name)) {
            masks.0[i] = Some(data[t.begin as usize..t.end as usize].iter().map(|b| *b != 0).collect());
        }
    }
    let extra = h
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("extra/").map(|n| (n.to_string(), floats(k).unwrap_or_default())))
        .collect();
    Ok((masks, State { step, adam }, extra))
}
