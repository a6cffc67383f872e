//! Our GLUE and SQuAD metrics against scikit-learn, SciPy and the official SQuAD v1.1
//! evaluation functions (tests/reference/metrics.py) on the same predictions, to 1e-9:
//! pseudo-random labels and scores (with ties), and varied predictions for every question of
//! the real SQuAD dev set.

use crate::common;

use secateur::metrics;
use serde_json::{json, Value};
use std::collections::HashMap;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn metrics_match_scikit_learn_scipy_and_the_official_squad_script() {
    let mut rng = Lcg(7);
    // Classification: binary (balanced, skewed, a constant prediction) and three classes.
    let mut classification = Vec::new();
    for (name, classes, n, skew) in [("binary", 2, 500, 50), ("skewed", 2, 300, 90), ("three", 3, 400, 0)] {
        let gold: Vec<i64> = (0..n)
            .map(|_| if skew > 0 { i64::from(rng.below(100) >= skew) } else { rng.below(classes) as i64 })
            .collect();
        let pred: Vec<i64> =
            gold.iter().map(|g| if rng.below(100) < 70 { *g } else { rng.below(classes) as i64 }).collect();
        classification.push((name.to_string(), classes == 2, pred, gold));
    }
    let gold: Vec<i64> = (0..50).map(|_| rng.below(2) as i64).collect();
    classification.push(("constant".into(), true, vec![1; 50], gold));
    // Regression: noisy scores on a 0-5 scale, rounded so that ties occur.
    let mut regression = Vec::new();
    for (name, step) in [("stsb", 0.2), ("coarse", 1.0)] {
        let gold: Vec<f64> = (0..400).map(|_| (rng.below(26) as f64 * 0.2 / step).round() * step).collect();
        let pred: Vec<f64> =
            gold.iter().map(|g| ((g + (rng.below(200) as f64 - 100.0) / 60.0) / step).round() * step).collect();
        regression.push((name.to_string(), pred, gold));
    }
    // SQuAD: every dev question; predictions vary from exact to partial to wrong to missing.
    let squad_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/squad/dev-v1.1.json");
    let dataset: Value = serde_json::from_slice(&std::fs::read(&squad_path).unwrap()).unwrap();
    let mut questions = Vec::new();
    let mut predictions: HashMap<String, String> = HashMap::new();
    for article in dataset["data"].as_array().unwrap() {
        for para in article["paragraphs"].as_array().unwrap() {
            let context = para["context"].as_str().unwrap();
            for qa in para["qas"].as_array().unwrap() {
                let id = qa["id"].as_str().unwrap().to_string();
                let golds: Vec<String> =
                    qa["answers"].as_array().unwrap().iter().map(|a| a["text"].as_str().unwrap().to_string()).collect();
                let g = &golds[rng.below(golds.len() as u64) as usize];
                let words: Vec<&str> = g.split_whitespace().collect();
                let ctx_words: Vec<&str> = context.split_whitespace().collect();
                let start = rng.below(ctx_words.len() as u64) as usize;
                let pred = match rng.below(8) {
                    0 => Some(g.clone()),
                    1 => Some(format!("The {}.", g.to_uppercase())),
                    2 => Some(words[..words.len().saturating_sub(1).max(1)].join(" ")),
                    3 => Some(ctx_words[start..(start + 4).min(ctx_words.len())].join(" ")),
                    4 => None,
                    5 => Some(format!("{g}, an answer; and  more")),
                    6 => Some(format!("  {}  ", words.iter().rev().cloned().collect::<Vec<_>>().join("\t"))),
                    _ => Some(String::new()),
                };
                if let Some(p) = pred {
                    predictions.insert(id.clone(), p);
                }
                questions.push((id, golds));
            }
        }
    }
    let strings = [
        "The  Eiffel Tower!",
        "l\u{2019}an",
        "Ärger an Bord",
        "a\u{1f}the b",
        "THE. An, a;",
        "état-major",
        "x\u{a0}the y",
    ];
    let input = json!({
        "classification": classification.iter().map(|(n, b, p, g)| json!({"name": n, "binary": b, "pred": p, "gold": g})).collect::<Vec<_>>(),
        "regression": regression.iter().map(|(n, p, g)| json!({"name": n, "pred": p, "gold": g})).collect::<Vec<_>>(),
        "squad": {"dataset": squad_path, "predictions": predictions},
        "strings": strings,
    });
    let want = common::refenv::run_json("metrics.py", &[], &input);
    let close = |name: &str, ours: f64, theirs: &Value| {
        let t = theirs.as_f64().unwrap_or_else(|| panic!("{name}: reference gave {theirs}"));
        assert!((ours - t).abs() <= 1e-9, "{name}: ours {ours}, reference {t}");
    };
    for (name, binary, pred, gold) in &classification {
        let w = &want[name.as_str()];
        close(&format!("{name} accuracy"), metrics::accuracy(pred, gold), &w["accuracy"]);
        close(&format!("{name} matthews"), metrics::matthews(pred, gold), &w["matthews"]);
        if *binary {
            close(&format!("{name} f1"), metrics::f1_positive(pred, gold), &w["f1"]);
        }
    }
    for (name, pred, gold) in &regression {
        close(&format!("{name} pearson"), metrics::pearson(pred, gold), &want[name.as_str()]["pearson"]);
        close(&format!("{name} spearman"), metrics::spearman(pred, gold), &want[name.as_str()]["spearman"]);
    }
    let (em, f1) = metrics::squad(&questions, &predictions);
    eprintln!(
        "squad over {} questions ({} predicted): exact_match {em:.4}, f1 {f1:.4}",
        questions.len(),
        predictions.len()
    );
    close("squad exact_match", em, &want["squad"]["exact_match"]);
    close("squad f1", f1, &want["squad"]["f1"]);
    assert!(em > 10.0 && em < 90.0 && f1 > em, "the predictions should span the range: {em} {f1}");
    for (s, w) in strings.iter().zip(want["normalized"].as_array().unwrap()) {
        assert_eq!(metrics::normalize_answer(s), w.as_str().unwrap(), "normalising {s:?}");
    }
}
