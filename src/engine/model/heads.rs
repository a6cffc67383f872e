//! Task heads on top of the encoder, with Hugging Face's names and semantics, so that a task
//! model exported here loads as `AutoModelForSequenceClassification` /
//! `AutoModelForQuestionAnswering` and gives the same logits:
//!
//! | family | classification / regression (first token) | question answering (every token) |
//! |---|---|---|
//! | BERT | `bert.pooler.dense` + tanh, `classifier` | `qa_outputs` |
//! | RoBERTa | `classifier.dense` + tanh, `classifier.out_proj` | `qa_outputs` |
//! | DistilBERT | `pre_classifier` + ReLU, `classifier` | `qa_outputs` |
//!
//! Head weights come from the checkpoint when it has them, and are freshly initialised
//! otherwise (normal with std `initializer_range`, zero bias, seeded), as `from_pretrained` does.

use super::arch::Family;
use super::encoder::{ModelError, Result, Weights};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// `labels` classes.
    Classification(usize),
    /// One score.
    Regression,
    /// Start and end logits per token.
    QuestionAnswering,
}

impl HeadKind {
    fn outputs(self) -> usize {
        match self {
            HeadKind::Classification(n) => n,
            HeadKind::Regression => 1,
            HeadKind::QuestionAnswering => 2,
        }
    }
}

pub struct Head {
    pub family: Family,
    pub kind: HeadKind,
    /// (canonical name, tensor) in export order: the hidden map (classification), then the
    /// output map.
    tensors: Vec<(String, Tensor)>,
    /// Whether the weights were initialised here rather than read from the checkpoint.
    pub fresh: bool,
}

/// The canonical names (and output sizes) of a head's linear maps.
fn layout(family: Family, kind: HeadKind, hidden: usize) -> Vec<(&'static str, usize)> {
    match (kind, family) {
        (HeadKind::QuestionAnswering, _) => vec![("qa_outputs", 2)],
        (_, Family::Bert) => vec![("pooler.dense", hidden), ("classifier", kind.outputs())],
        (_, Family::Roberta) => vec![("classifier.dense", hidden), ("classifier.out_proj", kind.outputs())],
        (_, Family::DistilBert) => vec![("pre_classifier", hidden), ("classifier", kind.outputs())],
    }
}

impl Head {
    /// The head of `kind` from `w` (canonical names) where all of its tensors are there with the
    /// right shapes, else freshly initialised from `seed`. A checkpoint whose output map has
    /// another number of outputs is refused (Hugging Face's `ignore_mismatched_sizes` case).
    pub fn load_or_init(
        w: &Weights,
        family: Family,
        kind: HeadKind,
        hidden: usize,
        init_std: f64,
        seed: u64,
    ) -> Result<Head> {
        let maps = layout(family, kind, hidden);
        let mut found = Vec::new();
        for (name, out) in &maps {
            match (w.get(&format!("{name}.weight")), w.get(&format!("{name}.bias"))) {
                (Ok(wt), Ok(b)) => {
                    if wt.dims() != [*out, hidden] || b.dims() != [*out] {
                        return Err(ModelError::Invalid(format!(
                            "the checkpoint's {name} has shape {:?}; this task needs [{out}, {hidden}]",
                            wt.dims()
                        )));
                    }
                    found.push(((*name).to_string(), wt, b));
                }
                _ => break,
            }
        }
        if found.len() == maps.len() {
            let tensors = found
                .into_iter()
                .flat_map(|(n, wt, b)| [(format!("{n}.weight"), wt), (format!("{n}.bias"), b)])
                .collect();
            return Ok(Head { family, kind, tensors, fresh: false });
        }
        // BERT's pooler comes with most checkpoints even without a classifier: keep it.
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = Vec::new();
        for (name, out) in maps {
            let existing = (w.get(&format!("{name}.weight")), w.get(&format!("{name}.bias")));
            if let (Ok(wt), Ok(b)) = existing {
                if name == "pooler.dense" && wt.dims() == [out, hidden] {
                    tensors.push((format!("{name}.weight"), wt));
                    tensors.push((format!("{name}.bias"), b));
                    continue;
                }
            }
            // Normal(0, std) by Box–Muller.
            let values: Vec<f32> = (0..out * hidden)
                .map(|_| {
                    let (u, v): (f64, f64) = (rng.gen::<f64>().max(f64::MIN_POSITIVE), rng.gen());
                    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * init_std) as f32
                })
                .collect();
            tensors.push((format!("{name}.weight"), Tensor::from_vec(values, (out, hidden), &Device::Cpu)?));
            tensors.push((format!("{name}.bias"), Tensor::zeros(out, DType::F32, &Device::Cpu)?));
        }
        Ok(Head { family, kind, tensors, fresh: true })
    }

    /// A head from its tensors (canonical names, in export order: weight then bias of each
    /// map), as [`Head::tensors`] lists them.
    pub fn from_tensors(family: Family, kind: HeadKind, tensors: Vec<(String, Tensor)>) -> Head {
        Head { family, kind, tensors, fresh: false }
    }

    /// The head's tensors: (canonical name, tensor), weight then bias of each map.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    fn linear(&self, i: usize) -> Linear {
        Linear::new(self.tensors[2 * i].1.clone(), Some(self.tensors[2 * i + 1].1.clone()))
    }

    /// Logits from the encoder's last hidden state `[batch, seq, hidden]`: `[batch, outputs]`
    /// (classification, regression) or `[batch, seq, 2]` (question answering). Inference:
    /// dropout is the identity.
    pub fn forward(&self, hidden_states: &Tensor) -> Result<Tensor> {
        Ok(match self.kind {
            HeadKind::QuestionAnswering => self.linear(0).forward(hidden_states)?,
            _ => {
                let first = hidden_states.narrow(1, 0, 1)?.squeeze(1)?;
                let h = self.linear(0).forward(&first)?;
                let h = match self.family {
                    Family::DistilBert => h.relu()?,
                    _ => h.tanh()?,
                };
                self.linear(1).forward(&h)?
            }
        })
    }

    /// Split question-answering logits `[batch, seq, 2]` into start and end `[batch, seq]`.
    pub fn split_qa(logits: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?, logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?))
    }

    /// The head's tensors under the names the Hugging Face task class expects.
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        self.tensors
            .iter()
            .map(|(n, t)| {
                let name = if n.starts_with("pooler.") { format!("{}.{n}", self.family.name()) } else { n.clone() };
                (name, t.clone())
            })
            .collect()
    }

    /// The Hugging Face class name of the task model.
    pub fn architecture(&self) -> String {
        let base = match self.family {
            Family::Bert => "Bert",
            Family::Roberta => "Roberta",
            Family::DistilBert => "DistilBert",
        };
        match self.kind {
            HeadKind::QuestionAnswering => format!("{base}ForQuestionAnswering"),
            _ => format!("{base}ForSequenceClassification"),
        }
    }

    /// `config.json` keys of the task: architectures, labels, problem type.
    pub fn config_entries(&self, label_names: Option<&[&str]>) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("architectures".into(), serde_json::json!([self.architecture()]));
        let n = match self.kind {
            HeadKind::QuestionAnswering => 2,
            k => k.outputs(),
        };
        let names: Vec<String> = (0..n)
            .map(|i| label_names.and_then(|l| l.get(i)).map_or_else(|| format!("LABEL_{i}"), |s| s.to_string()))
            .collect();
        m.insert(
            "id2label".into(),
            names
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), serde_json::Value::from(l.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
        m.insert(
            "label2id".into(),
            names
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), serde_json::Value::from(i)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
        match self.kind {
            HeadKind::Regression => m.insert("problem_type".into(), "regression".into()),
            HeadKind::Classification(_) => m.insert("problem_type".into(), "single_label_classification".into()),
            HeadKind::QuestionAnswering => None,
        };
        m
    }
}

/// A task model in Hugging Face's layout: the encoder's tensors (canonical names in `w`: the
/// embeddings and layers; any pooler or head of the input is left out) under the family prefix,
/// then the head's; and `config.json` (the encoder's, with the task's entries). F32.
pub fn export_task_model(
    config_json: &[u8],
    w: &Weights,
    head: &Head,
    label_names: Option<&[&str]>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let family = head.family;
    let mut cfg: serde_json::Value =
        serde_json::from_slice(config_json).map_err(|e| ModelError::Invalid(format!("config.json: {e}")))?;
    let obj = cfg.as_object_mut().ok_or_else(|| ModelError::Invalid("config.json is not an object".into()))?;
    for k in ["architectures", "id2label", "label2id", "num_labels", "problem_type"] {
        obj.remove(k);
    }
    obj.extend(head.config_entries(label_names));
    let mut names: Vec<&String> = w
        .names()
        .filter(|n| n.starts_with("embeddings.") || n.starts_with("encoder.") || n.starts_with("transformer."))
        .collect();
    names.sort();
    let mut out = Vec::new();
    let push = |out: &mut Vec<(String, crate::engine::io::st::Dtype, Vec<u64>, Vec<u8>)>,
                name: String,
                t: &Tensor|
     -> Result<()> {
        let shape = t.dims().iter().map(|d| *d as u64).collect();
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        out.push((name, crate::engine::io::st::Dtype::F32, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        Ok(())
    };
    for n in names {
        push(&mut out, format!("{}.{n}", family.name()), &w.get(n)?)?;
    }
    for (n, t) in head.hf_tensors() {
        push(&mut out, n, &t)?;
    }
    Ok((serde_json::to_vec_pretty(&cfg).expect("JSON value serializes"), crate::engine::io::st::serialize(&out, None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::TinyModel;

    #[test]
    fn heads_load_or_initialise_and_export() {
        for family in ["bert", "roberta", "distilbert"] {
            let fam = Family::parse(family).unwrap();
            let m = TinyModel { model_type: family, ..Default::default() };
            let w = Weights::from_safetensors(&m.safetensors(), fam, &Device::Cpu).unwrap();
            for kind in [HeadKind::Classification(3), HeadKind::Regression, HeadKind::QuestionAnswering] {
                let head = Head::load_or_init(&w, fam, kind, 32, 0.02, 7).unwrap();
                assert!(head.fresh);
                let again = Head::load_or_init(&w, fam, kind, 32, 0.02, 7).unwrap();
                assert_eq!(
                    head.tensors[0].1.to_vec2::<f32>().unwrap(),
                    again.tensors[0].1.to_vec2::<f32>().unwrap(),
                    "seeded"
                );
                let hs = Tensor::ones((2, 5, 32), DType::F32, &Device::Cpu).unwrap();
                let logits = head.forward(&hs).unwrap();
                let want: &[usize] = match kind {
                    HeadKind::QuestionAnswering => &[2, 5, 2],
                    HeadKind::Regression => &[2, 1],
                    HeadKind::Classification(_) => &[2, 3],
                };
                assert_eq!(logits.dims(), want);
                // Exported and read back, the head is the checkpoint's, not fresh.
                let (cfg, st) = export_task_model(m.config_json().as_bytes(), &w, &head, None).unwrap();
                let back = Weights::from_safetensors(&st, fam, &Device::Cpu).unwrap();
                let loaded = Head::load_or_init(&back, fam, kind, 32, 0.02, 99).unwrap();
                assert!(!loaded.fresh, "{family} {kind:?}");
                let again = loaded.forward(&hs).unwrap();
                assert_eq!(
                    again.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
                let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
                assert_eq!(cfg["architectures"][0], head.architecture());
                // A head of another size is refused.
                if kind == HeadKind::Classification(3) {
                    assert!(Head::load_or_init(&back, fam, HeadKind::Classification(2), 32, 0.02, 1).is_err());
                }
            }
        }
    }
}
