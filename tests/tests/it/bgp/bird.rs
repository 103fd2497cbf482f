//! Our speaker with BIRD 2: eBGP and iBGP, IPv4 and IPv6, a 4-octet AS, both directions,
//! withdrawals, attribute changes, hold timer, TCP MD5, GTSM, refused strangers.

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use bgp::{OriginAttrs, State};
use calico_lab::lab::Lab;
use calico_lab::peers::Bird;
use calico_lab::wait::{consistently, eventually};

use super::{net, pair, peer_cfg, speaker_cfg, Ours, UP};

/// BIRD in `b` (10.0.0.2, AS `bird_as`) peering with us at 10.0.0.1 (AS `our_as`), exporting two
/// static /26s and a /64. `extra` goes inside the bgp protocol block.
fn bird_conf(bird_as: u32, our_as: u32, extra: &str) -> String {
    format!(
        r#"
router id 10.0.0.2;
protocol device {{ }}
protocol static s4 {{ ipv4; route 10.99.0.0/26 blackhole; route 10.99.0.64/26 blackhole; }}
protocol static s6 {{ ipv6; route fd99::/64 blackhole; }}
protocol bgp ours {{
  local 10.0.0.2 as {bird_as};
  neighbor 10.0.0.1 as {our_as};
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  direct;
  {extra}
  ipv4 {{ import all; export all; next hop self; gateway direct; }};
  ipv6 {{ import all; export all; next hop address fd00::2; gateway direct; }};
}}
"#
    )
}

/// The route line BIRD shows for `prefix` (with attributes: `show route all`), if it has one.
pub fn bird_route(bird: &Bird, prefix: &str) -> Result<Option<String>> {
    Ok(bird
        .show_route(&format!("{prefix} all"))?
        .filter(|out| out.contains(prefix)))
}

fn exchange(bird_as: u32, our_as: u32) -> Result<()> {
    let lab = Lab::new(if bird_as == our_as { "bibgp" } else { "bebgp" })?;
    let (a, b) = pair(&lab)?;
    let bird = Bird::start(&b, &bird_conf(bird_as, our_as, ""))?;
    let mut cfg = speaker_cfg(our_as, "10.0.0.1");
    cfg.next_hop_v6 = Some("fd00::1".parse()?);
    let mut peer = peer_cfg("10.0.0.2", bird_as);
    peer.next_hop_self = true;
    let ours = Ours::start(&a, cfg, vec![peer])?;
    let st = ours.wait_state("10.0.0.2", State::Established, UP)?;
    let n = st.negotiated.expect("negotiated");
    ensure!(n.four_octet_as, "4-octet AS not negotiated");
    ensure!(n.families.len() == 2, "families: {:?}", n.families);
    eventually(UP, || match bird.protocol_state("ours")?.as_str() {
        "Established" => Ok(()),
        s => bail!("BIRD says {s}"),
    })?;

    // BIRD -> us, IPv4 and IPv6.
    let r = ours.wait_learned("10.99.0.0/26", UP)?;
    assert_eq!(r.next_hops, vec!["10.0.0.2".parse::<std::net::IpAddr>()?]);
    if bird_as != our_as {
        assert_eq!(r.as_path, vec![bird_as], "eBGP: BIRD's AS prepended");
    } else {
        assert!(
            r.as_path.is_empty(),
            "iBGP: path unchanged: {:?}",
            r.as_path
        );
        assert_eq!(r.local_pref, Some(100));
    }
    ours.wait_learned("10.99.0.64/26", UP)?;
    let r6 = ours.wait_learned("fd99::/64", UP)?;
    assert_eq!(r6.next_hops, vec!["fd00::2".parse::<std::net::IpAddr>()?]);

    // Us -> BIRD.
    ours.h.originate(vec![
        (net("10.1.0.0/26"), OriginAttrs::default()),
        (net("fd01::/122"), OriginAttrs::default()),
    ])?;
    let line = eventually(UP, || {
        bird_route(&bird, "10.1.0.0/26")?.ok_or_else(|| anyhow::anyhow!("not in BIRD"))
    })?;
    assert!(line.contains("via 10.0.0.1"), "{line}");
    if bird_as != our_as {
        assert!(
            line.contains(&format!("AS{our_as}")),
            "our AS in the path: {line}"
        );
    }
    let line6 = eventually(UP, || {
        bird_route(&bird, "fd01::/122")?.ok_or_else(|| anyhow::anyhow!("not in BIRD"))
    })?;
    assert!(line6.contains("via fd00::1"), "{line6}");

    // Changed attributes propagate: add a community and a large community.
    ours.h.originate(vec![(
        net("10.1.0.0/26"),
        OriginAttrs {
            communities: vec![(65000 << 16) | 42],
            large_communities: vec![(our_as, 7, 8)],
            med: Some(33),
            ..OriginAttrs::default()
        },
    )])?;
    eventually(UP, || {
        let l = bird_route(&bird, "10.1.0.0/26")?.unwrap_or_default();
        ensure!(l.contains("(65000,42)"), "community not there yet: {l}");
        ensure!(
            l.contains(&format!("({our_as}, 7, 8)")),
            "large community not there yet: {l}"
        );
        ensure!(l.contains("BGP.med: 33"), "MED not there yet: {l}");
        Ok(())
    })?;

    // Withdrawals, both ways.
    ours.h.withdraw(vec![net("10.1.0.0/26")])?;
    eventually(UP, || match bird_route(&bird, "10.1.0.0/26")? {
        None => Ok(()),
        Some(l) => bail!("still in BIRD: {l}"),
    })?;
    bird.birdc("disable s6")?;
    ours.wait_not_learned("fd99::/64", UP)?;
    ensure!(
        ours.learned("10.99.0.0/26")?.is_some(),
        "IPv4 routes unaffected"
    );
    let st = ours.peer("10.0.0.2").expect("peer");
    assert_eq!(st.prefixes_accepted, 2);
    Ok(())
}

#[test]
fn bird_ebgp_4_octet_as_v4_v6() -> Result<()> {
    exchange(65002, 4_200_000_001)
}

#[test]
fn bird_ibgp_v4_v6() -> Result<()> {
    exchange(4_200_000_001, 4_200_000_001)
}

#[test]
fn two_octet_bird_gets_as_trans_and_as4_path() -> Result<()> {
    // ours (AS 4200000001) -> BIRD b (AS4 off, AS 65002) -> BIRD c (AS4 on, AS 65003). On the
    // 2-octet session we must send AS_TRANS in AS_PATH plus AS4_PATH (RFC 6793); BIRD b rebuilds
    // our real AS from them, and passes it on to BIRD c. Routes from the 2-octet BIRD reach us with
    // the right path.
    let lab = Lab::new("bas2")?;
    let (a, b) = pair(&lab)?;
    let c = lab.netns("c")?;
    lab.veth((&b, "eth1"), (&c, "eth0"))?;
    b.addr("eth1", "10.0.1.1/24")?;
    c.addr("eth0", "10.0.1.2/24")?;
    b.up("eth1")?;
    c.up("eth0")?;
    let to_c = r#"
protocol bgp c { local 10.0.1.1 as 65002; neighbor 10.0.1.2 as 65003; connect retry time 1;
  ipv4 { import all; export all; next hop self; }; }
"#;
    let mut conf = bird_conf(65002, 23456, "enable as4 off;");
    conf.push_str(to_c);
    let bird_b = Bird::start(&b, &conf)?;
    let bird_c = Bird::start(
        &c,
        r#"
router id 10.0.1.2;
protocol device { }
protocol bgp b { local 10.0.1.2 as 65003; neighbor 10.0.1.1 as 65002; connect retry time 1;
  ipv4 { import all; export none; gateway direct; }; }
"#,
    )?;
    // We leave out the 4-octet AS capability too, as an old speaker would: BIRD b takes us for AS
    // 23456 and the session is 2-octet on both sides.
    let mut peer = peer_cfg("10.0.0.2", 65002);
    peer.four_octet_as = false;
    let ours = Ours::start(&a, speaker_cfg(4_200_000_001, "10.0.0.1"), vec![peer])?;
    let st = ours.wait_state("10.0.0.2", State::Established, UP)?;
    ensure!(
        !st.negotiated.expect("negotiated").four_octet_as,
        "the session must be 2-octet"
    );
    ours.h
        .originate(vec![(net("10.1.0.0/26"), OriginAttrs::default())])?;
    let at_b = eventually(UP, || {
        bird_route(&bird_b, "10.1.0.0/26")?.ok_or_else(|| anyhow::anyhow!("not in BIRD b"))
    })?;
    // BIRD keeps paths in 4-octet form internally: on a session it agrees is 2-octet, it can only
    // know our real AS from the AS4_PATH we sent beside AS_TRANS.
    let proto = bird_b.birdc("show protocols all ours")?;
    assert!(
        proto.contains("Session:") && !proto.contains("AS4"),
        "BIRD b must see a 2-octet session: {proto}"
    );
    assert!(
        at_b.contains("BGP.as_path: 4200000001"),
        "AS4_PATH merged by the 2-octet receiver: {at_b}"
    );
    let at_c = eventually(UP, || {
        bird_route(&bird_c, "10.1.0.0/26")?.ok_or_else(|| anyhow::anyhow!("not in BIRD c"))
    })?;
    assert!(
        at_c.contains("BGP.as_path: 65002 4200000001"),
        "AS4_PATH merged downstream: {at_c}"
    );
    let r = ours.wait_learned("10.99.0.0/26", UP)?;
    assert_eq!(r.as_path, vec![65002]);
    Ok(())
}

#[test]
fn hold_timer_expires_when_bird_is_frozen() -> Result<()> {
    let lab = Lab::new("bhold")?;
    let (a, b) = pair(&lab)?;
    let bird = Bird::start(&b, &bird_conf(65002, 65001, ""))?;
    let mut peer = peer_cfg("10.0.0.2", 65002);
    peer.hold_time = 3;
    let ours = Ours::start(&a, speaker_cfg(65001, "10.0.0.1"), vec![peer])?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;
    ours.wait_learned("10.99.0.0/26", UP)?;
    bird.proc().stop()?;
    let t0 = std::time::Instant::now();
    let st = eventually(Duration::from_secs(10), || match ours.peer("10.0.0.2") {
        Some(p) if p.state != State::Established => Ok(p),
        _ => bail!("still Established"),
    })?;
    let waited = t0.elapsed();
    bird.proc().cont()?;
    assert!(
        waited >= Duration::from_secs(2),
        "down too early: {waited:?}"
    );
    assert!(
        waited <= Duration::from_secs(5),
        "hold timer of 3 s took {waited:?}"
    );
    let err = st.last_error.unwrap_or_default();
    assert!(
        err.contains("sent NOTIFICATION") && err.contains("Hold Timer Expired"),
        "{err}"
    );
    ours.wait_not_learned("10.99.0.0/26", UP)?;
    // And it recovers.
    ours.wait_state("10.0.0.2", State::Established, Duration::from_secs(30))?;
    Ok(())
}

#[test]
fn md5_password_right_and_wrong() -> Result<()> {
    let lab = Lab::new("bmd5")?;
    let (a, b) = pair(&lab)?;
    let _bird = Bird::start(&b, &bird_conf(65002, 65001, "password \"s3cret\";"))?;
    let mut peer = peer_cfg("10.0.0.2", 65002);
    peer.password = Some("s3cret".into());
    let ours = Ours::start(&a, speaker_cfg(65001, "10.0.0.1"), vec![peer])?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;
    ours.wait_learned("10.99.0.0/26", UP)?;
    drop(ours);

    // Wrong password: never comes up.
    let lab = Lab::new("bmd5x")?;
    let (a, b) = pair(&lab)?;
    let bird = Bird::start(&b, &bird_conf(65002, 65001, "password \"s3cret\";"))?;
    let mut peer = peer_cfg("10.0.0.2", 65002);
    peer.password = Some("wrong".into());
    let ours = Ours::start(&a, speaker_cfg(65001, "10.0.0.1"), vec![peer])?;
    consistently(Duration::from_secs(6), || match ours.peer("10.0.0.2") {
        Some(p) if p.state == State::Established => bail!("came up with the wrong password"),
        _ => Ok(()),
    })?;
    assert_ne!(bird.protocol_state("ours")?, "Established");
    Ok(())
}

#[test]
fn gtsm_ttl_security_with_bird() -> Result<()> {
    let lab = Lab::new("bttl")?;
    let (a, b) = pair(&lab)?;
    let _bird = Bird::start(&b, &bird_conf(65002, 65001, "ttl security on;"))?;
    let mut peer = peer_cfg("10.0.0.2", 65002);
    peer.ttl_security = Some(1);
    let ours = Ours::start(&a, speaker_cfg(65001, "10.0.0.1"), vec![peer])?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;
    ours.wait_learned("10.99.0.0/26", UP)?;
    Ok(())
}

/// GTSM on the connections the peer opens: BIRD two hops away (a router namespace in between takes
/// one off the TTL) sends with TTL 255 and arrives with 254, so `ttl_security = 1` (minimum 255)
/// must refuse it, and `ttl_security = 2` (minimum 254) on the same topology must let it in. We
/// are passive, so every session attempt is one BIRD opened: the accepted-connection path.
#[test]
fn gtsm_refuses_a_peer_two_hops_away_on_its_connections() -> Result<()> {
    let lab = Lab::new("bttl2")?;
    let a = lab.netns("a")?;
    let r = lab.netns("r")?;
    let b = lab.netns("b")?;
    lab.veth((&a, "eth0"), (&r, "eth0"))?;
    lab.veth((&r, "eth1"), (&b, "eth0"))?;
    a.addr("eth0", "10.0.1.1/24")?;
    r.addr("eth0", "10.0.1.254/24")?;
    r.addr("eth1", "10.0.2.254/24")?;
    b.addr("eth0", "10.0.2.2/24")?;
    r.forwarding()?;
    a.ip(&["route", "add", "default", "via", "10.0.1.254"])?;
    b.ip(&["route", "add", "default", "via", "10.0.2.254"])?;
    // BIRD's own GTSM for two hops: it sends with TTL 255 and accepts 254 and more.
    let _bird = Bird::start(
        &b,
        r#"
router id 10.0.2.2;
protocol device { }
protocol static s4 { ipv4; route 10.99.0.0/26 blackhole; }
protocol bgp ours {
  local 10.0.2.2 as 65002;
  neighbor 10.0.1.1 as 65001;
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  multihop 2;
  ttl security on;
  ipv4 { import all; export all; next hop self; };
}
"#,
    )?;
    let mut peer = peer_cfg("10.0.2.2", 65002);
    peer.passive = true;
    peer.ttl_security = Some(1);
    let ours = Ours::start(&a, speaker_cfg(65001, "10.0.1.1"), vec![peer.clone()])?;
    consistently(Duration::from_secs(6), || match ours.peer("10.0.2.2") {
        Some(p) if p.state == State::Established => {
            bail!("a peer two hops away came up with ttl_security 1")
        }
        Some(_) => Ok(()),
        None => bail!("no peer 10.0.2.2"),
    })?;
    ensure!(ours.routes()?.is_empty(), "routes learned through GTSM");

    // The control: the same topology and BIRD, allowing two hops.
    peer.ttl_security = Some(2);
    ours.block(ours.h.update_peer(peer))?;
    ours.wait_state("10.0.2.2", State::Established, UP)?;
    ours.wait_learned("10.99.0.0/26", UP)?;
    Ok(())
}

#[test]
fn connections_from_unconfigured_addresses_are_refused() -> Result<()> {
    let lab = Lab::new("bref")?;
    let (a, b) = pair(&lab)?;
    // BIRD wants a session with us; we have no such peer configured (only 10.0.0.9).
    let bird = Bird::start(&b, &bird_conf(65002, 65001, ""))?;
    let ours = Ours::start(
        &a,
        speaker_cfg(65001, "10.0.0.1"),
        vec![peer_cfg("10.0.0.9", 65002)],
    )?;
    consistently(Duration::from_secs(4), || {
        let s = bird.protocol_state("ours")?;
        ensure!(
            s != "Established",
            "BIRD established a session we never configured"
        );
        Ok(())
    })?;
    assert!(ours.routes()?.is_empty());
    Ok(())
}

/// An import policy that rejects exactly `prefix` and accepts the rest.
fn reject_one(prefix: &str) -> bgp::Policy {
    use bgp::policy::{Match, PrefixMatch, Rule, Verdict};
    bgp::Policy {
        rules: vec![Rule {
            when: Match {
                prefixes: vec![PrefixMatch {
                    prefix: net(prefix),
                    ge: None,
                    le: None,
                }],
                ..Match::default()
            },
            set: vec![],
            verdict: Some(Verdict::Reject),
        }],
        default: Verdict::Accept,
    }
}

#[test]
fn import_policy_and_max_prefixes() -> Result<()> {
    let lab = Lab::new("bpol")?;
    let (a, b) = pair(&lab)?;
    let _bird = Bird::start(&b, &bird_conf(65002, 65001, ""))?;
    let mut peer = peer_cfg("10.0.0.2", 65002);
    peer.import = reject_one("10.99.0.64/26");
    let ours = Ours::start(&a, speaker_cfg(65001, "10.0.0.1"), vec![peer.clone()])?;
    ours.wait_learned("10.99.0.0/26", UP)?;
    ours.wait_learned("fd99::/64", UP)?;
    assert!(
        ours.learned("10.99.0.64/26")?.is_none(),
        "rejected by import policy"
    );
    let st = ours.peer("10.0.0.2").expect("peer");
    assert_eq!((st.prefixes_received, st.prefixes_accepted), (3, 2));

    // A limit of 1 prefix: BIRD sends 3 -> Cease/1.
    drop(ours);
    let lab2 = Lab::new("bmax")?;
    let (a, b) = pair(&lab2)?;
    let _bird = Bird::start(&b, &bird_conf(65002, 65001, ""))?;
    let mut peer = peer_cfg("10.0.0.2", 65002);
    peer.max_prefixes = Some(1);
    let ours = Ours::start(&a, speaker_cfg(65001, "10.0.0.1"), vec![peer])?;
    let st = eventually(UP, || match ours.peer("10.0.0.2") {
        Some(p)
            if p.last_error
                .as_deref()
                .unwrap_or("")
                .contains("Maximum Number of Prefixes") =>
        {
            Ok(p)
        }
        p => bail!("no max-prefix error yet: {p:?}"),
    })?;
    assert!(st
        .last_error
        .unwrap_or_default()
        .starts_with("sent NOTIFICATION"));
    Ok(())
}

#[test]
fn import_policy_change_uses_route_refresh_without_reset() -> Result<()> {
    use bgp::policy::Policy;
    let lab = Lab::new("brr")?;
    let (a, b) = pair(&lab)?;
    let _bird = Bird::start(&b, &bird_conf(65002, 65001, ""))?;
    let mut peer = peer_cfg("10.0.0.2", 65002);
    peer.import = reject_one("10.99.0.64/26");
    let ours = Ours::start(&a, speaker_cfg(65001, "10.0.0.1"), vec![peer.clone()])?;
    let up = ours.wait_state("10.0.0.2", State::Established, UP)?;
    ensure!(
        up.negotiated.as_ref().is_some_and(|n| n.route_refresh),
        "BIRD offers route refresh"
    );
    ours.wait_learned("10.99.0.0/26", UP)?;
    ensure!(
        ours.learned("10.99.0.64/26")?.is_none(),
        "rejected by import policy"
    );
    // We kept no copy of what the policy rejected: accepting it now needs BIRD to send its
    // routes again (RFC 2918), which must not reset the session.
    peer.import = Policy::accept_all();
    ours.block(ours.h.update_peer(peer))?;
    ours.wait_learned("10.99.0.64/26", UP)?;
    let st = ours.peer("10.0.0.2").expect("peer");
    ensure!(
        st.state == State::Established && st.since == up.since,
        "session was reset: {st:?}"
    );
    Ok(())
}
