//! The status API end to end, with a fake snapshot source in place of the daemon: a server on a
//! temporary Unix socket (mode, stale and live sockets, every RPC, `WatchPeers` latency), mutual
//! TLS on loopback TCP (`tls`), and the `calicoctl-rs` binary against it (`cli`).
//!
//! Run with `cargo test -p calico-node --test grpc`.

mod cli;
mod tls;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use calico_node::grpc::{self, BoundAddr, ClientCfg, GrpcAddr, GrpcError, GrpcListen};
use calico_node::status::{
    BlockView, NodeSnapshot, PeerType, PeerView, RejectedPolicyView, RouteKind, RouteView,
};
use calico_proto::v1 as pb;
use calico_proto::v1::node_status_client::NodeStatusClient;
use futures::StreamExt;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// 2024-05-01T09:12:43Z: a fixed "since" so SINCE shows a date whatever the day of the run.
pub const OLD: u64 = 1_714_554_763;

pub fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn peer(
    addr: &str,
    peer_type: PeerType,
    state: bgp::State,
    since: SystemTime,
    last_error: Option<&str>,
) -> PeerView {
    let established = state == bgp::State::Established;
    PeerView {
        peer_type,
        name: String::new(),
        bgp: bgp::PeerStatus {
            address: addr.parse().unwrap(),
            remote_as: 64512,
            description: String::new(),
            ebgp: false,
            rr_client: false,
            state,
            since,
            local_address: established.then(|| "10.0.0.1".parse().unwrap()),
            negotiated: established.then(|| bgp::speaker::NegotiatedStatus {
                hold_time: 90,
                keepalive: 30,
                four_octet_as: true,
                route_refresh: true,
                graceful_restart: true,
                families: vec![bgp::Family::Ipv4Unicast],
                peer_router_id: Ipv4Addr::new(10, 0, 0, 2),
            }),
            prefixes_received: if established { 2 } else { 0 },
            prefixes_accepted: if established { 2 } else { 0 },
            prefixes_advertised: if established { 1 } else { 0 },
            last_error: last_error.map(String::from),
            gr_stale: false,
            end_of_rib: established,
        },
    }
}

/// A node with peers in several states, routes, blocks (one not ours) and a rejected policy.
pub fn snapshot() -> NodeSnapshot {
    let mut s = NodeSnapshot::empty("node1");
    s.node.addresses = vec!["10.0.0.1/24".into()];
    s.node.as_number = 64512;
    s.node.router_id = "10.0.0.1".into();
    s.node.ready = true;
    s.node.not_ready.clear();
    s.peers = vec![
        peer(
            "10.0.0.2",
            PeerType::NodeMesh,
            bgp::State::Established,
            at(OLD),
            None,
        ),
        peer(
            "10.0.0.3",
            PeerType::Global,
            bgp::State::Idle,
            at(OLD + 60),
            Some("sent NOTIFICATION: OPEN Message Error: Bad Peer AS"),
        ),
        peer(
            "10.0.0.4",
            PeerType::NodeSpecific,
            bgp::State::Active,
            at(OLD + 120),
            Some("Connection refused (os error 111)"),
        ),
    ];
    s.routes = std::sync::Arc::new(vec![
        RouteView {
            prefix: "10.244.1.0/26".parse().unwrap(),
            kind: RouteKind::RemoteBlock,
            next_hops: vec!["10.0.0.2".parse().unwrap()],
            source_peer: Some("10.0.0.2".parse().unwrap()),
            as_path: vec![],
            installed: true,
            stale: false,
        },
        RouteView {
            prefix: "10.244.0.0/26".parse().unwrap(),
            kind: RouteKind::LocalBlock,
            next_hops: vec![],
            source_peer: None,
            as_path: vec![],
            installed: true,
            stale: false,
        },
    ]);
    for (cidr, node) in [("10.244.0.0/26", "node1"), ("10.244.1.0/26", "node2")] {
        s.blocks.push(BlockView {
            cidr: cidr.parse().unwrap(),
            affinity: Some(node.into()),
            used: 3,
            free: 61,
            pool: "default-ipv4-ippool".into(),
        });
    }
    s.policy.table = "calico-rs".into();
    s.policy.policies_compiled = 2;
    s.policy.rules = 17;
    s.policy.set_elements = 4;
    s.policy.endpoints = 3;
    s.policy.last_apply_micros = 1500;
    s.policy.last_apply_at = Some(at(OLD));
    s.policy.rejected = vec![RejectedPolicyView {
        namespace: "prod".into(),
        name: "web".into(),
        reason: "spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR \"10.0.0.0/33\"".into(),
    }];
    s
}

/// A server fed by a `watch` we control.
pub struct TestServer {
    pub addr: BoundAddr,
    pub tx: watch::Sender<Arc<NodeSnapshot>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), GrpcError>>,
}

impl TestServer {
    pub async fn start(listen: GrpcListen, snap: NodeSnapshot) -> TestServer {
        let bound = grpc::bind(listen).await.expect("bind");
        let addr = bound.local_addr();
        let (tx, rx) = watch::channel(Arc::new(snap));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(rx, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            tx,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server and waits for it (bounded).
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("server stops within 5 s")
            .unwrap()
            .unwrap();
    }

    pub fn socket(&self) -> &Path {
        match &self.addr {
            BoundAddr::Unix(p) => p,
            BoundAddr::Tcp(_) => panic!("not a unix server"),
        }
    }
}

pub async fn unix_client(path: &Path) -> NodeStatusClient<Channel> {
    grpc::connect(&ClientCfg {
        addr: GrpcAddr::Unix(path.to_path_buf()),
        ..Default::default()
    })
    .await
    .expect("connect")
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn unix_socket_is_0600_and_every_rpc_answers_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // The parent directory does not exist yet: the server creates it.
    let path = dir.path().join("run/calico-rs/node.sock");
    let srv = TestServer::start(GrpcListen::Unix(path.clone()), snapshot()).await;
    assert_eq!(srv.socket(), path);
    assert_eq!(mode(&path), 0o600, "socket mode");
    // No temporary name left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("node.sock")]);

    let mut c = unix_client(&path).await;
    let node = c
        .get_node(pb::GetNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.name, "node1");
    assert_eq!(node.as_number, 64512);
    assert_eq!(node.addresses, vec!["10.0.0.1/24"]);
    assert!(node.ready && node.live);

    let peers = c
        .list_peers(pb::ListPeersRequest {})
        .await
        .unwrap()
        .into_inner()
        .peers;
    let addrs: Vec<&str> = peers.iter().map(|p| p.address.as_str()).collect();
    assert_eq!(addrs, ["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
    assert_eq!(peers[0].state(), pb::BgpState::Established);
    assert_eq!(peers[0].r#type(), pb::PeerType::NodeMesh);
    assert_eq!(peers[0].since, OLD);
    let caps = peers[0].capabilities.as_ref().expect("capabilities");
    assert_eq!(
        (caps.hold_time, caps.families.as_slice()),
        (90, &["ipv4-unicast".to_string()][..])
    );
    assert_eq!(peers[0].prefixes_received, 2);
    assert_eq!(peers[0].local_address, "10.0.0.1");
    assert_eq!(peers[1].state(), pb::BgpState::Idle);
    assert_eq!(
        peers[1].last_error,
        "sent NOTIFICATION: OPEN Message Error: Bad Peer AS"
    );
    assert!(peers[1].capabilities.is_none());

    let routes = c
        .list_routes(pb::ListRoutesRequest {})
        .await
        .unwrap()
        .into_inner()
        .routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].prefix, "10.244.1.0/26");
    assert_eq!(routes[0].kind, "remote-block");
    assert_eq!(routes[0].next_hops, vec!["10.0.0.2"]);
    assert_eq!(routes[1].source_peer, "");

    let own = c
        .list_blocks(pb::ListBlocksRequest { all_nodes: false })
        .await
        .unwrap()
        .into_inner()
        .blocks;
    assert_eq!(own.len(), 1);
    assert_eq!(
        (own[0].cidr.as_str(), own[0].used, own[0].free),
        ("10.244.0.0/26", 3, 61)
    );
    let all = c
        .list_blocks(pb::ListBlocksRequest { all_nodes: true })
        .await
        .unwrap()
        .into_inner()
        .blocks;
    assert_eq!(all.len(), 2);

    let pol = c
        .get_policy_status(pb::GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (pol.policies_compiled, pol.rules, pol.set_elements),
        (2, 17, 4)
    );
    assert_eq!(pol.rejected.len(), 1);
    assert_eq!(pol.last_apply_at, OLD);

    // Handlers read the latest snapshot.
    srv.tx.send_modify(|s| Arc::make_mut(s).peers.clear());
    let peers = c.list_peers(pb::ListPeersRequest {}).await.unwrap();
    assert!(peers.into_inner().peers.is_empty());

    srv.stop().await;
    assert!(!path.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn stale_socket_is_replaced_live_one_and_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");

    // A socket left behind by a dead daemon.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let srv = TestServer::start(GrpcListen::Unix(path.clone()), snapshot()).await;
    assert_eq!(mode(&path), 0o600);

    // A second daemon on the same path is refused, and the first keeps serving.
    let err = grpc::bind(GrpcListen::Unix(path.clone()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, GrpcError::SocketInUse { .. }), "{err}");
    let mut c = unix_client(&path).await;
    c.get_node(pb::GetNodeRequest {}).await.unwrap();
    srv.stop().await;

    // A regular file is never removed.
    std::fs::write(&path, b"not a socket").unwrap();
    let err = grpc::bind(GrpcListen::Unix(path.clone()))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, GrpcError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

/// Opens a `WatchPeers` stream.
async fn watch_peers(c: &mut NodeStatusClient<Channel>) -> tonic::Streaming<pb::PeerEvent> {
    c.watch_peers(pb::WatchPeersRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn next_event(s: &mut tonic::Streaming<pb::PeerEvent>, within: Duration) -> pb::PeerEvent {
    tokio::time::timeout(within, s.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event")
}

#[tokio::test]
async fn watch_peers_snapshot_then_each_change_within_100ms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let srv = TestServer::start(GrpcListen::Unix(path.clone()), snapshot()).await;
    let mut c = unix_client(&path).await;
    let mut stream = watch_peers(&mut c).await;

    let first = next_event(&mut stream, Duration::from_secs(2)).await;
    assert!(first.snapshot);
    assert_eq!(first.peers.len(), 3);

    // Only counters change: nothing is sent. Then 10.0.0.4 comes up: one event, fast.
    srv.tx.send_modify(|s| {
        Arc::make_mut(s).peers[0].bgp.prefixes_received = 9;
    });
    let mut worst = Duration::ZERO;
    for (i, state) in [
        bgp::State::Connect,
        bgp::State::OpenSent,
        bgp::State::OpenConfirm,
        bgp::State::Established,
        bgp::State::Idle,
    ]
    .into_iter()
    .enumerate()
    {
        let t0 = Instant::now();
        srv.tx.send_modify(|s| {
            let p = &mut Arc::make_mut(s).peers[2].bgp;
            p.state = state;
            p.since = at(OLD + 1000 + i as u64);
        });
        let ev = next_event(&mut stream, Duration::from_millis(100)).await;
        worst = worst.max(t0.elapsed());
        assert!(!ev.snapshot);
        assert_eq!(ev.peers.len(), 1, "{ev:?}");
        assert_eq!(ev.peers[0].address, "10.0.0.4");
        assert_eq!(ev.peers[0].state(), convert_state(state));
    }
    assert!(
        worst < Duration::from_millis(100),
        "worst latency {worst:?}"
    );

    // A new peer and a removed one.
    srv.tx.send_modify(|s| {
        let s = Arc::make_mut(s);
        s.peers.remove(1);
        s.peers.push(peer(
            "fd00::2",
            PeerType::RrServer,
            bgp::State::Connect,
            at(OLD),
            None,
        ));
    });
    let added = next_event(&mut stream, Duration::from_millis(100)).await;
    assert_eq!(added.peers[0].address, "fd00::2");
    let removed = next_event(&mut stream, Duration::from_millis(100)).await;
    assert_eq!(removed.removed, vec!["10.0.0.3"]);
    assert!(removed.peers.is_empty());

    // Shutdown ends open streams, so the server can stop.
    srv.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("stream ends");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

fn convert_state(s: bgp::State) -> pb::BgpState {
    calico_node::grpc::convert::bgp_state(s)
}

#[tokio::test]
async fn watch_stream_ends_when_the_daemon_drops_its_sender() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let bound = grpc::bind(GrpcListen::Unix(path.clone())).await.unwrap();
    let (tx, rx) = watch::channel(Arc::new(snapshot()));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(rx, async move {
        let _ = stopped.await;
    }));
    let mut c = unix_client(&path).await;
    let mut stream = watch_peers(&mut c).await;
    assert!(
        next_event(&mut stream, Duration::from_secs(2))
            .await
            .snapshot
    );
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "{end:?}");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn plain_tcp_needs_the_insecure_flag() {
    let err = GrpcListen::parse("tcp:127.0.0.1:0", None, false).unwrap_err();
    assert!(err.to_string().contains("--grpc-insecure-tcp"), "{err}");
    // The client refuses too, unless told.
    let cfg = ClientCfg {
        addr: "tcp:127.0.0.1:1".parse().unwrap(),
        ..Default::default()
    };
    let err = grpc::connect(&cfg).await.err().unwrap();
    assert!(matches!(err, GrpcError::ClientPlainTcp { .. }), "{err}");

    let listen = GrpcListen::parse("tcp:127.0.0.1:0", None, true).unwrap();
    let srv = TestServer::start(listen, snapshot()).await;
    let BoundAddr::Tcp(addr) = srv.addr else {
        panic!()
    };
    assert_eq!(addr.ip(), IpAddr::from([127, 0, 0, 1]));
    let mut c = grpc::connect(&ClientCfg {
        addr: GrpcAddr::Tcp(addr),
        tls: None,
        insecure_tcp: true,
    })
    .await
    .unwrap();
    let node = c
        .get_node(pb::GetNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.name, "node1");
    srv.stop().await;
}

#[tokio::test]
async fn request_timeout_does_not_cut_an_open_watch_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.sock");
    let srv = TestServer::start(GrpcListen::Unix(path.clone()), snapshot()).await;
    let cfg = ClientCfg {
        addr: GrpcAddr::Unix(path.clone()),
        ..Default::default()
    };
    let mut c = grpc::connect_with(&cfg, Some(Duration::from_millis(100)))
        .await
        .unwrap();
    let mut stream = watch_peers(&mut c).await;
    assert!(
        next_event(&mut stream, Duration::from_secs(2))
            .await
            .snapshot
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.tx.send_modify(|s| {
        Arc::make_mut(s).peers[1].bgp.state = bgp::State::Connect;
    });
    let ev = next_event(&mut stream, Duration::from_secs(1)).await;
    assert_eq!(ev.peers[0].address, "10.0.0.3");
    srv.stop().await;
}
