//! felix's real-kernel tests: one binary, a module per area. They need root (they create network
//! namespaces and program nftables inside them) and never touch the root namespace.
//!
//! Namespaces are named `crs{PID}-fx{N}-{name}`, the scheme of `calico_tests::lab`, so a run
//! killed before its guards ran is swept by the next run here or by any lab of the `tests` crate.

mod element_batch;
mod endpoint_to_host;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace of this binary's tests (`crs{PID}-fx`).
fn prefix() -> String {
    format!("crs{}-fx", std::process::id())
}

fn run(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| argv.join(" "))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Delete `crs{PID}-fx*` namespaces whose PID is gone (left by a killed run). Nothing else.
fn sweep() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((pid, rest)) = name.strip_prefix("crs").and_then(|r| r.split_once('-')) else {
            continue;
        };
        let dead =
            pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if dead && rest.starts_with("fx") {
            let _ = run(&["ip", "netns", "del", &name]);
        }
    }
}

/// A fresh network namespace with `lo` up, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `crs{PID}-fx{N}-{name}`.
    pub fn new(name: &str) -> Result<Netns> {
        static N: AtomicUsize = AtomicUsize::new(0);
        sweep();
        let full = format!("{}{}-{name}", prefix(), N.fetch_add(1, Ordering::Relaxed));
        run(&["ip", "netns", "add", &full])?;
        let ns = Netns { name: full };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a command inside the namespace; its stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        run(&[&["ip", "netns", "exec", &self.name][..], argv].concat())
    }

    /// Run `f` on a thread that entered the namespace (sockets it opens and processes it starts
    /// live there).
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let fd = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        std::thread::scope(|s| {
            let h = s.spawn(move || -> Result<T> {
                nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
        .with_context(|| format!("in namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(&["ip", "netns", "del", &self.name]) {
            eprintln!("deleting namespace {}: {e:#}", self.name);
        }
    }
}
