//! The soak's probes: long-running `ping` processes read back by sequence number, and TCP probe
//! tasks on a thread inside the source pod's namespace.
//!
//! A pinger is `ping -D -O -n -i 0.2 ADDR`: every request has a sequence number, every reply line
//! a wall-clock timestamp (`-D`), and a request without an answer by the time the next one goes
//! out gets a `no answer yet for icmp_seq=N` line (`-O`), which dates it. Stopped with SIGINT, ping
//! prints how many requests it sent; requests are numbered 1..=sent (16-bit sequence numbers are
//! unwrapped), so the lost ones are exactly the numbers without a reply line. Times are Unix
//! seconds as `f64`, the clock ping's `-D` uses, so they compare with the soak's event log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use nix::sys::signal::Signal;

use calico_lab::check::{probe_here, Proto};
use calico_lab::lab::Netns;
use calico_lab::proc::Proc;

/// Seconds between echo requests of a pinger.
pub const INTERVAL: f64 = 0.2;
/// A request sent this close to its pinger's stop may still have had its reply in flight.
pub const TAIL: f64 = 1.0;
/// Timeout of one TCP probe.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two TCP probes of one task.
const TCP_PAUSE: Duration = Duration::from_millis(250);

/// What a probe must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every request answered.
    Reach,
    /// No request answered: any reply is a breach.
    Isolated,
}

/// Now, in Unix seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A running `ping`.
pub struct Pinger {
    pub label: String,
    pub expect: Expect,
    /// The churned pod it belongs to (stopped before that pod is removed).
    pub owner: Option<String>,
    proc: Proc,
    started: f64,
}

/// What a stopped pinger saw.
#[derive(Debug, Clone)]
pub struct PingResult {
    pub label: String,
    pub expect: Expect,
    pub sent: u64,
    /// Requests answered (duplicates once).
    pub answered: u64,
    /// Requests without an answer, with the time each was sent.
    pub lost: Vec<(u64, f64)>,
    /// Answered requests, with the time each was sent.
    pub replies: Vec<(u64, f64)>,
    pub started: f64,
    pub stopped: f64,
    /// Set when ping exited before it was stopped: its status and last lines.
    pub died: Option<String>,
}

impl Pinger {
    pub fn start(
        from: &Netns,
        dst: &str,
        label: String,
        expect: Expect,
        owner: Option<String>,
    ) -> Result<Pinger> {
        let interval = INTERVAL.to_string();
        let proc = from.spawn(&["ping", "-D", "-O", "-n", "-i", &interval, dst])?;
        Ok(Pinger {
            label,
            expect,
            owner,
            proc,
            started: now(),
        })
    }

    /// Whether ping has exited by itself.
    pub fn exited(&mut self) -> bool {
        self.proc.try_status().is_some()
    }

    /// SIGINT (ping prints its summary), wait up to 3 s, then read the log back.
    pub fn stop(mut self) -> PingResult {
        let stopped = now();
        let died = self.proc.try_status().map(|st| {
            let log = self.proc.log();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "ping exited by itself ({st}): {}",
                lines[lines.len().saturating_sub(3)..].join(" | ")
            )
        });
        if died.is_none() {
            let _ = self.proc.signal(Signal::SIGINT);
            let t = std::time::Instant::now();
            while self.proc.try_status().is_none() && t.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.proc.kill();
        }
        let parsed = parse(&self.proc.log(), self.started);
        PingResult {
            label: self.label,
            expect: self.expect,
            sent: parsed.sent,
            answered: parsed.replies.len() as u64,
            lost: parsed.lost,
            replies: parsed.replies.into_iter().collect(),
            started: self.started,
            stopped,
            died,
        }
    }
}

/// A ping log read back.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub sent: u64,
    /// Answered sequence numbers -> send time.
    pub replies: BTreeMap<u64, f64>,
    /// Unanswered sequence numbers -> (estimated) send time.
    pub lost: Vec<(u64, f64)>,
}

/// 16-bit sequence numbers, unwrapped against the last one seen (lines come in time order).
struct Unwrap {
    last: u64,
}

impl Unwrap {
    fn get(&mut self, seq16: u64) -> u64 {
        let epoch = self.last & !0xffff;
        let mut s = epoch | (seq16 & 0xffff);
        if s + 0x8000 < self.last {
            s += 0x10000;
        } else if s > self.last + 0x8000 && s >= 0x10000 {
            s -= 0x10000;
        }
        self.last = self.last.max(s);
        s
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(
        rest.split(|c: char| c.is_whitespace())
            .next()
            .unwrap_or(rest),
    )
}

/// Read a `ping -D -O` log; `started` dates requests when no line does.
pub fn parse(log: &str, started: f64) -> Parsed {
    let mut seqs = Unwrap { last: 0 };
    let mut replies: BTreeMap<u64, f64> = BTreeMap::new();
    // Send-time estimates of requests that got a line other than a reply.
    let mut dated: BTreeMap<u64, f64> = BTreeMap::new();
    let mut sent = None;
    let mut max_seq = 0;
    for line in log.lines() {
        if line.contains("packets transmitted") {
            sent = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
            continue;
        }
        let Some(ts) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once(']'))
            .and_then(|(t, _)| t.parse::<f64>().ok())
        else {
            continue;
        };
        let Some(seq) = field(line, "icmp_seq=").and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let seq = seqs.get(seq);
        max_seq = max_seq.max(seq);
        if line.contains(" bytes from ") {
            let rtt = field(line, "time=")
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1000.0;
            replies.entry(seq).or_insert(ts - rtt);
        } else if line.contains("no answer yet") {
            dated.entry(seq).or_insert(ts - INTERVAL);
        } else {
            dated.entry(seq).or_insert(ts);
        }
    }
    let sent = sent.unwrap_or(max_seq);
    let lost = (1..=sent)
        .filter(|s| !replies.contains_key(s))
        .map(|s| {
            let t = dated.get(&s).copied().unwrap_or_else(|| {
                // From the nearest answered request: ping keeps its interval well.
                let before = replies.range(..s).next_back();
                let after = replies.range(s..).next();
                match (before, after) {
                    (Some((k, t)), _) => t + (s - k) as f64 * INTERVAL,
                    (None, Some((k, t))) => t - (k - s) as f64 * INTERVAL,
                    (None, None) => started + (s - 1) as f64 * INTERVAL,
                }
            });
            (s, t)
        })
        .collect();
    Parsed {
        sent,
        replies,
        lost,
    }
}

/// One TCP probe target of a [`TcpProber`].
#[derive(Clone, Debug)]
pub struct TcpTarget {
    pub label: String,
    pub to: SocketAddr,
    pub expect: Expect,
}

/// What a TCP target saw: attempts, and the unexpected outcomes with their start times.
#[derive(Clone, Debug, Default)]
pub struct TcpResult {
    pub label: String,
    pub reach: bool,
    pub attempts: u64,
    /// Reach: failed probes; Isolated: probes that got an echo back.
    pub unexpected: Vec<(f64, String)>,
}

/// TCP probes from one namespace, one task per target, until stopped.
pub struct TcpProber {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    results: Arc<Mutex<Vec<TcpResult>>>,
}

impl TcpProber {
    pub fn start(from: &Netns, targets: Vec<TcpTarget>) -> Result<TcpProber> {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(
            targets
                .iter()
                .map(|t| TcpResult {
                    label: t.label.clone(),
                    reach: t.expect == Expect::Reach,
                    ..TcpResult::default()
                })
                .collect::<Vec<_>>(),
        ));
        let (s, r) = (stop.clone(), results.clone());
        let thread = from.thread(&format!("tcp-{}", from.short()), move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let tasks: Vec<_> = targets
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| tokio::spawn(probe_loop(i, t, s.clone(), r.clone())))
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
        Ok(TcpProber {
            stop,
            thread: Some(thread),
            results,
        })
    }

    /// Stop every task (each finishes its probe in flight) and return what they saw.
    pub fn stop(mut self) -> Result<Vec<TcpResult>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("a TCP probe thread panicked"))?;
        }
        let r = self
            .results
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(r.clone())
    }
}

impl Drop for TcpProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn probe_loop(
    i: usize,
    t: TcpTarget,
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<TcpResult>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let at = now();
        let out = probe_here(Proto::Tcp, t.to, TCP_TIMEOUT).await;
        let unexpected = match t.expect {
            Expect::Reach => !out.ok(),
            Expect::Isolated => out.ok(),
        };
        if let Ok(mut r) = results.lock() {
            r[i].attempts += 1;
            if unexpected {
                r[i].unexpected.push((at, out.to_string()));
            }
        }
        tokio::time::sleep(TCP_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "PING 10.244.0.2 (10.244.0.2) 56(84) bytes of data.
[100.000100] 64 bytes from 10.244.0.2: icmp_seq=1 ttl=63 time=0.100 ms
[100.200100] 64 bytes from 10.244.0.2: icmp_seq=2 ttl=63 time=0.100 ms
[100.600000] no answer yet for icmp_seq=3
[100.800000] no answer yet for icmp_seq=4
[100.800100] 64 bytes from 10.244.0.2: icmp_seq=5 ttl=63 time=0.100 ms
[100.800200] 64 bytes from 10.244.0.2: icmp_seq=5 ttl=63 time=0.200 ms (DUP!)
[101.000000] From 10.244.0.1 icmp_seq=6 Destination Host Unreachable

--- 10.244.0.2 ping statistics ---
7 packets transmitted, 3 received, +1 duplicates, +1 errors, 57% packet loss, time 1200ms
";

    #[test]
    fn reads_lost_requests_and_when_they_were_sent() {
        let p = parse(LOG, 99.0);
        assert_eq!(p.sent, 7);
        assert_eq!(p.replies.keys().copied().collect::<Vec<_>>(), vec![1, 2, 5]);
        let lost: Vec<u64> = p.lost.iter().map(|(s, _)| *s).collect();
        assert_eq!(lost, vec![3, 4, 6, 7]);
        let t = |s: u64| p.lost.iter().find(|(k, _)| *k == s).unwrap().1;
        assert!((t(3) - 100.4).abs() < 1e-6, "{}", t(3));
        assert!((t(6) - 101.0).abs() < 1e-6);
        // Seq 7 has no line: dated from seq 5's send time.
        assert!((t(7) - 101.2).abs() < 1e-3, "{}", t(7));
    }

    #[test]
    fn a_killed_ping_counts_up_to_the_last_number_seen() {
        let log: String = LOG.lines().take(5).collect::<Vec<_>>().join("\n");
        let p = parse(&log, 99.0);
        assert_eq!(p.sent, 4);
        assert_eq!(p.lost.len(), 2);
    }

    #[test]
    fn sequence_numbers_unwrap() {
        let mut u = Unwrap { last: 0 };
        assert_eq!(u.get(1), 1);
        assert_eq!(u.get(65535), 65535);
        assert_eq!(u.get(0), 65536);
        assert_eq!(u.get(2), 65538);
        // A late line from before the wrap.
        assert_eq!(u.get(65534), 65534);
        assert_eq!(u.get(3), 65539);
    }
}
