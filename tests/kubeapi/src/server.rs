//! The listener, its connections and the test controls.
//!
//! ```text
//!  accept loop --spawn--> connection task (hyper http1) --handle--> http::route --lock--> Store
//!      ^   |                    ^ ends on `kill` change               |             (watchers notified
//!      |   '-- outage: close listener, bump `kill`, sleep, rebind    '--> watch task  under the lock)
//!  /_test/outage                                                          ends on `drop_watches`
//! ```
//!
//! Controls (plain HTTP, not part of the Kubernetes API, not logged):
//! - `POST /_test/drop-watches`: end every open watch stream (clients see a clean end of stream);
//! - `POST /_test/compact`: forget all history, so a watch or a list page from an older rv gets 410;
//! - `POST /_test/outage?seconds=N`: answer, then close the listener and every connection, refuse
//!   connections for N seconds, then listen again on the same address with the same state;
//! - `GET /_test/requests`: the request log as JSON lines;
//! - `GET /_test/state`: `{resourceVersion, compacted, watches}`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::body::{full, RespBody};
use crate::reqlog::RequestLog;
use crate::store::Store;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerCfg {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Append the request log here too.
    pub request_log: Option<PathBuf>,
    /// Persist objects in this journal file.
    pub state: Option<PathBuf>,
    /// Events kept for watches and consistent list pages.
    pub history: usize,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Default for ServerCfg {
    fn default() -> Self {
        ServerCfg {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            request_log: None,
            state: None,
            history: 100_000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The state journal could not be read or written.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The request log could not be opened.
    #[error("request log {path}: {source}")]
    RequestLog {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    /// The objects.
    pub store: Mutex<Store>,
    /// Bumped to end every watch.
    pub drop_watches: watch::Sender<u64>,
    /// The request log.
    pub reqlog: RequestLog,
    /// Bookmark period.
    pub bookmark_interval: Duration,
    /// The bound address.
    pub addr: SocketAddr,
    outage: mpsc::UnboundedSender<Duration>,
}

/// The server type.
#[derive(Debug)]
pub struct Server;

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds, loads state, and serves in the background.
    pub async fn start(cfg: ServerCfg) -> Result<ServerHandle, StartError> {
        let store = match &cfg.state {
            Some(p) => Store::open(cfg.history, p).map_err(|source| StartError::State {
                path: p.clone(),
                source,
            })?,
            None => Store::new(cfg.history),
        };
        let reqlog = RequestLog::new(cfg.request_log.as_deref()).map_err(|source| {
            StartError::RequestLog {
                path: cfg.request_log.clone().unwrap_or_default(),
                source,
            }
        })?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let (outage, outage_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            drop_watches: watch::Sender::new(0),
            reqlog,
            bookmark_interval: cfg.bookmark_interval,
            addr,
            outage,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            shared.clone(),
            listener,
            outage_rx,
            shutdown_rx,
        ));
        tracing::info!(%addr, "serving");
        Ok(ServerHandle {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().expect("store lock").rv()
    }

    /// The request log so far (JSON lines).
    pub fn requests(&self) -> String {
        self.shared.reqlog.dump()
    }

    /// Stops listening, closes every connection and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..200 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "rebinding after an outage");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    None
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut outage: mpsc::UnboundedReceiver<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let kill = watch::Sender::new(0u64);
    let mut listener = Some(listener);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => match rebind(shared.addr).await {
                Some(l) => l,
                None => {
                    tracing::error!(addr = %shared.addr, "could not listen again after an outage");
                    return;
                }
            },
        };
        loop {
            tokio::select! {
                acc = l.accept() => match acc {
                    Ok((stream, _)) => { tokio::spawn(connection(shared.clone(), stream, kill.subscribe())); }
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                },
                d = outage.recv() => {
                    let Some(d) = d else { return };
                    // Let the control request's answer go out first.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    drop(l);
                    kill.send_modify(|k| *k += 1);
                    tracing::info!(seconds = d.as_secs_f64(), "outage");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {},
                        _ = shutdown.changed() => return,
                    }
                    tracing::info!("outage over");
                    break;
                },
                _ = shutdown.changed() => {
                    kill.send_modify(|k| *k += 1);
                    return;
                },
            }
        }
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream, mut kill: watch::Receiver<u64>) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| crate::http::handle(shared.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        r = conn => if let Err(e) = r { tracing::debug!(error = %e, "connection ended") },
        _ = kill.changed() => {},
    }
}

fn reply(code: StatusCode, body: String, ct: &'static str) -> Response<RespBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// `/_test/...`.
pub async fn control(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path();
    let q = crate::util::parse_query(req.uri().query().unwrap_or(""));
    let ok = |v: serde_json::Value| reply(StatusCode::OK, v.to_string(), "application/json");
    match (req.method(), path) {
        (&Method::POST, "/_test/drop-watches") => {
            let n = shared.store.lock().expect("store lock").watch_count();
            shared.drop_watches.send_modify(|v| *v += 1);
            ok(json!({"dropped": n}))
        }
        (&Method::POST, "/_test/compact") => {
            let mut s = shared.store.lock().expect("store lock");
            s.compact();
            ok(json!({"compacted": s.rv()}))
        }
        (&Method::POST, "/_test/outage") => {
            let secs = q
                .iter()
                .find(|(k, _)| k == "seconds")
                .and_then(|(_, v)| v.parse::<f64>().ok());
            match secs {
                Some(s) if s >= 0.0 && s.is_finite() => {
                    let _ = shared.outage.send(Duration::from_secs_f64(s));
                    ok(json!({"outage": s}))
                }
                _ => reply(
                    StatusCode::BAD_REQUEST,
                    "seconds=N required\n".into(),
                    "text/plain",
                ),
            }
        }
        (&Method::GET, "/_test/requests") => {
            reply(StatusCode::OK, shared.reqlog.dump(), "application/x-ndjson")
        }
        (&Method::GET, "/_test/state") => {
            let s = shared.store.lock().expect("store lock");
            ok(
                json!({"resourceVersion": s.rv(), "compacted": s.compacted(), "watches": s.watch_count()}),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "unknown test control\n".into(),
            "text/plain",
        ),
    }
}
