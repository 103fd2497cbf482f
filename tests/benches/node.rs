//! Benchmark: the node daemon in a lab of 3 and 20 nodes (release build of `calico-node-rs`).
//!
//! For each size it prints: startup to ready (spawn -> `/readiness` 200) per daemon while the
//! cluster forms, median and max, and for one daemon restarted into the running cluster; time to converge (every node holds every block route); time from a new Node and pod written
//! to the datastore until a pod on node 1 reaches the new pod. Then peak RSS (VmHWM) of one daemon
//! with 20 BGP peers (19 mesh nodes + a BIRD ToR) and 10,000 routes learned from the ToR.
//! Targets (issue 5): under 2 s to ready, under 30 MB RSS.
//!
//! Run (root): `cargo build --release -p calico-node --bins && cargo bench -p calico-tests --bench node`

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use calico_lab::cluster::{ping, Cluster};
use calico_lab::wait::eventually;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn vm_hwm_kib(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM for {pid}"))
}

fn size(n: usize) -> Result<()> {
    let t0 = Instant::now();
    let mut c = Cluster::new("nbench", n, 1, false)?;
    let built = t0.elapsed();
    let ready = c.wait_ready(Duration::from_secs(60))?;
    let t1 = Instant::now();
    c.wait_converged(Duration::from_secs(120))?;
    let converged = t1.elapsed();
    // A new node with a pod, written to the datastore, its daemon started.
    let t2 = Instant::now();
    let name = format!("n{}", n + 1);
    c.add_node(&name, 1)?;
    let newpod = c
        .nodes
        .last()
        .map(|n| n.pods[0].v4.clone())
        .unwrap_or_default();
    let from = c.nodes[0].pods[0].ns.clone();
    eventually(Duration::from_secs(60), || ping(&from, &newpod))?;
    let join = t2.elapsed();
    // One daemon restarting into the running cluster (the everyday case: an upgrade, a crash).
    c.restart_daemon(0)?;
    let restart_ready = c.wait_ready(Duration::from_secs(60))?[0];
    println!(
        "nodes={n:>2}  lab build {:>5.2} s  cluster start->all ready median {:>5.3} s max {:>5.3} s  converge {:>5.3} s  new node+pod -> reachable {:>5.3} s  one daemon restart -> ready {:>5.3} s",
        built.as_secs_f64(),
        median(ready.clone()).as_secs_f64(),
        ready.iter().max().copied().unwrap_or_default().as_secs_f64(),
        converged.as_secs_f64(),
        join.as_secs_f64(),
        restart_ready.as_secs_f64()
    );
    Ok(())
}

fn rss_20_peers_10k_routes() -> Result<()> {
    let routes = 10_000;
    // 20 nodes: node 1 peers with 19 others in the mesh and with the ToR.
    let c = Cluster::with_tor_routes("nrss", 20, 1, routes)?;
    let n1 = &c.nodes[0];
    eventually(Duration::from_secs(120), || {
        let have = n1.ns.ip(&["route", "show", "proto", "80"])?.lines().count();
        // The ToR's routes plus 20 nodes' blocks and our pod.
        if have < routes + 20 {
            bail!("node 1 has {have} of {routes}+ routes");
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let kib = vm_hwm_kib(n1.daemon.pid())?;
    println!(
        "one daemon with 20 BGP peers (19 mesh + ToR) and {routes} routes learned from the ToR: peak RSS {:.1} MiB (target < 30 MiB)",
        kib as f64 / 1024.0
    );
    // The reference in the same run: the ToR's BIRD, with 20 sessions (one per node) and the same
    // routes (it originates them), which also programs nothing but its own table.
    let tor = c.tor.as_ref().context("the cluster has a ToR")?;
    let bird_kib = vm_hwm_kib(tor.proc().pid())?;
    println!(
        "  reference: BIRD (ToR, 20 sessions, the same {routes} routes): peak RSS {:.1} MiB; ours/BIRD {:.2}x",
        bird_kib as f64 / 1024.0,
        kib as f64 / bird_kib as f64
    );
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    // `cargo bench --bench node -- rss` runs only the parts whose name holds "rss".
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    println!("calico-node-rs in a lab (release build)");
    for n in [3, 20] {
        if wanted(&format!("size{n}")) {
            size(n)?;
        }
    }
    if wanted("rss") {
        rss_20_peers_10k_routes()?;
    }
    Ok(())
}
