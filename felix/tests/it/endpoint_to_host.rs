//! `defaultEndpointToHostAction` against a real kernel: a "node" namespace and a "pod" namespace
//! joined by a veth whose node end is `calilocked0000`, wired the way felix wires a pod (`ee:ee..`
//! MAC, proxy ARP for `169.254.1.1`, `fe80::ecee:eeff:feee:eeee` as the IPv6 gateway). The node's
//! addresses `10.78.0.1` / `fd78::1` live on another interface (`node0`, its uplink); the pod is `10.77.0.2` / `fd77::2`
//! (the input is `golden/host.yaml`). The node also has a table of its own, `inet host-fw`, that
//! drops TCP 8081: the "host's own input rules".
//!
//! For each action, without and with an egress policy on the pod (TCP 8080 to the node only), the
//! pod connects to the node on 8080, 179 (BGP), 9099 (health), 9091 (metrics) and 8081 over IPv4
//! and IPv6, and the node connects to the pod and exchanges data with it. Expected: with Drop
//! nothing the pod opens gets through (and a dropped probe times out, it is not refused), while
//! the node's own connections and the pod's IPv6 gateway keep working; with Return and Accept the
//! egress policy applies, and the host's table still drops 8081 under both (nftables' `accept`
//! is not final), so the two behave alike.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use felix::policy::{compile, EndpointToHostAction, NftDriver, PolicyCfg, PolicyInput};

use super::Netns;

const IFACE: &str = "calilocked0000";
const NODE: [&str; 2] = ["10.78.0.1", "fd78::1"];
const POD: [&str; 2] = ["10.77.0.2", "fd77::2"];
/// Ports the node listens on: anything, BGP, Calico's health and metrics ports, and one that the
/// host's own table drops.
const NODE_PORTS: [u16; 5] = [8080, 179, 9099, 9091, HOST_FW_PORT];
const HOST_FW_PORT: u16 = 8081;
/// What the pod's egress policy (`x/to-node-8080`) allows to the node.
const POLICY_PORT: u16 = 8080;
const POD_PORT: u16 = 7000;

/// The two namespaces and the listeners in them (closed with it).
struct Lab {
    node: Netns,
    pod: Netns,
    pod_listeners: Vec<TcpListener>,
    _node_listeners: Vec<TcpListener>,
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("literal address"), port)
}

fn lab() -> Result<Lab> {
    let node = Netns::new("e2h-node")?;
    let pod = Netns::new("e2h-pod")?;
    node.run(&[
        "ip",
        "link",
        "add",
        IFACE,
        "address",
        "ee:ee:ee:ee:ee:ee",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ])?;
    // Felix's host-side settings (proxy ARP, forwarding, rp_filter, no DAD) before the link is up.
    node.in_ns(|| {
        for (key, value) in felix::veth::GLOBAL_SYSCTLS {
            felix::veth::write_sysctl(key, value).with_context(|| key.to_string())?;
        }
        felix::veth::configure_iface_sysctls(IFACE).map_err(|(path, e)| anyhow!("{path}: {e}"))
    })?;
    let gw6 = felix::veth::IPV6_GATEWAY.to_string();
    let v4 = |ip: &str| format!("{ip}/32");
    let v6 = |ip: &str| format!("{ip}/128");
    for argv in [
        // The node's "uplink" (this kernel may lack dummy interfaces): a veth with its peer
        // left down in the same namespace.
        &[
            "ip", "link", "add", "node0", "type", "veth", "peer", "name", "node0p",
        ][..],
        &["ip", "addr", "add", &v4(NODE[0]), "dev", "node0"],
        &["ip", "addr", "add", &v6(NODE[1]), "dev", "node0", "nodad"],
        &["ip", "link", "set", "node0", "up"],
        // Proxy ARP answers only for a target routed out of another interface.
        &["ip", "route", "add", "169.254.1.1/32", "dev", "node0"],
        &["ip", "link", "set", IFACE, "up"],
        &["ip", "route", "add", &v4(POD[0]), "dev", IFACE],
        &["ip", "-6", "route", "add", &v6(POD[1]), "dev", IFACE],
    ] {
        node.run(argv)?;
    }
    for argv in [
        &["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"][..],
        &["ip", "addr", "add", &v4(POD[0]), "dev", "eth0"],
        &["ip", "addr", "add", &v6(POD[1]), "dev", "eth0", "nodad"],
        &["ip", "link", "set", "eth0", "up"],
        &[
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ],
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ],
        &[
            "ip", "-6", "route", "add", "default", "via", &gw6, "dev", "eth0",
        ],
    ] {
        pod.run(argv)?;
    }
    // The host's own firewall: another table on the input hook, after ours.
    node.run(&[
        "nft",
        &format!(
            "add table inet host-fw; \
             add chain inet host-fw input {{ type filter hook input priority filter + 10; policy accept; }}; \
             add rule inet host-fw input tcp dport {HOST_FW_PORT} drop"
        ),
    ])?;
    let node_listeners = node.in_ns(|| {
        let mut v = Vec::new();
        for ip in NODE {
            for port in NODE_PORTS {
                v.push(TcpListener::bind(addr(ip, port)).with_context(|| addr(ip, port))?);
            }
        }
        Ok(v)
    })?;
    let pod_listeners = pod.in_ns(|| {
        POD.iter()
            .map(|ip| {
                let l = TcpListener::bind(addr(ip, POD_PORT))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(Lab {
        node,
        pod,
        pod_listeners,
        _node_listeners: node_listeners,
    })
}

/// How one TCP connect ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Connected,
    /// No answer: the SYN (or the SYN-ACK) was dropped.
    TimedOut,
    /// Anything else (refused, unreachable...): reached something, or a broken lab.
    Failed(String),
}

fn connect(to: SocketAddr, timeout: Duration) -> Outcome {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(_) => Outcome::Connected,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::TimedOut,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Connect from inside `ns` to every target at once; an expected connection that did not happen
/// is tried again (first packets may wait for ARP / ND), a blocked one must time out.
fn check_from(ns: &Netns, targets: &[(SocketAddr, bool)]) -> Result<Vec<String>> {
    ns.in_ns(|| {
        // Threads spawned here inherit this thread's network namespace.
        let first: Vec<Outcome> = std::thread::scope(|s| {
            let hs: Vec<_> = targets
                .iter()
                .map(|(to, _)| s.spawn(move || connect(*to, Duration::from_millis(700))))
                .collect();
            hs.into_iter().map(|h| h.join().expect("probe")).collect()
        });
        let mut wrong = Vec::new();
        for ((to, want), got) in targets.iter().zip(first) {
            let got = if *want && got != Outcome::Connected {
                connect(*to, Duration::from_secs(3))
            } else {
                got
            };
            let ok = if *want {
                got == Outcome::Connected
            } else {
                got == Outcome::TimedOut
            };
            if !ok {
                let w = if *want { "connect" } else { "time out" };
                wrong.push(format!("{to}: wanted {w}, got {got:?}"));
            }
        }
        Ok(wrong)
    })
}

/// The node opens a connection to the pod and they exchange a line each way.
fn node_talks_to_pod(lab: &Lab, listener: &TcpListener, to: SocketAddr) -> Result<()> {
    let mut s = lab
        .node
        .in_ns(|| Ok(TcpStream::connect_timeout(&to, Duration::from_secs(3))?))
        .with_context(|| format!("node -> pod {to}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"ping\n")?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut peer = loop {
        match listener.accept() {
            Ok((peer, _)) => break peer,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => bail!("pod accepting {to}: {e}"),
        }
    };
    peer.set_nonblocking(false)?;
    peer.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = [0u8; 5];
    peer.read_exact(&mut buf).context("pod reading")?;
    ensure!(&buf == b"ping\n", "pod read {buf:?}");
    peer.write_all(b"pong\n")?;
    s.read_exact(&mut buf)
        .with_context(|| format!("node reading the pod's reply on {to}"))?;
    ensure!(&buf == b"pong\n", "node read {buf:?}");
    Ok(())
}

/// Whether the pod may open a connection to the node's `port`.
fn pod_may_reach(action: EndpointToHostAction, policy: bool, port: u16) -> bool {
    match action {
        EndpointToHostAction::Drop => false,
        // The host's own table decides after ours, whichever of the two we render.
        EndpointToHostAction::Return | EndpointToHostAction::Accept => {
            port != HOST_FW_PORT && (!policy || port == POLICY_PORT)
        }
    }
}

#[test]
fn endpoint_to_host_actions() -> Result<()> {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy/golden/host.yaml");
    let with_policy: PolicyInput = serde_yaml_ng::from_str(&std::fs::read_to_string(golden)?)?;
    let without_policy = PolicyInput {
        policies: vec![],
        ..with_policy.clone()
    };
    let lab = lab()?;
    let mut wrong = Vec::new();
    for action in EndpointToHostAction::ALL {
        for (policy, input) in [(false, &without_policy), (true, &with_policy)] {
            let what = format!(
                "{action}, {} egress policy",
                if policy { "with" } else { "no" }
            );
            let c = compile(input);
            ensure!(c.errors.is_empty(), "{:?}", c.errors);
            let cfg = PolicyCfg {
                endpoint_to_host: action,
                ..PolicyCfg::default()
            };
            // A new driver replaces the whole table.
            lab.node
                .in_ns(|| Ok(NftDriver::new(cfg).apply(&c.ruleset)?))
                .context(what.clone())?;
            let targets: Vec<(SocketAddr, bool)> = NODE
                .iter()
                .flat_map(|ip| NODE_PORTS.map(|p| (addr(ip, p), pod_may_reach(action, policy, p))))
                .collect();
            for w in check_from(&lab.pod, &targets)? {
                wrong.push(format!("{what}: pod -> node {w}"));
            }
            for (listener, ip) in lab.pod_listeners.iter().zip(POD) {
                if let Err(e) = node_talks_to_pod(&lab, listener, addr(ip, POD_PORT)) {
                    wrong.push(format!("{what}: {e:#}"));
                }
            }
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}
