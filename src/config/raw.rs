//! The config file exactly as written: serde structs that mirror the TOML (`deny_unknown_fields`, kebab-case, so a
//! typo is an error naming the key). Values that need parsing (durations, sizes, modes) stay text here, so that
//! validation (`Config::validate`) can name the key in its message.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::hooks::RawHooks;
use super::notify::RawNotify;
use super::retention::RawRetention;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    pub spool_dir: Option<PathBuf>,
    pub docker: Option<RawDocker>,
    pub selection: Option<RawSelection>,
    pub quiesce: Option<RawQuiesce>,
    pub archive: Option<RawArchive>,
    pub encryption: Option<RawEncryption>,
    pub retention: Option<RawRetention>,
    pub hooks: Option<RawHooks>,
    pub daemon: Option<RawDaemon>,
    #[serde(default)]
    pub target: BTreeMap<String, RawTarget>,
    #[serde(default)]
    pub job: BTreeMap<String, RawJob>,
    /// The implicit `default` job's healthchecks URL (only without `[job.*]` tables).
    pub healthcheck_url: Option<String>,
    #[serde(default)]
    pub notify: Vec<RawNotify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDaemon {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDocker {
    pub host: Option<String>,
    pub data_path: Option<String>,
    pub helper_image: Option<String>,
    pub mirror_image: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSelection {
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub bind_mounts: Option<bool>,
    pub include_binds: Option<Vec<String>>,
    pub exclude_binds: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawQuiesce {
    pub default: Option<String>,
    pub stop_timeout: Option<String>,
    pub max_downtime: Option<String>,
    pub group_by_project: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawArchive {
    pub zstd_level: Option<i32>,
    pub zstd_threads: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawEncryption {
    pub recipients: Option<Vec<String>>,
    pub recipients_file: Option<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTarget {
    #[serde(rename = "type")]
    pub kind: String,
    // local
    pub path: Option<PathBuf>,
    // both
    pub prefix: Option<String>,
    // s3
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: Option<bool>,
    pub profile: Option<String>,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    pub storage_class: Option<String>,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub checksum: Option<String>,
    pub part_size: Option<String>,
    pub max_parts: Option<u32>,
    pub equal_parts: Option<bool>,
    pub parallel_parts: Option<u32>,
    pub retry_deadline: Option<String>,
    pub check_timeout: Option<String>,
    pub retention: Option<RawRetention>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawJob {
    pub targets: Option<Vec<String>>,
    pub selection: Option<RawSelection>,
    pub quiesce: Option<RawQuiesce>,
    pub retention: Option<RawRetention>,
    pub hooks: Option<RawHooks>,
    pub prune: Option<bool>,
    pub healthcheck_url: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub jitter: Option<String>,
    pub max_age: Option<String>,
}
