//! Is the lab converged? [`observe`] reads the world (IPAM blocks, the ToR's sessions and routes,
//! each node's routes of the daemon's route protocol, which daemons run); [`missing`] is the pure
//! judgement: the list of what is not there yet, empty when the lab is ready.
//!
//! Ready means: every daemon runs; with a ToR, every node's IPv4 and IPv6 session is Established
//! and the ToR learned every block from the node owning it; every node has a (non-blackhole) route
//! for every block owned by another node.

use std::collections::BTreeMap;
use std::time::Duration;

use calico_node::datastore::IpFamily;
use calico_node::ipam::Ipam;
use ipnet::IpNet;

use super::record::{Paths, Record};
use super::tor::{self, TorFiles, TorView};
use super::{LabDatastore, Tor};
use crate::plan::Plan;
use crate::routes::{node_routes, NodeRoute};

/// A snapshot of the lab.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Block -> owning node (lab nodes only), from IPAM.
    pub blocks: BTreeMap<IpNet, String>,
    /// `None` without a ToR.
    pub tor: Option<TorView>,
    /// Node -> its routes by destination.
    pub routes: BTreeMap<String, BTreeMap<IpNet, NodeRoute>>,
    /// Node -> whether its daemon runs.
    pub daemons: BTreeMap<String, bool>,
    pub tor_alive: bool,
    /// Queries that failed.
    pub errors: Vec<String>,
}

impl Observed {
    /// Blocks owned by `node`, in order.
    pub fn blocks_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a IpNet> + 'a {
        self.blocks
            .iter()
            .filter(move |(_, o)| o.as_str() == node)
            .map(|(b, _)| b)
    }

    /// Whether `node` has a usable route to `block`.
    pub fn has_route(&self, node: &str, block: &IpNet) -> bool {
        self.routes
            .get(node)
            .and_then(|r| r.get(block))
            .is_some_and(|r| r.kind == "unicast")
    }
}

/// Where the lab's IPAM blocks are read: its file datastore or its API server.
pub enum Blocks {
    File(std::path::PathBuf),
    Kube(Box<super::kube::LabIpam>),
    /// The API's IPAM client could not be made (the error, reported by every [`observe`]).
    Broken(String),
}

impl Blocks {
    /// The source `rec`'s datastore says.
    pub fn open(plan: &Plan, rec: &Record, paths: &Paths) -> Blocks {
        match rec.datastore {
            LabDatastore::File => Blocks::File(paths.datastore.clone()),
            LabDatastore::Kubernetes => match super::kube::LabIpam::open(plan, paths) {
                Ok(i) => Blocks::Kube(Box::new(i)),
                Err(e) => Blocks::Broken(format!("{e:#}")),
            },
        }
    }

    /// Block -> affine node.
    pub fn affinities(&self) -> Result<BTreeMap<IpNet, Option<String>>, String> {
        match self {
            Blocks::File(dir) => Ipam::new(dir)
                .and_then(|i| i.affinities())
                .map_err(|e| e.to_string()),
            Blocks::Kube(i) => i.affinities().map_err(|e| format!("{e:#}")),
            Blocks::Broken(e) => Err(e.clone()),
        }
    }
}

/// Reads the lab's state now.
pub fn observe(plan: &Plan, rec: &Record, paths: &Paths, blocks: &Blocks) -> Observed {
    let mut o = Observed::default();
    if rec.api_proc.as_ref().is_some_and(|p| !p.alive()) {
        o.errors
            .push("the Kubernetes API server is not running".into());
    }
    match blocks.affinities() {
        Ok(aff) => {
            o.blocks = aff
                .into_iter()
                .filter_map(|(b, owner)| owner.filter(|n| plan.node(n).is_some()).map(|n| (b, n)))
                .collect();
        }
        Err(e) => o.errors.push(format!("IPAM: {e}")),
    }
    o.tor_alive = rec.tor_proc.as_ref().is_some_and(|p| p.alive());
    if rec.tor != Tor::None {
        let log = paths.log("tor");
        let files = TorFiles {
            run_dir: &paths.run,
            log: &log,
        };
        match tor::view(rec.tor, plan, &files) {
            Ok(v) => o.tor = Some(v),
            Err(e) => {
                o.errors.push(format!("ToR: {e:#}"));
                o.tor = Some(TorView::default());
            }
        }
    }
    for n in &plan.nodes {
        o.daemons.insert(
            n.name.clone(),
            rec.daemons.get(&n.name).is_some_and(|p| p.alive()),
        );
        match node_routes(&n.netns) {
            Ok(r) => {
                o.routes.insert(n.name.clone(), r);
            }
            Err(e) => o.errors.push(format!("{}: {e:#}", n.name)),
        }
    }
    o
}

/// What is not ready yet (empty: converged), one line each.
pub fn missing(plan: &Plan, o: &Observed) -> Vec<String> {
    let mut m = o.errors.clone();
    for n in &plan.nodes {
        if !o.daemons.get(&n.name).copied().unwrap_or(false) {
            m.push(format!("{}: daemon not running", n.name));
        }
    }
    if let Some(t) = &o.tor {
        if !o.tor_alive {
            m.push("ToR: router not running".into());
        }
        for n in &plan.nodes {
            for family in [IpFamily::V4, IpFamily::V6] {
                match t.session(&n.name, family) {
                    Some(s) if s.established() => {}
                    Some(s) => m.push(format!("ToR: {} {family} session {}", n.name, s.state)),
                    None => m.push(format!("ToR: no {family} session to {}", n.name)),
                }
            }
        }
        for (block, owner) in &o.blocks {
            if !t.routes.get(block).is_some_and(|from| from.contains(owner)) {
                m.push(format!("ToR: no route to {owner}'s block {block}"));
            }
        }
    }
    for n in &plan.nodes {
        for (block, owner) in &o.blocks {
            if *owner != n.name && !o.has_route(&n.name, block) {
                m.push(format!("{}: no route to {owner}'s block {block}", n.name));
            }
        }
    }
    if o.blocks.is_empty() && plan.pods().next().is_some() {
        m.push("IPAM: no blocks claimed".into());
    }
    m
}

/// Polls until [`missing`] is empty or `timeout` passes, printing a dot per second. Returns the
/// last observation and what was still missing.
pub fn wait(
    plan: &Plan,
    rec: &Record,
    paths: &Paths,
    blocks: &Blocks,
    timeout: Duration,
) -> (Observed, Vec<String>) {
    use std::io::Write as _;
    let start = std::time::Instant::now();
    print!(
        "Waiting for BGP sessions and routes (up to {} s) ",
        timeout.as_secs()
    );
    let _ = std::io::stdout().flush();
    loop {
        let o = observe(plan, rec, paths, blocks);
        let m = missing(plan, &o);
        let dead = o.daemons.values().any(|a| !a);
        if m.is_empty() {
            println!(" ready in {:.1} s", start.elapsed().as_secs_f64());
            return (o, m);
        }
        if start.elapsed() >= timeout || dead {
            println!(" not ready");
            return (o, m);
        }
        print!(".");
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::tor::Session;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn route(dst: &str, kind: &str) -> (IpNet, NodeRoute) {
        (
            net(dst),
            NodeRoute {
                dst: net(dst),
                kind: kind.into(),
                gateway: None,
                dev: None,
            },
        )
    }

    fn converged(plan: &Plan) -> Observed {
        let mut o = Observed {
            tor_alive: true,
            ..Default::default()
        };
        let blocks = [
            ("10.244.0.0/26", "node1"),
            ("fd00:244::/122", "node1"),
            ("10.244.0.64/26", "node2"),
        ];
        let mut t = TorView::default();
        for (b, owner) in blocks {
            o.blocks.insert(net(b), owner.into());
            t.routes.entry(net(b)).or_default().insert(owner.into());
        }
        for n in &plan.nodes {
            o.daemons.insert(n.name.clone(), true);
            for family in [IpFamily::V4, IpFamily::V6] {
                t.sessions.push(Session {
                    node: n.name.clone(),
                    family,
                    state: "Established".into(),
                    since: String::new(),
                    info: String::new(),
                });
            }
        }
        o.tor = Some(t);
        o.routes.insert(
            "node1".into(),
            [
                route("10.244.0.64/26", "unicast"),
                route("10.244.0.0/26", "blackhole"),
            ]
            .into(),
        );
        o.routes.insert(
            "node2".into(),
            [
                route("10.244.0.0/26", "unicast"),
                route("fd00:244::/122", "unicast"),
            ]
            .into(),
        );
        o
    }

    #[test]
    fn ready_when_everything_is_there() {
        let plan = Plan::new(2, 1, crate::plan::DEFAULT_PREFIX).unwrap();
        assert_eq!(missing(&plan, &converged(&plan)), Vec::<String>::new());
    }

    #[test]
    fn names_what_is_missing() {
        let plan = Plan::new(2, 1, crate::plan::DEFAULT_PREFIX).unwrap();
        let mut o = converged(&plan);
        o.daemons.insert("node2".into(), false);
        let t = o.tor.as_mut().unwrap();
        t.sessions[1].state = "Active".into();
        t.routes.remove(&net("10.244.0.64/26"));
        // A blackhole is no route, and a route learned from the wrong node does not count.
        o.routes
            .get_mut("node2")
            .unwrap()
            .insert(net("10.244.0.0/26"), route("10.244.0.0/26", "blackhole").1);
        let t = o.tor.as_mut().unwrap();
        t.routes.get_mut(&net("10.244.0.0/26")).unwrap().clear();
        t.routes
            .get_mut(&net("10.244.0.0/26"))
            .unwrap()
            .insert("node2".into());
        let m = missing(&plan, &o);
        assert_eq!(
            m,
            [
                "node2: daemon not running",
                "ToR: node1 IPv6 session Active",
                "ToR: no route to node1's block 10.244.0.0/26",
                "ToR: no route to node2's block 10.244.0.64/26",
                "node2: no route to node1's block 10.244.0.0/26",
            ]
        );
    }

    #[test]
    fn without_tor_only_the_mesh_counts() {
        let plan = Plan::new(2, 1, crate::plan::DEFAULT_PREFIX).unwrap();
        let mut o = converged(&plan);
        o.tor = None;
        o.tor_alive = false;
        assert!(missing(&plan, &o).is_empty());
        o.routes.get_mut("node1").unwrap().clear();
        assert_eq!(
            missing(&plan, &o),
            ["node1: no route to node2's block 10.244.0.64/26"]
        );
    }
}
