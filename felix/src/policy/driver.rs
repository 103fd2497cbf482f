//! The nftables driver: runs `nft -f -`, remembers what it applied, sends differences.
//!
//! [`NftDriver`] is the only code here that runs `nft`. It keeps the [`Ruleset`] it last applied
//! successfully (our model of the kernel: the table is ours alone, so nothing else should change
//! it, and [`super::monitor`] tells us when something does); [`NftDriver::apply`] renders the
//! difference to the new ruleset and runs it as one batch, or the whole table when it knows nothing
//! (first run, after drift, after a failure). If an incremental batch is refused — the kernel no
//! longer matches our model — it falls back to a full replace in the same call.
//!
//! Every `nft` it starts is recorded in [`OwnPids`] before the script is written to it, so the
//! monitor can tell our transactions from anyone else's. `nft` runs in the network namespace of the
//! calling thread.

use std::collections::VecDeque;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::PolicyError;
use super::ir::Ruleset;
use super::netlink::{self, BatchError, ElementSocket};
use super::render::{
    element_changes, render_diff, render_full, DiffStats, FWD_EGRESS, FWD_EGRESS_RULES, MARKER,
};
use super::PolicyCfg;

/// How a ruleset was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyKind {
    /// Nothing differed; no `nft` run.
    Noop,
    /// Only the difference was sent.
    Incremental,
    /// The table was replaced whole.
    Full,
}

/// What one [`NftDriver::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// Kind of apply.
    pub kind: ApplyKind,
    /// Wall time, including the `nft` run.
    pub duration: Duration,
    /// Bytes of script sent.
    pub script_bytes: usize,
    /// Size of the change, for incremental applies.
    pub diff: Option<DiffStats>,
    /// Why an incremental apply became a full one.
    pub fallback: Option<String>,
    /// The change was set elements only and went as one nfnetlink batch instead of `nft -f`.
    pub netlink: bool,
}

/// PIDs of our recent `nft` runs, shared with the monitor.
#[derive(Clone, Debug, Default)]
pub struct OwnPids(Arc<Mutex<VecDeque<u32>>>);

impl OwnPids {
    const KEEP: usize = 256;

    pub(crate) fn push(&self, pid: u32) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= Self::KEEP {
            q.pop_front();
        }
        q.push_back(pid);
    }

    /// Forget every run: their notices will never be read (the reader was not subscribed).
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Whether `pid` is one of our runs (and forget it: each run commits at most once).
    pub fn take(&self, pid: u32) -> bool {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match q.iter().position(|p| *p == pid) {
            Some(i) => {
                q.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Runs `nft` and tracks what is applied. See the module docs.
#[derive(Debug)]
pub struct NftDriver {
    cfg: PolicyCfg,
    applied: Option<Ruleset>,
    own: OwnPids,
    /// Long-lived socket for element-only changes (opened on first use, dropped on error).
    elements: Option<ElementSocket>,
}

impl NftDriver {
    /// A driver that knows nothing yet: its first apply replaces the table.
    pub fn new(cfg: PolicyCfg) -> NftDriver {
        NftDriver {
            cfg,
            applied: None,
            own: OwnPids::default(),
            elements: None,
        }
    }

    /// The configuration.
    pub fn cfg(&self) -> &PolicyCfg {
        &self.cfg
    }

    /// PIDs of our `nft` runs (for the monitor).
    pub fn own_pids(&self) -> OwnPids {
        self.own.clone()
    }

    /// The ruleset last applied successfully, if the driver still trusts it.
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    /// Stop trusting our model of the kernel: the next apply replaces the table.
    pub fn forget(&mut self) {
        self.applied = None;
    }

    /// Make the kernel hold `rs`: incrementally if possible, else whole.
    pub fn apply(&mut self, rs: &Ruleset) -> Result<ApplyReport, PolicyError> {
        let start = Instant::now();
        let Some(old) = &self.applied else {
            return self.apply_full(rs, None);
        };
        if self.cfg.netlink_elements {
            if let Some(changes) = element_changes(old, rs).filter(|c| !c.is_empty()) {
                match self.apply_elements(&changes) {
                    Ok(bytes) => {
                        self.applied = Some(rs.clone());
                        let n = |f: fn(&netlink::ElemChange) -> usize| changes.iter().map(f).sum();
                        return Ok(ApplyReport {
                            kind: ApplyKind::Incremental,
                            duration: start.elapsed(),
                            script_bytes: bytes,
                            diff: Some(DiffStats {
                                elements_added: n(|c| c.add.len()),
                                elements_removed: n(|c| c.del.len()),
                                ..DiffStats::default()
                            }),
                            fallback: None,
                            netlink: true,
                        });
                    }
                    Err(e) => {
                        // Refused, timed out or answered oddly: either nothing was applied or
                        // we no longer know; replacing the table is right in both cases.
                        tracing::warn!(error = %e, "element batch failed; replacing table");
                        self.elements = None;
                        self.applied = None;
                        return self.apply_full(rs, Some(format!("element batch: {e}")));
                    }
                }
            }
        }
        match render_diff(&self.cfg, old, rs) {
            Ok(None) => Ok(ApplyReport {
                kind: ApplyKind::Noop,
                duration: start.elapsed(),
                script_bytes: 0,
                diff: None,
                fallback: None,
                netlink: false,
            }),
            Ok(Some((script, diff))) => match self.run_script("incremental apply", &script) {
                Ok(()) => {
                    self.applied = Some(rs.clone());
                    Ok(ApplyReport {
                        kind: ApplyKind::Incremental,
                        duration: start.elapsed(),
                        script_bytes: script.len(),
                        diff: Some(diff),
                        fallback: None,
                        netlink: false,
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "incremental policy apply refused; replacing table");
                    self.applied = None;
                    self.apply_full(rs, Some(e.to_string()))
                }
            },
            Err(why) => self.apply_full(rs, Some(why.0)),
        }
    }

    /// Replace the table with `rs` in one batch.
    pub fn apply_full(
        &mut self,
        rs: &Ruleset,
        fallback: Option<String>,
    ) -> Result<ApplyReport, PolicyError> {
        let start = Instant::now();
        let script = render_full(&self.cfg, rs);
        self.applied = None;
        self.run_script("full apply", &script)?;
        self.applied = Some(rs.clone());
        Ok(ApplyReport {
            kind: ApplyKind::Full,
            duration: start.elapsed(),
            script_bytes: script.len(),
            diff: None,
            fallback,
            netlink: false,
        })
    }

    /// Send element changes as one nfnetlink transaction; returns the batch size.
    fn apply_elements(&mut self, changes: &[netlink::ElemChange]) -> Result<usize, BatchError> {
        if self.elements.is_none() {
            let sock = ElementSocket::open().map_err(|source| BatchError::Io {
                what: "opening",
                source,
            })?;
            self.elements = Some(sock);
        }
        // The kernel names the committing *thread* in its generation notice.
        if let Some(tid) = current_tid() {
            self.own.push(tid);
        }
        let sock = self.elements.as_mut().expect("opened above");
        sock.apply(&self.cfg.table, changes)
    }

    /// Whether our table is intact: its dispatch base chain exists and holds exactly its rules,
    /// the marked one among them. One filtered netlink dump (see [`super::netlink`]):
    /// microseconds however big the table is.
    pub fn probe(&self) -> Result<bool, PolicyError> {
        let r = netlink::chain_rules(&self.cfg.table, FWD_EGRESS, MARKER)
            .map_err(PolicyError::Probe)?;
        Ok(r.marker && r.rules == FWD_EGRESS_RULES)
    }

    /// Delete our table (if present). For shutdown when the node stops enforcing policy.
    pub fn delete_table(&mut self) -> Result<(), PolicyError> {
        let t = &self.cfg.table;
        self.applied = None;
        self.run_script(
            "delete table",
            &format!("add table inet {t}\ndelete table inet {t}\n"),
        )
    }

    /// Run `script` with `nft -f -` as one transaction.
    pub fn run_script(&self, what: &'static str, script: &str) -> Result<(), PolicyError> {
        let cmd = format!("{} -f -", self.cfg.nft.display());
        let mut child = Command::new(&self.cfg.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| PolicyError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        // Recorded before nft can commit: nft reads all of stdin first.
        self.own.push(child.id());
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means nft exited early; its status and stderr say why.
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| PolicyError::Spawn { cmd, source })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut lines: Vec<&str> = stderr.lines().take(12).collect();
        if stderr.lines().count() > 12 {
            lines.push("...");
        }
        Err(PolicyError::Nft {
            what,
            status: out.status.to_string(),
            stderr: lines.join("\n"),
        })
    }
}

/// The calling thread's id (what the kernel reports as the committing "process").
fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pids_are_taken_once_and_bounded() {
        let o = OwnPids::default();
        o.push(10);
        assert!(o.take(10));
        assert!(!o.take(10));
        for p in 0..1000 {
            o.push(p);
        }
        assert!(!o.take(1), "old pids are forgotten");
        assert!(o.take(999));
    }
}
