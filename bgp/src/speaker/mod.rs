//! The speaker task: a thin shell around `core::SpeakerCore`, which owns the Loc-RIB, the peers
//! and their Adj-RIB-Out; sessions own sockets.
//!
//! ```text
//!  SpeakerHandle ──SpeakerMsg──▶ ┌──────────────┐ ──ToSession──▶ session task (one per peer)
//!  listeners ─────Inbound──────▶ │ speaker task │ ◀─FromSession──┘
//!                                │  SpeakerCore │ ──▶ broadcast<SpeakerEvent>, broadcast<RouteChanges>,
//!                                └──────────────┘     watch<SpeakerStatus>
//! ```
//! The task turns channel messages into `core::Input`s and carries out the `core::Output`s:
//! it spawns and stops session tasks, sets TCP MD5 keys on the listeners, forwards routing messages
//! to sessions and publishes events and status. After draining what is queued it feeds `Flush`, so
//! a burst of UPDATEs is exported once.
//!
//! Layout: `core.rs` (the state machine: RIB, peers, graceful restart, export passes),
//! `import.rs` and `export.rs` (the routing decisions, pure functions), `peer.rs` (the peer type
//! they share), `api.rs` (handle, events, status, errors). `replay/` (tests) drives the core
//! with no sockets from transcripts of inputs and expected outputs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::warn;

use crate::config::SpeakerCfg;
use crate::fsm::Fsm;
use crate::rib::SourceId;
use crate::session::{FromSession, Session, ToSession};
use crate::sockopt;

mod api;
mod core;
mod export;
mod import;
mod peer;
#[cfg(test)]
mod replay;

use self::core::{canonical, Input, Now, Output, SpeakerCore};
use api::SpeakerMsg;
pub use api::*;

/// A peer's session task, as the shell holds it.
struct SessionTask {
    tx: mpsc::UnboundedSender<ToSession>,
    task: tokio::task::JoinHandle<()>,
    address: IpAddr,
    /// We set a TCP MD5 key for the peer on the listeners.
    md5: bool,
}

struct Speaker {
    core: SpeakerCore,
    sessions: HashMap<SourceId, SessionTask>,
    listeners: Vec<(Arc<TcpListener>, bool)>,
    listener_tasks: Vec<tokio::task::JoinHandle<()>>,
    sess_tx: mpsc::UnboundedSender<(SourceId, FromSession)>,
    events: broadcast::Sender<SpeakerEvent>,
    route_events: broadcast::Sender<RouteChanges>,
    status: watch::Sender<Arc<SpeakerStatus>>,
}

/// Start a speaker: bind its listeners and spawn its task.
pub async fn start(cfg: SpeakerCfg) -> Result<SpeakerHandle, SpeakerError> {
    cfg.validate()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (sess_tx, sess_rx) = mpsc::unbounded_channel();
    let (events, _) = broadcast::channel(1024);
    let (route_events, _) = broadcast::channel(256);
    let initial = Arc::new(SpeakerStatus {
        local_as: cfg.local_as,
        router_id: cfg.router_id,
        peers: vec![],
        loc_rib_prefixes: 0,
    });
    let (status, status_rx) = watch::channel(initial);
    let mut listeners = Vec::new();
    let mut listener_tasks = Vec::new();
    for addr in &cfg.listen {
        match bind(*addr) {
            Ok(l) => {
                let l = Arc::new(l);
                listener_tasks.push(tokio::spawn(accept_loop(l.clone(), tx.clone())));
                listeners.push((l, addr.is_ipv6()));
            }
            // A host without IPv6 still runs IPv4.
            Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() && cfg.listen.len() > 1 => {
                warn!(%addr, error = %e, "IPv6 listener not available")
            }
            Err(source) => {
                return Err(SpeakerError::Listen {
                    addr: *addr,
                    source,
                })
            }
        }
    }
    let sp = Speaker {
        core: SpeakerCore::new(cfg.clone()),
        sessions: HashMap::new(),
        listeners,
        listener_tasks,
        sess_tx,
        events: events.clone(),
        route_events: route_events.clone(),
        status,
    };
    let span = tracing::info_span!("speaker", asn = cfg.local_as, id = %cfg.router_id);
    tokio::spawn(tracing::Instrument::instrument(sp.run(rx, sess_rx), span));
    Ok(SpeakerHandle {
        tx,
        status: status_rx,
        events,
        route_events,
        local_as: cfg.local_as,
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    s.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        sockopt::set_v6_only(&s)?;
    }
    s.bind(addr)?;
    s.listen(128)
}

async fn accept_loop(l: Arc<TcpListener>, tx: mpsc::UnboundedSender<SpeakerMsg>) {
    loop {
        match l.accept().await {
            Ok((s, a)) => {
                if tx.send(SpeakerMsg::Inbound(s, a)).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The core's clock, read from tokio's (so paused test time applies).
fn now() -> Now {
    Now {
        mono: tokio::time::Instant::now().into_std(),
        wall: SystemTime::now(),
    }
}

impl Speaker {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<SpeakerMsg>,
        mut sess_rx: mpsc::UnboundedReceiver<(SourceId, FromSession)>,
    ) {
        let mut shutdown: Option<(oneshot::Sender<()>, bool)> = None;
        self.publish_status();
        while shutdown.is_none() {
            let deadline = self.core.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => shutdown = self.on_msg(m),
                    None => break,
                },
                Some((id, m)) = sess_rx.recv() => self.feed(Input::Session(id, m)),
                _ = sleep => self.feed(Input::Tick),
            }
            // Drain what is already queued before exporting, so bursts coalesce.
            for _ in 0..4096 {
                if shutdown.is_some() {
                    break;
                }
                match sess_rx.try_recv() {
                    Ok((id, m)) => self.feed(Input::Session(id, m)),
                    Err(_) => match rx.try_recv() {
                        Ok(m) => shutdown = self.on_msg(m),
                        Err(_) => break,
                    },
                }
            }
            let route_changes = self.route_events.receiver_count() > 0;
            self.feed(Input::Flush { route_changes });
            self.publish_if_dirty();
        }
        for t in &self.listener_tasks {
            t.abort();
        }
        // Let sessions flush their last NOTIFICATION (or close quietly) before answering.
        let tasks = self.sessions.drain().map(|(_, s)| s.task);
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(tasks)).await;
        if let Some((done, _)) = shutdown {
            let _ = done.send(());
        }
    }

    /// Feed an input that cannot be refused.
    fn feed(&mut self, input: Input) {
        if let Err(e) = self.call(input) {
            warn!(error = %e, "speaker input failed");
        }
    }

    /// Feed an input and carry out what it asks for.
    fn call(&mut self, input: Input) -> Result<(), SpeakerError> {
        let outputs = self.core.handle(input, now())?;
        self.apply(outputs)
    }

    /// Answer an API call, with the status that reflects it already published.
    fn reply(&mut self, input: Input, tx: oneshot::Sender<Result<(), SpeakerError>>) {
        let r = self.call(input);
        self.publish_if_dirty();
        let _ = tx.send(r);
    }

    fn on_msg(&mut self, m: SpeakerMsg) -> Option<(oneshot::Sender<()>, bool)> {
        match m {
            SpeakerMsg::AddPeer(cfg, tx) => self.reply(Input::AddPeer(cfg), tx),
            SpeakerMsg::UpdatePeer(cfg, tx) => self.reply(Input::UpdatePeer(cfg), tx),
            SpeakerMsg::RemovePeer(addr, tx) => self.reply(Input::RemovePeer(addr), tx),
            SpeakerMsg::Originate(routes) => self.feed(Input::Originate(routes)),
            SpeakerMsg::Withdraw(prefixes) => self.feed(Input::Withdraw(prefixes)),
            SpeakerMsg::RequestRefresh(addr) => self.feed(Input::RequestRefresh(addr)),
            SpeakerMsg::Routes(tx) => {
                let routes = self.core.routes();
                self.publish_if_dirty();
                let _ = tx.send(routes);
            }
            SpeakerMsg::Ping(tx) => {
                let _ = tx.send(());
            }
            SpeakerMsg::Inbound(stream, remote) => self.on_inbound(stream, remote),
            SpeakerMsg::Shutdown(graceful, done) => {
                for s in self.sessions.values() {
                    let _ = s.tx.send(ToSession::Shutdown {
                        graceful,
                        notification: None,
                    });
                }
                return Some((done, graceful));
            }
        }
        None
    }

    fn on_inbound(&mut self, stream: TcpStream, remote: SocketAddr) {
        let addr = canonical(remote.ip());
        let Some((id, cfg)) = self.core.peer(addr) else {
            warn!(%addr, "connection refused: not a configured peer");
            return;
        };
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        // GTSM before anything is read: from here on the kernel drops the peer's segments that
        // came further than `ttl_security` hops. A socket that cannot be protected is not used.
        let gtsm = cfg.ttl_security.map_or(Ok(()), |hops| {
            let ipv6 = stream.local_addr()?.is_ipv6();
            sockopt::set_gtsm(&stream, ipv6, hops)
        });
        match gtsm {
            Ok(()) => {
                let _ = s.tx.send(ToSession::Inbound(stream));
            }
            Err(e) => {
                warn!(%addr, error = %e, "connection dropped: cannot set the GTSM minimum TTL")
            }
        }
    }

    /// Carry out the core's outputs in order. A session that cannot start (its MD5 key cannot be
    /// set) is taken out of the core again and its error returned.
    fn apply(&mut self, outputs: Vec<Output>) -> Result<(), SpeakerError> {
        let mut result = Ok(());
        for o in outputs {
            match o {
                Output::Start { id, cfg, fsm } => {
                    let address = cfg.address;
                    let md5 = cfg.password.is_some();
                    if let Some(e) = cfg
                        .password
                        .as_deref()
                        .and_then(|pw| self.set_md5(address, Some(pw)).err())
                    {
                        // The output of taking it out again is a Stop for a session never started.
                        let _ = self.core.handle(Input::RemovePeer(address), now());
                        result = Err(e);
                        continue;
                    }
                    let (tx, task) = Session::spawn(id, *cfg, Fsm::new(*fsm), self.sess_tx.clone());
                    self.sessions.insert(
                        id,
                        SessionTask {
                            tx,
                            task,
                            address,
                            md5,
                        },
                    );
                }
                Output::Stop { id, notification } => {
                    let Some(s) = self.sessions.remove(&id) else {
                        continue;
                    };
                    let _ = s.tx.send(ToSession::Shutdown {
                        graceful: false,
                        notification: Some(notification),
                    });
                    if s.md5 {
                        let _ = self.set_md5(s.address, None);
                    }
                }
                Output::Send(id, m) => {
                    if let Some(s) = self.sessions.get(&id) {
                        let _ = s.tx.send(ToSession::Peer(m));
                    }
                }
                Output::Routes(list) => {
                    let _ = self.route_events.send(Arc::new(list));
                }
                Output::Event(e) => {
                    let _ = self.events.send(e);
                }
            }
        }
        result
    }

    /// Set (or with `None` clear) the peer's TCP MD5 key on the listeners of its family. Setting
    /// `None` for a peer that never had a key is a no-op.
    fn set_md5(&self, addr: IpAddr, key: Option<&str>) -> Result<(), SpeakerError> {
        for (l, v6) in &self.listeners {
            if *v6 != addr.is_ipv6() {
                continue;
            }
            sockopt::set_md5(l.as_ref(), addr, key.map(str::as_bytes), *v6)
                .map_err(|source| SpeakerError::Md5 { addr, source })?;
        }
        Ok(())
    }

    /// Publishes the status before a reply goes out, so a caller that saw a change in the reply
    /// (a route gone, a peer added) finds it in `SpeakerHandle::status` too.
    fn publish_if_dirty(&mut self) {
        if self.core.status_dirty() {
            self.publish_status();
        }
    }

    fn publish_status(&mut self) {
        let s = self.core.status();
        self.status.send_replace(Arc::new(s));
    }
}
