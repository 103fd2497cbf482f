//! The `NodeStatus` server: binds `unix:PATH` (mode 0600) or `tcp:ADDR` (mutual TLS, or plain with
//! the explicit insecure flag) and answers every call from the latest published [`NodeSnapshot`].
//!
//! `WatchPeers` streams hold their own clone of the status receiver: the first message is every
//! peer (`snapshot = true`); then each `changed()` wake-up is diffed against what that client was
//! last sent ([`convert::diff_peers`]) and the differences go out at once, so a peer state change
//! reaches clients as soon as the daemon publishes it. Streams end when the daemon drops its
//! sender or when the server shuts down (graceful shutdown waits for open streams, so they must).
//!
//! [`NodeSnapshot`]: crate::status::NodeSnapshot

use std::collections::VecDeque;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use calico_proto::v1 as pb;
use calico_proto::v1::node_status_server::{NodeStatus, NodeStatusServer};
use futures::Stream;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::client::chain;
use super::{convert, GrpcError, GrpcListen};
use crate::status::{NodeSnapshot, StatusRx};

/// Mode of the Unix socket: only root (the daemon's user) may connect.
pub const SOCKET_MODE: u32 = 0o600;
/// Mode of the socket's directory when the daemon creates it.
const DIR_MODE: u32 = 0o755;

/// Where a [`Bound`] server listens (with the port the kernel chose for `tcp:...:0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// Removes the socket file when the server stops.
pub(crate) struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Listener {
    Unix(UnixListener, SocketGuard),
    Tcp(TcpListener),
}

/// A bound listener with its server configuration (TLS already loaded and checked), ready to
/// [`serve`](Bound::serve). Binding first lets callers learn the address and report configuration
/// errors before the daemon starts its other tasks.
pub struct Bound {
    listener: Listener,
    server: Server,
}

/// Binds the listener and loads TLS material. Must run inside a Tokio runtime.
pub async fn bind(listen: GrpcListen) -> Result<Bound, GrpcError> {
    let mut server = Server::builder();
    let listener = match listen {
        GrpcListen::Unix(path) => {
            let (l, guard) = bind_unix(&path)?;
            info!(socket = %path.display(), "status API listening");
            Listener::Unix(l, guard)
        }
        GrpcListen::Tcp { addr, tls } => {
            server = server
                .tls_config(tls.server_config()?)
                .map_err(|e| GrpcError::TlsConfig(chain(&e)))?;
            let l = bind_tcp(addr).await?;
            info!(addr = %l.local_addr().unwrap_or(addr), "status API listening (mutual TLS)");
            Listener::Tcp(l)
        }
        GrpcListen::TcpInsecure(addr) => {
            let l = bind_tcp(addr).await?;
            warn!(addr = %l.local_addr().unwrap_or(addr), "status API listening on plain TCP (--grpc-insecure-tcp): unauthenticated, unencrypted");
            Listener::Tcp(l)
        }
    };
    Ok(Bound { listener, server })
}

/// Binds and serves until `shutdown` completes; open `WatchPeers` streams end then too. The Unix
/// socket file is removed on return.
pub async fn serve(
    listen: GrpcListen,
    status: StatusRx,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    bind(listen).await?.serve(status, shutdown).await
}

impl Bound {
    pub fn local_addr(&self) -> BoundAddr {
        match &self.listener {
            Listener::Unix(_, guard) => BoundAddr::Unix(guard.0.clone()),
            Listener::Tcp(l) => BoundAddr::Tcp(l.local_addr().expect("bound TCP listener")),
        }
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        status: StatusRx,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GrpcError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let svc = NodeStatusServer::new(StatusService {
            status,
            stop: stop_rx,
        });
        let Bound {
            listener,
            mut server,
        } = self;
        let router = server.add_service(svc);
        let res = match listener {
            Listener::Unix(l, _guard) => {
                router
                    .serve_with_incoming_shutdown(UnixListenerStream::new(l), signal)
                    .await
            }
            Listener::Tcp(l) => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(l), signal)
                    .await
            }
        };
        res.map_err(|e| GrpcError::Serve(chain(&e)))
    }
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, GrpcError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GrpcError::Io {
            what: "binding",
            target: format!("tcp:{addr}"),
            source,
        })
}

/// Binds under a temporary name, sets mode 0600, then renames into place: the socket is never
/// reachable at `path` with a wider mode, whatever the process umask.
/// Binds a Unix socket at `path` with mode 0600 (created under a temporary name and renamed, so
/// it is never reachable with a wider mode); a stale socket is replaced, a live one refused.
pub(crate) fn bind_unix(path: &Path) -> Result<(UnixListener, SocketGuard), GrpcError> {
    let io = |what: &'static str, p: &Path| {
        let target = p.display().to_string();
        move |source| GrpcError::Io {
            what,
            target,
            source,
        }
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io("creating directory", dir))?;
    remove_stale(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.as_deref().unwrap_or("sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io("binding", &tmp))?;
    let tmp_guard = SocketGuard(tmp.clone());
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io("setting mode 0600 on", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming socket to", path))?;
    std::mem::forget(tmp_guard);
    Ok((listener, SocketGuard(path.to_path_buf())))
}

/// A socket left by a daemon that died is removed; a live one, or anything that is not a socket,
/// is an error.
fn remove_stale(path: &Path) -> Result<(), GrpcError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(GrpcError::Io {
                what: "inspecting",
                target: path.display().to_string(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(GrpcError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(GrpcError::SocketInUse {
            path: path.to_path_buf(),
        });
    }
    info!(socket = %path.display(), "removing stale socket");
    std::fs::remove_file(path).map_err(|source| GrpcError::Io {
        what: "removing stale socket",
        target: path.display().to_string(),
        source,
    })
}

/// Answers from the latest snapshot; holds no lock across an await.
struct StatusService {
    status: StatusRx,
    stop: watch::Receiver<bool>,
}

impl StatusService {
    fn snapshot(&self) -> Arc<NodeSnapshot> {
        self.status.borrow().clone()
    }
}

type PeerEventStream = Pin<Box<dyn Stream<Item = Result<pb::PeerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeStatus for StatusService {
    async fn get_node(&self, _: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        let snap = self.snapshot();
        Ok(Response::new(convert::node(
            &snap.node,
            &snap.resource_errors,
            SystemTime::now(),
        )))
    }

    async fn list_peers(
        &self,
        _: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        Ok(Response::new(pb::ListPeersResponse {
            peers: convert::peers(&self.snapshot()),
        }))
    }

    type WatchPeersStream = PeerEventStream;

    async fn watch_peers(
        &self,
        _: Request<pb::WatchPeersRequest>,
    ) -> Result<Response<PeerEventStream>, Status> {
        Ok(Response::new(watch_peers(
            self.status.clone(),
            self.stop.clone(),
        )))
    }

    async fn list_routes(
        &self,
        _: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        Ok(Response::new(pb::ListRoutesResponse {
            routes: self.snapshot().routes.iter().map(convert::route).collect(),
        }))
    }

    async fn list_blocks(
        &self,
        req: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        Ok(Response::new(pb::ListBlocksResponse {
            blocks: convert::blocks(&self.snapshot(), req.get_ref().all_nodes),
        }))
    }

    async fn get_policy_status(
        &self,
        _: Request<pb::GetPolicyStatusRequest>,
    ) -> Result<Response<pb::PolicyStatus>, Status> {
        Ok(Response::new(convert::policy(&self.snapshot().policy)))
    }
}

struct WatchState {
    status: StatusRx,
    stop: watch::Receiver<bool>,
    sent: convert::SentPeers,
    pending: VecDeque<pb::PeerEvent>,
}

/// The snapshot event, then one event per change, until the daemon or the server stops.
fn watch_peers(mut status: StatusRx, stop: watch::Receiver<bool>) -> PeerEventStream {
    let peers = convert::peers(&status.borrow_and_update());
    let state = WatchState {
        status,
        stop,
        sent: convert::sent(&peers),
        pending: VecDeque::from([pb::PeerEvent {
            snapshot: true,
            peers,
            removed: vec![],
        }]),
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok(ev), st));
            }
            tokio::select! {
                changed = st.status.changed() => {
                    changed.ok()?;
                    let peers = convert::peers(&st.status.borrow_and_update());
                    st.pending.extend(convert::diff_peers(&mut st.sent, &peers));
                }
                _ = st.stop.wait_for(|stop| *stop) => return None,
            }
        }
    }))
}
