//! The node daemon: one owner task wiring datastore, IPAM, BGP and felix together.
//!
//! ```text
//!  FileDatastore ──watch<Snapshot>──┐      IpamWatch ──watch<IpamView>── (inotify on DIR/ipam)
//!                                   v        v
//!                         ┌───────── daemon task ─────────┐
//!                         │ calc::desired(state, blocks)  │──plan::bgp_plan──▶ bgp::SpeakerHandle
//!                         │ learned routes (from BGP) ◀───│◀── RouteChanges / status watch
//!                         │ calc::routes_input + gate     │──RoutesInput──▶ felix RouteManager
//!                         │ policy input                  │──PolicyInput──▶ felix policy manager
//!                         │ gate ◀────────────────────────│◀── policy status watch
//!                         └──────────────┬────────────────┘
//!                                        └──watch<NodeSnapshot>──▶ gRPC, /readiness, /metrics
//! ```
//! Modules: [`plan`] (peer and prefix reconcile steps, pure), [`gate`] (policy before
//! reachability, pure), [`release`] (when another node's blocks may be freed, pure), `speaker`
//! (starting the speaker, executing plans, the sync gate), `view` (the status snapshot),
//! [`live`] (liveness of every owner loop), [`health`] (HTTP endpoints).
//!
//! Order on start (and restart): the speaker originates our blocks before any peer is added, so
//! the first End-of-RIB we send follows a complete table; felix gets its first route input only
//! once BGP has synced (every peer Established with its End-of-RIB in, or `bgp_sync_timeout`) and
//! the first policy input is in the kernel, so a restarted daemon never removes remote-block
//! routes it simply has not relearned yet, nor pod routes whose rules it has not re-applied. On
//! SIGTERM the sessions close without NOTIFICATION (graceful restart: peers keep our routes) and
//! kernel routes and the nftables table stay as they are.

pub mod cni;
mod gate;
pub mod gc;
pub mod health;
mod ipam;
pub mod live;
pub mod plan;
pub mod release;
mod speaker;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::datastore::DatastoreError;
use crate::ipam::IpamError;
use bgp::SpeakerHandle;
use felix::policy::{PolicyCfg, PolicyHandle};
use felix::routes::{RouteManager, RouteManagerHandle, RoutesCfg};
use ipnet::IpNet;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::calc::{self, Desired};
use crate::datastore::kubernetes::{self, KubeCfg, KubeDatastore};
use crate::datastore::{ClusterState, Datastore, FileDatastore, ResourceError, Snapshot};
use crate::ipam::watch::IpamView;
use crate::status::{BlockView, NodeSnapshot, RouteView};
use ipam::NodeIpam;
use speaker::{Speaker, SpeakerFailure, SpeakerRx};
use view::RoutesViewKey;

/// Why the daemon could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error("IPAM state under {dir}: {source}")]
    Ipam {
        dir: PathBuf,
        #[source]
        source: IpamError,
    },
    #[error("starting the route manager: {0}")]
    Routes(#[from] felix::routes::RouteError),
    #[error("starting the policy manager: {0}")]
    Policy(#[from] felix::policy::PolicyError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the natOutgoing table's owner: {0}")]
    Nat(std::io::Error),
    #[error("the CNI plugin socket: {0}")]
    CniSocket(crate::grpc::GrpcError),
    #[error("the {0} stopped")]
    Stopped(&'static str),
}

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
    /// How long an allocation in this node's blocks must have no Pod before it is released
    /// (see [`gc`]).
    pub ipam_gc_grace: Duration,
    /// Route protocol number marking felix's routes.
    pub route_protocol: u8,
    /// nftables table (family inet) for policy.
    pub nft_table: String,
    /// Longest wait for peers' End-of-RIB before felix gets its first route input.
    pub bgp_sync_timeout: Duration,
    /// What traffic from local pods to the node itself meets after the pod's egress policy
    /// (Calico's `defaultEndpointToHostAction`).
    pub endpoint_to_host: felix::policy::EndpointToHostAction,
    /// Where the CNI plugin asks for pod addresses (see [`cni`]); `None`: not served.
    pub cni_socket: Option<PathBuf>,
}

impl DaemonCfg {
    pub fn new(nodename: &str, datastore: DatastoreKind) -> DaemonCfg {
        DaemonCfg {
            nodename: nodename.to_string(),
            datastore,
            health_addr: SocketAddr::from(([127, 0, 0, 1], 9099)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9091)),
            node_release_grace: Duration::from_secs(60),
            ipam_gc_grace: Duration::from_secs(60),
            route_protocol: felix::routes::DEFAULT_ROUTE_PROTOCOL,
            nft_table: "calico-rs".into(),
            bgp_sync_timeout: Duration::from_secs(10),
            endpoint_to_host: felix::policy::EndpointToHostAction::Accept,
            cni_socket: None,
        }
    }
}

/// Counters for /metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub resource_errors: u64,
    pub recomputes: u64,
    pub route_inputs: u64,
    pub policy_inputs: u64,
    pub last_recompute: Duration,
    /// What the natOutgoing table's owner has done (read at each publish).
    pub nat: felix::nat::NatStatus,
    /// What the CNI plugin's socket served (`None`: not served).
    pub cni: Option<cni::CniCounts>,
}

struct Daemon {
    cfg: DaemonCfg,
    ipam: Arc<dyn NodeIpam>,
    state: ClusterState,
    /// The datastore's current errors (rejected documents, resources kept at their last good
    /// version, unsupported kinds).
    resource_errors: Vec<ResourceError>,
    /// Why the datastore's view may be behind ([`Snapshot::not_in_sync`]).
    datastore_behind: Option<String>,
    blocks: Vec<IpNet>,
    /// IPAM's blocks as the watch last reported them.
    ipam_rx: watch::Receiver<Arc<IpamView>>,
    ipam_view: Arc<IpamView>,
    /// Every IPAM block with its usage, as of the last refresh (for status).
    block_views: Vec<BlockView>,
    /// The desired state of the last recompute; its `policy` was moved to felix (empty here).
    desired: Option<Desired>,
    /// Fingerprint of the policy input last sent to felix.
    policy_sent: Option<u128>,
    speaker: Option<Speaker>,
    /// Set while the speaker the datastore asks for cannot be started (retried with backoff).
    speaker_failure: Option<SpeakerFailure>,
    rx: SpeakerRx,
    /// What the speaker has been given (see [`plan`]).
    applied: plan::BgpApplied,
    /// Best routes learned from peers: prefix -> ECMP next hops.
    learned: BTreeMap<IpNet, Vec<IpAddr>>,
    /// AS path and graceful-restart staleness of each learned route (for the status API).
    learned_meta: BTreeMap<IpNet, (Vec<u32>, bool)>,
    routes: RouteManagerHandle,
    routes_pushed: bool,
    policy: PolicyHandle,
    /// The natOutgoing table's owner, and the spec last sent to it.
    nat: felix::nat::NatHandle,
    nat_sent: Option<felix::nat::NatSpec>,
    /// The CNI plugin's socket, when served.
    cni: Option<cni::CniHandle>,
    /// Which local endpoints may have routes (see [`gate`]).
    gate: gate::PolicyGate,
    bgp_synced: bool,
    /// When the sync gate opens even without every End-of-RIB.
    sync_deadline: Option<Instant>,
    /// Which other nodes were deleted, and since when (see [`release`]).
    release: release::ReleaseTracker,
    /// Allocations of this node's blocks that no Pod has, and since when (see [`gc`]).
    leaks: gc::LeakTracker,
    started: SystemTime,
    status: watch::Sender<Arc<NodeSnapshot>>,
    /// Progress of every owner loop (see [`live`]).
    live: Arc<live::Liveness>,
    /// The running speaker, for the watchdog's pings.
    speaker_watch: watch::Sender<Option<SpeakerHandle>>,
    /// The routes part of the status, rebuilt only when what it shows changed (see
    /// `view`): every event publishes a snapshot, and 10k routes each time would cost
    /// milliseconds and megabytes of churn per BGP batch or peer state change.
    routes_view: (Option<RoutesViewKey>, Arc<Vec<RouteView>>),
    /// Bumped whenever pods, blocks, pools or learned routes may have changed.
    routes_gen: u64,
    counters: Counters,
    counters_tx: watch::Sender<Counters>,
}

/// What woke the loop, and what it asks for.
#[derive(Default)]
struct Wake {
    recompute: bool,
    routes_dirty: bool,
    check_sync: bool,
}

/// Run the daemon until `shutdown` resolves. Kernel state is left in place on return.
pub async fn run(
    cfg: DaemonCfg,
    status: watch::Sender<Arc<NodeSnapshot>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let (mut d, ds) = Daemon::start(cfg, status).await?;
    let mut snaps = ds.watch();
    snaps.borrow_and_update();
    // The first pass: a node without peers is synced at once.
    d.settle(Wake {
        recompute: true,
        routes_dirty: true,
        check_sync: true,
    })
    .await;
    let mut policy_rx = d.policy.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let wedge = live::test_wedge();
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
        let sync_at = d.sync_deadline.filter(|_| !d.bgp_synced);
        let mut w = Wake::default();
        tokio::select! {
            _ = &mut shutdown => break,
            r = snaps.changed() => {
                if r.is_err() {
                    return Err(DaemonError::Stopped("datastore watcher"));
                }
                let s = snaps.borrow_and_update().clone();
                d.datastore_changed(&s);
                w.recompute = true;
            }
            r = policy_rx.changed() => {
                if r.is_err() {
                    return Err(DaemonError::Stopped("policy manager"));
                }
                let st = policy_rx.borrow_and_update().clone();
                w.routes_dirty = d.gate.progress(&st, SystemTime::now());
            }
            r = d.ipam_rx.changed() => {
                if r.is_err() {
                    return Err(DaemonError::Stopped("IPAM watcher"));
                }
                w.recompute = d.refresh_blocks();
            }
            _ = tick.tick() => {
                w.recompute = d.release_deleted_nodes();
                d.collect_leaked_addresses();
                if d.speaker_failure.as_ref().is_some_and(|f| Instant::now() >= f.retry_at) {
                    w.recompute = true;
                }
            }
            r = recv(&mut d.rx.routes) => {
                w.routes_dirty = true;
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
            // Only while syncing: afterwards route and peer events are what the status follows.
            _ = changed(&mut d.rx.status), if !d.bgp_synced => w.check_sync = true,
            _ = sleep_until(sync_at) => w.check_sync = true,
        }
        d.settle(w).await;
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
    ds: Arc<dyn Datastore>,
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

async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return;
        }
    }
    // A closed channel (the speaker stopped) or none: nothing more will come.
    std::future::pending().await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The datastore backend, the IPAM store beside it, and the Kubernetes client when there is one.
async fn open_datastore(
    kind: &DatastoreKind,
) -> Result<(Arc<dyn Datastore>, Arc<dyn NodeIpam>, Option<kube::Client>), DaemonError> {
    match kind {
        DatastoreKind::File(dir) => {
            let ds = Arc::new(FileDatastore::open(dir)?);
            let ipam = ipam::FileIpam::open(dir).map_err(|source| DaemonError::Ipam {
                dir: dir.clone(),
                source,
            })?;
            Ok((ds, Arc::new(ipam), None))
        }
        DatastoreKind::Kubernetes => {
            let cfg = KubeCfg::from_env();
            let client = kubernetes::client(&cfg).await?;
            let ds = Arc::new(KubeDatastore::start_with(client.clone(), cfg).await?);
            let ipam = ipam::KubeIpam::start(client.clone());
            Ok((ds, Arc::new(ipam), Some(client)))
        }
    }
}

impl Daemon {
    /// Opens the datastore, IPAM, the route and policy managers, health and the watchdog.
    async fn start(
        cfg: DaemonCfg,
        status: watch::Sender<Arc<NodeSnapshot>>,
    ) -> Result<(Daemon, Arc<dyn Datastore>), DaemonError> {
        let (ds, ipam, kube) = open_datastore(&cfg.datastore).await?;
        let cni = match &cfg.cni_socket {
            Some(path) => Some(
                cni::spawn(path, &cfg.nodename, ipam.clone(), ds.watch(), kube)
                    .map_err(DaemonError::CniSocket)?,
            ),
            None => None,
        };
        let live = Arc::new(live::Liveness::new(Instant::now()));
        let routes = RouteManager::start(RoutesCfg {
            protocol: cfg.route_protocol,
            ..RoutesCfg::default()
        })
        .await?;
        let policy = felix::policy::spawn(PolicyCfg {
            table: cfg.nft_table.clone(),
            endpoint_to_host: cfg.endpoint_to_host,
            ..PolicyCfg::default()
        })?;
        let nat = felix::nat::spawn(felix::nat::NatCfg {
            table: format!("{}-nat", cfg.nft_table),
            ..felix::nat::NatCfg::default()
        })
        .map_err(DaemonError::Nat)?;
        let (counters_tx, counters_rx) = watch::channel(Counters::default());
        if cfg.health_addr.port() != 0 || cfg.metrics_addr.port() != 0 {
            let (h, m) = (cfg.health_addr, cfg.metrics_addr);
            health::spawn(h, m, status.subscribe(), counters_rx, live.clone()).await?;
        }
        let (speaker_watch, speaker_rx) = watch::channel(None);
        let pingers = (routes.pinger(), policy.pinger());
        tokio::spawn(watchdog(
            live.clone(),
            ds.clone(),
            pingers.0,
            pingers.1,
            speaker_rx,
        ));
        let first = ds.watch().borrow().clone();
        let mut d = Daemon {
            cfg,
            ipam_rx: ipam.subscribe(),
            ipam,
            state: first.state.clone(),
            resource_errors: first.errors.clone(),
            datastore_behind: first.not_in_sync.clone(),
            blocks: vec![],
            ipam_view: Arc::default(),
            block_views: vec![],
            desired: None,
            policy_sent: None,
            speaker: None,
            speaker_failure: None,
            rx: SpeakerRx::default(),
            applied: plan::BgpApplied::default(),
            learned: BTreeMap::new(),
            learned_meta: BTreeMap::new(),
            routes,
            routes_pushed: false,
            policy,
            nat,
            nat_sent: None,
            cni,
            gate: gate::PolicyGate::default(),
            bgp_synced: false,
            sync_deadline: None,
            release: release::ReleaseTracker::default(),
            leaks: gc::LeakTracker::default(),
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
        Ok((d, ds))
    }

    /// A new datastore snapshot: its state, its errors (new ones counted).
    fn datastore_changed(&mut self, s: &Snapshot) {
        self.state = s.state.clone();
        self.release
            .observe(self.state.nodes.keys(), Instant::now());
        let new = s
            .errors
            .iter()
            .filter(|e| e.is_failure() && !self.resource_errors.contains(e))
            .count();
        self.counters.resource_errors += new as u64;
        self.resource_errors = s.errors.clone();
        if self.datastore_behind != s.not_in_sync {
            match &s.not_in_sync {
                Some(why) => warn!(%why, "datastore not in sync: keeping what is programmed"),
                None => info!("datastore in sync"),
            }
            self.datastore_behind = s.not_in_sync.clone();
        }
    }

    /// After any wake-up: recompute, re-check the sync gate, push routes, publish.
    async fn settle(&mut self, w: Wake) {
        let mut routes_dirty = w.routes_dirty;
        if w.recompute {
            self.recompute().await;
            routes_dirty = true;
        }
        if (w.check_sync || w.recompute) && !self.bgp_synced && self.check_bgp_synced() {
            info!("BGP synced: programming routes");
            routes_dirty = true;
        }
        if routes_dirty && self.bgp_synced && self.gate.is_open() {
            self.push_routes();
        }
        if routes_dirty {
            self.routes_gen += 1;
        }
        self.publish();
    }

    /// Re-read this node's affine blocks; true when they changed.
    fn refresh_blocks(&mut self) -> bool {
        let v = self.ipam_rx.borrow_and_update().clone();
        for e in v
            .errors
            .iter()
            .filter(|e| !self.ipam_view.errors.contains(e))
        {
            warn!(error = %e, "reading IPAM blocks");
        }
        let mut mine: Vec<IpNet> = v
            .blocks
            .iter()
            .filter(|b| b.affinity.as_deref() == Some(self.cfg.nodename.as_str()))
            .map(|b| b.cidr)
            .collect();
        mine.sort();
        self.block_views = v
            .blocks
            .iter()
            .map(|b| BlockView {
                cidr: b.cidr,
                affinity: b.affinity.clone(),
                used: b.used as u32,
                free: b.free as u32,
                pool: b.pool.clone().unwrap_or_default(),
            })
            .collect();
        self.ipam_view = v;
        if mine != self.blocks {
            self.blocks = mine;
            return true;
        }
        false
    }

    /// Free the blocks of other nodes that were deleted and stayed deleted for the grace period
    /// (see [`release`]), except blocks that hold an address of a pod that exists. Any node may
    /// do it: the IPAM lock makes it safe and it is idempotent.
    fn release_deleted_nodes(&mut self) -> bool {
        let owners: BTreeSet<String> = self
            .ipam_view
            .blocks
            .iter()
            .filter_map(|b| b.affinity.clone())
            .collect();
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

    /// Releases the allocations of this node's blocks that no existing Pod has had for the
    /// grace period (see [`gc`]); never while the datastore's view may be behind.
    fn collect_leaked_addresses(&mut self) {
        let mut allocations: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for b in self
            .ipam_view
            .blocks
            .iter()
            .filter(|b| b.affinity.as_deref() == Some(self.cfg.nodename.as_str()))
        {
            for (ip, h) in &b.allocations {
                allocations.entry(h.clone()).or_default().push(*ip);
            }
        }
        let pod_ips: BTreeSet<IpAddr> = self
            .state
            .pods
            .values()
            .flat_map(|p| p.pod_ips.iter().copied())
            .collect();
        let now = Instant::now();
        let in_sync = self.datastore_behind.is_none() && self.ipam_view.errors.is_empty();
        self.leaks.observe(&allocations, &pod_ips, in_sync, now);
        for handle in self.leaks.due(self.cfg.ipam_gc_grace, now) {
            match self.ipam.release(&handle) {
                Ok(ips) => {
                    info!(%handle, addresses = ?ips, "released a leaked allocation: no Pod has had its addresses for the grace period");
                    self.leaks.forget(&handle);
                }
                Err(e) => warn!(%handle, error = %e, "releasing a leaked allocation"),
            }
        }
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
                d.errors.push(calc::CalcError::new(
                    "Node",
                    self.cfg.nodename.as_str(),
                    None,
                    "not in the datastore; BGP keeps its last configuration until it is back",
                ));
            }
        }
        if self.desired.as_ref().map(|o| &o.errors) != Some(&d.errors) {
            for e in &d.errors {
                warn!(error = %e, "configuration problem");
            }
        }
        self.apply_bgp(&d).await;
        // The policy input goes to felix by move; what was sent is remembered by fingerprint, not
        // by a copy (it lists every pod and policy of the cluster).
        let print = fingerprint(&d.policy);
        if self.policy_sent != Some(print) {
            let ifaces: BTreeSet<String> =
                d.policy.endpoints.iter().map(|e| e.iface.clone()).collect();
            let seq = self.policy.update(std::mem::take(&mut d.policy));
            self.gate.sent(seq, ifaces);
            self.policy_sent = Some(print);
            self.counters.policy_inputs += 1;
        }
        let nat = nat_spec(&self.state);
        if self.nat_sent.as_ref() != Some(&nat) {
            self.nat.set(nat.clone());
            self.nat_sent = Some(nat);
        }
        self.desired = Some(d);
        self.counters.recomputes += 1;
        self.counters.last_recompute = t.elapsed();
        debug!(took = ?self.counters.last_recompute, "recomputed the desired state");
    }

    /// felix's route input: every route, but pods only once their policy is in the kernel.
    fn push_routes(&mut self) {
        let Some(d) = &self.desired else { return };
        let mut input = calc::routes_input(d, &self.learned);
        input.workloads.retain(|w| self.gate.is_ready(&w.iface));
        if let Err(e) = self.routes.set_desired(input) {
            warn!(error = %e, "route manager");
        }
        self.routes_pushed = true;
        self.counters.route_inputs += 1;
    }
}

/// The natOutgoing table for `state`'s IPPools: every pool's CIDR (disabled ones too: their
/// addresses may still be in use), and those of the enabled pools with `natOutgoing`.
fn nat_spec(state: &ClusterState) -> felix::nat::NatSpec {
    let pools = state.ip_pools.values();
    felix::nat::NatSpec {
        all_pools: pools.clone().map(|p| p.cidr).collect(),
        masq_pools: pools
            .filter(|p| p.nat_outgoing && !p.disabled)
            .map(|p| p.cidr)
            .collect(),
    }
}

/// A 128-bit fingerprint of `v`: two SipHash sums under keys drawn at random once per process, so
/// two different inputs share one with probability 2^-128 and no input can be made to collide.
fn fingerprint<T: std::hash::Hash>(v: &T) -> u128 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<[std::hash::RandomState; 2]> = std::sync::OnceLock::new();
    let [a, b] =
        KEYS.get_or_init(|| [std::hash::RandomState::new(), std::hash::RandomState::new()]);
    (u128::from(a.hash_one(v)) << 64) | u128::from(b.hash_one(v))
}
