//! Decoding (pure): the kernel's answers to our requests, and ruleset change notifications,
//! reduced to the few fields the probe, the batch and the monitor need. A datagram is read
//! message by message; a message whose length field is too short or runs past the datagram ends
//! the walk (answers: an error; notifications: the rest is skipped).

use std::io;

use super::encode::align4;
use super::{
    NFNL_SUBSYS_NFTABLES, NFTA_GEN_PROC_NAME, NFTA_GEN_PROC_PID, NFT_MSG_NEWGEN, NLA_F_NESTED,
    NLMSG_DONE, NLMSG_ERROR,
};

/// One decoded answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
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
pub(super) fn answers(mut data: &[u8], marker: &[u8]) -> io::Result<Vec<Answer>> {
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

pub(super) fn c_string(b: &[u8]) -> String {
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

#[cfg(test)]
mod tests;
