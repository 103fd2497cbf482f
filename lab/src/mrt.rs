//! A minimal MRT TABLE_DUMP_V2 writer (RFC 6396), for loading large route sets into GoBGP fast.
//!
//! `gobgp global rib add` costs one process and one gRPC call per prefix (~10 ms each: 100k prefixes would
//! take over 15 minutes). `gobgp mrt inject global FILE` instead reads a RIB dump and streams it into
//! gobgpd's global RIB in batches. This module writes such a dump: one PEER_INDEX_TABLE naming a single
//! peer, then one RIB_IPV4_UNICAST / RIB_IPV6_UNICAST record per prefix, each with one RIB entry carrying
//! ORIGIN, AS_PATH (always 4-octet ASNs, as RFC 6396 requires), NEXT_HOP (IPv4) or the abbreviated
//! MP_REACH_NLRI (IPv6: next-hop length and address only, RFC 6396 section 4.3.4), and optional
//! COMMUNITIES.
//!
//! Only what the tests need; it is not a general MRT library.

use std::net::IpAddr;

use anyhow::{bail, Result};
use ipnet::IpNet;

const TYPE_TABLE_DUMP_V2: u16 = 13;
const SUB_PEER_INDEX_TABLE: u16 = 1;
const SUB_RIB_IPV4_UNICAST: u16 = 2;
const SUB_RIB_IPV6_UNICAST: u16 = 4;

const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_OPTIONAL_TRANSITIVE: u8 = 0xC0;
const FLAG_OPTIONAL: u8 = 0x80;
const ATTR_ORIGIN: u8 = 1;
const ATTR_AS_PATH: u8 = 2;
const ATTR_NEXT_HOP: u8 = 3;
const ATTR_MED: u8 = 4;
const ATTR_COMMUNITIES: u8 = 8;
const ATTR_MP_REACH_NLRI: u8 = 14;
const AS_SEQUENCE: u8 = 2;

/// Path attributes shared by every route of a dump.
#[derive(Debug, Clone)]
pub struct MrtAttrs {
    /// Next hop of the IPv4 routes (IPv4) or of the IPv6 routes (IPv6). A dump mixing families needs a
    /// next hop per family: see [`MrtAttrs::next_hop6`].
    pub next_hop: IpAddr,
    /// Next hop for IPv6 prefixes when `next_hop` is IPv4.
    pub next_hop6: Option<IpAddr>,
    /// AS_PATH as one AS_SEQUENCE (may be empty: locally originated).
    pub as_path: Vec<u32>,
    /// ORIGIN: 0 IGP, 1 EGP, 2 INCOMPLETE.
    pub origin: u8,
    /// MULTI_EXIT_DISC, if any.
    pub med: Option<u32>,
    /// COMMUNITIES as `(asn, value)` pairs.
    pub communities: Vec<(u16, u16)>,
}

impl MrtAttrs {
    /// IGP origin, the given next hop and AS path, nothing else.
    pub fn new(next_hop: IpAddr, as_path: &[u32]) -> MrtAttrs {
        MrtAttrs {
            next_hop,
            next_hop6: None,
            as_path: as_path.to_vec(),
            origin: 0,
            med: None,
            communities: Vec::new(),
        }
    }
}

fn attr(out: &mut Vec<u8>, flags: u8, code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.push(flags | 0x10); // extended length
        out.push(code);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.push(flags);
        out.push(code);
        out.push(value.len() as u8);
    }
    out.extend_from_slice(value);
}

fn encode_attrs(a: &MrtAttrs, v6: bool) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    attr(&mut out, FLAG_TRANSITIVE, ATTR_ORIGIN, &[a.origin]);
    let mut path = Vec::new();
    for chunk in a.as_path.chunks(255) {
        path.push(AS_SEQUENCE);
        path.push(chunk.len() as u8);
        for asn in chunk {
            path.extend_from_slice(&asn.to_be_bytes());
        }
    }
    attr(&mut out, FLAG_TRANSITIVE, ATTR_AS_PATH, &path);
    let nh = if v6 {
        a.next_hop6.unwrap_or(a.next_hop)
    } else {
        a.next_hop
    };
    match (v6, nh) {
        (false, IpAddr::V4(nh)) => attr(&mut out, FLAG_TRANSITIVE, ATTR_NEXT_HOP, &nh.octets()),
        (true, IpAddr::V6(nh)) => {
            let mut v = vec![16u8];
            v.extend_from_slice(&nh.octets());
            attr(&mut out, FLAG_OPTIONAL, ATTR_MP_REACH_NLRI, &v);
        }
        _ => bail!(
            "next hop {nh} does not fit {} routes",
            if v6 { "IPv6" } else { "IPv4" }
        ),
    }
    if let Some(med) = a.med {
        attr(&mut out, FLAG_OPTIONAL, ATTR_MED, &med.to_be_bytes());
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a
            .communities
            .iter()
            .flat_map(|(asn, val)| [asn.to_be_bytes(), val.to_be_bytes()].concat())
            .collect();
        attr(&mut out, FLAG_OPTIONAL_TRANSITIVE, ATTR_COMMUNITIES, &v);
    }
    Ok(out)
}

fn record(out: &mut Vec<u8>, subtype: u16, body: &[u8]) {
    out.extend_from_slice(&0u32.to_be_bytes()); // timestamp: irrelevant for injection
    out.extend_from_slice(&TYPE_TABLE_DUMP_V2.to_be_bytes());
    out.extend_from_slice(&subtype.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Encode `prefixes` (IPv4 and/or IPv6), all with `attrs`, as a TABLE_DUMP_V2 file image.
pub fn table_dump(prefixes: &[IpNet], attrs: &MrtAttrs) -> Result<Vec<u8>> {
    let v4_attrs = encode_attrs(attrs, false).ok();
    let v6_attrs = encode_attrs(attrs, true).ok();
    let mut out = Vec::with_capacity(prefixes.len() * 48 + 64);

    // PEER_INDEX_TABLE: collector id, empty view name, one peer (AS4, IPv4 address 0.0.0.0).
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 0, 0, 0]);
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    body.push(0x02); // peer type: AS4, IPv4 peer address
    body.extend_from_slice(&[0, 0, 0, 0]); // peer BGP id
    body.extend_from_slice(&[0, 0, 0, 0]); // peer address
    body.extend_from_slice(&attrs.as_path.first().copied().unwrap_or(0).to_be_bytes());
    record(&mut out, SUB_PEER_INDEX_TABLE, &body);

    for (seq, p) in prefixes.iter().enumerate() {
        let (subtype, a) = match p {
            IpNet::V4(_) => (SUB_RIB_IPV4_UNICAST, &v4_attrs),
            IpNet::V6(_) => (SUB_RIB_IPV6_UNICAST, &v6_attrs),
        };
        let Some(a) = a else {
            bail!("no next hop of the right family for {p}");
        };
        let len = p.prefix_len();
        let nbytes = (len as usize).div_ceil(8);
        body.clear();
        body.extend_from_slice(&(seq as u32).to_be_bytes());
        body.push(len);
        match p.network() {
            IpAddr::V4(n) => body.extend_from_slice(&n.octets()[..nbytes]),
            IpAddr::V6(n) => body.extend_from_slice(&n.octets()[..nbytes]),
        }
        body.extend_from_slice(&1u16.to_be_bytes()); // entry count
        body.extend_from_slice(&0u16.to_be_bytes()); // peer index
        body.extend_from_slice(&0u32.to_be_bytes()); // originated time
        body.extend_from_slice(&(a.len() as u16).to_be_bytes());
        body.extend_from_slice(a);
        record(&mut out, subtype, &body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ipv4_route_bytes() {
        let a = MrtAttrs::new("10.0.0.2".parse().unwrap(), &[65010]);
        let img = table_dump(&["10.1.2.0/24".parse().unwrap()], &a).unwrap();
        // Peer index table: 12-byte header + 4 + 2 + 2 + 1 + 4 + 4 + 4.
        let pit = 12 + 21;
        assert_eq!(&img[4..8], &[0, 13, 0, 1]);
        let rib = &img[pit..];
        assert_eq!(&rib[4..8], &[0, 13, 0, 2]);
        let body = &rib[12..];
        assert_eq!(
            u32::from_be_bytes(rib[8..12].try_into().unwrap()) as usize,
            body.len()
        );
        assert_eq!(&body[4..8], &[24, 10, 1, 2]);
        let attrs = &body[18..];
        assert_eq!(
            attrs,
            &[
                0x40, 1, 1, 0, // ORIGIN IGP
                0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xf2, // AS_PATH [65010]
                0x40, 3, 4, 10, 0, 0, 2, // NEXT_HOP
            ]
        );
    }

    #[test]
    fn ipv6_needs_v6_next_hop() {
        let a = MrtAttrs::new("10.0.0.2".parse().unwrap(), &[]);
        assert!(table_dump(&["fd00::/64".parse().unwrap()], &a).is_err());
        let mut a = a;
        a.next_hop6 = Some("fd00::2".parse().unwrap());
        let img = table_dump(&["fd00::/64".parse().unwrap()], &a).unwrap();
        assert!(img.windows(2).any(|w| w == [0x80, 14]));
    }
}
