//! Notifications (issue 12, acceptance rows 16 and 21): healthchecks pings, webhooks, ntfy and e-mail from the
//! one-shot `voltar backup`, against receivers this test starts on loopback: a small HTTP server recording each
//! request (method, path, headers, body) and answering as told, or accepting and then saying nothing; and an
//! SMTP server speaking just enough of the protocol (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT).
//!
//! The receivers run on plain threads with std sockets: the tests themselves are synchronous (they run the
//! built binary), so a runtime would add nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::require_docker;
use crate::support::{mountpoint, Cleanup, Out};

const BIN: &str = env!("CARGO_BIN_EXE_voltar");

// ------------------------------------------------------------------------------------------------------------
// Receivers

/// One request an HTTP receiver saw.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// How an HTTP receiver answers.
#[derive(Clone, Copy)]
pub(crate) enum Answer {
    Status(u16),
    /// Accept the connection, read the request, never answer (a hung receiver).
    Silence,
}

/// A recording HTTP receiver on 127.0.0.1.
pub(crate) struct Http {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Http {
    pub(crate) fn start(answer: Answer) -> Http {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s3 = s2.clone();
                std::thread::spawn(move || serve(conn, answer, &s3));
            }
        });
        Http { port, seen }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, answer: Answer, seen: &Mutex<Vec<Seen>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    seen.lock().unwrap().push(Seen {
        method,
        path,
        headers,
        body,
    });
    let mut w = conn;
    match answer {
        Answer::Status(code) => {
            let _ = write!(
                w,
                "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
        Answer::Silence => {
            // Hold the connection open without a word until the client gives up.
            let mut sink = [0u8; 64];
            while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}

/// One mail an SMTP receiver took.
#[derive(Clone, Debug, Default)]
struct Mail {
    /// `AUTH PLAIN` decoded: (user, password).
    login: Option<(String, String)>,
    from: String,
    to: Vec<String>,
    data: String,
}

/// A few lines of SMTP on 127.0.0.1, no TLS (`?tls=none`), offering AUTH PLAIN.
struct Smtp {
    port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl Smtp {
    fn start() -> Smtp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let m2 = mails.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let m3 = m2.clone();
                std::thread::spawn(move || smtp_session(conn, &m3));
            }
        });
        Smtp { port, mails }
    }
}

fn smtp_session(conn: TcpStream, mails: &Mutex<Vec<Mail>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    let mut mail = Mail::default();
    let _ = w.write_all(b"220 test ESMTP\r\n");
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250-test\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
        } else if let Some(b64) = cmd.strip_prefix("AUTH PLAIN ") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap();
            let parts: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            mail.login = Some((parts[1].clone(), parts[2].clone()));
            b"235 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            mail.from = cmd[10..].trim().to_string();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(cmd[8..].trim().to_string());
            b"250 ok\r\n"
        } else if upper == "DATA" {
            let _ = w.write_all(b"354 go on\r\n");
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    return;
                }
                if l == ".\r\n" {
                    break;
                }
                data.push_str(&l);
            }
            mail.data = data;
            mails.lock().unwrap().push(std::mem::take(&mut mail));
            b"250 queued\r\n"
        } else if upper == "QUIT" {
            let _ = w.write_all(b"221 bye\r\n");
            return;
        } else {
            b"250 ok\r\n"
        };
        let _ = w.write_all(reply);
    }
}

// ------------------------------------------------------------------------------------------------------------
// Runs

/// A state dir, a working dir without config files, a backup dir and a volume with a file in it.
struct World {
    tmp: tempfile::TempDir,
    /// Removes the volume when the test ends.
    _cleanup: Cleanup,
    vol: String,
}

impl World {
    fn new() -> World {
        let mut c = Cleanup::default();
        let vol = c.volume("notify");
        std::fs::write(mountpoint(&vol).join("f"), b"notify me").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("cwd")).unwrap();
        World {
            tmp,
            _cleanup: c,
            vol,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn target(&self) -> String {
        self.path("backups").display().to_string()
    }

    /// A config file with `text`, returning its path.
    fn config(&self, text: &str) -> String {
        let p = self.path("voltar.toml");
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn secret(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p.display().to_string()
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.path("cwd"))
            .env("VOLTAR_STATE_DIR", self.path("state"))
            .env_remove("VOLTAR_CONFIG")
            .env_remove("VOLTAR_LOG")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        c
    }

    /// `voltar [pre…] -c CONFIG backup --only VOL -t TARGET [more…]`.
    fn backup(&self, cfg: &str, pre: &[&str], more: &[&str]) -> (Out, Duration) {
        self.backup_with(self.cmd(), cfg, pre, more)
    }

    fn backup_with(
        &self,
        mut cmd: Command,
        cfg: &str,
        pre: &[&str],
        more: &[&str],
    ) -> (Out, Duration) {
        let target = self.target();
        cmd.args(pre)
            .args(["-c", cfg, "backup", "--only", &self.vol, "-t", &target])
            .args(more);
        let start = Instant::now();
        let out = Out::from(cmd.output().expect("run voltar"));
        (out, start.elapsed())
    }
}

/// Notifications are sent before the process exits: no waiting is needed once the run returned.
fn paths(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

// ------------------------------------------------------------------------------------------------------------
// Tests

/// A successful run: the healthchecks receiver sees `GET /start` then `POST` on the check's own URL with the
/// run's JSON summary (the same document `--json` prints); a webhook with `on = ["success"]` gets it too, one
/// with the default `on = ["failure"]` nothing. `--dry-run` tells no one.
#[test]
fn issue12_healthchecks_start_then_success_with_the_summary() {
    require_docker!();
    let w = World::new();
    let hc = Http::start(Answer::Status(200));
    let ok_hook = Http::start(Answer::Status(200));
    let fail_hook = Http::start(Answer::Status(200));
    let cfg = w.config(&format!(
        "healthcheck-url = \"{}\"\n\n[[notify]]\nurl = \"{}\"\non = [\"success\"]\n\n[[notify]]\nurl = \"{}\"\n",
        hc.url("/ping/0f3a9d5e-1c2b-4d7e-9a8b-7c6d5e4f3a2b"),
        ok_hook.url("/ok"),
        fail_hook.url("/fail-only"),
    ));

    let (dry, _) = w.backup(&cfg, &[], &["--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(hc.seen().is_empty(), "--dry-run pinged: {:?}", hc.seen());
    assert!(ok_hook.seen().is_empty(), "--dry-run notified");

    let (run, _) = w.backup(&cfg, &["--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["status"], "ok");

    let seen = hc.seen();
    assert_eq!(
        paths(&seen),
        [
            "GET /ping/0f3a9d5e-1c2b-4d7e-9a8b-7c6d5e4f3a2b/start",
            "POST /ping/0f3a9d5e-1c2b-4d7e-9a8b-7c6d5e4f3a2b"
        ],
        "{run:?}"
    );
    assert_eq!(
        seen[1].body_json(),
        printed,
        "the ping carries --json's summary"
    );
    assert_eq!(seen[1].header("content-type"), Some("application/json"));

    let hook = ok_hook.seen();
    assert_eq!(paths(&hook), ["POST /ok"]);
    assert_eq!(hook[0].body_json(), printed);
    assert!(
        fail_hook.seen().is_empty(),
        "on = [\"failure\"] fired on success"
    );

    // Without --json the same summary is sent (rendered once, whatever stdout shows).
    let (run, _) = w.backup(&cfg, &[], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let seen = hc.seen();
    assert_eq!(seen.len(), 4, "{:?}", paths(&seen));
    assert_eq!(seen[3].body_json()["status"], "ok");
    assert!(seen[3].body_json()["sources"].is_array());
}

/// A run that fails: `/fail` with the summary, the failure webhook fires, the success-only one does not; the
/// exit code is what it would be without notifications. A run that fails as a whole (exit 2) also pings
/// `/fail`, with the `{"error", "exit-code"}` document `--json` prints then.
#[test]
fn issue12_failure_pings_fail_and_fires_only_failure_receivers() {
    require_docker!();
    let w = World::new();
    let hc = Http::start(Answer::Status(200));
    let on_fail = Http::start(Answer::Status(200));
    let on_success = Http::start(Answer::Status(200));
    let cfg = w.config(&format!(
        "[job.nightly]\nhealthcheck-url = \"{}\"\n\n[[notify]]\nurl = \"{}\"\non = [\"failure\"]\n\n[[notify]]\nurl = \"{}\"\non = [\"success\"]\n",
        hc.url("/7c6d5e4f-3a2b-0f3a-9d5e-1c2b4d7e9a8b"),
        on_fail.url("/hook"),
        on_success.url("/hook"),
    ));
    // A second target that is a regular file: skipped, so the run commits to one target of two (exit 1).
    let file = w.path("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let (run, _) = w.backup(
        &cfg,
        &["--json"],
        &["--job", "nightly", "-t", file.to_str().unwrap()],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["status"], "partial");
    let seen = hc.seen();
    assert_eq!(
        paths(&seen),
        [
            "GET /7c6d5e4f-3a2b-0f3a-9d5e-1c2b4d7e9a8b/start",
            "POST /7c6d5e4f-3a2b-0f3a-9d5e-1c2b4d7e9a8b/fail"
        ]
    );
    assert_eq!(seen[1].body_json(), printed);
    let hook = on_fail.seen();
    assert_eq!(paths(&hook), ["POST /hook"]);
    assert_eq!(hook[0].body_json(), printed);
    assert!(
        on_success.seen().is_empty(),
        "on = [\"success\"] fired on failure"
    );

    // Nothing usable at all (the only target is the file): exit 2, and still /fail, with the error document.
    let mut cmd = w.cmd();
    cmd.args([
        "--json", "-c", &cfg, "backup", "--job", "nightly", "--only", &w.vol, "-t",
    ])
    .arg(&file);
    let run = Out::from(cmd.output().unwrap());
    assert_eq!(run.code, 2, "{run:?}");
    let printed: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let seen = hc.seen();
    let last = seen.last().unwrap();
    assert_eq!(
        format!("{} {}", last.method, last.path),
        "POST /7c6d5e4f-3a2b-0f3a-9d5e-1c2b4d7e9a8b/fail",
        "{:?}",
        paths(&seen)
    );
    assert_eq!(last.body_json(), printed);
    assert_eq!(last.body_json()["exit-code"], 2);
}

/// ntfy: a short text with ntfy's Title, Priority and Tags headers, and the token from `token-file` as a bearer
/// token.
#[test]
fn issue12_ntfy_gets_title_priority_and_tags() {
    require_docker!();
    let w = World::new();
    let ntfy = Http::start(Answer::Status(200));
    let token = w.secret("ntfy-token", "tk_ntfytoken123\n");
    let cfg = w.config(&format!(
        "[[notify]]\nurl = \"{}\"\nformat = \"ntfy\"\non = [\"success\", \"failure\"]\ntoken-file = \"{token}\"\n",
        ntfy.url("/backups"),
    ));
    let (run, _) = w.backup(&cfg, &[], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let seen = ntfy.seen();
    assert_eq!(paths(&seen), ["POST /backups"], "{run:?}");
    let n = &seen[0];
    let title = n.header("title").expect("a Title header");
    assert!(title.contains("voltar") && title.contains("ok"), "{title}");
    assert_eq!(n.header("priority"), Some("default"));
    assert_eq!(n.header("tags"), Some("white_check_mark"));
    assert_eq!(n.header("authorization"), Some("Bearer tk_ntfytoken123"));
    let body = String::from_utf8_lossy(&n.body);
    assert!(body.contains("status: ok"), "{body}");
    assert!(body.len() < 1000, "a short text, not the summary: {body}");
}

/// E-mail: an SMTP receiver started here (no TLS: `?tls=none`) gets one mail to both recipients, from the
/// configured sender, logged in with the password from `password-file`, with the summary in the text.
#[test]
fn issue12_email_reaches_a_local_smtp_receiver() {
    require_docker!();
    let w = World::new();
    let smtp = Smtp::start();
    let pw = w.secret("smtp-pw", "mail-pass-42\n");
    let cfg = w.config(&format!(
        "[[notify]]\nurl = \"smtp://alerts@127.0.0.1:{}?tls=none&to=ops@example.com,oncall@example.com&from=voltar@example.com\"\non = [\"success\"]\npassword-file = \"{pw}\"\n",
        smtp.port,
    ));
    let (run, _) = w.backup(&cfg, &["--json"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mails = smtp.mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "{run:?}");
    let m = &mails[0];
    assert_eq!(
        m.login,
        Some(("alerts".to_string(), "mail-pass-42".to_string()))
    );
    assert_eq!(m.from, "<voltar@example.com>");
    assert_eq!(m.to, ["<ops@example.com>", "<oncall@example.com>"]);
    assert!(m.data.contains("Subject: voltar: backup on"), "{}", m.data);
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    let id = printed["id"].as_str().unwrap();
    assert!(
        m.data.contains(id),
        "the summary names the backup:\n{}",
        m.data
    );
    assert!(m.data.contains(&w.vol), "{}", m.data);
}

/// A receiver that accepts and never answers delays the run's exit by a bounded time (the `/start` and the end
/// notification each give up at their deadline: 10 s + 20 s), the run's exit code is unchanged, and a warning
/// names the receiver without its secret part.
#[test]
fn issue12_a_hung_receiver_delays_exit_boundedly_and_changes_no_exit_code() {
    require_docker!();
    let w = World::new();
    let hung = Http::start(Answer::Silence);
    let cfg = w.config(&format!(
        "healthcheck-url = \"{}\"\n[[notify]]\nurl = \"{}\"\non = [\"success\"]\n",
        hung.url("/5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278"),
        hung.url("/hook"),
    ));
    let (run, took) = w.backup(&cfg, &[], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    // 30 s of notification deadlines, plus the backup itself and process start-up.
    assert!(took < Duration::from_secs(45), "took {took:?}: {run:?}");
    assert!(
        run.stderr.contains("/5bf6…"),
        "the warning names the receiver: {run:?}"
    );
    assert!(
        !run.stderr.contains("d4c7-4bf5"),
        "the uuid's tail leaked: {run:?}"
    );
    assert!(run.stderr.contains("/hook"), "{run:?}");
    assert!(hung.seen().len() >= 2, "{:?}", paths(&hung.seen()));
}

/// SIGTERM while a hung receiver holds the `/start` ping: voltar stops at once (exit 143) instead of waiting out
/// the ping's deadline, backs nothing up and sends no end notification (whoever sent the signal knows).
#[test]
fn issue12_sigterm_while_a_receiver_hangs_stops_at_once() {
    require_docker!();
    let w = World::new();
    let hung = Http::start(Answer::Silence);
    let cfg = w.config(&format!(
        "healthcheck-url = \"{}\"\n",
        hung.url("/5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278")
    ));
    let target = w.target();
    let mut child = w
        .cmd()
        .args(["-c", &cfg, "backup", "--only", &w.vol, "-t", &target])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while hung.seen().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no /start ping within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "voltar did not wait for the hung receiver"
    );
    let sent = Instant::now();
    // Only the process this test started, by its id. (The target check may have begun: its probe directory
    // can be left behind by an interrupted run, which is the target check's business, not this test's.)
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = Out::from(child.wait_with_output().unwrap());
    let took = sent.elapsed();
    assert_eq!(out.code, 143, "{out:?}");
    assert!(
        took < Duration::from_secs(3),
        "took {took:?} after SIGTERM: {out:?}"
    );
    assert_eq!(
        paths(&hung.seen()),
        ["GET /5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278/start"],
        "{out:?}"
    );
    let stored: Vec<_> = walkdir::WalkDir::new(&target)
        .into_iter()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    assert!(
        !stored
            .iter()
            .any(|p| p.ends_with("manifest.json") || p.contains(".tar")),
        "something was backed up after SIGTERM: {stored:?}\n{out:?}"
    );
}

// ------------------------------------------------------------------------------------------------------------
// Secrets (row 16): the canary test, notify edition.

const CANARY_URL_PW: &str = "CanaryUrlPassword-91ab";
const CANARY_QUERY: &str = "CanaryQueryToken-44cd";
const CANARY_TOKEN_FILE: &str = "CanaryNtfyToken-7e02";
const CANARY_SMTP: &str = "CanarySmtpPassword-3f58";
const CANARY_UUID_TAIL: &str = "CanaryUuidTail-c0ffee";

/// Every receiver fails (HTTP 500, an SMTP server that is not there) so that each is named in warnings, with
/// trace logging on (`VOLTAR_LOG=trace`, `-vvv`): no secret from a URL (password, query token, the uuid's
/// tail) or from a `*-file` appears on stdout or stderr, while the receivers did get them.
#[test]
fn issue12_notify_secrets_never_reach_the_output_at_any_log_level() {
    require_docker!();
    let w = World::new();
    let broken = Http::start(Answer::Status(500));
    let token = w.secret("ntfy-token", CANARY_TOKEN_FILE);
    let pw = w.secret("smtp-password", CANARY_SMTP);
    let closed = crate::support::free_port();
    let hc = broken.url(&format!("/ping/{CANARY_UUID_TAIL}"));
    let hook = format!(
        "http://hookuser:{CANARY_URL_PW}@127.0.0.1:{}/hook?token={CANARY_QUERY}",
        broken.port
    );
    let cfg = w.config(&format!(
        "healthcheck-url = \"{hc}\"\n\
         [[notify]]\nurl = \"{hook}\"\non = [\"success\"]\n\
         [[notify]]\nurl = \"{ntfy}\"\nformat = \"ntfy\"\non = [\"success\"]\ntoken-file = \"{token}\"\n\
         [[notify]]\nurl = \"smtp://alerts@127.0.0.1:{closed}?tls=none&to=ops@example.com\"\non = [\"success\"]\npassword-file = \"{pw}\"\n",
        ntfy = broken.url("/topic"),
    ));
    let mut cmd = w.cmd();
    cmd.env("VOLTAR_LOG", "trace");
    let (run, _) = w.backup_with(cmd, &cfg, &["-vvv"], &[]);
    assert_eq!(
        run.code, 0,
        "a failed notification changed the exit code: {run:?}"
    );
    assert!(
        run.stderr.contains("TRACE") || run.stderr.lines().count() > 20,
        "trace logging was not on: {run:?}"
    );
    for canary in [
        CANARY_URL_PW,
        CANARY_QUERY,
        CANARY_TOKEN_FILE,
        CANARY_SMTP,
        CANARY_UUID_TAIL,
        "Q2FuYXJ5", // base64 of "Canary": a basic-auth header in a trace line
    ] {
        assert!(
            !run.all().contains(canary),
            "secret `{canary}` in the output: {run:?}"
        );
    }
    // Each receiver is named (redacted) in a warning.
    for named in [
        "/ping/Cana…",
        "***@127.0.0.1",
        "/topic",
        "smtp://***@127.0.0.1",
    ] {
        assert!(
            run.stderr.contains(named),
            "no warning naming `{named}`: {run:?}"
        );
    }
    // …and the secrets did reach the receivers, as headers, never in the request line.
    let seen = broken.seen();
    let hook = seen
        .iter()
        .find(|s| s.path.starts_with("/hook"))
        .expect("the webhook was called");
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("hookuser:{CANARY_URL_PW}"));
    assert_eq!(
        hook.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert!(hook.path.contains(CANARY_QUERY), "{}", hook.path);
    let ntfy = seen
        .iter()
        .find(|s| s.path == "/topic")
        .expect("ntfy was called");
    assert_eq!(
        ntfy.header("authorization"),
        Some(format!("Bearer {CANARY_TOKEN_FILE}").as_str())
    );
    // Retried (500 is worth another try), but at most a couple of times.
    let tries = seen.iter().filter(|s| s.path.starts_with("/hook")).count();
    assert!(
        (2..=3).contains(&tries),
        "{tries} tries: {:?}",
        paths(&seen)
    );
}

/// `--log-format json`: every stderr line is one JSON object with a level and a message (log shippers); the
/// default stays text.
#[test]
fn issue12_log_format_json_writes_json_lines() {
    require_docker!();
    let w = World::new();
    let cfg = w.config("");
    let (run, _) = w.backup(&cfg, &["--log-format", "json", "-vv"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "-vv logged nothing: {run:?}");
    for l in &lines {
        let v: Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{run:?}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
    let (text, _) = w.backup(&cfg, &["-vv"], &[]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stderr
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).is_err()),
        "the default is text: {text:?}"
    );
}

/// Config errors name the key and never repeat a secret of the URL.
#[test]
fn issue12_bad_notify_config_is_an_error_naming_the_key() {
    let w = tempfile::tempdir().unwrap();
    for (text, says) in [
        (
            "[[notify]]\nurl = \"gopher://h.example/SecretTokenInPath123\"\n",
            "notify[1].url",
        ),
        (
            "[[notify]]\nurl = \"https://h.example/x\"\non = [\"sometimes\"]\n",
            "notify[1].on",
        ),
        (
            "[job.a]\nhealthcheck-url = \"hc-ping.com/uuid\"\n",
            "job.a.healthcheck-url",
        ),
    ] {
        let p = w.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let o = Out::from(
            Command::new(BIN)
                .args(["-c", p.to_str().unwrap(), "plan", "--no-size"])
                .env("VOLTAR_STATE_DIR", w.path().join("state"))
                .output()
                .unwrap(),
        );
        assert_eq!(o.code, 2, "{text}: {o:?}");
        assert!(o.stderr.contains(says), "{text}: {o:?}");
        assert!(!o.all().contains("SecretTokenInPath123"), "{o:?}");
    }
    // A token file others may read is refused like every secrets file.
    let tok = w.path().join("tok");
    std::fs::write(&tok, "t").unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = w.path().join("c.toml");
    std::fs::write(
        &p,
        format!(
            "[[notify]]\nurl = \"https://h.example/x\"\ntoken-file = \"{}\"\n",
            tok.display()
        ),
    )
    .unwrap();
    let o = Out::from(
        Command::new(BIN)
            .args(["-c", p.to_str().unwrap(), "plan", "--no-size"])
            .env("VOLTAR_STATE_DIR", w.path().join("state"))
            .output()
            .unwrap(),
    );
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("chmod 600") && o.stderr.contains("notify[1].token-file"),
        "{o:?}"
    );
}
