//! libFuzzer target for the BGP wire codec: the first input byte picks the session
//! capabilities, the rest is fed to `decode_message` as one frame and to `BgpCodec` as a
//! stream. Decoding must never panic, the framing must consume exactly what headers announce,
//! and a message that decodes cleanly must re-encode to bytes that decode to the same value.

#![no_main]

use bgp::wire::{
    decode_message, encode_message, AsSegment, BgpCodec, Message, PathAttrs, SegmentKind,
    SessionCaps,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// What RFC 6793 cannot carry to a 2-octet peer: a 2-octet AGGREGATOR makes the receiver ignore
/// AS4_PATH (4.2.3), and AS4_PATH drops confederation segments, which only come back when
/// they lead the path.
fn as4_lossless(a: &PathAttrs) -> bool {
    let confed =
        |s: &&AsSegment| matches!(s.kind, SegmentKind::ConfedSequence | SegmentKind::ConfedSet);
    a.aggregator.is_none_or(|(asn, _)| asn > 0xffff)
        && !a
            .as_path
            .segments
            .iter()
            .skip_while(confed)
            .any(|s| confed(&s))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let caps = SessionCaps {
        four_octet_as: sel & 1 != 0,
        ebgp: sel & 2 != 0,
    };

    if let Ok(msg) = decode_message(input, &caps) {
        let clean = match &msg {
            Message::Update(u) => {
                u.errors.is_empty() && (caps.four_octet_as || as4_lossless(&u.attrs))
            }
            _ => true,
        };
        let mut out = BytesMut::new();
        if clean && encode_message(&msg, &caps, &mut out).is_ok() {
            assert_eq!(decode_message(&out, &caps).as_ref(), Ok(&msg));
        }
    }

    let mut codec = BgpCodec::new(caps);
    let mut buf = BytesMut::from(input);
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(_)) => assert!(buf.len() < before),
            Ok(None) => {
                // Ignorable frames (RFC 2918 ROUTE-REFRESH) may have been consumed; what is left
                // is less than one whole frame.
                assert!(buf.len() <= before);
                if buf.len() >= 19 {
                    assert!(buf.len() < usize::from(u16::from_be_bytes([buf[16], buf[17]])));
                }
                break;
            }
            Err(_) => break,
        }
    }
});
