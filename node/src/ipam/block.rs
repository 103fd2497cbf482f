//! One IPAM block as data: its CIDR, affinity and allocations, with the pure operations on it
//! (next free address, file name <-> CIDR, YAML form) and the free-block search over a pool.
//!
//! Addresses are handed out lowest first and every address of the block is used, `.0` and the
//! last one included, as Calico does: a block is a routing unit, not a subnet with a broadcast.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::datastore::IpFamily;

/// Blocks larger than 2^16 addresses are refused when loading (no pool can make one).
pub const MAX_BLOCK_BITS: u8 = 16;

/// Affinity prefix, as in Calico's `IPAMBlock.spec.affinity`.
pub(crate) const HOST_PREFIX: &str = "host:";

/// A block of addresses owned by one node (its affinity) and the handles allocated in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub cidr: IpNet,
    /// The node the block is affine to; `None` for a block whose node was released while
    /// allocations remained (not produced today: `release_node` removes blocks whole).
    pub affinity: Option<String>,
    /// Name of the pool it was claimed from (informational).
    pub pool: Option<String>,
    /// Allocated address -> handle.
    pub allocations: BTreeMap<IpAddr, String>,
}

/// The on-disk form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockDoc {
    kind: String,
    cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    affinity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    #[serde(default)]
    allocations: BTreeMap<String, String>,
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn from_u128(family: IpFamily, n: u128) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

fn make_net(family: IpFamily, start: u128, prefix: u8) -> IpNet {
    match from_u128(family, start) {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix).expect("prefix checked by caller")),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix).expect("prefix checked by caller")),
    }
}

/// First and last address of a network, as integers.
pub(crate) fn range(net: &IpNet) -> (u128, u128) {
    (to_u128(net.network()), to_u128(net.broadcast()))
}

fn host_bits(net: &IpNet) -> u8 {
    net.max_prefix_len() - net.prefix_len()
}

impl Block {
    pub fn new(cidr: IpNet, node: &str, pool: &str) -> Block {
        Block {
            cidr,
            affinity: Some(node.to_string()),
            pool: Some(pool.to_string()),
            allocations: BTreeMap::new(),
        }
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.cidr)
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> u64 {
        1u64 << host_bits(&self.cidr).min(MAX_BLOCK_BITS)
    }

    pub fn free(&self) -> u64 {
        self.size().saturating_sub(self.allocations.len() as u64)
    }

    /// The lowest unallocated address.
    pub fn next_free(&self) -> Option<IpAddr> {
        let start = to_u128(self.cidr.network());
        (0..u128::from(self.size()))
            .map(|i| from_u128(self.family(), start + i))
            .find(|ip| !self.allocations.contains_key(ip))
    }

    pub fn is_affine_to(&self, node: &str) -> bool {
        self.affinity.as_deref() == Some(node)
    }

    /// The object name of a block: the CIDR with `.`, `:` and `/` as `-` (`10-244-0-64-26`,
    /// `fd00-10--40-122`), Calico's IPAMBlock name (`names.CIDRToName`).
    pub fn object_name(cidr: &IpNet) -> String {
        cidr.to_string()
            .chars()
            .map(|c| if matches!(c, '.' | ':' | '/') { '-' } else { c })
            .collect()
    }

    /// The CIDR an object name stands for (host bits are kept, to be checked by the caller).
    pub fn parse_object_name(name: &str) -> Option<IpNet> {
        let (addr, prefix) = name.rsplit_once('-')?;
        let prefix: u8 = prefix.parse().ok()?;
        if let Ok(a) = addr.replace('-', ".").parse::<Ipv4Addr>() {
            return Ipv4Net::new(a, prefix).ok().map(IpNet::V4);
        }
        let a = addr.replace('-', ":").parse::<Ipv6Addr>().ok()?;
        Ipv6Net::new(a, prefix).ok().map(IpNet::V6)
    }

    /// The file name of a block: its object name plus `.yaml` (`10-244-0-64-26.yaml`).
    pub fn file_name(cidr: &IpNet) -> String {
        format!("{}.yaml", Block::object_name(cidr))
    }

    /// The CIDR a block file name stands for (host bits are kept, to be checked by the caller).
    pub fn parse_file_name(name: &str) -> Option<IpNet> {
        Block::parse_object_name(name.strip_suffix(".yaml")?)
    }

    /// Ordinal of `ip` in the block (0 for the network address), if it is inside.
    pub fn ordinal(&self, ip: &IpAddr) -> Option<u64> {
        if !self.cidr.contains(ip) {
            return None;
        }
        u64::try_from(to_u128(*ip) - to_u128(self.cidr.network())).ok()
    }

    /// The address at `ordinal`, if it is inside the block.
    pub fn address(&self, ordinal: u64) -> Option<IpAddr> {
        (ordinal < self.size()).then(|| {
            from_u128(
                self.family(),
                to_u128(self.cidr.network()) + u128::from(ordinal),
            )
        })
    }

    /// Checks a CIDR for use as a block: no host bits, at most 2^[`MAX_BLOCK_BITS`] addresses.
    pub fn check_cidr(cidr: &IpNet) -> Result<(), String> {
        if cidr.trunc() != *cidr {
            return Err(format!("cidr: {cidr} has host bits set"));
        }
        if host_bits(cidr) > MAX_BLOCK_BITS {
            return Err(format!(
                "cidr: {cidr} is larger than the largest block (2^{MAX_BLOCK_BITS} addresses)"
            ));
        }
        Ok(())
    }

    pub fn to_yaml(&self) -> String {
        let doc = BlockDoc {
            kind: "IPAMBlock".into(),
            cidr: self.cidr.to_string(),
            affinity: self.affinity.as_ref().map(|n| format!("{HOST_PREFIX}{n}")),
            pool: self.pool.clone(),
            allocations: self
                .allocations
                .iter()
                .map(|(ip, h)| (ip.to_string(), h.clone()))
                .collect(),
        };
        let body = serde_yaml_ng::to_string(&doc).unwrap_or_default();
        format!("# calico-rs IPAM block; written by calico-node-rs under DIR/ipam/.lock.\n{body}")
    }

    /// Parses and validates a block file's text; `expected` is the CIDR its name stands for.
    pub fn from_yaml(text: &str, expected: &IpNet) -> Result<Block, String> {
        let doc: BlockDoc =
            serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
        if doc.kind != "IPAMBlock" {
            return Err(format!("kind: expected IPAMBlock, got {:?}", doc.kind));
        }
        let cidr: IpNet = doc
            .cidr
            .parse()
            .map_err(|_| format!("cidr: invalid CIDR {:?}", doc.cidr))?;
        if cidr != *expected {
            return Err(format!(
                "cidr: {cidr} does not match the file name ({expected})"
            ));
        }
        Block::check_cidr(&cidr)?;
        let affinity = match doc.affinity {
            None => None,
            Some(a) => match a.strip_prefix(HOST_PREFIX) {
                Some(n) if !n.is_empty() => Some(n.to_string()),
                _ => return Err(format!("affinity: expected \"host:NODE\", got {a:?}")),
            },
        };
        let mut allocations = BTreeMap::new();
        for (ip, handle) in doc.allocations {
            let addr: IpAddr = ip
                .parse()
                .map_err(|_| format!("allocations: invalid address {ip:?}"))?;
            if !cidr.contains(&addr) {
                return Err(format!("allocations: {addr} is outside the block"));
            }
            if handle.is_empty() {
                return Err(format!("allocations.{ip}: empty handle"));
            }
            allocations.insert(addr, handle);
        }
        Ok(Block {
            cidr,
            affinity,
            pool: doc.pool,
            allocations,
        })
    }
}

/// The lowest block of `pool_cidr` with prefix `block_size` that overlaps none of `taken`.
///
/// Runs in O(taken) whatever the pool's size (an IPv6 /48 has 2^74 candidate /122 blocks).
pub fn find_free_block(pool_cidr: &IpNet, block_size: u8, taken: &[IpNet]) -> Option<IpNet> {
    if block_size < pool_cidr.prefix_len() || block_size > pool_cidr.max_prefix_len() {
        return None;
    }
    let family = IpFamily::of_net(pool_cidr);
    let (ps, pe) = range(pool_cidr);
    let len_bits = pool_cidr.max_prefix_len() - block_size;
    let len: u128 = 1u128.checked_shl(u32::from(len_bits))?;
    let mut spans: Vec<(u128, u128)> = taken
        .iter()
        .filter(|t| IpFamily::of_net(t) == family)
        .map(range)
        .filter(|&(s, e)| s <= pe && e >= ps)
        .collect();
    spans.sort_unstable();
    let mut idx = 0;
    let mut cs = ps;
    loop {
        let ce = cs.checked_add(len - 1)?;
        if ce > pe {
            return None;
        }
        while idx < spans.len() && spans[idx].1 < cs {
            idx += 1;
        }
        match spans.get(idx) {
            Some(&(s, e)) if s <= ce => {
                // Next aligned block after this span.
                let next = e.checked_add(1)?;
                cs = next.checked_add(len - 1)? / len * len;
            }
            _ => return Some(make_net(family, cs, block_size)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn file_names_round_trip() {
        for c in [
            "10.244.0.64/26",
            "fd00:10::/122",
            "::/122",
            "fd00::1:0/122",
            "1:2::3:0/122",
        ] {
            let n = net(c);
            let name = Block::file_name(&n);
            assert_eq!(Block::parse_file_name(&name), Some(n), "{name}");
        }
        assert_eq!(
            Block::file_name(&net("10.244.0.64/26")),
            "10-244-0-64-26.yaml"
        );
        assert_eq!(Block::parse_file_name("garbage.yaml"), None);
        assert_eq!(Block::parse_file_name("10-0-0-0-99.yaml"), None);
        assert_eq!(Block::parse_file_name("10-0-0-0-26.yml"), None);
    }

    #[test]
    fn next_free_uses_every_address_lowest_first() {
        let mut b = Block::new(net("10.0.0.0/30"), "n1", "p");
        let mut got = Vec::new();
        while let Some(ip) = b.next_free() {
            b.allocations.insert(ip, format!("h{}", got.len()));
            got.push(ip.to_string());
        }
        assert_eq!(got, ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(b.free(), 0);
        b.allocations.remove(&"10.0.0.1".parse().unwrap());
        assert_eq!(b.next_free(), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn yaml_round_trip_and_validation() {
        let mut b = Block::new(net("fd00::40/122"), "node-1", "v6");
        b.allocations
            .insert("fd00::41".parse().unwrap(), "ns/pod".into());
        let text = b.to_yaml();
        assert_eq!(Block::from_yaml(&text, &b.cidr), Ok(b.clone()));
        let other = net("fd00::80/122");
        assert!(Block::from_yaml(&text, &other)
            .unwrap_err()
            .contains("does not match the file name"));
        let bad = text.replace("fd00::41", "fd00::99");
        assert!(Block::from_yaml(&bad, &b.cidr)
            .unwrap_err()
            .contains("outside the block"));
        let bad = text.replace("host:node-1", "node-1");
        assert!(Block::from_yaml(&bad, &b.cidr)
            .unwrap_err()
            .starts_with("affinity:"));
        assert!(Block::from_yaml("{{{", &b.cidr)
            .unwrap_err()
            .starts_with("invalid YAML"));
        assert!(Block::from_yaml("", &b.cidr).is_err());
    }

    #[test]
    fn free_block_search_skips_taken_and_overlapping() {
        let pool = net("10.0.0.0/24");
        assert_eq!(find_free_block(&pool, 26, &[]), Some(net("10.0.0.0/26")));
        let taken = [net("10.0.0.0/26"), net("10.0.0.128/26")];
        assert_eq!(
            find_free_block(&pool, 26, &taken),
            Some(net("10.0.0.64/26"))
        );
        // A differently sized block from an older pool setting blocks what it overlaps.
        let taken = [net("10.0.0.0/25"), net("10.0.0.130/32")];
        assert_eq!(
            find_free_block(&pool, 26, &taken),
            Some(net("10.0.0.192/26"))
        );
        let all: Vec<IpNet> = (0..4)
            .map(|i| net(&format!("10.0.0.{}/26", i * 64)))
            .collect();
        assert_eq!(find_free_block(&pool, 26, &all), None);
        // Blocks outside the pool and of the other family do not matter.
        assert_eq!(
            find_free_block(&pool, 26, &[net("10.0.1.0/26"), net("::/0")]),
            Some(net("10.0.0.0/26"))
        );
        // A huge IPv6 pool is searched in O(taken).
        let v6 = net("fd00::/48");
        let taken = [net("fd00::/122"), net("fd00::40/122")];
        assert_eq!(find_free_block(&v6, 122, &taken), Some(net("fd00::80/122")));
        assert_eq!(find_free_block(&net("::/0"), 128, &[net("::/0")]), None);
        assert_eq!(find_free_block(&pool, 20, &[]), None);
    }
}
