//! The top-of-rack router: BIRD 2 or GoBGP in `crslab-tor`, AS 65000, one eBGP session per node
//! and family (`nodeK_v4` to 10.200.0.(10+K), `nodeK_v6` to fd00:200::(10+K), AS 64512), importing
//! everything and exporting nothing (the nodes learn each other's blocks from their mesh).
//!
//! BIRD also exports what it learns into the ToR namespace's kernel table (`protocol kernel`), so
//! the ToR could forward between the nodes; GoBGP has no kernel sync of its own (it would need
//! zebra), so with `--tor gobgp` the ToR only holds the routes in its RIB.
//!
//! The router is the tests' driver's ([`crate::peers::bird`], [`crate::peers::gobgp`]): the same
//! command line, started detached so it outlives `up`, and the same queries and parsers
//! (`birdc -s DIR/run/bird.ctl`, `gobgp --target unix://DIR/run/gobgp.sock -j`), read here into
//! one [`TorView`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use calico_node::datastore::IpFamily;
use ipnet::IpNet;

use super::Tor;
use crate::netns;
use crate::peers::{bird, gobgp};
use crate::plan::*;
use crate::proc::{self, ProcId};

/// Deadline of one query to the router.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One BGP session as the ToR sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub node: String,
    pub family: IpFamily,
    /// BGP state (`Established`, `Active`, `Connect`, ...).
    pub state: String,
    /// When the state was entered, as the router prints it (may be empty).
    pub since: String,
    /// Anything else the router says (last error).
    pub info: String,
}

impl Session {
    pub fn established(&self) -> bool {
        self.state.eq_ignore_ascii_case("established")
    }
}

/// What the ToR knows: its sessions and, per prefix, the nodes it learned it from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TorView {
    pub sessions: Vec<Session>,
    pub routes: BTreeMap<IpNet, BTreeSet<String>>,
}

impl TorView {
    pub fn session(&self, node: &str, family: IpFamily) -> Option<&Session> {
        self.sessions
            .iter()
            .find(|s| s.node == node && s.family == family)
    }
}

/// Name of the BIRD protocol (and GoBGP description) of a node's session.
pub fn protocol_name(node: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => format!("{node}_v4"),
        IpFamily::V6 => format!("{node}_v6"),
    }
}

fn parse_protocol_name(name: &str) -> Option<(String, IpFamily)> {
    if let Some(n) = name.strip_suffix("_v4") {
        Some((n.to_string(), IpFamily::V4))
    } else {
        name.strip_suffix("_v6")
            .map(|n| (n.to_string(), IpFamily::V6))
    }
}

/// `bird.conf` of the ToR; the log goes to stderr (the ToR's log file).
pub fn bird_conf(plan: &Plan) -> String {
    let mut s = format!(
        "# calico-rs lab ToR, written by `calico-lab-rs up`.\n\
         log stderr all;\n\
         router id {TOR_V4};\n\
         protocol device {{ }}\n\
         # Learned routes into this namespace's kernel table, so the ToR could forward.\n\
         protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; }}\n\
         protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; }}\n\
         template bgp calico_node {{\n  \
           local as {TOR_AS};\n  \
           direct;\n  \
           graceful restart on;\n  \
           connect delay time 1;\n  \
           connect retry time 3;\n  \
           error wait time 1, 10;\n\
         }}\n"
    );
    for n in &plan.nodes {
        for (family, local, peer, channel) in [
            (IpFamily::V4, TOR_V4.to_string(), n.v4.to_string(), "ipv4"),
            (IpFamily::V6, TOR_V6.to_string(), n.v6.to_string(), "ipv6"),
        ] {
            let _ = writeln!(
                s,
                "protocol bgp {} from calico_node {{\n  local {local} as {TOR_AS};\n  \
                 neighbor {peer} as {NODE_AS};\n  {channel} {{ import all; export none; }};\n}}",
                protocol_name(&n.name, family)
            );
        }
    }
    s
}

/// `gobgpd.toml` of the ToR: exports nothing (default export policy reject).
pub fn gobgp_conf(plan: &Plan) -> String {
    let mut s = format!(
        "# calico-rs lab ToR, written by `calico-lab-rs up`.\n\
         [global.config]\n  as = {TOR_AS}\n  router-id = \"{TOR_V4}\"\n\
         [global.apply-policy.config]\n  default-export-policy = \"reject-route\"\n"
    );
    for n in &plan.nodes {
        for (family, peer, afi) in [
            (IpFamily::V4, n.v4.to_string(), "ipv4-unicast"),
            (IpFamily::V6, n.v6.to_string(), "ipv6-unicast"),
        ] {
            let _ = write!(
                s,
                "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{peer}\"\n    \
                 peer-as = {NODE_AS}\n    description = \"{desc}\"\n  \
                 [neighbors.timers.config]\n    connect-retry = 3\n  \
                 [neighbors.graceful-restart.config]\n    enabled = true\n  \
                 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      \
                 afi-safi-name = \"{afi}\"\n    [neighbors.afi-safis.mp-graceful-restart.config]\n      \
                 enabled = true\n",
                desc = protocol_name(&n.name, family),
            );
        }
    }
    s
}

/// Paths of the ToR's files under `DIR/run` and `DIR/logs`.
pub struct TorFiles<'a> {
    pub run_dir: &'a Path,
    pub log: &'a Path,
}

impl TorFiles<'_> {
    pub fn bird_socket(&self) -> std::path::PathBuf {
        self.run_dir.join("bird.ctl")
    }

    /// gobgpd's gRPC API socket.
    pub fn gobgp_socket(&self) -> std::path::PathBuf {
        self.run_dir.join("gobgp.sock")
    }
}

/// Writes the config and starts the router in [`Plan::tor_ns`]; returns once it answers queries.
pub fn start(tor: Tor, plan: &Plan, files: &TorFiles<'_>) -> Result<Option<ProcId>> {
    let argv = match tor {
        Tor::None => return Ok(None),
        Tor::Bird => {
            let conf = files.run_dir.join("bird.conf");
            std::fs::write(&conf, bird_conf(plan))?;
            let c = conf.to_string_lossy();
            proc::run(&["bird", "-p", "-c", &c], QUERY_TIMEOUT)
                .context("BIRD rejects the lab's config")?;
            bird::daemon_argv(&conf, &files.bird_socket(), false)
        }
        Tor::Gobgp => {
            let conf = files.run_dir.join("gobgpd.toml");
            std::fs::write(&conf, gobgp_conf(plan))?;
            let _ = std::fs::remove_file(files.gobgp_socket());
            gobgp::daemon_argv(&conf, &files.gobgp_socket(), false)
        }
    };
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let proc = netns::spawn_detached(&plan.tor_ns(), &argv, files.log)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match view(tor, plan, files) {
            Ok(_) => return Ok(Some(proc)),
            Err(e) if Instant::now() > deadline || !proc.alive() => {
                return Err(e)
                    .with_context(|| format!("{tor} did not come up; see {}", files.log.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Asks the router for its sessions and routes.
pub fn view(tor: Tor, plan: &Plan, files: &TorFiles<'_>) -> Result<TorView> {
    match tor {
        Tor::None => Ok(TorView::default()),
        Tor::Bird => {
            let sock = files.bird_socket();
            let birdc = |cmd: &str| bird::birdc(&sock, cmd, QUERY_TIMEOUT);
            let sessions = bird_sessions(&bird::parse_protocols(&birdc("show protocols")?));
            let mut routes = BTreeMap::new();
            for table in ["master4", "master6"] {
                let text = birdc(&format!("show route table {table}"))?;
                for r in bird::parse_routes(&text)? {
                    if let Some((node, _)) = parse_protocol_name(&r.proto) {
                        routes
                            .entry(r.prefix)
                            .or_insert_with(BTreeSet::new)
                            .insert(node);
                    }
                }
            }
            Ok(TorView { sessions, routes })
        }
        Tor::Gobgp => {
            let sock = files.gobgp_socket();
            let json = |args: &[&str]| gobgp::cli_json(&sock, args, QUERY_TIMEOUT);
            let mut routes = BTreeMap::new();
            for afi in ["ipv4", "ipv6"] {
                for e in gobgp::parse_rib(&json(&["global", "rib", "-a", afi])?)? {
                    let from = e.neighbor.or(e.source).and_then(|ip| plan.node_by_addr(ip));
                    if let Some(node) = from {
                        routes
                            .entry(e.prefix)
                            .or_insert_with(BTreeSet::new)
                            .insert(node.name.clone());
                    }
                }
            }
            Ok(TorView {
                sessions: gobgp_sessions(&gobgp::parse_neighbors(&json(&["neighbor"])?), plan),
                routes,
            })
        }
    }
}

/// The sessions among BIRD's protocols: BGP protocols named `nodeK_v4` / `nodeK_v6` only, in the
/// BGP state when BIRD prints one, else the protocol state.
pub fn bird_sessions(protocols: &[bird::BirdProtocol]) -> Vec<Session> {
    protocols
        .iter()
        .filter(|p| p.proto == "BGP")
        .filter_map(|p| {
            let (node, family) = parse_protocol_name(&p.name)?;
            Some(Session {
                node,
                family,
                state: p.bgp_state.clone().unwrap_or_else(|| p.state.clone()),
                since: p.since.clone(),
                info: p.info.clone(),
            })
        })
        .collect()
}

/// The sessions among GoBGP's neighbors: those whose address is a node's.
pub fn gobgp_sessions(neighbors: &[(std::net::IpAddr, String)], plan: &Plan) -> Vec<Session> {
    neighbors
        .iter()
        .filter_map(|(ip, state)| {
            Some(Session {
                node: plan.node_by_addr(*ip)?.name.clone(),
                family: IpFamily::of_addr(ip),
                state: state.clone(),
                since: String::new(),
                info: String::new(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_conf_has_a_session_per_node_and_family() {
        let c = bird_conf(&Plan::new(2, 0, crate::plan::DEFAULT_PREFIX).unwrap());
        assert!(c.contains("protocol bgp node1_v4 from calico_node"));
        assert!(c.contains("neighbor 10.200.0.12 as 64512;"));
        assert!(c.contains("neighbor fd00:200::12 as 64512;"));
        assert!(c.contains("ipv6 { import all; export none; };"));
        assert_eq!(c.matches("protocol bgp ").count(), 4);
    }

    #[test]
    fn gobgp_conf_rejects_exports() {
        let c = gobgp_conf(&Plan::new(2, 0, crate::plan::DEFAULT_PREFIX).unwrap());
        assert!(c.contains("default-export-policy = \"reject-route\""));
        assert_eq!(c.matches("[[neighbors]]").count(), 4);
        assert!(c.contains("neighbor-address = \"fd00:200::11\""));
    }

    #[test]
    fn bird_sessions_of_node_protocols() {
        let text = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     10:41:05.100  \n\
            kernel4    Kernel     master4    up     10:41:05.100  \n\
            node1_v4   BGP        ---        up     10:41:07.312  Established   \n\
            node1_v6   BGP        ---        start  10:41:05.100  Active        Socket: Connection refused\n\
            node2_v4   BGP        ---        start  10:41:05.100  Connect       \n\
            node3_v4   BGP        ---        down   10:41:05.100  \n";
        let s = bird_sessions(&bird::parse_protocols(text));
        assert_eq!(s.len(), 4);
        assert!(s[0].established() && s[0].node == "node1" && s[0].family == IpFamily::V4);
        assert_eq!(s[0].since, "10:41:07.312");
        assert_eq!(
            (s[1].state.as_str(), s[1].info.as_str(), s[1].family),
            ("Active", "Socket: Connection refused", IpFamily::V6)
        );
        assert_eq!(s[2].state, "Connect");
        assert_eq!(s[3].state, "down");
        assert!(!s[3].established());
    }

    #[test]
    fn bird_routes_by_node() {
        let text = "Table master4:\n\
            10.244.0.0/26        unicast [node1_v4 10:41:07.312] * (100) [AS64512i]\n\
            \tvia 10.200.0.11 on eth0\n\
            \x20                    unicast [node2_v4 10:41:08.001] (100) [AS64512i]\n\
            \tvia 10.200.0.12 on eth0\n\
            10.244.0.64/26       unicast [node2_v4 10:41:08.001] * (100) [AS64512i]\n\
            \tvia 10.200.0.12 on eth0\n\
            fd00:244::/122       unicast [node1_v6 10:41:07.312] * (100) [AS64512i]\n\
            \tvia fd00:200::11 on eth0\n";
        let r = bird::parse_routes(text).unwrap();
        let from: Vec<(String, String)> = r
            .iter()
            .map(|r| {
                (
                    r.prefix.to_string(),
                    parse_protocol_name(&r.proto).unwrap().0,
                )
            })
            .collect();
        assert_eq!(
            from,
            [
                ("10.244.0.0/26".to_string(), "node1".to_string()),
                ("10.244.0.0/26".into(), "node2".into()),
                ("10.244.0.64/26".into(), "node2".into()),
                ("fd00:244::/122".into(), "node1".into()),
            ]
        );
    }

    #[test]
    fn gobgp_sessions_and_rib() {
        let plan = Plan::new(2, 0, crate::plan::DEFAULT_PREFIX).unwrap();
        let neighbors = serde_json::json!([
            {"conf": {"neighbor_address": "10.200.0.11", "peer_asn": 64512},
             "state": {"session_state": 6}},
            {"conf": {"neighbor_address": "fd00:200::12"},
             "state": {"session_state": "active"}},
            {"conf": {"neighbor_address": "192.0.2.1"}, "state": {"session_state": 6}}
        ]);
        let s = gobgp_sessions(&gobgp::parse_neighbors(&neighbors), &plan);
        assert_eq!(s.len(), 2);
        assert!(s[0].established() && s[0].node == "node1" && s[0].family == IpFamily::V4);
        assert_eq!(
            (s[1].node.as_str(), s[1].state.as_str()),
            ("node2", "Active")
        );
        assert_eq!(s[1].family, IpFamily::V6);
        let rib = serde_json::json!({
            "10.244.0.0/26": [{"nlri": {"prefix": "10.244.0.0/26"}, "neighbor-ip": "10.200.0.11"}],
            "10.244.0.64/26": [{"source-id": "10.200.0.12"}]
        });
        let r = gobgp::parse_rib(&rib).unwrap();
        let from = |p: &str| {
            let e = r.iter().find(|e| e.prefix.to_string() == p).unwrap();
            plan.node_by_addr(e.neighbor.or(e.source).unwrap())
                .unwrap()
                .name
                .clone()
        };
        assert_eq!(from("10.244.0.0/26"), "node1");
        assert_eq!(from("10.244.0.64/26"), "node2");
    }
}
