//! Encoding (pure): nfnetlink requests and element batches as bytes.
//!
//! Every length the encoder writes is checked: an attribute's `nla_len` is a u16 and a message's
//! `nlmsg_len` a u32. A value that does not fit is an [`EncodeError`], never a wrapped length (a
//! wrapped `nla_len` would make the kernel parse element bytes as attributes). On an error the
//! buffer holds a partial message and is thrown away by the caller.

use std::fmt;
use std::net::IpAddr;

use super::{
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFTA_DATA_VALUE,
    NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, NLA_F_NESTED, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_REQUEST,
};
use crate::policy::ir::Elem;

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

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub(super) fn pad(buf: &mut Vec<u8>) {
    buf.resize(align4(buf.len()), 0);
}

pub(super) fn attr_bytes(buf: &mut Vec<u8>, ty: u16, data: &[u8]) -> Result<(), EncodeError> {
    let len = 4 + data.len();
    let nla_len = u16::try_from(len).map_err(|_| EncodeError::AttrTooLong { ty, len })?;
    buf.extend_from_slice(&nla_len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
    Ok(())
}

pub(super) fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) -> Result<(), EncodeError> {
    let mut z = Vec::with_capacity(s.len() + 1);
    z.extend_from_slice(s.as_bytes());
    z.push(0);
    attr_bytes(buf, ty, &z)
}

/// Start a nested attribute; returns its offset for [`nest_end`].
pub(super) fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

/// Close the nested attribute started at `at`: write its length, or fail if it does not fit.
pub(super) fn nest_end(buf: &mut [u8], at: usize) -> Result<(), EncodeError> {
    let len = buf.len() - at;
    let ty = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & !NLA_F_NESTED;
    let nla_len = u16::try_from(len).map_err(|_| EncodeError::AttrTooLong { ty, len })?;
    buf[at..at + 2].copy_from_slice(&nla_len.to_ne_bytes());
    Ok(())
}

/// Append one message: header, nfgenmsg, then what `body` writes.
pub(super) fn message(
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

/// One element message of a batch before encoding: its set and the keys of its elements.
#[derive(Debug)]
struct PlannedMsg<'a> {
    op: ElemOp,
    set: &'a str,
    keys: Vec<Vec<u8>>,
}

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
    let plan = plan_messages(changes)?;
    let size: usize = plan
        .iter()
        .map(|m| 64 + m.set.len() + m.keys.iter().map(|k| element_len(k)).sum::<usize>())
        .sum();
    let mut bytes = Vec::with_capacity(40 + table.len() * plan.len() + size);
    batch_delimiter(&mut bytes, NFNL_MSG_BATCH_BEGIN, seq0)?;
    let mut seq = seq0;
    let mut messages = Vec::with_capacity(plan.len());
    for (i, m) in plan.iter().enumerate() {
        seq = seq.wrapping_add(1);
        element_message(&mut bytes, table, m, seq, i + 1 == plan.len())?;
        messages.push(ElemMsg {
            seq,
            op: m.op,
            set: m.set.to_string(),
            elements: m.keys.len(),
        });
    }
    let end_seq = seq.wrapping_add(1);
    batch_delimiter(&mut bytes, NFNL_MSG_BATCH_END, end_seq)?;
    Ok(ElementBatch {
        bytes,
        begin_seq: seq0,
        end_seq,
        messages,
    })
}

/// The element messages of a batch, in order: every set's deletes, then every set's adds. All
/// keys are computed here, before anything is encoded, so an interval element fails the batch
/// without a partial encoding.
fn plan_messages(changes: &[ElemChange]) -> Result<Vec<PlannedMsg<'_>>, EncodeError> {
    let mut plan = Vec::new();
    for op in [ElemOp::Delete, ElemOp::Add] {
        for c in changes {
            let elems = match op {
                ElemOp::Delete => &c.del,
                ElemOp::Add => &c.add,
            };
            for keys in split_keys(&c.set, elems)? {
                plan.push(PlannedMsg {
                    op,
                    set: &c.set,
                    keys,
                });
            }
        }
    }
    Ok(plan)
}

/// The keys of `elems` (of set `set`), in order, cut into as few chunks as keep each chunk's
/// element list within [`ELEMENTS_ROOM`]; no chunk is empty.
fn split_keys(set: &str, elems: &[Elem]) -> Result<Vec<Vec<Vec<u8>>>, EncodeError> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<Vec<u8>> = Vec::new();
    let mut room = ELEMENTS_ROOM;
    for e in elems {
        let k = key_bytes(e).ok_or_else(|| EncodeError::Interval {
            set: set.to_string(),
            elem: e.to_string(),
        })?;
        let n = element_len(&k);
        if n > room && !chunk.is_empty() {
            chunks.push(std::mem::take(&mut chunk));
            room = ELEMENTS_ROOM;
        }
        // An element larger than a whole message (none is) fails in `nest_end`.
        room = room.saturating_sub(n);
        chunk.push(k);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    Ok(chunks)
}

/// `BATCH_BEGIN` or `BATCH_END` (`ty`): no attributes; the nfgenmsg `res_id` names the
/// subsystem the batch is for.
fn batch_delimiter(buf: &mut Vec<u8>, ty: u16, seq: u32) -> Result<(), EncodeError> {
    message(buf, ty, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, |_| {
        Ok(())
    })
}

/// One `DELSETELEM` / `NEWSETELEM` message for `m` in `inet table`; `ack`: whether it asks for
/// an ACK (only the batch's last message does, see [`element_batch`]).
fn element_message(
    buf: &mut Vec<u8>,
    table: &str,
    m: &PlannedMsg<'_>,
    seq: u32,
    ack: bool,
) -> Result<(), EncodeError> {
    let (ty, mut flags) = match m.op {
        ElemOp::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST),
        ElemOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE),
    };
    if ack {
        flags |= NLM_F_ACK;
    }
    message(
        buf,
        (NFNL_SUBSYS_NFTABLES << 8) | ty,
        flags,
        seq,
        NFPROTO_INET,
        0,
        |b| {
            attr_str(b, NFTA_SET_ELEM_LIST_TABLE, table)?;
            attr_str(b, NFTA_SET_ELEM_LIST_SET, m.set)?;
            element_list(b, &m.keys)
        },
    )
}

/// `NFTA_SET_ELEM_LIST_ELEMENTS` holding one `NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY {
/// NFTA_DATA_VALUE key } }` per key, the nesting nft uses.
fn element_list(b: &mut Vec<u8>, keys: &[Vec<u8>]) -> Result<(), EncodeError> {
    let list = nest_start(b, NFTA_SET_ELEM_LIST_ELEMENTS);
    for k in keys {
        let el = nest_start(b, NFTA_LIST_ELEM);
        let key = nest_start(b, NFTA_SET_ELEM_KEY);
        attr_bytes(b, NFTA_DATA_VALUE, k)?;
        nest_end(b, key)?;
        nest_end(b, el)?;
    }
    nest_end(b, list)
}

#[cfg(test)]
mod tests;
