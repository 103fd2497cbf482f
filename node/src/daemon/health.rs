//! Liveness, readiness and Prometheus metrics over plain HTTP/1.1.
//!
//! Calico serves `/liveness` and `/readiness` on port 9099; metrics go on their own port (9091 by
//! default, felix's). Both read the latest published [`NodeSnapshot`]; a request never waits on
//! the daemon. The server is a few lines over tokio: one request per connection, `GET` only.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

use super::live::{Liveness, LIVENESS_BOUND};
use super::Counters;
use crate::status::NodeSnapshot;

/// Start the listeners (a port of 0 is off; equal addresses share one listener).
pub async fn spawn(
    health: SocketAddr,
    metrics: SocketAddr,
    status: watch::Receiver<Arc<NodeSnapshot>>,
    counters: watch::Receiver<Counters>,
    live: Arc<Liveness>,
) -> Result<(), super::DaemonError> {
    let mut addrs = vec![];
    if health.port() != 0 {
        addrs.push(health);
    }
    if metrics.port() != 0 && metrics != health {
        addrs.push(metrics);
    }
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| super::DaemonError::Listen { addr, source })?;
        let (s, c, live) = (status.clone(), counters.clone(), live.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = l.accept().await else {
                    continue;
                };
                let (s, c, live) = (s.clone(), c.clone(), live.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = match tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        sock.read(&mut buf),
                    )
                    .await
                    {
                        Ok(Ok(n)) => n,
                        _ => return,
                    };
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let path = req.split_whitespace().nth(1).unwrap_or("/");
                    // Liveness from the loops themselves, not from the snapshot: a wedged
                    // daemon loop would leave a stale snapshot that still says live.
                    let stale = live.stale(LIVENESS_BOUND, Instant::now());
                    let (code, body, ctype) = respond(path, &s.borrow(), &c.borrow(), &stale);
                    let reason = match code {
                        200 => "OK",
                        404 => "Not Found",
                        _ => "Service Unavailable",
                    };
                    let resp = format!(
                        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    if let Err(e) = sock.write_all(resp.as_bytes()).await {
                        warn!(error = %e, "health response");
                    }
                });
            }
        });
    }
    Ok(())
}

/// The response for `path`: status code, body, content type. Pure, for tests.
/// `stale` lists the owner loops without progress (see [`super::live`]).
pub fn respond(
    path: &str,
    s: &NodeSnapshot,
    c: &Counters,
    stale: &[(&str, Duration)],
) -> (u16, String, &'static str) {
    match path {
        "/liveness" => {
            if stale.is_empty() {
                (200, "live\n".into(), "text/plain")
            } else {
                let loops: Vec<String> = stale
                    .iter()
                    .map(|(n, age)| format!("{n} (no progress for {} s)", age.as_secs()))
                    .collect();
                (
                    503,
                    format!("not live: {}\n", loops.join(", ")),
                    "text/plain",
                )
            }
        }
        "/readiness" => {
            if s.node.ready {
                (200, "ready\n".into(), "text/plain")
            } else {
                (
                    503,
                    format!("not ready: {}\n", s.node.not_ready.join("; ")),
                    "text/plain",
                )
            }
        }
        "/metrics" => (200, metrics(s, c), "text/plain; version=0.0.4"),
        _ => (404, "not found\n".into(), "text/plain"),
    }
}

/// Prometheus text exposition.
pub fn metrics(s: &NodeSnapshot, c: &Counters) -> String {
    let mut m = String::new();
    bgp_metrics(&mut m, s);
    node_metrics(&mut m, s, c);
    m
}

/// One gauge with its samples, in the Prometheus text format.
fn gauge(m: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in samples {
        let _ = writeln!(m, "{name}{labels} {v}");
    }
}

fn bgp_metrics(m: &mut String, s: &NodeSnapshot) {
    let mut gauge =
        |name: &str, help: &str, samples: &[(String, f64)]| gauge(m, name, help, samples);
    let states = [
        "Idle",
        "Connect",
        "Active",
        "OpenSent",
        "OpenConfirm",
        "Established",
    ];
    let by_state: Vec<(String, f64)> = states
        .iter()
        .map(|st| {
            let n = s
                .peers
                .iter()
                .filter(|p| p.bgp.state.to_string() == *st)
                .count();
            (format!("{{state=\"{st}\"}}"), n as f64)
        })
        .collect();
    gauge(
        "calico_rs_bgp_peers",
        "BGP peers by session state.",
        &by_state,
    );
    let prefixes: Vec<(String, f64)> = s
        .peers
        .iter()
        .flat_map(|p| {
            let a = p.bgp.address;
            [
                (
                    format!("{{peer=\"{a}\",kind=\"received\"}}"),
                    p.bgp.prefixes_received as f64,
                ),
                (
                    format!("{{peer=\"{a}\",kind=\"accepted\"}}"),
                    p.bgp.prefixes_accepted as f64,
                ),
                (
                    format!("{{peer=\"{a}\",kind=\"advertised\"}}"),
                    p.bgp.prefixes_advertised as f64,
                ),
            ]
        })
        .collect();
    gauge(
        "calico_rs_bgp_prefixes",
        "Prefixes per BGP peer.",
        &prefixes,
    );
}

fn node_metrics(m: &mut String, s: &NodeSnapshot, c: &Counters) {
    let mut gauge =
        |name: &str, help: &str, samples: &[(String, f64)]| gauge(m, name, help, samples);
    let installed = s.routes.iter().filter(|r| r.installed).count();
    gauge(
        "calico_rs_routes",
        "Routes the node wants, and how many are in the kernel.",
        &[
            ("{state=\"desired\"}".into(), s.routes.len() as f64),
            ("{state=\"installed\"}".into(), installed as f64),
        ],
    );
    gauge(
        "calico_rs_policy",
        "Policy engine: compiled and rejected policies, rules and set elements in the kernel.",
        &[
            (
                "{kind=\"compiled\"}".into(),
                s.policy.policies_compiled as f64,
            ),
            ("{kind=\"rejected\"}".into(), s.policy.rejected.len() as f64),
            ("{kind=\"rules\"}".into(), s.policy.rules as f64),
            (
                "{kind=\"set_elements\"}".into(),
                s.policy.set_elements as f64,
            ),
        ],
    );
    gauge(
        "calico_rs_policy_last_apply_seconds",
        "Duration of the last nftables apply.",
        &[(String::new(), s.policy.last_apply_micros as f64 / 1e6)],
    );
    gauge(
        "calico_rs_last_sync_seconds",
        "Duration of the last datastore-to-desired-state calculation.",
        &[(String::new(), c.last_recompute.as_secs_f64())],
    );
    gauge(
        "calico_rs_ready",
        "1 when the node is ready.",
        &[(String::new(), f64::from(u8::from(s.node.ready)))],
    );
    let by_severity: Vec<(String, f64)> = ["error", "unsupported", "warning"]
        .iter()
        .map(|sev| {
            let n = s
                .resource_errors
                .iter()
                .filter(|e| crate::grpc::convert::severity_name(e.severity) == *sev)
                .count();
            (format!("{{severity=\"{sev}\"}}"), n as f64)
        })
        .collect();
    gauge(
        "calico_rs_resource_errors",
        "Datastore documents with problems now, by severity (unsupported: a kind calico-rs does not implement).",
        &by_severity,
    );
    let masq = c.nat.applied.as_ref().map_or(0, |a| a.masq_pools.len());
    gauge(
        "calico_rs_nat_outgoing_pools",
        "IPPools whose pods are masqueraded, as in the kernel (natOutgoing).",
        &[(String::new(), masq as f64)],
    );
    gauge(
        "calico_rs_nat_outgoing_failing",
        "1 while the natOutgoing table could not be applied (the daemon retries).",
        &[(
            String::new(),
            f64::from(u8::from(c.nat.last_error.is_some())),
        )],
    );
    let _ = writeln!(
        m,
        "# HELP calico_rs_resource_errors_total Resources rejected by the datastore parser.\n# TYPE calico_rs_resource_errors_total counter\ncalico_rs_resource_errors_total {}",
        c.resource_errors
    );
    let _ = writeln!(
        m,
        "# HELP calico_rs_route_programming_total Route inputs sent to the dataplane.\n# TYPE calico_rs_route_programming_total counter\ncalico_rs_route_programming_total {}",
        c.route_inputs
    );
    let _ = writeln!(
        m,
        "# HELP calico_rs_policy_programming_total Policy inputs sent to the dataplane.\n# TYPE calico_rs_policy_programming_total counter\ncalico_rs_policy_programming_total {}",
        c.policy_inputs
    );
    if let Some(cni) = &c.cni {
        let _ = writeln!(
            m,
            "# HELP calico_rs_cni_requests_total CNI plugin requests the daemon's socket answered, by operation and outcome.\n# TYPE calico_rs_cni_requests_total counter"
        );
        for ((op, outcome), n) in &cni.requests {
            let _ = writeln!(
                m,
                "calico_rs_cni_requests_total{{op=\"{op}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(
            m,
            "# HELP calico_rs_cni_releases_pending Address releases of CNI DELs not done yet (in progress, or queued until the datastore answers).\n# TYPE calico_rs_cni_releases_pending gauge\ncalico_rs_cni_releases_pending {}",
            cni.releases_pending
        );
    }
    let _ = writeln!(
        m,
        "# HELP calico_rs_nat_outgoing_repairs_total Times the natOutgoing table was restored after someone else changed it.\n# TYPE calico_rs_nat_outgoing_repairs_total counter\ncalico_rs_nat_outgoing_repairs_total {}",
        c.nat.repairs
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_and_metrics() {
        let mut s = NodeSnapshot::empty("n1");
        let c = Counters::default();
        let (code, body, _) = respond("/readiness", &s, &c, &[]);
        assert_eq!(code, 503);
        assert!(body.contains("starting"), "{body}");
        s.node.ready = true;
        s.node.not_ready.clear();
        assert_eq!(respond("/readiness", &s, &c, &[]).0, 200);
        assert_eq!(respond("/liveness", &s, &c, &[]).0, 200);
        let (code, body, _) = respond("/liveness", &s, &c, &[("routes", Duration::from_secs(7))]);
        assert_eq!(
            (code, body.as_str()),
            (503, "not live: routes (no progress for 7 s)\n")
        );
        assert_eq!(respond("/nope", &s, &c, &[]).0, 404);
        let (_, m, _) = respond("/metrics", &s, &c, &[]);
        assert!(
            m.contains("calico_rs_bgp_peers{state=\"Established\"} 0"),
            "{m}"
        );
        assert!(m.contains("calico_rs_ready 1"), "{m}");
        assert!(m.contains("calico_rs_nat_outgoing_pools 0"), "{m}");
        // What the natOutgoing owner reported, not a constant.
        let mut c = Counters::default();
        c.nat.applied = Some(felix::nat::NatSpec {
            all_pools: vec!["10.244.0.0/16".parse().unwrap()],
            masq_pools: vec!["10.244.0.0/16".parse().unwrap()],
        });
        c.nat.repairs = 2;
        c.nat.last_error = Some("nft: no".into());
        let (_, m, _) = respond("/metrics", &s, &c, &[]);
        assert!(m.contains("calico_rs_nat_outgoing_pools 1"), "{m}");
        assert!(m.contains("calico_rs_nat_outgoing_repairs_total 2"), "{m}");
        assert!(m.contains("calico_rs_nat_outgoing_failing 1"), "{m}");
        assert!(
            !m.contains("calico_rs_cni_"),
            "no socket, no CNI metrics: {m}"
        );
        let mut counts = super::super::cni::CniCounts::default();
        counts.requests.insert(("add", "ok"), 3);
        counts.requests.insert(("del", "queued"), 1);
        counts.releases_pending = 1;
        c.cni = Some(counts);
        let (_, m, _) = respond("/metrics", &s, &c, &[]);
        assert!(
            m.contains("calico_rs_cni_requests_total{op=\"add\",outcome=\"ok\"} 3"),
            "{m}"
        );
        assert!(
            m.contains("calico_rs_cni_requests_total{op=\"del\",outcome=\"queued\"} 1"),
            "{m}"
        );
        assert!(m.contains("calico_rs_cni_releases_pending 1"), "{m}");
    }
}
