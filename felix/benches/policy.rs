//! Policy engine benchmark, in throwaway namespaces `crsbench-pol-<pid>` (the node) and
//! `crsbench-pol-<pid>-a` / `-b` (two pods), all deleted at the end (also on panic).
//!
//! Prints, for a synthetic cluster of 10,000 pods in 100 namespaces with 1,000 policies
//! (see `policy/synth.rs`), on a node holding 110 of the pods (and, as a stress case, all 10,000):
//! - full compile + apply (`nft -f` of the whole table, fresh namespace): compile, render and nft
//!   times, medians of several rounds;
//! - one pod label change, input to kernel (incremental compile + diff + apply), for a remote pod
//!   (set elements change: one nfnetlink batch) and a local one (its endpoint chains change:
//!   incremental `nft -f`), medians;
//! - the drift probe (a netlink dump of the `fwd-egress` chain) with the big table loaded;
//! - the same through the owner thread the daemon uses (`spawn` / `update` / `wait_applied`, with
//!   the change-notification reader running): first apply and one remote pod label change;
//! - forwarding: iperf3 from pod a to pod b through the node with no table, with our table and no
//!   policies, with the 1,000 policies, and with the naive reference ruleset (the same policies as
//!   a stateless linear ACL: one rule per allowed (source, destination, port) and its reply, no
//!   sets, no maps, no conntrack; truncated, see `synth::naive`), rounds interleaved, medians and
//!   the median of per-round ratios; and the naive ruleset's size and load time.
//!
//! Run: `cargo bench -p felix --bench policy` (needs root, iperf3 and nft; never touches the root
//! namespace: the process moves itself into the node namespace first). On a shared machine the
//! figures move with the load (forwarding by +-30 %): read them next to `uptime`.
//! Debug aids: `POLICY_BENCH_QUICK=1` stops after the owner-thread figures;
//! `POLICY_BENCH_NO_MONITOR=1` runs the owner without drift monitoring;
//! `POLICY_BENCH_COMPILE_ONLY=N` times the compiler alone (N rounds, no namespaces, for `perf`);
//! `POLICY_BENCH_DUMP=DIR` writes the full scripts; `POLICY_BENCH_VERBOSE=1` prints the diffs.

#[path = "policy/synth.rs"]
mod synth;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use felix::policy::render::render_full;
use felix::policy::{compile, Compiler, NetworkPolicy, NftDriver, PolicyCfg, PolicyInput};

const ROUNDS: usize = 5;
const IPERF_SECS: &str = "2";
const IPERF_ROUNDS: usize = 9;
/// Local pods of a realistic node: every 91st pod of the cluster = 110 pods (kubelet's default
/// maximum is 110 pods per node).
const NODE_STRIDE: usize = 91;
/// Rules per chain of the naive reference actually loaded (its full expansion has millions).
const NAIVE_CAP: usize = 50_000;

/// Deletes the namespaces and kills iperf3 on drop.
struct Guard {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0]).args(&argv[1..]).output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(ns: &str, script: &str) -> Result<()> {
    run(&["ip", "netns", "exec", ns, "sh", "-c", script]).map(drop)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Remove namespaces of earlier runs whose process is gone.
fn sweep() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("crsbench-pol-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// Allows iperf3 (TCP 5201) between the pods of `ns`, both ways, so the two benchmark pods are
/// isolated in both directions and their flow walks both endpoints' policy chains.
fn iperf_policy(ns: &str) -> NetworkPolicy {
    serde_yaml_ng::from_str(&format!(
        "metadata: {{name: zz-iperf, namespace: {ns}}}
spec:
  podSelector: {{}}
  policyTypes: [Ingress, Egress]
  ingress: [{{from: [{{podSelector: {{}}}}], ports: [{{port: 5201}}]}}]
  egress: [{{to: [{{podSelector: {{}}}}], ports: [{{port: 5201}}]}}]"
    ))
    .expect("policy")
}

fn main() -> Result<()> {
    if let Ok(n) = std::env::var("POLICY_BENCH_COMPILE_ONLY") {
        // Profiling aid: compile the node case n times, no namespaces.
        let input = synth::input(NODE_STRIDE, &[]);
        let t = Instant::now();
        let fresh_rounds = if std::env::var("ONLY_INCR").is_ok() {
            1
        } else {
            n.parse::<usize>()?
        };
        for _ in 0..fresh_rounds {
            std::hint::black_box(compile(&input));
        }
        println!("compile: {:?} each", t.elapsed() / fresh_rounds as u32);
        let c = compile(&input);
        let t = Instant::now();
        let copy = std::hint::black_box(c.ruleset.clone());
        println!("clone: {:?}", t.elapsed());
        let t = Instant::now();
        let d = felix::policy::render::render_diff(&PolicyCfg::default(), &c.ruleset, &copy);
        println!("diff (equal): {:?} {}", t.elapsed(), d.is_ok());
        let mut compiler = Compiler::new();
        compiler.compile(input.clone());
        let mut cur = input.clone();
        let mut total = Duration::ZERO;
        for round in 0..n.parse::<usize>()? {
            let v = if round % 2 == 0 { "app-0" } else { "app-none" };
            cur.pods[1].labels.insert("app".into(), v.into());
            let next = cur.clone();
            let t = Instant::now();
            let (c, old) = compiler.compile_and_take_old(next);
            total += t.elapsed();
            drop((c, old));
        }
        println!(
            "incremental compile, one remote pod: {:?} each",
            total / n.parse::<u32>()?
        );
        return Ok(());
    }
    sweep();
    let pid = std::process::id();
    let node = format!("crsbench-pol-{pid}");
    let (pa, pb) = (format!("{node}-a"), format!("{node}-b"));
    let mut guard = Guard {
        namespaces: vec![],
        children: vec![],
    };
    for ns in [&node, &pa, &pb] {
        run(&["ip", "netns", "add", ns])?;
        guard.namespaces.push(ns.clone());
    }
    let fd = std::fs::File::open(format!("/run/netns/{node}"))?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    // From here on this process (and every nft it runs) is inside the node namespace.

    // The iperf3 pods: the node's first two endpoints, pods 0 and 91, both in ns-000.
    let probe_input = synth::input(NODE_STRIDE, &[]);
    let (ea, eb) = (&probe_input.endpoints[0], &probe_input.endpoints[1]);
    assert_eq!(ea.pod.namespace, eb.pod.namespace);
    let extra = [iperf_policy(&ea.pod.namespace)];
    let input = synth::input(NODE_STRIDE, &extra);
    let (ea, eb) = (input.endpoints[0].clone(), input.endpoints[1].clone());
    setup_pods(
        &node,
        &[(&pa, &ea.iface, &ea.pod.ips), (&pb, &eb.iface, &eb.pod.ips)],
    )?;

    println!(
        "calico-rs felix policy benchmark (netns {node}): {} pods in {} namespaces, {} policies",
        input.pods.len(),
        input.namespaces.len(),
        input.policies.len()
    );
    let cfg = PolicyCfg::default();
    if let Ok(dir) = std::env::var("POLICY_BENCH_DUMP") {
        // Debug aid: write the full scripts and stop.
        for (name, stride) in [("node", NODE_STRIDE), ("all", 1)] {
            let rs = compile(&synth::input(stride, &extra)).ruleset;
            std::fs::write(format!("{dir}/{name}.nft"), render_full(&cfg, &rs))?;
        }
        return Ok(());
    }
    let mut driver = NftDriver::new(cfg.clone());
    let rs = bench_case(&mut driver, "node with 110 local pods", &input, &cfg)?;
    driver.delete_table()?;
    via_owner(&input, &cfg)?;
    if std::env::var("POLICY_BENCH_QUICK").is_ok() {
        return Ok(());
    }

    // Forwarding.
    let b_ip = eb.pod.ips[0].to_string();
    guard.children.push(
        Command::new("ip")
            .args(["netns", "exec", &pb, "iperf3", "-s", "-B", &b_ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let flow: Vec<std::net::IpAddr> = ea.pod.ips.iter().chain(&eb.pod.ips).copied().collect();
    let naive = synth::naive(&rs, &input, &cfg.table, NAIVE_CAP, &flow);
    let naive_script = &naive.script;
    let t = Instant::now();
    driver.run_script("naive load", naive_script)?;
    let naive_load = t.elapsed();
    driver.delete_table()?;
    let empty_rs = compile(&PolicyInput {
        policies: vec![],
        ..input.clone()
    })
    .ruleset;
    let full_script = render_full(&cfg, &rs);
    let empty_script = render_full(&cfg, &empty_rs);
    let names = [
        "no table (bare kernel)",
        "our table, no policies",
        "our table, 1,000 policies",
        "naive linear (50k+ rules/dir)",
    ];
    // Per round, every configuration back to back (order alternating), so slow changes in the
    // machine's load hit all of them alike; the per-round ratio policies / no policies is the
    // robust figure, its median the one to read. The naive ruleset is measured in two rounds only
    // (it barely moves a packet).
    let mut runs: [Vec<f64>; 4] = Default::default();
    let mut ratios = Vec::new();
    for round in 0..IPERF_ROUNDS {
        let mut order: Vec<usize> = if round < 2 {
            vec![0, 1, 2, 3]
        } else {
            vec![0, 1, 2]
        };
        if round % 2 == 1 {
            order.reverse();
        }
        let mut got = [0f64; 4];
        for i in order {
            driver.delete_table()?;
            match i {
                1 => driver.run_script("empty", &empty_script)?,
                2 => driver.run_script("full", &full_script)?,
                3 => driver.run_script("naive", naive_script)?,
                _ => {}
            }
            got[i] = iperf(&pa, &b_ip)?;
            eprintln!("  round {round}: {:<30} {:6.2} Gbit/s", names[i], got[i]);
            runs[i].push(got[i]);
        }
        ratios.push(got[2] / got[1]);
    }
    driver.delete_table()?;
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let best = |v: &[f64]| v.iter().copied().fold(0f64, f64::max);
    println!(
        "forwarding, iperf3 a -> node -> b (one TCP flow through both pods' policy chains), \
         {IPERF_SECS} s x {IPERF_ROUNDS} rounds interleaved:"
    );
    for (n, v) in names.iter().zip(&runs) {
        println!(
            "  {n:<30} median {:6.2} Gbit/s, best {:6.2}",
            med(v),
            best(v)
        );
    }
    println!(
        "  1,000 policies / no policies: median of per-round ratios {:.3} (target >= 0.95), ratio of \
         medians {:.3}, of bests {:.3}; naive / ours (medians): {:.4}",
        med(&ratios),
        med(&runs[2]) / med(&runs[1]),
        best(&runs[2]) / best(&runs[1]),
        med(&runs[3]) / med(&runs[2])
    );
    println!(
        "naive reference: full expansion {} rules; loaded the first {NAIVE_CAP} of each chain plus the \
         benchmark flow's rules after them ({} rules, {} KiB script) in {}; ours: {} rules + {} set elements",
        naive.total_rules,
        naive.loaded_rules,
        naive_script.len() / 1024,
        ms(naive_load),
        rs.rule_count(),
        rs.element_count()
    );

    // Stress: the whole cluster on one node.
    let all = synth::input(1, &extra);
    let mut driver = NftDriver::new(cfg.clone());
    bench_case(&mut driver, "stress: all 10,000 pods local", &all, &cfg)?;
    driver.delete_table()?;
    drop(guard);
    Ok(())
}

/// Full apply, label changes, probe for one input; returns the compiled ruleset.
fn bench_case(
    driver: &mut NftDriver,
    what: &str,
    input: &PolicyInput,
    cfg: &PolicyCfg,
) -> Result<felix::policy::ir::Ruleset> {
    let mut t_compile = Vec::new();
    let mut t_render = Vec::new();
    let mut t_nft = Vec::new();
    let mut t_total = Vec::new();
    let mut c = compile(input);
    for _ in 0..ROUNDS {
        driver.delete_table()?;
        let t0 = Instant::now();
        c = compile(input);
        let t1 = Instant::now();
        let script = render_full(cfg, &c.ruleset);
        let t2 = Instant::now();
        driver.run_script("full", &script)?;
        let t3 = Instant::now();
        t_compile.push(t1 - t0);
        t_render.push(t2 - t1);
        t_nft.push(t3 - t2);
        t_total.push(t3 - t0);
    }
    // Bring the driver's model in line with the kernel.
    driver.forget();
    driver.apply(&c.ruleset)?;
    let rs = c.ruleset.clone();
    println!(
        "{what}: {} endpoints, {} policies ({} rejected), {} policy chains, {} chains, {} rules, {} sets, {} set elements, script {} KiB",
        c.stats.endpoints,
        c.stats.policies,
        c.stats.rejected,
        c.stats.active_policy_chains,
        rs.chains.len(),
        rs.rule_count(),
        rs.sets.len(),
        rs.element_count(),
        render_full(cfg, &rs).len() / 1024
    );
    println!(
        "  full compile + apply: {} (compile {}, render {}, nft -f {}), median of {ROUNDS} (target < 500 ms)",
        ms(median(t_total.clone())),
        ms(median(t_compile)),
        ms(median(t_render)),
        ms(median(t_nft))
    );

    // One pod label change, input to kernel: a remote pod and a local pod, alternating values.
    let local = input.endpoints[2].pod.name.clone();
    let local_ns = input.endpoints[2].pod.namespace.clone();
    let remote_idx = input.pods.iter().position(|p| {
        !input
            .endpoints
            .iter()
            .any(|e| e.pod.name == p.name && e.pod.namespace == p.namespace)
    });
    // The value alternates between the app label its namespace's policies select (`app-N` for
    // ns-00N) and one nobody selects, so every round changes set membership.
    let app_of = |ns: &str| {
        format!(
            "app-{}",
            ns.trim_start_matches("ns-").parse::<usize>().unwrap_or(0) % 10
        )
    };
    for (label, is_local) in [("remote pod", false), ("local pod", true)] {
        let Some(remote_idx) = remote_idx.or(is_local.then_some(0)) else {
            println!("  (every pod is local: no remote pod to change)");
            continue;
        };
        let mut times = Vec::new();
        let mut t_compile = Vec::new();
        let mut kinds = String::new();
        let mut cur = input.clone();
        // The owner's path: an incremental compiler that has seen the current input.
        let mut compiler = Compiler::new();
        compiler.compile(cur.clone());
        let (ns, name) = if is_local {
            (local_ns.clone(), local.clone())
        } else {
            (
                cur.pods[remote_idx].namespace.clone(),
                cur.pods[remote_idx].name.clone(),
            )
        };
        for round in 0..ROUNDS * 2 {
            let value = if round % 2 == 0 {
                app_of(&ns)
            } else {
                "app-none".to_string()
            };
            for e in &mut cur.endpoints {
                if e.pod.name == name && e.pod.namespace == ns {
                    e.pod.labels.insert("app".into(), value.clone());
                }
            }
            for p in &mut cur.pods {
                if p.name == name && p.namespace == ns {
                    p.labels.insert("app".into(), value.clone());
                }
            }
            // The daemon builds a fresh input and moves it in; the clone is not part of the path.
            let next = cur.clone();
            let t = Instant::now();
            let (c, old) = compiler.compile_and_take_old(next);
            t_compile.push(t.elapsed());
            if round == 1 && std::env::var("POLICY_BENCH_VERBOSE").is_ok() {
                if let Ok(Some((script, _))) = felix::policy::render::render_diff(
                    cfg,
                    driver.applied().expect("applied"),
                    &c.ruleset,
                ) {
                    eprintln!("{script}");
                }
            }
            let rep = driver.apply(&c.ruleset)?;
            times.push(t.elapsed());
            // The owner frees a replaced input after the apply, off the update path.
            drop(old);
            if round == 1 {
                let d = rep.diff.unwrap_or_default();
                kinds = format!(
                    "{:?}: {} set elements, {} chains changed, {} added, {} removed",
                    rep.kind,
                    d.elements_added + d.elements_removed,
                    d.chains_changed,
                    d.chains_added,
                    d.chains_removed
                );
            }
        }
        println!(
            "  one {label} label change ({ns}/{name}), input to kernel: {} (compile {}) median of {} (target < 50 ms) [{kinds}]",
            ms(median(times)),
            ms(median(t_compile)),
            ROUNDS * 2
        );
    }
    // Back to the original input.
    driver.apply(&rs)?;
    let mut probes = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        if !driver.probe()? {
            bail!("probe says the table is not intact");
        }
        probes.push(t.elapsed());
    }
    println!(
        "  drift probe (netlink dump of fwd-egress): {}",
        ms(median(probes))
    );
    Ok(rs)
}

/// The daemon's path: the owner thread (incremental compiler, drift monitor running), timed from
/// `update` to the status saying the input is in the kernel.
fn via_owner(input: &PolicyInput, cfg: &PolicyCfg) -> Result<()> {
    let mut cfg = cfg.clone();
    cfg.monitor = std::env::var("POLICY_BENCH_NO_MONITOR").is_err();
    let handle = felix::policy::spawn(cfg.clone())?;
    let wait = Duration::from_secs(60);
    let t = Instant::now();
    handle.apply_blocking(input.clone(), wait)?;
    let full = t.elapsed();
    let mut cur = input.clone();
    let k = cur
        .pods
        .iter()
        .position(|p| !input.endpoints.iter().any(|e| e.pod == *p))
        .context("a remote pod")?;
    let ns_idx: usize = cur.pods[k].namespace.trim_start_matches("ns-").parse()?;
    let mut times = Vec::new();
    let (mut comp, mut app) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS * 2 {
        let v = if round % 2 == 0 {
            format!("app-{}", ns_idx % 10)
        } else {
            "app-none".into()
        };
        cur.pods[k].labels.insert("app".into(), v);
        let next = cur.clone();
        let t = Instant::now();
        let seq = handle.update(next);
        let st = handle.wait_applied(seq, wait)?;
        times.push(t.elapsed());
        comp.push(st.last_compile);
        app.push(
            st.last_apply
                .as_ref()
                .map(|a| a.duration)
                .unwrap_or_default(),
        );
        if st.last_apply.as_ref().map(|a| a.kind) != Some(felix::policy::ApplyKind::Incremental) {
            eprintln!(
                "  (round {round}: not incremental: {:?}; drift repairs {})",
                st.last_apply, st.drift_repairs
            );
        }
    }
    let st = handle.status();
    println!(
        "  via the owner thread (drift monitor {}): first apply {}, one remote pod label change {} \
         (compile {}, apply {}) median of {} (update -> status applied; drift repairs {}, events lost {})",
        if cfg.monitor { "on" } else { "off" },
        ms(full),
        ms(median(times)),
        ms(median(comp)),
        ms(median(app)),
        ROUNDS * 2,
        st.drift_repairs,
        st.events_lost
    );
    drop(handle);
    NftDriver::new(cfg.clone()).delete_table()?;
    Ok(())
}

/// Veth + addresses + routes for the iperf pods, as in the integration tests.
fn setup_pods(node: &str, pods: &[(&str, &str, &Vec<std::net::IpAddr>)]) -> Result<()> {
    run(&["ip", "link", "set", "lo", "up"])?;
    sh(
        node,
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
    )?;
    // A unicast route for 169.254.1.1 out of another interface, so proxy ARP answers for it.
    run(&[
        "ip", "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
    ])?;
    run(&["ip", "link", "set", "bench0", "up"])?;
    run(&["ip", "link", "set", "bench1", "up"])?;
    run(&["ip", "route", "add", "169.254.1.1/32", "dev", "bench0"])?;
    for (ns, iface, ips) in pods {
        let v4 = ips[0];
        run(&[
            "ip",
            "link",
            "add",
            iface,
            "address",
            "ee:ee:ee:ee:ee:ee",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ])?;
        sh(
            node,
            &format!(
                "sysctl -qw net.ipv4.conf.{iface}.proxy_arp=1 net.ipv4.neigh.{iface}.proxy_delay=0 && \
                 ip link set {iface} up && ip route add {v4}/32 dev {iface}"
            ),
        )?;
        sh(
            ns,
            &format!(
                "ip link set lo up && ip addr add {v4}/32 dev eth0 && ip link set eth0 up && \
                 ip route add 169.254.1.1 dev eth0 scope link && \
                 ip route add default via 169.254.1.1 dev eth0"
            ),
        )?;
    }
    Ok(())
}

/// One iperf3 run from pod namespace `ns` to `dst`; Gbit/s received.
fn iperf(ns: &str, dst: &str) -> Result<f64> {
    let out = run(&[
        "ip", "netns", "exec", ns, "iperf3", "-c", dst, "-t", IPERF_SECS, "-J",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 output")
}
