//! Connection collision (RFC 4271 6.8): two of our speakers that both connect out at the same
//! moment end with one session on one TCP connection. Which one depends on timing: a connection
//! that arrives while ours is still being set up (Connect state) is simply taken (RFC 4271 8.2.2,
//! events 16/17); only two connections that both reach OpenSent are resolved by BGP Identifier.

use std::time::Duration;

use anyhow::{ensure, Result};
use bgp::State;
use calico_tests::lab::{Lab, Netns};
use calico_tests::wait::{consistently, eventually};

use super::{pair, peer_cfg, speaker_cfg, Ours, UP};

/// Established BGP connections in `ns`, as "local remote" address pairs.
fn bgp_connections(ns: &Netns) -> Result<Vec<String>> {
    let out = ns.run(&[
        "ss",
        "-Htn",
        "state",
        "established",
        "( sport = :179 or dport = :179 )",
    ])?;
    Ok(out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .skip(2)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect())
}

#[test]
fn simultaneous_open_keeps_one_connection() -> Result<()> {
    for round in 0..3 {
        let lab = Lab::new("coll")?;
        let (a, b) = pair(&lab)?;
        // Both start with the peer already configured and connect at once.
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| {
                Ours::start(
                    &a,
                    speaker_cfg(65001, "10.0.0.1"),
                    vec![peer_cfg("10.0.0.2", 65002)],
                )
            });
            let hb = s.spawn(|| {
                Ours::start(
                    &b,
                    speaker_cfg(65002, "10.0.0.2"),
                    vec![peer_cfg("10.0.0.1", 65001)],
                )
            });
            (ha.join(), hb.join())
        });
        let (oa, ob) = (ra.expect("thread")?, rb.expect("thread")?);
        oa.wait_state("10.0.0.2", State::Established, UP)?;
        ob.wait_state("10.0.0.1", State::Established, UP)?;
        // Exactly one TCP connection survives on both sides, and it is the same one.
        eventually(Duration::from_secs(5), || {
            let ca = bgp_connections(&a)?;
            let cb = bgp_connections(&b)?;
            ensure!(
                ca.len() == 1 && cb.len() == 1,
                "round {round}: connections a {ca:?} b {cb:?}"
            );
            let flipped: Vec<&str> = cb[0].split(' ').rev().collect();
            ensure!(
                ca[0] == flipped.join(" "),
                "round {round}: a {ca:?} and b {cb:?} differ"
            );
            Ok(())
        })?;
        consistently(Duration::from_secs(2), || {
            ensure!(oa
                .peer("10.0.0.2")
                .is_some_and(|p| p.state == State::Established));
            ensure!(ob
                .peer("10.0.0.1")
                .is_some_and(|p| p.state == State::Established));
            Ok(())
        })?;
    }
    Ok(())
}
