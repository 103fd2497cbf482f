//! The speaker core: the Loc-RIB, the peers and their Adj-RIB-Out, as a pure state machine.
//!
//! `SpeakerCore::handle(input, now) -> Vec<Output>`, as `Fsm::handle` is for one connection: no
//! sockets, no tasks, no clock reads. Inputs are API calls (peers, originations), what session tasks
//! report (state changes, Established with the negotiated capabilities, decoded UPDATEs, End-of-RIB,
//! ROUTE-REFRESH, the session going down), `Tick` for the stale-route timers
//! ([`SpeakerCore::next_deadline`]) and `Flush` when the shell's inbox has run dry. Outputs are what
//! to tell a peer's session (announce, withdraw, End-of-RIB, NOTIFICATION, route refresh), sessions
//! to start and stop, best-route changes and peer state events, in the order they happened.
//!
//! Every input is applied to the Loc-RIB at once; prefixes whose best path changed are collected
//! and exported in one pass at `Flush`, so a burst of UPDATEs becomes one export per peer with
//! announcements grouped by identical attributes. A peer that comes up, changes its export policy
//! or asks for a refresh is exported to at once. The decisions themselves are
//! [`super::import::import`] and [`super::export::advertise`].
//!
//! Graceful restart (RFC 4724 4.2, helper side): when a session that negotiated it ends without a
//! NOTIFICATION (or with one, when both sides set the N bit, RFC 8538), the peer's routes are kept,
//! marked stale, for the peer's Restart Time; when it comes back, families it kept forwarding
//! state for wait for its End-of-RIB (at most our stale time) and the others are flushed; its
//! re-advertisements replace the stale paths. We send End-of-RIB after our initial table to every
//! peer with which either side sent the capability.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::api::{
    BestRoute, NegotiatedStatus, OriginAttrs, PeerStatus, RouteChange, SpeakerError, SpeakerEvent,
    SpeakerStatus,
};
use super::export::{sync_adj_out, Advert};
use super::import::{import, max_prefix, Imported, RouteOp};
use super::peer::{Local, Peer};
use crate::config::{PeerCfg, SpeakerCfg};
use crate::fsm::{DownReason, FsmCfg, Negotiated, State};
use crate::prefix_map::PrefixSet;
use crate::rib::{Dest, LocRib, Path, RouteAttrs, SourceId, SourceInfo, LOCAL};
use crate::session::{FromSession, ToPeer};
use crate::wire::{code, subcode, Family, Notification, PathAttrs, Update};

/// The time, as the core is told it: monotonic for timers, wall-clock for status.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

/// What the core is told.
#[derive(Debug)]
// Moved once into `handle`, never stored in bulk.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Input {
    AddPeer(PeerCfg),
    /// Policy and limit changes apply in place; anything else restarts the peer.
    UpdatePeer(PeerCfg),
    RemovePeer(IpAddr),
    Originate(Vec<(IpNet, OriginAttrs)>),
    Withdraw(Vec<IpNet>),
    /// Ask the peer for its routes again (RFC 2918).
    RequestRefresh(IpAddr),
    /// A report from the session task of peer `SourceId`.
    Session(SourceId, FromSession),
    /// Time has passed: fire due stale-route timers.
    Tick,
    /// The inbox is empty: export what changed. `route_changes`: someone wants the best-route
    /// changes (they are not built otherwise).
    Flush {
        route_changes: bool,
    },
}

/// What the core asks the shell to do, in order.
#[derive(Debug)]
pub(crate) enum Output {
    /// Start the session task of a new peer.
    Start {
        id: SourceId,
        cfg: Box<PeerCfg>,
        fsm: Box<FsmCfg>,
    },
    /// The peer is gone: end its session with this NOTIFICATION.
    Stop {
        id: SourceId,
        notification: Notification,
    },
    Send(SourceId, ToPeer),
    /// The best-route changes of one export pass.
    Routes(Vec<RouteChange>),
    Event(SpeakerEvent),
}

/// The speaker's routing state; see the module comment.
pub(crate) struct SpeakerCore {
    cfg: SpeakerCfg,
    local: Local,
    rib: LocRib,
    /// Ordered by id so that outputs come in a stable order.
    peers: BTreeMap<SourceId, Peer>,
    by_addr: HashMap<IpAddr, SourceId>,
    next_id: SourceId,
    /// Prefixes whose best path changed since the last export pass.
    pending: PrefixSet,
    status_dirty: bool,
    out: Vec<Output>,
}

/// An IPv4-mapped IPv6 address is the IPv4 address (dual-stack listeners report them so).
pub(crate) fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

impl SpeakerCore {
    pub fn new(cfg: SpeakerCfg) -> SpeakerCore {
        SpeakerCore {
            local: Local::new(&cfg),
            rib: LocRib::new(cfg.multipath),
            cfg,
            peers: BTreeMap::new(),
            by_addr: HashMap::new(),
            next_id: 1,
            pending: PrefixSet::new(),
            status_dirty: true,
            out: Vec::new(),
        }
    }

    /// Apply one input. `Err`: an API call was refused and nothing changed.
    pub fn handle(&mut self, input: Input, now: Now) -> Result<Vec<Output>, SpeakerError> {
        let r = match input {
            Input::AddPeer(cfg) => self.add_peer(cfg, now),
            Input::UpdatePeer(cfg) => self.update_peer(cfg, now),
            Input::RemovePeer(addr) => match self.by_addr.get(&addr).copied() {
                Some(id) => {
                    let n = Notification::new(code::CEASE, subcode::PEER_DECONFIGURED);
                    self.remove_peer(id, n);
                    Ok(())
                }
                None => Err(SpeakerError::NoSuchPeer(addr)),
            },
            Input::Originate(routes) => {
                for (prefix, o) in routes {
                    self.originate(prefix, o);
                }
                Ok(())
            }
            Input::Withdraw(prefixes) => {
                for p in prefixes {
                    if self.rib.withdraw(&p, LOCAL) {
                        self.pending.add(p);
                    }
                }
                Ok(())
            }
            Input::RequestRefresh(addr) => {
                if let Some(p) = self.by_addr.get(&addr).and_then(|id| self.peers.get(id)) {
                    for f in p.negotiated.iter().flat_map(|n| n.families.clone()) {
                        self.out.push(Output::Send(p.id, ToPeer::RequestRefresh(f)));
                    }
                }
                Ok(())
            }
            Input::Session(id, m) => {
                self.on_session(id, m, now);
                Ok(())
            }
            Input::Tick => {
                self.expire_stale(now.mono);
                Ok(())
            }
            Input::Flush { route_changes } => {
                self.export(route_changes);
                Ok(())
            }
        };
        let out = std::mem::take(&mut self.out);
        r.map(|()| out)
    }

    /// When [`Input::Tick`] is next due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.stale_until).min()
    }

    /// The peer configured with this address.
    pub fn peer(&self, addr: IpAddr) -> Option<(SourceId, &PeerCfg)> {
        let id = *self.by_addr.get(&addr)?;
        self.peers.get(&id).map(|p| (id, &p.cfg))
    }

    /// The status changed since the last [`SpeakerCore::status`].
    pub fn status_dirty(&self) -> bool {
        self.status_dirty
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

    fn add_peer(&mut self, cfg: PeerCfg, now: Now) -> Result<(), SpeakerError> {
        let addr = cfg.address;
        if self.by_addr.contains_key(&addr) {
            return Err(SpeakerError::DuplicatePeer(addr));
        }
        let id = self.next_id;
        self.next_id += 1;
        info!(peer = %addr, remote_as = cfg.remote_as, "peer added");
        self.out.push(Output::Start {
            id,
            cfg: Box::new(cfg.clone()),
            fsm: Box::new(self.fsm_cfg(&cfg)),
        });
        self.peers.insert(id, Peer::new(id, cfg, now.wall));
        self.by_addr.insert(addr, id);
        self.status_dirty = true;
        Ok(())
    }

    fn update_peer(&mut self, cfg: PeerCfg, now: Now) -> Result<(), SpeakerError> {
        let id = *self
            .by_addr
            .get(&cfg.address)
            .ok_or(SpeakerError::NoSuchPeer(cfg.address))?;
        let Some(p) = self.peers.get_mut(&id) else {
            return Err(SpeakerError::NoSuchPeer(cfg.address));
        };
        let soft = |c: &PeerCfg| PeerCfg {
            import: Default::default(),
            export: Default::default(),
            max_prefixes: None,
            description: String::new(),
            ..c.clone()
        };
        if soft(&p.cfg) != soft(&cfg) {
            // Session parameters changed: restart it (Cease/Other Configuration Change).
            self.remove_peer(
                id,
                Notification::new(code::CEASE, subcode::OTHER_CONFIGURATION_CHANGE),
            );
            return self.add_peer(cfg, now);
        }
        let import_changed = p.cfg.import != cfg.import;
        let export_changed = p.cfg.export != cfg.export;
        p.cfg = cfg;
        if import_changed {
            if let Some(n) = p.negotiated.as_ref().filter(|n| n.route_refresh) {
                for f in &n.families {
                    self.out.push(Output::Send(id, ToPeer::RequestRefresh(*f)));
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

    fn remove_peer(&mut self, id: SourceId, notification: Notification) {
        let Some(p) = self.peers.remove(&id) else {
            return;
        };
        self.by_addr.remove(&p.cfg.address);
        self.out.push(Output::Stop { id, notification });
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
        if self.rib.update(prefix, Path::new(LOCAL, attrs)) {
            self.pending.add(prefix);
        }
    }

    fn best_route(&self, prefix: &IpNet, d: &Dest) -> Option<BestRoute> {
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

    /// Every best route in the Loc-RIB.
    pub fn routes(&self) -> Vec<BestRoute> {
        self.rib
            .iter()
            .filter_map(|(p, d)| self.best_route(&p, d))
            .collect()
    }

    fn on_session(&mut self, id: SourceId, m: FromSession, now: Now) {
        let Some(p) = self.peers.get_mut(&id) else {
            return; // a removed peer's last words
        };
        match m {
            FromSession::State { from, to } => {
                p.state = to;
                p.since = now.wall;
                self.status_dirty = true;
                let reason = p.last_error.clone().filter(|_| to == State::Idle);
                self.out.push(Output::Event(SpeakerEvent::PeerState {
                    address: p.cfg.address,
                    from,
                    to,
                    reason,
                }));
            }
            FromSession::Established {
                epoch,
                negotiated,
                local,
            } => self.on_established(id, epoch, negotiated, local, now.mono),
            FromSession::Down { reason } => self.on_down(id, reason, now.mono),
            FromSession::ConnectFailed(e) => {
                let e = Some(e);
                if p.negotiated.is_none() && p.last_error != e {
                    p.last_error = e;
                    self.status_dirty = true;
                }
            }
            FromSession::Update(u) => self.on_update(id, u),
            FromSession::RouteRefresh(f) => {
                p.adj_out.retain(|k, _| Family::of(&k) != f);
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

    fn on_established(
        &mut self,
        id: SourceId,
        epoch: u64,
        n: Negotiated,
        local: SocketAddr,
        now: Instant,
    ) {
        let local_as = self.cfg.local_as;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        info!(peer = %p.cfg.address, peer_id = %n.peer_id, "session established");
        p.epoch = epoch;
        p.bgp_id = n.peer_id;
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
        if p.stale_until.is_some() {
            self.restarted(id, &n, now);
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
            for family in families {
                self.out
                    .push(Output::Send(id, ToPeer::EndOfRib { epoch, family }));
            }
        }
        self.status_dirty = true;
    }

    /// Graceful restart helper: a peer whose routes we hold as stale is back. Families it kept
    /// forwarding state for wait for End-of-RIB; the others are flushed now.
    fn restarted(&mut self, id: SourceId, n: &Negotiated, now: Instant) {
        let stale_time = self
            .cfg
            .graceful_restart
            .as_ref()
            .map(|g| g.stale_time)
            .unwrap_or(360);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
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
        p.stale_until = if p.stale_families.is_empty() {
            None
        } else {
            Some(now + Duration::from_secs(u64::from(stale_time)))
        };
        for f in flush {
            self.pending
                .extend(self.rib.remove_source(id, Some(f), true));
        }
    }

    fn on_down(&mut self, id: SourceId, reason: DownReason, now: Instant) {
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
            p.stale_until = Some(now + Duration::from_secs(u64::from(restart)));
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

    fn expire_stale(&mut self, now: Instant) {
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

    fn on_update(&mut self, id: SourceId, u: Update) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if !p.established() {
            return;
        }
        for e in &u.errors {
            warn!(peer = %p.cfg.address, attr = e.code, treatment = ?e.treatment, reason = %e.reason, "malformed attribute (RFC 7606)");
        }
        let ops = match import(&self.local, &p.cfg, &u) {
            Imported::EndOfRib(f) => return self.end_of_rib(id, f),
            Imported::Routes(ops) => ops,
        };
        for op in ops {
            let (prefix, changed, count) = match op {
                RouteOp::Withdraw(prefix) => {
                    p.rejected.remove(&prefix);
                    let (changed, removed) = self.rib.withdraw_counted(&prefix, id);
                    (prefix, changed, -i64::from(removed))
                }
                RouteOp::Reject(prefix, why) => {
                    debug!(peer = %p.cfg.address, %prefix, ?why, "route not accepted");
                    p.rejected.insert(prefix);
                    let (changed, removed) = self.rib.withdraw_counted(&prefix, id);
                    (prefix, changed, -i64::from(removed))
                }
                RouteOp::Accept(prefix, attrs) => {
                    p.rejected.remove(&prefix);
                    let (changed, added) = self.rib.update_counted(prefix, Path::new(id, attrs));
                    (prefix, changed, i64::from(added))
                }
            };
            p.accepted = p.accepted.saturating_add_signed(count);
            if changed {
                self.pending.add(prefix);
            }
        }
        self.status_dirty = true;
        if let Some(n) = max_prefix(&p.cfg, p.accepted, p.max_prefix_hit) {
            p.max_prefix_hit = true;
            let max = p.cfg.max_prefixes.unwrap_or_default();
            warn!(peer = %p.cfg.address, max, accepted = p.accepted, "maximum prefix limit exceeded");
            self.out.push(Output::Send(id, ToPeer::Notify(n)));
        }
    }

    /// The peer's initial table for `f` is complete: what is still stale from it is gone.
    fn end_of_rib(&mut self, id: SourceId, f: Family) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
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
    }

    /// Export every pending prefix to every established peer and build the route changes.
    fn export(&mut self, route_changes: bool) {
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
        if route_changes {
            let list: Vec<RouteChange> = changed
                .iter()
                .map(|p| RouteChange {
                    prefix: *p,
                    best: self.rib.get(p).and_then(|d| self.best_route(p, d)),
                })
                .collect();
            self.out.push(Output::Routes(list));
        }
        self.status_dirty = true;
    }

    /// Bring one peer's Adj-RIB-Out in line with the Loc-RIB for `prefixes`.
    fn export_to(&mut self, id: SourceId, prefixes: &[IpNet]) {
        if !self.peers.get(&id).is_some_and(Peer::established) {
            return;
        }
        // Update the Adj-RIB-Out in place: take it out of the peer while the peers are borrowed.
        let Some(mut adj_out) = self
            .peers
            .get_mut(&id)
            .map(|p| std::mem::take(&mut p.adj_out))
        else {
            return;
        };
        let Some(to) = self.peers.get(&id) else {
            return;
        };
        let Advert {
            withdrawn,
            announced,
        } = sync_adj_out(
            &self.local,
            &self.rib,
            &self.peers,
            to,
            &mut adj_out,
            prefixes,
        );
        let epoch = to.epoch;
        if let Some(p) = self.peers.get_mut(&id) {
            p.adj_out = adj_out;
        }
        if !withdrawn.is_empty() {
            self.out.push(Output::Send(
                id,
                ToPeer::Withdraw {
                    epoch,
                    prefixes: withdrawn,
                },
            ));
        }
        for (attrs, prefixes) in announced {
            self.out.push(Output::Send(
                id,
                ToPeer::Announce {
                    epoch,
                    attrs,
                    prefixes,
                },
            ));
        }
    }

    /// A status snapshot; clears [`SpeakerCore::status_dirty`].
    pub fn status(&mut self) -> SpeakerStatus {
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
        SpeakerStatus {
            local_as,
            router_id: self.cfg.router_id,
            peers,
            loc_rib_prefixes: self.rib.len() as u64,
        }
    }
}
