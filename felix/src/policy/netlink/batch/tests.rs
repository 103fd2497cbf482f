//! Element batch tests (no root): the answers the kernel may send to a batch, judged, and the
//! answer timeout. The real-kernel test is `felix/tests/it/element_batch.rs`.

use std::net::IpAddr;

use super::super::NLMSG_ERROR;
use super::*;
use crate::policy::ir::Elem;

fn v4(i: u32) -> Elem {
    Elem::Addr(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
}

fn change(set: &str, del: Vec<Elem>, add: Vec<Elem>) -> ElemChange {
    ElemChange {
        set: set.into(),
        del,
        add,
    }
}

/// A batch of three element messages starting at `seq0`.
fn three_messages(seq0: u32) -> ElementBatch {
    element_batch(
        "t",
        &[
            change("a", vec![v4(1)], vec![]),
            change("b", vec![], vec![v4(2)]),
            change("c", vec![], vec![v4(3)]),
        ],
        seq0,
    )
    .unwrap()
}

/// Feed answers (seq, code) until the outcome is known.
fn outcome(b: &ElementBatch, answers: &[(u32, i32)]) -> Option<Result<(), BatchError>> {
    let mut failed = None;
    for &(seq, code) in answers {
        if let Some(r) = b.judge(Answer::Error { seq, code }, &mut failed) {
            return Some(r);
        }
    }
    None
}

#[test]
fn answers_to_a_batch() {
    let b = three_messages(100);
    assert_eq!((b.begin_seq, b.end_seq), (100, 104));
    // Success: the one ACK, of the last message.
    assert!(matches!(outcome(&b, &[(103, 0)]), Some(Ok(()))));
    // Not known before the last answer.
    assert!(outcome(&b, &[(101, -2)]).is_none());
    // A refused message names its set; the ACK of the last message still ends the answers.
    let r = outcome(&b, &[(102, -17), (103, 0)]);
    match r {
        Some(Err(BatchError::Refused {
            set, op, source, ..
        })) => {
            assert_eq!((set.as_str(), op), ("b", ElemOp::Add));
            assert_eq!(source.raw_os_error(), Some(17));
        }
        other => panic!("{other:?}"),
    }
    // The first refusal is the one reported.
    let r = outcome(&b, &[(101, -2), (103, -22)]);
    assert!(
        matches!(&r, Some(Err(BatchError::Refused { set, .. })) if set == "a"),
        "{r:?}"
    );
}

#[test]
fn batch_level_and_unexpected_answers_are_errors() {
    let b = three_messages(100);
    // An error for BATCH_BEGIN (commit failed, or no memory for per-message answers: then no
    // other answer comes) ends the batch at once, whatever came before.
    let r = outcome(&b, &[(100, -12)]);
    assert!(
        matches!(&r, Some(Err(BatchError::BatchRefused { seq: 100, source })) if source.raw_os_error() == Some(12)),
        "{r:?}"
    );
    let r = outcome(&b, &[(101, -2), (104, -22)]);
    assert!(
        matches!(r, Some(Err(BatchError::BatchRefused { seq: 104, .. }))),
        "{r:?}"
    );
    // Answers this batch does not explain.
    for answers in [
        &[(99, 0)][..],
        &[(105, -1)],
        &[(7, 0)],
        &[(101, 0)],
        &[(100, 0)],
    ] {
        let r = outcome(&b, answers);
        assert!(
            matches!(r, Some(Err(BatchError::Unexpected(_)))),
            "{answers:?}: {r:?}"
        );
    }
    let mut failed = None;
    assert!(matches!(
        b.judge(Answer::Done, &mut failed),
        Some(Err(BatchError::Unexpected(_)))
    ));
    assert!(matches!(
        b.judge(Answer::Msg(0x0a0c, false), &mut failed),
        Some(Err(BatchError::Unexpected(_)))
    ));
    assert!(matches!(
        b.judge(Answer::Error { seq: 103, code: 5 }, &mut failed),
        Some(Err(BatchError::Malformed(_)))
    ));
}

#[test]
fn sequence_numbers_wrap() {
    let b = three_messages(u32::MAX - 1);
    let seqs: Vec<u32> = b.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![u32::MAX, 0, 1]);
    assert_eq!((b.end_seq, b.next_seq()), (2, 3));
    assert!(matches!(outcome(&b, &[(1, 0)]), Some(Ok(()))));
    assert!(matches!(
        outcome(&b, &[(u32::MAX, -2), (1, 0)]),
        Some(Err(BatchError::Refused { .. }))
    ));
    assert!(matches!(
        outcome(&b, &[(3, 0)]),
        Some(Err(BatchError::Unexpected(_)))
    ));
}

fn ack(seq: u32, code: i32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&36u32.to_ne_bytes());
    m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&code.to_ne_bytes());
    m.extend_from_slice(&[0; 16]);
    m
}

#[test]
fn nothing_may_follow_the_last_answer_in_a_datagram() {
    let b = three_messages(10);
    let mut failed = None;
    assert!(matches!(
        b.judge_datagram(&ack(13, 0), &mut failed),
        Ok(Some(Ok(())))
    ));
    let mut two = ack(13, 0);
    two.extend(ack(10, -12));
    assert!(matches!(
        b.judge_datagram(&two, &mut failed),
        Err(BatchError::Unexpected(_))
    ));
    // An error answer without its code is malformed, not an ACK.
    let mut short = ack(13, 0);
    short.truncate(16);
    short[0..4].copy_from_slice(&16u32.to_ne_bytes());
    assert!(matches!(
        b.judge_datagram(&short, &mut failed),
        Err(BatchError::Malformed(_))
    ));
}

/// A lost answer cannot hang the caller: waiting ends after the timeout. (A netlink socket needs
/// no privileges; nothing is sent, so no answer comes.)
#[test]
fn waiting_for_answers_times_out() {
    let sock = ElementSocket::open()
        .unwrap()
        .with_timeout(Duration::from_millis(150));
    let b = three_messages(1);
    let t = Instant::now();
    let r = sock.read_answers(&b);
    let took = t.elapsed();
    assert!(matches!(r, Err(BatchError::Timeout(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
