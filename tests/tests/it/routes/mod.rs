//! felix routes end to end: two node namespaces on one L2 segment, two pods each behind `cali*`
//! veths named by DESIGN.md's rule, a felix route manager running inside each node namespace (on a
//! thread that entered it, with its own current-thread runtime), remote blocks given directly.
//!
//! ```text
//!  n1.p1  n1.p2                      n2.p1  n2.p2      pods: 10.65.{1,2}.{1,2}, fd10:65:{1,2}::{1,2}
//!    |eth0  |eth0                      |eth0  |eth0    gw 169.254.1.1 / fe80::ecee:eeff:feee:eeee
//!   cali.. cali..                     cali.. cali..
//!      [ n1 ]----eth0---[ lan br0 ]---eth0----[ n2 ]   10.99.0.{1,2}/24, fd00:99::{1,2}/64
//!   block 10.65.1.0/26, fd10:65:1::/122    block 10.65.2.0/26, fd10:65:2::/122
//! ```
//!
//! Each node's default route points at the other node, so without a blackhole a packet to an
//! unallocated address of the local block would be forwarded (and loop); with it, it dies at home.
//! The topology, the felix runner and the checks (ping, routes, counters) are in [`harness`]; the
//! lab has no `check` module, so they live here.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use calico_lab::wait::{eventually, until};
use calico_lab::Lab;
use felix::routes::{NextHop, RemoteBlock, RouteError, RoutesInput, WorkloadEndpoint};
use felix::workload_iface_name;

pub mod harness;

use harness::*;

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn routes_pods_reach_each_other_blackhole_tamper_foreign() -> Result<()> {
    let c = Cluster::new("rtmesh")?;
    let f1 = Felix::start(&c.nodes[0].ns, c.input(0))?;
    let f2 = Felix::start(&c.nodes[1].ns, c.input(1))?;
    f1.wait_in_sync()?;
    f2.wait_in_sync()?;
    let (n1, n2) = (&c.nodes[0].ns, &c.nodes[1].ns);
    assert_eq!(our_prefixes(n1)?, expected_prefixes(&c.input(0)));
    assert_eq!(our_prefixes(n2)?, expected_prefixes(&c.input(1)));

    // Host side of a workload veth, set up by felix.
    let p = &c.nodes[0].pods[0];
    let link = n1.ip(&["link", "show", &p.iface])?;
    ensure!(
        link.contains("link/ether ee:ee:ee:ee:ee:ee") && link.contains(",UP"),
        "{link}"
    );
    for (key, want) in [
        (format!("net.ipv4.conf.{}.proxy_arp", p.iface), "1"),
        (format!("net.ipv4.neigh.{}.proxy_delay", p.iface), "0"),
        (format!("net.ipv4.conf.{}.forwarding", p.iface), "1"),
        (format!("net.ipv6.conf.{}.accept_ra", p.iface), "0"),
        ("net.ipv4.ip_forward".to_string(), "1"),
        ("net.ipv6.conf.all.forwarding".to_string(), "1"),
    ] {
        assert_eq!(n1.sysctl_get(&key)?, want, "{key}");
    }
    let addrs = n1.ip(&["addr", "show", "dev", &p.iface])?;
    ensure!(
        !addrs.contains("inet "),
        "no IPv4 address on the host side: {addrs}"
    );
    ensure!(addrs.contains("fe80::ecee:eeff:feee:eeee"), "{addrs}");
    let r = route_line(n1, &format!("{}/32", p.v4))?;
    ensure!(
        r.contains(&format!("dev {}", p.iface)) && r.contains("scope link"),
        "{r}"
    );

    // Every pod reaches every other pod, IPv4 and IPv6.
    for a in c.pods() {
        for b in c.pods().filter(|b| b.id != a.id) {
            eventually(SYNC, || ping(&a.ns, &b.v4))
                .with_context(|| format!("{} -> {}", a.id, b.v4))?;
            eventually(SYNC, || ping(&a.ns, &b.v6))
                .with_context(|| format!("{} -> {}", a.id, b.v6))?;
        }
    }

    // Unallocated address of n1's block: blackholed at n1. The kernel's route lookup fails there
    // (a blackhole answers EINVAL) where it would otherwise follow the default route to n2, and n2
    // forwards nothing; as a control, an address outside every block does go to n2.
    let pod = &c.nodes[0].pods[0].ns;
    let control = n1.ip(&["route", "get", "10.66.0.1"])?;
    ensure!(control.contains("via 10.99.0.2"), "{control}");
    for (dst, block, v6, errno) in [
        ("10.65.1.50", "10.65.1.0/26", false, "Invalid argument"),
        ("fd10:65:1::32", "fd10:65:1::/122", true, "Invalid argument"),
    ] {
        let route = route_line(n1, block)?;
        ensure!(
            route.starts_with(&format!("blackhole {block} ")) && route.contains("proto 80"),
            "{route}"
        );
        let fam = if v6 { "-6" } else { "-4" };
        let src = if v6 { &p.v6 } else { &p.v4 };
        let argv = ["ip", fam, "route", "get", dst, "from", src, "iif", &p.iface];
        let get = n1.output(&argv, Duration::from_secs(5))?;
        let (out, err) = (
            String::from_utf8_lossy(&get.stdout),
            String::from_utf8_lossy(&get.stderr),
        );
        ensure!(
            !get.status.success() && err.contains(errno),
            "ip route get {dst} from a pod should hit the blackhole: {out} {err}"
        );
        eprintln!(
            "blackhole: ip route get {dst} from {src} iif {}: {}",
            p.iface,
            err.trim()
        );
        let before = forwarded(n2, v6)?;
        ensure!(ping(pod, dst).is_err(), "{dst} answered");
        let after = forwarded(n2, v6)?;
        assert_eq!(after, before, "n2 forwarded traffic for {dst}");
    }
    let before = forwarded(n2, false)?;
    let _ = ping(pod, "10.66.0.1");
    ensure!(
        forwarded(n2, false)? > before,
        "control: n2 should forward 10.66.0.1"
    );

    // Tamper: routes of ours deleted or bent by hand come back within a second.
    let p2 = &c.nodes[0].pods[1];
    for (dst, want) in [
        (format!("{}/32", p.v4), format!("dev {}", p.iface)),
        (format!("{}/128", p.v6), format!("dev {}", p.iface)),
        ("10.65.1.0/26".to_string(), "blackhole".to_string()),
        ("fd10:65:2::/122".to_string(), "via fd00:99::2".to_string()),
    ] {
        let fam = if dst.contains(':') { "-6" } else { "-4" };
        n1.ip(&[fam, "route", "del", &dst, "proto", "80"])?;
        let took = time_until_route(n1, &dst, &want, Duration::from_secs(1))?;
        eprintln!("tamper: {dst} deleted, back after {took:?}");
    }
    let dst = format!("{}/32", p2.v4);
    n1.ip(&[
        "route", "replace", &dst, "dev", &p.iface, "proto", "80", "scope", "link",
    ])?;
    let took = time_until_route(
        n1,
        &dst,
        &format!("dev {}", p2.iface),
        Duration::from_secs(1),
    )?;
    eprintln!("tamper: {dst} bent to the wrong interface, restored after {took:?}");
    eventually(SYNC, || ping(&p2.ns, &c.nodes[1].pods[0].v4))?;

    // Foreign routes: an unrelated one and one holding a prefix felix wants; both left alone.
    n1.ip(&[
        "route",
        "add",
        "10.77.0.0/24",
        "via",
        "10.99.0.2",
        "proto",
        "static",
    ])?;
    n1.ip(&[
        "route",
        "add",
        "10.65.1.40/32",
        "dev",
        "lo",
        "proto",
        "static",
    ])?;
    let mut input = c.input(0);
    input.workloads[0].nets.push("10.65.1.40/32".parse()?);
    f1.set(input.clone())?;
    // Counted before asking: the resync may be done before `resync_now` returns.
    let resyncs = f1.status().resyncs;
    f1.handle().resync_now()?;
    let s = eventually(SYNC, || {
        let s = f1.status();
        ensure!(
            s.resyncs > resyncs && !s.pending.is_empty(),
            "waiting for resync: {s:?}"
        );
        Ok(s)
    })?;
    assert_eq!(s.pending.len(), 1, "{s:#?}");
    assert_eq!(
        s.pending[0].error,
        RouteError::Foreign {
            dst: "10.65.1.40/32".parse()?,
            protocol: 4
        }
    );
    let held = route_line(n1, "10.65.1.40/32")?;
    ensure!(held.contains("dev lo proto static"), "{held}");
    let other = route_line(n1, "10.77.0.0/24")?;
    ensure!(
        other.contains("via 10.99.0.2 dev eth0 proto static"),
        "{other}"
    );
    // Its owner removes it: ours goes in.
    n1.ip(&["route", "del", "10.65.1.40/32", "proto", "static"])?;
    time_until_route(
        n1,
        "10.65.1.40/32",
        &format!("dev {} proto 80", p.iface),
        Duration::from_secs(1),
    )?;
    f1.wait_in_sync()?;
    ensure!(route_line(n1, "10.77.0.0/24")?.contains("proto static"));
    Ok(())
}

#[test]
fn routes_restart_reconciles_without_losing_traffic() -> Result<()> {
    let c = Cluster::new("rtrestart")?;
    let f1 = Felix::start(&c.nodes[0].ns, c.input(0))?;
    let f2 = Felix::start(&c.nodes[1].ns, c.input(1))?;
    f1.wait_in_sync()?;
    f2.wait_in_sync()?;
    let n1 = &c.nodes[0].ns;
    let (a, b) = (&c.nodes[0].pods[0], &c.nodes[1].pods[0]);
    eventually(SYNC, || ping(&a.ns, &b.v4))?;
    eventually(SYNC, || ping(&a.ns, &b.v6))?;

    // Continuous pings between two pods whose routes do not change, and a route monitor on n1.
    let count = "100"; // 5 s at 50 ms
    let mut ping4 =
        a.ns.spawn(&["ping", "-n", "-i", "0.05", "-c", count, "-W", "1", &b.v4])?;
    let mut ping6 =
        a.ns.spawn(&["ping", "-n", "-i", "0.05", "-c", count, "-W", "1", &b.v6])?;
    let mut monitor = n1.spawn(&["ip", "-o", "monitor", "route"])?;
    std::thread::sleep(Duration::from_millis(500)); // let traffic flow before the restart

    // Stop n1's felix, change its inputs while it is down, start it again.
    let t = Instant::now();
    drop(f1);
    let gone = &c.nodes[0].pods[1]; // its workload is dropped from the input; its veth stays
    let mut next = c.input(0);
    next.workloads.retain(|w| w.id != gone.id);
    next.local_blocks.push("10.65.1.64/26".parse()?);
    next.remote_blocks
        .push(remote("10.65.3.0/26".parse()?, "10.99.0.2"));
    next.remote_blocks
        .push(remote("fd10:65:3::/122".parse()?, "fd00:99::2"));
    let f1 = Felix::start(n1, next.clone())?;
    f1.wait_in_sync()?;
    eprintln!(
        "restart: stopped, restarted and in sync after {:?}",
        t.elapsed()
    );
    ensure!(
        ping4.is_running() && ping6.is_running(),
        "pings ended before the restart was over"
    );
    assert_eq!(
        our_prefixes(n1)?,
        expected_prefixes(&next),
        "kernel matches the new inputs"
    );
    ensure!(route_line(n1, "10.65.1.64/26")?.starts_with("blackhole"));
    ensure!(route_line(n1, "10.65.3.0/26")?.contains("via 10.99.0.2"));
    ensure!(
        route_line(n1, &format!("{}/32", gone.v4))?.is_empty(),
        "stale pod route removed"
    );

    for (p, what) in [(&mut ping4, "v4"), (&mut ping6, "v6")] {
        until(Duration::from_secs(15), "ping finished", || {
            p.try_status().is_some()
        })?;
        let log = p.log();
        let summary = log
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .with_context(|| format!("no ping summary: {log}"))?;
        eprintln!("restart: continuous ping {what}: {summary}");
        ensure!(
            summary.starts_with(&format!("{count} packets transmitted, {count} received")),
            "{what} lost packets across the restart: {summary}"
        );
    }
    // No route of the untouched pods was deleted or re-added during the restart.
    monitor.kill()?;
    let events = monitor.log();
    let touched: Vec<&str> = events
        .lines()
        .filter(|l| {
            l.contains(&a.v4)
                || l.contains(&a.v6)
                || l.contains("10.65.2.0/26")
                || l.contains("fd10:65:2::/122")
        })
        .collect();
    ensure!(
        touched.is_empty(),
        "untouched routes were changed: {touched:#?}"
    );
    ensure!(
        events
            .lines()
            .any(|l| l.starts_with("Deleted") && l.contains(&gone.v4)),
        "the stale route's removal should be in the monitor log: {events}"
    );
    Ok(())
}

#[test]
fn routes_late_veth_gets_route_fast_and_gone_veth_loses_it() -> Result<()> {
    let lab = Lab::new("rtlate")?;
    let lan = lab.segment("lan")?;
    let n1 = lab.netns("n1")?;
    lan.attach(&n1, "eth0", &["10.99.0.1/24", "fd00:99::1/64"])?;
    n1.ip(&["route", "add", "default", "via", "10.99.0.2"])?;
    let pod_ns = lab.netns("n1.late")?;
    let iface = workload_iface_name("default", "late");
    let late = WorkloadEndpoint {
        id: "default/late".into(),
        iface: iface.clone(),
        nets: vec!["10.65.1.9/32".parse()?, "fd10:65:1::9/128".parse()?],
    };
    let input = RoutesInput {
        workloads: vec![late],
        local_blocks: vec!["10.65.1.0/26".parse()?],
        remote_blocks: vec![],
    };
    let f = Felix::start(&n1, input)?;
    eventually(SYNC, || {
        let s = f.status();
        ensure!(s.programmed == 1 && s.pending.len() == 2, "{s:?}");
        ensure!(
            matches!(&s.pending[0].error, RouteError::InterfaceMissing { iface: i, .. } if *i == iface)
        );
        Ok(())
    })?;

    // Watch links and routes with kernel-event timestamps; make sure the monitor is listening.
    let mut mon = n1.spawn(&["ip", "-ts", "-o", "monitor", "link", "route"])?;
    // A probe route added and deleted until the monitor shows it (re-adding an identical route
    // makes no event, so each attempt deletes it first).
    eventually(SYNC, || {
        let _ = n1.ip(&["route", "del", "127.1.2.3/32", "proto", "static"]);
        n1.ip(&[
            "route",
            "add",
            "127.1.2.3/32",
            "dev",
            "lo",
            "proto",
            "static",
        ])?;
        ensure!(mon.log().contains("127.1.2.3"), "monitor not ready");
        Ok(())
    })?;
    n1.ip(&["route", "del", "127.1.2.3/32", "proto", "static"])?;

    let t0 = Instant::now();
    make_veth(&n1, &iface, &pod_ns)?;
    let r4 = time_until_route(
        &n1,
        "10.65.1.9/32",
        &format!("dev {iface}"),
        Duration::from_secs(2),
    )?;
    let r6 = time_until_route(
        &n1,
        "fd10:65:1::9/128",
        &format!("dev {iface}"),
        Duration::from_secs(2),
    )?;
    let wall = t0.elapsed();
    let log = eventually(SYNC, || {
        let log = mon.log();
        ensure!(
            log.contains("fd10:65:1::9"),
            "monitor has not seen the v6 route yet"
        );
        Ok(log)
    })?;
    mon.kill()?;
    let ts = |pred: &dyn Fn(&str) -> bool| -> Result<f64> {
        let line = log
            .lines()
            .find(|l| pred(l))
            .with_context(|| format!("no such event in {log}"))?;
        event_time(line)
    };
    let link_at = ts(&|l| l.contains(&format!(": {iface}@")))?;
    let v4_at = ts(&|l| l.starts_with('[') && l.contains("] 10.65.1.9 dev"))?;
    let v6_at = ts(&|l| l.contains("] fd10:65:1::9 dev"))?;
    let (d4, d6) = (v4_at - link_at, v6_at - link_at);
    eprintln!(
        "late veth: link -> v4 route {:.1} ms, -> v6 route {:.1} ms (kernel event times); \
         wall clock from `ip link add` to seen: v4 {r4:?}, v6 {r6:?}, both {wall:?}",
        d4 * 1e3,
        d6 * 1e3
    );
    ensure!(
        (0.0..0.1).contains(&d4),
        "v4 route {:.1} ms after the link",
        d4 * 1e3
    );
    ensure!(
        (0.0..0.1).contains(&d6),
        "v6 route {:.1} ms after the link",
        d6 * 1e3
    );

    // The pod uses its gateways right away (felix set the host side up with the fixed MAC).
    calico_lab::pods::configure_pod_side(&pod_ns, "10.65.1.9", "fd10:65:1::9")?;
    eventually(SYNC, || ping(&pod_ns, "10.99.0.1"))?;
    eventually(SYNC, || ping(&pod_ns, "fd00:99::1"))?;
    f.wait_in_sync()?;

    // The veth goes (pod deleted): routes gone from the kernel and from felix's books; it comes
    // back: so do they.
    n1.ip(&["link", "del", &iface])?;
    eventually(SYNC, || {
        let s = f.status();
        ensure!(s.programmed == 1 && s.pending.len() == 2, "{s:?}");
        ensure!(route_line(&n1, "10.65.1.9/32")?.is_empty());
        Ok(())
    })?;
    make_veth(&n1, &iface, &pod_ns)?;
    f.wait_in_sync()?;
    time_until_route(
        &n1,
        "10.65.1.9/32",
        &format!("dev {iface}"),
        Duration::from_secs(1),
    )?;
    Ok(())
}

#[test]
fn routes_ecmp_onlink_unreachable_next_hop_and_idempotent_resync() -> Result<()> {
    let lab = Lab::new("rtkinds")?;
    let lan = lab.segment("lan")?;
    let n1 = lab.netns("n1")?;
    lan.attach(&n1, "eth0", &["10.99.0.1/24", "fd00:99::1/64"])?;
    n1.ip(&["route", "add", "default", "via", "10.99.0.2"])?;
    let hops = |gws: &[&str]| -> Vec<NextHop> {
        gws.iter()
            .map(|g| NextHop::via(g.parse().unwrap()))
            .collect()
    };
    let mut input = RoutesInput {
        workloads: vec![],
        local_blocks: vec!["10.65.1.0/26".parse()?, "fd10:65:1::/122".parse()?],
        remote_blocks: vec![
            RemoteBlock {
                cidr: "10.65.2.0/26".parse()?,
                next_hops: hops(&["10.99.0.3", "10.99.0.2"]),
            },
            RemoteBlock {
                cidr: "fd10:65:2::/122".parse()?,
                next_hops: hops(&["fd00:99::2", "fd00:99::3"]),
            },
            RemoteBlock {
                cidr: "10.65.3.0/26".parse()?,
                next_hops: vec![NextHop {
                    gateway: "10.97.0.1".parse()?,
                    iface: Some("eth0".into()),
                    onlink: true,
                }],
            },
        ],
    };
    let f = Felix::start(&n1, input.clone())?;
    f.wait_in_sync()?;
    let ecmp4 = n1.ip(&["route", "show", "10.65.2.0/26"])?;
    ensure!(
        ecmp4.contains("nexthop via 10.99.0.2") && ecmp4.contains("nexthop via 10.99.0.3"),
        "{ecmp4}"
    );
    let ecmp6 = n1.ip(&["-6", "route", "show", "fd10:65:2::/122"])?;
    ensure!(
        ecmp6.contains("via fd00:99::2") && ecmp6.contains("via fd00:99::3"),
        "{ecmp6}"
    );
    let onlink = route_line(&n1, "10.65.3.0/26")?;
    ensure!(
        onlink.contains("via 10.97.0.1 dev eth0") && onlink.contains("onlink"),
        "{onlink}"
    );

    // What felix reads back from the kernel matches what it asked for: a full resync changes
    // nothing (no replace loop on ECMP, onlink or blackhole routes).
    let before = f.status();
    f.handle().resync_now()?;
    let after = eventually(SYNC, || {
        let s = f.status();
        ensure!(s.resyncs > before.resyncs, "no resync yet");
        Ok(s)
    })?;
    assert_eq!(
        after.ops, before.ops,
        "a resync of an in-sync kernel sent operations"
    );
    ensure!(after.in_sync(), "{after:#?}");

    // A next hop not reachable yet: ENETUNREACH, pending with backoff, the other routes unaffected;
    // reachable once an address covers it (the address event triggers the retry).
    input.remote_blocks.push(RemoteBlock {
        cidr: "10.65.4.0/26".parse()?,
        next_hops: hops(&["10.98.0.2"]),
    });
    f.set(input.clone())?;
    let s = eventually(SYNC, || {
        let s = f.status();
        ensure!(!s.pending.is_empty(), "not pending yet: {s:?}");
        Ok(s)
    })?;
    match &s.pending[0].error {
        RouteError::Kernel {
            errno: 101,
            op: "add",
            dst,
            ..
        } if dst.to_string() == "10.65.4.0/26" => {}
        e => bail!("expected ENETUNREACH for 10.65.4.0/26, got {e}"),
    }
    eprintln!("unreachable next hop: {}", s.pending[0].error);
    assert_eq!(s.programmed, 5);
    let t = Instant::now();
    n1.addr("eth0", "10.98.0.1/24")?;
    time_until_route(&n1, "10.65.4.0/26", "via 10.98.0.2", Duration::from_secs(2))?;
    eprintln!(
        "unreachable next hop: route in {:?} after the address appeared",
        t.elapsed()
    );
    f.wait_in_sync()?;

    // Many failures in one go (600 blocks behind an unreachable next hop): each is reported and
    // pending on its own, nothing else is disturbed, and taking them out of the input clears them.
    let mut many = input.clone();
    for i in 0..600u32 {
        many.remote_blocks.push(RemoteBlock {
            cidr: format!("10.66.{}.{}/26", i / 4, (i % 4) * 64).parse()?,
            next_hops: hops(&["10.96.0.2"]),
        });
    }
    f.set(many)?;
    let s = eventually(SYNC, || {
        let s = f.status();
        ensure!(s.pending.len() == 600, "{} pending", s.pending.len());
        Ok(s)
    })?;
    ensure!(s
        .pending
        .iter()
        .all(|p| matches!(p.error, RouteError::Kernel { errno: 101, .. })));
    assert_eq!(s.programmed, 6);
    f.set(input)?;
    f.wait_in_sync()?;
    Ok(())
}
