//! Golden vectors, hand-assembled from the RFC layouts, checked in both directions: the bytes
//! decode to the value, and the value encodes to exactly the bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

const M: &str = "ffffffff ffffffff ffffffff ffffffff";

fn both_ways(bytes: &[u8], msg: &Message, caps: &SessionCaps) {
    assert_eq!(decode_message(bytes, caps).as_ref(), Ok(msg), "decode");
    assert_eq!(encode(msg, caps), bytes, "encode");
}

fn seq(asns: &[u32]) -> AsSegment {
    AsSegment {
        kind: SegmentKind::Sequence,
        asns: asns.to_vec(),
    }
}

fn v4(s: &str) -> ipnet::Ipv4Net {
    s.parse().unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

#[test]
fn keepalive() {
    both_ways(&hex(&format!("{M} 0013 04")), &Message::Keepalive, &IBGP4);
}

#[test]
fn open_with_mp_rr_gr_and_four_octet_as() {
    let bytes = hex(&format!(
        "{M} 003f 01
         04 5ba0 005a 0a000001 22
         02 20
           01 04 0001 00 01
           01 04 0002 00 01
           02 00
           40 0a 4078 0001 01 80 0002 01 00
           41 04 fa56ea01"
    ));
    let open = Open {
        version: 4,
        my_as: AS_TRANS,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(10, 0, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::Multiprotocol(Family::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::GracefulRestart(GracefulRestartCap {
                restarting: false,
                notification: true,
                restart_time: 120,
                families: vec![(Family::Ipv4Unicast, true), (Family::Ipv6Unicast, false)],
            }),
            Capability::FourOctetAs(4_200_000_001),
        ],
    };
    both_ways(
        &bytes,
        &Message::Open(open.clone()),
        &SessionCaps::default(),
    );
    assert_eq!(open.asn(), 4_200_000_001);
    assert_eq!(
        open.families(),
        vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
    );
    assert!(open.has_route_refresh() && open.four_octet_as());
}

#[test]
fn open_capabilities_in_separate_parameters_and_unknown_ones() {
    // One capability per parameter (GoBGP's layout), a restarting GR, an unknown capability,
    // multiprotocol for a family we do not carry, and enhanced route refresh.
    let bytes = hex(&format!(
        "{M} 0041 01
         04 fde9 00b4 c0000201 24
         02 06 01 04 0001 00 01
         02 08 40 06 812c 0001 01 00
         02 04 49 02 6869
         02 06 01 04 0019 00 46
         02 02 46 00"
    ));
    let msg = decode_message(&bytes, &SessionCaps::default()).unwrap();
    let Message::Open(open) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(open.my_as, 65001);
    assert_eq!(open.asn(), 65001);
    assert_eq!(open.hold_time, 180);
    assert_eq!(
        open.capabilities,
        vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::GracefulRestart(GracefulRestartCap {
                restarting: true,
                notification: false,
                restart_time: 300,
                families: vec![(Family::Ipv4Unicast, false)],
            }),
            Capability::Unknown {
                code: 73,
                value: b"hi".to_vec()
            },
            Capability::Unknown {
                code: 1,
                value: hex("0019 00 46")
            },
            Capability::EnhancedRouteRefresh,
        ]
    );
}

#[test]
fn open_rfc9072_extended_parameters() {
    let bytes = hex(&format!(
        "{M} 0029 01
         04 fde9 005a 0a000001 ff ff 0009
         02 0006 01 04 0002 00 01"
    ));
    let Message::Open(open) = decode_message(&bytes, &SessionCaps::default()).unwrap() else {
        panic!()
    };
    assert_eq!(
        open.capabilities,
        vec![Capability::Multiprotocol(Family::Ipv6Unicast)]
    );

    // Capabilities over 255 bytes are split over parameters and sent in the extended format.
    let big = Open {
        capabilities: (0..40)
            .map(|i| Capability::Unknown {
                code: 200,
                value: vec![i; 10],
            })
            .collect(),
        ..open
    };
    let wire = encode(&Message::Open(big.clone()), &IBGP4);
    assert_eq!(&wire[28..30], &[0xff, 0xff]);
    assert_eq!(decode_message(&wire, &IBGP4), Ok(Message::Open(big)));
}

fn ipv4_update() -> Update {
    Update {
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            as_path: AsPath {
                segments: vec![seq(&[65001, 4_200_000_001])],
            },
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            med: Some(100),
            local_pref: Some(200),
            communities: vec![0xfde9_0064, 0xffff_ff01],
            large_communities: vec![(4_200_000_001, 1, 2)],
            ..PathAttrs::default()
        },
        nlri: vec![v4("10.1.2.0/26"), v4("10.1.2.64/26")],
        ..Update::default()
    }
}

#[test]
fn update_ipv4_with_all_common_attributes() {
    let bytes = hex(&format!(
        "{M} 0061 02
         0000
         0040
           40 01 01 00
           40 02 0a 02 02 0000fde9 fa56ea01
           40 03 04 c0000201
           80 04 04 00000064
           40 05 04 000000c8
           c0 08 08 fde90064 ffffff01
           c0 20 0c fa56ea01 00000001 00000002
         1a 0a0102 00
         1a 0a0102 40"
    ));
    both_ways(&bytes, &Message::Update(ipv4_update()), &IBGP4);
}

#[test]
fn update_ipv6_mp_reach_with_link_local() {
    let bytes = hex(&format!(
        "{M} 005c 02
         0000
         0045
           80 0e 35 0002 01 20
              20010db8000000000000000000000001
              fe800000000000000000000000000001
              00
              30 20010db80001
              40 20010db800020000
           40 01 01 00
           40 02 06 02 01 0000fde9"
    ));
    let u = Update {
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            as_path: AsPath {
                segments: vec![seq(&[65001])],
            },
            ..PathAttrs::default()
        },
        mp_reach: Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec![
                IpAddr::V6("2001:db8::1".parse().unwrap()),
                IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            ],
            nlri: vec![net("2001:db8:1::/48"), net("2001:db8:2::/64")],
        }),
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(u), &EBGP4);
}

#[test]
fn update_two_octet_session_as_trans_and_as4_path() {
    let bytes = hex(&format!(
        "{M} 0050 02
         0000
         0035
           40 01 01 00
           40 02 06 02 02 5ba0 fde9
           40 03 04 c0000201
           c0 07 06 5ba0 c0000209
           c0 11 0a 02 02 fa56ea01 0000fde9
           c0 12 08 fa56ea01 c0000209
         18 c63364"
    ));
    let u = Update {
        attrs: PathAttrs {
            origin: Some(Origin::Igp),
            as_path: AsPath {
                segments: vec![seq(&[4_200_000_001, 65001])],
            },
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            aggregator: Some((4_200_000_001, Ipv4Addr::new(192, 0, 2, 9))),
            ..PathAttrs::default()
        },
        nlri: vec![v4("198.51.100.0/24")],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(u), &EBGP2);
}

#[test]
fn two_octet_path_merge_keeps_leading_as_path_asns() {
    // An OLD speaker prepended 65002 after the NEW one built AS4_PATH: AS_PATH has 3 ASNs,
    // AS4_PATH 2, so the first AS_PATH ASN is kept in front (RFC 6793 4.2.3).
    let bytes = update(
        "",
        "40010100 40020802 03 fdea 5ba0 fde9 400304c0000201 c0110a0202fa56ea010000fde9",
        "18c63364",
    );
    let Message::Update(u) = decode_message(&bytes, &EBGP2).unwrap() else {
        panic!()
    };
    assert_eq!(
        u.attrs.as_path.segments,
        vec![seq(&[65002, 4_200_000_001, 65001])]
    );
    assert!(u.errors.is_empty(), "{:?}", u.errors);

    // AGGREGATOR from an OLD speaker (not AS_TRANS): AS4_PATH and AS4_AGGREGATOR are ignored.
    let bytes = update(
        "",
        "40010100 40020602025ba0fde9 400304c0000201 c00706fdeac0000209
         c0110a0202fa56ea010000fde9 c01208fa56ea01c0000209",
        "18c63364",
    );
    let Message::Update(u) = decode_message(&bytes, &EBGP2).unwrap() else {
        panic!()
    };
    assert_eq!(u.attrs.as_path.segments, vec![seq(&[23456, 65001])]);
    assert_eq!(
        u.attrs.aggregator,
        Some((65002, Ipv4Addr::new(192, 0, 2, 9)))
    );
}

#[test]
fn end_of_rib_both_families() {
    let v4 = hex(&format!("{M} 0017 02 0000 0000"));
    both_ways(
        &v4,
        &Message::Update(Update::end_of_rib(Family::Ipv4Unicast)),
        &IBGP4,
    );
    let v6 = hex(&format!("{M} 001d 02 0000 0006 80 0f 03 0002 01"));
    both_ways(
        &v6,
        &Message::Update(Update::end_of_rib(Family::Ipv6Unicast)),
        &IBGP4,
    );
    for (bytes, family) in [(v4, Family::Ipv4Unicast), (v6, Family::Ipv6Unicast)] {
        let Message::Update(u) = decode_message(&bytes, &IBGP4).unwrap() else {
            panic!()
        };
        assert_eq!(u.is_end_of_rib(), Some(family));
    }
    // An End-of-RIB for a family we do not carry is not an IPv4 End-of-RIB.
    let other = hex(&format!("{M} 001d 02 0000 0006 80 0f 03 0019 46"));
    let Message::Update(u) = decode_message(&other, &IBGP4).unwrap() else {
        panic!()
    };
    assert_eq!(u.is_end_of_rib(), None);
}

#[test]
fn withdrawals_both_families() {
    let bytes = hex(&format!("{M} 001c 02 0005 1a0a010200 0000"));
    let u = Update {
        withdrawn: vec![v4("10.1.2.0/26")],
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(u), &IBGP4);
    let bytes = hex(&format!(
        "{M} 0024 02 0000 000d 80 0f 0a 0002 01 30 20010db80001"
    ));
    let u = Update {
        mp_unreach: Some(MpUnreach {
            family: Family::Ipv6Unicast,
            withdrawn: vec![net("2001:db8:1::/48")],
        }),
        ..Update::default()
    };
    both_ways(&bytes, &Message::Update(u), &IBGP4);
}

#[test]
fn notifications_and_route_refresh() {
    both_ways(
        &hex(&format!("{M} 0015 03 04 00")),
        &Message::Notification(Notification::new(code::HOLD_TIMER_EXPIRED, 0)),
        &IBGP4,
    );
    let n = Notification::cease_with_message(subcode::ADMINISTRATIVE_SHUTDOWN, "bye");
    both_ways(
        &hex(&format!("{M} 0019 03 06 02 03 627965")),
        &Message::Notification(n.clone()),
        &IBGP4,
    );
    assert_eq!(n.to_string(), "Cease: Administrative Shutdown: \"bye\"");
    both_ways(
        &hex(&format!("{M} 0017 05 0002 00 01")),
        &Message::RouteRefresh(RouteRefresh {
            family: Family::Ipv6Unicast,
        }),
        &IBGP4,
    );
}

#[test]
fn prefixes_with_host_bits_are_truncated() {
    // 10.1.2.3/24 on the wire (trailing bits are irrelevant, RFC 4271 4.3).
    let bytes = update("", "40010100 400200 400304c0000201", "18 0a0102");
    let Message::Update(u) = decode_message(&bytes, &IBGP4).unwrap() else {
        panic!()
    };
    assert_eq!(u.nlri, vec![v4("10.1.2.0/24")]);
    let bytes = update("", "40010100 400200 400304c0000201", "17 0a0103");
    let Message::Update(u) = decode_message(&bytes, &IBGP4).unwrap() else {
        panic!()
    };
    assert_eq!(u.nlri, vec![v4("10.1.2.0/23")]);
    let bytes = update("", "40010100 400200 400304c0000201", "00");
    let Message::Update(u) = decode_message(&bytes, &IBGP4).unwrap() else {
        panic!()
    };
    assert_eq!(u.nlri, vec![v4("0.0.0.0/0")]);
}

#[test]
fn long_as_path_is_split_and_extended_length_used() {
    let asns: Vec<u32> = (1..=300).map(|i| 4_200_000_000 + i).collect();
    let u = Update {
        attrs: PathAttrs {
            origin: Some(Origin::Incomplete),
            as_path: AsPath {
                segments: vec![seq(&asns)],
            },
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            ..PathAttrs::default()
        },
        nlri: vec![v4("10.0.0.0/8")],
        ..Update::default()
    };
    let wire = encode(&Message::Update(u.clone()), &IBGP4);
    // ORIGIN (4 bytes) then AS_PATH with the Extended Length bit: 2 segments, 255 + 45 ASNs.
    assert_eq!(&wire[23..27], &hex("40010102"));
    assert_eq!(&wire[27..31], &hex("5002 04b4"));
    assert_eq!(&wire[31..33], &[2, 255]);
    let Message::Update(back) = decode_message(&wire, &IBGP4).unwrap() else {
        panic!()
    };
    assert_eq!(
        back.attrs.as_path.segments,
        vec![seq(&asns[..255]), seq(&asns[255..])]
    );
    assert_eq!(back.attrs.as_path.path_len(), 300);
}

#[test]
fn codec_frames_a_stream() {
    let mut codec = BgpCodec::default();
    let ka = hex(&format!("{M} 0013 04"));
    let rr_unknown = hex(&format!("{M} 0017 05 0019 00 46"));
    let open = encode(
        &Message::Open(Open {
            version: 4,
            my_as: 65001,
            hold_time: 90,
            bgp_id: Ipv4Addr::new(10, 0, 0, 1),
            capabilities: vec![],
        }),
        &IBGP4,
    );
    let mut stream = Vec::new();
    stream.extend_from_slice(&ka);
    stream.extend_from_slice(&rr_unknown);
    stream.extend_from_slice(&open);
    stream.extend_from_slice(&ka[..10]);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    // Feed one byte at a time: the codec must wait for whole frames.
    for b in &stream {
        buf.extend_from_slice(&[*b]);
        while let Some(m) = codec.decode(&mut buf).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], Message::Keepalive);
    assert!(matches!(got[1], Message::Open(_)));
    assert_eq!(buf.len(), 10);

    // Bad marker and bad length are reported as soon as the header is in.
    let mut bad = BytesMut::from(&hex(&format!("{M} 1001 04"))[..]);
    match codec.decode(&mut bad) {
        Err(CodecError::Wire(e)) => assert_eq!(
            e.notification,
            Notification::with_data(1, 2, vec![0x10, 0x01])
        ),
        other => panic!("{other:?}"),
    }
    let mut bad = BytesMut::from(&hex("fffffffffffffffffffffffffffffffe 0013 04")[..]);
    match codec.decode(&mut bad) {
        Err(CodecError::Wire(e)) => {
            assert_eq!((e.notification.code, e.notification.subcode), (1, 1))
        }
        other => panic!("{other:?}"),
    }

    // Encoding through the codec, both by reference and by value.
    let mut out = BytesMut::new();
    codec.encode(&Message::Keepalive, &mut out).unwrap();
    codec.encode(Message::Keepalive, &mut out).unwrap();
    assert_eq!(&out[..], &[ka.clone(), ka].concat()[..]);
    codec.set_caps(EBGP2);
    assert_eq!(codec.caps, EBGP2);
}

#[test]
fn encode_errors() {
    let caps = IBGP4;
    let mut out = BytesMut::new();
    let too_many = Update {
        withdrawn: (0..1100u32)
            .map(|i| ipnet::Ipv4Net::new(Ipv4Addr::from(i << 8), 24).unwrap())
            .collect(),
        ..Update::default()
    };
    assert!(matches!(
        encode_message(&Message::Update(too_many), &caps, &mut out),
        Err(EncodeError::TooLong { what: "UPDATE", .. })
    ));
    assert!(out.is_empty());
    let wrong_family = Update {
        mp_reach: Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
            nlri: vec![net("10.0.0.0/8")],
        }),
        ..Update::default()
    };
    assert!(matches!(
        encode_message(&Message::Update(wrong_family), &caps, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    let v4_nh_for_v6 = Update {
        mp_reach: Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            nlri: vec![],
        }),
        ..Update::default()
    };
    assert!(encode_message(&Message::Update(v4_nh_for_v6), &caps, &mut out).is_err());
    let gr = Open {
        version: 4,
        my_as: 1,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(1, 1, 1, 1),
        capabilities: vec![Capability::GracefulRestart(GracefulRestartCap {
            restarting: false,
            notification: false,
            restart_time: 5000,
            families: vec![],
        })],
    };
    assert!(matches!(
        encode_message(&Message::Open(gr), &caps, &mut out),
        Err(EncodeError::OutOfRange(_))
    ));
    let clash = Update {
        attrs: PathAttrs {
            unknown: vec![RawAttr {
                flags: 0xe0,
                code: attr::COMMUNITIES,
                value: vec![0; 4],
            }],
            ..PathAttrs::default()
        },
        ..Update::default()
    };
    assert!(encode_message(&Message::Update(clash), &caps, &mut out).is_err());
    let big = Notification::with_data(6, 0, vec![0; 4096]);
    assert!(encode_message(&Message::Notification(big), &caps, &mut out).is_err());
    assert!(out.is_empty());
}
