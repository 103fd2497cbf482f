//! Tests of the file backend: scanning, and the watch publishing within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::*;

const POOL: &str =
    "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: default-ipv4\n\
                    spec:\n  cidr: 10.244.0.0/16\n";
const NODES: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  annotations:\n\
                     \x20   projectcalico.org/IPv4Address: 172.18.0.2/24\n---\n\
                     apiVersion: v1\nkind: Node\nmetadata:\n  name: node-2\n";

fn ns_doc(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

/// Waits (at most `limit`) for a snapshot satisfying `pred`; returns it and the time taken.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    limit: Duration,
    pred: impl Fn(&Snapshot) -> bool,
) -> (Arc<Snapshot>, Duration) {
    let start = Instant::now();
    loop {
        let cur = rx.borrow_and_update().clone();
        if pred(&cur) {
            return (cur, start.elapsed());
        }
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("watch channel closed"),
            Err(_) => panic!(
                "no matching snapshot within {limit:?}; last: {:?}",
                rx.borrow().errors
            ),
        }
    }
}

fn fast(dir: &Path) -> FileDatastoreCfg {
    FileDatastoreCfg {
        resync_interval: Duration::from_secs(3600),
        ..FileDatastoreCfg::new(dir)
    }
}

#[test]
fn scan_reads_yaml_and_yml_skips_hidden_ipam_and_others() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pools.yaml"), POOL).unwrap();
    std::fs::write(d.path().join("nodes.yml"), NODES).unwrap();
    std::fs::write(d.path().join(".hidden.yaml"), ns_doc("hidden")).unwrap();
    std::fs::write(d.path().join("notes.txt"), ns_doc("txt")).unwrap();
    std::fs::write(d.path().join("pools.yaml~"), ns_doc("backup")).unwrap();
    std::fs::create_dir_all(d.path().join("ipam/blocks")).unwrap();
    std::fs::write(d.path().join("ipam/x.yaml"), ns_doc("ipam")).unwrap();
    std::fs::create_dir(d.path().join("sub.yaml")).unwrap();
    let s = scan_dir(d.path()).unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.state.ip_pools.len(), 1);
    assert_eq!(s.state.nodes.len(), 2);
    assert!(s.state.namespaces.is_empty());
    let n1 = &s.state.nodes["node-1"];
    assert_eq!(n1.bgp.ipv4_address.unwrap().to_string(), "172.18.0.2/24");
}

#[test]
fn errors_name_the_file_and_others_survive() {
    let d = tempfile::tempdir().unwrap();
    let bad = format!(
        "{}---\n{}",
        ns_doc("ok-ns"),
        POOL.replace("10.244.0.0/16", "10.0.0.0/33")
    );
    std::fs::write(d.path().join("pools.yaml"), bad).unwrap();
    std::fs::write(d.path().join("nodes.yaml"), NODES).unwrap();
    std::fs::write(d.path().join("binary.yaml"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let s = scan_dir(d.path()).unwrap();
    let msgs: Vec<String> = s.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        msgs,
        [
            "binary.yaml: not UTF-8 text (invalid byte at offset 0)",
            "pools.yaml doc 2: IPPool default-ipv4: spec.cidr: invalid CIDR \"10.0.0.0/33\"",
        ]
    );
    assert_eq!(s.state.nodes.len(), 2);
    assert!(s.state.namespaces.contains_key("ok-ns"));
}

#[test]
fn duplicates_keep_the_first_by_file_order() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.yaml"), POOL).unwrap();
    std::fs::write(
        d.path().join("b.yaml"),
        POOL.replace("10.244.0.0/16", "10.9.0.0/16"),
    )
    .unwrap();
    let s = scan_dir(d.path()).unwrap();
    assert_eq!(
        s.state.ip_pools["default-ipv4"].cidr.to_string(),
        "10.244.0.0/16"
    );
    assert_eq!(
        s.errors[0].to_string(),
        "b.yaml doc 1: IPPool default-ipv4: duplicate: already defined at a.yaml doc 1; \
         this one is ignored"
    );
}

#[test]
fn secret_ref_password_is_kept_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let peer = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec:\n\
                \x20 peerIP: 10.0.0.1\n  asNumber: 65001\n  password:\n    secretKeyRef: {name: bgp, key: tor}\n";
    std::fs::write(d.path().join("peers.yaml"), peer).unwrap();
    let s = scan_dir(d.path()).unwrap();
    assert_eq!(s.state.bgp_peers.len(), 1);
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.errors[0].severity, Severity::Warning);
    assert!(s.errors[0]
        .to_string()
        .contains("spec.password.secretKeyRef"));
}

#[test]
fn garbage_files_never_panic() {
    let d = tempfile::tempdir().unwrap();
    let mut seed: u64 = 12345;
    for i in 0..40 {
        let mut bytes = Vec::new();
        for _ in 0..(seed % 600) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = (seed & 0xff) as u8;
            // Mostly printable YAML-ish bytes, sometimes anything.
            bytes.push(if seed & 0x300 == 0 {
                b
            } else {
                b"-:[]{}&*!|>'\"\n #apiVersionkind"[(b % 30) as usize]
            });
        }
        std::fs::write(d.path().join(format!("g{i}.yaml")), &bytes).unwrap();
    }
    std::fs::write(d.path().join("pools.yaml"), POOL).unwrap();
    let s = scan_dir(d.path()).unwrap();
    assert_eq!(s.state.ip_pools.len(), 1);
}

#[test]
fn open_rejects_missing_and_non_directories() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        FileDatastore::open(d.path().join("nope")),
        Err(DatastoreError::Io { .. })
    ));
    std::fs::write(d.path().join("f"), "").unwrap();
    assert!(matches!(
        FileDatastore::open(d.path().join("f")),
        Err(DatastoreError::NotADirectory(_))
    ));
}

#[tokio::test]
async fn watch_publishes_changes_within_a_second() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pools.yaml"), POOL).unwrap();
    let ds = FileDatastore::open_with(fast(d.path())).unwrap();
    let mut rx = ds.watch();
    let first = rx.borrow_and_update().clone();
    assert_eq!(first.revision, 1);
    assert_eq!(first.state.ip_pools.len(), 1);

    // A new file.
    std::fs::write(d.path().join("nodes.yaml"), NODES).unwrap();
    let (s, took) = wait_for(&mut rx, Duration::from_secs(1), |s| {
        s.state.nodes.len() == 2
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(s.errors.is_empty());

    // Corrupt it: the error names the file, the pool is still there, and so are the nodes the
    // file held (a document that stops parsing is not a deletion).
    std::fs::write(
        d.path().join("nodes.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: [\n",
    )
    .unwrap();
    let (s, took) = wait_for(&mut rx, Duration::from_secs(1), |s| !s.errors.is_empty()).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        s.errors[0]
            .to_string()
            .starts_with("nodes.yaml doc 1: YAML syntax error"),
        "{}",
        s.errors[0]
    );
    assert_eq!(s.state.ip_pools.len(), 1);
    assert_eq!(s.state.nodes.len(), 2);
    assert!(
        s.errors[1].to_string().starts_with(
            "nodes.yaml: keeping the last good version of 2 until the file reads cleanly: Node "
        ),
        "{}",
        s.errors[1]
    );

    // Fix it (atomically, as an editor or `mv` would).
    std::fs::write(d.path().join(".nodes.yaml.tmp"), NODES).unwrap();
    std::fs::rename(
        d.path().join(".nodes.yaml.tmp"),
        d.path().join("nodes.yaml"),
    )
    .unwrap();
    let (s, took) = wait_for(&mut rx, Duration::from_secs(1), |s| {
        s.errors.is_empty() && s.state.nodes.len() == 2
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(s.state.ip_pools.len(), 1);

    // Delete it.
    std::fs::remove_file(d.path().join("nodes.yaml")).unwrap();
    wait_for(&mut rx, Duration::from_secs(1), |s| {
        s.state.nodes.is_empty()
    })
    .await;
}

#[tokio::test]
async fn bursts_coalesce_and_ipam_writes_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    let ds = FileDatastore::open_with(fast(d.path())).unwrap();
    let mut rx = ds.watch();
    let start_rev = rx.borrow_and_update().revision;
    for i in 0..30 {
        std::fs::write(
            d.path().join(format!("ns{i}.yaml")),
            ns_doc(&format!("ns{i}")),
        )
        .unwrap();
    }
    let (s, _) = wait_for(&mut rx, Duration::from_secs(2), |s| {
        s.state.namespaces.len() == 30
    })
    .await;
    assert!(
        s.revision - start_rev < 10,
        "30 writes gave {} snapshots",
        s.revision - start_rev
    );

    let rev = s.revision;
    std::fs::create_dir_all(d.path().join("ipam/blocks")).unwrap();
    std::fs::write(d.path().join("ipam/blocks/x.yaml"), "cidr: 10.0.0.0/26\n").unwrap();
    std::fs::write(d.path().join("ns0.yaml.swp"), "junk").unwrap();
    std::fs::write(d.path().join("ns0.yaml~"), "junk").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.borrow().revision, rev);
    assert!(!rx.has_changed().unwrap());

    // Unchanged content: a forced read publishes nothing new.
    assert_eq!(ds.snapshot().unwrap().revision, rev);
}

#[tokio::test]
async fn dropping_the_datastore_closes_the_channel() {
    let d = tempfile::tempdir().unwrap();
    let ds = FileDatastore::open_with(fast(d.path())).unwrap();
    let mut rx = ds.watch();
    drop(ds);
    let r = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
    assert!(matches!(r, Ok(Err(_))), "{r:?}");
}

#[tokio::test]
async fn unreadable_directory_keeps_the_last_state() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ds");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("pools.yaml"), POOL).unwrap();
    let ds = FileDatastore::open_with(fast(&dir)).unwrap();
    std::fs::rename(&dir, d.path().join("moved")).unwrap();
    assert!(ds.snapshot().is_err());
    let s = ds.watch().borrow().clone();
    assert_eq!(s.state.ip_pools.len(), 1);
    assert!(s
        .errors
        .last()
        .unwrap()
        .message
        .contains("keeping the last state"));
}

fn names<T>(m: &std::collections::BTreeMap<String, T>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn a_file_that_stops_parsing_keeps_what_it_held() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("nodes.yaml");
    let node = |name: &str, addr: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    \
             projectcalico.org/IPv4Address: {addr}\n"
        )
    };
    let mut sc = Scanner::default();
    std::fs::write(
        &path,
        node("a", "10.0.0.1/24") + "---\n" + &node("b", "10.0.0.2/24"),
    )
    .unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(names(&s.state.nodes), ["a", "b"]);

    // A field error in b, a change to a: a takes its new version, b keeps its last good one.
    std::fs::write(
        &path,
        node("a", "10.0.0.9/24") + "---\n" + &node("b", "10.0.0.300/24"),
    )
    .unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert_eq!(names(&s.state.nodes), ["a", "b"]);
    assert_eq!(
        s.state.nodes["a"].bgp.ipv4_address.unwrap().to_string(),
        "10.0.0.9/24"
    );
    assert_eq!(
        s.state.nodes["b"].bgp.ipv4_address.unwrap().to_string(),
        "10.0.0.2/24"
    );
    let msgs: Vec<String> = s.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[0].starts_with("nodes.yaml doc 2: Node b: metadata.annotations.projectcalico.org/IPv4Address: invalid address"), "{}", msgs[0]);
    assert_eq!(
        msgs[1],
        "nodes.yaml: keeping the last good version of 1 until the file reads cleanly: Node b"
    );

    // A YAML syntax error (the whole file half-written): both stay, even though b is not there.
    std::fs::write(&path, node("a", "10.0.0.9/24") + "---\nkind: [\n").unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert_eq!(names(&s.state.nodes), ["a", "b"]);

    // An unknown field and an unsupported kind fail the file too.
    std::fs::write(&path, node("a", "10.0.0.9/24") + "spec: {podCIDRR: x}\n").unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert_eq!(names(&s.state.nodes), ["a", "b"]);
    std::fs::write(
        &path,
        node("a", "10.0.0.9/24")
            + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    )
    .unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert_eq!(names(&s.state.nodes), ["a", "b"]);

    // Unreadable as text: everything stays.
    std::fs::write(&path, b"\xff\xfe").unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert_eq!(names(&s.state.nodes), ["a", "b"]);

    // Clean without b: now b is deleted. Removing the file deletes the rest.
    std::fs::write(&path, node("a", "10.0.0.9/24")).unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(names(&s.state.nodes), ["a"]);
    std::fs::remove_file(&path).unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert!(s.state.nodes.is_empty());
}

#[test]
fn a_policy_that_stops_fitting_the_model_keeps_its_last_good_version() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("np.yaml");
    let np = |ingress: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: web, namespace: prod}}\nspec: {{podSelector: {{}}, ingress: {ingress}}}\n"
        )
    };
    let mut sc = Scanner::default();
    std::fs::write(&path, np("[]")).unwrap();
    let s = sc.scan(d.path()).unwrap();
    assert!(s.state.network_policies.values().all(|p| p.policy.is_ok()));
    // Now it decodes but does not fit the model: the last good version stays.
    std::fs::write(&path, np("\"not a list\"")).unwrap();
    let s = sc.scan(d.path()).unwrap();
    let p = &s.state.network_policies[&("prod".to_string(), "web".to_string())];
    assert!(p.policy.is_ok(), "the broken version replaced the good one");
    assert!(s.errors.iter().any(|e| e.is_failure()), "{:?}", s.errors);
    // With no good version before, the broken one is kept (and enforced as deny-all by calc).
    let mut fresh = Scanner::default();
    let s = fresh.scan(d.path()).unwrap();
    let p = &s.state.network_policies[&("prod".to_string(), "web".to_string())];
    assert!(p.policy.is_err());
}

#[test]
fn the_last_good_version_survives_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join(LAST_GOOD_SUBDIR);
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: a\n  annotations:\n    \
                projectcalico.org/IPv4Address: 10.0.0.1/24\n";
    std::fs::write(d.path().join("nodes.yaml"), node).unwrap();
    std::fs::write(
        d.path().join("gone.yaml"),
        node.replace("name: a", "name: g"),
    )
    .unwrap();
    let s = Scanner::with_cache(cache.clone()).scan(d.path()).unwrap();
    assert_eq!(names(&s.state.nodes), ["a", "g"]);
    // While no daemon runs: nodes.yaml breaks, gone.yaml is removed.
    std::fs::write(
        d.path().join("nodes.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: [\n",
    )
    .unwrap();
    std::fs::remove_file(d.path().join("gone.yaml")).unwrap();
    // A new process: the broken file still yields its last good Node; the removed one is gone.
    let mut sc = Scanner::with_cache(cache.clone());
    let s = sc.scan(d.path()).unwrap();
    assert_eq!(names(&s.state.nodes), ["a"]);
    assert!(!cache.join("gone.yaml").exists());
    // Without the cache it would be gone.
    let s = Scanner::default().scan(d.path()).unwrap();
    assert!(s.state.nodes.is_empty());
}
