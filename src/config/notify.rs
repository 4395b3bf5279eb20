//! Alert receivers as the config names them: a job's `healthcheck-url` and the top-level `[[notify]]` tables,
//! validated at load (scheme, `on` words, `format`, secret files) so that a typo is a config error naming the key
//! rather than a silent missing alert at 3 a.m.
//!
//! URLs of receivers carry secrets (a healthchecks uuid is the whole credential, webhooks put tokens in the path
//! or query, `user:password@` in the authority), so they are held as [`ReceiverUrl`], whose `Debug` and
//! `Display` print [`redact_url`]'s form only. Secrets from `*-file` keys are [`Secret`]s, which never print.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::units::read_secret_file;
use super::ConfigError;

/// A secret read from a `*-file` key. Its `Debug` prints `***`; [`Secret::expose`] is the one way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A receiver's URL as written. It prints redacted (see [`redact_url`]); [`ReceiverUrl::expose`] gives the URL
/// itself, for the one place that sends the request.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceiverUrl(url::Url);

impl ReceiverUrl {
    pub fn expose(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Display for ReceiverUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for ReceiverUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiverUrl({self})")
    }
}

/// A path segment at least this long is cut to its first [`KEEP`] characters: healthchecks uuids (36) and ping
/// keys (22), Slack/Discord webhook tokens, long ntfy topics. Short segments (`/hooks/voltar`) stay readable.
const LONG_SEGMENT: usize = 12;
const KEEP: usize = 4;

/// The URL with its secrets taken out, for logs and messages: user and password become `***`, the query and
/// fragment become `?…`/`#…` (tokens live there), and every long path segment keeps only its first 4 characters
/// (`https://hc-ping.com/0f3a…`). Scheme, host and port stay, so the receiver is still recognisable.
pub fn redact_url(u: &url::Url) -> String {
    let mut out = format!("{}://", u.scheme());
    if !u.username().is_empty() || u.password().is_some() {
        out.push_str("***@");
    }
    out.push_str(u.host_str().unwrap_or(""));
    if let Some(p) = u.port() {
        out.push_str(&format!(":{p}"));
    }
    let path = u.path();
    if !path.is_empty() && path != "/" {
        for seg in path.trim_start_matches('/').split('/') {
            out.push('/');
            if seg.chars().count() >= LONG_SEGMENT {
                out.extend(seg.chars().take(KEEP));
                out.push('…');
            } else {
                out.push_str(seg);
            }
        }
    }
    if u.query().is_some() {
        out.push_str("?…");
    }
    if u.fragment().is_some() {
        out.push_str("#…");
    }
    out
}

/// When a `[[notify]]` receiver is told about a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NotifyOn {
    pub failure: bool,
    pub success: bool,
}

/// How a receiver is spoken to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyKind {
    /// `http(s)://…`: POST the run's JSON summary.
    Webhook,
    /// `ntfy://host/topic` or an https URL with `format = "ntfy"`: title, priority and a short body (ntfy's
    /// headers); `url` is the https URL.
    Ntfy,
    /// `smtp://user@host:port?to=…&from=…`.
    Email(Smtp),
}

/// How an SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS (required, not opportunistic): port 587, the default.
    StartTls,
    /// TLS from the first byte: port 465 or `?tls=implicit`.
    Implicit,
    /// No TLS: `smtp+plain://` or `?tls=none`, for a relay on the same host.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// The login, when the URL has a user.
    pub user: Option<String>,
    pub to: Vec<String>,
    /// `from=`, else `voltar@<this host's name>`.
    pub from: Option<String>,
}

/// One `[[notify]]` table, validated.
#[derive(Clone, Debug)]
pub struct Notify {
    /// The URL to send to (an `ntfy://` URL is already turned into its https one).
    pub url: ReceiverUrl,
    pub kind: NotifyKind,
    pub on: NotifyOn,
    /// `token-file`: sent as `Authorization: Bearer …` (webhook, ntfy).
    pub token: Option<Secret>,
    /// `password-file`: the SMTP password (or HTTP basic auth with a user in the URL).
    pub password: Option<Secret>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNotify {
    pub url: String,
    pub on: Option<Vec<String>>,
    pub format: Option<String>,
    pub token_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
}

fn invalid(key: &str, msg: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{key}: {msg}"))
}

/// A URL from the config, or an error naming `key` that does not repeat the URL (it may hold a secret).
fn parse_url(key: &str, text: &str) -> Result<url::Url, ConfigError> {
    url::Url::parse(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("not a URL ({e}); e.g. https://hooks.example.com/voltar"),
        )
    })
}

/// A job's `healthcheck-url`: an http(s) URL; pings go to it, `/start` and `/fail` are appended.
pub fn healthcheck_url(key: &str, text: &str) -> Result<ReceiverUrl, ConfigError> {
    let u = parse_url(key, text)?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(invalid(
            key,
            format!(
                "`{}` is not an http(s) URL; e.g. https://hc-ping.com/<uuid>",
                redact_url(&u)
            ),
        ));
    }
    if u.query().is_some() {
        return Err(invalid(
            key,
            "a healthchecks URL takes no query (`/start` and `/fail` are appended to its path)",
        ));
    }
    Ok(ReceiverUrl(u))
}

/// The `[[notify]]` table number `i` (0-based), validated; secret files are read here, under the usual rules.
pub fn notify(i: usize, raw: RawNotify) -> Result<Notify, ConfigError> {
    let key = format!("notify[{}]", i + 1);
    let url_key = format!("{key}.url");
    let u = parse_url(&url_key, &raw.url)?;
    if u.host_str().is_none_or(str::is_empty) {
        return Err(invalid(
            &url_key,
            format!("`{}` names no host", redact_url(&u)),
        ));
    }
    let on = match &raw.on {
        None => NotifyOn {
            failure: true,
            success: false,
        },
        Some(words) => {
            let mut on = NotifyOn::default();
            for w in words {
                match w.as_str() {
                    "failure" => on.failure = true,
                    "success" => on.success = true,
                    other => {
                        return Err(invalid(
                            &format!("{key}.on"),
                            format!(
                                "`{other}` is not an event (use \"failure\" and/or \"success\")"
                            ),
                        ))
                    }
                }
            }
            if !on.failure && !on.success {
                return Err(invalid(
                    &format!("{key}.on"),
                    "is empty: use [\"failure\"], [\"success\"] or both (or remove the [[notify]] table)",
                ));
            }
            on
        }
    };
    let format = raw.format.as_deref().map(str::trim);
    let (u, kind) = match u.scheme() {
        "http" | "https" => match format {
            None | Some("json") => (u, NotifyKind::Webhook),
            Some("ntfy") => (u, NotifyKind::Ntfy),
            Some(other) => {
                return Err(invalid(
                    &format!("{key}.format"),
                    format!("`{other}` is not a format (use \"json\", the default, or \"ntfy\")"),
                ))
            }
        },
        "ntfy" => {
            if format.is_some_and(|f| f != "ntfy") {
                return Err(invalid(
                    &format!("{key}.format"),
                    "an ntfy:// URL is always ntfy (remove format)",
                ));
            }
            (ntfy_https(&url_key, &u)?, NotifyKind::Ntfy)
        }
        "smtp" | "smtp+plain" | "smtps" => {
            if format.is_some() {
                return Err(invalid(
                    &format!("{key}.format"),
                    "e-mail has no format (remove it)",
                ));
            }
            let smtp = smtp(&url_key, &u)?;
            (u, NotifyKind::Email(smtp))
        }
        other => {
            return Err(invalid(
                &url_key,
                format!(
                    "unknown scheme `{other}` (use https:// for a webhook, ntfy://host/topic, or smtp://user@host:587?to=…)"
                ),
            ))
        }
    };
    let secret = |k: &str, p: &Option<PathBuf>| -> Result<Option<Secret>, ConfigError> {
        p.as_ref()
            .map(|p| read_secret_file(p).map(Secret))
            .transpose()
            .map_err(|e| invalid(&format!("{key}.{k}"), e))
    };
    let token = secret("token-file", &raw.token_file)?;
    let password = secret("password-file", &raw.password_file)?;
    match &kind {
        NotifyKind::Email(s) => {
            if token.is_some() {
                return Err(invalid(
                    &format!("{key}.token-file"),
                    "e-mail takes password-file, not token-file",
                ));
            }
            if password.is_some() && s.user.is_none() {
                return Err(invalid(
                    &format!("{key}.password-file"),
                    "needs a user in the URL (smtp://user@host:587?to=…)",
                ));
            }
        }
        NotifyKind::Webhook | NotifyKind::Ntfy => {
            if u.password().is_some() && password.is_some() {
                return Err(invalid(
                    &url_key,
                    "has a password in the URL and a password-file: keep the password-file only",
                ));
            }
            if password.is_some() && u.username().is_empty() {
                return Err(invalid(
                    &format!("{key}.password-file"),
                    "needs a user in the URL (https://user@host/…) for basic auth",
                ));
            }
            if token.is_some() && (!u.username().is_empty() || password.is_some()) {
                return Err(invalid(
                    &format!("{key}.token-file"),
                    "a token and a user/password both set the Authorization header: keep one",
                ));
            }
        }
    }
    Ok(Notify {
        url: ReceiverUrl(u),
        kind,
        on,
        token,
        password,
    })
}

/// `ntfy://host[:port]/topic` → `https://host[:port]/topic`.
fn ntfy_https(key: &str, u: &url::Url) -> Result<url::Url, ConfigError> {
    let topic = u.path().trim_matches('/');
    if topic.is_empty() || topic.contains('/') {
        return Err(invalid(
            key,
            format!("`{}`: write ntfy://host/topic", redact_url(u)),
        ));
    }
    let mut text = String::from("https://");
    if !u.username().is_empty() {
        text.push_str(u.username());
        if let Some(p) = u.password() {
            text.push(':');
            text.push_str(p);
        }
        text.push('@');
    }
    text.push_str(u.host_str().unwrap_or(""));
    if let Some(p) = u.port() {
        text.push_str(&format!(":{p}"));
    }
    text.push('/');
    text.push_str(topic);
    if let Some(q) = u.query() {
        text.push('?');
        text.push_str(q);
    }
    url::Url::parse(&text).map_err(|e| invalid(key, format!("`{}`: {e}", redact_url(u))))
}

/// `smtp://user@host:587?to=a@b,c@d&from=…&tls=starttls|implicit|none`.
fn smtp(key: &str, u: &url::Url) -> Result<Smtp, ConfigError> {
    if u.password().is_some() {
        return Err(invalid(
            key,
            "has a password in the URL: put it in a file named by password-file (chmod 600)",
        ));
    }
    let mut tls = match u.scheme() {
        "smtp+plain" => Some(SmtpTls::None),
        "smtps" => Some(SmtpTls::Implicit),
        _ => None,
    };
    let mut to = Vec::new();
    let mut from = None;
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "to" => to.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(String::from),
            ),
            "from" => from = Some(v.trim().to_string()),
            "tls" => {
                tls = Some(match v.as_ref() {
                    "none" => SmtpTls::None,
                    "starttls" => SmtpTls::StartTls,
                    "implicit" => SmtpTls::Implicit,
                    other => {
                        return Err(invalid(
                            key,
                            format!("tls=`{other}`: use starttls, implicit or none"),
                        ))
                    }
                })
            }
            other => {
                return Err(invalid(
                    key,
                    format!("unknown parameter `{other}` (use to, from, tls)"),
                ))
            }
        }
    }
    if to.is_empty() {
        return Err(invalid(
            key,
            "names no recipient: add ?to=ops@example.com (several: to=a@x,b@y)",
        ));
    }
    for a in to.iter().chain(from.iter()) {
        let ok = a
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
            && !a.contains(char::is_whitespace);
        if !ok {
            return Err(invalid(key, format!("`{a}` is not an e-mail address")));
        }
    }
    let port = u.port();
    let tls = tls.unwrap_or(if port == Some(465) {
        SmtpTls::Implicit
    } else {
        SmtpTls::StartTls
    });
    let port = port.unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Implicit => 465,
        SmtpTls::None => 25,
    });
    let user = (!u.username().is_empty()).then(|| percent_decode(u.username()));
    Ok(Smtp {
        host: u.host_str().unwrap_or("").to_string(),
        port,
        tls,
        user,
        to,
        from,
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(url: &str) -> Result<Notify, ConfigError> {
        notify(
            0,
            RawNotify {
                url: url.into(),
                ..RawNotify::default()
            },
        )
    }

    #[test]
    fn redaction_keeps_the_receiver_and_drops_its_secrets() {
        for (url, shown) in [
            (
                "https://hc-ping.com/5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278",
                "https://hc-ping.com/5bf6…",
            ),
            (
                "https://u:SeCrEt@hooks.example.com:8443/hooks/voltar?token=SeCrEt#x",
                "https://***@hooks.example.com:8443/hooks/voltar?…#…",
            ),
            (
                "smtp://alerts@mail.example.com:587?to=ops@example.com",
                "smtp://***@mail.example.com:587?…",
            ),
            ("https://ntfy.sh/", "https://ntfy.sh"),
        ] {
            let u = url::Url::parse(url).unwrap();
            assert_eq!(redact_url(&u), shown);
            assert!(!redact_url(&u).contains("SeCrEt"));
        }
    }

    #[test]
    fn receivers_by_scheme() {
        assert_eq!(n("https://h.example/x").unwrap().kind, NotifyKind::Webhook);
        let ntfy = n("ntfy://ntfy.example:8443/backups").unwrap();
        assert_eq!(ntfy.kind, NotifyKind::Ntfy);
        assert_eq!(
            ntfy.url.expose().as_str(),
            "https://ntfy.example:8443/backups"
        );
        let on = n("https://h.example/x").unwrap().on;
        assert!(on.failure && !on.success, "default on = [\"failure\"]");
        for (url, tls, port) in [
            (
                "smtp://a@mx.example?to=o@example.com",
                SmtpTls::StartTls,
                587,
            ),
            (
                "smtp://a@mx.example:465?to=o@example.com",
                SmtpTls::Implicit,
                465,
            ),
            (
                "smtp+plain://mx.example?to=o@example.com",
                SmtpTls::None,
                25,
            ),
            (
                "smtp://mx.example:2525?to=o@example.com&tls=none",
                SmtpTls::None,
                2525,
            ),
        ] {
            match n(url).unwrap().kind {
                NotifyKind::Email(s) => assert_eq!((s.tls, s.port), (tls, port), "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_receivers_are_errors_naming_the_key_without_the_secret() {
        for (url, on, format, says) in [
            (
                "ftp://h.example/SeCrEt-long-token",
                None,
                None,
                "notify[1].url: unknown scheme `ftp`",
            ),
            (
                "https://h.example/x",
                Some(vec!["failed"]),
                None,
                "notify[1].on: `failed`",
            ),
            (
                "https://h.example/x",
                Some(vec![]),
                None,
                "notify[1].on: is empty",
            ),
            (
                "https://h.example/x",
                None,
                Some("slack"),
                "notify[1].format: `slack`",
            ),
            ("smtp://a@mx.example", None, None, "names no recipient"),
            (
                "smtp://a:SeCrEt@mx.example?to=o@example.com",
                None,
                None,
                "password-file",
            ),
            (
                "smtp://a@mx.example?to=o@example.com&tls=maybe",
                None,
                None,
                "tls=`maybe`",
            ),
            ("ntfy://h.example/a/b", None, None, "ntfy://host/topic"),
        ] {
            let e = notify(
                0,
                RawNotify {
                    url: url.into(),
                    on: on.map(|v| v.into_iter().map(String::from).collect()),
                    format: format.map(String::from),
                    ..RawNotify::default()
                },
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("SeCrEt"), "{url}: {e}");
        }
        let e = healthcheck_url("job.a.healthcheck-url", "hc-ping.com/x").unwrap_err();
        assert!(e.to_string().contains("job.a.healthcheck-url"), "{e}");
    }
}
