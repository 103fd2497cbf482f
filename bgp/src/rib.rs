//! Loc-RIB and the decision process (RFC 4271 9.1.2), as plain data structures.
//!
//! Each destination keeps every usable path (one per source: a peer or the local speaker) after
//! import policy — the Adj-RIB-In is folded in here, so each accepted path is stored once. After every
//! change the destination's paths are reordered so that `paths[0]` is the best path and
//! `paths[..multipath]` the ECMP set. Path attributes are shared (`Arc`) between every prefix that
//! arrived in the same UPDATE.
//!
//! Selection is done by elimination in the RFC's order, not by sorting with a comparator: the MED
//! rule is not transitive (it only compares paths from the same neighbouring AS), so no total order
//! exists.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

use crate::prefix_map::PrefixMap;

use crate::wire::{Family, Origin, PathAttrs};

/// Which source a path came from: 0 is the local speaker, others are peers.
pub type SourceId = u32;
/// The local speaker's source id.
pub const LOCAL: SourceId = 0;
/// LOCAL_PREF assumed for paths that carry none (eBGP-learned, locally originated).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// Attributes of a path with its next hop, shared between prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteAttrs {
    pub attrs: PathAttrs,
    /// The next hop this path was received with (or the local one for originated routes).
    pub next_hop: IpAddr,
    /// IPv6 link-local next hop sent beside the global one (RFC 2545).
    pub link_local: Option<Ipv6Addr>,
}

/// One path to a destination.
#[derive(Debug, Clone)]
pub struct Path {
    pub source: SourceId,
    pub attrs: Arc<RouteAttrs>,
    /// Kept for a restarting peer until End-of-RIB or its restart timer (RFC 4724 4.2).
    pub stale: bool,
    /// Set by the decision process: this path is in the destination's ECMP set.
    pub ecmp: bool,
}

impl Path {
    pub fn new(source: SourceId, attrs: Arc<RouteAttrs>) -> Path {
        Path {
            source,
            attrs,
            stale: false,
            ecmp: false,
        }
    }
}

/// What the decision process needs to know about a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    pub address: IpAddr,
    pub bgp_id: Ipv4Addr,
    pub ebgp: bool,
}

/// One destination's candidate paths, best first. Almost every destination has one path, which is
/// kept inline (no allocation per prefix).
#[derive(Debug, Clone, Default)]
pub struct Dest {
    /// Best first; the leading paths with `ecmp` set are equally good.
    pub paths: SmallVec<[Path; 1]>,
}

impl Dest {
    pub fn best(&self) -> Option<&Path> {
        self.paths.first()
    }
    /// The ECMP set: the best path and any equally good ones.
    pub fn ecmp(&self) -> &[Path] {
        let n = self.paths.iter().take_while(|p| p.ecmp).count();
        self.paths.get(..n).unwrap_or(&[])
    }
}

/// A change of the best path (or ECMP set) of one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestChange {
    pub prefix: IpNet,
}

/// The Loc-RIB.
#[derive(Debug, Default)]
pub struct LocRib {
    dests: PrefixMap<Dest>,
    sources: HashMap<SourceId, SourceInfo>,
    /// Install several equal paths (ECMP).
    pub multipath: bool,
}

/// A fingerprint of what a destination exports: best path and ECMP next hops.
fn fingerprint(d: Option<&Dest>) -> Option<(SourceId, *const RouteAttrs, Vec<IpAddr>)> {
    let d = d?;
    let best = d.best()?;
    let hops = d.ecmp().iter().map(|p| p.attrs.next_hop).collect();
    Some((best.source, Arc::as_ptr(&best.attrs), hops))
}

impl LocRib {
    pub fn new(multipath: bool) -> LocRib {
        LocRib {
            multipath,
            ..LocRib::default()
        }
    }

    pub fn set_source(&mut self, id: SourceId, info: SourceInfo) {
        self.sources.insert(id, info);
    }

    pub fn len(&self) -> usize {
        self.dests.len()
    }
    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }
    pub fn get(&self, prefix: &IpNet) -> Option<&Dest> {
        self.dests.get(prefix)
    }
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &Dest)> {
        self.dests.iter()
    }

    /// Add or replace the path from `path.source`. Returns true when the best path or ECMP set changed.
    pub fn update(&mut self, prefix: IpNet, path: Path) -> bool {
        self.update_counted(prefix, path).0
    }

    /// As [`LocRib::update`], and also whether the source had no path for `prefix` before.
    pub fn update_counted(&mut self, prefix: IpNet, path: Path) -> (bool, bool) {
        let dest = self.dests.entry_or_default(prefix);
        let before = fingerprint(Some(dest));
        let added = match dest.paths.iter_mut().find(|p| p.source == path.source) {
            Some(p) => {
                *p = path;
                false
            }
            None => {
                dest.paths.push(path);
                true
            }
        };
        select(dest, &self.sources, self.multipath);
        (before != fingerprint(Some(dest)), added)
    }

    /// Remove the path from `source`. Returns true when the best path or ECMP set changed.
    pub fn withdraw(&mut self, prefix: &IpNet, source: SourceId) -> bool {
        self.withdraw_counted(prefix, source).0
    }

    /// As [`LocRib::withdraw`], and also whether there was a path to remove.
    pub fn withdraw_counted(&mut self, prefix: &IpNet, source: SourceId) -> (bool, bool) {
        let Some(dest) = self.dests.get_mut(prefix) else {
            return (false, false);
        };
        let Some(i) = dest.paths.iter().position(|p| p.source == source) else {
            return (false, false);
        };
        let before = fingerprint(Some(dest));
        dest.paths.remove(i);
        if dest.paths.is_empty() {
            self.dests.remove(prefix);
            return (true, true);
        }
        select(dest, &self.sources, self.multipath);
        (before != fingerprint(Some(dest)), true)
    }

    /// Remove every path from `source` whose prefix is in `family` (all when `None`) and, if
    /// `only_stale`, is marked stale. Returns the prefixes whose best path changed.
    pub fn remove_source(
        &mut self,
        source: SourceId,
        family: Option<Family>,
        only_stale: bool,
    ) -> Vec<IpNet> {
        let victims: Vec<IpNet> = self
            .dests
            .iter()
            .filter(|(p, d)| {
                family.is_none_or(|f| Family::of(p) == f)
                    && d.paths
                        .iter()
                        .any(|x| x.source == source && (!only_stale || x.stale))
            })
            .map(|(p, _)| p)
            .collect();
        victims
            .into_iter()
            .filter(|p| self.withdraw(p, source))
            .collect()
    }

    /// Mark every path from `source` stale (RFC 4724 4.2). Returns how many were marked.
    pub fn mark_stale(&mut self, source: SourceId) -> usize {
        let mut n = 0;
        for d in self.dests.values_mut() {
            for p in d.paths.iter_mut().filter(|p| p.source == source) {
                p.stale = true;
                n += 1;
            }
        }
        n
    }

    /// Number of paths held from `source`.
    pub fn count_source(&self, source: SourceId) -> usize {
        self.dests
            .values()
            .filter(|d| d.paths.iter().any(|p| p.source == source))
            .count()
    }
}

fn local_pref(p: &Path) -> u32 {
    p.attrs.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
}

fn origin_rank(p: &Path) -> u8 {
    match p.attrs.attrs.origin.unwrap_or(Origin::Incomplete) {
        Origin::Igp => 0,
        Origin::Egp => 1,
        Origin::Incomplete => 2,
    }
}

/// Reorder `dest.paths` best first and set the ECMP count (RFC 4271 9.1.2.2, RFC 4456 9).
fn select(dest: &mut Dest, sources: &HashMap<SourceId, SourceInfo>, multipath: bool) {
    let n = dest.paths.len();
    if n <= 1 {
        if let Some(p) = dest.paths.first_mut() {
            p.ecmp = true;
        }
        return;
    }
    let ebgp = |p: &Path| sources.get(&p.source).is_some_and(|s| s.ebgp);
    let mut cand: Vec<usize> = (0..n).collect();
    let paths = &dest.paths;
    let keep_min = |cand: &mut Vec<usize>, key: &dyn Fn(&Path) -> u64| {
        let best = cand.iter().map(|&i| key(&paths[i])).min().unwrap_or(0);
        cand.retain(|&i| key(&paths[i]) == best);
    };
    // a) highest LOCAL_PREF; locally originated paths next (as most implementations do).
    keep_min(&mut cand, &|p| u64::from(u32::MAX - local_pref(p)));
    keep_min(&mut cand, &|p| u64::from(p.source != LOCAL));
    // b) shortest AS_PATH, c) lowest ORIGIN.
    keep_min(&mut cand, &|p| p.attrs.attrs.as_path.path_len() as u64);
    keep_min(&mut cand, &|p| u64::from(origin_rank(p)));
    // d) lowest MED among paths from the same neighbouring AS (missing MED is 0).
    let med = |p: &Path| p.attrs.attrs.med.unwrap_or(0);
    let neigh = |p: &Path| p.attrs.attrs.as_path.first_asn();
    let snapshot = cand.clone();
    cand.retain(|&i| {
        let a = &paths[i];
        !snapshot
            .iter()
            .any(|&j| j != i && neigh(&paths[j]) == neigh(a) && med(&paths[j]) < med(a))
    });
    // e) eBGP over iBGP.
    if cand.iter().any(|&i| ebgp(&paths[i])) {
        cand.retain(|&i| ebgp(&paths[i]));
    }
    // Everything still here is equally good for ECMP; the rest only breaks the tie.
    let ecmp = cand.clone();
    // f) lowest BGP identifier (ORIGINATOR_ID when reflected), g) shortest CLUSTER_LIST,
    // h) lowest peer address.
    let router_id = |p: &Path| -> u32 {
        p.attrs
            .attrs
            .originator_id
            .or_else(|| sources.get(&p.source).map(|s| s.bgp_id))
            .map(u32::from)
            .unwrap_or(0)
    };
    keep_min(&mut cand, &|p| u64::from(router_id(p)));
    keep_min(&mut cand, &|p| p.attrs.attrs.cluster_list.len() as u64);
    let addr_key = |p: &Path| -> u128 {
        match sources.get(&p.source).map(|s| s.address) {
            Some(IpAddr::V4(a)) => u128::from(u32::from(a)),
            Some(IpAddr::V6(a)) => u128::from(a),
            None => 0,
        }
    };
    let best = cand
        .iter()
        .copied()
        .min_by_key(|&i| (addr_key(&paths[i]), paths[i].source))
        .unwrap_or(0);

    let mut order: Vec<usize> = vec![best];
    if multipath {
        order.extend(ecmp.iter().copied().filter(|&i| i != best));
    }
    let m = order.len();
    let rest: Vec<usize> = (0..n).filter(|i| !order.contains(i)).collect();
    order.extend(rest);
    let mut old: Vec<Option<Path>> = std::mem::take(&mut dest.paths)
        .into_iter()
        .map(Some)
        .collect();
    dest.paths = order
        .into_iter()
        .filter_map(|i| old.get_mut(i).and_then(Option::take))
        .collect();
    for (i, p) in dest.paths.iter_mut().enumerate() {
        p.ecmp = i < m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AsPath, AsSegment, SegmentKind};

    fn src(rib: &mut LocRib, id: SourceId, addr: &str, bgp_id: &str, ebgp: bool) {
        rib.set_source(
            id,
            SourceInfo {
                address: addr.parse().unwrap(),
                bgp_id: bgp_id.parse().unwrap(),
                ebgp,
            },
        );
    }

    fn path(source: SourceId, asns: &[u32], f: impl FnOnce(&mut PathAttrs)) -> Path {
        let mut attrs = PathAttrs {
            origin: Some(Origin::Igp),
            as_path: AsPath {
                segments: vec![AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: asns.to_vec(),
                }],
            },
            ..PathAttrs::default()
        };
        f(&mut attrs);
        Path::new(
            source,
            Arc::new(RouteAttrs {
                attrs,
                next_hop: format!("10.0.0.{source}").parse().unwrap(),
                link_local: None,
            }),
        )
    }

    fn setup(multipath: bool) -> LocRib {
        let mut rib = LocRib::new(multipath);
        src(&mut rib, 1, "10.0.0.1", "1.1.1.1", true);
        src(&mut rib, 2, "10.0.0.2", "2.2.2.2", true);
        src(&mut rib, 3, "10.0.0.3", "3.3.3.3", false);
        rib
    }

    fn best(rib: &LocRib) -> SourceId {
        rib.get(&"10.1.0.0/26".parse().unwrap())
            .unwrap()
            .best()
            .unwrap()
            .source
    }

    const P: &str = "10.1.0.0/26";

    #[test]
    fn local_pref_beats_path_length() {
        let mut rib = setup(false);
        rib.update(P.parse().unwrap(), path(1, &[65001], |_| {}));
        rib.update(
            P.parse().unwrap(),
            path(3, &[65003, 65004, 65005], |a| a.local_pref = Some(200)),
        );
        assert_eq!(best(&rib), 3);
    }

    #[test]
    fn shorter_as_path_then_origin() {
        let mut rib = setup(false);
        rib.update(P.parse().unwrap(), path(1, &[65001, 65009], |_| {}));
        assert!(rib.update(
            P.parse().unwrap(),
            path(2, &[65002], |a| a.origin = Some(Origin::Incomplete))
        ));
        assert_eq!(best(&rib), 2);
        rib.update(
            P.parse().unwrap(),
            path(1, &[65001], |a| a.origin = Some(Origin::Egp)),
        );
        assert_eq!(best(&rib), 1, "same length: EGP beats INCOMPLETE");
    }

    #[test]
    fn med_only_within_same_neighbour_as() {
        let mut rib = setup(false);
        // Same neighbour AS: lower MED wins even with a higher router id.
        rib.update(P.parse().unwrap(), path(1, &[65001], |a| a.med = Some(50)));
        rib.update(P.parse().unwrap(), path(2, &[65001], |a| a.med = Some(10)));
        assert_eq!(best(&rib), 2);
        // Different neighbour AS: MED is ignored and the lower router id wins.
        rib.update(P.parse().unwrap(), path(2, &[65002], |a| a.med = Some(10)));
        assert_eq!(best(&rib), 1);
    }

    #[test]
    fn ebgp_over_ibgp_then_router_id_then_address() {
        let mut rib = setup(false);
        rib.update(P.parse().unwrap(), path(3, &[65003], |_| {}));
        rib.update(P.parse().unwrap(), path(2, &[65002], |_| {}));
        assert_eq!(best(&rib), 2, "eBGP beats iBGP");
        rib.update(P.parse().unwrap(), path(1, &[65001], |_| {}));
        assert_eq!(best(&rib), 1, "lower router id");
        // A reflected path is compared by ORIGINATOR_ID.
        let mut rib = setup(false);
        src(&mut rib, 4, "10.0.0.4", "0.0.0.9", false);
        rib.update(P.parse().unwrap(), path(3, &[65003], |_| {}));
        rib.update(
            P.parse().unwrap(),
            path(4, &[65003], |a| {
                a.originator_id = Some("9.9.9.9".parse().unwrap())
            }),
        );
        assert_eq!(best(&rib), 3);
    }

    #[test]
    fn multipath_and_withdraw() {
        let mut rib = setup(true);
        let p: IpNet = P.parse().unwrap();
        rib.update(p, path(1, &[65001], |_| {}));
        rib.update(p, path(2, &[65002], |_| {}));
        assert_eq!(rib.get(&p).unwrap().ecmp().len(), 2);
        assert!(rib.withdraw(&p, 1));
        assert_eq!(best(&rib), 2);
        assert_eq!(rib.get(&p).unwrap().ecmp().len(), 1);
        assert!(rib.withdraw(&p, 2));
        assert!(rib.get(&p).is_none());
        assert!(!rib.withdraw(&p, 2));
    }

    #[test]
    fn stale_paths_are_flushed_by_source_and_family() {
        let mut rib = setup(false);
        rib.update(P.parse().unwrap(), path(1, &[65001], |_| {}));
        rib.update("10.2.0.0/26".parse().unwrap(), path(1, &[65001], |_| {}));
        assert_eq!(rib.mark_stale(1), 2);
        // A refreshed path is no longer stale.
        rib.update(P.parse().unwrap(), path(1, &[65001], |_| {}));
        let gone = rib.remove_source(1, Some(Family::Ipv4Unicast), true);
        assert_eq!(gone, vec!["10.2.0.0/26".parse::<IpNet>().unwrap()]);
        assert_eq!(rib.len(), 1);
    }

    #[test]
    fn unchanged_update_reports_no_change() {
        let mut rib = setup(false);
        let p: IpNet = P.parse().unwrap();
        let a = path(1, &[65001], |_| {});
        assert!(rib.update(p, a.clone()));
        assert!(!rib.update(p, a));
        assert!(
            !rib.update(p, path(2, &[65002, 65003], |_| {})),
            "a worse path does not change the best"
        );
    }
}
