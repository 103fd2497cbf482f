//! The plugin's operations (`ADD`, `DEL`, `CHECK`, `VERSION`) over the kernel and IPAM.
//!
//! ```text
//!  ADD: addresses (our IPAM in the file datastore, or the delegated IPAM plugin)
//!       -> veth: host end `cali…` (MAC ee:ee:ee:ee:ee:ee, MTU) in the caller's namespace, the
//!          other end `CNI_IFNAME` created directly in `CNI_NETNS`
//!       -> container side: /32 and /128, link up, 169.254.1.1 on-link, default routes
//!       -> result; any failure undoes the veth and the addresses before the error is returned
//!  DEL: release the handle's addresses, delete the host end (the container end goes with it);
//!       every "already gone" is success
//! ```
//!
//! The kernel work is `ip -batch` (in the container's namespace through `nsenter --net`), so the
//! kernel sees exactly what the lab's and the tests' `ip` lines do. The daemon configures the host
//! end (sysctls, up, the /32 route) when it sees the link and the Pod, as for lab pods.
//!
//! `STATUS` (1.1) says whether ADD can be served; `GC` (1.1) releases this node's allocations of
//! containers not among `cni.dev/valid-attachments`.
//!
//! Where addresses come from: with `datastore_type file`, the datastore directory's IPAM
//! directly; with `datastore_type kubernetes`, the node's daemon over its socket
//! ([`super::socket`]), which also writes the Pod's annotations (the plugin holds no
//! credentials); or the delegated IPAM plugin.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{json, Value};

use super::config::{DatastoreCfg, IpamCfg, NetConf};
use super::env::{endpoint_name, CniEnv, Command, ENDPOINT_NAMESPACE};
use super::error::{CniError, Code};
use super::result::{version_json, AddResult, Iface};
use super::socket::{PodId, Reply, Request};
use crate::datastore::IpFamily;
use crate::ipam::Ipam;

/// Runs one call; the JSON for stdout on success (`None`: nothing to print, as for DEL).
pub fn run(env: &CniEnv, conf: &NetConf) -> Result<Option<Value>, CniError> {
    match env.command {
        Command::Version => Ok(Some(version_json(&conf.cni_version))),
        Command::Add => add(env, conf).map(Some),
        Command::Del => del(env, conf).map(|()| None),
        Command::Check => check(env, conf).map(|()| None),
        Command::Status => status(env, conf).map(|()| None),
        Command::Gc => gc(env, conf).map(|()| None),
    }
}

/// STATUS (1.1): whether ADD can be served now: the datastore is readable and a pool selects
/// this node (our IPAM), or the delegated IPAM plugin is there.
fn status(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |msg: String| CniError::new(Code::NotAvailable, msg);
    match &conf.ipam {
        IpamCfg::Calico {
            assign_ipv4,
            assign_ipv6,
            ..
        } => {
            if let DatastoreCfg::Kubernetes { socket } = &conf.datastore {
                let req = Request::Status {
                    node: conf.node_name()?,
                    ipv4: *assign_ipv4,
                    ipv6: *assign_ipv6,
                };
                return ask(socket, &req, ASK_TIMEOUT)
                    .map(|_| ())
                    .map_err(|e| unavailable(e.msg));
            }
            let dir = datastore_dir(conf)?;
            let node = conf.node_name()?;
            let scan = crate::datastore::file::scan_dir(dir)
                .map_err(|e| unavailable(format!("datastore_dir {}: {e}", dir.display())))?;
            for (on, family) in [(*assign_ipv4, IpFamily::V4), (*assign_ipv6, IpFamily::V6)] {
                if on && scan.state.ip_pools_for_node(&node, family).is_empty() {
                    return Err(unavailable(format!(
                        "node {node}: no enabled {family} IPPool selects this node"
                    )));
                }
            }
            Ok(())
        }
        IpamCfg::Delegate { plugin, .. } => {
            if env.path.iter().any(|d| d.join(plugin).is_file()) {
                Ok(())
            } else {
                Err(unavailable(format!(
                    "ipam.type {plugin:?}: not found on CNI_PATH"
                )))
            }
        }
    }
}

/// The container IDs of the 1.1 GC's `cni.dev/valid-attachments`.
fn valid_attachments(conf: &NetConf) -> Result<std::collections::BTreeSet<String>, CniError> {
    // Absent is not "none valid": releasing every allocation on a malformed call would cut
    // every pod of the node off.
    let Some(list) = conf.raw.get("cni.dev/valid-attachments") else {
        return Err(CniError::new(
            Code::InvalidConfig,
            "cni.dev/valid-attachments: required for GC",
        ));
    };
    let bad = || {
        CniError::new(
            Code::InvalidConfig,
            "cni.dev/valid-attachments: want a list of {containerID, ifname}",
        )
    };
    list.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|a| {
            a.get("containerID")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(bad)
        })
        .collect()
}

/// GC (1.1): releases this node's allocations made by this plugin (handle
/// `k8s-pod-network.CONTAINERID`) whose container is not among the valid attachments; the
/// delegated IPAM plugin gets the GC as the spec says. `disableGC` turns it off.
fn gc(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    if conf.raw.get("disableGC").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    let valid = valid_attachments(conf)?;
    if let DatastoreCfg::File(dir) = &conf.datastore {
        gc_endpoints(dir, &conf.node_name()?, &valid)?;
    }
    match &conf.ipam {
        IpamCfg::Calico { .. } => {
            if let DatastoreCfg::Kubernetes { socket } = &conf.datastore {
                let req = Request::Gc {
                    node: conf.node_name()?,
                    valid: valid.into_iter().collect(),
                };
                return ask(socket, &req, ASK_TIMEOUT).map(|_| ());
            }
            let dir = datastore_dir(conf)?;
            let node = conf.node_name()?;
            let ipam = Ipam::new(dir).map_err(|e| io_err("IPAM", e))?;
            let usage = ipam.usage().map_err(|e| io_err("IPAM", e))?;
            let stale: std::collections::BTreeSet<&str> = usage
                .blocks
                .iter()
                .filter(|b| b.affinity.as_deref() == Some(node.as_str()))
                .flat_map(|b| b.allocations.iter().map(|(_, h)| h.as_str()))
                .filter(|h| {
                    h.strip_prefix(HANDLE_PREFIX)
                        .is_some_and(|id| !valid.contains(id))
                })
                .collect();
            for h in stale {
                ipam.release(h)
                    .map_err(|e| io_err(format!("IPAM: release {h}"), e))?;
            }
            Ok(())
        }
        IpamCfg::Delegate { plugin, .. } => match delegate(env, conf, plugin, "GC") {
            Ok(_) => Ok(()),
            // A plugin older than CNI 1.1 does not know GC: nothing to forward it to.
            Err(e) if e.msg.contains("unknown") || e.details.contains("unknown") => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// Removes this node's plain-container endpoints whose container is not among `valid`.
fn gc_endpoints(
    dir: &Path,
    node: &str,
    valid: &std::collections::BTreeSet<String>,
) -> Result<(), CniError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir.display(), e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("cni-endpoint-") && name.ends_with(".yaml")) {
            continue;
        }
        let Ok(doc) = std::fs::read(e.path()).map(|b| serde_json::from_slice::<Value>(&b)) else {
            continue;
        };
        let Ok(doc) = doc else { continue };
        let id = doc
            .pointer("/metadata/annotations/cni.projectcalico.org~1containerID")
            .and_then(Value::as_str);
        let on = doc.pointer("/spec/nodeName").and_then(Value::as_str);
        if let (Some(id), Some(on)) = (id, on) {
            if on == node && !valid.contains(id) {
                std::fs::remove_file(e.path())
                    .map_err(|err| io_err(format!("removing endpoint {name}"), err))?;
            }
        }
    }
    Ok(())
}

/// The IPAM handle prefix of this plugin's allocations (Calico's).
const HANDLE_PREFIX: &str = "k8s-pod-network.";

fn io_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> CniError {
    CniError::new(Code::Io, format!("{what}: {e}"))
}

/// The file datastore directory (callers handle the Kubernetes datastore first).
fn datastore_dir(conf: &NetConf) -> Result<&Path, CniError> {
    match &conf.datastore {
        DatastoreCfg::File(dir) => Ok(dir),
        DatastoreCfg::Kubernetes { socket } => Err(CniError::new(
            Code::InvalidConfig,
            format!(
                "datastore_type kubernetes: addresses come from the daemon at {}",
                socket.display()
            ),
        )),
    }
}

/// Longest wait for the daemon's answer to an ADD (it may claim a block on the API).
const ADD_TIMEOUT: Duration = Duration::from_secs(60);
/// For a DEL: the daemon answers within a second even when the API server is not reachable.
const DEL_TIMEOUT: Duration = Duration::from_secs(5);
/// For STATUS, GC and CHECK.
const ASK_TIMEOUT: Duration = Duration::from_secs(20);

/// One request to the daemon; its refusal as a CNI error (`retry`: try again later).
fn ask(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, CniError> {
    let reply = crate::cni::socket::call(socket, req, timeout)
        .map_err(|e| CniError::new(Code::TryAgainLater, e.to_string()))?;
    match &reply.error {
        Some(msg) => Err(CniError::new(
            if reply.retry {
                Code::TryAgainLater
            } else {
                Code::Io
            },
            format!("calico-node-rs: {msg}"),
        )),
        None => Ok(reply),
    }
}

fn pod_id(env: &CniEnv) -> Option<PodId> {
    env.pod.as_ref().map(|(namespace, name)| PodId {
        namespace: namespace.clone(),
        name: name.clone(),
    })
}

/// Addresses for the container: from our IPAM (both families as configured) or the delegate.
fn allocate(env: &CniEnv, conf: &NetConf) -> Result<Vec<IpNet>, CniError> {
    match &conf.ipam {
        IpamCfg::Calico {
            assign_ipv4,
            assign_ipv6,
            ipv4_pools,
            ipv6_pools,
        } => {
            if let DatastoreCfg::Kubernetes { socket } = &conf.datastore {
                let req = Request::Add {
                    node: conf.node_name()?,
                    container_id: env.container_id.clone(),
                    pod: pod_id(env),
                    ipv4: *assign_ipv4,
                    ipv6: *assign_ipv6,
                    ipv4_pools: ipv4_pools.clone(),
                    ipv6_pools: ipv6_pools.clone(),
                };
                let reply = ask(socket, &req, ADD_TIMEOUT)?;
                return Ok(reply.ips.into_iter().map(IpNet::from).collect());
            }
            let dir = datastore_dir(conf)?;
            let node = conf.node_name()?;
            let scan = crate::datastore::file::scan_dir(dir)
                .map_err(|e| io_err(format!("datastore_dir {}", dir.display()), e))?;
            let ipam = Ipam::new(dir).map_err(|e| io_err("IPAM", e))?;
            let handle = env.handle();
            let mut out = Vec::new();
            for (on, family, named) in [
                (*assign_ipv4, IpFamily::V4, ipv4_pools),
                (*assign_ipv6, IpFamily::V6, ipv6_pools),
            ] {
                if !on {
                    continue;
                }
                let mut pools = scan.state.ip_pools_for_node(&node, family);
                if !named.is_empty() {
                    pools.retain(|p| {
                        named
                            .iter()
                            .any(|n| *n == p.metadata.name || *n == p.cidr.to_string())
                    });
                }
                match ipam.allocate(&node, &handle, family, &pools) {
                    Ok(ip) => out.push(IpNet::from(ip)),
                    Err(e) => {
                        let _ = ipam.release(&handle);
                        return Err(CniError::new(
                            Code::TryAgainLater,
                            format!("IPAM: {family} address for {handle}"),
                        )
                        .with_details(e.to_string()));
                    }
                }
            }
            Ok(out)
        }
        IpamCfg::Delegate { plugin, .. } => {
            let reply = delegate(env, conf, plugin, "ADD")?;
            let ips = reply
                .get("ips")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            ips.iter()
                .map(|ip| {
                    let text = ip.get("address").and_then(Value::as_str).unwrap_or("");
                    let net: IpNet = text.parse().map_err(|_| {
                        CniError::new(
                            Code::Decode,
                            format!("ipam plugin {plugin}: address {text:?} is not ADDR/LEN"),
                        )
                    })?;
                    // The container gets the address alone (routes go via the gateway).
                    Ok(IpNet::from(net.addr()))
                })
                .collect()
        }
    }
}

/// Gives the addresses back (our IPAM, or the delegate's DEL).
fn release(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    match &conf.ipam {
        IpamCfg::Calico { .. } => {
            if let DatastoreCfg::Kubernetes { socket } = &conf.datastore {
                let req = Request::Del {
                    node: conf.node_name()?,
                    container_id: env.container_id.clone(),
                    pod: pod_id(env),
                };
                // `queued`: the daemon gives the addresses back once the API server answers
                // (and logs it); for the runtime the DEL is done.
                ask(socket, &req, DEL_TIMEOUT)?;
                return Ok(());
            }
            let dir = datastore_dir(conf)?;
            let ipam = Ipam::new(dir).map_err(|e| io_err("IPAM", e))?;
            ipam.release(&env.handle())
                .map_err(|e| io_err(format!("IPAM: release {}", env.handle()), e))?;
            Ok(())
        }
        IpamCfg::Delegate { plugin, .. } => delegate(env, conf, plugin, "DEL").map(|_| ()),
    }
}

/// Calls IPAM plugin `plugin` (found on `CNI_PATH`) with our configuration, as the spec says.
fn delegate(env: &CniEnv, conf: &NetConf, plugin: &str, command: &str) -> Result<Value, CniError> {
    if plugin.contains('/') {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!("ipam.type {plugin:?}: a plugin name, not a path"),
        ));
    }
    let bin = env
        .path
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!("ipam.type {plugin:?}: not found on CNI_PATH"),
            )
        })?;
    let stdin = serde_json::to_vec(&conf.raw).map_err(|e| io_err("encoding the config", e))?;
    // The pod identity in CNI_ARGS is for us; a stock IPAM plugin refuses keys it does not know
    // unless IgnoreUnknown is set (kubelet sets it; other runtimes may not).
    let args = std::env::var("CNI_ARGS").unwrap_or_default();
    let args = if args.is_empty()
        || args.split(';').any(|kv| {
            kv.eq_ignore_ascii_case("IgnoreUnknown=1")
                || kv.eq_ignore_ascii_case("IgnoreUnknown=true")
        }) {
        args
    } else {
        format!("IgnoreUnknown=1;{args}")
    };
    let mut child = Proc::new(&bin)
        .env("CNI_COMMAND", command)
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io_err(bin.display(), e))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(&stdin).map_err(|e| io_err(bin.display(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| io_err(bin.display(), e))?;
    let reply: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).map_err(|e| {
            CniError::new(
                Code::Decode,
                format!("ipam plugin {plugin} {command}: output is not JSON: {e}"),
            )
        })?
    };
    if !out.status.success() {
        let msg = reply.get("msg").and_then(Value::as_str).unwrap_or("failed");
        return Err(
            CniError::new(Code::Io, format!("ipam plugin {plugin} {command}: {msg}"))
                .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        );
    }
    Ok(reply)
}

/// `program` run in `netns` (a path) when given, else here.
fn in_netns(netns: Option<&Path>, program: &str) -> Proc {
    match netns {
        Some(ns) => {
            let mut c = Proc::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(program);
            c
        }
        None => Proc::new(program),
    }
}

/// `ip -batch -` with `lines`, in `netns` (a path) when given.
fn ip_batch(netns: Option<&Path>, lines: &[String]) -> Result<(), String> {
    wait_ip(spawn_ip_batch(netns, lines, false)?).map(drop)
}

/// `ip [-j] -batch -` with `lines` started, not waited for ([`wait_ip`]).
fn spawn_ip_batch(
    netns: Option<&Path>,
    lines: &[String],
    json: bool,
) -> Result<std::process::Child, String> {
    let mut cmd = in_netns(netns, "ip");
    if json {
        cmd.arg("-j");
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(if json { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running ip: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        let text = lines.join("\n") + "\n";
        if let Err(e) = i.write_all(text.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("ip: {e}"));
        }
    }
    Ok(child)
}

/// The stdout of an `ip` started by [`spawn_ip_batch`], or its stderr if it failed.
fn wait_ip(child: std::process::Child) -> Result<Vec<u8>, String> {
    let out = child.wait_with_output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `ip -j` output for `args` in `netns`.
fn ip_json(netns: Option<&Path>, args: &[&str]) -> Result<Value, String> {
    let out = in_netns(netns, "ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("ip -j: {e}"))
}

fn netns_of(env: &CniEnv) -> Result<&Path, CniError> {
    let ns = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(Code::InvalidEnvironment, "CNI_NETNS: required"))?;
    if !ns.exists() {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_NETNS {}: no such network namespace", ns.display()),
        ));
    }
    Ok(ns)
}

/// The container-side lines: addresses, link up, the Calico gateways.
fn container_lines(ifname: &str, ips: &[IpNet]) -> Vec<String> {
    let (gw4, gw6) = (felix::veth::IPV4_GATEWAY, felix::veth::IPV6_GATEWAY);
    let mut l = Vec::new();
    for ip in ips {
        match ip {
            IpNet::V4(_) => l.push(format!("addr add {ip} dev {ifname}")),
            IpNet::V6(_) => l.push(format!("addr add {ip} dev {ifname} nodad")),
        }
    }
    l.push(format!("link set {ifname} up"));
    if ips.iter().any(|n| n.addr().is_ipv4()) {
        l.push(format!("route add {gw4}/32 dev {ifname} scope link"));
        l.push(format!("route add 0.0.0.0/0 via {gw4} dev {ifname}"));
    }
    if ips.iter().any(|n| n.addr().is_ipv6()) {
        l.push(format!("route add ::/0 via {gw6} dev {ifname}"));
    }
    l
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let netns = netns_of(env)?.to_path_buf();
    if env.pod.is_none() && matches!(conf.datastore, DatastoreCfg::Kubernetes { .. }) {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            "CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME are required with datastore_type \
             kubernetes (the endpoint is the Pod); plain containers need datastore_type file",
        ));
    }
    if let Some(prev) = &conf.prev_result {
        super::result::merge_prev(prev, json!({}))
            .map_err(|msg| CniError::new(Code::InvalidConfig, msg))?;
    }
    let host = env.host_iface();
    // The veth is made while IPAM (a file lock, or the daemon and the API server) answers: it
    // carries nothing until its addresses are configured, and goes if the allocation fails.
    let veth = spawn_ip_batch(None, &[veth_line(env, conf, &netns, &host)], false)
        .map_err(|e| io_err(format!("creating veth {host} / {}", env.ifname), e))?;
    let ips = match allocate(env, conf) {
        Ok(ips) => ips,
        Err(e) => {
            if wait_ip(veth).is_ok() {
                let _ = ip_batch(None, &[format!("link del {host}")]);
            }
            return Err(e);
        }
    };
    let done = wait_ip(veth)
        .map(drop)
        .or_else(|e| {
            // A host end of that name is left from an earlier attachment of this pod (a retried
            // ADD, or a new sandbox before the old one's DEL): replace it, as Calico's plugin
            // does. Otherwise (e.g. the container already has CNI_IFNAME) this fails again.
            if !e.contains("File exists") {
                return Err(e);
            }
            let _ = ip_batch(None, &[format!("link del {host}")]);
            ip_batch(None, &[veth_line(env, conf, &netns, &host)])
        })
        .map_err(|e| io_err(format!("creating veth {host} / {}", env.ifname), e))
        .and_then(|()| plumb(env, conf, &netns, &host, &ips))
        .and_then(|result| {
            if let (None, DatastoreCfg::File(dir)) = (&env.pod, &conf.datastore) {
                write_endpoint(dir, env, conf, &ips)?;
            }
            Ok(result)
        });
    match done {
        Ok(result) => {
            let ours = result.to_json(&conf.cni_version);
            match &conf.prev_result {
                None => Ok(ours),
                // Checked before anything was made (below), so this cannot fail here.
                Some(prev) => super::result::merge_prev(prev, ours)
                    .map_err(|msg| CniError::new(Code::InvalidConfig, msg)),
            }
        }
        Err(e) => {
            // Undo: the veth (both ends go with the host end) and the addresses.
            let _ = ip_batch(None, &[format!("link del {host}")]);
            let _ = release(env, conf);
            Err(e)
        }
    }
}

/// The endpoint document of a container that is not a Kubernetes pod, in the file datastore.
fn endpoint_file(dir: &Path, container_id: &str) -> std::path::PathBuf {
    dir.join(format!("cni-endpoint-{}.yaml", endpoint_name(container_id)))
}

/// Whether `v` is a valid label value (63 characters of `[A-Za-z0-9._-]`, alphanumeric at the
/// ends).
fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Writes the endpoint of a plain container (podman, containerd): a Pod named from the container
/// ID in namespace `cni` on this node, its addresses in Calico's annotation, and the runtime's
/// name for it (podman's `K8S_POD_NAME`) as the label `calico-rs.cni/name`, so the daemon
/// routes it and NetworkPolicy in namespace `cni` selects it. Atomic (renamed into place).
fn write_endpoint(dir: &Path, env: &CniEnv, conf: &NetConf, ips: &[IpNet]) -> Result<(), CniError> {
    let mut labels = serde_json::Map::new();
    if let Some(n) = env.container_name.as_deref().filter(|n| label_value_ok(n)) {
        labels.insert("calico-rs.cni/name".into(), n.into());
    }
    let all: Vec<String> = ips.iter().map(|n| n.to_string()).collect();
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": endpoint_name(&env.container_id),
            "namespace": ENDPOINT_NAMESPACE,
            "labels": labels,
            "annotations": {
                crate::datastore::resources::ANNOTATION_POD_IPS: all.join(","),
                "cni.projectcalico.org/containerID": env.container_id,
            },
        },
        "spec": {"nodeName": conf.node_name()?},
    });
    let path = endpoint_file(dir, &env.container_id);
    let tmp = dir.join(format!(".cni-endpoint-{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(&doc).map_err(|e| io_err("endpoint", e))? + "\n";
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(format!("writing endpoint {}", path.display()), e)
        })
}

/// The `ip -batch` line, run in the host's namespace, that makes the pod's veth: the host side
/// `host` with Calico's MAC, the container side `CNI_IFNAME` in `netns`, both with the MTU.
fn veth_line(env: &CniEnv, conf: &NetConf, netns: &Path, host: &str) -> String {
    let mtu = conf.mtu.map_or(String::new(), |m| format!(" mtu {m}"));
    format!(
        "link add {host} address {}{mtu} type veth peer name {}{mtu} netns {}",
        host_mac(),
        env.ifname,
        netns.display()
    )
}

/// Calico's host-side MAC, `ee:ee:ee:ee:ee:ee`.
fn host_mac() -> String {
    felix::veth::HOST_SIDE_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The container side of the veth [`veth_line`] made: its addresses, link and routes, in one
/// `ip -j -batch` that also reads the link back (its MAC, for the result).
fn plumb(
    env: &CniEnv,
    conf: &NetConf,
    netns: &Path,
    host: &str,
    ips: &[IpNet],
) -> Result<AddResult, CniError> {
    let mac = host_mac();
    let mut lines = container_lines(&env.ifname, ips);
    lines.push(format!("link show dev {}", env.ifname));
    let shown = spawn_ip_batch(Some(netns), &lines, true)
        .and_then(wait_ip)
        .map_err(|e| {
            io_err(
                format!("configuring {} in {}", env.ifname, netns.display()),
                e,
            )
        })?;
    if conf.allow_ip_forwarding {
        let out = in_netns(Some(netns), "sysctl")
            .args(["-q", "-w", "net.ipv4.ip_forward=1"])
            .output()
            .map_err(|e| io_err("sysctl", e))?;
        if !out.status.success() {
            return Err(io_err(
                "container_settings.allow_ip_forwarding: net.ipv4.ip_forward=1",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
    }
    let link: Value = serde_json::from_slice(&shown)
        .map_err(|e| io_err(format!("reading {}: ip -j", env.ifname), e))?;
    let container_mac = link
        .get(0)
        .and_then(|l| l.get("address"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut routes = Vec::new();
    if ips.iter().any(|n| n.addr().is_ipv4()) {
        routes.push(("0.0.0.0/0".parse().expect("valid"), None));
    }
    if ips.iter().any(|n| n.addr().is_ipv6()) {
        routes.push(("::/0".parse().expect("valid"), None));
    }
    Ok(AddResult {
        interfaces: vec![
            Iface {
                name: host.to_string(),
                mac,
                sandbox: None,
            },
            Iface {
                name: env.ifname.clone(),
                mac: container_mac,
                sandbox: Some(netns.display().to_string()),
            },
        ],
        ips: ips.iter().map(|n| (*n, 1)).collect(),
        routes,
        dns: conf.raw.get("dns").cloned().unwrap_or_else(|| json!({})),
    })
}

fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    // The endpoint first (the daemon stops routing to it), then the addresses: a DEL that cannot
    // release must fail (the runtime retries).
    if let (None, DatastoreCfg::File(dir)) = (&env.pod, &conf.datastore) {
        let path = endpoint_file(dir, &env.container_id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing endpoint {}", path.display()), e)),
        }
    }
    // The veth goes while the addresses are released (the kernel takes tens of milliseconds to
    // delete a link); a failed release still fails the DEL, which the runtime retries.
    let host = env.host_iface();
    let veth = spawn_ip_batch(None, &[format!("link del {host}")], false)
        .map_err(|e| io_err(format!("deleting veth {host}"), e))?;
    let released = release(env, conf);
    let deleted = wait_ip(veth);
    released?;
    if let Err(e) = deleted {
        if !e.contains("Cannot find device") {
            return Err(io_err(format!("deleting veth {host}"), e));
        }
    }
    Ok(())
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let netns = netns_of(env)?;
    let host = env.host_iface();
    ip_json(None, &["link", "show", "dev", &host]).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            format!("veth {host}: missing ({e})"),
        )
    })?;
    let want: Vec<IpAddr> = match &conf.ipam {
        IpamCfg::Calico { .. } => match &conf.datastore {
            DatastoreCfg::Kubernetes { socket } => {
                let req = Request::Addresses {
                    container_id: env.container_id.clone(),
                };
                ask(socket, &req, ASK_TIMEOUT)?.ips
            }
            DatastoreCfg::File(dir) => {
                let ipam = Ipam::new(dir).map_err(|e| io_err("IPAM", e))?;
                ipam.addresses_of(&env.handle())
                    .map_err(|e| io_err("IPAM", e))?
            }
        },
        IpamCfg::Delegate { .. } => Vec::new(),
    };
    let addrs = ip_json(Some(netns), &["addr", "show", "dev", &env.ifname]).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            format!("{} in {}: missing ({e})", env.ifname, netns.display()),
        )
    })?;
    let have: Vec<IpAddr> = addrs
        .get(0)
        .and_then(|l| l.get("addr_info"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
        .collect();
    for ip in &want {
        if !have.contains(ip) {
            return Err(CniError::new(
                Code::Io,
                format!(
                    "{} in {}: address {ip} of {} is missing",
                    env.ifname,
                    netns.display(),
                    env.handle()
                ),
            ));
        }
    }
    let gw_ok = |args: &[&str]| {
        ip_json(Some(netns), args)
            .ok()
            .and_then(|v| v.as_array().map(|a| !a.is_empty()))
            .unwrap_or(false)
    };
    if want.iter().any(IpAddr::is_ipv4) && !gw_ok(&["route", "show", "default"]) {
        return Err(CniError::new(
            Code::Io,
            format!("{}: no IPv4 default route", netns.display()),
        ));
    }
    if want.iter().any(IpAddr::is_ipv6) && !gw_ok(&["-6", "route", "show", "default"]) {
        return Err(CniError::new(
            Code::Io,
            format!("{}: no IPv6 default route", netns.display()),
        ));
    }
    Ok(())
}
