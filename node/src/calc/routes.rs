//! felix's route input: local pods, affine blocks, and the routes BGP learned.

use std::collections::BTreeMap;
use std::net::IpAddr;

use felix::routes::{NextHop, RemoteBlock, RoutesInput, WorkloadEndpoint};
use ipnet::IpNet;

use super::Desired;

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
