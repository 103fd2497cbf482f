//! Codec tests: golden byte vectors both ways (`golden`), a table of malformed messages with the
//! RFC 7606 outcome each must get (`malformed`), randomized round trips and a mutation fuzz loop
//! driven by a small deterministic PRNG (`prop`), and UPDATE packing (`pack`).

mod golden;
mod malformed;
mod pack;
mod prop;

use bytes::BytesMut;

use super::*;

/// Hex with any whitespace in between.
pub(super) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex: {s}");
    digits
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
        .collect()
}

/// A whole message: marker, length computed here, type, body.
pub(super) fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    v.push(kind);
    v.extend_from_slice(body);
    v
}

/// An UPDATE from hex parts, lengths computed here.
pub(super) fn update(withdrawn: &str, attrs: &str, nlri: &str) -> Vec<u8> {
    let (w, a, n) = (hex(withdrawn), hex(attrs), hex(nlri));
    let mut body = Vec::new();
    body.extend_from_slice(&(w.len() as u16).to_be_bytes());
    body.extend_from_slice(&w);
    body.extend_from_slice(&(a.len() as u16).to_be_bytes());
    body.extend_from_slice(&a);
    body.extend_from_slice(&n);
    frame(2, &body)
}

pub(super) fn encode(msg: &Message, caps: &SessionCaps) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_message(msg, caps, &mut out).expect("encode");
    out.to_vec()
}

pub(super) const IBGP4: SessionCaps = SessionCaps {
    four_octet_as: true,
    ebgp: false,
};
pub(super) const EBGP4: SessionCaps = SessionCaps {
    four_octet_as: true,
    ebgp: true,
};
pub(super) const EBGP2: SessionCaps = SessionCaps {
    four_octet_as: false,
    ebgp: true,
};
