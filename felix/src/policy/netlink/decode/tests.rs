//! Decoder tests (no root): answers split and searched for the marker, notifications reduced to
//! table and committer. Inputs are built with the encoder.

use super::super::encode::{attr_bytes, attr_str, message, pad};
use super::super::NFPROTO_INET;
use super::*;

#[test]
fn notifications_name_table_and_committer() {
    let mut data = Vec::new();
    message(&mut data, 0x0a08, 0, 0, NFPROTO_INET, 0, |b| {
        attr_str(b, 1, "calico-rs")?;
        attr_str(b, 2, "fwd-egress")
    })
    .unwrap();
    message(&mut data, 0x0a0f, 0, 0, 0, 0, |b| {
        attr_bytes(b, 1, &7u32.to_be_bytes())?;
        attr_bytes(b, NFTA_GEN_PROC_PID, &4242u32.to_be_bytes())?;
        attr_str(b, NFTA_GEN_PROC_NAME, "nft")
    })
    .unwrap();
    message(&mut data, 0x0110, 0, 0, 0, 0, |_| Ok(())).unwrap();
    assert_eq!(
        parse_notifications(&data),
        vec![
            Notification::Object {
                msg: 8,
                family: NFPROTO_INET,
                table: "calico-rs".into()
            },
            Notification::Generation {
                pid: Some(4242),
                comm: "nft".into()
            },
        ]
    );
}

#[test]
fn answers_split_and_detect_marker() {
    let msg = |ty: u16, seq: u32, body: &[u8]| {
        let mut m = vec![0u8; 16];
        m.extend_from_slice(body);
        pad(&mut m);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&ty.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m
    };
    let mut data = msg(0x0a06, 1, b"xx");
    data.extend(msg(0x0a06, 1, b"..calico-rs policy dispatch.."));
    data.extend(msg(NLMSG_ERROR, 9, &(-2i32).to_ne_bytes()));
    data.extend(msg(NLMSG_DONE, 1, &[0; 4]));
    assert_eq!(
        answers(&data, b"calico-rs policy dispatch").unwrap(),
        vec![
            Answer::Msg(0x0a06, false),
            Answer::Msg(0x0a06, true),
            Answer::Error { seq: 9, code: -2 },
            Answer::Done
        ]
    );
}
