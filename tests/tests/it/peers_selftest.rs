//! Self-tests of the BIRD / GoBGP peer helpers: sessions, route exchange both ways, graceful restart,
//! MD5, SIGSTOP/SIGCONT, bulk injection.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use calico_lab::lab::{Lab, Netns};
use calico_lab::peers::{prefixes_v4, Bird, Gobgp, MrtAttrs};
use calico_lab::wait::{consistently, eventually};
use ipnet::IpNet;

const UP: Duration = Duration::from_secs(30);

/// Two namespaces `bird` (10.0.0.1, fd00::1) and `gobgp` (10.0.0.2, fd00::2) on one segment.
fn two_speakers(tag: &str) -> Result<(Lab, Netns, Netns)> {
    let lab = Lab::new(tag)?;
    let lan = lab.segment("lan")?;
    let b = lab.netns("bird")?;
    let g = lab.netns("gobgp")?;
    lan.attach(&b, "eth0", &["10.0.0.1/24", "fd00::1/64"])?;
    lan.attach(&g, "eth0", &["10.0.0.2/24", "fd00::2/64"])?;
    Ok((lab, b, g))
}

fn bird_conf(extra_bgp: &str) -> String {
    format!(
        r#"
router id 10.0.0.1;
protocol device {{}}
protocol static s4 {{ ipv4; route 10.99.0.0/26 blackhole; }}
protocol static s6 {{ ipv6; route fd99::/64 blackhole; }}
protocol bgp gobgp4 {{
  local 10.0.0.1 as 65001; neighbor 10.0.0.2 as 65002;
  hold time 9;
  {extra_bgp}
  ipv4 {{ import all; export all; }};
}}
protocol bgp gobgp6 {{
  local fd00::1 as 65001; neighbor fd00::2 as 65002;
  hold time 9;
  {extra_bgp}
  ipv6 {{ import all; export all; }};
}}
"#
    )
}

fn gobgp_neighbor(addr: &str, family: &str, extra: &str, gr: bool) -> String {
    let gr_n = if gr {
        "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 60\n"
    } else {
        ""
    };
    let gr_af = if gr {
        "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n"
    } else {
        ""
    };
    format!(
        r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{addr}"
    peer-as = 65001
{extra}
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
    connect-retry = 1
{gr_n}  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "{family}-unicast"
{gr_af}"#
    )
}

fn gobgp_conf(extra: &str, gr: bool) -> String {
    format!(
        "[global.config]\n  as = 65002\n  router-id = \"10.0.0.2\"\n{}{}",
        gobgp_neighbor("10.0.0.1", "ipv4", extra, gr),
        gobgp_neighbor("fd00::1", "ipv6", extra, gr)
    )
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn bird_and_gobgp_exchange_routes_v4_v6() -> Result<()> {
    let (_lab, b, g) = two_speakers("ebgp")?;
    let bird = Bird::start(&b, &bird_conf(""))?;
    let mut gobgp = Gobgp::start(&g, &gobgp_conf("", false))?;
    bird.wait_established("gobgp4", UP)?;
    bird.wait_established("gobgp6", UP)?;
    gobgp.wait_established("10.0.0.1", UP)?;
    gobgp.wait_established("fd00::1", UP)?;
    assert_eq!(bird.protocol_state("s4")?, "up");
    assert!(bird.routes("10.53.0.0/26")?.is_empty());
    assert_eq!(bird.routes("10.99.0.0/26")?.len(), 1);

    // BIRD's static routes reach GoBGP's RIB with BIRD's AS and next hop.
    let rib = eventually(UP, || {
        let rib = gobgp.rib("ipv4")?;
        ensure!(
            rib.iter().any(|e| e.prefix == net("10.99.0.0/26")),
            "{rib:?}"
        );
        Ok(rib)
    })?;
    let e = rib
        .iter()
        .find(|e| e.prefix == net("10.99.0.0/26"))
        .unwrap();
    assert_eq!(e.as_path, vec![65001]);
    assert_eq!(e.next_hop, Some("10.0.0.1".parse()?));
    eventually(UP, || {
        let p = gobgp.prefixes("ipv6")?;
        ensure!(p.contains(&net("fd99::/64")), "{p:?}");
        Ok(())
    })?;

    // Routes added with the gobgp CLI reach BIRD, and are withdrawn.
    gobgp.add_route(
        "10.50.0.0/24",
        &[
            "nexthop",
            "10.0.0.2",
            "aspath",
            "65010",
            "community",
            "100:1",
        ],
    )?;
    gobgp.add_route("fd50::/64", &["nexthop", "fd00::2"])?;
    eventually(UP, || {
        let r = bird.routes("")?;
        let r4 = r.iter().find(|r| r.prefix == net("10.50.0.0/24"));
        ensure!(
            r4.is_some_and(
                |r| r.proto == "gobgp4" && r.via == [std::net::IpAddr::from([10, 0, 0, 2])]
            ),
            "{r:?}"
        );
        ensure!(r.iter().any(|r| r.prefix == net("fd50::/64")), "{r:?}");
        Ok(())
    })?;
    gobgp.del_route("10.50.0.0/24")?;
    eventually(UP, || {
        let p = bird.prefixes("")?;
        ensure!(!p.contains(&net("10.50.0.0/24")), "{p:?}");
        Ok(())
    })?;
    assert_eq!(gobgp.adj_in_count("10.0.0.1", "ipv4")?, 1);

    // gobgpd crash-restarts and the sessions come back.
    gobgp.restart(false)?;
    gobgp.wait_established("10.0.0.1", UP)?;
    bird.wait_established("gobgp4", UP)?;
    let n = gobgp.neighbors()?;
    assert_eq!(n.len(), 2, "{n:?}");
    Ok(())
}

#[test]
fn sigstop_makes_birdc_fail_until_sigcont() -> Result<()> {
    let lab = Lab::new("stop")?;
    let b = lab.netns("b")?;
    let bird = Bird::start(&b, "router id 10.1.1.1;\nprotocol device {}\n")?;
    bird.proc().stop()?;
    let t = Instant::now();
    let e = bird.birdc("show status").unwrap_err();
    assert!(format!("{e:#}").contains("timed out"), "{e:#}");
    assert!(t.elapsed() < Duration::from_secs(10));
    bird.proc().cont()?;
    eventually(Duration::from_secs(5), || bird.birdc("show status"))?;
    Ok(())
}

#[test]
fn md5_and_graceful_restart() -> Result<()> {
    let (_lab, b, g) = two_speakers("grmd5")?;
    let mut bird = Bird::start(
        &b,
        &bird_conf("password \"s3cret\"; graceful restart on; graceful restart time 60;"),
    )?;
    let gobgp = Gobgp::start(&g, &gobgp_conf("    auth-password = \"s3cret\"", true))?;
    bird.wait_established("gobgp4", UP)?;
    gobgp.wait_established("fd00::1", UP)?;
    let has_route = |stale: bool| -> Result<()> {
        let rib = gobgp.rib("ipv4")?;
        ensure!(
            rib.iter()
                .any(|e| e.prefix == net("10.99.0.0/26") && e.stale == stale),
            "want 10.99.0.0/26 stale={stale}: {rib:?}"
        );
        Ok(())
    };
    eventually(UP, || has_route(false))?;

    // BIRD exits for graceful restart: GoBGP keeps the route, marked stale.
    bird.graceful_stop()?;
    eventually(UP, || has_route(true))?;
    consistently(Duration::from_secs(2), || has_route(true))?;
    bird.graceful_start()?;
    bird.wait_established("gobgp4", UP)?;
    eventually(UP, || has_route(false))?;

    // A crash restart (SIGKILL) also comes back.
    bird.restart()?;
    bird.wait_established("gobgp4", UP)?;
    gobgp.wait_established("10.0.0.1", UP)?;

    // A wrong MD5 password keeps the session down.
    let lab2 = Lab::new("md5bad")?;
    let lan = lab2.segment("lan")?;
    let b2 = lab2.netns("bird")?;
    let g2 = lab2.netns("gobgp")?;
    lan.attach(&b2, "eth0", &["10.0.0.1/24", "fd00::1/64"])?;
    lan.attach(&g2, "eth0", &["10.0.0.2/24", "fd00::2/64"])?;
    let bird2 = Bird::start(&b2, &bird_conf("password \"right\";"))?;
    let gobgp2 = Gobgp::start(&g2, &gobgp_conf("    auth-password = \"wrong\"", false))?;
    consistently(Duration::from_secs(3), || {
        let st = bird2.protocol_state("gobgp4")?;
        ensure!(st != "Established", "established with a wrong password");
        Ok(())
    })?;
    drop(gobgp2);
    Ok(())
}

#[test]
fn ibgp_template_between_birds() -> Result<()> {
    let lab = Lab::new("ibgp")?;
    let lan = lab.segment("lan")?;
    let n1 = lab.netns("n1")?;
    let n2 = lab.netns("n2")?;
    lan.attach(&n1, "eth0", &["10.0.0.1/24"])?;
    lan.attach(&n2, "eth0", &["10.0.0.2/24"])?;
    let conf = |me: &str, peer: &str, block: &str| {
        format!(
            r#"
router id {me};
protocol device {{}}
protocol static {{ ipv4; route {block} blackhole; }}
template bgp ibgp_peer {{
  local as 64512; hold time 9; graceful restart on;
  direct;
  ipv4 {{ import all; export all; next hop self; }};
}}
protocol bgp peer from ibgp_peer {{ neighbor {peer} as 64512; }}
"#
        )
    };
    let b1 = Bird::start(&n1, &conf("10.0.0.1", "10.0.0.2", "10.101.0.0/26"))?;
    let b2 = Bird::start(&n2, &conf("10.0.0.2", "10.0.0.1", "10.102.0.0/26"))?;
    b1.wait_established("peer", UP)?;
    eventually(UP, || {
        let r = b1.routes("protocol peer")?;
        ensure!(r.iter().any(|r| r.prefix == net("10.102.0.0/26")), "{r:?}");
        Ok(())
    })?;
    eventually(UP, || {
        let p = b2.prefixes("")?;
        ensure!(p.contains(&net("10.101.0.0/26")), "{p:?}");
        Ok(())
    })?;
    Ok(())
}

/// Bulk injection into GoBGP, then all of it reaches BIRD (the 100k case is measured by the
/// `bgp_propagation` benchmark, which injects the same way).
#[test]
fn bulk_inject_reaches_bird() -> Result<()> {
    bulk_inject("bulk", 10_000)
}

fn bulk_inject(tag: &str, n: usize) -> Result<()> {
    let (_lab, b, g) = two_speakers(tag)?;
    let bird = Bird::start(&b, &bird_conf(""))?;
    let gobgp = Gobgp::start(&g, &gobgp_conf("", false))?;
    bird.wait_established("gobgp4", UP)?;
    let prefixes = prefixes_v4("100.64.0.0".parse()?, 24, n)?;
    let t = Instant::now();
    gobgp.add_routes_bulk(
        &prefixes,
        &MrtAttrs::new("10.0.0.2".parse()?, &[65010, 65011]),
    )?;
    let injected = t.elapsed();
    let in_rib = gobgp.wait_rib_count("ipv4", n as u64, Duration::from_secs(120))?;
    let rib = gobgp.rib("ipv4")?;
    let e = rib.iter().find(|e| e.prefix == prefixes[n / 2]).unwrap();
    assert_eq!(e.as_path, vec![65010, 65011]);
    assert_eq!(e.next_hop, Some("10.0.0.2".parse()?));
    // BIRD counts routes imported by the protocol (`Routes: N imported, ...`).
    let at_bird = eventually(Duration::from_secs(300), || {
        let out = bird.birdc("show protocols all gobgp4")?;
        let imported: usize = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Routes:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        ensure!(imported >= n, "bird has {imported} of {n}");
        Ok(t.elapsed())
    })?;
    eprintln!(
        "bulk inject {n} prefixes: CLI returned after {injected:.2?}, in gobgp RIB after {in_rib:.2?} \
         (from RIB poll start), all at BIRD after {at_bird:.2?}"
    );
    Ok(())
}
