//! The BGP finite state machine of one TCP connection (RFC 4271 8), as a pure function.
//!
//! `Fsm::handle(event, now) -> Vec<Action>`: no sockets, no clock reads, no async. The session task
//! feeds it connection events, decoded messages and `Tick`s at [`Fsm::next_deadline`], and carries out
//! the actions (connect, send, close) it returns. Timers are deadlines held here, so tests drive time by
//! passing `now`.
//!
//! States: Idle, Connect, Active, OpenSent, OpenConfirm, Established. Timers: ConnectRetryTimer,
//! HoldTimer (4 minutes "large value" in OpenSent, then the negotiated hold time, RFC 4271 8.2.2),
//! KeepaliveTimer (hold/3), and an IdleHoldTimer that restarts the FSM after an error with exponential
//! backoff (RFC 4271 8.1.1 DampPeerOscillations, simplified) so a broken peer does not spin.
//!
//! Connection collision (RFC 4271 6.8, RFC 4724 4.2) needs two of these machines at once: the
//! session task runs the peer's second connection as a machine of its own and, once that one has a
//! valid OPEN, asks [`resolve_collision`] which connection stays; each machine stays a plain
//! single-connection FSM.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::wire::{
    code, subcode, Capability, Family, GracefulRestartCap, Message, Notification, Open,
    SessionCaps, Update, WireError, AS_TRANS,
};

/// RFC 4271 8.2.2 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Graceful restart settings of the local speaker (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrCfg {
    /// Restart Time we advertise: how long peers keep our routes while we are away.
    pub restart_time: u16,
    /// Set the R bit: we have just restarted (the caller knows; e.g. a daemon restarted with state kept).
    pub restarting: bool,
    /// Set the F bit for every family: forwarding state survived the restart.
    pub forwarding_preserved: bool,
}

/// What one FSM needs to know about its peer and the local speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmCfg {
    pub local_as: u32,
    pub remote_as: u32,
    pub router_id: Ipv4Addr,
    /// Hold time we offer; 0 disables keepalives and the hold timer if the peer offers 0 too.
    pub hold_time: u16,
    pub connect_retry: Duration,
    /// Never connect out; wait for the peer.
    pub passive: bool,
    pub families: Vec<Family>,
    pub graceful_restart: Option<GrCfg>,
    /// Advertise the 4-octet AS capability (RFC 6793).
    pub four_octet_as: bool,
    /// Smallest and largest IdleHoldTimer after an error.
    pub idle_hold_min: Duration,
    pub idle_hold_max: Duration,
}

impl FsmCfg {
    pub fn new(local_as: u32, remote_as: u32, router_id: Ipv4Addr) -> FsmCfg {
        FsmCfg {
            local_as,
            remote_as,
            router_id,
            hold_time: 90,
            connect_retry: Duration::from_secs(5),
            passive: false,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            graceful_restart: None,
            four_octet_as: true,
            idle_hold_min: Duration::from_secs(1),
            idle_hold_max: Duration::from_secs(30),
        }
    }
    pub fn is_ebgp(&self) -> bool {
        self.local_as != self.remote_as
    }
}

/// What both sides agreed on in the OPEN exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_as: u32,
    pub peer_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: u16,
    pub four_octet_as: bool,
    pub route_refresh: bool,
    /// Families both sides advertised.
    pub families: Vec<Family>,
    /// The peer's graceful restart capability, if it sent one.
    pub peer_gr: Option<GracefulRestartCap>,
    /// We sent a graceful restart capability.
    pub local_gr: bool,
    /// We set its N bit (RFC 8538). Our OPEN never does yet.
    pub local_gr_notification: bool,
    pub ebgp: bool,
}

impl Negotiated {
    pub fn caps(&self) -> SessionCaps {
        SessionCaps {
            four_octet_as: self.four_octet_as,
            ebgp: self.ebgp,
        }
    }
    /// Both sides did graceful restart (RFC 4724: the capability was exchanged).
    pub fn graceful_restart(&self) -> bool {
        self.local_gr && self.peer_gr.is_some()
    }
    /// RFC 8538 N bit on both sides (section 2: graceful restart on NOTIFICATION only then).
    pub fn gr_notification(&self) -> bool {
        self.local_gr_notification && self.peer_gr.as_ref().is_some_and(|g| g.notification)
    }
}

/// Why a session left (or never reached) Established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// We sent this NOTIFICATION.
    NotificationSent(Notification),
    /// The peer sent this NOTIFICATION.
    NotificationReceived(Notification),
    /// The TCP connection failed or was closed without a NOTIFICATION.
    ConnectionLost,
    /// Stopped by the operator or by the speaker (peer removed).
    Stopped,
}

impl DownReason {
    /// May the peer's routes be kept as stale (RFC 4724 4.2, RFC 8538 N bit)?
    pub fn graceful(&self, negotiated: &Negotiated) -> bool {
        if !negotiated.graceful_restart() {
            return false;
        }
        match self {
            DownReason::ConnectionLost => true,
            DownReason::NotificationSent(n) | DownReason::NotificationReceived(n) => {
                negotiated.gr_notification()
                    && !(n.code == code::CEASE && n.subcode == subcode::HARD_RESET)
            }
            DownReason::Stopped => false,
        }
    }
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::NotificationSent(n) => write!(f, "sent NOTIFICATION: {n}"),
            DownReason::NotificationReceived(n) => write!(f, "received NOTIFICATION: {n}"),
            DownReason::ConnectionLost => write!(f, "connection lost"),
            DownReason::Stopped => write!(f, "stopped"),
        }
    }
}

/// Inputs to the FSM.
#[derive(Debug, Clone, PartialEq, Eq)]
// Events are moved once into `handle`, never stored in bulk: boxing `Message` would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// ManualStart (or AutomaticStart of a passive peer when `cfg.passive`).
    Start,
    /// ManualStop, optionally with the Cease subcode to send (2 admin shutdown, 3 deconfigured...).
    Stop(Option<Notification>),
    /// The TCP connection is up: our connect completed (TcpCRAcked) or we accepted the peer's
    /// (TcpConnectionConfirmed).
    TcpConnected,
    /// The TCP connection failed or closed.
    TcpFailed,
    Message(Message),
    /// The codec could not decode the peer's bytes: send this NOTIFICATION.
    DecodeError(WireError),
    /// The speaker asks to end the session with a NOTIFICATION (e.g. Cease/1 max prefixes).
    SendNotification(Notification),
    /// Time has passed: fire due timers.
    Tick,
}

/// Outputs of the FSM, carried out in order by the session task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer (drop any attempt under way).
    Connect,
    /// Close the TCP connection.
    Disconnect,
    Send(Message),
    /// Entered Established.
    Established(Negotiated),
    /// Left OpenConfirm/Established (or a connection attempt ended in an error).
    Down(DownReason),
    /// An UPDATE to hand to the speaker.
    Update(Update),
    /// The peer asked for our routes again (RFC 2918).
    RouteRefresh(Family),
    /// State changed (for status and logs).
    StateChange {
        from: State,
        to: State,
    },
}

/// Hold time in OpenSent before an OPEN arrives (RFC 4271 8.2.2 "large value", 4 minutes).
pub const OPEN_SENT_HOLD: Duration = Duration::from_secs(240);

/// One connection's FSM.
#[derive(Debug, Clone)]
pub struct Fsm {
    pub cfg: FsmCfg,
    state: State,
    connect_retry_at: Option<Instant>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    idle_hold_at: Option<Instant>,
    idle_hold: Duration,
    /// Started by the operator; cleared by Stop. While set, the FSM restarts itself after errors.
    enabled: bool,
    negotiated: Option<Negotiated>,
    /// The peer's OPEN, once received.
    peer_open: Option<Open>,
    hold: Duration,
    keepalive: Duration,
    /// The last NOTIFICATION sent or received, for status.
    pub last_error: Option<DownReason>,
}

impl Fsm {
    pub fn new(cfg: FsmCfg) -> Fsm {
        let idle_hold = cfg.idle_hold_min;
        Fsm {
            cfg,
            state: State::Idle,
            connect_retry_at: None,
            hold_at: None,
            keepalive_at: None,
            idle_hold_at: None,
            idle_hold,
            enabled: false,
            negotiated: None,
            peer_open: None,
            hold: Duration::ZERO,
            keepalive: Duration::ZERO,
            last_error: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }
    pub fn peer_open(&self) -> Option<&Open> {
        self.peer_open.as_ref()
    }
    /// The earliest timer deadline, if any: call `handle(Tick, now)` at or after it.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.connect_retry_at,
            self.hold_at,
            self.keepalive_at,
            self.idle_hold_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The OPEN we send (RFC 4271 4.2, RFC 5492 capabilities).
    pub fn local_open(&self) -> Open {
        let cfg = &self.cfg;
        let mut capabilities: Vec<Capability> = cfg
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        capabilities.push(Capability::RouteRefresh);
        if cfg.four_octet_as {
            capabilities.push(Capability::FourOctetAs(cfg.local_as));
        }
        if let Some(gr) = &cfg.graceful_restart {
            capabilities.push(Capability::GracefulRestart(GracefulRestartCap {
                restarting: gr.restarting,
                notification: false,
                restart_time: gr.restart_time.min(4095),
                families: cfg
                    .families
                    .iter()
                    .map(|f| (*f, gr.forwarding_preserved))
                    .collect(),
            }));
        }
        Open {
            version: 4,
            my_as: u16::try_from(cfg.local_as).unwrap_or(AS_TRANS),
            hold_time: cfg.hold_time,
            bgp_id: cfg.router_id,
            capabilities,
        }
    }

    fn set_state(&mut self, to: State, out: &mut Vec<Action>) {
        if self.state != to {
            out.push(Action::StateChange {
                from: self.state,
                to,
            });
            self.state = to;
        }
    }

    fn clear_timers(&mut self) {
        self.connect_retry_at = None;
        self.hold_at = None;
        self.keepalive_at = None;
    }

    /// Leave for Idle after an error: close, report, and arm the IdleHoldTimer (doubling it).
    fn fail(&mut self, reason: DownReason, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Disconnect);
        let was_up = matches!(self.state, State::OpenConfirm | State::Established);
        if !matches!(reason, DownReason::ConnectionLost) || was_up {
            self.last_error = Some(reason.clone());
        }
        out.push(Action::Down(reason));
        self.clear_timers();
        self.peer_open = None;
        if was_up && self.state == State::Established {
            // A session that made it to Established starts the backoff afresh.
            self.idle_hold = self.cfg.idle_hold_min;
        }
        self.set_state(State::Idle, out);
        if self.enabled {
            self.idle_hold_at = Some(now + self.idle_hold);
            self.idle_hold = (self.idle_hold * 2).min(self.cfg.idle_hold_max);
        }
    }

    fn notify_and_fail(&mut self, n: Notification, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Send(Message::Notification(n.clone())));
        self.fail(DownReason::NotificationSent(n), now, out);
    }

    fn start(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.idle_hold_at = None;
        self.connect_retry_at = Some(now + self.cfg.connect_retry);
        if self.cfg.passive {
            self.set_state(State::Active, out);
        } else {
            self.set_state(State::Connect, out);
            out.push(Action::Connect);
        }
    }

    fn restart_hold(&mut self, now: Instant) {
        self.hold_at = (!self.hold.is_zero()).then(|| now + self.hold);
    }

    /// Feed one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.step(event, now, &mut out);
        out
    }

    fn step(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) {
        use State::*;
        match (self.state, event) {
            (_, Event::Tick) => self.tick(now, out),

            (Idle, Event::Start) => {
                self.enabled = true;
                self.idle_hold = self.cfg.idle_hold_min;
                self.start(now, out);
            }
            (_, Event::Start) => self.enabled = true,

            (Idle, Event::Stop(_)) => {
                self.enabled = false;
                self.idle_hold_at = None;
            }
            (state, Event::Stop(n)) => {
                self.enabled = false;
                if matches!(state, OpenSent | OpenConfirm | Established) {
                    let n = n.unwrap_or(Notification::new(
                        code::CEASE,
                        subcode::ADMINISTRATIVE_SHUTDOWN,
                    ));
                    out.push(Action::Send(Message::Notification(n)));
                }
                out.push(Action::Disconnect);
                out.push(Action::Down(DownReason::Stopped));
                self.clear_timers();
                self.peer_open = None;
                self.set_state(Idle, out);
            }

            // An accepted connection (passive side) or a connection that arrived while Idle but
            // enabled (the IdleHoldTimer is running): take it.
            (Idle, Event::TcpConnected) if self.enabled => {
                self.idle_hold_at = None;
                self.open_sent(now, out);
            }
            (Connect | Active, Event::TcpConnected) => self.open_sent(now, out),
            (Idle, _) => out.push(Action::Disconnect),

            (Connect, Event::TcpFailed) => self.set_state(Active, out),
            (Active, Event::TcpFailed) => {}

            (OpenSent, Event::TcpFailed) => {
                // RFC 4271 8.2.2: close, restart ConnectRetryTimer, go to Active.
                out.push(Action::Disconnect);
                self.clear_timers();
                self.connect_retry_at = Some(now + self.cfg.connect_retry);
                self.set_state(Active, out);
            }
            (OpenConfirm | Established, Event::TcpFailed) => {
                self.fail(DownReason::ConnectionLost, now, out)
            }

            (OpenSent, Event::Message(Message::Open(open))) => self.open_received(open, now, out),

            (OpenConfirm, Event::Message(Message::Keepalive)) => {
                self.restart_hold(now);
                self.set_state(Established, out);
                if let Some(n) = &self.negotiated {
                    out.push(Action::Established(n.clone()));
                }
            }

            (Established, Event::Message(Message::Keepalive)) => self.restart_hold(now),
            (Established, Event::Message(Message::Update(u))) => {
                self.restart_hold(now);
                out.push(Action::Update(u));
            }
            (Established, Event::Message(Message::RouteRefresh(rr))) => {
                self.restart_hold(now);
                let ok = self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.families.contains(&rr.family));
                if ok {
                    out.push(Action::RouteRefresh(rr.family));
                }
            }

            (_, Event::Message(Message::Notification(n))) => {
                if n.code == code::OPEN_MESSAGE_ERROR
                    && n.subcode == subcode::UNSUPPORTED_VERSION_NUMBER
                {
                    // RFC 4271 8.2.2 OpenSent: a version error is not counted as a peer oscillation.
                    self.idle_hold = self.cfg.idle_hold_min;
                }
                self.fail(DownReason::NotificationReceived(n), now, out);
            }

            (_, Event::DecodeError(e)) => self.notify_and_fail(e.notification, now, out),
            (OpenSent | OpenConfirm | Established, Event::SendNotification(n)) => {
                self.notify_and_fail(n, now, out)
            }
            (_, Event::SendNotification(_)) => {}

            // Anything else that arrives in the wrong state is an FSM error (RFC 6608).
            (OpenSent | OpenConfirm | Established, Event::Message(_)) => {
                let sub = match self.state {
                    OpenSent => subcode::UNEXPECTED_MESSAGE_IN_OPEN_SENT,
                    OpenConfirm => subcode::UNEXPECTED_MESSAGE_IN_OPEN_CONFIRM,
                    _ => subcode::UNEXPECTED_MESSAGE_IN_ESTABLISHED,
                };
                self.notify_and_fail(Notification::new(code::FSM_ERROR, sub), now, out);
            }
            (Connect | Active, Event::Message(_)) => out.push(Action::Disconnect),
            (OpenSent | OpenConfirm | Established, Event::TcpConnected) => {}
        }
    }

    fn open_sent(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.connect_retry_at = None;
        self.hold_at = Some(now + OPEN_SENT_HOLD);
        out.push(Action::Send(Message::Open(self.local_open())));
        self.set_state(State::OpenSent, out);
    }

    /// Check the peer's OPEN (RFC 4271 6.2) and negotiate.
    fn open_received(&mut self, open: Open, now: Instant, out: &mut Vec<Action>) {
        if let Err(n) = self.check_open(&open) {
            return self.notify_and_fail(n, now, out);
        }
        let local = self.local_open();
        let hold_time = open.hold_time.min(self.cfg.hold_time);
        let families: Vec<Family> = {
            let theirs = open.families();
            // A peer that sends no multiprotocol capability speaks IPv4 unicast only (RFC 4760 8).
            let theirs = if theirs.is_empty() {
                vec![Family::Ipv4Unicast]
            } else {
                theirs
            };
            self.cfg
                .families
                .iter()
                .copied()
                .filter(|f| theirs.contains(f))
                .collect()
        };
        let negotiated = Negotiated {
            peer_as: open.asn(),
            peer_id: open.bgp_id,
            hold_time,
            keepalive: hold_time / 3,
            four_octet_as: open.four_octet_as() && local.four_octet_as(),
            route_refresh: open.has_route_refresh(),
            families,
            peer_gr: open.graceful_restart().cloned(),
            local_gr: self.cfg.graceful_restart.is_some(),
            local_gr_notification: local.graceful_restart().is_some_and(|g| g.notification),
            ebgp: self.cfg.is_ebgp(),
        };
        self.hold = Duration::from_secs(hold_time.into());
        self.keepalive = Duration::from_secs((hold_time / 3).into());
        self.negotiated = Some(negotiated);
        self.peer_open = Some(open);
        out.push(Action::Send(Message::Keepalive));
        self.restart_hold(now);
        self.keepalive_at = (!self.keepalive.is_zero()).then(|| now + self.keepalive);
        self.set_state(State::OpenConfirm, out);
    }

    fn check_open(&self, open: &Open) -> Result<(), Notification> {
        if open.version != 4 {
            return Err(Notification::with_data(
                code::OPEN_MESSAGE_ERROR,
                subcode::UNSUPPORTED_VERSION_NUMBER,
                vec![0, 4],
            ));
        }
        if open.asn() != self.cfg.remote_as {
            return Err(Notification::with_data(
                code::OPEN_MESSAGE_ERROR,
                subcode::BAD_PEER_AS,
                open.my_as.to_be_bytes().to_vec(),
            ));
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(Notification::new(
                code::OPEN_MESSAGE_ERROR,
                subcode::UNACCEPTABLE_HOLD_TIME,
            ));
        }
        let id = open.bgp_id;
        // RFC 6286 2.1: the identifier must be non-zero, and differ from ours within one AS.
        if id.is_unspecified() || (id == self.cfg.router_id && !self.cfg.is_ebgp()) {
            return Err(Notification::with_data(
                code::OPEN_MESSAGE_ERROR,
                subcode::BAD_BGP_IDENTIFIER,
                id.octets().to_vec(),
            ));
        }
        Ok(())
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.idle_hold_at) {
            self.idle_hold_at = None;
            if self.enabled && self.state == State::Idle {
                self.start(now, out);
            }
        }
        if due(self.hold_at) {
            self.hold_at = None;
            return self.notify_and_fail(Notification::new(code::HOLD_TIMER_EXPIRED, 0), now, out);
        }
        if due(self.connect_retry_at) {
            self.connect_retry_at = Some(now + self.cfg.connect_retry);
            match self.state {
                State::Connect | State::Active if !self.cfg.passive => {
                    out.push(Action::Disconnect);
                    out.push(Action::Connect);
                    self.set_state(State::Connect, out);
                }
                _ => {}
            }
        }
        if due(self.keepalive_at) {
            self.keepalive_at = Some(now + self.keepalive);
            if matches!(self.state, State::OpenConfirm | State::Established) {
                out.push(Action::Send(Message::Keepalive));
            }
        }
    }
}

/// Connection collision resolution (RFC 4271 6.8): with both OPENs known, which connection stays?
/// Returns `true` when the connection *we* initiated survives: our BGP Identifier is the higher one.
pub fn collision_winner(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(remote_id)
}

/// What to do with the peer's second connection once a valid OPEN has arrived on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collision {
    /// Keep the current connection; close the new one with Cease/Connection Collision Resolution.
    KeepCurrent,
    /// Carry on with the new connection; close the current one (if there still is one) with
    /// Cease/Connection Collision Resolution.
    TakeNew,
    /// The peer has restarted (RFC 4724 4.2): end the Established session as if its TCP connection
    /// had been lost — no NOTIFICATION, its routes kept as stale — and carry on with the new one.
    PeerRestarted,
}

/// Decide a connection collision (RFC 4271 6.8) when the peer's OPEN on a second connection has
/// passed the OPEN checks. `current` is the machine of the connection we already had and
/// `current_outbound` says whether we opened it; `new_open` is the OPEN on the peer's new one.
///
/// - Established: RFC 4271 6.8 closes the new connection, so a peer cannot end a working session
///   just by connecting again. The one exception is RFC 4724 4.2: graceful restart was negotiated
///   in the session and the new OPEN carries the Graceful Restart capability, so the peer restarted
///   before we saw its old connection die: the new connection replaces the session.
/// - OpenSent / OpenConfirm: the connection opened by the speaker with the higher BGP Identifier
///   stays. If the peer opened both (ours is inbound too), the one we had stays.
/// - Idle, Connect, Active: the current connection is already gone; take the new one.
///
/// Pure: the decision depends on no timer (the new connection's own machine keeps its timers).
pub fn resolve_collision(current: &Fsm, current_outbound: bool, new_open: &Open) -> Collision {
    match current.state() {
        State::Established => {
            let gr_session = current
                .negotiated()
                .is_some_and(Negotiated::graceful_restart);
            if gr_session && new_open.graceful_restart().is_some() {
                Collision::PeerRestarted
            } else {
                Collision::KeepCurrent
            }
        }
        State::OpenSent | State::OpenConfirm => {
            if current_outbound && !collision_winner(current.cfg.router_id, new_open.bgp_id) {
                Collision::TakeNew
            } else {
                Collision::KeepCurrent
            }
        }
        State::Idle | State::Connect | State::Active => Collision::TakeNew,
    }
}

#[cfg(test)]
mod tests;
