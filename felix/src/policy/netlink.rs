//! The drift probe: list the rules of one chain straight over nfnetlink.
//!
//! `nft list chain ...` loads nft's whole cache (every set with every element) before printing one
//! chain, which costs ~0.1 s at 60k set elements and ~0.4 s at 10k endpoints — too much to run twice
//! a second. The kernel itself filters a rule dump by table and chain, so one `NFT_MSG_GETRULE` dump
//! request returns just that chain's few rules in microseconds. This module builds that request by
//! hand (an nlmsghdr, an nfgenmsg and two string attributes) on a `NETLINK_NETFILTER` socket of the
//! calling thread's network namespace, counts the `NFT_MSG_NEWRULE` answers and looks for a marker
//! (the rule comment, stored verbatim in the rule's user data). Nothing else is decoded.

use std::io;

use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFPROTO_INET: u8 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const ENOENT: i32 = 2;

/// What the kernel has in one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainRules {
    /// Number of rules (0 if the table or chain does not exist).
    pub rules: usize,
    /// Whether some rule carries the marker bytes.
    pub marker: bool,
}

fn attr(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let len = 4 + s.len() + 1;
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// The `NFT_MSG_GETRULE` dump request for `inet table chain`.
fn request(table: &str, chain: &str, seq: u32) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]); // nfgenmsg: family, version, res_id
    attr(&mut b, NFTA_RULE_TABLE, table);
    attr(&mut b, NFTA_RULE_CHAIN, chain);
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE).to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    b
}

/// Fold one datagram of answers into `acc`; returns `Some(result)` at the end of the dump.
fn parse(mut data: &[u8], marker: &[u8], acc: &mut ChainRules) -> io::Result<Option<ChainRules>> {
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
        match ty {
            NLMSG_DONE => return Ok(Some(*acc)),
            NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(0);
                if errno == 0 {
                    return Ok(Some(*acc));
                }
                if -errno == ENOENT {
                    return Ok(Some(ChainRules {
                        rules: 0,
                        marker: false,
                    }));
                }
                return Err(io::Error::from_raw_os_error(-errno));
            }
            t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                acc.rules += 1;
                if !marker.is_empty() && body.windows(marker.len()).any(|w| w == marker) {
                    acc.marker = true;
                }
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        data = &data[step.min(data.len())..];
    }
    Ok(None)
}

/// List `inet table chain` and look for `marker` in its rules.
pub fn chain_rules(table: &str, chain: &str, marker: &str) -> io::Result<ChainRules> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    let seq = 1;
    sock.send_to(&request(table, chain, seq), &SocketAddr::new(0, 0), 0)?;
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
        if let Some(r) = parse(&data, marker.as_bytes(), &mut acc)? {
            return Ok(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let r = request("calico-rs", "fwd-egress", 7);
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

    #[test]
    fn parses_rules_then_done() {
        let msg = |ty: u16, body: &[u8]| {
            let mut m = vec![0u8; 16];
            m.extend_from_slice(body);
            while !m.len().is_multiple_of(4) {
                m.push(0);
            }
            let len = m.len() as u32;
            m[0..4].copy_from_slice(&len.to_ne_bytes());
            m[4..6].copy_from_slice(&ty.to_ne_bytes());
            m
        };
        let mut data = msg(0x0a06, b"xx");
        data.extend(msg(0x0a06, b"..calico-rs policy dispatch.."));
        let mut acc = ChainRules {
            rules: 0,
            marker: false,
        };
        assert_eq!(
            parse(&data, b"calico-rs policy dispatch", &mut acc).unwrap(),
            None
        );
        let done = msg(NLMSG_DONE, &[0, 0, 0, 0]);
        assert_eq!(
            parse(&done, b"x", &mut acc).unwrap(),
            Some(ChainRules {
                rules: 2,
                marker: true
            })
        );
        let enoent = msg(NLMSG_ERROR, &(-2i32).to_ne_bytes());
        assert_eq!(
            parse(&enoent, b"x", &mut acc).unwrap(),
            Some(ChainRules {
                rules: 0,
                marker: false
            })
        );
    }
}
