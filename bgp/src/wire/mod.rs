//! The BGP-4 wire codec: the only module that sees bytes.
//!
//! Decoding takes one whole message (the framing in [`BgpCodec`] cuts the TCP stream at the
//! header's length) plus the negotiated [`SessionCaps`], and returns a typed [`Message`]. Every
//! length field is bounds-checked against the bytes actually present; nothing is indexed
//! unchecked and no allocation is larger than the input warrants, so no input can panic the
//! decoder or make it allocate unboundedly (the in-crate mutation fuzz loop and `bgp/fuzz/`
//! check this).
//!
//! Errors follow the NOTIFICATION taxonomy:
//! - a [`WireError`] is always a *session reset*: it carries the NOTIFICATION to send;
//! - the RFC 7606 *treat-as-withdraw* and *attribute-discard* outcomes are not errors: the
//!   UPDATE decodes, with the malformed attributes listed in [`Update::errors`].
//!
//! Encoding is the exact inverse (attributes ordered per RFC 7606 5.1 / RFC 4271 5, Extended
//! Length only when needed, 2-octet AS sessions get AS_TRANS + AS4_PATH per RFC 6793), and
//! [`pack_announcements`] / [`pack_withdrawals`] split prefix sets into as few UPDATEs as fit
//! in 4096 bytes.
//!
//! Files: `reader` (bounds-checked cursor), `header` (RFC 4271 4.1, message dispatch), `open`
//! (4.2, RFC 5492, 4760, 2918, 4724, 6793, 9072), `attrs` (4.3 path attributes, RFC 7606, 6793,
//! 1997, 4456, 8092), `nlri` (prefixes, RFC 4760 MP_(UN)REACH_NLRI, RFC 2545), `update` (4.3 UPDATE layout,
//! RFC 7606 mandatory attributes and next hops, packing),
//! `notification` (4.5, ROUTE-REFRESH RFC 2918/7313, NOTIFICATION names), `codec`
//! (tokio-util framing).

// Peer input must never panic the codec: no unchecked indexing or unwrapping outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod attrs;
mod codec;
mod header;
mod nlri;
mod notification;
mod open;
mod reader;
mod types;
mod update;

#[cfg(test)]
mod tests;

pub use codec::{BgpCodec, CodecError};
pub use header::{decode_message, encode_message};
pub use notification::notification_text;
pub use types::*;
pub use update::{pack_announcements, pack_withdrawals};

/// Error from decoding: always a session reset with this NOTIFICATION (RFC 4271 6, RFC 7606
/// "session reset").
///
/// One exception, see [`WireError::is_ignorable`]: a ROUTE-REFRESH that RFC 2918 / RFC 7313 say
/// to ignore. [`BgpCodec`] drops those itself, so a session using the codec never sees one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct WireError {
    /// The NOTIFICATION to send before closing the session.
    pub notification: Notification,
    /// What exactly the peer got wrong, for the log.
    pub reason: String,
}

impl WireError {
    pub(crate) fn new(code: u8, subcode: u8, reason: impl Into<String>) -> WireError {
        WireError {
            notification: Notification::new(code, subcode),
            reason: reason.into(),
        }
    }

    pub(crate) fn with_data(
        code: u8,
        subcode: u8,
        data: Vec<u8>,
        reason: impl Into<String>,
    ) -> WireError {
        WireError {
            notification: Notification::with_data(code, subcode, data),
            reason: reason.into(),
        }
    }

    /// A message the RFCs say to ignore, not a session reset: a ROUTE-REFRESH for an AFI/SAFI we
    /// do not carry (RFC 2918 4) or with an unknown message subtype (RFC 7313 5). Its
    /// notification has error code 0, which is never sent.
    pub fn is_ignorable(&self) -> bool {
        self.notification.code == 0
    }

    pub(crate) fn ignorable(reason: impl Into<String>) -> WireError {
        WireError::new(0, 0, reason)
    }
}

/// Encoding failed: the message cannot be put on the wire as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message would be longer than the 4096-byte limit (RFC 4271 4.1).
    #[error("{what} would be {len} bytes, over the {MAX_MESSAGE_LEN}-byte message limit")]
    TooLong { what: &'static str, len: usize },
    /// A field does not fit its wire encoding (e.g. a capability value over 255 bytes, a
    /// graceful restart time over 4095 s).
    #[error("{0}")]
    OutOfRange(String),
    /// The message is inconsistent (e.g. an IPv6 prefix in an IPv4 MP_REACH_NLRI, an IPv6 next
    /// hop for IPv4 unicast).
    #[error("{0}")]
    Invalid(String),
}

/// BGP message types (RFC 4271 4.1, RFC 2918 3).
pub mod msg_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    /// RFC 2918.
    pub const ROUTE_REFRESH: u8 = 5;
}

/// Path attribute type codes (IANA "BGP Path Attributes") and flag bits (RFC 4271 4.3).
pub mod attr {
    /// Well-known mandatory (RFC 4271 5.1.1).
    pub const ORIGIN: u8 = 1;
    /// Well-known mandatory (RFC 4271 5.1.2).
    pub const AS_PATH: u8 = 2;
    /// Well-known mandatory for classic IPv4 NLRI (RFC 4271 5.1.3).
    pub const NEXT_HOP: u8 = 3;
    /// Optional non-transitive (RFC 4271 5.1.4).
    pub const MULTI_EXIT_DISC: u8 = 4;
    /// Well-known, iBGP only (RFC 4271 5.1.5).
    pub const LOCAL_PREF: u8 = 5;
    /// Well-known discretionary (RFC 4271 5.1.6).
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// Optional transitive (RFC 4271 5.1.7).
    pub const AGGREGATOR: u8 = 7;
    /// Optional transitive (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// Optional non-transitive (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// Optional non-transitive (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// Optional non-transitive (RFC 4760).
    pub const MP_REACH_NLRI: u8 = 14;
    /// Optional non-transitive (RFC 4760).
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// Optional transitive (RFC 4360); not interpreted, passed on as unknown.
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    /// Optional transitive (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// Optional transitive (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
    /// Optional transitive (RFC 8092).
    pub const LARGE_COMMUNITY: u8 = 32;

    /// Attribute flag bits (RFC 4271 4.3). The low four bits are unused: zero when sent,
    /// ignored when received.
    pub mod flags {
        pub const OPTIONAL: u8 = 0x80;
        pub const TRANSITIVE: u8 = 0x40;
        pub const PARTIAL: u8 = 0x20;
        pub const EXTENDED_LENGTH: u8 = 0x10;
    }
}

/// Capability codes (IANA "Capability Codes", RFC 5492).
pub mod cap {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
}

/// NOTIFICATION error codes (RFC 4271 4.5, RFC 2918/7313, RFC 6608).
pub mod code {
    pub const MESSAGE_HEADER_ERROR: u8 = 1;
    pub const OPEN_MESSAGE_ERROR: u8 = 2;
    pub const UPDATE_MESSAGE_ERROR: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM_ERROR: u8 = 5;
    pub const CEASE: u8 = 6;
    /// RFC 7313 5.
    pub const ROUTE_REFRESH_MESSAGE_ERROR: u8 = 7;
}

/// NOTIFICATION error subcodes, named after the RFCs; the comment gives `code/subcode`.
pub mod subcode {
    /// Any code: no more specific subcode (RFC 4271 6.2 "Unspecific", RFC 6608 FSM 5/0).
    pub const UNSPECIFIC: u8 = 0;

    /// 1/1 (RFC 4271 6.1): the marker is not all ones.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    /// 1/2 (RFC 4271 6.1): data is the erroneous 2-octet length.
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    /// 1/3 (RFC 4271 6.1): data is the erroneous type octet.
    pub const BAD_MESSAGE_TYPE: u8 = 3;

    /// 2/1 (RFC 4271 6.2): data is the largest supported version as 2 octets.
    pub const UNSUPPORTED_VERSION_NUMBER: u8 = 1;
    /// 2/2 (RFC 4271 6.2).
    pub const BAD_PEER_AS: u8 = 2;
    /// 2/3 (RFC 4271 6.2, RFC 6286).
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    /// 2/4 (RFC 4271 6.2).
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    /// 2/6 (RFC 4271 6.2).
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    /// 2/7 (RFC 5492 5): data is the capabilities that are required but missing/unsupported.
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    /// 2/11 (RFC 9234).
    pub const ROLE_MISMATCH: u8 = 11;

    /// 3/1 (RFC 4271 6.3).
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    /// 3/2 (RFC 4271 6.3): data is the attribute (type, length, value).
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    /// 3/3 (RFC 4271 6.3; RFC 7606 makes it treat-as-withdraw, never sent by this codec).
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    /// 3/4 (RFC 4271 6.3): data is the attribute.
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    /// 3/5 (RFC 4271 6.3): data is the attribute.
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    /// 3/6 (RFC 4271 6.3).
    pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
    /// 3/8 (RFC 4271 6.3).
    pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
    /// 3/9 (RFC 4271 6.3, RFC 4760 7): data is the attribute.
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    /// 3/10 (RFC 4271 6.3, RFC 7606 5.3).
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    /// 3/11 (RFC 4271 6.3).
    pub const MALFORMED_AS_PATH: u8 = 11;

    /// 5/1 (RFC 6608).
    pub const UNEXPECTED_MESSAGE_IN_OPEN_SENT: u8 = 1;
    /// 5/2 (RFC 6608).
    pub const UNEXPECTED_MESSAGE_IN_OPEN_CONFIRM: u8 = 2;
    /// 5/3 (RFC 6608).
    pub const UNEXPECTED_MESSAGE_IN_ESTABLISHED: u8 = 3;

    /// 6/1 (RFC 4486 4): data may be AFI (2), SAFI (1), upper bound (4).
    pub const MAX_PREFIXES_REACHED: u8 = 1;
    /// 6/2 (RFC 4486, RFC 9003 shutdown communication).
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    /// 6/3 (RFC 4486).
    pub const PEER_DECONFIGURED: u8 = 3;
    /// 6/4 (RFC 4486, RFC 9003 shutdown communication).
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    /// 6/5 (RFC 4486).
    pub const CONNECTION_REJECTED: u8 = 5;
    /// 6/6 (RFC 4486).
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
    /// 6/7 (RFC 4486, RFC 4271 6.8).
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    /// 6/8 (RFC 4486).
    pub const OUT_OF_RESOURCES: u8 = 8;
    /// 6/9 (RFC 8538).
    pub const HARD_RESET: u8 = 9;

    /// 7/1 (RFC 7313 5).
    pub const INVALID_MESSAGE_LENGTH: u8 = 1;
}
