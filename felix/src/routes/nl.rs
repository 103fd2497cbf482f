//! rtnetlink wire: the only code of the route manager that sees netlink bytes.
//!
//! Requests go out in batches: many `RTM_NEWROUTE` / `RTM_DELROUTE` messages in one `sendmsg`, only
//! the last carrying `NLM_F_ACK`. The kernel runs every message of a datagram synchronously inside
//! `sendmsg` (under `rtnl_lock`) and answers a message without `NLM_F_ACK` only when it fails, so
//! one batch costs one system call, one ACK, and one error message per failure; the failed message
//! is identified by its sequence number. `NETLINK_CAP_ACK` keeps error messages small (no echo of
//! the request) and `NETLINK_EXT_ACK` adds the kernel's reason text to them.
//!
//! Dumps (`NLM_F_DUMP`) ignore filters without `NETLINK_GET_STRICT_CHK`, so they fetch everything and
//! the caller filters by table and protocol. The event socket joins the multicast groups for links,
//! IPv4/IPv6 routes and IPv4/IPv6 addresses.
//!
//! Encoding and decoding of route and link messages use `netlink-packet-route`; the netlink header,
//! ACK and error framing (with extended ACK attributes) are handled here.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use rtnetlink::packet_core::{Emitable, Parseable};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHop, RouteNextHopFlags,
    RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

use super::reconcile::{
    KernelHop, KernelKind, KernelRoute, LinkInfo, OpError, RouteKey, RouteOp, RouteSpec, SpecKind,
};

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;
pub(crate) const RTM_NEWLINK: u16 = 16;
pub(crate) const RTM_DELLINK: u16 = 17;
pub(crate) const RTM_GETLINK: u16 = 18;
pub(crate) const RTM_SETLINK: u16 = 19;
pub(crate) const RTM_NEWADDR: u16 = 20;
pub(crate) const RTM_DELADDR: u16 = 21;
pub(crate) const RTM_NEWROUTE: u16 = 24;
pub(crate) const RTM_DELROUTE: u16 = 25;
pub(crate) const RTM_GETROUTE: u16 = 26;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the request was not echoed (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended ACK attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const MSG_TRUNC: i32 = 0x20;
const MSG_DONTWAIT: i32 = 0x40;
const HDR: usize = 16;

pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;

/// `RTNLGRP_LINK`, `RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_IFADDR`,
/// `RTNLGRP_IPV6_ROUTE` as a bind(2) group mask (bit n-1 for group n).
const EVENT_GROUPS: u32 = group_bit(1) | group_bit(5) | group_bit(7) | group_bit(9) | group_bit(11);

const fn group_bit(group: u32) -> u32 {
    1 << (group - 1)
}

const RECV_BUF: usize = 256 * 1024;
const SOCK_RCVBUF: usize = 4 * 1024 * 1024;
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Generous receive-buffer cost of one small error message (skb truesize).
const ERROR_TRUESIZE: usize = 2048;
/// Bytes per `sendmsg`, well under the default `wmem` limit (212992), above which it fails.
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024;

/// One netlink message inside a received datagram.
#[derive(Debug)]
pub(crate) struct RawMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Split a datagram into messages; stops at the first malformed header.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = RawMsg<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < HDR {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < HDR || len > buf.len() {
            return None;
        }
        let m = RawMsg {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().ok()?),
            payload: &buf[HDR..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(m)
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Decode an `NLMSG_ERROR` payload: 0 for an ACK, else the positive errno and its text (with the
/// kernel's extended ACK message when present).
pub(crate) fn decode_error(flags: u16, payload: &[u8]) -> Result<(), OpError> {
    if payload.len() < 4 {
        return Err(OpError {
            errno: 0,
            message: "truncated netlink error message".into(),
        });
    }
    let code = i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
    if code == 0 {
        return Ok(());
    }
    let errno = -code;
    let mut message = io::Error::from_raw_os_error(errno).to_string();
    if let Some(pos) = message.find(" (os error") {
        message.truncate(pos);
    }
    if flags & NLM_F_ACK_TLVS != 0 && payload.len() >= 4 + HDR {
        let echoed = if flags & NLM_F_CAPPED != 0 {
            HDR
        } else {
            let olen = u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes")) as usize;
            align4(olen)
        };
        let mut tlvs = payload.get(4 + echoed..).unwrap_or(&[]);
        while tlvs.len() >= 4 {
            let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
            let ty = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
            if len < 4 || len > tlvs.len() {
                break;
            }
            if ty == NLMSGERR_ATTR_MSG {
                let text = &tlvs[4..len];
                let text = text.split(|b| *b == 0).next().unwrap_or(&[]);
                message.push_str(": ");
                message.push_str(&String::from_utf8_lossy(text));
            }
            tlvs = &tlvs[align4(len).min(tlvs.len())..];
        }
    }
    Err(OpError { errno, message })
}

/// Messages for one `sendmsg`, with consecutive sequence numbers from `first_seq`.
pub(crate) struct Batch {
    buf: Vec<u8>,
    last: usize,
    n: u32,
    first_seq: u32,
}

impl Batch {
    pub fn new(first_seq: u32) -> Batch {
        Batch {
            buf: Vec::with_capacity(64 * 1024),
            last: 0,
            n: 0,
            first_seq,
        }
    }

    /// Append a request; its sequence number is `first_seq + index`.
    /// Messages so far.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// Bytes so far.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn push(&mut self, ty: u16, flags: u16, payload: &dyn Emitable) {
        let len = HDR + payload.buffer_len();
        let at = self.buf.len();
        self.buf.resize(at + align4(len), 0);
        let seq = self.first_seq.wrapping_add(self.n);
        let b = &mut self.buf[at..];
        b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        b[4..6].copy_from_slice(&ty.to_ne_bytes());
        b[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        b[12..16].copy_from_slice(&0u32.to_ne_bytes());
        payload.emit(&mut b[HDR..len]);
        self.last = at;
        self.n += 1;
    }

    fn finish(&mut self) {
        let at = self.last + 6;
        let flags = u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]) | NLM_F_ACK;
        self.buf[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
    }
}

/// A route operation as a netlink request.
pub(crate) fn push_route_op(b: &mut Batch, op: &RouteOp, protocol: u8, table: u32) {
    match op {
        RouteOp::Add(s) => b.push(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &encode_spec(s, protocol, table),
        ),
        RouteOp::Replace(s) => b.push(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            &encode_spec(s, protocol, table),
        ),
        RouteOp::Delete(k) => b.push(RTM_DELROUTE, 0, &encode_delete(k, protocol)),
    }
}

fn family(dst: &IpNet) -> AddressFamily {
    match dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

fn base_message(key: &RouteKey, table: u32, protocol: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(&key.dst);
    m.header.destination_prefix_length = key.dst.prefix_len();
    m.header.table = if table < 256 { table as u8 } else { 0 };
    m.header.protocol = RouteProtocol::from(protocol);
    if key.dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                key.dst.addr(),
            )));
    }
    m.attributes.push(RouteAttribute::Table(table));
    if key.metric != 0 {
        m.attributes.push(RouteAttribute::Priority(key.metric));
    }
    m
}

/// `RTM_NEWROUTE` body for a spec.
pub(crate) fn encode_spec(s: &RouteSpec, protocol: u8, table: u32) -> RouteMessage {
    let mut m = base_message(&s.key, table, protocol);
    match &s.kind {
        SpecKind::Blackhole => {
            m.header.kind = RouteType::BlackHole;
            m.header.scope = RouteScope::Universe;
        }
        SpecKind::Dev { oif } => {
            m.header.kind = RouteType::Unicast;
            // IPv6 has no route scopes (it reports universe); IPv4 needs link for a gatewayless route.
            m.header.scope = if s.key.dst.addr().is_ipv4() {
                RouteScope::Link
            } else {
                RouteScope::Universe
            };
            m.attributes.push(RouteAttribute::Oif(*oif));
        }
        SpecKind::Via { hops } if hops.len() == 1 => {
            let h = &hops[0];
            m.header.kind = RouteType::Unicast;
            m.header.scope = RouteScope::Universe;
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(h.gateway)));
            if let Some(oif) = h.oif {
                m.attributes.push(RouteAttribute::Oif(oif));
            }
            if h.onlink {
                m.header.flags |= RouteFlags::Onlink;
            }
        }
        SpecKind::Via { hops } => {
            m.header.kind = RouteType::Unicast;
            m.header.scope = RouteScope::Universe;
            let nhs = hops
                .iter()
                .map(|h| {
                    let mut nh = RouteNextHop::default();
                    nh.interface_index = h.oif.unwrap_or(0);
                    if h.onlink {
                        nh.flags |= RouteNextHopFlags::Onlink;
                    }
                    nh.attributes
                        .push(RouteAttribute::Gateway(RouteAddress::from(h.gateway)));
                    nh
                })
                .collect();
            m.attributes.push(RouteAttribute::MultiPath(nhs));
        }
    }
    m
}

/// `RTM_DELROUTE` body: destination, table, metric, type and *our protocol*, which the kernel
/// matches (IPv4 and IPv6 both skip routes of another protocol), and no next hop, so a multipath
/// route goes whole.
pub(crate) fn encode_delete(k: &KernelRoute, protocol: u8) -> RouteMessage {
    let mut m = base_message(&k.key, k.table, protocol);
    m.header.tos = k.tos;
    m.header.scope = RouteScope::NoWhere;
    m.header.kind = match &k.kind {
        KernelKind::Blackhole => RouteType::BlackHole,
        KernelKind::Dev { .. } | KernelKind::Via { .. } => RouteType::Unicast,
        KernelKind::Other { rtype } => RouteType::from(*rtype),
    };
    m
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Decode an `RTM_NEWROUTE` / `RTM_DELROUTE` body. `None` for what the route manager never owns:
/// other families, source-specific and cloned (cache) routes.
pub(crate) fn decode_route(payload: &[u8]) -> Result<Option<KernelRoute>, String> {
    let m = RouteMessage::parse(payload).map_err(|e| e.to_string())?;
    let h = &m.header;
    let v4 = match h.address_family {
        AddressFamily::Inet => true,
        AddressFamily::Inet6 => false,
        _ => return Ok(None),
    };
    if h.source_prefix_length != 0 || h.flags.contains(RouteFlags::Cloned) {
        return Ok(None);
    }
    let mut table = u32::from(h.table);
    let mut dst: Option<IpAddr> = None;
    let mut metric = 0;
    let mut oif = 0;
    let mut gateway = None;
    let mut multipath: Option<&Vec<RouteNextHop>> = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Oif(i) => oif = *i,
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::MultiPath(hops) => multipath = Some(hops),
            _ => {}
        }
    }
    let addr = dst.unwrap_or(if v4 {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    });
    let dst = IpNet::new(addr, h.destination_prefix_length).map_err(|e| e.to_string())?;
    let kind = match h.kind {
        RouteType::BlackHole => KernelKind::Blackhole,
        RouteType::Unicast => {
            if let Some(nhs) = multipath {
                let mut hops: Vec<KernelHop> = nhs
                    .iter()
                    .filter_map(|nh| {
                        let gw = nh.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => ip_of(g),
                            _ => None,
                        })?;
                        Some(KernelHop {
                            gateway: gw,
                            oif: nh.interface_index,
                            onlink: nh.flags.contains(RouteNextHopFlags::Onlink),
                        })
                    })
                    .collect();
                hops.sort();
                if hops.len() == nhs.len() {
                    KernelKind::Via { hops }
                } else {
                    KernelKind::Other { rtype: 1 }
                }
            } else if let Some(gw) = gateway {
                KernelKind::Via {
                    hops: vec![KernelHop {
                        gateway: gw,
                        oif,
                        onlink: h.flags.contains(RouteFlags::Onlink),
                    }],
                }
            } else if oif != 0 {
                KernelKind::Dev { oif }
            } else {
                KernelKind::Other { rtype: 1 }
            }
        }
        other => KernelKind::Other {
            rtype: u8::from(other),
        },
    };
    Ok(Some(KernelRoute {
        key: RouteKey { dst, metric },
        table,
        protocol: u8::from(h.protocol),
        tos: h.tos,
        scope: u8::from(h.scope),
        kind,
    }))
}

/// Decode an `RTM_NEWLINK` / `RTM_DELLINK` body.
pub(crate) fn decode_link(payload: &[u8]) -> Result<LinkInfo, String> {
    let m = LinkMessage::parse(payload).map_err(|e| e.to_string())?;
    let mut name = String::new();
    let mut mac = Vec::new();
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(a) => mac = a.clone(),
            _ => {}
        }
    }
    Ok(LinkInfo {
        index: m.header.index,
        name,
        up: m.header.flags.contains(LinkFlags::Up),
        mac,
    })
}

/// `RTM_SETLINK` body: set the link up, and its MAC if given.
pub(crate) fn encode_link_up(index: u32, mac: Option<[u8; 6]>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    if let Some(mac) = mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    m
}

/// A fixed-size header-only body for dump requests (`rtmsg` 12 bytes, `ifinfomsg` 16 bytes).
struct DumpReq {
    family: u8,
    len: usize,
}

impl Emitable for DumpReq {
    fn buffer_len(&self) -> usize {
        self.len
    }
    fn emit(&self, buffer: &mut [u8]) {
        buffer[..self.len].fill(0);
        buffer[0] = self.family;
    }
}

/// A non-blocking rtnetlink socket registered with tokio.
pub(crate) struct NlSocket {
    fd: AsyncFd<Socket>,
    seq: u32,
    buf: Vec<u8>,
    max_batch: usize,
}

fn other(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl NlSocket {
    /// A socket for requests and dumps.
    pub fn request() -> io::Result<NlSocket> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind_auto()?;
        s.set_ext_ack(true)?;
        s.set_cap_ack(true)?;
        Self::finish(s)
    }

    /// A socket subscribed to link, route and address events.
    pub fn events() -> io::Result<NlSocket> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind(&SocketAddr::new(0, EVENT_GROUPS))?;
        Self::finish(s)
    }

    fn finish(s: Socket) -> io::Result<NlSocket> {
        // Best effort: capped by net.core.rmem_max. Overruns are detected (ENOBUFS) and answered
        // with a full dump.
        let _ = s.set_rx_buf_sz(SOCK_RCVBUF);
        let rcvbuf = s.get_rx_buf_sz().unwrap_or(0);
        s.set_non_blocking(true)?;
        // `AsyncFd::new` is deprecated because a registered raw fd could be closed behind tokio's
        // back; `Socket` owns its fd and lives inside the `AsyncFd`, so that cannot happen here. The
        // replacement, `AsyncFd::register`, is `unsafe`, which this workspace forbids (netlink-sys's
        // own `TokioSocket` makes the same call).
        #[allow(deprecated)]
        let fd = AsyncFd::new(s)?;
        Ok(NlSocket {
            fd,
            seq: 1,
            buf: Vec::with_capacity(RECV_BUF),
            max_batch: (rcvbuf / ERROR_TRUESIZE).clamp(16, 4096),
        })
    }

    /// The most messages one batch may carry so that, even if every one fails, all error messages
    /// fit in the receive buffer (a lost error would leave a route's outcome unknown).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Reserve `n` sequence numbers; returns the first.
    pub fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n.max(1));
        s
    }

    /// Receive one datagram into the internal buffer, waiting for it.
    async fn recv(&mut self) -> io::Result<&[u8]> {
        loop {
            self.buf.clear();
            match self
                .fd
                .get_ref()
                .recv(&mut self.buf, MSG_TRUNC | MSG_DONTWAIT)
            {
                Ok(n) => return self.checked(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let mut guard = self.fd.readable().await?;
            self.buf.clear();
            let buf = &mut self.buf;
            match guard.try_io(|s| s.get_ref().recv(buf, MSG_TRUNC)) {
                Ok(r) => {
                    let n = r?;
                    return self.checked(n);
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn checked(&self, n: usize) -> io::Result<&[u8]> {
        if n > self.buf.len() {
            return Err(other("recv", format!("datagram of {n} bytes truncated")));
        }
        Ok(&self.buf[..n])
    }

    /// Receive one datagram if one is queued, without waiting.
    pub fn try_recv(&mut self) -> io::Result<Option<&[u8]>> {
        self.buf.clear();
        match self
            .fd
            .get_ref()
            .recv(&mut self.buf, MSG_TRUNC | MSG_DONTWAIT)
        {
            Ok(n) => self.checked(n).map(Some),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Wait until a datagram is queued (clears stale readiness on the way).
    pub async fn readable(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut probe = [0u8; 1];
            match guard.try_io(|s| {
                s.get_ref()
                    .recv(&mut &mut probe[..], 0x2 /* MSG_PEEK */ | MSG_DONTWAIT)
            }) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Send a batch and collect the outcome of every message (index = message order). Messages
    /// without an answer succeeded.
    pub async fn execute(&mut self, batch: &mut Batch) -> io::Result<Vec<Result<(), OpError>>> {
        if batch.n == 0 {
            return Ok(Vec::new());
        }
        batch.finish();
        let sent = self.fd.get_ref().send(&batch.buf, 0)?;
        if sent != batch.buf.len() {
            return Err(other(
                "send",
                format!("short send {sent} of {}", batch.buf.len()),
            ));
        }
        let mut out: Vec<Result<(), OpError>> = vec![Ok(()); batch.n as usize];
        let first = batch.first_seq;
        let last = first.wrapping_add(batch.n - 1);
        let n = batch.n;
        tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                let data = self.recv().await?;
                let mut done = false;
                for m in messages(data) {
                    if m.ty != NLMSG_ERROR {
                        continue;
                    }
                    let idx = m.seq.wrapping_sub(first);
                    if idx >= n {
                        continue;
                    }
                    out[idx as usize] = decode_error(m.flags, m.payload);
                    done |= m.seq == last;
                }
                if done {
                    return Ok::<(), io::Error>(());
                }
            }
        })
        .await
        .map_err(|_| other("netlink", "no ACK within 10 s"))??;
        Ok(out)
    }

    /// Dump `ty` (`RTM_GETROUTE` or `RTM_GETLINK`) for `family`, calling `f` with each message's
    /// type and body. Returns whether the kernel flagged the dump as interrupted by a change.
    pub async fn dump(
        &mut self,
        ty: u16,
        family: u8,
        mut f: impl FnMut(u16, &[u8]),
    ) -> io::Result<bool> {
        let seq = self.next_seq(1);
        let mut b = Batch::new(seq);
        let len = if ty == RTM_GETLINK { 16 } else { 12 };
        b.push(ty, NLM_F_DUMP, &DumpReq { family, len });
        let sent = self.fd.get_ref().send(&b.buf, 0)?;
        if sent != b.buf.len() {
            return Err(other("send", "short send"));
        }
        let mut interrupted = false;
        tokio::time::timeout(REPLY_TIMEOUT, async {
            loop {
                let data = self.recv().await?;
                for m in messages(data) {
                    if m.seq != seq {
                        continue;
                    }
                    interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                    match m.ty {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            return decode_error(m.flags, m.payload)
                                .map_err(|e| other("dump", e.message))
                        }
                        NLMSG_OVERRUN => return Err(other("dump", "overrun")),
                        _ => f(m.ty, m.payload),
                    }
                }
            }
        })
        .await
        .map_err(|_| other("dump", "no end within 10 s"))??;
        Ok(interrupted)
    }
}

#[cfg(test)]
mod tests;
