//! The `calicoctl-rs` binary against a test server: Calico's `node status` layout (golden, times
//! masked), JSON, the other subcommands, and the message and exit status with no daemon.

use std::path::Path;
use std::process::Output;

use calico_node::grpc::GrpcListen;
use calico_node::status::PeerType;

use super::{at, peer, snapshot, TestServer, OLD};

async fn ctl(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_calicoctl-rs"))
        .args(args)
        .env("TZ", "UTC")
        .output()
        .await
        .expect("run calicoctl-rs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Replaces every `HH:MM:SS` with the literal text `HH:MM:SS` (same width, so the table is kept).
fn mask_times(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let digit = |j: usize| b.get(j).is_some_and(u8::is_ascii_digit);
    while i < b.len() {
        let is_time = (0..8).all(|k| match k {
            2 | 5 => b.get(i + k) == Some(&b':'),
            _ => digit(i + k),
        });
        if is_time {
            out.push_str("HH:MM:SS");
            i += 8;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn grpc_arg(path: &Path) -> String {
    format!("unix:{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_status_golden() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let mut snap = snapshot();
    // Established for a while (a date), one that just failed on a wrong AS (a time today), one
    // never reachable, and an IPv6 route reflector.
    let now = std::time::SystemTime::now();
    snap.peers[1].bgp.since = now;
    snap.peers.push(peer(
        "fd00::10",
        PeerType::RrServer,
        bgp::State::Established,
        at(OLD),
        None,
    ));
    let srv = TestServer::start(GrpcListen::Unix(path.clone()), snap).await;

    let out = ctl(&["node", "status", "--grpc", &grpc_arg(&path)]).await;
    assert!(out.status.success(), "{out:?}");
    let want = "\
Calico process is running.

IPv4 BGP status
+--------------+-------------------+-------+------------+--------------------------------+
| PEER ADDRESS |     PEER TYPE     | STATE |   SINCE    |              INFO              |
+--------------+-------------------+-------+------------+--------------------------------+
| 10.0.0.2     | node-to-node mesh | up    | 2024-05-01 | Established                    |
| 10.0.0.3     | global            | start | HH:MM:SS   | Idle BGP Error: Bad Peer AS    |
| 10.0.0.4     | node specific     | start | 2024-05-01 | Active Socket: Connection      |
|              |                   |       |            | refused                        |
+--------------+-------------------+-------+------------+--------------------------------+

IPv6 BGP status
+--------------+-----------------+-------+------------+-------------+
| PEER ADDRESS |    PEER TYPE    | STATE |   SINCE    |    INFO     |
+--------------+-----------------+-------+------------+-------------+
| fd00::10     | route reflector | up    | 2024-05-01 | Established |
+--------------+-----------------+-------+------------+-------------+

";
    assert_eq!(mask_times(&stdout(&out)), want);

    // The global flags may come first too.
    let out = ctl(&["--grpc", &grpc_arg(&path), "node", "status", "-o", "json"]).await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["running"], true);
    let p = &v["ipv4"][1];
    assert_eq!(p["peer_address"], "10.0.0.3");
    assert_eq!(p["peer_type"], "global");
    assert_eq!(p["state"], "start");
    assert_eq!(p["info"], "Idle BGP Error: Bad Peer AS");
    assert_eq!(p["bgp_state"], "Idle");
    assert_eq!(
        p["last_error"],
        "sent NOTIFICATION: OPEN Message Error: Bad Peer AS"
    );
    assert_eq!(v["ipv4"][0]["since"], "2024-05-01T09:12:43Z");
    assert_eq!(v["ipv4"][0]["since_unix"], OLD);
    assert_eq!(v["ipv4"][0]["last_error"], serde_json::Value::Null);
    assert_eq!(v["ipv6"][0]["peer_address"], "fd00::10");

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_subcommands_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let srv = TestServer::start(GrpcListen::Unix(path.clone()), snapshot()).await;
    let g = grpc_arg(&path);

    let run = |args: Vec<&'static str>| {
        let g = g.clone();
        async move {
            let mut a: Vec<&str> = vec!["--grpc", &g, "node"];
            a.extend(args);
            let out = ctl(&a).await;
            assert!(out.status.success(), "{a:?}: {out:?}");
            stdout(&out)
        }
    };
    let json = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();

    let t = run(vec!["peers"]).await;
    assert!(t.starts_with("+--------------+-------+"), "{t}");
    assert!(
        t.contains("| 10.0.0.4     | 64512 | node specific     |"),
        "{t}"
    );
    let v = json(run(vec!["peers", "-o", "json"]).await);
    assert_eq!(v["peers"][0]["address"], "10.0.0.2");
    assert_eq!(v["peers"][0]["peer_type"], "node-mesh");
    assert_eq!(v["peers"][0]["state"], "Established");
    assert_eq!(v["peers"][0]["capabilities"]["hold_time"], 90);
    assert_eq!(v["peers"][0]["local_address"], "10.0.0.1");
    assert_eq!(v["peers"][2]["capabilities"], serde_json::Value::Null);

    let t = run(vec!["routes"]).await;
    assert!(
        t.contains("| 10.244.1.0/26 | remote-block | 10.0.0.2  | 10.0.0.2 |"),
        "{t}"
    );
    let v = json(run(vec!["routes", "-o", "json"]).await);
    assert_eq!(v["routes"][1]["kind"], "local-block");
    assert_eq!(v["routes"][1]["source_peer"], serde_json::Value::Null);

    let t = run(vec!["blocks"]).await;
    assert!(t.contains("| 10.244.0.0/26 | node1    |"), "{t}");
    assert!(!t.contains("node2"), "{t}");
    let v = json(run(vec!["blocks", "--all-nodes", "-o", "json"]).await);
    assert_eq!(v["blocks"].as_array().unwrap().len(), 2);
    assert_eq!(v["blocks"][1]["affinity"], "node2");

    let t = run(vec!["policy"]).await;
    assert!(t.contains("| calico-rs |        2 |        1 |"), "{t}");
    assert!(t.contains("Rejected policies\n"), "{t}");
    let v = json(run(vec!["policy", "-o", "json"]).await);
    assert_eq!(v["rejected"][0]["name"], "web");
    assert_eq!(v["last_apply_at"], "2024-05-01T09:12:43Z");

    let t = run(vec!["info"]).await;
    assert!(
        t.contains("| node1 | 64512 | 10.0.0.1  | 10.0.0.1/24 |"),
        "{t}"
    );
    let v = json(run(vec!["info", "-o", "json"]).await);
    assert_eq!(v["name"], "node1");
    assert_eq!(v["ready"], true);

    srv.stop().await;
}

/// A reader that quit early (`calicoctl-rs node status | head -0`): the message meets a closed
/// pipe, and the process ends as if killed by SIGPIPE (141), with no panic on stderr.
#[test]
fn closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let g = grpc_arg(&dir.path().join("nothing-here.sock"));
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_calicoctl-rs"))
        .args(["node", "status", "--grpc", &g])
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(calico_node::cli::BROKEN_PIPE_STATUS),
        "{out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test]
async fn no_daemon_prints_calicos_message_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let g = grpc_arg(&dir.path().join("nothing-here.sock"));
    for cmd in ["status", "peers", "routes"] {
        let out = ctl(&["node", cmd, "--grpc", &g]).await;
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(stdout(&out), "Calico process is not running.\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("nothing-here.sock"), "{err}");
    }
    let out = ctl(&["node", "status", "--grpc", &g, "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["running"], false);
    assert!(v["error"].as_str().unwrap().contains("nothing-here.sock"));

    // The default matches the daemon's default path (absent on a test machine without a daemon).
    let help = ctl(&["node", "status", "--help"]).await;
    assert!(stdout(&help).contains("unix:/var/run/calico-rs/node.sock"));

    // A bad address is a usage error, not "not running".
    let out = ctl(&["node", "status", "--grpc", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = ctl(&[
        "node",
        "status",
        "--grpc",
        "tcp:127.0.0.1:1",
        "--tls-cert",
        "/x",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
