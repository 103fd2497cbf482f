//! The lab's only contact with the system: running `ip`/`birdc`/`ping` with deadlines, network
//! namespaces (`ip netns`), detached daemons and signals.
//!
//! Safety: every link, address, route and sysctl is changed with `ip -n NS` or
//! `ip netns exec NS`, where NS starts with a lab prefix ([`super::plan::check_prefix`]);
//! [`in_lab_ns`] guards that, so a bug
//! cannot reach the root namespace. Processes are identified by (pid, start time), so a recycled
//! pid is never signalled.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::plan::{check_prefix, PREFIX_FAMILY};

const NETNS_DIR: &str = "/run/netns";
/// Deadline of ordinary commands (`ip`, `birdc`, `sysctl`).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `argv` with `stdin` fed to it; its stdout on success, else an error with its stderr.
/// Killed after `timeout`.
pub fn run_input(argv: &[&str], stdin: Option<&str>, timeout: Duration) -> Result<String> {
    let out = output(argv, stdin.map(str::as_bytes), timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv`; see [`run_input`].
pub fn run(argv: &[&str]) -> Result<String> {
    run_input(argv, None, CMD_TIMEOUT)
}

/// Runs `argv` and returns its exit status and output whatever they are (an error only if it
/// could not be started or timed out: then it is SIGKILLed). `stdin` is written from a thread of
/// its own, so a command that does not read all of it cannot block us. The test crate runs its
/// commands through this too.
pub fn output(
    argv: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<std::process::Output> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", argv.join(" ")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r.with_context(|| format!("running `{}`", argv.join(" "))),
        Err(_) => {
            // Not reaped yet (the waiter still holds it), so the pid cannot have been reused.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = rx.recv();
            bail!("`{}` timed out after {timeout:?}", argv.join(" "))
        }
    }
}

/// Whether `ns` is a lab namespace (the only kind this module changes): a valid lab prefix, then a
/// name.
pub fn in_lab_ns(ns: &str) -> bool {
    let Some(dash) = ns.find('-') else {
        return false;
    };
    let (prefix, name) = ns.split_at(dash + 1);
    check_prefix(prefix).is_ok() && !name.is_empty() && !ns.contains('/')
}

fn check_ns(ns: &str) -> Result<()> {
    if !in_lab_ns(ns) {
        bail!("lab: refusing to act on namespace {ns:?} (not a {PREFIX_FAMILY}*-* lab namespace)");
    }
    Ok(())
}

/// `ip -n NS ARGS...`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    check_ns(ns)?;
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    run(&argv)
}

/// `ip -n NS -batch -` with one command per line.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    check_ns(ns)?;
    let script = lines.join("\n") + "\n";
    run_input(&["ip", "-n", ns, "-batch", "-"], Some(&script), CMD_TIMEOUT)
        .map(drop)
        .with_context(|| format!("in namespace {ns}:\n{script}"))
}

/// `ip netns exec NS ARGV...`.
pub fn exec(ns: &str, argv: &[&str], timeout: Duration) -> Result<std::process::Output> {
    check_ns(ns)?;
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    output(&full, None, timeout)
}

/// Sets sysctls inside `ns`.
pub fn sysctls(ns: &str, kv: &[(&str, &str)]) -> Result<()> {
    check_ns(ns)?;
    let pairs: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut argv = vec!["ip", "netns", "exec", ns, "sysctl", "-q", "-w"];
    argv.extend(pairs.iter().map(String::as_str));
    run(&argv).map(drop)
}

/// Creates namespace `ns` with `lo` up.
pub fn netns_add(ns: &str) -> Result<()> {
    check_ns(ns)?;
    run(&["ip", "netns", "add", ns])?;
    ip(ns, &["link", "set", "lo", "up"]).map(drop)
}

/// Every existing namespace named with the lab prefix `prefix`.
pub fn lab_namespaces(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && in_lab_ns(n))
        .collect();
    v.sort();
    v
}

/// Processes running inside `ns`, never this one.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    if check_ns(ns).is_err() {
        return Vec::new();
    }
    let me = std::process::id();
    run(&["ip", "netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// Deletes namespace `ns` (its links go with it).
pub fn netns_del(ns: &str) -> Result<()> {
    check_ns(ns)?;
    run(&["ip", "netns", "del", ns]).map(drop)
}

/// A process the lab started, identified so that a recycled pid is never mistaken for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot).
    pub start_time: u64,
}

/// (state, start time) from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((state, fields.get(19)?.parse().ok()?))
}

impl ProcId {
    /// The live process `pid` (now).
    pub fn of(pid: u32) -> Option<ProcId> {
        stat(pid).map(|(_, start_time)| ProcId { pid, start_time })
    }

    /// Running (not exited, not a zombie) and still the same process.
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((s, t)) if t == self.start_time && s != 'Z' && s != 'X')
    }

    pub fn signal(&self, sig: Signal) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid as i32), sig);
        }
    }
}

/// Starts `argv` inside `ns` in a session of its own (so it outlives the caller and its
/// terminal), stdin from /dev/null, stdout and stderr appended to `log`. `setsid` and
/// `ip netns exec` both exec in place, so the pid returned is the daemon's.
pub fn spawn_detached(ns: &str, argv: &[&str], log: &Path) -> Result<ProcId> {
    check_ns(ns)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = file.try_clone()?;
    let child = Command::new("setsid")
        .args(["ip", "netns", "exec", ns])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting `{}` in {ns}", argv.join(" ")))?;
    let pid = child.id();
    // Not reaped here: if it dies while we run, it stays a zombie, which `alive` treats as dead;
    // when we exit, init adopts and reaps it.
    drop(child);
    ProcId::of(pid).with_context(|| format!("`{}` in {ns} exited at once", argv.join(" ")))
}

/// SIGTERM to each, up to `grace` for them to exit, then SIGKILL to the rest. Returns how many
/// were running.
pub fn stop_all(procs: &[ProcId], grace: Duration) -> usize {
    let running: Vec<&ProcId> = procs.iter().filter(|p| p.alive()).collect();
    for p in &running {
        p.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while running.iter().any(|p| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in running.iter().filter(|p| p.alive()) {
        p.signal(Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while running.iter().any(|p| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.len()
}

/// Whether `name` is an executable on `PATH` (or a path to one).
pub fn have(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return exec(Path::new(name));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| exec(&d.join(name))))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_namespaces() {
        assert!(in_lab_ns("crslab-node1"));
        assert!(!in_lab_ns("crslab-"));
        assert!(in_lab_ns("crsut1-x"));
        assert!(!in_lab_ns("crs123-x"), "the test crate's crs{{PID}}- names");
        assert!(!in_lab_ns("crs-x"));
        assert!(!in_lab_ns("lab-x"));
        assert!(!in_lab_ns("crslab-../x"));
        assert!(ip("default", &["link"]).is_err());
        assert!(netns_del("other").is_err());
    }

    #[test]
    fn commands_and_deadlines() {
        assert_eq!(run_input(&["cat"], Some("hi"), CMD_TIMEOUT).unwrap(), "hi");
        let e = run(&["sh", "-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert!(format!("{e:#}").contains("oops"), "{e:#}");
        let t = Instant::now();
        assert!(run_input(&["sleep", "5"], None, Duration::from_millis(200)).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn process_identity() {
        let me = ProcId::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!other.alive());
        assert!(have("sh") && !have("no-such-binary-here"));
    }
}
