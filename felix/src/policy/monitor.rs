//! Drift detection by `nft monitor`: changes to our table made by anyone but us.
//!
//! `nft monitor` (a child process in the caller's network namespace) prints one line per ruleset
//! change and closes each kernel transaction with
//! `# new generation N by process PID (COMM)`. [`Tracker`] (pure, unit-tested) folds those lines:
//! a transaction with at least one event on `inet <table>` whose PID is not one of our own `nft -f`
//! runs ([`OwnPids`]) is drift. [`NftMonitor`] owns the child and a reader thread that feeds the
//! tracker and calls back on drift or when the child exits (then the owner restarts it and
//! re-applies, since events may have been missed).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use super::driver::OwnPids;
use super::error::PolicyError;
use super::PolicyCfg;

/// What the monitor reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorEvent {
    /// Someone else changed our table.
    Drift {
        /// PID and command of the process that did it (if nft printed them).
        by: String,
        /// The first event lines of that transaction.
        sample: Vec<String>,
    },
    /// The monitor process ended; events may have been missed.
    Exited(String),
}

/// Folds `nft monitor` lines into drift decisions.
#[derive(Debug)]
pub struct Tracker {
    table: String,
    own: OwnPids,
    touched: bool,
    sample: Vec<String>,
}

impl Tracker {
    /// A tracker for `inet <table>`.
    pub fn new(table: &str, own: OwnPids) -> Tracker {
        Tracker {
            table: table.to_string(),
            own,
            touched: false,
            sample: Vec::new(),
        }
    }

    /// Feed one line; returns a drift event when a foreign transaction on our table completes.
    pub fn line(&mut self, line: &str) -> Option<MonitorEvent> {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# new generation") {
            let pid = rest
                .split_once("by process ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|p| p.parse::<u32>().ok());
            let touched = std::mem::take(&mut self.touched);
            let sample = std::mem::take(&mut self.sample);
            // Without a PID (very old kernels) a change cannot be attributed: treat it as foreign.
            let ours = pid.is_some_and(|p| self.own.take(p));
            return (touched && !ours).then(|| MonitorEvent::Drift {
                by: rest
                    .split_once("by process ")
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_else(|| "unknown process".to_string()),
                sample,
            });
        }
        let toks: Vec<&str> = line.split_whitespace().take(5).collect();
        let ours = toks
            .windows(2)
            .any(|w| w[0] == "inet" && w[1] == self.table);
        if ours {
            self.touched = true;
            if self.sample.len() < 5 {
                self.sample.push(line.chars().take(200).collect());
            }
        }
        None
    }
}

/// The `nft monitor` child and its reader thread; killed and joined on drop.
#[derive(Debug)]
pub struct NftMonitor {
    child: Child,
    reader: Option<JoinHandle<()>>,
}

impl NftMonitor {
    /// Start `nft monitor` in the calling thread's network namespace; `on_event` runs on the reader
    /// thread.
    pub fn spawn(
        cfg: &PolicyCfg,
        own: OwnPids,
        on_event: impl Fn(MonitorEvent) + Send + 'static,
    ) -> Result<NftMonitor, PolicyError> {
        let mut child = Command::new(&cfg.nft)
            .arg("monitor")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| PolicyError::Spawn {
                cmd: format!("{} monitor", cfg.nft.display()),
                source,
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut tracker = Tracker::new(&cfg.table, own);
        let reader = std::thread::Builder::new()
            .name("nft-monitor".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) => break on_event(MonitorEvent::Exited("end of output".into())),
                        Ok(_) => {
                            if let Some(ev) = tracker.line(&line) {
                                on_event(ev);
                            }
                        }
                        Err(e) => break on_event(MonitorEvent::Exited(e.to_string())),
                    }
                }
            })
            .map_err(|source| PolicyError::Spawn {
                cmd: "nft monitor reader thread".into(),
                source,
            })?;
        Ok(NftMonitor {
            child,
            reader: Some(reader),
        })
    }

    /// Whether the child still runs.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_transactions_on_our_table_are_drift() {
        let own = OwnPids::default();
        let mut t = Tracker::new("calico-rs", own.clone());
        // Someone flushes our table.
        assert_eq!(
            t.line("delete rule inet calico-rs fwd-egress handle 19"),
            None
        );
        let ev = t.line("# new generation 4 by process 18876 (nft)").unwrap();
        assert_eq!(
            ev,
            MonitorEvent::Drift {
                by: "18876 (nft)".into(),
                sample: vec!["delete rule inet calico-rs fwd-egress handle 19".into()]
            }
        );
        // Another table's change is not ours to care about.
        t.line("add rule ip kube-proxy chain ip daddr 10.0.0.1 accept");
        assert_eq!(t.line("# new generation 5 by process 77 (iptables)"), None);
        // A table whose name merely starts like ours.
        t.line("add table inet calico-rs-other");
        assert_eq!(t.line("# new generation 6 by process 78 (nft)"), None);
        // Our own apply.
        own.push(4242);
        t.line("add element inet calico-rs sel-x-v4 { 10.0.0.1 }");
        assert_eq!(t.line("# new generation 7 by process 4242 (nft)"), None);
        // The same pid again is not ours any more (each run commits once).
        t.line("delete table inet calico-rs");
        assert!(t.line("# new generation 8 by process 4242 (nft)").is_some());
    }
}
