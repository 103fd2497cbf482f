//! Export: what we advertise to a peer, as pure functions.
//!
//! [`advertise`] decides for one prefix, from the destination peer, the peer the best path came
//! from and the best path, which attributes to announce, or `None` for nothing (a withdrawal if
//! something was announced before). [`sync_adj_out`] applies it to a set of prefixes, diffs the
//! result against the peer's Adj-RIB-Out, updates it and returns the UPDATE contents to send:
//! withdrawals, then announcements grouped by identical attributes.
//!
//! Rules (RFC 4271 9.2, 5.1; RFC 4456 8):
//! - Only families negotiated on the session; never back to the peer the best path came from.
//! - iBGP split horizon: an iBGP-learned path goes to iBGP peers only when the peer it came from or
//!   the destination is a route-reflector client of ours. Client to client, client to non-client
//!   and non-client to client are reflected; non-client to non-client is not.
//! - Export policy sees the path as it would be sent (eBGP stripping done, prepends not yet).
//! - eBGP: LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST are removed; MED is removed unless we
//!   originated the route (RFC 4271 5.1.4: a neighbouring AS's MED stays in that AS); our AS is
//!   prepended once plus the policy's extra prepends; the next hop is ours unless `keep_next_hop`.
//! - iBGP: LOCAL_PREF is sent (100 when the path has none); a reflected path gets ORIGINATOR_ID
//!   (kept if present, else the BGP Identifier of the peer it came from) and our cluster id
//!   prepended to CLUSTER_LIST; the next hop is passed on unless `next_hop_self`.
//! - A path with no next hop of its own (originated without one) always gets ours; with no usable
//!   own address for the family, nothing is sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::peer::{Local, Peer};
use crate::prefix_map::PrefixMap;
use crate::rib::{LocRib, Path, RouteAttrs, SourceId, DEFAULT_LOCAL_PREF, LOCAL};
use crate::wire::Family;

/// What to send to a peer after an Adj-RIB-Out sync.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Advert {
    pub withdrawn: Vec<IpNet>,
    /// Attributes and the prefixes (sorted) announced with them, ordered by first prefix.
    pub announced: Vec<(Arc<RouteAttrs>, Vec<IpNet>)>,
}

/// What we announce to `to` for `prefix`, whose best path is `best` from `from` (`None` for
/// routes we originate), or `None` to announce nothing.
pub(crate) fn advertise(
    local: &Local,
    to: &Peer,
    from: Option<&Peer>,
    prefix: &IpNet,
    best: &Path,
) -> Option<RouteAttrs> {
    let n = to.negotiated.as_ref()?;
    let family = Family::of(prefix);
    if !n.families.contains(&family) || best.source == to.id {
        return None;
    }
    let to_ebgp = to.ebgp(local.local_as);
    if let Some(src) = from {
        let both_ibgp = !src.ebgp(local.local_as) && !to_ebgp;
        let reflecting = src.cfg.rr_client || to.cfg.rr_client;
        if both_ibgp && !reflecting {
            return None;
        }
    }
    let policy = &to.cfg.export;
    // Rejected routes cost no copy: policies match on the prefix and on communities, which the
    // adjustments below never change.
    if !policy.is_passthrough() {
        policy.apply(prefix, &best.attrs.attrs)?;
    }
    let mut a = best.attrs.attrs.clone();
    let mut next_hop = best.attrs.next_hop;
    let mut link_local = best.attrs.link_local;
    if to_ebgp {
        a.local_pref = None;
        a.originator_id = None;
        a.cluster_list.clear();
        if best.source != LOCAL {
            a.med = None;
        }
    }
    let (changed, prepends) = policy.apply(prefix, &a)?;
    if let Some(c) = changed {
        a = c;
    }
    let self_hop =
        next_hop.is_unspecified() || (to_ebgp && !to.cfg.keep_next_hop) || to.cfg.next_hop_self;
    if to_ebgp {
        for _ in 0..=prepends {
            a.as_path.prepend(local.local_as);
        }
    } else {
        a.local_pref.get_or_insert(DEFAULT_LOCAL_PREF);
        if let Some(src) = from.filter(|s| !s.ebgp(local.local_as)) {
            a.originator_id.get_or_insert(src.bgp_id);
            a.cluster_list.insert(0, local.cluster_id);
        }
    }
    if self_hop {
        next_hop = self_next_hop(local, to, family)?;
        link_local = None;
    }
    Some(RouteAttrs {
        attrs: a,
        next_hop,
        link_local,
    })
}

/// Our next hop toward `to` for `family`: the session's own address when it is of that family,
/// else the configured one.
fn self_next_hop(local: &Local, to: &Peer, family: Family) -> Option<IpAddr> {
    match (family, to.local) {
        (Family::Ipv4Unicast, Some(a @ IpAddr::V4(_))) => Some(a),
        (Family::Ipv6Unicast, Some(a @ IpAddr::V6(_))) => Some(a),
        (Family::Ipv4Unicast, _) => local.next_hop_v4.map(IpAddr::V4),
        (Family::Ipv6Unicast, _) => local.next_hop_v6.map(IpAddr::V6),
    }
}

/// Bring `adj_out` (taken out of `to`, which is in `peers`) in line with the Loc-RIB for
/// `prefixes`, and say what to send for it.
///
/// Results are shared: with a passthrough export policy the outcome only depends on the best
/// path's attributes (one `Arc` per UPDATE and family from one source), so it is computed once per
/// `Arc`; equal results are interned so that they group into one announcement.
pub(crate) fn sync_adj_out(
    local: &Local,
    rib: &LocRib,
    peers: &BTreeMap<SourceId, Peer>,
    to: &Peer,
    adj_out: &mut PrefixMap<Arc<RouteAttrs>>,
    prefixes: &[IpNet],
) -> Advert {
    let passthrough = to.cfg.export.is_passthrough();
    let mut cache: HashMap<*const RouteAttrs, Option<Arc<RouteAttrs>>> = HashMap::new();
    let mut interned: HashSet<Arc<RouteAttrs>> = HashSet::new();
    let mut groups: HashMap<*const RouteAttrs, (Arc<RouteAttrs>, Vec<IpNet>)> = HashMap::new();
    let mut withdrawn = Vec::new();
    for prefix in prefixes {
        let best = rib.get(prefix).and_then(|d| d.best());
        let out = best.and_then(|best| {
            let key = Arc::as_ptr(&best.attrs);
            if let Some(c) = cache.get(&key).filter(|_| passthrough) {
                return c.clone();
            }
            let out =
                advertise(local, to, peers.get(&best.source), prefix, best).map(|a| match interned
                    .get(&a)
                {
                    Some(existing) => existing.clone(),
                    None => {
                        let a = Arc::new(a);
                        interned.insert(a.clone());
                        a
                    }
                });
            if passthrough {
                cache.insert(key, out.clone());
            }
            out
        });
        match (out, adj_out.get(prefix)) {
            (Some(a), Some(o)) if Arc::ptr_eq(&a, o) || **o == *a => {}
            (Some(a), _) => {
                groups
                    .entry(Arc::as_ptr(&a))
                    .or_insert_with(|| (a.clone(), Vec::new()))
                    .1
                    .push(*prefix);
                adj_out.insert(*prefix, a);
            }
            (None, Some(_)) => {
                withdrawn.push(*prefix);
                adj_out.remove(prefix);
            }
            (None, None) => {}
        }
    }
    let mut announced: Vec<(Arc<RouteAttrs>, Vec<IpNet>)> = groups
        .into_values()
        .map(|(a, mut p)| {
            p.sort_unstable();
            (a, p)
        })
        .collect();
    announced.sort_unstable_by_key(|(_, p)| p.first().copied());
    Advert {
        withdrawn,
        announced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerCfg;
    use crate::fsm::Negotiated;
    use crate::wire::{AsPath, PathAttrs};

    fn local() -> Local {
        Local {
            local_as: 65000,
            router_id: "10.0.0.1".parse().unwrap(),
            cluster_id: "1.1.1.1".parse().unwrap(),
            next_hop_v4: None,
            next_hop_v6: None,
        }
    }

    /// An Established peer with id `id`, address 10.0.0.`id` and BGP Identifier `id`.`id`.`id`.`id`.
    fn peer(id: SourceId, remote_as: u32, f: impl FnOnce(&mut PeerCfg)) -> Peer {
        let mut cfg = PeerCfg::new(format!("10.0.0.{id}").parse().unwrap(), remote_as);
        f(&mut cfg);
        let mut p = Peer::new(id, cfg, std::time::SystemTime::UNIX_EPOCH);
        p.state = crate::fsm::State::Established;
        p.bgp_id = format!("{id}.{id}.{id}.{id}").parse().unwrap();
        p.local = Some("10.0.0.1".parse().unwrap());
        p.negotiated = Some(Negotiated {
            peer_as: remote_as,
            peer_id: p.bgp_id,
            hold_time: 90,
            keepalive: 30,
            four_octet_as: true,
            route_refresh: true,
            families: vec![Family::Ipv4Unicast],
            peer_gr: None,
            local_gr: false,
            local_gr_notification: false,
            ebgp: remote_as != 65000,
        });
        p
    }

    fn path(source: SourceId, f: impl FnOnce(&mut PathAttrs)) -> Path {
        let mut attrs = PathAttrs {
            origin: Some(Default::default()),
            med: Some(7),
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

    fn p() -> IpNet {
        "10.9.0.0/24".parse().unwrap()
    }

    #[test]
    fn ebgp_gets_our_as_and_next_hop_and_loses_ibgp_only_attributes() {
        let to = peer(2, 65002, |_| {});
        let from = peer(3, 65003, |_| {});
        let best = path(3, |a| {
            a.as_path = AsPath::default();
            a.as_path.prepend(65003);
            a.local_pref = Some(300);
        });
        let a = advertise(&local(), &to, Some(&from), &p(), &best).expect("sent");
        assert_eq!(a.attrs.as_path.first_asn(), Some(65000));
        assert_eq!(a.attrs.as_path.path_len(), 2);
        assert_eq!(a.next_hop.to_string(), "10.0.0.1");
        assert_eq!((a.attrs.local_pref, a.attrs.med), (None, None));
        // Our own route keeps its MED toward eBGP.
        let own = advertise(&local(), &to, None, &p(), &path(LOCAL, |_| {})).expect("sent");
        assert_eq!(own.attrs.med, Some(7));
        assert!(
            advertise(&local(), &from, Some(&from), &p(), &best).is_none(),
            "not back to its source"
        );
    }

    #[test]
    fn ibgp_split_horizon_and_reflection() {
        let l = local();
        let client = |id| peer(id, 65000, |c| c.rr_client = true);
        let plain = |id| peer(id, 65000, |_| {});
        let best = path(3, |_| {});
        assert!(advertise(&l, &plain(2), Some(&plain(3)), &p(), &best).is_none());
        for (to, from) in [
            (client(2), client(3)),
            (plain(2), client(3)),
            (client(2), plain(3)),
        ] {
            let a = advertise(&l, &to, Some(&from), &p(), &best).expect("reflected");
            assert_eq!(a.attrs.originator_id, Some("3.3.3.3".parse().unwrap()));
            assert_eq!(a.attrs.cluster_list, vec![l.cluster_id]);
            assert_eq!(a.attrs.local_pref, Some(DEFAULT_LOCAL_PREF));
            assert_eq!(a.next_hop.to_string(), "10.0.0.3", "next hop unchanged");
        }
        let nhs = peer(2, 65000, |c| c.next_hop_self = true);
        let a = advertise(
            &l,
            &nhs,
            Some(&peer(4, 65004, |_| {})),
            &p(),
            &path(4, |_| {}),
        );
        assert_eq!(a.expect("sent").next_hop.to_string(), "10.0.0.1");
    }

    #[test]
    fn adj_rib_out_sync_sends_only_differences() {
        let l = local();
        let mut rib = LocRib::new(false);
        rib.update(p(), path(3, |_| {}));
        let mut peers = BTreeMap::new();
        peers.insert(2, peer(2, 65002, |_| {}));
        peers.insert(3, peer(3, 65003, |_| {}));
        let mut adj = PrefixMap::new();
        let first = sync_adj_out(&l, &rib, &peers, &peers[&2], &mut adj, &[p()]);
        assert_eq!(first.announced.len(), 1);
        assert!(first.withdrawn.is_empty());
        let again = sync_adj_out(&l, &rib, &peers, &peers[&2], &mut adj, &[p()]);
        assert_eq!(again, Advert::default(), "nothing changed, nothing sent");
        rib.withdraw(&p(), 3);
        let gone = sync_adj_out(&l, &rib, &peers, &peers[&2], &mut adj, &[p()]);
        assert_eq!(gone.withdrawn, vec![p()]);
        assert!(adj.is_empty());
    }
}
