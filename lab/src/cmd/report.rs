//! What `lab up` and `lab status` print: per node its BGP peers (`calicoctl-rs node status` when
//! that binary exists, else a summary built from the ToR's view and the node's routes), then the
//! reachability matrices.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use calico_node::datastore::IpFamily;

use super::converge::Observed;
use super::record::{Paths, Record};
use super::Tor;
use crate::check::{self, Matrix, PingTarget};
use crate::plan::{NodePlan, Plan, TOR_AS, TOR_V4, TOR_V6};
use crate::proc;
use crate::routes::ROUTE_PROTOCOL;

/// One line on the ToR: sessions up, blocks learned from their owners, routes held.
pub fn tor_summary(plan: &Plan, tor: Tor, o: &Observed) -> Option<String> {
    let t = o.tor.as_ref()?;
    let sessions = plan.nodes.len() * 2;
    let up = t.sessions.iter().filter(|s| s.established()).count();
    let learned = o
        .blocks
        .iter()
        .filter(|(b, owner)| t.routes.get(b).is_some_and(|from| from.contains(*owner)))
        .count();
    let state = if o.tor_alive { "" } else { ", NOT RUNNING" };
    Some(format!(
        "ToR: {tor} in {} (AS {TOR_AS}, {TOR_V4}, {TOR_V6}{state}): {up}/{sessions} sessions \
         Established, {learned}/{} node blocks learned from their owners, {} prefixes",
        plan.tor_ns(),
        o.blocks.len(),
        t.routes.len()
    ))
}

/// Per node: `calicoctl-rs node status` output, or [`node_summary`].
pub fn print_nodes(plan: &Plan, rec: &Record, paths: &Paths, o: &Observed) {
    for n in &plan.nodes {
        println!();
        let ctl = rec.ctl_bin.as_ref().filter(|p| p.exists());
        if let Some(ctl) = ctl {
            let grpc = format!("unix:{}", paths.grpc_socket(&n.name).display());
            let ctl = ctl.to_string_lossy();
            let argv = [ctl.as_ref(), "node", "status", "--grpc", &grpc];
            match proc::output(&argv, None, Duration::from_secs(10)) {
                Ok(out) if out.status.success() => {
                    println!("{} ({}, {}):", n.name, n.v4, n.v6);
                    for line in String::from_utf8_lossy(&out.stdout).lines() {
                        if line.is_empty() {
                            println!();
                        } else {
                            println!("  {line}");
                        }
                    }
                    print!("{}", blocks_and_routes(plan, n, o));
                    continue;
                }
                Ok(out) => println!(
                    "({} node status failed: {})",
                    ctl,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => println!("({ctl} node status failed: {e:#})"),
            }
        }
        let pid = rec.daemons.get(&n.name).map(|p| p.pid);
        print!("{}", node_summary(plan, n, pid, o));
    }
}

/// A node's peers as seen from outside: the ToR's sessions to it, and its mesh peers judged by
/// the routes it has to their blocks; then its blocks and routes.
pub fn node_summary(plan: &Plan, n: &NodePlan, pid: Option<u32>, o: &Observed) -> String {
    let running = o.daemons.get(&n.name).copied().unwrap_or(false);
    let daemon = match (pid, running) {
        (Some(pid), true) => format!("daemon pid {pid} running"),
        (Some(pid), false) => format!("daemon pid {pid} NOT RUNNING"),
        (None, _) => "no daemon".into(),
    };
    let mut s = format!("{}  {}  {}  {daemon}\n", n.name, n.v4, n.v6);
    if let Some(t) = &o.tor {
        for (family, addr) in [
            (IpFamily::V4, IpAddr::from(TOR_V4)),
            (IpFamily::V6, TOR_V6.into()),
        ] {
            let (state, since, info) = t
                .session(&n.name, family)
                .map_or(("(no session)", "", ""), |x| {
                    (x.state.as_str(), x.since.as_str(), x.info.as_str())
                });
            let since = if since.is_empty() {
                String::new()
            } else {
                format!("  since {since}")
            };
            let info = if info.is_empty() {
                String::new()
            } else {
                format!("  {info}")
            };
            let _ = writeln!(
                s,
                "  peer {addr:<14} ToR AS {TOR_AS}   {state}{since}{info}"
            );
        }
    }
    let mut mesh = Vec::new();
    for m in plan.nodes.iter().filter(|m| m.name != n.name) {
        let blocks: Vec<_> = o.blocks_of(&m.name).collect();
        let have = blocks.iter().filter(|b| o.has_route(&n.name, b)).count();
        mesh.push(match blocks.len() {
            0 => format!("{} ?", m.name),
            len if have == len => format!("{} ✓", m.name),
            len => format!("{} ✗ ({have}/{len} blocks)", m.name),
        });
    }
    if !mesh.is_empty() {
        let _ = writeln!(
            s,
            "  mesh (judged by routes to their blocks): {}",
            mesh.join("  ")
        );
    }
    s + &blocks_and_routes(plan, n, o)
}

/// The node's own blocks, and its routes to the other nodes' blocks.
fn blocks_and_routes(plan: &Plan, n: &NodePlan, o: &Observed) -> String {
    let own: Vec<String> = o.blocks_of(&n.name).map(|b| b.to_string()).collect();
    let mut s = format!(
        "  blocks  {}\n",
        if own.is_empty() {
            "(none)".to_string()
        } else {
            own.join("  ")
        }
    );
    let routes = o.routes.get(&n.name);
    let mut first = true;
    for (block, owner) in o.blocks.iter().filter(|(_, m)| **m != n.name) {
        let label = if first { "routes" } else { "" };
        first = false;
        let line = match routes.and_then(|r| r.get(block)) {
            Some(r) if r.kind == "unicast" => {
                let via = r.gateway.map_or_else(
                    || format!("dev {}", r.dev.as_deref().unwrap_or("?")),
                    |g| {
                        let who = plan.node_by_addr(g).map_or("", |m| m.name.as_str());
                        format!("via {g} {who}")
                    },
                );
                format!("{:<18} {via}", block.to_string())
            }
            Some(r) => format!("{:<18} {} (owner {owner})", block.to_string(), r.kind),
            None => format!("{:<18} MISSING (owner {owner})", block.to_string()),
        };
        let _ = writeln!(s, "  {label:<7} {}", line.trim_end());
    }
    if let Some(r) = routes {
        let pods = r
            .values()
            .filter(|r| r.dev.as_deref().is_some_and(|d| d.starts_with("cali")));
        let _ = writeln!(
            s,
            "  local   {} pod routes, {} blackholes (route protocol {ROUTE_PROTOCOL})",
            pods.count(),
            r.values().filter(|r| r.kind == "blackhole").count()
        );
    }
    s
}

/// The matrix targets: every pod of the record, in plan order.
pub fn targets(plan: &Plan, rec: &Record) -> Vec<PingTarget> {
    plan.pods()
        .filter_map(|p| {
            rec.pods.get(&p.name).map(|ip| PingTarget {
                label: p.label.clone(),
                netns: p.netns.clone(),
                v4: ip.v4.into(),
                v6: ip.v6.into(),
            })
        })
        .collect()
}

/// Pings and prints both matrices and a legend; returns them.
pub fn print_matrix(plan: &Plan, rec: &Record) -> Vec<(IpFamily, Matrix)> {
    let pods = targets(plan, rec);
    println!();
    if pods.len() < 2 {
        println!("Pod reachability: fewer than two pods, nothing to ping.");
        return Vec::new();
    }
    println!("Pods:");
    for (p, t) in plan.pods().zip(&pods) {
        println!(
            "  {:<6} {}/{:<14} {:<15} {}",
            t.label,
            crate::plan::POD_NAMESPACE,
            p.name,
            t.v4,
            t.v6
        );
    }
    let grids = check::ping_matrices(&pods, 2);
    for (family, m) in &grids {
        println!();
        print!("{}", check::render_grid(*family, m));
    }
    let (ok, all) = grids
        .iter()
        .map(|(_, m)| m.count())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    println!();
    println!("{ok}/{all} pod pairs reachable (IPv4 and IPv6)");
    grids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::tor::{Session, TorView};
    use crate::routes::NodeRoute;

    #[test]
    fn summary_shows_peers_mesh_and_routes() {
        let plan = Plan::new(3, 1, crate::plan::DEFAULT_PREFIX).unwrap();
        let mut o = Observed::default();
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        o.blocks.insert(net("10.244.0.0/26"), "node1".into());
        o.blocks.insert(net("10.244.0.64/26"), "node2".into());
        o.blocks.insert(net("10.244.0.128/26"), "node3".into());
        o.daemons.insert("node1".into(), true);
        o.routes.insert(
            "node1".into(),
            [(
                net("10.244.0.64/26"),
                NodeRoute {
                    dst: net("10.244.0.64/26"),
                    kind: "unicast".into(),
                    gateway: Some("10.200.0.12".parse().unwrap()),
                    dev: Some("eth0".into()),
                },
            )]
            .into(),
        );
        o.tor = Some(TorView {
            sessions: vec![Session {
                node: "node1".into(),
                family: IpFamily::V4,
                state: "Established".into(),
                since: "10:41:07.312".into(),
                info: String::new(),
            }],
            routes: Default::default(),
        });
        o.tor_alive = true;
        assert_eq!(
            tor_summary(&plan, Tor::Bird, &o).unwrap(),
            "ToR: bird in crslab-tor (AS 65000, 10.200.0.1, fd00:200::1): 1/6 sessions \
             Established, 0/3 node blocks learned from their owners, 0 prefixes"
        );
        let s = node_summary(&plan, &plan.nodes[0], Some(42), &o);
        let expected = "\
node1  10.200.0.11  fd00:200::11  daemon pid 42 running
  peer 10.200.0.1     ToR AS 65000   Established  since 10:41:07.312
  peer fd00:200::1    ToR AS 65000   (no session)
  mesh (judged by routes to their blocks): node2 ✓  node3 ✗ (0/1 blocks)
  blocks  10.244.0.0/26
  routes  10.244.0.64/26     via 10.200.0.12 node2
          10.244.0.128/26    MISSING (owner node3)
  local   0 pod routes, 0 blackholes (route protocol 80)
";
        assert_eq!(s, expected, "\n{s}");
    }
}
