//! The soak (issue 9): a [`Cluster`] of real daemons and a BIRD ToR under random faults while
//! probes run between pods, for a given time.
//!
//! # The lab
//! `nodes` nodes (3 or more), each with two stable pods `nK-p1`, `nK-p2` (label `tier: stable`),
//! a BIRD ToR, and `n1-iso` (label `role: isolated`) with a TCP echo listener on
//! [`ISO_PORT`]. `isolate.yaml` lets only `role: friend` pods (`n1-p1`, `n2-p1`) into
//! `role: isolated` pods; every other stable pod is a *client* that must never get in.
//!
//! # Actions (one at a time, picked with a seeded xorshift; `--seed` replays the sequence)
//! - `kill-daemon`: SIGKILL a node's daemon, leave it down 0–3 s, start it again;
//!   `term-daemon`: SIGTERM and start again. Both wait until every daemon is ready and every
//!   BGP session (mesh and ToR) is Established again.
//! - `restart-bird`: SIGKILL BIRD and start it; wait for its sessions and for every block at it.
//! - `corrupt`: write a YAML syntax or field error into a Node, `isolate.yaml`, `tor.yaml` or
//!   `base.yaml` (the IPPools), hold it 2–5 s, check that a daemon reports it and that no IPAM
//!   block file changed, then write the good text back.
//! - `corrupt-restart`: the same with a daemon killed and started while the document is broken
//!   (for `isolate.yaml`, half of the time `n1`'s, which enforces it for `n1-iso`): the restarted
//!   daemon must start from the last good version the datastore kept on disk, not run without
//!   that Node (no session to it), policy (the pods it isolates open) or pools.
//! - `junk`: a new file of garbage (bytes, an unknown kind, a Pod or NetworkPolicy with a field
//!   error), removed after 1–3 s.
//! - `add-pod` / `remove-pod`: churned pods `nK-cN` (at most [`MAX_CHURN`] at a time), a third
//!   of them `role: isolated`; removal is kubelet's order (veth, IPAM release, Pod document).
//! - `policy`: add, replace or remove `extra.yaml`, one of a few policies that change no
//!   reachability (allow-all for the stable or churned pods, deny-all for a label nobody has, an
//!   ipBlock of the pools).
//!
//! After every action: no daemon or BIRD exited by itself, no pinger died, no address is held
//! twice (IPAM block files and Pod documents; see [`duplicates`]), and every node's kernel
//! routes (protocol 80) are what its pods and the blocks call for.
//!
//! # Probes and their expected windows
//! Pingers are `ping -D -O -i 0.2` processes read back by sequence number ([`probe`]); TCP
//! probes run every 250 ms from a thread in the source pod.
//! - *Must reach*: the stable pods in a ring (`nK-p1 -> nK+1-p1` over IPv4, `nK-p2 -> nK+1-p2`
//!   over IPv6, `n1-p1 -> n1-p2`), the friends to `n1-iso` (ICMP v4 and v6, TCP v4 and v6), and a
//!   stable pod (a friend for an isolated one) to each churned pod over both families. A probe
//!   counts from when its pair is known to be reachable (the stable pairs after a full-mesh check
//!   at setup, a churned pod after one answered ping) until its pinger is stopped (at the end, or
//!   before its pod is removed). A daemon restart must lose nothing (kernel routes and rules
//!   stay, graceful restart keeps our routes at the peers), BIRD carries no pod traffic, and
//!   broken documents keep their last good version, so no action opens a window: the only
//!   requests not counted are those sent in the last [`probe::TAIL`] second before their pinger
//!   stopped, whose replies may have been in flight.
//! - *Isolated*: every client to `n1-iso` (ICMP and TCP), and one client to each isolated
//!   churned pod, started before its veth exists. There is no window: any answer is a breach.
//!
//! The report ([`SoakReport`]) gives pings lost outside the windows, isolated connections that
//! got through, duplicate pod IPs and panics (`panicked at` in any daemon log), the target
//! being 0 / 0 / 0 / 0, with each loss episode dated and set beside the actions around it.
//!
//! Layout: [`probe`] (pingers and TCP probes), `docs` (the datastore faults), `tally` (probes
//! into the report, [`duplicates`]), [`report`].

mod docs;
pub mod probe;
pub mod report;
mod tally;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use calico_lab::check::EchoServer;
use calico_lab::cluster::{self, Cluster, PodRef, CONVERGE};
use calico_lab::wait::eventually;
use probe::{now, Expect, PingResult, Pinger, TcpProber, TcpResult, TcpTarget};
use report::Event;
pub use report::SoakReport;
pub use tally::duplicates;

/// The isolated pod's TCP echo port.
pub const ISO_PORT: u16 = 8080;
/// Most churned pods alive at once.
pub const MAX_CHURN: usize = 4;
/// Longest wait for routes to match after an action, and for a new pod to answer.
const SETTLE: Duration = Duration::from_secs(20);

/// Only `role: friend` pods may reach `role: isolated` pods.
pub const ISOLATE: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate, namespace: default}
spec:
  podSelector: {matchLabels: {role: isolated}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {role: friend}}
";

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakCfg {
    /// Time in the action loop (setup and the final checks come on top).
    pub duration: Duration,
    pub seed: u64,
    pub nodes: usize,
    /// Print each action to stderr as it starts.
    pub verbose: bool,
}

impl SoakCfg {
    /// Three nodes, a seed from the clock, verbose.
    pub fn new(duration: Duration) -> SoakCfg {
        SoakCfg {
            duration,
            seed: random_seed(),
            nodes: 3,
            verbose: true,
        }
    }
}

/// A seed from the clock and the pid.
pub fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    Rng::new(t ^ (u64::from(std::process::id()) << 32)).next_u64() % 1_000_000_000
}

/// xorshift64*, seeded through splitmix64 (so every seed, 0 included, gives a good stream).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Run the soak: set up the lab, act for `cfg.duration`, check, and tear everything down
/// (the lab's namespaces go when it drops, on error too). An error means the lab could not be
/// set up; everything that goes wrong afterwards is in the report.
pub fn run(cfg: &SoakCfg) -> Result<SoakReport> {
    ensure!(
        (3..=20).contains(&cfg.nodes),
        "--nodes {}: the soak needs 3 to 20 nodes",
        cfg.nodes
    );
    let mut s = Soak::setup(cfg).context("setting up the soak lab")?;
    let start = Instant::now();
    while start.elapsed() < cfg.duration {
        s.step();
    }
    let ran = start.elapsed();
    Ok(s.finish(ran))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    KillDaemon,
    TermDaemon,
    RestartBird,
    Corrupt,
    CorruptRestart,
    Junk,
    AddPod,
    RemovePod,
    Policy,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::KillDaemon => "kill-daemon",
            Action::TermDaemon => "term-daemon",
            Action::RestartBird => "restart-bird",
            Action::Corrupt => "corrupt",
            Action::CorruptRestart => "corrupt-restart",
            Action::Junk => "junk",
            Action::AddPod => "add-pod",
            Action::RemovePod => "remove-pod",
            Action::Policy => "policy",
        }
    }
}

struct Churned {
    pod: PodRef,
    isolated: bool,
}

struct Soak {
    cfg: SoakCfg,
    rng: Rng,
    report: SoakReport,
    events: Vec<Event>,
    t0: f64,
    friends: Vec<PodRef>,
    clients: Vec<PodRef>,
    stable: Vec<PodRef>,
    churn: Vec<Churned>,
    next_pod: u32,
    pingers: Vec<Pinger>,
    results: Vec<PingResult>,
    tcp: Vec<TcpProber>,
    /// The `EXTRA` policy in `extra.yaml`, if any.
    extra: Option<usize>,
    /// The good text of the documents `corrupt` breaks.
    good: BTreeMap<String, String>,
    junk: u32,
    /// Duplicates seen so far (address and owners), each counted once.
    dups_seen: BTreeSet<String>,
    _echo: EchoServer,
    // Last: the probes above run in its namespaces.
    c: Cluster,
}

fn ping_label(from: &PodRef, to: &PodRef, v6: bool) -> String {
    format!(
        "{} -> {} ({})",
        from.name,
        to.name,
        if v6 { &to.v6 } else { &to.v4 }
    )
}

impl Soak {
    fn setup(cfg: &SoakCfg) -> Result<Soak> {
        let t0 = now();
        let mut c = Cluster::new("soak", cfg.nodes, 2, true)?;
        c.wait_converged(CONVERGE)?;
        let stable: Vec<PodRef> = c.nodes.iter().flat_map(|n| n.pods.clone()).collect();
        let is_friend = |p: &PodRef| p.name == "n1-p1" || p.name == "n2-p1";
        for p in &stable {
            if is_friend(p) {
                c.label_pod(p, &[("tier", "stable"), ("role", "friend")])?;
            } else {
                c.label_pod(p, &[("tier", "stable")])?;
            }
        }
        c.expect_full_mesh_reachability()?;
        let friends: Vec<PodRef> = stable.iter().filter(|p| is_friend(p)).cloned().collect();
        let clients: Vec<PodRef> = stable.iter().filter(|p| !is_friend(p)).cloned().collect();

        // The isolated pod: its policy first, its probes from before its veth exists.
        c.write("isolate.yaml", ISOLATE)?;
        std::thread::sleep(Duration::from_millis(500));
        let iso = c.reserve_pod("n1", "iso")?;
        let echo = EchoServer::start(&iso.ns, "iso", &[ISO_PORT])?;
        let mut pingers = Vec::new();
        let mut tcp = Vec::new();
        for (k, cl) in clients.iter().enumerate() {
            let v6 = k % 2 == 1;
            let dst = if v6 { &iso.v6 } else { &iso.v4 };
            pingers.push(Pinger::start(
                &cl.ns,
                dst,
                ping_label(cl, &iso, v6),
                Expect::Isolated,
                None,
            )?);
            tcp.push(TcpProber::start(
                &cl.ns,
                tcp_targets(cl, &iso, Expect::Isolated)?,
            )?);
        }
        std::thread::sleep(Duration::from_millis(300));
        c.plumb_pod(&iso, &[("role", "isolated")])?;
        for f in &friends {
            for dst in [&iso.v4, &iso.v6] {
                eventually(SETTLE, || cluster::ping(&f.ns, dst))
                    .with_context(|| format!("friend {} -> {dst}", f.name))?;
            }
        }
        for f in &friends {
            for v6 in [false, true] {
                let dst = if v6 { &iso.v6 } else { &iso.v4 };
                pingers.push(Pinger::start(
                    &f.ns,
                    dst,
                    ping_label(f, &iso, v6),
                    Expect::Reach,
                    None,
                )?);
            }
            tcp.push(TcpProber::start(
                &f.ns,
                tcp_targets(f, &iso, Expect::Reach)?,
            )?);
        }
        // The stable ring.
        let n = c.nodes.len();
        for i in 0..n {
            let (a, b) = (&c.nodes[i], &c.nodes[(i + 1) % n]);
            for (k, v6) in [(0, false), (1, true)] {
                let (from, to) = (&a.pods[k], &b.pods[k]);
                let dst = if v6 { &to.v6 } else { &to.v4 };
                pingers.push(Pinger::start(
                    &from.ns,
                    dst,
                    ping_label(from, to, v6),
                    Expect::Reach,
                    None,
                )?);
            }
        }
        let (a, b) = (&c.nodes[0].pods[0], &c.nodes[0].pods[1]);
        pingers.push(Pinger::start(
            &a.ns,
            &b.v4,
            ping_label(a, b, false),
            Expect::Reach,
            None,
        )?);

        let mut good = BTreeMap::new();
        for e in std::fs::read_dir(c.dir())? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with("node-")
                || ["isolate.yaml", "tor.yaml", "base.yaml"].contains(&name.as_str())
            {
                good.insert(name.clone(), std::fs::read_to_string(c.dir().join(&name))?);
            }
        }
        let s = Soak {
            cfg: cfg.clone(),
            rng: Rng::new(cfg.seed),
            report: SoakReport {
                seed: cfg.seed,
                nodes: cfg.nodes,
                minutes: cfg.duration.as_secs_f64() / 60.0,
                ..SoakReport::default()
            },
            events: vec![Event {
                start: t0,
                end: now(),
                what: "setup".into(),
            }],
            t0,
            friends,
            clients,
            stable,
            churn: vec![],
            next_pod: 1,
            pingers,
            results: vec![],
            tcp,
            extra: None,
            good,
            junk: 0,
            dups_seen: BTreeSet::new(),
            _echo: echo,
            c,
        };
        s.wait_sessions()?;
        s.tor_has_blocks()?;
        if s.cfg.verbose {
            eprintln!(
                "soak: seed {}, {} nodes, set up in {:.1} s; {} pingers",
                s.cfg.seed,
                s.cfg.nodes,
                now() - t0,
                s.pingers.len()
            );
        }
        Ok(s)
    }

    fn pick(&mut self) -> Action {
        let mut menu: Vec<(Action, u64)> = vec![
            (Action::KillDaemon, 4),
            (Action::TermDaemon, 1),
            (Action::RestartBird, 1),
            (Action::Corrupt, 4),
            (Action::CorruptRestart, 2),
            (Action::Junk, 1),
            (Action::Policy, 2),
        ];
        if self.churn.len() < MAX_CHURN {
            menu.push((Action::AddPod, 3));
        }
        if !self.churn.is_empty() {
            menu.push((Action::RemovePod, 2));
        }
        let total: u64 = menu.iter().map(|(_, w)| w).sum();
        let mut r = self.rng.next_u64() % total;
        for (a, w) in &menu {
            if r < *w {
                return *a;
            }
            r -= w;
        }
        unreachable!("weights cover the draw")
    }

    /// Log the action (its end is set when the step ends).
    fn begin(&mut self, what: String) {
        let t = now();
        if self.cfg.verbose {
            eprintln!("soak +{:7.1}s {what}", t - self.t0);
        }
        self.events.push(Event {
            start: t,
            end: t,
            what,
        });
    }

    fn step(&mut self) {
        self.report.steps += 1;
        let action = self.pick();
        *self.report.actions.entry(action.name()).or_default() += 1;
        let r = match action {
            Action::KillDaemon => self.restart_daemon(true),
            Action::TermDaemon => self.restart_daemon(false),
            Action::RestartBird => self.restart_bird(),
            Action::Corrupt => self.corrupt(false),
            Action::CorruptRestart => self.corrupt(true),
            Action::Junk => self.junk(),
            Action::AddPod => self.add_pod(),
            Action::RemovePod => self.remove_pod(),
            Action::Policy => self.policy(),
        };
        if let Err(e) = r {
            let what = self
                .events
                .last()
                .map(|e| e.what.clone())
                .unwrap_or_default();
            self.error(format!("{what}: {e:#}"));
        }
        self.checks();
        if let Some(e) = self.events.last_mut() {
            e.end = now();
        }
        std::thread::sleep(self.rng.millis(200, 1000));
    }

    fn error(&mut self, msg: String) {
        let line = format!("+{:.1} s {msg}", now() - self.t0);
        if self.cfg.verbose {
            eprintln!("soak ERROR {line}");
        }
        self.report.errors.push(line);
    }

    fn node_name(&self, i: usize) -> String {
        self.c.nodes[i].name.clone()
    }

    fn restart_daemon(&mut self, kill: bool) -> Result<()> {
        let i = self.rng.below(self.c.nodes.len());
        let name = self.node_name(i);
        if kill {
            let down = self.rng.millis(0, 3000);
            self.begin(format!(
                "kill-daemon {name} (down {:.1} s)",
                down.as_secs_f64()
            ));
            self.c.kill_daemon(i)?;
            std::thread::sleep(down);
            self.c.start_daemon(i)?;
        } else {
            self.begin(format!("term-daemon {name}"));
            self.c.restart_daemon(i)?;
        }
        self.report.restarts += 1;
        self.settle()
    }

    /// Every daemon ready, every session up.
    fn settle(&mut self) -> Result<()> {
        self.c.wait_ready(CONVERGE)?;
        self.wait_sessions()
    }

    /// Every node has all its peers (the mesh and the ToR) Established, and so has BIRD.
    fn wait_sessions(&self) -> Result<()> {
        let want = self.c.nodes.len();
        for n in &self.c.nodes {
            eventually(CONVERGE, || {
                let v = self.c.ctl_json(&n.name, "peers")?;
                let peers = v["peers"].as_array().context("no peers list")?;
                let up = peers.iter().filter(|p| p["state"] == "Established").count();
                ensure!(
                    up == want && peers.len() == want,
                    "{}: {up} of {} peers Established, want {want}",
                    n.name,
                    peers.len()
                );
                Ok(())
            })?;
        }
        let tor = self.c.tor.as_ref().context("no ToR")?;
        for n in &self.c.nodes {
            tor.wait_established(&n.name, CONVERGE)?;
        }
        Ok(())
    }

    fn tor_has_blocks(&self) -> Result<()> {
        let tor = self.c.tor.as_ref().context("no ToR")?;
        eventually(CONVERGE, || {
            let have: BTreeSet<String> = tor.prefixes("")?.iter().map(|p| p.to_string()).collect();
            for n in &self.c.nodes {
                for b in self.c.blocks_of(&n.name)? {
                    ensure!(
                        have.contains(&b.to_string()),
                        "the ToR lacks {b} of {}",
                        n.name
                    );
                }
            }
            Ok(())
        })
    }

    fn restart_bird(&mut self) -> Result<()> {
        self.begin("restart-bird".into());
        self.c.tor.as_mut().context("no ToR")?.restart()?;
        self.wait_sessions()?;
        self.tor_has_blocks()
    }

    fn add_pod(&mut self) -> Result<()> {
        let i = self.rng.below(self.c.nodes.len());
        let node = self.node_name(i);
        let isolated = self.rng.chance(33);
        let short = format!("c{}", self.next_pod);
        self.next_pod += 1;
        self.begin(format!(
            "add-pod {node}-{short}{}",
            if isolated { " (isolated)" } else { "" }
        ));
        let r = self.c.reserve_pod(&node, &short)?;
        if isolated {
            let client = self.rng.pick(&self.clients).clone();
            self.pingers.push(Pinger::start(
                &client.ns,
                &r.v4,
                ping_label(&client, &r, false),
                Expect::Isolated,
                Some(r.name.clone()),
            )?);
            std::thread::sleep(Duration::from_millis(200));
        }
        let labels: &[(&str, &str)] = if isolated {
            &[("role", "isolated")]
        } else {
            &[("tier", "churn")]
        };
        self.c.plumb_pod(&r, labels)?;
        self.churn.push(Churned {
            pod: r.clone(),
            isolated,
        });
        let src = if isolated {
            self.rng.pick(&self.friends).clone()
        } else {
            let others: Vec<PodRef> = self
                .stable
                .iter()
                .filter(|p| p.node != node)
                .cloned()
                .collect();
            self.rng.pick(&others).clone()
        };
        for v6 in [false, true] {
            let dst = if v6 { &r.v6 } else { &r.v4 };
            eventually(SETTLE, || cluster::ping(&src.ns, dst))
                .with_context(|| format!("{} never reached the new pod at {dst}", src.name))?;
            self.pingers.push(Pinger::start(
                &src.ns,
                dst,
                ping_label(&src, &r, v6),
                Expect::Reach,
                Some(r.name.clone()),
            )?);
        }
        Ok(())
    }

    fn remove_pod(&mut self) -> Result<()> {
        let k = self.rng.below(self.churn.len());
        let ch = self.churn.remove(k);
        self.begin(format!(
            "remove-pod {}{}",
            ch.pod.name,
            if ch.isolated { " (isolated)" } else { "" }
        ));
        let mut k = 0;
        while k < self.pingers.len() {
            if self.pingers[k].owner.as_deref() == Some(ch.pod.name.as_str()) {
                let p = self.pingers.remove(k);
                self.results.push(p.stop());
            } else {
                k += 1;
            }
        }
        self.c.remove_pod(&ch.pod.name)
    }

    /// The checks after every action; failures go into the report.
    fn checks(&mut self) {
        for i in 0..self.c.nodes.len() {
            let Some(st) = self.c.nodes[i].daemon.try_status() else {
                continue;
            };
            let name = self.node_name(i);
            let log = self.c.nodes[i].daemon.log();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            self.report.unexpected_exits += 1;
            let line = format!(
                "+{:.1} s the daemon of {name} exited by itself ({st}); last lines: {}",
                now() - self.t0,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
            self.report.findings.push(line);
            if let Err(e) = self.c.start_daemon(i).and_then(|_| self.settle()) {
                self.error(format!("restarting {name} after its exit: {e:#}"));
            }
        }
        let bird_exit = self.c.tor.as_mut().and_then(|t| t.proc_mut().try_status());
        if let Some(st) = bird_exit {
            self.error(format!("BIRD exited by itself ({st})"));
            if let Some(t) = self.c.tor.as_mut() {
                if let Err(e) = t.restart() {
                    self.error(format!("restarting BIRD: {e:#}"));
                }
            }
        }
        let mut k = 0;
        while k < self.pingers.len() {
            if self.pingers[k].exited() {
                let p = self.pingers.remove(k);
                self.results.push(p.stop());
            } else {
                k += 1;
            }
        }
        match duplicates(&self.c) {
            Ok(dups) => {
                for d in dups {
                    if self.dups_seen.insert(d.clone()) {
                        self.report.duplicate_ips += 1;
                        let line = format!("+{:.1} s duplicate: {d}", now() - self.t0);
                        self.report.findings.push(line);
                    }
                }
            }
            Err(e) => self.error(format!("scanning for duplicate addresses: {e:#}")),
        }
        for n in &self.c.nodes {
            let r = eventually(SETTLE, || {
                let have = self.c.our_routes(n)?;
                let want = self.c.expected_routes(&n.name)?;
                let missing: Vec<&String> = want.difference(&have).collect();
                let extra: Vec<&String> = have.difference(&want).collect();
                ensure!(
                    missing.is_empty() && extra.is_empty(),
                    "{}: routes missing {missing:?}, unexpected {extra:?}",
                    n.name
                );
                Ok(())
            });
            if let Err(e) = r {
                let msg = format!("{e:#}");
                self.report
                    .errors
                    .push(format!("+{:.1} s {msg}", now() - self.t0));
            }
        }
    }

    fn finish(mut self, ran: Duration) -> SoakReport {
        self.report.ran = ran;
        self.begin("final checks".into());
        for (file, text) in self.good.clone() {
            if let Err(e) = self.c.write(&file, &text) {
                self.error(format!("restoring {file}: {e:#}"));
            }
        }
        if let Err(e) = self.settle().and_then(|_| self.tor_has_blocks()) {
            self.error(format!("final: {e:#}"));
        }
        for n in 0..self.c.nodes.len() {
            let name = self.node_name(n);
            let r = eventually(Duration::from_secs(10), || {
                let errs = self.errors_of(&name)?;
                ensure!(errs.is_empty(), "{name} reports datastore errors: {errs:?}");
                Ok(())
            });
            if let Err(e) = r {
                self.error(format!("final: {e:#}"));
            }
        }
        self.checks();
        for p in std::mem::take(&mut self.pingers) {
            self.results.push(p.stop());
        }
        let mut tcp: Vec<TcpResult> = Vec::new();
        for t in std::mem::take(&mut self.tcp) {
            match t.stop() {
                Ok(r) => tcp.extend(r),
                Err(e) => self.error(format!("{e:#}")),
            }
        }
        if let Some(e) = self.events.last_mut() {
            e.end = now();
        }
        self.tally(&tcp);
        for n in &self.c.nodes {
            let log = n.daemon.log();
            for l in log.lines().filter(|l| l.contains("panicked at")) {
                self.report.panics += 1;
                self.report
                    .findings
                    .push(format!("panic in {}: {l}", n.name));
            }
        }
        if self.cfg.verbose {
            eprintln!("soak: done in {:.1} s", now() - self.t0);
        }
        self.report
    }
}

fn tcp_targets(from: &PodRef, to: &PodRef, expect: Expect) -> Result<Vec<TcpTarget>> {
    let mut v = Vec::new();
    for a in [&to.v4, &to.v6] {
        let ip: IpAddr = a.parse()?;
        v.push(TcpTarget {
            label: format!(
                "{} -> {} ({})",
                from.name,
                to.name,
                SocketAddr::new(ip, ISO_PORT)
            ),
            to: SocketAddr::new(ip, ISO_PORT),
            expect,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_replayable_and_spread() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(0);
        let mut seen = [0u32; 4];
        for _ in 0..4000 {
            seen[r.below(4)] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }
}
