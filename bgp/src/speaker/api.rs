//! The speaker's public face: its handle, the events and status it publishes, its errors.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::{ConfigError, PeerCfg};
use crate::fsm::State;
use crate::wire::{Family, Origin};

/// Errors from starting or driving a speaker.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    #[error("no peer {0}")]
    NoSuchPeer(IpAddr),
    #[error("cannot set TCP MD5 key for peer {addr}: {source}")]
    Md5 {
        addr: IpAddr,
        source: std::io::Error,
    },
    #[error("the speaker has stopped")]
    Stopped,
}

/// Attributes of a route this speaker originates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginAttrs {
    pub origin: Origin,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
    /// Next hop to announce; `None`: our own session address.
    pub next_hop: Option<IpAddr>,
}

/// The best route of a prefix, as consumers (the dataplane) need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BestRoute {
    pub prefix: IpNet,
    /// ECMP next hops, best first. Unspecified for locally originated routes without one.
    pub next_hops: Vec<IpAddr>,
    /// The peer it came from; `None` for routes we originate.
    pub peer: Option<IpAddr>,
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<u32>,
    pub stale: bool,
}

/// A change to the best route of one prefix: `best: None` means it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    pub prefix: IpNet,
    pub best: Option<BestRoute>,
}

/// What subscribers are told.
#[derive(Debug, Clone)]
pub enum SpeakerEvent {
    PeerState {
        address: IpAddr,
        from: State,
        to: State,
        reason: Option<String>,
    },
}

/// Best-route changes of one export pass, as sent to [`SpeakerHandle::subscribe_routes`]
/// subscribers. A subscriber that lags should re-read [`SpeakerHandle::routes`].
pub type RouteChanges = Arc<Vec<RouteChange>>;

/// Capabilities as status shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NegotiatedStatus {
    pub hold_time: u16,
    pub keepalive: u16,
    pub four_octet_as: bool,
    pub route_refresh: bool,
    pub graceful_restart: bool,
    pub families: Vec<Family>,
    pub peer_router_id: Ipv4Addr,
}

/// One peer in a status snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub remote_as: u32,
    pub description: String,
    pub ebgp: bool,
    pub rr_client: bool,
    pub state: State,
    pub since: SystemTime,
    pub local_address: Option<IpAddr>,
    pub negotiated: Option<NegotiatedStatus>,
    /// Prefixes the peer currently announces to us (accepted + rejected by policy or loop checks).
    pub prefixes_received: u64,
    pub prefixes_accepted: u64,
    pub prefixes_advertised: u64,
    pub last_error: Option<String>,
    /// We hold this peer's routes as stale (graceful restart helper).
    pub gr_stale: bool,
    /// The peer has sent End-of-RIB for every negotiated family since the session came up (its
    /// initial table is complete).
    pub end_of_rib: bool,
}

/// A snapshot of the whole speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeakerStatus {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub peers: Vec<PeerStatus>,
    pub loc_rib_prefixes: u64,
}

pub(super) enum SpeakerMsg {
    AddPeer(PeerCfg, oneshot::Sender<Result<(), SpeakerError>>),
    UpdatePeer(PeerCfg, oneshot::Sender<Result<(), SpeakerError>>),
    RemovePeer(IpAddr, oneshot::Sender<Result<(), SpeakerError>>),
    Originate(Vec<(IpNet, OriginAttrs)>),
    Withdraw(Vec<IpNet>),
    Routes(oneshot::Sender<Vec<BestRoute>>),
    RequestRefresh(IpAddr),
    Inbound(TcpStream, SocketAddr),
    Shutdown(bool, oneshot::Sender<()>),
    /// Answered at once: proves the owner task is making progress (liveness).
    Ping(oneshot::Sender<()>),
}

/// A handle to a running speaker; cheap to clone.
#[derive(Clone)]
pub struct SpeakerHandle {
    pub(super) tx: mpsc::UnboundedSender<SpeakerMsg>,
    pub(super) status: watch::Receiver<Arc<SpeakerStatus>>,
    pub(super) events: broadcast::Sender<SpeakerEvent>,
    pub(super) route_events: broadcast::Sender<RouteChanges>,
    pub(super) local_as: u32,
}

impl SpeakerHandle {
    async fn ask<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<T>) -> SpeakerMsg,
    ) -> Result<T, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).map_err(|_| SpeakerError::Stopped)?;
        rx.await.map_err(|_| SpeakerError::Stopped)
    }
    /// A round trip through the owner task (for liveness checks).
    pub async fn ping(&self) -> Result<(), SpeakerError> {
        self.ask(SpeakerMsg::Ping).await
    }
    pub async fn add_peer(&self, cfg: PeerCfg) -> Result<(), SpeakerError> {
        cfg.validate(self.local_as)?;
        self.ask(|tx| SpeakerMsg::AddPeer(cfg, tx)).await?
    }
    /// Change a peer: policy and limit changes apply in place; anything else restarts its session.
    pub async fn update_peer(&self, cfg: PeerCfg) -> Result<(), SpeakerError> {
        cfg.validate(self.local_as)?;
        self.ask(|tx| SpeakerMsg::UpdatePeer(cfg, tx)).await?
    }
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), SpeakerError> {
        self.ask(|tx| SpeakerMsg::RemovePeer(address, tx)).await?
    }
    pub fn originate(&self, routes: Vec<(IpNet, OriginAttrs)>) -> Result<(), SpeakerError> {
        self.tx
            .send(SpeakerMsg::Originate(routes))
            .map_err(|_| SpeakerError::Stopped)
    }
    pub fn withdraw(&self, prefixes: Vec<IpNet>) -> Result<(), SpeakerError> {
        self.tx
            .send(SpeakerMsg::Withdraw(prefixes))
            .map_err(|_| SpeakerError::Stopped)
    }
    /// Ask a peer to send its routes again (RFC 2918).
    pub fn request_refresh(&self, address: IpAddr) -> Result<(), SpeakerError> {
        self.tx
            .send(SpeakerMsg::RequestRefresh(address))
            .map_err(|_| SpeakerError::Stopped)
    }
    /// Every best route in the Loc-RIB.
    pub async fn routes(&self) -> Result<Vec<BestRoute>, SpeakerError> {
        self.ask(SpeakerMsg::Routes).await
    }
    /// The latest status snapshot (never waits for the speaker).
    pub fn status(&self) -> Arc<SpeakerStatus> {
        self.status.borrow().clone()
    }
    pub fn status_watch(&self) -> watch::Receiver<Arc<SpeakerStatus>> {
        self.status.clone()
    }
    /// Peer state changes.
    pub fn subscribe(&self) -> broadcast::Receiver<SpeakerEvent> {
        self.events.subscribe()
    }
    /// Best-route changes. Only built while someone subscribes, so a speaker that nobody asks
    /// for routes (a pure route server) pays nothing for them.
    pub fn subscribe_routes(&self) -> broadcast::Receiver<RouteChanges> {
        self.route_events.subscribe()
    }
    /// Stop every session and the listeners. `graceful`: close connections without NOTIFICATION so
    /// graceful-restart peers keep our routes (a restart); else send Cease/Administrative Shutdown.
    pub async fn shutdown(&self, graceful: bool) {
        let _ = self.ask(|tx| SpeakerMsg::Shutdown(graceful, tx)).await;
    }
}
