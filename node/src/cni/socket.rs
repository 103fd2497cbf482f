//! The plugin's line to the local daemon on a Kubernetes node: one JSON request and one JSON
//! reply per connection, over a Unix socket only root can open (mode 0600, as the status socket).
//!
//! ```text
//!  calico-cni-rs --{"op":"add",...}\n--> /var/run/calico-rs/cni.sock --> calico-node-rs
//!                <--{"ips":[...]}\n----                                 IPAM + Pod annotations
//! ```
//! The daemon does the IPAM and writes the Pod's `cni.projectcalico.org/podIP(s)` annotations
//! with its own service account, so the plugin holds no credentials: a token that expires or is
//! rotated can never break pod creation or teardown. A `del` is answered within a second even
//! when the API server is unreachable: the daemon queues the release and says so (`queued`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the daemon listens by default (beside the status socket).
pub const DEFAULT_SOCKET: &str = "/var/run/calico-rs/cni.sock";

/// Longest request line the daemon reads (a GC's list of attachments is the big one).
pub const MAX_REQUEST: usize = 4 << 20;

/// A Kubernetes pod's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Addresses for a container (idempotent per container ID), and on Kubernetes the Pod's
    /// annotations.
    Add {
        node: String,
        container_id: String,
        #[serde(default)]
        pod: Option<PodId>,
        ipv4: bool,
        ipv6: bool,
        #[serde(default)]
        ipv4_pools: Vec<String>,
        #[serde(default)]
        ipv6_pools: Vec<String>,
    },
    /// Gives the container's addresses back (queued when the datastore cannot be reached).
    Del {
        node: String,
        container_id: String,
        #[serde(default)]
        pod: Option<PodId>,
    },
    /// The container's addresses (for CHECK).
    Addresses { container_id: String },
    /// Whether an ADD can be served now.
    Status {
        node: String,
        ipv4: bool,
        ipv6: bool,
    },
    /// Releases this node's plugin allocations whose container is not in `valid`.
    Gc { node: String, valid: Vec<String> },
}

/// One reply: `error` set on failure (with `retry` when trying again later may work).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// A `del` whose release waits in the daemon for the datastore.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

impl Reply {
    pub fn ips(ips: Vec<IpAddr>) -> Reply {
        Reply {
            ips,
            ..Reply::default()
        }
    }

    pub fn failed(msg: impl Into<String>, retry: bool) -> Reply {
        Reply {
            error: Some(msg.into()),
            retry,
            ..Reply::default()
        }
    }
}

/// Why a call did not get a reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("daemon socket {path}: {source} (is calico-node-rs running on this node?)", path = path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("daemon socket {path}: {message}", path = path.display())]
    Exchange { path: PathBuf, message: String },
}

/// Sends `req` to the daemon at `path` and waits up to `timeout` for the reply.
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Reply, CallError> {
    let ex = |message: String| CallError::Exchange {
        path: path.to_path_buf(),
        message,
    };
    let mut s = UnixStream::connect(path).map_err(|source| CallError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| ex(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ex(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| ex(format!("sending: {e}")))?;
    let mut reply = String::new();
    BufReader::new(&s)
        .read_line(&mut reply)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                ex(format!("no answer within {timeout:?}"))
            }
            _ => ex(format!("reading the answer: {e}")),
        })?;
    if reply.is_empty() {
        return Err(ex("closed without an answer".into()));
    }
    serde_json::from_str(&reply).map_err(|e| ex(format!("answer is not a reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::Add {
            node: "n1".into(),
            container_id: "abc".into(),
            pod: Some(PodId {
                namespace: "default".into(),
                name: "web".into(),
            }),
            ipv4: true,
            ipv6: false,
            ipv4_pools: vec![],
            ipv6_pools: vec![],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"op":"add""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(
            r#"{"op":"del","node":"n1","container_id":"a","typo":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"frob"}"#).is_err());
        let q: Reply = serde_json::from_str(r#"{"queued":true}"#).unwrap();
        assert!(q.queued && q.error.is_none() && q.ips.is_empty());
    }
}
