//! Element-only changes over nfnetlink against a real kernel: 10,000-element IPv4 (and IPv6)
//! changes, split over several messages of one batch, arrive whole (checked with `nft list set`
//! inside the namespace), deletes too, and a batch with one refused message changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use felix::policy::ir::{Elem, Family, Ruleset, SetDef, SetKind};
use felix::policy::netlink::{BatchError, ElemChange, ElemOp, ElementSocket};
use felix::policy::{ApplyKind, NftDriver, PolicyCfg};

use super::Netns;

const SET4: &str = "sel-test-v4";
const SET6: &str = "sel-test-v6";

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i))
}

fn v6(i: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(
        0xfd00_0000_0000_0000_0000_0000_0040_0000u128 + u128::from(i),
    ))
}

fn ruleset(sets: &[(&str, Family, &BTreeSet<IpAddr>)]) -> Ruleset {
    let mut map = BTreeMap::new();
    for (name, fam, ips) in sets {
        map.insert(
            name.to_string(),
            SetDef {
                kind: SetKind::Addr(*fam),
                comment: format!("test set {name}"),
                elements: Arc::new(ips.iter().map(|ip| Elem::Addr(*ip)).collect()),
            },
        );
    }
    Ruleset {
        sets: map,
        ..Ruleset::default()
    }
}

/// The elements of `inet calico-rs <set>` as `nft list set` (JSON) shows them.
fn listed(ns: &Netns, set: &str) -> Result<BTreeSet<IpAddr>> {
    let out = ns.run(&["nft", "-j", "list", "set", "inet", "calico-rs", set])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
    let mut got = BTreeSet::new();
    for obj in v["nftables"].as_array().context("no nftables array")? {
        let Some(elems) = obj.get("set").and_then(|s| s.get("elem")) else {
            continue;
        };
        for e in elems.as_array().context("elem is not a list")? {
            let text = e.as_str().with_context(|| format!("element {e}"))?;
            got.insert(text.parse().with_context(|| format!("element {text}"))?);
        }
    }
    Ok(got)
}

fn check(ns: &Netns, set: &str, want: &BTreeSet<IpAddr>) -> Result<()> {
    let got = listed(ns, set)?;
    ensure!(
        got == *want,
        "set {set}: {} elements listed, {} wanted; {} missing, {} extra",
        got.len(),
        want.len(),
        want.difference(&got).count(),
        got.difference(want).count()
    );
    Ok(())
}

#[test]
fn ten_thousand_element_changes_arrive_whole() -> Result<()> {
    let ns = Netns::new("elems")?;
    let cfg = PolicyCfg::default();
    let empty = BTreeSet::new();
    let a4: BTreeSet<IpAddr> = (0..10_000).map(v4).collect();
    let b4: BTreeSet<IpAddr> = (10_000..20_000).map(v4).collect();
    let a6: BTreeSet<IpAddr> = (0..10_000).map(v6).collect();

    // The table with both sets empty, through `nft -f`.
    let mut driver = ns.in_ns(|| {
        let mut d = NftDriver::new(cfg.clone());
        let r = d.apply(&ruleset(&[
            (SET4, Family::V4, &empty),
            (SET6, Family::V6, &empty),
        ]))?;
        ensure!(r.kind == ApplyKind::Full, "{r:?}");
        Ok(d)
    })?;
    // Each step is one element-only change, so one nfnetlink batch: 10,000 adds to each family
    // (3 + 5 messages); 10,000 deletes and 10,000 other adds in one set plus 10,000 deletes in
    // the other; everything deleted. The first two batches (440 and 600 KB) are larger than the
    // default socket send buffer (208 KB), which the socket grows to send them in one datagram.
    let steps = [
        ("add 10k + 10k", &a4, &a6, 20_000, 0),
        ("replace 10k v4, delete 10k v6", &b4, &empty, 10_000, 20_000),
        ("delete 10k", &empty, &empty, 0, 10_000),
    ];
    for (what, want4, want6, added, removed) in steps {
        let rs = ruleset(&[(SET4, Family::V4, want4), (SET6, Family::V6, want6)]);
        let report = ns.in_ns(|| Ok(driver.apply(&rs)?))?;
        ensure!(
            report.kind == ApplyKind::Incremental && report.netlink && report.fallback.is_none(),
            "{what}: not one element batch: {report:?}"
        );
        let diff = report.diff.as_ref().context("no diff")?;
        ensure!(
            (diff.elements_added, diff.elements_removed) == (added, removed),
            "{what}: {diff:?}"
        );
        check(&ns, SET4, want4).context(what)?;
        check(&ns, SET6, want6).context(what)?;
        eprintln!(
            "element batch {what}: {} bytes in {:?}",
            report.script_bytes, report.duration
        );
    }
    Ok(())
}

/// 10,000 adds (three messages) and one delete the kernel refuses, in one batch: the refusal is
/// reported for its set, and none of the adds is applied — the split change is one transaction.
#[test]
fn a_refused_message_aborts_the_whole_split_batch() -> Result<()> {
    let ns = Netns::new("abort")?;
    let before: BTreeSet<IpAddr> = (0..3).map(v4).collect();
    ns.run(&[
        "nft",
        &format!(
            "add table inet calico-rs; \
             add set inet calico-rs {SET4} {{ type ipv4_addr; elements = {{ {} }}; }}; \
             add set inet calico-rs other {{ type ipv4_addr; }}",
            before
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ])?;
    let err = ns.in_ns(|| {
        let mut sock = ElementSocket::open()?;
        let r = sock.apply(
            "calico-rs",
            &[
                ElemChange {
                    set: SET4.into(),
                    del: vec![],
                    add: (100..10_100).map(|i| Elem::Addr(v4(i))).collect(),
                },
                ElemChange {
                    set: "other".into(),
                    del: vec![Elem::Addr(v4(7))],
                    add: vec![],
                },
            ],
        );
        Ok(r.expect_err("deleting a missing element must fail"))
    })?;
    match &err {
        BatchError::Refused {
            set, op, source, ..
        } => {
            ensure!(set == "other" && *op == ElemOp::Delete, "{err}");
            ensure!(source.raw_os_error() == Some(2), "ENOENT expected: {err}");
        }
        other => anyhow::bail!("not a refused message: {other}"),
    }
    check(&ns, SET4, &before)?;
    Ok(())
}
