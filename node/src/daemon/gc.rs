//! Leaked pod addresses: when an allocation may be given back. Pure.
//!
//! Calico leaves this to a separate controller, and its users lose addresses when a CNI `ADD`
//! dies between allocating and the Pod being recorded, or a Pod is deleted behind the plugin's
//! back. Here each daemon collects the allocations of its own blocks (so two daemons never race
//! for one handle), under these rules:
//! - a handle is leaked while none of its addresses belongs to a Pod that exists (any node's:
//!   a Pod is matched by address, its `status.podIPs` or the CNI annotations);
//! - it is released only after it has stayed leaked for the grace period (a setting, 60 s by
//!   default), which covers a CNI `ADD` in flight: it allocates before the Pod shows the address;
//! - never while the datastore's view may be behind (the API server unreachable, a relist in
//!   progress): Pods created meanwhile would look leaked. Every timer starts again once in sync;
//! - an address of a Pod that exists is never released, whatever its handle.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Handles seen leaked, and since when.
#[derive(Debug, Default)]
pub struct LeakTracker {
    since: BTreeMap<String, Instant>,
}

impl LeakTracker {
    /// Records the allocations of this node's blocks (handle -> addresses) against the addresses
    /// of every Pod that exists, at `now`; `in_sync` is whether the datastore view is complete.
    pub fn observe(
        &mut self,
        allocations: &BTreeMap<String, Vec<IpAddr>>,
        pod_ips: &BTreeSet<IpAddr>,
        in_sync: bool,
        now: Instant,
    ) {
        if !in_sync {
            self.since.clear();
            return;
        }
        let leaked: BTreeSet<&String> = allocations
            .iter()
            .filter(|(_, ips)| !ips.iter().any(|ip| pod_ips.contains(ip)))
            .map(|(h, _)| h)
            .collect();
        self.since.retain(|h, _| leaked.contains(h));
        for h in leaked {
            self.since.entry(h.clone()).or_insert(now);
        }
    }

    /// The handles leaked for at least `grace` at `now`.
    pub fn due(&self, grace: Duration, now: Instant) -> Vec<String> {
        self.since
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= grace)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Forgets a handle (released, or found in use when releasing).
    pub fn forget(&mut self, handle: &str) {
        self.since.remove(handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocs(v: &[(&str, &str)]) -> BTreeMap<String, Vec<IpAddr>> {
        let mut m: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (h, ip) in v {
            m.entry(h.to_string())
                .or_default()
                .push(ip.parse().unwrap());
        }
        m
    }

    fn ips(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    const G: Duration = Duration::from_secs(60);

    #[test]
    fn a_leaked_handle_is_due_after_the_grace_period_only() {
        let t = Instant::now();
        let mut l = LeakTracker::default();
        let a = allocs(&[
            ("k8s-pod-network.aaa", "10.0.0.1"),
            ("k8s-pod-network.bbb", "10.0.0.2"),
        ]);
        l.observe(&a, &ips(&["10.0.0.1"]), true, t);
        assert!(l.due(G, t + G - Duration::from_secs(1)).is_empty());
        l.observe(&a, &ips(&["10.0.0.1"]), true, t + Duration::from_secs(30));
        assert_eq!(l.due(G, t + G), vec!["k8s-pod-network.bbb"]);
    }

    #[test]
    fn a_pod_that_appears_stops_the_clock_and_a_dual_stack_pod_counts_once() {
        let t = Instant::now();
        let mut l = LeakTracker::default();
        let a = allocs(&[("h", "10.0.0.2"), ("h", "fd00::2")]);
        l.observe(&a, &ips(&[]), true, t);
        // The CNI ADD finishes: the Pod shows one of the handle's addresses.
        l.observe(&a, &ips(&["fd00::2"]), true, t + Duration::from_secs(5));
        assert!(l.due(G, t + G * 2).is_empty());
        // Deleted behind our back: the clock starts again from then.
        let later = t + Duration::from_secs(100);
        l.observe(&a, &ips(&[]), true, later);
        assert!(l.due(G, later + G - Duration::from_secs(1)).is_empty());
        assert_eq!(l.due(G, later + G), vec!["h"]);
    }

    #[test]
    fn nothing_is_due_while_the_datastore_is_behind() {
        let t = Instant::now();
        let mut l = LeakTracker::default();
        let a = allocs(&[("h", "10.0.0.2")]);
        l.observe(&a, &ips(&[]), true, t);
        l.observe(&a, &ips(&[]), false, t + G);
        assert!(l.due(G, t + G).is_empty());
        l.observe(&a, &ips(&[]), true, t + G * 2);
        assert!(
            l.due(G, t + G * 2).is_empty(),
            "the clock restarts once in sync"
        );
        assert_eq!(l.due(G, t + G * 3), vec!["h"]);
    }
}
