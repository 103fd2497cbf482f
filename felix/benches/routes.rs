//! Route manager benchmark, in a throwaway network namespace `crsbench-<pid>` with a veth pair as the target
//! interface (this kernel has no dummy driver).
//!
//! Prints, for 10,000 /32 routes to the dummy interface:
//! - bulk add from empty and bulk delete with our driver (batched netlink) and with `ip -batch` of the
//!   same routes, interleaved in the same run, medians of several rounds, and the ratio ours/ip;
//! - the latency of one added pod route (input handed to the running manager -> `RTM_NEWROUTE` seen
//!   on a separate netlink monitor socket), median of 50, with 0 and with 10,000 other routes;
//! - a full resync (dump v4 + v6, decode, diff; nothing to change) against the 10,000 routes.
//!
//! Run: `cargo bench -p felix --bench routes` (needs root; never touches the root namespace).
//! `BREAKDOWN=1` also times the pure steps of a one-pod change among 10,000; `BATCH_SIZE=n` overrides
//! the messages per `sendmsg`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use felix::routes::{RouteManager, RouteSyncer, RoutesCfg, RoutesInput, WorkloadEndpoint};
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_core::Parseable;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

const N: usize = 10_000;
const ROUNDS: usize = 5;
const LATENCY_SAMPLES: usize = 50;
const DEV: &str = "bench0";

/// Deletes the namespace on drop.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn route_count(ns: &str) -> Result<usize> {
    let out = Command::new("ip")
        .args(["-n", ns, "-4", "route", "show", "proto", "80"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (i >> 8) as u8, (i & 0xff) as u8)
}

fn pods(n: usize) -> RoutesInput {
    RoutesInput {
        workloads: (0..n)
            .map(|i| WorkloadEndpoint {
                id: format!("bench/pod-{i}"),
                iface: DEV.into(),
                nets: vec![IpNet::V4(Ipv4Net::new(addr(i), 32).unwrap())],
            })
            .collect(),
        ..Default::default()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo bench -- --list` probes harnesses
    }
    let ns = format!("crsbench-{}", std::process::id());
    ip(&["netns", "add", &ns])?;
    let _guard = NsGuard(ns.clone());
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    // This kernel has no dummy driver; one end of a veth pair serves as the target interface.
    ip(&[
        "-n", &ns, "link", "add", DEV, "type", "veth", "peer", "name", "bench1",
    ])?;
    ip(&["-n", &ns, "link", "set", DEV, "up"])?;
    ip(&["-n", &ns, "link", "set", "bench1", "up"])?;

    let fd = std::fs::File::open(format!("/run/netns/{ns}"))?;
    let ns2 = ns.clone();
    std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(&ns2))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
    Ok(())
}

async fn run(ns: &str) -> Result<()> {
    let batch_size = std::env::var("BATCH_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RoutesCfg::default().batch_size);
    let cfg = RoutesCfg {
        batch_size,
        configure_workload_ifaces: false,
        set_global_forwarding: false,
        resync_interval: None,
        ..RoutesCfg::default()
    };
    if std::env::var("BREAKDOWN").is_ok() {
        breakdown();
    }
    println!("calico-rs felix routes benchmark: {N} IPv4 /32 routes to {DEV} in netns {ns}");
    println!("batch size {} messages per sendmsg", cfg.batch_size);

    let dir = std::env::temp_dir().join(format!("crsbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let add_file = dir.join("add.batch");
    let del_file = dir.join("del.batch");
    {
        let mut a = std::fs::File::create(&add_file)?;
        let mut d = std::fs::File::create(&del_file)?;
        for i in 0..N {
            writeln!(a, "route add {}/32 dev {DEV} proto 80", addr(i))?;
            writeln!(d, "route del {}/32 dev {DEV} proto 80", addr(i))?;
        }
    }
    let ip_batch = |file: &std::path::Path| -> Result<Duration> {
        let t = Instant::now();
        let st = Command::new("ip")
            .args(["-n", ns, "-batch"])
            .arg(file)
            .status()?;
        let d = t.elapsed();
        if !st.success() {
            bail!("ip -batch {} failed", file.display());
        }
        Ok(d)
    };

    let input = pods(N);
    let empty = RoutesInput::default();
    let mut syncer = RouteSyncer::new(cfg.clone()).await?;
    let (mut ours_add, mut ours_del, mut ip_add, mut ip_del) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let t = Instant::now();
        syncer.set_desired(&input);
        let rep = syncer.sync().await?;
        ours_add.push(t.elapsed());
        if rep.ops != N || rep.failed != 0 || route_count(ns)? != N {
            bail!(
                "round {round}: ours add did {rep:?}, kernel has {}",
                route_count(ns)?
            );
        }
        let t = Instant::now();
        syncer.set_desired(&empty);
        let rep = syncer.sync().await?;
        ours_del.push(t.elapsed());
        if rep.ops != N || route_count(ns)? != 0 {
            bail!("round {round}: ours delete did {rep:?}");
        }

        ip_add.push(ip_batch(&add_file)?);
        if route_count(ns)? != N {
            bail!("ip -batch add left {} routes", route_count(ns)?);
        }
        ip_del.push(ip_batch(&del_file)?);
        if route_count(ns)? != 0 {
            bail!("ip -batch del left {} routes", route_count(ns)?);
        }
        // Our syncer saw ip's routes come and go as events; let it catch up before the next round.
        let rep = syncer.sync().await?;
        if rep.ops != 0 {
            bail!("syncer touched ip's routes: {rep:?}");
        }
    }
    let (oa, od, ia, id) = (
        median(ours_add),
        median(ours_del),
        median(ip_add),
        median(ip_del),
    );
    println!("\nbulk, median of {ROUNDS} rounds (interleaved):");
    println!(
        "  add    {N}: ours {}   ip -batch {}   ratio ours/ip {:.2}",
        ms(oa),
        ms(ia),
        oa.as_secs_f64() / ia.as_secs_f64()
    );
    println!(
        "  delete {N}: ours {}   ip -batch {}   ratio ours/ip {:.2}",
        ms(od),
        ms(id),
        od.as_secs_f64() / id.as_secs_f64()
    );

    // Full resync against 10k present routes: dump v4 + v6, decode, diff, nothing to do.
    syncer.set_desired(&input);
    syncer.sync().await?;
    let mut resync = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let rep = syncer.resync().await?;
        resync.push(t.elapsed());
        if rep.ops != 0 || !rep.dumped {
            bail!("resync changed something: {rep:?}");
        }
    }
    println!(
        "\nfull resync (dump + diff) with {N} routes present: median {} (min {})",
        ms(median(resync.clone())),
        ms(*resync.iter().min().unwrap())
    );

    // Single-route latency through the running manager task.
    let mut monitor = Monitor::start()?;
    let handle = RouteManager::spawn(syncer);
    for base in [0, N] {
        let mut base_input = pods(base);
        handle.set_desired(base_input.clone())?;
        wait_in_sync(&handle, base).await?;
        monitor.drain();
        let mut lat = Vec::new();
        for k in 0..LATENCY_SAMPLES {
            let a = Ipv4Addr::new(10, 201, 0, k as u8);
            base_input.workloads.push(WorkloadEndpoint {
                id: format!("bench/extra-{k}"),
                iface: DEV.into(),
                nets: vec![IpNet::V4(Ipv4Net::new(a, 32).unwrap())],
            });
            let input = base_input.clone();
            let t = Instant::now();
            handle.set_desired(input)?;
            let seen = monitor.wait_for(a).await?;
            lat.push(seen.duration_since(t));
        }
        let min = *lat.iter().min().unwrap();
        let max = *lat.iter().max().unwrap();
        println!(
            "single pod route latency (input -> RTM_NEWROUTE), {base} other routes: median {} (min {}, max {}) over {LATENCY_SAMPLES}",
            ms(median(lat)),
            ms(min),
            ms(max)
        );
        handle.set_desired(RoutesInput::default())?;
        wait_in_sync(&handle, 0).await?;
    }
    handle.stop().await;
    std::fs::remove_dir_all(&dir)?;
    println!("\ntargets: bulk add <= 0.80x ip -batch, single route < 5 ms, resync < 50 ms");
    Ok(())
}

async fn wait_in_sync(h: &felix::routes::RouteManagerHandle, n: usize) -> Result<()> {
    let mut w = h.watch_status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let s = w.borrow_and_update();
            if s.desired == n && s.programmed == n && s.pending.is_empty() {
                return Ok(());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, w.changed()).await.is_err() {
            bail!("manager did not reach {n} routes: {:?}", h.status());
        }
    }
}

/// A separate netlink socket on RTNLGRP_IPV4_ROUTE, read by its own thread, reporting when each
/// new route was seen.
struct Monitor {
    rx: tokio::sync::mpsc::UnboundedReceiver<(Ipv4Addr, Instant)>,
}

impl Monitor {
    fn start() -> Result<Monitor> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind(&SocketAddr::new(0, 1 << (7 - 1)))?;
        let _ = s.set_rx_buf_sz(4 << 20);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match s.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(_) => continue,
                };
                let now = Instant::now();
                let mut off = 0;
                while off + 16 <= n {
                    let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                    let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                    if len < 16 || off + len > n {
                        break;
                    }
                    if ty == 24 {
                        if let Ok(m) = RouteMessage::parse(&buf[off + 16..off + len]) {
                            for a in &m.attributes {
                                if let RouteAttribute::Destination(RouteAddress::Inet(d)) = a {
                                    if tx.send((*d, now)).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    off += (len + 3) & !3;
                }
            }
        });
        Ok(Monitor { rx })
    }

    fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    async fn wait_for(&mut self, a: Ipv4Addr) -> Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some((d, t))) if d == a => return Ok(t),
                Ok(Some(_)) => {}
                _ => bail!("route to {a} not seen within 5 s"),
            }
        }
    }
}

/// `BREAKDOWN=1`: where the single-route latency goes with 10,000 pods (pure parts only).
fn breakdown() {
    use felix::routes::desired_routes;
    use felix::routes::reconcile::{LinkInfo, ReconcileCfg, Reconciler};
    let mut input = pods(N);
    let t = Instant::now();
    let d = desired_routes(&input);
    println!("desired_routes({N}): {}", ms(t.elapsed()));
    let mut rec = Reconciler::new(ReconcileCfg {
        protocol: 80,
        table: 254,
        metric: 0,
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_secs(1),
    });
    rec.replace_links([LinkInfo {
        index: 2,
        name: DEV.into(),
        up: true,
        mac: vec![],
    }]);
    let _ = rec.set_desired(d);
    let _ = rec.plan(Instant::now());
    input.workloads.push(WorkloadEndpoint {
        id: "x".into(),
        iface: DEV.into(),
        nets: vec!["10.201.0.1/32".parse().unwrap()],
    });
    let t = Instant::now();
    let d = desired_routes(&input);
    let t1 = t.elapsed();
    let _ = rec.set_desired(d);
    let t2 = t.elapsed();
    let ops = rec.plan(Instant::now());
    println!(
        "incremental: desired {} set_desired {} plan {} ({} ops)",
        ms(t1),
        ms(t2 - t1),
        ms(t.elapsed() - t2),
        ops.len()
    );
    let t = Instant::now();
    let c = input.clone();
    println!("clone input {}", ms(t.elapsed()));
    let t = Instant::now();
    drop(c);
    println!("drop input {}", ms(t.elapsed()));
}
