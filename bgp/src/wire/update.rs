//! UPDATE message layout (RFC 4271 4.3, 6.3 as revised by RFC 7606 3, 5) and the packing of
//! prefix sets into as few UPDATEs as fit in 4096 bytes.
//!
//! Decoding: the withdrawn-routes and total-path-attribute lengths must fit the message (else
//! session reset 3/1: nothing after them can be located); classic NLRI and withdrawn routes
//! must be syntactically valid (else 3/10, RFC 7606 5.3). When the UPDATE announces anything,
//! a missing ORIGIN or AS_PATH (and NEXT_HOP for classic NLRI) is treat-as-withdraw (RFC 7606
//! 3 d; LOCAL_PREF is not required), as is a next hop that cannot be a host: 0.0.0.0, multicast
//! or broadcast (RFC 4271 6.3), and for IPv6 the unspecified or a multicast global address.
//! An UPDATE with attributes but nothing announced is fine: its attributes mean nothing.
//!
//! Encoding writes MP_REACH_NLRI then MP_UNREACH_NLRI as the first attributes (RFC 7606 5.1:
//! a receiver can then always find the prefixes to withdraw), the rest ascending by code.

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use ipnet::{IpNet, Ipv4Net};

use super::attr::{self, flags};
use super::attrs::{self, attr_header_len, put_attr};
use super::code::UPDATE_MESSAGE_ERROR;
use super::nlri::{self, prefix_wire_len};
use super::reader::Reader;
use super::subcode::{INVALID_NETWORK_FIELD, MALFORMED_ATTRIBUTE_LIST};
use super::{
    AttrError, EncodeError, Family, MpReach, MpUnreach, PathAttrs, SessionCaps, Treatment, Update,
    WireError, HEADER_LEN, MAX_MESSAGE_LEN,
};

fn malformed_list(reason: String) -> WireError {
    WireError::new(UPDATE_MESSAGE_ERROR, MALFORMED_ATTRIBUTE_LIST, reason)
}

pub(super) fn decode_update(body: &[u8], caps: &SessionCaps) -> Result<Update, WireError> {
    let mut r = Reader::new(body);
    let wlen = r.u16().unwrap_or_default();
    let withdrawn_bytes = r.take(wlen.into()).ok_or_else(|| {
        malformed_list(format!(
            "UPDATE: withdrawn routes length {wlen} overruns the message ({} bytes left)",
            body.len().saturating_sub(2)
        ))
    })?;
    let alen = r
        .u16()
        .ok_or_else(|| malformed_list("UPDATE: total path attribute length missing".into()))?;
    let attr_bytes = r.take(alen.into()).ok_or_else(|| {
        malformed_list(format!(
            "UPDATE: total path attribute length {alen} overruns the message ({} bytes left)",
            body.len().saturating_sub(4 + usize::from(wlen))
        ))
    })?;
    let nlri_bytes = r.rest();

    let invalid_network = |reason: String| {
        WireError::new(
            UPDATE_MESSAGE_ERROR,
            INVALID_NETWORK_FIELD,
            format!("UPDATE: {reason}"),
        )
    };
    let mut withdrawn = Vec::new();
    nlri::decode_v4(withdrawn_bytes, "withdrawn routes", &mut withdrawn)
        .map_err(invalid_network)?;
    let decoded = attrs::decode_attrs(attr_bytes, caps)?;
    let mut nlri = Vec::new();
    nlri::decode_v4(nlri_bytes, "NLRI", &mut nlri).map_err(invalid_network)?;

    let mut errors = decoded.errors;
    let a = &decoded.attrs;
    let announces = !nlri.is_empty()
        || decoded
            .mp_reach
            .as_ref()
            .is_some_and(|m| !m.nlri.is_empty());
    if announces {
        // A malformed attribute was already noted; only flag what was never there.
        let mut missing = Vec::new();
        if a.origin.is_none() {
            missing.push(attr::ORIGIN);
        }
        if !decoded.has_as_path {
            missing.push(attr::AS_PATH);
        }
        if !nlri.is_empty() && a.next_hop.is_none() {
            missing.push(attr::NEXT_HOP);
        }
        for code in missing {
            if !errors.iter().any(|e| e.code == code) {
                errors.push(AttrError {
                    code,
                    treatment: Treatment::TreatAsWithdraw,
                    reason: format!("UPDATE: {} attribute: missing", attrs::attr_name(code)),
                });
            }
        }
    }
    if !nlri.is_empty() {
        if let Some(nh) = a.next_hop {
            if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                errors.push(AttrError {
                    code: attr::NEXT_HOP,
                    treatment: Treatment::TreatAsWithdraw,
                    reason: format!("UPDATE: NEXT_HOP attribute: {nh} is not a host address"),
                });
            }
        }
    }
    if let Some(m) = decoded.mp_reach.as_ref().filter(|m| !m.nlri.is_empty()) {
        let bad = match m.next_hops.first() {
            Some(IpAddr::V4(nh)) => nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast(),
            // An unspecified global next hop is usable only with a link-local one beside it.
            Some(IpAddr::V6(nh)) => {
                nh.is_multicast() || (nh.is_unspecified() && m.next_hops.len() == 1)
            }
            None => true,
        };
        if bad {
            errors.push(AttrError {
                code: attr::MP_REACH_NLRI,
                treatment: Treatment::TreatAsWithdraw,
                reason: format!(
                    "UPDATE: MP_REACH_NLRI attribute: next hop {:?} is not a host address",
                    m.next_hops
                ),
            });
        }
    }
    Ok(Update {
        withdrawn,
        attrs: decoded.attrs,
        nlri,
        mp_reach: decoded.mp_reach,
        mp_unreach: decoded.mp_unreach,
        errors,
    })
}

/// Writes the UPDATE body. `u.errors` is ignored (it is only ever filled by the decoder).
pub(super) fn encode_update(
    u: &Update,
    caps: &SessionCaps,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut buf = Vec::with_capacity(256);
    for p in &u.withdrawn {
        nlri::put_v4(p, &mut buf);
    }
    let wlen = field_len(buf.len(), "withdrawn routes")?;
    out.put_u16(wlen);
    out.put_slice(&buf);

    buf.clear();
    let mut value = Vec::new();
    if let Some(m) = &u.mp_reach {
        nlri::encode_mp_reach(m, &mut value)?;
        put_attr(&mut buf, flags::OPTIONAL, attr::MP_REACH_NLRI, &value)?;
    }
    if let Some(m) = &u.mp_unreach {
        value.clear();
        nlri::encode_mp_unreach(m, &mut value)?;
        put_attr(&mut buf, flags::OPTIONAL, attr::MP_UNREACH_NLRI, &value)?;
    }
    attrs::encode_attrs(&u.attrs, caps, &mut buf)?;
    let alen = field_len(buf.len(), "path attributes")?;
    out.put_u16(alen);
    out.put_slice(&buf);

    buf.clear();
    for p in &u.nlri {
        nlri::put_v4(p, &mut buf);
    }
    out.put_slice(&buf);
    Ok(())
}

fn field_len(len: usize, what: &'static str) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::TooLong { what, len })
}

/// Header, withdrawn-routes length and total-path-attribute length.
const UPDATE_FIXED: usize = HEADER_LEN + 2 + 2;

/// Greedily cuts `prefixes` into runs whose encoded NLRI fits `budget(nlri_bytes)`: `fits`
/// returns whether a run of that many NLRI bytes still fits the message. Every run holds at
/// least one prefix, even when that one does not fit (encoding it will then fail loudly).
fn chunks<'p>(prefixes: &[&'p IpNet], fits: impl Fn(usize) -> bool) -> Vec<Vec<&'p IpNet>> {
    let mut out = Vec::new();
    let mut cur: Vec<&IpNet> = Vec::new();
    let mut bytes = 0;
    for &p in prefixes {
        let n = prefix_wire_len(p.prefix_len());
        if !cur.is_empty() && !fits(bytes + n) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        cur.push(p);
        bytes += n;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn of_family(family: Family, prefixes: &[IpNet]) -> Vec<&IpNet> {
    prefixes
        .iter()
        .filter(|p| Family::of(p) == family)
        .collect()
}

fn v4_only(run: &[&IpNet]) -> Vec<Ipv4Net> {
    run.iter()
        .filter_map(|p| match p {
            IpNet::V4(p) => Some(*p),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Split `prefixes` (all of one family) that share `attrs` into as few UPDATEs as fit in 4096
/// bytes each.
///
/// IPv4 unicast goes in the classic NLRI field with `attrs.next_hop` = the IPv4 next hop in
/// `next_hops[0]` (left as in `attrs` when there is none); IPv6 goes in MP_REACH_NLRI with
/// `next_hops` (global, optional link-local), and NEXT_HOP is left out (RFC 4760 3). Prefixes of
/// another family are skipped. No prefixes, no UPDATEs (End-of-RIB is [`Update::end_of_rib`]).
pub fn pack_announcements(
    attrs: &PathAttrs,
    family: Family,
    next_hops: &[IpAddr],
    prefixes: &[IpNet],
    caps: &SessionCaps,
) -> Vec<Update> {
    let prefixes = of_family(family, prefixes);
    if prefixes.is_empty() {
        return Vec::new();
    }
    let mut attrs = attrs.clone();
    match family {
        Family::Ipv4Unicast => {
            if let Some(IpAddr::V4(nh)) = next_hops.first() {
                attrs.next_hop = Some(*nh);
            }
        }
        Family::Ipv6Unicast => attrs.next_hop = None,
    }
    let mut attr_bytes = Vec::new();
    // An attribute that cannot be encoded fails again, loudly, when the UPDATE is encoded.
    let _ = attrs::encode_attrs(&attrs, caps, &mut attr_bytes);
    let base = UPDATE_FIXED + attr_bytes.len();
    match family {
        Family::Ipv4Unicast => chunks(&prefixes, |n| base + n <= MAX_MESSAGE_LEN)
            .into_iter()
            .map(|run| Update {
                attrs: attrs.clone(),
                nlri: v4_only(&run),
                ..Update::default()
            })
            .collect(),
        Family::Ipv6Unicast => {
            let fixed = nlri::mp_reach_fixed_len(next_hops);
            chunks(&prefixes, |n| {
                let value = fixed + n;
                base + attr_header_len(value) + value <= MAX_MESSAGE_LEN
            })
            .into_iter()
            .map(|run| Update {
                attrs: attrs.clone(),
                mp_reach: Some(MpReach {
                    family,
                    next_hops: next_hops.to_vec(),
                    nlri: run.into_iter().copied().collect(),
                }),
                ..Update::default()
            })
            .collect()
        }
    }
}

/// Same for withdrawals: IPv4 unicast in the withdrawn-routes field, others in MP_UNREACH_NLRI.
/// Prefixes of another family are skipped; no prefixes, no UPDATEs.
pub fn pack_withdrawals(family: Family, prefixes: &[IpNet], caps: &SessionCaps) -> Vec<Update> {
    let _ = caps; // withdrawals carry no AS numbers; kept for symmetry with the announcements
    let prefixes = of_family(family, prefixes);
    match family {
        Family::Ipv4Unicast => chunks(&prefixes, |n| UPDATE_FIXED + n <= MAX_MESSAGE_LEN)
            .into_iter()
            .map(|run| Update {
                withdrawn: v4_only(&run),
                ..Update::default()
            })
            .collect(),
        Family::Ipv6Unicast => chunks(&prefixes, |n| {
            let value = 3 + n;
            UPDATE_FIXED + attr_header_len(value) + value <= MAX_MESSAGE_LEN
        })
        .into_iter()
        .map(|run| Update {
            mp_unreach: Some(MpUnreach {
                family,
                withdrawn: run.into_iter().copied().collect(),
            }),
            ..Update::default()
        })
        .collect(),
    }
}
