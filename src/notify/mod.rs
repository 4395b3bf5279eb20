//! Telling people about runs: healthchecks.io pings, webhooks, ntfy and e-mail.
//!
//! An adapter: it takes a run's JSON summary as bytes (the very document `voltar backup --json` prints) and knows
//! nothing of backups beyond a few well-known fields it quotes in short messages (`status`, `id`, `error`, failed
//! sources and targets). The one-shot `voltar backup` and the daemon both drive it through [`Notifier`]:
//! [`Notifier::started`] before a run, [`Notifier::finished`] after it.
//!
//! Rules, all of them about not making a bad night worse:
//! * A notification never fails the run and never changes its exit code: [`Notifier::finished`] returns the
//!   receivers that could not be told ([`NotifyFailure`]) and logs each as a warning; there is no `Err`.
//! * Bounded: every request has a [`REQUEST_TIMEOUT`], is retried at most [`RETRIES`] times (connection errors,
//!   timeouts, 5xx, 429), and all requests of one notification run at once under one deadline
//!   ([`START_DEADLINE`], [`FINISH_DEADLINE`]), so a dead receiver holds the run's exit for at most
//!   `START_DEADLINE + FINISH_DEADLINE`.
//! * Secrets never reach a log line: receivers are named by their redacted URL (`config::redact_url`), user and
//!   password in a URL are sent as an `Authorization` header and never put in the request URI (which HTTP client
//!   libraries may trace), and error texts are ours or the library's, never the URL.
//!
//! Why hyper and not reqwest: hyper 1, hyper-util and hyper-rustls (on the aws-lc-rs provider) are already built
//! for bollard and the AWS SDK; a second HTTP stack would add build time and another TLS configuration.

mod email;
mod http;
mod message;

use std::fmt;
use std::time::Duration;

use futures::future::join_all;

use crate::config::{Config, Notify, NotifyKind, ReceiverUrl};

/// The longest one HTTP request or SMTP session may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a request that failed in a way that may pass (connection, timeout, 5xx, 429).
pub const RETRIES: u32 = 2;
/// Pause before a retry.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// All `/start` pings of one run together.
pub const START_DEADLINE: Duration = Duration::from_secs(10);
/// All end-of-run notifications of one run together.
pub const FINISH_DEADLINE: Duration = Duration::from_secs(20);
/// healthchecks.io keeps at most this much of a ping's body.
pub const PING_BODY_LIMIT: usize = 100_000;

/// A receiver that could not be told, named without its secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyFailure {
    /// The redacted URL (`https://hc-ping.com/5bf6…`).
    pub receiver: String,
    pub error: String,
}

impl fmt::Display for NotifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "notification to {} failed: {}",
            self.receiver, self.error
        )
    }
}

/// The receivers of one job's runs: its `healthcheck-url` and every `[[notify]]` entry.
#[derive(Clone, Debug)]
pub struct Notifier {
    job: String,
    healthcheck: Option<ReceiverUrl>,
    receivers: Vec<Notify>,
}

/// What one request is about.
#[derive(Clone, Copy)]
enum Event {
    Start,
    Finish { ok: bool },
}

impl Notifier {
    /// The job's `healthcheck-url` plus every `[[notify]]` entry (an unknown job has only the latter).
    pub fn for_job(config: &Config, job: &str) -> Notifier {
        Notifier {
            job: job.to_string(),
            healthcheck: config.jobs.get(job).and_then(|j| j.healthcheck_url.clone()),
            receivers: config.notify.clone(),
        }
    }

    /// Whether there is anyone to tell.
    pub fn is_empty(&self) -> bool {
        self.healthcheck.is_none() && self.receivers.is_empty()
    }

    /// A run starts: healthchecks `GET <url>/start` (the other receivers hear only about the end).
    pub async fn started(&self) {
        let Some(hc) = &self.healthcheck else {
            return;
        };
        let client = http::Client::new();
        let sent = tokio::time::timeout(
            START_DEADLINE,
            http::healthcheck(&client, hc, Event::Start, b""),
        )
        .await
        .unwrap_or_else(|_| Err(deadline(START_DEADLINE)));
        if let Err(error) = sent {
            warn(&NotifyFailure {
                receiver: hc.to_string(),
                error,
            });
        }
    }

    /// A run ended (`ok`: exit 0): the healthchecks ping (`<url>` or `<url>/fail`, the summary as its body) and
    /// every `[[notify]]` receiver whose `on` has this outcome. Returns the receivers that could not be told.
    pub async fn finished(&self, ok: bool, summary_json: &str) -> Vec<NotifyFailure> {
        let event = Event::Finish { ok };
        let client = http::Client::new();
        let msg = message::Message::new(&self.job, ok, summary_json);
        let mut sends: Vec<(String, futures::future::BoxFuture<'_, Result<(), String>>)> =
            Vec::new();
        if let Some(hc) = &self.healthcheck {
            let body = cap(summary_json.as_bytes(), PING_BODY_LIMIT);
            sends.push((
                hc.to_string(),
                Box::pin(http::healthcheck(&client, hc, event, body)),
            ));
        }
        for r in &self.receivers {
            if !(if ok { r.on.success } else { r.on.failure }) {
                continue;
            }
            let fut: futures::future::BoxFuture<'_, Result<(), String>> = match &r.kind {
                NotifyKind::Webhook => Box::pin(http::webhook(&client, r, summary_json)),
                NotifyKind::Ntfy => Box::pin(http::ntfy(&client, r, &msg)),
                NotifyKind::Email(smtp) => Box::pin(email::send(smtp, r, &msg)),
            };
            sends.push((r.url.to_string(), fut));
        }
        let results = join_all(sends.into_iter().map(|(receiver, fut)| async move {
            let r = tokio::time::timeout(FINISH_DEADLINE, fut)
                .await
                .unwrap_or_else(|_| Err(deadline(FINISH_DEADLINE)));
            (receiver, r)
        }))
        .await;
        let mut failures = Vec::new();
        for (receiver, r) in results {
            match r {
                Ok(()) => tracing::debug!("notified {receiver}"),
                Err(error) => {
                    let f = NotifyFailure { receiver, error };
                    warn(&f);
                    failures.push(f);
                }
            }
        }
        failures
    }
}

fn warn(f: &NotifyFailure) {
    tracing::warn!("{f}; the run's result and exit code are not affected");
}

fn deadline(d: Duration) -> String {
    format!(
        "gave up after {}s (notifications of one run are bounded so that a dead receiver cannot hold it)",
        d.as_secs()
    )
}

/// The first `limit` bytes of `b`, cut back to a UTF-8 boundary.
fn cap(b: &[u8], limit: usize) -> &[u8] {
    if b.len() <= limit {
        return b;
    }
    let mut end = limit;
    // Continuation bytes are 0b10xxxxxx: step back to the start of a character.
    while end > 0 && (b[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &b[..end]
}

/// Retry `attempt` while it fails in a way that may pass, at most [`RETRIES`] times, each try bounded by
/// [`REQUEST_TIMEOUT`].
async fn with_retries<F, Fut>(receiver: &str, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let mut tries = 0;
    loop {
        let r = match tokio::time::timeout(REQUEST_TIMEOUT, attempt()).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Transient(format!(
                "no answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient(e)) if tries >= RETRIES => {
                return Err(format!("{e} ({} tries)", tries + 1))
            }
            Err(Failure::Transient(e)) => {
                tracing::debug!("notification to {receiver}: {e}; trying again");
                tries += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Library messages start as they like ("Connection error"); ours are lowercase.
fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Whether `e` or one of its causes is a failed TLS handshake (rustls said no: an untrusted or mismatched
/// certificate, no common protocol). That will not pass with another try.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    // hyper-rustls wraps tokio-rustls' io::Error (which wraps the rustls::Error) in another io::Error, and an
    // io::Error's `source` skips the error it wraps: look through `get_ref` as well.
    let mut cause = Some(e);
    while let Some(c) = cause {
        let mut e = c;
        loop {
            if e.is::<rustls::Error>() {
                return true;
            }
            match e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => e = inner,
                None => break,
            }
        }
        cause = c.source();
    }
    false
}

/// How one try failed.
enum Failure {
    /// Worth another try: connection refused or reset, timeout, 5xx, 429.
    Transient(String),
    /// Will fail again: 4xx, a bad address, refused credentials.
    Permanent(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon runs notifications on spawned tasks: the futures must be `Send`.
    #[test]
    fn notifications_can_be_spawned() {
        fn send<T: Send + 'static>(_: T) {}
        let n = Notifier::for_job(&Config::default(), "default");
        let (a, b) = (n.clone(), n);
        send(async move { a.started().await });
        send(async move { b.finished(true, "{}").await });
    }

    #[test]
    fn cap_cuts_at_a_character_boundary() {
        assert_eq!(cap(b"abc", 10), b"abc");
        let s = "aé"; // 'é' is two bytes
        assert_eq!(cap(s.as_bytes(), 2), b"a");
        assert_eq!(cap(s.as_bytes(), 3), s.as_bytes());
    }
}
