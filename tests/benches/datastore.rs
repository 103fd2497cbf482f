//! Benchmark (issue: the Kubernetes datastore): the daemon on a cluster-sized datastore, on the
//! Kubernetes backend (the lab's test API server, objects created with kubectl) and, in the same
//! run with the same objects, on the file datastore.
//!
//! 5,000 pods in 500 namespaces and 1,000 NetworkPolicies, one daemon with 110 local pods (the
//! lab's, with their veths). Printed per backend: time from the daemon's start to ready (policy
//! in the kernel, routes programmed, BGP synced), the daemon's peak RSS (VmHWM), and one remote
//! pod's label change (one merge PATCH to the API, or the pod's file) to the kernel (the
//! `add element` of the pod's address, as `nft monitor` reports it), median of 7. Targets: initial sync under 2 s, RSS under 50 MB, label change
//! under 50 ms median.
//!
//! Run (root): `cargo build --release --workspace --bins && cargo bench -p calico-tests --bench datastore`

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use calico_lab::cluster::Cluster;

const NAMESPACES: usize = 500;
const PODS_PER_NS: usize = 10;
const POLICIES_PER_NS: usize = 2;
const LOCAL_PODS: usize = 110;

fn vm_hwm_kib(pid: i32) -> Result<u64> {
    status_kib(pid, "VmHWM")
}

/// One `kB` field of `/proc/PID/status`.
fn status_kib(pid: i32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} for {pid}"))
}

/// Remote pod `i`'s address (outside the lab's pools: only policy sets hold it).
fn remote_ip(i: usize) -> String {
    format!("10.128.{}.{}", i / 250, i % 250 + 1)
}

fn pod_doc(ns: usize, j: usize, kube: bool, probe: bool) -> String {
    let i = ns * PODS_PER_NS + j;
    let ip = remote_ip(i);
    let role = if probe { ", role: probe" } else { "" };
    if kube {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{j}, namespace: ns{ns}, labels: {{app: a{}{role}}}, \
             annotations: {{cni.projectcalico.org/podIPs: \"{ip}/32\"}}}}\nspec: {{nodeName: far{}, \
             containers: [{{name: c, image: busybox}}]}}\n",
            j % 3,
            i % 50
        )
    } else {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{j}, namespace: ns{ns}, labels: {{app: a{}{role}}}}}\n\
             spec: {{nodeName: far{}}}\nstatus: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
            j % 3,
            i % 50
        )
    }
}

const ROUNDS: usize = 7;

/// The label-change round whose pod is `ns`/`p{j}`.
fn probe_of(ns: usize, j: usize) -> Option<usize> {
    (j == 1 && ns % 10 == 3 && ns / 10 < ROUNDS).then_some(ns / 10)
}

/// Every namespace, remote pod and policy, as one multi-document text.
fn objects(kube: bool) -> String {
    let mut s = String::new();
    for ns in 0..NAMESPACES {
        let _ = write!(
            s,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{team: t{}}}}}\n---\n",
            ns % 10
        );
        for j in 0..PODS_PER_NS {
            // On files, the pods whose labels change have files of their own.
            if !kube && probe_of(ns, j).is_some() {
                continue;
            }
            s += &pod_doc(ns, j, kube, false);
            s += "---\n";
        }
        for k in 0..POLICIES_PER_NS {
            let _ = write!(
                s,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{k}, namespace: ns{ns}}}\n\
                 spec:\n  podSelector: {{matchLabels: {{app: a{k}}}}}\n  ingress:\n  - from:\n    - podSelector: \
                 {{matchLabels: {{app: a2}}}}\n    ports: [{{port: {}, protocol: TCP}}]\n---\n",
                8000 + k
            );
        }
    }
    // The local pods' policy (one of the 1,000 in place of ns0/np1): from probes in team t3.
    s += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: local, namespace: default}\n\
          spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: t3}}\n      \
          podSelector: {matchLabels: {role: probe}}\n";
    s
}

fn run(kube: bool) -> Result<()> {
    let name = if kube { "kubernetes" } else { "file" };
    let mut c = if kube {
        Cluster::new_kube("dsbk", 1, LOCAL_PODS, false)?
    } else {
        Cluster::new("dsbf", 1, LOCAL_PODS, false)?
    };
    c.wait_converged(Duration::from_secs(120))?;
    let text = objects(kube);
    let t = Instant::now();
    match c.kube() {
        Some(api) => {
            api.kubectl(&["create", "--validate=false", "-f", "-"], Some(&text))?;
        }
        None => {
            c.write("bulk.yaml", &text)?;
            for r in 0..ROUNDS {
                c.write(
                    &format!("probe{r}.yaml"),
                    &pod_doc(3 + 10 * r, 1, false, false),
                )?;
            }
        }
    }
    let loaded = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    // Start to ready with everything in place.
    c.kill_daemon(0)?;
    c.start_daemon(0)?;
    let ready = c.wait_ready(Duration::from_secs(120))?[0];
    c.wait_converged(Duration::from_secs(60))?;
    let n1 = &c.nodes[0];
    // The kernel's own account of the table's changes, as they happen (line-buffered).
    let monitor = NftMonitor::start(n1.ns.name())?;
    // Label changes: a pod of ns3 (team t3) becomes a probe. Through the API: one merge PATCH
    // (what `kubectl label` sends, without kubectl's start-up); on files: the pod's file.
    let mut took = Vec::new();
    let mut answered = Vec::new();
    for round in 0..ROUNDS {
        let (ns, j) = (3 + 10 * round, 1);
        let ip = remote_ip(ns * PODS_PER_NS + j);
        monitor.drain();
        let t0 = Instant::now();
        match c.kube() {
            Some(api) => {
                api.http_body(
                    "PATCH",
                    &format!("/api/v1/namespaces/ns{ns}/pods/p{j}"),
                    "application/merge-patch+json",
                    r#"{"metadata":{"labels":{"role":"probe"}}}"#,
                )?;
            }
            None => c.write(&format!("probe{round}.yaml"), &pod_doc(ns, j, false, true))?,
        }
        answered.push(t0.elapsed());
        monitor
            .wait_for(&ip, Duration::from_secs(10))
            .map_err(|e| {
                anyhow::anyhow!("{name}: {ip} not added to the table after its label change: {e}")
            })?;
        took.push(t0.elapsed());
        let table = n1.ns.run(&["nft", "list", "table", "inet", "calico-rs"])?;
        if !table.contains(&ip) {
            bail!("{name}: nft monitor showed {ip} added, but the table lacks it");
        }
    }
    took.sort();
    answered.sort();
    let kib = vm_hwm_kib(n1.daemon.pid())?;
    // Of the resident set now: file-backed pages (the binary's code) and the heap.
    let file_kib = status_kib(n1.daemon.pid(), "RssFile")?;
    let anon_kib = status_kib(n1.daemon.pid(), "RssAnon")?;
    println!(
        "{name:>10}: {} objects loaded in {:.2} s; daemon start -> ready {:.3} s (target < 2 s); \
         peak RSS {:.1} MiB (target < 50 MB; now {:.1} MiB of mapped files, {:.1} MiB heap); label change -> kernel median {:.1} ms, max {:.1} ms (target < 50 ms; \
         the write itself answered in {:.1} ms median)",
        NAMESPACES * (1 + PODS_PER_NS + POLICIES_PER_NS) + 1,
        loaded.as_secs_f64(),
        ready.as_secs_f64(),
        kib as f64 / 1024.0,
        file_kib as f64 / 1024.0,
        anon_kib as f64 / 1024.0,
        took[took.len() / 2].as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
        answered[answered.len() / 2].as_secs_f64() * 1e3,
    );
    Ok(())
}

/// `nft monitor` in a namespace, its lines on a channel.
struct NftMonitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl NftMonitor {
    fn start(ns: &str) -> Result<NftMonitor> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "stdbuf", "-oL", "nft", "monitor"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        // Until it listens: nothing tells, so give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        Ok(NftMonitor { child, lines })
    }

    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Until an `add element` line naming `ip` arrives.
    fn wait_for(&self, ip: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self
                .lines
                .recv_timeout(left)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if l.contains("add element") && l.contains(&format!(" {ip} ")) {
                return Ok(());
            }
        }
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    println!(
        "calico-node-rs on {NAMESPACES} namespaces, {} pods, {} policies, {LOCAL_PODS} local pods",
        NAMESPACES * PODS_PER_NS,
        NAMESPACES * POLICIES_PER_NS
    );
    run(true)?;
    run(false)?;
    Ok(())
}
