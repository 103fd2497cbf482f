//! The Kubernetes backend's rules on what it holds ([`held`]), without an API server: the same
//! last-good-version rules as the file datastore's tests.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::held::{Ev, Held};
use super::kinds::WATCHED;

fn index(kind: &str) -> usize {
    WATCHED.iter().position(|k| k.kind == kind).unwrap()
}

/// A NetworkPolicy as the API serves it in a list: no apiVersion or kind, server fields set.
fn policy(name: &str, port: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "uid": "u1", "resourceVersion": "7",
                     "managedFields": [{"manager": "kubectl"}], "generation": 1},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "ingress": [{"ports": [{"port": port, "protocol": "TCP"}]}]}
    })
}

fn pool(name: &str, cidr: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"cidr": cidr, "blockSize": 26}})
}

fn synced() -> Held {
    let mut h = Held::default();
    for i in 0..WATCHED.len() {
        h.apply(i, Ev::Init);
        h.apply(i, Ev::InitDone);
    }
    h
}

fn state(h: &Held) -> (crate::datastore::ClusterState, Vec<String>) {
    let s = h.build(BTreeMap::new());
    (s.state, s.errors.iter().map(|e| e.to_string()).collect())
}

#[test]
fn add_change_delete() {
    let mut h = synced();
    let np = index("NetworkPolicy");
    assert!(h.apply(np, Ev::Apply(policy("web", json!(80)))));
    let (s, errs) = state(&h);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(s.network_policies.len(), 1);
    // The same object again changes nothing.
    assert!(!h.apply(np, Ev::Apply(policy("web", json!(80)))));
    assert!(h.apply(np, Ev::Apply(policy("web", json!(443)))));
    assert!(h.apply(np, Ev::Delete(policy("web", json!(443)))));
    assert!(state(&h).0.network_policies.is_empty());
    assert!(!h.apply(np, Ev::Delete(policy("web", json!(443)))));
}

#[test]
fn an_object_that_stops_decoding_keeps_its_last_good_version() {
    let mut h = synced();
    let ip = index("IPPool");
    h.apply(ip, Ev::Apply(pool("p", "10.244.0.0/16")));
    let (good, _) = state(&h);
    h.apply(ip, Ev::Apply(pool("p", "10.244.0.0/33")));
    let (s, errs) = state(&h);
    assert_eq!(s, good, "the broken version replaced the good one");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("IPPool p") && errs[0].contains("spec.cidr"),
        "{errs:?}"
    );
    assert!(
        errs[0].contains("keeping the last good version"),
        "{errs:?}"
    );
    // Fixed: the error goes, the new version is used.
    h.apply(ip, Ev::Apply(pool("p", "10.245.0.0/16")));
    let (s, errs) = state(&h);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(s.ip_pools["p"].cidr.to_string(), "10.245.0.0/16");
}

#[test]
fn a_new_object_that_never_decoded_is_reported_and_not_held() {
    let mut h = synced();
    let ip = index("IPPool");
    h.apply(ip, Ev::Apply(pool("bad", "nope")));
    let (s, errs) = state(&h);
    assert!(s.ip_pools.is_empty());
    assert_eq!(errs.len(), 1);
    assert!(!errs[0].contains("keeping"), "{errs:?}");
}

#[test]
fn served_fields_we_do_not_know_are_not_errors_but_unsupported_settings_are() {
    let mut h = synced();
    let ip = index("IPPool");
    let mut p = pool("p", "10.244.0.0/16");
    p["spec"]["someFutureField"] = json!(true);
    h.apply(ip, Ev::Apply(p));
    assert!(state(&h).1.is_empty());
    let mut p = pool("q", "10.9.0.0/16");
    p["spec"]["vxlanMode"] = json!("Always");
    h.apply(ip, Ev::Apply(p));
    let (s, errs) = state(&h);
    assert!(!s.ip_pools.contains_key("q"));
    assert!(errs.iter().any(|e| e.contains("vxlanMode")), "{errs:?}");
}

#[test]
fn a_relist_is_diffed_and_drops_only_what_is_gone() {
    let mut h = synced();
    let ip = index("IPPool");
    h.apply(ip, Ev::Apply(pool("a", "10.1.0.0/16")));
    h.apply(ip, Ev::Apply(pool("b", "10.2.0.0/16")));
    let (before, _) = state(&h);
    // The same list again (after a reconnect or 410): nothing changes.
    h.apply(ip, Ev::Init);
    h.apply(ip, Ev::InitApply(pool("a", "10.1.0.0/16")));
    h.apply(ip, Ev::InitApply(pool("b", "10.2.0.0/16")));
    assert!(!h.apply(ip, Ev::InitDone));
    assert_eq!(state(&h).0, before);
    // During a relist nothing is dropped before InitDone.
    h.apply(ip, Ev::Init);
    h.apply(ip, Ev::InitApply(pool("a", "10.1.0.0/16")));
    assert_eq!(state(&h).0, before);
    assert!(h.apply(ip, Ev::InitDone));
    let (after, _) = state(&h);
    assert!(after.ip_pools.contains_key("a") && !after.ip_pools.contains_key("b"));
}

#[test]
fn a_relisted_broken_object_keeps_its_last_good_version() {
    let mut h = synced();
    let ip = index("IPPool");
    h.apply(ip, Ev::Apply(pool("a", "10.1.0.0/16")));
    h.apply(ip, Ev::Init);
    h.apply(ip, Ev::InitApply(pool("a", "10.1.0.0/99")));
    h.apply(ip, Ev::InitDone);
    let (s, errs) = state(&h);
    assert_eq!(s.ip_pools["a"].cidr.to_string(), "10.1.0.0/16");
    assert_eq!(errs.len(), 1);
}

#[test]
fn a_policy_that_does_not_fit_yields_to_its_last_good_version() {
    let mut h = synced();
    let np = index("NetworkPolicy");
    h.apply(np, Ev::Apply(policy("web", json!(80))));
    let (good, _) = state(&h);
    // A port that is a map does not fit the policy model.
    h.apply(np, Ev::Apply(policy("web", json!({"number": 80}))));
    let (s, errs) = state(&h);
    assert_eq!(s, good);
    assert_eq!(errs.len(), 1, "{errs:?}");
}

#[test]
fn not_synced_until_every_kind_is_listed() {
    let mut h = Held::default();
    assert!(!h.synced());
    for i in 0..WATCHED.len() - 1 {
        h.apply(i, Ev::Init);
        h.apply(i, Ev::InitDone);
    }
    assert_eq!(h.unsynced(), vec!["IPPool"]);
    h.apply(WATCHED.len() - 1, Ev::Init);
    h.apply(WATCHED.len() - 1, Ev::InitDone);
    assert!(h.synced());
}

#[test]
fn pods_take_their_addresses_from_the_cni_annotations_until_the_status_has_them() {
    let mut h = synced();
    let pod = index("Pod");
    let mut p = json!({
        "metadata": {"name": "web", "namespace": "default",
                     "annotations": {"cni.projectcalico.org/podIPs": "10.244.0.5/32,fd00::5/128"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Pending"}
    });
    h.apply(pod, Ev::Apply(p.clone()));
    let ips = |h: &Held| {
        state(h).0.pods[&("default".to_string(), "web".to_string())]
            .pod_ips
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ips(&h), vec!["10.244.0.5", "fd00::5"]);
    p["status"]["podIPs"] = json!([{"ip": "10.244.0.9"}]);
    h.apply(pod, Ev::Apply(p));
    assert_eq!(ips(&h), vec!["10.244.0.9"]);
}

#[test]
fn secret_references_are_collected_from_bgp_peers() {
    let mut h = synced();
    let bp = index("BGPPeer");
    h.apply(
        bp,
        Ev::Apply(
            json!({"metadata": {"name": "tor"}, "spec": {"peerIP": "10.0.0.1", "asNumber": 65000,
            "password": {"secretKeyRef": {"name": "bgp", "key": "tor"}}}}),
        ),
    );
    assert_eq!(
        h.secret_refs(),
        vec![("bgp".to_string(), "tor".to_string())]
    );
}
