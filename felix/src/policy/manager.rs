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
    /// When notifications were last lost and answered with a repair (rate limit).
    last_lost_repair: Option<Instant>,
    /// Sequence number and ruleset of the newest compiled input.
    compiled: Option<(u64, Ruleset)>,
    /// Keeps the last input and selector-set members between updates.
    compiler: Compiler,
}

impl Owner {
    fn run(mut self, rx: mpsc::Receiver<PolicyMsg>) {
        let _span = tracing::info_span!("policy", table = %self.cfg.table).entered();
        self.ensure_monitor();
        let mut pending: Option<(u64, Box<PolicyInput>)> = None;
        let mut drift_at: Option<Instant> = None;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut next_probe = Instant::now() + self.cfg.probe_interval;
        let mut dirty = false; // the compiled ruleset is not (known to be) in the kernel
        let mut graveyard: Option<PolicyInput> = None; // replaced input, dropped after the apply
        loop {
            let now = Instant::now();
            let mut wake = now + Duration::from_secs(3600);
            if !self.cfg.probe_interval.is_zero() {
                wake = wake.min(next_probe);
            }
            for t in [drift_at, retry_at].into_iter().flatten() {
                wake = wake.min(t);
            }
            let mut msgs = Vec::new();
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(m) => msgs.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            msgs.extend(rx.try_iter());
            for m in msgs {
                match m {
                    PolicyMsg::Update(seq, input) => {
                        self.status.seq_received = self.status.seq_received.max(seq);
                        pending = Some((seq, input));
                    }
                    PolicyMsg::Drift(why) => {
                        tracing::warn!(%why, "policy table changed by someone else; restoring");
                        drift_at.get_or_insert(Instant::now() + DRIFT_DEBOUNCE);
                    }
                    PolicyMsg::EventsLost => {
                        self.status.events_lost += 1;
                        // Re-apply, but not in a loop: our own big applies are what overflows
                        // the socket, so within 10 s of the last such repair trust the probe.
                        let recent = self
                            .last_lost_repair
                            .is_some_and(|t| t.elapsed() < LOST_REPAIR_INTERVAL);
                        if !recent {
                            tracing::warn!("policy change notifications lost; re-applying");
                            self.last_lost_repair = Some(Instant::now());
                            drift_at.get_or_insert(Instant::now() + DRIFT_DEBOUNCE);
                        }
                    }
                    PolicyMsg::Resync => {
                        self.driver.forget();
                        dirty = true;
                    }
                    PolicyMsg::Shutdown => return,
                    PolicyMsg::Ping(tx) => {
                        let _ = tx.send(());
                    }
                }
            }

            if let Some((seq, input)) = pending.take() {
                let t = Instant::now();
                let (c, old) = self.compiler.compile_and_take_old(*input);
                // Freeing a 10k-pod snapshot takes milliseconds: do it after the apply.
                graveyard = old;
                self.status.last_compile = t.elapsed();
                for e in &c.errors {
                    if !self.status.rejected.contains(e) {
                        tracing::warn!(error = %e, "policy input rejected");
                    }
                }
                self.status.compile = c.stats;
                self.status.rejected = c.errors;
                self.compiled = Some((seq, c.ruleset));
                dirty = true;
                retry_at = None;
                backoff = FIRST_BACKOFF;
            }

            let now = Instant::now();
            if drift_at.is_some_and(|t| now >= t) {
                drift_at = None;
                if self.compiled.is_some() {
                    self.driver.forget();
                    self.status.drift_repairs += 1;
                    dirty = true;
                }
            }
            if !self.cfg.probe_interval.is_zero() && now >= next_probe {
                next_probe = now + self.cfg.probe_interval;
                if self.ensure_monitor() && self.compiled.is_some() {
                    // Events may have been lost while it was down.
                    self.driver.forget();
                    self.status.drift_repairs += 1;
                    dirty = true;
                }
                if !dirty && self.compiled.is_some() && self.driver.applied().is_some() {
                    match self.driver.probe() {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("policy table missing or flushed; restoring");
                            self.driver.forget();
                            self.status.drift_repairs += 1;
                            dirty = true;
                        }
                        Err(e) => tracing::warn!(error = %e, "policy table probe failed"),
                    }
                }
            }

            let retry_due = retry_at.is_none_or(|t| now >= t);
            if dirty && retry_due {
                if let Some((seq, rs)) = &self.compiled {
                    let seq = *seq;
                    match self.driver.apply(rs) {
                        Ok(rep) => {
                            dirty = false;
                            retry_at = None;
                            backoff = FIRST_BACKOFF;
                            self.record_success(seq, rep);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?backoff, "policy apply failed");
                            self.status.last_error = Some(e.to_string());
                            self.status.seq_done = seq;
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(self.cfg.max_backoff);
                        }
                    }
                    self.shared.publish(&self.status);
                } else {
                    dirty = false;
                }
            }
            drop(graveyard.take());
        }
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
            None => false,
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
                tracing::warn!(error = %e, "cannot watch nf_tables events; relying on the probe")
            }
        }
        restarted
    }
}
