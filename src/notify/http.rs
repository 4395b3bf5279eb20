//! HTTP receivers: healthchecks pings, webhooks (the JSON summary) and ntfy (headers + a short body), over
//! hyper with rustls on the aws-lc-rs provider and the system's root certificates.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::message::Message;
use super::{is_tls, lowercase_first, with_retries, Event, Failure};
use crate::config::{Notify, ReceiverUrl};

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// One client per notification (connections are not kept: runs are hours apart).
pub(super) struct Client {
    inner: hyper_util::client::legacy::Client<Https, Full<Bytes>>,
}

impl Client {
    pub(super) fn new() -> Client {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(b) => b,
            Err(e) => {
                // No root certificates on this machine: plain http still works, https fails naming the cause.
                tracing::debug!("no system root certificates for https notifications: {e}");
                let config = rustls::ClientConfig::builder_with_provider(provider.into())
                    .with_safe_default_protocol_versions()
                    .expect("aws-lc-rs supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https);
        Client { inner }
    }

    /// Send one request to `url` (its user and password, or `token`/`password`, as the Authorization header),
    /// retried as [`with_retries`] says.
    async fn send(
        &self,
        method: Method,
        url: &url::Url,
        auth: Auth<'_>,
        headers: &[(HeaderName, String)],
        body: &[u8],
    ) -> Result<(), String> {
        // The URI without user and password: HTTP libraries may trace the authority.
        let mut bare = url.clone();
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        let uri: hyper::Uri = bare
            .as_str()
            .parse()
            .map_err(|e| format!("not a URL an HTTP client can use: {e}"))?;
        let authorization = auth.header(url)?;
        let body = Bytes::copy_from_slice(body);
        let receiver = crate::config::redact_url(url);
        with_retries(&receiver, || {
            let mut req = Request::builder().method(method.clone()).uri(uri.clone());
            req = req.header(USER_AGENT, crate::TOOL.replace(' ', "/"));
            if let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a.clone());
            }
            for (k, v) in headers {
                req = req.header(k, header_text(v));
            }
            let req = req.body(Full::new(body.clone()));
            async move {
                let req =
                    req.map_err(|e| Failure::Permanent(format!("cannot build the request: {e}")))?;
                let resp = self.inner.request(req).await.map_err(|e| {
                    // A certificate that is not trusted will not be trusted a second later.
                    if is_tls_error(&e) {
                        Failure::Permanent(client_error(&e))
                    } else {
                        Failure::Transient(client_error(&e))
                    }
                })?;
                let status = resp.status();
                // Read (and drop) the answer, so the exchange is complete before we say it worked.
                let _ = resp.into_body().collect().await;
                judge(status)
            }
        })
        .await
    }
}

/// How a request authenticates.
enum Auth<'a> {
    /// Basic auth from the URL's user and password, or the user with a `password-file`; else a `token-file` as a
    /// bearer token; else nothing.
    Of(&'a Notify),
    /// Only what the URL holds (healthchecks).
    Url,
}

impl Auth<'_> {
    fn header(&self, url: &url::Url) -> Result<Option<HeaderValue>, String> {
        let (password, token) = match self {
            Auth::Of(n) => (
                n.password.as_ref().map(|s| s.expose().to_string()),
                n.token.as_ref().map(|s| s.expose().to_string()),
            ),
            Auth::Url => (None, None),
        };
        let text = if let Some(t) = token {
            Some(format!("Bearer {t}"))
        } else if !url.username().is_empty() {
            let user = decode(url.username());
            let pass = password
                .or_else(|| url.password().map(decode))
                .unwrap_or_default();
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            ))
        } else {
            None
        };
        text.map(|t| {
            let mut v = HeaderValue::from_str(&t).map_err(|_| {
                "the token or password holds characters a header cannot carry".to_string()
            })?;
            v.set_sensitive(true);
            Ok(v)
        })
        .transpose()
    }
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// A header value from text: non-ASCII and control characters become `?` (ntfy titles are plain ASCII headers).
fn header_text(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("?"))
}

fn judge(status: StatusCode) -> Result<(), Failure> {
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(Failure::Transient(format!(
            "the receiver answered {status}"
        )))
    } else {
        Err(Failure::Permanent(format!(
            "the receiver answered {status}"
        )))
    }
}

/// Whether the TLS handshake failed (rustls said no: an untrusted or mismatched certificate, no common protocol).
fn is_tls_error(e: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(e).is_some_and(is_tls)
}

/// What went wrong with a request, in one lowercase line without the URL: "cannot connect: connection refused
/// (os error 111)", else hyper-util's error and its causes.
fn client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        causes.push(c.to_string());
        cause = c.source();
    }
    if e.is_connect() {
        let why = causes.last().cloned().unwrap_or_else(|| e.to_string());
        return format!("cannot connect: {}", lowercase_first(&why));
    }
    let mut out = e.to_string();
    for c in causes {
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    lowercase_first(&out)
}

/// healthchecks.io: `GET <url>/start`; `POST <url>` (success) or `POST <url>/fail` with `body`.
pub(super) async fn healthcheck(
    client: &Client,
    hc: &ReceiverUrl,
    event: Event,
    body: &[u8],
) -> Result<(), String> {
    let suffix = match event {
        Event::Start => Some("start"),
        Event::Finish { ok: true } => None,
        Event::Finish { ok: false } => Some("fail"),
    };
    let mut url = hc.expose().clone();
    if let Some(s) = suffix {
        let path = format!("{}/{s}", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    let method = match event {
        Event::Start => Method::GET,
        Event::Finish { .. } => Method::POST,
    };
    let headers = [(CONTENT_TYPE, "application/json".to_string())];
    client
        .send(
            method,
            &url,
            Auth::Url,
            if body.is_empty() { &[] } else { &headers },
            body,
        )
        .await
}

/// A webhook: `POST` the run's JSON summary as it is.
pub(super) async fn webhook(client: &Client, n: &Notify, summary_json: &str) -> Result<(), String> {
    client
        .send(
            Method::POST,
            n.url.expose(),
            Auth::Of(n),
            &[(CONTENT_TYPE, "application/json".to_string())],
            summary_json.as_bytes(),
        )
        .await
}

/// ntfy: `POST` a short text to the topic URL with `Title`, `Priority` and `Tags` headers.
pub(super) async fn ntfy(client: &Client, n: &Notify, msg: &Message) -> Result<(), String> {
    let headers = [
        (HeaderName::from_static("title"), msg.title.clone()),
        (
            HeaderName::from_static("priority"),
            if msg.ok { "default" } else { "high" }.to_string(),
        ),
        (
            HeaderName::from_static("tags"),
            if msg.ok {
                "white_check_mark"
            } else {
                "warning"
            }
            .to_string(),
        ),
        (CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
    ];
    client
        .send(
            Method::POST,
            n.url.expose(),
            Auth::Of(n),
            &headers,
            msg.short.as_bytes(),
        )
        .await
}
