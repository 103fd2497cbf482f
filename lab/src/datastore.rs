//! The lab's file datastore: the YAML documents a Calico user would write for the cluster, and
//! the pod addresses, which come from the daemon's own IPAM ([`allocate`]) so the nodes' blocks
//! are the ones the daemons announce. Every file is written by temp file + rename
//! ([`write_atomic`]), so a watching daemon never reads half a file; the temp name starts with
//! `.`, which the datastore ignores.
//!
//! Two spellings of the same cluster (AS, pools, addresses from [`crate::plan`]):
//! - the tests' [`crate::cluster::Cluster`] writes one document per object in flow style
//!   ([`cluster_base`], [`cluster_tor_peer`], [`cluster_node`], [`cluster_pod`]): the fault tests
//!   and the soak break those texts by string edits, so their spelling is part of the tests;
//! - the lab command writes these files in `DIR/datastore/`, in block style:
//! - `bgp.yaml`: BGPConfiguration `default` (AS 64512, full mesh) and, with a ToR, the global
//!   BGPPeers `tor-v4` (10.200.0.1) and `tor-v6` (fd00:200::1), AS 65000;
//! - `pools.yaml`: IPPools `default-ipv4-ippool` and `default-ipv6-ippool`;
//! - `nodes.yaml`: core `v1` Nodes with the `projectcalico.org/IPv4Address`/`IPv6Address`
//!   annotations; `namespaces.yaml`: Namespace `default`;
//! - `pods.yaml`: Pods `nodeK-podJ` with `spec.nodeName` and `status.podIP(s)`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{bail, Context, Result};
use calico_node::datastore::{ClusterState, IpFamily};
use calico_node::ipam::core::{BlockStore, IpamCore};
use calico_node::ipam::Ipam;
use serde::{Deserialize, Serialize};

use crate::plan::*;

/// A pod's addresses, one per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIps {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// `bgp.yaml`; with `tor`, the ToR's BGPPeers.
pub fn bgp_yaml(tor: bool) -> String {
    let mut s = format!(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\n\
         spec:\n  asNumber: {NODE_AS}\n  nodeToNodeMeshEnabled: true\n"
    );
    if tor {
        for (name, ip) in [("tor-v4", IpAddr::from(TOR_V4)), ("tor-v6", TOR_V6.into())] {
            let _ = write!(
                s,
                "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: {name}\n\
                 spec:\n  peerIP: \"{ip}\"\n  asNumber: {TOR_AS}\n"
            );
        }
    }
    s
}

/// `pools.yaml`.
pub fn pools_yaml() -> String {
    let pool = |name: &str, cidr: &str, size: u8| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {name}\n\
             spec:\n  cidr: \"{cidr}\"\n  blockSize: {size}\n  ipipMode: Never\n  vxlanMode: Never\n  \
             natOutgoing: false\n  nodeSelector: all()\n"
        )
    };
    pool("default-ipv4-ippool", POOL_V4, BLOCK_SIZE_V4)
        + "---\n"
        + &pool("default-ipv6-ippool", POOL_V6, BLOCK_SIZE_V6)
}

/// `nodes.yaml`.
pub fn nodes_yaml(plan: &Plan) -> String {
    let docs: Vec<String> = plan
        .nodes
        .iter()
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
                 kubernetes.io/hostname: {name}\n    calico-rs.lab/node: \"{k}\"\n  annotations:\n    \
                 projectcalico.org/IPv4Address: \"{v4}/{LAN_PREFIX_V4}\"\n    \
                 projectcalico.org/IPv6Address: \"{v6}/{LAN_PREFIX_V6}\"\n\
                 status:\n  addresses:\n  - type: InternalIP\n    address: \"{v4}\"\n  \
                 - type: InternalIP\n    address: \"{v6}\"\n",
                name = n.name,
                k = n.index,
                v4 = n.v4,
                v6 = n.v6,
            )
        })
        .collect();
    docs.join("---\n")
}

/// `namespaces.yaml`.
pub fn namespaces_yaml() -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {POD_NAMESPACE}\n")
}

/// `pods.yaml`; every pod of the plan must have addresses in `ips` (keyed by pod name).
pub fn pods_yaml(plan: &Plan, ips: &BTreeMap<String, PodIps>) -> Result<String> {
    let mut docs = Vec::new();
    for p in plan.pods() {
        let Some(ip) = ips.get(&p.name) else {
            bail!("lab: pod {} has no addresses", p.name);
        };
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {POD_NAMESPACE}\n  \
             labels:\n    app: {name}\n    calico-rs.lab/node: {node}\n\
             spec:\n  nodeName: {node}\n  containers:\n  - name: main\n\
             status:\n  phase: Running\n  podIP: \"{v4}\"\n  podIPs:\n  - ip: \"{v4}\"\n  - ip: \"{v6}\"\n",
            name = p.name,
            node = p.node,
            v4 = ip.v4,
            v6 = ip.v6,
        ));
    }
    Ok(docs.join("---\n"))
}

/// `pods.yaml` as the Kubernetes API holds the pods before the CNI plugin has run: no addresses
/// (the daemon writes the `cni.projectcalico.org/podIPs` annotation when the plugin asks it).
pub fn pods_yaml_kube_unplumbed(plan: &Plan) -> String {
    plan.pods()
        .map(|p| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {POD_NAMESPACE}\n  \
                 labels:\n    app: {name}\n    calico-rs.lab/node: {node}\n\
                 spec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: lab\n",
                name = p.name,
                node = p.node,
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Writes `dir/name` atomically (temp file + rename).
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// A pod's addresses from IPAM in datastore directory `dir`, one per family, from the pools
/// `state` gives `node`; the same `handle` (`namespace/name`) gets the same addresses again.
pub fn allocate(dir: &Path, state: &ClusterState, node: &str, handle: &str) -> Result<PodIps> {
    allocate_with(&Ipam::new(dir)?, state, node, handle)
}

/// [`allocate`] with any IPAM store (the lab on Kubernetes uses the API's IPAMBlocks).
pub fn allocate_with<S: BlockStore>(
    ipam: &IpamCore<S>,
    state: &ClusterState,
    node: &str,
    handle: &str,
) -> Result<PodIps> {
    let v4 = ipam.allocate(
        node,
        handle,
        IpFamily::V4,
        &state.ip_pools_for_node(node, IpFamily::V4),
    )?;
    let v6 = ipam.allocate(
        node,
        handle,
        IpFamily::V6,
        &state.ip_pools_for_node(node, IpFamily::V6),
    )?;
    let (IpAddr::V4(v4), IpAddr::V6(v6)) = (v4, v6) else {
        bail!("lab: IPAM returned {v4} / {v6} for {handle}");
    };
    Ok(PodIps { v4, v6 })
}

/// The lab's documents but the pods, by file name: `bgp.yaml`, `pools.yaml`, `nodes.yaml`,
/// `namespaces.yaml`.
pub fn documents(plan: &Plan, tor: bool) -> [(&'static str, String); 4] {
    [
        ("bgp.yaml", bgp_yaml(tor)),
        ("pools.yaml", pools_yaml()),
        ("nodes.yaml", nodes_yaml(plan)),
        ("namespaces.yaml", namespaces_yaml()),
    ]
}

/// The cluster `docs` describe (the pools IPAM allocates from); an error if any is invalid.
pub fn state_of(docs: &[(&str, String)]) -> Result<ClusterState> {
    let all: String = docs.iter().map(|(_, t)| format!("{t}---\n")).collect();
    let (state, errors) = ClusterState::from_yaml("lab", &all);
    if let Some(e) = errors.first() {
        bail!("lab: generated datastore is invalid: {e}");
    }
    Ok(state)
}

/// Writes every file but `pods.yaml`, allocates each pod's addresses from IPAM in `dir` (the
/// datastore directory), then writes `pods.yaml`. Returns the addresses by pod name.
pub fn write_all(dir: &Path, plan: &Plan, tor: bool) -> Result<BTreeMap<String, PodIps>> {
    let state = write_documents(dir, plan, tor)?;
    let mut ips = BTreeMap::new();
    for node in &plan.nodes {
        for pod in &node.pods {
            let ip = allocate(dir, &state, &node.name, &pod.handle())?;
            ips.insert(pod.name.clone(), ip);
        }
    }
    write_atomic(dir, "pods.yaml", &pods_yaml(plan, &ips)?)?;
    Ok(ips)
}

/// Writes the lab's documents but the pods ([`documents`]) into `dir`; the cluster they describe.
pub fn write_documents(dir: &Path, plan: &Plan, tor: bool) -> Result<ClusterState> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = documents(plan, tor);
    for (name, text) in &files {
        write_atomic(dir, name, text)?;
    }
    state_of(&files)
}

/// The tests' cluster: `base.yaml`, the BGPConfiguration (full mesh), the two IPPools and the
/// Namespace.
pub fn cluster_base() -> String {
    format!(
        "apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {{name: default}}
spec: {{asNumber: {NODE_AS}, nodeToNodeMeshEnabled: true}}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: default-ipv4-ippool}}
spec: {{cidr: {POOL_V4}, blockSize: {BLOCK_SIZE_V4}}}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: default-ipv6-ippool}}
spec: {{cidr: \"{POOL_V6}\", blockSize: {BLOCK_SIZE_V6}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {POD_NAMESPACE}}}
"
    )
}

/// The tests' cluster: `tor.yaml`, the global BGPPeer `tor` (IPv4).
pub fn cluster_tor_peer() -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{peerIP: \
         {TOR_V4}, asNumber: {TOR_AS}}}\n"
    )
}

/// The tests' cluster: `node-NAME.yaml`, a Node with its segment addresses.
pub fn cluster_node(name: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    \
         projectcalico.org/IPv4Address: {v4}/{LAN_PREFIX_V4}\n    \
         projectcalico.org/IPv6Address: \"{v6}/{LAN_PREFIX_V6}\"\n"
    )
}

/// The tests' cluster: `pod-NAME.yaml`, a Pod on `node` with `labels` and its addresses.
pub fn cluster_pod(name: &str, node: &str, labels: &[(&str, &str)], v4: &str, v6: &str) -> String {
    let labels: String = labels.iter().map(|(k, v)| format!("{k}: {v}, ")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {POD_NAMESPACE}, labels: \
         {{{}}}}}\nspec: {{nodeName: {node}}}\nstatus: {{podIP: {v4}, podIPs: [{{ip: {v4}}}, {{ip: \
         \"{v6}\"}}]}}\n",
        labels.trim_end_matches(", "),
    )
}

/// The same Pod as the Kubernetes API holds it before the kubelet reports its status: the
/// addresses in the CNI plugin's `cni.projectcalico.org/podIPs` annotation (the status is the
/// kubelet's to write, through the status subresource).
pub fn cluster_pod_kube(
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    v4: &str,
    v6: &str,
) -> String {
    let labels: String = labels.iter().map(|(k, v)| format!("{k}: {v}, ")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {POD_NAMESPACE}, labels: \
         {{{}}}, annotations: {{cni.projectcalico.org/podIPs: \"{v4}/32,{v6}/128\"}}}}\nspec: \
         {{nodeName: {node}, containers: [{{name: c, image: busybox}}]}}\n",
        labels.trim_end_matches(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ClusterState {
        let (state, errors) = ClusterState::from_yaml("t", text);
        assert!(errors.is_empty(), "{errors:?}");
        state
    }

    #[test]
    fn config_parses_as_the_daemon_reads_it() {
        let plan = Plan::new(3, 2, crate::plan::DEFAULT_PREFIX).unwrap();
        let text = [
            bgp_yaml(true),
            pools_yaml(),
            nodes_yaml(&plan),
            namespaces_yaml(),
        ]
        .join("---\n");
        let s = parse(&text);
        assert_eq!(s.default_as_number(), 64512);
        assert!(s.node_to_node_mesh_enabled());
        assert_eq!(s.bgp_peers.len(), 2);
        let v4 = &s.bgp_peers["tor-v4"];
        assert_eq!(v4.peer_ip.unwrap().ip, IpAddr::from(TOR_V4));
        assert_eq!(v4.as_number, Some(65000));
        assert!(v4.node.is_none() && v4.node_selector.is_none());
        assert_eq!(
            s.bgp_peers["tor-v6"].peer_ip.unwrap().ip,
            IpAddr::from(TOR_V6)
        );
        assert_eq!(s.ip_pools.len(), 2);
        let p6 = &s.ip_pools["default-ipv6-ippool"];
        assert_eq!(p6.cidr.to_string(), "fd00:244::/48");
        assert_eq!(p6.block_size, 122);
        assert_eq!(s.ip_pools_for_node("node2", IpFamily::V4).len(), 1);
        assert_eq!(s.nodes.len(), 3);
        let n2 = &s.nodes["node2"].bgp;
        assert_eq!(n2.ipv4_address.unwrap().to_string(), "10.200.0.12/24");
        assert_eq!(n2.ipv6_address.unwrap().to_string(), "fd00:200::12/64");
        assert_eq!(s.as_number_of("node2"), 64512);
        assert!(s.namespaces.contains_key("default"));
    }

    #[test]
    fn no_tor_no_peers() {
        let s = parse(&bgp_yaml(false));
        assert!(s.bgp_peers.is_empty());
        assert!(s.bgp_configuration().is_some());
    }

    #[test]
    fn pods_carry_node_and_addresses() {
        let plan = Plan::new(2, 1, crate::plan::DEFAULT_PREFIX).unwrap();
        let mut ips = BTreeMap::new();
        for (i, p) in plan.pods().enumerate() {
            ips.insert(
                p.name.clone(),
                PodIps {
                    v4: Ipv4Addr::new(10, 244, 0, i as u8),
                    v6: Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, i as u16),
                },
            );
        }
        let s = parse(&pods_yaml(&plan, &ips).unwrap());
        let pod = &s.pods[&("default".to_string(), "node2-pod1".to_string())];
        assert_eq!(pod.node_name.as_deref(), Some("node2"));
        assert_eq!(
            pod.pod_ips,
            vec![
                "10.244.0.1".parse::<IpAddr>().unwrap(),
                "fd00:244::1".parse().unwrap()
            ]
        );
        assert_eq!(s.pods_on_node("node1").count(), 1);
        ips.remove("node1-pod1");
        assert!(pods_yaml(&plan, &ips).is_err());
    }

    #[test]
    fn write_all_allocates_from_ipam() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(2, 2, crate::plan::DEFAULT_PREFIX).unwrap();
        let ips = write_all(dir.path(), &plan, true).unwrap();
        assert_eq!(ips.len(), 4);
        let ipam = Ipam::new(dir.path()).unwrap();
        let b1 = ipam.blocks_for("node1").unwrap();
        let b2 = ipam.blocks_for("node2").unwrap();
        assert_eq!((b1.len(), b2.len()), (2, 2));
        for (pod, ip) in &ips {
            let blocks = if pod.starts_with("node1") { &b1 } else { &b2 };
            assert!(blocks.iter().any(|b| b.contains(&IpAddr::from(ip.v4))));
            assert!(blocks.iter().any(|b| b.contains(&IpAddr::from(ip.v6))));
        }
        // Idempotent: the same handles get the same addresses again.
        assert_eq!(write_all(dir.path(), &plan, true).unwrap(), ips);
        let text = std::fs::read_to_string(dir.path().join("pods.yaml")).unwrap();
        assert_eq!(parse(&text).pods.len(), 4);
        let hidden: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "temp files left: {hidden:?}");
    }

    /// The two spellings describe the same cluster: AS, mesh, pools, peer, node addresses.
    #[test]
    fn cluster_documents_match_the_lab_documents() {
        let plan = Plan::new(2, 1, crate::plan::DEFAULT_PREFIX).unwrap();
        let lab = parse(
            &[
                bgp_yaml(true),
                pools_yaml(),
                nodes_yaml(&plan),
                namespaces_yaml(),
            ]
            .join("---\n"),
        );
        let n2 = &plan.nodes[1];
        let cluster = parse(
            &[
                cluster_base(),
                cluster_tor_peer(),
                cluster_node("node2", n2.v4, n2.v6),
            ]
            .join("---\n"),
        );
        assert_eq!(cluster.default_as_number(), lab.default_as_number());
        assert!(cluster.node_to_node_mesh_enabled());
        for (name, pool) in &lab.ip_pools {
            let c = &cluster.ip_pools[name];
            assert_eq!(
                (c.cidr, c.block_size),
                (pool.cidr, pool.block_size),
                "{name}"
            );
        }
        let tor = &cluster.bgp_peers["tor"];
        assert_eq!(tor.peer_ip, lab.bgp_peers["tor-v4"].peer_ip);
        assert_eq!(tor.as_number, Some(TOR_AS));
        assert_eq!(cluster.nodes["node2"].bgp, lab.nodes["node2"].bgp);
        assert!(cluster.namespaces.contains_key(POD_NAMESPACE));
        // Exactly as the fault tests expect to edit them.
        assert!(cluster_base().contains("blockSize: 26}"));
        assert!(cluster_tor_peer().contains("spec: {peerIP: 10.200.0.1, asNumber: 65000}"));
        assert_eq!(
            cluster_pod("n1-p1", "n1", &[("tier", "stable")], "10.244.0.1", "fd00:244::1"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: n1-p1, namespace: default, labels: {tier: \
             stable}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.244.0.1, podIPs: [{ip: 10.244.0.1}, \
             {ip: \"fd00:244::1\"}]}\n"
        );
        let s = parse(&cluster_pod(
            "n1-p1",
            "n1",
            &[],
            "10.244.0.1",
            "fd00:244::1",
        ));
        assert_eq!(s.pods_on_node("n1").count(), 1);
    }
}
