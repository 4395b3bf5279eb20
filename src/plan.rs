//! Plan: pure. Discovery + job config → which sources to back up, which containers to quiesce for each and how.
//! `voltar plan` prints it; `backup --dry-run` stops after it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::catalog::{QuiesceAction, SourceKind};

/// A container to act on while one source is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PlannedContainer {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
    /// State at discovery time.
    pub state: String,
    pub rw: bool,
    /// What voltar will do while the source is read (`none` unless running and mounted read-write).
    pub action: QuiesceAction,
    #[serde(with = "secs")]
    pub stop_timeout: Duration,
    /// Why this action.
    pub reason: String,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}
