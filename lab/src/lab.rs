//! The tests' network-namespace lab: namespaces, veth links, bridged segments and processes
//! inside them, all removed when the [`Lab`] drops (the lab command's namespaces, which outlive
//! it, are made by [`crate::cmd`] with the same primitives, [`crate::netns`]).
//!
//! # Naming
//! A [`Lab`] has a *prefix* `crs{PID}-{TAG}` where PID is the test process id and TAG is chosen by the
//! test (lowercase letters and digits, keep it short). If another live lab in the same process already
//! uses TAG, a number is appended (`bgp`, `bgp2`, ...), so tests running in parallel never clash and two
//! test processes never clash either. Everything the lab makes carries the prefix:
//! - namespace `n1` is `crs{PID}-{TAG}-n1` (`/run/netns/...`); a segment `lan` is the namespace
//!   `crs{PID}-{TAG}-lan` holding bridge `br0`;
//! - the temp dir (configs, control sockets, logs) is `$TMPDIR/crs{PID}-{TAG}`.
//!
//! # Cleanup
//! - Dropping a [`Proc`] SIGKILLs and reaps it.
//! - Dropping the [`Lab`] SIGKILLs every process still inside its namespaces (`ip netns pids`, which also
//!   catches daemons that forked or were backgrounded by `sh`), deletes the namespaces and the temp dir.
//! - [`Lab::new`] first *sweeps*: every namespace named `crs{PID}-...` whose PID is no longer alive was left
//!   by a crashed or killed run; its processes are killed and it is deleted, as is `$TMPDIR/crs{PID}-*`.
//!   Namespaces of live processes and namespaces not following the scheme are never touched.
//! - `CRS_KEEP_LAB=1` (or [`Lab::keep`]) keeps everything for debugging (namespaces, daemons, files) and
//!   prints what was kept. It also writes `$TMPDIR/crs{PID}-{TAG}/.keep`, which the sweep respects, so
//!   other test runs on the machine leave it alone; remove that file (or the dir) to let the next sweep
//!   clean it up.
//!
//! # Safety
//! Nothing here touches the root namespace: every command goes through [`crate::netns`], which
//! refuses names outside the lab's schemes; links are created with `ip -n NS`, with the peer
//! placed directly in its namespace (`peer name X netns NS2`), and sysctls are set through
//! `ip netns exec`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;

use crate::netns::{self, owner_pid, NETNS_DIR};
use crate::proc::{self, Proc, DEFAULT_TIMEOUT};

/// Environment variable: when `1`, labs keep their namespaces, processes and files on drop.
pub const KEEP_ENV: &str = "CRS_KEEP_LAB";
/// Every lab object name starts with this, followed by the owning process id.
pub const PREFIX: &str = netns::FAMILY;
/// File in a kept lab's temp dir that makes the sweep leave the lab alone.
pub const KEEP_MARKER: &str = ".keep";

/// Tags of the labs alive in this process.
static LIVE_TAGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// State shared by a lab and the handles it gives out.
#[derive(Debug)]
pub(crate) struct Shared {
    prefix: String,
    tag: String,
    dir: PathBuf,
    keep: Arc<AtomicBool>,
    namespaces: Mutex<Vec<String>>,
    seq: AtomicUsize,
}

impl Shared {
    /// A fresh path in the lab's temp dir: `{dir}/{stem}.{n}.{ext}`.
    pub(crate) fn file(&self, stem: &str, ext: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{stem}.{n}.{ext}"))
    }

    pub(crate) fn keep_flag(&self) -> Arc<AtomicBool> {
        self.keep.clone()
    }
}

/// One test's set of namespaces, links and processes. See the module docs for naming and cleanup.
#[derive(Debug)]
pub struct Lab {
    shared: Arc<Shared>,
}

impl Lab {
    /// Sweep leftovers of dead test processes, then start an empty lab whose names begin `crs{PID}-{tag}`.
    pub fn new(tag: &str) -> Result<Lab> {
        if tag.is_empty()
            || tag.len() > 12
            || !tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            bail!("lab tag {tag:?}: use 1-12 lowercase letters or digits");
        }
        if let Err(e) = sweep() {
            eprintln!("lab: sweep of leftovers failed: {e:#}");
        }
        let tag = {
            let mut live = LIVE_TAGS.lock().unwrap_or_else(|p| p.into_inner());
            let mut t = tag.to_string();
            let mut n = 2;
            while live.contains(&t) {
                t = format!("{tag}{n}");
                n += 1;
            }
            live.push(t.clone());
            t
        };
        let prefix = format!("{PREFIX}{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        let shared = Arc::new(Shared {
            prefix,
            tag,
            dir,
            keep: Arc::new(AtomicBool::new(keep)),
            namespaces: Mutex::new(Vec::new()),
            seq: AtomicUsize::new(0),
        });
        // From here on, Drop cleans up whatever was made.
        let lab = Lab { shared };
        std::fs::create_dir_all(&lab.shared.dir)
            .with_context(|| format!("creating {}", lab.shared.dir.display()))?;
        Ok(lab)
    }

    /// `crs{PID}-{TAG}`: the start of every namespace name of this lab.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The lab's temp dir (configs, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Keep namespaces, processes and files when the lab drops (for debugging a failing test).
    pub fn keep(&self) {
        self.shared.keep.store(true, Ordering::Relaxed);
    }

    /// Full names of the namespaces made so far (including segments').
    pub fn namespaces(&self) -> Vec<String> {
        self.shared.namespaces.lock().unwrap().clone()
    }

    /// Create namespace `crs{PID}-{TAG}-{name}` with `lo` up and IPv6 DAD off (addresses usable at once).
    pub fn netns(&self, name: &str) -> Result<Netns> {
        let ns = self.make_netns(name)?;
        ns.sysctls(&netns::NO_DAD)?;
        Ok(ns)
    }

    fn make_netns(&self, name: &str) -> Result<Netns> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            bail!("namespace name {name:?}: use letters, digits, '_' or '.'");
        }
        let full = format!("{}-{name}", self.shared.prefix);
        {
            let mut list = self.shared.namespaces.lock().unwrap();
            if list.contains(&full) {
                bail!("namespace {full} already exists in this lab");
            }
            list.push(full.clone());
        }
        netns::add(&full)?;
        Ok(Netns {
            name: full,
            short: name.to_string(),
            shared: self.shared.clone(),
        })
    }

    /// Kill what runs in `ns` and delete it now, not when the lab drops (a pod that goes away).
    pub fn remove_netns(&self, ns: &Netns) {
        self.shared
            .namespaces
            .lock()
            .unwrap()
            .retain(|n| n != ns.name());
        netns::kill_and_del(ns.name());
    }

    /// A veth pair `a.1` in `a.0` <-> `b.1` in `b.0`, both brought up (no addresses).
    pub fn veth(&self, a: (&Netns, &str), b: (&Netns, &str)) -> Result<()> {
        a.0.ip(&[
            "link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns", &b.0.name,
        ])?;
        a.0.up(a.1)?;
        b.0.up(b.1)
    }

    /// A shared L2 segment: namespace `crs{PID}-{TAG}-{name}` holding bridge `br0` (no STP, no IPv6, no
    /// multicast snooping). Attach namespaces with [`Segment::attach`].
    pub fn segment(&self, name: &str) -> Result<Segment> {
        let ns = self.make_netns(name)?;
        ns.sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ])?;
        ns.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ns.up("br0")?;
        Ok(Segment {
            ns,
            ports: AtomicUsize::new(0),
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names = self.namespaces();
        if self.shared.keep.load(Ordering::Relaxed) {
            let _ = std::fs::create_dir_all(&self.shared.dir);
            let _ = std::fs::write(self.shared.dir.join(KEEP_MARKER), "");
            eprintln!(
                "lab {}: KEPT namespaces {:?} and dir {}; `rm {}/{KEEP_MARKER}` to let the next lab \
                 sweep them",
                self.shared.prefix,
                names,
                self.shared.dir.display(),
                self.shared.dir.display()
            );
        } else {
            for name in &names {
                netns::kill_and_del(name);
            }
            let _ = std::fs::remove_dir_all(&self.shared.dir);
        }
        let mut live = LIVE_TAGS.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|t| t != &self.shared.tag);
    }
}

/// The lab prefix `crs{PID}-{TAG}` of a lab object name `crs{PID}-{TAG}[-{name}]`.
fn lab_prefix(name: &str) -> &str {
    match name.match_indices('-').nth(1) {
        Some((i, _)) => &name[..i],
        None => name,
    }
}

/// Whether the lab that made `name` was kept on purpose (its temp dir holds [`KEEP_MARKER`]).
fn kept(name: &str) -> bool {
    std::env::temp_dir()
        .join(lab_prefix(name))
        .join(KEEP_MARKER)
        .exists()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove namespaces and temp dirs left by lab owners that are no longer alive; returns the namespaces
/// removed. Called by [`Lab::new`]; safe to run concurrently from several test processes.
pub fn sweep() -> Result<Vec<String>> {
    let mut swept = Vec::new();
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e).context(NETNS_DIR),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name) {
            if !pid_alive(pid) && !kept(&name) {
                netns::kill_and_del(&name);
                swept.push(name);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| !pid_alive(pid)) && !kept(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(swept)
}

/// A network namespace of a lab. Cheap to clone; the lab owns its lifetime.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
    short: String,
    shared: Arc<Shared>,
}

impl Netns {
    /// Full name, as `ip netns` knows it (`crs{PID}-{TAG}-{short}`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name given to [`Lab::netns`].
    pub fn short(&self) -> &str {
        &self.short
    }

    /// `/run/netns/{name}`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// The lab's temp dir.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn exec_argv<'a>(&'a self, argv: &[&'a str]) -> Result<Vec<&'a str>> {
        netns::exec_argv(&self.name, argv)
    }

    /// Run `argv` inside the namespace (deadline 30 s); returns stdout. The error names the command,
    /// exit status and stderr.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        proc::run(&self.exec_argv(argv)?, DEFAULT_TIMEOUT)
    }

    /// [`Netns::run`] with an explicit deadline (the process is SIGKILLed when it passes).
    pub fn run_timeout(&self, argv: &[&str], timeout: Duration) -> Result<String> {
        proc::run(&self.exec_argv(argv)?, timeout)
    }

    /// Run `argv` inside the namespace and return its output whatever its exit status.
    pub fn output(&self, argv: &[&str], timeout: Duration) -> Result<std::process::Output> {
        netns::exec(&self.name, argv, timeout)
    }

    /// Run `argv` inside the namespace with `stdin` fed to it.
    pub fn run_stdin(&self, argv: &[&str], stdin: &[u8]) -> Result<String> {
        proc::run_stdin(&self.exec_argv(argv)?, stdin, DEFAULT_TIMEOUT)
    }

    /// `sh -c script` inside the namespace; returns stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run(&["sh", "-c", script])
    }

    /// `ip -n {name} argv...` (iproute2 switches namespace itself; quicker than `ip netns exec ip`).
    pub fn ip(&self, argv: &[&str]) -> Result<String> {
        netns::ip(&self.name, argv)
    }

    /// `ip -n {name} -batch -` with one command per line.
    pub fn ip_batch(&self, lines: &[String]) -> Result<()> {
        netns::ip_batch(&self.name, lines)
    }

    /// Set one sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.sysctls(&[(key, value)])
    }

    /// Set several sysctls inside the namespace with one process.
    pub fn sysctls(&self, kv: &[(&str, &str)]) -> Result<()> {
        netns::sysctls(&self.name, kv)
    }

    /// Read a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        Ok(self.run(&["sysctl", "-n", key])?.trim().to_string())
    }

    /// Turn on IPv4 and IPv6 forwarding.
    pub fn forwarding(&self) -> Result<()> {
        self.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ])
    }

    /// Add `cidr` (v4 or v6; v6 gets `nodad`) to `ifname`.
    pub fn addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
        } else {
            self.ip(&["addr", "add", cidr, "dev", ifname])
        }
        .map(drop)
    }

    /// Set `ifname` up.
    pub fn up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "up"]).map(drop)
    }

    /// Set `ifname` down.
    pub fn down(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "down"]).map(drop)
    }

    /// Start `argv` in the background inside the namespace; stdout and stderr go to a log file in the
    /// lab's temp dir. Killed when the returned [`Proc`] drops.
    pub fn spawn(&self, argv: &[&str]) -> Result<Proc> {
        let prog = argv
            .first()
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .context("empty command")?;
        let log = self.file(prog, "log");
        self.spawn_log(argv, &log)
    }

    /// [`Netns::spawn`] appending to the given log file (e.g. to keep one log across restarts).
    pub fn spawn_log(&self, argv: &[&str], log: &Path) -> Result<Proc> {
        Proc::spawn(&self.exec_argv(argv)?, log, self.shared.keep_flag())
    }

    /// A fresh path `{lab dir}/{short}-{stem}.{n}.{ext}` for a config, socket or log of this namespace.
    pub fn file(&self, stem: &str, ext: &str) -> PathBuf {
        self.shared.file(&format!("{}-{stem}", self.short), ext)
    }

    /// Run `f` on a fresh OS thread that has entered this namespace, and return its result. Sockets
    /// created on that thread belong to the namespace. Build a current-thread tokio runtime inside `f`
    /// (or use [`Netns::block_on`]); never setns a tokio worker. A panic in `f` is resumed here.
    pub fn in_ns<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.open()?;
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name(format!("ns-{}", self.short))
                .spawn_scoped(s, move || -> Result<T> {
                    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                        .context("setns(CLONE_NEWNET)")?;
                    Ok(f())
                })
                .context("spawning namespace thread")?;
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
        .with_context(|| format!("in namespace {}", self.name))
    }

    /// Run an async block on a current-thread tokio runtime inside the namespace; the future is created
    /// on that thread, so it need not be `Send`.
    pub fn block_on<F, Fut>(&self, f: F) -> Result<Fut::Output>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future,
        Fut::Output: Send,
    {
        self.in_ns(|| -> Result<Fut::Output> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building tokio runtime")?;
            Ok(rt.block_on(f()))
        })?
    }

    /// Like [`Netns::in_ns`] but in the background: returns the thread's handle at once. Keep the
    /// namespace alive (the lab) while the thread runs.
    pub fn thread<T, F>(&self, name: &str, f: F) -> Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let fd = self.open()?;
        let ns = self.name.clone();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                if let Err(e) = nix::sched::setns(fd, CloneFlags::CLONE_NEWNET) {
                    panic!("setns into {ns}: {e}");
                }
                f()
            })
            .context("spawning namespace thread")
    }

    fn open(&self) -> Result<std::fs::File> {
        std::fs::File::open(self.path())
            .with_context(|| format!("opening {} (namespace gone?)", self.path().display()))
    }

    /// Whether the namespace still exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }
}

/// A bridged L2 segment (its own namespace with bridge `br0`); see [`Lab::segment`].
#[derive(Debug)]
pub struct Segment {
    ns: Netns,
    ports: AtomicUsize,
}

impl Segment {
    /// The namespace holding the bridge (for `tcpdump`, link flaps, ...).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The segment's name as given to [`Lab::segment`].
    pub fn name(&self) -> &str {
        self.ns.short()
    }

    /// Connect `ns` to the segment through a veth whose end in `ns` is `ifname`, up, with `addrs`
    /// (v6 ones `nodad`). Returns the name of the bridge-side port (`{n}{ns-short}`, at most 15 bytes),
    /// which can be set down in [`Segment::netns`] to cut `ns` off.
    pub fn attach(&self, ns: &Netns, ifname: &str, addrs: &[&str]) -> Result<String> {
        let n = self.ports.fetch_add(1, Ordering::Relaxed);
        let mut port = format!("{n}{}", ns.short());
        port.truncate(15);
        self.ns.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", &ns.name,
        ])?;
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"])?;
        for a in addrs {
            ns.addr(ifname, a)?;
        }
        ns.up(ifname)?;
        Ok(port)
    }
}

/// Names of the namespaces currently present whose names begin with `prefix`.
pub fn list_netns(prefix: &str) -> Vec<String> {
    netns::list(prefix)
}

/// Handles are shared with threads that run inside the namespaces.
#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Lab>();
    is::<Netns>();
    is::<Segment>();
}

#[cfg(test)]
mod tests {
    #[test]
    fn lab_prefix_of_names() {
        assert_eq!(super::lab_prefix("crs1234-bgp-n1"), "crs1234-bgp");
        assert_eq!(super::lab_prefix("crs1234-bgp"), "crs1234-bgp");
    }
}
