//! The top-of-rack router: BIRD 2 or GoBGP in `crslab-tor`, AS 65000, one eBGP session per node
//! and family (`nodeK_v4` to 10.200.0.(10+K), `nodeK_v6` to fd00:200::(10+K), AS 64512), importing
//! everything and exporting nothing (the nodes learn each other's blocks from their mesh).
//!
//! BIRD also exports what it learns into the ToR namespace's kernel table (`protocol kernel`), so
//! the ToR could forward between the nodes; GoBGP has no kernel sync of its own (it would need
//! zebra), so with `--tor gobgp` the ToR only holds the routes in its RIB.
//!
//! Queries go through `birdc -s DIR/run/bird.ctl` or `ip netns exec crslab-tor gobgp -j`, and
//! are parsed here into one [`TorView`] (parsers are pure and tested on captured output).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use super::plan::*;
use super::sys::{self, ProcId};
use super::Tor;
use crate::datastore::IpFamily;

/// gobgpd's gRPC API, on the ToR namespace's own loopback.
const GOBGP_API: &str = "127.0.0.1:50051";

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
        "# calico-rs lab ToR, written by `calico-node-rs lab up`.\n\
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
        "# calico-rs lab ToR, written by `calico-node-rs lab up`.\n\
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
}

/// Writes the config and starts the router in [`Plan::tor_ns`]; returns once it answers queries.
pub fn start(tor: Tor, plan: &Plan, files: &TorFiles<'_>) -> Result<Option<ProcId>> {
    let proc = match tor {
        Tor::None => return Ok(None),
        Tor::Bird => {
            let conf = files.run_dir.join("bird.conf");
            std::fs::write(&conf, bird_conf(plan))?;
            let conf = conf.to_string_lossy().into_owned();
            sys::run(&["bird", "-p", "-c", &conf]).context("BIRD rejects the lab's config")?;
            let sock = files.bird_socket().to_string_lossy().into_owned();
            sys::spawn_detached(
                &plan.tor_ns(),
                &["bird", "-f", "-c", &conf, "-s", &sock],
                files.log,
            )?
        }
        Tor::Gobgp => {
            let conf = files.run_dir.join("gobgpd.toml");
            std::fs::write(&conf, gobgp_conf(plan))?;
            let conf = conf.to_string_lossy().into_owned();
            let argv = [
                "gobgpd",
                "-f",
                &conf,
                "-t",
                "toml",
                "-p",
                "--api-hosts",
                GOBGP_API,
                "--pprof-disable",
            ];
            sys::spawn_detached(&plan.tor_ns(), &argv, files.log)?
        }
    };
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
            let sock = files.bird_socket().to_string_lossy().into_owned();
            let birdc = |cmd: &[&str]| {
                let mut argv = vec!["birdc", "-s", &sock];
                argv.extend_from_slice(cmd);
                sys::run(&argv)
            };
            let protocols = birdc(&["show", "protocols"])?;
            let mut routes = parse_bird_routes(&birdc(&["show", "route", "table", "master4"])?);
            for (net, from) in parse_bird_routes(&birdc(&["show", "route", "table", "master6"])?) {
                routes.entry(net).or_default().extend(from);
            }
            Ok(TorView {
                sessions: parse_bird_protocols(&protocols),
                routes,
            })
        }
        Tor::Gobgp => {
            let gobgp = |args: &[&str]| -> Result<serde_json::Value> {
                let mut argv = vec!["gobgp", "-j"];
                argv.extend_from_slice(args);
                let out = sys::exec(&plan.tor_ns(), &argv, sys::CMD_TIMEOUT)?;
                if !out.status.success() {
                    bail!(
                        "`gobgp {}` failed: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                serde_json::from_slice(&out.stdout)
                    .with_context(|| format!("`gobgp -j {}`: not JSON", args.join(" ")))
            };
            let mut routes = BTreeMap::new();
            for afi in ["ipv4", "ipv6"] {
                for (net, from) in parse_gobgp_rib(&gobgp(&["global", "rib", "-a", afi])?, plan) {
                    routes.entry(net).or_insert_with(BTreeSet::new).extend(from);
                }
            }
            Ok(TorView {
                sessions: parse_gobgp_neighbors(&gobgp(&["neighbor"])?, plan),
                routes,
            })
        }
    }
}

/// Sessions from `birdc show protocols` (BGP protocols named `nodeK_v4` / `nodeK_v6` only).
///
/// ```text
/// Name       Proto      Table      State  Since         Info
/// node1_v4   BGP        ---        up     10:41:07.312  Established
/// node2_v6   BGP        ---        start  10:41:05.100  Active        Socket: Connection refused
/// ```
pub fn parse_bird_protocols(text: &str) -> Vec<Session> {
    let mut out = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || cols[1] != "BGP" {
            continue;
        }
        let Some((node, family)) = parse_protocol_name(cols[0]) else {
            continue;
        };
        // Info is "<BGP state>  <last error...>"; a down protocol may have no BGP state.
        let info: Vec<&str> = cols[5..].to_vec();
        let (state, rest) = match info.split_first() {
            Some((s, rest)) if is_bgp_state(s) => (s.to_string(), rest.join(" ")),
            _ => (cols[3].to_string(), info.join(" ")),
        };
        out.push(Session {
            node,
            family,
            state,
            since: cols[4].to_string(),
            info: rest,
        });
    }
    out
}

fn is_bgp_state(s: &str) -> bool {
    matches!(
        s,
        "Idle" | "Connect" | "Active" | "OpenSent" | "OpenConfirm" | "Established" | "Close"
    )
}

/// Routes from `birdc show route`: prefix -> the nodes whose sessions it was learned over.
///
/// ```text
/// Table master4:
/// 10.244.0.0/26        unicast [node1_v4 10:41:07.312] * (100) [AS64512i]
///         via 10.200.0.11 on eth0
///                      unicast [node2_v4 10:41:08.001] (100) [AS64512i]
/// ```
pub fn parse_bird_routes(text: &str) -> BTreeMap<IpNet, BTreeSet<String>> {
    let mut out: BTreeMap<IpNet, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<IpNet> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = line.split_whitespace().next().and_then(|w| w.parse().ok());
        }
        let (Some(net), Some(i)) = (current, line.find('[')) else {
            continue;
        };
        let proto = line[i + 1..].split_whitespace().next().unwrap_or_default();
        if let Some((node, _)) = parse_protocol_name(proto) {
            out.entry(net).or_default().insert(node);
        }
    }
    out
}

/// Sessions from `gobgp -j neighbor`. GoBGP 3 prints the state as a number or a name depending
/// on the build, so both are read.
pub fn parse_gobgp_neighbors(v: &serde_json::Value, plan: &Plan) -> Vec<Session> {
    let mut out = Vec::new();
    for n in v.as_array().into_iter().flatten() {
        let conf = &n["conf"];
        let addr = conf["neighbor_address"]
            .as_str()
            .or_else(|| n["state"]["neighbor_address"].as_str());
        let Some(node) = addr
            .and_then(|a| a.parse().ok())
            .and_then(|ip| plan.node_by_addr(ip))
        else {
            continue;
        };
        let ip: std::net::IpAddr = addr.unwrap_or_default().parse().unwrap_or(TOR_V4.into());
        let state = match &n["state"]["session_state"] {
            serde_json::Value::Number(x) => match x.as_u64() {
                Some(1) => "Idle",
                Some(2) => "Connect",
                Some(3) => "Active",
                Some(4) => "OpenSent",
                Some(5) => "OpenConfirm",
                Some(6) => "Established",
                _ => "Unknown",
            }
            .to_string(),
            serde_json::Value::String(s) => {
                let s = s.to_ascii_lowercase();
                match s.as_str() {
                    "established" => "Established".into(),
                    "opensent" => "OpenSent".into(),
                    "openconfirm" => "OpenConfirm".into(),
                    other => {
                        let mut c = other.chars();
                        c.next()
                            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                            .unwrap_or_else(|| "Unknown".into())
                    }
                }
            }
            _ => "Unknown".into(),
        };
        out.push(Session {
            node: node.name.clone(),
            family: IpFamily::of_addr(&ip),
            state,
            since: String::new(),
            info: String::new(),
        });
    }
    out
}

/// Routes from `gobgp -j global rib -a AFI`: `{"PREFIX": [{"neighbor-ip": "...", ...}], ...}`.
pub fn parse_gobgp_rib(v: &serde_json::Value, plan: &Plan) -> BTreeMap<IpNet, BTreeSet<String>> {
    let mut out: BTreeMap<IpNet, BTreeSet<String>> = BTreeMap::new();
    for (prefix, paths) in v.as_object().into_iter().flatten() {
        let Ok(net) = prefix.parse::<IpNet>() else {
            continue;
        };
        for p in paths.as_array().into_iter().flatten() {
            let from = p["neighbor-ip"]
                .as_str()
                .or_else(|| p["source-id"].as_str())
                .and_then(|a| a.parse().ok())
                .and_then(|ip| plan.node_by_addr(ip));
            if let Some(node) = from {
                out.entry(net).or_default().insert(node.name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_conf_has_a_session_per_node_and_family() {
        let c = bird_conf(&Plan::new(2, 0, crate::lab::plan::DEFAULT_PREFIX).unwrap());
        assert!(c.contains("protocol bgp node1_v4 from calico_node"));
        assert!(c.contains("neighbor 10.200.0.12 as 64512;"));
        assert!(c.contains("neighbor fd00:200::12 as 64512;"));
        assert!(c.contains("ipv6 { import all; export none; };"));
        assert_eq!(c.matches("protocol bgp ").count(), 4);
    }

    #[test]
    fn gobgp_conf_rejects_exports() {
        let c = gobgp_conf(&Plan::new(2, 0, crate::lab::plan::DEFAULT_PREFIX).unwrap());
        assert!(c.contains("default-export-policy = \"reject-route\""));
        assert_eq!(c.matches("[[neighbors]]").count(), 4);
        assert!(c.contains("neighbor-address = \"fd00:200::11\""));
    }

    #[test]
    fn bird_protocols() {
        let text = "BIRD 2.0.12 ready.\n\
            Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     10:41:05.100  \n\
            kernel4    Kernel     master4    up     10:41:05.100  \n\
            node1_v4   BGP        ---        up     10:41:07.312  Established   \n\
            node1_v6   BGP        ---        start  10:41:05.100  Active        Socket: Connection refused\n\
            node2_v4   BGP        ---        start  10:41:05.100  Connect       \n\
            node3_v4   BGP        ---        down   10:41:05.100  \n";
        let s = parse_bird_protocols(text);
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
    fn bird_routes() {
        let text = "BIRD 2.0.12 ready.\nTable master4:\n\
            10.244.0.0/26        unicast [node1_v4 10:41:07.312] * (100) [AS64512i]\n\
            \tvia 10.200.0.11 on eth0\n\
            \x20                    unicast [node2_v4 10:41:08.001] (100) [AS64512i]\n\
            \tvia 10.200.0.12 on eth0\n\
            10.244.0.64/26       unicast [node2_v4 10:41:08.001] * (100) [AS64512i]\n\
            \tvia 10.200.0.12 on eth0\n\
            fd00:244::/122       unicast [node1_v6 10:41:07.312] * (100) [AS64512i]\n\
            \tvia fd00:200::11 on eth0\n";
        let r = parse_bird_routes(text);
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[&n("10.244.0.0/26")].iter().collect::<Vec<_>>(),
            ["node1", "node2"]
        );
        assert_eq!(r[&n("10.244.0.64/26")].len(), 1);
        assert!(r[&n("fd00:244::/122")].contains("node1"));
    }

    #[test]
    fn gobgp_json() {
        let plan = Plan::new(2, 0, crate::lab::plan::DEFAULT_PREFIX).unwrap();
        let neighbors = serde_json::json!([
            {"conf": {"neighbor_address": "10.200.0.11", "peer_asn": 64512},
             "state": {"session_state": 6}},
            {"conf": {"neighbor_address": "fd00:200::12"},
             "state": {"session_state": "active"}},
            {"conf": {"neighbor_address": "192.0.2.1"}, "state": {"session_state": 6}}
        ]);
        let s = parse_gobgp_neighbors(&neighbors, &plan);
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
        let r = parse_gobgp_rib(&rib, &plan);
        assert!(r[&"10.244.0.0/26".parse().unwrap()].contains("node1"));
        assert!(r[&"10.244.0.64/26".parse().unwrap()].contains("node2"));
    }
}
