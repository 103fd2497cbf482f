//! The lab's address and name plan: a pure function of (nodes, pods per node).
//!
//! ```text
//!  crslab-lan  (bridge br0)                       crslab-tor   eth0 10.200.0.1/24   fd00:200::1/64
//!    |-- t0 ------------------------------------- '
//!    |-- v1 -- crslab-node1  eth0 10.200.0.11/24 fd00:200::11/64
//!    |            |-- cali<sha1("default.node1-pod1")[..11]> == eth0 of crslab-n1p1 (pod node1-pod1)
//!    |            '-- ...                                          crslab-n1p2 (pod node1-pod2)
//!    '-- vK -- crslab-nodeK  eth0 10.200.0.(10+K)/24 fd00:200::(10+K)/64
//! ```
//! The IPv6 host part repeats the decimal digits of the IPv4 one (`.11` -> `::11`), so the two read
//! alike. Every namespace name starts with [`NETNS_PREFIX`], which is reserved for the lab.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Prefix of every namespace the lab makes; `lab down` removes all namespaces that carry it.
pub const NETNS_PREFIX: &str = "crslab-";
/// Namespace holding the L2 segment's bridge.
pub const LAN_NS: &str = "crslab-lan";
/// Namespace of the top-of-rack router.
pub const TOR_NS: &str = "crslab-tor";
/// The bridge inside [`LAN_NS`].
pub const BRIDGE: &str = "br0";
/// Bridge port (in [`LAN_NS`]) of the ToR's link.
pub const TOR_PORT: &str = "t0";
/// Interface name of the segment link in the ToR and node namespaces, and of a pod's veth.
pub const ETH: &str = "eth0";
/// The ToR's addresses on the segment (also the nodes' default gateways).
pub const TOR_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const TOR_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
/// Prefix lengths of the segment.
pub const LAN_PREFIX_V4: u8 = 24;
pub const LAN_PREFIX_V6: u8 = 64;
/// The ToR's AS (eBGP to the nodes) and the cluster's AS.
pub const TOR_AS: u32 = 65000;
pub const NODE_AS: u32 = 64512;
/// Kubernetes namespace of the lab's pods.
pub const POD_NAMESPACE: &str = "default";
/// IPPools of the lab.
pub const POOL_V4: &str = "10.244.0.0/16";
pub const POOL_V6: &str = "fd00:244::/48";
pub const BLOCK_SIZE_V4: u8 = 26;
pub const BLOCK_SIZE_V6: u8 = 122;
/// Largest lab: the node's host number `10 + K` must stay below 255.
pub const MAX_NODES: usize = 200;
/// More pods per node than this would only make the lab slow to build.
pub const MAX_PODS_PER_NODE: usize = 64;

/// One node of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// 1-based.
    pub index: usize,
    /// Kubernetes Node name, `node{K}`.
    pub name: String,
    pub netns: String,
    /// Bridge port in [`LAN_NS`] of this node's link.
    pub lan_port: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub pods: Vec<PodPlan>,
}

/// One pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    /// Kubernetes Pod name, `node{K}-pod{J}`.
    pub name: String,
    pub node: String,
    pub netns: String,
    /// Short label for tables, `n{K}p{J}` (the netns name without the prefix).
    pub label: String,
    /// Host-side veth in the node namespace (Calico's naming rule).
    pub host_iface: String,
}

impl PodPlan {
    /// The IPAM handle and `namespace/name` of the pod.
    pub fn handle(&self) -> String {
        format!("{POD_NAMESPACE}/{}", self.name)
    }
}

/// The whole lab layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
}

impl Plan {
    /// The layout for `nodes` nodes with `pods_per_node` pods each; checks the limits.
    pub fn new(nodes: usize, pods_per_node: usize) -> anyhow::Result<Plan> {
        if nodes == 0 || nodes > MAX_NODES {
            anyhow::bail!("lab: --nodes {nodes}: must be 1-{MAX_NODES}");
        }
        if pods_per_node > MAX_PODS_PER_NODE {
            anyhow::bail!("lab: --pods-per-node {pods_per_node}: must be 0-{MAX_PODS_PER_NODE}");
        }
        let nodes = (1..=nodes)
            .map(|k| {
                let name = format!("node{k}");
                let host = 10 + k;
                NodePlan {
                    index: k,
                    netns: format!("{NETNS_PREFIX}{name}"),
                    lan_port: format!("v{k}"),
                    v4: Ipv4Addr::new(10, 200, 0, host as u8),
                    v6: v6_host(host),
                    pods: (1..=pods_per_node)
                        .map(|j| {
                            let pod = format!("{name}-pod{j}");
                            let label = format!("n{k}p{j}");
                            PodPlan {
                                host_iface: felix::workload_iface_name(POD_NAMESPACE, &pod),
                                netns: format!("{NETNS_PREFIX}{label}"),
                                name: pod,
                                node: name.clone(),
                                label,
                            }
                        })
                        .collect(),
                    name,
                }
            })
            .collect();
        Ok(Plan { nodes })
    }

    /// Every pod, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &PodPlan> {
        self.nodes.iter().flat_map(|n| &n.pods)
    }

    /// Every namespace of the lab, in creation order (segment, ToR, nodes, pods).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![LAN_NS.to_string(), TOR_NS.to_string()];
        v.extend(self.nodes.iter().map(|n| n.netns.clone()));
        v.extend(self.pods().map(|p| p.netns.clone()));
        v
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node whose segment address is `ip`.
    pub fn node_by_addr(&self, ip: std::net::IpAddr) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| ip == n.v4 || ip == n.v6)
    }
}

/// `fd00:200::{host}` where the last group is written with the decimal digits of `host`.
fn v6_host(host: usize) -> Ipv6Addr {
    let group = u16::from_str_radix(&host.to_string(), 16).expect("at most 3 decimal digits");
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        let p = Plan::new(12, 2).unwrap();
        let n1 = &p.nodes[0];
        assert_eq!(n1.name, "node1");
        assert_eq!(n1.netns, "crslab-node1");
        assert_eq!(n1.v4, Ipv4Addr::new(10, 200, 0, 11));
        assert_eq!(n1.v6.to_string(), "fd00:200::11");
        let n12 = &p.nodes[11];
        assert_eq!(n12.v4.to_string(), "10.200.0.22");
        assert_eq!(n12.v6.to_string(), "fd00:200::22");
        let pod = &n1.pods[1];
        assert_eq!(pod.name, "node1-pod2");
        assert_eq!(pod.netns, "crslab-n1p2");
        assert_eq!(pod.handle(), "default/node1-pod2");
        assert_eq!(
            pod.host_iface,
            felix::workload_iface_name("default", "node1-pod2")
        );
        assert!(pod.host_iface.starts_with("cali") && pod.host_iface.len() == 15);
        assert_eq!(p.pods().count(), 24);
        assert_eq!(p.namespaces().len(), 2 + 12 + 24);
        assert!(p
            .namespaces()
            .iter()
            .all(|n| n.starts_with(NETNS_PREFIX) && n.len() <= 15));
        assert_eq!(
            p.node_by_addr("fd00:200::22".parse().unwrap())
                .unwrap()
                .name,
            "node12"
        );
    }

    #[test]
    fn largest_lab_fits_the_segment() {
        let p = Plan::new(MAX_NODES, 0).unwrap();
        assert_eq!(p.nodes.last().unwrap().v4.to_string(), "10.200.0.210");
        assert_eq!(p.nodes.last().unwrap().v6.to_string(), "fd00:200::210");
    }

    #[test]
    fn limits() {
        assert!(Plan::new(0, 1).is_err());
        assert!(Plan::new(MAX_NODES + 1, 1).is_err());
        assert!(Plan::new(1, MAX_PODS_PER_NODE + 1).is_err());
        assert_eq!(Plan::new(1, 0).unwrap().pods().count(), 0);
    }
}
