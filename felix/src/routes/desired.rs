//! The desired route set of a node, computed from plain data.
//!
//! [`desired_routes`] maps a [`RoutesInput`] to at most one [`DesiredRoute`] per prefix:
//!
//! - each address of a local workload endpoint -> [`DesiredRoute::Workload`] (scope link, to the
//!   host side of its veth);
//! - each block affine to this node -> [`DesiredRoute::Blackhole`], so traffic to an unallocated
//!   address of our own block dies here instead of following the default route (and possibly
//!   looping back from the router). The pods' /32 and /128 routes are longer, so they win by
//!   longest-prefix match;
//! - each remote block -> [`DesiredRoute::Via`] its next hops (ECMP when there are several).
//!
//! Conflict rules, so the result depends only on the input's content, never on its order:
//!
//! 1. Prefixes are normalised (host bits cleared: `10.0.0.5/24` is `10.0.0.0/24`).
//! 2. Same prefix, several sources: workload beats local block beats remote block. A block we own
//!    is never routed to another node (a remote announcement of our own block is stale or looped).
//! 3. Two workloads claiming one address: the endpoint whose `(id, iface)` sorts first keeps it;
//!    the other is rejected (Kubernetes never assigns one IP twice; this is a datastore fault).
//! 4. Several remote entries for one block: their next hops are merged (sorted, deduplicated) into
//!    one ECMP route.
//! 5. Invalid parts are rejected and reported, never fatal to the rest: an interface name that
//!    Linux cannot hold, a next hop of the other address family, `onlink` without an interface,
//!    a remote block without any valid next hop.
//!
//! Prefixes that merely overlap (a workload /32 inside a remote block — a "borrowed" address — or a
//! remote /26 inside a local /24) are not conflicts: the kernel's longest match does the right thing.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use super::{NextHop, RoutesInput};
use crate::veth::valid_iface_name;

/// What the kernel should hold for one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DesiredRoute {
    /// `dst dev IFACE scope link`: a local pod.
    Workload {
        /// Host side of the pod's veth.
        iface: String,
        /// The endpoint, for logs.
        endpoint: String,
    },
    /// `blackhole dst`: a block affine to this node.
    Blackhole,
    /// `dst via GW [dev IF] [onlink]` or `nexthop ... nexthop ...`: a remote block. Sorted, unique,
    /// never empty.
    Via {
        /// The next hops.
        next_hops: Vec<NextHop>,
    },
}

impl DesiredRoute {
    /// The interface this route cannot exist without, if any.
    pub fn needs_iface(&self) -> Option<&str> {
        match self {
            DesiredRoute::Workload { iface, .. } => Some(iface),
            _ => None,
        }
    }
}

/// One input dropped by the conflict rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejected {
    /// The prefix concerned.
    pub prefix: IpNet,
    /// Which input: `workload default/nginx`, `local block`, `remote block`.
    pub source: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {}: {}", self.prefix, self.source, self.reason)
    }
}

/// The desired routes and what was rejected on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredRoutes {
    /// One route per prefix.
    pub routes: BTreeMap<IpNet, DesiredRoute>,
    /// Sorted.
    pub rejected: Vec<Rejected>,
}

/// Compute the desired routes of a node. Pure; see the module docs for the rules. Sort-based, so
/// 10,000 workloads take a few milliseconds.
pub fn desired_routes(input: &RoutesInput) -> DesiredRoutes {
    let mut rejected = Vec::new();
    let claims = workload_claims(input, &mut rejected);
    let mut entries = workload_routes(&claims, &mut rejected);
    let n_workloads = entries.len();
    let blocks = local_blocks(input);
    for prefix in &blocks {
        match workload_endpoint(&entries[..n_workloads], prefix) {
            Some(endpoint) => reject(
                &mut rejected,
                *prefix,
                "local block".into(),
                format!("prefix is a workload address of {endpoint}"),
            ),
            None => entries.push((*prefix, DesiredRoute::Blackhole)),
        }
    }
    for (prefix, hops) in remote_blocks(input, &mut rejected) {
        match remote_route(prefix, hops, &entries[..n_workloads], &blocks) {
            Ok(route) => entries.push((prefix, route)),
            Err(reason) => reject(&mut rejected, prefix, "remote block".into(), reason),
        }
    }
    entries.sort_unstable_by_key(|e| e.0);
    rejected.sort();
    rejected.dedup();
    DesiredRoutes {
        routes: entries.into_iter().collect(),
        rejected,
    }
}

fn reject(rejected: &mut Vec<Rejected>, prefix: IpNet, source: String, reason: String) {
    rejected.push(Rejected {
        prefix,
        source,
        reason,
    })
}

/// Rule 3, first half: every claim on an address as `(prefix, endpoint, iface)`, sorted and
/// deduplicated, so the winner (first) and the messages do not depend on the order of the input.
/// A workload whose interface name Linux cannot hold claims nothing; its addresses are rejected.
fn workload_claims<'a>(
    input: &'a RoutesInput,
    rejected: &mut Vec<Rejected>,
) -> Vec<(IpNet, &'a str, &'a str)> {
    let mut claims: Vec<(IpNet, &str, &str)> = Vec::with_capacity(input.workloads.len() * 2);
    for w in &input.workloads {
        if !valid_iface_name(&w.iface) {
            for net in &w.nets {
                reject(
                    rejected,
                    net.trunc(),
                    format!("workload {}", w.id),
                    format!("invalid interface name {:?}", w.iface),
                );
            }
            continue;
        }
        claims.extend(
            w.nets
                .iter()
                .map(|n| (n.trunc(), w.id.as_str(), w.iface.as_str())),
        );
    }
    claims.sort_unstable();
    claims.dedup();
    claims
}

/// Rule 3, second half: the first claim on each address gets its route; every later claim on
/// it is rejected, naming the winner. Sorted by prefix, as the claims are.
fn workload_routes(
    claims: &[(IpNet, &str, &str)],
    rejected: &mut Vec<Rejected>,
) -> Vec<(IpNet, DesiredRoute)> {
    let mut entries: Vec<(IpNet, DesiredRoute)> = Vec::with_capacity(claims.len());
    for (i, (prefix, id, iface)) in claims.iter().enumerate() {
        match i.checked_sub(1).map(|j| &claims[j]) {
            Some((prev, _, _)) if prev == prefix => {
                let winner = claims[..i]
                    .iter()
                    .rev()
                    .take_while(|c| c.0 == *prefix)
                    .last()
                    .map_or("", |c| c.1);
                reject(
                    rejected,
                    *prefix,
                    format!("workload {id}"),
                    format!("address also claimed by workload {winner}"),
                );
            }
            _ => entries.push((
                *prefix,
                DesiredRoute::Workload {
                    iface: iface.to_string(),
                    endpoint: id.to_string(),
                },
            )),
        }
    }
    entries
}

/// The endpoint holding `prefix` as a workload address, if any; `workloads` is sorted by prefix.
fn workload_endpoint(workloads: &[(IpNet, DesiredRoute)], prefix: &IpNet) -> Option<String> {
    let at = workloads.binary_search_by(|e| e.0.cmp(prefix)).ok()?;
    match &workloads[at].1 {
        DesiredRoute::Workload { endpoint, .. } => Some(endpoint.clone()),
        _ => None,
    }
}

/// This node's blocks, normalised, sorted and deduplicated (for binary search).
fn local_blocks(input: &RoutesInput) -> Vec<IpNet> {
    let mut blocks: Vec<IpNet> = input.local_blocks.iter().map(|b| b.trunc()).collect();
    blocks.sort_unstable();
    blocks.dedup();
    blocks
}

/// Rule 4: the valid next hops of every remote block, merged per normalised prefix, sorted and
/// deduplicated; an invalid next hop is rejected. A block may be left with none.
fn remote_blocks(
    input: &RoutesInput,
    rejected: &mut Vec<Rejected>,
) -> BTreeMap<IpNet, Vec<NextHop>> {
    let mut remote: BTreeMap<IpNet, Vec<NextHop>> = BTreeMap::new();
    for block in &input.remote_blocks {
        let prefix = block.cidr.trunc();
        let hops = remote.entry(prefix).or_default();
        for nh in &block.next_hops {
            match check_next_hop(&prefix, nh) {
                Ok(()) => hops.push(nh.clone()),
                Err(reason) => reject(rejected, prefix, "remote block".into(), reason),
            }
        }
    }
    for hops in remote.values_mut() {
        hops.sort();
        hops.dedup();
    }
    remote
}

/// Rules 2 and 5 for a remote block: its route, or why it gets none (no valid next hop, the
/// prefix is a workload's address, or the block is affine to this node).
fn remote_route(
    prefix: IpNet,
    next_hops: Vec<NextHop>,
    workloads: &[(IpNet, DesiredRoute)],
    local_blocks: &[IpNet],
) -> Result<DesiredRoute, String> {
    if next_hops.is_empty() {
        Err("no valid next hop".into())
    } else if let Some(endpoint) = workload_endpoint(workloads, &prefix) {
        Err(format!("prefix is a workload address of {endpoint}"))
    } else if local_blocks.binary_search(&prefix).is_ok() {
        Err("block is affine to this node".into())
    } else {
        Ok(DesiredRoute::Via { next_hops })
    }
}

fn check_next_hop(prefix: &IpNet, nh: &NextHop) -> Result<(), String> {
    if prefix.addr().is_ipv4() != nh.gateway.is_ipv4() {
        return Err(format!(
            "next hop {} is not of the block's address family",
            nh.gateway
        ));
    }
    if nh.gateway.is_unspecified() || nh.gateway.is_multicast() {
        return Err(format!("next hop {} is not a unicast address", nh.gateway));
    }
    match &nh.iface {
        Some(i) if !valid_iface_name(i) => Err(format!(
            "next hop {}: invalid interface name {i:?}",
            nh.gateway
        )),
        None if nh.onlink => Err(format!(
            "next hop {}: onlink needs an interface",
            nh.gateway
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{RemoteBlock, WorkloadEndpoint};
    use std::net::IpAddr;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn wep(id: &str, iface: &str, nets: &[&str]) -> WorkloadEndpoint {
        WorkloadEndpoint {
            id: id.into(),
            iface: iface.into(),
            nets: nets.iter().map(|n| net(n)).collect(),
        }
    }
    fn remote(cidr: &str, gws: &[&str]) -> RemoteBlock {
        RemoteBlock {
            cidr: net(cidr),
            next_hops: gws.iter().map(|g| NextHop::via(ip(g))).collect(),
        }
    }
    fn sample() -> RoutesInput {
        RoutesInput {
            workloads: vec![
                wep("default/a", "calia", &["10.65.0.1/32", "fd10::1/128"]),
                wep("default/b", "calib", &["10.65.0.2/32"]),
            ],
            local_blocks: vec![net("10.65.0.0/26"), net("fd10::/122")],
            remote_blocks: vec![
                remote("10.65.1.0/26", &["10.99.0.2"]),
                remote("fd10::40/122", &["fd00::2"]),
            ],
        }
    }

    #[test]
    fn one_route_per_source_kind() {
        let d = desired_routes(&sample());
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        assert_eq!(d.routes.len(), 7);
        assert_eq!(
            d.routes[&net("10.65.0.1/32")],
            DesiredRoute::Workload {
                iface: "calia".into(),
                endpoint: "default/a".into()
            }
        );
        assert_eq!(d.routes[&net("fd10::/122")], DesiredRoute::Blackhole);
        assert_eq!(
            d.routes[&net("10.65.1.0/26")],
            DesiredRoute::Via {
                next_hops: vec![NextHop::via(ip("10.99.0.2"))]
            }
        );
    }

    #[test]
    fn pod_route_is_longer_than_its_blackhole() {
        let d = desired_routes(&sample());
        let pod = net("10.65.0.1/32");
        let block = net("10.65.0.0/26");
        assert!(block.contains(&pod) && pod.prefix_len() > block.prefix_len());
        assert!(matches!(d.routes[&block], DesiredRoute::Blackhole));
        assert!(matches!(d.routes[&pod], DesiredRoute::Workload { .. }));
    }

    #[test]
    fn prefixes_are_normalised() {
        let mut i = RoutesInput::default();
        i.local_blocks.push(net("10.65.0.17/26"));
        let d = desired_routes(&i);
        assert!(d.routes.contains_key(&net("10.65.0.0/26")));
    }

    #[test]
    fn ecmp_next_hops_merge_sorted_and_unique() {
        let mut i = RoutesInput::default();
        i.remote_blocks
            .push(remote("10.65.1.0/26", &["10.99.0.3", "10.99.0.2"]));
        i.remote_blocks
            .push(remote("10.65.1.0/26", &["10.99.0.2", "10.99.0.4"]));
        let d = desired_routes(&i);
        let DesiredRoute::Via { next_hops } = &d.routes[&net("10.65.1.0/26")] else {
            panic!()
        };
        let gws: Vec<_> = next_hops.iter().map(|h| h.gateway.to_string()).collect();
        assert_eq!(gws, ["10.99.0.2", "10.99.0.3", "10.99.0.4"]);
    }

    #[test]
    fn local_block_beats_remote_announcement_of_it() {
        let mut i = sample();
        i.remote_blocks.push(remote("10.65.0.0/26", &["10.99.0.9"]));
        let d = desired_routes(&i);
        assert_eq!(d.routes[&net("10.65.0.0/26")], DesiredRoute::Blackhole);
        assert_eq!(d.rejected.len(), 1);
        assert!(d.rejected[0].reason.contains("affine"), "{}", d.rejected[0]);
    }

    #[test]
    fn workload_beats_block_with_same_prefix() {
        let mut i = RoutesInput::default();
        i.workloads
            .push(wep("ns/big", "calibig", &["10.65.2.0/26"]));
        i.local_blocks.push(net("10.65.2.0/26"));
        i.remote_blocks.push(remote("10.65.2.0/26", &["10.99.0.2"]));
        let d = desired_routes(&i);
        assert!(matches!(
            d.routes[&net("10.65.2.0/26")],
            DesiredRoute::Workload { .. }
        ));
        assert_eq!(d.rejected.len(), 2);
    }

    #[test]
    fn duplicate_workload_address_keeps_lowest_id_in_any_order() {
        let a = wep("ns/a", "calia", &["10.65.0.5/32"]);
        let b = wep("ns/b", "calib", &["10.65.0.5/32"]);
        for order in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            let d = desired_routes(&RoutesInput {
                workloads: order,
                ..Default::default()
            });
            assert_eq!(
                d.routes[&net("10.65.0.5/32")],
                DesiredRoute::Workload {
                    iface: "calia".into(),
                    endpoint: "ns/a".into()
                }
            );
            assert_eq!(d.rejected.len(), 1);
            assert_eq!(d.rejected[0].source, "workload ns/b");
        }
    }

    #[test]
    fn borrowed_address_inside_remote_block_is_not_a_conflict() {
        let mut i = RoutesInput::default();
        i.workloads.push(wep("ns/a", "calia", &["10.65.1.7/32"]));
        i.remote_blocks.push(remote("10.65.1.0/26", &["10.99.0.2"]));
        let d = desired_routes(&i);
        assert_eq!(d.routes.len(), 2);
        assert!(d.rejected.is_empty());
    }

    #[test]
    fn invalid_parts_are_rejected_alone() {
        let mut i = sample();
        i.workloads
            .push(wep("ns/x", "this-name-is-too-long", &["10.65.0.9/32"]));
        i.remote_blocks.push(remote("10.65.3.0/26", &["fd00::2"]));
        i.remote_blocks.push(RemoteBlock {
            cidr: net("10.65.4.0/26"),
            next_hops: vec![
                NextHop {
                    gateway: ip("10.99.0.2"),
                    iface: None,
                    onlink: true,
                },
                NextHop::via(ip("10.99.0.3")),
            ],
        });
        let d = desired_routes(&i);
        assert_eq!(d.routes.len(), 8, "sample's 7 + 10.65.4.0/26");
        assert_eq!(
            d.routes[&net("10.65.4.0/26")],
            DesiredRoute::Via {
                next_hops: vec![NextHop::via(ip("10.99.0.3"))]
            }
        );
        let reasons: Vec<String> = d.rejected.iter().map(|r| r.to_string()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:#?}");
        assert!(reasons.iter().any(|r| r.contains("invalid interface name")));
        assert!(reasons.iter().any(|r| r.contains("address family")));
        assert!(reasons
            .iter()
            .any(|r| r.contains("onlink needs an interface")));
        assert!(reasons.iter().any(|r| r.contains("no valid next hop")));
    }

    #[test]
    fn result_does_not_depend_on_input_order() {
        let i = sample();
        let mut r = i.clone();
        r.workloads.reverse();
        r.local_blocks.reverse();
        r.remote_blocks.reverse();
        for w in &mut r.workloads {
            w.nets.reverse();
        }
        assert_eq!(desired_routes(&i), desired_routes(&r));
    }
}
