//! OPEN message body (RFC 4271 4.2, 6.2) and its capabilities (RFC 5492): multiprotocol
//! (RFC 4760 8), route refresh (RFC 2918), graceful restart (RFC 4724 3, N bit RFC 8538),
//! 4-octet AS (RFC 6793), enhanced route refresh (RFC 7313); extended optional parameters
//! length (RFC 9072).
//!
//! Decoding checks what the codec alone can: version 4 (2/1, data = 0x0004), hold time not 1 or
//! 2 (2/6), BGP identifier not 0.0.0.0 (2/3), optional parameters other than capabilities (2/4).
//! A known capability with a malformed length, and optional parameters whose lengths do not add
//! up, are 2/0 "Unspecific" (RFC 4271 6.2: a recognized but malformed optional parameter).
//! Peer AS, identifier collisions and required capabilities are the FSM's to check.
//!
//! Route refresh and enhanced route refresh capabilities with a non-zero length are kept as
//! `Capability::Unknown` instead of failing the OPEN: they carry no data, so nothing is lost.

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};

use super::code::OPEN_MESSAGE_ERROR;
use super::reader::Reader;
use super::subcode::{
    BAD_BGP_IDENTIFIER, UNACCEPTABLE_HOLD_TIME, UNSPECIFIC, UNSUPPORTED_OPTIONAL_PARAMETER,
    UNSUPPORTED_VERSION_NUMBER,
};
use super::{cap, Capability, EncodeError, Family, GracefulRestartCap, Open, WireError};

/// Optional parameter type 2 (RFC 5492 4).
const PARAM_CAPABILITIES: u8 = 2;
/// RFC 9072: non-extended length and type both 255 announce the extended format.
const PARAM_EXTENDED: u8 = 255;

const GR_RESTARTING: u16 = 0x8000;
const GR_NOTIFICATION: u16 = 0x4000;
const GR_TIME_MASK: u16 = 0x0fff;
const GR_FORWARDING: u8 = 0x80;

fn unspecific(reason: impl Into<String>) -> WireError {
    WireError::new(OPEN_MESSAGE_ERROR, UNSPECIFIC, reason)
}

pub(super) fn decode_open(body: &[u8]) -> Result<Open, WireError> {
    let mut r = Reader::new(body);
    let (Some(version), Some(my_as), Some(hold_time), Some(bgp_id), Some(opt_len)) =
        (r.u8(), r.u16(), r.u16(), r.ipv4(), r.u8())
    else {
        return Err(unspecific("OPEN: shorter than 10 bytes"));
    };
    if version != 4 {
        return Err(WireError::with_data(
            OPEN_MESSAGE_ERROR,
            UNSUPPORTED_VERSION_NUMBER,
            4u16.to_be_bytes().to_vec(),
            format!("OPEN: version {version}, only 4 is supported"),
        ));
    }
    if hold_time == 1 || hold_time == 2 {
        return Err(WireError::new(
            OPEN_MESSAGE_ERROR,
            UNACCEPTABLE_HOLD_TIME,
            format!("OPEN: hold time {hold_time} s (must be 0 or at least 3)"),
        ));
    }
    if bgp_id == Ipv4Addr::UNSPECIFIED {
        return Err(WireError::new(
            OPEN_MESSAGE_ERROR,
            BAD_BGP_IDENTIFIER,
            "OPEN: BGP identifier 0.0.0.0",
        ));
    }
    let mut capabilities = Vec::new();
    let extended = opt_len == 255 && body.get(10) == Some(&PARAM_EXTENDED);
    if extended {
        r.u8();
        let ext_len = r
            .u16()
            .ok_or_else(|| unspecific("OPEN: extended optional parameters length missing"))?;
        let params = take_exact(&mut r, ext_len.into())?;
        decode_params(params, true, &mut capabilities)?;
    } else {
        let params = take_exact(&mut r, opt_len.into())?;
        decode_params(params, false, &mut capabilities)?;
    }
    Ok(Open {
        version,
        my_as,
        hold_time,
        bgp_id,
        capabilities,
    })
}

/// The optional parameters must fill the rest of the message exactly.
fn take_exact<'a>(r: &mut Reader<'a>, len: usize) -> Result<&'a [u8], WireError> {
    let have = r.remaining();
    if have != len {
        return Err(unspecific(format!(
            "OPEN: optional parameters length {len} but {have} bytes follow"
        )));
    }
    Ok(r.rest())
}

fn decode_params(
    params: &[u8],
    extended: bool,
    caps: &mut Vec<Capability>,
) -> Result<(), WireError> {
    let mut r = Reader::new(params);
    while !r.is_empty() {
        let kind = r.u8().unwrap_or_default();
        let len = if extended {
            r.u16()
        } else {
            r.u8().map(u16::from)
        };
        let value = len.and_then(|len| r.take(len.into())).ok_or_else(|| {
            unspecific(format!(
                "OPEN: optional parameter type {kind} overruns the parameters"
            ))
        })?;
        if kind != PARAM_CAPABILITIES {
            return Err(WireError::new(
                OPEN_MESSAGE_ERROR,
                UNSUPPORTED_OPTIONAL_PARAMETER,
                format!("OPEN: unsupported optional parameter type {kind}"),
            ));
        }
        decode_capabilities(value, caps)?;
    }
    Ok(())
}

/// Several capabilities may share one parameter (RFC 5492 4).
fn decode_capabilities(value: &[u8], caps: &mut Vec<Capability>) -> Result<(), WireError> {
    let mut r = Reader::new(value);
    while !r.is_empty() {
        let code = r.u8().unwrap_or_default();
        let v = r.u8().and_then(|len| r.take(len.into())).ok_or_else(|| {
            unspecific(format!(
                "OPEN: capability {code} overruns its optional parameter"
            ))
        })?;
        caps.push(decode_capability(code, v)?);
    }
    Ok(())
}

fn decode_capability(code: u8, v: &[u8]) -> Result<Capability, WireError> {
    let unknown = || Capability::Unknown {
        code,
        value: v.to_vec(),
    };
    let bad_len = |name: &str| {
        unspecific(format!(
            "OPEN: {name} capability (code {code}): length {} is invalid",
            v.len()
        ))
    };
    let mut r = Reader::new(v);
    Ok(match code {
        cap::MULTIPROTOCOL => {
            let [a0, a1, _reserved, safi] = r
                .array::<4>()
                .filter(|_| v.len() == 4)
                .ok_or_else(|| bad_len("multiprotocol"))?;
            match Family::from_codes(u16::from_be_bytes([a0, a1]), safi) {
                Some(f) => Capability::Multiprotocol(f),
                None => unknown(),
            }
        }
        cap::ROUTE_REFRESH if v.is_empty() => Capability::RouteRefresh,
        cap::ENHANCED_ROUTE_REFRESH if v.is_empty() => Capability::EnhancedRouteRefresh,
        cap::FOUR_OCTET_AS => {
            let asn = r
                .u32()
                .filter(|_| v.len() == 4)
                .ok_or_else(|| bad_len("4-octet AS"))?;
            Capability::FourOctetAs(asn)
        }
        cap::GRACEFUL_RESTART => {
            if v.len() < 2 || !(v.len() - 2).is_multiple_of(4) {
                return Err(bad_len("graceful restart"));
            }
            let head = r.u16().unwrap_or_default();
            let mut families = Vec::new();
            while let (Some(afi), Some(safi), Some(flags)) = (r.u16(), r.u8(), r.u8()) {
                // Families we do not carry are ignored (RFC 4724 3: only negotiated ones count).
                if let Some(f) = Family::from_codes(afi, safi) {
                    families.push((f, flags & GR_FORWARDING != 0));
                }
            }
            Capability::GracefulRestart(GracefulRestartCap {
                restarting: head & GR_RESTARTING != 0,
                notification: head & GR_NOTIFICATION != 0,
                restart_time: head & GR_TIME_MASK,
                families,
            })
        }
        _ => unknown(),
    })
}

fn encode_capability(c: &Capability, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    match c {
        Capability::Multiprotocol(f) => {
            out.extend_from_slice(&[cap::MULTIPROTOCOL, 4]);
            out.extend_from_slice(&f.afi().code().to_be_bytes());
            out.extend_from_slice(&[0, f.safi()]);
        }
        Capability::RouteRefresh => out.extend_from_slice(&[cap::ROUTE_REFRESH, 0]),
        Capability::EnhancedRouteRefresh => {
            out.extend_from_slice(&[cap::ENHANCED_ROUTE_REFRESH, 0])
        }
        Capability::FourOctetAs(asn) => {
            out.extend_from_slice(&[cap::FOUR_OCTET_AS, 4]);
            out.extend_from_slice(&asn.to_be_bytes());
        }
        Capability::GracefulRestart(gr) => {
            if gr.restart_time > GR_TIME_MASK {
                return Err(EncodeError::OutOfRange(format!(
                    "OPEN: graceful restart time {} s over the 12-bit maximum 4095",
                    gr.restart_time
                )));
            }
            let len = 2 + 4 * gr.families.len();
            let len = u8::try_from(len).map_err(|_| {
                EncodeError::OutOfRange(format!("OPEN: graceful restart capability of {len} bytes"))
            })?;
            let mut head = gr.restart_time;
            if gr.restarting {
                head |= GR_RESTARTING;
            }
            if gr.notification {
                head |= GR_NOTIFICATION;
            }
            out.extend_from_slice(&[cap::GRACEFUL_RESTART, len]);
            out.extend_from_slice(&head.to_be_bytes());
            for (f, forwarding) in &gr.families {
                out.extend_from_slice(&f.afi().code().to_be_bytes());
                out.extend_from_slice(&[f.safi(), if *forwarding { GR_FORWARDING } else { 0 }]);
            }
        }
        Capability::Unknown { code, value } => {
            let len = u8::try_from(value.len()).map_err(|_| {
                EncodeError::OutOfRange(format!(
                    "OPEN: capability {code} value of {} bytes (at most 255)",
                    value.len()
                ))
            })?;
            out.extend_from_slice(&[*code, len]);
            out.extend_from_slice(value);
        }
    }
    debug_assert!(out.len() > start);
    Ok(())
}

/// Writes the OPEN body. Capabilities go in one optional parameter of type 2 (as BIRD and FRR
/// do), split over several when they pass 255 bytes; when all parameters together pass 255
/// bytes the RFC 9072 extended format is used.
pub(super) fn encode_open(o: &Open, out: &mut BytesMut) -> Result<(), EncodeError> {
    out.reserve(10);
    out.put_u8(o.version);
    out.put_u16(o.my_as);
    out.put_u16(o.hold_time);
    out.put_slice(&o.bgp_id.octets());

    // Group encoded capabilities into parameters of at most 255 bytes.
    let mut params: Vec<Vec<u8>> = Vec::new();
    let mut one = Vec::new();
    for c in &o.capabilities {
        one.clear();
        encode_capability(c, &mut one)?;
        match params.last_mut() {
            Some(p) if p.len() + one.len() <= 255 => p.extend_from_slice(&one),
            _ => params.push(one.clone()),
        }
    }
    let plain_len: usize = params.iter().map(|p| 2 + p.len()).sum();
    if plain_len <= 255 {
        out.put_u8(plain_len as u8);
        for p in &params {
            out.put_u8(PARAM_CAPABILITIES);
            out.put_u8(p.len() as u8);
            out.put_slice(p);
        }
    } else {
        let ext_len: usize = params.iter().map(|p| 3 + p.len()).sum();
        let ext_len = u16::try_from(ext_len).map_err(|_| EncodeError::TooLong {
            what: "OPEN",
            len: ext_len,
        })?;
        out.put_u8(255);
        out.put_u8(PARAM_EXTENDED);
        out.put_u16(ext_len);
        for p in &params {
            out.put_u8(PARAM_CAPABILITIES);
            out.put_u16(p.len() as u16);
            out.put_slice(p);
        }
    }
    Ok(())
}
