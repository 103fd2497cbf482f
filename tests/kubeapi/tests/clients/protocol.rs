//! The wire behaviour, checked with a raw HTTP client against what the "API concepts" document and
//! kube-apiserver say: Status errors, watch semantics (selectors, bookmarks, initial events, 410),
//! the test controls, the request log, scale, and the binary's --state restart and SIGTERM.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const S: Duration = Duration::from_secs(5);

#[tokio::test]
async fn errors_are_status_objects_as_upstream() {
    let srv = start().await;
    let a = srv.addr();
    let r = get(a, "/api/v1/namespaces/default/pods/nope").await;
    assert_eq!(r.code, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = r.json();
    assert_eq!(
        (
            s["kind"].as_str(),
            s["status"].as_str(),
            s["reason"].as_str()
        ),
        (Some("Status"), Some("Failure"), Some("NotFound"))
    );
    assert_eq!(s["message"], "pods \"nope\" not found");
    assert_eq!(s["details"], json!({"name": "nope", "kind": "pods"}));
    assert_eq!(s["code"], 404);

    let created = post(a, "/api/v1/namespaces/default/pods", &pod("p", json!({}))).await;
    assert_eq!(created.code, 201);
    let again = post(a, "/api/v1/namespaces/default/pods", &pod("p", json!({}))).await;
    assert_eq!(
        (again.code, again.json()["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let missing_ns = post(a, "/api/v1/namespaces/ghost/pods", &pod("p", json!({}))).await;
    assert_eq!(missing_ns.code, 404);
    assert_eq!(
        missing_ns.json()["message"],
        "namespaces \"ghost\" not found"
    );
    let no_name = post(
        a,
        "/api/v1/namespaces/default/pods",
        &json!({"kind": "Pod", "apiVersion": "v1", "metadata": {}}),
    )
    .await;
    assert_eq!(
        (no_name.code, no_name.json()["reason"].as_str()),
        (422, Some("Invalid"))
    );
    let wrong_kind = post(
        a,
        "/api/v1/namespaces/default/pods",
        &json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "x"}}),
    )
    .await;
    assert_eq!(
        (wrong_kind.code, wrong_kind.json()["reason"].as_str()),
        (400, Some("BadRequest"))
    );

    let mut stale = created.json();
    stale["metadata"]["labels"] = json!({"a": "1"});
    assert_eq!(
        put(a, "/api/v1/namespaces/default/pods/p", &stale)
            .await
            .code,
        200
    );
    let conflict = put(a, "/api/v1/namespaces/default/pods/p", &stale).await;
    assert_eq!(conflict.code, 409);
    assert_eq!(
        conflict.json()["message"],
        "Operation cannot be fulfilled on pods \"p\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let stale_patch = json!({"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"], "labels": {"b": "2"}}});
    assert_eq!(
        patch(
            a,
            "/api/v1/namespaces/default/pods/p",
            "application/merge-patch+json",
            &stale_patch
        )
        .await
        .code,
        409
    );
    assert_eq!(
        patch(
            a,
            "/api/v1/namespaces/default/pods/p",
            "application/apply-patch+yaml",
            &json!({})
        )
        .await
        .code,
        415
    );
    assert_eq!(get(a, "/apis/nope.example.com/v1/things").await.code, 404);
    assert_eq!(get(a, "/openapi/v2").await.code, 404);
    assert_eq!(
        String::from_utf8(get(a, "/readyz").await.body).unwrap(),
        "ok"
    );
    let del = delete(
        a,
        "/api/v1/namespaces/default/pods/p",
        Some(&json!({"preconditions": {"uid": "other"}})),
    )
    .await;
    assert_eq!(
        (del.code, del.json()["reason"].as_str()),
        (409, Some("Conflict"))
    );
    let del = delete(a, "/api/v1/namespaces/default/pods/p", None).await;
    assert_eq!(
        (del.code, del.json()["metadata"]["name"].as_str()),
        (200, Some("p"))
    );
    assert_eq!(
        delete(a, "/api/v1/namespaces/default/pods/p", None)
            .await
            .code,
        404
    );
}

#[tokio::test]
async fn watches_follow_selectors_as_the_watch_cache_does() {
    let srv = start().await;
    let a = srv.addr();
    post(a, "/api/v1/namespaces", &namespace("w")).await;
    post(
        a,
        "/api/v1/namespaces/w/pods",
        &pod("web", json!({"app": "web"})),
    )
    .await;
    post(
        a,
        "/api/v1/namespaces/w/pods",
        &pod("db", json!({"app": "db"})),
    )
    .await;
    let list = get(a, "/api/v1/namespaces/w/pods?labelSelector=app%3Dweb")
        .await
        .json();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let from = rv(&list);
    let mut w = Watch::open(
        a,
        &format!(
            "/api/v1/namespaces/w/pods?watch=true&labelSelector=app%3Dweb&resourceVersion={from}"
        ),
    )
    .await;
    assert_eq!(w.code, 200);
    assert_eq!(w.header("content-type"), Some("application/json"));
    assert_eq!(w.header("transfer-encoding"), Some("chunked"));
    let mp = "application/merge-patch+json";
    // db starts matching: ADDED; web stops: DELETED (its last matching state, with the event's rv).
    let p1 = patch(
        a,
        "/api/v1/namespaces/w/pods/db",
        mp,
        &json!({"metadata": {"labels": {"app": "web"}}}),
    )
    .await
    .json();
    let p2 = patch(
        a,
        "/api/v1/namespaces/w/pods/web",
        mp,
        &json!({"metadata": {"labels": {"app": "old"}}}),
    )
    .await
    .json();
    let p3 = patch(
        a,
        "/api/v1/namespaces/w/pods/db",
        mp,
        &json!({"metadata": {"labels": {"x": "1"}}}),
    )
    .await
    .json();
    patch(
        a,
        "/api/v1/namespaces/w/pods/web",
        mp,
        &json!({"metadata": {"labels": {"y": "1"}}}),
    )
    .await;
    let d = delete(a, "/api/v1/namespaces/w/pods/db", None).await.json();
    let got: Vec<(String, String, u64)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let (t, o) = w.next_change(S).await.expect("an event");
            v.push((
                t,
                o["metadata"]["name"].as_str().unwrap().to_string(),
                rv(&o),
            ));
        }
        v
    };
    assert_eq!(
        got,
        [
            ("ADDED".into(), "db".into(), rv(&p1)),
            ("DELETED".into(), "web".into(), rv(&p2)),
            ("MODIFIED".into(), "db".into(), rv(&p3)),
            ("DELETED".into(), "db".into(), rv(&d)),
        ]
    );
    // The DELETED for "stopped matching" carries the previous labels.
    let mut again = Watch::open(
        a,
        &format!(
            "/api/v1/namespaces/w/pods?watch=1&labelSelector=app%3Dweb&resourceVersion={from}"
        ),
    )
    .await;
    let (_, o) = again.next_change(S).await.unwrap();
    assert_eq!(o["metadata"]["labels"]["app"], "web");
    let (t, o) = again.next_change(S).await.unwrap();
    assert_eq!(
        (t.as_str(), o["metadata"]["labels"]["app"].as_str()),
        ("DELETED", Some("web"))
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_rv_gets_one_410_error_event() {
    let srv = start().await;
    let a = srv.addr();
    let old = rv(&get(a, "/api/v1/namespaces/default/configmaps").await.json());
    post(
        a,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "c"}}),
    )
    .await;
    assert_eq!(
        request(a, "POST", "/_test/compact", None, b"").await.code,
        200
    );
    let mut w = Watch::open(
        a,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old}"),
    )
    .await;
    assert_eq!(
        w.code, 200,
        "kube-apiserver answers 200 and puts the 410 in the stream"
    );
    let (t, s) = w.next(S).await.expect("an ERROR event");
    assert_eq!(t, "ERROR");
    assert_eq!(
        (s["kind"].as_str(), s["code"].as_u64(), s["reason"].as_str()),
        (Some("Status"), Some(410), Some("Expired"))
    );
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version"),
        "{s}"
    );
    assert!(w.ends_within(S).await, "the stream ends after the error");
    let page = get(
        a,
        &format!("/api/v1/configmaps?resourceVersion={old}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(
        (page.code, page.json()["reason"].as_str()),
        (410, Some("Expired"))
    );
    // From the current rv it works.
    let now = srv.resource_version();
    let mut ok = Watch::open(
        a,
        &format!("/api/v1/configmaps?watch=true&resourceVersion={now}&timeoutSeconds=1"),
    )
    .await;
    assert!(ok.next_change(Duration::from_millis(300)).await.is_none());
    assert!(ok.ends_within(S).await, "timeoutSeconds ends the stream");
}

#[tokio::test]
async fn bookmarks_and_initial_events() {
    let srv = start().await;
    let a = srv.addr();
    for n in ["a", "b"] {
        post(a, "/api/v1/namespaces/default/pods", &pod(n, json!({}))).await;
    }
    let mut w = Watch::open(
        a,
        "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true",
    )
    .await;
    let (t1, _) = w.next(S).await.unwrap();
    let (t2, _) = w.next(S).await.unwrap();
    assert_eq!(
        (t1.as_str(), t2.as_str()),
        ("ADDED", "ADDED"),
        "no resourceVersion: current objects first"
    );
    // Other resources move the counter; the bookmark may report it.
    post(
        a,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "c"}}),
    )
    .await;
    let (t, b) = w.next(S).await.expect("a bookmark");
    assert_eq!(t, "BOOKMARK");
    assert_eq!(b["kind"], "Pod");
    assert_eq!(b["apiVersion"], "v1");
    assert!(b["metadata"].get("annotations").is_none());
    assert_eq!(rv(&b), srv.resource_version());

    let wl = "/api/v1/namespaces/default/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=";
    let mut s = Watch::open(a, wl).await;
    let mut names = Vec::new();
    let end = loop {
        let (t, o) = s.next(S).await.expect("initial events then a bookmark");
        if t == "BOOKMARK" {
            break o;
        }
        assert_eq!(t, "ADDED");
        names.push(o["metadata"]["name"].as_str().unwrap().to_string());
    };
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        end["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(rv(&end), srv.resource_version());
    let bad = get(a, "/api/v1/pods?watch=true&sendInitialEvents=true").await;
    assert_eq!(
        bad.code, 422,
        "sendInitialEvents needs resourceVersionMatch=NotOlderThan"
    );
}

#[tokio::test]
async fn drop_watches_and_outage() {
    let srv = start().await;
    let a = srv.addr();
    let mut w1 = Watch::open(a, "/api/v1/pods?watch=true").await;
    let mut w2 = Watch::open(a, "/apis/networking.k8s.io/v1/networkpolicies?watch=true").await;
    eventually(S, "two watches", || async {
        (get(a, "/_test/state").await.json()["watches"] == 2).then_some(())
    })
    .await;
    let r = request(a, "POST", "/_test/drop-watches", None, b"").await;
    assert_eq!(r.json()["dropped"], 2);
    assert!(w1.ends_within(S).await && w2.ends_within(S).await);

    post(
        a,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "kept"}}),
    )
    .await;
    let mut w3 = Watch::open(a, "/api/v1/pods?watch=true").await;
    let before = srv.resource_version();
    assert_eq!(
        request(a, "POST", "/_test/outage?seconds=1", None, b"")
            .await
            .code,
        200
    );
    let t0 = Instant::now();
    assert!(w3.ends_within(S).await, "open connections are closed");
    eventually(S, "connections refused", || async {
        tokio::net::TcpStream::connect(a)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let back = eventually(Duration::from_secs(10), "the server back", || async {
        match tokio::net::TcpStream::connect(a).await {
            Ok(_) => Some(Instant::now()),
            Err(_) => None,
        }
    })
    .await;
    assert!(
        back - t0 >= Duration::from_millis(800),
        "refused for about a second, not {:?}",
        back - t0
    );
    assert_eq!(
        get(a, "/api/v1/namespaces/default/configmaps/kept")
            .await
            .code,
        200,
        "same state after the outage"
    );
    assert_eq!(srv.resource_version(), before);
}

#[tokio::test]
async fn the_request_log_has_authorizer_verbs() {
    let srv = start().await;
    let a = srv.addr();
    post(a, "/api/v1/namespaces/default/pods", &pod("p", json!({}))).await;
    get(a, "/api/v1/namespaces/default/pods/p").await;
    get(a, "/api/v1/pods?fieldSelector=metadata.name%3Dp").await;
    let mut w = Watch::open(
        a,
        "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1",
    )
    .await;
    assert!(w.ends_within(S).await);
    patch(
        a,
        "/api/v1/namespaces/default/pods/p/status",
        "application/merge-patch+json",
        &json!({"status": {"phase": "Running"}}),
    )
    .await;
    let cur = get(a, "/api/v1/namespaces/default/pods/p").await.json();
    put(a, "/api/v1/namespaces/default/pods/p", &cur).await;
    delete(a, "/api/v1/namespaces/default/pods/p", None).await;
    request(
        a,
        "DELETE",
        "/api/v1/namespaces/default/configmaps?labelSelector=x",
        None,
        b"",
    )
    .await;
    get(a, "/apis").await;
    get(a, "/api/v1/namespaces/default/pods/p").await;
    let lines: Vec<Value> = get(a, "/_test/requests")
        .await
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    type Line = (String, Option<String>, Option<String>, Option<String>, u64);
    let short: Vec<Line> = lines
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().map(String::from);
            (
                l["verb"].as_str().unwrap().to_string(),
                s("resource"),
                s("subresource"),
                s("name"),
                l["code"].as_u64().unwrap(),
            )
        })
        .collect();
    let p = || Some("pods".to_string());
    let n = || Some("p".to_string());
    assert_eq!(
        short,
        [
            ("create".into(), p(), None, None, 201),
            ("get".into(), p(), None, n(), 200),
            ("list".into(), p(), None, n(), 200),
            ("watch".into(), p(), None, None, 200),
            ("patch".into(), p(), Some("status".into()), n(), 200),
            ("get".into(), p(), None, n(), 200),
            ("update".into(), p(), None, n(), 200),
            ("delete".into(), p(), None, n(), 200),
            (
                "deletecollection".into(),
                Some("configmaps".into()),
                None,
                None,
                200
            ),
            ("get".into(), None, None, None, 200),
            ("get".into(), p(), None, n(), 404),
        ]
    );
    assert!(lines.iter().all(|l| l["user"] == "test-user"));
    assert_eq!(lines[0]["apiGroup"], "");
    assert_eq!(lines[0]["namespace"], "default");
    assert_eq!(lines[2]["namespace"], Value::Null);
    assert_eq!(lines[9]["apiGroup"], Value::Null);
}

#[tokio::test]
async fn five_thousand_pods_list_and_watch_fast() {
    // Journaled, as the lab runs it: the writes must stay cheap.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.jsonl");
    let srv = start_with(kube_test_server::ServerCfg {
        state: Some(state.clone()),
        ..Default::default()
    })
    .await;
    let t_create = Instant::now();
    let a = srv.addr();
    for i in 0..10 {
        post(a, "/api/v1/namespaces", &namespace(&format!("ns{i}"))).await;
    }
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(tokio::spawn(async move {
            for i in (t..6000).step_by(4) {
                let ns = format!("ns{}", i % 10);
                let (path, body) = if i < 5000 {
                    (format!("/api/v1/namespaces/{ns}/pods"), pod(&format!("pod-{i}"), json!({"app": format!("a{}", i % 7)})))
                } else {
                    let np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": format!("np-{i}")},
                        "spec": {"podSelector": {"matchLabels": {"app": "a1"}}, "policyTypes": ["Ingress"]}});
                    (format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"), np)
                };
                assert_eq!(post(a, &path, &body).await.code, 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "6,010 journaled creates over HTTP: {:?}",
        t_create.elapsed()
    );
    let journal = std::fs::read_to_string(&state).unwrap();
    assert_eq!(
        journal.lines().count(),
        1 + 4 + 6010,
        "the counter line, the system namespaces, every create"
    );
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = get(a, "/api/v1/pods").await;
        best = best.min(t0.elapsed());
        assert_eq!(r.code, 200);
    }
    let list = get(a, "/api/v1/pods").await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 5000);
    eprintln!("listing 5,000 pods: {best:?}");
    assert!(
        best < Duration::from_millis(100),
        "listing 5,000 pods took {best:?}"
    );
    let t0 = Instant::now();
    let nps = get(a, "/apis/networking.k8s.io/v1/networkpolicies")
        .await
        .json();
    assert_eq!(nps["items"].as_array().unwrap().len(), 1000);
    assert!(t0.elapsed() < Duration::from_millis(100));
    let t0 = Instant::now();
    let mut w = Watch::open(a, "/api/v1/pods?watch=true").await;
    for _ in 0..5000 {
        assert_eq!(w.next(S).await.unwrap().0, "ADDED");
    }
    eprintln!("5,000 initial watch events: {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "5,000 initial watch events took {:?}",
        t0.elapsed()
    );
    // Pages of 500 cover the same set.
    let mut seen = 0;
    let mut cont = String::new();
    loop {
        let page = get(a, &format!("/api/v1/pods?limit=500&continue={cont}"))
            .await
            .json();
        seen += page["items"].as_array().unwrap().len();
        match page["metadata"]["continue"].as_str() {
            Some(c) => cont = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, 5000);
}

async fn spawn_binary(state: &std::path::Path) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-test-server"))
        .args(["--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(S, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

#[tokio::test]
async fn the_binary_keeps_state_across_a_kill_and_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.jsonl");
    let (mut child, a) = spawn_binary(&state).await;
    let c = post(
        a,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "c"}, "data": {"k": "v"}}),
    )
    .await
    .json();
    let gone = post(
        a,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "gone"}}),
    )
    .await
    .json();
    let d = delete(
        a,
        &format!(
            "/api/v1/namespaces/default/configmaps/{}",
            gone["metadata"]["name"].as_str().unwrap()
        ),
        None,
    )
    .await
    .json();
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (mut child, a) = spawn_binary(&state).await;
    let back = get(a, "/api/v1/namespaces/default/configmaps/c")
        .await
        .json();
    assert_eq!(back["metadata"]["uid"], c["metadata"]["uid"]);
    assert_eq!(back["data"]["k"], "v");
    assert_eq!(
        get(a, "/api/v1/namespaces/default/configmaps/gone")
            .await
            .code,
        404
    );
    let list = get(a, "/api/v1/namespaces/default/configmaps").await.json();
    assert_eq!(rv(&list), rv(&d), "the counter comes back where it was");
    let n = post(
        a,
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "n"}}),
    )
    .await
    .json();
    assert!(rv(&n) > rv(&d), "and never goes backwards");
    let pid = child.id().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(S, child.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
}
