//! Classification features of real GLUE rows (MRPC pairs, SST-2 sentences) with the real
//! MiniLM tokenizer: the same token ids and type ids as Hugging Face's tokenizer called with
//! truncation=True, at a length that truncates many pairs and at one that truncates none.

use crate::common;

use secateur::data::{examples, Format, Task};
use secateur::train::features::encode;
use serde_json::{json, Value};

#[test]
fn sentences_and_pairs_match_hugging_face() {
    let dir = common::minilm::dir();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let shared = |p: &str| {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue").join(p)).unwrap()
    };
    let mut ex = examples(Format::GlueTsv, Some(Task::Mrpc), &shared("MRPC/dev.tsv")).unwrap();
    ex.truncate(150);
    ex.extend(examples(Format::GlueTsv, Some(Task::Sst2), &shared("SST-2/dev.tsv")).unwrap().into_iter().take(150));
    for max_len in [32, 128] {
        let ours = encode(&tok, &ex, max_len).unwrap();
        let input = json!({"text": ex.iter().map(|e| &e.text).collect::<Vec<_>>(), "text_pair": ex.iter().map(|e| &e.text_pair).collect::<Vec<_>>(), "max_len": max_len});
        let theirs: Vec<Value> =
            serde_json::from_value(common::refenv::run_json("encode_pairs.py", &[&dir], &input)).unwrap();
        let mut truncated = 0;
        for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
            let ids: Vec<u32> = serde_json::from_value(t["ids"].clone()).unwrap();
            let tt: Vec<u32> = serde_json::from_value(t["type_ids"].clone()).unwrap();
            assert_eq!(o.ids, ids, "example {i} at {max_len}");
            assert_eq!(o.type_ids, tt, "example {i} at {max_len}");
            truncated += (o.ids.len() == max_len) as usize;
        }
        eprintln!("max_len {max_len}: {} examples, {truncated} at the limit", ex.len());
        if max_len == 32 {
            assert!(truncated > 100, "the short limit should truncate many pairs");
        }
    }
}
