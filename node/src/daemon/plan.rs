//! BGP reconcile by plan: what the speaker has (applied) against what the datastore asks for
//! (desired), as a list of steps. Pure.
//!
//! Order, as Cilium's BGP reconcilers do it: withdraw and originate first (so the first
//! End-of-RIB a new peer gets follows a complete table), then remove peers, update peers, add
//! peers. A step that the speaker refuses is not recorded as applied, so the next plan retries
//! it; applying a plan and planning again gives an empty plan.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::calc::PeerSpec;

/// What the speaker has been given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BgpApplied {
    pub peers: BTreeMap<IpAddr, PeerSpec>,
    pub originate: BTreeSet<IpNet>,
}

/// The steps from applied to desired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BgpPlan {
    pub withdraw: Vec<IpNet>,
    pub originate: Vec<IpNet>,
    pub remove: Vec<IpAddr>,
    /// Peers whose session settings changed (the speaker applies them in place or resets).
    pub update: Vec<PeerSpec>,
    /// Peers whose settings are unchanged but whose name or type (status only) changed.
    pub relabel: Vec<PeerSpec>,
    pub add: Vec<PeerSpec>,
}

impl BgpPlan {
    pub fn is_empty(&self) -> bool {
        *self == BgpPlan::default()
    }
}

/// Plans the way from `applied` to the desired peers and prefixes.
pub fn bgp_plan(
    applied: &BgpApplied,
    peers: &BTreeMap<IpAddr, PeerSpec>,
    originate: &BTreeSet<IpNet>,
) -> BgpPlan {
    let mut plan = BgpPlan {
        withdraw: applied.originate.difference(originate).copied().collect(),
        originate: originate.difference(&applied.originate).copied().collect(),
        remove: applied
            .peers
            .keys()
            .filter(|a| !peers.contains_key(a))
            .copied()
            .collect(),
        ..BgpPlan::default()
    };
    for (addr, spec) in peers {
        match applied.peers.get(addr) {
            None => plan.add.push(spec.clone()),
            Some(old) if old.cfg != spec.cfg => plan.update.push(spec.clone()),
            Some(old) if old != spec => plan.relabel.push(spec.clone()),
            Some(_) => {}
        }
    }
    plan
}

impl BgpApplied {
    /// Records the prefix steps of `plan` (the speaker takes them without answering).
    pub fn record_prefixes(&mut self, plan: &BgpPlan) {
        for p in &plan.withdraw {
            self.originate.remove(p);
        }
        self.originate.extend(plan.originate.iter().copied());
    }

    /// Records one peer step that the speaker accepted.
    pub fn record_peer(&mut self, spec: &PeerSpec) {
        self.peers.insert(spec.cfg.address, spec.clone());
    }

    /// Records a removal the speaker accepted.
    pub fn record_removal(&mut self, addr: &IpAddr) {
        self.peers.remove(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calc::PeerType;

    fn peer(addr: &str, asn: u32, name: &str) -> (IpAddr, PeerSpec) {
        let a: IpAddr = addr.parse().unwrap();
        (
            a,
            PeerSpec {
                cfg: bgp::PeerCfg::new(a, asn),
                peer_type: PeerType::NodeMesh,
                name: name.into(),
            },
        )
    }

    fn nets(v: &[&str]) -> BTreeSet<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Applies every step as an accepting speaker would.
    fn apply(applied: &mut BgpApplied, plan: &BgpPlan) {
        applied.record_prefixes(plan);
        plan.remove.iter().for_each(|a| applied.record_removal(a));
        for s in plan.update.iter().chain(&plan.relabel).chain(&plan.add) {
            applied.record_peer(s);
        }
    }

    #[test]
    fn remove_update_relabel_add_then_nothing() {
        let mut applied = BgpApplied {
            peers: [
                peer("10.0.0.2", 64512, "n2"),
                peer("10.0.0.3", 64512, "n3"),
                peer("10.0.0.4", 64512, "n4"),
            ]
            .into(),
            originate: nets(&["10.244.0.0/26", "10.244.0.64/26"]),
        };
        let desired: BTreeMap<_, _> = [
            peer("10.0.0.2", 65002, "n2"),  // AS changed: update
            peer("10.0.0.3", 64512, "n3b"), // only the name: relabel
            peer("10.0.0.5", 64512, "n5"),  // new
        ]
        .into();
        let originate = nets(&["10.244.0.0/26", "10.244.1.0/26"]);
        let plan = bgp_plan(&applied, &desired, &originate);
        assert_eq!(plan.withdraw, ["10.244.0.64/26".parse::<IpNet>().unwrap()]);
        assert_eq!(plan.originate, ["10.244.1.0/26".parse::<IpNet>().unwrap()]);
        assert_eq!(plan.remove, ["10.0.0.4".parse::<IpAddr>().unwrap()]);
        let names = |v: &[PeerSpec]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&plan.update), ["n2"]);
        assert_eq!(names(&plan.relabel), ["n3b"]);
        assert_eq!(names(&plan.add), ["n5"]);
        apply(&mut applied, &plan);
        assert!(bgp_plan(&applied, &desired, &originate).is_empty());
        assert_eq!(applied.peers, desired);
        assert_eq!(applied.originate, originate);
    }

    #[test]
    fn a_refused_step_is_planned_again() {
        let applied = BgpApplied::default();
        let desired: BTreeMap<_, _> = [peer("10.0.0.2", 64512, "n2")].into();
        let plan = bgp_plan(&applied, &desired, &BTreeSet::new());
        assert_eq!(plan.add.len(), 1);
        // The speaker refused it: nothing recorded, so the next plan has it again.
        assert_eq!(bgp_plan(&applied, &desired, &BTreeSet::new()), plan);
    }
}
