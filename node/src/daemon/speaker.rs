//! The daemon's side of the BGP speaker: starting it (with backoff when it cannot start),
//! applying peer and prefix plans ([`super::plan`]), following its route changes, and the sync
//! gate that holds felix's first route input until BGP has relearned the routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgp::{GracefulRestartCfg, OriginAttrs, SpeakerCfg, SpeakerHandle, SpeakerStatus, State};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::plan::{bgp_plan, BgpApplied, BgpPlan};
use super::Daemon;
use crate::calc::{self, Desired, SpeakerSpec};

pub(super) struct Speaker {
    pub(super) spec: SpeakerSpec,
    pub(super) handle: SpeakerHandle,
    started: Instant,
}

/// A speaker that could not be started, and when to try again.
pub(super) struct SpeakerFailure {
    spec: SpeakerSpec,
    pub(super) error: String,
    pub(super) attempts: u32,
    first_at: Instant,
    pub(super) retry_at: Instant,
}

impl SpeakerFailure {
    /// 1 s, 2 s, 4 s ... capped at 30 s.
    fn backoff(attempts: u32) -> Duration {
        Duration::from_secs(1u64 << attempts.min(5).saturating_sub(1)).min(Duration::from_secs(30))
    }
}

/// The speaker's event streams, apart from [`Speaker`] so the select loop can borrow each alone.
#[derive(Default)]
pub(super) struct SpeakerRx {
    pub(super) routes: Option<broadcast::Receiver<bgp::RouteChanges>>,
    pub(super) peers: Option<broadcast::Receiver<bgp::SpeakerEvent>>,
    /// The speaker's status: the sync gate is re-checked when it changes.
    pub(super) status: Option<watch::Receiver<Arc<SpeakerStatus>>>,
}

impl Daemon {
    /// Brings the speaker in line with `d`: (re)start it when its settings changed (or a failed
    /// start is due for a retry), then apply the peer and prefix plan.
    pub(super) async fn apply_bgp(&mut self, d: &Desired) {
        let spec_changed = self.speaker.as_ref().map(|s| &s.spec) != d.speaker.as_ref();
        // After a failed start, try again at the backoff time, or at once for other settings.
        let retry_due = match &self.speaker_failure {
            Some(f) => Some(&f.spec) != d.speaker.as_ref() || Instant::now() >= f.retry_at,
            None => true,
        };
        if spec_changed && retry_due {
            self.restart_speaker(d.speaker.as_ref()).await;
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
        let plan = bgp_plan(&self.applied, &d.peers, &d.originate);
        if !plan.is_empty() {
            let handle = sp.handle.clone();
            execute(&handle, &plan, &mut self.applied).await;
        }
    }

    /// Stops the running speaker (if any) and starts one with `spec` (if any).
    async fn restart_speaker(&mut self, spec: Option<&SpeakerSpec>) {
        self.rx = SpeakerRx::default();
        if let Some(old) = self.speaker.take() {
            info!("speaker settings changed: restarting the BGP speaker");
            old.handle.shutdown(false).await;
        }
        self.applied = BgpApplied::default();
        self.learned.clear();
        self.learned_meta.clear();
        self.bgp_synced = false;
        match spec {
            Some(spec) => match start_speaker(spec).await {
                Ok(sp) => {
                    self.rx = SpeakerRx {
                        routes: Some(sp.handle.subscribe_routes()),
                        peers: Some(sp.handle.subscribe()),
                        status: Some(sp.handle.status_watch()),
                    };
                    self.sync_deadline = Some(sp.started + self.cfg.bgp_sync_timeout);
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
                    self.sync_deadline = Some(first_at + self.cfg.bgp_sync_timeout);
                    self.speaker_failure = Some(SpeakerFailure {
                        spec: spec.clone(),
                        error: format!("{e:#}"),
                        attempts,
                        first_at,
                        retry_at: Instant::now() + wait,
                    });
                }
            },
            None => self.speaker_failure = None,
        }
        self.speaker_watch
            .send_replace(self.speaker.as_ref().map(|s| s.handle.clone()));
    }

    pub(super) fn apply_route_changes(&mut self, changes: &[bgp::RouteChange]) {
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

    /// Reads every best route again (after the route channel lagged).
    pub(super) async fn reload_learned(&mut self) {
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

    /// The sync gate, re-checked when the speaker's status changes or the sync deadline passes:
    /// every configured peer is Established and has sent End-of-RIB, or we waited long enough.
    pub(super) fn check_bgp_synced(&mut self) -> bool {
        if self.bgp_synced {
            return true;
        }
        let timed_out = self.sync_deadline.is_some_and(|t| Instant::now() >= t);
        if self.speaker_failure.is_some() {
            // Local pods still need their routes; remote ones cannot be learned anyway.
            self.bgp_synced = timed_out;
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
        if all || timed_out {
            if !all {
                warn!("BGP sync timeout: programming routes with what has been learned so far");
            }
            self.bgp_synced = true;
            self.sync_deadline = None;
        }
        self.bgp_synced
    }
}

/// Carries out `plan` on the speaker, recording each accepted step in `applied`: prefixes first
/// (so the first End-of-RIB a new peer gets follows a complete table), then remove, update, add.
async fn execute(handle: &SpeakerHandle, plan: &BgpPlan, applied: &mut BgpApplied) {
    if !plan.withdraw.is_empty() {
        let _ = handle.withdraw(plan.withdraw.clone());
    }
    if !plan.originate.is_empty() {
        let add = plan
            .originate
            .iter()
            .map(|p| (*p, OriginAttrs::default()))
            .collect();
        let _ = handle.originate(add);
    }
    applied.record_prefixes(plan);
    for addr in &plan.remove {
        if let Err(e) = handle.remove_peer(*addr).await {
            warn!(peer = %addr, error = %e, "removing peer");
        }
        // Gone either way: a peer the speaker does not know is not configured.
        applied.record_removal(addr);
    }
    for spec in &plan.update {
        match handle.update_peer(spec.cfg.clone()).await {
            Ok(()) => applied.record_peer(spec),
            Err(e) => warn!(peer = %spec.cfg.address, error = %e, "updating peer"),
        }
    }
    for spec in &plan.relabel {
        applied.record_peer(spec);
    }
    for spec in &plan.add {
        match handle.add_peer(spec.cfg.clone()).await {
            Ok(()) => applied.record_peer(spec),
            Err(e) => warn!(peer = %spec.cfg.address, error = %e, "configuring peer"),
        }
    }
}

async fn start_speaker(spec: &SpeakerSpec) -> Result<Speaker, bgp::SpeakerError> {
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
