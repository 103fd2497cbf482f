//! A hash map keyed by prefix that stores IPv4 and IPv6 keys apart.
//!
//! `IpNet` is 18 bytes; an IPv4 prefix needs 5. With 100k+ routes the RIB and every Adj-RIB-Out are
//! dominated by their keys, so keeping one map per family roughly halves their size.

use std::collections::HashMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Prefix -> `V`, one map per address family.
#[derive(Debug, Clone)]
pub struct PrefixMap<V> {
    v4: HashMap<Ipv4Net, V>,
    v6: HashMap<Ipv6Net, V>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap {
            v4: HashMap::new(),
            v6: HashMap::new(),
        }
    }
}

impl<V> PrefixMap<V> {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn get(&self, p: &IpNet) -> Option<&V> {
        match p {
            IpNet::V4(n) => self.v4.get(n),
            IpNet::V6(n) => self.v6.get(n),
        }
    }
    pub fn get_mut(&mut self, p: &IpNet) -> Option<&mut V> {
        match p {
            IpNet::V4(n) => self.v4.get_mut(n),
            IpNet::V6(n) => self.v6.get_mut(n),
        }
    }
    pub fn contains_key(&self, p: &IpNet) -> bool {
        self.get(p).is_some()
    }
    pub fn insert(&mut self, p: IpNet, v: V) -> Option<V> {
        match p {
            IpNet::V4(n) => self.v4.insert(n, v),
            IpNet::V6(n) => self.v6.insert(n, v),
        }
    }
    pub fn remove(&mut self, p: &IpNet) -> Option<V> {
        match p {
            IpNet::V4(n) => self.v4.remove(n),
            IpNet::V6(n) => self.v6.remove(n),
        }
    }
    /// The value for `p`, inserted with `V::default()` if absent.
    pub fn entry_or_default(&mut self, p: IpNet) -> &mut V
    where
        V: Default,
    {
        match p {
            IpNet::V4(n) => self.v4.entry(n).or_default(),
            IpNet::V6(n) => self.v6.entry(n).or_default(),
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> {
        self.v4
            .iter()
            .map(|(k, v)| (IpNet::V4(*k), v))
            .chain(self.v6.iter().map(|(k, v)| (IpNet::V6(*k), v)))
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (IpNet, &mut V)> {
        self.v4
            .iter_mut()
            .map(|(k, v)| (IpNet::V4(*k), v))
            .chain(self.v6.iter_mut().map(|(k, v)| (IpNet::V6(*k), v)))
    }
    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.iter().map(|(k, _)| k)
    }
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.v4.values().chain(self.v6.values())
    }
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.v4.values_mut().chain(self.v6.values_mut())
    }
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
    }
    pub fn retain(&mut self, mut f: impl FnMut(IpNet, &mut V) -> bool) {
        self.v4.retain(|k, v| f(IpNet::V4(*k), v));
        self.v6.retain(|k, v| f(IpNet::V6(*k), v));
    }
}

/// A set of prefixes, stored per family.
pub type PrefixSet = PrefixMap<()>;

impl PrefixSet {
    /// Add `p`; true when it was not there.
    pub fn add(&mut self, p: IpNet) -> bool {
        self.insert(p, ()).is_none()
    }
}

impl Extend<IpNet> for PrefixSet {
    fn extend<I: IntoIterator<Item = IpNet>>(&mut self, iter: I) {
        for p in iter {
            self.add(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families() {
        let mut m: PrefixMap<u32> = PrefixMap::new();
        let a: IpNet = "10.0.0.0/26".parse().unwrap();
        let b: IpNet = "fd00::/64".parse().unwrap();
        assert_eq!(m.insert(a, 1), None);
        assert_eq!(m.insert(b, 2), None);
        assert_eq!(m.insert(a, 3), Some(1));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&b), Some(&2));
        let mut keys: Vec<IpNet> = m.keys().collect();
        keys.sort();
        assert_eq!(keys, vec![a, b]);
        m.retain(|k, _| k == b);
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(&b), Some(2));
        assert!(m.is_empty());
        let mut s = PrefixSet::new();
        assert!(s.add(a));
        assert!(!s.add(a));
        s.extend([b, b]);
        assert_eq!(s.len(), 2);
    }
}
