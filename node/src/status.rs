//! The node's status as plain data: what the daemon publishes (a `watch` of [`NodeSnapshot`]) and
//! what the gRPC API, the health endpoints and the metrics read. Readers never touch the BGP or
//! dataplane tasks: they read the latest snapshot.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

pub use crate::calc::PeerType;

/// One BGP peer as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerView {
    pub peer_type: PeerType,
    /// The BGPPeer name, the peer node's name, or empty.
    pub name: String,
    /// The speaker's own view: address, AS, state, since, capabilities, counters, last error.
    pub bgp: bgp::PeerStatus,
}

/// Where a route comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteKind {
    /// A block affine to this node (blackhole in the kernel, announced over BGP).
    LocalBlock,
    /// A route to a local pod's veth.
    Pod,
    /// A block of another node, learned over BGP.
    RemoteBlock,
    /// Anything else learned over BGP (e.g. from a ToR).
    Peer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteView {
    pub prefix: ipnet::IpNet,
    pub kind: RouteKind,
    pub next_hops: Vec<IpAddr>,
    /// The peer it was learned from, if any.
    pub source_peer: Option<IpAddr>,
    pub as_path: Vec<u32>,
    /// felix has it in the kernel.
    pub installed: bool,
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockView {
    pub cidr: ipnet::IpNet,
    pub affinity: Option<String>,
    pub used: u32,
    pub free: u32,
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedPolicyView {
    pub namespace: String,
    pub name: String,
    /// Names the field, e.g. `spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "10.0.0.0/33"`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PolicyView {
    pub table: String,
    pub policies_compiled: u32,
    pub rejected: Vec<RejectedPolicyView>,
    pub rules: u32,
    pub set_elements: u32,
    pub endpoints: u32,
    pub last_apply_micros: u64,
    pub last_apply_at: Option<SystemTime>,
}

/// The node's identity and readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub name: String,
    /// e.g. "10.0.0.1/24".
    pub addresses: Vec<String>,
    pub as_number: u32,
    pub router_id: String,
    pub version: String,
    pub started_at: SystemTime,
    pub ready: bool,
    pub live: bool,
    /// Why not ready (empty when ready).
    pub not_ready: Vec<String>,
}

/// Everything the status API serves, published as one value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSnapshot {
    pub node: NodeView,
    pub peers: Vec<PeerView>,
    /// Shared between snapshots until a route changes (a snapshot is published on every event).
    pub routes: Arc<Vec<RouteView>>,
    pub blocks: Vec<BlockView>,
    pub policy: PolicyView,
    /// Datastore documents rejected or kept at their last good version, as of the last snapshot.
    pub resource_errors: Vec<crate::datastore::ResourceError>,
}

impl NodeSnapshot {
    pub fn empty(name: &str) -> NodeSnapshot {
        NodeSnapshot {
            node: NodeView {
                name: name.to_string(),
                addresses: vec![],
                as_number: 0,
                router_id: String::new(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: SystemTime::now(),
                ready: false,
                live: true,
                not_ready: vec!["starting".into()],
            },
            peers: vec![],
            routes: Arc::default(),
            blocks: vec![],
            policy: PolicyView::default(),
            resource_errors: vec![],
        }
    }
}

/// The receiving end readers hold.
pub type StatusRx = tokio::sync::watch::Receiver<Arc<NodeSnapshot>>;
