//! `pack_announcements` / `pack_withdrawals`: every UPDATE fits 4096 bytes, the UPDATEs carry
//! exactly the input prefixes, and each UPDATE but the last is full (as few as possible).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::*;

fn v4_blocks(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i * 64), 26).unwrap()))
        .collect()
}

fn v6_blocks(n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            let a = Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 0);
            IpNet::V6(Ipv6Net::new(a, if i % 3 == 0 { 64 } else { 122 }).unwrap())
        })
        .collect()
}

fn attrs() -> PathAttrs {
    PathAttrs {
        origin: Some(Origin::Igp),
        as_path: AsPath {
            segments: vec![AsSegment {
                kind: SegmentKind::Sequence,
                asns: vec![65001, 4_200_000_001],
            }],
        },
        med: Some(10),
        communities: vec![0xfde9_0001; 20],
        ..PathAttrs::default()
    }
}

/// Encodes every UPDATE, checks sizes and fullness, decodes them back; returns announced and
/// withdrawn prefixes.
fn round_trip(
    updates: &[Update],
    caps: &SessionCaps,
    largest_prefix: usize,
) -> (Vec<IpNet>, Vec<IpNet>) {
    let (mut announced, mut withdrawn) = (Vec::new(), Vec::new());
    for (i, u) in updates.iter().enumerate() {
        let wire = encode(&Message::Update(u.clone()), caps);
        assert!(wire.len() <= MAX_MESSAGE_LEN);
        if i + 1 < updates.len() {
            assert!(
                wire.len() + largest_prefix > MAX_MESSAGE_LEN,
                "UPDATE {i} is only {} bytes",
                wire.len()
            );
        }
        let Ok(Message::Update(back)) = decode_message(&wire, caps) else {
            panic!("UPDATE {i}")
        };
        assert!(back.errors.is_empty(), "{:?}", back.errors);
        assert_eq!(&back, u);
        announced.extend(back.announced());
        withdrawn.extend(back.withdrawn_all());
    }
    (announced, withdrawn)
}

fn same_set(a: &[IpNet], b: &[IpNet]) {
    assert_eq!(a.len(), b.len());
    let a: HashSet<_> = a.iter().collect();
    let b: HashSet<_> = b.iter().collect();
    assert_eq!(a, b);
}

#[test]
fn ipv4_announcements_100k() {
    let prefixes = v4_blocks(100_000);
    let nh = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))];
    for caps in [IBGP4, EBGP2] {
        let t = Instant::now();
        let updates = pack_announcements(&attrs(), Family::Ipv4Unicast, &nh, &prefixes, &caps);
        let took = t.elapsed();
        eprintln!(
            "packed 100k IPv4 /26 into {} UPDATEs in {took:?}",
            updates.len()
        );
        // A few ms in release; debug builds are ~10x slower.
        assert!(took.as_millis() < 2000, "{took:?}");
        assert!(updates
            .iter()
            .all(|u| u.attrs.next_hop == Some(Ipv4Addr::new(192, 0, 2, 1))));
        // 5 bytes per /26: about 770 per UPDATE.
        assert!(
            updates.len() <= 100_000 / 750 + 1,
            "{} UPDATEs",
            updates.len()
        );
        let (announced, withdrawn) = round_trip(&updates, &caps, 5);
        assert!(withdrawn.is_empty());
        same_set(&announced, &prefixes);
    }
}

#[test]
fn ipv4_withdrawals_100k() {
    let prefixes = v4_blocks(100_000);
    let t = Instant::now();
    let updates = pack_withdrawals(Family::Ipv4Unicast, &prefixes, &IBGP4);
    assert!(t.elapsed().as_millis() < 2000);
    assert_eq!(
        updates.len(),
        100_000usize.div_ceil((MAX_MESSAGE_LEN - 23) / 5)
    );
    let (announced, withdrawn) = round_trip(&updates, &IBGP4, 5);
    assert!(announced.is_empty());
    same_set(&withdrawn, &prefixes);
}

#[test]
fn ipv6_announcements_and_withdrawals() {
    let prefixes = v6_blocks(50_000);
    let nh = [
        IpAddr::V6("2001:db8::1".parse().unwrap()),
        IpAddr::V6("fe80::1".parse().unwrap()),
    ];
    let mut attrs = attrs();
    attrs.next_hop = Some(Ipv4Addr::new(192, 0, 2, 1)); // dropped: RFC 4760 3
    let updates = pack_announcements(&attrs, Family::Ipv6Unicast, &nh, &prefixes, &EBGP4);
    assert!(updates
        .iter()
        .all(|u| u.attrs.next_hop.is_none() && u.nlri.is_empty()));
    assert!(updates
        .iter()
        .all(|u| u.mp_reach.as_ref().unwrap().next_hops == nh));
    let (announced, _) = round_trip(&updates, &EBGP4, 17);
    same_set(&announced, &prefixes);

    let updates = pack_withdrawals(Family::Ipv6Unicast, &prefixes, &EBGP4);
    let (_, withdrawn) = round_trip(&updates, &EBGP4, 17);
    same_set(&withdrawn, &prefixes);
}

#[test]
fn edge_cases() {
    let nh = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))];
    assert!(pack_announcements(&attrs(), Family::Ipv4Unicast, &nh, &[], &IBGP4).is_empty());
    assert!(pack_withdrawals(Family::Ipv6Unicast, &[], &IBGP4).is_empty());
    // Prefixes of the other family are skipped.
    let mixed = [v4_blocks(3), v6_blocks(2)].concat();
    let u = pack_announcements(&attrs(), Family::Ipv4Unicast, &nh, &mixed, &IBGP4);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].nlri.len(), 3);
    let w = pack_withdrawals(Family::Ipv6Unicast, &mixed, &IBGP4);
    assert_eq!(w[0].mp_unreach.as_ref().unwrap().withdrawn.len(), 2);
    // Attributes close to the limit: one prefix per UPDATE still goes out...
    let mut big = attrs();
    big.communities = vec![1; 1008];
    let u = pack_announcements(&big, Family::Ipv4Unicast, &nh, &v4_blocks(3), &IBGP4);
    assert_eq!(u.len(), 3);
    round_trip(&u, &IBGP4, usize::MAX / 2);
    // ...and attributes that cannot fit at all fail when encoded, not silently.
    big.communities = vec![1; 1100];
    let u = pack_announcements(&big, Family::Ipv4Unicast, &nh, &v4_blocks(2), &IBGP4);
    assert_eq!(u.len(), 2);
    let mut out = bytes::BytesMut::new();
    assert!(encode_message(&Message::Update(u[0].clone()), &IBGP4, &mut out).is_err());
}
