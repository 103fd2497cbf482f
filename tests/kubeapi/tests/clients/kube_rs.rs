//! kube-rs 5 (the client calico-node uses) against the server over plain http: typed `Api<Pod>`
//! calls, and `kube::runtime::watcher` in both initial-list strategies, recovering after
//! `/_test/drop-watches` (re-watch from its rv, no relist), after `/_test/compact` (410, relist) and
//! after an outage.

use std::time::Duration;

use futures::StreamExt;
use hyper::header::{HeaderValue, AUTHORIZATION};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};
use kube_test_server::{ServerCfg, ServerHandle};
use serde_json::json;
use tokio::sync::mpsc;

use crate::support::*;

fn client(srv: &ServerHandle) -> Client {
    let mut cfg = Config::new(srv.url().parse().expect("a URI"));
    cfg.headers.push((
        AUTHORIZATION,
        HeaderValue::from_static("Bearer kube-rs-token"),
    ));
    Client::try_from(cfg).expect("a client for http://")
}

fn new_pod(name: &str) -> Pod {
    serde_json::from_value(pod(name, json!({"app": "kr"}))).unwrap()
}

/// What the watcher said, in short.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String, Option<String>),
    Delete(String),
    Error(Option<u16>),
}

fn spawn_watcher(api: Api<Pod>, cfg: watcher::Config) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = watcher::watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = s.next().await {
            let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
            let seen = match ev {
                Ok(Event::Init) => Seen::Init,
                Ok(Event::InitApply(p)) => Seen::InitApply(name(&p)),
                Ok(Event::InitDone) => Seen::InitDone,
                Ok(Event::Apply(p)) => Seen::Apply(
                    name(&p),
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("step").cloned()),
                ),
                Ok(Event::Delete(p)) => Seen::Delete(name(&p)),
                Err(watcher::Error::WatchError(e)) => Seen::Error(Some(e.code)),
                Err(_) => Seen::Error(None),
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for `want`, skipping other events; returns what came before it.
async fn expect(rx: &mut mpsc::UnboundedReceiver<Seen>, want: Seen) -> Vec<Seen> {
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(s)) if s == want => return before,
            Ok(Some(s)) => before.push(s),
            other => panic!("waiting for {want:?}: {other:?}, after {before:?}"),
        }
    }
}

fn count(srv: &ServerHandle, verb: &str) -> usize {
    srv.requests()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["verb"] == verb && r["resource"] == "pods")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_api_and_watcher() {
    // A long bookmark interval, so the watcher's resourceVersion stays at its last pod event and the
    // compaction below makes it too old.
    let srv = start_with(ServerCfg {
        bookmark_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let c = client(&srv);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");

    let created = pods
        .create(&PostParams::default(), &new_pod("first"))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    let got = pods.get("first").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let listed = pods
        .list(&ListParams::default().labels("app=kr"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let mut stale = got.clone();
    pods.patch(
        "first",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    stale
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("y".into(), "1".into());
    match pods.replace("first", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("a stale replace must be a 409 Conflict: {other:?}"),
    }
    match pods.get("missing").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("{other:?}"),
    }

    let mut rx = spawn_watcher(pods.clone(), watcher::Config::default());
    expect(&mut rx, Seen::Init).await;
    expect(&mut rx, Seen::InitApply("first".into())).await;
    expect(&mut rx, Seen::InitDone).await;
    pods.create(&PostParams::default(), &new_pod("w"))
        .await
        .unwrap();
    expect(&mut rx, Seen::Apply("w".into(), None)).await;
    pods.patch(
        "w",
        &PatchParams::default(),
        &Patch::Strategic(json!({"metadata": {"labels": {"step": "patched"}}})),
    )
    .await
    .unwrap();
    expect(&mut rx, Seen::Apply("w".into(), Some("patched".into()))).await;
    pods.delete("w", &DeleteParams::default()).await.unwrap();
    expect(&mut rx, Seen::Delete("w".into())).await;
    assert_eq!(
        count(&srv, "list"),
        2,
        "one list of ours, one of the watcher"
    );

    // A dropped watch resumes from the watcher's rv: no relist, nothing missed.
    let watches = count(&srv, "watch");
    request(srv.addr(), "POST", "/_test/drop-watches", None, b"").await;
    // The streams end asynchronously: wait for the watcher's new watch before the next write,
    // else its event may still go out on the old stream.
    let t = std::time::Instant::now();
    while count(&srv, "watch") <= watches {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no new watch 10 s after the watches were dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pods.create(&PostParams::default(), &new_pod("after-drop"))
        .await
        .unwrap();
    let between = expect(&mut rx, Seen::Apply("after-drop".into(), None)).await;
    assert!(between.is_empty(), "{between:?}");
    assert_eq!(count(&srv, "list"), 2, "no relist after a dropped watch");

    // After a compaction the resumed watch gets 410 and the watcher relists.
    post(
        srv.addr(),
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "bump"}}),
    )
    .await;
    request(srv.addr(), "POST", "/_test/compact", None, b"").await;
    request(srv.addr(), "POST", "/_test/drop-watches", None, b"").await;
    let before = expect(&mut rx, Seen::Error(Some(410))).await;
    assert!(before.is_empty(), "{before:?}");
    expect(&mut rx, Seen::Init).await;
    let init: Vec<Seen> = expect(&mut rx, Seen::InitDone).await;
    assert_eq!(
        init,
        [
            Seen::InitApply("after-drop".into()),
            Seen::InitApply("first".into())
        ]
    );
    assert_eq!(count(&srv, "list"), 3, "410 makes the watcher relist");
    pods.create(&PostParams::default(), &new_pod("after-compact"))
        .await
        .unwrap();
    expect(&mut rx, Seen::Apply("after-compact".into(), None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_streaming_list_and_outage() {
    let srv = start().await;
    let c = client(&srv);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    for n in ["a", "b"] {
        pods.create(&PostParams::default(), &new_pod(n))
            .await
            .unwrap();
    }
    let mut rx = spawn_watcher(pods.clone(), watcher::Config::default().streaming_lists());
    expect(&mut rx, Seen::Init).await;
    let init = expect(&mut rx, Seen::InitDone).await;
    assert_eq!(
        init,
        [Seen::InitApply("a".into()), Seen::InitApply("b".into())],
        "sendInitialEvents, ended by the initial-events-end bookmark"
    );
    assert_eq!(count(&srv, "list"), 0, "a streaming list is a watch");

    // An outage: the watcher (with backoff) comes back on its own and misses nothing.
    let (tx, mut brx) = mpsc::unbounded_channel();
    let api = pods.clone();
    tokio::spawn(async move {
        let mut s = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = s.next().await {
            if let Ok(Event::Apply(p)) = ev {
                let _ = tx.send(p.metadata.name.unwrap_or_default());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    request(srv.addr(), "POST", "/_test/outage?seconds=1", None, b"").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let created = eventually(
        Duration::from_secs(15),
        "the server back for kube-rs",
        || {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &new_pod("after-outage"))
                    .await
                    .ok()
            }
        },
    )
    .await;
    assert!(created.metadata.uid.is_some());
    let name = tokio::time::timeout(Duration::from_secs(20), brx.recv())
        .await
        .expect("the watcher recovers")
        .unwrap();
    assert_eq!(name, "after-outage");
    expect(&mut rx, Seen::Apply("after-outage".into(), None)).await;
}
