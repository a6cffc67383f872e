//! Dataset formats and their validation on upload: GLUE TSV (with a task's column layout or as a
//! plain consistent table), JSONL (`text`, optional `text_pair`, optional `label`), SQuAD v1.1
//! JSON, and plain text (UTF-8, documents separated by blank lines: language-model calibration
//! and perplexity text). Plain Rust; the service calls [`validate`] and stores the [`Summary`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod squad;
use squad::validate_squad;
pub use squad::{squad_questions, SquadQuestion};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    GlueTsv,
    Jsonl,
    SquadJson,
    /// UTF-8 plain text; documents are separated by blank lines.
    Text,
}

/// The formats' names, for messages.
pub const FORMAT_NAMES: &str = "glue_tsv, jsonl, squad_json or text";

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        serde_json::from_value(serde_json::Value::String(s.into())).ok()
    }
    pub fn name(self) -> &'static str {
        match self {
            Format::GlueTsv => "glue_tsv",
            Format::Jsonl => "jsonl",
            Format::SquadJson => "squad_json",
            Format::Text => "text",
        }
    }
    /// The format a local file's extension names (`.tsv`, `.jsonl`, `.json`, `.txt`).
    pub fn from_extension(ext: &str) -> Option<Format> {
        match ext {
            "tsv" => Some(Format::GlueTsv),
            "jsonl" => Some(Format::Jsonl),
            "json" => Some(Format::SquadJson),
            "txt" => Some(Format::Text),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Cola,
    Sst2,
    Mrpc,
    Qqp,
    Stsb,
    Mnli,
    MnliMismatched,
    Qnli,
    Rte,
    Wnli,
    Squad,
    /// Language modelling on running text (experiments on decoders: perplexity). Not a dataset
    /// task: its datasets are `text` or `jsonl` text uploaded without a task.
    CausalLm,
}

pub const TASK_NAMES: &str = "cola, sst2, mrpc, qqp, stsb, mnli, mnli_mismatched, qnli, rte, wnli, squad";

enum Col {
    Name(&'static str),
    Index(usize),
}

impl Col {
    /// The column's index, given the header (when the layout has one).
    fn index(&self, header: Option<&[&str]>) -> Option<usize> {
        match self {
            Col::Index(i) => Some(*i),
            Col::Name(n) => header?.iter().position(|x| x == n),
        }
    }

    fn label(&self) -> String {
        match self {
            Col::Index(i) => format!("column_{i}"),
            Col::Name(n) => n.to_string(),
        }
    }
}

enum Labels {
    /// Class names in GLUE / Hugging Face order (index = class id).
    Classes(&'static [&'static str]),
    Regression,
}

struct Layout {
    has_header: bool,
    columns: Option<usize>,
    text: &'static [Col],
    label: Col,
    labels: Labels,
}

impl Task {
    pub fn parse(s: &str) -> Option<Task> {
        serde_json::from_value(serde_json::Value::String(s.into())).ok()
    }
    pub fn name(self) -> String {
        serde_json::to_value(self).unwrap().as_str().unwrap().to_string()
    }

    /// Label names in the GLUE / Hugging Face order, or `None` for regression and SQuAD.
    pub fn label_names(self) -> Option<&'static [&'static str]> {
        match self.layout()?.labels {
            Labels::Classes(c) => Some(c),
            Labels::Regression => None,
        }
    }

    fn layout(self) -> Option<Layout> {
        const BIN: Labels = Labels::Classes(&["0", "1"]);
        const NLI2: Labels = Labels::Classes(&["entailment", "not_entailment"]);
        let pair = |text: &'static [Col], label, labels| Layout {
            has_header: true,
            columns: None,
            text,
            label: Col::Name(label),
            labels,
        };
        Some(match self {
            Task::Cola => Layout {
                has_header: false,
                columns: Some(4),
                text: &[Col::Index(3)],
                label: Col::Index(1),
                labels: BIN,
            },
            Task::Sst2 => Layout {
                has_header: true,
                columns: None,
                text: &[Col::Name("sentence")],
                label: Col::Name("label"),
                labels: BIN,
            },
            Task::Mrpc => pair(&[Col::Name("#1 String"), Col::Name("#2 String")], "Quality", BIN),
            Task::Qqp => pair(&[Col::Name("question1"), Col::Name("question2")], "is_duplicate", BIN),
            Task::Stsb => pair(&[Col::Name("sentence1"), Col::Name("sentence2")], "score", Labels::Regression),
            Task::Mnli | Task::MnliMismatched => pair(
                &[Col::Name("sentence1"), Col::Name("sentence2")],
                "gold_label",
                Labels::Classes(&["entailment", "neutral", "contradiction"]),
            ),
            Task::Qnli => pair(&[Col::Name("question"), Col::Name("sentence")], "label", NLI2),
            Task::Rte => pair(&[Col::Name("sentence1"), Col::Name("sentence2")], "label", NLI2),
            Task::Wnli => pair(&[Col::Name("sentence1"), Col::Name("sentence2")], "label", BIN),
            Task::Squad | Task::CausalLm => return None,
        })
    }
}

/// What an upload held.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Summary {
    /// Examples (TSV/JSONL rows, SQuAD questions, text documents).
    pub rows: u64,
    /// Column names (from the header, or the task's layout), or JSON keys seen.
    pub columns: Vec<String>,
    /// Count of each label value seen (classification).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, u64>,
    /// Smallest and largest label (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_range: Option<[f64; 2]>,
    /// SQuAD: articles, paragraphs and gold answers; text: documents and characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct DataError {
    pub line: Option<u64>,
    pub message: String,
}

fn err<T>(line: impl Into<Option<u64>>, message: impl Into<String>) -> Result<T, DataError> {
    Err(DataError { line: line.into(), message: message.into() })
}

/// Validate a dataset file. `task` checks its layout and labels.
pub fn validate(format: Format, task: Option<Task>, bytes: &[u8]) -> Result<Summary, DataError> {
    if task == Some(Task::Squad) && format != Format::SquadJson {
        return err(None, "task squad needs format squad_json");
    }
    if format == Format::SquadJson && task.is_some_and(|t| t != Task::Squad) {
        return err(None, "format squad_json holds the squad task only");
    }
    if task == Some(Task::CausalLm) {
        return err(
            None,
            "causal_lm is an experiment task that reads running text: upload the text with format text (or jsonl) and no task",
        );
    }
    if format == Format::Text && task.is_some() {
        return err(None, "format text holds no task: plain text has no labels (upload it without `task`)");
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        DataError { line: Some(line), message: "not valid UTF-8".into() }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        Format::GlueTsv => validate_tsv(text, task),
        Format::Jsonl => validate_jsonl(text, task),
        Format::SquadJson => validate_squad(text),
        Format::Text => validate_text(text),
    }
}

/// A plain-text file's documents: runs of lines separated by blank (empty or whitespace-only)
/// lines, each document's lines joined by `\n` (`\r\n` endings read as `\n`).
pub fn documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for (_, line) in lines(text) {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                docs.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        docs.push(cur.join("\n"));
    }
    docs
}

fn validate_text(text: &str) -> Result<Summary, DataError> {
    let docs = documents(text);
    if docs.is_empty() {
        return err(None, "the file is empty (no text outside blank lines)");
    }
    let mut s = Summary { rows: docs.len() as u64, columns: vec!["text".into()], ..Default::default() };
    s.counts.insert("documents".into(), docs.len() as u64);
    s.counts.insert("characters".into(), docs.iter().map(|d| d.chars().count() as u64).sum());
    Ok(s)
}

/// Lines with their 1-based numbers; a final empty line (trailing newline) is dropped.
fn lines(text: &str) -> impl Iterator<Item = (u64, &str)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    body.split('\n')
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|_| !body.is_empty())
}

fn validate_tsv(text: &str, task: Option<Task>) -> Result<Summary, DataError> {
    let mut it = lines(text).peekable();
    let Some(&(_, first)) = it.peek() else { return err(None, "the file is empty") };
    let layout = task.map(|t| t.layout().expect("non-squad task"));
    let header: Option<Vec<&str>> = match &layout {
        Some(l) if !l.has_header => None,
        Some(_) => Some(first.split('\t').collect()),
        None => None,
    };
    let ncols = match (&layout, &header) {
        (_, Some(h)) => h.len(),
        (Some(l), None) => l.columns.unwrap_or(0),
        (None, None) => first.split('\t').count(),
    };
    if header.is_some() {
        it.next();
    }
    let resolve = |c: &Col| -> Result<usize, DataError> {
        c.index(header.as_deref()).ok_or_else(|| DataError {
            line: Some(1),
            message: format!("the header has no column {:?} (task {})", c.label(), task.unwrap().name()),
        })
    };
    let (label_col, text_cols) = match &layout {
        Some(l) => (Some(resolve(&l.label)?), l.text.iter().map(resolve).collect::<Result<Vec<_>, _>>()?),
        None => (None, vec![]),
    };
    let columns: Vec<String> = match &header {
        Some(h) => h.iter().map(|s| s.to_string()).collect(),
        None => (0..ncols).map(|i| format!("column_{i}")).collect(),
    };
    let mut s = Summary { columns, ..Default::default() };
    for (ln, line) in it {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != ncols {
            return err(ln, format!("expected {ncols} tab-separated columns, found {}", cols.len()));
        }
        for &c in &text_cols {
            if cols[c].trim().is_empty() {
                return err(ln, format!("text column {} is empty", s.columns[c]));
            }
        }
        if let (Some(lc), Some(l)) = (label_col, &layout) {
            record_label(&mut s, &l.labels, cols[lc].trim(), ln)?;
        }
        s.rows += 1;
    }
    if s.rows == 0 {
        return err(None, "the file holds no rows");
    }
    Ok(s)
}

fn record_label(s: &mut Summary, labels: &Labels, v: &str, ln: u64) -> Result<(), DataError> {
    match labels {
        Labels::Classes(c) => {
            if !c.contains(&v) {
                return err(ln, format!("label {v:?} is not one of {}", c.join(", ")));
            }
            *s.labels.entry(v.to_string()).or_default() += 1;
        }
        Labels::Regression => {
            let x: f64 = v
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite())
                .ok_or_else(|| DataError { line: Some(ln), message: format!("label {v:?} is not a number") })?;
            let r = s.label_range.get_or_insert([x, x]);
            r[0] = r[0].min(x);
            r[1] = r[1].max(x);
        }
    }
    Ok(())
}

fn validate_jsonl(text: &str, task: Option<Task>) -> Result<Summary, DataError> {
    let layout = task.and_then(|t| t.layout());
    let mut s = Summary::default();
    let mut keys = std::collections::BTreeSet::new();
    for (ln, line) in lines(text) {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| DataError { line: Some(ln), message: format!("not valid JSON: {e}") })?;
        let o = v.as_object().ok_or_else(|| DataError { line: Some(ln), message: "not a JSON object".into() })?;
        match o.get("text") {
            Some(serde_json::Value::String(t)) if !t.trim().is_empty() => {}
            Some(serde_json::Value::String(_)) => return err(ln, "text is empty"),
            Some(_) => return err(ln, "text must be a string"),
            None => return err(ln, "missing text"),
        }
        if let Some(p) = o.get("text_pair") {
            if !p.is_string() {
                return err(ln, "text_pair must be a string");
            }
        }
        match (o.get("label"), &layout) {
            (None, Some(_)) => return err(ln, format!("missing label (task {})", task.unwrap().name())),
            (None, None) => {}
            (Some(l), Some(layout)) => {
                let as_text = match (l, &layout.labels) {
                    (serde_json::Value::Number(n), Labels::Classes(c)) => {
                        let i = n.as_u64().filter(|&i| (i as usize) < c.len()).ok_or_else(|| DataError {
                            line: Some(ln),
                            message: format!("label {n} is not a class index below {}", c.len()),
                        })?;
                        c[i as usize].to_string()
                    }
                    (serde_json::Value::Number(n), Labels::Regression) => n.to_string(),
                    (serde_json::Value::String(t), _) => t.clone(),
                    _ => return err(ln, "label must be a number or a string"),
                };
                record_label(&mut s, &layout.labels, &as_text, ln)?;
            }
            (Some(l), None) => {
                let key = match l {
                    serde_json::Value::String(t) => t.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return err(ln, "label must be a number or a string"),
                };
                *s.labels.entry(key).or_default() += 1;
            }
        }
        keys.extend(o.keys().cloned());
        s.rows += 1;
    }
    if s.rows == 0 {
        return err(None, "the file holds no rows");
    }
    s.columns = keys.into_iter().collect();
    Ok(s)
}

/// One example's text: a sentence, or a pair.
pub type Text = (String, Option<String>);

/// Texts as one running text, as a language model reads it: each text (its pair on the next
/// line), texts separated by a blank line.
pub fn running_text(texts: &[Text]) -> String {
    texts
        .iter()
        .map(|(a, b)| match b {
            Some(b) => format!("{a}\n{b}"),
            None => a.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Up to `limit` texts of a dataset, in file order (for calibration). A `glue_tsv` file needs
/// its task, which says which columns hold text.
pub fn texts(format: Format, task: Option<Task>, bytes: &[u8], limit: usize) -> Result<Vec<Text>, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DataError { line: None, message: "not valid UTF-8".into() })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    match format {
        Format::GlueTsv => {
            let Some(layout) = task.and_then(Task::layout) else {
                return err(None, "a glue_tsv dataset needs its task (upload it with `task`) to know its text columns");
            };
            let mut it = lines(text);
            let header: Option<Vec<&str>> =
                if layout.has_header { it.next().map(|(_, l)| l.split('\t').collect()) } else { None };
            let cols: Vec<usize> =
                layout.text.iter().map(|c| c.index(header.as_deref())).collect::<Option<_>>().ok_or_else(|| {
                    DataError { line: Some(1), message: "the header lacks a text column of the task".into() }
                })?;
            for (ln, line) in it.take(limit) {
                let f: Vec<&str> = line.split('\t').collect();
                let get = |i: usize| {
                    f.get(i)
                        .map(|s| s.trim().to_string())
                        .ok_or_else(|| DataError { line: Some(ln), message: "missing text column".into() })
                };
                out.push((get(cols[0])?, cols.get(1).map(|&c| get(c)).transpose()?));
            }
        }
        Format::Jsonl => {
            for (ln, line) in lines(text).filter(|(_, l)| !l.trim().is_empty()).take(limit) {
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| DataError { line: Some(ln), message: e.to_string() })?;
                let t = v
                    .get("text")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| DataError { line: Some(ln), message: "missing text".into() })?;
                out.push((t.to_string(), v.get("text_pair").and_then(|t| t.as_str()).map(str::to_string)));
            }
        }
        Format::Text => out.extend(documents(text).into_iter().take(limit).map(|d| (d, None))),
        Format::SquadJson => out.extend(squad::question_texts(text, limit)?),
    }
    Ok(out)
}

/// A labelled example's target: a class index (GLUE / Hugging Face order) or a score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    Class(usize),
    Score(f64),
}

/// One classification or regression example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The 1-based line it came from (its id in predictions).
    pub line: u64,
    pub text: String,
    pub text_pair: Option<String>,
    /// `None` for unlabelled rows (GLUE test files).
    pub label: Option<Label>,
}

/// Every example of a GLUE TSV (its task's layout) or JSONL (`text`, optional `text_pair`, and
/// `label`: a class name or index for a classification task, a number for regression) file.
/// A malformed row is reported with its line number.
pub fn examples(format: Format, task: Option<Task>, bytes: &[u8]) -> Result<Vec<Example>, DataError> {
    validate(format, task, bytes)?;
    let text = std::str::from_utf8(bytes).map_err(|_| DataError { line: None, message: "not valid UTF-8".into() })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let layout = task.and_then(Task::layout);
    let parse_label = |v: &str, ln: u64| -> Result<Label, DataError> {
        match layout.as_ref().map(|l| &l.labels) {
            Some(Labels::Classes(c)) => c.iter().position(|x| *x == v).map(Label::Class).ok_or_else(|| DataError {
                line: Some(ln),
                message: format!("label {v:?} is not one of {}", c.join(", ")),
            }),
            Some(Labels::Regression) => v
                .parse()
                .map(Label::Score)
                .map_err(|_| DataError { line: Some(ln), message: format!("label {v:?} is not a number") }),
            None => v.parse().map(Label::Class).map_err(|_| DataError {
                line: Some(ln),
                message: format!("label {v:?} is not a class index (give the task to use class names)"),
            }),
        }
    };
    let mut out = Vec::new();
    match format {
        Format::GlueTsv => {
            let Some(layout) = &layout else {
                return err(None, "a glue_tsv dataset needs its task to know its columns");
            };
            let mut it = lines(text);
            let header: Option<Vec<&str>> =
                if layout.has_header { it.next().map(|(_, l)| l.split('\t').collect()) } else { None };
            let cols: Vec<usize> =
                layout.text.iter().map(|c| c.index(header.as_deref())).collect::<Option<_>>().ok_or_else(|| {
                    DataError { line: Some(1), message: "the header lacks a text column of the task".into() }
                })?;
            let label_col = layout.label.index(header.as_deref());
            for (ln, line) in it {
                let f: Vec<&str> = line.split('\t').collect();
                let label = match label_col.and_then(|c| f.get(c)) {
                    Some(v) => Some(parse_label(v.trim(), ln)?),
                    None => None,
                };
                out.push(Example {
                    line: ln,
                    text: f[cols[0]].trim().to_string(),
                    text_pair: cols.get(1).map(|&c| f[c].trim().to_string()),
                    label,
                });
            }
        }
        Format::Jsonl => {
            for (ln, line) in lines(text).filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| DataError { line: Some(ln), message: e.to_string() })?;
                let label = match v.get("label") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(parse_label(s, ln)?),
                    Some(serde_json::Value::Number(n)) => Some(match layout.as_ref().map(|l| &l.labels) {
                        Some(Labels::Regression) => Label::Score(n.as_f64().unwrap_or(f64::NAN)),
                        Some(Labels::Classes(c)) => match n.as_u64() {
                            Some(i) if (i as usize) < c.len() => Label::Class(i as usize),
                            _ => return err(ln, format!("label {n} is not a class index below {}", c.len())),
                        },
                        None => Label::Class(n.as_u64().ok_or_else(|| DataError {
                            line: Some(ln),
                            message: format!("label {n} is not a class index"),
                        })? as usize),
                    }),
                    Some(_) => return err(ln, "label must be a string or a number"),
                };
                out.push(Example {
                    line: ln,
                    text: v["text"].as_str().unwrap_or_default().to_string(),
                    text_pair: v.get("text_pair").and_then(|t| t.as_str()).map(str::to_string),
                    label,
                });
            }
        }
        Format::SquadJson => return err(None, "squad_json holds questions, not classification examples"),
        Format::Text => return err(None, "a text dataset holds plain text, not labelled examples"),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn text_files_are_documents_between_blank_lines() {
        let t = b"First line\r\nof one.\n\n \t\n\nSecond.\n";
        let s = validate(Format::Text, None, t).unwrap();
        assert_eq!(s.rows, 2);
        assert_eq!(s.counts["characters"], 25);
        assert_eq!(documents(std::str::from_utf8(t).unwrap()), ["First line\nof one.", "Second."]);
        let calib = texts(Format::Text, None, t, 1).unwrap();
        assert_eq!(calib, [("First line\nof one.".to_string(), None)]);
        assert!(validate(Format::Text, None, b"\n \n\n").unwrap_err().message.contains("empty"));
        assert!(validate(Format::Text, None, b"").unwrap_err().message.contains("empty"));
        let bad = validate(Format::Text, None, b"ok\nstill ok\n\xff\n").unwrap_err();
        assert_eq!((bad.line, bad.message.as_str()), (Some(3), "not valid UTF-8"));
        assert!(validate(Format::Text, Some(Task::Sst2), b"x").unwrap_err().message.contains("no task"));
        assert!(examples(Format::Text, None, b"x").is_err());
        // The real calibration text: 1,733 paragraphs.
        assert_eq!(validate(Format::Text, None, &shared("text/wiki-train.txt")).unwrap().rows, 1733);
    }

    fn shared(p: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(p);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn real_glue_files_validate_with_published_counts() {
        let cases = [
            ("glue/SST-2/dev.tsv", Task::Sst2, 872, vec![("0", 428), ("1", 444)]),
            ("glue/CoLA/dev.tsv", Task::Cola, 1043, vec![("0", 322), ("1", 721)]),
            ("glue/CoLA/train.tsv", Task::Cola, 8551, vec![("0", 2528), ("1", 6023)]),
            ("glue/MRPC/dev.tsv", Task::Mrpc, 408, vec![("0", 129), ("1", 279)]),
            ("glue/MRPC/train.tsv", Task::Mrpc, 3668, vec![("0", 1194), ("1", 2474)]),
        ];
        for (file, task, rows, labels) in cases {
            let s = validate(Format::GlueTsv, Some(task), &shared(file)).unwrap();
            assert_eq!(s.rows, rows, "{file}");
            let want: BTreeMap<String, u64> = labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(s.labels, want, "{file}");
        }
        let s = validate(Format::GlueTsv, Some(Task::Stsb), &shared("glue/STS-B/dev.tsv")).unwrap();
        assert_eq!(s.rows, 1500);
        assert_eq!(s.label_range, Some([0.0, 5.0]));
        // Without a task: a consistent table; the first line counts as a row.
        let s = validate(Format::GlueTsv, None, &shared("glue/SST-2/dev.tsv")).unwrap();
        assert_eq!((s.rows, s.columns.len()), (873, 2));
    }

    #[test]
    fn real_squad_dev_validates() {
        let s = validate(Format::SquadJson, Some(Task::Squad), &shared("squad/dev-v1.1.json")).unwrap();
        assert_eq!(s.rows, 10570);
        assert_eq!(s.counts["articles"], 48);
        assert_eq!(s.counts["paragraphs"], 2067);
        assert_eq!(s.counts["answers"], 34726);
    }

    #[test]
    fn bad_rows_are_reported_with_their_line() {
        let e = validate(Format::GlueTsv, Some(Task::Sst2), b"sentence\tlabel\ngood film\t1\nbad\t2\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("not one of"), "{e}");
        let e = validate(Format::GlueTsv, None, b"a\tb\nc\td\te\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = validate(Format::GlueTsv, Some(Task::Rte), b"index\tsentence1\tlabel\n").unwrap_err();
        assert!(e.message.contains("sentence2"));
        let e = validate(Format::Jsonl, None, b"{\"text\":\"a\"}\n{\"txt\":\"b\"}\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (Some(2), "missing text"));
        let e = validate(Format::Jsonl, Some(Task::Rte), b"{\"text\":\"a\",\"text_pair\":\"b\",\"label\":5}\n")
            .unwrap_err();
        assert!(e.message.contains("class index"));
        let e = validate(Format::Jsonl, None, b"{\"text\":\"a\"}\nnot json\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = validate(Format::SquadJson, None, br#"{"data":[{"title":"t","paragraphs":[{"context":"caf\u00e9 au lait","qas":[{"id":"q","question":"?","answers":[{"answer_start":4,"text":"au"}]}]}]}]}"#);
        assert!(e.is_err(), "byte offsets are not character offsets");
        let ok = validate(Format::SquadJson, None, br#"{"data":[{"title":"t","paragraphs":[{"context":"caf\u00e9 au lait","qas":[{"id":"q","question":"?","answers":[{"answer_start":5,"text":"au"}]}]}]}]}"#).unwrap();
        assert_eq!(ok.rows, 1);
        assert!(validate(Format::GlueTsv, None, b"").is_err());
        assert!(validate(Format::GlueTsv, None, b"\xff\xfe").is_err());
    }

    #[test]
    fn examples_carry_labels_in_glue_order() {
        let rte = examples(
            Format::GlueTsv,
            Some(Task::Rte),
            b"index\tsentence1\tsentence2\tlabel\n0\tA\tB\tnot_entailment\n1\tC\tD\tentailment\n",
        )
        .unwrap();
        assert_eq!(rte[0].label, Some(Label::Class(1)));
        assert_eq!(rte[1].label, Some(Label::Class(0)), "RTE: entailment = 0");
        assert_eq!((rte[1].line, rte[1].text.as_str(), rte[1].text_pair.as_deref()), (3, "C", Some("D")));
        let stsb =
            examples(Format::Jsonl, Some(Task::Stsb), b"{\"text\": \"a\", \"text_pair\": \"b\", \"label\": 3.8}\n")
                .unwrap();
        assert_eq!(stsb[0].label, Some(Label::Score(3.8)));
        let named = examples(
            Format::Jsonl,
            Some(Task::Mnli),
            b"{\"text\": \"a\", \"label\": \"contradiction\"}\n{\"text\": \"b\", \"label\": 1}\n",
        )
        .unwrap();
        assert_eq!(
            named.iter().map(|e| e.label).collect::<Vec<_>>(),
            vec![Some(Label::Class(2)), Some(Label::Class(1))]
        );
        let bad = examples(
            Format::Jsonl,
            Some(Task::Mnli),
            b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 7}\n",
        )
        .unwrap_err();
        assert_eq!(bad.line, Some(2));
        // Real files: every row, labels as published (SST-2 dev: 444 negative, 428 positive).
        let sst2 = examples(Format::GlueTsv, Some(Task::Sst2), &shared("glue/SST-2/dev.tsv")).unwrap();
        assert_eq!(sst2.len(), 872);
        assert_eq!(sst2.iter().filter(|e| e.label == Some(Label::Class(1))).count(), 444);
        let cola = examples(Format::GlueTsv, Some(Task::Cola), &shared("glue/CoLA/dev.tsv")).unwrap();
        assert_eq!(cola.len(), 1043);
        assert_eq!(cola[0].line, 1, "CoLA dev has no header");
        let stsb = examples(Format::GlueTsv, Some(Task::Stsb), &shared("glue/STS-B/dev.tsv")).unwrap();
        assert!(stsb.iter().all(|e| matches!(e.label, Some(Label::Score(x)) if (0.0..=5.0).contains(&x))));
    }

    #[test]
    fn texts_follow_each_layout() {
        let t = texts(Format::GlueTsv, Some(Task::Mrpc), &shared("glue/MRPC/dev.tsv"), 3).unwrap();
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|(a, b)| !a.is_empty() && b.as_ref().is_some_and(|b| !b.is_empty())));
        let t = texts(Format::GlueTsv, Some(Task::Cola), &shared("glue/CoLA/dev.tsv"), 2).unwrap();
        assert_eq!(t[0].1, None);
        assert!(!t[0].0.contains('\t'));
        let t = texts(Format::SquadJson, None, &shared("squad/dev-v1.1.json"), 5).unwrap();
        assert_eq!(t.len(), 5);
        assert!(t[0].1.as_ref().unwrap().len() > t[0].0.len());
        let t = texts(Format::Jsonl, None, b"{\"text\":\"a\",\"text_pair\":\"b\"}\n{\"text\":\"c\"}\n", 10).unwrap();
        assert_eq!(t, vec![("a".to_string(), Some("b".to_string())), ("c".to_string(), None)]);
        assert!(texts(Format::GlueTsv, None, b"a\tb\n", 10).is_err());
    }

    #[test]
    fn jsonl_counts_labels() {
        let s = validate(Format::Jsonl, Some(Task::Rte), b"{\"text\":\"a\",\"text_pair\":\"b\",\"label\":0}\n{\"text\":\"c\",\"text_pair\":\"d\",\"label\":\"not_entailment\"}\n").unwrap();
        assert_eq!(s.rows, 2);
        assert_eq!(s.labels.len(), 2);
        assert_eq!(s.columns, vec!["label", "text", "text_pair"]);
    }
}
