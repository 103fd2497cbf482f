//! Snapshot -> proto: pure functions from the daemon's [`NodeSnapshot`] to the messages of
//! `calico_rs.node.v1`, and the peer diff that drives `WatchPeers`.
//!
//! Times become Unix seconds; a time before the epoch becomes 0. Peers are sorted by address so
//! every reader sees the same order.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use calico_proto::v1 as pb;

use crate::datastore::{ResourceError, Severity};
use crate::status::{
    BlockView, NodeSnapshot, NodeView, PeerType, PeerView, PolicyView, RouteKind, RouteView,
};

/// Unix seconds, 0 before the epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `severity` as the API spells it.
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Unsupported => "unsupported",
        Severity::Warning => "warning",
    }
}

pub fn resource_error(e: &ResourceError) -> pb::ResourceError {
    pb::ResourceError {
        origin: e.origin.clone(),
        kind: e.kind.clone().unwrap_or_default(),
        name: e.name.clone().unwrap_or_default(),
        field: e.field.clone().unwrap_or_default(),
        message: e.message.clone(),
        severity: severity_name(e.severity).into(),
    }
}

pub fn node(v: &NodeView, errors: &[ResourceError], now: SystemTime) -> pb::Node {
    pb::Node {
        name: v.name.clone(),
        addresses: v.addresses.clone(),
        as_number: v.as_number,
        router_id: v.router_id.clone(),
        version: v.version.clone(),
        started_at: unix_secs(v.started_at),
        uptime_seconds: now
            .duration_since(v.started_at)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ready: v.ready,
        live: v.live,
        not_ready_reasons: v.not_ready.clone(),
        resource_errors: errors.iter().map(resource_error).collect(),
    }
}

pub fn peer_type(t: PeerType) -> pb::PeerType {
    match t {
        PeerType::NodeMesh => pb::PeerType::NodeMesh,
        PeerType::Global => pb::PeerType::Global,
        PeerType::NodeSpecific => pb::PeerType::NodeSpecific,
        PeerType::RrClient => pb::PeerType::RrClient,
        PeerType::RrServer => pb::PeerType::RrServer,
    }
}

pub fn bgp_state(s: bgp::State) -> pb::BgpState {
    match s {
        bgp::State::Idle => pb::BgpState::Idle,
        bgp::State::Connect => pb::BgpState::Connect,
        bgp::State::Active => pb::BgpState::Active,
        bgp::State::OpenSent => pb::BgpState::OpenSent,
        bgp::State::OpenConfirm => pb::BgpState::OpenConfirm,
        bgp::State::Established => pb::BgpState::Established,
    }
}

fn family(f: bgp::Family) -> String {
    match f {
        bgp::Family::Ipv4Unicast => "ipv4-unicast".into(),
        bgp::Family::Ipv6Unicast => "ipv6-unicast".into(),
    }
}

pub fn peer(v: &PeerView) -> pb::Peer {
    let b = &v.bgp;
    pb::Peer {
        address: b.address.to_string(),
        as_number: b.remote_as,
        r#type: peer_type(v.peer_type) as i32,
        state: bgp_state(b.state) as i32,
        since: unix_secs(b.since),
        last_error: b.last_error.clone().unwrap_or_default(),
        capabilities: b.negotiated.as_ref().map(|n| pb::Capabilities {
            hold_time: n.hold_time.into(),
            keepalive: n.keepalive.into(),
            four_octet_as: n.four_octet_as,
            route_refresh: n.route_refresh,
            graceful_restart: n.graceful_restart,
            families: n.families.iter().copied().map(family).collect(),
            peer_router_id: n.peer_router_id.to_string(),
        }),
        prefixes_received: b.prefixes_received,
        prefixes_accepted: b.prefixes_accepted,
        prefixes_advertised: b.prefixes_advertised,
        graceful_restart_stale: b.gr_stale,
        local_address: b.local_address.map(|a| a.to_string()).unwrap_or_default(),
        description: if v.name.is_empty() {
            b.description.clone()
        } else {
            v.name.clone()
        },
    }
}

/// Every peer, sorted by address.
pub fn peers(snap: &NodeSnapshot) -> Vec<pb::Peer> {
    let mut v: Vec<&PeerView> = snap.peers.iter().collect();
    v.sort_by_key(|p| p.bgp.address);
    v.into_iter().map(peer).collect()
}

fn route_kind(k: RouteKind) -> &'static str {
    match k {
        RouteKind::LocalBlock => "local-block",
        RouteKind::Pod => "pod",
        RouteKind::RemoteBlock => "remote-block",
        RouteKind::Peer => "peer",
    }
}

pub fn route(r: &RouteView) -> pb::Route {
    pb::Route {
        prefix: r.prefix.to_string(),
        next_hops: r.next_hops.iter().map(IpAddr::to_string).collect(),
        source_peer: r.source_peer.map(|a| a.to_string()).unwrap_or_default(),
        installed: r.installed,
        as_path: r.as_path.clone(),
        stale: r.stale,
        kind: route_kind(r.kind).into(),
    }
}

pub fn block(b: &BlockView) -> pb::Block {
    pb::Block {
        cidr: b.cidr.to_string(),
        affinity: b.affinity.clone().unwrap_or_default(),
        used: b.used,
        free: b.free,
        pool: b.pool.clone(),
    }
}

/// Blocks affine to this node, or every block the snapshot holds when `all_nodes`.
pub fn blocks(snap: &NodeSnapshot, all_nodes: bool) -> Vec<pb::Block> {
    snap.blocks
        .iter()
        .filter(|b| all_nodes || b.affinity.as_deref() == Some(snap.node.name.as_str()))
        .map(block)
        .collect()
}

pub fn policy(p: &PolicyView) -> pb::PolicyStatus {
    pb::PolicyStatus {
        policies_compiled: p.policies_compiled,
        rejected: p
            .rejected
            .iter()
            .map(|r| pb::RejectedPolicy {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                reason: r.reason.clone(),
            })
            .collect(),
        rules: p.rules,
        set_elements: p.set_elements,
        last_apply_micros: p.last_apply_micros,
        last_apply_at: p.last_apply_at.map(unix_secs).unwrap_or(0),
        endpoints: p.endpoints,
        table: p.table.clone(),
    }
}

/// What `WatchPeers` last told a client, keyed by peer address.
pub type SentPeers = BTreeMap<String, pb::Peer>;

/// Remembers `peers` as sent.
pub fn sent(peers: &[pb::Peer]) -> SentPeers {
    peers
        .iter()
        .map(|p| (p.address.clone(), p.clone()))
        .collect()
}

/// The events that take a client from `old` to `new`: one per peer whose state, `since` or
/// `last_error` changed or that is new, then one per removed peer. Updates `old` to `new`.
/// Counters and capabilities alone do not make an event (they ride along with the next one).
pub fn diff_peers(old: &mut SentPeers, new: &[pb::Peer]) -> Vec<pb::PeerEvent> {
    let mut events = Vec::new();
    for p in new {
        let changed = match old.get(&p.address) {
            None => true,
            Some(o) => o.state != p.state || o.since != p.since || o.last_error != p.last_error,
        };
        if changed {
            events.push(pb::PeerEvent {
                snapshot: false,
                peers: vec![p.clone()],
                removed: vec![],
            });
        }
    }
    let now = sent(new);
    for addr in old.keys().filter(|a| !now.contains_key(*a)) {
        events.push(pb::PeerEvent {
            snapshot: false,
            peers: vec![],
            removed: vec![addr.clone()],
        });
    }
    *old = now;
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(addr: &str, state: pb::BgpState, since: u64) -> pb::Peer {
        pb::Peer {
            address: addr.into(),
            state: state as i32,
            since,
            ..Default::default()
        }
    }

    #[test]
    fn diff_reports_state_since_error_new_and_removed() {
        let a = p("10.0.0.2", pb::BgpState::Active, 1);
        let b = p("10.0.0.3", pb::BgpState::Established, 1);
        let mut old = sent(&[a.clone(), b.clone()]);

        // No change, and a counter-only change: nothing.
        assert!(diff_peers(&mut old, &[a.clone(), b.clone()]).is_empty());
        let mut b2 = b.clone();
        b2.prefixes_received = 7;
        assert!(diff_peers(&mut old, &[a.clone(), b2.clone()]).is_empty());

        // State change.
        let a2 = p("10.0.0.2", pb::BgpState::Established, 5);
        let ev = diff_peers(&mut old, &[a2.clone(), b2.clone()]);
        assert_eq!(ev.len(), 1);
        assert!(!ev[0].snapshot);
        assert_eq!(ev[0].peers, vec![a2.clone()]);

        // last_error only.
        let mut a3 = a2.clone();
        a3.last_error = "received NOTIFICATION: Cease".into();
        assert_eq!(diff_peers(&mut old, &[a3.clone(), b2.clone()]).len(), 1);

        // New peer, and a removed one.
        let c = p("10.0.0.4", pb::BgpState::Idle, 9);
        let ev = diff_peers(&mut old, &[a3.clone(), c.clone()]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].peers, vec![c]);
        assert_eq!(ev[1].removed, vec!["10.0.0.3".to_string()]);
        assert!(ev[1].peers.is_empty());
        // Idempotent once applied.
        assert!(diff_peers(&mut old, &[a3, p("10.0.0.4", pb::BgpState::Idle, 9)]).is_empty());
    }

    #[test]
    fn blocks_filter_by_affinity() {
        let mut snap = NodeSnapshot::empty("n1");
        for (cidr, aff) in [("10.1.0.0/26", Some("n1")), ("10.1.0.64/26", Some("n2"))] {
            snap.blocks.push(BlockView {
                cidr: cidr.parse().unwrap(),
                affinity: aff.map(String::from),
                used: 1,
                free: 63,
                pool: "default-ipv4-ippool".into(),
            });
        }
        assert_eq!(blocks(&snap, false).len(), 1);
        assert_eq!(blocks(&snap, false)[0].cidr, "10.1.0.0/26");
        assert_eq!(blocks(&snap, true).len(), 2);
    }

    #[test]
    fn node_uptime() {
        let mut snap = NodeSnapshot::empty("n1");
        snap.node.started_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let n = node(
            &snap.node,
            &[],
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(160),
        );
        assert_eq!((n.started_at, n.uptime_seconds), (100, 60));
        assert_eq!(n.name, "n1");
    }
}
