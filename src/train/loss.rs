//! Task losses and their gradients with respect to the logits, as Hugging Face's task models
//! compute them (cross-entropy for classification, MSE for regression, the mean of start and end
//! cross-entropies for span question answering), and knowledge distillation from a teacher's
//! logits: the soft loss KL(teacher ‖ student) on both softened by a temperature T, scaled by T²
//! (Hinton et al. 2015), mixed with the hard loss as α·soft + (1 − α)·hard.

/// Gold targets of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// A class per row.
    Classes(Vec<usize>),
    /// A score per row (regression).
    Scores(Vec<f32>),
    /// Start and end token per row (question answering); a position past the sequence is
    /// ignored, as `ignore_index` in Hugging Face's QA loss.
    Spans(Vec<(usize, usize)>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distill {
    pub temperature: f32,
    pub alpha: f32,
}

/// Mean cross-entropy of `[rows, classes]` logits (rows with `None` ignored) and its gradient,
/// scaled by `weight`, added to `grad`.
pub fn cross_entropy(logits: &[f32], classes: usize, labels: &[Option<usize>], weight: f32, grad: &mut [f32]) -> f64 {
    let counted = labels.iter().filter(|l| l.is_some()).count();
    if counted == 0 {
        return 0.0;
    }
    let mut total = 0f64;
    for ((row, g), label) in logits.chunks_exact(classes).zip(grad.chunks_exact_mut(classes)).zip(labels) {
        let Some(y) = *label else { continue };
        let log_z = log_z(row);
        total += log_z - f64::from(row[y]);
        for (j, gj) in g.iter_mut().enumerate() {
            let p = (f64::from(row[j]) - log_z).exp();
            *gj += weight * ((p - f64::from(u8::from(j == y))) / counted as f64) as f32;
        }
    }
    total / counted as f64
}

/// log Σⱼ exp(rowⱼ), in f64 after shifting by the row's maximum.
fn log_z(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    f64::from(max) + sum.ln()
}

/// One token's negative log-likelihood under a row of logits: −log softmax(row)[y].
pub fn token_nll(row: &[f32], y: usize) -> f64 {
    log_z(row) - f64::from(row[y])
}

/// Mean squared error of `[rows]` predictions; gradient scaled by `weight`, added to `grad`.
pub fn mse(pred: &[f32], target: &[f32], weight: f32, grad: &mut [f32]) -> f64 {
    let n = pred.len().max(1) as f64;
    let mut total = 0f64;
    for ((p, t), g) in pred.iter().zip(target).zip(grad.iter_mut()) {
        let d = f64::from(*p) - f64::from(*t);
        total += d * d;
        *g += weight * (2.0 * d / n) as f32;
    }
    total / n
}

fn log_softmax(row: &[f32], t: f32) -> Vec<f64> {
    let z: Vec<f64> = row.iter().map(|&v| f64::from(v) / f64::from(t)).collect();
    let max = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

/// T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over rows (`batchmean`); gradient
/// scaled by `weight`, added to `grad`.
pub fn soft_cross_entropy(
    student: &[f32],
    teacher: &[f32],
    classes: usize,
    temperature: f32,
    weight: f32,
    grad: &mut [f32],
) -> f64 {
    let rows = student.len() / classes.max(1);
    if rows == 0 {
        return 0.0;
    }
    let t2 = f64::from(temperature) * f64::from(temperature);
    let mut total = 0f64;
    for ((s, tch), g) in
        student.chunks_exact(classes).zip(teacher.chunks_exact(classes)).zip(grad.chunks_exact_mut(classes))
    {
        let (ls, lt) = (log_softmax(s, temperature), log_softmax(tch, temperature));
        for j in 0..classes {
            let pt = lt[j].exp();
            total += pt * (lt[j] - ls[j]);
            // d/ds_j of T²·KL = T²·(p_s − p_t)/T.
            *g.get_mut(j).expect("class") +=
                weight * (f64::from(temperature) * (ls[j].exp() - pt) / rows as f64) as f32;
        }
    }
    t2 * total / rows as f64
}

/// The training loss of a batch and its gradient with respect to the logits. `logits` as
/// [`super::net::Output`] lays them out (`len` is the padded length, for question answering);
/// `teacher`: the dense teacher's logits on the same batch, with the mixing.
pub fn task_loss(logits: &[f32], targets: &Targets, len: usize, teacher: Option<(&[f32], Distill)>) -> (f64, Vec<f32>) {
    let mut grad = vec![0f32; logits.len()];
    let hard_weight = teacher.map_or(1.0, |(_, d)| 1.0 - d.alpha);
    let mut loss = 0f64;
    match targets {
        Targets::Classes(labels) => {
            let classes = logits.len() / labels.len().max(1);
            let labels: Vec<Option<usize>> = labels.iter().map(|&l| Some(l)).collect();
            if hard_weight != 0.0 {
                loss += f64::from(hard_weight) * cross_entropy(logits, classes, &labels, hard_weight, &mut grad);
            }
            if let Some((t, d)) = teacher {
                loss += f64::from(d.alpha) * soft_cross_entropy(logits, t, classes, d.temperature, d.alpha, &mut grad);
            }
        }
        Targets::Scores(y) => {
            if hard_weight != 0.0 {
                loss += f64::from(hard_weight) * mse(logits, y, hard_weight, &mut grad);
            }
            if let Some((t, d)) = teacher {
                // Regression has no distribution to soften: match the teacher's score.
                loss += f64::from(d.alpha) * mse(logits, t, d.alpha, &mut grad);
            }
        }
        Targets::Spans(spans) => {
            // [rows, len, 2] → start and end logits [rows, len] each.
            let split = |v: &[f32], k: usize| -> Vec<f32> { v.iter().skip(k).step_by(2).copied().collect() };
            let (start, end) = (split(logits, 0), split(logits, 1));
            let (mut gs, mut ge) = (vec![0f32; start.len()], vec![0f32; end.len()]);
            let lab = |k: usize| -> Vec<Option<usize>> {
                spans.iter().map(|&(s, e)| Some(if k == 0 { s } else { e }).filter(|&p| p < len)).collect()
            };
            let half = 0.5 * hard_weight;
            if hard_weight != 0.0 {
                loss += f64::from(half)
                    * (cross_entropy(&start, len, &lab(0), half, &mut gs)
                        + cross_entropy(&end, len, &lab(1), half, &mut ge));
            }
            if let Some((t, d)) = teacher {
                let (ts, te) = (split(t, 0), split(t, 1));
                let w = 0.5 * d.alpha;
                loss += f64::from(w)
                    * (soft_cross_entropy(&start, &ts, len, d.temperature, w, &mut gs)
                        + soft_cross_entropy(&end, &te, len, d.temperature, w, &mut ge));
            }
            for (i, (a, b)) in gs.into_iter().zip(ge).enumerate() {
                grad[2 * i] = a;
                grad[2 * i + 1] = b;
            }
        }
    }
    (loss, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of `f` at `x`.
    fn numeric(x: &[f32], f: impl Fn(&[f32]) -> f64) -> Vec<f64> {
        (0..x.len())
            .map(|i| {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                a[i] += 1e-3;
                b[i] -= 1e-3;
                (f(&a) - f(&b)) / 2e-3
            })
            .collect()
    }

    #[test]
    fn gradients_match_finite_differences() {
        let logits = [0.3f32, -1.2, 2.0, 0.5, 0.1, -0.4];
        let teacher = [1.0f32, 0.0, -1.0, 0.2, 0.9, 0.3];
        let d = Distill { temperature: 2.0, alpha: 0.3 };
        let cases = [
            (Targets::Classes(vec![2, 0]), 1),
            (Targets::Scores(vec![0.5, -1.0, 2.0, 0.0, 1.0, 3.0]), 1),
            (Targets::Spans(vec![(0, 2), (1, 9)]), 3),
        ];
        for (targets, len) in &cases {
            for teach in [None, Some((&teacher[..], d))] {
                let (_, g) = task_loss(&logits, targets, *len, teach);
                let num = numeric(&logits, |x| task_loss(x, targets, *len, teach).0);
                for (a, b) in g.iter().zip(&num) {
                    assert!((f64::from(*a) - b).abs() < 1e-3, "{targets:?} {teach:?}: {g:?} vs {num:?}");
                }
            }
        }
    }

    #[test]
    fn values_are_the_usual_ones() {
        // Cross-entropy of uniform logits over 4 classes is ln 4.
        let mut g = vec![0.0; 4];
        assert!((cross_entropy(&[0.0; 4], 4, &[Some(1)], 1.0, &mut g) - 4f64.ln()).abs() < 1e-12);
        // KL of identical distributions is 0, with zero gradient.
        let mut g = vec![0.0; 3];
        assert!(soft_cross_entropy(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 3, 2.0, 1.0, &mut g).abs() < 1e-12);
        assert!(g.iter().all(|v| v.abs() < 1e-7));
        // A span past the sequence is ignored; all ignored gives 0.
        let (l, g) = task_loss(&[0.0; 8], &Targets::Spans(vec![(4, 4)]), 4, None);
        assert_eq!(l, 0.0);
        assert!(g.iter().all(|v| *v == 0.0));
    }
}
