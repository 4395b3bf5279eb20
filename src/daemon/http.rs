//! The daemon's listener: `GET /healthz` (200 `{"healthy":true}`, or 503 with the reasons as JSON) and
//! `GET /metrics` (Prometheus); anything else is 404. A small hyper 1 server (hyper is already built for the
//! Engine API client): one task per connection, HTTP/1.1, no framework.
//!
//! [`healthz`] is the client side, for `voltar healthcheck` in images without curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Shared;

/// How long `voltar healthcheck` waits for the listener.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source} (set [daemon] listen to a free address, or \"\" for no listener)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("nothing answers on {addr} ({source}): is `voltar daemon` running with this config's [daemon] listen?")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {} s", HEALTHCHECK_TIMEOUT.as_secs())]
    Timeout { addr: SocketAddr },
    #[error("{addr} did not answer as voltar daemon does: {message}")]
    Protocol { addr: SocketAddr, message: String },
}

/// Bind `addr` now (so that a taken port is an error at start), then serve until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    // Out of descriptors and the like: try again shortly.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&shared, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((bound, task))
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: GET /healthz or /metrics\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => {
            let h = shared.health();
            let status = if h.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = serde_json::to_string(&h).expect("health serialises");
            body.push('\n');
            reply(status, "application/json", body)
        }
        "/metrics" => {
            // Prometheus asks for OpenMetrics; anything else gets the same text as 0.0.4, which it parses as such
            // (`# EOF` is a comment there, counters keep their `_total` names).
            let open_metrics = req.headers().get_all("accept").iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.contains("application/openmetrics-text"))
            });
            let ctype = if open_metrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            reply(StatusCode::OK, ctype, shared.metrics.encode())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: GET /healthz or /metrics\n".into(),
        ),
    }
}

/// Ask the daemon listening on `addr` for `/healthz`: its status code and body.
pub async fn healthz(addr: SocketAddr) -> Result<(u16, String), HttpError> {
    tokio::time::timeout(HEALTHCHECK_TIMEOUT, get(addr, "/healthz"))
        .await
        .map_err(|_| HttpError::Timeout { addr })?
}

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), HttpError> {
    let protocol = |e: &dyn std::fmt::Display| HttpError::Protocol {
        addr,
        message: e.to_string(),
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(&e))?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| protocol(&e))?;
    let res = sender.send_request(req).await.map_err(|e| protocol(&e))?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
