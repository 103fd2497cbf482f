//! Wire-format tests: specs round-trip, delete bodies, batch framing, extended ACK errors.
use super::*;
use crate::routes::reconcile::SpecHop;

fn roundtrip(s: &RouteSpec) -> KernelRoute {
    let m = encode_spec(s, 80, 254);
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    decode_route(&buf).unwrap().unwrap()
}

fn key(s: &str, metric: u32) -> RouteKey {
    RouteKey {
        dst: s.parse().unwrap(),
        metric,
    }
}

#[test]
fn specs_roundtrip_through_the_wire_format() {
    let specs = [
        RouteSpec {
            key: key("10.65.0.1/32", 0),
            kind: SpecKind::Dev { oif: 7 },
        },
        RouteSpec {
            key: key("fd10::1/128", 1024),
            kind: SpecKind::Dev { oif: 7 },
        },
        RouteSpec {
            key: key("10.65.0.0/26", 0),
            kind: SpecKind::Blackhole,
        },
        RouteSpec {
            key: key("fd10::/122", 1024),
            kind: SpecKind::Blackhole,
        },
        RouteSpec {
            key: key("10.65.1.0/26", 0),
            kind: SpecKind::Via {
                hops: vec![SpecHop {
                    gateway: "10.99.0.2".parse().unwrap(),
                    oif: Some(3),
                    onlink: true,
                }],
            },
        },
        RouteSpec {
            key: key("fd10::40/122", 1024),
            kind: SpecKind::Via {
                hops: vec![
                    SpecHop {
                        gateway: "fd00::2".parse().unwrap(),
                        oif: Some(3),
                        onlink: false,
                    },
                    SpecHop {
                        gateway: "fd00::3".parse().unwrap(),
                        oif: Some(4),
                        onlink: false,
                    },
                ],
            },
        },
    ];
    for s in &specs {
        let k = roundtrip(s);
        assert_eq!(k.protocol, 80);
        assert_eq!(k.table, 254);
        assert!(s.matches(&k), "{s:?} vs {k:?}");
        assert_eq!(k, s.to_kernel(80, 254));
    }
}

#[test]
fn delete_carries_protocol_and_no_next_hop() {
    let k = RouteSpec {
        key: key("10.65.1.0/26", 0),
        kind: SpecKind::Via {
            hops: vec![SpecHop {
                gateway: "10.99.0.2".parse().unwrap(),
                oif: Some(3),
                onlink: false,
            }],
        },
    }
    .to_kernel(80, 254);
    let m = encode_delete(&k, 80);
    assert_eq!(u8::from(m.header.protocol), 80);
    assert_eq!(m.header.scope, RouteScope::NoWhere);
    assert!(!m
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_))));
}

#[test]
fn batch_framing_and_ack_on_last() {
    let mut b = Batch::new(100);
    let s = RouteSpec {
        key: key("10.65.0.1/32", 0),
        kind: SpecKind::Dev { oif: 7 },
    };
    push_route_op(&mut b, &RouteOp::Add(s.clone()), 80, 254);
    push_route_op(&mut b, &RouteOp::Replace(s.clone()), 80, 254);
    push_route_op(&mut b, &RouteOp::Delete(s.to_kernel(80, 254)), 80, 254);
    b.finish();
    let msgs: Vec<_> = messages(&b.buf).collect();
    assert_eq!(msgs.len(), 3);
    assert_eq!(
        msgs.iter().map(|m| (m.ty, m.seq)).collect::<Vec<_>>(),
        [
            (RTM_NEWROUTE, 100),
            (RTM_NEWROUTE, 101),
            (RTM_DELROUTE, 102)
        ]
    );
    assert_eq!(msgs[0].flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL);
    assert_eq!(msgs[1].flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE);
    assert_eq!(msgs[2].flags, NLM_F_REQUEST | NLM_F_ACK);
}

#[test]
fn error_messages_with_extended_ack() {
    // errno -19, capped echo of a 16-byte header, then NLMSGERR_ATTR_MSG "Nexthop device is not up".
    let text = b"Nexthop device is not up\0";
    let mut p = Vec::new();
    p.extend_from_slice(&(-19i32).to_ne_bytes());
    p.extend_from_slice(&[0u8; 16]);
    p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
    p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
    p.extend_from_slice(text);
    p.resize(align4(p.len()), 0);
    let e = decode_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &p).unwrap_err();
    assert_eq!(e.errno, 19);
    assert_eq!(e.message, "No such device: Nexthop device is not up");
    assert_eq!(decode_error(0, &0i32.to_ne_bytes()), Ok(()));
}
