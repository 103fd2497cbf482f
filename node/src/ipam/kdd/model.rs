//! Calico's IPAM objects in `crd.projectcalico.org/v1` (cluster-scoped) as serde structs, their
//! names, and the pure conversion between an `IPAMBlock` spec and a [`Block`].
//!
//! Field names and casing are libcalico-go's (`handle_id` inside attributes, the rest camel
//! case). Go writes nil slices and maps as `null`, so every list and map reads `null` as empty.
//! Fields we do not know are kept (`extra`) and written back unchanged.
//!
//! A block written here: `allocations[ordinal]` = index into `attributes` (identical attributes
//! shared, as Calico does per assignment), `unallocated` = the free ordinals, in the block's old
//! order then newly freed ones ascending; `sequenceNumber` goes up by one per write and
//! `sequenceNumberForAllocation[ordinal]` is the number of the write that allocated it. An
//! allocation that keeps its ordinal and handle keeps its attribute (node, timestamp) as it was.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::api::ApiResource;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::ipam::block::{Block, HOST_PREFIX};

pub const GROUP: &str = "crd.projectcalico.org";
pub const VERSION: &str = "v1";
pub const API_VERSION: &str = "crd.projectcalico.org/v1";

/// Our annotation on an IPAMBlock naming the IPPool it was claimed from (Calico has no field).
pub const POOL_ANNOTATION: &str = "calico-rs/ippool";

/// Handle of an allocation whose attribute has no `handle_id` (Calico writes some, e.g. for
/// reserved addresses): it stays taken and can only go with its block.
pub const NO_HANDLE: &str = "(no handle)";

/// `BlockAffinity.spec.state` values, Calico's.
pub const STATE_PENDING: &str = "pending";
pub const STATE_CONFIRMED: &str = "confirmed";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn ipam_blocks() -> ApiResource {
    resource("IPAMBlock", "ipamblocks")
}

pub fn block_affinities() -> ApiResource {
    resource("BlockAffinity", "blockaffinities")
}

pub fn ipam_handles() -> ApiResource {
    resource("IPAMHandle", "ipamhandles")
}

fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `IPAMBlock.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamBlockSpec {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub allocations: Vec<Option<u64>>,
    #[serde(default, deserialize_with = "null_default")]
    pub unallocated: Vec<u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub attributes: Vec<AllocationAttribute>,
    #[serde(default, deserialize_with = "null_default")]
    pub sequence_number: u64,
    #[serde(default, deserialize_with = "null_default")]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub deleted: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub strict_affinity: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `IPAMBlock.spec.attributes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    #[serde(rename = "handle_id", default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub secondary: BTreeMap<String, String>,
}

/// `BlockAffinity.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAffinitySpec {
    pub state: String,
    pub node: String,
    pub cidr: String,
    /// `"true"` or `"false"`: a string, as Calico keeps it for old releases.
    #[serde(default)]
    pub deleted: String,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BlockAffinitySpec {
    pub fn host(node: &str, cidr: &IpNet, state: &str) -> BlockAffinitySpec {
        BlockAffinitySpec {
            state: state.into(),
            node: node.into(),
            cidr: cidr.to_string(),
            deleted: "false".into(),
            kind: "host".into(),
            extra: Map::new(),
        }
    }
}

/// `IPAMHandle.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamHandleSpec {
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR -> number of the handle's addresses in it.
    #[serde(default, deserialize_with = "null_default")]
    pub block: BTreeMap<String, u64>,
    #[serde(default, deserialize_with = "null_default")]
    pub deleted: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// 64-bit FNV-1a, for stable name suffixes (no hashing dependency for a name).
fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Kubernetes object names (DNS subdomains) are at most this long.
const MAX_NAME: usize = 253;

fn is_subdomain(s: &str) -> bool {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|c| ok(c) || c == b'-' || c == b'.')
        && s.split('.')
            .all(|l| l.bytes().next().is_some_and(ok) && l.bytes().last().is_some_and(ok))
}

/// `BlockAffinity` name: `NODE-CIDRNAME` (`n1-10-244-0-64-26`), as Calico names it. A name that
/// would pass 253 characters is cut and given a hash suffix, as Calico does, though with a
/// different hash (FNV-1a, not SHA-256): such names differ from Calico's.
pub fn affinity_name(node: &str, cidr: &IpNet) -> String {
    let c = Block::object_name(cidr);
    let name = format!("{node}-{c}");
    if name.len() < MAX_NAME {
        return name;
    }
    let keep = MAX_NAME.saturating_sub(c.len() + 13).min(node.len());
    let mut cut = keep;
    while !node.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}-{c}-{:011x}",
        &node[..cut],
        fnv64(&format!("{node}+{c}")) & 0xfff_ffff_ffff
    )
}

/// `IPAMHandle` name: the handle id in lower case (Calico's rule). An id that is not a valid
/// object name that way (ours are `namespace/pod`) is made into one: invalid characters become
/// `-`, and a hash of the id is appended so distinct ids keep distinct names. The id itself
/// is kept in `spec.handleID`.
pub fn handle_name(handle: &str) -> String {
    let lower = handle.to_lowercase();
    if is_subdomain(&lower) {
        return lower;
    }
    let mut s: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(MAX_NAME - 17);
    let s = s.trim_matches(|c| c == '-' || c == '.');
    let hash = format!("{:016x}", fnv64(handle));
    if s.is_empty() {
        hash
    } else {
        format!("{s}-{hash}")
    }
}

/// The allocations of `block` per handle, as `IPAMHandle.spec.block` counts them.
pub fn handle_counts(block: &BTreeMap<IpAddr, String>) -> BTreeMap<&str, u64> {
    let mut out = BTreeMap::new();
    for h in block.values().filter(|h| h.as_str() != NO_HANDLE) {
        *out.entry(h.as_str()).or_default() += 1;
    }
    out
}

/// A spec that could not be used: the message, and the CIDR to keep taken if known.
#[derive(Debug, PartialEq, Eq)]
pub struct BadBlock {
    pub cidr: Option<IpNet>,
    pub message: String,
}

/// Reads an IPAMBlock named `name`; `pool` is its [`POOL_ANNOTATION`].
pub fn parse_block(
    name: &str,
    spec: &IpamBlockSpec,
    pool: Option<&str>,
) -> Result<Block, BadBlock> {
    let named = Block::parse_object_name(name).map(|c| c.trunc());
    let bad = |cidr: Option<IpNet>, message: String| BadBlock { cidr, message };
    let cidr: IpNet = spec
        .cidr
        .parse()
        .map_err(|_| bad(named, format!("spec.cidr: invalid CIDR {:?}", spec.cidr)))?;
    Block::check_cidr(&cidr).map_err(|m| bad(named.or(Some(cidr.trunc())), format!("spec.{m}")))?;
    if Block::object_name(&cidr) != name {
        return Err(bad(
            Some(cidr),
            format!(
                "metadata.name: expected {} for spec.cidr {cidr}",
                Block::object_name(&cidr)
            ),
        ));
    }
    let affinity = spec
        .affinity
        .as_deref()
        .and_then(|a| a.strip_prefix(HOST_PREFIX))
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let mut block = Block {
        cidr,
        affinity,
        pool: pool.map(str::to_string),
        allocations: BTreeMap::new(),
    };
    if spec.allocations.len() as u64 != block.size() {
        return Err(bad(
            Some(cidr),
            format!(
                "spec.allocations: {} entries for a block of {} addresses",
                spec.allocations.len(),
                block.size()
            ),
        ));
    }
    for (ord, idx) in spec.allocations.iter().enumerate() {
        let Some(idx) = idx else { continue };
        let attr = usize::try_from(*idx)
            .ok()
            .and_then(|i| spec.attributes.get(i))
            .ok_or_else(|| {
                bad(
                    Some(cidr),
                    format!(
                        "spec.allocations[{ord}]: attribute {idx} does not exist ({} attributes)",
                        spec.attributes.len()
                    ),
                )
            })?;
        let handle = attr
            .handle_id
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| NO_HANDLE.to_string());
        let ip = block
            .address(ord as u64)
            .expect("ordinal is within the block");
        block.allocations.insert(ip, handle);
    }
    Ok(block)
}

/// The secondary attributes of a new allocation: Calico's `node` and `timestamp`, and
/// `namespace` and `pod` when the handle is `NAMESPACE/POD` (this codebase's handles).
fn secondary(handle: &str, node: Option<&str>, now: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(n) = node {
        m.insert("node".into(), n.into());
    }
    m.insert("timestamp".into(), now.into());
    if let Some((ns, pod)) = handle.split_once('/') {
        if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') {
            m.insert("namespace".into(), ns.into());
            m.insert("pod".into(), pod.into());
        }
    }
    m
}

/// The spec to write for `block`, given the spec it was read from (`None` for a new block);
/// `now` is the timestamp of new allocations.
pub fn block_spec(block: &Block, old: Option<&IpamBlockSpec>, now: &str) -> IpamBlockSpec {
    let size = block.size();
    let seq = old.map_or(0, |o| o.sequence_number + 1);
    let mut allocations = vec![None; size as usize];
    let mut attributes: Vec<AllocationAttribute> = Vec::new();
    let mut seq_for = BTreeMap::new();
    for (ip, handle) in &block.allocations {
        let Some(ord) = block.ordinal(ip) else {
            continue;
        };
        let kept = old.and_then(|o| {
            let idx = (*o.allocations.get(ord as usize)?)?;
            let attr = o.attributes.get(usize::try_from(idx).ok()?)?;
            let same = match attr.handle_id.as_deref().filter(|h| !h.is_empty()) {
                Some(h) => h == handle,
                None => handle == NO_HANDLE,
            };
            same.then(|| {
                let s = o.sequence_number_for_allocation.get(&ord.to_string());
                (attr.clone(), s.copied().unwrap_or(o.sequence_number))
            })
        });
        let (attr, s) = kept.unwrap_or_else(|| {
            let attr = AllocationAttribute {
                handle_id: (handle != NO_HANDLE).then(|| handle.clone()),
                secondary: secondary(handle, block.affinity.as_deref(), now),
            };
            (attr, seq)
        });
        let idx = match attributes.iter().position(|a| *a == attr) {
            Some(i) => i,
            None => {
                attributes.push(attr);
                attributes.len() - 1
            }
        };
        allocations[ord as usize] = Some(idx as u64);
        seq_for.insert(ord.to_string(), s);
    }
    let free = |o: u64| o < size && allocations[o as usize].is_none();
    let mut unallocated: Vec<u64> = Vec::new();
    let mut listed = vec![false; size as usize];
    for &o in old.map(|o| o.unallocated.as_slice()).unwrap_or_default() {
        if free(o) && !listed[o as usize] {
            listed[o as usize] = true;
            unallocated.push(o);
        }
    }
    unallocated.extend((0..size).filter(|&o| free(o) && !listed[o as usize]));
    let affinity = match &block.affinity {
        Some(n) => Some(format!("{HOST_PREFIX}{n}")),
        // A non-host affinity we read as none is written back as it was.
        None => old.and_then(|o| o.affinity.clone()),
    };
    IpamBlockSpec {
        cidr: block.cidr.to_string(),
        affinity,
        allocations,
        unallocated,
        attributes,
        sequence_number: seq,
        sequence_number_for_allocation: seq_for,
        deleted: false,
        strict_affinity: old.is_some_and(|o| o.strict_affinity),
        extra: old.map(|o| o.extra.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_calicos() {
        assert_eq!(
            affinity_name("n1", &net("10.244.0.64/26")),
            "n1-10-244-0-64-26"
        );
        assert_eq!(
            Block::object_name(&net("fd00:10::40/122")),
            "fd00-10--40-122"
        );
        assert_eq!(
            handle_name("k8s-pod-network.0123abcdef"),
            "k8s-pod-network.0123abcdef"
        );
        assert_eq!(handle_name("K8s-Pod.ABC"), "k8s-pod.abc");
        let a = handle_name("default/web-0");
        assert!(a.starts_with("default-web-0-") && is_subdomain(&a), "{a}");
        assert_ne!(a, handle_name("default-web/0"));
        assert!(is_subdomain(&handle_name("/")));
        let long = "x".repeat(300);
        let n = affinity_name(&long, &net("10.0.0.0/26"));
        assert!(n.len() <= MAX_NAME && n.contains("-10-0-0-0-26-"), "{n}");
        assert!(is_subdomain(&handle_name(&long.replace('x', "/A"))));
    }

    /// An IPAMBlock as Calico writes it (nil maps as null, shared attributes).
    const CALICO_BLOCK: &str = r#"{
        "cidr": "10.244.0.64/30",
        "affinity": "host:n1",
        "allocations": [0, null, 0, 1],
        "unallocated": [1],
        "attributes": [
            {"handle_id": "k8s-pod-network.abc", "secondary": {"namespace": "default", "node": "n1", "pod": "web", "timestamp": "t0"}},
            {"secondary": null}
        ],
        "sequenceNumber": 7,
        "sequenceNumberForAllocation": {"0": 3, "2": 3, "3": 5},
        "deleted": false,
        "strictAffinity": false,
        "futureField": {"x": 1}
    }"#;

    #[test]
    fn a_calico_block_reads_and_round_trips() {
        let spec: IpamBlockSpec = serde_json::from_str(CALICO_BLOCK).unwrap();
        let b = parse_block("10-244-0-64-30", &spec, None).unwrap();
        assert_eq!(b.affinity.as_deref(), Some("n1"));
        let got: Vec<(String, &str)> = b
            .allocations
            .iter()
            .map(|(ip, h)| (ip.to_string(), h.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.0.64".into(), "k8s-pod-network.abc"),
                ("10.244.0.66".into(), "k8s-pod-network.abc"),
                ("10.244.0.67".into(), NO_HANDLE),
            ]
        );
        // Unchanged, it is written back as it was, but for the sequence number.
        let again = block_spec(&b, Some(&spec), "t9");
        let mut want = spec.clone();
        want.sequence_number = 8;
        assert_eq!(again, want);
        let json = serde_json::to_value(&again).unwrap();
        assert_eq!(json["futureField"]["x"], 1);
        assert_eq!(json["attributes"][0]["handle_id"], "k8s-pod-network.abc");
        assert!(json["sequenceNumberForAllocation"].is_object());
    }

    #[test]
    fn writes_keep_old_attributes_and_unallocated_order() {
        let spec: IpamBlockSpec = serde_json::from_str(CALICO_BLOCK).unwrap();
        let mut b = parse_block("10-244-0-64-30", &spec, None).unwrap();
        b.allocations.remove(&"10.244.0.64".parse().unwrap());
        b.allocations
            .insert("10.244.0.65".parse().unwrap(), "ns/pod-1".into());
        let s = block_spec(&b, Some(&spec), "t9");
        assert_eq!(s.allocations, [None, Some(0), Some(1), Some(2)]);
        assert_eq!(s.attributes[1], spec.attributes[0]);
        assert_eq!(s.attributes[2], spec.attributes[1]);
        let new = &s.attributes[0];
        assert_eq!(new.handle_id.as_deref(), Some("ns/pod-1"));
        assert_eq!(new.secondary["namespace"], "ns");
        assert_eq!(new.secondary["pod"], "pod-1");
        assert_eq!(new.secondary["node"], "n1");
        assert_eq!(new.secondary["timestamp"], "t9");
        assert_eq!(s.unallocated, [0]);
        assert_eq!(s.sequence_number, 8);
        assert_eq!(s.sequence_number_for_allocation["1"], 8);
        assert_eq!(s.sequence_number_for_allocation["2"], 3);
        assert_eq!(parse_block("10-244-0-64-30", &s, None).unwrap(), b);
    }

    #[test]
    fn a_new_block_and_bad_specs() {
        let mut b = Block::new(net("fd00::40/126"), "n2", "v6");
        b.allocations
            .insert("fd00::41".parse().unwrap(), "h".into());
        let s = block_spec(&b, None, "t");
        assert_eq!(s.allocations, [None, Some(0), None, None]);
        assert_eq!(s.unallocated, [0, 2, 3]);
        assert_eq!(s.affinity.as_deref(), Some("host:n2"));
        assert_eq!(s.sequence_number, 0);
        let name = Block::object_name(&b.cidr);
        assert_eq!(parse_block(&name, &s, Some("v6")).unwrap(), b);

        let err = |spec: &IpamBlockSpec, name: &str| parse_block(name, spec, None).unwrap_err();
        let mut bad = s.clone();
        bad.allocations.pop();
        assert_eq!(
            err(&bad, &name).message,
            "spec.allocations: 3 entries for a block of 4 addresses"
        );
        let mut bad = s.clone();
        bad.allocations[0] = Some(5);
        assert!(err(&bad, &name)
            .message
            .starts_with("spec.allocations[0]: attribute 5"));
        let mut bad = s.clone();
        bad.cidr = "nonsense".into();
        let e = err(&bad, &name);
        assert_eq!(e.cidr, Some(b.cidr), "the name's CIDR stays taken");
        let e = err(&s, "fd00--80-126");
        assert!(
            e.message
                .starts_with("metadata.name: expected fd00--40-126"),
            "{e:?}"
        );
        let mut bad = s.clone();
        bad.cidr = "fd00::41/126".into();
        assert!(err(&bad, &name).message.contains("host bits"));
    }
}
