//! Finding the workspace's built binaries: `calico-node-rs` and `calicoctl-rs` for the lab's
//! daemons and reports, `calico-lab-rs` for the lab command's own test. They are looked for in the
//! profile directory of the running executable (`target/release/` for `calico-lab-rs` and
//! `soak`, one level up from `target/debug/deps/` for a test or bench), so whatever runs the lab
//! uses the binaries built beside it.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

/// The node daemon.
pub const NODE: &str = "calico-node-rs";
/// The CLI, used for per-node peer tables.
pub const CTL: &str = "calicoctl-rs";
/// The lab command.
pub const LAB: &str = "calico-lab-rs";
/// The CNI plugin.
pub const CNI: &str = "calico-cni-rs";

/// `calico-node-rs`, built by `cargo build --workspace --bins`.
pub fn daemon_bin() -> Result<PathBuf> {
    built_bin(NODE)
}

/// `calicoctl-rs`, built next to `calico-node-rs`.
pub fn ctl_bin() -> Result<PathBuf> {
    built_bin(CTL)
}

/// `calico-cni-rs`, built next to `calico-node-rs`.
pub fn cni_bin() -> Result<PathBuf> {
    built_bin(CNI)
}

/// `calico-lab-rs`, built next to `calico-node-rs`.
pub fn lab_bin() -> Result<PathBuf> {
    built_bin(LAB)
}

/// `name` in the directory of the running executable, if it is a file there.
pub fn beside_exe(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.join(name);
    p.is_file().then_some(p)
}

/// `calicoctl-rs` in the directory of `node_bin`, if it exists.
pub fn ctl_next_to(node_bin: &Path) -> Option<PathBuf> {
    let p = node_bin.parent()?.join(CTL);
    p.is_file().then_some(p)
}

/// `name` in the profile directory of the running executable: beside it for a binary
/// (`target/release/soak`), one level up for a test or bench (`target/debug/deps/it-HASH`).
pub fn built_bin(name: &str) -> Result<PathBuf> {
    if let Some(beside) = beside_exe(name) {
        return Ok(beside);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("target dir")?;
    let bin = dir.parent().context("target dir")?.join(name);
    ensure!(
        bin.exists(),
        "{} not built: run `cargo build --workspace --bins` (with `--release` for a release run) first",
        bin.display()
    );
    Ok(bin)
}
