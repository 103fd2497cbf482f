//! Harness of the routes tests: the two-node topology, felix on a thread inside a node namespace,
//! and the checks (ping, our routes, forwarding counters, `ip -ts monitor` timestamps).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use calico_lab::wait::eventually;
use calico_lab::{Lab, Netns};
use felix::routes::{
    NextHop, RemoteBlock, RouteManager, RouteManagerHandle, RoutesCfg, RoutesInput, RoutesStatus,
    WorkloadEndpoint,
};
use ipnet::IpNet;

pub use calico_lab::pods::{add_pod, make_veth, our_prefixes, Pod};

pub const SYNC: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Topology

pub struct Node {
    pub ns: Netns,
    pub v4: String,
    pub v6: String,
    pub block4: IpNet,
    pub block6: IpNet,
    pub pods: Vec<Pod>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    // Last: namespaces go when the lab drops.
    pub _lab: Lab,
}

impl Cluster {
    pub fn new(tag: &str) -> Result<Cluster> {
        let lab = Lab::new(tag)?;
        let lan = lab.segment("lan")?;
        let mut nodes = Vec::new();
        for i in 1..=2u8 {
            let ns = lab.netns(&format!("n{i}"))?;
            let (v4, v6) = (format!("10.99.0.{i}"), format!("fd00:99::{i}"));
            lan.attach(&ns, "eth0", &[&format!("{v4}/24"), &format!("{v6}/64")])?;
            let other = 3 - i;
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.99.0.{other}"),
            ])?;
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:99::{other}"),
            ])?;
            let mut pods = Vec::new();
            for p in 1..=2u8 {
                pods.push(add_pod(
                    &lab,
                    &ns,
                    &format!("p{p}"),
                    &format!("10.65.{i}.{p}"),
                    &format!("fd10:65:{i}::{p}"),
                )?);
            }
            nodes.push(Node {
                ns,
                v4,
                v6,
                block4: format!("10.65.{i}.0/26").parse()?,
                block6: format!("fd10:65:{i}::/122").parse()?,
                pods,
            });
        }
        Ok(Cluster { nodes, _lab: lab })
    }

    /// Felix's input on node `i`: its pods, its blocks, the other node's blocks via it.
    pub fn input(&self, i: usize) -> RoutesInput {
        let me = &self.nodes[i];
        let other = &self.nodes[1 - i];
        RoutesInput {
            workloads: me.pods.iter().map(workload).collect(),
            local_blocks: vec![me.block4, me.block6],
            remote_blocks: vec![
                remote(other.block4, &other.v4),
                remote(other.block6, &other.v6),
            ],
        }
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }
}

pub fn workload(p: &Pod) -> WorkloadEndpoint {
    WorkloadEndpoint {
        id: p.id.clone(),
        iface: p.iface.clone(),
        nets: vec![
            format!("{}/32", p.v4).parse().unwrap(),
            format!("{}/128", p.v6).parse().unwrap(),
        ],
    }
}

pub fn remote(cidr: IpNet, via: &str) -> RemoteBlock {
    RemoteBlock {
        cidr,
        next_hops: vec![NextHop::via(via.parse().unwrap())],
    }
}

// ---------------------------------------------------------------------------------------------
// felix in a namespace

/// A route manager running on its own thread inside a node namespace. Dropping it stops the task
/// (as a daemon exit would): programmed routes stay.
pub struct Felix {
    pub handle: Option<RouteManagerHandle>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Felix {
    pub fn start(ns: &Netns, input: RoutesInput) -> Result<Felix> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.thread(&format!("felix-{}", ns.short()), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                match RouteManager::start(RoutesCfg::default()).await {
                    Ok(h) => {
                        let _ = h.set_desired(input);
                        let _ = tx.send(Ok(h));
                        let _ = stop_rx.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
        let handle = rx
            .recv_timeout(SYNC)
            .context("felix did not start")?
            .map_err(|e| anyhow!("felix start in {}: {e}", ns.name()))?;
        Ok(Felix {
            handle: Some(handle),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &RouteManagerHandle {
        self.handle.as_ref().expect("running")
    }

    pub fn set(&self, input: RoutesInput) -> Result<()> {
        Ok(self.handle().set_desired(input)?)
    }

    pub fn status(&self) -> RoutesStatus {
        self.handle().status()
    }

    /// Wait until every desired route is programmed and nothing is pending.
    pub fn wait_in_sync(&self) -> Result<RoutesStatus> {
        eventually(SYNC, || {
            let s = self.status();
            ensure!(s.desired > 0 && s.in_sync(), "felix not in sync: {s:#?}");
            Ok(s)
        })
    }
}

impl Drop for Felix {
    fn drop(&mut self) {
        drop(self.handle.take());
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

pub fn ping(from: &Netns, to: &str) -> Result<()> {
    from.run_timeout(&["ping", "-n", "-c1", "-W1", to], Duration::from_secs(5))
        .map(|_| ())
}

pub fn expected_prefixes(input: &RoutesInput) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for w in &input.workloads {
        s.extend(w.nets.iter().map(|n| n.to_string()));
    }
    s.extend(input.local_blocks.iter().map(|b| b.to_string()));
    s.extend(input.remote_blocks.iter().map(|b| b.cidr.to_string()));
    s
}

pub fn route_line(ns: &Netns, dst: &str) -> Result<String> {
    let fam = if dst.contains(':') { "-6" } else { "-4" };
    Ok(ns.ip(&[fam, "route", "show", dst])?.trim().to_string())
}

/// Poll (no sleep) until `dst` shows a route whose text contains `want`; returns how long it took.
pub fn time_until_route(ns: &Netns, dst: &str, want: &str, limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let line = route_line(ns, dst)?;
        if line.contains(want) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!("{dst}: still {line:?} after {limit:?} (want {want:?})");
        }
    }
}

/// `Ip: ... ForwDatagrams` (v4) or `Ip6OutForwDatagrams` (v6) of a namespace.
pub fn forwarded(ns: &Netns, v6: bool) -> Result<u64> {
    if v6 {
        let t = ns.run(&["cat", "/proc/net/snmp6"])?;
        let line = t
            .lines()
            .find(|l| l.starts_with("Ip6OutForwDatagrams"))
            .context("no Ip6OutForwDatagrams")?;
        return Ok(line.split_whitespace().nth(1).context("value")?.parse()?);
    }
    let t = ns.run(&["cat", "/proc/net/snmp"])?;
    let mut ip = t.lines().filter(|l| l.starts_with("Ip:"));
    let (head, vals) = (
        ip.next().context("Ip header")?,
        ip.next().context("Ip values")?,
    );
    let col = head
        .split_whitespace()
        .position(|h| h == "ForwDatagrams")
        .context("ForwDatagrams column")?;
    Ok(vals.split_whitespace().nth(col).context("value")?.parse()?)
}

/// Seconds since midnight of an `ip -ts` line: `[2026-11-22T21:44:04.623496] ...`.
pub fn event_time(line: &str) -> Result<f64> {
    let inner = line
        .strip_prefix('[')
        .and_then(|l| l.split(']').next())
        .with_context(|| format!("no timestamp: {line}"))?;
    let time = inner.split('T').nth(1).context("no time")?;
    let mut parts = time.split(':');
    let h: f64 = parts.next().context("h")?.parse()?;
    let m: f64 = parts.next().context("m")?.parse()?;
    let s: f64 = parts.next().context("s")?.parse()?;
    Ok(h * 3600.0 + m * 60.0 + s)
}
