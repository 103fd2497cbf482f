//! Pods as a CNI plugin makes them: a namespace per pod joined to its node by a veth whose host
//! side is named by Calico's rule (`cali` + 11 hex digits), `eth0` in the pod with the pod's /32
//! and /128, a link-scope route to 169.254.1.1 and default routes via Calico's gateways
//! (`felix::veth`). The tests' pods ([`add_pod`], [`crate::cluster::Cluster`], which stage a
//! pod's addresses, veth and Pod separately) are plumbed by these lines; the lab command's are
//! the CNI plugin's.

use anyhow::Result;
use felix::workload_iface_name;

use crate::lab::{Lab, Netns};

/// The pod side of a pod's veth.
pub const POD_IFACE: &str = "eth0";

/// Calico's host-side veth MAC (`felix::veth::HOST_SIDE_MAC`) as `ip` writes it.
pub fn host_mac() -> String {
    let b: Vec<String> = felix::veth::HOST_SIDE_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    b.join(":")
}

/// The `ip -batch` line, run in the node's namespace, that makes the veth `host_iface` with its
/// peer `eth0` in namespace `pod_ns`; with `mac` the host side gets that MAC at creation.
pub fn veth_line(host_iface: &str, pod_ns: &str, mac: Option<&str>) -> String {
    let address = mac.map_or(String::new(), |m| format!(" address {m}"));
    format!("link add {host_iface}{address} type veth peer name {POD_IFACE} netns {pod_ns}")
}

/// The `ip -batch` lines, run in the pod's namespace, that give `eth0` the pod's addresses and
/// routes as the CNI plugin does.
pub fn pod_side_lines(v4: &str, v6: &str) -> Vec<String> {
    let (gw4, gw6) = (felix::veth::IPV4_GATEWAY, felix::veth::IPV6_GATEWAY);
    vec![
        format!("addr add {v4}/32 dev {POD_IFACE}"),
        format!("addr add {v6}/128 dev {POD_IFACE} nodad"),
        format!("link set {POD_IFACE} up"),
        format!("route add {gw4}/32 dev {POD_IFACE} scope link"),
        format!("route add 0.0.0.0/0 via {gw4} dev {POD_IFACE}"),
        format!("route add ::/0 via {gw6} dev {POD_IFACE}"),
    ]
}

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

/// Inside the pod's namespace, as the CNI plugin does it: [`pod_side_lines`].
pub fn configure_pod_side(pod: &Netns, v4: &str, v6: &str) -> Result<()> {
    pod.ip_batch(&pod_side_lines(v4, v6))
}

/// The veth `iface` in `node` (down, random MAC) to `eth0` in `pod`.
pub fn make_veth(node: &Netns, iface: &str, pod: &Netns) -> Result<()> {
    node.ip_batch(&[veth_line(iface, pod.name(), None)])
}

/// The destinations of the routes carrying the daemon's protocol (80), v4 and v6 (`/32` and
/// `/128` spelled out).
pub fn our_prefixes(ns: &Netns) -> Result<std::collections::BTreeSet<String>> {
    crate::routes::prefixes(ns.name())
}

#[cfg(test)]
mod tests {
    #[test]
    fn plumbing_lines() {
        assert_eq!(super::host_mac(), "ee:ee:ee:ee:ee:ee");
        assert_eq!(
            super::veth_line("cali0", "crslab-n1p1", Some("ee:ee:ee:ee:ee:ee")),
            "link add cali0 address ee:ee:ee:ee:ee:ee type veth peer name eth0 netns crslab-n1p1"
        );
        let l = super::pod_side_lines("10.244.0.1", "fd00:244::1");
        assert_eq!(l[3], "route add 169.254.1.1/32 dev eth0 scope link");
        assert_eq!(
            l[5],
            "route add ::/0 via fe80::ecee:eeff:feee:eeee dev eth0"
        );
    }
}
