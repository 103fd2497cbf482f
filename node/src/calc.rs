//! The calculation step: cluster state (plus this node's IPAM blocks and the routes BGP learned)
//! -> what this node should do, as plain data. Pure: no sockets, no files, no clock.
//!
//! Outputs: the speaker's own settings, the BGP peers (node-to-node mesh, BGPPeer resources,
//! route-reflector roles, as Calico derives them), the prefixes to originate (affine blocks, plus a
//! /32 or /128 for a local pod whose address lies outside them), felix's route input and felix's
//! policy input. The daemon diffs these against what it last applied.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use bgp::PeerCfg;
use felix::policy::model as pm;
use felix::routes::{NextHop, RemoteBlock, RoutesInput, WorkloadEndpoint};
use ipnet::IpNet;

use crate::datastore::{BgpPassword, ClusterState, Node, SourceAddress};

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
    pub errors: Vec<String>,
}

fn node_me(state: &ClusterState, node: &Node) -> Me {
    Me {
        ipv4: node.bgp.ipv4_address,
        ipv6: node.bgp.ipv6_address,
        as_number: state.as_number_of(&node.metadata.name),
        rr_cluster_id: node.bgp.route_reflector_cluster_id,
    }
}

/// Restart time we advertise to peers and the graceful-restart helper settings.
pub const GR_RESTART_TIME: u16 = 120;

fn mesh_or_selector_peer(
    me: &Me,
    other: &Node,
    other_me: &Me,
    peer_type_default: PeerType,
    port: u16,
) -> Option<(IpAddr, PeerCfg, PeerType)> {
    let addr = IpAddr::V4(other_me.ipv4?.addr());
    let mut cfg = PeerCfg::new(addr, other_me.as_number);
    // Every node listens on the cluster's BGPConfiguration listenPort: dial it, as Calico does.
    cfg.port = port;
    cfg.connect_retry = Duration::from_secs(2);
    let peer_type = match (me.rr_cluster_id, other_me.rr_cluster_id) {
        (Some(_), None) => {
            cfg.rr_client = true;
            PeerType::RrClient
        }
        (None, Some(_)) => PeerType::RrServer,
        _ => peer_type_default,
    };
    cfg.description = other.metadata.name.clone();
    Some((addr, cfg, peer_type))
}

/// Compute what `node` should do from the cluster state and its affine IPAM blocks.
pub fn desired(state: &ClusterState, node: &str, local_blocks: &[IpNet]) -> Desired {
    let mut errors = Vec::new();
    let me_node = state.nodes.get(node);
    let me = me_node.map(|n| node_me(state, n));
    let mut peers: BTreeMap<IpAddr, PeerSpec> = BTreeMap::new();

    let listen_port = state
        .bgp_configuration()
        .and_then(|c| c.listen_port)
        .unwrap_or(179);
    let speaker = match &me {
        Some(Me { ipv4: Some(v4), .. }) => me.as_ref().map(|m| SpeakerSpec {
            local_as: m.as_number,
            router_id: v4.addr(),
            cluster_id: m.rr_cluster_id,
            listen_port,
            next_hop_v6: m.ipv6.map(|n| n.addr()),
        }),
        Some(_) => {
            errors.push(format!(
                "Node {node}: metadata.annotations[projectcalico.org/IPv4Address]: missing: BGP needs an IPv4 address (router id)"
            ));
            None
        }
        None => {
            errors.push(format!("Node {node}: not found in the datastore"));
            None
        }
    };

    if let (Some(me), Some(me_node)) = (&me, me_node) {
        // Node-to-node mesh. With route reflectors configured Calico users turn the mesh off;
        // when it is on, RR roles still follow the cluster ids.
        if state.node_to_node_mesh_enabled() {
            for (name, other) in &state.nodes {
                if name == node {
                    continue;
                }
                let other_me = node_me(state, other);
                if let Some((addr, cfg, pt)) =
                    mesh_or_selector_peer(me, other, &other_me, PeerType::NodeMesh, listen_port)
                {
                    peers.insert(
                        addr,
                        PeerSpec {
                            cfg,
                            peer_type: pt,
                            name: name.clone(),
                        },
                    );
                }
            }
        }
        for (pname, p) in &state.bgp_peers {
            let applies_to = |n: &Node| match (&p.node, &p.node_selector) {
                (Some(name), _) => *name == n.metadata.name,
                (None, Some(sel)) => sel.matches(&n.metadata.labels),
                (None, None) => true,
            };
            let applies = applies_to(me_node);
            // A node-to-node BGPPeer (peerSelector) peers both ways: a node its peerSelector
            // selects peers back with every node the BGPPeer applies to, as Calico does.
            let selected = p
                .peer_selector
                .as_ref()
                .is_some_and(|s| s.matches(&me_node.metadata.labels));
            if !applies && !selected {
                continue;
            }
            let specific = p.node.is_some() || p.node_selector.is_some();
            let password = match &p.password {
                None => None,
                Some(BgpPassword::Plain(s)) => Some(s.clone()),
                Some(BgpPassword::SecretKeyRef { name, key }) => {
                    // Fail closed: never peer without the password that was asked for.
                    errors.push(format!(
                        "BGPPeer {pname}: spec.password.secretKeyRef ({name}/{key}): secrets need the Kubernetes datastore; peer skipped"
                    ));
                    continue;
                }
            };
            let mut targets: Vec<(IpAddr, PeerCfg, PeerType, String)> = Vec::new();
            if let Some(pa) = p.peer_ip.as_ref().filter(|_| applies) {
                let Some(asn) = p.as_number else {
                    errors.push(format!(
                        "BGPPeer {pname}: spec.asNumber: required with spec.peerIP"
                    ));
                    continue;
                };
                let mut cfg = PeerCfg::new(pa.ip, asn);
                if let Some(port) = pa.port {
                    cfg.port = port;
                }
                cfg.connect_retry = Duration::from_secs(2);
                cfg.description = pname.clone();
                let pt = if specific {
                    PeerType::NodeSpecific
                } else {
                    PeerType::Global
                };
                targets.push((pa.ip, cfg, pt, pname.clone()));
            }
            if let Some(sel) = &p.peer_selector {
                for (oname, other) in &state.nodes {
                    let forward = applies && sel.matches(&other.metadata.labels);
                    let reverse = selected && applies_to(other);
                    if oname == node || !(forward || reverse) {
                        continue;
                    }
                    let other_me = node_me(state, other);
                    let default = if specific {
                        PeerType::NodeSpecific
                    } else {
                        PeerType::Global
                    };
                    if let Some((addr, cfg, pt)) =
                        mesh_or_selector_peer(me, other, &other_me, default, listen_port)
                    {
                        targets.push((addr, cfg, pt, format!("{pname} ({oname})")));
                    }
                }
            }
            for (addr, mut cfg, pt, name) in targets {
                if Some(addr) == me.ipv4.map(|n| IpAddr::V4(n.addr())) {
                    continue; // never peer with ourselves
                }
                cfg.password = password.clone();
                // sourceAddress UseNodeIP (the default): source the session from this node's
                // address of the peer's family; None leaves it to the kernel.
                cfg.local_address = match p.source_address {
                    SourceAddress::None => None,
                    SourceAddress::UseNodeIp => match addr {
                        IpAddr::V4(_) => me.ipv4.map(|n| IpAddr::V4(n.addr())),
                        IpAddr::V6(_) => me.ipv6.map(|n| IpAddr::V6(n.addr())),
                    },
                };
                cfg.keep_next_hop = p.keep_original_next_hop;
                cfg.ttl_security = p.ttl_security.filter(|_| cfg.remote_as != me.as_number);
                // An explicit BGPPeer wins over the mesh entry for the same address.
                peers.insert(
                    addr,
                    PeerSpec {
                        cfg,
                        peer_type: pt,
                        name,
                    },
                );
            }
        }
        for spec in peers.values() {
            if let Err(e) = spec.cfg.validate(me.as_number) {
                errors.push(format!("BGP peer {}: {e}", spec.name));
            }
        }
        peers.retain(|_, s| s.cfg.validate(me.as_number).is_ok());
        // As Calico: what a node announces to any peer is pod addresses, i.e. prefixes inside an
        // IPPool (its blocks, pod /32s, other nodes' blocks it passes on). Routes a ToR sends us
        // are not re-advertised to the mesh: every node learns them from the ToR itself.
        let export = pool_export_policy(state);
        for spec in peers.values_mut() {
            spec.cfg.export = export.clone();
        }
    }

    // Local pods and what to originate.
    let mut local_pods = Vec::new();
    let mut originate: BTreeSet<IpNet> = local_blocks.iter().copied().collect();
    for pod in state.pods_on_node(node) {
        if pod.host_network || pod.pod_ips.is_empty() {
            continue;
        }
        let ns = pod.namespace().to_string();
        let name = pod.metadata.name.clone();
        let nets: Vec<IpNet> = pod.pod_ips.iter().map(|ip| IpNet::from(*ip)).collect();
        for n in &nets {
            if !local_blocks.iter().any(|b| b.contains(n)) {
                originate.insert(*n); // borrowed or static address: announce the host route
            }
        }
        local_pods.push(LocalPod {
            iface: felix::workload_iface_name(&ns, &name),
            namespace: ns,
            name,
            nets,
        });
    }

    let policy = policy_input(state, &local_pods, &mut errors);
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

/// Accept prefixes inside any IPPool (enabled or not: a disabled pool may still have blocks in
/// use) unless the pool sets `disableBGPExport`, reject the rest. A prefix inside an exporting
/// pool and a non-exporting one (nested pools) is rejected: not exporting is the safer reading.
fn pool_export_policy(state: &ClusterState) -> bgp::Policy {
    use bgp::policy::{Match, PrefixMatch, Rule, Verdict};
    let matching = |export: bool| -> Vec<PrefixMatch> {
        state
            .ip_pools
            .values()
            .filter(|p| p.disable_bgp_export != export)
            .map(|p| PrefixMatch {
                prefix: p.cidr,
                ge: Some(p.cidr.prefix_len()),
                le: Some(p.cidr.max_prefix_len()),
            })
            .collect()
    };
    let rule = |prefixes: Vec<PrefixMatch>, verdict| Rule {
        when: Match {
            prefixes,
            ..Match::default()
        },
        set: vec![],
        verdict: Some(verdict),
    };
    let mut rules = Vec::new();
    let quiet = matching(false);
    if !quiet.is_empty() {
        rules.push(rule(quiet, Verdict::Reject));
    }
    let exported = matching(true);
    if !exported.is_empty() {
        rules.push(rule(exported, Verdict::Accept));
    }
    bgp::Policy {
        rules,
        default: Verdict::Reject,
    }
}

fn labels(l: &BTreeMap<String, String>) -> pm::Labels {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn policy_pod(p: &crate::datastore::Pod) -> pm::Pod {
    pm::Pod {
        namespace: p.namespace().to_string(),
        name: p.metadata.name.clone(),
        ips: p.pod_ips.clone(),
        labels: labels(&p.metadata.labels),
        ports: p
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter_map(|cp| {
                cp.name.as_ref().map(|n| pm::NamedPort {
                    name: n.clone(),
                    protocol: format!("{:?}", cp.protocol).to_uppercase(),
                    port: cp.container_port,
                })
            })
            .collect(),
    }
}

/// felix's policy input: local endpoints, every pod, every namespace, every policy.
fn policy_input(
    state: &ClusterState,
    local: &[LocalPod],
    errors: &mut Vec<String>,
) -> pm::PolicyInput {
    let pods: Vec<pm::Pod> = state
        .pods
        .values()
        .filter(|p| !p.host_network)
        .map(policy_pod)
        .collect();
    let endpoints = local
        .iter()
        .filter_map(|lp| {
            let pod = state.pods.get(&(lp.namespace.clone(), lp.name.clone()))?;
            Some(pm::WorkloadEndpoint {
                iface: lp.iface.clone(),
                pod: policy_pod(pod),
            })
        })
        .collect();
    let namespaces = state
        .namespaces
        .values()
        .map(|n| pm::Namespace {
            name: n.metadata.name.clone(),
            labels: labels(&n.metadata.labels),
        })
        .collect();
    let mut policies = Vec::new();
    for ((ns, name), np) in &state.network_policies {
        match serde_json::from_value::<pm::NetworkPolicy>(np.raw.clone()) {
            Ok(mut p) => {
                if p.metadata.namespace.is_none() {
                    p.metadata.namespace = Some(ns.clone());
                }
                policies.push(p);
            }
            Err(e) => {
                // The document does not even have NetworkPolicy's shape. Fail closed: a policy
                // with the same name that selects every pod of its namespace and allows nothing.
                errors.push(format!(
                    "NetworkPolicy {ns}/{name}: {e}; its namespace's pods are isolated"
                ));
                let deny: pm::NetworkPolicy = serde_json::from_value(serde_json::json!({
                    "metadata": {"namespace": ns, "name": name},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
                }))
                .unwrap_or_default();
                policies.push(deny);
            }
        }
    }
    pm::PolicyInput {
        endpoints,
        pods,
        namespaces,
        policies,
    }
}

/// felix's route input: local pods, affine blocks, and the routes BGP learned (best next hops per
/// prefix, from peers only).
pub fn routes_input(d: &Desired, learned: &BTreeMap<IpNet, Vec<IpAddr>>) -> RoutesInput {
    let mine: Vec<IpAddr> =
        d.me.iter()
            .flat_map(|m| {
                m.ipv4
                    .map(|n| IpAddr::V4(n.addr()))
                    .into_iter()
                    .chain(m.ipv6.map(|n| IpAddr::V6(n.addr())))
            })
            .collect();
    RoutesInput {
        workloads: d
            .local_pods
            .iter()
            .map(|p| WorkloadEndpoint {
                id: format!("{}/{}", p.namespace, p.name),
                iface: p.iface.clone(),
                nets: p.nets.clone(),
            })
            .collect(),
        local_blocks: d.local_blocks.clone(),
        remote_blocks: learned
            .iter()
            .filter(|(p, _)| !d.local_blocks.contains(p))
            .filter_map(|(p, hops)| {
                let hops: Vec<NextHop> = hops
                    .iter()
                    .filter(|h| !h.is_unspecified() && !mine.contains(h))
                    .map(|h| NextHop::via(*h))
                    .collect();
                (!hops.is_empty()).then_some(RemoteBlock {
                    cidr: *p,
                    next_hops: hops,
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
