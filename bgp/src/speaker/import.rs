//! Import: what an UPDATE from a peer does to that peer's paths, as a pure function.
//!
//! [`import`] takes the speaker's identity, the peer's configuration and one decoded UPDATE and
//! returns the route operations to apply to the Loc-RIB, in order: explicit withdrawals first, then
//! one operation per announced prefix. The caller applies them and keeps the counters;
//! [`max_prefix`] then says whether the peer went over its limit.
//!
//! Rules, in the order they apply:
//! - An End-of-RIB marker (RFC 4724 2) is only that.
//! - RFC 7606 2 treat-as-withdraw: when the decoder found an attribute error of that kind, every
//!   prefix the UPDATE announces is handled as withdrawn (and counted as rejected). Errors that
//!   reset the session never get here (the FSM sent the NOTIFICATION); attribute-discard errors
//!   were dropped by the decoder and the rest of the UPDATE is used.
//! - Loops: a route whose AS_PATH holds our AS (RFC 4271 9.1.2), whose ORIGINATOR_ID is our router
//!   id, or whose CLUSTER_LIST holds our cluster id (RFC 4456 8) is rejected.
//! - Prefixes of a family not configured for the peer are ignored; IPv4 NLRI without NEXT_HOP and
//!   MP_REACH_NLRI without a next hop are ignored.
//! - Import policy: a rejected prefix is withdrawn and counted as rejected; an accepted one gets
//!   the policy's attributes (shared when the policy changed nothing).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::peer::Local;
use crate::config::PeerCfg;
use crate::rib::RouteAttrs;
use crate::wire::{code, subcode, Family, Notification, PathAttrs, Update};

/// Why an announced prefix was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// RFC 7606 treat-as-withdraw.
    Malformed,
    /// Our AS is in the AS_PATH.
    AsPathLoop,
    /// ORIGINATOR_ID is our router id (RFC 4456 8).
    OriginatorLoop,
    /// CLUSTER_LIST holds our cluster id (RFC 4456 8).
    ClusterLoop,
    /// Import policy said no.
    Policy,
}

/// One change to the peer's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteOp {
    /// The peer withdrew the prefix.
    Withdraw(IpNet),
    /// The peer announced the prefix and we do not use it: remove any path we held from it.
    Reject(IpNet, Rejected),
    /// Use this path from the peer.
    Accept(IpNet, Arc<RouteAttrs>),
}

/// What one UPDATE means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Imported {
    /// End-of-RIB for this family.
    EndOfRib(Family),
    Routes(Vec<RouteOp>),
}

/// Decide what an UPDATE from the peer configured as `peer` does.
pub(crate) fn import(local: &Local, peer: &PeerCfg, u: &Update) -> Imported {
    if let Some(f) = u.is_end_of_rib() {
        return Imported::EndOfRib(f);
    }
    let mut ops: Vec<RouteOp> = u.withdrawn_all().map(RouteOp::Withdraw).collect();
    if let Some(why) = refused(local, u) {
        ops.extend(u.announced().map(|p| RouteOp::Reject(p, why)));
        return Imported::Routes(ops);
    }
    let a = &u.attrs;
    let v4 = (!u.nlri.is_empty())
        .then(|| {
            a.next_hop.map(|nh| {
                let prefixes: Vec<IpNet> = u.nlri.iter().map(|n| IpNet::V4(*n)).collect();
                (prefixes, IpAddr::V4(nh), None)
            })
        })
        .flatten();
    let mp = u.mp_reach.as_ref().and_then(|m| {
        let nh = *m.next_hops.first()?;
        let ll = match m.next_hops.get(1) {
            Some(IpAddr::V6(l)) => Some(*l),
            _ => None,
        };
        Some((m.nlri.clone(), nh, ll))
    });
    // The next hop lives beside the attributes, not in them: IPv4 and MP NLRI of one UPDATE share
    // every other attribute.
    let attrs = PathAttrs {
        next_hop: None,
        ..a.clone()
    };
    for (prefixes, next_hop, link_local) in v4.into_iter().chain(mp) {
        let shared = Arc::new(RouteAttrs {
            attrs: attrs.clone(),
            next_hop,
            link_local,
        });
        for prefix in prefixes {
            if !peer.families.contains(&Family::of(&prefix)) {
                continue;
            }
            ops.push(match peer.import.apply(&prefix, &shared.attrs) {
                None => RouteOp::Reject(prefix, Rejected::Policy),
                Some((None, _)) => RouteOp::Accept(prefix, shared.clone()),
                Some((Some(changed), _)) => RouteOp::Accept(
                    prefix,
                    Arc::new(RouteAttrs {
                        attrs: changed,
                        next_hop,
                        link_local,
                    }),
                ),
            });
        }
    }
    Imported::Routes(ops)
}

/// Why none of the UPDATE's announcements can be used, if so.
fn refused(local: &Local, u: &Update) -> Option<Rejected> {
    let a = &u.attrs;
    if u.treat_as_withdraw() {
        Some(Rejected::Malformed)
    } else if a.as_path.contains(local.local_as) {
        Some(Rejected::AsPathLoop)
    } else if a.originator_id == Some(local.router_id) {
        Some(Rejected::OriginatorLoop)
    } else if a.cluster_list.contains(&local.cluster_id) {
        Some(Rejected::ClusterLoop)
    } else {
        None
    }
}

/// The Cease/Maximum Number of Prefixes Reached NOTIFICATION to send once a peer holds more than
/// `max_prefixes` accepted prefixes (RFC 4486 4), unless it was sent already in this session.
pub(crate) fn max_prefix(
    peer: &PeerCfg,
    accepted: u64,
    already_sent: bool,
) -> Option<Notification> {
    let max = peer.max_prefixes?;
    if already_sent || accepted <= u64::from(max) {
        return None;
    }
    // RFC 4486 4: AFI, SAFI and the limit as data. The limit covers every family; the data names
    // IPv4 unicast.
    let mut data = vec![0, 1, 1];
    data.extend_from_slice(&max.to_be_bytes());
    Some(Notification::with_data(
        code::CEASE,
        subcode::MAX_PREFIXES_REACHED,
        data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::wire::{AsPath, AsSegment, AttrError, MpReach, SegmentKind, Treatment};

    fn local() -> Local {
        Local {
            local_as: 65000,
            router_id: "10.0.0.1".parse().unwrap(),
            cluster_id: "1.1.1.1".parse().unwrap(),
            next_hop_v4: None,
            next_hop_v6: None,
        }
    }

    fn peer() -> PeerCfg {
        PeerCfg::new("10.0.0.2".parse().unwrap(), 65001)
    }

    fn update(path: &[u32]) -> Update {
        Update {
            attrs: PathAttrs {
                as_path: AsPath {
                    segments: vec![AsSegment {
                        kind: SegmentKind::Sequence,
                        asns: path.to_vec(),
                    }],
                },
                next_hop: Some("10.0.0.2".parse().unwrap()),
                ..PathAttrs::default()
            },
            nlri: vec!["10.1.0.0/24".parse().unwrap()],
            withdrawn: vec!["10.2.0.0/24".parse().unwrap()],
            ..Update::default()
        }
    }

    fn ops(i: Imported) -> Vec<RouteOp> {
        match i {
            Imported::Routes(o) => o,
            Imported::EndOfRib(f) => panic!("End-of-RIB {f:?}"),
        }
    }

    #[test]
    fn withdrawals_come_first_and_next_hop_moves_out_of_the_attributes() {
        let o = ops(import(&local(), &peer(), &update(&[65001])));
        assert_eq!(o[0], RouteOp::Withdraw("10.2.0.0/24".parse().unwrap()));
        let RouteOp::Accept(p, a) = &o[1] else {
            panic!("{o:?}")
        };
        assert_eq!(p.to_string(), "10.1.0.0/24");
        assert_eq!(a.next_hop.to_string(), "10.0.0.2");
        assert_eq!(a.attrs.next_hop, None);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn loops_and_malformed_updates_reject_every_announcement() {
        type Case = (fn(&mut Update), Rejected);
        let cases: [Case; 4] = [
            (|u| u.attrs.as_path.prepend(65000), Rejected::AsPathLoop),
            (
                |u| u.attrs.originator_id = Some("10.0.0.1".parse().unwrap()),
                Rejected::OriginatorLoop,
            ),
            (
                |u| {
                    u.attrs.cluster_list =
                        vec!["9.9.9.9".parse().unwrap(), "1.1.1.1".parse().unwrap()]
                },
                Rejected::ClusterLoop,
            ),
            (
                |u| {
                    u.errors.push(AttrError {
                        code: 8,
                        treatment: Treatment::TreatAsWithdraw,
                        reason: "bad length".into(),
                    })
                },
                Rejected::Malformed,
            ),
        ];
        for (change, why) in cases {
            let mut u = update(&[65001]);
            change(&mut u);
            let o = ops(import(&local(), &peer(), &u));
            assert_eq!(
                o[1],
                RouteOp::Reject("10.1.0.0/24".parse().unwrap(), why),
                "{why:?}"
            );
        }
        // A cluster id that is not ours is no loop.
        let mut u = update(&[65001]);
        u.attrs.cluster_list = vec!["9.9.9.9".parse().unwrap()];
        assert!(matches!(
            ops(import(&local(), &peer(), &u))[1],
            RouteOp::Accept(..)
        ));
    }

    #[test]
    fn policy_and_families() {
        let mut cfg = peer();
        cfg.import = Policy::reject_all();
        let o = ops(import(&local(), &cfg, &update(&[65001])));
        assert!(matches!(o[1], RouteOp::Reject(_, Rejected::Policy)));
        let mut cfg = peer();
        cfg.families = vec![Family::Ipv4Unicast];
        let mut u = update(&[65001]);
        u.mp_reach = Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec!["fd00::2".parse().unwrap()],
            nlri: vec!["fd00:1::/64".parse().unwrap()],
        });
        assert_eq!(ops(import(&local(), &cfg, &u)).len(), 2, "IPv6 ignored");
    }

    #[test]
    fn max_prefix_is_sent_once_above_the_limit() {
        let mut cfg = peer();
        assert_eq!(max_prefix(&cfg, 1000, false), None, "no limit");
        cfg.max_prefixes = Some(2);
        assert_eq!(max_prefix(&cfg, 2, false), None);
        let n = max_prefix(&cfg, 3, false).expect("over the limit");
        assert_eq!((n.code, n.subcode), (6, 1));
        assert_eq!(n.data, vec![0, 1, 1, 0, 0, 0, 2]);
        assert_eq!(max_prefix(&cfg, 3, true), None, "once per session");
    }
}
