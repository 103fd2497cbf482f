//! Golden tests of the text forms, with a fixed clock.

use super::*;

/// 2024-05-01T12:00:00Z.
const NOW: u64 = 1_714_564_800;
/// 2024-05-01T00:00:00Z.
const TODAY: u64 = 1_714_521_600;

fn peer(addr: &str, t: pb::PeerType, s: pb::BgpState, since: u64, err: &str) -> pb::Peer {
    pb::Peer {
        address: addr.into(),
        as_number: 64512,
        r#type: t as i32,
        state: s as i32,
        since,
        last_error: err.into(),
        ..Default::default()
    }
}

fn peers() -> Vec<pb::Peer> {
    vec![
        peer(
            "10.0.0.3",
            pb::PeerType::Global,
            pb::BgpState::Idle,
            TODAY - 3600,
            "sent NOTIFICATION: OPEN Message Error: Bad Peer AS",
        ),
        peer(
            "10.0.0.2",
            pb::PeerType::NodeMesh,
            pb::BgpState::Established,
            TODAY + 9 * 3600 + 12 * 60 + 43,
            "",
        ),
        peer(
            "10.0.0.10",
            pb::PeerType::NodeSpecific,
            pb::BgpState::Active,
            TODAY + 11 * 3600 + 59 * 60,
            "Connection refused (os error 111)",
        ),
        peer(
            "10.0.0.4",
            pb::PeerType::NodeMesh,
            pb::BgpState::Active,
            TODAY + 60,
            "",
        ),
    ]
}

#[test]
fn status_golden() {
    let want = "\
Calico process is running.

IPv4 BGP status
+--------------+-------------------+-------+------------+--------------------------------+
| PEER ADDRESS |     PEER TYPE     | STATE |   SINCE    |              INFO              |
+--------------+-------------------+-------+------------+--------------------------------+
| 10.0.0.2     | node-to-node mesh | up    | 09:12:43   | Established                    |
| 10.0.0.3     | global            | start | 2024-04-30 | Idle BGP Error: Bad Peer AS    |
| 10.0.0.4     | node-to-node mesh | start | 00:01:00   | Active                         |
| 10.0.0.10    | node specific     | start | 11:59:00   | Active Socket: Connection      |
|              |                   |       |            | refused                        |
+--------------+-------------------+-------+------------+--------------------------------+

IPv6 BGP status
No IPv6 peers found.

";
    assert_eq!(render_status(&peers(), &Clock::utc(NOW)), want);
}

#[test]
fn status_golden_calico_example() {
    // The example from the issue, byte for byte.
    let p = [peer(
        "10.0.0.2",
        pb::PeerType::NodeMesh,
        pb::BgpState::Established,
        TODAY + 9 * 3600 + 12 * 60 + 43,
        "",
    )];
    let want = "\
Calico process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| 10.0.0.2     | node-to-node mesh | up    | 09:12:43 | Established |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
No IPv6 peers found.

";
    assert_eq!(render_status(&p, &Clock::utc(NOW)), want);
}

#[test]
fn status_no_peers_and_ipv6() {
    let want = "\
Calico process is running.

IPv4 BGP status
No IPv4 peers found.

IPv6 BGP status
No IPv6 peers found.

";
    assert_eq!(render_status(&[], &Clock::utc(NOW)), want);

    let p = [peer(
        "fd00::2",
        pb::PeerType::RrServer,
        pb::BgpState::OpenSent,
        NOW - 5,
        "received NOTIFICATION: Cease: Administrative Reset",
    )];
    let want = "\
Calico process is running.

IPv4 BGP status
No IPv4 peers found.

IPv6 BGP status
+--------------+-----------------+-------+----------+--------------------------------+
| PEER ADDRESS |    PEER TYPE    | STATE |  SINCE   |              INFO              |
+--------------+-----------------+-------+----------+--------------------------------+
| fd00::2      | route reflector | start | 11:59:55 | OpenSent Received:             |
|              |                 |       |          | Administrative Reset           |
+--------------+-----------------+-------+----------+--------------------------------+

";
    assert_eq!(render_status(&p, &Clock::utc(NOW)), want);
}

#[test]
fn since_uses_local_date() {
    let clock = Clock::utc(NOW);
    assert_eq!(since(NOW - 1, &clock), "11:59:59");
    assert_eq!(since(TODAY - 1, &clock), "2024-04-30");
    assert_eq!(since(0, &clock), "");
    // At UTC+02:00 it is 14:00 on May 1st; 23:30Z on April 30th is 01:30 local, today.
    let plus2 = Clock {
        now: NOW,
        offset: FixedOffset::east_opt(7200).unwrap(),
    };
    assert_eq!(since(TODAY - 1800, &plus2), "01:30:00");
    assert_eq!(since(TODAY - 1800, &clock), "2024-04-30");
}

#[test]
fn bird_wording() {
    assert_eq!(
        bird_error("sent NOTIFICATION: OPEN Message Error: Bad Peer AS"),
        "BGP Error: Bad Peer AS"
    );
    assert_eq!(
        bird_error("sent NOTIFICATION: Hold Timer Expired"),
        "BGP Error: Hold Timer Expired"
    );
    assert_eq!(
        bird_error("received NOTIFICATION: Cease: Administrative Shutdown: \"maintenance\""),
        "Received: Administrative Shutdown: \"maintenance\""
    );
    assert_eq!(bird_error("connection lost"), "Socket: Connection closed");
    assert_eq!(
        bird_error("connection refused (os error 111)"),
        "Socket: Connection refused"
    );
    assert_eq!(
        bird_error("Socket: Connection refused"),
        "Socket: Connection refused"
    );
    let mut p = peer(
        "10.0.0.2",
        pb::PeerType::NodeMesh,
        pb::BgpState::Established,
        1,
        "x",
    );
    assert_eq!(
        (bird_state(&p), bird_info(&p)),
        ("up", "Established".into())
    );
    p.state = pb::BgpState::Connect as i32;
    p.last_error.clear();
    assert_eq!((bird_state(&p), bird_info(&p)), ("start", "Connect".into()));
}

#[test]
fn durations() {
    assert_eq!(duration(0), "0s");
    assert_eq!(duration(61), "1m1s");
    assert_eq!(duration(3600), "1h0m0s");
    assert_eq!(duration(90_061), "1d1h1m1s");
}

#[test]
fn peers_golden() {
    let mut p = peers();
    p[1].description = "node2".into();
    p[1].prefixes_received = 2;
    p[1].prefixes_accepted = 2;
    p[1].prefixes_advertised = 1;
    p[1].graceful_restart_stale = true;
    p.truncate(2);
    let want = "\
+--------------+-------+-------------------+-------+------------------------+------------+----------+----------+------------+--------------------------------+
| PEER ADDRESS |  AS   |     PEER TYPE     | NAME  |         STATE          |   SINCE    | RECEIVED | ACCEPTED | ADVERTISED |           LAST ERROR           |
+--------------+-------+-------------------+-------+------------------------+------------+----------+----------+------------+--------------------------------+
| 10.0.0.2     | 64512 | node-to-node mesh | node2 | Established (GR stale) | 09:12:43   |        2 |        2 |          1 | -                              |
| 10.0.0.3     | 64512 | global            | -     | Idle                   | 2024-04-30 |        0 |        0 |          0 | sent NOTIFICATION: OPEN        |
|              |       |                   |       |                        |            |          |          |            | Message Error: Bad Peer AS     |
+--------------+-------+-------------------+-------+------------------------+------------+----------+----------+------------+--------------------------------+
";
    assert_eq!(render_peers(&p, &Clock::utc(NOW)), want);
    assert_eq!(render_peers(&[], &Clock::utc(NOW)), "No BGP peers found.\n");
}

#[test]
fn routes_blocks_policy_node_golden() {
    let routes = [
        pb::Route {
            prefix: "10.244.1.0/26".into(),
            next_hops: vec!["10.0.0.2".into()],
            source_peer: "10.0.0.2".into(),
            installed: true,
            as_path: vec![],
            stale: false,
            kind: "remote-block".into(),
        },
        pb::Route {
            prefix: "10.244.0.0/26".into(),
            kind: "local-block".into(),
            ..Default::default()
        },
    ];
    let want = "\
+---------------+--------------+-----------+----------+---------+-----------+-------+
|    PREFIX     |     KIND     | NEXT HOPS |  SOURCE  | AS PATH | INSTALLED | STALE |
+---------------+--------------+-----------+----------+---------+-----------+-------+
| 10.244.1.0/26 | remote-block | 10.0.0.2  | 10.0.0.2 | -       | yes       | no    |
| 10.244.0.0/26 | local-block  | -         | local    | -       | no        | no    |
+---------------+--------------+-----------+----------+---------+-----------+-------+
";
    assert_eq!(render_routes(&routes), want);
    assert_eq!(render_routes(&[]), "No routes found.\n");

    let blocks = [pb::Block {
        cidr: "10.244.0.0/26".into(),
        affinity: "node1".into(),
        used: 3,
        free: 61,
        pool: "default-ipv4-ippool".into(),
    }];
    let want = "\
+---------------+----------+---------------------+------+------+
|     CIDR      | AFFINITY |        POOL         | USED | FREE |
+---------------+----------+---------------------+------+------+
| 10.244.0.0/26 | node1    | default-ipv4-ippool |    3 |   61 |
+---------------+----------+---------------------+------+------+
";
    assert_eq!(render_blocks(&blocks), want);

    let policy = pb::PolicyStatus {
        policies_compiled: 3,
        rejected: vec![pb::RejectedPolicy {
            namespace: "prod".into(),
            name: "web".into(),
            reason: "spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR \"10.0.0.0/33\"".into(),
        }],
        rules: 42,
        set_elements: 7,
        last_apply_micros: 12_345,
        last_apply_at: NOW - 30,
        endpoints: 5,
        table: "calico-rs".into(),
    };
    let want = "\
+-----------+----------+----------+-----------+-------+--------------+------------+------------+
|   TABLE   | POLICIES | REJECTED | ENDPOINTS | RULES | SET ELEMENTS | LAST APPLY | APPLIED AT |
+-----------+----------+----------+-----------+-------+--------------+------------+------------+
| calico-rs |        3 |        1 |         5 |    42 |            7 |    12.3 ms | 11:59:30   |
+-----------+----------+----------+-----------+-------+--------------+------------+------------+

Rejected policies
+-----------+------+---------------------------------------+
| NAMESPACE | NAME |                REASON                 |
+-----------+------+---------------------------------------+
| prod      | web  | spec.ingress[0].from[1].ipBlock.cidr: |
|           |      | invalid CIDR \"10.0.0.0/33\"            |
+-----------+------+---------------------------------------+
";
    assert_eq!(render_policy(&policy, &Clock::utc(NOW)), want);

    let node = pb::Node {
        name: "node1".into(),
        addresses: vec!["10.0.0.1/24".into(), "fd00::1/64".into()],
        as_number: 64512,
        router_id: "10.0.0.1".into(),
        version: "0.1.0".into(),
        started_at: NOW - 3661,
        uptime_seconds: 3661,
        ready: false,
        live: true,
        not_ready_reasons: vec!["BGP not synced".into()],
        resource_errors: vec![],
    };
    let want = "\
+-------+-------+-----------+-------------+---------+--------+-------+------+
| NAME  |  AS   | ROUTER ID |  ADDRESSES  | VERSION | UPTIME | READY | LIVE |
+-------+-------+-----------+-------------+---------+--------+-------+------+
| node1 | 64512 | 10.0.0.1  | 10.0.0.1/24 | 0.1.0   | 1h1m1s | no    | yes  |
|       |       |           | fd00::1/64  |         |        |       |      |
+-------+-------+-----------+-------------+---------+--------+-------+------+
Not ready: BGP not synced
";
    assert_eq!(render_node(&node), want);

    let errors = [pb::ResourceError {
        origin: "nodes.yaml doc 2".into(),
        kind: "Node".into(),
        name: "node2".into(),
        field: "spec.bgp.ipv4Address".into(),
        message: "invalid address".into(),
        severity: "error".into(),
    }];
    let want = "\
+----------+------------------+------+-------+----------------------+-----------------+
| SEVERITY |      ORIGIN      | KIND | NAME  |        FIELD         |     MESSAGE     |
+----------+------------------+------+-------+----------------------+-----------------+
| error    | nodes.yaml doc 2 | Node | node2 | spec.bgp.ipv4Address | invalid address |
+----------+------------------+------+-------+----------------------+-----------------+
";
    assert_eq!(render_errors(&errors), want);
    assert_eq!(render_errors(&[]), "No datastore errors.\n");
    assert_eq!(
        errors_hint(&errors),
        "\n1 datastore document has problems: see calicoctl-rs node errors\n"
    );
    assert_eq!(errors_hint(&[]), "");
}
