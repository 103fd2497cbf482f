//! The speaker's settings and its peers, as Calico derives them: the node-to-node mesh (dialled
//! on the cluster's `listenPort`), BGPPeer resources (global, per node or node selector, and the
//! symmetric `peerSelector` form), route-reflector roles from cluster ids, and the export policy
//! (only IPPool prefixes, except pools with `disableBGPExport`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bgp::PeerCfg;

use super::{node_me, CalcError, Me, PeerSpec, PeerType, SpeakerSpec};
use crate::datastore::{BgpPassword, BgpPeer, ClusterState, Node, SourceAddress};

/// The speaker-wide settings of `node`; `None` (with the reason) when it cannot run BGP.
pub(super) fn speaker_spec(
    state: &ClusterState,
    node: &str,
    me: Option<&Me>,
    errors: &mut Vec<CalcError>,
) -> Option<SpeakerSpec> {
    let listen_port = state
        .bgp_configuration()
        .and_then(|c| c.listen_port)
        .unwrap_or(179);
    match me {
        Some(m @ Me { ipv4: Some(v4), .. }) => Some(SpeakerSpec {
            local_as: m.as_number,
            router_id: v4.addr(),
            cluster_id: m.rr_cluster_id,
            listen_port,
            next_hop_v6: m.ipv6.map(|n| n.addr()),
        }),
        Some(_) => {
            errors.push(CalcError::new(
                "Node",
                node,
                Some("metadata.annotations[projectcalico.org/IPv4Address]"),
                "missing: BGP needs an IPv4 address (router id)",
            ));
            None
        }
        None => {
            errors.push(CalcError::new(
                "Node",
                node,
                None,
                "not found in the datastore",
            ));
            None
        }
    }
}

/// The cluster's BGP port (BGPConfiguration `listenPort`, default 179).
fn listen_port(state: &ClusterState) -> u16 {
    state
        .bgp_configuration()
        .and_then(|c| c.listen_port)
        .unwrap_or(179)
}

/// Every peer of `node` (whose Node is `me_node`), by address; invalid ones are reported and
/// left out.
pub(super) fn peers(
    state: &ClusterState,
    node: &str,
    me: &Me,
    me_node: &Node,
    errors: &mut Vec<CalcError>,
) -> BTreeMap<IpAddr, PeerSpec> {
    let mut peers: BTreeMap<IpAddr, PeerSpec> = BTreeMap::new();
    let listen_port = listen_port(state);
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
        for spec in from_bgp_peer(state, node, me, me_node, (pname, p), listen_port, errors) {
            // An explicit BGPPeer wins over the mesh entry for the same address.
            peers.insert(spec.cfg.address, spec);
        }
    }
    for spec in peers.values() {
        if let Err(e) = spec.cfg.validate(me.as_number) {
            errors.push(CalcError::new(
                "BGP peer",
                spec.name.as_str(),
                None,
                e.to_string(),
            ));
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
    peers
}

/// The peers one BGPPeer gives `node`: its `peerIP` if it applies to this node, and with a
/// `peerSelector` every selected node (both ways, as Calico does).
fn from_bgp_peer(
    state: &ClusterState,
    node: &str,
    me: &Me,
    me_node: &Node,
    (pname, p): (&String, &BgpPeer),
    listen_port: u16,
    errors: &mut Vec<CalcError>,
) -> Vec<PeerSpec> {
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
        return vec![];
    }
    let default_type = if p.node.is_some() || p.node_selector.is_some() {
        PeerType::NodeSpecific
    } else {
        PeerType::Global
    };
    let password = match &p.password {
        None => None,
        Some(BgpPassword::Plain(s)) => Some(s.clone()),
        Some(BgpPassword::SecretKeyRef { name, key }) => {
            // Fail closed: never peer without the password that was asked for.
            let secrets = state.bgp_secrets.as_ref();
            let resolved = match secrets.map(|s| s.get(&(name.clone(), key.clone()))) {
                Some(Some(Ok(password))) => Ok(password.clone()),
                Some(Some(Err(why))) => Err(format!("Secret {name} key {key}: {why}; peer down")),
                Some(None) => Err(format!("Secret {name} key {key}: not read yet; peer down")),
                None => Err(format!(
                    "({name}/{key}): secrets need the Kubernetes datastore; peer skipped"
                )),
            };
            match resolved {
                Ok(password) => Some(password),
                Err(why) => {
                    errors.push(CalcError::new(
                        "BGPPeer",
                        pname.as_str(),
                        Some("spec.password.secretKeyRef"),
                        why,
                    ));
                    return vec![];
                }
            }
        }
    };
    let mut targets: Vec<(IpAddr, PeerCfg, PeerType, String)> = Vec::new();
    if let Some(pa) = p.peer_ip.as_ref().filter(|_| applies) {
        let Some(asn) = p.as_number else {
            errors.push(CalcError::new(
                "BGPPeer",
                pname.as_str(),
                Some("spec.asNumber"),
                "required with spec.peerIP",
            ));
            return vec![];
        };
        let mut cfg = PeerCfg::new(pa.ip, asn);
        if let Some(port) = pa.port {
            cfg.port = port;
        }
        cfg.connect_retry = Duration::from_secs(2);
        cfg.description = pname.clone();
        targets.push((pa.ip, cfg, default_type, pname.clone()));
    }
    if let Some(sel) = &p.peer_selector {
        for (oname, other) in &state.nodes {
            let forward = applies && sel.matches(&other.metadata.labels);
            let reverse = selected && applies_to(other);
            if oname == node || !(forward || reverse) {
                continue;
            }
            let other_me = node_me(state, other);
            if let Some((addr, cfg, pt)) =
                mesh_or_selector_peer(me, other, &other_me, default_type, listen_port)
            {
                targets.push((addr, cfg, pt, format!("{pname} ({oname})")));
            }
        }
    }
    let mut out = Vec::new();
    for (addr, mut cfg, pt, name) in targets {
        if Some(addr) == me.ipv4.map(|n| IpAddr::V4(n.addr())) {
            continue; // never peer with ourselves
        }
        cfg.password = password.clone();
        cfg.local_address = local_address(me, p.source_address, addr);
        cfg.keep_next_hop = p.keep_original_next_hop;
        cfg.ttl_security = p.ttl_security.filter(|_| cfg.remote_as != me.as_number);
        out.push(PeerSpec {
            cfg,
            peer_type: pt,
            name,
        });
    }
    out
}

/// sourceAddress UseNodeIP (the default): sessions are sourced from this node's address of the
/// peer's family; None leaves it to the kernel.
fn local_address(me: &Me, source: SourceAddress, peer: IpAddr) -> Option<IpAddr> {
    match (source, peer) {
        (SourceAddress::None, _) => None,
        (SourceAddress::UseNodeIp, IpAddr::V4(_)) => me.ipv4.map(|n| IpAddr::V4(n.addr())),
        (SourceAddress::UseNodeIp, IpAddr::V6(_)) => me.ipv6.map(|n| IpAddr::V6(n.addr())),
    }
}

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
