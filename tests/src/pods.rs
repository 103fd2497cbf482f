//! Pods as a CNI plugin makes them: a namespace per pod joined to its node by a veth whose host
//! side is named by Calico's rule, with Calico's gateways; and a reader for the routes felix owns.

use std::collections::BTreeSet;

use anyhow::Result;
use felix::workload_iface_name;

use crate::lab::{Lab, Netns};

pub struct Pod {
    pub ns: Netns,
    pub id: String,
    pub iface: String,
    pub v4: String,
    pub v6: String,
}

/// The host side of a pod's veth, as a CNI plugin makes it: `cali…` in the node namespace (left
/// down with a random MAC: felix sets it up), `eth0` in the pod with a /32 and a /128 and the
/// Calico gateways.
pub fn add_pod(lab: &Lab, node: &Netns, name: &str, v4: &str, v6: &str) -> Result<Pod> {
    let ns = lab.netns(&format!("{}.{name}", node.short()))?;
    let pod_name = format!("{}-{name}", node.short());
    let iface = workload_iface_name("default", &pod_name);
    make_veth(node, &iface, &ns)?;
    configure_pod_side(&ns, v4, v6)?;
    Ok(Pod {
        ns,
        id: format!("default/{pod_name}"),
        iface,
        v4: v4.into(),
        v6: v6.into(),
    })
}

/// Inside the pod's namespace, as the CNI plugin does it: the pod's /32 and /128 on `eth0`, a
/// link-scope route to 169.254.1.1 and the default routes via Calico's gateways.
pub fn configure_pod_side(pod: &Netns, v4: &str, v6: &str) -> Result<()> {
    pod.sh(&format!(
        "set -e
         ip addr add {v4}/32 dev eth0
         ip -6 addr add {v6}/128 dev eth0 nodad
         ip link set eth0 up
         ip route add {gw4} dev eth0 scope link
         ip route add default via {gw4} dev eth0
         ip -6 route add default via {gw6} dev eth0",
        gw4 = felix::veth::IPV4_GATEWAY,
        gw6 = felix::veth::IPV6_GATEWAY,
    ))?;
    Ok(())
}

pub fn make_veth(node: &Netns, iface: &str, pod: &Netns) -> Result<()> {
    node.ip(&[
        "link",
        "add",
        iface,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    Ok(())
}

/// The destinations of the routes carrying protocol 80, v4 and v6 (`/32` and `/128` spelled out).
pub fn our_prefixes(ns: &Netns) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for fam in ["-4", "-6"] {
        for line in ns.ip(&[fam, "route", "show", "proto", "80"])?.lines() {
            let mut words = line.split_whitespace();
            let mut dst = words.next().unwrap_or_default();
            if matches!(dst, "blackhole" | "unreachable" | "prohibit") {
                dst = words.next().unwrap_or_default();
            }
            let dst = match (dst.contains('/'), fam) {
                (true, _) => dst.to_string(),
                (false, "-4") => format!("{dst}/32"),
                (false, _) => format!("{dst}/128"),
            };
            out.insert(dst);
        }
    }
    Ok(out)
}
