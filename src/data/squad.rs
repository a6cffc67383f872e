//! SQuAD v1.1 JSON: validation on upload (every answer found at its character offset, ids
//! unique) and the questions the question-answering task reads.

use super::{err, validate, DataError, Format, Summary, Task, Text};
use serde::Deserialize;

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}
#[derive(Deserialize)]
struct SquadArticle {
    #[serde(default)]
    title: String,
    paragraphs: Vec<SquadParagraph>,
}
#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQa>,
}
#[derive(Deserialize)]
struct SquadQa {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<SquadAnswer>,
}
#[derive(Deserialize)]
struct SquadAnswer {
    answer_start: i64,
    text: String,
}

pub(super) fn validate_squad(text: &str) -> Result<Summary, DataError> {
    let f: SquadFile = serde_json::from_str(text)
        .map_err(|e| DataError { line: Some(e.line() as u64), message: format!("not a SQuAD v1.1 file: {e}") })?;
    let mut s = Summary {
        columns: vec!["id".into(), "question".into(), "context".into(), "answers".into()],
        ..Default::default()
    };
    let mut ids = std::collections::HashSet::new();
    let (mut paragraphs, mut answers) = (0u64, 0u64);
    for a in &f.data {
        for p in &a.paragraphs {
            paragraphs += 1;
            let chars: Vec<char> = p.context.chars().collect();
            for q in &p.qas {
                if !ids.insert(q.id.as_str()) {
                    return err(None, format!("question id {:?} appears twice", q.id));
                }
                if q.question.trim().is_empty() {
                    return err(None, format!("question {:?} (article {:?}) is empty", q.id, a.title));
                }
                for ans in &q.answers {
                    // answer_start counts characters (code points), not bytes.
                    let n = ans.text.chars().count();
                    let ok = ans.answer_start >= 0
                        && (ans.answer_start as usize + n) <= chars.len()
                        && chars[ans.answer_start as usize..ans.answer_start as usize + n]
                            .iter()
                            .copied()
                            .eq(ans.text.chars());
                    if !ok {
                        return err(
                            None,
                            format!(
                                "question {:?}: answer {:?} is not found at character {} of its context",
                                q.id, ans.text, ans.answer_start
                            ),
                        );
                    }
                    answers += 1;
                }
                s.rows += 1;
            }
        }
    }
    if s.rows == 0 {
        return err(None, "the file holds no questions");
    }
    s.counts.insert("articles".into(), f.data.len() as u64);
    s.counts.insert("paragraphs".into(), paragraphs);
    s.counts.insert("answers".into(), answers);
    Ok(s)
}

/// One SQuAD question with its context and gold answers.
#[derive(Debug, Clone, PartialEq)]
pub struct SquadQuestion {
    pub id: String,
    /// Index of its article in the file (splits keep articles whole).
    pub article: usize,
    pub question: String,
    pub context: String,
    /// (first character in the context, text) of each gold answer.
    pub answers: Vec<(usize, String)>,
}

/// Every question of a SQuAD v1.1 file, in file order (validated first).
pub fn squad_questions(bytes: &[u8]) -> Result<Vec<SquadQuestion>, DataError> {
    validate(Format::SquadJson, Some(Task::Squad), bytes)?;
    let text = std::str::from_utf8(bytes).map_err(|_| DataError { line: None, message: "not valid UTF-8".into() })?;
    let f: SquadFile = serde_json::from_str(text.strip_prefix('\u{feff}').unwrap_or(text))
        .map_err(|e| DataError { line: Some(e.line() as u64), message: format!("not a SQuAD v1.1 file: {e}") })?;
    let mut out = Vec::new();
    for (article, a) in f.data.into_iter().enumerate() {
        for p in a.paragraphs {
            for q in p.qas {
                out.push(SquadQuestion {
                    id: q.id,
                    article,
                    question: q.question,
                    context: p.context.clone(),
                    answers: q.answers.into_iter().map(|x| (x.answer_start as usize, x.text)).collect(),
                });
            }
        }
    }
    Ok(out)
}

/// Up to `limit` (question, context) pairs, in file order.
pub(super) fn question_texts(text: &str, limit: usize) -> Result<Vec<Text>, DataError> {
    let f: SquadFile =
        serde_json::from_str(text).map_err(|e| DataError { line: Some(e.line() as u64), message: e.to_string() })?;
    Ok(f.data
        .iter()
        .flat_map(|a| {
            a.paragraphs.iter().flat_map(|p| p.qas.iter().map(|q| (q.question.clone(), Some(p.context.clone()))))
        })
        .take(limit)
        .collect())
}
