//! tokio-util framing for a BGP session (RFC 4271 4.1): cuts the TCP byte stream into
//! messages at the header's length and hands each to [`decode_message`].
//!
//! The header is checked as soon as its 19 bytes are in (marker 1/1, 19 <= length <= 4096
//! 1/2), so a bad length never makes the codec wait for or buffer more than 4096 bytes per
//! message. A frame is consumed exactly: the codec never reads past the length it announced.
//! ROUTE-REFRESH messages that RFC 2918 / 7313 say to ignore are dropped here.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::header::check_marker_and_length;
use super::{
    decode_message, encode_message, EncodeError, Message, SessionCaps, WireError, HEADER_LEN,
};

/// Error from [`BgpCodec`]: the socket failed, the peer sent something that resets the session
/// (send `Wire(e).notification`, then close), or a message of ours could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("BGP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad message from peer ({}): {}", .0.notification, .0.reason)]
    Wire(#[from] WireError),
    #[error("encoding a BGP message: {0}")]
    Encode(#[from] EncodeError),
}

/// Frames BGP messages on a byte stream. `caps` starts at [`SessionCaps::default`] and is set by
/// the session after the OPEN exchange (before any UPDATE can arrive).
#[derive(Debug, Clone, Default)]
pub struct BgpCodec {
    pub caps: SessionCaps,
}

impl BgpCodec {
    pub fn new(caps: SessionCaps) -> BgpCodec {
        BgpCodec { caps }
    }

    pub fn set_caps(&mut self, caps: SessionCaps) {
        self.caps = caps;
    }
}

impl Decoder for BgpCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        loop {
            if src.len() < HEADER_LEN {
                src.reserve(HEADER_LEN - src.len());
                return Ok(None);
            }
            let len = check_marker_and_length(src)?;
            if src.len() < len {
                src.reserve(len - src.len());
                return Ok(None);
            }
            let frame = src.split_to(len);
            match decode_message(&frame, &self.caps) {
                Ok(msg) => return Ok(Some(msg)),
                Err(e) if e.is_ignorable() => {
                    tracing::debug!(reason = %e.reason, "ignoring message");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Encoder<&Message> for BgpCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode_message(msg, &self.caps, dst)?)
    }
}

impl Encoder<Message> for BgpCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode_message(&msg, &self.caps, dst)?)
    }
}
