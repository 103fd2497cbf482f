//! Path attributes of an UPDATE (RFC 4271 4.3, 5, 6.3) with the RFC 7606 error handling,
//! COMMUNITIES (RFC 1997), ORIGINATOR_ID / CLUSTER_LIST (RFC 4456), LARGE_COMMUNITY (RFC 8092),
//! and the 2-octet/4-octet AS translation (RFC 6793 4.2: AS4_PATH and AS4_AGGREGATOR).
//!
//! How each problem is handled (RFC 7606 3, 4, 7; RFC 6793 6):
//!
//! | problem                                                     | outcome                         |
//! |-------------------------------------------------------------|---------------------------------|
//! | attribute header or value overrunning the attribute list    | treat-as-withdraw (RFC 7606 4); |
//! |                                                             | session reset 3/1 if the        |
//! |                                                             | overrunning one is MP_(UN)REACH |
//! | MP_REACH / MP_UNREACH repeated                              | session reset 3/1 (7606 3 g)    |
//! | any other attribute repeated                                | later copies discarded (3 g)    |
//! | Optional/Transitive flags wrong for a known attribute       | malformed: that attribute's     |
//! |                                                             | handling below (7606 3 c);      |
//! |                                                             | MP_(UN)REACH: reset 3/4         |
//! | ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF malformed        | treat-as-withdraw (7.1-7.5)     |
//! | COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST, LARGE_COMMUNITY   | treat-as-withdraw (7.8-7.10,    |
//! | malformed                                                   | RFC 8092 6)                     |
//! | LOCAL_PREF, ORIGINATOR_ID, CLUSTER_LIST from an eBGP peer   | attribute discard (7.5, 7.9,    |
//! |                                                             | 7.10)                           |
//! | ATOMIC_AGGREGATE, AGGREGATOR malformed                      | attribute discard (7.6, 7.7)    |
//! | AS4_PATH, AS4_AGGREGATOR malformed, or on a 4-octet session | attribute discard (RFC 6793 6)  |
//! | MP_REACH / MP_UNREACH malformed                             | session reset 3/9 or 3/10       |
//! |                                                             | (`nlri`, 7606 7.11)             |
//! | unknown well-known attribute                                | session reset 3/2 (RFC 4271)    |
//! | unknown optional non-transitive                             | dropped silently                |
//! | unknown optional transitive                                 | kept with Partial set           |
//!
//! Why the overrun is not always a reset: RFC 7606 4 says treat-as-withdraw, relying on the
//! Total Path Attribute Length to find the NLRI. The one thing it could hide is an
//! MP_REACH/MP_UNREACH later in the list (whose prefixes we then could not withdraw);
//! RFC 7606 5.1 makes senders put those first, so they have been seen already, and if the
//! overrunning attribute is itself one of them we reset.

use std::net::Ipv4Addr;

use super::attr::{self, flags};
use super::code::UPDATE_MESSAGE_ERROR;
use super::nlri::{self, Mp};
use super::reader::Reader;
use super::subcode::{
    ATTRIBUTE_FLAGS_ERROR, MALFORMED_ATTRIBUTE_LIST, UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
};
use super::{
    AsPath, AsSegment, AttrError, EncodeError, MpReach, MpUnreach, Origin, PathAttrs, RawAttr,
    SegmentKind, SessionCaps, Treatment, WireError, AS_TRANS,
};

/// Everything the attribute list of one UPDATE decoded to.
#[derive(Debug, Default)]
pub(super) struct Decoded {
    pub attrs: PathAttrs,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub errors: Vec<AttrError>,
    /// AS_PATH was present and well-formed (an empty path is valid on iBGP).
    pub has_as_path: bool,
}

/// Printable attribute name for error reasons.
pub(super) fn attr_name(code: u8) -> String {
    let name = match code {
        attr::ORIGIN => "ORIGIN",
        attr::AS_PATH => "AS_PATH",
        attr::NEXT_HOP => "NEXT_HOP",
        attr::MULTI_EXIT_DISC => "MULTI_EXIT_DISC",
        attr::LOCAL_PREF => "LOCAL_PREF",
        attr::ATOMIC_AGGREGATE => "ATOMIC_AGGREGATE",
        attr::AGGREGATOR => "AGGREGATOR",
        attr::COMMUNITIES => "COMMUNITIES",
        attr::ORIGINATOR_ID => "ORIGINATOR_ID",
        attr::CLUSTER_LIST => "CLUSTER_LIST",
        attr::MP_REACH_NLRI => "MP_REACH_NLRI",
        attr::MP_UNREACH_NLRI => "MP_UNREACH_NLRI",
        attr::AS4_PATH => "AS4_PATH",
        attr::AS4_AGGREGATOR => "AS4_AGGREGATOR",
        attr::LARGE_COMMUNITY => "LARGE_COMMUNITY",
        _ => return format!("type {code}"),
    };
    name.to_string()
}

/// The Optional and Transitive bits each attribute we interpret must carry.
fn expected_flags(code: u8) -> Option<u8> {
    const WELL_KNOWN: u8 = flags::TRANSITIVE;
    const OPT_TRANS: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    const OPT: u8 = flags::OPTIONAL;
    Some(match code {
        attr::ORIGIN
        | attr::AS_PATH
        | attr::NEXT_HOP
        | attr::LOCAL_PREF
        | attr::ATOMIC_AGGREGATE => WELL_KNOWN,
        attr::MULTI_EXIT_DISC | attr::ORIGINATOR_ID | attr::CLUSTER_LIST => OPT,
        attr::MP_REACH_NLRI | attr::MP_UNREACH_NLRI => OPT,
        attr::AGGREGATOR
        | attr::COMMUNITIES
        | attr::AS4_PATH
        | attr::AS4_AGGREGATOR
        | attr::LARGE_COMMUNITY => OPT_TRANS,
        _ => return None,
    })
}

/// RFC 7606 handling of a malformed attribute that is not MP_REACH / MP_UNREACH.
fn malformed_treatment(code: u8) -> Treatment {
    match code {
        attr::ATOMIC_AGGREGATE | attr::AGGREGATOR | attr::AS4_PATH | attr::AS4_AGGREGATOR => {
            Treatment::AttributeDiscard
        }
        _ => Treatment::TreatAsWithdraw,
    }
}

struct State<'c> {
    caps: &'c SessionCaps,
    out: Decoded,
    seen: [bool; 256],
    /// On 2-octet sessions: AS4_PATH / AS4_AGGREGATOR to merge once all attributes are read.
    as4_path: Option<AsPath>,
    as4_aggregator: Option<(u32, Ipv4Addr)>,
}

impl State<'_> {
    fn note(&mut self, code: u8, treatment: Treatment, what: impl std::fmt::Display) {
        self.out.errors.push(AttrError {
            code,
            treatment,
            reason: format!("UPDATE: {} attribute: {what}", attr_name(code)),
        });
    }

    fn malformed(&mut self, code: u8, what: impl std::fmt::Display) {
        self.note(code, malformed_treatment(code), what);
    }
}

/// Decodes the path attribute list of an UPDATE.
pub(super) fn decode_attrs(buf: &[u8], caps: &SessionCaps) -> Result<Decoded, WireError> {
    let mut st = State {
        caps,
        out: Decoded::default(),
        seen: [false; 256],
        as4_path: None,
        as4_aggregator: None,
    };
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let start = r.pos();
        let remaining = r.remaining();
        let (Some(flags), Some(code)) = (r.u8(), r.u8()) else {
            st.note(
                0,
                Treatment::TreatAsWithdraw,
                format_args!("{remaining} stray bytes at the end of the list"),
            );
            break;
        };
        let len = if flags & flags::EXTENDED_LENGTH != 0 {
            r.u16()
        } else {
            r.u8().map(u16::from)
        };
        let Some(value) = len.and_then(|len| r.take(len.into())) else {
            let what = match len {
                Some(len) => {
                    format!("length {len} overruns the attribute list ({remaining} bytes left)")
                }
                None => format!("header cut short ({remaining} bytes left)"),
            };
            if code == attr::MP_REACH_NLRI || code == attr::MP_UNREACH_NLRI {
                return Err(WireError::new(
                    UPDATE_MESSAGE_ERROR,
                    MALFORMED_ATTRIBUTE_LIST,
                    format!("UPDATE: {} attribute: {what}", attr_name(code)),
                ));
            }
            st.note(code, Treatment::TreatAsWithdraw, what);
            break;
        };
        let full = r.since(start);
        let seen = st.seen.get_mut(usize::from(code));
        if seen.as_deref() == Some(&true) {
            if code == attr::MP_REACH_NLRI || code == attr::MP_UNREACH_NLRI {
                return Err(WireError::new(
                    UPDATE_MESSAGE_ERROR,
                    MALFORMED_ATTRIBUTE_LIST,
                    format!("UPDATE: {} attribute: appears twice", attr_name(code)),
                ));
            }
            st.note(
                code,
                Treatment::AttributeDiscard,
                "repeated, later copy discarded",
            );
            continue;
        }
        if let Some(s) = seen {
            *s = true;
        }
        decode_one(&mut st, flags, code, value, full)?;
    }
    if !st.caps.four_octet_as {
        merge_as4(&mut st);
    }
    // Attribute order carries no meaning; keep the canonical (encoding) order so that equal
    // attribute sets compare equal.
    st.out.attrs.unknown.sort_by_key(|u| u.code);
    Ok(st.out)
}

fn decode_one(
    st: &mut State<'_>,
    flags: u8,
    code: u8,
    value: &[u8],
    full: &[u8],
) -> Result<(), WireError> {
    let ebgp = st.caps.ebgp;
    // RFC 7606 7.5, 7.9, 7.10: these never come from an external peer; disregard them first.
    if ebgp
        && matches!(
            code,
            attr::LOCAL_PREF | attr::ORIGINATOR_ID | attr::CLUSTER_LIST
        )
    {
        st.note(
            code,
            Treatment::AttributeDiscard,
            "received from an eBGP peer, discarded",
        );
        return Ok(());
    }
    let Some(expected) = expected_flags(code) else {
        return decode_unknown(st, flags, code, value, full);
    };
    let got = flags & (flags::OPTIONAL | flags::TRANSITIVE);
    if got != expected {
        let what = format!("flags {flags:#04x}, expected optional/transitive bits {expected:#04x}");
        if code == attr::MP_REACH_NLRI || code == attr::MP_UNREACH_NLRI {
            return Err(WireError::with_data(
                UPDATE_MESSAGE_ERROR,
                ATTRIBUTE_FLAGS_ERROR,
                full.to_vec(),
                format!("UPDATE: {} attribute: {what}", attr_name(code)),
            ));
        }
        st.malformed(code, what);
        return Ok(());
    }
    let four = st.caps.four_octet_as;
    let len = value.len();
    let mut r = Reader::new(value);
    let a = &mut st.out.attrs;
    match code {
        attr::ORIGIN => match value {
            [0] => a.origin = Some(Origin::Igp),
            [1] => a.origin = Some(Origin::Egp),
            [2] => a.origin = Some(Origin::Incomplete),
            [v] => st.malformed(code, format_args!("value {v} out of range")),
            _ => st.malformed(code, format_args!("length {len}, expected 1")),
        },
        attr::AS_PATH => match decode_as_path(value, if four { 4 } else { 2 }) {
            Ok(path) if ebgp && path.segments.iter().any(|s| is_confed(s.kind)) => {
                // RFC 5065 5 / RFC 7606 7.2: confederation segments never come from outside.
                st.malformed(code, "confederation segment from an eBGP peer");
            }
            Ok(path) => {
                st.out.attrs.as_path = path;
                st.out.has_as_path = true;
            }
            Err(what) => st.malformed(code, what),
        },
        attr::NEXT_HOP => match r.ipv4().filter(|_| len == 4) {
            Some(nh) => a.next_hop = Some(nh),
            None => st.malformed(code, format_args!("length {len}, expected 4")),
        },
        attr::MULTI_EXIT_DISC | attr::LOCAL_PREF => match r.u32().filter(|_| len == 4) {
            Some(v) if code == attr::MULTI_EXIT_DISC => a.med = Some(v),
            Some(v) => a.local_pref = Some(v),
            None => st.malformed(code, format_args!("length {len}, expected 4")),
        },
        attr::ATOMIC_AGGREGATE if len == 0 => a.atomic_aggregate = true,
        attr::ATOMIC_AGGREGATE => st.malformed(code, format_args!("length {len}, expected 0")),
        attr::AGGREGATOR => {
            let asn = if four {
                r.u32()
            } else {
                r.u16().map(u32::from)
            };
            let want = if four { 8 } else { 6 };
            match (asn, r.ipv4()) {
                (Some(asn), Some(ip)) if len == want => a.aggregator = Some((asn, ip)),
                _ => st.malformed(code, format_args!("length {len}, expected {want}")),
            }
        }
        attr::COMMUNITIES => {
            if len == 0 || !len.is_multiple_of(4) {
                st.malformed(
                    code,
                    format_args!("length {len} is not a non-zero multiple of 4"),
                );
            } else {
                a.communities = std::iter::from_fn(|| r.u32()).collect();
            }
        }
        attr::ORIGINATOR_ID => match r.ipv4().filter(|_| len == 4) {
            Some(id) => a.originator_id = Some(id),
            None => st.malformed(code, format_args!("length {len}, expected 4")),
        },
        attr::CLUSTER_LIST => {
            if len == 0 || !len.is_multiple_of(4) {
                st.malformed(
                    code,
                    format_args!("length {len} is not a non-zero multiple of 4"),
                );
            } else {
                a.cluster_list = std::iter::from_fn(|| r.ipv4()).collect();
            }
        }
        attr::LARGE_COMMUNITY => {
            if len == 0 || !len.is_multiple_of(12) {
                st.malformed(
                    code,
                    format_args!("length {len} is not a non-zero multiple of 12"),
                );
            } else {
                a.large_communities =
                    std::iter::from_fn(|| Some((r.u32()?, r.u32()?, r.u32()?))).collect();
            }
        }
        attr::MP_REACH_NLRI => match nlri::decode_mp_reach(value, full)? {
            Mp::Known(m) => st.out.mp_reach = Some(m),
            Mp::UnknownFamily(afi, safi) => st.note(
                code,
                Treatment::AttributeDiscard,
                format_args!("AFI {afi} SAFI {safi} not carried, ignored"),
            ),
        },
        attr::MP_UNREACH_NLRI => match nlri::decode_mp_unreach(value, full)? {
            Mp::Known(m) => st.out.mp_unreach = Some(m),
            Mp::UnknownFamily(afi, safi) => st.note(
                code,
                Treatment::AttributeDiscard,
                format_args!("AFI {afi} SAFI {safi} not carried, ignored"),
            ),
        },
        attr::AS4_PATH | attr::AS4_AGGREGATOR if four => {
            // RFC 6793 4.1: a NEW speaker never sends these to a NEW speaker.
            st.note(
                code,
                Treatment::AttributeDiscard,
                "received on a 4-octet AS session, discarded",
            );
        }
        attr::AS4_PATH => match decode_as_path(value, 4) {
            Ok(path) if path.segments.iter().any(|s| is_confed(s.kind)) => {
                st.malformed(code, "confederation segment (RFC 6793 6)");
            }
            Ok(path) => st.as4_path = Some(path),
            Err(what) => st.malformed(code, what),
        },
        attr::AS4_AGGREGATOR => match (r.u32(), r.ipv4()) {
            (Some(asn), Some(ip)) if len == 8 => st.as4_aggregator = Some((asn, ip)),
            _ => st.malformed(code, format_args!("length {len}, expected 8")),
        },
        _ => return decode_unknown(st, flags, code, value, full),
    }
    Ok(())
}

fn decode_unknown(
    st: &mut State<'_>,
    flags: u8,
    code: u8,
    value: &[u8],
    full: &[u8],
) -> Result<(), WireError> {
    if flags & flags::OPTIONAL == 0 {
        return Err(WireError::with_data(
            UPDATE_MESSAGE_ERROR,
            UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
            full.to_vec(),
            format!("UPDATE: attribute type {code}: unrecognized well-known attribute"),
        ));
    }
    if flags & flags::TRANSITIVE != 0 {
        st.out.attrs.unknown.push(RawAttr {
            flags: (flags & (flags::OPTIONAL | flags::TRANSITIVE)) | flags::PARTIAL,
            code,
            value: value.to_vec(),
        });
    }
    Ok(())
}

fn is_confed(kind: SegmentKind) -> bool {
    matches!(kind, SegmentKind::ConfedSequence | SegmentKind::ConfedSet)
}

/// AS_PATH / AS4_PATH value with `asn_len`-octet AS numbers (RFC 4271 4.3, RFC 5065 3, RFC 7606
/// 7.2: unknown segment type, zero-length segment or overrun make it malformed).
pub(super) fn decode_as_path(value: &[u8], asn_len: usize) -> Result<AsPath, String> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let kind = match r.u8() {
            Some(1) => SegmentKind::Set,
            Some(2) => SegmentKind::Sequence,
            Some(3) => SegmentKind::ConfedSequence,
            Some(4) => SegmentKind::ConfedSet,
            other => {
                return Err(format!(
                    "unknown segment type {}",
                    other.unwrap_or_default()
                ))
            }
        };
        let count = r.u8().ok_or("segment header cut short")?;
        if count == 0 {
            return Err("zero-length segment".into());
        }
        let bytes = r
            .take(usize::from(count) * asn_len)
            .ok_or_else(|| format!("segment of {count} AS numbers overruns the attribute"))?;
        let asns = bytes
            .chunks_exact(asn_len)
            .map(|c| c.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
            .collect();
        segments.push(AsSegment { kind, asns });
    }
    Ok(AsPath { segments })
}

/// RFC 6793 4.2.3: rebuild the 4-octet path from AS_PATH and AS4_PATH (2-octet sessions).
fn merge_as4(st: &mut State<'_>) {
    let as4_aggregator = st.as4_aggregator.take();
    let a = &mut st.out.attrs;
    match a.aggregator {
        // Aggregated by an OLD speaker: both AS4 attributes are stale and ignored.
        Some((asn, _)) if asn != u32::from(AS_TRANS) => return,
        Some(_) => {
            if let Some(agg) = as4_aggregator {
                a.aggregator = Some(agg);
            }
        }
        None => {}
    }
    if let Some(as4) = st.as4_path.take() {
        if let Some(path) = merge_as4_path(&a.as_path, &as4) {
            a.as_path = path;
        }
    }
}

/// `None` when AS4_PATH is longer than AS_PATH and must be ignored.
pub(super) fn merge_as4_path(as_path: &AsPath, as4: &AsPath) -> Option<AsPath> {
    let n = as_path.path_len();
    let n4 = as4.path_len();
    if n < n4 {
        return None;
    }
    let mut take = n - n4;
    let mut out: Vec<AsSegment> = Vec::new();
    let mut prev_prepended = false;
    for (i, seg) in as_path.segments.iter().enumerate() {
        if take == 0 {
            // Confederation segments leading the path or next to a prepended one come along.
            if is_confed(seg.kind) && (i == 0 || prev_prepended) {
                out.push(seg.clone());
                continue;
            }
            break;
        }
        match seg.kind {
            SegmentKind::Sequence => {
                let k = take.min(seg.asns.len());
                out.push(AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: seg.asns.get(..k).unwrap_or_default().to_vec(),
                });
                take -= k;
            }
            SegmentKind::Set => {
                out.push(seg.clone());
                take -= 1;
            }
            _ => out.push(seg.clone()),
        }
        prev_prepended = true;
    }
    let mut rest = as4.segments.iter().cloned();
    if let (Some(last), Some(first)) = (out.last_mut(), as4.segments.first()) {
        if last.kind == SegmentKind::Sequence
            && first.kind == SegmentKind::Sequence
            && last.asns.len() + first.asns.len() <= 255
        {
            last.asns.extend_from_slice(&first.asns);
            rest.next();
        }
    }
    out.extend(rest);
    Some(AsPath { segments: out })
}

/// Appends one attribute, with the Extended Length bit exactly when the value passes 255 bytes.
pub(super) fn put_attr(
    out: &mut Vec<u8>,
    flag_bits: u8,
    code: u8,
    value: &[u8],
) -> Result<(), EncodeError> {
    let flag_bits = flag_bits & !(flags::EXTENDED_LENGTH | 0x0f);
    if let Ok(len) = u8::try_from(value.len()) {
        out.extend_from_slice(&[flag_bits, code, len]);
    } else {
        let len = u16::try_from(value.len()).map_err(|_| {
            EncodeError::OutOfRange(format!(
                "UPDATE: {} attribute of {} bytes",
                attr_name(code),
                value.len()
            ))
        })?;
        out.extend_from_slice(&[flag_bits | flags::EXTENDED_LENGTH, code]);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(value);
    Ok(())
}

/// The attribute header length for a value of `len` bytes.
pub(super) fn attr_header_len(len: usize) -> usize {
    if len > 255 {
        4
    } else {
        3
    }
}

fn segment_type(kind: SegmentKind) -> u8 {
    match kind {
        SegmentKind::Set => 1,
        SegmentKind::Sequence => 2,
        SegmentKind::ConfedSequence => 3,
        SegmentKind::ConfedSet => 4,
    }
}

/// AS_PATH value; segments over 255 AS numbers are split, empty ones left out. With `four` false
/// AS numbers over 65535 are written as AS_TRANS.
fn encode_as_path<'a>(
    segments: impl Iterator<Item = &'a AsSegment>,
    four: bool,
    out: &mut Vec<u8>,
) {
    for seg in segments {
        for chunk in seg.asns.chunks(255) {
            out.push(segment_type(seg.kind));
            out.push(chunk.len() as u8);
            for &asn in chunk {
                if four {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let asn = u16::try_from(asn).unwrap_or(AS_TRANS);
                    out.extend_from_slice(&asn.to_be_bytes());
                }
            }
        }
    }
}

/// Attribute codes the codec writes itself; an unknown attribute must not reuse one.
fn is_interpreted(code: u8) -> bool {
    expected_flags(code).is_some()
}

/// Writes every attribute of `a` except MP_REACH / MP_UNREACH, ascending by type code (RFC
/// 4271 5), unknown transitive ones merged in by code. AS_PATH is written when ORIGIN is set or
/// the path is not empty (a withdraw-only UPDATE has no attributes).
pub(super) fn encode_attrs(
    a: &PathAttrs,
    caps: &SessionCaps,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    const WELL_KNOWN: u8 = flags::TRANSITIVE;
    const OPT_TRANS: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    const OPT: u8 = flags::OPTIONAL;
    let four = caps.four_octet_as;

    if let Some(u) = a.unknown.iter().find(|u| is_interpreted(u.code)) {
        return Err(EncodeError::Invalid(format!(
            "UPDATE: unknown attribute with code {} that the codec writes itself",
            u.code
        )));
    }
    let mut unknown: Vec<&RawAttr> = a.unknown.iter().collect();
    unknown.sort_by_key(|u| u.code);
    let mut unknown = unknown.into_iter().peekable();
    let mut value = Vec::with_capacity(64);

    // Known attributes in code order; each closure call flushes the unknown ones below it.
    let mut emit =
        |out: &mut Vec<u8>, flag_bits: u8, code: u8, value: &[u8]| -> Result<(), EncodeError> {
            while let Some(u) = unknown.next_if(|u| u.code < code) {
                put_attr(out, u.flags, u.code, &u.value)?;
            }
            put_attr(out, flag_bits, code, value)
        };

    if let Some(origin) = a.origin {
        let v = match origin {
            Origin::Igp => 0,
            Origin::Egp => 1,
            Origin::Incomplete => 2,
        };
        emit(out, WELL_KNOWN, attr::ORIGIN, &[v])?;
    }
    if a.origin.is_some() || !a.as_path.segments.is_empty() {
        value.clear();
        encode_as_path(a.as_path.segments.iter(), four, &mut value);
        emit(out, WELL_KNOWN, attr::AS_PATH, &value)?;
    }
    if let Some(nh) = a.next_hop {
        emit(out, WELL_KNOWN, attr::NEXT_HOP, &nh.octets())?;
    }
    if let Some(med) = a.med {
        emit(out, OPT, attr::MULTI_EXIT_DISC, &med.to_be_bytes())?;
    }
    if let Some(lp) = a.local_pref {
        emit(out, WELL_KNOWN, attr::LOCAL_PREF, &lp.to_be_bytes())?;
    }
    if a.atomic_aggregate {
        emit(out, WELL_KNOWN, attr::ATOMIC_AGGREGATE, &[])?;
    }
    if let Some((asn, ip)) = a.aggregator {
        value.clear();
        if four {
            value.extend_from_slice(&asn.to_be_bytes());
        } else {
            value.extend_from_slice(&u16::try_from(asn).unwrap_or(AS_TRANS).to_be_bytes());
        }
        value.extend_from_slice(&ip.octets());
        emit(out, OPT_TRANS, attr::AGGREGATOR, &value)?;
    }
    if !a.communities.is_empty() {
        value.clear();
        value.extend(a.communities.iter().flat_map(|c| c.to_be_bytes()));
        emit(out, OPT_TRANS, attr::COMMUNITIES, &value)?;
    }
    if let Some(id) = a.originator_id {
        emit(out, OPT, attr::ORIGINATOR_ID, &id.octets())?;
    }
    if !a.cluster_list.is_empty() {
        value.clear();
        value.extend(a.cluster_list.iter().flat_map(|c| c.octets()));
        emit(out, OPT, attr::CLUSTER_LIST, &value)?;
    }
    if !four {
        // RFC 6793 4.2.2: AS4_PATH only when some AS number does not fit 2 octets, without
        // confederation segments; AS4_AGGREGATOR when the aggregator's AS does not.
        let non_confed = || a.as_path.segments.iter().filter(|s| !is_confed(s.kind));
        if non_confed().any(|s| s.asns.iter().any(|&asn| asn > 0xffff)) {
            value.clear();
            encode_as_path(non_confed(), true, &mut value);
            emit(out, OPT_TRANS, attr::AS4_PATH, &value)?;
        }
        if let Some((asn, ip)) = a.aggregator.filter(|(asn, _)| *asn > 0xffff) {
            value.clear();
            value.extend_from_slice(&asn.to_be_bytes());
            value.extend_from_slice(&ip.octets());
            emit(out, OPT_TRANS, attr::AS4_AGGREGATOR, &value)?;
        }
    }
    if !a.large_communities.is_empty() {
        value.clear();
        for (g, l1, l2) in &a.large_communities {
            value.extend_from_slice(&g.to_be_bytes());
            value.extend_from_slice(&l1.to_be_bytes());
            value.extend_from_slice(&l2.to_be_bytes());
        }
        emit(out, OPT_TRANS, attr::LARGE_COMMUNITY, &value)?;
    }
    for u in unknown {
        put_attr(out, u.flags, u.code, &u.value)?;
    }
    Ok(())
}
