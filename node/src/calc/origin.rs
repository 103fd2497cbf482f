//! This node's pods and the prefixes it originates: its affine blocks, plus a /32 or /128 for a
//! local pod whose address lies outside them (borrowed or static).

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::LocalPod;
use crate::datastore::ClusterState;

/// The pods on `node` that have addresses, and what the node originates.
pub(super) fn local(
    state: &ClusterState,
    node: &str,
    local_blocks: &[IpNet],
) -> (Vec<LocalPod>, BTreeSet<IpNet>) {
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

    (local_pods, originate)
}
