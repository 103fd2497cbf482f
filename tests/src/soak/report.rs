//! What a soak run found, and how it prints.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// One soak action, in Unix seconds (the clock `ping -D` uses).
#[derive(Clone, Debug)]
pub struct Event {
    pub start: f64,
    pub end: f64,
    pub what: String,
}

/// The result of [`run`](super::run). The four target figures are `lost`, `breaches`,
/// `duplicate_ips` and `panics`; a daemon that exited by itself and a failed action or check
/// also fail the run ([`SoakReport::clean`]).
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub nodes: usize,
    /// As asked for (`--minutes`).
    pub minutes: f64,
    /// Time spent in the action loop.
    pub ran: Duration,
    pub steps: u64,
    /// Actions taken, by kind.
    pub actions: BTreeMap<&'static str, u64>,
    /// Echo requests that had to be answered, and TCP connections that had to succeed.
    pub reach_pings: u64,
    pub reach_tcp: u64,
    /// Of those, lost outside the expected windows (ICMP and TCP).
    pub lost: u64,
    /// Lost inside them (a request sent in the last second before its pinger stopped).
    pub lost_in_windows: u64,
    /// Probes towards isolated pods (ICMP and TCP), and how many got an answer.
    pub isolated_probes: u64,
    pub breaches: u64,
    /// Distinct addresses seen held by two pods or handles.
    pub duplicate_ips: u64,
    /// `panicked at` lines in the daemon logs.
    pub panics: u64,
    /// Daemon restarts the soak made (SIGKILL or SIGTERM), and daemons that exited by themselves.
    pub restarts: u64,
    pub unexpected_exits: u64,
    /// One line per loss episode, breach, duplicate, panic and unexpected exit.
    pub findings: Vec<String>,
    /// Actions or checks that failed (a daemon not ready in time, a pod never reachable, ...).
    pub errors: Vec<String>,
}

impl SoakReport {
    /// 0 / 0 / 0 / 0, no daemon died by itself, no action or check failed.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.breaches == 0
            && self.duplicate_ips == 0
            && self.panics == 0
            && self.unexpected_exits == 0
            && self.errors.is_empty()
    }
}

/// Longest list of findings or errors printed.
const MAX_LINES: usize = 40;

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.ran.as_secs();
        writeln!(
            f,
            "soak: seed {} ({} nodes and a BIRD ToR), {}m{:02}s of actions, {} steps",
            self.seed,
            self.nodes,
            secs / 60,
            secs % 60,
            self.steps
        )?;
        writeln!(
            f,
            "  replay: cargo run --release -p calico-tests --bin soak -- --seed {} --nodes {} --minutes {}",
            self.seed, self.nodes, self.minutes
        )?;
        let actions: Vec<String> = self
            .actions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  actions: {}", actions.join(", "))?;
        writeln!(
            f,
            "  pings lost outside the expected windows: {}  ({} echo requests and {} TCP connections that had to get through; {} lost inside the windows)",
            self.lost, self.reach_pings, self.reach_tcp, self.lost_in_windows
        )?;
        writeln!(
            f,
            "  isolated connections that got through:   {}  (of {} ICMP and TCP probes)",
            self.breaches, self.isolated_probes
        )?;
        writeln!(
            f,
            "  duplicate pod IPs:                       {}",
            self.duplicate_ips
        )?;
        writeln!(
            f,
            "  panics:                                  {}",
            self.panics
        )?;
        writeln!(
            f,
            "  daemon restarts:                         {} by the soak, {} unexpected exits",
            self.restarts, self.unexpected_exits
        )?;
        writeln!(
            f,
            "  failed actions and checks:               {}",
            self.errors.len()
        )?;
        for (title, lines) in [("findings", &self.findings), ("errors", &self.errors)] {
            if lines.is_empty() {
                continue;
            }
            writeln!(f, "  {title}:")?;
            for l in lines.iter().take(MAX_LINES) {
                writeln!(f, "    {l}")?;
            }
            if lines.len() > MAX_LINES {
                writeln!(f, "    ... and {} more", lines.len() - MAX_LINES)?;
            }
        }
        write!(
            f,
            "  result: {} ({} / {} / {} / {})",
            if self.clean() { "PASS" } else { "FAIL" },
            self.lost,
            self.breaches,
            self.duplicate_ips,
            self.panics
        )
    }
}

/// Groups event times (sorted) into episodes: times less than `gap` apart are one episode.
pub fn episodes(times: &[f64], gap: f64) -> Vec<(usize, f64, f64)> {
    let mut out: Vec<(usize, f64, f64)> = Vec::new();
    for &t in times {
        match out.last_mut() {
            Some((n, _, end)) if t - *end <= gap => {
                *n += 1;
                *end = t;
            }
            _ => out.push((1, t, t)),
        }
    }
    out
}

/// The actions that overlapped `[from - 1 s, to + 1 s]`, relative to `t0`.
pub fn during(events: &[Event], t0: f64, from: f64, to: f64) -> String {
    let hits: Vec<String> = events
        .iter()
        .filter(|e| e.start <= to + 1.0 && e.end >= from - 1.0)
        .map(|e| format!("{} (+{:.1}..+{:.1} s)", e.what, e.start - t0, e.end - t0))
        .collect();
    if hits.is_empty() {
        "between actions".into()
    } else {
        format!("during {}", hits.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episodes_split_on_gaps() {
        let e = episodes(&[1.0, 1.2, 1.4, 5.0, 5.1], 1.5);
        assert_eq!(e, vec![(3, 1.0, 1.4), (2, 5.0, 5.1)]);
        assert!(episodes(&[], 1.0).is_empty());
    }

    #[test]
    fn a_clean_report_says_pass() {
        let r = SoakReport::default();
        assert!(r.clean());
        assert!(r.to_string().contains("result: PASS (0 / 0 / 0 / 0)"));
        let r = SoakReport {
            breaches: 1,
            ..SoakReport::default()
        };
        assert!(r.to_string().contains("result: FAIL (0 / 1 / 0 / 0)"));
    }
}
