//! The three places where speaking nfnetlink directly beats running `nft`: the drift probe,
//! set-element updates and ruleset change notifications. This is the only code here that sees
//! nfnetlink bytes; everything else goes through `nft -f` (see the module docs of [`super`] for why
//! text is the main path).
//!
//! **Probe** ([`chain_rules`]). `nft list chain ...` loads nft's whole cache (every set with every
//! element) before printing one chain: ~0.1 s at 60k set elements, ~0.4 s at 10k endpoints, too
//! much to run twice a second. The kernel filters a rule dump by table and chain itself, so one
//! `NFT_MSG_GETRULE` dump returns just that chain's few rules in microseconds. We count the
//! `NFT_MSG_NEWRULE` answers and look for a marker (a rule comment is stored verbatim in the rule's
//! user data); nothing else is decoded.
//!
//! **Element batches** ([`ElementSocket`]). A pod changing labels or addresses changes only elements
//! of plain address sets. Through `nft -f` that costs a process start (~5 ms), nft's cache fetch
//! (every set definition and every interval set's elements), and — measured on kernel 6.18 — a
//! `close()` of nft's netlink socket that blocks 6-30 ms after a transaction that deleted
//! elements. A long-lived socket sending one nfnetlink batch (`BATCH_BEGIN`, `DELSETELEM` /
//! `NEWSETELEM` messages, `BATCH_END`) is the same single kernel transaction without any of that.
//! A set's elements are split over as many messages as keep each element list within its u16
//! attribute length (4,095 IPv4 addresses a message), all in that one batch, so a change of any
//! size stays one transaction; every length is checked, never wrapped ([`EncodeError`]). The batch
//! goes as one datagram (the send buffer grows to fit, as nft's does). The kernel answers inside
//! `sendmsg`, after the commit or abort: an error for each refused message, an error for the batch
//! as a whole if it could not be processed or committed, and the ACK that only the last message
//! asks for. Answers are awaited for [`ANSWER_TIMEOUT`] at most, and any answer the batch does not
//! explain (another sequence number, an ACK nobody asked for) is an error ([`BatchError`]).
//!
//! **Notifications** ([`parse_notifications`]). Subscribed to the `NFNLGRP_NFTABLES` group, a
//! socket receives every ruleset change of its namespace and, per transaction, an
//! `NFT_MSG_NEWGEN` naming the committing thread. `nft monitor` prints the same as text, but
//! formatting each event costs it more CPU than our whole apply (+250 ms for a 60k-element table on
//! two cores); we only need, per message, its family and table name (attribute 1 of every object
//! message) and, per generation, the PID.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, setsockopt, sockopt, MsgFlags};
use nix::sys::time::{TimeVal, TimeValLike};
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::ir::Elem;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
/// Multicast group of nf_tables change notifications.
pub const NFNLGRP_NFTABLES: u32 = 7;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFPROTO_INET: u8 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const ENOENT: i32 = 2;

// ---------------------------------------------------------------------------------------------
// Encoding
//
// Every length the encoder writes is checked: an attribute's `nla_len` is a u16 and a message's
// `nlmsg_len` a u32. A value that does not fit is an [`EncodeError`], never a wrapped length (a
// wrapped `nla_len` would make the kernel parse element bytes as attributes). On an error the
// buffer holds a partial message and is thrown away by the caller.

/// The longest attribute, header and nested attributes included (`nla_len` is a u16).
pub const NLA_MAX_LEN: usize = u16::MAX as usize;

/// Why a request could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An attribute (with everything nested in it) is longer than its u16 `nla_len` can say.
    #[error(
        "netlink attribute type {ty} would be {len} bytes; its u16 length holds at most 65535"
    )]
    AttrTooLong {
        /// Attribute type (without `NLA_F_NESTED`).
        ty: u16,
        /// Its length, header included.
        len: usize,
    },
    /// A message is longer than its u32 `nlmsg_len` can say.
    #[error("netlink message would be {len} bytes; its u32 length cannot hold that")]
    MessageTooLong {
        /// Its length, header included.
        len: usize,
    },
    /// An element of an interval set: those are only changed through `nft`.
    #[error(
        "set {set}: element {elem} is an interval; interval sets are not changed over netlink"
    )]
    Interval {
        /// Set name.
        set: String,
        /// The element.
        elem: String,
    },
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(align4(buf.len()), 0);
}

fn attr_bytes(buf: &mut Vec<u8>, ty: u16, data: &[u8]) -> Result<(), EncodeError> {
    let len = 4 + data.len();
    let nla_len = u16::try_from(len).map_err(|_| EncodeError::AttrTooLong { ty, len })?;
    buf.extend_from_slice(&nla_len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
    Ok(())
}

fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) -> Result<(), EncodeError> {
    let mut z = Vec::with_capacity(s.len() + 1);
    z.extend_from_slice(s.as_bytes());
    z.push(0);
    attr_bytes(buf, ty, &z)
}

/// Start a nested attribute; returns its offset for [`nest_end`].
fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

/// Close the nested attribute started at `at`: write its length, or fail if it does not fit.
fn nest_end(buf: &mut [u8], at: usize) -> Result<(), EncodeError> {
    let len = buf.len() - at;
    let ty = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & !NLA_F_NESTED;
    let nla_len = u16::try_from(len).map_err(|_| EncodeError::AttrTooLong { ty, len })?;
    buf[at..at + 2].copy_from_slice(&nla_len.to_ne_bytes());
    Ok(())
}

/// Append one message: header, nfgenmsg, then what `body` writes.
fn message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 16]);
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    body(buf)?;
    let len = buf.len() - at;
    let nlmsg_len = u32::try_from(len).map_err(|_| EncodeError::MessageTooLong { len })?;
    buf[at..at + 4].copy_from_slice(&nlmsg_len.to_ne_bytes());
    buf[at + 4..at + 6].copy_from_slice(&ty.to_ne_bytes());
    buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
    buf[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
    Ok(())
}

/// Key bytes of an element of a plain (non-interval) set, as the kernel stores them: the address
/// in network order; for `addr . inet_service` the port follows in network order, padded to a
/// 4-byte register. `None` for interval elements (never updated this way).
pub fn key_bytes(e: &Elem) -> Option<Vec<u8>> {
    let addr = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    match e {
        Elem::Addr(ip) => Some(addr(ip)),
        Elem::AddrPort(ip, port) => {
            let mut k = addr(ip);
            k.extend_from_slice(&port.to_be_bytes());
            k.extend_from_slice(&[0, 0]);
            Some(k)
        }
        Elem::Net(_) | Elem::Ports(..) => None,
    }
}

/// One set's element changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElemChange {
    /// Set name.
    pub set: String,
    /// Elements to delete.
    pub del: Vec<Elem>,
    /// Elements to add.
    pub add: Vec<Elem>,
}

/// What an element message does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemOp {
    /// `NFT_MSG_DELSETELEM`.
    Delete,
    /// `NFT_MSG_NEWSETELEM`.
    Add,
}

impl fmt::Display for ElemOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElemOp::Delete => "delete",
            ElemOp::Add => "add",
        })
    }
}

/// One element message of a batch, kept to read its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElemMsg {
    /// Its sequence number.
    pub seq: u32,
    /// Delete or add.
    pub op: ElemOp,
    /// The set.
    pub set: String,
    /// Number of elements in it.
    pub elements: usize,
}

/// An encoded element batch: `BATCH_BEGIN`, the element messages, `BATCH_END`; sequence numbers
/// run from `begin_seq` through the messages to `end_seq` (wrapping).
#[derive(Clone, Debug)]
pub struct ElementBatch {
    /// The bytes to send, in one datagram.
    pub bytes: Vec<u8>,
    /// Sequence number of `BATCH_BEGIN`.
    pub begin_seq: u32,
    /// Sequence number of `BATCH_END`.
    pub end_seq: u32,
    /// The element messages, in order; only the last asks for an ACK.
    pub messages: Vec<ElemMsg>,
}

impl ElementBatch {
    /// The first sequence number after this batch.
    pub fn next_seq(&self) -> u32 {
        self.end_seq.wrapping_add(1)
    }
}

/// Bytes one element takes inside `NFTA_SET_ELEM_LIST_ELEMENTS`:
/// `NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE key } }`, three headers and the key.
fn element_len(key: &[u8]) -> usize {
    12 + align4(key.len())
}

/// Room for elements in one message: `NFTA_SET_ELEM_LIST_ELEMENTS` holds them after its own
/// 4-byte header and must stay within [`NLA_MAX_LEN`]. That is 4,095 IPv4 or 2,340 IPv6 addresses.
const ELEMENTS_ROOM: usize = NLA_MAX_LEN - 4;

/// The batch for `changes` in `inet table`: all deletes, then all adds.
///
/// A set's elements are spread over as many messages as it takes to keep each message's
/// `NFTA_SET_ELEM_LIST_ELEMENTS` within its u16 length. All of them go into this one batch, and
/// the kernel commits or aborts a batch as a whole, so a change split into several messages is as
/// atomic as one that fits in one: the batch is never split into several transactions.
///
/// Only the last element message asks for an ACK. The kernel answers every failing message
/// anyway, and it sends all answers after it has processed the whole batch, in message order; so
/// the ACK of the last message is the last answer, and a batch that succeeds costs one answer
/// however many messages it has (no receive buffer to overflow with one ACK per message).
pub fn element_batch(
    table: &str,
    changes: &[ElemChange],
    seq0: u32,
) -> Result<ElementBatch, EncodeError> {
    // Keys first, split into messages: an interval element fails before anything is encoded.
    let mut plan: Vec<(ElemOp, &str, Vec<Vec<u8>>)> = Vec::new();
    for op in [ElemOp::Delete, ElemOp::Add] {
        for c in changes {
            let elems = match op {
                ElemOp::Delete => &c.del,
                ElemOp::Add => &c.add,
            };
            let mut chunk: Vec<Vec<u8>> = Vec::new();
            let mut room = ELEMENTS_ROOM;
            for e in elems {
                let k = key_bytes(e).ok_or_else(|| EncodeError::Interval {
                    set: c.set.clone(),
                    elem: e.to_string(),
                })?;
                let n = element_len(&k);
                if n > room && !chunk.is_empty() {
                    plan.push((op, &c.set, std::mem::take(&mut chunk)));
                    room = ELEMENTS_ROOM;
                }
                // An element larger than a whole message (none is) fails in `nest_end`.
                room = room.saturating_sub(n);
                chunk.push(k);
            }
            if !chunk.is_empty() {
                plan.push((op, &c.set, chunk));
            }
        }
    }

    let size: usize = plan
        .iter()
        .map(|(_, set, keys)| 64 + set.len() + keys.iter().map(|k| element_len(k)).sum::<usize>())
        .sum();
    let mut bytes = Vec::with_capacity(40 + table.len() * plan.len() + size);
    message(
        &mut bytes,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq0,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| Ok(()),
    )?;
    let mut seq = seq0;
    let mut messages = Vec::with_capacity(plan.len());
    let last = plan.len().saturating_sub(1);
    for (i, (op, set, keys)) in plan.iter().enumerate() {
        seq = seq.wrapping_add(1);
        let (ty, mut flags) = match op {
            ElemOp::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST),
            ElemOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE),
        };
        if i == last {
            flags |= NLM_F_ACK;
        }
        message(
            &mut bytes,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            flags,
            seq,
            NFPROTO_INET,
            0,
            |b| {
                attr_str(b, NFTA_SET_ELEM_LIST_TABLE, table)?;
                attr_str(b, NFTA_SET_ELEM_LIST_SET, set)?;
                let list = nest_start(b, NFTA_SET_ELEM_LIST_ELEMENTS);
                for k in keys {
                    let el = nest_start(b, NFTA_LIST_ELEM);
                    let key = nest_start(b, NFTA_SET_ELEM_KEY);
                    attr_bytes(b, NFTA_DATA_VALUE, k)?;
                    nest_end(b, key)?;
                    nest_end(b, el)?;
                }
                nest_end(b, list)
            },
        )?;
        messages.push(ElemMsg {
            seq,
            op: *op,
            set: set.to_string(),
            elements: keys.len(),
        });
    }
    let end_seq = seq.wrapping_add(1);
    message(
        &mut bytes,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end_seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| Ok(()),
    )?;
    Ok(ElementBatch {
        bytes,
        begin_seq: seq0,
        end_seq,
        messages,
    })
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// One decoded answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `NLMSG_ERROR` for request `seq` with this (non-positive) error code; 0 is an ACK.
    Error {
        /// Sequence number of the request it answers.
        seq: u32,
        /// 0 or a negated errno.
        code: i32,
    },
    /// `NLMSG_DONE`.
    Done,
    /// Any other message type, with whether its payload contains the marker.
    Msg(u16, bool),
}

/// Split a datagram into answers.
fn answers(mut data: &[u8], marker: &[u8]) -> io::Result<Vec<Answer>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
        if len < 16 || len > data.len() {
            return Err(bad("short netlink message"));
        }
        let body = &data[16..len];
        out.push(match ty {
            NLMSG_DONE => Answer::Done,
            NLMSG_ERROR => Answer::Error {
                seq,
                code: body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .ok_or_else(|| bad("NLMSG_ERROR without an error code"))?,
            },
            t => Answer::Msg(
                t,
                !marker.is_empty() && body.windows(marker.len()).any(|w| w == marker),
            ),
        });
        data = &data[align4(len).min(data.len())..];
    }
    Ok(out)
}

/// One ruleset change notification, reduced to what drift detection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// An object message (table, chain, rule, set, element, object, flowtable; add or delete).
    Object {
        /// Message type (`NFT_MSG_*`).
        msg: u16,
        /// nfgenmsg family (`NFPROTO_INET` = 1).
        family: u8,
        /// Its table.
        table: String,
    },
    /// End of a transaction: `NFT_MSG_NEWGEN` with the committing thread.
    Generation {
        /// PID (thread id) of the committer.
        pid: Option<u32>,
        /// Its command name.
        comm: String,
    },
}

/// Attributes of a message body (after the nfgenmsg), as (type, payload).
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decode a datagram of nf_tables notifications (other messages are skipped).
pub fn parse_notifications(mut data: &[u8]) -> Vec<Notification> {
    let mut out = Vec::new();
    while data.len() >= 20 {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        if len < 20 || len > data.len() {
            break;
        }
        if ty >> 8 == NFNL_SUBSYS_NFTABLES {
            let msg = ty & 0xff;
            let family = data[16];
            let a = attrs(&data[20..len]);
            if msg == NFT_MSG_NEWGEN {
                let pid = a
                    .iter()
                    .find(|(t, v)| *t == NFTA_GEN_PROC_PID && v.len() >= 4)
                    .map(|(_, v)| u32::from_be_bytes(v[0..4].try_into().unwrap()));
                let comm = a
                    .iter()
                    .find(|(t, _)| *t == NFTA_GEN_PROC_NAME)
                    .map(|(_, v)| c_string(v))
                    .unwrap_or_default();
                out.push(Notification::Generation { pid, comm });
            } else if let Some((_, v)) = a.iter().find(|(t, _)| *t == 1) {
                // Attribute 1 is the table name in every object message.
                out.push(Notification::Object {
                    msg,
                    family,
                    table: c_string(v),
                });
            }
        }
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    out
}

fn socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    Ok(sock)
}

/// How long a request waits for the kernel's answers. The kernel handles a request inside
/// `sendmsg`, so its answers are queued before `sendmsg` returns; waiting at all only happens
/// when an answer was lost, and then this bounds how long the policy thread is stuck.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The next datagram from the kernel, waiting until `deadline` at most (then `TimedOut`).
/// Datagrams from other sockets (a process can send to our port id) are skipped.
fn recv_until(sock: &Socket, deadline: Instant) -> io::Result<Vec<u8>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"));
        }
        // An SO_RCVTIMEO of zero would mean "wait forever": at least 1 us.
        let us = i64::try_from(left.as_micros()).unwrap_or(i64::MAX).max(1);
        setsockopt(sock, sockopt::ReceiveTimeout, &TimeVal::microseconds(us))?;
        match sock.recv_from_full() {
            Ok((data, _)) if data.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink closed",
                ))
            }
            Ok((_, from)) if from.port_number() != 0 => continue,
            Ok((data, _)) => return Ok(data),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer"))
            }
            Err(e) => return Err(e),
        }
    }
}

/// A datagram from the kernel that is already queued, without waiting.
fn recv_queued(sock: &Socket) -> io::Result<Option<Vec<u8>>> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        match sock.recv_from(&mut buf, MsgFlags::MSG_DONTWAIT.bits()) {
            Ok((_, from)) if from.port_number() != 0 => buf.clear(),
            Ok(_) => return Ok(Some(buf)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probe

/// What the kernel has in one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainRules {
    /// Number of rules (0 if the table or chain does not exist).
    pub rules: usize,
    /// Whether some rule carries the marker bytes.
    pub marker: bool,
}

/// List `inet table chain` and look for `marker` in its rules. Fails with `TimedOut` when the
/// dump does not end within [`ANSWER_TIMEOUT`].
pub fn chain_rules(table: &str, chain: &str, marker: &str) -> io::Result<ChainRules> {
    let sock = socket()?;
    let mut req = Vec::new();
    message(
        &mut req,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        NFPROTO_INET,
        0,
        |b| {
            attr_str(b, NFTA_RULE_TABLE, table)?;
            attr_str(b, NFTA_RULE_CHAIN, chain)
        },
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    sock.send_to(&req, &SocketAddr::new(0, 0), 0)?;
    let mut acc = ChainRules {
        rules: 0,
        marker: false,
    };
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let data = recv_until(&sock, deadline)?;
        for a in answers(&data, marker.as_bytes())? {
            match a {
                Answer::Done | Answer::Error { code: 0, .. } => return Ok(acc),
                Answer::Error { code, .. } if -code == ENOENT => {
                    return Ok(ChainRules {
                        rules: 0,
                        marker: false,
                    })
                }
                Answer::Error { code, .. } => return Err(io::Error::from_raw_os_error(-code)),
                Answer::Msg(t, m) if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                    acc.rules += 1;
                    acc.marker |= m;
                }
                Answer::Msg(..) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Element batches

/// Why an element batch failed.
///
/// [`BatchError::Refused`] and [`BatchError::BatchRefused`] mean the kernel aborted the batch:
/// nothing of it was applied. After the others the kernel's state is unknown (the batch may or may
/// not have been committed), and the driver replaces the table. After any of them the socket is
/// dropped, so that a late answer cannot be taken for an answer to the next batch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The batch could not be encoded (nothing was sent).
    #[error("encoding the element batch: {0}")]
    Encode(#[from] EncodeError),
    /// A socket call failed (`ENOBUFS` on receive: answers were lost).
    #[error("nfnetlink socket: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel's last answer did not come in time.
    #[error("no answer from the kernel within {0:?}")]
    Timeout(Duration),
    /// The kernel refused one element message.
    #[error("kernel refused to {op} {elements} elements of set {set}: {source}")]
    Refused {
        /// The set.
        set: String,
        /// Delete or add.
        op: ElemOp,
        /// Elements in the refused message.
        elements: usize,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the batch as a whole: an error answer to `BATCH_BEGIN` or `BATCH_END`
    /// (a malformed batch, a failed commit, no memory for the per-message answers).
    #[error("kernel refused the whole batch (answer to seq {seq}): {source}")]
    BatchRefused {
        /// Sequence number of the batch message answered.
        seq: u32,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// An answer this batch does not explain: to a sequence number not in it, an ACK nobody asked
    /// for, a message that is not an answer, or anything after the last answer.
    #[error("unexpected answer from the kernel: {0}")]
    Unexpected(String),
    /// An answer that could not be decoded.
    #[error("malformed answer from the kernel: {0}")]
    Malformed(String),
}

impl ElementBatch {
    /// Fold one answer into `failed` (the first refused message); `Some` once the outcome of the
    /// batch is known. See [`element_batch`] for which answers the kernel sends.
    fn judge(&self, a: Answer, failed: &mut Option<BatchError>) -> Option<Result<(), BatchError>> {
        let (seq, code) = match a {
            Answer::Error { seq, code } => (seq, code),
            Answer::Done => return Some(Err(BatchError::Unexpected("NLMSG_DONE".into()))),
            Answer::Msg(ty, _) => {
                return Some(Err(BatchError::Unexpected(format!(
                    "message type {ty:#06x}"
                ))))
            }
        };
        if code > 0 {
            return Some(Err(BatchError::Malformed(format!(
                "positive error code {code} for seq {seq}"
            ))));
        }
        if seq == self.begin_seq || seq == self.end_seq {
            return Some(Err(if code < 0 {
                BatchError::BatchRefused {
                    seq,
                    source: io::Error::from_raw_os_error(-code),
                }
            } else {
                BatchError::Unexpected(format!("ACK of the batch delimiter (seq {seq})"))
            }));
        }
        // Message i has sequence number begin_seq + 1 + i (wrapping).
        let i = seq.wrapping_sub(self.begin_seq).wrapping_sub(1) as usize;
        let Some(m) = self.messages.get(i) else {
            return Some(Err(BatchError::Unexpected(format!(
                "answer {code} to seq {seq}, which is not in this batch ({}..={})",
                self.begin_seq, self.end_seq
            ))));
        };
        let last = i + 1 == self.messages.len();
        if code < 0 {
            failed.get_or_insert_with(|| BatchError::Refused {
                set: m.set.clone(),
                op: m.op,
                elements: m.elements,
                source: io::Error::from_raw_os_error(-code),
            });
        } else if !last {
            return Some(Err(BatchError::Unexpected(format!(
                "ACK of seq {seq}, which did not ask for one"
            ))));
        }
        last.then(|| failed.take().map_or(Ok(()), Err))
    }

    /// Judge every answer of one datagram; `Some` once the outcome is known (and nothing
    /// follows it in the datagram).
    fn judge_datagram(
        &self,
        data: &[u8],
        failed: &mut Option<BatchError>,
    ) -> Result<Option<Result<(), BatchError>>, BatchError> {
        let list = answers(data, b"").map_err(|e| BatchError::Malformed(e.to_string()))?;
        let mut done = None;
        for a in list {
            if done.is_some() {
                return Err(BatchError::Unexpected(format!(
                    "{a:?} after the batch's last answer"
                )));
            }
            done = self.judge(a, failed);
        }
        Ok(done)
    }
}

/// A long-lived nfnetlink socket for element batches, bound in the network namespace of the
/// thread that opened it.
#[derive(Debug)]
pub struct ElementSocket {
    sock: Socket,
    seq: u32,
    /// The send buffer size the kernel reports (`sk_sndbuf`).
    sndbuf: usize,
    timeout: Duration,
}

impl ElementSocket {
    /// Open the socket; answers are awaited for [`ANSWER_TIMEOUT`].
    pub fn open() -> io::Result<ElementSocket> {
        let sock = socket()?;
        // Error answers echo only the header of the refused message, not its up to 64 KiB.
        sock.set_cap_ack(true)?;
        let sndbuf = getsockopt(&sock, sockopt::SndBuf)?;
        Ok(ElementSocket {
            sock,
            seq: 1,
            sndbuf,
            timeout: ANSWER_TIMEOUT,
        })
    }

    /// Wait at most `timeout` for the answers to a batch.
    pub fn with_timeout(mut self, timeout: Duration) -> ElementSocket {
        self.timeout = timeout;
        self
    }

    /// Apply `changes` to sets of `inet table` as one transaction (one batch in one datagram, see
    /// [`element_batch`]); returns the batch size in bytes. After an error drop the socket.
    pub fn apply(&mut self, table: &str, changes: &[ElemChange]) -> Result<usize, BatchError> {
        let batch = element_batch(table, changes, self.seq)?;
        self.seq = batch.next_seq();
        if batch.messages.is_empty() {
            return Ok(0);
        }
        self.reserve_sndbuf(batch.bytes.len())?;
        let io = |what| move |source| BatchError::Io { what, source };
        let sent = self
            .sock
            .send_to(&batch.bytes, &SocketAddr::new(0, 0), 0)
            .map_err(io("sending the batch"))?;
        if sent != batch.bytes.len() {
            return Err(BatchError::Io {
                what: "sending the batch",
                source: io::Error::other(format!("sent {sent} of {} bytes", batch.bytes.len())),
            });
        }
        self.read_answers(&batch)?;
        Ok(batch.bytes.len())
    }

    /// Netlink refuses a datagram longer than the send buffer (less 32 bytes) with `EMSGSIZE`,
    /// and a batch must be one datagram to be one transaction. So grow the buffer to fit, as nft
    /// does for its batches: `SO_SNDBUFFORCE` (we have `CAP_NET_ADMIN`, or nothing here works),
    /// else `SO_SNDBUF` up to `wmem_max`. If the batch still does not fit, sending fails and the
    /// driver applies the change through `nft` instead.
    fn reserve_sndbuf(&mut self, len: usize) -> Result<(), BatchError> {
        let need = len + 64;
        if need <= self.sndbuf {
            return Ok(());
        }
        if setsockopt(&self.sock, sockopt::SndBufForce, &need).is_err() {
            let _ = setsockopt(&self.sock, sockopt::SndBuf, &need);
        }
        self.sndbuf = getsockopt(&self.sock, sockopt::SndBuf).map_err(|e| BatchError::Io {
            what: "reading SO_SNDBUF",
            source: e.into(),
        })?;
        Ok(())
    }

    /// Read answers to `batch` until its outcome is known, for at most the timeout.
    fn read_answers(&self, batch: &ElementBatch) -> Result<(), BatchError> {
        let deadline = Instant::now() + self.timeout;
        let mut failed = None;
        let outcome = loop {
            let data = recv_until(&self.sock, deadline).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut => BatchError::Timeout(self.timeout),
                _ => BatchError::Io {
                    what: "receiving answers",
                    source: e,
                },
            })?;
            if let Some(done) = batch.judge_datagram(&data, &mut failed)? {
                break done;
            }
        };
        outcome?;
        // All answers were queued inside sendmsg, the last one last: nothing may follow it.
        match recv_queued(&self.sock) {
            Ok(None) => Ok(()),
            Ok(Some(data)) => {
                let what = answers(&data, b"").map_or_else(|e| e.to_string(), |a| format!("{a:?}"));
                Err(BatchError::Unexpected(format!(
                    "{what} after the batch's last answer"
                )))
            }
            Err(source) => Err(BatchError::Io {
                what: "receiving answers",
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
