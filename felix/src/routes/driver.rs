//! The route manager: one task owns the netlink sockets and the [`Reconciler`].
//!
//! [`RouteSyncer`] is the shell around the pure core: it opens a request socket and an event socket
//! (subscribed *before* the first dump, so nothing falls between dump and events), dumps links and
//! routes, feeds events to the reconciler, sets up workload interfaces as they appear, and applies
//! planned operations in batches. It can be driven directly (`set_desired` + `sync`, as the
//! benchmark does) or by [`RouteManager`], which runs it as a task:
//!
//! ```text
//! RouteManagerHandle::set_desired ─┐ one-input slot (last wins) + RoutesMsg::NewInput
//! RouteManagerHandle::resync_now ──┤
//!                                  v
//!           ┌───────────── RouteManager task ──────────────┐
//!  events ─>│ drain events -> [dump if needed] -> plan/apply │──> watch<RoutesStatus>
//!  timer ──>│ (retry due, periodic resync)                  │
//!           └───────────────────────────────────────────────┘
//! ```
//!
//! Until the first desired set arrives the manager changes nothing, so a restarted daemon never
//! deletes the routes of running pods before it knows them. Stopping (or dropping the handle)
//! leaves the routes in place for the same reason.
//!
//! Namespace: netlink sockets belong to the namespace of the thread that opens them, but `/proc/sys`
//! (workload interface sysctls) follows the thread that writes, so the task must run on a runtime
//! whose threads are all in the target namespace: the daemon's own, or a current-thread runtime on a
//! thread that entered the namespace with `setns`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::desired::{desired_routes, Rejected};
use super::nl::{self, Batch, NlSocket};
use super::reconcile::{Followup, KernelRoute, LinkInfo, ReconcileCfg, Reconciler};
use super::{RouteError, RoutesCfg, RoutesInput, RoutesStatus};
use crate::veth;

/// The outcome of one [`RouteSyncer::sync`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Route operations sent.
    pub ops: usize,
    /// Operations the kernel refused (left pending).
    pub failed: usize,
    /// Whether the kernel's routes were dumped.
    pub dumped: bool,
    /// Wall time.
    pub duration: Duration,
}

/// Sockets plus reconciler; see the module docs.
pub struct RouteSyncer {
    cfg: RoutesCfg,
    req: NlSocket,
    events: NlSocket,
    rec: Reconciler,
    have_desired: bool,
    /// The previous desired set, freed after the next sync rather than before it.
    retired: Option<BTreeMap<ipnet::IpNet, super::DesiredRoute>>,
    rejected: Vec<Rejected>,
    need_dump: bool,
    /// Workload links already set up: ifindex -> name.
    configured: HashMap<u32, String>,
    iface_errors: BTreeMap<String, String>,
    last_sync: Option<Duration>,
    last_resync: Option<Duration>,
    resyncs: u64,
    ops: u64,
}

impl RouteSyncer {
    /// Validate `cfg`, open the sockets in the calling thread's namespace, set the global sysctls
    /// if asked, and learn the kernel's links and routes. Changes no route.
    pub async fn new(cfg: RoutesCfg) -> Result<RouteSyncer, RouteError> {
        cfg.validate()?;
        let events = NlSocket::events().map_err(|e| RouteError::netlink("open event socket", e))?;
        let req = NlSocket::request().map_err(|e| RouteError::netlink("open request socket", e))?;
        if cfg.set_global_forwarding {
            for (path, value) in veth::GLOBAL_SYSCTLS {
                if let Err(e) = veth::write_sysctl(path, value) {
                    warn!(path, error = %e, "cannot set global sysctl");
                }
            }
        }
        let rec = Reconciler::new(ReconcileCfg {
            protocol: cfg.protocol,
            table: cfg.table,
            metric: cfg.metric,
            retry_min: cfg.retry_min,
            retry_max: cfg.retry_max,
        });
        let mut s = RouteSyncer {
            cfg,
            req,
            events,
            rec,
            have_desired: false,
            retired: None,
            rejected: Vec::new(),
            need_dump: true,
            configured: HashMap::new(),
            iface_errors: BTreeMap::new(),
            last_sync: None,
            last_resync: None,
            resyncs: 0,
            ops: 0,
        };
        s.dump_all().await?;
        Ok(s)
    }

    /// The configuration.
    pub fn cfg(&self) -> &RoutesCfg {
        &self.cfg
    }

    /// Take a new input; the next [`RouteSyncer::sync`] applies it. Returns the rejected parts.
    pub fn set_desired(&mut self, input: &RoutesInput) -> &[Rejected] {
        let d = desired_routes(input);
        if d.rejected != self.rejected {
            for r in &d.rejected {
                warn!(prefix = %r.prefix, source = %r.source, reason = %r.reason, "route input rejected");
            }
        }
        self.rejected = d.rejected.clone();
        self.retired = Some(self.rec.set_desired(d));
        self.have_desired = true;
        &self.rejected
    }

    /// [`RouteSyncer::set_desired`] then [`RouteSyncer::sync`]: apply one input and return when the
    /// kernel has it (or what failed is pending).
    pub async fn apply_once(&mut self, input: &RoutesInput) -> Result<SyncReport, RouteError> {
        self.set_desired(input);
        self.sync().await
    }

    /// Process queued events, dump if our view may be stale, then plan and apply until nothing is
    /// left (or only backoffs and waits). No-op until a desired set was given.
    pub async fn sync(&mut self) -> Result<SyncReport, RouteError> {
        self.sync_inner(false).await
    }

    /// [`RouteSyncer::sync`] with a fresh dump of links and routes first.
    pub async fn resync(&mut self) -> Result<SyncReport, RouteError> {
        self.sync_inner(true).await
    }

    async fn sync_inner(&mut self, force_dump: bool) -> Result<SyncReport, RouteError> {
        let t0 = Instant::now();
        let mut rep = SyncReport::default();
        self.process_events().await?;
        if force_dump || self.need_dump {
            self.dump_all().await?;
            rep.dumped = true;
        }
        if self.have_desired {
            for _round in 0..8 {
                let now = Instant::now();
                let ops = self.rec.plan(now);
                if ops.is_empty() {
                    break;
                }
                let max = self.cfg.batch_size.min(self.req.max_batch());
                let mut start = 0;
                while start < ops.len() {
                    let mut b = Batch::new(self.req.next_seq(max as u32));
                    let mut end = start;
                    while end < ops.len() && b.len() < max && b.bytes() < nl::MAX_BATCH_BYTES {
                        nl::push_route_op(&mut b, &ops[end], self.cfg.protocol, self.cfg.table);
                        end += 1;
                    }
                    let chunk = &ops[start..end];
                    start = end;
                    let results = match self.req.execute(&mut b).await {
                        Ok(r) => r,
                        Err(e) => {
                            self.need_dump = true;
                            return Err(RouteError::netlink("route batch", e));
                        }
                    };
                    for (op, r) in chunk.iter().zip(results) {
                        if let Err(e) = &r {
                            rep.failed += 1;
                            debug!(op = op.verb(), dst = %op.dst(), errno = e.errno, error = %e.message, "route op failed");
                        }
                        if self.rec.apply_result(op, r, now) == Followup::Dump {
                            self.need_dump = true;
                        }
                    }
                    // Drain the echoes of what we just did, so the event queue stays short.
                    self.process_events().await?;
                }
                rep.ops += ops.len();
                if self.need_dump {
                    self.dump_all().await?;
                    rep.dumped = true;
                }
            }
        }
        rep.duration = t0.elapsed();
        self.retired = None;
        self.ops += rep.ops as u64;
        if rep.ops > 0 || rep.dumped {
            self.last_sync = Some(rep.duration);
            if rep.failed > 0 || rep.ops > 0 {
                info!(
                    ops = rep.ops,
                    failed = rep.failed,
                    dumped = rep.dumped,
                    ms = rep.duration.as_secs_f64() * 1e3,
                    "routes synced"
                );
            }
        }
        if rep.dumped {
            self.last_resync = Some(rep.duration);
        }
        Ok(rep)
    }

    /// Dump links and routes (v4 and v6) and hand them to the reconciler; then set up any workload
    /// link not set up yet.
    async fn dump_all(&mut self) -> Result<(), RouteError> {
        // Events queued so far are older than the dump; apply them first, and whatever arrives
        // during the dump is applied on top of it afterwards (events are in kernel order).
        self.process_events().await?;
        for attempt in 0.. {
            let mut links = Vec::new();
            let mut routes: Vec<KernelRoute> = Vec::new();
            let mut bad = None;
            let mut interrupted = self
                .req
                .dump(nl::RTM_GETLINK, 0, |ty, p| {
                    if ty == nl::RTM_NEWLINK {
                        match nl::decode_link(p) {
                            Ok(l) => links.push(l),
                            Err(e) => bad = Some(e),
                        }
                    }
                })
                .await
                .map_err(|e| RouteError::netlink("dump links", e))?;
            for family in [nl::AF_INET, nl::AF_INET6] {
                interrupted |= self
                    .req
                    .dump(nl::RTM_GETROUTE, family, |ty, p| {
                        if ty == nl::RTM_NEWROUTE {
                            match nl::decode_route(p) {
                                Ok(Some(r)) => routes.push(r),
                                Ok(None) => {}
                                Err(e) => bad = Some(e),
                            }
                        }
                    })
                    .await
                    .map_err(|e| RouteError::netlink("dump routes", e))?;
            }
            if let Some(e) = bad {
                warn!(error = %e, "undecodable netlink message in dump; skipped");
            }
            if interrupted && attempt < 3 {
                continue;
            }
            self.rec.replace_links(links.iter().cloned());
            self.rec.replace_kernel_routes(routes);
            self.configured
                .retain(|i, _| links.iter().any(|l| l.index == *i));
            for l in links {
                self.maybe_configure(&l).await;
            }
            break;
        }
        self.need_dump = false;
        self.resyncs += 1;
        Ok(())
    }

    /// Apply every queued kernel event to the reconciler, without waiting.
    pub async fn process_events(&mut self) -> Result<(), RouteError> {
        let mut new_links = Vec::new();
        loop {
            let data = match self.events.try_recv() {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(105) => {
                    // ENOBUFS: the kernel dropped events for us. Only a dump tells what we missed.
                    warn!("netlink event queue overrun; full resync");
                    self.need_dump = true;
                    continue;
                }
                Err(e) => return Err(RouteError::netlink("read events", e)),
            };
            let now = Instant::now();
            for m in nl::messages(data) {
                match m.ty {
                    nl::RTM_NEWROUTE | nl::RTM_DELROUTE => match nl::decode_route(m.payload) {
                        Ok(Some(r)) if m.ty == nl::RTM_NEWROUTE => self.rec.route_added(r),
                        Ok(Some(r)) => self.rec.route_removed(&r),
                        Ok(None) => {}
                        Err(e) => {
                            warn!(error = %e, "undecodable route event; full resync");
                            self.need_dump = true;
                        }
                    },
                    nl::RTM_NEWLINK => match nl::decode_link(m.payload) {
                        Ok(l) => {
                            if self.rec.link_changed(l.clone()) == Followup::Dump {
                                self.need_dump = true;
                            }
                            new_links.push(l);
                        }
                        Err(e) => {
                            warn!(error = %e, "undecodable link event; full resync");
                            self.need_dump = true;
                        }
                    },
                    nl::RTM_DELLINK => {
                        if let Ok(l) = nl::decode_link(m.payload) {
                            self.rec.link_removed(l.index);
                            self.configured.remove(&l.index);
                        }
                    }
                    nl::RTM_NEWADDR | nl::RTM_DELADDR => self.rec.addresses_changed(now),
                    _ => {}
                }
            }
        }
        for l in new_links {
            self.maybe_configure(&l).await;
        }
        Ok(())
    }

    /// Set up the host side of a workload interface once per ifindex (and again if renamed): the
    /// sysctls of [`veth::iface_sysctls`], the MAC, then up. See [`crate::veth`] for why.
    async fn maybe_configure(&mut self, l: &LinkInfo) {
        if !self.cfg.configure_workload_ifaces
            || !l.name.starts_with(&self.cfg.workload_iface_prefix)
            || self.configured.get(&l.index) == Some(&l.name)
        {
            return;
        }
        // The link may be gone already (a later event in the same burst says so).
        if self.rec.link(&l.name).map(|x| x.index) != Some(l.index) {
            return;
        }
        if let Err((path, e)) = veth::configure_iface_sysctls(&l.name) {
            self.iface_failed(&l.name, format!("sysctl {path}"), e.to_string());
            return;
        }
        let mac = self
            .cfg
            .workload_mac
            .filter(|m| l.mac.as_slice() != m.as_slice());
        if !l.up || mac.is_some() {
            let mut b = Batch::new(self.req.next_seq(1));
            b.push(nl::RTM_SETLINK, 0, &nl::encode_link_up(l.index, mac));
            match self.req.execute(&mut b).await {
                Ok(r) => {
                    if let Some(Err(e)) = r.into_iter().next() {
                        self.iface_failed(&l.name, "set link up".into(), e.message);
                        return;
                    }
                }
                Err(e) => {
                    self.iface_failed(&l.name, "set link up".into(), e.to_string());
                    return;
                }
            }
            // Act on it now rather than when the event arrives: the pod route can go in this sync.
            let mut now_up = l.clone();
            now_up.up = true;
            if let Some(m) = mac {
                now_up.mac = m.to_vec();
            }
            let _ = self.rec.link_changed(now_up);
        }
        debug!(iface = %l.name, index = l.index, "workload interface set up");
        self.iface_errors.remove(&l.name);
        self.configured.insert(l.index, l.name.clone());
    }

    fn iface_failed(&mut self, iface: &str, what: String, message: String) {
        let e = RouteError::Iface {
            iface: iface.to_string(),
            what,
            message,
        };
        warn!(error = %e, "workload interface setup failed");
        self.iface_errors.insert(iface.to_string(), e.to_string());
    }

    /// Wait until a kernel event is queued.
    pub async fn event_ready(&self) -> Result<(), RouteError> {
        self.events
            .readable()
            .await
            .map_err(|e| RouteError::netlink("wait for events", e))
    }

    /// When a pending route is due for a retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.rec.next_retry()
    }

    /// Current status.
    pub fn status(&self) -> RoutesStatus {
        RoutesStatus {
            desired: self.rec.desired().len(),
            programmed: self.rec.ours().len(),
            pending: self.rec.pending().cloned().collect(),
            rejected: self.rejected.clone(),
            iface_errors: self
                .iface_errors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            last_sync: self.last_sync,
            last_resync: self.last_resync,
            resyncs: self.resyncs,
            ops: self.ops,
        }
    }

    /// The reconciler (read-only), for tests and diagnostics.
    pub fn reconciler(&self) -> &Reconciler {
        &self.rec
    }
}

/// Messages to the route manager task.
#[derive(Debug)]
pub enum RoutesMsg {
    /// A new complete input waits in the handle's slot. The slot holds one input: a newer one
    /// replaces it, so a burst of inputs while the task is busy costs one input's memory, not
    /// one per input (10k routes each).
    NewInput,
    /// Dump and diff now.
    Resync,
    /// Finish and exit (routes stay).
    Stop,
    /// Answered when the task takes its messages: proves it is making progress (liveness).
    Ping(tokio::sync::oneshot::Sender<()>),
}

/// Round trips through the route manager task, for liveness checks; cheap to clone.
#[derive(Clone)]
pub struct RoutesPinger(mpsc::UnboundedSender<RoutesMsg>);

impl RoutesPinger {
    /// Whether the task answered within `timeout`.
    pub async fn ping(&self, timeout: std::time::Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.0.send(RoutesMsg::Ping(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }
}

/// Starts the route manager task.
pub struct RouteManager;

impl RouteManager {
    /// Open the sockets and learn the kernel state in the calling thread's namespace, then spawn the
    /// owner task on the current tokio runtime. Nothing is programmed until the first
    /// [`RouteManagerHandle::set_desired`].
    pub async fn start(cfg: RoutesCfg) -> Result<RouteManagerHandle, RouteError> {
        let syncer = RouteSyncer::new(cfg).await?;
        Ok(Self::spawn(syncer))
    }

    /// Run an existing syncer as the owner task.
    pub fn spawn(syncer: RouteSyncer) -> RouteManagerHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(syncer.status());
        let pending = InputSlot::default();
        let task = tokio::spawn(run(syncer, rx, pending.clone(), status_tx));
        RouteManagerHandle {
            tx,
            pending,
            status: status_rx,
            task: Some(task),
        }
    }
}

/// The newest input not yet taken by the task.
#[derive(Clone, Default)]
struct InputSlot(Arc<Mutex<Option<RoutesInput>>>);

impl InputSlot {
    /// Puts `input` in, returning what it replaces.
    fn put(&self, input: RoutesInput) -> Option<RoutesInput> {
        self.lock().replace(input)
    }

    fn take(&self) -> Option<RoutesInput> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<RoutesInput>> {
        // Nothing panics while holding it; a poisoned slot still holds a whole input.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handle to the route manager task. Dropping it aborts the task (routes stay programmed).
pub struct RouteManagerHandle {
    tx: mpsc::UnboundedSender<RoutesMsg>,
    pending: InputSlot,
    status: watch::Receiver<RoutesStatus>,
    task: Option<JoinHandle<()>>,
}

impl RouteManagerHandle {
    /// Replace the whole input (callable from any thread). An input the task has not taken yet
    /// is replaced, and freed here, so inputs never pile up.
    pub fn set_desired(&self, input: RoutesInput) -> Result<(), RouteError> {
        if self.tx.is_closed() {
            return Err(RouteError::Stopped);
        }
        // If the slot held one, its NewInput is still on its way: no second message needed.
        if self.pending.put(input).is_none() {
            self.tx
                .send(RoutesMsg::NewInput)
                .map_err(|_| RouteError::Stopped)?;
        }
        Ok(())
    }

    /// Ask for a full dump and diff now.
    pub fn resync_now(&self) -> Result<(), RouteError> {
        self.tx
            .send(RoutesMsg::Resync)
            .map_err(|_| RouteError::Stopped)
    }

    /// A pinger for liveness checks.
    pub fn pinger(&self) -> RoutesPinger {
        RoutesPinger(self.tx.clone())
    }

    /// The status after the last sync.
    pub fn status(&self) -> RoutesStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status update.
    pub fn watch_status(&self) -> watch::Receiver<RoutesStatus> {
        self.status.clone()
    }

    /// Stop the task and wait for it. Programmed routes stay.
    pub async fn stop(mut self) {
        let _ = self.tx.send(RoutesMsg::Stop);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RouteManagerHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn run(
    mut s: RouteSyncer,
    mut rx: mpsc::UnboundedReceiver<RoutesMsg>,
    pending: InputSlot,
    status: watch::Sender<RoutesStatus>,
) {
    let interval = s.cfg.resync_interval;
    let mut next_resync = interval.map(|d| Instant::now() + d);
    let mut error_backoff: Option<(Instant, Duration)> = None;
    let far = Duration::from_secs(3600);
    let mut retired_input: Option<RoutesInput> = None;
    loop {
        let mut force = false;
        let mut stop = false;
        let backing_off = error_backoff.filter(|(t, _)| *t > Instant::now());
        let wake = [s.next_retry(), next_resync, error_backoff.map(|(t, _)| t)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            biased;
            msg = rx.recv() => {
                let mut latest: Option<RoutesInput> = None;
                let mut handle = |m: Option<RoutesMsg>| match m {
                    None | Some(RoutesMsg::Stop) => stop = true,
                    Some(RoutesMsg::Resync) => force = true,
                    Some(RoutesMsg::Ping(tx)) => {
                        let _ = tx.send(());
                    }
                    // None: an earlier NewInput already took this one.
                    Some(RoutesMsg::NewInput) => {
                        if let Some(i) = pending.take() {
                            latest = Some(i);
                        }
                    }
                };
                handle(msg);
                while let Ok(m) = rx.try_recv() {
                    handle(Some(m));
                }
                if let Some(i) = &latest {
                    s.set_desired(i);
                }
                // Freed after the sync below, off the input-to-kernel path.
                retired_input = latest;
            }
            // While backing off after a failed sync, queued events would wake us in a loop: the
            // timer alone ends the backoff, and the sync after it drains them.
            r = s.event_ready(), if backing_off.is_none() => {
                if let Err(e) = r {
                    warn!(error = %e, "event socket");
                    error_backoff.get_or_insert((Instant::now() + s.cfg.retry_min, s.cfg.retry_min));
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        if stop {
            break;
        }
        let now = Instant::now();
        if next_resync.is_some_and(|t| t <= now) {
            force = true;
        }
        if force {
            next_resync = interval.map(|d| now + d);
        }
        if error_backoff.is_some_and(|(t, _)| t > now) {
            continue;
        }
        match s.sync_inner(force).await {
            Ok(_) => error_backoff = None,
            Err(e) => {
                let delay = error_backoff
                    .map(|(_, d)| (d * 2).min(s.cfg.retry_max))
                    .unwrap_or(s.cfg.retry_min);
                warn!(error = %e, retry_ms = delay.as_millis() as u64, "route sync failed");
                error_backoff = Some((Instant::now() + delay, delay));
            }
        }
        status.send_replace(s.status());
        drop(retired_input.take());
    }
    status.send_replace(s.status());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(n: u8) -> RoutesInput {
        RoutesInput {
            local_blocks: vec![format!("10.65.{n}.0/26").parse().unwrap()],
            ..RoutesInput::default()
        }
    }

    /// A burst of inputs while the task is busy leaves one input waiting, the newest, and one
    /// message per take: inputs never pile up.
    #[test]
    fn input_slot_keeps_only_the_newest() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_status_tx, status) = watch::channel(RoutesStatus::default());
        let h = RouteManagerHandle {
            tx,
            pending: InputSlot::default(),
            status,
            task: None,
        };
        for n in 0..100 {
            h.set_desired(input(n)).unwrap();
        }
        assert!(matches!(rx.try_recv(), Ok(RoutesMsg::NewInput)));
        assert!(rx.try_recv().is_err(), "one message for the whole burst");
        assert_eq!(h.pending.take(), Some(input(99)));
        assert_eq!(h.pending.take(), None);
        // Taken: the next input needs a message of its own.
        h.set_desired(input(1)).unwrap();
        assert!(matches!(rx.try_recv(), Ok(RoutesMsg::NewInput)));
        drop(rx);
        assert_eq!(h.set_desired(input(2)), Err(RouteError::Stopped));
    }
}
