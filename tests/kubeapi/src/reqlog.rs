//! The request log: one JSON line per API request, with the attributes the Kubernetes authorizer
//! sees, so a test can check RBAC rules against what a client really asked for.
//!
//! Line format (`--request-log FILE`, and `GET /_test/requests`):
//! `{"user":"TOKEN|anonymous","verb":"list","apiGroup":"","resource":"pods","subresource":null,
//!   "namespace":null,"name":null,"code":200,"path":"/api/v1/pods"}`.
//! Verbs are the authorizer's: `get` (an object), `list` (a collection), `watch` (either, with
//! `watch=true`), `create`, `update`, `patch`, `delete`, `deletecollection`. As upstream, a list or
//! watch with `fieldSelector=metadata.name=X` carries `name: X`. Requests that are not for a resource
//! (discovery, `/version`, health) have `resource: null`, `apiGroup: null` and the lower-case HTTP
//! method as verb (the authorizer's non-resource form). `/_test/` controls are not logged. The user
//! is the bearer token as sent (no authentication is done), the user name of basic auth, or
//! `anonymous`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One logged request.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Bearer token, basic-auth user, or `anonymous`.
    pub user: String,
    /// Authorizer verb.
    pub verb: String,
    /// API group (`""` for core); `None` for non-resource requests.
    pub api_group: Option<String>,
    /// Resource (plural); `None` for non-resource requests.
    pub resource: Option<String>,
    /// Subresource (`status`).
    pub subresource: Option<String>,
    /// Namespace of the request.
    pub namespace: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// HTTP status code of the answer (200 for a watch that started).
    pub code: u16,
    /// Request path.
    pub path: String,
}

/// The log: in memory, and appended to a file when one was given.
#[derive(Debug)]
pub struct RequestLog {
    inner: Mutex<(Option<File>, Vec<String>)>,
}

impl RequestLog {
    /// A log, appending to `path` if given.
    pub fn new(path: Option<&Path>) -> std::io::Result<Self> {
        let file = path
            .map(|p| OpenOptions::new().create(true).append(true).open(p))
            .transpose()?;
        Ok(RequestLog {
            inner: Mutex::new((file, Vec::new())),
        })
    }

    /// Records one request.
    pub fn record(&self, e: &Entry) {
        let line = serde_json::to_string(e).expect("an Entry always serialises");
        let mut g = self.inner.lock().expect("request log lock");
        if let Some(f) = &mut g.0 {
            if let Err(err) = f.write_all(format!("{line}\n").as_bytes()) {
                tracing::error!(error = %err, "request log write failed");
            }
        }
        g.1.push(line);
    }

    /// Every line so far, newline-terminated.
    pub fn dump(&self) -> String {
        let g = self.inner.lock().expect("request log lock");
        let mut s = String::with_capacity(g.1.iter().map(|l| l.len() + 1).sum());
        for l in &g.1 {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// The user of a request, from its `Authorization` header.
pub fn user_of(auth: Option<&str>) -> String {
    match auth.map(str::trim) {
        Some(a) if a.len() > 7 && a[..7].eq_ignore_ascii_case("bearer ") => {
            a[7..].trim().to_string()
        }
        Some(a) if a.len() > 6 && a[..6].eq_ignore_ascii_case("basic ") => {
            crate::util::b64url_decode(a[6..].trim())
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split(':').next().map(String::from))
                .unwrap_or_else(|| "anonymous".into())
        }
        _ => "anonymous".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(
            user_of(Some("Bearer calico-node-token")),
            "calico-node-token"
        );
        assert_eq!(user_of(Some("Basic YWxpY2U6c2VjcmV0")), "alice");
        assert_eq!(user_of(None), "anonymous");
    }

    #[test]
    fn lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("req.jsonl");
        let log = RequestLog::new(Some(&p)).unwrap();
        let e = Entry {
            user: "u".into(),
            verb: "list".into(),
            api_group: Some(String::new()),
            resource: Some("pods".into()),
            subresource: None,
            namespace: None,
            name: None,
            code: 200,
            path: "/api/v1/pods".into(),
        };
        log.record(&e);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, log.dump());
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["apiGroup"], "");
        assert_eq!(v["subresource"], serde_json::Value::Null);
        assert_eq!(v["verb"], "list");
    }
}
