//! Pruning with gradients and during fine-tuning: first-order Taylor scores |w·g| and movement
//! scores −Σ w·g (Sanh et al. 2020) accumulated over steps, head importance from the gradient of
//! the loss with respect to a head mask (Michel et al. 2019), masks chosen from scores (globally
//! or per tensor), and the schedules that raise sparsity while training: cubic (Zhu & Gupta
//! 2017) and iterative (the same fraction of the remaining weights at each round).

use super::loss::task_loss;
use super::net::{Grads, Net};
use super::trainer::{batch_of, Control, Example, Masks, Observer, State, StepInfo};
use crate::engine::magnitude::Scope;
use crate::engine::model::ModelError;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// |w|.
    Magnitude,
    /// Σ over steps of |w·g|.
    Taylor,
    /// −Σ over steps of w·g: weights moving away from zero score high.
    Movement,
}

/// Scores of the target parameters, accumulated from the gradients of each optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub criterion: Criterion,
    /// Parameter indices in the net.
    pub targets: Vec<usize>,
    pub values: Vec<Vec<f32>>,
}

impl Scores {
    pub fn new(net: &Net, targets: Vec<usize>, criterion: Criterion) -> Scores {
        let values = targets.iter().map(|&i| if criterion == Criterion::Magnitude { Vec::new() } else { vec![0.0; net.params[i].value.len()] }).collect();
        Scores { criterion, targets, values }
    }

    /// Adds one step's contribution.
    pub fn accumulate(&mut self, net: &Net, grads: &Grads) {
        let c = self.criterion;
        if c == Criterion::Magnitude {
            return;
        }
        for (s, &i) in self.values.iter_mut().zip(&self.targets) {
            let (w, g) = (&net.params[i].value, &grads.0[i]);
            s.par_iter_mut().zip(w.par_iter().zip(g.par_iter())).for_each(|(s, (w, g))| match c {
                Criterion::Taylor => *s += (w * g).abs(),
                _ => *s -= w * g,
            });
        }
    }

    /// The scores now (for magnitude: |w| of the current weights).
    pub fn current(&self, net: &Net) -> Vec<Vec<f32>> {
        match self.criterion {
            Criterion::Magnitude => self.targets.iter().map(|&i| net.params[i].value.iter().map(|v| v.abs()).collect()).collect(),
            _ => self.values.clone(),
        }
    }
}

/// Sparsity at `step` of the cubic schedule from `initial` at `start` to `target` at `end`:
/// s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(t₁ − t₀))³.
pub fn cubic(step: u64, start: u64, end: u64, initial: f64, target: f64) -> f64 {
    if step <= start {
        return initial;
    }
    if step >= end || end <= start {
        return target;
    }
    let frac = (step - start) as f64 / (end - start) as f64;
    target + (initial - target) * (1.0 - frac).powi(3)
}

/// Sparsity after round `round` of `rounds` when each round prunes the same fraction of the
/// remaining weights: 1 − (1 − s)^(round/rounds).
pub fn iterative(round: u64, rounds: u64, target: f64) -> f64 {
    if rounds == 0 {
        return target;
    }
    1.0 - (1.0 - target).powf(round.min(rounds) as f64 / rounds as f64)
}

/// Keep flags leaving `sparsity` of the elements pruned, the lowest scores first, over all
/// tensors together (`Global`) or in each tensor (`Local`). Elements already pruned (`false`
/// in `existing`) stay pruned and count towards the sparsity. Ties go to the lower index.
pub fn select(scores: &[Vec<f32>], existing: &[Option<&[bool]>], sparsity: f64, scope: Scope) -> Vec<Vec<bool>> {
    let ranked = |s: &[f32], e: Option<&[bool]>| -> Vec<f32> { s.iter().enumerate().map(|(j, v)| if e.is_some_and(|e| !e[j]) { f32::NEG_INFINITY } else { *v }).collect() };
    let prune_lowest = |vals: &mut [(f32, usize, usize)], k: usize| {
        if k > 0 && k <= vals.len() {
            vals.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        }
    };
    let mut keep: Vec<Vec<bool>> = scores.iter().map(|s| vec![true; s.len()]).collect();
    match scope {
        Scope::Global => {
            let mut all: Vec<(f32, usize, usize)> = scores.iter().zip(existing).enumerate().flat_map(|(t, (s, e))| ranked(s, *e).into_iter().enumerate().map(move |(j, v)| (v, t, j))).collect();
            let k = ((all.len() as f64) * sparsity).round() as usize;
            let k = k.min(all.len());
            prune_lowest(&mut all, k);
            for &(_, t, j) in &all[..k.min(all.len())] {
                keep[t][j] = false;
            }
        }
        Scope::Local => {
            for (t, (s, e)) in scores.iter().zip(existing).enumerate() {
                let mut vals: Vec<(f32, usize, usize)> = ranked(s, *e).into_iter().enumerate().map(|(j, v)| (v, 0, j)).collect();
                let k = ((vals.len() as f64) * sparsity).round() as usize;
                let k = k.min(vals.len());
                prune_lowest(&mut vals, k);
                for &(_, _, j) in &vals[..k.min(vals.len())] {
                    keep[t][j] = false;
                }
            }
        }
    }
    keep
}

/// How sparsity rises during training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ramp {
    Cubic,
    /// `rounds` equal-fraction rounds.
    Iterative { rounds: u64 },
    /// All at `start`.
    OneShot,
}

/// An [`Observer`] that accumulates scores every step and prunes at `start`, every `every`
/// steps until `end`, and at `end`, following the ramp to `target`.
pub struct GradualPruner {
    pub scores: Scores,
    pub ramp: Ramp,
    pub start: u64,
    pub end: u64,
    pub every: u64,
    pub target: f64,
    pub scope: Scope,
    /// The sparsity the masks have now.
    pub reached: f64,
}

impl GradualPruner {
    /// The sparsity the ramp asks for after optimizer step `step`.
    pub fn sparsity_at(&self, step: u64) -> f64 {
        match self.ramp {
            Ramp::OneShot => self.target,
            Ramp::Cubic => cubic(step, self.start, self.end, 0.0, self.target),
            Ramp::Iterative { rounds } => {
                let span = (self.end.saturating_sub(self.start)).max(1);
                let round = ((step.saturating_sub(self.start)) * rounds).div_ceil(span);
                iterative(round.max(1), rounds, self.target)
            }
        }
    }

    fn due(&self, step: u64) -> bool {
        step >= self.start && (step <= self.end) && ((step - self.start).is_multiple_of(self.every.max(1)) || step == self.end)
    }

    /// Prunes the masks to the ramp's sparsity at `step`.
    pub fn prune(&mut self, net: &Net, masks: &mut Masks, step: u64) {
        let s = self.sparsity_at(step);
        let scores = self.scores.current(net);
        let existing: Vec<Option<&[bool]>> = self.scores.targets.iter().map(|&i| masks.0[i].as_deref()).collect();
        let keep = select(&scores, &existing, s, self.scope);
        for (&i, k) in self.scores.targets.iter().zip(keep) {
            masks.0[i] = Some(k);
        }
        self.reached = s;
    }
}

impl Observer for GradualPruner {
    fn gradients(&mut self, net: &Net, grads: &Grads, _: &StepInfo) {
        self.scores.accumulate(net, grads);
    }
    fn stepped(&mut self, net: &mut Net, masks: &mut Masks, state: &State, _: &StepInfo) -> Control {
        if self.due(state.step) && self.sparsity_at(state.step) > self.reached {
            self.prune(net, masks, state.step);
        }
        Control::Continue
    }
}

/// One pass over `data` without updates (eval mode): accumulates gradient scores (Taylor,
/// movement) and, per layer and head, |∂L/∂ξ| of a head mask ξ summed over batches, normalised
/// per layer by its L2 norm as Michel et al. do.
pub fn gradient_pass(net: &Net, data: &[Example], batch: usize, scores: Option<&mut Scores>) -> Result<Vec<Vec<f32>>, ModelError> {
    let lengths: Vec<usize> = data.iter().map(|e| e.ids.len()).collect();
    let heads = net.heads();
    let mut importance: Vec<Vec<f32>> = heads.iter().map(|&h| vec![0.0; h]).collect();
    let mut grads = net.zero_grads();
    let mut scores = scores;
    for idx in super::batch::by_length(&lengths, batch) {
        let (b, targets) = batch_of(data, &idx, net.config.pad_token_id);
        let out = net.forward(&b, None)?;
        let (_, d) = task_loss(&out.logits, &targets, b.len, None);
        grads.zero();
        let mut hg: Vec<Vec<f32>> = heads.iter().map(|&h| vec![0.0; h]).collect();
        net.backward(&out.tape, &d, &mut grads, Some(&mut hg));
        for (acc, g) in importance.iter_mut().zip(hg) {
            acc.iter_mut().zip(g).for_each(|(a, v)| *a += v.abs());
        }
        if let Some(s) = scores.as_deref_mut() {
            s.accumulate(net, &grads);
        }
    }
    for layer in importance.iter_mut() {
        let norm = layer.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            layer.iter_mut().for_each(|v| *v /= norm);
        }
    }
    Ok(importance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_and_iterative_ramps() {
        assert_eq!(cubic(0, 0, 100, 0.0, 0.8), 0.0);
        assert_eq!(cubic(100, 0, 100, 0.0, 0.8), 0.8);
        assert!((cubic(50, 0, 100, 0.0, 0.8) - 0.7).abs() < 1e-12, "0.8·(1 − 0.5³)");
        assert!(cubic(10, 0, 100, 0.0, 0.8) > 0.8 * 0.1, "prunes fast early");
        assert!((iterative(1, 2, 0.75) - 0.5).abs() < 1e-12);
        assert_eq!(iterative(2, 2, 0.75), 0.75);
    }

    #[test]
    fn selection_global_local_and_sticky() {
        let scores = vec![vec![5.0, 1.0, 3.0, 4.0], vec![0.5, 6.0]];
        let g = select(&scores, &[None, None], 0.5, Scope::Global);
        assert_eq!(g, vec![vec![true, false, false, true], vec![false, true]]);
        let l = select(&scores, &[None, None], 0.5, Scope::Local);
        assert_eq!(l, vec![vec![true, false, false, true], vec![false, true]]);
        // An element already pruned stays pruned even with the best score.
        let existing = [true, true, true, true];
        let prior = [false, true];
        let s = select(&scores, &[Some(&existing), Some(&prior)], 1.0 / 6.0, Scope::Global);
        assert_eq!(s, vec![vec![true; 4], vec![false, true]]);
        let s = select(&scores, &[None, Some(&[true, false])], 2.0 / 6.0, Scope::Global);
        assert_eq!(s, vec![vec![true; 4], vec![false, false]]);
    }
}
