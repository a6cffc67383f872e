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
    /// −Σ over steps of w·g: weights moving away from zero score high. With [`ScoreAdam`] (the
    /// default) each step's −w·g is normalised as Adam normalises an update.
    Movement,
}

/// Adam's state for movement scores. The movement-pruning paper's reference implementation
/// learns the scores as parameters (gradient w·g through the straight-through mask) with the
/// same Adam optimizer as the weights, so each step moves a score by about its running
/// signal-to-noise ratio instead of by w·g itself. Plain sums of w·g let the largest weights'
/// noise dominate both ends of the ranking (the variance of w·Σg grows with w²), which prunes
/// large weights first near convergence; the normalised steps do not.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreAdam {
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Steps taken.
    pub t: u64,
}

impl ScoreAdam {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-12;
}

/// Scores of the target parameters, accumulated from the gradients of each optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub criterion: Criterion,
    /// Parameter indices in the net.
    pub targets: Vec<usize>,
    pub values: Vec<Vec<f32>>,
    /// Movement: Adam-normalised steps (the default); `None` sums −w·g as it comes.
    pub adam: Option<ScoreAdam>,
}

impl Scores {
    pub fn new(net: &Net, targets: Vec<usize>, criterion: Criterion) -> Scores {
        let values: Vec<Vec<f32>> = targets.iter().map(|&i| if criterion == Criterion::Magnitude { Vec::new() } else { vec![0.0; net.params[i].value.len()] }).collect();
        let adam = (criterion == Criterion::Movement).then(|| ScoreAdam { m: values.clone(), v: values.clone(), t: 0 });
        Scores { criterion, targets, values, adam }
    }

    /// Movement scores summing −w·g as it comes (the paper's formula with plain SGD).
    pub fn plain(mut self) -> Scores {
        self.adam = None;
        self
    }

    /// Adds one step's contribution.
    pub fn accumulate(&mut self, net: &Net, grads: &Grads) {
        self.accumulate_with(net, grads, None);
    }

    /// Adds one step's contribution with the weights `shadow` gives for the targets (the dense
    /// weights behind the masks) instead of the net's, whose masked elements are zero.
    pub fn accumulate_with(&mut self, net: &Net, grads: &Grads, shadow: Option<&[Vec<f32>]>) {
        let c = self.criterion;
        if c == Criterion::Magnitude {
            return;
        }
        if let Some(a) = self.adam.as_mut() {
            a.t += 1;
            let (b1, b2) = (ScoreAdam::BETA1, ScoreAdam::BETA2);
            let (c1, c2) = (1.0 - b1.powi(a.t.min(1 << 20) as i32), 1.0 - b2.powi(a.t.min(1 << 20) as i32));
            for (t, (s, &i)) in self.values.iter_mut().zip(&self.targets).enumerate() {
                let (w, g) = (shadow.map_or(&net.params[i].value, |sh| &sh[t]), &grads.0[i]);
                s.par_iter_mut().zip(a.m[t].par_iter_mut().zip(a.v[t].par_iter_mut())).zip(w.par_iter().zip(g.par_iter())).for_each(|((s, (m, v)), (w, g))| {
                    let d = w * g;
                    *m = b1 * *m + (1.0 - b1) * d;
                    *v = b2 * *v + (1.0 - b2) * d * d;
                    *s -= (*m / c1) / ((*v / c2).sqrt() + ScoreAdam::EPS);
                });
            }
            return;
        }
        for (t, (s, &i)) in self.values.iter_mut().zip(&self.targets).enumerate() {
            let (w, g) = (shadow.map_or(&net.params[i].value, |sh| &sh[t]), &grads.0[i]);
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
///
/// By default a pruned element stays pruned (its weight is zeroed). With [`Self::regrowing`]
/// the masks are instead chosen afresh from the scores at every step of the ramp, as movement
/// pruning's top-k does (Sanh et al. 2020): the weights behind the masks are kept (`shadow`),
/// their scores go on accumulating from the gradient of the effective weight (the
/// straight-through estimate), and an element whose score climbs back into the top-k returns
/// with the value it had when it was pruned. After `end` the masks are fixed.
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
    /// For regrowing masks: the dense values of the targets (the last value each element had
    /// while it was kept).
    pub shadow: Option<Vec<Vec<f32>>>,
}

impl GradualPruner {
    /// A pruner with sticky masks, nothing pruned yet.
    pub fn new(scores: Scores, ramp: Ramp, (start, end, every): (u64, u64, u64), target: f64, scope: Scope) -> GradualPruner {
        GradualPruner { scores, ramp, start, end, every, target, scope, reached: 0.0, shadow: None }
    }

    /// Masks chosen afresh at every step of the ramp, the pruned weights kept behind them
    /// (their values now in `net`).
    pub fn regrowing(mut self, net: &Net) -> GradualPruner {
        self.shadow = Some(self.scores.targets.iter().map(|&i| net.params[i].value.clone()).collect());
        self
    }

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

    /// Prunes the masks to the ramp's sparsity at `step` (the caller applies them to `net`).
    pub fn prune(&mut self, net: &mut Net, masks: &mut Masks, step: u64) {
        self.select_at(net, masks, self.sparsity_at(step));
    }

    fn select_at(&mut self, net: &mut Net, masks: &mut Masks, s: f64) {
        let keep = match &self.shadow {
            None => {
                let scores = self.scores.current(net);
                let existing: Vec<Option<&[bool]>> = self.scores.targets.iter().map(|&i| masks.0[i].as_deref()).collect();
                select(&scores, &existing, s, self.scope)
            }
            Some(shadow) => {
                // Re-chosen every step of the ramp: the accumulated scores are read in place.
                let magnitudes: Vec<Vec<f32>>;
                let scores = match self.scores.criterion {
                    Criterion::Magnitude => {
                        magnitudes = shadow.iter().map(|w| w.iter().map(|v| v.abs()).collect()).collect();
                        &magnitudes
                    }
                    _ => &self.scores.values,
                };
                let keep = select(scores, &vec![None; scores.len()], s, self.scope);
                // Elements coming back take the value they had when they were pruned.
                for ((&i, k), w) in self.scores.targets.iter().zip(&keep).zip(shadow) {
                    net.params[i].value.par_iter_mut().zip(k.par_iter().zip(w.par_iter())).for_each(|(v, (k, w))| {
                        if *k {
                            *v = *w;
                        }
                    });
                }
                keep
            }
        };
        for (&i, k) in self.scores.targets.iter().zip(keep) {
            masks.0[i] = Some(k);
        }
        self.reached = s;
    }

    /// Copies the kept elements' values (just updated) into the shadow weights.
    fn sync_shadow(&mut self, net: &Net, masks: &Masks) {
        if let Some(shadow) = self.shadow.as_mut() {
            for (&i, w) in self.scores.targets.iter().zip(shadow.iter_mut()) {
                let v = &net.params[i].value;
                match &masks.0[i] {
                    None => w.copy_from_slice(v),
                    Some(m) => w.par_iter_mut().zip(v.par_iter().zip(m.par_iter())).for_each(|(w, (v, k))| {
                        if *k {
                            *w = *v;
                        }
                    }),
                }
            }
        }
    }
}

impl Observer for GradualPruner {
    fn gradients(&mut self, net: &Net, grads: &Grads, _: &StepInfo) {
        self.scores.accumulate_with(net, grads, self.shadow.as_deref());
    }
    fn stepped(&mut self, net: &mut Net, masks: &mut Masks, state: &State, _: &StepInfo) -> Control {
        self.sync_shadow(net, masks);
        let step = state.step;
        if self.due(step) && self.sparsity_at(step) > self.reached {
            self.prune(net, masks, step);
        } else if self.shadow.is_some() && self.reached > 0.0 && step >= self.start && step <= self.end {
            self.select_at(net, masks, self.reached);
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
    fn regrowing_masks_bring_weights_back_with_their_values() {
        use crate::train::experiment::linear_targets;
        use crate::train::testing::{calibration, tiny_net};
        use crate::train::trainer::{train, Schedule};
        let mut net = tiny_net();
        let targets = linear_targets(&net);
        let dense = net.clone();
        let mut masks = Masks::none(&net);
        let mut sticky = GradualPruner::new(Scores::new(&net, targets.clone(), Criterion::Movement), Ramp::OneShot, (0, 10, 1), 0.5, Scope::Global);
        let mut regrow = GradualPruner::new(Scores::new(&net, targets.clone(), Criterion::Movement), Ramp::OneShot, (0, 10, 1), 0.5, Scope::Global).regrowing(&net);
        // Scores = |w|: the first selection prunes the smaller half.
        for p in [&mut sticky, &mut regrow] {
            p.scores.values = targets.iter().map(|&i| net.params[i].value.iter().map(|v| v.abs()).collect()).collect();
        }
        regrow.prune(&mut net, &mut masks, 0);
        masks.apply(&mut net);
        let (t, j) = (0, masks.0[targets[0]].as_ref().unwrap().iter().position(|k| !k).unwrap());
        let was = dense.params[targets[0]].value[j];
        assert!(was != 0.0 && net.params[targets[0]].value[j] == 0.0);
        let mut sticky_masks = masks.clone();
        // The pruned element's score climbs to the top: the regrowing masks take it back, with
        // its old value, at the same sparsity; sticky masks do not.
        for p in [&mut sticky, &mut regrow] {
            p.scores.values[t][j] = 1e9;
            p.reached = 0.5;
        }
        let state = State::new(&Schedule::default());
        let info = StepInfo { step: 1, total: 10, loss: 0.0, learning_rate: 0.0 };
        let state = State { step: 1, ..state };
        regrow.stepped(&mut net, &mut masks, &state, &info);
        masks.apply(&mut net);
        assert!(masks.0[targets[0]].as_ref().unwrap()[j]);
        assert_eq!(net.params[targets[0]].value[j], was);
        let (z, n) = masks.counts();
        assert!((z as f64 / n as f64 - 0.5).abs() < 1e-3, "sparsity {}", z as f64 / n as f64);
        let mut sticky_net = net.clone();
        sticky.stepped(&mut sticky_net, &mut sticky_masks, &state, &info);
        assert!(!sticky_masks.0[targets[0]].as_ref().unwrap()[j]);

        // In training, masked elements are scored by the gradient of their effective (zero)
        // weight times the weight kept behind the mask, so their scores keep moving.
        let mut net = dense.clone();
        let mut masks = Masks::none(&net);
        let mut p = GradualPruner::new(Scores::new(&net, targets.clone(), Criterion::Movement), Ramp::OneShot, (1, 100, 1), 0.5, Scope::Global).regrowing(&net);
        let s = |steps| Schedule { epochs: 1, max_steps: Some(steps), batch_size: 8, learning_rate: 1e-3, ..Default::default() };
        let data = calibration(32);
        let mut state = State::new(&s(1));
        train(&mut net, &data, &s(1), &mut masks, &mut state, None, &mut p).unwrap();
        let pruned_at = p.scores.values.clone();
        train(&mut net, &data, &s(4), &mut masks, &mut state, None, &mut p).unwrap();
        let (mut behind, mut moved) = (0, 0);
        for (t, &i) in targets.iter().enumerate() {
            let m = masks.0[i].as_ref().unwrap();
            for (e, k) in m.iter().enumerate() {
                if !k {
                    assert_eq!(net.params[i].value[e], 0.0, "masked weights are zero in the net");
                    behind += usize::from(p.shadow.as_ref().unwrap()[t][e] != 0.0);
                    moved += usize::from(p.scores.values[t][e] != pruned_at[t][e]);
                }
            }
        }
        let (z, n) = masks.counts();
        assert!(behind > z / 2, "the pruned weights are kept behind the masks ({behind} of {z})");
        assert!(moved > z / 2, "the scores of pruned elements go on accumulating ({moved} of {z})");
        assert!((z as f64 / n as f64 - 0.5).abs() < 1e-3);
    }

    #[test]
    fn movement_scores_take_adam_normalised_steps() {
        use crate::train::experiment::linear_targets;
        use crate::train::testing::tiny_net;
        let mut net = tiny_net();
        let i = linear_targets(&net)[0];
        // A large and a small weight moving steadily away from zero, and a large weight whose
        // gradient only flips sign (noise).
        net.params[i].value[..3].copy_from_slice(&[1.0, 1e-3, 1.0]);
        let mut adam = Scores::new(&net, vec![i], Criterion::Movement);
        let mut plain = Scores::new(&net, vec![i], Criterion::Movement).plain();
        let mut grads = net.zero_grads();
        for step in 0..10 {
            grads.0[i][..3].copy_from_slice(&[-1e-2, -1e-2, if step % 2 == 0 { 1e-2 } else { -1e-2 }]);
            adam.accumulate(&net, &grads);
            plain.accumulate(&net, &grads);
        }
        let (a, p) = (&adam.values[0], &plain.values[0]);
        assert!((a[0] - 10.0).abs() < 1e-3 && (a[1] - 10.0).abs() < 1e-3, "steady movement scores one per step whatever the weight: {:?}", &a[..3]);
        assert!(a[2].abs() < 2.0, "noise scores little: {}", a[2]);
        assert!((p[0] - 0.1).abs() < 1e-6 && (p[1] - 1e-4).abs() < 1e-9 && p[2].abs() < 1e-6, "plain sums of -w·g: {:?}", &p[..3]);
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
