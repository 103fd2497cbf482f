//! Benchmark (issue: the CNI plugin): `calico-cni-rs` ADD and DEL latency, median and p99, for
//! 100 sequential and 50 concurrent calls on one lab node with the daemon running, on the file
//! datastore and on the Kubernetes datastore (the tests' API server; the plugin asks the daemon
//! over its socket, the daemon writes the IPAMBlocks and the Pods' annotations), and in the same
//! run the stock `bridge` + `host-local` plugins (Debian's
//! containernetworking-plugins) doing the same work: one veth per container, an IPv4 and an IPv6
//! address each, default routes. Prints the ratios, and the leak check after the run (veths,
//! our allocations, host-local's leases). Targets: our median ADD at or below the stock pair's,
//! p99 under 50 ms, no leak.
//!
//! Run (root): `cargo build --release --workspace --bins && cargo bench -p calico-tests --bench cni`

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use calico_lab::cluster::Cluster;
use calico_lab::lab::Netns;

const SEQUENTIAL: usize = 100;
const CONCURRENT: usize = 50;

/// One plugin call: `bin` in `node`'s namespace; fails unless it succeeds.
fn call(node: &Netns, bin: &str, env: &[(String, String)], conf: &str) -> Result<Duration> {
    let c = calico_lab::cni::call(node, std::path::Path::new(bin), env.iter().cloned(), conf)?;
    ensure!(c.ok, "{bin} {:?}: {} {}", env.first(), c.stdout, c.stderr);
    Ok(c.took)
}

fn env(cmd: &str, i: usize, netns: &Netns) -> Vec<(String, String)> {
    vec![
        ("CNI_COMMAND".into(), cmd.into()),
        ("CNI_CONTAINERID".into(), format!("bench{i:04}")),
        ("CNI_NETNS".into(), netns.path().display().to_string()),
        ("CNI_IFNAME".into(), "eth0".into()),
        (
            "CNI_ARGS".into(),
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{i}"),
        ),
        ("CNI_PATH".into(), "/usr/lib/cni".into()),
    ]
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        median: v[v.len() / 2],
        p99: v[(v.len() * 99).div_ceil(100) - 1],
    }
}

/// ADD then DEL for every pod, sequentially and then `CONCURRENT` at once; per-call latencies.
fn measure(node: &Netns, pods: &[Netns], bin: &str, conf: &str) -> Result<[(Stats, Stats); 2]> {
    let mut add = Vec::new();
    let mut del = Vec::new();
    for (i, p) in pods.iter().enumerate().take(SEQUENTIAL) {
        add.push(call(node, bin, &env("ADD", i, p), conf)?);
    }
    for (i, p) in pods.iter().enumerate().take(SEQUENTIAL) {
        del.push(call(node, bin, &env("DEL", i, p), conf)?);
    }
    let sequential = (stats(add), stats(del));
    let at_once = |cmd: &str| -> Result<Vec<Duration>> {
        std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .enumerate()
                .take(CONCURRENT)
                .map(|(i, p)| {
                    let e = env(cmd, i, p);
                    s.spawn(move || call(node, bin, &e, conf))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        })
    };
    let concurrent = (stats(at_once("ADD")?), stats(at_once("DEL")?));
    Ok([sequential, concurrent])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Veths left in `node` (ours and the bridge plugin's).
fn veths(node: &Netns) -> Result<usize> {
    Ok(node
        .ip(&["-br", "link"])?
        .lines()
        .filter(|l| l.starts_with("cali") || l.starts_with("veth"))
        .count())
}

fn report(label: &str, ours: &[(Stats, Stats); 2], stock: &[(Stats, Stats); 2]) {
    for (k, run) in ["sequential", "concurrent"].iter().enumerate() {
        let ((oa, od), (sa, sd)) = (&ours[k], &stock[k]);
        println!(
            "{label:>10} {run:>10}: ADD median {:.1} ms (p99 {:.1} ms, target < 50) vs bridge+host-local \
             {:.1} ms (p99 {:.1} ms): {:.2}x; DEL median {:.1} ms (p99 {:.1} ms) vs {:.1} ms (p99 {:.1} ms): {:.2}x",
            ms(oa.median),
            ms(oa.p99),
            ms(sa.median),
            ms(sa.p99),
            oa.median.as_secs_f64() / sa.median.as_secs_f64(),
            ms(od.median),
            ms(od.p99),
            ms(sd.median),
            ms(sd.p99),
            od.median.as_secs_f64() / sd.median.as_secs_f64(),
        );
    }
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let stock_bridge = "/usr/lib/cni/bridge";
    ensure!(
        std::path::Path::new(stock_bridge).is_file(),
        "{stock_bridge} missing: install Debian's containernetworking-plugins"
    );
    let ours_bin = calico_lab::bins::cni_bin()?.display().to_string();
    println!(
        "CNI ADD/DEL on one node: {SEQUENTIAL} sequential, then {CONCURRENT} at once; IPv4 + IPv6 each"
    );

    // The file datastore, and the stock pair on the same node.
    let (file, stock) = {
        let mut c = Cluster::new("cnib", 1, 0, false)?;
        c.wait_converged(Duration::from_secs(60))?;
        let node = c.nodes[0].ns.clone();
        let pods: Vec<Netns> = (0..SEQUENTIAL)
            .map(|i| c.lab().netns(&format!("b{i}")))
            .collect::<Result<_>>()?;
        let ours_conf = format!(
            r#"{{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico-cni-rs",
                "datastore_type": "file", "datastore_dir": "{}", "nodename": "n1",
                "ipam": {{"type": "calico-ipam", "assign_ipv6": "true"}}}}"#,
            c.dir().display()
        );
        let leases = c.lab().dir().join("host-local");
        let stock_conf = format!(
            r#"{{"cniVersion": "1.0.0", "name": "stock", "type": "bridge", "bridge": "crsbr0",
                "isGateway": true, "ipMasq": false,
                "ipam": {{"type": "host-local", "dataDir": "{}",
                          "ranges": [[{{"subnet": "10.250.0.0/16"}}], [{{"subnet": "fd00:250::/64"}}]]}}}}"#,
            leases.display()
        );
        let ours = measure(&node, &pods, &ours_bin, &ours_conf)?;
        let stock = measure(&node, &pods, stock_bridge, &stock_conf)?;
        // Leaks: veths in the node, our allocations, host-local's leases.
        let veths = veths(&node)?;
        let used: u64 = calico_node::ipam::Ipam::new(c.dir())?
            .usage()?
            .blocks
            .iter()
            .map(|b| b.used)
            .sum();
        let stock_leases = calico_lab::cni::host_local_leases(&leases.join("stock"));
        println!(
            "file datastore, after: {veths} veths, {used} calico-cni-rs allocations, {stock_leases} \
             host-local leases (want 0, 0, 0)"
        );
        ensure!(
            veths == 0 && used == 0 && stock_leases == 0,
            "leaked after the file datastore run"
        );
        (ours, stock)
    };

    // The Kubernetes datastore: the same calls through the daemon's socket, one Pod each.
    let kube = {
        let mut c = Cluster::new_kube("cnibk", 1, 0, false)?;
        c.wait_converged(Duration::from_secs(60))?;
        let node = c.nodes[0].ns.clone();
        let api = c.kube().context("kube")?;
        api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n")?;
        let pod_docs = calico_lab::cni::bare_pods_yaml("bench", SEQUENTIAL, "n1");
        api.apply(&pod_docs)?;
        let pods: Vec<Netns> = (0..SEQUENTIAL)
            .map(|i| c.lab().netns(&format!("b{i}")))
            .collect::<Result<_>>()?;
        let conf = format!(
            r#"{{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico-cni-rs",
                "datastore_type": "kubernetes", "daemon_socket": "{}", "nodename": "n1",
                "ipam": {{"type": "calico-ipam", "assign_ipv6": "true"}}}}"#,
            c.cni_socket("n1").display()
        );
        let ours = measure(&node, &pods, &ours_bin, &conf)?;
        // A DEL answered before its release finished (the daemon queued it) completes soon after.
        let queued = c.nodes[0].daemon.log().matches("release queued").count();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let used = loop {
            let used: u64 = api
                .with_ipam(|i| i.usage())??
                .blocks
                .iter()
                .map(|b| b.used)
                .sum();
            if used == 0 || std::time::Instant::now() > deadline {
                break used;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let veths = veths(&node)?;
        println!(
            "Kubernetes datastore, after: {veths} veths, {used} allocations in the IPAMBlocks \
             (want 0, 0); {queued} DELs answered before their release was done"
        );
        ensure!(veths == 0 && used == 0, "leaked after the Kubernetes run");
        ours
    };
    report("file", &file, &stock);
    report("kubernetes", &kube, &stock);
    Ok(())
}
