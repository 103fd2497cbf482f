//! The lab's address and name plan: a pure function of (nodes, pods per node). The segment's
//! addresses, ASes and pools are also those of the tests' [`crate::cluster::Cluster`].
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
//! alike. Every namespace name starts with the lab's prefix ([`DEFAULT_PREFIX`] unless
//! `--netns-prefix` says otherwise), which is reserved for the lab.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Prefix of every namespace the default lab makes; `lab down` removes all namespaces that carry
/// the lab's prefix. Two labs with different prefixes (and directories) can run side by side: their
/// addresses only ever exist inside their own namespaces.
pub const DEFAULT_PREFIX: &str = "crslab-";
/// What every lab prefix starts with, so that the lab's guard ([`crate::netns::in_lab_ns`]) can
/// refuse to touch any other namespace whatever prefix it was given.
pub const PREFIX_FAMILY: &str = crate::netns::FAMILY;
/// Longest prefix: `PREFIX` + `n200p64` must stay within 15 characters (the names also label the
/// tables).
pub const MAX_PREFIX_LEN: usize = 8;
/// The bridge inside the segment namespace ([`Plan::lan_ns`]).
pub const BRIDGE: &str = "br0";
/// Bridge port (in [`Plan::lan_ns`]) of the ToR's link.
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
    /// Bridge port in [`Plan::lan_ns`] of this node's link.
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
    /// Prefix of every namespace name (see [`check_prefix`]).
    pub prefix: String,
    pub nodes: Vec<NodePlan>,
}

/// Checks a namespace prefix: `crs`, a lowercase letter, lowercase letters and digits, then `-`, at
/// most [`MAX_PREFIX_LEN`] characters. The letter keeps lab names apart from the test crate's
/// `crs{PID}-…` namespaces, which its sweeper deletes once that PID is gone.
pub fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    let middle = prefix
        .strip_prefix(PREFIX_FAMILY)
        .and_then(|p| p.strip_suffix('-'));
    let ok = middle.is_some_and(|m| {
        m.starts_with(|c: char| c.is_ascii_lowercase())
            && m.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    }) && prefix.len() <= MAX_PREFIX_LEN;
    if !ok {
        anyhow::bail!(
            "lab: --netns-prefix {prefix:?}: must be `{PREFIX_FAMILY}`, a lowercase letter, \
             lowercase letters or digits, then `-`, at most {MAX_PREFIX_LEN} characters (e.g. \
             {DEFAULT_PREFIX:?})"
        );
    }
    Ok(())
}

impl Plan {
    /// The layout for `nodes` nodes with `pods_per_node` pods each, in namespaces named
    /// `{prefix}...`; checks the limits and the prefix.
    pub fn new(nodes: usize, pods_per_node: usize, prefix: &str) -> anyhow::Result<Plan> {
        check_prefix(prefix)?;
        if nodes == 0 || nodes > MAX_NODES {
            anyhow::bail!("lab: --nodes {nodes}: must be 1-{MAX_NODES}");
        }
        if pods_per_node > MAX_PODS_PER_NODE {
            anyhow::bail!("lab: --pods-per-node {pods_per_node}: must be 0-{MAX_PODS_PER_NODE}");
        }
        let nodes = (1..=nodes)
            .map(|k| {
                let name = format!("node{k}");
                NodePlan {
                    index: k,
                    netns: format!("{prefix}{name}"),
                    lan_port: format!("v{k}"),
                    v4: node_v4(k),
                    v6: node_v6(k),
                    pods: (1..=pods_per_node)
                        .map(|j| {
                            let pod = format!("{name}-pod{j}");
                            let label = format!("n{k}p{j}");
                            PodPlan {
                                host_iface: felix::workload_iface_name(POD_NAMESPACE, &pod),
                                netns: format!("{prefix}{label}"),
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
        Ok(Plan {
            prefix: prefix.to_string(),
            nodes,
        })
    }

    /// Namespace holding the L2 segment's bridge.
    pub fn lan_ns(&self) -> String {
        format!("{}lan", self.prefix)
    }

    /// Namespace of the top-of-rack router.
    pub fn tor_ns(&self) -> String {
        format!("{}tor", self.prefix)
    }

    /// Namespace of the Kubernetes API server (`lab up --datastore kubernetes` only).
    pub fn api_ns(&self) -> String {
        format!("{}api", self.prefix)
    }

    /// Every pod, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &PodPlan> {
        self.nodes.iter().flat_map(|n| &n.pods)
    }

    /// Every namespace of the lab, in creation order (segment, ToR, nodes, pods).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.lan_ns(), self.tor_ns()];
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

/// Node `k`'s (1-based) IPv4 address on the segment, `10.200.0.(10+k)`.
pub fn node_v4(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, (10 + k) as u8)
}

/// Node `k`'s IPv6 address on the segment, `fd00:200::(10+k)`, where the last group is written
/// with the decimal digits of `10+k`.
pub fn node_v6(k: usize) -> Ipv6Addr {
    let group = u16::from_str_radix(&(10 + k).to_string(), 16).expect("at most 3 decimal digits");
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        let p = Plan::new(12, 2, DEFAULT_PREFIX).unwrap();
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
            .all(|n| n.starts_with(DEFAULT_PREFIX) && n.len() <= 15));
        assert_eq!(p.tor_ns(), "crslab-tor");
        let other = Plan::new(1, 1, "crst1-").unwrap();
        assert_eq!(
            other.namespaces(),
            ["crst1-lan", "crst1-tor", "crst1-node1", "crst1-n1p1"]
        );
        assert_eq!(
            p.node_by_addr("fd00:200::22".parse().unwrap())
                .unwrap()
                .name,
            "node12"
        );
    }

    #[test]
    fn largest_lab_fits_the_segment() {
        let p = Plan::new(MAX_NODES, 0, DEFAULT_PREFIX).unwrap();
        assert_eq!(p.nodes.last().unwrap().v4.to_string(), "10.200.0.210");
        assert_eq!(p.nodes.last().unwrap().v6.to_string(), "fd00:200::210");
    }

    #[test]
    fn limits() {
        let d = DEFAULT_PREFIX;
        assert!(Plan::new(0, 1, d).is_err());
        assert!(Plan::new(MAX_NODES + 1, 1, d).is_err());
        assert!(Plan::new(1, MAX_PODS_PER_NODE + 1, d).is_err());
        assert_eq!(Plan::new(1, 0, d).unwrap().pods().count(), 0);
        let longest = Plan::new(MAX_NODES, MAX_PODS_PER_NODE, "crsabcd-").unwrap();
        assert!(longest.namespaces().iter().all(|n| n.len() <= 15));
        for bad in [
            "",
            "crs-",
            "lab-",
            "crslab",
            "crsLab-",
            "crs/x-",
            "crsabcde-",
            "crs-x-",
            "crs12-",
        ] {
            assert!(Plan::new(1, 1, bad).is_err(), "{bad:?}");
        }
    }
}
