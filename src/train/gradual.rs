//! Pruning with gradients and during fine-tuning: first-order Taylor scores |w·g| and movement
//! scores −Σ w·g (Sanh et al. 2020) accumulated over steps, head importance from the gradient of
//! the loss with respect to a head mask (Michel et al. 2019), masks chosen from scores (globally
//! or per tensor), and the schedules that raise sparsity while training: cubic (Zhu & Gupta
//! 2017) and iterative (the same fraction of the remaining weights at each round).

use super::loss::task_loss;
use super::net::{Grads, Net};
use super::trainer::{batch_of, Control, Example, Masks, Observer, State, StepInfo};
use crate::engine::model::ModelError;
use crate::engine::prune::select::select;
use crate::engine::prune::Scope;
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
        let values: Vec<Vec<f32>> = targets
            .iter()
            .map(|&i| if criterion == Criterion::Magnitude { Vec::new() } else { vec![0.0; net.params[i].value.len()] })
            .collect();
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
                s.par_iter_mut()
                    .zip(a.m[t].par_iter_mut().zip(a.v[t].par_iter_mut()))
                    .zip(w.par_iter().zip(g.par_iter()))
                    .for_each(|((s, (m, v)), (w, g))| {
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
            Criterion::Magnitude => {
                self.targets.iter().map(|&i| net.params[i].value.iter().map(|v| v.abs()).collect()).collect()
            }
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

/// How sparsity rises during training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ramp {
    Cubic,
    /// `rounds` equal-fraction rounds.
    Iterative {
        rounds: u64,
    },
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
    pub fn new(
        scores: Scores,
        ramp: Ramp,
        (start, end, every): (u64, u64, u64),
        target: f64,
        scope: Scope,
    ) -> GradualPruner {
        GradualPruner { scores, ramp, start, end, every, target, scope, reached: 0.0, shadow: None }
    }

    /// Masks chosen afresh at every step of the ramp, the pruned weights kept behind them
    /// (their values now in `net`).
    pub fn regrowing(mut self, net: &Net) -> GradualPruner {
        self.shadow = Some(self.scores.targets.iter().map(|&i| net.params[i].value.clone()).collect());
        self
    }

    /// The pruner's state as named buffers (scores, their Adam moments, the weights behind
    /// regrowing masks), in one list that [`Self::buffers`] and [`Self::restore_buffers`]
    /// share, so no piece of state can be saved without being restored.
    fn slots(&mut self) -> Vec<(String, &mut Vec<f32>)> {
        let mut out: Vec<(String, &mut Vec<f32>)> =
            self.scores.values.iter_mut().enumerate().map(|(i, v)| (format!("scores/{i}"), v)).collect();
        if let Some(a) = self.scores.adam.as_mut() {
            for (i, (m, v)) in a.m.iter_mut().zip(a.v.iter_mut()).enumerate() {
                out.push((format!("scores_m/{i}"), m));
                out.push((format!("scores_v/{i}"), v));
            }
        }
        out.extend(self.shadow.iter_mut().flatten().enumerate().map(|(i, w)| (format!("shadow/{i}"), w)));
        out
    }

    /// The state a checkpoint must carry to resume this pruner (besides `reached`), as named
    /// f32 buffers.
    pub fn buffers(&mut self) -> Vec<(String, Vec<f32>)> {
        // Exact in f32 up to 2^24 steps.
        let t = self.scores.adam.as_ref().map(|a| ("scores_t".to_string(), vec![a.t as f32]));
        let mut out: Vec<(String, Vec<f32>)> = self.slots().into_iter().map(|(k, v)| (k, v.clone())).collect();
        out.extend(t);
        out
    }

    /// Restores what [`Self::buffers`] saved; an error names a buffer that is missing or has
    /// the wrong length (a checkpoint from another model or pruner).
    pub fn restore_buffers(&mut self, saved: &std::collections::BTreeMap<String, Vec<f32>>) -> Result<(), String> {
        if let Some(a) = self.scores.adam.as_mut() {
            a.t = match saved.get("scores_t").map(|t| t.as_slice()) {
                Some([t]) => *t as u64,
                _ => return Err("the checkpoint lacks the pruner's buffer scores_t".into()),
            };
        }
        for (name, slot) in self.slots() {
            match saved.get(&name) {
                Some(v) if v.len() == slot.len() => slot.clone_from(v),
                Some(v) => {
                    return Err(format!(
                        "the checkpoint's pruner buffer {name} holds {} values, the pruner {}",
                        v.len(),
                        slot.len()
                    ))
                }
                None => return Err(format!("the checkpoint lacks the pruner's buffer {name}")),
            }
        }
        Ok(())
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
        step >= self.start
            && (step <= self.end)
            && ((step - self.start).is_multiple_of(self.every.max(1)) || step == self.end)
    }

    /// Prunes the masks to the ramp's sparsity at `step` (the caller applies them to `net`).
    pub fn prune(&mut self, net: &mut Net, masks: &mut Masks, step: u64) {
        self.select_at(net, masks, self.sparsity_at(step));
    }

    fn select_at(&mut self, net: &mut Net, masks: &mut Masks, s: f64) {
        let keep = match &self.shadow {
            None => {
                let scores = self.scores.current(net);
                let existing: Vec<Option<&[bool]>> =
                    self.scores.targets.iter().map(|&i| masks.0[i].as_deref()).collect();
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
pub fn gradient_pass(
    net: &Net,
    data: &[Example],
    batch: usize,
    scores: Option<&mut Scores>,
) -> Result<Vec<Vec<f32>>, ModelError> {
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
        use crate::train::net::linear_targets;
        use crate::train::testing::{calibration, tiny_net};
        use crate::train::trainer::{train, Schedule};
        let mut net = tiny_net();
        let targets = linear_targets(&net);
        let dense = net.clone();
        let mut masks = Masks::none(&net);
        let mut sticky = GradualPruner::new(
            Scores::new(&net, targets.clone(), Criterion::Movement),
            Ramp::OneShot,
            (0, 10, 1),
            0.5,
            Scope::Global,
        );
        let mut regrow = GradualPruner::new(
            Scores::new(&net, targets.clone(), Criterion::Movement),
            Ramp::OneShot,
            (0, 10, 1),
            0.5,
            Scope::Global,
        )
        .regrowing(&net);
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
        let mut p = GradualPruner::new(
            Scores::new(&net, targets.clone(), Criterion::Movement),
            Ramp::OneShot,
            (1, 100, 1),
            0.5,
            Scope::Global,
        )
        .regrowing(&net);
        let s = |steps| Schedule {
            epochs: 1,
            max_steps: Some(steps),
            batch_size: 8,
            learning_rate: 1e-3,
            ..Default::default()
        };
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
    fn pruner_state_round_trips_through_its_buffers() {
        use crate::train::net::linear_targets;
        use crate::train::testing::{calibration, tiny_net};
        use crate::train::trainer::{train, Schedule};
        let mut net = tiny_net();
        let targets = linear_targets(&net);
        let fresh = |net: &Net| {
            GradualPruner::new(
                Scores::new(net, targets.clone(), Criterion::Movement),
                Ramp::Cubic,
                (1, 100, 1),
                0.5,
                Scope::Global,
            )
            .regrowing(net)
        };
        let mut p = fresh(&net);
        let mut masks = Masks::none(&net);
        let s = Schedule { epochs: 1, max_steps: Some(3), batch_size: 8, learning_rate: 1e-3, ..Default::default() };
        train(&mut net, &calibration(32), &s, &mut masks, &mut State::new(&s), None, &mut p).unwrap();
        let saved: std::collections::BTreeMap<String, Vec<f32>> = p.buffers().into_iter().collect();
        let mut back = fresh(&tiny_net());
        assert_ne!(back.scores, p.scores);
        back.restore_buffers(&saved).unwrap();
        assert_eq!(back.scores, p.scores);
        assert_eq!(back.shadow, p.shadow);
        assert_eq!(back.scores.adam.as_ref().unwrap().t, 3);
        // A checkpoint missing a buffer, or with one of the wrong size, is refused by name.
        let mut short = saved.clone();
        short.remove("shadow/1");
        assert_eq!(
            fresh(&tiny_net()).restore_buffers(&short).unwrap_err(),
            "the checkpoint lacks the pruner's buffer shadow/1"
        );
        let mut wrong = saved.clone();
        wrong.insert("scores_m/0".into(), vec![0.0; 3]);
        assert!(fresh(&tiny_net()).restore_buffers(&wrong).unwrap_err().contains("scores_m/0 holds 3 values"));
    }

    #[test]
    fn a_magnitude_ramp_resumes_through_a_checkpoint() {
        // Magnitude keeps no scores (empty buffers): they must survive the checkpoint file too.
        use crate::train::net::linear_targets;
        use crate::train::testing::tiny_net;
        use crate::train::trainer::{checkpoint_with_notes, restore, Schedule};
        let mut net = tiny_net();
        let targets = linear_targets(&net);
        let fresh = |net: &Net| {
            GradualPruner::new(
                Scores::new(net, targets.clone(), Criterion::Magnitude),
                Ramp::Cubic,
                (1, 10, 1),
                0.5,
                Scope::Global,
            )
        };
        let mut p = fresh(&net);
        let extra: std::collections::BTreeMap<String, Vec<f32>> = p.buffers().into_iter().collect();
        assert_eq!(extra.len(), targets.len());
        let bytes = checkpoint_with_notes(&net, &Masks::none(&net), &State::new(&Schedule::default()), &extra, "{}");
        let (_, _, back) = restore(&mut net, &bytes).unwrap();
        fresh(&net).restore_buffers(&back).unwrap();
    }

    #[test]
    fn movement_scores_take_adam_normalised_steps() {
        use crate::train::net::linear_targets;
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
        assert!(
            (a[0] - 10.0).abs() < 1e-3 && (a[1] - 10.0).abs() < 1e-3,
            "steady movement scores one per step whatever the weight: {:?}",
            &a[..3]
        );
        assert!(a[2].abs() < 2.0, "noise scores little: {}", a[2]);
        assert!(
            (p[0] - 0.1).abs() < 1e-6 && (p[1] - 1e-4).abs() < 1e-9 && p[2].abs() < 1e-6,
            "plain sums of -w·g: {:?}",
            &p[..3]
        );
    }
}
