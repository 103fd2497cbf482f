//! One task per peer: owns the TCP connection, the FSM and the timers; the speaker task owns the routes.
//!
//! ```text
//!   speaker ──ToSession──▶ session task ──Bytes──▶ writer task ──▶ TCP
//!      ▲                      │  ▲
//!      └────FromSession───────┘  └── FramedRead<BgpCodec> ◀── TCP
//! ```
//! The session feeds socket events and decoded messages to the pure [`Fsm`] and carries out its
//! actions. Writes go through a separate writer task so a slow peer never stalls the FSM (keepalives,
//! hold timer); the writer flushes what was queued (a final NOTIFICATION included) before it closes.
//!
//! Connection collision (RFC 4271 6.8, RFC 4724 4.2): a connection the peer opens while ours is in
//! OpenSent, OpenConfirm or Established is held and runs as a second FSM, through its own OPEN
//! exchange, while the first carries on. Once its OPEN has passed the checks, the pure
//! [`resolve_collision`] decides: before Established, the connection opened by the speaker with
//! the higher BGP Identifier stays; an Established session stays unless graceful restart was
//! negotiated in it and the new OPEN carries the Graceful Restart capability (the peer restarted
//! before we saw its old connection die: the old session ends as if its connection was lost, its
//! routes kept as stale, and the new connection carries on). The connection that loses gets
//! Cease/Connection Collision Resolution and nothing else.

use std::future::pending;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use ipnet::IpNet;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use crate::config::PeerCfg;
use crate::fsm::{resolve_collision, Action, Collision, DownReason, Event, Fsm, Negotiated, State};
use crate::rib::{RouteAttrs, SourceId};
use crate::sockopt;
use crate::wire::{
    self, code, subcode, BgpCodec, CodecError, Family, Message, Notification, RouteRefresh,
    SessionCaps, Update,
};

/// Commands from the speaker.
#[derive(Debug)]
pub(crate) enum ToSession {
    /// An accepted connection from the peer's address, GTSM already applied by the speaker when the
    /// peer has `ttl_security` (so nothing that came too far is ever read).
    Inbound(TcpStream),
    /// What the speaker core decided to tell the peer.
    Peer(ToPeer),
    /// Stop for good. `graceful`: close without a NOTIFICATION so graceful-restart peers keep our
    /// routes; else send `notification` (default Cease/Administrative Shutdown).
    Shutdown {
        graceful: bool,
        notification: Option<Notification>,
    },
}

/// Routing messages for the peer, as the speaker core emits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToPeer {
    /// Announce `prefixes` with `attrs` (next hop already resolved) on session `epoch`.
    Announce {
        epoch: u64,
        attrs: Arc<RouteAttrs>,
        prefixes: Vec<IpNet>,
    },
    Withdraw {
        epoch: u64,
        prefixes: Vec<IpNet>,
    },
    EndOfRib {
        epoch: u64,
        family: Family,
    },
    /// Ask the peer to send its routes again (RFC 2918).
    RequestRefresh(Family),
    /// End the session with this NOTIFICATION (e.g. Cease/1 max prefixes); the FSM restarts later.
    Notify(Notification),
}

/// Reports to the speaker.
#[derive(Debug)]
// Moved once through the channel; not worth a box per UPDATE.
#[allow(clippy::large_enum_variant)]
pub(crate) enum FromSession {
    State {
        from: State,
        to: State,
    },
    Established {
        epoch: u64,
        negotiated: Negotiated,
        local: SocketAddr,
    },
    Down {
        reason: DownReason,
    },
    Update(Update),
    RouteRefresh(Family),
    /// An outgoing connection attempt failed (for status: why a peer stays Active).
    ConnectFailed(String),
}

/// One live TCP connection.
struct Link {
    reader: FramedRead<OwnedReadHalf, BgpCodec>,
    writer: mpsc::UnboundedSender<Bytes>,
    /// The writer task; it ends once the queue is flushed after `writer` is dropped.
    flushing: tokio::task::JoinHandle<()>,
    outbound: bool,
    local: SocketAddr,
}

impl Link {
    fn new(stream: TcpStream, outbound: bool, write_timeout: Duration) -> io::Result<Link> {
        let local = stream.local_addr()?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let flushing = tokio::spawn(writer(w, rx, write_timeout));
        Ok(Link {
            reader: FramedRead::with_capacity(r, BgpCodec::new(SessionCaps::default()), 64 * 1024),
            writer: tx,
            flushing,
            outbound,
            local,
        })
    }

    fn send_bytes(&self, b: Bytes) {
        // The writer only goes away after an I/O error, which the reader reports too.
        let _ = self.writer.send(b);
    }

    fn send(&self, m: &Message, caps: &SessionCaps) {
        let mut buf = BytesMut::with_capacity(64);
        match wire::encode_message(m, caps, &mut buf) {
            Ok(()) => self.send_bytes(buf.freeze()),
            Err(e) => warn!(error = %e, "cannot encode message"),
        }
    }
}

async fn writer(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    limit: Duration,
) {
    use tokio::io::AsyncWriteExt;
    while let Some(b) = rx.recv().await {
        match tokio::time::timeout(limit, w.write_all(&b)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "write failed");
                return;
            }
            Err(_) => {
                debug!("write timed out");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}

async fn next_msg(link: &mut Option<Link>) -> Option<Result<Message, CodecError>> {
    match link {
        Some(l) => l.reader.next().await,
        None => pending().await,
    }
}

fn to_event(r: Option<Result<Message, CodecError>>) -> Event {
    match r {
        Some(Ok(m)) => Event::Message(m),
        Some(Err(CodecError::Wire(e))) => Event::DecodeError(e),
        Some(Err(e)) => {
            debug!(error = %e, "connection error");
            Event::TcpFailed
        }
        None => Event::TcpFailed,
    }
}

type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<TcpStream>> + Send>>;

async fn poll_connect(c: &mut Option<Connecting>) -> io::Result<TcpStream> {
    match c {
        Some(f) => f.await,
        None => pending().await,
    }
}

/// The session task's state.
pub(crate) struct Session {
    id: SourceId,
    cfg: PeerCfg,
    fsm: Fsm,
    link: Option<Link>,
    /// A second connection during collision detection: its own FSM and link.
    cand: Option<(Fsm, Link)>,
    connecting: Option<Connecting>,
    caps: SessionCaps,
    epoch: u64,
    rx: mpsc::UnboundedReceiver<ToSession>,
    tx: mpsc::UnboundedSender<(SourceId, FromSession)>,
    done: bool,
    /// Writer tasks of closed connections, still flushing (a final NOTIFICATION).
    closing: Vec<tokio::task::JoinHandle<()>>,
}

impl Session {
    pub(crate) fn spawn(
        id: SourceId,
        cfg: PeerCfg,
        fsm: Fsm,
        tx: mpsc::UnboundedSender<(SourceId, FromSession)>,
    ) -> (
        mpsc::UnboundedSender<ToSession>,
        tokio::task::JoinHandle<()>,
    ) {
        let (ctx, rx) = mpsc::unbounded_channel();
        let s = Session {
            id,
            cfg,
            fsm,
            link: None,
            cand: None,
            connecting: None,
            caps: SessionCaps::default(),
            epoch: 0,
            rx,
            tx,
            done: false,
            closing: Vec::new(),
        };
        let span = tracing::info_span!("peer", addr = %s.cfg.address);
        let task = tokio::spawn(tracing::Instrument::instrument(s.run(), span));
        (ctx, task)
    }

    fn retire(&mut self, link: Link) {
        let Link {
            reader,
            writer,
            flushing,
            ..
        } = link;
        drop(writer);
        drop(reader);
        self.closing.retain(|h| !h.is_finished());
        self.closing.push(flushing);
    }

    fn close_link(&mut self) {
        if let Some(l) = self.link.take() {
            self.retire(l);
        }
    }

    fn close_cand(&mut self) {
        if let Some((_, l)) = self.cand.take() {
            self.retire(l);
        }
    }

    fn report(&self, m: FromSession) {
        let _ = self.tx.send((self.id, m));
    }

    async fn run(mut self) {
        let now = Instant::now().into_std();
        let actions = self.fsm.handle(Event::Start, now);
        self.apply(actions);
        while !self.done {
            let deadline = [
                self.fsm.next_deadline(),
                self.cand.as_ref().and_then(|c| c.0.next_deadline()),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
                    None => pending().await,
                }
            };
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(c) => self.on_cmd(c),
                    None => {
                        // The speaker is gone: close quietly (as a graceful shutdown).
                        self.done = true;
                    }
                },
                r = poll_connect(&mut self.connecting) => {
                    self.connecting = None;
                    self.on_connected(r);
                }
                m = next_msg(&mut self.link) => {
                    let ev = to_event(m);
                    if ev == Event::TcpFailed {
                        self.close_link();
                    }
                    self.feed(ev);
                }
                m = async { match &mut self.cand { Some((_, l)) => l.reader.next().await, None => pending().await } } => {
                    self.on_cand(to_event(m));
                }
                _ = sleep => {
                    self.feed(Event::Tick);
                    if self.cand.is_some() {
                        self.on_cand(Event::Tick);
                    }
                }
            }
        }
        self.close_link();
        self.close_cand();
        let flushing = futures::future::join_all(std::mem::take(&mut self.closing));
        let _ = tokio::time::timeout(Duration::from_secs(1), flushing).await;
    }

    fn now() -> std::time::Instant {
        Instant::now().into_std()
    }

    fn feed(&mut self, ev: Event) {
        let actions = self.fsm.handle(ev, Self::now());
        self.apply(actions);
    }

    fn on_cmd(&mut self, cmd: ToSession) {
        match cmd {
            ToSession::Inbound(stream) => self.on_inbound(stream),
            ToSession::Peer(m) => self.on_peer_msg(m),
            ToSession::Shutdown {
                graceful,
                notification,
            } => {
                if graceful {
                    self.close_link();
                    self.close_cand();
                } else {
                    self.feed(Event::Stop(notification));
                }
                self.done = true;
            }
        }
    }

    fn on_peer_msg(&mut self, m: ToPeer) {
        match m {
            ToPeer::Announce {
                epoch,
                attrs,
                prefixes,
            } => {
                if let Some(l) = self.live_link(epoch) {
                    let Some(first) = prefixes.first() else {
                        return;
                    };
                    let family = Family::of(first);
                    let mut hops = vec![attrs.next_hop];
                    hops.extend(attrs.link_local.map(IpAddr::V6));
                    let updates = wire::pack_announcements(
                        &attrs.attrs,
                        family,
                        &hops,
                        &prefixes,
                        &self.caps,
                    );
                    send_updates(l, updates, &self.caps);
                }
            }
            ToPeer::Withdraw { epoch, prefixes } => {
                if let Some(l) = self.live_link(epoch) {
                    for family in Family::ALL {
                        let of: Vec<IpNet> = prefixes
                            .iter()
                            .copied()
                            .filter(|p| Family::of(p) == family)
                            .collect();
                        if !of.is_empty() {
                            send_updates(
                                l,
                                wire::pack_withdrawals(family, &of, &self.caps),
                                &self.caps,
                            );
                        }
                    }
                }
            }
            ToPeer::EndOfRib { epoch, family } => {
                if let Some(l) = self.live_link(epoch) {
                    l.send(&Message::Update(Update::end_of_rib(family)), &self.caps);
                }
            }
            ToPeer::RequestRefresh(family) => {
                if let (Some(l), State::Established) = (&self.link, self.fsm.state()) {
                    l.send(&Message::RouteRefresh(RouteRefresh { family }), &self.caps);
                }
            }
            ToPeer::Notify(n) => self.feed(Event::SendNotification(n)),
        }
    }

    /// The link, if the session is Established in `epoch`.
    fn live_link(&self, epoch: u64) -> Option<&Link> {
        (self.fsm.state() == State::Established && epoch == self.epoch)
            .then_some(self.link.as_ref())
            .flatten()
    }

    fn prepare_socket(&self, s: &impl std::os::fd::AsRawFd, ipv6: bool) -> io::Result<()> {
        if let Some(pw) = &self.cfg.password {
            sockopt::set_md5(s, self.cfg.address, Some(pw.as_bytes()), ipv6)?;
        }
        if let Some(hops) = self.cfg.ttl_security {
            sockopt::set_gtsm(s, ipv6, hops)?;
        }
        Ok(())
    }

    fn start_connect(&mut self) {
        if self.cfg.passive {
            return;
        }
        let remote = SocketAddr::new(self.cfg.address, self.cfg.port);
        let ipv6 = remote.is_ipv6();
        let sock = match if ipv6 {
            TcpSocket::new_v6()
        } else {
            TcpSocket::new_v4()
        } {
            Ok(s) => s,
            Err(e) => return self.connect_failed(e),
        };
        if let Err(e) = self.prepare_socket(&sock, ipv6) {
            return self.connect_failed(e);
        }
        if let Some(local) = self.cfg.local_address {
            if let Err(e) = sock.bind(SocketAddr::new(local, 0)) {
                return self.connect_failed(e);
            }
        }
        // Shorter than the ConnectRetryTimer, so a silent peer is reported as a timeout by the
        // attempt itself rather than cut off by the next retry.
        let limit = self
            .cfg
            .connect_retry
            .saturating_sub(Duration::from_millis(200))
            .max(Duration::from_millis(800));
        self.connecting = Some(Box::pin(async move {
            tokio::time::timeout(limit, sock.connect(remote))
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                })
        }));
    }

    fn connect_failed(&mut self, e: io::Error) {
        debug!(error = %e, "connect failed");
        self.report(FromSession::ConnectFailed(e.to_string()));
        self.feed(Event::TcpFailed);
    }

    fn on_connected(&mut self, r: io::Result<TcpStream>) {
        match r.and_then(|s| Link::new(s, true, self.write_timeout())) {
            Ok(link) => {
                if self.link.is_some() {
                    return; // an inbound connection won meanwhile
                }
                self.link = Some(link);
                self.feed(Event::TcpConnected);
            }
            Err(e) => self.connect_failed(e),
        }
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.cfg.hold_time.max(30)))
    }

    fn on_inbound(&mut self, stream: TcpStream) {
        let link = match Link::new(stream, false, self.write_timeout()) {
            Ok(l) => l,
            Err(e) => return debug!(error = %e, "inbound connection failed"),
        };
        match self.fsm.state() {
            State::Idle | State::Connect | State::Active => {
                self.connecting = None;
                self.link = Some(link);
                let actions = self.fsm.handle(Event::TcpConnected, Self::now());
                if self.fsm.state() == State::OpenSent {
                    self.apply(actions);
                } else {
                    // Administratively stopped: refuse.
                    self.close_link();
                }
            }
            State::OpenSent | State::OpenConfirm | State::Established => {
                if self.fsm.state() == State::Established {
                    // RFC 4271 6.8 / RFC 4724 4.2: connecting alone proves nothing; what the peer
                    // says in its OPEN on this connection decides (see `resolve_collision`).
                    info!("new connection while Established: held until its OPEN");
                }
                if self.cand.is_some() {
                    debug!("a third connection replaces the one held for collision detection");
                    self.close_cand();
                }
                let mut cfg = self.fsm.cfg.clone();
                cfg.passive = true;
                let mut f = Fsm::new(cfg);
                let now = Self::now();
                let mut actions = f.handle(Event::Start, now);
                actions.extend(f.handle(Event::TcpConnected, now));
                self.cand = Some((f, link));
                self.apply_cand(actions);
            }
        }
    }

    fn on_cand(&mut self, ev: Event) {
        let Some((f, _)) = &mut self.cand else { return };
        let actions = f.handle(ev, Self::now());
        self.apply_cand(actions);
    }

    /// Carry out the second connection's actions. Once its OPEN has passed the checks (it enters
    /// OpenConfirm), the collision is decided before anything else is sent on it, so a connection
    /// that loses gets only the NOTIFICATION.
    fn apply_cand(&mut self, actions: Vec<Action>) {
        let opened = actions.iter().any(|a| {
            matches!(
                a,
                Action::StateChange {
                    to: State::OpenConfirm,
                    ..
                }
            )
        });
        if opened {
            return self.resolve_collision(actions);
        }
        for a in actions {
            let Some((_, l)) = &self.cand else { return };
            match a {
                Action::Send(m) => l.send(&m, &SessionCaps::default()),
                Action::Disconnect | Action::Down(_) => self.close_cand(),
                _ => {}
            }
        }
    }

    /// RFC 4271 6.8 and RFC 4724 4.2, once the second connection's OPEN is in: the decision is
    /// [`resolve_collision`]'s; `actions` are the second machine's (its KEEPALIVE, its state change).
    fn resolve_collision(&mut self, actions: Vec<Action>) {
        let Some((cand_fsm, cand_link)) = self.cand.take() else {
            return;
        };
        let cease = Message::Notification(Notification::new(
            code::CEASE,
            subcode::CONNECTION_COLLISION_RESOLUTION,
        ));
        let current_outbound = self.link.as_ref().is_some_and(|l| l.outbound);
        let verdict = match cand_fsm.peer_open() {
            Some(open) => resolve_collision(&self.fsm, current_outbound, open),
            // Not reached: the machine enters OpenConfirm only with the peer's OPEN.
            None => Collision::KeepCurrent,
        };
        let established = self.fsm.state() == State::Established;
        match verdict {
            Collision::KeepCurrent => {
                if established {
                    info!("connection collision with the Established session: closing the new connection (its OPEN has no graceful restart)");
                } else {
                    info!("connection collision: keeping our connection");
                }
                cand_link.send(&cease, &SessionCaps::default());
                self.retire(cand_link);
                return;
            }
            Collision::PeerRestarted => {
                info!("peer restarted (graceful restart in its new OPEN): its new connection replaces the Established session");
                // As if the old connection had failed: no NOTIFICATION, the peer's routes stay stale.
                self.feed(Event::TcpFailed);
                self.close_link();
            }
            Collision::TakeNew => {
                info!("connection collision: keeping the connection the peer opened");
                if let Some(l) = self.link.take() {
                    l.send(&cease, &SessionCaps::default());
                    self.retire(l);
                }
            }
        }
        self.connecting = None;
        let from = self.fsm.state();
        let passive = self.fsm.cfg.passive;
        self.fsm = cand_fsm;
        self.fsm.cfg.passive = passive;
        self.link = Some(cand_link);
        // The new machine's own KEEPALIVE and its change to OpenConfirm, reported as a change from
        // where the session was; it also sets the session's capabilities from the new negotiation.
        let actions = actions
            .into_iter()
            .map(|a| match a {
                Action::StateChange { to, .. } => Action::StateChange { from, to },
                a => a,
            })
            .collect();
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Connect => self.start_connect(),
                Action::Disconnect => {
                    self.close_link();
                    if self.connecting.take().is_some() {
                        // The ConnectRetryTimer beat the attempt: say why we are still not up.
                        self.report(FromSession::ConnectFailed("connect timed out".into()));
                    }
                }
                Action::Send(m) => {
                    if let Some(l) = &self.link {
                        l.send(&m, &self.caps);
                    }
                }
                Action::StateChange { from, to } => {
                    info!(%from, %to, "state change");
                    if to == State::OpenConfirm {
                        if let (Some(n), Some(l)) = (self.fsm.negotiated(), &mut self.link) {
                            self.caps = n.caps();
                            l.reader.decoder_mut().caps = self.caps;
                        }
                    }
                    self.report(FromSession::State { from, to });
                }
                Action::Established(negotiated) => {
                    self.epoch += 1;
                    let local = self
                        .link
                        .as_ref()
                        .map(|l| l.local)
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                    self.report(FromSession::Established {
                        epoch: self.epoch,
                        negotiated,
                        local,
                    });
                }
                Action::Down(reason) => {
                    if !matches!(reason, DownReason::ConnectionLost) {
                        info!(%reason, "session down");
                    }
                    self.caps = SessionCaps::default();
                    self.report(FromSession::Down { reason });
                }
                Action::Update(u) => self.report(FromSession::Update(u)),
                Action::RouteRefresh(f) => self.report(FromSession::RouteRefresh(f)),
            }
        }
    }
}

fn send_updates(l: &Link, updates: Vec<Update>, caps: &SessionCaps) {
    let mut buf = BytesMut::with_capacity(updates.len() * wire::MAX_MESSAGE_LEN);
    for u in updates {
        if let Err(e) = wire::encode_message(&Message::Update(u), caps, &mut buf) {
            warn!(error = %e, "cannot encode UPDATE");
        }
    }
    if !buf.is_empty() {
        l.send_bytes(buf.freeze());
    }
}
