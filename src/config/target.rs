//! Targets: where backups go. A `[target.NAME]` table ([`Target::from_raw`]), a `--target` URL or path
//! ([`Target::from_url`]), and what a `--target` word means against the configured ones ([`Config::target_arg`],
//! with a "did you mean" for a near miss). `storage` opens what this builds.
//!
//! A configured target's `path` and `prefix` may hold placeholders ([`PLACEHOLDERS`]: `{node}`, `{hostname}`),
//! checked when the file is loaded and filled in once per run by [`Config::expand_targets`] with the values the
//! face found ([`Placeholders`]): one config for every node of a Swarm global service, each node writing under
//! its own prefix. Everything after that (the lock key, `plan`, `list`, prune) sees only the expanded target.
//! `--target` URLs are taken literally.

use std::collections::BTreeSet;
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
    /// `equal-parts`: every part but the last has one size (no growth), for stores that require it (Cloudflare
    /// R2). `None`: [`S3Target::equal_parts`] decides from the endpoint.
    pub equal_parts: Option<bool>,
    /// Parts uploaded concurrently.
    pub parallel_parts: u32,
    /// Overall deadline for retrying one request.
    pub retry_deadline: Duration,
    /// Budget of the check made before a backup quiesces anything (see `Storage::check`).
    pub check_timeout: Duration,
}

impl S3Target {
    /// Whether uploads keep one part size: `equal-parts` when set, else true for a Cloudflare R2 endpoint
    /// (`….r2.cloudflarestorage.com`, which refuses parts of different sizes; the endpoint is the configured one,
    /// or `AWS_ENDPOINT_URL`, as resolved at load).
    pub fn equal_parts(&self) -> bool {
        self.equal_parts.unwrap_or_else(|| {
            endpoint_host_ends_with(self.endpoint.as_deref(), ".r2.cloudflarestorage.com")
        })
    }

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
            equal_parts: None,
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
        if let Some(p) = &t.prefix {
            check_template(&format!("target.{name}.prefix"), p)?;
        }
        if let Some(p) = &t.path {
            check_template(&format!("target.{name}.path"), &p.to_string_lossy())?;
        }
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
            return s3_url(url, rest, None);
        }
        if let Some(rest) = url.strip_prefix("s3:") {
            // restic's form: s3:http(s)://host[:port]/bucket/prefix.
            let bad = || {
                ConfigError::Invalid(format!(
                    "target `{url}`: write s3:http://host:port/bucket/prefix (the endpoint starts with http:// or https://), or s3://bucket/prefix"
                ))
            };
            let scheme_len = if rest.starts_with("http://") {
                "http://".len()
            } else if rest.starts_with("https://") {
                "https://".len()
            } else {
                return Err(bad());
            };
            let (endpoint, path) = match rest[scheme_len..].find('/') {
                Some(i) => rest.split_at(scheme_len + i),
                None => (rest, ""),
            };
            return s3_url(url, path.trim_start_matches('/'), Some(endpoint));
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

/// The placeholders a configured target's `path` and `prefix` may hold, without their braces.
///
/// * `{node}`: the Docker node this run works on: `VOLTAR_NODE` when set, else the name the engine reports
///   (`GET /info` `Name`: its host's name, which is also the node's hostname in `docker node ls` when the engine
///   is in a swarm; `node inspect` is not used because only managers may call it, and a global service runs on
///   workers too).
/// * `{hostname}`: the name of the machine (or container) voltar itself runs on.
pub const PLACEHOLDERS: [&str; 2] = ["node", "hostname"];

/// What the placeholders stand for in one run, each with where the value came from (for messages). A
/// placeholder that no configured target uses may stay unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placeholders {
    pub node: Option<(String, String)>,
    pub hostname: Option<(String, String)>,
}

impl Placeholders {
    fn get(&self, name: &str) -> Option<&(String, String)> {
        match name {
            "node" => self.node.as_ref(),
            "hostname" => self.hostname.as_ref(),
            _ => None,
        }
    }
}

/// One piece of a `path` or `prefix` as written: text, or a placeholder (one of [`PLACEHOLDERS`]).
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'static str),
}

/// Split `value` into text and placeholders; a `{` or `}` that is not part of a known placeholder is an error
/// (there is no escape: a brace in a target's path or prefix is almost surely a mistake).
fn pieces(value: &str) -> Result<Vec<Piece<'_>>, String> {
    let known = || {
        PLACEHOLDERS
            .iter()
            .map(|p| format!("{{{p}}}"))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find(['{', '}']) {
        if rest[i..].starts_with('}') {
            return Err(format!(
                "`}}` without an opening `{{` in `{value}` (the placeholders are {})",
                known()
            ));
        }
        if i > 0 {
            out.push(Piece::Text(&rest[..i]));
        }
        let after = &rest[i + 1..];
        let Some(end) = after
            .find(['{', '}'])
            .filter(|&e| after[e..].starts_with('}'))
        else {
            return Err(format!(
                "`{{` without a closing `}}` in `{value}` (the placeholders are {})",
                known()
            ));
        };
        let name = &after[..end];
        let Some(p) = PLACEHOLDERS.iter().find(|p| **p == name) else {
            return Err(format!(
                "unknown placeholder `{{{name}}}` in `{value}` (the placeholders are {})",
                known()
            ));
        };
        out.push(Piece::Placeholder(p));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// A configured `path` or `prefix` (named by `key`) may hold only known placeholders.
fn check_template(key: &str, value: &str) -> Result<(), ConfigError> {
    pieces(value)
        .map(|_| ())
        .map_err(|m| ConfigError::Invalid(format!("{key}: {m}")))
}

/// The placeholders `value` uses (it was checked at load).
fn used_in(value: &str, into: &mut BTreeSet<&'static str>) {
    for p in pieces(value).unwrap_or_default() {
        if let Piece::Placeholder(n) = p {
            into.insert(n);
        }
    }
}

/// `value` with its placeholders filled in. Each value must be one path component (not empty, no `/`, not `.`
/// or `..`, no braces): a node named `../x` must not move a target out of its prefix.
fn expand(key: &str, value: &str, values: &Placeholders) -> Result<String, ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(format!("{key}: {m}"));
    let mut out = String::new();
    for piece in pieces(value).map_err(invalid)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder(name) => {
                let Some((v, from)) = values.get(name) else {
                    return Err(invalid(format!(
                        "no value for {{{name}}} in `{value}` (a daemon reads the engine's name at its \
                         start only when a target uses {{node}}: restart it, or set VOLTAR_NODE)"
                    )));
                };
                let bad =
                    v.is_empty() || v == "." || v == ".." || v.contains(['/', '{', '}', '\0']);
                if bad {
                    return Err(invalid(format!(
                        "{{{name}}} would be `{v}` (from {from}), which is not one path component: \
                         set VOLTAR_NODE to a plain name"
                    )));
                }
                out.push_str(v);
            }
        }
    }
    Ok(out)
}

impl Target {
    /// The placeholders this target's `path` and `prefix` use.
    pub fn placeholders(&self) -> BTreeSet<&'static str> {
        let mut used = BTreeSet::new();
        match &self.kind {
            TargetKind::Local { path, prefix } => {
                used_in(&path.to_string_lossy(), &mut used);
                used_in(prefix, &mut used);
            }
            TargetKind::S3(s) => used_in(&s.prefix, &mut used),
        }
        used
    }

    /// This target with its placeholders filled in (itself when it has none).
    pub fn expand(&self, values: &Placeholders) -> Result<Target, ConfigError> {
        let mut t = self.clone();
        if self.placeholders().is_empty() {
            return Ok(t);
        }
        let name = &self.name;
        match &mut t.kind {
            TargetKind::Local { path, prefix } => {
                *path = PathBuf::from(expand(
                    &format!("target.{name}.path"),
                    &path.to_string_lossy(),
                    values,
                )?);
                *prefix = expand(&format!("target.{name}.prefix"), prefix, values)?;
            }
            TargetKind::S3(s) => {
                s.prefix = expand(&format!("target.{name}.prefix"), &s.prefix, values)?;
            }
        }
        Ok(t)
    }
}

impl Config {
    /// The placeholders the configured targets use: what [`Config::expand_targets`] needs values for.
    pub fn placeholders(&self) -> BTreeSet<&'static str> {
        self.targets
            .values()
            .flat_map(|t| t.placeholders())
            .collect()
    }

    /// Fill in every configured target's placeholders, once per run, before any target is opened or locked.
    pub fn expand_targets(&mut self, values: &Placeholders) -> Result<(), ConfigError> {
        for t in self.targets.values_mut() {
            *t = t.expand(values)?;
        }
        self.node = values.node.as_ref().map(|(n, _)| n.clone());
        Ok(())
    }
}

/// An `s3://` target URL: `bucket[/prefix][?endpoint=URL&path-style=BOOL&region=NAME]` (`rest`), or restic's
/// form with its `endpoint`. Without an endpoint in the URL, `AWS_ENDPOINT_URL(_S3)` is used as the AWS CLI does.
fn s3_url(url: &str, rest: &str, endpoint: Option<&str>) -> Result<Target, ConfigError> {
    let invalid = |why: String| ConfigError::Invalid(format!("target `{url}`: {why}"));
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    if bucket.is_empty() {
        return Err(invalid("no bucket (use s3://bucket/prefix)".into()));
    }
    let mut t = S3Target::new(bucket.to_string(), prefix.trim_matches('/').to_string());
    t.endpoint = endpoint.map(String::from);
    let mut path_style = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "endpoint" if value.is_empty() => {
                return Err(invalid(
                    "`endpoint=` needs a URL, e.g. endpoint=http://host:9000".into(),
                ))
            }
            "endpoint" => t.endpoint = Some(value.to_string()),
            "region" if !value.is_empty() => t.region = Some(value.to_string()),
            "path-style" => {
                path_style = Some(match value {
                    "1" | "true" | "yes" | "" => true,
                    "0" | "false" | "no" => false,
                    _ => return Err(invalid(format!("`path-style={value}`: use 1 or 0"))),
                })
            }
            _ => {
                return Err(invalid(format!(
                    "unknown option `{key}` (the URL takes endpoint=, path-style= and region=)"
                )))
            }
        }
    }
    if t.endpoint.is_none() {
        // The AWS CLI honours these; so do we.
        t.endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok();
    }
    // S3-compatible servers at an endpoint of their own expect path-style requests.
    t.path_style = path_style.unwrap_or(t.endpoint.is_some());
    t.checksum = ChecksumMode::for_endpoint(t.endpoint.as_deref());
    Ok(Target {
        name: url.to_string(),
        kind: TargetKind::S3(t),
        retention: None,
    })
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
        None => ChecksumMode::for_endpoint(s.endpoint.as_deref()),
        Some("default") => ChecksumMode::Default,
        Some("when-required") => ChecksumMode::WhenRequired,
        Some(o) => {
            return Err(ConfigError::Invalid(format!(
                "target.{name}.checksum = `{o}`: use \"default\" or \"when-required\""
            )))
        }
    };
    Ok(())
}

/// Whether `endpoint`'s host name ends with `suffix` (a provider's domain).
fn endpoint_host_ends_with(endpoint: Option<&str>, suffix: &str) -> bool {
    endpoint.is_some_and(|e| {
        let host = e.split("://").nth(1).unwrap_or(e);
        let host = host.split(['/', ':', '?']).next().unwrap_or(host);
        host.to_ascii_lowercase().ends_with(suffix)
    })
}

impl ChecksumMode {
    /// The mode when `checksum` is not set: `when-required` for a Backblaze B2 endpoint (`….backblazeb2.com`,
    /// which refuses the AWS SDK's default checksum headers), else the SDK's default.
    pub fn for_endpoint(endpoint: Option<&str>) -> ChecksumMode {
        if endpoint_host_ends_with(endpoint, ".backblazeb2.com") {
            ChecksumMode::WhenRequired
        } else {
            ChecksumMode::Default
        }
    }
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
    s.equal_parts = t.equal_parts;
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

    fn s3(url: &str) -> S3Target {
        match Target::from_url(url).unwrap().kind {
            TargetKind::S3(s) => s,
            other => panic!("{url}: not s3: {other:?}"),
        }
    }

    #[test]
    fn s3_urls_carry_their_endpoint_path_style_and_region() {
        let t = s3("s3://bkt/host1?endpoint=http://127.0.0.1:9000&path-style=1&region=eu-west-3");
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("bkt", "host1"));
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(t.path_style);
        assert_eq!(t.region.as_deref(), Some("eu-west-3"));
        // An endpoint alone means path style (what S3-compatible servers expect); it can be turned off.
        assert!(s3("s3://bkt?endpoint=https://minio.lan").path_style);
        assert!(!s3("s3://bkt/p?endpoint=https://minio.lan&path-style=false").path_style);
        // restic's form: s3:http(s)://host[:port]/bucket/prefix.
        let r = s3("s3:http://127.0.0.1:9000/bkt/a/b/");
        assert_eq!((r.bucket.as_str(), r.prefix.as_str()), ("bkt", "a/b"));
        assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(r.path_style);
        assert_eq!(
            s3("s3:https://s3.example.com/b").endpoint.as_deref(),
            Some("https://s3.example.com")
        );

        for (bad, want) in [
            ("s3://bkt/p?endpoit=http://x", "unknown option `endpoit`"),
            ("s3://bkt/p?path-style=maybe", "path-style"),
            ("s3://bkt/p?endpoint=", "endpoint"),
            ("s3:http://127.0.0.1:9000", "no bucket"),
            ("s3:ftp://host/b", "http:// or https://"),
        ] {
            let e = Target::from_url(bad).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(bad), "{bad}: {e}");
        }
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

    fn values(node: &str) -> Placeholders {
        Placeholders {
            node: Some((node.to_string(), "VOLTAR_NODE".to_string())),
            hostname: Some(("box1".to_string(), "this machine".to_string())),
        }
    }

    fn prefix_of(t: &Target) -> String {
        match &t.kind {
            TargetKind::S3(s) => s.prefix.clone(),
            TargetKind::Local { path, prefix } => format!("{}|{prefix}", path.display()),
        }
    }

    const NODES: &str = "[target.s3]\ntype = \"s3\"\nbucket = \"b\"\nprefix = \"nodes/{node}\"\n\
        [target.disk]\ntype = \"local\"\npath = \"/srv/{hostname}/bk\"\nprefix = \"n-{node}-x\"\n\
        [target.plain]\ntype = \"local\"\npath = \"/srv/plain\"\n";

    /// Issue 15: `{node}` and `{hostname}` in a prefix or a local path are filled in per run; a target without
    /// placeholders stays as it was; the config says which placeholders it needs.
    /// `checksum`: unset, it is `when-required` for a Backblaze B2 endpoint (which refuses the SDK's default
    /// checksum headers), in a `[target]` table and in an `s3://` URL; set, it is what it says.
    #[test]
    fn checksum_defaults_to_when_required_for_backblaze_b2() {
        let b2 = "endpoint = \"https://s3.us-west-004.backblazeb2.com\"\n";
        let mode = |extra: &str| {
            let c = Config::parse(&format!(
                "[target.a]\ntype = \"s3\"\nbucket = \"b\"\n{extra}"
            ))
            .unwrap();
            let TargetKind::S3(s) = &c.targets["a"].kind else {
                panic!("s3")
            };
            s.checksum.clone()
        };
        assert_eq!(mode(""), ChecksumMode::Default);
        assert_eq!(
            mode("endpoint = \"http://127.0.0.1:9000\"\n"),
            ChecksumMode::Default
        );
        assert_eq!(mode(b2), ChecksumMode::WhenRequired);
        assert_eq!(
            mode(&format!("{b2}checksum = \"default\"\n")),
            ChecksumMode::Default
        );
        let t = Target::from_url("s3://b/p?endpoint=https://s3.eu-central-003.backblazeb2.com")
            .unwrap();
        let TargetKind::S3(s) = &t.kind else {
            panic!("s3")
        };
        assert_eq!(s.checksum, ChecksumMode::WhenRequired);
    }

    /// `equal-parts`: set, or true by default for a Cloudflare R2 endpoint only.
    #[test]
    fn equal_parts_default_to_the_endpoint() {
        // `equal_parts` of a target with these extra lines (and an endpoint when given).
        let eq = |endpoint: Option<&str>, extra: &str| {
            let endpoint = endpoint
                .map(|e| format!("endpoint = \"{e}\"\n"))
                .unwrap_or_default();
            let c = Config::parse(&format!(
                "[target.a]\ntype = \"s3\"\nbucket = \"b\"\n{endpoint}{extra}"
            ))
            .unwrap();
            let TargetKind::S3(s) = &c.targets["a"].kind else {
                panic!("s3")
            };
            s.equal_parts()
        };
        assert!(!eq(None, ""));
        assert!(!eq(Some("https://s3.eu-central-1.amazonaws.com"), ""));
        assert!(eq(Some("https://0123abcd.r2.cloudflarestorage.com"), ""));
        assert!(eq(
            Some("https://0123abcd.eu.r2.cloudflarestorage.com:443/"),
            ""
        ));
        assert!(!eq(
            Some("https://r2.cloudflarestorage.com.example.org"),
            ""
        ));
        assert!(!eq(
            Some("https://x.r2.cloudflarestorage.com"),
            "equal-parts = false\n"
        ));
        assert!(eq(Some("http://127.0.0.1:9000"), "equal-parts = true\n"));
    }

    #[test]
    fn issue15_placeholders_expand_in_prefix_and_path() {
        let mut c = Config::parse(NODES).unwrap();
        assert_eq!(
            c.placeholders().into_iter().collect::<Vec<_>>(),
            ["hostname", "node"]
        );
        assert!(c.targets["plain"].placeholders().is_empty());
        c.expand_targets(&values("worker-2")).unwrap();
        assert_eq!(prefix_of(&c.targets["s3"]), "nodes/worker-2");
        assert_eq!(prefix_of(&c.targets["disk"]), "/srv/box1/bk|n-worker-2-x");
        assert_eq!(prefix_of(&c.targets["plain"]), "/srv/plain|");
        assert!(c.placeholders().is_empty(), "expanded twice?");
        // Only the placeholders in use need a value.
        let mut c =
            Config::parse("[target.s3]\ntype = \"s3\"\nbucket = \"b\"\nprefix = \"{node}\"\n")
                .unwrap();
        let only_node = Placeholders {
            node: Some(("n1".into(), "the engine".into())),
            hostname: None,
        };
        c.expand_targets(&only_node).unwrap();
        assert_eq!(prefix_of(&c.targets["s3"]), "n1");
    }

    /// Issue 15: an unknown placeholder or a stray brace is a config error naming the key and the placeholders.
    #[test]
    fn issue15_placeholder_misuse_is_a_config_error_naming_the_key() {
        for (key, value, want) in [
            ("prefix", "nodes/{nod}", "unknown placeholder `{nod}`"),
            ("prefix", "nodes/{Node}", "unknown placeholder `{Node}`"),
            ("prefix", "nodes/{}", "unknown placeholder `{}`"),
            ("prefix", "nodes/{node", "`{` without a closing `}`"),
            ("prefix", "nodes/{{node}}", "`{` without a closing `}`"),
            ("prefix", "nodes/node}", "`}` without an opening `{`"),
            ("path", "/srv/{host}", "unknown placeholder `{host}`"),
        ] {
            let toml = if key == "path" {
                format!("[target.t]\ntype = \"local\"\npath = \"{value}\"\n")
            } else {
                format!("[target.t]\ntype = \"s3\"\nbucket = \"b\"\nprefix = \"{value}\"\n")
            };
            let e = Config::parse(&toml).unwrap_err().to_string();
            assert!(e.contains(&format!("target.t.{key}")), "{value}: {e}");
            assert!(e.contains(want), "{value}: {e}");
            assert!(e.contains("{node} and {hostname}"), "{value}: {e}");
        }
    }

    /// Issue 15: a value that is not one plain path component never reaches a prefix (a node called `..` must
    /// not move the target), and a placeholder without a value is an error, not a literal `{node}` directory.
    #[test]
    fn issue15_placeholder_values_must_be_one_path_component() {
        let c = Config::parse(NODES).unwrap();
        for bad in ["", ".", "..", "a/b", "{node}"] {
            let e = c
                .clone()
                .expand_targets(&values(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("not one path component"), "{bad:?}: {e}");
            assert!(e.contains("VOLTAR_NODE"), "{bad:?}: {e}");
        }
        let e = c
            .clone()
            .expand_targets(&Placeholders::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no value for {"), "{e}");
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
