//! Store scenarios: metadata rules, optimistic concurrency, status handling, pagination over a changing
//! collection, history and 410, cascades, journal restarts.

use serde_json::{json, Value};

use super::*;
use crate::patch::PatchType;
use crate::selector::LabelSelector;

fn rt(s: &Store, group: &str, plural: &str) -> Arc<ResourceType> {
    s.registry().get(&Gr::new(group, plural)).unwrap()
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

fn rv_of(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

const W: WriteMode = WriteMode {
    status_only: false,
    dry_run: false,
};
const STATUS: WriteMode = WriteMode {
    status_only: true,
    dry_run: false,
};

#[test]
fn create_sets_metadata_and_refuses_bad_requests() {
    let mut s = Store::new(100);
    assert_eq!(s.rv(), 4, "four system namespaces");
    let pods = rt(&s, "", "pods");
    let o = s
        .create(&pods, Some("default"), pod("a", json!({})), false)
        .unwrap();
    assert_eq!(o.rv, 5);
    assert_eq!(o.value["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert_eq!(o.value["metadata"]["generation"], 1);
    assert_eq!(o.value["metadata"]["namespace"], "default");
    assert_eq!(o.value["status"], json!({"phase": "Pending"}));
    let e = |r: Result<Arc<Obj>, ApiError>| r.unwrap_err();
    assert_eq!(
        e(s.create(&pods, Some("default"), pod("a", json!({})), false)).reason,
        "AlreadyExists"
    );
    assert_eq!(
        e(s.create(&pods, Some("nope"), pod("b", json!({})), false)).code,
        404
    );
    assert_eq!(
        e(s.create(
            &pods,
            Some("default"),
            json!({"kind": "Pod", "metadata": {}}),
            false
        ))
        .code,
        422
    );
    assert_eq!(
        e(s.create(
            &pods,
            Some("default"),
            json!({"kind": "ConfigMap", "metadata": {"name": "x"}}),
            false
        ))
        .code,
        400
    );
    assert_eq!(
        e(s.create(
            &pods,
            Some("default"),
            json!({"apiVersion": "apps/v1", "metadata": {"name": "x"}}),
            false
        ))
        .code,
        400
    );
    assert_eq!(
        e(s.create(
            &pods,
            Some("default"),
            json!({"metadata": {"name": "x", "namespace": "kube-system"}}),
            false
        ))
        .code,
        400
    );
    assert_eq!(
        e(s.create(
            &pods,
            Some("default"),
            json!({"metadata": {"name": "Bad_Name"}}),
            false
        ))
        .code,
        422
    );
    let g = s
        .create(
            &pods,
            Some("default"),
            json!({"metadata": {"generateName": "web-"}}),
            false,
        )
        .unwrap();
    assert!(
        g.name().starts_with("web-") && g.name().len() == 9,
        "{}",
        g.name()
    );
    assert_eq!(s.rv(), 6, "failed creates take no resourceVersion");
    let dry = s
        .create(&pods, Some("default"), pod("dry", json!({})), true)
        .unwrap();
    assert_eq!(dry.name(), "dry");
    assert!(s.get(&pods, Some("default"), "dry").is_err());
}

#[test]
fn updates_conflict_on_stale_rv_and_keep_status() {
    let mut s = Store::new(100);
    let pods = rt(&s, "", "pods");
    let o = s
        .create(
            &pods,
            Some("default"),
            pod("a", json!({"app": "web"})),
            false,
        )
        .unwrap();
    let mut v1 = o.value.clone();
    v1["spec"]["containers"][0]["image"] = "nginx".into();
    v1["status"] = json!({"phase": "Running"});
    let u = s
        .update(&pods, Some("default"), "a", v1.clone(), W)
        .unwrap();
    assert_eq!(u.value["metadata"]["generation"], 2);
    assert_eq!(
        u.value["status"],
        json!({"phase": "Pending"}),
        "PUT to the object keeps status"
    );
    assert!(u.rv > o.rv);
    let stale = s
        .update(&pods, Some("default"), "a", v1.clone(), W)
        .unwrap_err();
    assert_eq!((stale.code, stale.reason), (409, "Conflict"));
    assert!(stale.message.contains("the object has been modified"));
    let mut unconditional = u.value.clone();
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    unconditional["metadata"]["labels"]["x"] = "1".into();
    let u2 = s
        .update(&pods, Some("default"), "a", unconditional, W)
        .unwrap();
    assert_eq!(
        u2.value["metadata"]["generation"], 2,
        "label changes do not bump generation"
    );
    let st = s
        .update(
            &pods,
            Some("default"),
            "a",
            json!({"metadata": {"name": "a"}, "status": {"phase": "Running"}, "spec": {}}),
            STATUS,
        )
        .unwrap();
    assert_eq!(st.value["status"]["phase"], "Running");
    assert_eq!(
        st.value["spec"], u2.value["spec"],
        "/status changes only status"
    );
    assert_eq!(st.value["metadata"]["generation"], 2);
    let same = s
        .update(&pods, Some("default"), "a", st.value.clone(), W)
        .unwrap();
    assert_eq!(same.rv, st.rv, "a no-op update takes no resourceVersion");
    assert_eq!(
        s.update(&pods, Some("default"), "b", pod("a", json!({})), W)
            .unwrap_err()
            .code,
        400
    );
    assert_eq!(
        s.update(&pods, Some("default"), "b", pod("b", json!({})), W)
            .unwrap_err()
            .code,
        404
    );
}

#[test]
fn patches_apply_and_check_preconditions() {
    let mut s = Store::new(100);
    let pods = rt(&s, "", "pods");
    let o = s
        .create(
            &pods,
            Some("default"),
            pod("a", json!({"app": "web"})),
            false,
        )
        .unwrap();
    let p = s
        .patch(
            &pods,
            Some("default"),
            "a",
            PatchType::Merge,
            &json!({"metadata": {"labels": {"tier": "db", "app": null}}}),
            W,
        )
        .unwrap();
    assert_eq!(p.value["metadata"]["labels"], json!({"tier": "db"}));
    let stale = json!({"metadata": {"resourceVersion": o.rv.to_string(), "labels": {"x": "1"}}});
    assert_eq!(
        s.patch(&pods, Some("default"), "a", PatchType::Merge, &stale, W)
            .unwrap_err()
            .code,
        409
    );
    let j = s
        .patch(
            &pods,
            Some("default"),
            "a",
            PatchType::Json,
            &json!([{"op": "replace", "path": "/spec/containers/0/image", "value": "x"}]),
            W,
        )
        .unwrap();
    assert_eq!(j.value["spec"]["containers"][0]["image"], "x");
    assert_eq!(j.value["metadata"]["generation"], 2);
    let bad = s
        .patch(
            &pods,
            Some("default"),
            "a",
            PatchType::Json,
            &json!([{"op": "remove", "path": "/nope"}]),
            W,
        )
        .unwrap_err();
    assert_eq!(bad.code, 422);
    let sm = s
        .patch(
            &pods,
            Some("default"),
            "a",
            PatchType::Strategic,
            &json!({"spec": {"containers": [{"name": "d", "image": "y"}]}}),
            W,
        )
        .unwrap();
    assert_eq!(
        sm.value["spec"]["containers"].as_array().unwrap().len(),
        2,
        "containers merge by name"
    );
    let st = s
        .patch(
            &pods,
            Some("default"),
            "a",
            PatchType::Merge,
            &json!({"status": {"podIP": "10.0.0.1"}, "metadata": {"annotations": {"cni": "1"}}, "spec": {"nodeName": "ignored"}}),
            STATUS,
        )
        .unwrap();
    assert_eq!(st.value["status"]["podIP"], "10.0.0.1");
    assert_eq!(
        st.value["metadata"]["annotations"]["cni"], "1",
        "pods/status may change annotations (upstream's pod status strategy)"
    );
    assert!(
        st.value["spec"].get("nodeName").is_none(),
        "pods/status never changes the spec"
    );
    let main = s
        .patch(
            &pods,
            Some("default"),
            "a",
            PatchType::Merge,
            &json!({"status": {"podIP": "9.9.9.9"}}),
            W,
        )
        .unwrap();
    assert_eq!(
        main.value["status"]["podIP"], "10.0.0.1",
        "patching the object leaves status alone"
    );
    assert_eq!(
        s.patch(
            &pods,
            Some("default"),
            "zz",
            PatchType::Merge,
            &json!({}),
            W
        )
        .unwrap_err()
        .code,
        404
    );
}

#[test]
fn deletes_check_preconditions_and_cascade() {
    let mut s = Store::new(100);
    let (pods, nss) = (rt(&s, "", "pods"), rt(&s, "", "namespaces"));
    s.create(&nss, None, json!({"metadata": {"name": "t"}}), false)
        .unwrap();
    let a = s
        .create(&pods, Some("t"), pod("a", json!({})), false)
        .unwrap();
    s.create(&pods, Some("t"), pod("b", json!({})), false)
        .unwrap();
    let pre = json!({"preconditions": {"uid": "wrong"}});
    assert_eq!(
        s.delete(&pods, Some("t"), "a", &pre, false)
            .unwrap_err()
            .code,
        409
    );
    let pre = json!({"preconditions": {"resourceVersion": "1"}});
    assert_eq!(
        s.delete(&pods, Some("t"), "a", &pre, false)
            .unwrap_err()
            .code,
        409
    );
    let pre = json!({"preconditions": {"uid": a.value["metadata"]["uid"], "resourceVersion": a.rv.to_string()}});
    let d = s.delete(&pods, Some("t"), "a", &pre, false).unwrap();
    assert_eq!(d.rv, s.rv(), "the deleted object carries the delete's rv");
    assert_eq!(
        s.delete(&pods, Some("t"), "a", &json!({}), false)
            .unwrap_err()
            .code,
        404
    );
    let t = s.get(&nss, None, "t").unwrap();
    assert_eq!(
        t.value["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "t"})
    );
    let relabeled = s
        .patch(
            &nss,
            None,
            "t",
            PatchType::Merge,
            &json!({"metadata": {"labels": null}}),
            W,
        )
        .unwrap();
    assert_eq!(relabeled.rv, t.rv, "the name label cannot be removed");
    s.delete(&nss, None, "t", &json!({}), false).unwrap();
    assert!(
        s.get(&pods, Some("t"), "b").is_err(),
        "deleting a namespace deletes its objects"
    );
    assert_eq!(
        s.create(&pods, Some("t"), pod("c", json!({})), false)
            .unwrap_err()
            .code,
        404
    );
}

#[test]
fn secrets_fold_string_data_into_data() {
    let mut s = Store::new(100);
    let secrets = rt(&s, "", "secrets");
    let o = s.create(&secrets, Some("default"), json!({"metadata": {"name": "pw"}, "data": {"a": "YQ=="}, "stringData": {"password": "s3cret"}}), false).unwrap();
    assert_eq!(
        o.value["data"],
        json!({"a": "YQ==", "password": "czNjcmV0"})
    );
    assert!(o.value.get("stringData").is_none());
    assert_eq!(o.value["type"], "Opaque");
    let p = s
        .patch(
            &secrets,
            Some("default"),
            "pw",
            PatchType::Strategic,
            &json!({"stringData": {"password": "new"}}),
            W,
        )
        .unwrap();
    assert_eq!(p.value["data"]["password"], "bmV3");
    assert!(p.value.get("stringData").is_none());
}

#[test]
fn finalizers_hold_deletion() {
    let mut s = Store::new(100);
    let cms = rt(&s, "", "configmaps");
    s.create(
        &cms,
        Some("default"),
        json!({"metadata": {"name": "f", "finalizers": ["x/y"]}}),
        false,
    )
    .unwrap();
    let d = s
        .delete(&cms, Some("default"), "f", &json!({}), false)
        .unwrap();
    assert!(d.value["metadata"]["deletionTimestamp"].is_string());
    assert!(s.get(&cms, Some("default"), "f").is_ok());
    s.patch(
        &cms,
        Some("default"),
        "f",
        PatchType::Merge,
        &json!({"metadata": {"finalizers": null}}),
        W,
    )
    .unwrap();
    assert!(s.get(&cms, Some("default"), "f").is_err());
}

#[test]
fn pages_show_the_collection_as_of_the_first_page() {
    let mut s = Store::new(1000);
    let pods = rt(&s, "", "pods");
    for i in 0..10 {
        s.create(
            &pods,
            Some("default"),
            pod(&format!("p{i}"), json!({"i": i.to_string()})),
            false,
        )
        .unwrap();
    }
    let opts = |cont: Option<String>| ListOpts {
        limit: Some(4),
        cont,
        ..Default::default()
    };
    let p1 = s.list(&pods, Some("default"), &opts(None)).unwrap();
    assert_eq!(p1.items.len(), 4);
    assert_eq!(p1.remaining, Some(6));
    let at = p1.rv;
    // Change the collection behind the pages: delete a later one, add one, modify one.
    s.delete(&pods, Some("default"), "p7", &json!({}), false)
        .unwrap();
    s.create(&pods, Some("default"), pod("p55", json!({})), false)
        .unwrap();
    s.patch(
        &pods,
        Some("default"),
        "p8",
        PatchType::Merge,
        &json!({"metadata": {"labels": {"new": "1"}}}),
        W,
    )
    .unwrap();
    let p2 = s
        .list(&pods, Some("default"), &opts(p1.cont.clone()))
        .unwrap();
    let p3 = s
        .list(&pods, Some("default"), &opts(p2.cont.clone()))
        .unwrap();
    assert_eq!((p2.rv, p3.rv), (at, at));
    assert!(p3.cont.is_none());
    let names: Vec<&str> = p1
        .items
        .iter()
        .chain(&p2.items)
        .chain(&p3.items)
        .map(|o| o.name())
        .collect();
    assert_eq!(
        names,
        ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"]
    );
    assert!(
        p3.items.iter().find(|o| o.name() == "p8").unwrap().value["metadata"]["labels"]
            .get("new")
            .is_none()
    );
    // Exact at the old rv sees the same; a fresh list sees now.
    let exact = s
        .list(
            &pods,
            Some("default"),
            &ListOpts {
                rv: Some(at),
                rv_match: Some(RvMatch::Exact),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(exact.items.len(), 10);
    let now = s.list(&pods, None, &ListOpts::default()).unwrap();
    assert_eq!(now.items.len(), 10);
    assert!(now.items.iter().any(|o| o.name() == "p55"));
    let sel = ListOpts {
        labels: LabelSelector::parse("i in (1,2,3)").unwrap(),
        limit: Some(2),
        ..Default::default()
    };
    let sp = s.list(&pods, None, &sel).unwrap();
    assert_eq!(sp.items.len(), 2);
    assert!(
        sp.cont.is_some() && sp.remaining.is_none(),
        "no remainingItemCount with a selector"
    );
    // Compaction makes the old token and the old rv unusable.
    s.compact();
    assert_eq!(
        s.list(&pods, Some("default"), &opts(p1.cont))
            .unwrap_err()
            .code,
        410
    );
    let e = s
        .list(
            &pods,
            None,
            &ListOpts {
                rv: Some(at),
                rv_match: Some(RvMatch::Exact),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!((e.code, e.reason), (410, "Expired"));
    assert_eq!(
        s.list(
            &pods,
            None,
            &ListOpts {
                rv: Some(s.rv() + 5),
                ..Default::default()
            }
        )
        .unwrap_err()
        .code,
        504
    );
}

#[test]
fn history_window_and_watch_starts() {
    let mut s = Store::new(5);
    let cms = rt(&s, "", "configmaps");
    let first = s.rv();
    for i in 0..8 {
        s.create(
            &cms,
            Some("default"),
            json!({"metadata": {"name": format!("c{i}")}}),
            false,
        )
        .unwrap();
    }
    assert_eq!(s.compacted(), s.rv() - 5);
    assert_eq!(
        s.watch(&cms.gr, None, WatchFrom::After(first)).unwrap_err(),
        (first, s.rv() - 5)
    );
    let w = s
        .watch(&cms.gr, None, WatchFrom::After(s.rv() - 2))
        .unwrap();
    assert_eq!(
        w.replay.iter().map(|e| e.rv).collect::<Vec<_>>(),
        [s.rv() - 1, s.rv()]
    );
    let mut w0 = s
        .watch(&cms.gr, Some("default"), WatchFrom::Initial)
        .unwrap();
    assert_eq!(w0.initial.len(), 8);
    let o = s
        .create(
            &cms,
            Some("default"),
            json!({"metadata": {"name": "late"}}),
            false,
        )
        .unwrap();
    let ev = w0.rx.try_recv().unwrap();
    assert_eq!((ev.kind, ev.rv), (EventType::Added, o.rv));
    s.compact();
    assert!(s.watch(&cms.gr, None, WatchFrom::After(o.rv - 1)).is_err());
    assert!(s.watch(&cms.gr, None, WatchFrom::After(s.rv())).is_ok());
}

#[test]
fn crds_serve_and_unserve_their_resource() {
    let mut s = Store::new(100);
    let crds = rt(&s, "apiextensions.k8s.io", "customresourcedefinitions");
    let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}});
    let c = s.create(&crds, None, crd, false).unwrap();
    assert_eq!(c.value["status"]["conditions"][1]["type"], "Established");
    let w = s.registry().lookup("example.com", "v1", "widgets").unwrap();
    let o = s.create(&w, Some("default"), json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"a": 1}, "status": {"x": 1}}), false).unwrap();
    assert!(
        o.value.get("status").is_none(),
        "custom resources with a status subresource drop status on create"
    );
    assert_eq!(
        s.patch(
            &w,
            Some("default"),
            "w",
            PatchType::Strategic,
            &json!({}),
            W
        )
        .unwrap_err()
        .code,
        415
    );
    let mut wt = s.watch(&w.gr, None, WatchFrom::Initial).unwrap();
    s.delete(&crds, None, "widgets.example.com", &json!({}), false)
        .unwrap();
    assert!(s
        .registry()
        .lookup("example.com", "v1", "widgets")
        .is_none());
    assert_eq!(wt.rx.try_recv().unwrap().kind, EventType::Deleted);
    assert!(
        matches!(
            wt.rx.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ),
        "watches of the resource end"
    );
}

#[test]
fn journal_restores_objects_and_the_counter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let (rv, uid) = {
        let mut s = Store::open(100, &path).unwrap();
        let crds = rt(&s, "apiextensions.k8s.io", "customresourcedefinitions");
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Cluster",
            "names": {"plural": "widgets", "kind": "Widget"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
        s.create(&crds, None, crd, false).unwrap();
        let w = s.registry().lookup("example.com", "v1", "widgets").unwrap();
        let o = s
            .create(&w, None, json!({"metadata": {"name": "w"}}), false)
            .unwrap();
        let pods = rt(&s, "", "pods");
        s.create(&pods, Some("default"), pod("gone", json!({})), false)
            .unwrap();
        s.delete(&pods, Some("default"), "gone", &json!({}), false)
            .unwrap();
        (s.rv(), o.value["metadata"]["uid"].clone())
    };
    let mut s = Store::open(100, &path).unwrap();
    assert_eq!(s.rv(), rv, "the counter survives, deletes included");
    let w = s
        .registry()
        .lookup("example.com", "v1", "widgets")
        .expect("the CRD is served again");
    assert_eq!(s.get(&w, None, "w").unwrap().value["metadata"]["uid"], uid);
    assert!(s.get(&rt(&s, "", "pods"), Some("default"), "gone").is_err());
    assert_eq!(
        s.count(&Gr::new("", "namespaces")),
        4,
        "system namespaces are not created twice"
    );
    assert_eq!(
        s.watch(&w.gr, None, WatchFrom::After(rv - 1))
            .unwrap_err()
            .0,
        rv - 1,
        "history starts after the restart"
    );
    let pods = rt(&s, "", "pods");
    let n = s
        .create(&pods, Some("default"), pod("new", json!({})), false)
        .unwrap();
    assert_eq!(rv_of(&n.value), rv + 1);
}
