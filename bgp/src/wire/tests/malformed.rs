//! A corpus of malformed (and borderline-valid) messages, each with the outcome RFC 4271 /
//! RFC 7606 / RFC 6793 prescribe: a session reset with a given code/subcode, an UPDATE that is
//! treat-as-withdraw because of attribute X, one where attribute X was discarded, a clean
//! decode, or a message to ignore.

use super::*;

#[derive(Debug, Clone, Copy)]
enum Want {
    /// Session reset with this code/subcode.
    Reset(u8, u8),
    /// UPDATE decodes, treat-as-withdraw because of this attribute code.
    Withdraw(u8),
    /// UPDATE decodes, this attribute was discarded, the rest is used.
    Discard(u8),
    /// Decodes with no attribute errors at all.
    Clean,
    /// RFC says to ignore the message.
    Ignored,
}
use Want::*;

/// Valid ORIGIN, empty AS_PATH (iBGP), NEXT_HOP 192.0.2.1.
const BASE: &str = "40010100 400200 400304c0000201";
/// 10.1.2.0/24.
const NLRI: &str = "180a0102";

fn with_base(extra: &str) -> Vec<u8> {
    update("", &format!("{BASE} {extra}"), NLRI)
}

fn open(params: &str) -> Vec<u8> {
    let p = hex(params);
    let mut body = hex("04 fde9 005a 0a000001");
    body.push(p.len() as u8);
    body.extend_from_slice(&p);
    frame(1, &body)
}

fn with_header(marker_last: u8, len: u16, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 15];
    v.push(marker_last);
    v.extend_from_slice(&len.to_be_bytes());
    v.push(kind);
    v.extend_from_slice(body);
    v
}

fn cases() -> Vec<(&'static str, Vec<u8>, SessionCaps, Want)> {
    vec![
        // --- header (RFC 4271 6.1)
        ("marker not all ones", with_header(0xfe, 19, 4, &[]), IBGP4, Reset(1, 1)),
        ("frame shorter than a header", vec![0xff; 10], IBGP4, Reset(1, 2)),
        ("length field 18", with_header(0xff, 18, 4, &[0]), IBGP4, Reset(1, 2)),
        ("length field 4097", with_header(0xff, 4097, 4, &[]), IBGP4, Reset(1, 2)),
        ("length field disagrees with frame", with_header(0xff, 25, 4, &[]), IBGP4, Reset(1, 2)),
        ("message type 0", frame(0, &[]), IBGP4, Reset(1, 3)),
        ("message type 6", frame(6, &[]), IBGP4, Reset(1, 3)),
        ("KEEPALIVE of 20 bytes", frame(4, &[0]), IBGP4, Reset(1, 2)),
        ("OPEN of 28 bytes", frame(1, &[4; 9]), IBGP4, Reset(1, 2)),
        ("UPDATE of 22 bytes", frame(2, &[0, 0, 0]), IBGP4, Reset(1, 2)),
        ("NOTIFICATION of 20 bytes", frame(3, &[6]), IBGP4, Reset(1, 2)),
        ("ROUTE-REFRESH of 24 bytes", frame(5, &hex("0001000100")), IBGP4, Reset(1, 2)),
        // --- OPEN (RFC 4271 6.2, RFC 5492)
        ("OPEN version 3", frame(1, &hex("03 fde9 005a 0a000001 00")), IBGP4, Reset(2, 1)),
        ("OPEN hold time 1", frame(1, &hex("04 fde9 0001 0a000001 00")), IBGP4, Reset(2, 6)),
        ("OPEN hold time 2", frame(1, &hex("04 fde9 0002 0a000001 00")), IBGP4, Reset(2, 6)),
        ("OPEN hold time 0 is fine", frame(1, &hex("04 fde9 0000 0a000001 00")), IBGP4, Clean),
        ("OPEN BGP identifier 0.0.0.0", frame(1, &hex("04 fde9 005a 00000000 00")), IBGP4, Reset(2, 3)),
        ("OPEN optional parameter type 1", open("01 02 0000"), IBGP4, Reset(2, 4)),
        ("OPEN parameters length too long", frame(1, &hex("04 fde9 005a 0a000001 08 02 02 0200")), IBGP4, Reset(2, 0)),
        ("OPEN parameters length too short", frame(1, &hex("04 fde9 005a 0a000001 02 02 02 0200")), IBGP4, Reset(2, 0)),
        ("OPEN parameter overruns", open("02 05 0200"), IBGP4, Reset(2, 0)),
        ("OPEN capability overruns parameter", open("02 03 01 04 00"), IBGP4, Reset(2, 0)),
        ("OPEN multiprotocol capability of 3 bytes", open("02 05 01 03 000100"), IBGP4, Reset(2, 0)),
        ("OPEN 4-octet AS capability of 2 bytes", open("02 04 41 02 fde9"), IBGP4, Reset(2, 0)),
        ("OPEN graceful restart of 3 bytes", open("02 05 40 03 007800"), IBGP4, Reset(2, 0)),
        ("OPEN graceful restart of 4 bytes", open("02 06 40 04 00780001"), IBGP4, Reset(2, 0)),
        ("OPEN extended parameters overrun", frame(1, &hex("04 fde9 005a 0a000001 ff ff 0010 02 0002 0200")), IBGP4, Reset(2, 0)),
        ("OPEN unknown capability is kept", open("02 04 99 02 abcd"), IBGP4, Clean),
        ("OPEN route refresh with data is kept as unknown", open("02 03 02 01 00"), IBGP4, Clean),
        // --- UPDATE layout (RFC 4271 6.3, RFC 7606 5.3)
        ("withdrawn length overruns", frame(2, &hex("0010 0000")), IBGP4, Reset(3, 1)),
        ("attribute length overruns", frame(2, &hex("0000 0010 40010100")), IBGP4, Reset(3, 1)),
        ("attribute length field missing", frame(2, &hex("0002 1000")), IBGP4, Reset(3, 1)),
        ("withdrawn /33", update("21 0a010203 00", "", ""), IBGP4, Reset(3, 10)),
        ("withdrawn prefix overruns", update("18 0a01", "", ""), IBGP4, Reset(3, 10)),
        ("NLRI /33", update("", BASE, "21 0a01020300"), IBGP4, Reset(3, 10)),
        ("NLRI prefix overruns", update("", BASE, "18 0a01"), IBGP4, Reset(3, 10)),
        // --- attribute list framing (RFC 7606 3, 4)
        ("attribute overruns the list", with_base("c0 08 08 0000"), IBGP4, Withdraw(8)),
        ("extended length overruns the list", with_base("d0 08 0100 00000000"), IBGP4, Withdraw(8)),
        ("two stray bytes after the attributes", with_base("c008"), IBGP4, Withdraw(8)),
        ("one stray byte after the attributes", with_base("c0"), IBGP4, Withdraw(0)),
        ("MP_REACH_NLRI overruns the list", update("", "80 0e 20 0002 01 10", ""), IBGP4, Reset(3, 1)),
        ("MP_REACH_NLRI twice", update("", "800e0900010104c000020100 800e0900010104c000020100", ""), IBGP4, Reset(3, 1)),
        ("MP_UNREACH_NLRI twice", update("", "800f03000201 800f03000201", ""), IBGP4, Reset(3, 1)),
        ("COMMUNITIES twice: repeat discarded", with_base("c00804fde90064 c00804fde90065"), IBGP4, Discard(8)),
        ("extended length on a short attribute is fine", update("", "5001000100 400200 400304c0000201", NLRI), IBGP4, Clean),
        // --- well-known attributes (RFC 7606 7.1-7.5)
        ("ORIGIN value 7", update("", "40010107 400200 400304c0000201", NLRI), IBGP4, Withdraw(1)),
        ("ORIGIN length 2", update("", "4001020000 400200 400304c0000201", NLRI), IBGP4, Withdraw(1)),
        ("ORIGIN flagged optional", update("", "c0010100 400200 400304c0000201", NLRI), IBGP4, Withdraw(1)),
        ("ORIGIN missing", update("", "400200 400304c0000201", NLRI), IBGP4, Withdraw(1)),
        ("AS_PATH missing", update("", "40010100 400304c0000201", NLRI), IBGP4, Withdraw(2)),
        ("AS_PATH segment type 5", update("", "40010100 40020605010000fde9 400304c0000201", NLRI), IBGP4, Withdraw(2)),
        ("AS_PATH zero-length segment", update("", "40010100 4002020200 400304c0000201", NLRI), IBGP4, Withdraw(2)),
        ("AS_PATH segment overruns", update("", "40010100 40020602020000fde9 400304c0000201", NLRI), IBGP4, Withdraw(2)),
        ("AS_PATH 2-octet layout on a 4-octet session", update("", "40010100 4002040201fde9 400304c0000201", NLRI), EBGP4, Withdraw(2)),
        ("AS_PATH confederation segment from eBGP", update("", "40010100 40020603010000fde9 400304c0000201", NLRI), EBGP4, Withdraw(2)),
        ("NEXT_HOP length 5", update("", "40010100 400200 400305c000020100", NLRI), IBGP4, Withdraw(3)),
        ("NEXT_HOP 0.0.0.0", update("", "40010100 400200 40030400000000", NLRI), IBGP4, Withdraw(3)),
        ("NEXT_HOP multicast", update("", "40010100 400200 400304e0000001", NLRI), IBGP4, Withdraw(3)),
        ("NEXT_HOP broadcast", update("", "40010100 400200 400304ffffffff", NLRI), IBGP4, Withdraw(3)),
        ("NEXT_HOP loopback is a host address", update("", "40010100 400200 4003047f000002", NLRI), IBGP4, Clean),
        ("NEXT_HOP missing", update("", "40010100 400200", NLRI), IBGP4, Withdraw(3)),
        ("NEXT_HOP missing without NLRI is fine", update("", "40010100 400200", ""), IBGP4, Clean),
        ("MED length 2", with_base("80040200ff"), IBGP4, Withdraw(4)),
        ("MED flagged well-known", with_base("4004040000000a"), IBGP4, Withdraw(4)),
        ("LOCAL_PREF length 3", with_base("400503000064"), IBGP4, Withdraw(5)),
        ("LOCAL_PREF from eBGP", with_base("40050400000064"), EBGP4, Discard(5)),
        ("LOCAL_PREF malformed from eBGP is still just discarded", with_base("400503000064"), EBGP4, Discard(5)),
        // --- discretionary and optional attributes (RFC 7606 7.6-7.10, RFC 8092)
        ("ATOMIC_AGGREGATE length 1", with_base("40060100"), IBGP4, Discard(6)),
        ("ATOMIC_AGGREGATE flagged optional", with_base("c00600"), IBGP4, Discard(6)),
        ("AGGREGATOR length 7", with_base("c007070000fde9c00002"), IBGP4, Discard(7)),
        ("AGGREGATOR 4-octet layout on a 2-octet session", with_base("c007080000fde9c0000209"), EBGP2, Discard(7)),
        ("COMMUNITIES length 5", with_base("c00805fde9006400"), IBGP4, Withdraw(8)),
        ("COMMUNITIES length 0", with_base("c00800"), IBGP4, Withdraw(8)),
        ("COMMUNITIES flagged non-transitive", with_base("800804fde90064"), IBGP4, Withdraw(8)),
        ("ORIGINATOR_ID length 3", with_base("800903c00002"), IBGP4, Withdraw(9)),
        ("ORIGINATOR_ID from eBGP", with_base("800904c0000202"), EBGP4, Discard(9)),
        ("CLUSTER_LIST length 6", with_base("800a06c00002010000"), IBGP4, Withdraw(10)),
        ("CLUSTER_LIST length 0", with_base("800a00"), IBGP4, Withdraw(10)),
        ("CLUSTER_LIST from eBGP", with_base("800a04c0000202"), EBGP4, Discard(10)),
        ("LARGE_COMMUNITY length 13", with_base("c0200d000000010000000200000003ff"), IBGP4, Withdraw(32)),
        ("LARGE_COMMUNITY length 0", with_base("c02000"), IBGP4, Withdraw(32)),
        // --- RFC 6793
        ("AS4_PATH on a 4-octet session", with_base("c0110602010000fde9"), EBGP4, Discard(17)),
        ("AS4_PATH malformed", update("", "40010100 40020402015ba0 400304c0000201 c01106020200000001", NLRI), EBGP2, Discard(17)),
        ("AS4_PATH with a confederation segment", update("", "40010100 40020402015ba0 400304c0000201 c0110603010000fde9", NLRI), EBGP2, Discard(17)),
        ("AS4_AGGREGATOR length 6", with_base("c01206fa56c0000209"), EBGP2, Discard(18)),
        ("AS4_AGGREGATOR on a 4-octet session", with_base("c01208fa56ea01c0000209"), IBGP4, Discard(18)),
        // --- MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760, RFC 7606 7.11)
        ("MP_REACH next hop length 8 for IPv6", update("", "800e0d 0002 01 08 0000000000000001 00 40010100 400200", ""), IBGP4, Reset(3, 9)),
        ("MP_REACH next hop length 16 for IPv4", update("", "800e15 0001 01 10 00000000000000000000000000000001 00 40010100 400200", ""), IBGP4, Reset(3, 9)),
        ("MP_REACH of 2 bytes", update("", "800e020002", ""), IBGP4, Reset(3, 9)),
        ("MP_REACH reserved octet missing", update("", "800e080001010400000001", ""), IBGP4, Reset(3, 9)),
        ("MP_REACH NLRI /129", update("", "800e17 0002 01 10 20010db8000000000000000000000001 00 81ff", ""), IBGP4, Reset(3, 10)),
        ("MP_REACH flagged transitive", update("", "c00e050001010400", ""), IBGP4, Reset(3, 4)),
        ("MP_UNREACH /129", update("", "800f05000201 81ff", ""), IBGP4, Reset(3, 10)),
        ("MP_UNREACH of 2 bytes", update("", "800f020002", ""), IBGP4, Reset(3, 9)),
        ("MP_REACH unknown AFI/SAFI is ignored", update("", "800e09 0019 46 04 0a000001 00 40010100 400200", ""), IBGP4, Discard(14)),
        ("MP_UNREACH unknown AFI/SAFI is ignored", update("", "800f03 0019 46", ""), IBGP4, Discard(15)),
        ("MP_REACH multicast IPv6 next hop", update("", "800e1c 0002 01 10 ff020000000000000000000000000001 00 30 20010db80001 40010100 400200", ""), IBGP4, Withdraw(14)),
        ("MP_REACH IPv6 without ORIGIN", update("", "800e1c 0002 01 10 20010db8000000000000000000000001 00 30 20010db80001 400200", ""), IBGP4, Withdraw(1)),
        // --- unknown attributes (RFC 4271 5, 6.3)
        ("unknown well-known attribute", with_base("4063020102"), IBGP4, Reset(3, 2)),
        ("unknown optional non-transitive dropped", with_base("8063020102"), IBGP4, Clean),
        ("unknown optional transitive kept", with_base("c063020102"), IBGP4, Clean),
        // --- ROUTE-REFRESH (RFC 2918 4, RFC 7313 5)
        ("ROUTE-REFRESH unknown AFI/SAFI", frame(5, &hex("0003 00 01")), IBGP4, Ignored),
        ("ROUTE-REFRESH BoRR subtype", frame(5, &hex("0001 01 01")), IBGP4, Ignored),
        ("ROUTE-REFRESH unknown subtype", frame(5, &hex("0001 07 01")), IBGP4, Ignored),
        // --- NOTIFICATION with any code is fine
        ("NOTIFICATION unknown code with data", frame(3, &hex("63 01 aabbcc")), IBGP4, Clean),
    ]
}

fn check(name: &str, bytes: &[u8], caps: &SessionCaps, want: Want) {
    let got = decode_message(bytes, caps);
    match (want, &got) {
        (Reset(code, sub), Err(e)) => {
            assert_eq!(
                (e.notification.code, e.notification.subcode),
                (code, sub),
                "{name}: wrong notification: {e:?}"
            );
            assert!(!e.is_ignorable(), "{name}");
            assert!(!e.reason.is_empty(), "{name}");
        }
        (Ignored, Err(e)) => assert!(e.is_ignorable(), "{name}: {e:?}"),
        (Clean, Ok(Message::Update(u))) => assert!(u.errors.is_empty(), "{name}: {:?}", u.errors),
        (Clean, Ok(_)) => {}
        (Withdraw(code), Ok(Message::Update(u))) => {
            assert!(u.treat_as_withdraw(), "{name}: {:?}", u.errors);
            assert!(
                u.errors
                    .iter()
                    .any(|e| e.code == code && e.treatment == Treatment::TreatAsWithdraw),
                "{name}: no treat-as-withdraw for attribute {code}: {:?}",
                u.errors
            );
        }
        (Discard(code), Ok(Message::Update(u))) => {
            assert!(!u.treat_as_withdraw(), "{name}: {:?}", u.errors);
            assert!(
                u.errors
                    .iter()
                    .any(|e| e.code == code && e.treatment == Treatment::AttributeDiscard),
                "{name}: no discard of attribute {code}: {:?}",
                u.errors
            );
        }
        _ => panic!("{name}: wanted {want:?}, got {got:?}"),
    }
    // Every reason names where the problem is.
    if let Ok(Message::Update(u)) = &got {
        for e in &u.errors {
            assert!(e.reason.starts_with("UPDATE: "), "{name}: {}", e.reason);
        }
    }
}

#[test]
fn malformed_corpus() {
    let cases = cases();
    assert!(cases.len() >= 30);
    for (name, bytes, caps, want) in &cases {
        check(name, bytes, caps, *want);
    }
}

#[test]
fn notification_data_follows_rfc4271() {
    let e = decode_message(&with_header(0xff, 4097, 4, &[]), &IBGP4).unwrap_err();
    assert_eq!(e.notification.data, vec![0x10, 0x01]);
    let e = decode_message(&frame(9, &[]), &IBGP4).unwrap_err();
    assert_eq!(e.notification.data, vec![9]);
    let e = decode_message(&frame(1, &hex("03 fde9 005a 0a000001 00")), &IBGP4).unwrap_err();
    assert_eq!(e.notification.data, vec![0, 4]);
    let e = decode_message(&with_base("4063020102"), &IBGP4).unwrap_err();
    assert_eq!(
        e.notification.data,
        hex("4063020102"),
        "3/2 carries the attribute"
    );
    let bad_mp = "800e0d00020108000000000000000100";
    let e = decode_message(&update("", bad_mp, ""), &IBGP4).unwrap_err();
    assert_eq!(
        e.notification.data,
        hex(bad_mp),
        "3/9 carries the attribute"
    );
}

#[test]
fn reasons_name_attribute_and_problem() {
    let Ok(Message::Update(u)) =
        decode_message(&update("", "40010107 400200 400304c0000201", NLRI), &IBGP4)
    else {
        panic!()
    };
    assert_eq!(
        u.errors[0].reason,
        "UPDATE: ORIGIN attribute: value 7 out of range"
    );
    let e = decode_message(&update("21 0a010203 00", "", ""), &IBGP4).unwrap_err();
    assert_eq!(
        e.reason,
        "UPDATE: withdrawn routes: prefix length 33 is over 32"
    );
    assert_eq!(
        e.to_string(),
        e.reason,
        "WireError displays its reason; the notification has its own Display"
    );
    assert_eq!(
        e.notification.to_string(),
        "UPDATE Message Error: Invalid Network Field"
    );
}

#[test]
fn discard_keeps_the_rest_and_the_first_copy() {
    let Ok(Message::Update(u)) =
        decode_message(&with_base("c00804fde90064 c00804fde90065 40060100"), &IBGP4)
    else {
        panic!()
    };
    assert_eq!(u.attrs.communities, vec![0xfde9_0064]);
    assert!(!u.attrs.atomic_aggregate);
    assert_eq!(u.nlri.len(), 1);
    assert_eq!(
        u.attrs.next_hop,
        Some(std::net::Ipv4Addr::new(192, 0, 2, 1))
    );
}

#[test]
fn unknown_transitive_attribute_gets_partial_bit() {
    let Ok(Message::Update(u)) = decode_message(&with_base("c063020102 d0640001ff"), &IBGP4) else {
        panic!()
    };
    assert_eq!(
        u.attrs.unknown,
        vec![
            RawAttr {
                flags: 0xe0,
                code: 99,
                value: vec![1, 2]
            },
            RawAttr {
                flags: 0xe0,
                code: 100,
                value: vec![0xff]
            }
        ]
    );
    // Passed on as received (plus Partial), ordered by code among our own attributes.
    let wire = encode(&Message::Update(u.clone()), &IBGP4);
    assert!(wire.ends_with(&hex("e063020102 e06401ff 180a0102")));
}
