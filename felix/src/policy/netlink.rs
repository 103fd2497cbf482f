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
//!
//! **Layout.** `encode` (requests and element batches) and `decode` (answers and notifications)
//! are pure: bytes in, values out, tested without a socket. `probe` ([`chain_rules`]) and `batch`
//! ([`ElementSocket`], and the judging of a batch's answers) are the exchanges with the kernel,
//! over the socket helpers of this file. Every wire number used is defined here, once.

use std::io;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt, MsgFlags};
use nix::sys::time::{TimeVal, TimeValLike};
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket};

mod batch;
mod decode;
mod encode;
mod gen;
mod probe;

pub use batch::{BatchError, ElementSocket};
pub use decode::{parse_notifications, Notification};
pub use encode::{
    element_batch, key_bytes, ElemChange, ElemMsg, ElemOp, ElementBatch, EncodeError, NLA_MAX_LEN,
};
pub use gen::generation;
pub use probe::{chain_rules, ChainRules};

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
