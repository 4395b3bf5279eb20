//! Targets: where backups go. A `[target.NAME]` table ([`Target::from_raw`]), a `--target` URL or path
//! ([`Target::from_url`]), and what a `--target` word means against the configured ones ([`Config::target_arg`],
//! with a "did you mean" for a near miss). `storage` opens what this builds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawTarget;
use super::retention::{merge_retention, RawRetention, Retention};
use super::{check_name, known, parse_duration, parse_size, Config, ConfigError};

/// Budget of the check a backup makes of every target before it quiesces anything (`Storage::check`), unless
/// the target sets `check-timeout`. A few seconds: a target that cannot take a tiny request in this time would
/// make the backup wait for it, and a backup that waits holds containers.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChecksumMode {
    /// The SDK default (checksums on every request).
    Default,
    /// Only when the operation requires one: for stores that reject the SDK's default checksums.
    WhenRequired,
}

#[derive(Clone, Debug)]
pub struct S3Target {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub profile: Option<String>,
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    pub storage_class: Option<String>,
    /// `AES256` or `aws:kms`.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub checksum: ChecksumMode,
    /// Minimum part size in bytes (grows automatically).
    pub part_size: u64,
    /// Provider's part count limit.
    pub max_parts: u32,
    /// Parts uploaded concurrently.
    pub parallel_parts: u32,
    /// Overall deadline for retrying one request.
    pub retry_deadline: Duration,
    /// Budget of the check made before a backup quiesces anything (see `Storage::check`).
    pub check_timeout: Duration,
}

impl S3Target {
    pub fn new(bucket: String, prefix: String) -> S3Target {
        S3Target {
            bucket,
            prefix,
            region: None,
            endpoint: None,
            path_style: false,
            profile: None,
            access_key_id_file: None,
            secret_access_key_file: None,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            checksum: ChecksumMode::Default,
            part_size: 8 << 20,
            max_parts: 10_000,
            parallel_parts: 2,
            retry_deadline: Duration::from_secs(300),
            check_timeout: CHECK_TIMEOUT,
        }
    }
}

// Few of these exist, once per target: size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TargetKind {
    /// Root directory = path/prefix.
    Local {
        path: PathBuf,
        prefix: String,
    },
    S3(S3Target),
}

#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// Per-target retention keys, merged over the job's policy when used (validated at load).
    pub retention: Option<RawRetention>,
}

impl Target {
    /// A `[target.NAME]` table, validated. Its retention keys are checked now (over `base`, the top-level
    /// settings) and merged over the job's settings when used ([`Target::effective_retention`]).
    pub(super) fn from_raw(
        name: String,
        t: RawTarget,
        base: &Retention,
    ) -> Result<Target, ConfigError> {
        check_name("target", &name)?;
        merge_retention(base.clone(), t.retention.as_ref()).map_err(|e| {
            ConfigError::Invalid(format!(
                "target.{name}.{}",
                e.to_string().trim_start_matches("config: ")
            ))
        })?;
        let kind = target_kind(&name, &t)?;
        Ok(Target {
            name,
            kind,
            retention: t.retention,
        })
    }

    /// Budget of the check made before a backup quiesces anything (`check-timeout`, S3 targets only).
    pub fn check_timeout(&self) -> Duration {
        match &self.kind {
            TargetKind::S3(s) => s.check_timeout,
            TargetKind::Local { .. } => CHECK_TIMEOUT,
        }
    }

    /// The retention settings for this target under `job`: the job's, with this target's keys on top.
    pub fn effective_retention(&self, job: &Retention) -> Retention {
        merge_retention(job.clone(), self.retention.as_ref()).unwrap_or_else(|_| job.clone())
    }

    /// Parse a `--target` value: `s3://bucket/prefix`, `file:///dir` or a directory path.
    pub fn from_url(url: &str) -> Result<Target, ConfigError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "target `{url}` has no bucket (use s3://bucket/prefix)"
                )));
            }
            let mut t = S3Target::new(bucket.to_string(), prefix.trim_matches('/').to_string());
            // The AWS CLI honours these; so do we.
            t.endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .ok();
            t.path_style = t.endpoint.is_some();
            return Ok(Target {
                name: url.to_string(),
                kind: TargetKind::S3(t),
                retention: None,
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(ConfigError::Invalid(format!(
                "target `{url}`: unsupported scheme (use a directory path, file:///dir or s3://bucket/prefix)"
            )));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        if path.is_empty() {
            return Err(ConfigError::Invalid("empty --target".into()));
        }
        Ok(Target {
            name: url.to_string(),
            kind: TargetKind::Local {
                path: PathBuf::from(path),
                prefix: String::new(),
            },
            retention: None,
        })
    }
}

/// Whether a `--target` value is a bare word: no path separator and no scheme. Only an existing directory or a
/// configured target's name may be given that way; everything else must say it is a path.
fn is_bare_word(arg: &str) -> bool {
    !arg.contains('/') && !arg.contains("://")
}

/// The configured name closest to `arg`, for "did you mean" hints: within 1 edit for names of up to 3 chars,
/// else within a third of the length (at least 2, so a swapped pair of letters is found).
fn closest<'a>(arg: &str, names: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    let len = arg.chars().count();
    let limit = if len <= 3 { 1 } else { (len / 3).max(2) };
    names
        .map(|n| (edit_distance(arg, n), n))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.as_str())
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Config {
    /// What one `--target` value means: the configured target of that name, else a URL or directory path
    /// ([`Target::from_url`]). A bare word (no `/`, no scheme) that is neither is an error naming the configured
    /// targets: `-t offsitee` must not quietly back up into a new `./offsitee` (issue 8). An existing directory
    /// of that name in the working directory is still accepted, as before.
    pub fn target_arg(&self, arg: &str) -> Result<Target, ConfigError> {
        if let Some(t) = self.targets.get(arg) {
            return Ok(t.clone());
        }
        if is_bare_word(arg) && !Path::new(arg).is_dir() {
            let hint = match closest(arg, self.targets.keys()) {
                Some(n) => format!("did you mean `{n}`? "),
                None => String::new(),
            };
            return Err(ConfigError::UnknownTarget {
                name: arg.to_string(),
                detail: format!(
                    "it is not a configured target ({hint}configured: {}) and no directory `{arg}` exists here; \
                     to write to a new local directory, say so: `./{arg}`, an absolute path or `file://{arg}`",
                    known(self.targets.keys())
                ),
            });
        }
        Target::from_url(arg)
    }
}

/// The kind-specific keys of a `[target.NAME]` table; a key of the other kind is an error naming it.
fn target_kind(name: &str, t: &RawTarget) -> Result<TargetKind, ConfigError> {
    let prefix = t
        .prefix
        .clone()
        .unwrap_or_default()
        .trim_matches('/')
        .to_string();
    if prefix.split('/').any(|c| c == "..") {
        return Err(ConfigError::Invalid(format!(
            "target.{name}.prefix must not contain `..`"
        )));
    }
    match t.kind.as_str() {
        "local" => local_target(name, t, prefix),
        "s3" => s3_target(name, t, prefix).map(TargetKind::S3),
        other => Err(ConfigError::Invalid(format!(
            "target.{name}.type = `{other}`: use \"local\" or \"s3\""
        ))),
    }
}

fn local_target(name: &str, t: &RawTarget, prefix: String) -> Result<TargetKind, ConfigError> {
    let path = t.path.clone().ok_or_else(|| {
        ConfigError::Invalid(format!(
            "target.{name}: type = \"local\" needs path = \"/dir\""
        ))
    })?;
    for (k, set) in [
        ("bucket", t.bucket.is_some()),
        ("endpoint", t.endpoint.is_some()),
        ("region", t.region.is_some()),
        ("check-timeout", t.check_timeout.is_some()),
    ] {
        if set {
            return Err(ConfigError::Invalid(format!(
                "target.{name}.{k} only applies to type = \"s3\""
            )));
        }
    }
    Ok(TargetKind::Local { path, prefix })
}

/// Where the bucket is and who signs the requests; then how objects are stored ([`s3_storing`]) and moved
/// ([`s3_transfer`]).
fn s3_target(name: &str, t: &RawTarget, prefix: String) -> Result<S3Target, ConfigError> {
    let bucket = t.bucket.clone().ok_or_else(|| {
        ConfigError::Invalid(format!(
            "target.{name}: type = \"s3\" needs bucket = \"name\""
        ))
    })?;
    if t.path.is_some() {
        return Err(ConfigError::Invalid(format!(
            "target.{name}.path only applies to type = \"local\" (use bucket and prefix)"
        )));
    }
    let mut s = S3Target::new(bucket, prefix);
    s.region = t.region.clone();
    s.endpoint = t
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    s.path_style = t.path_style.unwrap_or(false);
    s.profile = t.profile.clone();
    s.access_key_id_file = t.access_key_id_file.clone();
    s.secret_access_key_file = t.secret_access_key_file.clone();
    if s.access_key_id_file.is_some() != s.secret_access_key_file.is_some() {
        return Err(ConfigError::Invalid(format!(
            "target.{name}: set both access-key-id-file and secret-access-key-file, or neither"
        )));
    }
    s3_storing(name, t, &mut s)?;
    s3_transfer(name, t, &mut s)?;
    Ok(s)
}

/// Storage class, server-side encryption and checksums.
fn s3_storing(name: &str, t: &RawTarget, s: &mut S3Target) -> Result<(), ConfigError> {
    s.storage_class = t.storage_class.clone();
    if let Some(sse) = &t.sse {
        if sse != "AES256" && sse != "aws:kms" {
            return Err(ConfigError::Invalid(format!(
                "target.{name}.sse = `{sse}`: use \"AES256\" or \"aws:kms\""
            )));
        }
    }
    s.sse = t.sse.clone();
    s.sse_kms_key_id = t.sse_kms_key_id.clone();
    s.checksum = match t.checksum.as_deref() {
        None | Some("default") => ChecksumMode::Default,
        Some("when-required") => ChecksumMode::WhenRequired,
        Some(o) => {
            return Err(ConfigError::Invalid(format!(
                "target.{name}.checksum = `{o}`: use \"default\" or \"when-required\""
            )))
        }
    };
    Ok(())
}

/// Part size and count, parallel parts, the retry deadline and the check's budget.
fn s3_transfer(name: &str, t: &RawTarget, s: &mut S3Target) -> Result<(), ConfigError> {
    if let Some(p) = &t.part_size {
        s.part_size = parse_size(p)
            .map_err(|m| ConfigError::Invalid(format!("target.{name}.part-size: {m}")))?;
        if s.part_size < 5 << 20 {
            return Err(ConfigError::Invalid(format!(
                "target.{name}.part-size must be at least 5MiB (the S3 minimum)"
            )));
        }
    }
    if let Some(m) = t.max_parts {
        if !(1..=10_000).contains(&m) {
            return Err(ConfigError::Invalid(format!(
                "target.{name}.max-parts must be between 1 and 10000"
            )));
        }
        s.max_parts = m;
    }
    if let Some(p) = t.parallel_parts {
        s.parallel_parts = p.clamp(1, 64);
    }
    if let Some(d) = &t.retry_deadline {
        s.retry_deadline = parse_duration(d)
            .map_err(|m| ConfigError::Invalid(format!("target.{name}.retry-deadline: {m}")))?;
    }
    if let Some(d) = &t.check_timeout {
        s.check_timeout = parse_duration(d)
            .map_err(|m| ConfigError::Invalid(format!("target.{name}.check-timeout: {m}")))?;
        if s.check_timeout.is_zero() {
            return Err(ConfigError::Invalid(format!(
                "target.{name}.check-timeout must be more than 0s"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let t = Target::from_url("s3://bkt/a/b/").unwrap();
        match t.kind {
            TargetKind::S3(s) => {
                assert_eq!(s.bucket, "bkt");
                assert_eq!(s.prefix, "a/b");
            }
            _ => panic!("not s3"),
        }
        assert!(matches!(
            Target::from_url("./backups").unwrap().kind,
            TargetKind::Local { .. }
        ));
        assert!(Target::from_url("ftp://x").is_err());
    }

    #[test]
    fn a_bare_word_must_be_a_configured_target_or_an_existing_directory() {
        let c = Config::parse(
            "[target.offsite]\ntype = \"local\"\npath = \"/srv/o\"\n[target.local]\ntype = \"local\"\npath = \"/srv/l\"\n",
        )
        .unwrap();
        let e = c.target_arg("offsitee").unwrap_err().to_string();
        for want in [
            "unknown target `offsitee`",
            "did you mean `offsite`?",
            "configured: local, offsite",
            "`./offsitee`",
            "`file://offsitee`",
        ] {
            assert!(e.contains(want), "missing `{want}`: {e}");
        }
        let e = c.target_arg("zzz-nothing-alike").unwrap_err().to_string();
        assert!(!e.contains("did you mean"), "{e}");
        assert_eq!(c.target_arg("offsite").unwrap().name, "offsite");
        for ok in [
            "./new",
            "/abs/new",
            "file://new",
            "s3://b/p",
            "rel/new",
            ".",
        ] {
            assert!(c.target_arg(ok).is_ok(), "{ok}");
        }
        let none = Config::parse("").unwrap();
        let e = none.target_arg("backups-typo").unwrap_err().to_string();
        assert!(e.contains("configured: none"), "{e}");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("offsitee", "offsite"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            closest("lcoal", ["local".to_string()].iter()),
            Some("local")
        );
    }
}
