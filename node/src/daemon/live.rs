//! Liveness: every owner loop proves it is making progress, and `/liveness` fails when one stops.
//!
//! ```text
//!  daemon loop ─────beat("daemon") every turn (a 500 ms tick at least)──┐
//!  datastore worker ─beat (read by the watchdog from FileDatastore)─────┤
//!  watchdog task, every second: ping speaker, route manager, policy ────┤──> Liveness
//!     (a round trip through each owner's own queue; a reply is a beat)  │      │
//!                                                                       │      v
//!                                      /liveness, NodeSnapshot.live <── stale(bound)
//! ```
//! A loop that has not beaten within [`LIVENESS_BOUND`] is wedged (deadlocked, stuck in a
//! syscall, spinning without taking messages): the daemon reports itself not live so the kubelet
//! restarts it. The bound leaves room for the longest normal step (an `nft` apply of a large
//! ruleset takes about a second) and for the watchdog's own period, so a wedged loop fails
//! `/liveness` within 10 s.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A loop older than this is wedged.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(6);

/// The loops that must make progress.
pub const LOOPS: [&str; 5] = ["daemon", "datastore", "speaker", "routes", "policy"];

/// Last progress of each owner loop.
#[derive(Debug)]
pub struct Liveness {
    beats: Mutex<BTreeMap<&'static str, Instant>>,
}

impl Liveness {
    /// Every loop counts as fresh at `now` (they get [`LIVENESS_BOUND`] to show progress).
    pub fn new(now: Instant) -> Liveness {
        Liveness {
            beats: Mutex::new(LOOPS.iter().map(|l| (*l, now)).collect()),
        }
    }

    /// `name` made progress at `at`.
    pub fn beat(&self, name: &'static str, at: Instant) {
        let mut b = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        let e = b.entry(name).or_insert(at);
        *e = (*e).max(at);
    }

    /// The loops that made no progress within `bound` of `now`, with how long ago they did.
    pub fn stale(&self, bound: Duration, now: Instant) -> Vec<(&'static str, Duration)> {
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, t)| (*n, now.saturating_duration_since(*t)))
            .filter(|(_, age)| *age > bound)
            .collect()
    }

    /// Live: no loop is stale now.
    pub fn is_live(&self) -> bool {
        self.stale(LIVENESS_BOUND, Instant::now()).is_empty()
    }
}

/// The test hook `CALICO_RS_TEST_WEDGE=LOOP:SECS`: the named loop stops making progress SECS
/// after start (only `daemon` is supported), so tests can prove `/liveness` notices.
pub fn test_wedge() -> Option<(String, Duration)> {
    let v = std::env::var("CALICO_RS_TEST_WEDGE").ok()?;
    let (name, secs) = v.split_once(':')?;
    Some((name.to_string(), Duration::from_secs(secs.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_without_progress_goes_stale() {
        let t0 = Instant::now();
        let l = Liveness::new(t0);
        assert!(l
            .stale(LIVENESS_BOUND, t0 + Duration::from_secs(5))
            .is_empty());
        for n in LOOPS.iter().filter(|n| **n != "routes") {
            l.beat(n, t0 + Duration::from_secs(5));
        }
        let stale = l.stale(LIVENESS_BOUND, t0 + Duration::from_secs(7));
        assert_eq!(stale, [("routes", Duration::from_secs(7))]);
        // An older beat never moves a loop back.
        l.beat("routes", t0 + Duration::from_secs(7));
        l.beat("routes", t0);
        assert!(l
            .stale(LIVENESS_BOUND, t0 + Duration::from_secs(8))
            .is_empty());
    }
}
