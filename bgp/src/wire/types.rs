//! Typed BGP messages: what the codec decodes to and encodes from.
//!
//! These types say what a message *means*, not how it was laid out: an AS_PATH is always held with
//! 4-octet AS numbers (the codec merges AS4_PATH from 2-octet peers and splits it again toward them,
//! RFC 6793), and IPv4 unicast NLRI travel in the classic UPDATE fields while other families travel in
//! MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Marker, length and type: every message starts with these 19 octets (RFC 4271 4.1).
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended-message capability (RFC 4271 4.1).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// AS_TRANS, the 2-octet stand-in for a 4-octet AS number (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// Address family identifier (IANA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    Ipv4,
    Ipv6,
}

impl Afi {
    pub fn code(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
        }
    }
}

/// The (AFI, SAFI) pairs this speaker negotiates. Only unicast is carried.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    pub fn afi(self) -> Afi {
        match self {
            Family::Ipv4Unicast => Afi::Ipv4,
            Family::Ipv6Unicast => Afi::Ipv6,
        }
    }
    /// SAFI 1, unicast.
    pub fn safi(self) -> u8 {
        1
    }
    pub fn from_codes(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }
    pub fn of(prefix: &IpNet) -> Family {
        match prefix {
            IpNet::V4(_) => Family::Ipv4Unicast,
            IpNet::V6(_) => Family::Ipv6Unicast,
        }
    }
}

/// One decoded BGP message.
// UPDATE is the big, common variant; boxing it would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

/// OPEN (RFC 4271 4.2). `my_as` is the 2-octet field as sent (AS_TRANS for a 4-octet AS); use
/// [`Open::asn`] for the speaker's real AS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The sender's AS: the 4-octet AS capability when present, else the 2-octet field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(self.my_as as u32)
    }
    pub fn families(&self) -> Vec<Family> {
        self.capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect()
    }
    pub fn has_route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }
    pub fn graceful_restart(&self) -> Option<&GracefulRestartCap> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }
    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }
}

/// Capabilities advertised in OPEN optional parameter 2 (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Code 1 (RFC 4760).
    Multiprotocol(Family),
    /// Code 2 (RFC 2918).
    RouteRefresh,
    /// Code 64 (RFC 4724).
    GracefulRestart(GracefulRestartCap),
    /// Code 65 (RFC 6793).
    FourOctetAs(u32),
    /// Code 70 (RFC 7313), advertised by BIRD and GoBGP; recognised so it is not logged as unknown.
    EnhancedRouteRefresh,
    /// Anything else, kept as received (also a code-1 capability for a family we do not carry).
    Unknown { code: u8, value: Vec<u8> },
}

/// The graceful restart capability (RFC 4724 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestartCap {
    /// R bit: the sender has restarted.
    pub restarting: bool,
    /// N bit (RFC 8538): graceful restart also on NOTIFICATION.
    pub notification: bool,
    /// Restart Time in seconds (12 bits).
    pub restart_time: u16,
    /// Families whose state the sender keeps across a restart, with the F bit (forwarding state kept).
    pub families: Vec<(Family, bool)>,
}

/// ORIGIN attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Origin {
    #[default]
    Igp,
    Egp,
    Incomplete,
}

/// AS_PATH segment types (RFC 4271 4.3, RFC 5065).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    Set,
    Sequence,
    ConfedSequence,
    ConfedSet,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsSegment {
    pub kind: SegmentKind,
    pub asns: Vec<u32>,
}

/// AS_PATH, always in 4-octet form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// Path length for the decision process: a SET counts 1, confederation segments 0 (RFC 4271
    /// 9.1.2.2 a, RFC 5065 5.3).
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
                _ => 0,
            })
            .sum()
    }
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }
    /// The neighbouring AS: first AS of the leading SEQUENCE, if any (for MED comparison).
    pub fn first_asn(&self) -> Option<u32> {
        match self.segments.first() {
            Some(s) if s.kind == SegmentKind::Sequence => s.asns.first().copied(),
            _ => None,
        }
    }
    /// Prepends `asn` as eBGP export does (RFC 4271 5.1.2), splitting at 255 ASNs per segment.
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(s) if s.kind == SegmentKind::Sequence && s.asns.len() < 255 => {
                s.asns.insert(0, asn)
            }
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }
}

/// A path attribute we do not interpret, passed on when optional transitive (with the Partial bit set).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttr {
    pub flags: u8,
    pub code: u8,
    pub value: Vec<u8>,
}

/// Path attributes of an UPDATE, except MP_REACH / MP_UNREACH (those are fields of [`Update`]) and
/// AS4_PATH / AS4_AGGREGATOR (merged into `as_path` / `aggregator` by the codec).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttrs {
    /// Code 1. `None` only in a withdraw-only UPDATE.
    pub origin: Option<Origin>,
    /// Code 2.
    pub as_path: AsPath,
    /// Code 3: the IPv4 next hop of classic NLRI.
    pub next_hop: Option<Ipv4Addr>,
    /// Code 4.
    pub med: Option<u32>,
    /// Code 5.
    pub local_pref: Option<u32>,
    /// Code 6.
    pub atomic_aggregate: bool,
    /// Code 7 (with AS4_AGGREGATOR merged): (AS, router address).
    pub aggregator: Option<(u32, Ipv4Addr)>,
    /// Code 8 (RFC 1997), in received order.
    pub communities: Vec<u32>,
    /// Code 9 (RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    /// Code 10 (RFC 4456).
    pub cluster_list: Vec<Ipv4Addr>,
    /// Code 32 (RFC 8092): (global administrator, local data 1, local data 2).
    pub large_communities: Vec<(u32, u32, u32)>,
    /// Unrecognised optional transitive attributes, passed on.
    pub unknown: Vec<RawAttr>,
}

/// MP_REACH_NLRI (RFC 4760 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    pub family: Family,
    /// One next hop, or for IPv6 a global and a link-local one (RFC 2545).
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<IpNet>,
}

/// MP_UNREACH_NLRI (RFC 4760 4). Empty `withdrawn` with no other content is End-of-RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<IpNet>,
}

/// What RFC 7606 says to do with an UPDATE carrying a malformed attribute that does not reset the
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// RFC 7606 2: every prefix of the UPDATE (NLRI and MP_REACH NLRI) is handled as withdrawn.
    TreatAsWithdraw,
    /// RFC 7606 2: the attribute is dropped and the rest of the UPDATE is used.
    AttributeDiscard,
}

/// A malformed attribute found while decoding an UPDATE that was not a session reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrError {
    /// Attribute type code.
    pub code: u8,
    pub treatment: Treatment,
    pub reason: String,
}

/// UPDATE (RFC 4271 4.3, RFC 4760).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn IPv4 unicast routes.
    pub withdrawn: Vec<ipnet::Ipv4Net>,
    pub attrs: PathAttrs,
    /// IPv4 unicast NLRI (next hop in `attrs.next_hop`).
    pub nlri: Vec<ipnet::Ipv4Net>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// Set by the decoder only: RFC 7606 errors that did not reset the session. When any is
    /// `TreatAsWithdraw`, the receiver handles every prefix in the UPDATE as withdrawn.
    pub errors: Vec<AttrError>,
}

impl Update {
    /// End-of-RIB marker (RFC 4724 2): an empty UPDATE for IPv4 unicast, an UPDATE with an empty
    /// MP_UNREACH_NLRI for other families.
    pub fn end_of_rib(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update::default(),
            f => Update {
                mp_unreach: Some(MpUnreach {
                    family: f,
                    withdrawn: vec![],
                }),
                ..Update::default()
            },
        }
    }
    /// The family this UPDATE marks End-of-RIB for, if it is such a marker.
    pub fn is_end_of_rib(&self) -> Option<Family> {
        let no_attrs = self.attrs == PathAttrs::default();
        // `errors` is empty too: an UPDATE whose only attribute was an MP_(UN)REACH_NLRI for a
        // family we do not carry (discarded by the decoder) is not an IPv4 End-of-RIB.
        if !no_attrs
            || !self.errors.is_empty()
            || !self.withdrawn.is_empty()
            || !self.nlri.is_empty()
            || self.mp_reach.is_some()
        {
            return None;
        }
        match &self.mp_unreach {
            None => Some(Family::Ipv4Unicast),
            Some(u) if u.withdrawn.is_empty() => Some(u.family),
            _ => None,
        }
    }
    pub fn treat_as_withdraw(&self) -> bool {
        self.errors
            .iter()
            .any(|e| e.treatment == Treatment::TreatAsWithdraw)
    }
    /// Every prefix announced by this UPDATE, any family.
    pub fn announced(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.nlri
            .iter()
            .map(|p| IpNet::V4(*p))
            .chain(self.mp_reach.iter().flat_map(|m| m.nlri.iter().copied()))
    }
    /// Every prefix withdrawn by this UPDATE, any family.
    pub fn withdrawn_all(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.withdrawn.iter().map(|p| IpNet::V4(*p)).chain(
            self.mp_unreach
                .iter()
                .flat_map(|m| m.withdrawn.iter().copied()),
        )
    }
}

/// NOTIFICATION (RFC 4271 4.5) with its error code, subcode and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Notification {
        Notification {
            code,
            subcode,
            data: vec![],
        }
    }
    pub fn with_data(code: u8, subcode: u8, data: Vec<u8>) -> Notification {
        Notification {
            code,
            subcode,
            data,
        }
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", super::notification_text(self.code, self.subcode))?;
        if self.code == 6 && (self.subcode == 2 || self.subcode == 4) {
            // RFC 8203 / 9003 shutdown communication: length octet then UTF-8.
            let len = usize::from(self.data.first().copied().unwrap_or_default());
            let text = self.data.get(1..1 + len).filter(|_| len > 0);
            if let Some(msg) = text.and_then(|b| std::str::from_utf8(b).ok()) {
                write!(f, ": \"{msg}\"")?;
            }
        }
        Ok(())
    }
}

/// ROUTE-REFRESH (RFC 2918 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub family: Family,
}

/// What was negotiated on a session; decode and encode take it explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaps {
    /// Both sides sent the 4-octet AS capability.
    pub four_octet_as: bool,
    /// The session is eBGP (RFC 7606: LOCAL_PREF, ORIGINATOR_ID, CLUSTER_LIST from an eBGP peer are
    /// discarded).
    pub ebgp: bool,
}

impl Default for SessionCaps {
    /// Before OPEN is exchanged: 4-octet AS assumed (only OPEN, KEEPALIVE and NOTIFICATION flow then).
    fn default() -> SessionCaps {
        SessionCaps {
            four_octet_as: true,
            ebgp: false,
        }
    }
}

/// A link-local IPv6 next hop accompanying a global one (RFC 2545 3).
pub fn is_link_local(a: &Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}
