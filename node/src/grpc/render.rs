//! Text forms of the status API for `calicoctl-rs`: pure functions from proto messages (and an
//! injected [`Clock`]) to strings, golden-tested.
//!
//! `node status` keeps Calico's layout, which shows BIRD's view of each BGP protocol:
//! - STATE is BIRD's protocol state: `up` when the session is Established, `start` while BIRD is
//!   trying to bring it up (any other BGP state), `down` when the protocol is disabled.
//! - INFO is BIRD's protocol info: the BGP state (`Idle`, `Connect`, `Active`, `OpenSent`,
//!   `OpenConfirm`, `Established`) followed by the last error in BIRD's words: `BGP Error: ...` for a
//!   NOTIFICATION we sent, `Received: ...` for one the peer sent, `Socket: ...` for a transport
//!   error (e.g. `Active Socket: Connection refused`, `Idle BGP Error: Bad Peer AS`).
//! - SINCE is the local time of the last state change, `HH:MM:SS` when that was today, else the
//!   date `YYYY-MM-DD`.

use std::net::IpAddr;

use calico_proto::v1 as pb;
use chrono::{DateTime, FixedOffset, Offset, SecondsFormat, Utc};

use super::table::Table;
use crate::status::PeerType;

/// The first line when the daemon answered.
pub const RUNNING: &str = "Calico process is running.";
/// The only line when it did not.
pub const NOT_RUNNING: &str = "Calico process is not running.";

/// What times are shown against: the current time and the local UTC offset. Injected so the output
/// is a pure function of its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Unix seconds.
    pub now: u64,
    pub offset: FixedOffset,
}

impl Clock {
    /// The machine's clock and time zone (`TZ`, else /etc/localtime).
    pub fn local() -> Clock {
        let now = chrono::Local::now();
        Clock {
            now: u64::try_from(now.timestamp()).unwrap_or(0),
            offset: now.offset().fix(),
        }
    }

    /// A fixed UTC clock (tests).
    pub fn utc(now: u64) -> Clock {
        Clock {
            now,
            offset: Utc.fix(),
        }
    }

    fn local_time(&self, secs: u64) -> Option<DateTime<FixedOffset>> {
        let secs = i64::try_from(secs).ok()?;
        Some(DateTime::from_timestamp(secs, 0)?.with_timezone(&self.offset))
    }
}

/// `HH:MM:SS` when `since` is today (local time), else `YYYY-MM-DD`; empty when unknown (0).
pub fn since(since: u64, clock: &Clock) -> String {
    if since == 0 {
        return String::new();
    }
    let (Some(t), Some(now)) = (clock.local_time(since), clock.local_time(clock.now)) else {
        return String::new();
    };
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%d").to_string()
    }
}

/// RFC 3339 in UTC (`2024-05-01T09:12:43Z`), for JSON; `None` when unknown (0).
pub fn rfc3339(secs: u64) -> Option<String> {
    if secs == 0 {
        return None;
    }
    let t = DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)?;
    Some(t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// `3d4h5m6s`, leading zero units left out.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if v > 0 || !out.is_empty() {
            out.push_str(&format!("{v}{unit}"));
        }
    }
    out.push_str(&format!("{s}s"));
    out
}

/// Calico's wording of the peer type ("node-to-node mesh", "global", ...).
pub fn peer_type_name(t: pb::PeerType) -> &'static str {
    let t = match t {
        pb::PeerType::Unspecified => return "unknown",
        pb::PeerType::NodeMesh => PeerType::NodeMesh,
        pb::PeerType::Global => PeerType::Global,
        pb::PeerType::NodeSpecific => PeerType::NodeSpecific,
        pb::PeerType::RrClient => PeerType::RrClient,
        pb::PeerType::RrServer => PeerType::RrServer,
    };
    t.calico_name()
}

/// The RFC 4271 state name (`Established`, `OpenSent`, ...).
pub fn bgp_state_name(s: pb::BgpState) -> &'static str {
    match s {
        pb::BgpState::Unspecified => "Unknown",
        pb::BgpState::Idle => "Idle",
        pb::BgpState::Connect => "Connect",
        pb::BgpState::Active => "Active",
        pb::BgpState::OpenSent => "OpenSent",
        pb::BgpState::OpenConfirm => "OpenConfirm",
        pb::BgpState::Established => "Established",
    }
}

/// BIRD's protocol state: `up`, `start` or `down`.
pub fn bird_state(p: &pb::Peer) -> &'static str {
    match p.state() {
        pb::BgpState::Established => "up",
        pb::BgpState::Unspecified => "down",
        _ => "start",
    }
}

/// The daemon's last-error text in BIRD's words. The speaker reports `sent NOTIFICATION: <code>:
/// <subcode>`, `received NOTIFICATION: ...` or `connection lost`; anything else is a transport
/// error (`Connection refused (os error 111)` becomes `Socket: Connection refused`).
pub fn bird_error(err: &str) -> String {
    // BIRD names only the subcode ("Bad Peer AS"), or the code when there is none.
    fn detail(n: &str) -> &str {
        n.split_once(": ").map(|(_, rest)| rest).unwrap_or(n)
    }
    let err = err.trim();
    if let Some(n) = err.strip_prefix("sent NOTIFICATION: ") {
        format!("BGP Error: {}", detail(n))
    } else if let Some(n) = err.strip_prefix("received NOTIFICATION: ") {
        format!("Received: {}", detail(n))
    } else if err == "connection lost" {
        "Socket: Connection closed".into()
    } else if err.starts_with("Socket: ") || err.starts_with("BGP Error: ") {
        err.into()
    } else {
        let err = match err.rfind(" (os error ") {
            Some(i) if err.ends_with(')') => &err[..i],
            _ => err,
        };
        let mut chars = err.chars();
        let capital: String = chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        format!("Socket: {capital}")
    }
}

/// BIRD's protocol info: the BGP state, then the last error unless Established.
pub fn bird_info(p: &pb::Peer) -> String {
    let state = bgp_state_name(p.state());
    if p.state() == pb::BgpState::Established || p.last_error.trim().is_empty() {
        state.into()
    } else {
        format!("{state} {}", bird_error(&p.last_error))
    }
}

fn is_ipv6(p: &pb::Peer) -> bool {
    matches!(p.address.parse::<IpAddr>(), Ok(IpAddr::V6(_)))
}

/// The peers of one family, sorted by address (unparseable addresses last).
pub fn family_peers(peers: &[pb::Peer], v6: bool) -> Vec<&pb::Peer> {
    let mut v: Vec<&pb::Peer> = peers.iter().filter(|p| is_ipv6(p) == v6).collect();
    v.sort_by_cached_key(|p| match p.address.parse::<IpAddr>() {
        Ok(ip) => (false, Some(ip), String::new()),
        Err(_) => (true, None, p.address.clone()),
    });
    v
}

fn status_table(peers: &[&pb::Peer], clock: &Clock) -> Table {
    let mut t = Table::new(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]);
    for p in peers {
        t.row([
            p.address.clone(),
            peer_type_name(p.r#type()).into(),
            bird_state(p).into(),
            since(p.since, clock),
            bird_info(p),
        ]);
    }
    t
}

/// `calicoctl node status`, exactly as Calico lays it out.
pub fn render_status(peers: &[pb::Peer], clock: &Clock) -> String {
    let mut out = format!("{RUNNING}\n");
    for (v6, name) in [(false, "IPv4"), (true, "IPv6")] {
        out.push_str(&format!("\n{name} BGP status\n"));
        let fam = family_peers(peers, v6);
        if fam.is_empty() {
            out.push_str(&format!("No {name} peers found.\n"));
        } else {
            out.push_str(&status_table(&fam, clock).render());
        }
    }
    out.push('\n');
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

/// `calicoctl-rs node peers`: every peer with its AS, counters and last error.
pub fn render_peers(peers: &[pb::Peer], clock: &Clock) -> String {
    if peers.is_empty() {
        return "No BGP peers found.\n".into();
    }
    let mut t = Table::new([
        "PEER ADDRESS",
        "AS",
        "PEER TYPE",
        "NAME",
        "STATE",
        "SINCE",
        "RECEIVED",
        "ACCEPTED",
        "ADVERTISED",
        "LAST ERROR",
    ])
    .right(1)
    .right(6)
    .right(7)
    .right(8);
    let mut sorted = family_peers(peers, false);
    sorted.extend(family_peers(peers, true));
    for p in sorted {
        let mut state = bgp_state_name(p.state()).to_string();
        if p.graceful_restart_stale {
            state.push_str(" (GR stale)");
        }
        t.row([
            p.address.clone(),
            p.as_number.to_string(),
            peer_type_name(p.r#type()).into(),
            or_dash(&p.description),
            state,
            since(p.since, clock),
            p.prefixes_received.to_string(),
            p.prefixes_accepted.to_string(),
            p.prefixes_advertised.to_string(),
            or_dash(&p.last_error),
        ]);
    }
    t.render()
}

/// `calicoctl-rs node routes`.
pub fn render_routes(routes: &[pb::Route]) -> String {
    if routes.is_empty() {
        return "No routes found.\n".into();
    }
    let mut t = Table::new([
        "PREFIX",
        "KIND",
        "NEXT HOPS",
        "SOURCE",
        "AS PATH",
        "INSTALLED",
        "STALE",
    ]);
    for r in routes {
        let path: Vec<String> = r.as_path.iter().map(u32::to_string).collect();
        t.row([
            r.prefix.clone(),
            r.kind.clone(),
            or_dash(&r.next_hops.join(", ")),
            if r.source_peer.is_empty() {
                "local".into()
            } else {
                r.source_peer.clone()
            },
            or_dash(&path.join(" ")),
            yes_no(r.installed).into(),
            yes_no(r.stale).into(),
        ]);
    }
    t.render()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `calicoctl-rs node blocks`.
pub fn render_blocks(blocks: &[pb::Block]) -> String {
    if blocks.is_empty() {
        return "No IPAM blocks found.\n".into();
    }
    let mut t = Table::new(["CIDR", "AFFINITY", "POOL", "USED", "FREE"])
        .right(3)
        .right(4);
    for b in blocks {
        t.row([
            b.cidr.clone(),
            or_dash(&b.affinity),
            or_dash(&b.pool),
            b.used.to_string(),
            b.free.to_string(),
        ]);
    }
    t.render()
}

/// `calicoctl-rs node policy`: the engine's summary, then the rejected policies.
pub fn render_policy(p: &pb::PolicyStatus, clock: &Clock) -> String {
    let mut t = Table::new([
        "TABLE",
        "POLICIES",
        "REJECTED",
        "ENDPOINTS",
        "RULES",
        "SET ELEMENTS",
        "LAST APPLY",
        "APPLIED AT",
    ])
    .right(1)
    .right(2)
    .right(3)
    .right(4)
    .right(5)
    .right(6);
    let applied = if p.last_apply_at == 0 {
        "never".into()
    } else {
        since(p.last_apply_at, clock)
    };
    t.row([
        or_dash(&p.table),
        p.policies_compiled.to_string(),
        p.rejected.len().to_string(),
        p.endpoints.to_string(),
        p.rules.to_string(),
        p.set_elements.to_string(),
        format!("{:.1} ms", p.last_apply_micros as f64 / 1000.0),
        applied,
    ]);
    let mut out = t.render();
    out.push('\n');
    if p.rejected.is_empty() {
        out.push_str("No rejected policies.\n");
    } else {
        out.push_str("Rejected policies\n");
        let mut r = Table::new(["NAMESPACE", "NAME", "REASON"]);
        for x in &p.rejected {
            r.row([or_dash(&x.namespace), x.name.clone(), x.reason.clone()]);
        }
        out.push_str(&r.render());
    }
    out
}

/// `calicoctl-rs node info`: identity and readiness.
pub fn render_node(n: &pb::Node) -> String {
    let mut t = Table::new([
        "NAME",
        "AS",
        "ROUTER ID",
        "ADDRESSES",
        "VERSION",
        "UPTIME",
        "READY",
        "LIVE",
    ])
    .right(1);
    t.row([
        n.name.clone(),
        n.as_number.to_string(),
        or_dash(&n.router_id),
        or_dash(&n.addresses.join("\n")),
        n.version.clone(),
        duration(n.uptime_seconds),
        yes_no(n.ready).into(),
        yes_no(n.live).into(),
    ]);
    let mut out = t.render();
    for r in &n.not_ready_reasons {
        out.push_str(&format!("Not ready: {r}\n"));
    }
    out
}

/// `calicoctl-rs node errors`: datastore documents rejected or kept at their last good version.
pub fn render_errors(errors: &[pb::ResourceError]) -> String {
    if errors.is_empty() {
        return "No datastore errors.\n".into();
    }
    let mut t = Table::new(["SEVERITY", "ORIGIN", "KIND", "NAME", "FIELD", "MESSAGE"]);
    for e in errors {
        t.row([
            e.severity.clone(),
            e.origin.clone(),
            or_dash(&e.kind),
            or_dash(&e.name),
            or_dash(&e.field),
            e.message.clone(),
        ]);
    }
    t.render()
}

/// The line `node status` adds under its tables when the datastore has problems: rejected
/// documents count, warnings (e.g. "keeping the last good version") only when alone.
pub fn errors_hint(errors: &[pb::ResourceError]) -> String {
    let rejected = errors.iter().filter(|e| e.severity != "warning").count();
    match (rejected, errors.len()) {
        (0, 0) => String::new(),
        (0, n) => format!("\n{n} datastore warning(s): see calicoctl-rs node errors\n"),
        (1, _) => "\n1 datastore document has problems: see calicoctl-rs node errors\n".into(),
        (n, _) => {
            format!("\n{n} datastore documents have problems: see calicoctl-rs node errors\n")
        }
    }
}

#[cfg(test)]
mod tests;
