//! Test support: an in-process server on an ephemeral 127.0.0.1 port, a minimal HTTP/1.1 client
//! (enough to check status codes, headers and chunked watch streams byte for byte, without trusting
//! a client library's interpretation), and `eventually`.

use std::net::SocketAddr;
use std::time::Duration;

use kube_test_server::{Server, ServerCfg, ServerHandle};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Starts a server with a short bookmark interval.
pub async fn start() -> ServerHandle {
    start_with(ServerCfg {
        bookmark_interval: Duration::from_millis(300),
        ..Default::default()
    })
    .await
}

/// Starts a server with this configuration.
pub async fn start_with(cfg: ServerCfg) -> ServerHandle {
    Server::start(cfg).await.expect("server starts")
}

/// A whole response.
#[derive(Debug)]
pub struct Resp {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn send_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: &[u8],
) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer test-user\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(ct) = ct {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    BufReader::new(s)
}

async fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header line");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    (code, headers)
}

/// Reads one chunk of a chunked body; `None` at the last chunk.
async fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).await.ok()?;
    buf.truncate(n);
    (n > 0).then_some(buf)
}

/// One request; the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: &[u8],
) -> Resp {
    let mut r = send_head(addr, method, path, ct, body).await;
    let (code, headers) = read_head(&mut r).await;
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r).await {
            body.extend(c);
        }
    } else {
        r.read_to_end(&mut body).await.expect("body");
    }
    Resp {
        code,
        headers,
        body,
    }
}

/// GET.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, None, b"").await
}

/// POST of a JSON body.
pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .await
}

/// PUT of a JSON body.
pub async fn put(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(
        addr,
        "PUT",
        path,
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .await
}

/// PATCH with a content type.
pub async fn patch(addr: SocketAddr, path: &str, ct: &str, body: &Value) -> Resp {
    request(addr, "PATCH", path, Some(ct), body.to_string().as_bytes()).await
}

/// DELETE with an optional DeleteOptions body.
pub async fn delete(addr: SocketAddr, path: &str, body: Option<&Value>) -> Resp {
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    request(addr, "DELETE", path, Some("application/json"), b.as_bytes()).await
}

/// An open watch stream.
pub struct Watch {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
    ended: bool,
}

impl Watch {
    /// Opens a watch (the path carries `watch=true` and the rest).
    pub async fn open(addr: SocketAddr, path: &str) -> Watch {
        let mut r = send_head(addr, "GET", path, None, b"").await;
        let (code, headers) = read_head(&mut r).await;
        Watch {
            code,
            headers,
            r,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// A response header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next event `(type, object)`, `None` at the end of the stream or after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let v: Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("bad event line ({e}): {}", String::from_utf8_lossy(&line))
                });
                return Some((
                    v["type"].as_str().expect("type").to_string(),
                    v["object"].clone(),
                ));
            }
            if self.ended {
                assert!(
                    self.buf.is_empty(),
                    "a partial event at the end: {}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
            match tokio::time::timeout_at(deadline, read_chunk(&mut self.r)).await {
                Err(_) => return None,
                Ok(None) => self.ended = true,
                Ok(Some(c)) => self.buf.extend(c),
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_change(&mut self, within: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some((t, _)) if t == "BOOKMARK" => continue,
                other => return other,
            }
        }
    }

    /// Has the server ended the stream (within `within`), after any events still queued?
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.next(left).await.is_none() {
                return self.ended;
            }
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `metadata.resourceVersion` as a number.
pub fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {v}"))
}

/// A namespace object.
pub fn namespace(name: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A pod object.
pub fn pod(name: &str, labels: Value) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}
