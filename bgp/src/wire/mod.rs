//! The BGP-4 wire codec: the only module that sees bytes.
//!
//! (Filled in by the codec work: framing, decode, encode, RFC 7606 error handling.)

mod types;
pub use types::*;

/// Human-readable name of a NOTIFICATION code/subcode (RFC 4271 4.5, 6; RFC 4486; RFC 6608).
pub fn notification_text(code: u8, subcode: u8) -> String {
    format!("error code {code} subcode {subcode}")
}
