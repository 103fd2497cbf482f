//! NLRI prefixes (RFC 4271 4.3: length in bits, then the fewest octets that hold it) and the
//! MP_REACH_NLRI / MP_UNREACH_NLRI attribute values (RFC 4760 3, 4; IPv6 next hops RFC 2545 3).
//!
//! Syntax errors in NLRI (prefix length over 32/128, prefix overrunning its field) are session
//! resets with 3/10 Invalid Network Field (RFC 7606 5.3, which also applies to the NLRI inside
//! MP_REACH / MP_UNREACH). Other malformed MP attributes (truncated, next hop length not 4 for
//! IPv4 or 16/32 for IPv6) are session resets with 3/9 Optional Attribute Error carrying the
//! attribute (RFC 7606 7.11 allows "AFI/SAFI disable" instead; we do not implement that). An
//! AFI/SAFI we do not carry is not an error: the attribute is discarded and noted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::code::UPDATE_MESSAGE_ERROR;
use super::reader::Reader;
use super::subcode::{INVALID_NETWORK_FIELD, OPTIONAL_ATTRIBUTE_ERROR};
use super::{EncodeError, Family, MpReach, MpUnreach, WireError};

/// Octets a prefix takes in NLRI: the length octet plus the prefix bits rounded up.
pub(super) fn prefix_wire_len(prefix_len: u8) -> usize {
    1 + usize::from(prefix_len).div_ceil(8)
}

pub(super) fn put_v4(p: &Ipv4Net, out: &mut Vec<u8>) {
    let len = p.prefix_len();
    out.push(len);
    let octets = p.network().octets();
    out.extend_from_slice(
        octets
            .get(..usize::from(len).div_ceil(8))
            .unwrap_or_default(),
    );
}

pub(super) fn put_v6(p: &Ipv6Net, out: &mut Vec<u8>) {
    let len = p.prefix_len();
    out.push(len);
    let octets = p.network().octets();
    out.extend_from_slice(
        octets
            .get(..usize::from(len).div_ceil(8))
            .unwrap_or_default(),
    );
}

/// Reads one prefix of up to `N` octets; host bits past the prefix length are cleared (RFC 4271
/// 4.3: trailing bits are irrelevant).
fn read_prefix<const N: usize>(r: &mut Reader<'_>, field: &str) -> Result<([u8; N], u8), String> {
    let len = r.u8().unwrap_or_default();
    let max = N * 8;
    if usize::from(len) > max {
        return Err(format!("{field}: prefix length {len} is over {max}"));
    }
    let bytes = r
        .take(usize::from(len).div_ceil(8))
        .ok_or_else(|| format!("{field}: /{len} prefix overruns the field"))?;
    let mut octets = [0u8; N];
    for (o, b) in octets.iter_mut().zip(bytes) {
        *o = *b;
    }
    Ok((octets, len))
}

pub(super) fn decode_v4(buf: &[u8], field: &str, out: &mut Vec<Ipv4Net>) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (octets, len) = read_prefix::<4>(&mut r, field)?;
        let net = Ipv4Net::new(Ipv4Addr::from(octets), len).map_err(|e| format!("{field}: {e}"))?;
        out.push(net.trunc());
    }
    Ok(())
}

pub(super) fn decode_v6(buf: &[u8], field: &str, out: &mut Vec<IpNet>) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (octets, len) = read_prefix::<16>(&mut r, field)?;
        let net = Ipv6Net::new(Ipv6Addr::from(octets), len).map_err(|e| format!("{field}: {e}"))?;
        out.push(IpNet::V6(net.trunc()));
    }
    Ok(())
}

fn decode_family(buf: &[u8], family: Family, field: &str) -> Result<Vec<IpNet>, WireError> {
    let mut out = Vec::new();
    let res = match family {
        Family::Ipv4Unicast => {
            let mut v4 = Vec::new();
            let res = decode_v4(buf, field, &mut v4);
            out.extend(v4.into_iter().map(IpNet::V4));
            res
        }
        Family::Ipv6Unicast => decode_v6(buf, field, &mut out),
    };
    res.map_err(|reason| {
        WireError::new(
            UPDATE_MESSAGE_ERROR,
            INVALID_NETWORK_FIELD,
            format!("UPDATE: {reason}"),
        )
    })?;
    Ok(out)
}

fn optional_attr_error(full: &[u8], reason: String) -> WireError {
    WireError::with_data(
        UPDATE_MESSAGE_ERROR,
        OPTIONAL_ATTRIBUTE_ERROR,
        full.to_vec(),
        reason,
    )
}

/// The decoded attribute, or the AFI/SAFI that we do not carry.
pub(super) enum Mp<T> {
    Known(T),
    UnknownFamily(u16, u8),
}

/// MP_REACH_NLRI value: AFI (2), SAFI (1), next hop length (1), next hop, reserved (1), NLRI.
pub(super) fn decode_mp_reach(value: &[u8], full: &[u8]) -> Result<Mp<MpReach>, WireError> {
    let mut r = Reader::new(value);
    let (Some(afi), Some(safi), Some(nh_len)) = (r.u16(), r.u8(), r.u8()) else {
        return Err(optional_attr_error(
            full,
            format!(
                "UPDATE: MP_REACH_NLRI attribute: {} bytes is too short",
                value.len()
            ),
        ));
    };
    let Some(nh) = r.take(nh_len.into()) else {
        return Err(optional_attr_error(
            full,
            format!(
                "UPDATE: MP_REACH_NLRI attribute: next hop length {nh_len} overruns the attribute"
            ),
        ));
    };
    if r.u8().is_none() {
        return Err(optional_attr_error(
            full,
            "UPDATE: MP_REACH_NLRI attribute: reserved octet missing".into(),
        ));
    }
    let Some(family) = Family::from_codes(afi, safi) else {
        return Ok(Mp::UnknownFamily(afi, safi));
    };
    let mut nr = Reader::new(nh);
    let next_hops: Vec<IpAddr> = match (family, nh_len) {
        (Family::Ipv4Unicast, 4) => nr.ipv4().map(IpAddr::V4).into_iter().collect(),
        (Family::Ipv6Unicast, 16 | 32) => std::iter::from_fn(|| nr.ipv6().map(IpAddr::V6)).collect(),
        _ => {
            return Err(optional_attr_error(
                full,
                format!("UPDATE: MP_REACH_NLRI attribute: next hop length {nh_len} is invalid for {family:?}"),
            ))
        }
    };
    let nlri = decode_family(r.rest(), family, "MP_REACH_NLRI")?;
    Ok(Mp::Known(MpReach {
        family,
        next_hops,
        nlri,
    }))
}

/// MP_UNREACH_NLRI value: AFI (2), SAFI (1), withdrawn routes.
pub(super) fn decode_mp_unreach(value: &[u8], full: &[u8]) -> Result<Mp<MpUnreach>, WireError> {
    let mut r = Reader::new(value);
    let (Some(afi), Some(safi)) = (r.u16(), r.u8()) else {
        return Err(optional_attr_error(
            full,
            format!(
                "UPDATE: MP_UNREACH_NLRI attribute: {} bytes is too short",
                value.len()
            ),
        ));
    };
    let Some(family) = Family::from_codes(afi, safi) else {
        return Ok(Mp::UnknownFamily(afi, safi));
    };
    let withdrawn = decode_family(r.rest(), family, "MP_UNREACH_NLRI")?;
    Ok(Mp::Known(MpUnreach { family, withdrawn }))
}

fn put_family_prefix(
    p: &IpNet,
    family: Family,
    attr: &str,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match (p, family) {
        (IpNet::V4(p), Family::Ipv4Unicast) => put_v4(p, out),
        (IpNet::V6(p), Family::Ipv6Unicast) => put_v6(p, out),
        _ => {
            return Err(EncodeError::Invalid(format!(
                "UPDATE: {attr}: prefix {p} is not {family:?}"
            )))
        }
    }
    Ok(())
}

pub(super) fn encode_mp_reach(m: &MpReach, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.extend_from_slice(&m.family.afi().code().to_be_bytes());
    out.push(m.family.safi());
    let nh_ok = matches!(
        (m.family, m.next_hops.as_slice()),
        (Family::Ipv4Unicast, [IpAddr::V4(_)])
            | (
                Family::Ipv6Unicast,
                [IpAddr::V6(_)] | [IpAddr::V6(_), IpAddr::V6(_)]
            )
    );
    if !nh_ok {
        return Err(EncodeError::Invalid(format!(
            "UPDATE: MP_REACH_NLRI: next hops {:?} do not fit {:?}",
            m.next_hops, m.family
        )));
    }
    let nh_len: usize = m
        .next_hops
        .iter()
        .map(|a| if a.is_ipv4() { 4 } else { 16 })
        .sum();
    out.push(nh_len as u8);
    for a in &m.next_hops {
        match a {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    out.push(0);
    for p in &m.nlri {
        put_family_prefix(p, m.family, "MP_REACH_NLRI", out)?;
    }
    Ok(())
}

pub(super) fn encode_mp_unreach(m: &MpUnreach, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.extend_from_slice(&m.family.afi().code().to_be_bytes());
    out.push(m.family.safi());
    for p in &m.withdrawn {
        put_family_prefix(p, m.family, "MP_UNREACH_NLRI", out)?;
    }
    Ok(())
}

/// Octets of the MP_REACH_NLRI value before the NLRI, for the packer.
pub(super) fn mp_reach_fixed_len(next_hops: &[IpAddr]) -> usize {
    5 + next_hops
        .iter()
        .map(|a| if a.is_ipv4() { 4 } else { 16 })
        .sum::<usize>()
}
