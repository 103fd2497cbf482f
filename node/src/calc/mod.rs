//! The calculation step: cluster state (plus this node's IPAM blocks and the routes BGP learned)
//! -> what this node should do, as plain data. Pure: no sockets, no files, no clock.
//!
//! Outputs: the speaker's own settings, the BGP peers (node-to-node mesh, BGPPeer resources,
//! route-reflector roles, as Calico derives them), the prefixes to originate (affine blocks, plus a
//! /32 or /128 for a local pod whose address lies outside them), felix's route input and felix's
//! policy input. The daemon diffs these against what it last applied.

//!
//! One calculator per output, each pure and tested on its own: [`peers`] (the speaker's settings,
//! node-to-node mesh, BGPPeer resources, route-reflector roles, the export policy), [`origin`]
//! (local pods and the prefixes to originate), [`policy`] (felix's policy input) and [`routes`]
//! (felix's route input, once BGP has learned routes). [`desired`] runs them in that order.

mod origin;
mod peers;
mod policy;
mod routes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bgp::PeerCfg;
use felix::policy::model as pm;
use ipnet::IpNet;

use crate::datastore::{ClusterState, Node};
pub use routes::routes_input;

/// This node's identity as the datastore describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub ipv4: Option<ipnet::Ipv4Net>,
    pub ipv6: Option<ipnet::Ipv6Net>,
    pub as_number: u32,
    pub rr_cluster_id: Option<Ipv4Addr>,
}

/// The speaker-wide settings (a change restarts the speaker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerSpec {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub cluster_id: Option<Ipv4Addr>,
    pub listen_port: u16,
    pub next_hop_v6: Option<Ipv6Addr>,
}

/// How a BGP peer came to be configured (Calico's "PEER TYPE" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerType {
    /// Node-to-node mesh.
    NodeMesh,
    /// A BGPPeer without `node` / `nodeSelector`.
    Global,
    /// A BGPPeer for specific nodes (`node` or `nodeSelector`).
    NodeSpecific,
    /// A node we reflect routes to (we are its route reflector).
    RrClient,
    /// A route reflector that serves us.
    RrServer,
}

impl PeerType {
    /// Calico's wording in `calicoctl node status`.
    pub fn calico_name(self) -> &'static str {
        match self {
            PeerType::NodeMesh => "node-to-node mesh",
            PeerType::Global => "global",
            PeerType::NodeSpecific => "node specific",
            PeerType::RrClient => "route reflector client",
            PeerType::RrServer => "route reflector",
        }
    }
}

/// One peer and why it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub cfg: PeerCfg,
    pub peer_type: PeerType,
    /// BGPPeer name or peer node name.
    pub name: String,
}

/// A pod on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    pub iface: String,
    pub nets: Vec<IpNet>,
}

/// Everything the node should have, except what depends on BGP-learned routes.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub me: Option<Me>,
    pub speaker: Option<SpeakerSpec>,
    pub peers: BTreeMap<IpAddr, PeerSpec>,
    pub originate: BTreeSet<IpNet>,
    pub local_pods: Vec<LocalPod>,
    pub local_blocks: Vec<IpNet>,
    pub policy: pm::PolicyInput,
    /// Problems found (named by object and field), for logs and status.
    pub errors: Vec<CalcError>,
}

/// A problem the calculation found, named by object and field:
/// `BGPPeer tor: spec.asNumber: required with spec.peerIP`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {}{message}", .field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct CalcError {
    /// `Node`, `BGPPeer`, `NetworkPolicy`, or `BGP peer` (a peer derived from several objects).
    pub kind: &'static str,
    /// `name` or `namespace/name`.
    pub name: String,
    /// Dotted field path, when one field is at fault.
    pub field: Option<String>,
    pub message: String,
}

impl CalcError {
    pub fn new(
        kind: &'static str,
        name: impl Into<String>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> CalcError {
        CalcError {
            kind,
            name: name.into(),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

pub(crate) fn node_me(state: &ClusterState, node: &Node) -> Me {
    Me {
        ipv4: node.bgp.ipv4_address,
        ipv6: node.bgp.ipv6_address,
        as_number: state.as_number_of(&node.metadata.name),
        rr_cluster_id: node.bgp.route_reflector_cluster_id,
    }
}

/// Restart time we advertise to peers and the graceful-restart helper settings.
pub const GR_RESTART_TIME: u16 = 120;

/// Compute what `node` should do from the cluster state and its affine IPAM blocks.
pub fn desired(state: &ClusterState, node: &str, local_blocks: &[IpNet]) -> Desired {
    let mut errors = Vec::new();
    let me_node = state.nodes.get(node);
    let me = me_node.map(|n| node_me(state, n));
    let speaker = peers::speaker_spec(state, node, me.as_ref(), &mut errors);
    let peers = match (&me, me_node) {
        (Some(me), Some(me_node)) => peers::peers(state, node, me, me_node, &mut errors),
        _ => BTreeMap::new(),
    };
    let (local_pods, originate) = origin::local(state, node, local_blocks);
    let policy = policy::policy_input(state, &local_pods, &mut errors);
    Desired {
        me,
        speaker,
        peers,
        originate,
        local_pods,
        local_blocks: local_blocks.to_vec(),
        policy,
        errors,
    }
}

#[cfg(test)]
mod tests;
