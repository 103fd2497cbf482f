//! Network namespaces: the only way the lab touches networking. Both the lab command's
//! namespaces and the tests' go through these functions.
//!
//! Two naming schemes, both starting with [`FAMILY`] (`crs`):
//! - the lab command's, `PREFIX-NAME` where PREFIX is `crs`, a lowercase letter, lowercase
//!   letters or digits, then `-` ([`crate::plan::check_prefix`]; `crslab-` by default); they live
//!   until `calico-lab-rs down`, which removes every namespace carrying the prefix;
//! - the tests', `crs{PID}-{TAG}-NAME` ([`crate::lab::Lab`]); removed when the test's lab drops,
//!   and swept by the next lab once PID is gone ([`owner_pid`]).
//!
//! The letter after `crs` keeps the two apart: the sweeper never deletes a lab command's
//! namespace, and `down` never deletes a test's.
//!
//! Safety: every link, address, route and sysctl is changed with `ip -n NS` or
//! `ip netns exec NS`, where NS follows one of the two schemes; [`check_ns`] guards that, so a
//! bug cannot reach the root namespace.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::plan::check_prefix;
use crate::proc::{self, ProcId, DEFAULT_TIMEOUT};

/// What every namespace name of the lab starts with.
pub const FAMILY: &str = "crs";
/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// No IPv6 duplicate address detection: addresses are usable at once (the labs plan them unique).
pub const NO_DAD: [(&str, &str); 2] = [
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// Whether `ns` is a lab command namespace: a valid lab prefix, then a name.
pub fn in_lab_ns(ns: &str) -> bool {
    let Some(dash) = ns.find('-') else {
        return false;
    };
    let (prefix, name) = ns.split_at(dash + 1);
    check_prefix(prefix).is_ok() && !name.is_empty() && !ns.contains('/')
}

/// The pid embedded in a test namespace (or temp dir) name `crs{PID}-...`, if the name follows
/// that scheme.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(FAMILY)?;
    let (digits, _) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Refuses any namespace that follows neither scheme (see the module docs).
pub fn check_ns(ns: &str) -> Result<()> {
    let test_ns = owner_pid(ns).is_some() && !ns.contains('/') && !ns.contains("..");
    if !in_lab_ns(ns) && !test_ns {
        bail!("lab: refusing to act on namespace {ns:?} (not a {FAMILY}*-* lab namespace)");
    }
    Ok(())
}

/// `ip -n NS ARGS...`.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    check_ns(ns)?;
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    proc::run(&argv, DEFAULT_TIMEOUT)
}

/// `ip -n NS -batch -` with one command per line.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    check_ns(ns)?;
    let script = lines.join("\n") + "\n";
    proc::run_stdin(
        &["ip", "-n", ns, "-batch", "-"],
        script.as_bytes(),
        DEFAULT_TIMEOUT,
    )
    .map(drop)
    .with_context(|| format!("in namespace {ns}:\n{script}"))
}

/// `ip netns exec NS ARGV...` as an argument vector (checked).
pub fn exec_argv<'a>(ns: &'a str, argv: &[&'a str]) -> Result<Vec<&'a str>> {
    check_ns(ns)?;
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    Ok(full)
}

/// Runs `argv` inside `ns` and returns its output whatever its exit status.
pub fn exec(ns: &str, argv: &[&str], timeout: Duration) -> Result<std::process::Output> {
    proc::output(&exec_argv(ns, argv)?, None, timeout)
}

/// Sets sysctls inside `ns`, with one process.
pub fn sysctls(ns: &str, kv: &[(&str, &str)]) -> Result<()> {
    let pairs: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut argv = vec!["sysctl", "-q", "-w"];
    argv.extend(pairs.iter().map(String::as_str));
    proc::run(&exec_argv(ns, &argv)?, DEFAULT_TIMEOUT).map(drop)
}

/// Creates namespace `ns` with `lo` up.
pub fn add(ns: &str) -> Result<()> {
    check_ns(ns)?;
    proc::run(&["ip", "netns", "add", ns], DEFAULT_TIMEOUT)?;
    ip(ns, &["link", "set", "lo", "up"]).map(drop)
}

/// Deletes namespace `ns` (its links go with it).
pub fn del(ns: &str) -> Result<()> {
    check_ns(ns)?;
    proc::run(&["ip", "netns", "del", ns], DEFAULT_TIMEOUT).map(drop)
}

/// SIGKILLs every process inside `ns` (never this one) and deletes it. Best effort.
pub fn kill_and_del(ns: &str) {
    for pid in pids(ns) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    if let Err(e) = del(ns) {
        eprintln!("lab: deleting namespace {ns}: {e:#}");
    }
}

/// Processes running inside `ns`, never this one.
pub fn pids(ns: &str) -> Vec<u32> {
    if check_ns(ns).is_err() {
        return Vec::new();
    }
    let me = std::process::id();
    proc::run(&["ip", "netns", "pids", ns], DEFAULT_TIMEOUT)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me)
        .collect()
}

/// Names of the namespaces present whose names begin with `prefix`, sorted.
pub fn list(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Every existing lab command namespace named with the lab prefix `prefix`.
pub fn lab_namespaces(prefix: &str) -> Vec<String> {
    list(prefix).into_iter().filter(|n| in_lab_ns(n)).collect()
}

/// Runs `f` on a fresh OS thread that entered namespace `ns` (a lab or test namespace, see
/// [`check_ns`]) and returns its result; sockets made on that thread, and threads it spawns,
/// belong to `ns`. A panic in `f` is resumed here.
pub fn in_named_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    check_ns(ns)?;
    let path = Path::new(NETNS_DIR).join(ns);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("ns-{ns}"))
            .spawn_scoped(s, move || -> Result<T> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns(CLONE_NEWNET)")?;
                Ok(f())
            })
            .context("spawning namespace thread")?;
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
    .with_context(|| format!("in namespace {ns}"))
}

/// Starts `argv` inside `ns` in a session of its own, so that it outlives the caller (the lab
/// command's daemons and ToR); stdin from /dev/null, stdout and stderr appended to `log`.
/// `setsid` and `ip netns exec` both exec in place, so the pid returned is the command's.
pub fn spawn_detached(ns: &str, argv: &[&str], log: &Path) -> Result<ProcId> {
    proc::spawn_session(&exec_argv(ns, argv)?, log).with_context(|| format!("in {ns}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_namespaces() {
        assert!(in_lab_ns("crslab-node1"));
        assert!(!in_lab_ns("crslab-"));
        assert!(in_lab_ns("crsut1-x"));
        assert!(!in_lab_ns("crs123-x"), "the tests' crs{{PID}}- names");
        assert!(!in_lab_ns("crs-x"));
        assert!(!in_lab_ns("lab-x"));
        assert!(!in_lab_ns("crslab-../x"));
        assert!(ip("default", &["link"]).is_err());
        assert!(del("other").is_err());
        assert!(check_ns("crs123-bgp-n1").is_ok());
        assert!(check_ns("crs123-../x").is_err());
        assert!(check_ns("cni-1234").is_err());
    }

    #[test]
    fn owner_pid_parses_the_scheme_only() {
        assert_eq!(owner_pid("crs1234-bgp-n1"), Some(1234));
        assert_eq!(owner_pid("crs1-x"), Some(1));
        assert_eq!(owner_pid("crs-bgp-n1"), None);
        assert_eq!(owner_pid("crsx12-a"), None);
        assert_eq!(owner_pid("cni-1234"), None);
        assert_eq!(owner_pid("crs1234"), None);
        assert_eq!(owner_pid("crslab-node1"), None);
    }
}
