//! SQuAD windows of real dev questions with the real MiniLM tokenizer: the same token ids and
//! context character spans as Hugging Face's fast tokenizer called as `run_qa.py` does, and
//! training labels that point back at the answer text.

use crate::common;

use secateur::train::squad::{decode, windows};
use serde_json::{json, Value};

#[test]
fn windows_match_hugging_face_and_labels_recover_the_answers() {
    let dir = common::minilm::dir();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/squad/dev-v1.1.json");
    let squad: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    // Questions from articles across the file: long contexts give several windows.
    let mut items = Vec::new();
    for article in squad["data"].as_array().unwrap().iter().step_by(2) {
        for para in article["paragraphs"].as_array().unwrap().iter().take(5) {
            let qa = &para["qas"][0];
            let a = &qa["answers"][0];
            items.push((
                qa["question"].as_str().unwrap().to_string(),
                para["context"].as_str().unwrap().to_string(),
                a["answer_start"].as_u64().unwrap() as usize,
                a["text"].as_str().unwrap().to_string(),
            ));
        }
    }
    for (max_len, stride) in [(384, 128), (96, 24)] {
        let ours: Vec<_> = items
            .iter()
            .map(|(q, c, s, t)| windows(&tok, q.trim_start(), c, Some((*s, t)), max_len, stride).unwrap())
            .collect();
        // Hugging Face, same inputs.
        let input = json!({"questions": items.iter().map(|i| &i.0).collect::<Vec<_>>(), "contexts": items.iter().map(|i| &i.1).collect::<Vec<_>>(), "max_len": max_len, "stride": stride});
        let theirs: Vec<Vec<Value>> =
            serde_json::from_value(common::refenv::run_json("qa_windows.py", &[&dir], &input)).unwrap();
        let (mut total, mut labelled, mut exact) = (0, 0, 0);
        for (i, (ws, hf)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(ws.len(), hf.len(), "question {i} ({max_len}/{stride}): window count");
            for (w, h) in ws.iter().zip(hf) {
                let ids: Vec<u32> = serde_json::from_value(h["input_ids"].clone()).unwrap();
                assert_eq!(w.input_ids, ids, "question {i}: token ids");
                let spans: Vec<Option<(usize, usize)>> = serde_json::from_value(h["context_spans"].clone()).unwrap();
                assert_eq!(w.context_spans, spans, "question {i}: character spans");
                total += 1;
            }
            // The labelled span, decoded back through one-hot logits, is the answer.
            let (_, context, _, answer) = &items[i];
            let lab: Vec<usize> = (0..ws.len()).filter(|&k| ws[k].label != Some((0, 0))).collect();
            assert!(!lab.is_empty(), "question {i}: no window holds the answer");
            labelled += lab.len();
            let k = lab[0];
            let (s, e) = ws[k].label.unwrap();
            let one_hot = |at: usize, n: usize| (0..n).map(|j| if j == at { 10.0 } else { 0.0 }).collect::<Vec<f32>>();
            let sl: Vec<Vec<f32>> = ws
                .iter()
                .enumerate()
                .map(|(j, w)| if j == k { one_hot(s, w.input_ids.len()) } else { vec![0.0; w.input_ids.len()] })
                .collect();
            let el: Vec<Vec<f32>> = ws
                .iter()
                .enumerate()
                .map(|(j, w)| if j == k { one_hot(e, w.input_ids.len()) } else { vec![0.0; w.input_ids.len()] })
                .collect();
            let got = decode(context, ws, &sl, &el, 20, 30);
            if secateur::metrics::normalize_answer(&got) == secateur::metrics::normalize_answer(answer) {
                exact += 1;
            } else {
                eprintln!("question {i}: labelled {got:?} for the answer {answer:?}");
            }
        }
        eprintln!(
            "{max_len}/{stride}: {} questions, {total} windows, {labelled} labelled, {exact} answers recovered exactly",
            items.len()
        );
        if max_len < 128 {
            assert!(total > items.len(), "some contexts should need several windows");
        }
        // Token boundaries that cut into a word ("1990s" from "the 1990s'") can make a label
        // wider than its answer: rare, as in Hugging Face's own labels.
        assert!(exact * 100 >= items.len() * 95, "only {exact} of {} answers recovered", items.len());
    }
}
