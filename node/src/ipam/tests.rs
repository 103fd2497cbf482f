//! IPAM tests: allocation order, idempotency, release, restarts, corrupt files, and claims that
//! race across threads *and* processes (the test binary re-runs itself as a child claimer).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use ipnet::IpNet;

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

#[test]
fn allocates_lowest_first_including_zero_and_claims_when_full() {
    let d = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(d.path()).unwrap();
    let pools = [pool("p", "10.0.0.0/24", 30)];
    let got: Vec<IpAddr> = (0..5)
        .map(|i| {
            ipam.allocate("n1", &format!("h{i}"), IpFamily::V4, &pools)
                .unwrap()
        })
        .collect();
    assert_eq!(
        got,
        ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"].map(ip)
    );
    assert_eq!(
        ipam.blocks_for("n1").unwrap(),
        [net("10.0.0.0/30"), net("10.0.0.4/30")]
    );
    // Idempotent per handle.
    assert_eq!(
        ipam.allocate("n1", "h2", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.2")
    );
    assert_eq!(ipam.addresses_of("h2").unwrap(), [ip("10.0.0.2")]);
    // Release frees it; the lowest free address is reused.
    assert_eq!(ipam.release("h1").unwrap(), [ip("10.0.0.1")]);
    assert_eq!(ipam.release("h1").unwrap(), Vec::<IpAddr>::new());
    assert_eq!(
        ipam.allocate("n1", "h9", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.1")
    );
    let usage = ipam.usage().unwrap();
    assert_eq!(usage.blocks.len(), 2);
    assert_eq!((usage.blocks[0].used, usage.blocks[0].free), (4, 0));
    assert_eq!((usage.blocks[1].used, usage.blocks[1].free), (1, 3));
    assert_eq!(usage.blocks[1].affinity.as_deref(), Some("n1"));
    assert_eq!(usage.blocks[1].pool.as_deref(), Some("p"));
    assert!(usage.corrupt.is_empty());
}

#[test]
fn dual_stack_handle_gets_one_address_per_family() {
    let d = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(d.path()).unwrap();
    let pools = [
        pool("v4", "10.0.0.0/24", 26),
        pool("v6", "fd00:10::/120", 122),
    ];
    let a = ipam.allocate("n1", "ns/pod", IpFamily::V4, &pools).unwrap();
    let b = ipam.allocate("n1", "ns/pod", IpFamily::V6, &pools).unwrap();
    assert_eq!((a, b), (ip("10.0.0.0"), ip("fd00:10::")));
    assert_eq!(
        ipam.allocate("n1", "x", IpFamily::V6, &pools).unwrap(),
        ip("fd00:10::1")
    );
    assert_eq!(
        ipam.blocks_for("n1").unwrap(),
        [net("10.0.0.0/26"), net("fd00:10::/122")]
    );
    let mut freed = ipam.release("ns/pod").unwrap();
    freed.sort();
    assert_eq!(freed, [a, b]);
}

#[test]
fn nodes_get_distinct_blocks_and_only_use_their_own() {
    let d = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(d.path()).unwrap();
    let pools = [pool("p", "10.0.0.0/24", 26)];
    assert_eq!(
        ipam.allocate("n1", "a", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.0")
    );
    assert_eq!(
        ipam.allocate("n2", "b", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.64")
    );
    assert_eq!(
        ipam.allocate("n1", "c", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.1")
    );
    let aff = ipam.affinities().unwrap();
    assert_eq!(aff[&net("10.0.0.0/26")].as_deref(), Some("n1"));
    assert_eq!(aff[&net("10.0.0.64/26")].as_deref(), Some("n2"));
}

#[test]
fn pools_order_disabled_and_other_pool_blocks() {
    let d = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(d.path()).unwrap();
    let mut off = pool("a-off", "10.9.0.0/24", 26);
    off.disabled = true;
    let a = pool("b", "10.1.0.0/24", 26);
    let b = pool("c", "10.2.0.0/24", 26);
    assert_eq!(
        ipam.allocate(
            "n1",
            "x",
            IpFamily::V4,
            &[off.clone(), a.clone(), b.clone()]
        )
        .unwrap(),
        ip("10.1.0.0")
    );
    // Only pool c is usable now (say b no longer selects the node): a block of c is claimed.
    assert_eq!(
        ipam.allocate("n1", "y", IpFamily::V4, std::slice::from_ref(&b))
            .unwrap(),
        ip("10.2.0.0")
    );
    assert_eq!(
        ipam.blocks_for("n1").unwrap(),
        [net("10.1.0.0/26"), net("10.2.0.0/26")]
    );
    let e = ipam.allocate("n1", "z", IpFamily::V4, &[off]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node n1: no enabled IPv4 IPPool selects this node"
    );
    let e = ipam.allocate("n1", "z", IpFamily::V6, &[a, b]).unwrap_err();
    assert!(matches!(
        e,
        IpamError::NoPools {
            family: IpFamily::V6,
            ..
        }
    ));
    assert!(matches!(
        ipam.allocate("n1", "", IpFamily::V4, &[]),
        Err(IpamError::InvalidHandle(_))
    ));
    assert!(matches!(
        ipam.allocate("", "h", IpFamily::V4, &[]),
        Err(IpamError::InvalidNode(_))
    ));
}

#[test]
fn exhausted_pool_is_named() {
    let d = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(d.path()).unwrap();
    let pools = [pool("tiny", "10.0.0.0/29", 30)];
    for i in 0..8 {
        ipam.allocate("n1", &format!("h{i}"), IpFamily::V4, &pools)
            .unwrap();
    }
    let e = ipam.allocate("n1", "h8", IpFamily::V4, &pools).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node n1: no free IPv4 block: IPPool tiny (10.0.0.0/29, /30 blocks) is exhausted (every block is claimed)"
    );
    let two = [
        pool("tiny", "10.0.0.0/29", 30),
        pool("tiny2", "10.0.1.0/30", 30),
    ];
    ipam.claim_block("n2", IpFamily::V4, &two).unwrap();
    let e = ipam.claim_block("n2", IpFamily::V4, &two).unwrap_err();
    assert!(
        e.to_string().contains(
            "IPPools tiny (10.0.0.0/29, /30 blocks), tiny2 (10.0.1.0/30, /30 blocks) are exhausted"
        ),
        "{e}"
    );
}

#[test]
fn claims_survive_restart_and_release_node_frees_them() {
    let d = tempfile::tempdir().unwrap();
    let pools = [pool("p", "10.0.0.0/24", 26)];
    {
        let ipam = Ipam::new(d.path()).unwrap();
        ipam.allocate("n1", "a", IpFamily::V4, &pools).unwrap();
        ipam.claim_block("n1", IpFamily::V4, &pools).unwrap();
        ipam.allocate("n2", "b", IpFamily::V4, &pools).unwrap();
    }
    let ipam = Ipam::new(d.path()).unwrap();
    assert_eq!(
        ipam.blocks_for("n1").unwrap(),
        [net("10.0.0.0/26"), net("10.0.0.64/26")]
    );
    assert_eq!(
        ipam.allocate("n1", "a", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.0")
    );
    assert_eq!(
        ipam.release_node("n1", &|_, _| false).unwrap(),
        [net("10.0.0.0/26"), net("10.0.0.64/26")]
    );
    assert!(ipam.blocks_for("n1").unwrap().is_empty());
    assert!(ipam.addresses_of("a").unwrap().is_empty());
    assert_eq!(ipam.blocks_for("n2").unwrap(), [net("10.0.0.128/26")]);
    // The freed blocks go to the next claimer.
    assert_eq!(
        ipam.allocate("n3", "c", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.0")
    );
    assert_eq!(
        ipam.release_node("nobody", &|_, _| false).unwrap(),
        Vec::<IpNet>::new()
    );
}

#[test]
fn corrupt_block_files_are_skipped_named_and_stay_taken() {
    let d = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(d.path()).unwrap();
    let blocks = d.path().join("ipam/blocks");
    let pools = [pool("p", "10.0.0.0/24", 26)];
    ipam.allocate("n1", "a", IpFamily::V4, &pools).unwrap();
    // Corrupt n1's block, plus other kinds of bad files.
    std::fs::write(blocks.join("10-0-0-0-26.yaml"), "kind: IPAMBlock\ncidr: [").unwrap();
    std::fs::write(blocks.join("10-0-0-64-26.yaml"), [0xff, 0x00]).unwrap();
    std::fs::write(blocks.join("10-0-0-128-26.yaml"), "").unwrap();
    std::fs::write(blocks.join("notes.txt"), "hello").unwrap();
    std::fs::write(blocks.join(".10-0-0-192-26.yaml.tmp"), "half-written").unwrap();
    // The only block left is .192; the corrupt ones are never handed out.
    assert_eq!(
        ipam.allocate("n1", "b", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.192")
    );
    assert!(ipam.allocate("n2", "c", IpFamily::V4, &pools).is_err());
    let usage = ipam.usage().unwrap();
    let msgs: Vec<String> = usage.corrupt.iter().map(|e| e.to_string()).collect();
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    assert!(
        msgs[0].contains("10-0-0-0-26.yaml: invalid YAML"),
        "{}",
        msgs[0]
    );
    assert!(msgs[0].ends_with("skipped, its addresses stay taken"));
    assert!(
        msgs[1].contains("10-0-0-128-26.yaml: invalid YAML"),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains("10-0-0-64-26.yaml: not UTF-8 text"),
        "{}",
        msgs[2]
    );
    assert!(
        msgs[3].contains("notes.txt: file name is not a block CIDR"),
        "{}",
        msgs[3]
    );
    // A block with an address of a pod that still exists is kept.
    let keep = |a: IpAddr, _: &str| a == ip("10.0.0.192");
    assert_eq!(ipam.release_node("n1", &keep).unwrap(), Vec::<IpNet>::new());
    assert!(blocks.join("10-0-0-192-26.yaml").exists());
    // Release of the node leaves the corrupt file (its owner is unknown) alone.
    assert_eq!(
        ipam.release_node("n1", &|_, _| false).unwrap(),
        [net("10.0.0.192/26")]
    );
    assert!(blocks.join("10-0-0-0-26.yaml").exists());
}

#[test]
fn mismatched_or_hand_edited_block_files() {
    let d = tempfile::tempdir().unwrap();
    let ipam = Ipam::new(d.path()).unwrap();
    let blocks = d.path().join("ipam/blocks");
    let b = Block::new(net("10.0.0.0/26"), "n1", "p");
    // Content for .0/26 stored under the name of .64/26: both stay taken.
    std::fs::write(blocks.join("10-0-0-64-26.yaml"), b.to_yaml()).unwrap();
    // A name with host bits: the whole /26 stays taken.
    std::fs::write(blocks.join("10-0-0-130-26.yaml"), "x").unwrap();
    let pools = [pool("p", "10.0.0.0/24", 26)];
    assert_eq!(
        ipam.claim_block("n2", IpFamily::V4, &pools).unwrap(),
        net("10.0.0.0/26")
    );
    assert_eq!(
        ipam.claim_block("n2", IpFamily::V4, &pools).unwrap(),
        net("10.0.0.192/26")
    );
    assert!(ipam.claim_block("n2", IpFamily::V4, &pools).is_err());
}

// ---- Concurrency: threads and processes share one directory. ----

const CHILD_ENV: &str = "CALICO_RS_IPAM_TEST_CHILD";
const CHILD_TEST: &str = "ipam::tests::child";

fn claim_pools() -> Vec<IpPool> {
    vec![pool("race", "10.0.0.0/24", 28)]
}

fn alloc_pools() -> Vec<IpPool> {
    vec![pool("race6", "fd00:99::/120", 124)]
}

/// Claims until exhausted; returns the blocks claimed.
fn claimer(dir: &Path, node: &str) -> Vec<String> {
    let ipam = Ipam::new(dir).unwrap();
    let mut got = Vec::new();
    loop {
        match ipam.claim_block(node, IpFamily::V4, &claim_pools()) {
            Ok(b) => got.push(format!("{node} {b}")),
            Err(IpamError::PoolsExhausted { .. }) => return got,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Allocates `n` handles; returns "node handle ip".
fn allocator(dir: &Path, node: &str, tag: &str, n: usize) -> Vec<String> {
    let ipam = Ipam::new(dir).unwrap();
    (0..n)
        .map(|i| {
            let h = format!("{tag}-{i}");
            let a = ipam
                .allocate(node, &h, IpFamily::V6, &alloc_pools())
                .unwrap();
            format!("{node} {h} {a}")
        })
        .collect()
}

/// Run by the parent as a separate process: `CHILD_ENV=mode|dir|node|tag`.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = Path::new(parts[1]);
    let lines = match parts[0] {
        "claim" => claimer(dir, parts[2]),
        _ => allocator(dir, parts[2], parts[3], 12),
    };
    for l in lines {
        println!("RESULT {l}");
    }
}

fn spawn_child(spec: String) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn child_results(c: std::process::Child) -> Vec<String> {
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // libtest may print "test ... " on the same line before the first result.
        .filter_map(|l| l.find("RESULT ").map(|i| l[i + 7..].to_string()))
        .collect()
}

#[test]
fn concurrent_claimers_never_share_a_block() {
    for round in 0..12 {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let children: Vec<_> = (0..3)
            .map(|i| spawn_child(format!("claim|{}|proc{i}", dir.display())))
            .collect();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || claimer(&dir, &format!("thread{i}")))
            })
            .collect();
        let mut all: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        for c in children {
            all.extend(child_results(c));
        }
        // 16 blocks of /28 in the /24: each claimed exactly once, by the node that reported it.
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for line in &all {
            let (node, cidr) = line.split_once(' ').unwrap();
            if let Some(prev) = owner.insert(cidr.to_string(), node.to_string()) {
                panic!("round {round}: block {cidr} claimed by both {prev} and {node}");
            }
        }
        assert_eq!(owner.len(), 16, "round {round}: {all:?}");
        let aff = Ipam::new(&dir).unwrap().affinities().unwrap();
        assert_eq!(aff.len(), 16);
        for (cidr, node) in aff {
            assert_eq!(
                node.as_deref(),
                owner.get(&cidr.to_string()).map(String::as_str)
            );
        }
    }
}

#[test]
fn concurrent_allocations_are_unique_and_in_own_blocks() {
    for round in 0..4 {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let children: Vec<_> = (0..3)
            .map(|i| spawn_child(format!("alloc|{}|n{}|p{i}", dir.display(), i % 2)))
            .collect();
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    allocator(&dir, &format!("n{}", i % 2), &format!("t{i}"), 12)
                })
            })
            .collect();
        let mut all: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        for c in children {
            all.extend(child_results(c));
        }
        assert_eq!(all.len(), 72, "round {round}");
        let ipam = Ipam::new(&dir).unwrap();
        let aff = ipam.affinities().unwrap();
        let mut seen = HashSet::new();
        for line in &all {
            let mut it = line.split(' ');
            let (node, handle, addr) = (
                it.next().unwrap(),
                it.next().unwrap(),
                ip(it.next().unwrap()),
            );
            assert!(seen.insert(addr), "round {round}: {addr} handed out twice");
            let (block, owner) = aff.iter().find(|(b, _)| b.contains(&addr)).unwrap();
            assert_eq!(owner.as_deref(), Some(node), "{addr} in {block}");
            assert_eq!(ipam.addresses_of(handle).unwrap(), [addr]);
        }
    }
}
