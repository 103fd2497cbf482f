//! The 19-octet message header (RFC 4271 4.1, 6.1) and the per-type dispatch of
//! [`decode_message`] / [`encode_message`].
//!
//! Header checks, in the order RFC 4271 6.1 lists them: marker all ones (1/1), 19 <= length <=
//! 4096 (1/2, data = the length field), known type (1/3, data = the type), then the length
//! each type requires (KEEPALIVE exactly 19, OPEN >= 29, UPDATE >= 23, NOTIFICATION >= 21,
//! ROUTE-REFRESH exactly 23; 1/2).

use bytes::{BufMut, BytesMut};

use super::code::MESSAGE_HEADER_ERROR;
use super::subcode::{BAD_MESSAGE_LENGTH, BAD_MESSAGE_TYPE, CONNECTION_NOT_SYNCHRONIZED};
use super::{msg_type, notification, open, update};
use super::{EncodeError, Message, SessionCaps, WireError, HEADER_LEN, MAX_MESSAGE_LEN};

/// The all-ones marker (RFC 4271 4.1).
pub(super) const MARKER: [u8; 16] = [0xff; 16];

/// Checks the fixed part of a header against RFC 4271 6.1 (marker and length bounds) and
/// returns the message length. `head` is at least the 19 header bytes; the framing calls this
/// before the whole message has arrived.
pub(super) fn check_marker_and_length(head: &[u8]) -> Result<usize, WireError> {
    if head.len() < HEADER_LEN {
        let short = u16::try_from(head.len()).unwrap_or_default().to_be_bytes();
        return Err(bad_length(
            &short,
            format!("header: {} bytes, shorter than 19", head.len()),
        ));
    }
    let marker = head.get(..16).unwrap_or_default();
    if marker != MARKER {
        return Err(WireError::new(
            MESSAGE_HEADER_ERROR,
            CONNECTION_NOT_SYNCHRONIZED,
            "header: marker is not all ones",
        ));
    }
    let len_bytes: [u8; 2] = head
        .get(16..18)
        .and_then(|b| b.try_into().ok())
        .unwrap_or_default();
    let len = usize::from(u16::from_be_bytes(len_bytes));
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(bad_length(
            &len_bytes,
            format!("header: length {len} outside {HEADER_LEN}..={MAX_MESSAGE_LEN}"),
        ));
    }
    Ok(len)
}

fn bad_length(len_bytes: &[u8], reason: impl Into<String>) -> WireError {
    WireError::with_data(
        MESSAGE_HEADER_ERROR,
        BAD_MESSAGE_LENGTH,
        len_bytes.to_vec(),
        reason,
    )
}

/// Decode ONE whole message (header included, exactly `frame.len()` bytes).
///
/// `caps` says how UPDATEs are laid out (2- or 4-octet AS numbers) and whether the peer is eBGP
/// (RFC 7606 attribute rules). Any `Err` is a session reset, except [`WireError::is_ignorable`].
pub fn decode_message(frame: &[u8], caps: &SessionCaps) -> Result<Message, WireError> {
    let len = check_marker_and_length(frame)?;
    let len_bytes = (len as u16).to_be_bytes();
    if len != frame.len() {
        return Err(bad_length(
            &len_bytes,
            format!(
                "header: length field says {len} bytes but the message has {}",
                frame.len()
            ),
        ));
    }
    let kind = frame.get(18).copied().unwrap_or_default();
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    let len_ok = match kind {
        msg_type::OPEN => len >= 29,
        msg_type::UPDATE => len >= 23,
        msg_type::NOTIFICATION => len >= 21,
        msg_type::KEEPALIVE => len == HEADER_LEN,
        msg_type::ROUTE_REFRESH => len == 23,
        _ => {
            return Err(WireError::with_data(
                MESSAGE_HEADER_ERROR,
                BAD_MESSAGE_TYPE,
                vec![kind],
                format!("header: unknown message type {kind}"),
            ))
        }
    };
    if !len_ok {
        return Err(bad_length(
            &len_bytes,
            format!(
                "header: length {len} is wrong for a {} message",
                type_name(kind)
            ),
        ));
    }
    match kind {
        msg_type::OPEN => open::decode_open(body).map(Message::Open),
        msg_type::UPDATE => update::decode_update(body, caps).map(Message::Update),
        msg_type::NOTIFICATION => Ok(Message::Notification(notification::decode_notification(
            body,
        ))),
        msg_type::KEEPALIVE => Ok(Message::Keepalive),
        _ => notification::decode_route_refresh(body).map(Message::RouteRefresh),
    }
}

fn type_name(kind: u8) -> &'static str {
    match kind {
        msg_type::OPEN => "OPEN",
        msg_type::UPDATE => "UPDATE",
        msg_type::NOTIFICATION => "NOTIFICATION",
        msg_type::KEEPALIVE => "KEEPALIVE",
        msg_type::ROUTE_REFRESH => "ROUTE-REFRESH",
        _ => "unknown",
    }
}

/// Encode one message, header included, appended to `out`. On error `out` is left as it was.
pub fn encode_message(
    msg: &Message,
    caps: &SessionCaps,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.reserve(HEADER_LEN);
    out.put_slice(&MARKER);
    out.put_u16(0); // patched below
    let (kind, what) = match msg {
        Message::Open(_) => (msg_type::OPEN, "OPEN"),
        Message::Update(_) => (msg_type::UPDATE, "UPDATE"),
        Message::Notification(_) => (msg_type::NOTIFICATION, "NOTIFICATION"),
        Message::Keepalive => (msg_type::KEEPALIVE, "KEEPALIVE"),
        Message::RouteRefresh(_) => (msg_type::ROUTE_REFRESH, "ROUTE-REFRESH"),
    };
    out.put_u8(kind);
    let body = match msg {
        Message::Open(o) => open::encode_open(o, out),
        Message::Update(u) => update::encode_update(u, caps, out),
        Message::Notification(n) => {
            notification::encode_notification(n, out);
            Ok(())
        }
        Message::Keepalive => Ok(()),
        Message::RouteRefresh(r) => {
            notification::encode_route_refresh(r, out);
            Ok(())
        }
    };
    let len = out.len() - start;
    if let Err(e) = body {
        out.truncate(start);
        return Err(e);
    }
    if len > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLong { what, len });
    }
    if let Some(field) = out.get_mut(start + 16..start + 18) {
        field.copy_from_slice(&(len as u16).to_be_bytes());
    }
    Ok(())
}
