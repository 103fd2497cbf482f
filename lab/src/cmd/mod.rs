//! `calico-lab-rs up|down|status`: a small Calico cluster on one machine, made of network
//! namespaces, for trying the node out and for demos. Unlike the tests' labs, it outlives the
//! command: its namespaces and processes are recorded in `DIR/lab.json` and removed by `down`.
//!
//! ```text
//!  up:  plan (pure) -> namespaces + segment + ToR netns -> datastore YAML + IPAM pod addresses
//!       (or, with `--datastore kubernetes`, the API server in PREFIXapi and the same objects
//!       applied with kubectl, IPAM in its IPAMBlocks: [`kube`]) -> pods (veths) -> ToR router (BIRD | GoBGP) -> one daemon per node (detached)
//!       -> wait until converged (converge::missing is empty) -> print peers + reachability matrix
//!  status: lab.json -> observe once -> print the same
//!  down: SIGTERM (5 s) / SIGKILL every lab process -> delete every PREFIX* namespace -> remove DIR
//! ```
//!
//! Layout and addresses: [`crate::plan`]. Datastore: [`crate::datastore`]. What is recorded:
//! [`record`] (`DIR/lab.json`). Everything lives in network namespaces named `PREFIX*` (`crslab-*`
//! unless `--netns-prefix` picks another `crs…-`); nothing here changes the root namespace's
//! links, routes, sysctls or nftables (see [`crate::netns`]). The prefix is reserved for the lab: `down` removes
//! every namespace carrying it, recorded or not, so a crashed `up` is always cleaned up. A second
//! lab with another prefix and directory runs beside the first (the tests use that).
//!
//! The daemons run `NODE_BIN run --nodename nodeK --datastore file:DIR/datastore
//! --grpc unix:DIR/run/nodeK.sock` inside `PREFIXnodeK`, in sessions of their own, logging to
//! `DIR/logs/nodeK.log`, so they outlive `up`.

pub mod converge;
pub mod kube;
pub mod net;
pub mod record;
pub mod report;
pub mod tor;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::plan::{self, Plan};
use crate::{bins, datastore, netns, proc};
use record::{Paths, Record};

/// Env var: when set (to anything but `0` or empty), `up` does not wait for convergence (for
/// developing the lab against a daemon that does not peer yet).
pub const ENV_SKIP_WAIT: &str = "CALICO_LAB_SKIP_WAIT";
/// Default lab directory.
pub const DEFAULT_DIR: &str = "/tmp/calico-rs-lab";
/// How long `down` lets processes exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The top-of-rack router peering with every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tor {
    /// BIRD 2 (`bird`, `birdc`), also programming the ToR namespace's kernel table.
    #[default]
    Bird,
    /// GoBGP (`gobgpd`, `gobgp`).
    Gobgp,
    /// No ToR: only the node-to-node mesh.
    None,
}

impl std::fmt::Display for Tor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tor::Bird => "bird",
            Tor::Gobgp => "gobgp",
            Tor::None => "none",
        })
    }
}

impl std::str::FromStr for Tor {
    type Err = String;
    fn from_str(s: &str) -> Result<Tor, String> {
        match s {
            "bird" => Ok(Tor::Bird),
            "gobgp" => Ok(Tor::Gobgp),
            "none" => Ok(Tor::None),
            other => Err(format!("unknown ToR {other:?} (want bird, gobgp or none)")),
        }
    }
}

/// Where the lab's cluster is held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabDatastore {
    /// YAML files in `DIR/datastore` (IPAM in `DIR/datastore/ipam`).
    #[default]
    File,
    /// A Kubernetes API server in `PREFIXapi` (the project's test server), IPAM in Calico's
    /// IPAMBlock/BlockAffinity/IPAMHandle objects.
    Kubernetes,
}

impl std::fmt::Display for LabDatastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LabDatastore::File => "file",
            LabDatastore::Kubernetes => "kubernetes",
        })
    }
}

/// What `lab up` builds. Build it with `LabCfg { nodes: 5, ..LabCfg::default() }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabCfg {
    /// Number of nodes (default 3, at most [`plan::MAX_NODES`]).
    pub nodes: usize,
    /// Pods per node (default 2, at most [`plan::MAX_PODS_PER_NODE`]).
    pub pods_per_node: usize,
    pub tor: Tor,
    /// Files (default) or a Kubernetes API server.
    pub datastore: LabDatastore,
    /// Lab directory (default [`DEFAULT_DIR`]): datastore, sockets, logs, `lab.json`.
    pub dir: PathBuf,
    /// The daemon binary (default: `calico-node-rs` next to the running executable).
    pub node_bin: PathBuf,
    /// `calicoctl-rs`, used for per-node peer tables (default: next to `node_bin` if present).
    pub ctl_bin: Option<PathBuf>,
    /// Tear down an existing lab first instead of refusing (`--force`).
    pub force: bool,
    /// How long `up` waits for BGP and routes (default 60 s).
    pub timeout: Duration,
    /// Prefix of every namespace name (default [`plan::DEFAULT_PREFIX`]); another prefix and
    /// `dir` make a second lab beside the first.
    pub netns_prefix: String,
}

impl Default for LabCfg {
    fn default() -> LabCfg {
        let node_bin = bins::beside_exe(bins::NODE).unwrap_or_else(|| PathBuf::from(bins::NODE));
        LabCfg {
            nodes: 3,
            pods_per_node: 2,
            tor: Tor::Bird,
            datastore: LabDatastore::File,
            dir: PathBuf::from(DEFAULT_DIR),
            ctl_bin: bins::ctl_next_to(&node_bin),
            node_bin,
            force: false,
            timeout: Duration::from_secs(60),
            netns_prefix: plan::DEFAULT_PREFIX.to_string(),
        }
    }
}

fn check_tools(cfg: &LabCfg) -> Result<()> {
    let mut need = vec!["ip", "ping", "setsid", "sysctl"];
    match cfg.tor {
        Tor::Bird => need.extend(["bird", "birdc"]),
        Tor::Gobgp => need.extend(["gobgpd", "gobgp"]),
        Tor::None => {}
    }
    if cfg.datastore == LabDatastore::Kubernetes {
        need.push("kubectl");
    }
    let lacking: Vec<&str> = need.into_iter().filter(|t| !proc::have(t)).collect();
    if !lacking.is_empty() {
        bail!(
            "lab: missing tools: {} (Debian: apt-get install iproute2 iputils-ping util-linux \
             procps bird2 gobgpd; kubectl from the Kubernetes packages)",
            lacking.join(", ")
        );
    }
    if !proc::have(&cfg.node_bin.to_string_lossy()) {
        bail!(
            "lab: node binary {} is not executable (build it with `cargo build --release -p \
             calico-node --bins`, or pass --node-bin)",
            cfg.node_bin.display()
        );
    }
    cni_next_to(&cfg.node_bin)?;
    if cfg.datastore == LabDatastore::Kubernetes && kube::server_next_to(&cfg.node_bin).is_none() {
        bail!(
            "lab: --datastore kubernetes needs {} next to {} (build it with `cargo build \
             --release --workspace --bins`)",
            crate::kubeapi::SERVER_BIN,
            cfg.node_bin.display()
        );
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("lab: needs root (it creates network namespaces)");
    }
    Ok(())
}

/// Builds the lab, starts everything, waits until BGP and routes are in place, and prints each
/// node's peers and the pod-to-pod reachability matrix. An error if a lab exists (unless
/// `cfg.force`), if building fails (what was built is removed), or if the lab does not converge
/// within `cfg.timeout` or pods cannot reach each other (the lab is left running to inspect).
pub fn up(cfg: &LabCfg) -> Result<()> {
    let plan = Plan::new(cfg.nodes, cfg.pods_per_node, &cfg.netns_prefix)?;
    check_tools(cfg)?;
    let paths = Paths::new(&cfg.dir);
    let leftover = netns::lab_namespaces(&plan.prefix);
    if paths.record.exists() || !leftover.is_empty() {
        if !cfg.force {
            let what = if paths.record.exists() {
                format!("a lab exists in {}", cfg.dir.display())
            } else {
                format!("lab namespaces exist ({})", leftover.join(", "))
            };
            let mut down_args = String::new();
            if cfg.dir != Path::new(DEFAULT_DIR) {
                down_args += &format!(" --dir {}", cfg.dir.display());
            }
            if plan.prefix != plan::DEFAULT_PREFIX {
                down_args += &format!(" --netns-prefix {}", plan.prefix);
            }
            bail!(
                "lab: {what}; run `{}{down_args}` first, or `up --force`",
                cmd("down")
            );
        }
        println!("Removing the existing lab first (--force).");
        down(&cfg.dir, &plan.prefix)?;
    }
    // `down` deletes DIR/run, DIR/logs and DIR/datastore: only ever in a directory `up` made or
    // found empty, and the record goes in first, so those are ours whenever a record exists.
    if std::fs::read_dir(&paths.dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "lab: {} is not empty and holds no lab; choose another --dir",
            cfg.dir.display()
        );
    }
    std::fs::create_dir_all(&paths.dir)
        .with_context(|| format!("creating {}", paths.dir.display()))?;
    let mut rec = Record::new(cfg);
    rec.save(&paths)?;
    for d in [&paths.run, &paths.logs, &paths.datastore] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let started = std::time::Instant::now();
    if let Err(e) = build(&plan, &paths, &mut rec) {
        let _ = rec.save(&paths);
        println!("lab up failed: {e:#}");
        println!("Removing what was built.");
        let _ = down(&cfg.dir, &plan.prefix);
        return Err(e);
    }
    println!(
        "Built {} nodes, {} pods, ToR {}, datastore {} in {:.1} s; daemons started (logs in {}).",
        plan.nodes.len(),
        plan.pods().count(),
        cfg.tor,
        cfg.datastore,
        started.elapsed().as_secs_f64(),
        paths.logs.display()
    );
    let skip = std::env::var(ENV_SKIP_WAIT).is_ok_and(|v| !v.is_empty() && v != "0");
    let blocks = converge::Blocks::open(&plan, &rec, &paths);
    let (observed, missing) = if skip {
        println!("Not waiting for convergence ({ENV_SKIP_WAIT} is set).");
        let o = converge::observe(&plan, &rec, &paths, &blocks);
        let m = converge::missing(&plan, &o);
        (o, m)
    } else {
        converge::wait(&plan, &rec, &paths, &blocks, cfg.timeout)
    };
    print_missing(&missing, &paths);
    if let Some(line) = report::tor_summary(&plan, rec.tor, &observed) {
        println!("{line}");
    }
    if rec.datastore == LabDatastore::Kubernetes {
        println!("{}", kube::hint(&plan, &paths));
    }
    report::print_nodes(&plan, &rec, &paths, &observed);
    let grids = report::print_matrix(&plan, &rec);
    let unreachable: usize = grids.iter().map(|(_, m)| m.count().1 - m.count().0).sum();
    println!();
    println!(
        "Lab directory {}; `{}` shows this again, `{}` removes it.",
        cfg.dir.display(),
        cmd("status"),
        cmd("down")
    );
    if !missing.is_empty() && !skip {
        bail!(
            "lab: not converged within {} s ({} problems, listed above); the lab is left \
             running for inspection",
            cfg.timeout.as_secs(),
            missing.len()
        );
    }
    if unreachable > 0 && !skip {
        bail!("lab: {unreachable} pod pairs cannot reach each other");
    }
    Ok(())
}

/// `calico-cni-rs` in the directory of `node_bin`: the lab's pods on the file datastore are its.
fn cni_next_to(node_bin: &Path) -> Result<PathBuf> {
    let p = node_bin
        .parent()
        .map(|d| d.join(bins::CNI))
        .filter(|p| p.is_file())
        .with_context(|| {
            format!(
                "lab: the CNI plugin {} is not next to {} (build it with `cargo build --release \
                 --workspace --bins`)",
                bins::CNI,
                node_bin.display()
            )
        })?;
    Ok(p)
}

/// `calico-lab-rs SUB`, as the user would type it.
fn cmd(sub: &str) -> String {
    format!("{} {sub}", bins::LAB)
}

fn print_missing(missing: &[String], paths: &Paths) {
    if missing.is_empty() {
        return;
    }
    println!("Not ready:");
    for m in missing {
        println!("  {m}");
    }
    println!("(daemon logs: {}/NODE.log)", paths.logs.display());
}

/// Every step of `up` that makes something, recording as it goes.
fn build(plan: &Plan, paths: &Paths, rec: &mut Record) -> Result<()> {
    net::segment(plan, &mut rec.namespaces)?;
    net::tor(plan, &mut rec.namespaces)?;
    for n in &plan.nodes {
        net::node(plan, n, &mut rec.namespaces)?;
    }
    rec.save(paths)?;
    let tor = rec.tor != Tor::None;
    match rec.datastore {
        LabDatastore::File => {
            // The pods through the CNI plugin, as a kubelet would make them; then the Pods with
            // the addresses it gave (the kubelet's status update).
            datastore::write_documents(&paths.datastore, plan, tor)?;
            let plugin = cni_next_to(&rec.node_bin)?;
            for n in &plan.nodes {
                for p in &n.pods {
                    let ip = net::pod_via_cni(
                        &plugin,
                        net::CniDatastore::File(&paths.datastore),
                        n,
                        p,
                        &mut rec.namespaces,
                    )?;
                    rec.pods.insert(p.name.clone(), ip);
                }
            }
            datastore::write_atomic(
                &paths.datastore,
                "pods.yaml",
                &datastore::pods_yaml(plan, &rec.pods)?,
            )?;
        }
        LabDatastore::Kubernetes => {
            let server = kube::server_next_to(&rec.node_bin)
                .context("kube-test-server is not next to the node binary")?;
            kube::start(plan, paths, rec, &server)?;
            // The pods come after the daemons (below): the plugin asks them.
            kube::populate(plan, paths, tor)?;
        }
    }
    rec.save(paths)?;
    let tor_log = paths.log("tor");
    let files = tor::TorFiles {
        run_dir: &paths.run,
        log: &tor_log,
    };
    rec.tor_proc = tor::start(rec.tor, plan, &files)?;
    rec.save(paths)?;
    let (datastore, env) = match rec.datastore {
        LabDatastore::File => (format!("file:{}", paths.datastore.display()), vec![]),
        LabDatastore::Kubernetes => {
            let mut env = vec!["env".to_string()];
            env.extend(kube::daemon_env(paths));
            ("kubernetes".to_string(), env)
        }
    };
    let node_bin = rec.node_bin.to_string_lossy().into_owned();
    for n in &plan.nodes {
        let grpc = format!("unix:{}", paths.grpc_socket(&n.name).display());
        // `env` execs in place, so the recorded pid is the daemon's.
        let mut argv: Vec<&str> = env.iter().map(String::as_str).collect();
        argv.extend([
            node_bin.as_str(),
            "run",
            "--nodename",
            &n.name,
            "--datastore",
            &datastore,
            "--grpc",
            &grpc,
        ]);
        let proc = netns::spawn_detached(&n.netns, &argv, &paths.log(&n.name))?;
        rec.daemons.insert(n.name.clone(), proc);
        rec.save(paths)?;
    }
    if rec.datastore == LabDatastore::Kubernetes {
        // The pods through the CNI plugin and each node's daemon (its IPAM on the API, the
        // Pod's annotations), as the kubelet would have them made.
        let plugin = cni_next_to(&rec.node_bin)?;
        for n in &plan.nodes {
            let socket = paths.cni_socket(&n.name);
            for p in &n.pods {
                let ip = net::pod_via_cni(
                    &plugin,
                    net::CniDatastore::Kubernetes(&socket),
                    n,
                    p,
                    &mut rec.namespaces,
                )?;
                rec.pods.insert(p.name.clone(), ip);
                rec.save(paths)?;
            }
        }
    }
    Ok(())
}

/// Prints the state of the lab in `dir` (daemons, peers, routes, reachability); an error only if
/// there is no lab there. `netns_prefix` only names stray namespaces when there is no record.
pub fn status(dir: &Path, netns_prefix: &str) -> Result<()> {
    let paths = Paths::new(dir);
    let Some(rec) = Record::load(&paths)? else {
        let stray = netns::lab_namespaces(netns_prefix);
        if stray.is_empty() {
            bail!("lab: no lab in {}", dir.display());
        }
        bail!(
            "lab: no lab record in {}, but lab namespaces exist ({}); `{}` removes them",
            dir.display(),
            stray.join(", "),
            cmd("down")
        );
    };
    let plan = Plan::new(rec.nodes, rec.pods_per_node, &rec.netns_prefix)?;
    let alive = rec.daemons.values().filter(|p| p.alive()).count();
    println!(
        "Lab in {}: {} nodes, {} pods per node, datastore {}, ToR {}{}; {alive}/{} daemons \
         running.",
        dir.display(),
        rec.nodes,
        rec.pods_per_node,
        rec.datastore,
        rec.tor,
        match &rec.tor_proc {
            Some(p) if p.alive() => format!(" (pid {} running)", p.pid),
            Some(p) => format!(" (pid {} NOT RUNNING)", p.pid),
            None => String::new(),
        },
        plan.nodes.len()
    );
    let blocks = converge::Blocks::open(&plan, &rec, &paths);
    let o = converge::observe(&plan, &rec, &paths, &blocks);
    let missing = converge::missing(&plan, &o);
    if missing.is_empty() {
        println!("Converged: every session is up and every block is routed.");
    }
    print_missing(&missing, &paths);
    if let Some(line) = report::tor_summary(&plan, rec.tor, &o) {
        println!("{line}");
    }
    if rec.datastore == LabDatastore::Kubernetes {
        println!("{}", kube::hint(&plan, &paths));
    }
    report::print_nodes(&plan, &rec, &paths, &o);
    report::print_matrix(&plan, &rec);
    Ok(())
}

/// Removes the lab in `dir` and any namespace named with its prefix (the record's, else
/// `netns_prefix`): stops every lab process (SIGTERM, then SIGKILL after 5 s), deletes the
/// namespaces, and, when `dir` holds a lab record, removes what `up` made there (and `dir` itself
/// if that leaves it empty). Safe to run twice, and after a half-failed or killed `up`.
pub fn down(dir: &Path, netns_prefix: &str) -> Result<()> {
    plan::check_prefix(netns_prefix)?;
    let paths = Paths::new(dir);
    let rec = match Record::load(&paths) {
        Ok(r) => r,
        Err(e) => {
            println!("warning: {e:#}; stopping lab processes and namespaces, leaving files alone");
            None
        }
    };
    let prefix = rec
        .as_ref()
        .map_or(netns_prefix, |r| r.netns_prefix.as_str())
        .to_string();
    let mut namespaces = netns::lab_namespaces(&prefix);
    for ns in rec.iter().flat_map(|r| &r.namespaces) {
        if !namespaces.contains(ns) && Path::new(netns::NETNS_DIR).join(ns).exists() {
            namespaces.push(ns.clone());
        }
    }
    let mut procs = rec.as_ref().map(Record::procs).unwrap_or_default();
    for ns in &namespaces {
        procs.extend(netns::pids(ns).into_iter().filter_map(proc::ProcId::of));
    }
    procs.sort_by_key(|p| p.pid);
    procs.dedup();
    let stopped = proc::stop_all(&procs, STOP_GRACE);
    let mut failed = Vec::new();
    for ns in &namespaces {
        if let Err(e) = netns::del(ns) {
            failed.push(format!("{e:#}"));
        }
    }
    // Files only where a lab record proves `up` made them (DIR/run could be /run otherwise).
    for p in paths.made().into_iter().filter(|_| rec.is_some()) {
        let r = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                failed.push(format!("removing {}: {e}", p.display()));
            }
        }
    }
    let _ = std::fs::remove_file(dir.join(".lab.json.tmp"));
    // Only if empty: DIR may be a directory the user also keeps other things in.
    let removed_dir = std::fs::remove_dir(dir).is_ok();
    println!(
        "Lab down: stopped {stopped} processes, deleted {} namespaces{}.",
        namespaces.len(),
        if removed_dir {
            format!(", removed {}", dir.display())
        } else {
            String::new()
        }
    );
    let left = netns::lab_namespaces(&prefix);
    if !left.is_empty() {
        failed.push(format!("namespaces still present: {}", left.join(", ")));
    }
    if !failed.is_empty() {
        bail!("lab down: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tor_names() {
        for t in [Tor::Bird, Tor::Gobgp, Tor::None] {
            assert_eq!(t.to_string().parse::<Tor>(), Ok(t));
        }
        assert!("frr".parse::<Tor>().is_err());
    }

    /// Needs root (network namespaces), as every test run by `scripts/test.sh`; uses a prefix of
    /// its own, so a running lab is left alone.
    #[test]
    fn up_without_working_daemons_times_out_and_down_cleans_up() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test makes network namespaces: run it as root (scripts/test.sh does)"
        );
        let prefix = "crsut1-";
        let tmp = tempfile::tempdir().unwrap();
        let stub = tmp.path().join("stub-node");
        std::fs::write(&stub, "#!/bin/sh\nexec sleep 300\n").unwrap();
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // The pods are the real CNI plugin's (on the file datastore it needs no daemon).
        std::os::unix::fs::symlink(
            bins::cni_bin().expect("cargo build --workspace --bins first"),
            tmp.path().join(bins::CNI),
        )
        .unwrap();
        let cfg = LabCfg {
            nodes: 2,
            pods_per_node: 1,
            dir: tmp.path().join("lab"),
            node_bin: stub,
            ctl_bin: None,
            timeout: Duration::from_secs(3),
            netns_prefix: prefix.to_string(),
            ..LabCfg::default()
        };
        let _ = down(&cfg.dir, prefix);
        let t = std::time::Instant::now();
        let e = up(&cfg).unwrap_err();
        assert!(
            format!("{e:#}").contains("not converged within 3 s"),
            "{e:#}"
        );
        assert!(t.elapsed() < Duration::from_secs(20));
        let rec = Record::load(&Paths::new(&cfg.dir)).unwrap().unwrap();
        assert!(rec.daemons.values().all(|p| p.alive()));
        assert_eq!(rec.namespaces.len(), 2 + 2 + 2);
        assert!(rec.namespaces.iter().all(|n| n.starts_with(prefix)));
        assert_eq!(netns::lab_namespaces(prefix), {
            let mut v = rec.namespaces.clone();
            v.sort();
            v
        });
        assert!(up(&cfg).is_err(), "a second up must refuse");
        down(&cfg.dir, plan::DEFAULT_PREFIX).unwrap();
        assert!(netns::lab_namespaces(prefix).is_empty());
        assert!(rec.procs().iter().all(|p| !p.alive()));
        assert!(!cfg.dir.exists());
    }

    #[test]
    fn defaults() {
        let c = LabCfg::default();
        assert_eq!((c.nodes, c.pods_per_node, c.tor), (3, 2, Tor::Bird));
        assert_eq!(c.dir, PathBuf::from("/tmp/calico-rs-lab"));
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert!(bins::ctl_next_to(Path::new("/nonexistent/calico-node-rs")).is_none());
    }
}
