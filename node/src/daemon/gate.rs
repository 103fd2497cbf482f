//! Policy before reachability: which local endpoints may have a route.
//!
//! A new pod's route goes into the kernel only after the nftables rules that apply to it are
//! there, so no packet reaches a pod its policy isolates (fail closed). The gate follows the
//! policy manager's sequence numbers:
//! - every policy input sent is recorded with the host-side interfaces of its endpoints;
//! - when an input is in the kernel (`seq_applied`), its endpoints become the routable set;
//! - an input that failed (`seq_done` without `seq_applied`) changes nothing: endpoints that had
//!   routes keep them, new ones wait, and readiness says why;
//! - until the first input since start is applied, felix gets no route input at all, so a
//!   restarted daemon leaves the previous run's pod routes (and rules) in place.
//!
//! Pure: the daemon feeds it what it sent and what the policy manager reported.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use felix::policy::PolicyStatus;

/// See the module doc.
#[derive(Debug, Default)]
pub struct PolicyGate {
    /// Interfaces of the endpoints of each input not yet processed, by sequence number.
    pending: BTreeMap<u64, BTreeSet<String>>,
    /// Endpoints of the newest input in the kernel.
    ready: BTreeSet<String>,
    /// An input has been in the kernel since start.
    opened: bool,
    /// `(seq_applied, drift_repairs)` last seen, to notice the next apply.
    seen: (u64, u64),
    /// When an apply (an input or a drift repair) was last seen to finish.
    applied_at: Option<SystemTime>,
}

impl PolicyGate {
    /// Input `seq` was sent with endpoints on these interfaces.
    pub fn sent(&mut self, seq: u64, ifaces: BTreeSet<String>) {
        self.pending.insert(seq, ifaces);
    }

    /// Follows the manager's status (seen at `now`); true when the routable set changed, or the
    /// gate opened for the first time.
    pub fn progress(&mut self, st: &PolicyStatus, now: SystemTime) -> bool {
        let seen = (st.seq_applied, st.drift_repairs);
        if seen != self.seen && st.last_apply.is_some() {
            self.applied_at = Some(now);
        }
        self.seen = seen;
        let applied = self
            .pending
            .range(..=st.seq_applied)
            .next_back()
            .map(|(s, _)| *s);
        let mut changed = false;
        if let Some(newest) = applied {
            let ready = self.pending.remove(&newest).unwrap_or_default();
            changed = ready != self.ready || !self.opened;
            self.ready = ready;
            self.opened = true;
        }
        // Older inputs, and processed ones that failed, are superseded.
        let done = st.seq_done.max(st.seq_applied);
        self.pending.retain(|s, _| *s > done);
        changed
    }

    /// Whether the endpoint on `iface` may have its route.
    pub fn is_ready(&self, iface: &str) -> bool {
        self.ready.contains(iface)
    }

    /// Whether felix may get route input at all (an input was applied since start).
    pub fn is_open(&self) -> bool {
        self.opened
    }

    /// When the policy manager was last seen to finish an apply.
    pub fn applied_at(&self) -> Option<SystemTime> {
        self.applied_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn status(received: u64, done: u64, applied: u64) -> PolicyStatus {
        PolicyStatus {
            seq_received: received,
            seq_done: done,
            seq_applied: applied,
            last_apply: (applied > 0).then(|| felix::policy::ApplyReport {
                kind: felix::policy::ApplyKind::Noop,
                duration: Default::default(),
                script_bytes: 0,
                diff: None,
                fallback: None,
                netlink: false,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_become_ready_when_their_input_is_applied() {
        let now = SystemTime::now();
        let mut g = PolicyGate::default();
        assert!(!g.is_open());
        g.sent(1, set(&["cali1"]));
        g.sent(2, set(&["cali1", "cali2"]));
        assert!(!g.progress(&status(2, 0, 0), now));
        assert!(!g.is_ready("cali1") && !g.is_open());
        // Input 1 applied: cali1 only, and the gate opens.
        assert!(g.progress(&status(2, 1, 1), now));
        assert!(g.is_open() && g.is_ready("cali1") && !g.is_ready("cali2"));
        assert!(g.applied_at().is_some());
        assert!(g.progress(&status(2, 2, 2), now));
        assert!(g.is_ready("cali2"));
    }

    #[test]
    fn a_failed_input_changes_nothing() {
        let now = SystemTime::now();
        let mut g = PolicyGate::default();
        g.sent(1, set(&["cali1"]));
        g.progress(&status(1, 1, 1), now);
        g.sent(2, set(&["cali1", "cali2"]));
        // Input 2 processed, not applied (nft failed): cali2 waits, cali1 keeps its route.
        assert!(!g.progress(&status(2, 2, 1), now));
        assert!(g.is_ready("cali1") && !g.is_ready("cali2"));
        // A later input that succeeds lets it in.
        g.sent(3, set(&["cali1", "cali2"]));
        assert!(g.progress(&status(3, 3, 3), now));
        assert!(g.is_ready("cali2"));
    }

    #[test]
    fn the_first_apply_opens_the_gate_even_with_no_endpoints() {
        let mut g = PolicyGate::default();
        g.sent(1, set(&[]));
        assert!(g.progress(&status(1, 1, 1), SystemTime::now()));
        assert!(g.is_open());
        assert!(!g.progress(&status(1, 1, 1), SystemTime::now()));
    }
}
