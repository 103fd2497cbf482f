//! Benchmark: route propagation through a BGP speaker, ours against BIRD 2 and GoBGP.
//!
//! gobgpd in namespace `s` (AS 65001) holds N /26 prefixes; the device under test in `d` (AS 65002)
//! peers with it and with a gobgpd receiver in `r` (AS 65003). For each device (our `bgp-runner`,
//! BIRD 2, gobgpd) in the same run and on the same input, it measures:
//! - time from the device's process start, and from both of its sessions (sender and receiver)
//!   being Established, until the receiver holds all N prefixes;
//! - the device's peak RSS (VmHWM) and CPU seconds (user + system) at that point;
//!
//! then prints the figures and the ratios ours/BIRD and ours/GoBGP.
//!
//! Run (root; builds our runner in release first):
//! `cargo build --release -p bgp --example bgp-runner && cargo bench -p calico-tests --bench bgp_propagation`
//! `BENCH_N=10000,100000` picks the sizes (default both); `BENCH_REPS=3` the runs per device (median).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use calico_lab::lab::{Lab, Netns};
use calico_lab::mrt::MrtAttrs;
use calico_lab::peers::{Bird, Gobgp};
use calico_lab::proc::Proc;
use ipnet::{IpNet, Ipv4Net};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dut {
    Ours,
    Bird,
    Gobgp,
}

struct Sample {
    from_start: Duration,
    from_established: Duration,
    rss_kib: u64,
    cpu: Duration,
}

fn runner_path() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/release/deps/bgp_propagation-HASH -> target/release/examples/bgp-runner
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .context("target dir")?;
    let p = dir.join("examples").join("bgp-runner");
    if !p.exists() {
        bail!(
            "{} not found: run `cargo build --release -p bgp --example bgp-runner` first",
            p.display()
        );
    }
    Ok(p)
}

fn prefixes(n: usize) -> Vec<IpNet> {
    // /26s from 100.64.0.0 upwards: 4 per /24.
    (0..n)
        .map(|i| {
            let base = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + (i as u32) * 64;
            IpNet::V4(Ipv4Net::new(base.into(), 26).expect("valid /26"))
        })
        .collect()
}

fn gobgp_conf(asn: u32, id: &str, neighbors: &[(&str, u32)]) -> String {
    let mut s = format!("[global.config]\n  as = {asn}\n  router-id = \"{id}\"\n");
    for (addr, peer_as) in neighbors {
        s += &format!(
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    peer-as = {peer_as}\n  [neighbors.timers.config]\n    connect-retry = 1\n    hold-time = 90\n    keepalive-interval = 30\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n"
        );
    }
    s
}

/// /proc/PID/status VmHWM in KiB, and utime+stime.
fn usage(pid: i32) -> Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15 (1-based).
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Ok((hwm, Duration::from_millis(ticks * 1000 / hz)))
}

enum Running {
    Ours(Proc),
    Bird(Bird),
    Gobgp(Gobgp),
}

impl Running {
    fn pid(&self) -> i32 {
        match self {
            Running::Ours(p) => p.pid(),
            Running::Bird(b) => b.proc().pid(),
            Running::Gobgp(g) => g.proc().pid(),
        }
    }
}

fn start_dut(dut: Dut, d: &Netns, runner: &Path) -> Result<Running> {
    Ok(match dut {
        Dut::Ours => {
            let cfg = d.file("ours", "yaml");
            std::fs::write(
                &cfg,
                "speaker: { local_as: 65002, router_id: 10.0.0.2, listen: [\"0.0.0.0:179\"] }\n\
                 peers:\n\
                 \x20 - { address: 10.0.0.1, remote_as: 65001, connect_retry: 1, families: [ipv4-unicast] }\n\
                 \x20 - { address: 10.0.0.3, remote_as: 65003, connect_retry: 1, families: [ipv4-unicast] }\n",
            )?;
            let r = runner.to_string_lossy();
            let c = cfg.to_string_lossy();
            Running::Ours(d.spawn(&["env", "BGP_LOG=warn", "MALLOC_ARENA_MAX=1", &r, &c])?)
        }
        Dut::Bird => Running::Bird(Bird::start(
            d,
            r#"
router id 10.0.0.2;
protocol device { }
protocol bgp sender { local 10.0.0.2 as 65002; neighbor 10.0.0.1 as 65001; connect retry time 1;
  ipv4 { import all; export none; }; }
protocol bgp receiver { local 10.0.0.2 as 65002; neighbor 10.0.0.3 as 65003; connect retry time 1;
  ipv4 { import none; export all; }; }
"#,
        )?),
        Dut::Gobgp => Running::Gobgp(Gobgp::start(
            d,
            &gobgp_conf(
                65002,
                "10.0.0.2",
                &[("10.0.0.1", 65001), ("10.0.0.3", 65003)],
            ),
        )?),
    })
}

fn run_one(dut: Dut, n: usize, routes: &[IpNet], runner: &Path) -> Result<Sample> {
    let lab = Lab::new("bench")?;
    let lan = lab.segment("lan")?;
    let s = lab.netns("s")?;
    let d = lab.netns("d")?;
    let r = lab.netns("r")?;
    lan.attach(&s, "eth0", &["10.0.0.1/24"])?;
    lan.attach(&d, "eth0", &["10.0.0.2/24"])?;
    lan.attach(&r, "eth0", &["10.0.0.3/24"])?;
    let sender = Gobgp::start(&s, &gobgp_conf(65001, "10.0.0.1", &[("10.0.0.2", 65002)]))?;
    // `gobgp mrt inject` sometimes returns before gobgpd took every route (the stream is cut
    // short); adding the same routes again is idempotent, so repeat until all are there.
    let attrs = MrtAttrs::new("10.0.0.1".parse()?, &[65001]);
    let mut have = 0;
    for _ in 0..10 {
        sender.add_routes_bulk(routes, &attrs)?;
        let mut last = u64::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            have = sender.rib_count("ipv4")?;
            if have == last || have == n as u64 {
                break;
            }
            last = have;
        }
        if have == n as u64 {
            break;
        }
    }
    if have != n as u64 {
        bail!("sender holds {have} of {n} prefixes");
    }
    let receiver = Gobgp::start(&r, &gobgp_conf(65003, "10.0.0.3", &[("10.0.0.2", 65002)]))?;

    let t0 = Instant::now();
    let running = start_dut(dut, &d, runner)?;
    let mut established: Option<Instant> = None;
    let deadline = t0 + Duration::from_secs(600);
    loop {
        // Established means both of the device's sessions are up: each daemon has its own habits
        // on when it first connects (BIRD waits a few seconds), which is not propagation.
        if established.is_none()
            && sender
                .neighbor_state("10.0.0.2")?
                .eq_ignore_ascii_case("established")
            && receiver
                .neighbor_state("10.0.0.2")?
                .eq_ignore_ascii_case("established")
        {
            established = Some(Instant::now());
        }
        if established.is_some() && receiver.rib_count("ipv4")? >= n as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{dut:?}: receiver did not get all {n} prefixes in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = Instant::now();
    let (rss_kib, cpu) = usage(running.pid())?;
    let est = established.unwrap_or(t0);
    Ok(Sample {
        from_start: done - t0,
        from_established: done - est,
        rss_kib,
        cpu,
    })
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` probes with --list
    }
    let runner = runner_path()?;
    let sizes: Vec<usize> = std::env::var("BENCH_N")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!(
        "BGP propagation: gobgpd sender -> device -> gobgpd receiver, /26 prefixes, IPv4 (median of {reps})"
    );
    for n in sizes {
        let routes = prefixes(n);
        let mut res = Vec::new();
        for dut in [Dut::Ours, Dut::Bird, Dut::Gobgp] {
            // The median of `reps` runs by propagation time: one run is at the mercy of whatever
            // else the machine is doing.
            let mut runs = Vec::new();
            for _ in 0..reps {
                runs.push(
                    run_one(dut, n, &routes, &runner).with_context(|| format!("{dut:?} N={n}"))?,
                );
            }
            runs.sort_by_key(|s| s.from_established);
            let s = runs.swap_remove(runs.len() / 2);
            println!(
                "N={n:>6} {:<6} total {:>8.3} s  from-established {:>8.3} s  peak RSS {:>7.1} MiB  CPU {:>7.3} s",
                format!("{dut:?}"),
                s.from_start.as_secs_f64(),
                s.from_established.as_secs_f64(),
                s.rss_kib as f64 / 1024.0,
                s.cpu.as_secs_f64()
            );
            res.push((dut, s));
        }
        let ours = &res[0].1;
        for (dut, other) in &res[1..] {
            // /proc counts CPU in clock ticks (10 ms): below that a ratio means nothing.
            let cpu = if ours.cpu.as_millis() < 10 || other.cpu.as_millis() < 10 {
                "n/a (under one clock tick)".to_string()
            } else {
                format!("{:.2}x", ours.cpu.as_secs_f64() / other.cpu.as_secs_f64())
            };
            println!(
                "N={n:>6} ours/{:<5} time {:.2}x  memory {:.2}x  CPU {cpu}",
                format!("{dut:?}"),
                ours.from_established.as_secs_f64() / other.from_established.as_secs_f64(),
                ours.rss_kib as f64 / other.rss_kib as f64,
            );
        }
    }
    Ok(())
}
