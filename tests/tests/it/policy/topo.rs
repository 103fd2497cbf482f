//! The Kubernetes network-policy test model as namespaces: two nodes, nine pods, echo servers.
//!
//! ```text
//!   n1: x/a x/c y/b z/a z/c                   n2: x/b y/a y/c z/b
//!       each pod: eth0 <-> cali… (host side, MAC ee:ee:ee:ee:ee:ee)
//!   [ n1 ]--eth0--[ lan br0 ]--eth0--[ n2 ]   10.99.0.{1,2}/24, fd00:99::{1,2}/64
//! ```
//! Pod k (1..=9 in x/a, x/b, … z/c order) on node n has 10.65.n.k/32 and fd65:n::k/128. Routes are
//! plain `ip route`s made here (no felix routes code): a /32 and /128 per local pod to its `cali`
//! interface, the other node's block via the other node. Pods reach their node through the Calico
//! gateways: 169.254.1.1 by proxy ARP, and the host side's link-local fe80::ecee:eeff:feee:eeee
//! (EUI-64 of the fixed MAC). Every pod serves TCP and UDP echo on ports 80 and 81, dual stack.
//! Labels: pods `pod=a|b|c`, namespaces `ns=x|y|z`. Named container ports: `serve-80-tcp`,
//! `serve-81-tcp`, `serve-80-udp`, `serve-81-udp`, and `http` = TCP 80 on pods a and c but TCP 81
//! on pods b (to show that named ports resolve per target pod).
//!
//! A felix policy manager runs in each node namespace; [`Cluster::apply`] gives both the same
//! cluster view with their own local endpoints and waits until both have it in the kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use calico_lab::{Lab, Netns};
use felix::policy::{
    self, NamedPort, Namespace, NetworkPolicy, PolicyCfg, PolicyHandle, PolicyInput, PolicyStatus,
    WorkloadEndpoint,
};
use felix::workload_iface_name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Namespaces and pods of the model, in index order.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pod names in every namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// One pod of the model.
pub struct Pod {
    pub ns_name: &'static str,
    pub name: &'static str,
    /// Node number (1 or 2).
    pub node: u8,
    pub netns: Netns,
    pub iface: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
    /// Next source port for probes: every probe gets a fresh one, so a conntrack entry of an
    /// earlier scenario can never make a new probe look established.
    next_port: AtomicU16,
    /// The `pod` label this pod reports (its name, unless a test relabels it).
    pub label: std::sync::Mutex<String>,
}

impl Pod {
    /// `x/a`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.ns_name, self.name)
    }

    /// A source port never used before by this pod (10000..32000, below the ephemeral range).
    pub fn fresh_port(&self) -> u16 {
        let p = self.next_port.fetch_add(1, Ordering::Relaxed);
        assert!(p < 32000, "probe source ports exhausted");
        p
    }

    /// Container port named `http`: TCP 80 on pods a and c, TCP 81 on pods b.
    pub fn http_port(&self) -> u16 {
        if self.name == "b" {
            81
        } else {
            80
        }
    }

    fn named_ports(&self) -> Vec<NamedPort> {
        let np = |name: &str, protocol: &str, port| NamedPort {
            name: name.into(),
            protocol: protocol.into(),
            port,
        };
        vec![
            np("serve-80-tcp", "TCP", 80),
            np("serve-81-tcp", "TCP", 81),
            np("serve-80-udp", "UDP", 80),
            np("serve-81-udp", "UDP", 81),
            np("http", "TCP", self.http_port()),
        ]
    }

    fn model(&self) -> policy::Pod {
        policy::Pod {
            namespace: self.ns_name.into(),
            name: self.name.into(),
            ips: vec![self.v4, self.v6],
            labels: BTreeMap::from([("pod".to_string(), self.label.lock().unwrap().clone())]),
            ports: self.named_ports(),
        }
    }
}

/// The whole model. Field order matters for drop: servers stop, felix stops, then the lab goes.
pub struct Cluster {
    _servers: Vec<Servers>,
    pub felix: Vec<PolicyHandle>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Netns>,
    _lab: Lab,
}

/// Which node each pod of the model lives on (index order x/a .. z/c).
const NODE_OF: [u8; 9] = [1, 2, 1, 2, 1, 2, 1, 2, 1];

impl Cluster {
    /// Build the topology, start the echo servers and a policy manager per node.
    pub fn new(tag: &str) -> Result<Cluster> {
        let lab = Lab::new(tag)?;
        let lan = lab.segment("lan")?;
        let mut nodes = Vec::new();
        for i in 1..=2u8 {
            let ns = lab.netns(&format!("n{i}"))?;
            lan.attach(
                &ns,
                "eth0",
                &[&format!("10.99.0.{i}/24"), &format!("fd00:99::{i}/64")],
            )?;
            ns.forwarding()?;
            let other = 3 - i;
            // The other node's pods; and a default route so proxy ARP has a route for 169.254.1.1.
            ns.sh(&format!(
                "set -e
                 ip route add 10.65.{other}.0/24 via 10.99.0.{other}
                 ip -6 route add fd65:{other}::/64 via fd00:99::{other}
                 ip route add default via 10.99.0.{other}
                 ip route add blackhole 10.65.{i}.0/24
                 ip -6 route add blackhole fd65:{i}::/64"
            ))?;
            nodes.push(ns);
        }
        let mut pods = Vec::new();
        for (k, (ns_name, name)) in NAMESPACES
            .iter()
            .flat_map(|n| PODS.iter().map(move |p| (*n, *p)))
            .enumerate()
        {
            let node = NODE_OF[k];
            let idx = k + 1;
            let netns = lab.netns(&format!("{ns_name}_{name}"))?;
            let iface = workload_iface_name(ns_name, name);
            let host = &nodes[usize::from(node - 1)];
            let (v4, v6) = (format!("10.65.{node}.{idx}"), format!("fd65:{node}::{idx}"));
            host.ip(&[
                "link",
                "add",
                &iface,
                "address",
                "ee:ee:ee:ee:ee:ee",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns.name(),
            ])?;
            host.sysctls(&[
                (&format!("net.ipv4.conf.{iface}.proxy_arp"), "1"),
                (&format!("net.ipv4.neigh.{iface}.proxy_delay"), "0"),
                (&format!("net.ipv6.conf.{iface}.accept_dad"), "0"),
            ])?;
            host.sh(&format!(
                "set -e
                 ip link set {iface} up
                 ip route add {v4}/32 dev {iface}
                 ip -6 route add {v6}/128 dev {iface}"
            ))?;
            calico_lab::pods::configure_pod_side(&netns, &v4, &v6)?;
            pods.push(Pod {
                ns_name,
                name,
                node,
                netns,
                iface,
                v4: v4.parse()?,
                v6: v6.parse()?,
                next_port: AtomicU16::new(10000),
                label: std::sync::Mutex::new(name.to_string()),
            });
        }
        let mut servers = Vec::new();
        for p in &pods {
            servers.push(Servers::start(&p.netns)?);
        }
        let mut felix = Vec::new();
        for n in &nodes {
            let h = n
                .in_ns(|| policy::spawn(PolicyCfg::default()))?
                .map_err(|e| anyhow!("starting felix policy in {}: {e}", n.name()))?;
            felix.push(h);
        }
        Ok(Cluster {
            _servers: servers,
            felix,
            pods,
            nodes,
            _lab: lab,
        })
    }

    /// The pod `ns/name`.
    pub fn pod(&self, id: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id}"))
    }

    /// Felix's input on node `node` (1 or 2) with `policies`.
    pub fn input(&self, node: u8, policies: &[NetworkPolicy]) -> PolicyInput {
        PolicyInput {
            endpoints: self
                .pods
                .iter()
                .filter(|p| p.node == node)
                .map(|p| WorkloadEndpoint {
                    iface: p.iface.clone(),
                    pod: p.model(),
                })
                .collect(),
            pods: self.pods.iter().map(Pod::model).collect(),
            namespaces: NAMESPACES
                .iter()
                .map(|n| Namespace {
                    name: n.to_string(),
                    labels: BTreeMap::from([("ns".to_string(), n.to_string())]),
                })
                .collect(),
            policies: policies.to_vec(),
        }
    }

    /// Give both nodes `policies` and wait until both have them in the kernel.
    pub fn apply(&self, policies: &[NetworkPolicy]) -> Result<Vec<PolicyStatus>> {
        let seqs: Vec<u64> = self
            .felix
            .iter()
            .enumerate()
            .map(|(i, f)| f.update(self.input(i as u8 + 1, policies)))
            .collect();
        self.felix
            .iter()
            .zip(seqs)
            .map(|(f, s)| {
                f.wait_applied(s, Duration::from_secs(20))
                    .map_err(|e| anyhow!("{e}"))
            })
            .collect()
    }

    /// `nft ARGS` in node `node`'s namespace.
    pub fn nft(&self, node: u8, args: &[&str]) -> Result<String> {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        self.nodes[usize::from(node - 1)].run(&argv)
    }
}

/// Parse a multi-document YAML string of NetworkPolicies.
pub fn policies(yaml: &str) -> Result<Vec<NetworkPolicy>> {
    yaml.split("\n---")
        .filter(|doc| {
            doc.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|doc| serde_yaml_ng::from_str(doc).with_context(|| format!("policy YAML:\n{doc}")))
        .collect()
}

/// TCP and UDP echo servers on ports 80 and 81 (dual stack) in one pod, on a thread inside it.
struct Servers {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns) -> Result<Servers> {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread = ns.thread(&format!("srv-{}", ns.short()), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for port in [80u16, 81] {
                    let tcp = match tokio::net::TcpListener::bind(("::", port)).await {
                        Ok(l) => l,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    let udp = match tokio::net::UdpSocket::bind(("::", port)).await {
                        Ok(s) => s,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    tasks.push(tokio::spawn(tcp_echo(tcp)));
                    tasks.push(tokio::spawn(udp_echo(udp)));
                }
                let _ = ready_tx.send(Ok(()));
                let mut stop_rx = stop_rx;
                let _ = stop_rx.changed().await;
                for t in tasks {
                    t.abort();
                }
            });
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("echo servers did not start")?
            .with_context(|| format!("echo servers in {}", ns.name()))?;
        Ok(Servers {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn tcp_echo(l: tokio::net::TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn udp_echo(s: tokio::net::UdpSocket) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = s.recv_from(&mut buf).await {
        let _ = s.send_to(&buf[..n], from).await;
    }
}
