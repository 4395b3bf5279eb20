//! The human words of a notification (ntfy, e-mail), made from the run's JSON summary. Only well-known fields are
//! quoted (`status`, `id`, `error`, `exit-code`, sources and targets that failed); anything else in the document
//! is passed on untouched in the e-mail's JSON part. A summary that is not JSON still makes a message.

use serde_json::Value;

/// At most this many failed sources or targets are named in the short text.
const NAMED: usize = 5;

pub(super) struct Message {
    pub ok: bool,
    /// `voltar: backup on HOST failed (job nightly)`.
    pub title: String,
    /// A few lines: status, backup id, what failed.
    pub short: String,
    /// `short`, then the JSON summary as sent to webhooks.
    pub long: String,
}

impl Message {
    pub(super) fn new(job: &str, ok: bool, summary_json: &str) -> Message {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let doc: Value = serde_json::from_str(summary_json).unwrap_or(Value::Null);
        let status = doc["status"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| if ok { "ok" } else { "failed" }.to_string());
        let title = format!(
            "voltar: backup on {host} {} (job {job})",
            if ok {
                "ok".to_string()
            } else {
                format!("FAILED: {status}")
            }
        );
        let mut lines = vec![format!("status: {status}")];
        if let Some(code) = doc["exit-code"].as_i64() {
            lines.push(format!("exit code: {code}"));
        }
        if let Some(id) = doc["id"].as_str() {
            lines.push(format!("backup: {id}"));
        }
        if let Some(e) = doc["error"].as_str() {
            lines.push(format!("error: {e}"));
        }
        let failed_sources = doc["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["status"].as_str().is_some_and(|st| st != "ok"));
        for s in failed_sources.take(NAMED) {
            let mut l = format!(
                "source {}: {}",
                s["name"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?")
            );
            if let Some(e) = s["error"].as_str() {
                l.push_str(&format!(": {e}"));
            }
            lines.push(l);
        }
        let failed_targets = doc["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["committed"] != Value::Bool(true) || t["error"].is_string());
        for t in failed_targets.take(NAMED) {
            lines.push(format!(
                "target {}: {}",
                t["location"].as_str().unwrap_or("?"),
                t["error"].as_str().unwrap_or("not committed")
            ));
        }
        let short = lines.join("\n");
        let pretty = serde_json::to_string_pretty(&doc)
            .ok()
            .filter(|_| !doc.is_null())
            .unwrap_or_else(|| summary_json.to_string());
        let long = format!(
            "{short}\n\nThe run's summary (as `voltar backup --json` prints it):\n\n{pretty}\n"
        );
        Message {
            ok,
            title,
            short,
            long,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_failed() {
        let m = Message::new(
            "nightly",
            false,
            r#"{"status":"partial","id":"20261130T031500Z-a1b2","sources":[{"name":"pg","status":"failed","error":"boom"},{"name":"web","status":"ok"}],"targets":[{"location":"/bk","committed":true}]}"#,
        );
        assert!(
            m.title.contains("FAILED: partial") && m.title.contains("nightly"),
            "{}",
            m.title
        );
        assert!(m.short.contains("source pg: failed: boom"), "{}", m.short);
        assert!(!m.short.contains("web"), "{}", m.short);
        assert!(m.long.contains("\"20261130T031500Z-a1b2\""), "{}", m.long);
        let m = Message::new("default", false, "not json");
        assert!(m.short.contains("status: failed") && m.long.contains("not json"));
    }
}
