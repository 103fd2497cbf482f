//! Plumbing of the lab's namespaces: the bridged segment, the ToR, the nodes and the pods. Every
//! change goes through `ip -n PREFIX*` / `ip netns exec PREFIX*` ([`crate::netns`]).
//!
//! Pods are plumbed as Calico's CNI plugin does it ([`crate::pods`]), minus what the daemon's
//! felix does itself when it sees the interface (proxy ARP, sysctls, the /32 and /128 routes).
//! The host side gets its MAC `ee:ee:ee:ee:ee:ee` when it is created, before it comes up, as the
//! CNI plugin does: the kernel derives the IPv6 link-local address (the pods' IPv6 gateway) from
//! the MAC only when the link comes up, so a MAC changed later by felix would leave the host side
//! without `fe80::ecee:eeff:feee:eeee`.
//!
//! The lab command's pods are the CNI plugin's ([`pod_via_cni`]): `lab up` runs a real ADD per
//! pod (on the file datastore against its directory, on Kubernetes through the node daemon's
//! socket), so every lab exercises it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::datastore::PodIps;
use crate::netns;
use crate::plan::*;
use crate::pods;

/// Makes namespace `ns` and records it first, so a failure half-way still leaves it recorded.
fn add_ns(ns: &str, made: &mut Vec<String>) -> Result<()> {
    made.push(ns.to_string());
    netns::add(ns)?;
    netns::sysctls(ns, &netns::NO_DAD)
}

/// `PREFIXlan` with bridge `br0`.
pub fn segment(plan: &Plan, made: &mut Vec<String>) -> Result<()> {
    let lan = plan.lan_ns();
    add_ns(&lan, made)?;
    netns::ip_batch(
        &lan,
        &[
            format!("link add {BRIDGE} type bridge mcast_snooping 0"),
            format!("link set {BRIDGE} up"),
        ],
    )
}

/// A veth from the bridge (port `port`) to `eth0` of `ns`, with the segment addresses.
fn attach(plan: &Plan, ns: &str, port: &str, v4: &str, v6: &str) -> Result<()> {
    netns::ip_batch(
        &plan.lan_ns(),
        &[
            format!("link add {port} type veth peer name {ETH} netns {ns}"),
            format!("link set {port} master {BRIDGE}"),
            format!("link set {port} up"),
        ],
    )?;
    netns::ip_batch(
        ns,
        &[
            format!("addr add {v4}/{LAN_PREFIX_V4} dev {ETH}"),
            format!("addr add {v6}/{LAN_PREFIX_V6} dev {ETH} nodad"),
            format!("link set {ETH} up"),
        ],
    )
}

/// `PREFIXtor` on the segment, forwarding on (its router fills the kernel table).
pub fn tor(plan: &Plan, made: &mut Vec<String>) -> Result<()> {
    let tor = plan.tor_ns();
    add_ns(&tor, made)?;
    netns::sysctls(
        &tor,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ],
    )?;
    attach(
        plan,
        &tor,
        TOR_PORT,
        &TOR_V4.to_string(),
        &TOR_V6.to_string(),
    )
    .context("connecting the ToR to the segment")
}

/// `PREFIXapi` on the segment, for the Kubernetes API server (`--datastore kubernetes`).
pub fn api(plan: &Plan, made: &mut Vec<String>) -> Result<()> {
    let ns = plan.api_ns();
    add_ns(&ns, made)?;
    attach(
        plan,
        &ns,
        API_PORT_NAME,
        &crate::kubeapi::API_V4.to_string(),
        &crate::kubeapi::API_V6.to_string(),
    )
    .context("connecting the API server to the segment")
}

/// Bridge port (in [`Plan::lan_ns`]) of the API server's link.
const API_PORT_NAME: &str = "a0";

/// A node namespace on the segment with default routes via the ToR (felix needs a non-`cali`
/// route toward 169.254.1.1 to answer proxy ARP) and forwarding on.
pub fn node(plan: &Plan, n: &NodePlan, made: &mut Vec<String>) -> Result<()> {
    add_ns(&n.netns, made)?;
    netns::sysctls(
        &n.netns,
        &[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ],
    )?;
    attach(
        plan,
        &n.netns,
        &n.lan_port,
        &n.v4.to_string(),
        &n.v6.to_string(),
    )?;
    netns::ip_batch(
        &n.netns,
        &[
            format!("route add 0.0.0.0/0 via {TOR_V4} dev {ETH}"),
            format!("route add ::/0 via {TOR_V6} dev {ETH}"),
        ],
    )
    .with_context(|| format!("setting up {}", n.name))
}

/// Where the CNI plugin finds IPAM: the file datastore's directory, or the node daemon's socket.
#[derive(Clone, Copy)]
pub enum CniDatastore<'a> {
    File(&'a Path),
    Kubernetes(&'a Path),
}

/// A pod namespace whose veth and addresses come from the CNI plugin `plugin`, as the kubelet
/// would have it made: ADD in the node's namespace for Pod `default/NAME` (container ID
/// `lab-NAME`); the pod's addresses are the result's.
pub fn pod_via_cni(
    plugin: &Path,
    datastore: CniDatastore<'_>,
    node: &NodePlan,
    p: &PodPlan,
    made: &mut Vec<String>,
) -> Result<PodIps> {
    add_ns(&p.netns, made)?;
    let mut conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": crate::bins::CNI,
        "nodename": node.name,
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"},
    });
    match datastore {
        CniDatastore::File(dir) => {
            conf["datastore_type"] = "file".into();
            conf["datastore_dir"] = dir.display().to_string().into();
        }
        CniDatastore::Kubernetes(socket) => {
            conf["datastore_type"] = "kubernetes".into();
            conf["daemon_socket"] = socket.display().to_string().into();
        }
    }
    let conf = conf.to_string();
    let netns = Path::new(netns::NETNS_DIR).join(&p.netns);
    let env = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", format!("lab-{}", p.name)),
        ("CNI_NETNS", netns.display().to_string()),
        ("CNI_IFNAME", pods::POD_IFACE.to_string()),
        (
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                POD_NAMESPACE, p.name
            ),
        ),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
    ];
    let node_ns = Path::new(netns::NETNS_DIR).join(&node.netns);
    // On Kubernetes the daemon answers once it has started and synced with the API: until then
    // the plugin's ADD fails (its socket is missing, or "try again later"), as on a node whose
    // kubelet starts pods before calico-node is ready.
    let patience = match datastore {
        CniDatastore::File(_) => Duration::ZERO,
        CniDatastore::Kubernetes(_) => Duration::from_secs(30),
    };
    let started = Instant::now();
    let call = loop {
        let call = crate::cni::call_at(&node_ns, plugin, env.clone(), &conf)?;
        if call.ok || started.elapsed() >= patience {
            break call;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !call.ok {
        bail!(
            "pod {}: {} ADD failed: {}{}",
            p.name,
            plugin.display(),
            call.stdout,
            call.stderr
        );
    }
    let result = call.json()?;
    let mut v4 = None;
    let mut v6 = None;
    for ip in result["ips"].as_array().into_iter().flatten() {
        let net: ipnet::IpNet = ip["address"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("pod {}: the plugin's result {result}", p.name))?;
        match net.addr() {
            std::net::IpAddr::V4(a) => v4 = Some(a),
            std::net::IpAddr::V6(a) => v6 = Some(a),
        }
    }
    match (v4, v6) {
        (Some(v4), Some(v6)) => Ok(PodIps { v4, v6 }),
        _ => bail!(
            "pod {}: the plugin did not give an IPv4 and an IPv6 address: {result}",
            p.name
        ),
    }
}
