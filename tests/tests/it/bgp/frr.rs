//! Our speaker with FRR's bgpd: eBGP with a 4-octet AS and iBGP, each over an IPv4 session (IPv4
//! unicast) and an IPv6 session (IPv6 unicast), routes both ways, a changed attribute and
//! withdrawals, bgpd stopping, eBGP sessions with graceful restart that stay Established for a
//! minute without a flap (a second connection from the peer while Established used to end the
//! session as a graceful restart), and a bgpd restart that we learn of only from its new OPENs
//! (RFC 4724 4.2). The minute runs beside the other tests, not after them.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, ensure, Result};
use bgp::{GracefulRestartCfg, OriginAttrs, SpeakerCfg, SpeakerEvent, State};
use calico_lab::lab::{Lab, Netns};
use calico_lab::peers::{Frr, FrrRoute};
use calico_lab::wait::{consistently, eventually};

use super::{net, pair, peer_cfg, speaker_cfg, Ours, UP};

/// bgpd in `b` (router id 10.0.0.2, AS `frr_as`) with two neighbors in AS `our_as`: 10.0.0.1 for
/// IPv4 unicast and fd00::1 for IPv6 unicast; it originates 10.98.0.0/26, 10.98.0.64/26 and
/// fd98::/64. `extra` goes inside `router bgp`, before the address families.
fn frr_conf(frr_as: u32, our_as: u32, extra: &str) -> String {
    format!(
        r#"frr defaults traditional
hostname frr-b
log stdout informational
!
router bgp {frr_as}
 bgp router-id 10.0.0.2
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 10.0.0.1 remote-as {our_as}
 neighbor 10.0.0.1 timers 3 9
 neighbor 10.0.0.1 timers connect 1
 neighbor fd00::1 remote-as {our_as}
 neighbor fd00::1 timers 3 9
 neighbor fd00::1 timers connect 1
 {extra}
 address-family ipv4 unicast
  network 10.98.0.0/26
  network 10.98.0.64/26
  no neighbor fd00::1 activate
 exit-address-family
 address-family ipv6 unicast
  network fd98::/64
  neighbor fd00::1 activate
 exit-address-family
!
"#
    )
}

const PEERS: [&str; 2] = ["10.0.0.2", "fd00::2"];
const OURS: [&str; 2] = ["10.0.0.1", "fd00::1"];

/// Ours in `a` with both FRR neighbors, both sessions Established on both sides.
struct Setup {
    _lab: Lab,
    /// Our namespace.
    a: Netns,
    frr: Frr,
    ours: Ours,
}

/// `frr_extra` goes into FRR's `router bgp`; `gr`: ours does graceful restart.
fn up(tag: &str, frr_as: u32, our_as: u32, frr_extra: &str, gr: bool) -> Result<Setup> {
    let lab = Lab::new(tag)?;
    let (a, b) = pair(&lab)?;
    let frr = Frr::start(&b, &frr_conf(frr_as, our_as, frr_extra))?;
    let mut cfg: SpeakerCfg = speaker_cfg(our_as, "10.0.0.1");
    cfg.next_hop_v6 = Some("fd00::1".parse()?);
    if gr {
        cfg.graceful_restart = Some(GracefulRestartCfg {
            restart_time: 30,
            restarting: false,
            forwarding_preserved: true,
            stale_time: 30,
        });
    }
    let peers = PEERS
        .iter()
        .map(|addr| {
            let mut p = peer_cfg(addr, frr_as);
            p.next_hop_self = true;
            p
        })
        .collect();
    let ours = Ours::start(&a, cfg, peers)?;
    for addr in PEERS {
        let st = ours.wait_state(addr, State::Established, UP)?;
        let n = st.negotiated.expect("negotiated");
        ensure!(n.four_octet_as, "{addr}: 4-octet AS not negotiated");
    }
    for addr in OURS {
        frr.wait_established(addr, UP)?;
    }
    Ok(Setup {
        _lab: lab,
        a,
        frr,
        ours,
    })
}

/// The paths FRR holds for `prefix` that are valid and best.
fn frr_best(frr: &Frr, prefix: &str) -> Result<FrrRoute> {
    frr.route(prefix)?
        .into_iter()
        .find(|r| r.best && r.valid)
        .ok_or_else(|| anyhow!("{prefix}: no valid best path in FRR"))
}

/// FRR -> us and us -> FRR, IPv4 and IPv6, then an attribute change and a withdrawal each way.
fn routes_both_ways(s: &Setup, frr_as: u32, our_as: u32) -> Result<()> {
    let ibgp = frr_as == our_as;
    let (frr, ours) = (&s.frr, &s.ours);
    for p in ["10.98.0.0/26", "10.98.0.64/26"] {
        let r = ours.wait_learned(p, UP)?;
        assert_eq!(r.next_hops, vec!["10.0.0.2".parse::<std::net::IpAddr>()?]);
        if ibgp {
            assert!(r.as_path.is_empty(), "iBGP: {:?}", r.as_path);
            assert_eq!(r.local_pref, Some(100));
        } else {
            assert_eq!(r.as_path, vec![frr_as], "eBGP: FRR's AS prepended");
        }
    }
    let r6 = ours.wait_learned("fd98::/64", UP)?;
    assert_eq!(r6.next_hops, vec!["fd00::2".parse::<std::net::IpAddr>()?]);

    ours.h.originate(vec![
        (net("10.1.0.0/26"), OriginAttrs::default()),
        (net("fd01::/122"), OriginAttrs::default()),
    ])?;
    let r = eventually(UP, || frr_best(frr, "10.1.0.0/26"))?;
    ensure!(
        r.next_hops == vec!["10.0.0.1".parse::<std::net::IpAddr>()?],
        "next hop: {r:?}"
    );
    if ibgp {
        ensure!(r.as_path.is_empty() && r.local_pref == Some(100), "{r:?}");
    } else {
        ensure!(r.as_path == vec![our_as], "AS path: {r:?}");
    }
    let r6 = eventually(UP, || frr_best(frr, "fd01::/122"))?;
    ensure!(
        r6.next_hops.first() == Some(&"fd00::1".parse()?),
        "v6 next hop: {r6:?}"
    );

    ours.h.originate(vec![(
        net("10.1.0.0/26"),
        OriginAttrs {
            med: Some(7),
            ..OriginAttrs::default()
        },
    )])?;
    eventually(UP, || match frr_best(frr, "10.1.0.0/26")?.med {
        Some(7) => Ok(()),
        m => bail!("MED {m:?}, want 7"),
    })?;
    ours.h
        .withdraw(vec![net("10.1.0.0/26"), net("fd01::/122")])?;
    eventually(UP, || {
        for p in ["10.1.0.0/26", "fd01::/122"] {
            ensure!(frr.route(p)?.is_empty(), "{p} still in FRR");
        }
        Ok(())
    })?;
    Ok(())
}

#[test]
fn frr_ebgp_4_octet_as_v4_v6_and_no_flap_for_a_minute() -> Result<()> {
    let (frr_as, our_as) = (65002, 4_200_000_001);
    let s = up("febgp", frr_as, our_as, "", true)?;
    let since: Vec<SystemTime> = PEERS
        .iter()
        .map(|a| s.ours.peer(a).expect("peer").since)
        .collect();
    routes_both_ways(&s, frr_as, our_as)?;
    consistently(Duration::from_secs(60), || {
        for (addr, since) in PEERS.iter().zip(&since) {
            let p = s.ours.peer(addr).ok_or_else(|| anyhow!("no peer {addr}"))?;
            ensure!(
                p.state == State::Established && p.since == *since,
                "{addr}: session flapped: {p:?}"
            );
        }
        Ok(())
    })?;
    for addr in OURS {
        let counts = s.frr.neighbor_counts(addr)?;
        ensure!(
            counts == (1, 0),
            "FRR's session with {addr}: (up, dropped) = {counts:?}"
        );
    }
    Ok(())
}

#[test]
fn frr_ibgp_v4_v6_and_stop() -> Result<()> {
    let mut s = up("fibgp", 65001, 65001, "", false)?;
    routes_both_ways(&s, 65001, 65001)?;
    // bgpd stopped by its PID (SIGTERM) says goodbye with a NOTIFICATION; without graceful restart
    // its routes go at once.
    let pid = s.frr.proc().pid();
    ensure!(
        s.frr.pid_from_file() == Some(pid),
        "bgpd's pid file does not name {pid}"
    );
    s.frr.stop(Duration::from_secs(5))?;
    for addr in PEERS {
        let p = eventually(UP, || match s.ours.peer(addr) {
            Some(p) if p.state != State::Established => Ok(p),
            p => bail!("{addr} still up: {p:?}"),
        })?;
        let why = p.last_error.unwrap_or_default();
        ensure!(
            why.starts_with("received NOTIFICATION"),
            "{addr}: last error {why:?}"
        );
    }
    for p in ["10.98.0.0/26", "10.98.0.64/26", "fd98::/64"] {
        s.ours.wait_not_learned(p, UP)?;
    }
    Ok(())
}

/// Our end of each BGP connection in `ns` to `peer`, as (local port, remote port).
fn connections_to(ns: &Netns, peer: &str) -> Result<Vec<(u16, u16)>> {
    let out = ns.run(&[
        "ss",
        "-Htn",
        "state",
        "established",
        "( sport = :179 or dport = :179 )",
    ])?;
    let port = |a: &str| -> Result<u16> {
        let (_, p) = a.rsplit_once(':').ok_or_else(|| anyhow!("address {a}"))?;
        Ok(p.parse()?)
    };
    let mut v = Vec::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [_, _, local, remote, ..] = f[..] else {
            bail!("ss line {l:?}");
        };
        let host = remote.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
        if host.trim_matches(|c| c == '[' || c == ']') == peer {
            v.push((port(local)?, port(remote)?));
        }
    }
    Ok(v)
}

/// RFC 4724 4.2 with a real peer: bgpd restarts before we see its old connections die (its
/// kernel's FIN and RST are dropped in our namespace), so we learn of the restart only from its new
/// connections' OPENs, which carry the Graceful Restart capability. Each replaces the session it
/// collides with at once (long before the hold timer), the old session ends as a lost connection,
/// and FRR's routes, kept as stale meanwhile, are never withdrawn.
#[test]
fn frr_restart_seen_only_in_its_new_open_keeps_its_routes() -> Result<()> {
    let gr = "bgp graceful-restart\n bgp graceful-restart preserve-fw-state";
    let s = up("frst", 65002, 65001, gr, true)?;
    for addr in PEERS {
        let st = s.ours.peer(addr).expect("peer");
        ensure!(
            st.negotiated.as_ref().is_some_and(|n| n.graceful_restart),
            "{addr}: GR not negotiated: {st:?}"
        );
    }
    let held = ["10.98.0.0/26", "10.98.0.64/26", "fd98::/64"];
    for p in held {
        s.ours.wait_learned(p, UP)?;
    }
    let mut rules = String::from(
        "table inet crsblock {\n chain input {\n  type filter hook input priority 0;\n",
    );
    for (addr, fam) in [("10.0.0.2", "ip"), ("fd00::2", "ip6")] {
        for (local, remote) in connections_to(&s.a, addr)? {
            rules += &format!("  {fam} saddr {addr} tcp sport {remote} tcp dport {local} drop\n");
        }
    }
    rules += " }\n}\n";
    ensure!(rules.matches(" drop").count() == 2, "connections: {rules}");
    s.a.run_stdin(&["nft", "-f", "-"], rules.as_bytes())?;

    let since: Vec<SystemTime> = PEERS
        .iter()
        .map(|a| s.ours.peer(a).expect("peer").since)
        .collect();
    let mut changes = s.ours.h.subscribe_routes();
    let mut events = s.ours.h.subscribe();
    let mut frr = s.frr;
    let t0 = std::time::Instant::now();
    frr.restart()?;
    for (addr, since) in PEERS.iter().zip(&since) {
        eventually(UP, || match s.ours.peer(addr) {
            Some(p) if p.state == State::Established && p.since != *since => Ok(()),
            p => bail!("{addr}: not re-established: {p:?}"),
        })?;
    }
    let took = t0.elapsed();
    ensure!(
        took < Duration::from_secs(8),
        "took {took:?}: the hold timer (9 s), not the new OPEN, ended the old session"
    );
    for p in held {
        eventually(UP, || match s.ours.learned(p)? {
            Some(r) if !r.stale => Ok(()),
            r => bail!("{p} not refreshed: {r:?}"),
        })?;
    }
    let mut downs = Vec::new();
    while let Ok(ev) = events.try_recv() {
        let SpeakerEvent::PeerState {
            address,
            to,
            reason,
            ..
        } = ev;
        if to == State::Idle {
            downs.push((address.to_string(), reason));
        }
    }
    let lost = Some("connection lost".to_string());
    ensure!(
        downs.len() == 2 && downs.iter().all(|(_, why)| *why == lost),
        "the old sessions should end as lost connections, once each: {downs:?}"
    );
    loop {
        let batch = match changes.try_recv() {
            Ok(b) => b,
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
            Err(e) => bail!("route changes: {e}"),
        };
        for c in batch.iter() {
            ensure!(
                c.best.is_some() || !held.contains(&c.prefix.to_string().as_str()),
                "{} was withdrawn during FRR's restart",
                c.prefix
            );
        }
    }
    Ok(())
}
