//! Issue 14, "Check before the night": `voltar target check NAME|URL` through the real binary against the real S3
//! server (VOLTAR_TEST_S3_ENDPOINT), private S3 servers this test kills or starts with authentication on, and
//! local directories (one read-only).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::s3::World;
use crate::support::{self, free_port, Out, PrivateS3, Tmpfs};
use voltar::storage::Storage;

/// `voltar -c CONFIG target check TARGET [--json]` in the world's clean environment.
fn target_check(w: &World, config: &std::path::Path, target: &str, json: bool) -> Out {
    let mut c = w.cmd();
    c.arg("-c").arg(config).args(["target", "check", target]);
    if json {
        c.arg("--json");
    }
    c.output().expect("run voltar").into()
}

/// The `--json` document's step named `name`.
#[track_caller]
fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {doc:#}"))
}

#[track_caller]
fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// An S3 target `offsite` on the world's bucket with 5 MiB parts (the S3 minimum: the test upload is 11 MiB).
fn s3_config(w: &World, extra: &str) -> std::path::PathBuf {
    w.config(
        "voltar.toml",
        &w.s3_target_toml(
            "offsite",
            "host1",
            &format!("part-size = \"5MiB\"\n{extra}"),
        ),
    )
}

/// Nothing at all in the world's bucket: no object, no incomplete multipart upload.
#[track_caller]
fn bucket_is_empty(w: &World) {
    let store = w.store("");
    let objects = w.block(store.list("")).unwrap();
    assert!(objects.is_empty(), "objects left: {objects:?}");
    let uploads = w.block(store.list_incomplete()).unwrap();
    assert!(uploads.is_empty(), "incomplete uploads left: {uploads:?}");
}

/// A good S3 target: every step passes (table and JSON), exit 0, and the bucket is left empty — no object and no
/// incomplete multipart upload (the aborted one included).
#[test]
fn issue14_target_check_round_trip_on_s3_passes_and_leaves_nothing() {
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::new(&endpoint);
    let cfg = s3_config(&w, "");

    let out = target_check(&w, &cfg, "offsite", false);
    assert_eq!(out.code, 0, "{out:?}");
    for name in [
        "addressing",
        "upload",
        "read back",
        "list",
        "delete",
        "gone",
        "abort",
        "leftovers",
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {out:?}"));
        let result = line[name.len()..].split_whitespace().next().unwrap();
        assert_eq!(result, "ok", "{line}\n{out:?}");
    }
    assert!(
        out.stdout
            .contains("multipart upload of 11.0 MiB in 3 parts of 5.0 MiB"),
        "{out:?}"
    );
    assert!(out.stdout.ends_with("all steps passed\n"), "{out:?}");
    bucket_is_empty(&w);

    let out = target_check(&w, &cfg, "offsite", true);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = json(&out);
    assert_eq!(doc["ok"], true, "{doc:#}");
    assert_eq!(doc["target"], "offsite");
    assert_eq!(step(&doc, "read back")["status"], "ok");
    assert_eq!(step(&doc, "object lock")["status"], "ok");
    // The part limits at the configured part size: 5 MiB parts reach 5 TiB at 10,000 parts, 0.9 TiB at 1,000.
    let limits = step(&doc, "part limits");
    assert_eq!(limits["status"], "info");
    let d = limits["detail"].as_str().unwrap();
    assert!(
        d.contains("5.0 TiB at 10,000 parts") && d.contains("at 1,000"),
        "{d}"
    );
    assert!(
        limits["fix"]
            .as_str()
            .unwrap()
            .contains("set max-parts = 1000 in [target.offsite]"),
        "{limits}"
    );
    bucket_is_empty(&w);
}

/// A dead endpoint (a private S3 server, killed): exit 1 within seconds, the upload step says the endpoint cannot
/// be reached and what to check; the later steps are skipped, not run against a dead server.
#[test]
fn issue14_target_check_of_a_dead_endpoint_fails_fast() {
    let Some(server) = PrivateS3::start(free_port()) else {
        return;
    };
    let w = World::new(&server.endpoint());
    let cfg = s3_config(&w, "");
    drop(server);

    let started = Instant::now();
    let out = target_check(&w, &cfg, "offsite", true);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {out:?}");
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    let up = step(&doc, "upload");
    assert_eq!(up["status"], "failed", "{up}");
    assert!(
        up["detail"]
            .as_str()
            .unwrap()
            .contains("cannot reach s3 endpoint"),
        "{up}"
    );
    assert!(
        up["fix"]
            .as_str()
            .unwrap()
            .contains("check `endpoint` of [target.offsite]"),
        "{up}"
    );
    for s in ["read back", "delete", "abort"] {
        assert_eq!(step(&doc, s)["status"], "skipped", "{doc:#}");
    }
}

/// A server that checks access keys and a target whose keys it does not know: exit 1, the upload step says the
/// access was denied and names the credentials settings of the target.
#[test]
fn issue14_target_check_with_wrong_credentials_names_the_credentials() {
    let Some(server) =
        PrivateS3::start_with_env(free_port(), &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])
    else {
        return;
    };
    let w = World::without_bucket(&server.endpoint());
    let cfg = s3_config(&w, "");

    let out = target_check(&w, &cfg, "offsite", false);
    assert_eq!(out.code, 1, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("upload "))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(line.contains("FAILED") && line.contains("denied"), "{line}");
    assert!(
        out.stdout
            .contains("fix: check the credentials: access-key-id-file and secret-access-key-file of [target.offsite]"),
        "{out:?}"
    );
    assert!(out.stdout.ends_with("step(s) FAILED\n"), "{out:?}");
}

/// A bucket that does not exist: exit 1, naming the bucket.
#[test]
fn issue14_target_check_of_a_missing_bucket_names_it() {
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::without_bucket(&endpoint);
    let cfg = s3_config(&w, "");
    let out = target_check(&w, &cfg, "offsite", true);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = json(&out);
    let up = step(&doc, "upload");
    assert_eq!(up["status"], "failed", "{up}");
    assert!(
        up["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("bucket `{}` does not exist", w.bucket)),
        "{up}"
    );
}

/// A good local directory: every step passes, the free space is compared, nothing is left in the directory.
#[test]
fn issue14_target_check_of_a_local_directory_passes_and_leaves_nothing() {
    let w = World::without_bucket("http://127.0.0.1:9");
    let dir = w.path("local");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = w.config(
        "voltar.toml",
        &format!(
            "[target.local]\ntype = \"local\"\npath = \"{}\"\n",
            dir.display()
        ),
    );
    let out = target_check(&w, &cfg, "local", true);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = json(&out);
    for s in [
        "write",
        "read back",
        "list",
        "delete",
        "gone",
        "abort",
        "leftovers",
    ] {
        assert_eq!(step(&doc, s)["status"], "ok", "{s}: {doc:#}");
    }
    let free = step(&doc, "free space");
    assert!(free["detail"].as_str().unwrap().contains("free"), "{free}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A local target on a read-only mount: exit 1, the write step says so and how to fix it; nothing is created.
#[test]
fn issue14_target_check_of_a_read_only_directory_fails_naming_the_fix() {
    let w = World::without_bucket("http://127.0.0.1:9");
    let real = w.path("real");
    std::fs::create_dir_all(&real).unwrap();
    let view = w.path("ro");
    let _ro = Tmpfs::read_only_view(&real, &view);
    let cfg = w.config(
        "voltar.toml",
        &format!(
            "[target.ro]\ntype = \"local\"\npath = \"{}\"\n",
            view.display()
        ),
    );
    let out = target_check(&w, &cfg, "ro", false);
    assert_eq!(out.code, 1, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("write "))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.to_lowercase().contains("read-only"), "{line}");
    assert!(
        out.stdout
            .contains("fix: make the directory of [target.ro] writable"),
        "{out:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&real).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// An unknown target name is a usage error (exit 2) naming the configured ones, before anything is tried.
#[test]
fn issue14_target_check_of_an_unknown_name_exits_2() {
    let w = World::without_bucket("http://127.0.0.1:9");
    let cfg = w.config(
        "voltar.toml",
        "[target.offsite]\ntype = \"local\"\npath = \"/nonexistent-voltar\"\n",
    );
    let out = target_check(&w, &cfg, "ofsite", false);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("did you mean `offsite`?"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

// -------------------------------------------------------------------------------------------------------------
// A store that refuses the AWS SDK's default checksums.

/// A proxy in front of the real S3 server that answers like Backblaze B2 does to uploads and downloads that carry
/// the SDK's flexible checksums (`x-amz-checksum-*`, `x-amz-sdk-checksum-algorithm`, `x-amz-trailer`): 400
/// `InvalidArgument` "Unsupported header … received for this API call." (B2's documented answer). Everything else
/// is forwarded unchanged. Counts what it refused.
struct ChecksumRefusingProxy {
    port: u16,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChecksumRefusingProxy {
    fn start(upstream: &str) -> ChecksumRefusingProxy {
        use http_body_util::{BodyExt, Full};
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use std::sync::atomic::{AtomicUsize, Ordering};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let refused = std::sync::Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let upstream = upstream.trim_end_matches('/').to_string();
        let counter = refused.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .build_http::<Full<bytes::Bytes>>();
                loop {
                    let (sock, _) = tokio::select! {
                        a = listener.accept() => a.unwrap(),
                        _ = &mut stopped => return,
                    };
                    let (client, upstream, counter) =
                        (client.clone(), upstream.clone(), counter.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (client, upstream, counter) =
                                (client.clone(), upstream.clone(), counter.clone());
                            async move {
                                let refused_header = req.headers().keys().find(|h| {
                                    let h = h.as_str();
                                    h.starts_with("x-amz-checksum-")
                                        || h == "x-amz-sdk-checksum-algorithm"
                                        || h == "x-amz-trailer"
                                });
                                let upload_or_download = matches!(
                                    *req.method(),
                                    hyper::Method::PUT | hyper::Method::GET
                                );
                                if let (Some(h), true) = (refused_header, upload_or_download) {
                                    counter.fetch_add(1, Ordering::SeqCst);
                                    let body = format!(
                                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidArgument</Code>\
                                         <Message>Unsupported header '{h}' received for this API call.</Message></Error>"
                                    );
                                    return Ok::<_, hyper::Error>(
                                        hyper::Response::builder()
                                            .status(400)
                                            .header("content-type", "application/xml")
                                            .body(Full::new(bytes::Bytes::from(body)))
                                            .unwrap(),
                                    );
                                }
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes();
                                let uri = format!(
                                    "{upstream}{}",
                                    parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                                );
                                let mut fwd = hyper::Request::builder().method(parts.method).uri(uri);
                                for (k, v) in parts.headers.iter() {
                                    fwd = fwd.header(k, v);
                                }
                                let resp = client
                                    .request(fwd.body(Full::new(body)).unwrap())
                                    .await
                                    .expect("upstream S3 server answers");
                                let (parts, body) = resp.into_parts();
                                let body = body.collect().await?.to_bytes();
                                Ok(hyper::Response::from_parts(parts, Full::new(body)))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(sock), svc)
                            .await;
                    });
                }
            });
        });
        ChecksumRefusingProxy {
            port,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ChecksumRefusingProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Behind a store that refuses the SDK's default checksums, `checksum = "default"` fails the upload step with
/// the line that fixes it (`checksum = "when-required"`), and the rest of the round trip — run with that setting
/// — passes and leaves nothing; with `checksum = "when-required"` configured, every step passes and the store
/// refuses nothing.
#[test]
fn issue14_target_check_names_the_checksum_setting_for_stores_that_refuse_sdk_checksums() {
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let real = World::new(&endpoint);
    let proxy = ChecksumRefusingProxy::start(&endpoint);
    // The same bucket, reached through the proxy.
    let mut w = World::without_bucket(&proxy.endpoint());
    w.bucket = real.bucket.clone();
    let cfg = s3_config(&w, "");

    let out = target_check(&w, &cfg, "offsite", true);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        proxy.refused() > 0,
        "our client sent no SDK checksum: {out:?}"
    );
    let doc = json(&out);
    let up = step(&doc, "upload");
    assert_eq!(up["status"], "failed", "{up}");
    let d = up["detail"].as_str().unwrap();
    assert!(
        d.contains("default CRC32 checksums") && d.contains("Unsupported header"),
        "{d}"
    );
    assert_eq!(
        up["fix"], "set checksum = \"when-required\" in [target.offsite]",
        "{up}"
    );
    for s in ["read back", "list", "delete", "gone", "abort", "leftovers"] {
        assert_eq!(step(&doc, s)["status"], "ok", "{s}: {doc:#}");
    }
    bucket_is_empty(&real);

    // The fix, applied: nothing refused, every step ok.
    let before = proxy.refused();
    let cfg = s3_config(&w, "checksum = \"when-required\"");
    let out = target_check(&w, &cfg, "offsite", true);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(proxy.refused(), before, "{out:?}");
    bucket_is_empty(&real);
}

// -------------------------------------------------------------------------------------------------------------
// Object Lock and addressing.

/// A PUT with no body to the test S3 server (which checks no signature), for what the library does not do:
/// creating a bucket with Object Lock on.
fn unsigned_put(endpoint: &str, path: &str, headers: &[(&str, &str)]) -> String {
    use std::io::{Read, Write};
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

/// A bucket with Object Lock on: the check says so (uploads need a checksum, deleted versions stay), and with
/// `checksum = "when-required"` it names the line that keeps uploads working (`checksum = "default"`).
#[test]
fn issue14_target_check_reports_object_lock_and_the_checksum_it_needs() {
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let w = World::without_bucket(&endpoint);
    let answer = unsigned_put(
        &endpoint,
        &format!("/{}", w.bucket),
        &[("x-amz-bucket-object-lock-enabled", "true")],
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let cfg = s3_config(&w, "");
    let out = target_check(&w, &cfg, "offsite", true);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = json(&out);
    let lock = step(&doc, "object lock");
    assert_eq!(lock["status"], "info", "{lock}");
    let d = lock["detail"].as_str().unwrap();
    assert!(
        d.starts_with("on (") && d.contains("must carry a checksum"),
        "{d}"
    );
    assert!(!d.contains("when-required"), "{d}");
    assert!(
        step(&doc, "leftovers")["detail"]
            .as_str()
            .unwrap()
            .contains("deleted versions stay"),
        "{doc:#}"
    );

    let cfg = s3_config(&w, "checksum = \"when-required\"");
    let out = target_check(&w, &cfg, "offsite", true);
    let doc = json(&out);
    let d = step(&doc, "object lock")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        d.contains("set checksum = \"default\" in [target.offsite]"),
        "{d}"
    );
}

/// Virtual-host requests to an endpoint whose `bucket.host` name does not resolve (here `localhost`, whose
/// subdomains the resolver does not know): the addressing step fails with `path-style = true`, at once, and
/// nothing is uploaded.
#[test]
fn issue14_target_check_names_path_style_when_bucket_host_names_do_not_resolve() {
    use std::net::ToSocketAddrs;
    let Some(endpoint) = support::s3_endpoint() else {
        return;
    };
    let real = World::new(&endpoint);
    let port = endpoint.rsplit(':').next().unwrap().to_string();
    let probe = format!("{}.localhost:{port}", real.bucket);
    if probe
        .to_socket_addrs()
        .is_ok_and(|mut a| a.next().is_some())
    {
        eprintln!("\n!!! SKIPPING: {probe} resolves on this machine (a resolver that serves *.localhost)\n");
        return;
    }
    let mut w = World::without_bucket(&format!("http://localhost:{port}"));
    w.bucket = real.bucket.clone();
    let cfg = w.config(
        "voltar.toml",
        &w.s3_target_toml("offsite", "host1", "part-size = \"5MiB\"")
            .replace("path-style = true", "path-style = false"),
    );
    let started = Instant::now();
    let out = target_check(&w, &cfg, "offsite", true);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{out:?}");
    let doc = json(&out);
    let a = step(&doc, "addressing");
    assert_eq!(a["status"], "failed", "{a}");
    let d = a["detail"].as_str().unwrap();
    assert!(
        d.contains(&format!("{}.localhost", w.bucket)) && d.contains("does not resolve"),
        "{d}"
    );
    assert_eq!(a["fix"], "set path-style = true in [target.offsite]", "{a}");
    assert_eq!(step(&doc, "upload")["status"], "skipped", "{doc:#}");
    bucket_is_empty(&real);
}
