//! Tests of the generic core over the in-memory store ([`super::memory`]) with other writers
//! injected between load and commit: no block is owned twice, no address is handed out twice,
//! retries converge to what a conflict-free run gives, and giving up or running out says who
//! and what.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::memory::{Hook, MemStore};
use super::*;
use crate::datastore::{EncapMode, ObjectMeta, Selector};

fn pool(name: &str, cidr: &str, block_size: u8) -> IpPool {
    IpPool {
        metadata: ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        cidr: cidr.parse().unwrap(),
        block_size,
        node_selector: Selector::All,
        disabled: false,
        ipip_mode: EncapMode::Never,
        vxlan_mode: EncapMode::Never,
        nat_outgoing: false,
        disable_bgp_export: false,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn no_wait(tries: u32) -> RetryCfg {
    RetryCfg {
        tries,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    }
}

fn core() -> IpamCore<MemStore> {
    IpamCore::with_store(MemStore::new()).with_retry(no_wait(20))
}

/// Runs the same script of operations; returns everything it observed.
fn script(ipam: &IpamCore<MemStore>) -> Vec<String> {
    let pools = [pool("v4", "10.0.0.0/24", 30), pool("v6", "fd00::/120", 126)];
    let mut out = Vec::new();
    for i in 0..6 {
        let a = ipam
            .allocate(
                &format!("n{}", i % 2),
                &format!("h{i}"),
                IpFamily::V4,
                &pools,
            )
            .unwrap();
        let b = ipam
            .allocate(
                &format!("n{}", i % 2),
                &format!("h{i}"),
                IpFamily::V6,
                &pools,
            )
            .unwrap();
        out.push(format!("h{i} {a} {b}"));
    }
    out.push(format!("{:?}", ipam.release("h2").unwrap()));
    out.push(format!(
        "{:?}",
        ipam.allocate("n0", "h9", IpFamily::V4, &pools)
    ));
    out.push(format!(
        "{:?}",
        ipam.claim_block("n1", IpFamily::V4, &pools)
    ));
    out.push(format!("{:?}", ipam.release_node("n1", &|_, _| false)));
    out.push(format!("{:?}", ipam.affinities().unwrap()));
    out
}

#[test]
fn every_other_commit_conflicting_gives_the_conflict_free_result() {
    let calm = core();
    let expected = script(&calm);
    let busy = core();
    let n = AtomicU64::new(0);
    busy.store().set_hook(move |_, _| {
        if n.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
            Hook::Conflict
        } else {
            Hook::Check
        }
    });
    assert_eq!(script(&busy), expected);
    let (commits, conflicts) = busy.store().with_state(|s| (s.commits, s.conflicts));
    assert!(conflicts * 2 >= commits - 1, "{conflicts} of {commits}");
    assert!(
        expected[0].starts_with("h0 10.0.0.0 fd00::"),
        "{expected:?}"
    );
}

#[test]
fn a_block_claimed_by_another_node_between_load_and_commit_is_not_taken_twice() {
    let ipam = core();
    let pools = [pool("p", "10.0.0.0/24", 26)];
    // Another node creates exactly the block we are about to create, twice in a row.
    let stolen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = stolen.clone();
    ipam.store().set_hook(move |st, change| {
        if let Change::Create(b) = change {
            if log.lock().unwrap().len() < 2 && st.create(Block::new(b.cidr, "other", "p")) {
                log.lock().unwrap().push(b.cidr);
            }
        }
        Hook::Check
    });
    let got = ipam.allocate("n1", "a", IpFamily::V4, &pools).unwrap();
    assert_eq!(
        *stolen.lock().unwrap(),
        [net("10.0.0.0/26"), net("10.0.0.64/26")]
    );
    assert_eq!(got, ip("10.0.0.128"));
    let aff = ipam.affinities().unwrap();
    assert_eq!(aff[&net("10.0.0.0/26")].as_deref(), Some("other"));
    assert_eq!(aff[&net("10.0.0.64/26")].as_deref(), Some("other"));
    assert_eq!(aff[&net("10.0.0.128/26")].as_deref(), Some("n1"));
}

#[test]
fn an_address_taken_by_another_writer_between_load_and_commit_is_not_handed_out_twice() {
    let ipam = core();
    let pools = [pool("p", "10.0.0.0/24", 26)];
    ipam.allocate("n1", "first", IpFamily::V4, &pools).unwrap();
    // Another process of the same node (a second CNI ADD) takes the next free address first.
    let mut done = false;
    ipam.store().set_hook(move |st, change| {
        if let (Change::Update(b, _), false) = (change, done) {
            done = true;
            let cidr = b.cidr;
            st.update(&cidr, |blk| {
                let next = blk.next_free().unwrap();
                blk.allocations.insert(next, "racer".into());
            });
        }
        Hook::Check
    });
    assert_eq!(
        ipam.allocate("n1", "second", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.2")
    );
    assert_eq!(ipam.addresses_of("racer").unwrap(), [ip("10.0.0.1")]);
    assert_eq!(ipam.addresses_of("second").unwrap(), [ip("10.0.0.2")]);
}

#[test]
fn threads_racing_on_one_store_with_random_conflicts_never_share() {
    let ipam = Arc::new(core().with_retry(RetryCfg {
        tries: 200,
        backoff: Duration::from_micros(50),
        max_backoff: Duration::from_millis(1),
    }));
    let n = AtomicU64::new(0);
    ipam.store().set_hook(move |_, _| {
        // Roughly one commit in three conflicts, on top of the real races.
        let k = n.fetch_add(1, Ordering::Relaxed);
        if (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40).is_multiple_of(3) {
            Hook::Conflict
        } else {
            Hook::Check
        }
    });
    let pools = Arc::new([pool("p", "10.0.0.0/24", 28)]);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (ipam, pools) = (ipam.clone(), pools.clone());
            std::thread::spawn(move || {
                (0..30)
                    .map(|i| {
                        let node = format!("n{}", t % 3);
                        let h = format!("t{t}-{i}");
                        let a = ipam.allocate(&node, &h, IpFamily::V4, &*pools).unwrap();
                        (node, h, a)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(all.len(), 180);
    let aff = ipam.affinities().unwrap();
    let mut seen = HashSet::new();
    for (node, h, a) in &all {
        assert!(seen.insert(*a), "{a} handed out twice");
        let (_, owner) = aff.iter().find(|(b, _)| b.contains(a)).unwrap();
        assert_eq!(owner.as_deref(), Some(node.as_str()), "{a} of {h}");
        assert_eq!(ipam.addresses_of(h).unwrap(), [*a]);
    }
    // 180 addresses in /28 blocks: 12 blocks at least, each owned by one node.
    assert!(aff.len() >= 12 && aff.len() <= 16, "{aff:?}");
}

#[test]
fn giving_up_names_the_node_and_handle() {
    let ipam = core().with_retry(no_wait(5));
    ipam.store().set_hook(|_, _| Hook::Conflict);
    let pools = [pool("p", "10.0.0.0/24", 26)];
    let e = ipam
        .allocate("n1", "ns/pod", IpFamily::V4, &pools)
        .unwrap_err();
    assert!(matches!(e, IpamError::Contended { tries: 5, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "node n1: allocate an IPv4 address for handle ns/pod: gave up after 5 tries, other \
         writers kept changing the same blocks (last: injected conflict)"
    );
    assert_eq!(ipam.store().with_state(|s| s.commits), 5);
    let e = ipam.release("ns/pod").unwrap();
    assert!(e.is_empty(), "nothing to release, so nothing to commit");
    ipam.store().clear_hook();
    ipam.allocate("n1", "ns/pod", IpFamily::V4, &pools).unwrap();
    ipam.store().set_hook(|_, _| Hook::Conflict);
    let e = ipam.release("ns/pod").unwrap_err();
    assert!(
        e.to_string().starts_with("release handle ns/pod: gave up"),
        "{e}"
    );
}

#[test]
fn exhaustion_under_contention_names_the_pools() {
    let ipam = core();
    let pools = [pool("a", "10.0.0.0/29", 30), pool("b", "10.0.1.0/30", 30)];
    // Another node claims every block we try for, until none is left.
    ipam.store().set_hook(|st, change| {
        if let Change::Create(b) = change {
            st.create(Block::new(b.cidr, "other", "x"));
        }
        Hook::Check
    });
    let e = ipam.claim_block("n1", IpFamily::V4, &pools).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node n1: no free IPv4 block: IPPools a (10.0.0.0/29, /30 blocks), b (10.0.1.0/30, /30 \
         blocks) are exhausted (every block is claimed)"
    );
    assert_eq!(ipam.affinities().unwrap().len(), 3);
    assert!(ipam.blocks_for("n1").unwrap().is_empty());
}

#[test]
fn release_node_rechecks_a_block_that_got_a_live_pod_meanwhile() {
    let ipam = core();
    let pools = [pool("p", "10.0.0.0/24", 26)];
    ipam.allocate("gone", "old", IpFamily::V4, &pools).unwrap();
    ipam.claim_block("gone", IpFamily::V4, &pools).unwrap();
    // While we decide, a pod that is still alive gets an address in the first block.
    let mut done = false;
    ipam.store().set_hook(move |st, change| {
        if let (Change::Delete(..), false) = (change, done) {
            done = true;
            st.update(&net("10.0.0.0/26"), |b| {
                b.allocations.insert(ip("10.0.0.9"), "live".into());
            });
        }
        Hook::Check
    });
    let in_use = |_: IpAddr, h: &str| h == "live";
    assert_eq!(
        ipam.release_node("gone", &in_use).unwrap(),
        [net("10.0.0.64/26")]
    );
    assert_eq!(ipam.blocks_for("gone").unwrap(), [net("10.0.0.0/26")]);
    assert_eq!(ipam.addresses_of("live").unwrap(), [ip("10.0.0.9")]);
}

#[test]
fn release_conflicting_half_way_frees_each_address_once() {
    let ipam = core();
    let pools = [pool("v4", "10.0.0.0/24", 26), pool("v6", "fd00::/120", 122)];
    let a = ipam.allocate("n1", "h", IpFamily::V4, &pools).unwrap();
    let b = ipam.allocate("n1", "h", IpFamily::V6, &pools).unwrap();
    // The first block's update goes through; the second conflicts once.
    let mut n = 0;
    ipam.store().set_hook(move |_, _| {
        n += 1;
        if n == 2 {
            Hook::Conflict
        } else {
            Hook::Check
        }
    });
    assert_eq!(ipam.release("h").unwrap(), [a, b]);
    assert!(ipam.addresses_of("h").unwrap().is_empty());
    let counts: BTreeMap<IpNet, usize> = ipam.store().with_state(|s| {
        s.blocks
            .iter()
            .map(|(c, (b, _))| (*c, b.allocations.len()))
            .collect()
    });
    assert!(counts.values().all(|n| *n == 0), "{counts:?}");
}
