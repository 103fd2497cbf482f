//! Our speaker with GoBGP: eBGP and iBGP, IPv4 and IPv6, both directions, withdrawals and changed
//! attributes.

use anyhow::{anyhow, bail, ensure, Result};
use bgp::{OriginAttrs, State};
use calico_lab::lab::Lab;
use calico_lab::peers::Gobgp;
use calico_lab::wait::eventually;
use serde_json::Value;

use super::{net, pair, peer_cfg, speaker_cfg, Ours, UP};

/// gobgpd config: `router_id`/`asn`, and iBGP/eBGP neighbours given as (address, AS, extra TOML
/// lines for the neighbour's `config` table).
pub fn gobgp_conf(asn: u32, router_id: &str, neighbors: &[(&str, u32, &str)]) -> String {
    let mut s = format!("[global.config]\n  as = {asn}\n  router-id = \"{router_id}\"\n");
    for (addr, peer_as, extra) in neighbors {
        s += &format!(
            r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{addr}"
    peer-as = {peer_as}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  {extra}
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#
        );
    }
    s
}

/// The paths GoBGP holds for `prefix` in its global RIB (JSON, one object per path).
pub fn gobgp_paths(g: &Gobgp, prefix: &str) -> Result<Vec<Value>> {
    let fam = if prefix.contains(':') { "ipv6" } else { "ipv4" };
    let out = g.gobgp(&["global", "rib", "-a", fam, "-j"])?;
    let v: Value =
        serde_json::from_str(out.trim()).map_err(|e| anyhow!("gobgp JSON: {e}: {out}"))?;
    Ok(v.get(prefix)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// The attribute of `type` in a GoBGP path.
pub fn attr(path: &Value, code: u64) -> Option<&Value> {
    path.get("attrs")?
        .as_array()?
        .iter()
        .find(|a| a.get("type").and_then(Value::as_u64) == Some(code))
}

fn exchange(gobgp_as: u32, our_as: u32) -> Result<()> {
    let lab = Lab::new(if gobgp_as == our_as { "gibgp" } else { "gebgp" })?;
    let (a, b) = pair(&lab)?;
    let g = Gobgp::start(
        &b,
        &gobgp_conf(gobgp_as, "10.0.0.2", &[("10.0.0.1", our_as, "")]),
    )?;
    let mut cfg = speaker_cfg(our_as, "10.0.0.1");
    cfg.next_hop_v6 = Some("fd00::1".parse()?);
    let ours = Ours::start(&a, cfg, vec![peer_cfg("10.0.0.2", gobgp_as)])?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;
    eventually(UP, || match g.neighbor_state("10.0.0.1")?.as_str() {
        s if s.eq_ignore_ascii_case("established") => Ok(()),
        s => bail!("GoBGP says {s}"),
    })?;

    // GoBGP -> us.
    g.gobgp(&[
        "global",
        "rib",
        "add",
        "-a",
        "ipv4",
        "10.50.0.0/26",
        "nexthop",
        "10.0.0.2",
        "med",
        "7",
    ])?;
    g.gobgp(&[
        "global",
        "rib",
        "add",
        "-a",
        "ipv6",
        "fd50::/64",
        "nexthop",
        "fd00::2",
    ])?;
    let r = ours.wait_learned("10.50.0.0/26", UP)?;
    assert_eq!(r.next_hops, vec!["10.0.0.2".parse::<std::net::IpAddr>()?]);
    assert_eq!(r.med, Some(7));
    if gobgp_as != our_as {
        assert_eq!(r.as_path, vec![gobgp_as]);
    }
    let r6 = ours.wait_learned("fd50::/64", UP)?;
    assert_eq!(r6.next_hops, vec!["fd00::2".parse::<std::net::IpAddr>()?]);

    // Us -> GoBGP, then a changed attribute, then a withdrawal.
    ours.h.originate(vec![
        (net("10.1.0.0/26"), OriginAttrs::default()),
        (net("fd01::/122"), OriginAttrs::default()),
    ])?;
    let p = eventually(UP, || {
        gobgp_paths(&g, "10.1.0.0/26")?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("not in GoBGP"))
    })?;
    let nh = attr(&p, 3)
        .and_then(|a| a.get("nexthop"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    ensure!(nh == "10.0.0.1", "next hop {nh}: {p}");
    if gobgp_as == our_as {
        let lp = attr(&p, 5)
            .and_then(|a| a.get("value"))
            .and_then(Value::as_u64);
        ensure!(lp == Some(100), "iBGP LOCAL_PREF: {p}");
    }
    eventually(UP, || {
        gobgp_paths(&g, "fd01::/122")?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("v6 not in GoBGP"))
    })?;
    ours.h.originate(vec![(
        net("10.1.0.0/26"),
        OriginAttrs {
            communities: vec![(65000 << 16) | 9],
            ..OriginAttrs::default()
        },
    )])?;
    eventually(UP, || {
        let p = gobgp_paths(&g, "10.1.0.0/26")?;
        let c = p
            .first()
            .and_then(|p| attr(p, 8))
            .map(|a| a.to_string())
            .unwrap_or_default();
        ensure!(
            c.contains(&((65000u64 << 16) | 9).to_string()),
            "community not there: {p:?}"
        );
        Ok(())
    })?;
    ours.h.withdraw(vec![net("10.1.0.0/26")])?;
    eventually(UP, || match gobgp_paths(&g, "10.1.0.0/26")?.is_empty() {
        true => Ok(()),
        false => bail!("still in GoBGP"),
    })?;
    g.gobgp(&["global", "rib", "del", "-a", "ipv4", "10.50.0.0/26"])?;
    ours.wait_not_learned("10.50.0.0/26", UP)?;
    ensure!(ours.learned("fd50::/64")?.is_some());
    Ok(())
}

#[test]
fn gobgp_ebgp_v4_v6() -> Result<()> {
    exchange(65002, 4_200_000_001)
}

#[test]
fn gobgp_ibgp_v4_v6() -> Result<()> {
    exchange(65001, 65001)
}
