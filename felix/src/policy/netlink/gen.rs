//! The ruleset generation (I/O): one `NFT_MSG_GETGEN` request, its `NFTA_GEN_ID`. Every
//! committed nf_tables transaction in the namespace bumps it by one, so reading it before and
//! after an apply tells whether anyone else committed in between.

use std::io;
use std::time::Instant;

use rtnetlink::sys::SocketAddr;

use super::encode::message;
use super::{
    recv_until, socket, ANSWER_TIMEOUT, NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN, NLMSG_ERROR,
    NLM_F_REQUEST,
};

const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

/// The current ruleset generation of the calling thread's network namespace.
pub fn generation() -> io::Result<u32> {
    let sock = socket()?;
    let mut req = Vec::new();
    message(
        &mut req,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
        NLM_F_REQUEST,
        1,
        0,
        0,
        |_| Ok(()),
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    sock.send_to(&req, &SocketAddr::new(0, 0), 0)?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let data = recv_until(&sock, deadline)?;
        if let Some(g) = parse_generation(&data)? {
            return Ok(g);
        }
    }
}

/// The generation id in a `NFT_MSG_NEWGEN` answer; `None` for any other message; an error for
/// an error answer or a malformed message. Pure.
pub(super) fn parse_generation(data: &[u8]) -> io::Result<Option<u32>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if data.len() < 16 {
        return Err(bad("short netlink message"));
    }
    let len = (u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize).min(data.len());
    let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
    if ty == NLMSG_ERROR {
        let code = data
            .get(16..20)
            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
            .ok_or_else(|| bad("short netlink error"))?;
        return Err(io::Error::from_raw_os_error(-code));
    }
    if ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Ok(None);
    }
    // nlmsghdr (16), nfgenmsg (4), then attributes.
    let mut attrs = data.get(20..len).ok_or_else(|| bad("short NEWGEN"))?;
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes(attrs[0..2].try_into().unwrap()) as usize;
        let aty = u16::from_ne_bytes(attrs[2..4].try_into().unwrap()) & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            return Err(bad("bad NEWGEN attribute"));
        }
        if aty == NFTA_GEN_ID && alen >= 8 {
            return Ok(Some(u32::from_be_bytes(attrs[4..8].try_into().unwrap())));
        }
        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
    }
    Err(bad("NEWGEN without NFTA_GEN_ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newgen_answer_gives_its_id() {
        let mut m = Vec::new();
        message(
            &mut m,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN,
            0,
            1,
            0,
            0,
            |b| {
                b.extend_from_slice(&8u16.to_ne_bytes());
                b.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
                b.extend_from_slice(&4242u32.to_be_bytes());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(parse_generation(&m).unwrap(), Some(4242));
        let mut other = m.clone();
        other[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | 6).to_ne_bytes());
        assert_eq!(parse_generation(&other).unwrap(), None);
        assert!(parse_generation(&m[..10]).is_err());
    }
}
