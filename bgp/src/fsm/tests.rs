//! Scenario tests of the pure FSM: time is passed in, so no test sleeps.

use super::*;
use crate::wire::{code, subcode, RouteRefresh};

fn cfg() -> FsmCfg {
    let mut c = FsmCfg::new(65001, 65002, "10.0.0.1".parse().unwrap());
    c.hold_time = 9;
    c
}

fn peer_open(asn: u32, hold: u16) -> Open {
    Open {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: hold,
        bgp_id: "10.0.0.2".parse().unwrap(),
        capabilities: vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAs(asn),
        ],
    }
}

fn sent(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// Drive a machine to Established; returns it and the time.
fn established() -> (Fsm, Instant) {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    assert!(f.handle(Event::Start, t).contains(&Action::Connect));
    assert_eq!(f.state(), State::Connect);
    let a = f.handle(Event::TcpConnected, t);
    assert!(matches!(sent(&a)[..], [Message::Open(_)]));
    assert_eq!(f.state(), State::OpenSent);
    let a = f.handle(Event::Message(Message::Open(peer_open(65002, 30))), t);
    assert_eq!(sent(&a), vec![&Message::Keepalive]);
    assert_eq!(f.state(), State::OpenConfirm);
    let a = f.handle(Event::Message(Message::Keepalive), t);
    assert_eq!(f.state(), State::Established);
    let n = a
        .iter()
        .find_map(|a| match a {
            Action::Established(n) => Some(n.clone()),
            _ => None,
        })
        .expect("Established action");
    assert_eq!(n.hold_time, 9, "hold time is the smaller of the two");
    assert_eq!(n.keepalive, 3);
    assert_eq!(n.families, vec![Family::Ipv4Unicast]);
    assert!(n.four_octet_as && n.route_refresh && n.ebgp);
    (f, t)
}

#[test]
fn reaches_established_and_keeps_alive() {
    let (mut f, t) = established();
    assert_eq!(f.next_deadline(), Some(t + Duration::from_secs(3)));
    let a = f.handle(Event::Tick, t + Duration::from_secs(3));
    assert_eq!(sent(&a), vec![&Message::Keepalive]);
    // A KEEPALIVE from the peer pushes the hold timer out.
    f.handle(
        Event::Message(Message::Keepalive),
        t + Duration::from_secs(8),
    );
    let a = f.handle(Event::Tick, t + Duration::from_secs(10));
    assert_eq!(f.state(), State::Established, "{a:?}");
}

#[test]
fn hold_timer_expiry_sends_notification_and_goes_idle() {
    let (mut f, t) = established();
    let a = f.handle(Event::Tick, t + Duration::from_secs(9));
    assert_eq!(
        sent(&a),
        vec![&Message::Notification(Notification::new(
            code::HOLD_TIMER_EXPIRED,
            0
        ))]
    );
    assert!(a.contains(&Action::Disconnect));
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Down(DownReason::NotificationSent(_)))));
    assert_eq!(f.state(), State::Idle);
    // The IdleHoldTimer restarts it.
    let d = f.next_deadline().expect("idle hold timer");
    let a = f.handle(Event::Tick, d);
    assert!(a.contains(&Action::Connect));
    assert_eq!(f.state(), State::Connect);
}

#[test]
fn zero_hold_time_means_no_timers() {
    let t = Instant::now();
    let mut c = cfg();
    c.hold_time = 0;
    let mut f = Fsm::new(c);
    f.handle(Event::Start, t);
    f.handle(Event::TcpConnected, t);
    f.handle(Event::Message(Message::Open(peer_open(65002, 90))), t);
    f.handle(Event::Message(Message::Keepalive), t);
    assert_eq!(f.state(), State::Established);
    assert_eq!(f.next_deadline(), None);
}

#[test]
fn open_with_wrong_as_is_rejected() {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t);
    f.handle(Event::TcpConnected, t);
    let a = f.handle(Event::Message(Message::Open(peer_open(65009, 90))), t);
    match sent(&a)[..] {
        [Message::Notification(n)] => {
            assert_eq!(
                (n.code, n.subcode),
                (code::OPEN_MESSAGE_ERROR, subcode::BAD_PEER_AS)
            )
        }
        ref other => panic!("expected NOTIFICATION, got {other:?}"),
    }
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn open_checks_hold_time_version_and_identifier() {
    let cases: Vec<(Open, u8)> = vec![
        (peer_open(65002, 2), subcode::UNACCEPTABLE_HOLD_TIME),
        (
            Open {
                version: 3,
                ..peer_open(65002, 90)
            },
            subcode::UNSUPPORTED_VERSION_NUMBER,
        ),
        (
            Open {
                bgp_id: "0.0.0.0".parse().unwrap(),
                ..peer_open(65002, 90)
            },
            subcode::BAD_BGP_IDENTIFIER,
        ),
    ];
    for (open, sub) in cases {
        let t = Instant::now();
        let mut f = Fsm::new(cfg());
        f.handle(Event::Start, t);
        f.handle(Event::TcpConnected, t);
        let a = f.handle(Event::Message(Message::Open(open.clone())), t);
        assert!(
            sent(&a)
                .iter()
                .any(|m| matches!(m, Message::Notification(n) if n.subcode == sub)),
            "{open:?} -> {a:?}"
        );
    }
}

#[test]
fn ibgp_same_router_id_is_rejected() {
    let t = Instant::now();
    let mut c = cfg();
    c.remote_as = 65001;
    let mut f = Fsm::new(c);
    f.handle(Event::Start, t);
    f.handle(Event::TcpConnected, t);
    let mut open = peer_open(65001, 90);
    open.bgp_id = "10.0.0.1".parse().unwrap();
    let a = f.handle(Event::Message(Message::Open(open)), t);
    assert!(sent(&a).iter().any(
        |m| matches!(m, Message::Notification(n) if n.subcode == subcode::BAD_BGP_IDENTIFIER)
    ));
}

#[test]
fn connect_retry_and_passive() {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t);
    f.handle(Event::TcpFailed, t);
    assert_eq!(f.state(), State::Active);
    let a = f.handle(Event::Tick, t + Duration::from_secs(5));
    assert!(a.contains(&Action::Connect));
    assert_eq!(f.state(), State::Connect);

    let mut c = cfg();
    c.passive = true;
    let mut p = Fsm::new(c);
    let a = p.handle(Event::Start, t);
    assert!(!a.contains(&Action::Connect));
    assert_eq!(p.state(), State::Active);
    let a = p.handle(Event::Tick, t + Duration::from_secs(60));
    assert!(
        !a.contains(&Action::Connect),
        "a passive peer never connects out"
    );
    p.handle(Event::TcpConnected, t);
    assert_eq!(p.state(), State::OpenSent);
}

#[test]
fn open_sent_hold_is_four_minutes_and_tcp_failure_goes_active() {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t);
    f.handle(Event::TcpConnected, t);
    assert_eq!(f.next_deadline(), Some(t + OPEN_SENT_HOLD));
    f.handle(Event::TcpFailed, t);
    assert_eq!(f.state(), State::Active);
}

#[test]
fn unexpected_message_is_an_fsm_error() {
    let t = Instant::now();
    let mut f = Fsm::new(cfg());
    f.handle(Event::Start, t);
    f.handle(Event::TcpConnected, t);
    let a = f.handle(Event::Message(Message::Keepalive), t);
    assert!(sent(&a).iter().any(
        |m| matches!(m, Message::Notification(n) if n.code == code::FSM_ERROR
        && n.subcode == subcode::UNEXPECTED_MESSAGE_IN_OPEN_SENT)
    ));
}

#[test]
fn updates_and_refresh_reach_the_speaker() {
    let (mut f, t) = established();
    let a = f.handle(Event::Message(Message::Update(Update::default())), t);
    assert_eq!(a, vec![Action::Update(Update::default())]);
    let a = f.handle(
        Event::Message(Message::RouteRefresh(RouteRefresh {
            family: Family::Ipv4Unicast,
        })),
        t,
    );
    assert_eq!(a, vec![Action::RouteRefresh(Family::Ipv4Unicast)]);
    // Not negotiated: ignored.
    let a = f.handle(
        Event::Message(Message::RouteRefresh(RouteRefresh {
            family: Family::Ipv6Unicast,
        })),
        t,
    );
    assert!(a.is_empty());
}

#[test]
fn stop_sends_cease_and_stays_idle() {
    let (mut f, t) = established();
    let a = f.handle(Event::Stop(None), t);
    assert!(sent(&a).iter().any(
        |m| matches!(m, Message::Notification(n) if n.code == code::CEASE
        && n.subcode == subcode::ADMINISTRATIVE_SHUTDOWN)
    ));
    assert_eq!(f.state(), State::Idle);
    assert_eq!(
        f.next_deadline(),
        None,
        "a stopped FSM does not restart itself"
    );
}

#[test]
fn notification_received_goes_idle_with_backoff() {
    let (mut f, t) = established();
    let a = f.handle(
        Event::Message(Message::Notification(Notification::new(code::CEASE, 4))),
        t,
    );
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Down(DownReason::NotificationReceived(_)))));
    let first = f.next_deadline().unwrap() - t;
    f.handle(Event::Tick, t + first);
    f.handle(Event::TcpFailed, t + first);
    f.handle(Event::TcpConnected, t + first);
    f.handle(
        Event::Message(Message::Notification(Notification::new(code::CEASE, 5))),
        t + first,
    );
    let second = f.next_deadline().unwrap() - (t + first);
    assert!(second > first, "backoff grows: {first:?} then {second:?}");
}

#[test]
fn graceful_restart_capability_and_down_reasons() {
    let t = Instant::now();
    let mut c = cfg();
    c.graceful_restart = Some(GrCfg {
        restart_time: 120,
        restarting: true,
        forwarding_preserved: true,
    });
    let mut f = Fsm::new(c);
    let open = f.local_open();
    let gr = open.graceful_restart().expect("GR capability");
    assert!(gr.restarting);
    assert_eq!(gr.restart_time, 120);
    assert!(gr.families.iter().all(|(_, fwd)| *fwd));
    f.handle(Event::Start, t);
    f.handle(Event::TcpConnected, t);
    let mut po = peer_open(65002, 90);
    po.capabilities
        .push(Capability::GracefulRestart(GracefulRestartCap {
            restarting: false,
            notification: false,
            restart_time: 90,
            families: vec![(Family::Ipv4Unicast, false)],
        }));
    f.handle(Event::Message(Message::Open(po)), t);
    f.handle(Event::Message(Message::Keepalive), t);
    let n = f.negotiated().unwrap().clone();
    assert!(n.graceful_restart());
    assert!(DownReason::ConnectionLost.graceful(&n));
    assert!(!DownReason::NotificationReceived(Notification::new(code::CEASE, 2)).graceful(&n));
    assert!(!DownReason::Stopped.graceful(&n));
}

#[test]
fn graceful_restart_on_notification_needs_the_n_bit_on_both_sides() {
    let (f, _) = established_with(
        true,
        vec![Capability::GracefulRestart(GracefulRestartCap {
            restarting: false,
            notification: true,
            restart_time: 90,
            families: vec![(Family::Ipv4Unicast, true)],
        })],
    );
    let mut n = f.negotiated().unwrap().clone();
    let cease = DownReason::NotificationReceived(Notification::new(code::CEASE, 2));
    let hard = DownReason::NotificationSent(Notification::new(code::CEASE, subcode::HARD_RESET));
    // RFC 8538 2: our OPEN has no N bit, so a NOTIFICATION ends graceful restart.
    assert!(!n.local_gr_notification);
    assert!(!cease.graceful(&n));
    n.local_gr_notification = true;
    assert!(cease.graceful(&n));
    assert!(!hard.graceful(&n), "Hard Reset (RFC 8538 3)");
}

#[test]
fn collision_keeps_connection_of_higher_identifier() {
    let a: Ipv4Addr = "10.0.0.9".parse().unwrap();
    let b: Ipv4Addr = "10.0.0.10".parse().unwrap();
    assert!(!collision_winner(a, b));
    assert!(collision_winner(b, a));
}

#[test]
fn two_octet_peer_gets_as_trans_in_open() {
    let mut c = cfg();
    c.local_as = 4_200_000_001;
    let f = Fsm::new(c);
    let o = f.local_open();
    assert_eq!(o.my_as, AS_TRANS);
    assert_eq!(o.asn(), 4_200_000_001);
}

fn gr_cap(restarting: bool) -> Capability {
    Capability::GracefulRestart(GracefulRestartCap {
        restarting,
        notification: false,
        restart_time: 120,
        families: vec![(Family::Ipv4Unicast, true)],
    })
}

/// A machine Established with a peer whose OPEN carried `peer_caps` too; `local_gr`: we do GR.
fn established_with(local_gr: bool, peer_caps: Vec<Capability>) -> (Fsm, Instant) {
    let t = Instant::now();
    let mut c = cfg();
    if local_gr {
        c.graceful_restart = Some(GrCfg {
            restart_time: 30,
            restarting: false,
            forwarding_preserved: true,
        });
    }
    let mut f = Fsm::new(c);
    f.handle(Event::Start, t);
    f.handle(Event::TcpConnected, t);
    let mut po = peer_open(65002, 30);
    po.capabilities.extend(peer_caps);
    f.handle(Event::Message(Message::Open(po)), t);
    f.handle(Event::Message(Message::Keepalive), t);
    assert_eq!(f.state(), State::Established);
    (f, t)
}

/// The peer's second connection as the session runs it: a passive machine of its own that sends
/// our OPEN and checks the peer's. Returns it once the peer's OPEN (with `caps` added) passed.
fn held_connection(main: &Fsm, caps: Vec<Capability>, t: Instant) -> Fsm {
    let mut c = main.cfg.clone();
    c.passive = true;
    let mut f = Fsm::new(c);
    f.handle(Event::Start, t);
    let a = f.handle(Event::TcpConnected, t);
    assert!(matches!(sent(&a)[..], [Message::Open(_)]), "{a:?}");
    let mut po = peer_open(65002, 30);
    po.capabilities.extend(caps);
    let a = f.handle(Event::Message(Message::Open(po)), t);
    assert!(a.contains(&Action::StateChange {
        from: State::OpenSent,
        to: State::OpenConfirm
    }));
    f
}

#[test]
fn second_connection_while_established_is_closed_without_graceful_restart_in_its_open() {
    let (main, t) = established_with(true, vec![gr_cap(false)]);
    let held = held_connection(&main, vec![], t);
    let open = held.peer_open().unwrap();
    assert_eq!(resolve_collision(&main, true, open), Collision::KeepCurrent);
    assert_eq!(
        resolve_collision(&main, false, open),
        Collision::KeepCurrent
    );
    assert_eq!(
        main.state(),
        State::Established,
        "connecting alone changes nothing"
    );
}

#[test]
fn second_connection_with_graceful_restart_while_established_means_the_peer_restarted() {
    let (main, t) = established_with(true, vec![gr_cap(false)]);
    for restarting in [true, false] {
        let held = held_connection(&main, vec![gr_cap(restarting)], t);
        let open = held.peer_open().unwrap();
        assert_eq!(
            resolve_collision(&main, true, open),
            Collision::PeerRestarted
        );
        assert_eq!(
            resolve_collision(&main, false, open),
            Collision::PeerRestarted
        );
    }
}

#[test]
fn peer_restart_needs_graceful_restart_negotiated_in_the_established_session() {
    // We do not do GR: the old session's routes could not be kept, so it stays (RFC 4271 6.8).
    let (main, t) = established_with(false, vec![gr_cap(false)]);
    let held = held_connection(&main, vec![gr_cap(true)], t);
    assert_eq!(
        resolve_collision(&main, true, held.peer_open().unwrap()),
        Collision::KeepCurrent
    );
    // The peer did not offer GR in the Established session.
    let (main, t) = established_with(true, vec![]);
    let held = held_connection(&main, vec![gr_cap(true)], t);
    assert_eq!(
        resolve_collision(&main, true, held.peer_open().unwrap()),
        Collision::KeepCurrent
    );
}

#[test]
fn collision_before_established_goes_by_bgp_identifier() {
    let t = Instant::now();
    // Ours is 10.0.0.1, the peer 10.0.0.2: the peer's connection wins over the one we opened.
    let mut main = Fsm::new(cfg());
    main.handle(Event::Start, t);
    main.handle(Event::TcpConnected, t);
    assert_eq!(main.state(), State::OpenSent);
    let held = held_connection(&main, vec![], t);
    let open = held.peer_open().unwrap().clone();
    assert_eq!(resolve_collision(&main, true, &open), Collision::TakeNew);
    // Both connections came from the peer: the first one stays.
    assert_eq!(
        resolve_collision(&main, false, &open),
        Collision::KeepCurrent
    );
    // With the higher identifier, the connection we opened stays, also in OpenConfirm.
    let mut c = cfg();
    c.router_id = "10.0.0.3".parse().unwrap();
    let mut main = Fsm::new(c);
    main.handle(Event::Start, t);
    main.handle(Event::TcpConnected, t);
    assert_eq!(
        resolve_collision(&main, true, &open),
        Collision::KeepCurrent
    );
    main.handle(Event::Message(Message::Open(peer_open(65002, 30))), t);
    assert_eq!(main.state(), State::OpenConfirm);
    assert_eq!(
        resolve_collision(&main, true, &open),
        Collision::KeepCurrent
    );
}

#[test]
fn collision_after_the_current_connection_failed_takes_the_new_one() {
    let (mut main, t) = established_with(true, vec![gr_cap(false)]);
    let held = held_connection(&main, vec![], t);
    main.handle(Event::TcpFailed, t);
    assert_eq!(main.state(), State::Idle);
    assert_eq!(
        resolve_collision(&main, true, held.peer_open().unwrap()),
        Collision::TakeNew
    );
}
