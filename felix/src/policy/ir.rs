//! The rule IR: the whole desired nftables table of a node as plain, comparable data.
//!
//! A [`Ruleset`] holds everything that varies with the input — named sets with their elements,
//! regular chains with their rules, and the elements of the two dispatch verdict maps — keyed by
//! name in `BTreeMap`s, so equal inputs give equal (and equally ordered) values, a diff is a walk over
//! two sorted maps, and rendering is deterministic. The fixed skeleton (base chains, the maps' own
//! declarations) is not part of the IR; [`super::render`] writes it from the configuration.
//!
//! Names are derived from *content identity*, never from position: a selector set is named after
//! its canonical selector text, a port set after its ports, a policy chain after the policy's
//! namespace/name, an endpoint chain after its interface. So a pod changing labels changes set
//! elements only, and a policy edit rewrites only that policy's chain.
//!
//! Where a name is a hash of that identity, two identities can hash alike. The compiler therefore
//! reuses a set or chain only for the same identity (compared whole, not by name) and gives a
//! colliding one a suffixed name (`sel-HASH-2-v4`); see `compile::Names`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sha1::{Digest, Sha1};

use super::validate::Proto;

/// Address family of a set or rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`ip`).
    V4,
    /// IPv6 (`ip6`).
    V6,
}

impl Family {
    /// Family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// nft payload keyword (`ip` / `ip6`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// Suffix used in set names (`v4` / `v6`).
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }

    /// Both families.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

/// What a named set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// Pod addresses (`ipv4_addr` / `ipv6_addr`).
    Addr(Family),
    /// CIDRs (`flags interval`).
    Net(Family),
    /// Ports and port ranges (`inet_service`, `flags interval`).
    Ports,
    /// (pod address, port) pairs for a named port (`ipv4_addr . inet_service`).
    AddrPort(Family),
}

/// One set element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    /// An address.
    Addr(IpAddr),
    /// A prefix.
    Net(IpNet),
    /// A port range (a single port has equal ends).
    Ports(u16, u16),
    /// Address and port.
    AddrPort(IpAddr, u16),
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elem::Addr(a) => write!(f, "{a}"),
            Elem::Net(n) => write!(f, "{n}"),
            Elem::Ports(a, b) if a == b => write!(f, "{a}"),
            Elem::Ports(a, b) => write!(f, "{a}-{b}"),
            Elem::AddrPort(a, p) => write!(f, "{a} . {p}"),
        }
    }
}

/// A named set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetDef {
    /// Element type.
    pub kind: SetKind,
    /// Human description (the selector or CIDR it stands for).
    pub comment: String,
    /// Elements. Shared: the compiler's set cache, the applied ruleset and the desired one hold
    /// the same allocation while a set is unchanged, so cloning a ruleset and comparing an
    /// unchanged set (`Arc`'s `==` checks identity first) cost nothing per element.
    pub elements: Arc<BTreeSet<Elem>>,
}

/// Packet direction relative to the address being matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Source address (`saddr`): the peer of an ingress rule.
    Src,
    /// Destination address (`daddr`): the peer of an egress rule.
    Dst,
}

/// One match of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// `ip saddr @set` and friends.
    AddrIn {
        /// Family of the set.
        family: Family,
        /// Which address.
        dir: Dir,
        /// Set name.
        set: String,
    },
    /// `meta l4proto tcp` (every port of a protocol).
    Proto(Proto),
    /// `tcp dport 80` or `tcp dport 80-90`.
    Port(Proto, u16, u16),
    /// `tcp dport @set`.
    PortIn(Proto, String),
    /// `ip daddr . tcp dport @set` (named port: the destination pod's address and port).
    NamedPort {
        /// Family of the set.
        family: Family,
        /// Protocol.
        proto: Proto,
        /// Set name.
        set: String,
    },
}

/// A rule's verdict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// The configured deny action (`drop` or `reject`).
    Deny,
    /// `jump CHAIN`.
    Jump(String),
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Matches, all of which must hold.
    pub matches: Vec<Match>,
    /// Verdict.
    pub verdict: Verdict,
    /// Comment (rule origin).
    pub comment: Option<String>,
}

/// A regular chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Chain comment; a function of the chain name, so it never changes under a name.
    pub comment: String,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

/// The variable part of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Named sets.
    pub sets: BTreeMap<String, SetDef>,
    /// Regular chains (policy and endpoint chains).
    pub chains: BTreeMap<String, Chain>,
    /// `iifname` verdict map: traffic *from* a workload (its egress) -> endpoint chain.
    pub from_wl: BTreeMap<String, String>,
    /// `oifname` verdict map: traffic *to* a workload (its ingress) -> endpoint chain.
    pub to_wl: BTreeMap<String, String>,
}

impl Ruleset {
    /// Number of rules over all regular chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// Number of elements over all sets.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

/// Name of the `iifname` dispatch map.
pub const FROM_WL_MAP: &str = "from-wl";
/// Name of the `oifname` dispatch map.
pub const TO_WL_MAP: &str = "to-wl";

/// First `n` hex digits of SHA-1 of `s`: a stable, short name for long or unusual content.
pub fn short_hash(s: &str, n: usize) -> String {
    let mut h = hex::encode(Sha1::digest(s.as_bytes()));
    h.truncate(n);
    h
}

/// Whether `s` can be used bare as (the tail of) an nft identifier.
pub fn is_ident_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Longest chain or set name we emit in readable form (nft allows 255 bytes, 256 with the NUL);
/// the rest leaves room for a collision suffix.
const MAX_NAME: usize = 200;

/// Hash used for names: the first `n` hex digits of SHA-1 of the text ([`short_hash`]). The
/// compiler takes it as a parameter so that tests can force collisions.
pub type NameHash = fn(&str, usize) -> String;

/// Endpoint chain for traffic to a workload (its ingress): `tw-IFACE` (Calico's "to workload").
pub fn to_wl_chain(iface: &str) -> String {
    endpoint_chain("tw", iface, short_hash)
}

/// Endpoint chain for traffic from a workload (its egress): `fw-IFACE`.
pub fn from_wl_chain(iface: &str) -> String {
    endpoint_chain("fw", iface, short_hash)
}

/// `PREFIX-IFACE`, or `PREFIX-hHASH` for an interface name nft cannot take bare. The compiler's
/// name table keeps two interfaces from sharing a chain if hashed names ever collide.
pub(crate) fn endpoint_chain(prefix: &str, iface: &str, hash: NameHash) -> String {
    if is_ident_safe(iface) {
        format!("{prefix}-{iface}")
    } else {
        format!("{prefix}-h{}", hash(iface, 12))
    }
}

/// Policy chain: `pi-NS.NAME` (ingress) or `pe-NS.NAME` (egress), e.g. `pi-prod.web.frontend`.
pub fn policy_chain(ingress: bool, ns: &str, name: &str) -> String {
    policy_chain_with(ingress, ns, name, short_hash)
}

/// [`policy_chain`] with the hash as a parameter.
///
/// The readable form is injective: Kubernetes namespace names are DNS labels (no dots) while
/// policy names are DNS subdomains (dots allowed), so the *first* dot after the prefix ends the
/// namespace — provided the namespace really has none. A namespace with a dot (which the API server
/// never accepts, but the input is not trusted), or a name nft cannot take bare, or a name longer
/// than [`MAX_NAME`] (63 + 253 bytes do not fit) gets the hashed form `pi-hHASH` instead, which has
/// no dot and so never equals a readable name. A dot was chosen over escaping or length prefixes
/// because it keeps every real name as people write it (`pi-prod.web`); the policy's namespace and
/// name are in the chain's comment for the hashed ones. Two hashed names can still collide (a
/// 64-bit hash of the quoted pair): the compiler hands names out through a table keyed by the
/// policy, which gives the second one a `-2` suffix instead of the first one's chain.
pub(crate) fn policy_chain_with(ingress: bool, ns: &str, name: &str, hash: NameHash) -> String {
    let prefix = if ingress { "pi" } else { "pe" };
    let n = format!("{prefix}-{ns}.{name}");
    if n.len() <= MAX_NAME && is_ident_safe(ns) && !ns.contains('.') && is_ident_safe(name) {
        n
    } else {
        // Debug quoting keeps the key unambiguous (`"a/b"/"c"` vs `"a"/"b/c"`).
        format!("{prefix}-h{}", hash(&format!("{ns:?}/{name:?}"), 16))
    }
}
