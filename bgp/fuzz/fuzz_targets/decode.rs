//! libFuzzer target for the BGP wire codec: the first input byte picks the session
//! capabilities, the rest is fed to `decode_message` as one frame and to `BgpCodec` as a
//! stream. Decoding must never panic, the framing must consume exactly what headers announce,
//! and a message that decodes cleanly must re-encode to bytes that decode to the same value.

#![no_main]

use bgp::wire::{decode_message, encode_message, BgpCodec, Message, SessionCaps};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

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
                u.errors.is_empty()
                    // RFC 6793 4.2.3: a 2-octet AGGREGATOR toward a 2-octet peer hides AS4_PATH.
                    && (caps.four_octet_as || !u.attrs.aggregator.is_some_and(|(a, _)| a <= 0xffff))
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
                assert_eq!(buf.len(), before);
                break;
            }
            Err(_) => break,
        }
    }
});
