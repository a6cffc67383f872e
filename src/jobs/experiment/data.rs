//! The task's data: training and evaluation rows (GLUE) or questions (SQuAD), read from the
//! job's datasets, with an evaluation split held out when the spec asks for one.

use crate::data::{self, Task};
use crate::jobs::spec::ExperimentRequest;
use crate::jobs::{JobContext, JobError};

/// Training and evaluation data of the task.
pub(super) enum TaskData {
    Glue { rows: Vec<data::Example>, eval_rows: Vec<data::Example> },
    Squad { questions: Vec<data::SquadQuestion>, eval_questions: Vec<data::SquadQuestion> },
}

fn read_rows(ctx: &JobContext, id: &str, task: Task, field: &str) -> Result<Vec<data::Example>, JobError> {
    let (format, dtask, bytes) = ctx.read_dataset(id)?;
    if format == data::Format::GlueTsv && dtask != Some(task) {
        return Err(JobError::Failed(format!(
            "{field}: the dataset is a {} file, not {}",
            dtask.map_or("task-less".into(), |t| t.name()),
            task.name()
        )));
    }
    let rows = data::examples(format, Some(task), &bytes).map_err(|e| JobError::Failed(format!("{field}: {e}")))?;
    if rows.iter().any(|r| r.label.is_none()) {
        return Err(JobError::Failed(format!(
            "{field}: the dataset has unlabelled rows (a GLUE test file?); experiments need labels"
        )));
    }
    if rows.is_empty() {
        return Err(JobError::Failed(format!("{field}: the dataset holds no examples")));
    }
    Ok(rows)
}

fn read_questions(ctx: &JobContext, id: &str, field: &str) -> Result<Vec<data::SquadQuestion>, JobError> {
    let (format, _, bytes) = ctx.read_dataset(id)?;
    if format != data::Format::SquadJson {
        return Err(JobError::Failed(format!("{field}: task squad reads squad_json datasets")));
    }
    data::squad_questions(&bytes).map_err(|e| JobError::Failed(format!("{field}: {e}")))
}

pub(super) fn load_data(ctx: &JobContext, req: &ExperimentRequest) -> Result<TaskData, JobError> {
    let t = &req.task;
    let max_eval = req.evaluation.max_eval_samples.unwrap_or(usize::MAX);
    if t.name == Task::Squad {
        let mut questions = read_questions(ctx, &t.dataset_id, "task.dataset_id")?;
        let mut eval_questions = match (&t.eval_dataset_id, t.eval_fraction) {
            (Some(id), _) => read_questions(ctx, id, "task.eval_dataset_id")?,
            (None, Some(f)) => {
                // Whole articles are held out (the last ones), at least `f` of the questions.
                let want = ((questions.len() as f64) * f).ceil() as usize;
                let mut cut = questions.len();
                while cut > 0 && questions.len() - cut < want {
                    let article = questions[cut - 1].article;
                    while cut > 0 && questions[cut - 1].article == article {
                        cut -= 1;
                    }
                }
                if cut == 0 {
                    return Err(JobError::Failed("task.eval_fraction leaves no training article".into()));
                }
                questions.split_off(cut)
            }
            (None, None) => return Err(JobError::Failed("no evaluation data".into())),
        };
        eval_questions.truncate(max_eval);
        return Ok(TaskData::Squad { questions, eval_questions });
    }
    let mut rows = read_rows(ctx, &t.dataset_id, t.name, "task.dataset_id")?;
    let mut eval_rows = match (&t.eval_dataset_id, t.eval_fraction) {
        (Some(id), _) => read_rows(ctx, id, t.name, "task.eval_dataset_id")?,
        (None, Some(f)) => {
            let held = ((rows.len() as f64) * f).round().max(1.0) as usize;
            if held >= rows.len() {
                return Err(JobError::Failed("task.eval_fraction leaves no training examples".into()));
            }
            rows.split_off(rows.len() - held)
        }
        (None, None) => return Err(JobError::Failed("no evaluation data".into())),
    };
    eval_rows.truncate(max_eval);
    Ok(TaskData::Glue { rows, eval_rows })
}
