//! The node daemon: one owner task wiring datastore, IPAM, BGP and felix together.
//!
//! ```text
//!  FileDatastore ──watch<Snapshot>──┐      Ipam (DIR/ipam, polled 1/s)
//!                                   v        v
//!                         ┌───────── daemon task ─────────┐
//!                         │ calc::desired(state, blocks)  │──peers/originate diff──▶ bgp::SpeakerHandle
//!                         │ learned routes (from BGP) ◀───│◀── RouteChanges / PeerState events
//!                         │ calc::routes_input            │──RoutesInput──▶ felix RouteManager
//!                         │ policy input                  │──PolicyInput──▶ felix policy manager
//!                         └──────────────┬────────────────┘
//!                                        └──watch<NodeSnapshot>──▶ gRPC, /readiness, /metrics
//! ```
//! Order on start (and restart): the speaker originates our blocks before any peer is added, so
//! the first End-of-RIB we send follows a complete table; felix gets its first route input only once
//! BGP has synced (every peer Established with its End-of-RIB in, or `bgp_sync_timeout`), so a
//! restarted daemon never removes remote-block routes it simply has not relearned yet. On SIGTERM
//! the sessions close without NOTIFICATION (graceful restart: peers keep our routes) and kernel
//! routes and the nftables table stay as they are.

pub mod health;
pub mod live;
pub mod release;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use bgp::{GracefulRestartCfg, OriginAttrs, SpeakerCfg, SpeakerHandle, State};
use felix::policy::{PolicyCfg, PolicyHandle};
use felix::routes::{RouteManager, RouteManagerHandle, RoutesCfg};
use ipnet::IpNet;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::calc::{self, Desired, PeerSpec, SpeakerSpec};
use crate::datastore::{ClusterState, Datastore, FileDatastore, ResourceError};
use crate::ipam::Ipam;
use crate::status::{
    BlockView, NodeSnapshot, NodeView, PeerView, PolicyView, RejectedPolicyView, RouteKind,
    RouteView,
};

/// Where the resources come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreKind {
    File(PathBuf),
    Kubernetes,
}

impl std::str::FromStr for DatastoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kubernetes" => Ok(DatastoreKind::Kubernetes),
            s => match s.strip_prefix("file:") {
                Some(dir) if !dir.is_empty() => Ok(DatastoreKind::File(PathBuf::from(dir))),
                _ => Err(format!(
                    "--datastore {s:?}: expected file:DIR or kubernetes"
                )),
            },
        }
    }
}

/// Daemon settings (validated by the binary before `run`).
#[derive(Debug, Clone)]
pub struct DaemonCfg {
    pub nodename: String,
    pub datastore: DatastoreKind,
    /// Address for /liveness and /readiness (Calico's default: 127.0.0.1:9099); port 0
    /// disables.
    pub health_addr: SocketAddr,
    /// Address for /metrics (default 127.0.0.1:9091); port 0 disables.
    pub metrics_addr: SocketAddr,
    /// How long another node's Node must stay deleted before its IPAM blocks are released.
    pub node_release_grace: Duration,
    /// Route protocol number marking felix's routes.
    pub route_protocol: u8,
    /// nftables table (family inet) for policy.
    pub nft_table: String,
    /// Longest wait for peers' End-of-RIB before felix gets its first route input.
    pub bgp_sync_timeout: Duration,
    /// What traffic from local pods to the node itself meets after the pod's egress policy
    /// (Calico's `defaultEndpointToHostAction`).
    pub endpoint_to_host: felix::policy::EndpointToHostAction,
}

impl DaemonCfg {
    pub fn new(nodename: &str, datastore: DatastoreKind) -> DaemonCfg {
        DaemonCfg {
            nodename: nodename.to_string(),
            datastore,
            health_addr: SocketAddr::from(([127, 0, 0, 1], 9099)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9091)),
            node_release_grace: Duration::from_secs(60),
            route_protocol: felix::routes::DEFAULT_ROUTE_PROTOCOL,
            nft_table: "calico-rs".into(),
            bgp_sync_timeout: Duration::from_secs(10),
            endpoint_to_host: felix::policy::EndpointToHostAction::Accept,
        }
    }
}

struct Speaker {
    spec: SpeakerSpec,
    handle: SpeakerHandle,
    started: Instant,
}

/// A speaker that could not be started, and when to try again.
struct SpeakerFailure {
    spec: SpeakerSpec,
    error: String,
    attempts: u32,
    first_at: Instant,
    retry_at: Instant,
}

impl SpeakerFailure {
    /// 1 s, 2 s, 4 s ... capped at 30 s.
    fn backoff(attempts: u32) -> Duration {
        Duration::from_secs(1u64 << attempts.min(5).saturating_sub(1)).min(Duration::from_secs(30))
    }
}

/// The speaker's event streams, apart from [`Speaker`] so the select loop can borrow each alone.
#[derive(Default)]
struct SpeakerRx {
    routes: Option<broadcast::Receiver<bgp::RouteChanges>>,
    peers: Option<broadcast::Receiver<bgp::SpeakerEvent>>,
}

/// Counters for /metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub resource_errors: u64,
    pub recomputes: u64,
    pub route_inputs: u64,
    pub policy_inputs: u64,
    pub last_recompute: Duration,
}

struct Daemon {
    cfg: DaemonCfg,
    ipam: Ipam,
    state: ClusterState,
    /// The datastore's current errors (rejected documents, resources kept at their last good
    /// version, unsupported kinds).
    resource_errors: Vec<ResourceError>,
    blocks: Vec<IpNet>,
    /// Every IPAM block with its usage, as of the last refresh (for status).
    block_views: Vec<BlockView>,
    desired: Option<Desired>,
    speaker: Option<Speaker>,
    /// Set while the speaker the datastore asks for cannot be started (retried with backoff).
    speaker_failure: Option<SpeakerFailure>,
    rx: SpeakerRx,
    applied_peers: BTreeMap<IpAddr, PeerSpec>,
    applied_originate: BTreeSet<IpNet>,
    /// Best routes learned from peers: prefix -> ECMP next hops.
    learned: BTreeMap<IpNet, Vec<IpAddr>>,
    /// AS path and graceful-restart staleness of each learned route (for the status API).
    learned_meta: BTreeMap<IpNet, (Vec<u32>, bool)>,
    /// When the daemon saw the policy manager finish an apply (an input or a drift repair).
    policy_applied_at: Option<SystemTime>,
    /// `(seq_applied, drift_repairs)` last seen, to notice the next apply.
    policy_seen: (u64, u64),
    /// A policy input has been in the kernel since start. Until then felix gets no route input,
    /// so a restart leaves the previous run's pod routes (and rules) as they are instead of
    /// removing routes of endpoints whose rules this run has not applied yet.
    policy_applied_once: bool,
    routes: RouteManagerHandle,
    routes_pushed: bool,
    policy: PolicyHandle,
    /// Host-side interfaces of the endpoints in each policy input not yet applied, by sequence
    /// number (see [`Daemon::policy_progress`]).
    policy_pending: BTreeMap<u64, BTreeSet<String>>,
    /// The endpoints of the newest policy input that is in the kernel: only these get routes, so
    /// no pod is reachable before the rules that apply to it are enforced.
    policy_ready: BTreeSet<String>,
    bgp_synced: bool,
    /// Which other nodes were deleted, and since when (see [`release`]).
    release: release::ReleaseTracker,
    started: SystemTime,
    status: watch::Sender<Arc<NodeSnapshot>>,
    /// Progress of every owner loop (see [`live`]).
    live: Arc<live::Liveness>,
    /// The running speaker, for the watchdog's pings.
    speaker_watch: watch::Sender<Option<SpeakerHandle>>,
    /// The routes part of the status, rebuilt only when what it shows changed (see
    /// [`Daemon::routes_view`]): every event publishes a snapshot, and 10k routes each time
    /// would cost milliseconds and megabytes of churn per BGP batch or peer state change.
    routes_view: (Option<RoutesViewKey>, Arc<Vec<RouteView>>),
    /// Bumped whenever pods, blocks, pools or learned routes may have changed.
    routes_gen: u64,
    counters: Counters,
    counters_tx: watch::Sender<Counters>,
}

/// What [`Daemon::routes_view`] depends on besides `routes_gen`: whether felix has its input, and
/// which routes it has not programmed yet.
#[derive(Clone, PartialEq, Eq)]
struct RoutesViewKey {
    gen: u64,
    pushed: bool,
    pending: BTreeSet<IpNet>,
}

/// Run the daemon until `shutdown` resolves. Kernel state is left in place on return.
pub async fn run(
    cfg: DaemonCfg,
    status: watch::Sender<Arc<NodeSnapshot>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let dir = match &cfg.datastore {
        DatastoreKind::File(d) => d.clone(),
        DatastoreKind::Kubernetes => {
            bail!(
                "--datastore kubernetes: the Kubernetes API backend is not built yet; use file:DIR"
            )
        }
    };
    let ds = Arc::new(
        FileDatastore::open(&dir).with_context(|| format!("datastore {}", dir.display()))?,
    );
    let live = Arc::new(live::Liveness::new(Instant::now()));
    let ipam = Ipam::new(&dir).with_context(|| format!("IPAM state under {}", dir.display()))?;
    let routes = RouteManager::start(RoutesCfg {
        protocol: cfg.route_protocol,
        ..RoutesCfg::default()
    })
    .await
    .context("starting the route manager")?;
    let policy = felix::policy::spawn(PolicyCfg {
        table: cfg.nft_table.clone(),
        endpoint_to_host: cfg.endpoint_to_host,
        ..PolicyCfg::default()
    })
    .context("starting the policy manager")?;
    let (counters_tx, counters_rx) = watch::channel(Counters::default());
    if cfg.health_addr.port() != 0 || cfg.metrics_addr.port() != 0 {
        health::spawn(
            cfg.health_addr,
            cfg.metrics_addr,
            status.subscribe(),
            counters_rx,
            live.clone(),
        )
        .await?;
    }
    let (speaker_watch, speaker_rx) = watch::channel(None);
    tokio::spawn(watchdog(
        live.clone(),
        ds.clone(),
        routes.pinger(),
        policy.pinger(),
        speaker_rx,
    ));
    let wedge = live::test_wedge();
    let mut snaps = ds.watch();
    let first = snaps.borrow_and_update().clone();
    let mut d = Daemon {
        cfg,
        ipam,
        state: first.state.clone(),
        resource_errors: first.errors.clone(),
        blocks: vec![],
        block_views: vec![],
        desired: None,
        speaker: None,
        speaker_failure: None,
        rx: SpeakerRx::default(),
        applied_peers: BTreeMap::new(),
        applied_originate: BTreeSet::new(),
        learned: BTreeMap::new(),
        learned_meta: BTreeMap::new(),
        policy_applied_at: None,
        policy_seen: (0, 0),
        policy_applied_once: false,
        routes,
        routes_pushed: false,
        policy,
        policy_pending: BTreeMap::new(),
        policy_ready: BTreeSet::new(),
        bgp_synced: false,
        release: release::ReleaseTracker::default(),
        started: SystemTime::now(),
        status,
        live,
        speaker_watch,
        routes_view: (None, Arc::default()),
        routes_gen: 0,
        counters: Counters::default(),
        counters_tx,
    };
    // The datastore logged these; count them, as later ones are.
    d.counters.resource_errors +=
        d.resource_errors.iter().filter(|e| e.is_failure()).count() as u64;
    d.release.observe(d.state.nodes.keys(), Instant::now());
    d.refresh_blocks();
    d.recompute().await;
    let mut policy_rx = d.policy.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    loop {
        d.live.beat("daemon", Instant::now());
        if let Some((name, after)) = &wedge {
            if name == "daemon" && d.started.elapsed().unwrap_or_default() >= *after {
                warn!("test hook CALICO_RS_TEST_WEDGE: the daemon loop stops here");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
        let mut recompute = false;
        let mut routes_dirty = false;
        tokio::select! {
            _ = &mut shutdown => break,
            r = snaps.changed() => {
                if r.is_err() {
                    bail!("the datastore watcher stopped");
                }
                let s = snaps.borrow_and_update().clone();
                d.state = s.state.clone();
                d.release.observe(d.state.nodes.keys(), Instant::now());
                let new = s
                    .errors
                    .iter()
                    .filter(|e| e.is_failure() && !d.resource_errors.contains(e))
                    .count();
                d.counters.resource_errors += new as u64;
                d.resource_errors = s.errors.clone();
                recompute = true;
            }
            r = policy_rx.changed() => {
                if r.is_err() {
                    bail!("the policy manager stopped");
                }
                let st = policy_rx.borrow_and_update().clone();
                routes_dirty = d.policy_progress(&st);
            }
            _ = tick.tick() => {
                recompute = d.refresh_blocks() || d.release_deleted_nodes();
                if d.speaker_failure.as_ref().is_some_and(|f| Instant::now() >= f.retry_at) {
                    recompute = true;
                }
            }
            r = recv(&mut d.rx.routes) => {
                routes_dirty = true;
                match r {
                    Ok(changes) => d.apply_route_changes(&changes),
                    Err(broadcast::error::RecvError::Lagged(_)) => d.reload_learned().await,
                    Err(broadcast::error::RecvError::Closed) => {}
                }
            }
            e = recv(&mut d.rx.peers) => {
                if let Ok(bgp::SpeakerEvent::PeerState { address, from, to, reason }) = e {
                    info!(peer = %address, %from, %to, reason = reason.as_deref().unwrap_or(""), "BGP peer state");
                }
            }
        }
        if recompute {
            d.recompute().await;
            routes_dirty = true;
        }
        if !d.bgp_synced && d.check_bgp_synced() {
            info!("BGP synced: programming routes");
            routes_dirty = true;
        }
        if routes_dirty && d.bgp_synced && d.policy_applied_once {
            d.push_routes();
        }
        if routes_dirty {
            d.routes_gen += 1;
        }
        d.publish();
    }
    info!("shutting down: BGP sessions close for graceful restart, kernel routes and rules stay");
    if let Some(sp) = d.speaker.take() {
        sp.handle.shutdown(true).await;
    }
    Ok(())
}

/// Every second, proves that the datastore worker, the speaker, the route manager and the policy
/// thread still take their messages (see [`live`]).
async fn watchdog(
    live: Arc<live::Liveness>,
    ds: Arc<FileDatastore>,
    routes: felix::routes::RoutesPinger,
    policy: felix::policy::PolicyPinger,
    speaker: watch::Receiver<Option<SpeakerHandle>>,
) {
    const ANSWER: Duration = Duration::from_secs(2);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        live.beat("datastore", ds.last_progress());
        let sp = speaker.borrow().clone();
        let speaker_ok = async {
            match sp {
                None => true,
                Some(h) => matches!(tokio::time::timeout(ANSWER, h.ping()).await, Ok(Ok(()))),
            }
        };
        let (r, p, s) = tokio::join!(routes.ping(ANSWER), policy.ping(ANSWER), speaker_ok);
        let now = Instant::now();
        for (name, ok) in [("routes", r), ("policy", p), ("speaker", s)] {
            if ok {
                live.beat(name, now);
            }
        }
    }
}

async fn recv<T: Clone>(
    rx: &mut Option<broadcast::Receiver<T>>,
) -> Result<T, broadcast::error::RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// Re-read this node's affine blocks; true when they changed.
    fn refresh_blocks(&mut self) -> bool {
        match self.ipam.usage() {
            Ok(u) => {
                let mut mine: Vec<IpNet> = u
                    .blocks
                    .iter()
                    .filter(|b| b.affinity.as_deref() == Some(self.cfg.nodename.as_str()))
                    .map(|b| b.cidr)
                    .collect();
                mine.sort();
                self.block_views = u
                    .blocks
                    .into_iter()
                    .map(|b| BlockView {
                        cidr: b.cidr,
                        affinity: b.affinity,
                        used: b.used as u32,
                        free: b.free as u32,
                        pool: b.pool.unwrap_or_default(),
                    })
                    .collect();
                if mine != self.blocks {
                    self.blocks = mine;
                    return true;
                }
            }
            Err(e) => warn!(error = %e, "reading IPAM blocks"),
        }
        false
    }

    /// Free the blocks of other nodes that were deleted and stayed deleted for the grace period
    /// (see [`release`]), except blocks that hold an address of a pod that exists. Any node may
    /// do it: the IPAM lock makes it safe and it is idempotent.
    fn release_deleted_nodes(&mut self) -> bool {
        let Ok(aff) = self.ipam.affinities() else {
            return false;
        };
        let owners: BTreeSet<String> = aff.into_values().flatten().collect();
        let due = self.release.due(
            &owners,
            &self.cfg.nodename,
            self.cfg.node_release_grace,
            Instant::now(),
        );
        if due.is_empty() {
            return false;
        }
        let pod_ips: BTreeSet<IpAddr> = self
            .state
            .pods
            .values()
            .flat_map(|p| p.pod_ips.iter().copied())
            .collect();
        let in_use = |ip: IpAddr, _: &str| pod_ips.contains(&ip);
        let mut released = false;
        for n in &due {
            match self.ipam.release_node(n, &in_use) {
                Ok(blocks) => {
                    released |= !blocks.is_empty();
                    if !blocks.is_empty() {
                        info!(node = %n, blocks = blocks.len(), "released the blocks of a deleted node");
                    }
                }
                Err(e) => warn!(node = %n, error = %e, "releasing blocks"),
            }
        }
        released
    }

    async fn recompute(&mut self) {
        let t = Instant::now();
        let mut d = calc::desired(&self.state, &self.cfg.nodename, &self.blocks);
        if d.me.is_none() {
            // Our own Node went missing (deleted, or never there). Stopping BGP would make every
            // peer withdraw this node's routes and cut its pods off; keep the sessions as they
            // were until the Node is back, and say so.
            if let Some(prev) = self.desired.as_ref().filter(|p| p.me.is_some()) {
                d.me = prev.me.clone();
                d.speaker = prev.speaker.clone();
                d.peers = prev.peers.clone();
                d.errors.push(format!(
                    "Node {}: not in the datastore; BGP keeps its last configuration until it is back",
                    self.cfg.nodename
                ));
            }
        }
        if self.desired.as_ref().map(|o| &o.errors) != Some(&d.errors) {
            for e in &d.errors {
                warn!(error = %e, "configuration problem");
            }
        }
        self.apply_bgp(&d).await;
        if self.desired.as_ref().map(|o| &o.policy) != Some(&d.policy) {
            let ifaces = d.policy.endpoints.iter().map(|e| e.iface.clone()).collect();
            let seq = self.policy.update(d.policy.clone());
            self.policy_pending.insert(seq, ifaces);
            self.counters.policy_inputs += 1;
        }
        self.desired = Some(d);
        self.counters.recomputes += 1;
        self.counters.last_recompute = t.elapsed();
    }

    async fn apply_bgp(&mut self, d: &Desired) {
        let spec_changed = self.speaker.as_ref().map(|s| &s.spec) != d.speaker.as_ref();
        // After a failed start, try again at the backoff time, or at once for other settings.
        let retry_due = match &self.speaker_failure {
            Some(f) => Some(&f.spec) != d.speaker.as_ref() || Instant::now() >= f.retry_at,
            None => true,
        };
        if spec_changed && retry_due {
            self.rx = SpeakerRx::default();
            if let Some(old) = self.speaker.take() {
                info!("speaker settings changed: restarting the BGP speaker");
                old.handle.shutdown(false).await;
            }
            self.applied_peers.clear();
            self.applied_originate.clear();
            self.learned.clear();
            self.learned_meta.clear();
            self.bgp_synced = false;
            if let Some(spec) = &d.speaker {
                match start_speaker(spec).await {
                    Ok(sp) => {
                        self.rx = SpeakerRx {
                            routes: Some(sp.handle.subscribe_routes()),
                            peers: Some(sp.handle.subscribe()),
                        };
                        self.speaker = Some(sp);
                        self.speaker_failure = None;
                    }
                    Err(e) => {
                        let (attempts, first_at) = match &self.speaker_failure {
                            Some(f) if &f.spec == spec => (f.attempts + 1, f.first_at),
                            _ => (1, Instant::now()),
                        };
                        let wait = SpeakerFailure::backoff(attempts);
                        warn!(error = %format!("{e:#}"), attempts, retry_in = ?wait, "cannot start the BGP speaker");
                        self.speaker_failure = Some(SpeakerFailure {
                            spec: spec.clone(),
                            error: format!("{e:#}"),
                            attempts,
                            first_at,
                            retry_at: Instant::now() + wait,
                        });
                    }
                }
            } else {
                self.speaker_failure = None;
            }
            self.speaker_watch
                .send_replace(self.speaker.as_ref().map(|s| s.handle.clone()));
        }
        if self.speaker_failure.is_some() {
            // Not synced: felix gets routes only after the sync timeout (check_bgp_synced).
            return;
        }
        let Some(sp) = &self.speaker else {
            // No BGP here: routes are still programmed for local pods.
            self.bgp_synced = true;
            return;
        };
        // Originate before peering, so the first End-of-RIB follows a complete table.
        let withdraw: Vec<IpNet> = self
            .applied_originate
            .difference(&d.originate)
            .copied()
            .collect();
        let add: Vec<(IpNet, OriginAttrs)> = d
            .originate
            .difference(&self.applied_originate)
            .map(|p| (*p, OriginAttrs::default()))
            .collect();
        if !withdraw.is_empty() {
            let _ = sp.handle.withdraw(withdraw);
        }
        if !add.is_empty() {
            let _ = sp.handle.originate(add);
        }
        self.applied_originate = d.originate.clone();
        for addr in self
            .applied_peers
            .keys()
            .filter(|a| !d.peers.contains_key(a))
            .copied()
            .collect::<Vec<_>>()
        {
            if let Err(e) = sp.handle.remove_peer(addr).await {
                warn!(peer = %addr, error = %e, "removing peer");
            }
            self.applied_peers.remove(&addr);
        }
        for (addr, spec) in &d.peers {
            let r = match self.applied_peers.get(addr) {
                None => sp.handle.add_peer(spec.cfg.clone()).await,
                Some(old) if old.cfg != spec.cfg => sp.handle.update_peer(spec.cfg.clone()).await,
                Some(_) => Ok(()),
            };
            match r {
                Ok(()) => {
                    self.applied_peers.insert(*addr, spec.clone());
                }
                Err(e) => warn!(peer = %addr, error = %e, "configuring peer"),
            }
        }
    }

    fn apply_route_changes(&mut self, changes: &[bgp::RouteChange]) {
        for c in changes {
            match &c.best {
                Some(b) if b.peer.is_some() => {
                    self.learned.insert(c.prefix, b.next_hops.clone());
                    self.learned_meta
                        .insert(c.prefix, (b.as_path.clone(), b.stale));
                }
                _ => {
                    self.learned.remove(&c.prefix);
                    self.learned_meta.remove(&c.prefix);
                }
            }
        }
    }

    async fn reload_learned(&mut self) {
        let Some(sp) = &self.speaker else { return };
        if let Ok(all) = sp.handle.routes().await {
            let learned: Vec<bgp::BestRoute> =
                all.into_iter().filter(|b| b.peer.is_some()).collect();
            self.learned_meta = learned
                .iter()
                .map(|b| (b.prefix, (b.as_path.clone(), b.stale)))
                .collect();
            self.learned = learned
                .into_iter()
                .map(|b| (b.prefix, b.next_hops))
                .collect();
        }
    }

    /// Every configured peer is Established and has sent End-of-RIB, or we waited long enough.
    fn check_bgp_synced(&mut self) -> bool {
        if let Some(f) = &self.speaker_failure {
            // Local pods still need their routes; remote ones cannot be learned anyway.
            if f.first_at.elapsed() >= self.cfg.bgp_sync_timeout {
                self.bgp_synced = true;
            }
            return self.bgp_synced;
        }
        let Some(sp) = &self.speaker else {
            self.bgp_synced = true;
            return true;
        };
        let st = sp.handle.status();
        let all = st
            .peers
            .iter()
            .all(|p| p.state == State::Established && p.end_of_rib);
        if all || sp.started.elapsed() >= self.cfg.bgp_sync_timeout {
            if !all {
                warn!("BGP sync timeout: programming routes with what has been learned so far");
            }
            self.bgp_synced = true;
        }
        self.bgp_synced
    }

    /// Follows the policy manager: when an input is in the kernel, its endpoints may have routes.
    /// A failed input changes nothing: endpoints that had routes keep them, new ones wait.
    /// Returns whether the set of routable endpoints changed.
    fn policy_progress(&mut self, st: &felix::policy::PolicyStatus) -> bool {
        let seen = (st.seq_applied, st.drift_repairs);
        if seen != self.policy_seen && st.last_apply.is_some() {
            self.policy_applied_at = Some(SystemTime::now());
        }
        self.policy_seen = seen;
        let applied: Vec<u64> = self
            .policy_pending
            .range(..=st.seq_applied)
            .map(|(s, _)| *s)
            .collect();
        let Some(newest) = applied.last().copied() else {
            return false;
        };
        let ready = self.policy_pending.remove(&newest).unwrap_or_default();
        for s in applied {
            self.policy_pending.remove(&s);
        }
        // Inputs processed but failed are dropped too; a later success supersedes them.
        let done: Vec<u64> = self
            .policy_pending
            .range(..=st.seq_done)
            .map(|(s, _)| *s)
            .collect();
        for s in done {
            self.policy_pending.remove(&s);
        }
        let first = !self.policy_applied_once;
        self.policy_applied_once = true;
        let changed = ready != self.policy_ready;
        self.policy_ready = ready;
        changed || first
    }

    fn push_routes(&mut self) {
        let Some(d) = &self.desired else { return };
        let mut input = calc::routes_input(d, &self.learned);
        let ready = &self.policy_ready;
        input.workloads.retain(|w| ready.contains(&w.iface));
        if let Err(e) = self.routes.set_desired(input) {
            warn!(error = %e, "route manager");
        }
        self.routes_pushed = true;
        self.counters.route_inputs += 1;
    }

    fn publish(&mut self) {
        let rstat = self.routes.status();
        let key = RoutesViewKey {
            gen: self.routes_gen,
            pushed: self.routes_pushed,
            pending: rstat.pending.iter().map(|p| p.dst).collect(),
        };
        if self.routes_view.0.as_ref() != Some(&key) {
            let view = Arc::new(self.routes_view(&key.pending));
            self.routes_view = (Some(key), view);
        }
        let snap = self.snapshot(&rstat);
        self.status.send_if_modified(|cur| {
            if **cur != snap {
                *cur = Arc::new(snap);
                true
            } else {
                false
            }
        });
        let c = self.counters.clone();
        self.counters_tx.send_replace(c);
    }

    /// Every route the node has, for the status API: its blocks, its pods, what BGP learned;
    /// `pending` are those felix has not programmed.
    fn routes_view(&self, pending: &BTreeSet<IpNet>) -> Vec<RouteView> {
        let d = self.desired.as_ref();
        let pools: Vec<IpNet> = self.state.ip_pools.values().map(|p| p.cidr).collect();
        let mut routes: Vec<RouteView> = Vec::new();
        let pushed = self.routes_pushed;
        let mk =
            |prefix: IpNet, kind, next_hops: Vec<IpAddr>, source_peer: Option<IpAddr>| RouteView {
                prefix,
                kind,
                next_hops,
                source_peer,
                as_path: vec![],
                installed: pushed && !pending.contains(&prefix),
                stale: false,
            };
        for b in &self.blocks {
            routes.push(mk(*b, RouteKind::LocalBlock, vec![], None));
        }
        for p in d.iter().flat_map(|d| d.local_pods.iter()) {
            let gated = !self.policy_ready.contains(&p.iface);
            for n in &p.nets {
                let mut r = mk(*n, RouteKind::Pod, vec![], None);
                r.installed &= !gated;
                routes.push(r);
            }
        }
        for (prefix, hops) in &self.learned {
            let kind = if pools.iter().any(|p| p.contains(prefix)) {
                RouteKind::RemoteBlock
            } else {
                RouteKind::Peer
            };
            let mut r = mk(*prefix, kind, hops.clone(), hops.first().copied());
            if let Some((path, stale)) = self.learned_meta.get(prefix) {
                r.as_path = path.clone();
                r.stale = *stale;
            }
            routes.push(r);
        }
        routes
    }

    fn snapshot(&self, rstat: &felix::routes::RoutesStatus) -> NodeSnapshot {
        let d = self.desired.as_ref();
        let me = d.and_then(|d| d.me.as_ref());
        let pstat = self.policy.status();
        let mut not_ready = Vec::new();
        if let Some(f) = &self.speaker_failure {
            not_ready.push(format!(
                "BGP speaker not running: {} (attempt {}, retrying in {} s)",
                f.error,
                f.attempts,
                f.retry_at
                    .saturating_duration_since(Instant::now())
                    .as_secs()
            ));
        } else if !self.bgp_synced {
            not_ready.push("BGP not synced".to_string());
        }
        let unenforced: Vec<&ResourceError> = self
            .resource_errors
            .iter()
            .filter(|e| e.is_unenforced_policy())
            .collect();
        if let Some(first) = unenforced.first() {
            not_ready.push(format!(
                "{} unsupported policy resource(s) not enforced, first: {}",
                unenforced.len(),
                first
            ));
        }
        if !self.routes_pushed || !rstat.in_sync() {
            not_ready.push(format!(
                "routes: {} of {} programmed",
                rstat.programmed, rstat.desired
            ));
        }
        if pstat.seq_received == 0 || pstat.seq_applied < pstat.seq_received {
            not_ready.push(match &pstat.last_error {
                Some(e) if pstat.seq_done >= pstat.seq_received => {
                    format!("policy not applied: {e}")
                }
                _ => "policy not applied".to_string(),
            });
        }
        let waiting = d
            .iter()
            .flat_map(|d| &d.local_pods)
            .filter(|p| !self.policy_ready.contains(&p.iface))
            .count();
        if waiting > 0 {
            not_ready.push(format!(
                "{waiting} local endpoint(s) wait for their policy to be in the kernel: no route yet"
            ));
        }
        let bgp = self.speaker.as_ref().map(|s| s.handle.status());
        let peers: Vec<PeerView> = bgp
            .iter()
            .flat_map(|s| s.peers.iter())
            .map(|p| {
                let spec = self.applied_peers.get(&p.address);
                PeerView {
                    peer_type: spec
                        .map(|s| s.peer_type)
                        .unwrap_or(crate::status::PeerType::Global),
                    name: spec.map(|s| s.name.clone()).unwrap_or_default(),
                    bgp: p.clone(),
                }
            })
            .collect();
        let routes = self.routes_view.1.clone();
        let blocks = self.block_views.clone();
        NodeSnapshot {
            node: NodeView {
                name: self.cfg.nodename.clone(),
                addresses: me
                    .iter()
                    .flat_map(|m| {
                        m.ipv4
                            .map(|n| n.to_string())
                            .into_iter()
                            .chain(m.ipv6.map(|n| n.to_string()))
                    })
                    .collect(),
                as_number: me.map(|m| m.as_number).unwrap_or(0),
                router_id: d
                    .and_then(|d| d.speaker.as_ref())
                    .map(|s| s.router_id.to_string())
                    .unwrap_or_default(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: self.started,
                ready: not_ready.is_empty(),
                live: self.live.is_live(),
                not_ready,
            },
            peers,
            routes,
            blocks,
            resource_errors: self.resource_errors.clone(),
            policy: PolicyView {
                table: self.cfg.nft_table.clone(),
                policies_compiled: pstat.compile.compiled as u32,
                rejected: pstat
                    .rejected
                    .iter()
                    .map(|e| RejectedPolicyView {
                        namespace: e.namespace.clone(),
                        name: e.name.clone(),
                        reason: format!("{}: {}", e.field, e.reason),
                    })
                    .collect(),
                rules: pstat.rules as u32,
                set_elements: pstat.set_elements as u32,
                endpoints: pstat.compile.endpoints as u32,
                last_apply_micros: pstat
                    .last_apply
                    .as_ref()
                    .map(|a| a.duration.as_micros() as u64)
                    .unwrap_or(0),
                last_apply_at: self.policy_applied_at,
            },
        }
    }
}

async fn start_speaker(spec: &SpeakerSpec) -> Result<Speaker> {
    let mut cfg = SpeakerCfg::new(spec.local_as, spec.router_id);
    cfg.listen = vec![
        SocketAddr::from(([0, 0, 0, 0], spec.listen_port)),
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, spec.listen_port)),
    ];
    cfg.cluster_id = spec.cluster_id;
    cfg.multipath = true;
    cfg.next_hop_v6 = spec.next_hop_v6;
    cfg.graceful_restart = Some(GracefulRestartCfg {
        restart_time: calc::GR_RESTART_TIME,
        restarting: false,
        // Kernel routes survive a daemon restart: peers may keep ours until our End-of-RIB.
        forwarding_preserved: true,
        stale_time: 360,
    });
    let handle = bgp::start(cfg).await?;
    info!(asn = spec.local_as, router_id = %spec.router_id, "BGP speaker started");
    Ok(Speaker {
        spec: spec.clone(),
        handle,
        started: Instant::now(),
    })
}
