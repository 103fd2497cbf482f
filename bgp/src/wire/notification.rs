//! NOTIFICATION (RFC 4271 4.5) and ROUTE-REFRESH (RFC 2918 3, RFC 7313 3) bodies, and the
//! human-readable names of every NOTIFICATION code/subcode: RFC 4271 4.5 and 6, RFC 4486 and
//! RFC 8538 (Cease), RFC 5492 (Unsupported Capability), RFC 6608 (FSM errors), RFC 7313
//! (ROUTE-REFRESH message error), RFC 9234 (Role Mismatch).

use bytes::{BufMut, BytesMut};

use super::code::{CEASE, ROUTE_REFRESH_MESSAGE_ERROR};
use super::reader::Reader;
use super::subcode::INVALID_MESSAGE_LENGTH;
use super::{Family, Notification, RouteRefresh, WireError};

/// Body of a NOTIFICATION: code, subcode, then data up to the end of the message. The header
/// check guarantees at least the two octets.
pub(super) fn decode_notification(body: &[u8]) -> Notification {
    let mut r = Reader::new(body);
    let code = r.u8().unwrap_or_default();
    let subcode = r.u8().unwrap_or_default();
    Notification::with_data(code, subcode, r.rest().to_vec())
}

pub(super) fn encode_notification(n: &Notification, out: &mut BytesMut) {
    out.reserve(2 + n.data.len());
    out.put_u8(n.code);
    out.put_u8(n.subcode);
    out.put_slice(&n.data);
}

/// Body of a ROUTE-REFRESH: AFI (2), message subtype (1, "reserved" in RFC 2918), SAFI (1).
///
/// Subtype 0 (a plain refresh request) for IPv4/IPv6 unicast decodes to [`RouteRefresh`]. The
/// rest are [`WireError::is_ignorable`]: an AFI/SAFI we do not carry (RFC 2918 4: "ignore"),
/// subtypes 1 and 2 (RFC 7313 BoRR / EoRR; we never advertise enhanced route refresh, so a peer
/// must not send them, and dropping them loses nothing) and unknown subtypes (RFC 7313 5:
/// "ignore").
pub(super) fn decode_route_refresh(body: &[u8]) -> Result<RouteRefresh, WireError> {
    let mut r = Reader::new(body);
    let (Some(afi), Some(subtype), Some(safi)) = (r.u16(), r.u8(), r.u8()) else {
        // Unreachable after the header check (exactly 4 body bytes), kept for safety.
        return Err(WireError::new(
            ROUTE_REFRESH_MESSAGE_ERROR,
            INVALID_MESSAGE_LENGTH,
            "ROUTE-REFRESH: shorter than 4 bytes",
        ));
    };
    if subtype != 0 {
        return Err(WireError::ignorable(format!(
            "ROUTE-REFRESH: message subtype {subtype} for AFI {afi} SAFI {safi} ignored (RFC 7313)"
        )));
    }
    match Family::from_codes(afi, safi) {
        Some(family) => Ok(RouteRefresh { family }),
        None => Err(WireError::ignorable(format!(
            "ROUTE-REFRESH: AFI {afi} SAFI {safi} not carried, ignored (RFC 2918 4)"
        ))),
    }
}

pub(super) fn encode_route_refresh(rr: &RouteRefresh, out: &mut BytesMut) {
    out.reserve(4);
    out.put_u16(rr.family.afi().code());
    out.put_u8(0);
    out.put_u8(rr.family.safi());
}

impl Notification {
    /// A Cease with a shutdown communication (RFC 9003): `subcode` is Administrative Shutdown
    /// (2) or Administrative Reset (4); `message` is cut to 255 bytes on a UTF-8 boundary.
    pub fn cease_with_message(subcode: u8, message: &str) -> Notification {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let text = message.get(..end).unwrap_or_default().as_bytes();
        let mut data = Vec::with_capacity(1 + text.len());
        data.push(text.len() as u8);
        data.extend_from_slice(text);
        Notification::with_data(CEASE, subcode, data)
    }
}

fn code_name(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "Message Header Error",
        2 => "OPEN Message Error",
        3 => "UPDATE Message Error",
        4 => "Hold Timer Expired",
        5 => "Finite State Machine Error",
        6 => "Cease",
        7 => "ROUTE-REFRESH Message Error",
        _ => return None,
    })
}

fn subcode_name(code: u8, subcode: u8) -> Option<&'static str> {
    Some(match (code, subcode) {
        (1, 1) => "Connection Not Synchronized",
        (1, 2) => "Bad Message Length",
        (1, 3) => "Bad Message Type",
        (2, 0) => "Unspecific",
        (2, 1) => "Unsupported Version Number",
        (2, 2) => "Bad Peer AS",
        (2, 3) => "Bad BGP Identifier",
        (2, 4) => "Unsupported Optional Parameter",
        (2, 5) => "Authentication Failure (deprecated)",
        (2, 6) => "Unacceptable Hold Time",
        (2, 7) => "Unsupported Capability",
        (2, 11) => "Role Mismatch",
        (3, 1) => "Malformed Attribute List",
        (3, 2) => "Unrecognized Well-known Attribute",
        (3, 3) => "Missing Well-known Attribute",
        (3, 4) => "Attribute Flags Error",
        (3, 5) => "Attribute Length Error",
        (3, 6) => "Invalid ORIGIN Attribute",
        (3, 7) => "AS Routing Loop (deprecated)",
        (3, 8) => "Invalid NEXT_HOP Attribute",
        (3, 9) => "Optional Attribute Error",
        (3, 10) => "Invalid Network Field",
        (3, 11) => "Malformed AS_PATH",
        (5, 0) => "Unspecified Error",
        (5, 1) => "Receive Unexpected Message in OpenSent State",
        (5, 2) => "Receive Unexpected Message in OpenConfirm State",
        (5, 3) => "Receive Unexpected Message in Established State",
        (6, 1) => "Maximum Number of Prefixes Reached",
        (6, 2) => "Administrative Shutdown",
        (6, 3) => "Peer De-configured",
        (6, 4) => "Administrative Reset",
        (6, 5) => "Connection Rejected",
        (6, 6) => "Other Configuration Change",
        (6, 7) => "Connection Collision Resolution",
        (6, 8) => "Out of Resources",
        (6, 9) => "Hard Reset",
        (6, 10) => "BFD Down",
        (7, 1) => "Invalid Message Length",
        _ => return None,
    })
}

/// Human-readable name of a NOTIFICATION code/subcode, e.g. "Hold Timer Expired",
/// "Cease: Administrative Shutdown", "UPDATE Message Error: Malformed AS_PATH". Unknown codes
/// read "error code X subcode Y"; an unknown subcode of a known code "Cease: subcode 42".
pub fn notification_text(code: u8, subcode: u8) -> String {
    match (code_name(code), subcode_name(code, subcode)) {
        (Some(c), Some(s)) => format!("{c}: {s}"),
        // Codes without subcodes (Hold Timer Expired) and subcode 0 of Cease / header errors.
        (Some(c), None) if subcode == 0 => c.to_string(),
        (Some(c), None) => format!("{c}: subcode {subcode}"),
        (None, _) => format!("error code {code} subcode {subcode}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{code, subcode};

    #[test]
    fn names() {
        assert_eq!(
            notification_text(code::HOLD_TIMER_EXPIRED, 0),
            "Hold Timer Expired"
        );
        assert_eq!(
            notification_text(code::CEASE, subcode::ADMINISTRATIVE_SHUTDOWN),
            "Cease: Administrative Shutdown"
        );
        assert_eq!(
            notification_text(code::UPDATE_MESSAGE_ERROR, subcode::MALFORMED_AS_PATH),
            "UPDATE Message Error: Malformed AS_PATH"
        );
        assert_eq!(
            notification_text(code::OPEN_MESSAGE_ERROR, subcode::UNSUPPORTED_CAPABILITY),
            "OPEN Message Error: Unsupported Capability"
        );
        assert_eq!(
            notification_text(code::FSM_ERROR, subcode::UNEXPECTED_MESSAGE_IN_OPEN_CONFIRM),
            "Finite State Machine Error: Receive Unexpected Message in OpenConfirm State"
        );
        assert_eq!(
            notification_text(code::ROUTE_REFRESH_MESSAGE_ERROR, 1),
            "ROUTE-REFRESH Message Error: Invalid Message Length"
        );
        assert_eq!(notification_text(6, 0), "Cease");
        assert_eq!(notification_text(6, 42), "Cease: subcode 42");
        assert_eq!(notification_text(9, 1), "error code 9 subcode 1");
        for s in 1..=8 {
            assert!(!notification_text(6, s).contains("subcode"), "6/{s}");
        }
        for s in 1..=11 {
            assert!(!notification_text(3, s).contains("subcode"), "3/{s}");
        }
    }

    #[test]
    fn shutdown_communication_shows_in_display() {
        let n = Notification::cease_with_message(subcode::ADMINISTRATIVE_SHUTDOWN, "maintenance");
        assert_eq!(n.data.first(), Some(&11));
        assert_eq!(
            n.to_string(),
            "Cease: Administrative Shutdown: \"maintenance\""
        );
        let long = "é".repeat(200);
        let n = Notification::cease_with_message(subcode::ADMINISTRATIVE_RESET, &long);
        assert_eq!(n.data.len(), 1 + 254);
    }
}
