//! Job specs: what `POST /v1/jobs` accepts, parsed and validated once for the API and the CLI.
//! Unknown fields are rejected and every fault names its field. `prune` holds the prune job's
//! spec and the parts experiments share with it (kind, granularity, export); `experiment` the
//! experiment's.

mod experiment;
mod prune;

pub use experiment::*;
pub use prune::*;

use crate::validation::{deserialize_named, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of `POST /v1/jobs`: a prune job (`kind` left out or `prune`) or an experiment
/// (`kind: experiment`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
// One value per request, moved once: the size difference costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum JobSpec {
    Prune(JobRequest),
    Experiment(ExperimentRequest),
}

impl JobSpec {
    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Prune(_) => JobKind::Prune,
            JobSpec::Experiment(_) => JobKind::Experiment,
        }
    }
    pub fn model_id(&self) -> &str {
        match self {
            JobSpec::Prune(r) => &r.model_id,
            JobSpec::Experiment(r) => &r.model_id,
        }
    }
}

/// Parse a request body of either kind, routed by its `kind`.
pub fn parse_spec(body: &[u8]) -> Result<JobSpec, FieldError> {
    let kind = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string));
    if kind.as_deref() == Some("experiment") {
        let req: ExperimentRequest = deserialize_named(body)?;
        match req.validate().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(JobSpec::Experiment(req)),
        }
    } else {
        parse_request(body).map(JobSpec::Prune)
    }
}

/// The checks of a spec of either kind that need the stored model: the API makes them against
/// the model's row, the local commands against the model directory.
pub fn check_spec_against_model(spec: &JobSpec, model: &ModelShape) -> Result<(), FieldError> {
    match spec {
        JobSpec::Prune(req) => check_against_model(req, model),
        JobSpec::Experiment(req) => req.check_against_model(model),
    }
}
