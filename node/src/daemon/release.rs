//! When a node may free another node's IPAM blocks: the decision as a pure function.
//!
//! Freeing blocks is the one IPAM step that can hand one address to two pods (the old owner may
//! still be running them), so it needs proof that the owner is gone, not a hint:
//! - the Node was in a snapshot and is no longer: deleted, not unparsable (a document that stops
//!   parsing keeps its last good version, see `datastore::file`), and not merely unseen yet (a new
//!   node claims blocks before its Node reaches every other daemon's snapshot);
//! - it has stayed deleted for the grace period (a Node re-created by an operator or a restore
//!   within that time keeps its blocks);
//! - never this node itself, whatever its Node document says;
//! - a block holding an address of a Pod that still exists is kept (checked by the caller inside
//!   the IPAM lock, see `Ipam::release_node`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Tracks nodes that disappeared from the datastore, and since when.
#[derive(Debug, Default)]
pub struct ReleaseTracker {
    /// Every node name seen in a snapshot since start.
    seen: BTreeSet<String>,
    /// Seen, now absent, and since when.
    gone_since: BTreeMap<String, Instant>,
}

impl ReleaseTracker {
    /// Records the nodes of a snapshot at `now`.
    pub fn observe<'a>(&mut self, present: impl IntoIterator<Item = &'a String>, now: Instant) {
        let present: BTreeSet<&String> = present.into_iter().collect();
        for n in &present {
            self.seen.insert((*n).clone());
        }
        self.gone_since.retain(|n, _| !present.contains(n));
        for n in &self.seen {
            if !present.contains(n) {
                self.gone_since.entry(n.clone()).or_insert(now);
            }
        }
    }

    /// The owners among `owners` (block affinities) whose blocks may be released at `now`.
    pub fn due<'a>(
        &self,
        owners: impl IntoIterator<Item = &'a String>,
        me: &str,
        grace: Duration,
        now: Instant,
    ) -> BTreeSet<String> {
        owners
            .into_iter()
            .filter(|n| n.as_str() != me)
            .filter(|n| {
                self.gone_since
                    .get(n.as_str())
                    .is_some_and(|t| now.saturating_duration_since(*t) >= grace)
            })
            .cloned()
            .collect()
    }

    /// How long until the next node becomes due (for logs and tests), if any is waiting.
    pub fn waiting(&self, me: &str) -> Vec<&str> {
        self.gone_since
            .keys()
            .filter(|n| n.as_str() != me)
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_seen_deleted_other_nodes_after_the_grace_period() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut r = ReleaseTracker::default();
        r.observe(&names(&["me", "a", "b"]), t0);
        let owners = names(&["me", "a", "b", "never-seen"]);
        assert!(r.due(&owners, "me", grace, t0).is_empty());

        // a and me vanish; never-seen was never in a snapshot.
        r.observe(&names(&["b"]), t0 + Duration::from_secs(1));
        assert!(r
            .due(&owners, "me", grace, t0 + Duration::from_secs(60))
            .is_empty());
        let due = r.due(&owners, "me", grace, t0 + Duration::from_secs(61));
        assert_eq!(due.into_iter().collect::<Vec<_>>(), ["a"]);
        assert_eq!(r.waiting("me"), ["a"]);
    }

    #[test]
    fn a_node_that_comes_back_restarts_the_clock() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut r = ReleaseTracker::default();
        let owners = names(&["a"]);
        r.observe(&names(&["a"]), t0);
        r.observe(&names(&[]), t0 + Duration::from_secs(10));
        r.observe(&names(&["a"]), t0 + Duration::from_secs(50));
        r.observe(&names(&[]), t0 + Duration::from_secs(55));
        assert!(r
            .due(&owners, "me", grace, t0 + Duration::from_secs(100))
            .is_empty());
        assert_eq!(
            r.due(&owners, "me", grace, t0 + Duration::from_secs(115))
                .len(),
            1
        );
    }
}
