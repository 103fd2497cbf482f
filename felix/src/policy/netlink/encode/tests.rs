//! Encoder tests (no root): request layout against nft's bytes, checked lengths, and splitting
//! of large element changes (decoded back strictly). The real-kernel test is
//! `felix/tests/it/element_batch.rs`.

use super::super::decode::c_string;
use super::super::{NFTA_RULE_CHAIN, NFTA_RULE_TABLE, NLM_F_DUMP};
use super::*;

fn v4(i: u32) -> Elem {
    Elem::Addr(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
}

fn v6(i: u32) -> Elem {
    Elem::Addr(IpAddr::V6(std::net::Ipv6Addr::from(
        0xfd00_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i),
    )))
}

fn change(set: &str, del: Vec<Elem>, add: Vec<Elem>) -> ElemChange {
    ElemChange {
        set: set.into(),
        del,
        add,
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

/// Messages of a datagram as (type, flags, seq, payload after the nlmsghdr). Strict: every
/// length is in range and aligned, and the messages cover the datagram exactly.
fn strict_messages(mut b: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = u32_at(b, 0) as usize;
        assert!(len >= 16 && len <= b.len(), "message length {len}");
        assert_eq!(len % 4, 0, "unaligned message");
        out.push((u16_at(b, 4), u16_at(b, 6), u32_at(b, 8), &b[16..len]));
        b = &b[len..];
    }
    out
}

/// Attributes as (type without the nested flag, nested, payload). Strict as above; padding
/// must be zero.
fn strict_attrs(mut b: &[u8]) -> Vec<(u16, bool, &[u8])> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = u16_at(b, 0) as usize;
        let ty = u16_at(b, 2);
        assert!(
            len >= 4 && len <= b.len(),
            "attribute length {len} of {}",
            b.len()
        );
        let step = align4(len).min(b.len());
        assert!(b[len..step].iter().all(|&x| x == 0), "padding");
        out.push((ty & !NLA_F_NESTED, ty & NLA_F_NESTED != 0, &b[4..len]));
        b = &b[step..];
    }
    out
}

/// One element message, decoded back.
#[derive(Debug)]
struct Decoded {
    ty: u16,
    flags: u16,
    seq: u32,
    table: String,
    set: String,
    /// Length field of `NFTA_SET_ELEM_LIST_ELEMENTS`.
    list_len: usize,
    keys: Vec<Vec<u8>>,
}

/// Decode a whole batch: begin, element messages, end.
fn decode_batch(b: &ElementBatch) -> Vec<Decoded> {
    let msgs = strict_messages(&b.bytes);
    assert!(msgs.len() >= 2);
    let (first, last) = (msgs[0], msgs[msgs.len() - 1]);
    assert_eq!((first.0, first.2), (NFNL_MSG_BATCH_BEGIN, b.begin_seq));
    assert_eq!(&first.3[2..4], &NFNL_SUBSYS_NFTABLES.to_be_bytes());
    assert_eq!((last.0, last.2), (NFNL_MSG_BATCH_END, b.end_seq));
    msgs[1..msgs.len() - 1]
        .iter()
        .map(|&(ty, flags, seq, payload)| {
            assert_eq!(payload[0], NFPROTO_INET);
            let attrs = strict_attrs(&payload[4..]);
            assert_eq!(attrs.len(), 3);
            assert_eq!((attrs[0].0, attrs[1].0, attrs[2].0), (1, 2, 3));
            assert!(attrs[2].1, "element list is nested");
            let keys = strict_attrs(attrs[2].2)
                .into_iter()
                .map(|(t, n, el)| {
                    assert_eq!((t, n), (NFTA_LIST_ELEM, true));
                    let key = strict_attrs(el);
                    assert_eq!(
                        (key.len(), key[0].0, key[0].1),
                        (1, NFTA_SET_ELEM_KEY, true)
                    );
                    let value = strict_attrs(key[0].2);
                    assert_eq!((value.len(), value[0].0), (1, NFTA_DATA_VALUE));
                    value[0].2.to_vec()
                })
                .collect();
            Decoded {
                ty: ty & 0xff,
                flags,
                seq,
                table: c_string(attrs[0].2),
                set: c_string(attrs[1].2),
                list_len: attrs[2].2.len() + 4,
                keys,
            }
        })
        .collect()
}

#[test]
fn probe_request_layout() {
    let mut r = Vec::new();
    message(
        &mut r,
        0x0a07,
        NLM_F_REQUEST | NLM_F_DUMP,
        7,
        NFPROTO_INET,
        0,
        |b| {
            attr_str(b, NFTA_RULE_TABLE, "calico-rs")?;
            attr_str(b, NFTA_RULE_CHAIN, "fwd-egress")
        },
    )
    .unwrap();
    assert!(r.len().is_multiple_of(4));
    assert_eq!(u32_at(&r, 0) as usize, r.len());
    assert_eq!(u16_at(&r, 4), 0x0a07);
    assert_eq!(r[16], NFPROTO_INET);
    // First attribute: length 4 + "calico-rs\0" = 14, type 1, padded to 16.
    assert_eq!(u16_at(&r, 20), 14);
    assert_eq!(&r[24..33], b"calico-rs");
    assert_eq!(&r[36 + 4..36 + 14], b"fwd-egress");
}

/// The element message nft 1.0.6 sends for `add element inet t c { 10.1.2.3 . 8080 }`
/// (`nft --debug=mnl`), minus the set-id attribute nft adds for sets of its own batch.
#[test]
fn element_batch_matches_nft() {
    let batch = element_batch(
        "t",
        &[change(
            "c",
            vec![],
            vec![Elem::AddrPort("10.1.2.3".parse().unwrap(), 8080)],
        )],
        0,
    )
    .unwrap();
    assert_eq!(batch.messages.len(), 1);
    let b = &batch.bytes;
    // Batch begin: 20 bytes, type 16, res_id 10 (big endian).
    assert_eq!(&b[0..4], &20u32.to_ne_bytes());
    assert_eq!(&b[4..6], &16u16.to_ne_bytes());
    assert_eq!(&b[16..20], &[0, 0, 0, 10]);
    let m = &b[20..];
    let len = u32_at(m, 0) as usize;
    assert_eq!(u16_at(m, 4), 2572);
    assert_eq!(u16_at(m, 6), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
    assert_eq!(&m[16..20], &[1, 0, 0, 0]);
    let attrs = &m[20..len];
    // table "t", set "c", then elements(24) > elem(20) > key(16) > value(12), as nft.
    assert_eq!(&attrs[0..8], &[6, 0, 1, 0, b't', 0, 0, 0]);
    assert_eq!(&attrs[8..16], &[6, 0, 2, 0, b'c', 0, 0, 0]);
    let nested = |len: u16, ty: u16| {
        let mut v = len.to_ne_bytes().to_vec();
        v.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        v
    };
    assert_eq!(&attrs[16..20], &nested(24, 3)[..]);
    assert_eq!(&attrs[20..24], &nested(20, 1)[..]);
    assert_eq!(&attrs[24..28], &nested(16, 1)[..]);
    assert_eq!(&attrs[28..32], &[12, 0, 1, 0]);
    assert_eq!(&attrs[32..40], &[10, 1, 2, 3, 0x1f, 0x90, 0, 0]);
    assert_eq!(attrs.len(), 40);
    // Batch end.
    let end = &b[20 + len..];
    assert_eq!(&end[4..6], &17u16.to_ne_bytes());
}

#[test]
fn deletes_go_first_and_intervals_are_refused() {
    let addr = |s: &str| Elem::Addr(s.parse().unwrap());
    let batch = element_batch(
        "t",
        &[
            change("a", vec![], vec![addr("10.0.0.1")]),
            change("b", vec![addr("10.0.0.2")], vec![]),
        ],
        0,
    )
    .unwrap();
    let d = decode_batch(&batch);
    assert_eq!(d.len(), 2);
    assert_eq!((d[0].ty, d[0].set.as_str()), (NFT_MSG_DELSETELEM, "b"));
    assert_eq!((d[1].ty, d[1].set.as_str()), (NFT_MSG_NEWSETELEM, "a"));
    assert_eq!(
        element_batch(
            "t",
            &[change(
                "n",
                vec![],
                vec![Elem::Net("10.0.0.0/8".parse().unwrap())]
            )],
            0
        )
        .unwrap_err(),
        EncodeError::Interval {
            set: "n".into(),
            elem: "10.0.0.0/8".into()
        }
    );
}

#[test]
fn attribute_lengths_are_checked_not_wrapped() {
    let mut b = Vec::new();
    // 4 + 65531 = 65535 fits; one byte more does not.
    attr_bytes(&mut b, 7, &vec![0xaa; NLA_MAX_LEN - 4]).unwrap();
    assert_eq!(u16_at(&b, 0) as usize, NLA_MAX_LEN);
    assert_eq!(
        attr_bytes(&mut Vec::new(), 7, &vec![0xaa; NLA_MAX_LEN - 3]),
        Err(EncodeError::AttrTooLong {
            ty: 7,
            len: NLA_MAX_LEN + 1
        })
    );
    assert!(attr_str(&mut Vec::new(), 1, &"x".repeat(NLA_MAX_LEN - 4)).is_err());
    // A nest is checked when closed, whatever its contents.
    let mut b = Vec::new();
    let at = nest_start(&mut b, 3);
    for _ in 0..2 {
        attr_bytes(&mut b, 1, &vec![0; 40_000]).unwrap();
    }
    assert_eq!(
        nest_end(&mut b, at),
        Err(EncodeError::AttrTooLong {
            ty: 3,
            len: 4 + 2 * 40_004
        })
    );
    // Nested contents are padded, so the longest nest is 65532 bytes; 4 more do not fit.
    let nest_of = |data: usize| {
        let mut b = Vec::new();
        let at = nest_start(&mut b, 3);
        attr_bytes(&mut b, 1, &vec![0; data]).unwrap();
        nest_end(&mut b, at).map(|()| u16_at(&b, 0))
    };
    assert_eq!(nest_of(NLA_MAX_LEN - 11), Ok(65532));
    assert_eq!(
        nest_of(NLA_MAX_LEN - 10),
        Err(EncodeError::AttrTooLong { ty: 3, len: 65536 })
    );
}

/// The case: 10,000 IPv4 elements would wrap a u16 length (16 bytes each); they go as
/// three messages of one batch, every length correct, every element once, in order.
#[test]
fn ten_thousand_ipv4_elements_split_into_messages_of_one_batch() {
    let add: Vec<Elem> = (0..10_000).map(v4).collect();
    let del: Vec<Elem> = (10_000..20_000).map(v4).collect();
    let batch = element_batch(
        "calico-rs",
        &[change("sel-x-v4", del.clone(), add.clone())],
        40,
    )
    .unwrap();
    let d = decode_batch(&batch);
    let sizes: Vec<(u16, usize)> = d.iter().map(|m| (m.ty, m.keys.len())).collect();
    let (del_ty, add_ty) = (NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM);
    assert_eq!(
        sizes,
        vec![
            (del_ty, 4095),
            (del_ty, 4095),
            (del_ty, 1810),
            (add_ty, 4095),
            (add_ty, 4095),
            (add_ty, 1810)
        ]
    );
    for (i, m) in d.iter().enumerate() {
        assert!(m.list_len <= NLA_MAX_LEN, "{}", m.list_len);
        assert_eq!(
            (m.table.as_str(), m.set.as_str()),
            ("calico-rs", "sel-x-v4")
        );
        assert_eq!(m.seq, 41 + i as u32);
        let ack = m.flags & NLM_F_ACK != 0;
        assert_eq!(
            ack,
            i == d.len() - 1,
            "only the last message asks for an ACK"
        );
        assert_eq!(m.flags & NLM_F_CREATE != 0, m.ty == add_ty);
    }
    assert_eq!(d[0].list_len, 4 + 4095 * 16);
    let keys = |ty: u16| -> Vec<Vec<u8>> {
        d.iter()
            .filter(|m| m.ty == ty)
            .flat_map(|m| m.keys.clone())
            .collect()
    };
    let want = |v: &[Elem]| -> Vec<Vec<u8>> { v.iter().map(|e| key_bytes(e).unwrap()).collect() };
    assert_eq!(keys(del_ty), want(&del));
    assert_eq!(keys(add_ty), want(&add));
    // Sequence numbers: begin, the six messages, end; the next batch starts after.
    assert_eq!(
        (batch.begin_seq, batch.end_seq, batch.next_seq()),
        (40, 47, 48)
    );
    let ms: Vec<u32> = batch.messages.iter().map(|m| m.seq).collect();
    assert_eq!(ms, (41..47).collect::<Vec<_>>());
}

#[test]
fn split_points_are_exact_for_both_families() {
    let count = |elems: Vec<Elem>| -> Vec<usize> {
        let b = element_batch("t", &[change("s", vec![], elems)], 0).unwrap();
        decode_batch(&b).iter().map(|m| m.keys.len()).collect()
    };
    // IPv4: 16 bytes per element, 65531 bytes of room: 4095 fit.
    assert_eq!(count((0..4095).map(v4).collect()), vec![4095]);
    assert_eq!(count((0..4096).map(v4).collect()), vec![4095, 1]);
    // IPv6: 28 bytes per element: 2340 fit.
    assert_eq!(count((0..2340).map(v6).collect()), vec![2340]);
    assert_eq!(
        count((0..10_000).map(v6).collect()),
        vec![2340, 2340, 2340, 2340, 640]
    );
    // (address . port): 20 bytes: 3276.
    let ap: Vec<Elem> = (0..3277)
        .map(|i| Elem::AddrPort(IpAddr::V4(std::net::Ipv4Addr::from(i)), 80))
        .collect();
    assert_eq!(count(ap), vec![3276, 1]);
    // Several sets: each starts its own message; empty changes send nothing.
    let b = element_batch(
        "t",
        &[
            change("a", vec![], (0..5000).map(v4).collect()),
            change("b", vec![], vec![]),
            change("c", vec![], vec![v4(1)]),
        ],
        0,
    )
    .unwrap();
    let d = decode_batch(&b);
    let got: Vec<(&str, usize)> = d.iter().map(|m| (m.set.as_str(), m.keys.len())).collect();
    assert_eq!(got, vec![("a", 4095), ("a", 905), ("c", 1)]);
    assert!(element_batch("t", &[change("b", vec![], vec![])], 0)
        .unwrap()
        .messages
        .is_empty());
}
