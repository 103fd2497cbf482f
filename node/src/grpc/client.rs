//! Client side of the status API, for `calicoctl-rs` and the fallback controller: a tonic channel
//! over the Unix socket (a custom connector wrapping `tokio::net::UnixStream` in hyper-util's
//! `TokioIo`) or over TCP with mutual TLS.

use std::time::Duration;

use calico_proto::v1::node_status_client::NodeStatusClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::tls::ClientTls;
use super::{GrpcAddr, GrpcError};

/// How long to wait for the connection (and the TLS handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one unary call may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which daemon to talk to, and how.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCfg {
    pub addr: GrpcAddr,
    /// Required for `tcp:` unless `insecure_tcp`.
    pub tls: Option<ClientTls>,
    /// Talk plain HTTP/2 to a daemon started with `--grpc-insecure-tcp`.
    pub insecure_tcp: bool,
}

/// Connects (eagerly: an unreachable daemon is an error here, not on the first call), with
/// [`REQUEST_TIMEOUT`] per call. The timeout bounds a call until its response starts: an open
/// `WatchPeers` stream is not cut by it.
pub async fn connect(cfg: &ClientCfg) -> Result<NodeStatusClient<Channel>, GrpcError> {
    connect_with(cfg, Some(REQUEST_TIMEOUT)).await
}

/// [`connect`] with an explicit per-call timeout (`None`: none).
pub async fn connect_with(
    cfg: &ClientCfg,
    timeout: Option<Duration>,
) -> Result<NodeStatusClient<Channel>, GrpcError> {
    let target = cfg.addr.to_string();
    let fail = |reason: String| GrpcError::Connect {
        target: target.clone(),
        reason,
    };
    let channel = match &cfg.addr {
        GrpcAddr::Unix(path) => {
            if cfg.tls.is_some() {
                return Err(GrpcError::TlsOnUnix { path: path.clone() });
            }
            // The URI is not used for routing: the connector below ignores it.
            let ep = endpoint("http://localhost", timeout).map_err(&fail)?;
            let path = path.clone();
            ep.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|e| fail(chain(&e)))?
        }
        GrpcAddr::Tcp(addr) => {
            let ep = match &cfg.tls {
                Some(tls) => {
                    let name = addr.ip().to_string();
                    endpoint(&format!("https://{addr}"), timeout)
                        .map_err(&fail)?
                        .tls_config(tls.client_config(&name)?)
                        .map_err(|e| GrpcError::TlsConfig(chain(&e)))?
                }
                None if cfg.insecure_tcp => {
                    endpoint(&format!("http://{addr}"), timeout).map_err(&fail)?
                }
                None => return Err(GrpcError::ClientPlainTcp { addr: *addr }),
            };
            ep.connect().await.map_err(|e| fail(chain(&e)))?
        }
    };
    Ok(NodeStatusClient::new(channel))
}

fn endpoint(uri: &str, timeout: Option<Duration>) -> Result<Endpoint, String> {
    let ep = Endpoint::from_shared(uri.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(match timeout {
        Some(t) => ep.timeout(t),
        None => ep,
    })
}

/// The error and its sources ("transport error: ... : Connection refused (os error 111)").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.ends_with(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}
