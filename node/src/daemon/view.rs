//! The daemon's status view: what it did, as plain data for the gRPC API, `/readiness` and
//! `/metrics` (see [`crate::status`]). Everything here reads the daemon's state; nothing changes
//! it except the cached routes list.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use felix::policy::PolicyStatus;
use felix::routes::RoutesStatus;
use ipnet::IpNet;

use super::Daemon;
use crate::calc::PeerType;
use crate::datastore::ResourceError;
use crate::status::{
    NodeSnapshot, NodeView, PeerView, PolicyView, RejectedPolicyView, RouteKind, RouteView,
};

/// What [`Daemon::routes_view`] depends on besides `routes_gen`: whether felix has its input, and
/// which routes it has not programmed yet.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct RoutesViewKey {
    gen: u64,
    pushed: bool,
    pending: BTreeSet<IpNet>,
}

impl Daemon {
    /// Publishes the status snapshot (if it changed) and the counters.
    pub(super) fn publish(&mut self) {
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
        self.counters.nat = self.nat.status();
        self.counters.cni = self.cni.as_ref().map(|c| c.counts());
        let c = self.counters.clone();
        self.counters_tx.send_replace(c);
    }

    /// Every route the node has, for the status API: its blocks, its pods, what BGP learned;
    /// `pending` are those felix has not programmed. A pod waiting for its policy is not
    /// installed.
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
            let gated = !self.gate.is_ready(&p.iface);
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

    /// The datastore's errors, then the calculation's (a BGPPeer whose Secret is missing, a
    /// peer without an AS number, ...): what the status API reports under resource errors.
    fn all_errors(&self) -> Vec<ResourceError> {
        let mut out = self.resource_errors.clone();
        if let Some(d) = &self.desired {
            out.extend(d.errors.iter().map(|e| ResourceError {
                origin: "configuration".into(),
                kind: Some(e.kind.to_string()),
                name: Some(e.name.clone()),
                field: e.field.clone(),
                message: e.message.clone(),
                severity: crate::datastore::Severity::Error,
            }));
        }
        out
    }

    /// Why the node is not ready (empty when it is).
    fn not_ready(&self, rstat: &RoutesStatus, pstat: &PolicyStatus) -> Vec<String> {
        let mut not_ready = Vec::new();
        if let Some(why) = &self.datastore_behind {
            not_ready.push(why.clone());
        }
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
        let waiting = self
            .desired
            .iter()
            .flat_map(|d| &d.local_pods)
            .filter(|p| !self.gate.is_ready(&p.iface))
            .count();
        if waiting > 0 {
            not_ready.push(format!(
                "{waiting} local endpoint(s) wait for their policy to be in the kernel: no route yet"
            ));
        }
        not_ready
    }

    fn node_view(&self, not_ready: Vec<String>) -> NodeView {
        let d = self.desired.as_ref();
        let me = d.and_then(|d| d.me.as_ref());
        NodeView {
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
        }
    }

    fn policy_view(&self, pstat: &PolicyStatus) -> PolicyView {
        PolicyView {
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
            last_apply_at: self.gate.applied_at(),
        }
    }

    fn snapshot(&self, rstat: &RoutesStatus) -> NodeSnapshot {
        let pstat = self.policy.status();
        let bgp = self.speaker.as_ref().map(|s| s.handle.status());
        let peers: Vec<PeerView> = bgp
            .iter()
            .flat_map(|s| s.peers.iter())
            .map(|p| {
                let spec = self.applied.peers.get(&p.address);
                PeerView {
                    peer_type: spec.map(|s| s.peer_type).unwrap_or(PeerType::Global),
                    name: spec.map(|s| s.name.clone()).unwrap_or_default(),
                    bgp: p.clone(),
                }
            })
            .collect();
        NodeSnapshot {
            node: self.node_view(self.not_ready(rstat, &pstat)),
            peers,
            routes: self.routes_view.1.clone(),
            blocks: self.block_views.clone(),
            resource_errors: self.all_errors(),
            policy: self.policy_view(&pstat),
        }
    }
}
