//! The words of the replay format: prefixes, families, path attributes, and the output lines.
//!
//! Attributes are `key=value` words, the same in UPDATEs we feed in and announcements we expect:
//! `nh=10.0.0.2[,fe80::2]` `origin=igp|egp|incomplete` `path=65001,65002,{65003,65004}` (a SET in
//! braces) `med=N` `lp=N` `comm=65000:1,...` `large=1:2:3,...` `originator=A` `clusters=A,B`
//! `atomic` `aggregator=AS:A`.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;

use crate::rib::RouteAttrs;
use crate::wire::{AsPath, AsSegment, Family, Origin, PathAttrs, SegmentKind};

pub fn prefixes(s: &str) -> Result<Vec<IpNet>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().with_context(|| format!("prefix {p:?}")))
        .collect()
}

pub fn family(s: &str) -> Result<Family> {
    match s {
        "v4" => Ok(Family::Ipv4Unicast),
        "v6" => Ok(Family::Ipv6Unicast),
        _ => bail!("family {s:?}: v4 or v6"),
    }
}

pub fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4Unicast => "v4",
        Family::Ipv6Unicast => "v6",
    }
}

pub fn families(s: &str) -> Result<Vec<Family>> {
    s.split(',').filter(|f| !f.is_empty()).map(family).collect()
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|_| anyhow!("{what} {x:?}")))
        .collect()
}

fn path(s: &str) -> Result<AsPath> {
    let mut segments: Vec<AsSegment> = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| anyhow!("path {s:?}: no '}}'"))?;
            segments.push(AsSegment {
                kind: SegmentKind::Set,
                asns: list(&inner[..end], "AS")?,
            });
            rest = inner[end + 1..].trim_start_matches(',');
            continue;
        }
        let end = rest.find(",{").map_or(rest.len(), |i| i);
        let asns: Vec<u32> = list(&rest[..end], "AS")?;
        match segments.last_mut() {
            Some(seg) if seg.kind == SegmentKind::Sequence => seg.asns.extend(asns),
            _ => segments.push(AsSegment {
                kind: SegmentKind::Sequence,
                asns,
            }),
        }
        rest = rest[end..].trim_start_matches(',');
    }
    Ok(AsPath { segments })
}

fn community(s: &str) -> Result<u32> {
    let (a, v) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("community {s:?}"))?;
    Ok((a.parse::<u32>()? << 16) | v.parse::<u32>()?)
}

fn large(s: &str) -> Result<(u32, u32, u32)> {
    let v: Vec<u32> = s.split(':').map(str::parse).collect::<Result<_, _>>()?;
    match v[..] {
        [a, b, c] => Ok((a, b, c)),
        _ => bail!("large community {s:?}"),
    }
}

/// Apply one `key=value` attribute word; false when `key` is not an attribute.
pub fn attr(a: &mut PathAttrs, hops: &mut Vec<IpAddr>, key: &str, v: &str) -> Result<bool> {
    match key {
        "nh" => *hops = list(v, "next hop")?,
        "origin" => {
            a.origin = Some(match v {
                "igp" => Origin::Igp,
                "egp" => Origin::Egp,
                "incomplete" => Origin::Incomplete,
                _ => bail!("origin {v:?}"),
            })
        }
        "path" => a.as_path = path(v)?,
        "med" => a.med = Some(v.parse()?),
        "lp" => a.local_pref = Some(v.parse()?),
        "comm" => a.communities = v.split(',').map(community).collect::<Result<_>>()?,
        "large" => a.large_communities = v.split(',').map(large).collect::<Result<_>>()?,
        "originator" => a.originator_id = Some(v.parse()?),
        "clusters" => a.cluster_list = list::<Ipv4Addr>(v, "cluster id")?,
        "atomic" => a.atomic_aggregate = true,
        "aggregator" => {
            let (asn, ip) = v
                .split_once(':')
                .ok_or_else(|| anyhow!("aggregator {v:?}"))?;
            a.aggregator = Some((asn.parse()?, ip.parse()?));
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn join<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn prefix_list(p: &[IpNet]) -> String {
    join(p)
}

fn path_text(p: &AsPath) -> String {
    join(p.segments.iter().map(|s| match s.kind {
        SegmentKind::Sequence => join(&s.asns),
        SegmentKind::Set => format!("{{{}}}", join(&s.asns)),
        SegmentKind::ConfedSequence => format!("confed({})", join(&s.asns)),
        SegmentKind::ConfedSet => format!("confed{{{}}}", join(&s.asns)),
    }))
}

pub fn community_text(c: u32) -> String {
    format!("{}:{}", c >> 16, c & 0xffff)
}

/// Announced attributes in the words [`attr`] reads.
pub fn attrs_text(r: &RouteAttrs) -> String {
    let a = &r.attrs;
    let mut w = vec![format!(
        "nh={}",
        join(std::iter::once(r.next_hop).chain(r.link_local.map(IpAddr::V6)))
    )];
    if let Some(o) = a.origin {
        w.push(format!("origin={}", format!("{o:?}").to_lowercase()));
    }
    w.push(format!("path={}", path_text(&a.as_path)));
    if let Some(m) = a.med {
        w.push(format!("med={m}"));
    }
    if let Some(l) = a.local_pref {
        w.push(format!("lp={l}"));
    }
    if !a.communities.is_empty() {
        w.push(format!(
            "comm={}",
            join(a.communities.iter().map(|c| community_text(*c)))
        ));
    }
    if !a.large_communities.is_empty() {
        let l = a
            .large_communities
            .iter()
            .map(|(x, y, z)| format!("{x}:{y}:{z}"));
        w.push(format!("large={}", join(l)));
    }
    if let Some(o) = a.originator_id {
        w.push(format!("originator={o}"));
    }
    if !a.cluster_list.is_empty() {
        w.push(format!("clusters={}", join(&a.cluster_list)));
    }
    if a.atomic_aggregate {
        w.push("atomic".into());
    }
    if let Some((asn, ip)) = a.aggregator {
        w.push(format!("aggregator={asn}:{ip}"));
    }
    if a.next_hop.is_some() || !a.unknown.is_empty() {
        w.push(format!("other={:?}/{:?}", a.next_hop, a.unknown));
    }
    w.join(" ")
}
