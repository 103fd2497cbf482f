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
//! Every message asks for an ACK; the kernel answers all of them after the commit (or the abort),
//! so reading exactly that many answers tells success from failure.
//!
//! **Notifications** ([`parse_notifications`]). Subscribed to the `NFNLGRP_NFTABLES` group, a
//! socket receives every ruleset change of its namespace and, per transaction, an
//! `NFT_MSG_NEWGEN` naming the committing thread. `nft monitor` prints the same as text, but
//! formatting each event costs it more CPU than our whole apply (+250 ms for a 60k-element table on
//! two cores); we only need, per message, its family and table name (attribute 1 of every object
//! message) and, per generation, the PID.

use std::io;
use std::net::IpAddr;

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

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn attr_bytes(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    buf.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
}

fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut z = s.as_bytes().to_vec();
    z.push(0);
    attr_bytes(buf, ty, &z);
}

/// Start a nested attribute; returns its offset for [`nest_end`].
fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// Append one message: header, nfgenmsg, then what `body` writes.
fn message(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 16]);
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    body(buf);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    buf[at + 4..at + 6].copy_from_slice(&ty.to_ne_bytes());
    buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
    buf[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
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

/// The batch for `changes` in `inet table`: all deletes, then all adds; every element message
/// asks for an ACK. Returns the bytes and the number of ACKs to expect.
pub fn element_batch(
    table: &str,
    changes: &[ElemChange],
    seq0: u32,
) -> Result<(Vec<u8>, usize), String> {
    let mut buf = Vec::new();
    let mut seq = seq0;
    message(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    let mut acks = 0;
    for (del, ty, flags) in [
        (true, NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        (
            false,
            NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        ),
    ] {
        for c in changes {
            let elems = if del { &c.del } else { &c.add };
            if elems.is_empty() {
                continue;
            }
            let keys: Vec<Vec<u8>> = elems
                .iter()
                .map(|e| key_bytes(e).ok_or_else(|| format!("set {}: {e} is an interval", c.set)))
                .collect::<Result<_, _>>()?;
            seq += 1;
            acks += 1;
            message(
                &mut buf,
                (NFNL_SUBSYS_NFTABLES << 8) | ty,
                flags,
                seq,
                NFPROTO_INET,
                0,
                |b| {
                    attr_str(b, NFTA_SET_ELEM_LIST_TABLE, table);
                    attr_str(b, NFTA_SET_ELEM_LIST_SET, &c.set);
                    let list = nest_start(b, NFTA_SET_ELEM_LIST_ELEMENTS);
                    for k in &keys {
                        let el = nest_start(b, NFTA_LIST_ELEM);
                        let key = nest_start(b, NFTA_SET_ELEM_KEY);
                        attr_bytes(b, NFTA_DATA_VALUE, k);
                        nest_end(b, key);
                        nest_end(b, el);
                    }
                    nest_end(b, list);
                },
            );
        }
    }
    seq += 1;
    message(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    Ok((buf, acks))
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// One decoded answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `NLMSG_ERROR` with this (non-positive) error code; 0 is an ACK.
    Error(i32),
    /// `NLMSG_DONE`.
    Done,
    /// Any other message type, with whether its payload contains the marker.
    Msg(u16, bool),
}

/// Split a datagram into answers.
fn answers(mut data: &[u8], marker: &[u8]) -> io::Result<Vec<Answer>> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        if len < 16 || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "short netlink message",
            ));
        }
        let body = &data[16..len];
        out.push(match ty {
            NLMSG_DONE => Answer::Done,
            NLMSG_ERROR => Answer::Error(
                body.get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0),
            ),
            t => Answer::Msg(
                t,
                !marker.is_empty() && body.windows(marker.len()).any(|w| w == marker),
            ),
        });
        let step = (len + 3) & !3;
        data = &data[step.min(data.len())..];
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

/// List `inet table chain` and look for `marker` in its rules.
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
            attr_str(b, NFTA_RULE_TABLE, table);
            attr_str(b, NFTA_RULE_CHAIN, chain);
        },
    );
    sock.send_to(&req, &SocketAddr::new(0, 0), 0)?;
    let mut acc = ChainRules {
        rules: 0,
        marker: false,
    };
    loop {
        let (data, _) = sock.recv_from_full()?;
        if data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "netlink closed",
            ));
        }
        for a in answers(&data, marker.as_bytes())? {
            match a {
                Answer::Done | Answer::Error(0) => return Ok(acc),
                Answer::Error(e) if -e == ENOENT => {
                    return Ok(ChainRules {
                        rules: 0,
                        marker: false,
                    })
                }
                Answer::Error(e) => return Err(io::Error::from_raw_os_error(-e)),
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

/// A long-lived nfnetlink socket for element batches, bound in the network namespace of the
/// thread that opened it.
#[derive(Debug)]
pub struct ElementSocket {
    sock: Socket,
    seq: u32,
}

impl ElementSocket {
    /// Open the socket.
    pub fn open() -> io::Result<ElementSocket> {
        Ok(ElementSocket {
            sock: socket()?,
            seq: 1,
        })
    }

    /// Apply `changes` to sets of `inet table` as one transaction; returns the batch size. An
    /// error means nothing was applied (the kernel aborts the whole batch).
    pub fn apply(&mut self, table: &str, changes: &[ElemChange]) -> io::Result<usize> {
        let (batch, acks) = element_batch(table, changes, self.seq)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.seq = self.seq.wrapping_add(changes.len() as u32 * 2 + 4);
        if acks == 0 {
            return Ok(0);
        }
        self.sock.send_to(&batch, &SocketAddr::new(0, 0), 0)?;
        let mut seen = 0;
        let mut first_err = None;
        while seen < acks {
            let (data, _) = self.sock.recv_from_full()?;
            if data.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink closed",
                ));
            }
            for a in answers(&data, b"")? {
                if let Answer::Error(e) = a {
                    seen += 1;
                    if e != 0 && first_err.is_none() {
                        first_err = Some(io::Error::from_raw_os_error(-e));
                    }
                }
            }
        }
        match first_err {
            None => Ok(batch.len()),
            Some(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_request_layout() {
        let mut r = Vec::new();
        message(
            &mut r,
            0x0a07,
            NLM_F_REQUEST | NLM_F_DUMP,
            7,
            NFPROTO_INET,
            0,
            |b| {
                attr_str(b, NFTA_RULE_TABLE, "calico-rs");
                attr_str(b, NFTA_RULE_CHAIN, "fwd-egress");
            },
        );
        assert!(r.len().is_multiple_of(4));
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 0x0a07);
        assert_eq!(r[16], NFPROTO_INET);
        // First attribute: length 4 + "calico-rs\0" = 14, type 1, padded to 16.
        assert_eq!(u16::from_ne_bytes(r[20..22].try_into().unwrap()), 14);
        assert_eq!(&r[24..33], b"calico-rs");
        assert_eq!(&r[36 + 4..36 + 14], b"fwd-egress");
    }

    /// The element message nft 1.0.6 sends for `add element inet t c { 10.1.2.3 . 8080 }`
    /// (`nft --debug=mnl`), minus the set-id attribute nft adds for sets of its own batch.
    #[test]
    fn element_batch_matches_nft() {
        let (b, acks) = element_batch(
            "t",
            &[ElemChange {
                set: "c".into(),
                del: vec![],
                add: vec![Elem::AddrPort("10.1.2.3".parse().unwrap(), 8080)],
            }],
            0,
        )
        .unwrap();
        assert_eq!(acks, 1);
        // Batch begin: 20 bytes, type 16, res_id 10 (big endian).
        assert_eq!(&b[0..4], &20u32.to_ne_bytes());
        assert_eq!(&b[4..6], &16u16.to_ne_bytes());
        assert_eq!(&b[16..20], &[0, 0, 0, 10]);
        let m = &b[20..];
        let len = u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize;
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 2572);
        assert_eq!(
            u16::from_ne_bytes(m[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
        );
        assert_eq!(&m[16..20], &[1, 0, 0, 0]);
        let attrs = &m[20..len];
        // table "t", set "c", then elements(24) > elem(20) > key(16) > value(12), as nft.
        assert_eq!(&attrs[0..8], &[6, 0, 1, 0, b't', 0, 0, 0]);
        assert_eq!(&attrs[8..16], &[6, 0, 2, 0, b'c', 0, 0, 0]);
        let nested = |len: u16, ty: u16| {
            let mut v = len.to_ne_bytes().to_vec();
            v.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
            v
        };
        assert_eq!(&attrs[16..20], &nested(24, 3)[..]);
        assert_eq!(&attrs[20..24], &nested(20, 1)[..]);
        assert_eq!(&attrs[24..28], &nested(16, 1)[..]);
        assert_eq!(&attrs[28..32], &[12, 0, 1, 0]);
        assert_eq!(&attrs[32..40], &[10, 1, 2, 3, 0x1f, 0x90, 0, 0]);
        assert_eq!(attrs.len(), 40);
        // Batch end.
        let end = &b[20 + len..];
        assert_eq!(&end[4..6], &17u16.to_ne_bytes());
    }

    #[test]
    fn deletes_go_first_and_intervals_are_refused() {
        let ch = |set: &str, del: Vec<Elem>, add: Vec<Elem>| ElemChange {
            set: set.into(),
            del,
            add,
        };
        let v4 = |s: &str| Elem::Addr(s.parse().unwrap());
        let (b, acks) = element_batch(
            "t",
            &[
                ch("a", vec![], vec![v4("10.0.0.1")]),
                ch("b", vec![v4("10.0.0.2")], vec![]),
            ],
            0,
        )
        .unwrap();
        assert_eq!(acks, 2);
        let first = &b[20..];
        assert_eq!(u16::from_ne_bytes(first[4..6].try_into().unwrap()), 2574);
        assert!(element_batch(
            "t",
            &[ch(
                "n",
                vec![],
                vec![Elem::Net("10.0.0.0/8".parse().unwrap())]
            )],
            0
        )
        .is_err());
    }

    #[test]
    fn notifications_name_table_and_committer() {
        let mut data = Vec::new();
        message(&mut data, 0x0a08, 0, 0, NFPROTO_INET, 0, |b| {
            attr_str(b, 1, "calico-rs");
            attr_str(b, 2, "fwd-egress");
        });
        message(&mut data, 0x0a0f, 0, 0, 0, 0, |b| {
            attr_bytes(b, 1, &7u32.to_be_bytes());
            attr_bytes(b, NFTA_GEN_PROC_PID, &4242u32.to_be_bytes());
            attr_str(b, NFTA_GEN_PROC_NAME, "nft");
        });
        message(&mut data, 0x0110, 0, 0, 0, 0, |_| {});
        assert_eq!(
            parse_notifications(&data),
            vec![
                Notification::Object {
                    msg: 8,
                    family: NFPROTO_INET,
                    table: "calico-rs".into()
                },
                Notification::Generation {
                    pid: Some(4242),
                    comm: "nft".into()
                },
            ]
        );
    }

    #[test]
    fn answers_split_and_detect_marker() {
        let msg = |ty: u16, body: &[u8]| {
            let mut m = vec![0u8; 16];
            m.extend_from_slice(body);
            pad(&mut m);
            let len = m.len() as u32;
            m[0..4].copy_from_slice(&len.to_ne_bytes());
            m[4..6].copy_from_slice(&ty.to_ne_bytes());
            m
        };
        let mut data = msg(0x0a06, b"xx");
        data.extend(msg(0x0a06, b"..calico-rs policy dispatch.."));
        data.extend(msg(NLMSG_ERROR, &(-2i32).to_ne_bytes()));
        data.extend(msg(NLMSG_DONE, &[0; 4]));
        assert_eq!(
            answers(&data, b"calico-rs policy dispatch").unwrap(),
            vec![
                Answer::Msg(0x0a06, false),
                Answer::Msg(0x0a06, true),
                Answer::Error(-2),
                Answer::Done
            ]
        );
    }
}
