//! Task metrics as the GLUE benchmark and SQuAD v1.1 report them.
//!
//! GLUE metrics are fractions in [0, 1] (correlations in [-1, 1]), computed as scikit-learn and
//! SciPy do (`accuracy_score`, `f1_score` of the positive class, `matthews_corrcoef`,
//! `pearsonr`, `spearmanr`), including their conventions for degenerate inputs (a zero
//! denominator gives 0). SQuAD exact match and F1 follow the official v1.1 evaluation script:
//! answers normalised (lower case, ASCII punctuation removed, the articles a/an/the removed,
//! whitespace collapsed), the best score over the gold answers, averaged over all questions and
//! reported in percent, as that script prints them.

use std::collections::HashMap;

/// Perplexity of a language model: `exp(total NLL / predicted tokens)` (natural log; 0
/// predicted tokens give NaN).
pub fn perplexity(total_nll: f64, predicted: u64) -> f64 {
    (total_nll / predicted as f64).exp()
}

/// Fraction of equal labels (0 for empty input).
pub fn accuracy(pred: &[i64], gold: &[i64]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "predictions and labels differ in length");
    if pred.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / pred.len() as f64
}

/// F1 of the positive class (label 1): 2·tp / (2·tp + fp + fn); 0 when there is no positive
/// prediction nor label (scikit-learn's `zero_division` default).
pub fn f1_positive(pred: &[i64], gold: &[i64]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "predictions and labels differ in length");
    let (mut tp, mut fp, mut fneg) = (0u64, 0u64, 0u64);
    for (p, g) in pred.iter().zip(gold) {
        match (*p == 1, *g == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            _ => {}
        }
    }
    let d = 2 * tp + fp + fneg;
    if d == 0 {
        0.0
    } else {
        2.0 * tp as f64 / d as f64
    }
}

/// Matthews correlation coefficient, the multi-class form scikit-learn uses (which is the usual
/// binary formula for two classes); 0 when it is undefined.
pub fn matthews(pred: &[i64], gold: &[i64]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "predictions and labels differ in length");
    let mut classes: Vec<i64> = pred.iter().chain(gold).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    let index: HashMap<i64, usize> = classes.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let k = classes.len();
    let mut t = vec![0f64; k]; // true occurrences per class
    let mut p = vec![0f64; k]; // predicted occurrences per class
    let mut c = 0f64; // correct
    for (a, b) in pred.iter().zip(gold) {
        p[index[a]] += 1.0;
        t[index[b]] += 1.0;
        if a == b {
            c += 1.0;
        }
    }
    let s = pred.len() as f64;
    let tp: f64 = t.iter().zip(&p).map(|(x, y)| x * y).sum();
    let cov_ytyp = c * s - tp;
    let cov_ypyp = s * s - p.iter().map(|x| x * x).sum::<f64>();
    let cov_ytyt = s * s - t.iter().map(|x| x * x).sum::<f64>();
    let d = (cov_ytyt * cov_ypyp).sqrt();
    if d == 0.0 {
        0.0
    } else {
        cov_ytyp / d
    }
}

/// Pearson's correlation (NaN when either side is constant, as SciPy returns).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "predictions and labels differ in length");
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let r = sxy / (sxx.sqrt() * syy.sqrt());
    // Rounding can push |r| a hair over 1; SciPy clips it.
    r.clamp(-1.0, 1.0)
}

/// Ranks from 1, ties sharing their average rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            out[o] = r;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation: Pearson's on average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// The official SQuAD v1.1 answer normalisation: lower case, ASCII punctuation removed,
/// `re.sub(r'\b(a|an|the)\b', ' ', text)`, then `' '.join(text.split())`.
pub fn normalize_answer(s: &str) -> String {
    static ARTICLES: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let articles = ARTICLES.get_or_init(|| regex::Regex::new(r"\b(a|an|the)\b").expect("valid regex"));
    let no_punct: String = s.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    let text = articles.replace_all(&no_punct, " ");
    text.split(is_py_whitespace).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Python's `str.split()` separators.
fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Exact match of one prediction against one gold answer, after normalisation.
pub fn squad_exact(pred: &str, gold: &str) -> bool {
    normalize_answer(pred) == normalize_answer(gold)
}

/// Token F1 of one prediction against one gold answer, after normalisation.
pub fn squad_f1(pred: &str, gold: &str) -> f64 {
    let p = normalize_answer(pred);
    let g = normalize_answer(gold);
    let p: Vec<&str> = p.split(' ').filter(|w| !w.is_empty()).collect();
    let g: Vec<&str> = g.split(' ').filter(|w| !w.is_empty()).collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut same = 0i64;
    for w in &p {
        if let Some(c) = counts.get_mut(w) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD v1.1 exact match and F1 in percent over `questions` (id → gold answers), the best over
/// each question's gold answers; a question without a prediction scores 0 on both.
pub fn squad(questions: &[(String, Vec<String>)], predictions: &HashMap<String, String>) -> (f64, f64) {
    if questions.is_empty() {
        return (0.0, 0.0);
    }
    let (mut em, mut f1) = (0.0, 0.0);
    for (id, golds) in questions {
        if let Some(p) = predictions.get(id) {
            em += golds.iter().map(|g| f64::from(u8::from(squad_exact(p, g)))).fold(0.0, f64::max);
            f1 += golds.iter().map(|g| squad_f1(p, g)).fold(0.0, f64::max);
        }
    }
    let n = questions.len() as f64;
    (100.0 * em / n, 100.0 * f1 / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_metrics_by_hand() {
        let gold = [1, 1, 0, 0, 1, 0];
        let pred = [1, 0, 0, 1, 1, 0];
        assert_eq!(accuracy(&pred, &gold), 4.0 / 6.0);
        // tp 2, fp 1, fn 1.
        assert_eq!(f1_positive(&pred, &gold), 4.0 / 6.0);
        // (tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4 − 1) / 9.
        assert!((matthews(&pred, &gold) - 3.0 / 9.0).abs() < 1e-15);
        assert_eq!(matthews(&[1, 1, 1], &[0, 1, 1]), 0.0, "a constant prediction is 0, not NaN");
        assert_eq!(f1_positive(&[0, 0], &[0, 0]), 0.0);
        assert_eq!(accuracy(&[], &[]), 0.0);
    }

    #[test]
    fn correlations_by_hand() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-15);
        assert!((pearson(&x, &[8.0, 6.0, 4.0, 2.0]) + 1.0).abs() < 1e-15);
        assert_eq!(ranks(&[10.0, 20.0, 20.0, 5.0]), vec![2.0, 3.5, 3.5, 1.0]);
        // Monotone but not linear: Spearman 1, Pearson below.
        let y = [1.0, 8.0, 27.0, 64.0];
        assert!((spearman(&x, &y) - 1.0).abs() < 1e-15);
        assert!(pearson(&x, &y) < 0.99);
        assert!(pearson(&x, &[1.0; 4]).is_nan());
    }

    #[test]
    fn squad_normalisation_and_scores() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
        assert_eq!(normalize_answer("theatre"), "theatre", "articles only as whole words");
        assert_eq!(normalize_answer("l'an"), "lan", "punctuation goes first");
        assert_eq!(
            normalize_answer("l\u{2019}an"),
            "l\u{2019}",
            "a non-ASCII mark is a word boundary, as in Python's re"
        );
        assert!(squad_exact("the Eiffel tower", "Eiffel Tower."));
        assert!((squad_f1("Eiffel tower in Paris", "the Eiffel Tower") - 2.0 * 0.5 * 1.0 / 1.5).abs() < 1e-15);
        assert_eq!(squad_f1("a", "the"), 0.0);
        let questions = vec![
            ("q1".to_string(), vec!["Denver Broncos".to_string(), "the Broncos".to_string()]),
            ("q2".to_string(), vec!["1990".to_string()]),
        ];
        let preds: HashMap<String, String> = [("q1".to_string(), "Broncos".to_string())].into();
        let (em, f1) = squad(&questions, &preds);
        assert_eq!(em, 50.0);
        assert_eq!(f1, 50.0, "q1: best F1 is 1.0 against \"the Broncos\"; q2 has no prediction");
    }
}
