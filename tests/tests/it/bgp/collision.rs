//! Connection collision (RFC 4271 6.8): two of our speakers that both connect out at the same
//! moment end with one session on one TCP connection. Which one depends on timing: a connection
//! that arrives while ours is still being set up (Connect state) is simply taken (RFC 4271 8.2.2,
//! events 16/17); only two connections that both reach OpenSent are resolved by BGP Identifier.
//!
//! A second connection while Established (RFC 4271 6.8, RFC 4724 4.2) is driven by hand from the
//! peer's namespace ([`RawPeer`]), beside a real BIRD session: no daemon opens one on cue.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bgp::wire::{
    self, code, subcode, Capability, Family, GracefulRestartCap, Message, Notification, Open,
    SessionCaps,
};
use bgp::{GracefulRestartCfg, State};
use calico_lab::lab::{Lab, Netns};
use calico_lab::peers::Bird;
use calico_lab::wait::{consistently, eventually};

use super::{pair, peer_cfg, speaker_cfg, Ours, UP};

/// Established BGP connections in `ns`, as "local remote" address pairs.
fn bgp_connections(ns: &Netns) -> Result<Vec<String>> {
    let out = ns.run(&[
        "ss",
        "-Htn",
        "state",
        "established",
        "( sport = :179 or dport = :179 )",
    ])?;
    Ok(out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(2)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect())
}

#[test]
fn simultaneous_open_keeps_one_connection() -> Result<()> {
    for round in 0..3 {
        let lab = Lab::new("coll")?;
        let (a, b) = pair(&lab)?;
        // Both start with the peer already configured and connect at once.
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| {
                Ours::start(
                    &a,
                    speaker_cfg(65001, "10.0.0.1"),
                    vec![peer_cfg("10.0.0.2", 65002)],
                )
            });
            let hb = s.spawn(|| {
                Ours::start(
                    &b,
                    speaker_cfg(65002, "10.0.0.2"),
                    vec![peer_cfg("10.0.0.1", 65001)],
                )
            });
            (ha.join(), hb.join())
        });
        let (oa, ob) = (ra.expect("thread")?, rb.expect("thread")?);
        oa.wait_state("10.0.0.2", State::Established, UP)?;
        ob.wait_state("10.0.0.1", State::Established, UP)?;
        // Exactly one TCP connection survives on both sides, and it is the same one.
        eventually(Duration::from_secs(5), || {
            let ca = bgp_connections(&a)?;
            let cb = bgp_connections(&b)?;
            ensure!(
                ca.len() == 1 && cb.len() == 1,
                "round {round}: connections a {ca:?} b {cb:?}"
            );
            let flipped: Vec<&str> = cb[0].split(' ').rev().collect();
            ensure!(
                ca[0] == flipped.join(" "),
                "round {round}: a {ca:?} and b {cb:?} differ"
            );
            Ok(())
        })?;
        consistently(Duration::from_secs(2), || {
            ensure!(oa
                .peer("10.0.0.2")
                .is_some_and(|p| p.state == State::Established));
            ensure!(ob
                .peer("10.0.0.1")
                .is_some_and(|p| p.state == State::Established));
            Ok(())
        })?;
    }
    Ok(())
}

/// A BGP connection driven by hand: opened from the peer's namespace, messages sent and read one
/// at a time with the crate's codec.
struct RawPeer {
    s: TcpStream,
}

impl RawPeer {
    /// Connect from `ns` (so from the peer's address) to `to`, port 179.
    fn connect(ns: &Netns, to: &str) -> Result<RawPeer> {
        let addr = std::net::SocketAddr::new(to.parse()?, 179);
        let s = ns.in_ns(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))??;
        s.set_nodelay(true)?;
        Ok(RawPeer { s })
    }

    fn send(&mut self, m: &Message) -> Result<()> {
        let mut buf = bytes::BytesMut::new();
        wire::encode_message(m, &SessionCaps::default(), &mut buf)?;
        self.s.write_all(&buf)?;
        Ok(())
    }

    /// The next message, or `None` when the speaker closed the connection.
    fn recv(&mut self, timeout: Duration) -> Result<Option<Message>> {
        self.s.set_read_timeout(Some(timeout))?;
        let mut frame = vec![0u8; 19];
        if let Err(e) = self.s.read_exact(&mut frame) {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => Ok(None),
                _ => Err(e).context("reading a BGP header"),
            };
        }
        let len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        ensure!((19..=4096).contains(&len), "message length {len}");
        frame.resize(len, 0);
        self.s
            .read_exact(&mut frame[19..])
            .context("reading a BGP message")?;
        Ok(Some(wire::decode_message(&frame, &SessionCaps::default())?))
    }
}

/// The OPEN BIRD's side (AS 65002, 10.0.0.2) would send, with the Graceful Restart capability
/// when `gr` is given (its R bit).
fn peer_open(gr: Option<bool>) -> Message {
    let mut capabilities = vec![
        Capability::Multiprotocol(Family::Ipv4Unicast),
        Capability::RouteRefresh,
        Capability::FourOctetAs(65002),
    ];
    if let Some(restarting) = gr {
        capabilities.push(Capability::GracefulRestart(GracefulRestartCap {
            restarting,
            notification: false,
            restart_time: 30,
            families: vec![(Family::Ipv4Unicast, true)],
        }));
    }
    Message::Open(Open {
        version: 4,
        my_as: 65002,
        hold_time: 9,
        bgp_id: Ipv4Addr::new(10, 0, 0, 2),
        capabilities,
    })
}

/// BIRD in `b` (AS 65002) with graceful restart, Established with ours (AS 65001, GR too) and
/// its 10.99.0.0/26 learned.
fn bird_session(lab: &Lab) -> Result<(Netns, Bird, Ours)> {
    let (a, b) = pair(lab)?;
    let bird = Bird::start(
        &b,
        r#"
router id 10.0.0.2;
protocol device { }
protocol static s4 { ipv4; route 10.99.0.0/26 blackhole; }
protocol bgp ours {
  local 10.0.0.2 as 65002;
  neighbor 10.0.0.1 as 65001;
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  graceful restart on;
  graceful restart time 30;
  ipv4 { import all; export all; };
}
"#,
    )?;
    let mut cfg = speaker_cfg(65001, "10.0.0.1");
    cfg.graceful_restart = Some(GracefulRestartCfg {
        restart_time: 30,
        restarting: false,
        forwarding_preserved: true,
        stale_time: 30,
    });
    let ours = Ours::start(&a, cfg, vec![peer_cfg("10.0.0.2", 65002)])?;
    let st = ours.wait_state("10.0.0.2", State::Established, UP)?;
    ensure!(
        st.negotiated.is_some_and(|n| n.graceful_restart),
        "GR not negotiated with BIRD"
    );
    bird.wait_established("ours", UP)?;
    ours.wait_learned("10.99.0.0/26", UP)?;
    Ok((b, bird, ours))
}

#[test]
fn second_connection_while_established_without_graceful_restart_is_closed() -> Result<()> {
    let lab = Lab::new("collest")?;
    let (b, bird, ours) = bird_session(&lab)?;
    let up = ours.peer("10.0.0.2").expect("peer");
    let same_session = || -> Result<()> {
        let p = ours.peer("10.0.0.2").expect("peer");
        ensure!(
            p.state == State::Established && p.since == up.since,
            "the Established session was disturbed: {p:?}"
        );
        Ok(())
    };

    // Connecting alone changes nothing: the new connection is held and gets our OPEN.
    let mut raw = RawPeer::connect(&b, "10.0.0.1")?;
    match raw.recv(Duration::from_secs(5))? {
        Some(Message::Open(o)) => ensure!(o.asn() == 65001, "our OPEN: {o:?}"),
        m => bail!("expected our OPEN on the new connection, got {m:?}"),
    }
    same_session()?;

    // Its OPEN has no graceful restart: Cease/Connection Collision Resolution, then close.
    raw.send(&peer_open(None))?;
    let cease = Notification::new(code::CEASE, subcode::CONNECTION_COLLISION_RESOLUTION);
    match raw.recv(Duration::from_secs(5))? {
        Some(Message::Notification(n)) => ensure!(
            (n.code, n.subcode) == (cease.code, cease.subcode),
            "NOTIFICATION {n:?}, want Cease/7"
        ),
        m => bail!("expected Cease/7, got {m:?}"),
    }
    ensure!(
        raw.recv(Duration::from_secs(5))?.is_none(),
        "the new connection stays open"
    );
    consistently(Duration::from_secs(3), same_session)?;
    ensure!(bird.protocol_state("ours")? == "Established");
    ensure!(ours.learned("10.99.0.0/26")?.is_some_and(|r| !r.stale));
    Ok(())
}

#[test]
fn second_connection_with_graceful_restart_replaces_the_established_session() -> Result<()> {
    let lab = Lab::new("collgr")?;
    let (b, _bird, ours) = bird_session(&lab)?;
    let up = ours.peer("10.0.0.2").expect("peer");

    let mut raw = RawPeer::connect(&b, "10.0.0.1")?;
    ensure!(
        matches!(raw.recv(Duration::from_secs(5))?, Some(Message::Open(_))),
        "no OPEN from us on the new connection"
    );
    // The peer restarted (R bit) before we saw its old connection die.
    raw.send(&peer_open(Some(true)))?;
    match raw.recv(Duration::from_secs(5))? {
        Some(Message::Keepalive) => {}
        m => bail!("expected our KEEPALIVE (the OPEN accepted), got {m:?}"),
    }
    // The old session ended as a lost connection: BIRD's routes are kept, stale.
    let st = eventually(UP, || match ours.peer("10.0.0.2") {
        Some(p) if p.since != up.since && p.state == State::OpenConfirm => Ok(p),
        p => bail!("session not replaced: {p:?}"),
    })?;
    ensure!(st.gr_stale, "routes should be held as stale: {st:?}");
    ensure!(
        ours.learned("10.99.0.0/26")?.is_some_and(|r| r.stale),
        "10.99.0.0/26 should be kept as stale"
    );
    // Our KEEPALIVE completes the new session.
    raw.send(&Message::Keepalive)?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;

    // The hand-made peer leaves; BIRD comes back and refreshes its route.
    drop(raw);
    eventually(UP, || match ours.learned("10.99.0.0/26")? {
        Some(r) if !r.stale => Ok(()),
        r => bail!("not refreshed by BIRD: {r:?}"),
    })?;
    Ok(())
}
