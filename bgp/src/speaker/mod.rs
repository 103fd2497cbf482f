//! The speaker task: owns the Loc-RIB, the peers and their Adj-RIB-Out; sessions own sockets.
//!
//! ```text
//!  SpeakerHandle ──SpeakerMsg──▶ ┌──────────────┐ ──ToSession──▶ session task (one per peer)
//!  listeners ─────Inbound──────▶ │ speaker task │ ◀─FromSession──┘
//!                                └──────────────┘ ──▶ broadcast<SpeakerEvent>, watch<SpeakerStatus>
//! ```
//! Every inbound message is applied to the Loc-RIB at once; prefixes whose best path changed are
//! collected and exported in one pass when the inbox runs dry, so a burst of UPDATEs becomes one
//! export per peer with announcements grouped by identical attributes.
//!
//! Export rules: eBGP peers get our AS prepended, our next hop (unless `keep_next_hop`), no
//! LOCAL_PREF, no MED learned from another AS, no ORIGINATOR_ID/CLUSTER_LIST. iBGP peers get
//! LOCAL_PREF (100 by default) and are not sent iBGP-learned routes (split horizon) unless one side
//! of the reflection is a route-reflector client (RFC 4456 8); reflected routes get ORIGINATOR_ID
//! and our cluster id prepended to CLUSTER_LIST, and routes whose ORIGINATOR_ID is ours or whose
//! CLUSTER_LIST holds our cluster id are dropped on import, as are routes whose AS_PATH holds our AS.
//!
//! Graceful restart (RFC 4724): when a session that negotiated it ends without a NOTIFICATION, the
//! peer's routes are kept, marked stale, for the peer's Restart Time; when it comes back they are
//! replaced as it re-advertises, and what is still stale at its End-of-RIB (or when the stale timer
//! runs out) is removed. We send End-of-RIB after our initial table to every peer that did GR.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{PeerCfg, SpeakerCfg};
use crate::fsm::{DownReason, Fsm, FsmCfg, Negotiated, State};
use crate::prefix_map::{PrefixMap, PrefixSet};
use crate::rib::{LocRib, Path, RouteAttrs, SourceId, SourceInfo, LOCAL};
use crate::session::{FromSession, Session, ToSession};
use crate::sockopt;
use crate::wire::{code, subcode, Family, Notification, PathAttrs};

mod api;
use api::SpeakerMsg;
pub use api::*;

struct Peer {
    id: SourceId,
    cfg: PeerCfg,
    tx: mpsc::UnboundedSender<ToSession>,
    task: tokio::task::JoinHandle<()>,
    state: State,
    since: SystemTime,
    epoch: u64,
    negotiated: Option<Negotiated>,
    local: Option<IpAddr>,
    adj_out: PrefixMap<Arc<RouteAttrs>>,
    accepted: u64,
    rejected: HashSet<IpNet>,
    last_error: Option<String>,
    /// Holding stale routes until this instant (restart timer, then stale timer).
    stale_until: Option<Instant>,
    /// Families still waiting for End-of-RIB while stale routes are held.
    stale_families: HashSet<Family>,
    max_prefix_hit: bool,
    /// Families the peer has sent End-of-RIB for in this session.
    eor: HashSet<Family>,
}

impl Peer {
    fn ebgp(&self, local_as: u32) -> bool {
        self.cfg.remote_as != local_as
    }
    fn established(&self) -> bool {
        self.state == State::Established && self.negotiated.is_some()
    }
}

struct Speaker {
    cfg: SpeakerCfg,
    rib: LocRib,
    peers: HashMap<SourceId, Peer>,
    by_addr: HashMap<IpAddr, SourceId>,
    next_id: SourceId,
    listeners: Vec<(Arc<TcpListener>, bool)>,
    listener_tasks: Vec<tokio::task::JoinHandle<()>>,
    sess_tx: mpsc::UnboundedSender<(SourceId, FromSession)>,
    events: broadcast::Sender<SpeakerEvent>,
    route_events: broadcast::Sender<RouteChanges>,
    status: watch::Sender<Arc<SpeakerStatus>>,
    /// Prefixes whose best path changed since the last export pass.
    pending: PrefixSet,
    status_dirty: bool,
    cluster_id: Ipv4Addr,
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
    let cluster_id = cfg.cluster_id.unwrap_or(cfg.router_id);
    let sp = Speaker {
        rib: LocRib::new(cfg.multipath),
        cfg: cfg.clone(),
        peers: HashMap::new(),
        by_addr: HashMap::new(),
        next_id: 1,
        listeners,
        listener_tasks,
        sess_tx,
        events: events.clone(),
        route_events: route_events.clone(),
        status,
        pending: PrefixSet::new(),
        status_dirty: true,
        cluster_id,
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

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
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
            let deadline = self.peers.values().filter_map(|p| p.stale_until).min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => shutdown = self.on_msg(m),
                    None => break,
                },
                Some((id, m)) = sess_rx.recv() => self.on_session(id, m),
                _ = sleep => self.expire_stale(),
            }
            // Drain what is already queued before exporting, so bursts coalesce.
            for _ in 0..4096 {
                if shutdown.is_some() {
                    break;
                }
                match sess_rx.try_recv() {
                    Ok((id, m)) => self.on_session(id, m),
                    Err(_) => match rx.try_recv() {
                        Ok(m) => shutdown = self.on_msg(m),
                        Err(_) => break,
                    },
                }
            }
            self.export();
            self.publish_if_dirty();
        }
        for t in &self.listener_tasks {
            t.abort();
        }
        // Let sessions flush their last NOTIFICATION (or close quietly) before answering.
        let tasks = self.peers.drain().map(|(_, p)| p.task);
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(tasks)).await;
        if let Some((done, _)) = shutdown {
            let _ = done.send(());
        }
    }

    fn on_msg(&mut self, m: SpeakerMsg) -> Option<(oneshot::Sender<()>, bool)> {
        match m {
            SpeakerMsg::AddPeer(cfg, tx) => {
                let r = self.add_peer(cfg);
                self.publish_if_dirty();
                let _ = tx.send(r);
            }
            SpeakerMsg::UpdatePeer(cfg, tx) => {
                let r = self.update_peer(cfg);
                self.publish_if_dirty();
                let _ = tx.send(r);
            }
            SpeakerMsg::RemovePeer(addr, tx) => {
                let r = match self.by_addr.get(&addr).copied() {
                    Some(id) => {
                        self.remove_peer(
                            id,
                            Notification::new(code::CEASE, subcode::PEER_DECONFIGURED),
                        );
                        Ok(())
                    }
                    None => Err(SpeakerError::NoSuchPeer(addr)),
                };
                self.publish_if_dirty();
                let _ = tx.send(r);
            }
            SpeakerMsg::Originate(routes) => {
                for (prefix, o) in routes {
                    self.originate(prefix, o);
                }
            }
            SpeakerMsg::Withdraw(prefixes) => {
                for p in prefixes {
                    if self.rib.withdraw(&p, LOCAL) {
                        self.pending.add(p);
                    }
                }
            }
            SpeakerMsg::Routes(tx) => {
                let routes = self
                    .rib
                    .iter()
                    .filter_map(|(p, d)| self.best_route(&p, d))
                    .collect();
                self.publish_if_dirty();
                let _ = tx.send(routes);
            }
            SpeakerMsg::Ping(tx) => {
                let _ = tx.send(());
            }
            SpeakerMsg::RequestRefresh(addr) => {
                if let Some(p) = self.by_addr.get(&addr).and_then(|id| self.peers.get(id)) {
                    for f in p.negotiated.iter().flat_map(|n| n.families.clone()) {
                        let _ = p.tx.send(ToSession::RequestRefresh(f));
                    }
                }
            }
            SpeakerMsg::Inbound(stream, remote) => {
                let addr = canonical(remote.ip());
                match self.by_addr.get(&addr).and_then(|id| self.peers.get(id)) {
                    Some(p) => {
                        // GTSM before anything is read: from here on the kernel drops the peer's
                        // segments that came further than `ttl_security` hops. A socket that
                        // cannot be protected is not used at all.
                        let gtsm = p.cfg.ttl_security.map_or(Ok(()), |hops| {
                            let ipv6 = stream.local_addr()?.is_ipv6();
                            sockopt::set_gtsm(&stream, ipv6, hops)
                        });
                        match gtsm {
                            Ok(()) => {
                                let _ = p.tx.send(ToSession::Inbound(stream));
                            }
                            Err(e) => {
                                warn!(%addr, error = %e, "connection dropped: cannot set the GTSM minimum TTL")
                            }
                        }
                    }
                    None => warn!(%addr, "connection refused: not a configured peer"),
                }
            }
            SpeakerMsg::Shutdown(graceful, done) => {
                for p in self.peers.values() {
                    let _ = p.tx.send(ToSession::Shutdown {
                        graceful,
                        notification: None,
                    });
                }
                return Some((done, graceful));
            }
        }
        None
    }

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

    fn fsm_cfg(&self, cfg: &PeerCfg) -> FsmCfg {
        let mut f = FsmCfg::new(self.cfg.local_as, cfg.remote_as, self.cfg.router_id);
        f.hold_time = cfg.hold_time;
        f.connect_retry = cfg.connect_retry;
        f.passive = cfg.passive;
        f.families = cfg.families.clone();
        f.graceful_restart = self.cfg.gr();
        f.four_octet_as = cfg.four_octet_as;
        f
    }

    fn add_peer(&mut self, cfg: PeerCfg) -> Result<(), SpeakerError> {
        let addr = cfg.address;
        if self.by_addr.contains_key(&addr) {
            return Err(SpeakerError::DuplicatePeer(addr));
        }
        if cfg.password.is_some() {
            self.set_md5(addr, cfg.password.as_deref())?;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, task) = Session::spawn(
            id,
            cfg.clone(),
            Fsm::new(self.fsm_cfg(&cfg)),
            self.sess_tx.clone(),
        );
        info!(peer = %addr, remote_as = cfg.remote_as, "peer added");
        self.peers.insert(
            id,
            Peer {
                id,
                cfg,
                tx,
                task,
                state: State::Idle,
                since: SystemTime::now(),
                epoch: 0,
                negotiated: None,
                local: None,
                adj_out: PrefixMap::new(),
                accepted: 0,
                rejected: HashSet::new(),
                last_error: None,
                stale_until: None,
                stale_families: HashSet::new(),
                max_prefix_hit: false,
                eor: HashSet::new(),
            },
        );
        self.by_addr.insert(addr, id);
        self.status_dirty = true;
        Ok(())
    }

    fn update_peer(&mut self, cfg: PeerCfg) -> Result<(), SpeakerError> {
        let id = *self
            .by_addr
            .get(&cfg.address)
            .ok_or(SpeakerError::NoSuchPeer(cfg.address))?;
        let Some(p) = self.peers.get_mut(&id) else {
            return Err(SpeakerError::NoSuchPeer(cfg.address));
        };
        let soft = |c: &PeerCfg| {
            let mut c = c.clone();
            c.import = Default::default();
            c.export = Default::default();
            c.max_prefixes = None;
            c.description.clear();
            c
        };
        if soft(&p.cfg) != soft(&cfg) {
            // Session parameters changed: restart it (Cease/Other Configuration Change).
            self.remove_peer(
                id,
                Notification::new(code::CEASE, subcode::OTHER_CONFIGURATION_CHANGE),
            );
            return self.add_peer(cfg);
        }
        let import_changed = p.cfg.import != cfg.import;
        let export_changed = p.cfg.export != cfg.export;
        p.cfg = cfg;
        if import_changed {
            if let Some(n) = p.negotiated.as_ref().filter(|n| n.route_refresh) {
                for f in &n.families {
                    let _ = p.tx.send(ToSession::RequestRefresh(*f));
                }
            }
        }
        if export_changed && p.established() {
            let all: Vec<IpNet> = self
                .rib
                .iter()
                .map(|(k, _)| k)
                .chain(p.adj_out.keys())
                .collect();
            self.export_to(id, &all);
        }
        self.status_dirty = true;
        Ok(())
    }

    fn remove_peer(&mut self, id: SourceId, n: Notification) {
        let Some(p) = self.peers.remove(&id) else {
            return;
        };
        self.by_addr.remove(&p.cfg.address);
        let _ = p.tx.send(ToSession::Shutdown {
            graceful: false,
            notification: Some(n),
        });
        if p.cfg.password.is_some() {
            let _ = self.set_md5(p.cfg.address, None);
        }
        self.pending.extend(self.rib.remove_source(id, None, false));
        info!(peer = %p.cfg.address, "peer removed");
        self.status_dirty = true;
    }

    fn originate(&mut self, prefix: IpNet, o: OriginAttrs) {
        let next_hop = o.next_hop.unwrap_or(match prefix {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        });
        let attrs = Arc::new(RouteAttrs {
            attrs: PathAttrs {
                origin: Some(o.origin),
                med: o.med,
                local_pref: o.local_pref,
                communities: o.communities,
                large_communities: o.large_communities,
                ..PathAttrs::default()
            },
            next_hop,
            link_local: None,
        });
        let path = Path::new(LOCAL, attrs);
        if self.rib.update(prefix, path) {
            self.pending.add(prefix);
        }
    }

    fn best_route(&self, prefix: &IpNet, d: &crate::rib::Dest) -> Option<BestRoute> {
        let best = d.best()?;
        let a = &best.attrs.attrs;
        Some(BestRoute {
            prefix: *prefix,
            next_hops: d.ecmp().iter().map(|p| p.attrs.next_hop).collect(),
            peer: self.peers.get(&best.source).map(|p| p.cfg.address),
            as_path: a
                .as_path
                .segments
                .iter()
                .flat_map(|s| s.asns.iter().copied())
                .collect(),
            local_pref: a.local_pref,
            med: a.med,
            communities: a.communities.clone(),
            stale: best.stale,
        })
    }

    fn on_session(&mut self, id: SourceId, m: FromSession) {
        if !self.peers.contains_key(&id) {
            return; // a removed peer's last words
        }
        match m {
            FromSession::State { from, to } => {
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                p.state = to;
                p.since = SystemTime::now();
                self.status_dirty = true;
                let reason = p.last_error.clone().filter(|_| to == State::Idle);
                let _ = self.events.send(SpeakerEvent::PeerState {
                    address: p.cfg.address,
                    from,
                    to,
                    reason,
                });
            }
            FromSession::Established {
                epoch,
                negotiated,
                local,
            } => self.on_established(id, epoch, negotiated, local),
            FromSession::Down { reason } => self.on_down(id, reason),
            FromSession::ConnectFailed(e) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    let e = Some(e);
                    if p.negotiated.is_none() && p.last_error != e {
                        p.last_error = e;
                        self.status_dirty = true;
                    }
                }
            }
            FromSession::Update(u) => self.on_update(id, u),
            FromSession::RouteRefresh(f) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    let keys: Vec<IpNet> =
                        p.adj_out.keys().filter(|k| Family::of(k) == f).collect();
                    for k in &keys {
                        p.adj_out.remove(k);
                    }
                    let all: Vec<IpNet> = self
                        .rib
                        .iter()
                        .map(|(k, _)| k)
                        .filter(|k| Family::of(k) == f)
                        .collect();
                    self.export_to(id, &all);
                }
            }
        }
    }

    fn on_established(&mut self, id: SourceId, epoch: u64, n: Negotiated, local: SocketAddr) {
        let local_as = self.cfg.local_as;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        info!(peer = %p.cfg.address, peer_id = %n.peer_id, "session established");
        p.epoch = epoch;
        p.local = Some(canonical(local.ip()));
        p.adj_out.clear();
        p.accepted = 0;
        p.rejected.clear();
        p.max_prefix_hit = false;
        p.eor.clear();
        p.last_error = None;
        self.rib.set_source(
            id,
            SourceInfo {
                address: p.cfg.address,
                bgp_id: n.peer_id,
                ebgp: p.ebgp(local_as),
            },
        );
        // Graceful restart helper: the peer is back. Families it kept forwarding state for wait for
        // End-of-RIB; the others are flushed now.
        if p.stale_until.is_some() {
            let mut flush = Vec::new();
            p.stale_families.clear();
            for f in Family::ALL {
                let kept = n
                    .peer_gr
                    .as_ref()
                    .is_some_and(|g| g.families.iter().any(|(gf, fwd)| *gf == f && *fwd))
                    && n.families.contains(&f);
                if kept {
                    p.stale_families.insert(f);
                } else {
                    flush.push(f);
                }
            }
            let stale_time = self
                .cfg
                .graceful_restart
                .as_ref()
                .map(|g| g.stale_time)
                .unwrap_or(360);
            p.stale_until = if p.stale_families.is_empty() {
                None
            } else {
                Some(Instant::now() + Duration::from_secs(u64::from(stale_time)))
            };
            for f in flush {
                self.pending
                    .extend(self.rib.remove_source(id, Some(f), true));
            }
        }
        // Paths already held from this peer (stale ones) count as accepted until replaced.
        let held = self.rib.count_source(id) as u64;
        let send_eor = n.peer_gr.is_some() || n.local_gr;
        let families = n.families.clone();
        if let Some(p) = self.peers.get_mut(&id) {
            p.accepted = held;
            p.negotiated = Some(n);
            p.state = State::Established;
        }
        let all: Vec<IpNet> = self.rib.iter().map(|(k, _)| k).collect();
        self.export_to(id, &all);
        if send_eor {
            if let Some(p) = self.peers.get(&id) {
                for f in families {
                    let _ = p.tx.send(ToSession::EndOfRib { epoch, family: f });
                }
            }
        }
        self.status_dirty = true;
    }

    fn on_down(&mut self, id: SourceId, reason: DownReason) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if !matches!(reason, DownReason::ConnectionLost) || p.negotiated.is_some() {
            p.last_error = Some(reason.to_string());
        }
        self.status_dirty = true;
        let Some(n) = p.negotiated.take() else { return };
        p.adj_out.clear();
        p.rejected.clear();
        if reason.graceful(&n) {
            let restart = n.peer_gr.as_ref().map(|g| g.restart_time).unwrap_or(0);
            let marked = self.rib.mark_stale(id);
            info!(peer = %p.cfg.address, routes = marked, restart_time = restart, "peer restarting: keeping its routes as stale");
            p.stale_until = Some(Instant::now() + Duration::from_secs(u64::from(restart)));
            p.stale_families = Family::ALL.into_iter().collect();
            // Stale paths stay best where they were; dataplane consumers see the flag.
            self.pending.extend(
                self.rib
                    .iter()
                    .filter(|(_, d)| d.paths.iter().any(|x| x.source == id))
                    .map(|(k, _)| k),
            );
        } else {
            p.stale_until = None;
            p.stale_families.clear();
            self.pending.extend(self.rib.remove_source(id, None, false));
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.accepted = self.rib.count_source(id) as u64;
        }
    }

    fn expire_stale(&mut self) {
        let now = Instant::now();
        let due: Vec<SourceId> = self
            .peers
            .values()
            .filter(|p| p.stale_until.is_some_and(|t| t <= now))
            .map(|p| p.id)
            .collect();
        for id in due {
            let gone = self.rib.remove_source(id, None, true);
            if let Some(p) = self.peers.get_mut(&id) {
                info!(peer = %p.cfg.address, routes = gone.len(), "stale routes removed (timer)");
                p.stale_until = None;
                p.stale_families.clear();
                p.accepted = self.rib.count_source(id) as u64;
            }
            self.pending.extend(gone);
            self.status_dirty = true;
        }
    }

    fn on_update(&mut self, id: SourceId, u: crate::wire::Update) {
        let local_as = self.cfg.local_as;
        let router_id = self.cfg.router_id;
        let cluster_id = self.cluster_id;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if !p.established() {
            return;
        }
        if let Some(f) = u.is_end_of_rib() {
            if p.eor.insert(f) {
                self.status_dirty = true;
            }
            if p.stale_families.remove(&f) {
                let gone = self.rib.remove_source(id, Some(f), true);
                info!(peer = %p.cfg.address, family = ?f, routes = gone.len(), "End-of-RIB: stale routes removed");
                if p.stale_families.is_empty() {
                    p.stale_until = None;
                }
                p.accepted = p.accepted.saturating_sub(gone.len() as u64);
                self.pending.extend(gone);
                self.status_dirty = true;
            }
            return;
        }
        for e in &u.errors {
            warn!(peer = %p.cfg.address, attr = e.code, treatment = ?e.treatment, reason = %e.reason, "malformed attribute (RFC 7606)");
        }
        let mut withdrawn: Vec<IpNet> = u.withdrawn_all().collect();
        let announced: Vec<IpNet> = u.announced().collect();
        let a = &u.attrs;
        let looped = a.as_path.contains(local_as)
            || a.originator_id == Some(router_id)
            || (a.cluster_list.contains(&cluster_id) && !a.cluster_list.is_empty());
        if u.treat_as_withdraw() || looped {
            withdrawn.extend(announced.iter().copied());
        }
        for w in &withdrawn {
            p.rejected.remove(w);
            let (changed, removed) = self.rib.withdraw_counted(w, id);
            if removed {
                p.accepted = p.accepted.saturating_sub(1);
            }
            if changed {
                self.pending.add(*w);
            }
        }
        if u.treat_as_withdraw() || looped {
            p.rejected.extend(announced.iter().copied());
            self.status_dirty = true;
            return;
        }
        let v4 = (!u.nlri.is_empty())
            .then(|| {
                a.next_hop.map(|nh| {
                    (
                        u.nlri.iter().map(|n| IpNet::V4(*n)).collect::<Vec<_>>(),
                        IpAddr::V4(nh),
                        None,
                    )
                })
            })
            .flatten();
        let mp = u.mp_reach.as_ref().and_then(|m| {
            let nh = *m.next_hops.first()?;
            let ll = match m.next_hops.get(1) {
                Some(IpAddr::V6(l)) => Some(*l),
                _ => None,
            };
            Some((m.nlri.clone(), nh, ll))
        });
        let mut attrs = a.clone();
        attrs.next_hop = None;
        for (prefixes, next_hop, link_local) in v4.into_iter().chain(mp) {
            let shared = Arc::new(RouteAttrs {
                attrs: attrs.clone(),
                next_hop,
                link_local,
            });
            for prefix in prefixes {
                if !p.cfg.families.contains(&Family::of(&prefix)) {
                    continue;
                }
                let path_attrs = match p.cfg.import.apply(&prefix, &shared.attrs) {
                    None => {
                        p.rejected.insert(prefix);
                        let (changed, removed) = self.rib.withdraw_counted(&prefix, id);
                        if removed {
                            p.accepted = p.accepted.saturating_sub(1);
                        }
                        if changed {
                            self.pending.add(prefix);
                        }
                        continue;
                    }
                    Some((None, _)) => shared.clone(),
                    Some((Some(changed), _)) => Arc::new(RouteAttrs {
                        attrs: changed,
                        next_hop,
                        link_local,
                    }),
                };
                p.rejected.remove(&prefix);
                let (changed, added) = self.rib.update_counted(prefix, Path::new(id, path_attrs));
                if added {
                    p.accepted += 1;
                }
                if changed {
                    self.pending.add(prefix);
                }
            }
        }
        self.status_dirty = true;
        if let Some(max) = p.cfg.max_prefixes {
            if p.accepted > u64::from(max) && !p.max_prefix_hit {
                p.max_prefix_hit = true;
                warn!(peer = %p.cfg.address, max, accepted = p.accepted, "maximum prefix limit exceeded");
                // RFC 4486 4: AFI, SAFI and the limit as data.
                let mut data = vec![0, 1, 1];
                data.extend_from_slice(&max.to_be_bytes());
                let _ = p.tx.send(ToSession::Notify(Notification::with_data(
                    code::CEASE,
                    subcode::MAX_PREFIXES_REACHED,
                    data,
                )));
            }
        }
    }

    /// Export every pending prefix to every established peer and tell subscribers.
    fn export(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // Taken, not drained: a burst of 100k changes should not pin its capacity afterwards.
        let changed: Vec<IpNet> = std::mem::take(&mut self.pending).keys().collect();
        let ids: Vec<SourceId> = self
            .peers
            .values()
            .filter(|p| p.established())
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.export_to(id, &changed);
        }
        if self.route_events.receiver_count() > 0 {
            let list: Vec<RouteChange> = changed
                .iter()
                .map(|p| RouteChange {
                    prefix: *p,
                    best: self.rib.get(p).and_then(|d| self.best_route(p, d)),
                })
                .collect();
            let _ = self.route_events.send(Arc::new(list));
        }
        self.status_dirty = true;
    }

    /// Bring one peer's Adj-RIB-Out in line with the Loc-RIB for `prefixes`.
    fn export_to(&mut self, id: SourceId, prefixes: &[IpNet]) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        if !peer.established() {
            return;
        }
        let mut cache: HashMap<*const RouteAttrs, Option<Arc<RouteAttrs>>> = HashMap::new();
        let mut interned: HashSet<Arc<RouteAttrs>> = HashSet::new();
        let mut groups: HashMap<*const RouteAttrs, (Arc<RouteAttrs>, Vec<IpNet>)> = HashMap::new();
        let mut withdrawn = Vec::new();
        let passthrough = peer.cfg.export.is_passthrough();
        // Update the Adj-RIB-Out in place: take it out of the peer while `self` is borrowed.
        let Some(mut taken) = self
            .peers
            .get_mut(&id)
            .map(|p| std::mem::take(&mut p.adj_out))
        else {
            return;
        };
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        for prefix in prefixes {
            let out = self.export_one(peer, prefix, passthrough, &mut cache, &mut interned);
            match (out, taken.get(prefix)) {
                (Some(a), Some(o)) if Arc::ptr_eq(&a, o) || **o == *a => {}
                (Some(a), _) => {
                    groups
                        .entry(Arc::as_ptr(&a))
                        .or_insert_with(|| (a.clone(), Vec::new()))
                        .1
                        .push(*prefix);
                    taken.insert(*prefix, a);
                }
                (None, Some(_)) => {
                    withdrawn.push(*prefix);
                    taken.remove(prefix);
                }
                (None, None) => {}
            }
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.adj_out = taken;
        let epoch = peer.epoch;
        if !withdrawn.is_empty() {
            let _ = peer.tx.send(ToSession::Withdraw {
                epoch,
                prefixes: withdrawn,
            });
        }
        for (_, (attrs, mut prefixes)) in groups {
            prefixes.sort_unstable();
            let _ = peer.tx.send(ToSession::Announce {
                epoch,
                attrs,
                prefixes,
            });
        }
    }

    /// What we announce to `peer` for `prefix`, or `None` to announce nothing (withdraw).
    fn export_one(
        &self,
        peer: &Peer,
        prefix: &IpNet,
        passthrough: bool,
        cache: &mut HashMap<*const RouteAttrs, Option<Arc<RouteAttrs>>>,
        interned: &mut HashSet<Arc<RouteAttrs>>,
    ) -> Option<Arc<RouteAttrs>> {
        let n = peer.negotiated.as_ref()?;
        let family = Family::of(prefix);
        if !n.families.contains(&family) {
            return None;
        }
        let best = self.rib.get(prefix)?.best()?;
        if best.source == peer.id {
            return None;
        }
        let src = self.peers.get(&best.source);
        let local_as = self.cfg.local_as;
        let to_ebgp = peer.ebgp(local_as);
        if let Some(src) = src {
            let both_ibgp = !src.ebgp(local_as) && !to_ebgp;
            let reflecting = src.cfg.rr_client || peer.cfg.rr_client;
            if both_ibgp && !reflecting {
                return None; // iBGP split horizon (RFC 4271 9.2, RFC 4456 8)
            }
        }
        let key = Arc::as_ptr(&best.attrs);
        if passthrough {
            if let Some(c) = cache.get(&key) {
                return c.clone();
            }
        }
        let out = self
            .build_export(peer, src, best, prefix, to_ebgp)
            .map(|a| match interned.get(&a) {
                Some(existing) => existing.clone(),
                None => {
                    let a = Arc::new(a);
                    interned.insert(a.clone());
                    a
                }
            });
        if passthrough {
            cache.insert(key, out.clone());
        }
        out
    }

    fn build_export(
        &self,
        peer: &Peer,
        src: Option<&Peer>,
        best: &Path,
        prefix: &IpNet,
        to_ebgp: bool,
    ) -> Option<RouteAttrs> {
        let local_as = self.cfg.local_as;
        // Rejected routes cost no copy: policies match on the prefix and on communities, which the
        // adjustments below never change.
        if !peer.cfg.export.is_passthrough() {
            peer.cfg.export.apply(prefix, &best.attrs.attrs)?;
        }
        let mut a = best.attrs.attrs.clone();
        let mut next_hop = best.attrs.next_hop;
        let mut link_local = best.attrs.link_local;
        let originated = best.source == LOCAL;
        if to_ebgp {
            a.local_pref = None;
            a.originator_id = None;
            a.cluster_list.clear();
            if !originated {
                a.med = None; // RFC 4271 5.1.4: a neighbour AS's MED stays in that AS.
            }
        }
        let (changed, prepends) = peer.cfg.export.apply(prefix, &a)?;
        if let Some(c) = changed {
            a = c;
        }
        let self_hop = next_hop.is_unspecified()
            || (to_ebgp && !peer.cfg.keep_next_hop)
            || peer.cfg.next_hop_self;
        if to_ebgp {
            for _ in 0..=prepends {
                a.as_path.prepend(local_as);
            }
        } else {
            a.local_pref.get_or_insert(crate::rib::DEFAULT_LOCAL_PREF);
            if let Some(src) = src.filter(|s| !s.ebgp(local_as)) {
                // Reflection (RFC 4456 8).
                let src_id = self.rib_source_id(src);
                a.originator_id.get_or_insert(src_id);
                a.cluster_list.insert(0, self.cluster_id);
            }
        }
        if self_hop {
            next_hop = self.self_next_hop(peer, Family::of(prefix))?;
            link_local = None;
        }
        Some(RouteAttrs {
            attrs: a,
            next_hop,
            link_local,
        })
    }

    fn rib_source_id(&self, p: &Peer) -> Ipv4Addr {
        p.negotiated
            .as_ref()
            .map(|n| n.peer_id)
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    fn self_next_hop(&self, peer: &Peer, family: Family) -> Option<IpAddr> {
        match (family, peer.local) {
            (Family::Ipv4Unicast, Some(a @ IpAddr::V4(_))) => Some(a),
            (Family::Ipv6Unicast, Some(a @ IpAddr::V6(_))) => Some(a),
            (Family::Ipv4Unicast, _) => self.cfg.next_hop_v4.map(IpAddr::V4),
            (Family::Ipv6Unicast, _) => self.cfg.next_hop_v6.map(IpAddr::V6),
        }
    }

    /// Publishes the status before a reply goes out, so a caller that saw a change in the reply
    /// (a route gone, a peer added) finds it in `SpeakerHandle::status` too.
    fn publish_if_dirty(&mut self) {
        if self.status_dirty {
            self.publish_status();
        }
    }

    fn publish_status(&mut self) {
        self.status_dirty = false;
        let local_as = self.cfg.local_as;
        let mut peers: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|p| PeerStatus {
                address: p.cfg.address,
                remote_as: p.cfg.remote_as,
                description: p.cfg.description.clone(),
                ebgp: p.ebgp(local_as),
                rr_client: p.cfg.rr_client,
                state: p.state,
                since: p.since,
                local_address: p.local,
                negotiated: p.negotiated.as_ref().map(|n| NegotiatedStatus {
                    hold_time: n.hold_time,
                    keepalive: n.keepalive,
                    four_octet_as: n.four_octet_as,
                    route_refresh: n.route_refresh,
                    graceful_restart: n.graceful_restart(),
                    families: n.families.clone(),
                    peer_router_id: n.peer_id,
                }),
                prefixes_received: p.accepted + p.rejected.len() as u64,
                prefixes_accepted: p.accepted,
                prefixes_advertised: p.adj_out.len() as u64,
                last_error: p.last_error.clone(),
                gr_stale: p.stale_until.is_some(),
                end_of_rib: p
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.families.iter().all(|f| p.eor.contains(f))),
            })
            .collect();
        peers.sort_by_key(|p| p.address);
        self.status.send_replace(Arc::new(SpeakerStatus {
            local_as,
            router_id: self.cfg.router_id,
            peers,
            loc_rib_prefixes: self.rib.len() as u64,
        }));
    }
}
