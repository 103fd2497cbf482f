//! The drift probe (I/O): one `NFT_MSG_GETRULE` dump of one chain, filtered by the kernel, its
//! `NFT_MSG_NEWRULE` answers counted and searched for a marker (see the module docs of
//! [`super`] for why this beats `nft list chain`). Each probe opens its own socket.

use std::io;
use std::time::Instant;

use rtnetlink::sys::SocketAddr;

use super::decode::{answers, Answer};
use super::encode::{attr_str, message};
use super::{
    recv_until, socket, ANSWER_TIMEOUT, ENOENT, NFNL_SUBSYS_NFTABLES, NFPROTO_INET,
    NFTA_RULE_CHAIN, NFTA_RULE_TABLE, NFT_MSG_GETRULE, NFT_MSG_NEWRULE, NLM_F_DUMP, NLM_F_REQUEST,
};

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
