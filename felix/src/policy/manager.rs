//! The policy owner: one thread that owns the driver, the monitor and the last input.
//!
//! ```text
//!   PolicyHandle::update(input) ──PolicyMsg::Update──┐
//!   PolicyHandle::resync()      ──PolicyMsg::Resync──┤
//!   nf_tables event reader      ──PolicyMsg::Drift───┤──> owner thread (this module)
//!                                                    │      drain + coalesce: last Update wins
//!                                                    │      compile -> NftDriver::apply
//!   PolicyHandle::status / wait_applied <── status ──┘      probe timer, retry backoff
//! ```
//!
//! The thread is started by [`spawn`] from the caller's thread and so lives in the caller's
//! network namespace, as do the `nft` processes it runs. Bursts of updates coalesce: the owner
//! drains its queue before compiling and only the newest input is compiled, by an incremental
//! [`Compiler`] (same result as a fresh compile, but a pod change recomputes only the selector sets
//! of its namespace). A failed apply is
//! retried with exponential backoff (100 ms doubling to [`PolicyCfg::max_backoff`]) — never in a
//! tight loop. Drift (monitor event, failed probe, monitor restart) forgets the driver's model and
//! re-applies the whole table after a 20 ms debounce.
//!
//! Status is published after every step both on a `tokio::sync::watch` channel (async callers)
//! and under a mutex + condvar (blocking callers such as tests and benchmarks).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::compile::CompileStats;
use super::driver::{ApplyKind, ApplyReport, NftDriver};
use super::error::{InputError, PolicyError};
use super::incremental::Compiler;
use super::ir::Ruleset;
use super::model::PolicyInput;
use super::monitor::{EventMonitor, MonitorEvent};
use super::PolicyCfg;

/// Messages to the owner thread.
#[derive(Debug)]
pub enum PolicyMsg {
    /// New desired input, numbered by the handle.
    Update(u64, Box<PolicyInput>),
    /// Our table was changed by someone else.
    Drift(String),
    /// Change notifications were lost; a foreign change may be among them.
    EventsLost,
    /// Replace the table whole now.
    Resync,
    /// Stop the owner.
    Shutdown,
    /// Answered when the owner takes its messages: proves it is making progress (liveness).
    Ping(tokio::sync::oneshot::Sender<()>),
}

/// Round trips through the policy owner thread, for liveness checks; cheap to clone.
#[derive(Clone)]
pub struct PolicyPinger(std::sync::mpsc::Sender<PolicyMsg>);

impl PolicyPinger {
    /// Whether the owner answered within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.0.send(PolicyMsg::Ping(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }
}

/// What the node daemon (and `calicoctl-rs`) can see of the policy engine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyStatus {
    /// Number of the newest input received.
    pub seq_received: u64,
    /// Number of the newest input processed (applied, or failed: see `last_error`).
    pub seq_done: u64,
    /// Number of the newest input whose ruleset is in the kernel.
    pub seq_applied: u64,
    /// Compile counts of the newest input (policies, compiled, rejected, endpoints...).
    pub compile: CompileStats,
    /// Rejected inputs with their reasons (`NetworkPolicy ns/name: field: reason`).
    pub rejected: Vec<InputError>,
    /// Chains, rules, sets, set elements and dispatch-map elements in the kernel.
    pub chains: usize,
    /// See `chains`.
    pub rules: usize,
    /// See `chains`.
    pub sets: usize,
    /// See `chains`.
    pub set_elements: usize,
    /// See `chains`.
    pub map_elements: usize,
    /// Time the last compile took.
    pub last_compile: Duration,
    /// The last apply that ran `nft` (or found nothing to do).
    pub last_apply: Option<ApplyReport>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
    /// Number of full re-applies caused by drift.
    pub drift_repairs: u64,
    /// Times change notifications were lost (event socket overflow).
    pub events_lost: u64,
    /// Applies by kind, since start.
    pub full_applies: u64,
    /// See `full_applies`.
    pub incremental_applies: u64,
}

struct Shared {
    status: Mutex<PolicyStatus>,
    cond: Condvar,
    watch: watch::Sender<PolicyStatus>,
}

impl Shared {
    fn publish(&self, s: &PolicyStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s.clone();
        self.cond.notify_all();
        self.watch.send_replace(s.clone());
    }
}

/// Handle to a running policy owner. Dropping it stops the owner (the table stays in place, so
/// pods stay protected across a restart; the next owner replaces it on its first apply).
pub struct PolicyHandle {
    tx: mpsc::Sender<PolicyMsg>,
    seq: AtomicU64,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("seq", &self.seq)
            .finish()
    }
}

/// Start the policy owner thread in the calling thread's network namespace. Nothing is applied
/// until the first [`PolicyHandle::update`].
pub fn spawn(cfg: PolicyCfg) -> Result<PolicyHandle, PolicyError> {
    cfg.validate()?;
    let (tx, rx) = mpsc::channel();
    let (watch_tx, _) = watch::channel(PolicyStatus::default());
    let shared = Arc::new(Shared {
        status: Mutex::new(PolicyStatus::default()),
        cond: Condvar::new(),
        watch: watch_tx,
    });
    let owner = Owner {
        driver: NftDriver::new(cfg.clone()),
        cfg,
        tx: tx.clone(),
        shared: shared.clone(),
        status: PolicyStatus::default(),
        monitor: None,
        monitor_gap: false,
        last_lost_repair: None,
        compiled: None,
        compiler: Compiler::new(),
    };
    let thread = std::thread::Builder::new()
        .name("felix-policy".into())
        .spawn(move || owner.run(rx))
        .map_err(|source| PolicyError::Spawn {
            cmd: "policy owner thread".into(),
            source,
        })?;
    Ok(PolicyHandle {
        tx,
        seq: AtomicU64::new(0),
        shared,
        thread: Some(thread),
    })
}

impl PolicyHandle {
    /// Queue a new input; returns its sequence number (see [`PolicyStatus::seq_applied`]).
    pub fn update(&self, input: PolicyInput) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.tx.send(PolicyMsg::Update(seq, Box::new(input)));
        seq
    }

    /// A pinger for liveness checks.
    pub fn pinger(&self) -> PolicyPinger {
        PolicyPinger(self.tx.clone())
    }

    /// Replace the table whole (e.g. on operator request).
    pub fn resync(&self) {
        let _ = self.tx.send(PolicyMsg::Resync);
    }

    /// The current status.
    pub fn status(&self) -> PolicyStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A watch channel of the status, for async callers.
    pub fn subscribe(&self) -> watch::Receiver<PolicyStatus> {
        self.shared.watch.subscribe()
    }

    /// Block until input `seq` (or a newer one) has been processed. Returns the status if it is in
    /// the kernel, the apply error if it failed.
    pub fn wait_applied(&self, seq: u64, timeout: Duration) -> Result<PolicyStatus, PolicyError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.seq_applied >= seq {
                return Ok(st.clone());
            }
            if st.seq_done >= seq {
                return Err(PolicyError::Apply(
                    st.last_error.clone().unwrap_or_else(|| "unknown".into()),
                ));
            }
            let now = Instant::now();
            if now >= deadline || self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return Err(PolicyError::Timeout(format!(
                    "input {seq} not applied after {timeout:?}"
                )));
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// [`PolicyHandle::update`] then [`PolicyHandle::wait_applied`].
    pub fn apply_blocking(
        &self,
        input: PolicyInput,
        timeout: Duration,
    ) -> Result<PolicyStatus, PolicyError> {
        let seq = self.update(input);
        self.wait_applied(seq, timeout)
    }

    /// Block until `f(status)` holds (e.g. "one more drift repair"), or time out.
    pub fn wait_for(
        &self,
        timeout: Duration,
        f: impl Fn(&PolicyStatus) -> bool,
    ) -> Result<PolicyStatus, PolicyError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if f(&st) {
                return Ok(st.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PolicyError::Timeout("status condition".into()));
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for PolicyHandle {
    fn drop(&mut self) {
        let _ = self.tx.send(PolicyMsg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const DRIFT_DEBOUNCE: Duration = Duration::from_millis(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LOST_REPAIR_INTERVAL: Duration = Duration::from_secs(10);

struct Owner {
    cfg: PolicyCfg,
    driver: NftDriver,
    tx: mpsc::Sender<PolicyMsg>,
    shared: Arc<Shared>,
    status: PolicyStatus,
    monitor: Option<EventMonitor>,
    /// Set when the reader could not be resubscribed after a full apply: events may be missed
    /// until it is back, which then counts as a restart.
    monitor_gap: bool,
    /// When notifications were last lost and answered with a repair (rate limit).
    last_lost_repair: Option<Instant>,
    /// Sequence number and ruleset of the newest compiled input.
    compiled: Option<(u64, Ruleset)>,
    /// Keeps the last input and selector-set members between updates.
    compiler: Compiler,
}

/// The owner loop's timers and flags, carried from one wake-up to the next.
struct Schedule {
    /// The newest input received and not yet compiled (older ones are dropped: last wins).
    pending: Option<(u64, Box<PolicyInput>)>,
    /// When to re-apply the whole table because of drift (debounced).
    drift_at: Option<Instant>,
    /// When a failed apply may be retried.
    retry_at: Option<Instant>,
    /// Wait after the next failure.
    backoff: Duration,
    /// When to probe the table (and check the monitor) next.
    next_probe: Instant,
    /// The compiled ruleset is not (known to be) in the kernel.
    dirty: bool,
}

impl Schedule {
    fn new(now: Instant, probe_interval: Duration) -> Schedule {
        Schedule {
            pending: None,
            drift_at: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            next_probe: now + probe_interval,
            dirty: false,
        }
    }

    /// The latest time to wake up at: the first of the next probe (if probing), drift repair and
    /// retry, and at most an hour from `now`.
    fn wake(&self, now: Instant, probe_interval: Duration) -> Instant {
        let mut wake = now + Duration::from_secs(3600);
        if !probe_interval.is_zero() {
            wake = wake.min(self.next_probe);
        }
        for t in [self.drift_at, self.retry_at].into_iter().flatten() {
            wake = wake.min(t);
        }
        wake
    }

    /// Schedule a drift repair unless one is scheduled already (debounce: a burst of foreign
    /// changes costs one re-apply).
    fn drift(&mut self) {
        self.drift_at.get_or_insert(Instant::now() + DRIFT_DEBOUNCE);
    }

    /// Clear the retry wait: the next apply may run at once, and its failure starts the backoff
    /// over.
    fn reset_retry(&mut self) {
        self.retry_at = None;
        self.backoff = FIRST_BACKOFF;
    }
}

/// Every message queued now, waiting until `wake` for the first one; `None` once every sender is
/// gone. Taking them all before acting is what coalesces a burst into one compile and apply.
fn take_msgs(
    rx: &mpsc::Receiver<PolicyMsg>,
    now: Instant,
    wake: Instant,
) -> Option<Vec<PolicyMsg>> {
    let mut msgs = Vec::new();
    match rx.recv_timeout(wake.saturating_duration_since(now)) {
        Ok(m) => msgs.push(m),
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => return None,
    }
    msgs.extend(rx.try_iter());
    Some(msgs)
}

impl Owner {
    fn run(mut self, rx: mpsc::Receiver<PolicyMsg>) {
        let _span = tracing::info_span!("policy", table = %self.cfg.table).entered();
        self.ensure_monitor();
        let mut s = Schedule::new(Instant::now(), self.cfg.probe_interval);
        loop {
            let now = Instant::now();
            let Some(msgs) = take_msgs(&rx, now, s.wake(now, self.cfg.probe_interval)) else {
                return;
            };
            for m in msgs {
                if self.handle(m, &mut s).is_break() {
                    return;
                }
            }
            // The replaced input, dropped after the apply.
            let graveyard = s
                .pending
                .take()
                .and_then(|(seq, input)| self.compile(seq, *input, &mut s));
            let now = Instant::now();
            self.repair_drift_if_due(&mut s, now);
            self.probe_if_due(&mut s, now);
            self.apply_if_due(&mut s, now);
            drop(graveyard);
        }
    }

    /// Take one message; `Break` on shutdown.
    fn handle(&mut self, m: PolicyMsg, s: &mut Schedule) -> ControlFlow<()> {
        match m {
            PolicyMsg::Update(seq, input) => {
                self.status.seq_received = self.status.seq_received.max(seq);
                s.pending = Some((seq, input));
            }
            PolicyMsg::Drift(why) => {
                tracing::warn!(%why, "policy table changed by someone else; restoring");
                s.drift();
            }
            PolicyMsg::EventsLost => {
                self.status.events_lost += 1;
                // Re-apply, but not in a loop: our own big applies are what overflows the
                // socket, so within 10 s of the last such repair trust the probe.
                let recent = self
                    .last_lost_repair
                    .is_some_and(|t| t.elapsed() < LOST_REPAIR_INTERVAL);
                if !recent {
                    tracing::warn!("policy change notifications lost; re-applying");
                    self.last_lost_repair = Some(Instant::now());
                    s.drift();
                }
            }
            PolicyMsg::Resync => {
                self.driver.forget();
                s.dirty = true;
            }
            PolicyMsg::Shutdown => return ControlFlow::Break(()),
            PolicyMsg::Ping(tx) => {
                let _ = tx.send(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Compile input `seq` and make it the one to apply; returns the input it replaced, which
    /// the caller drops after the apply (freeing a 10k-pod snapshot takes milliseconds).
    fn compile(&mut self, seq: u64, input: PolicyInput, s: &mut Schedule) -> Option<PolicyInput> {
        let t = Instant::now();
        let (c, old) = self.compiler.compile_and_take_old(input);
        self.status.last_compile = t.elapsed();
        tracing::debug!(seq, took = ?self.status.last_compile, "policy compiled");
        for e in &c.errors {
            if !self.status.rejected.contains(e) {
                tracing::warn!(error = %e, "policy input rejected");
            }
        }
        self.status.compile = c.stats;
        self.status.rejected = c.errors;
        self.compiled = Some((seq, c.ruleset));
        s.dirty = true;
        s.reset_retry();
        old
    }

    /// Forget what the driver believes the kernel has, so the next apply replaces the table
    /// whole; counted as a drift repair.
    fn repair(&mut self, s: &mut Schedule) {
        self.driver.forget();
        self.status.drift_repairs += 1;
        s.dirty = true;
    }

    /// Once the debounce is over, repair the drift (if anything was ever compiled).
    fn repair_drift_if_due(&mut self, s: &mut Schedule, now: Instant) {
        if s.drift_at.is_some_and(|t| now >= t) {
            s.drift_at = None;
            if self.compiled.is_some() {
                self.repair(s);
            }
        }
    }

    /// On the probe interval: restart a dead monitor (and repair, since events may have been lost
    /// while it was down), then, if the table should be intact, probe it.
    fn probe_if_due(&mut self, s: &mut Schedule, now: Instant) {
        if self.cfg.probe_interval.is_zero() || now < s.next_probe {
            return;
        }
        s.next_probe = now + self.cfg.probe_interval;
        if self.ensure_monitor() && self.compiled.is_some() {
            self.repair(s);
        }
        if !s.dirty && self.compiled.is_some() && self.driver.applied().is_some() {
            match self.driver.probe() {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("policy table missing or flushed; restoring");
                    self.repair(s);
                }
                Err(e) => tracing::warn!(error = %e, "policy table probe failed"),
            }
        }
    }

    /// Apply the compiled ruleset if it is not in the kernel and no retry is waiting; a failure
    /// schedules the retry, doubling the backoff up to [`PolicyCfg::max_backoff`].
    fn apply_if_due(&mut self, s: &mut Schedule, now: Instant) {
        let retry_due = s.retry_at.is_none_or(|t| now >= t);
        if !(s.dirty && retry_due) {
            return;
        }
        let Some((seq, rs)) = &self.compiled else {
            s.dirty = false;
            return;
        };
        let seq = *seq;
        // A full apply (the first, or a repair) runs with the event reader unsubscribed: while
        // anyone listens, the kernel builds one notification per rule and set element inside the
        // commit, which made a 60k-element apply 4-5x slower. The ruleset generation read before
        // and after (after resubscribing) tells whether anyone else committed in that window.
        let quiet = self.monitor.is_some() && self.driver.applied().is_none();
        let before = if quiet {
            self.monitor = None;
            super::netlink::generation().ok()
        } else {
            None
        };
        let result = self.driver.apply(rs);
        if quiet {
            // Nobody read our run's notice: its pid must not excuse a later foreign commit.
            self.driver.own_pids().clear();
            self.ensure_monitor();
            if self.monitor.is_none() {
                // Retried on the probe interval; the gap is repaired once it is back.
                self.monitor_gap = true;
            }
            let ours = u32::from(result.is_ok());
            let after = super::netlink::generation().ok();
            let alone = matches!((before, after), (Some(b), Some(a)) if a == b.wrapping_add(ours));
            if !alone {
                tracing::debug!(
                    ?before,
                    ?after,
                    "a foreign nf_tables commit during a full apply"
                );
                let _ = self.handle(PolicyMsg::EventsLost, s);
            }
        }
        match result {
            Ok(rep) => {
                s.dirty = false;
                s.reset_retry();
                self.record_success(seq, rep);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?s.backoff, "policy apply failed");
                self.status.last_error = Some(e.to_string());
                self.status.seq_done = seq;
                s.retry_at = Some(Instant::now() + s.backoff);
                s.backoff = (s.backoff * 2).min(self.cfg.max_backoff);
            }
        }
        self.shared.publish(&self.status);
    }

    fn record_success(&mut self, seq: u64, rep: ApplyReport) {
        let st = &mut self.status;
        st.seq_done = seq;
        st.seq_applied = seq;
        st.last_error = None;
        if let Some(rs) = self.driver.applied() {
            st.chains = rs.chains.len();
            st.rules = rs.rule_count();
            st.sets = rs.sets.len();
            st.set_elements = rs.element_count();
            st.map_elements = rs.from_wl.len() + rs.to_wl.len();
        }
        match rep.kind {
            ApplyKind::Full => st.full_applies += 1,
            ApplyKind::Incremental => st.incremental_applies += 1,
            ApplyKind::Noop => {}
        }
        if rep.kind != ApplyKind::Noop {
            tracing::info!(kind = ?rep.kind, took = ?rep.duration, bytes = rep.script_bytes, "policy applied");
        }
        st.last_apply = Some(rep);
    }

    /// Start the monitor if enabled and not running; returns whether it (re)started one that had
    /// been running before (events may have been missed).
    fn ensure_monitor(&mut self) -> bool {
        if !self.cfg.monitor {
            return false;
        }
        let restarted = match self.monitor.as_ref().map(|m| m.is_alive()) {
            Some(true) => return false,
            Some(false) => true,
            None => std::mem::take(&mut self.monitor_gap),
        };
        self.monitor = None;
        let tx = self.tx.clone();
        match EventMonitor::spawn(&self.cfg, self.driver.own_pids(), move |ev| {
            let msg = match ev {
                MonitorEvent::Drift { by, changes } => {
                    PolicyMsg::Drift(format!("{changes} changes by {by}"))
                }
                MonitorEvent::Lost => PolicyMsg::EventsLost,
                MonitorEvent::Exited(e) => PolicyMsg::Drift(format!("event reader stopped: {e}")),
            };
            let _ = tx.send(msg);
        }) {
            Ok(m) => self.monitor = Some(m),
            Err(e) => {
                self.monitor_gap |= restarted;
                tracing::warn!(error = %e, "cannot watch nf_tables events; relying on the probe");
                return false;
            }
        }
        restarted
    }
}
