//! The KDD store through the generic core against the in-process fake API ([`super::fake`]):
//! the objects written look like Calico's, and 409s from other writers (a block created first,
//! a block changed between read and replace, a delete whose precondition fails) are retried
//! to a correct result. Tests run on a plain thread, the client on its own runtime, as the
//! daemon would call the store from `spawn_blocking`.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::json;

use super::fake::FakeApi;
use super::model::{self, block_spec, handle_name};
use super::KddIpam;
use crate::datastore::{EncapMode, IpPool, ObjectMeta, Selector};
use crate::ipam::{Block, IpFamily, IpamError, RetryCfg};

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

struct Setup {
    rt: tokio::runtime::Runtime,
    api: FakeApi,
}

impl Setup {
    fn new() -> Setup {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Setup {
            rt,
            api: FakeApi::default(),
        }
    }

    fn ipam(&self) -> KddIpam {
        let client = {
            let _g = self.rt.enter();
            self.api.client()
        };
        KddIpam::kubernetes(client, self.rt.handle().clone()).with_retry(RetryCfg {
            tries: 50,
            backoff: Duration::from_micros(100),
            max_backoff: Duration::from_millis(2),
        })
    }

    fn specs(&self, plural: &str) -> BTreeMap<String, serde_json::Value> {
        self.api.objects.lock().unwrap().specs(plural)
    }
}

#[test]
fn objects_are_calicos_through_claim_allocate_release_and_release_node() {
    let s = Setup::new();
    let ipam = s.ipam();
    let pools = [pool("default-ipv4", "10.244.0.0/24", 26)];
    let a = ipam
        .allocate("n1", "default/web-0", IpFamily::V4, &pools)
        .unwrap();
    let b = ipam
        .allocate("n1", "k8s-pod-network.abc123", IpFamily::V4, &pools)
        .unwrap();
    assert_eq!((a, b), (ip("10.244.0.0"), ip("10.244.0.1")));
    assert_eq!(
        ipam.allocate("n1", "default/web-0", IpFamily::V4, &pools)
            .unwrap(),
        a,
        "idempotent per handle"
    );

    let blocks = s.specs("ipamblocks");
    let blk = &blocks["10-244-0-0-26"];
    assert_eq!(blk["cidr"], "10.244.0.0/26");
    assert_eq!(blk["affinity"], "host:n1");
    assert_eq!(blk["allocations"].as_array().unwrap().len(), 64);
    assert_eq!(blk["allocations"][0], 0);
    assert_eq!(blk["allocations"][1], 1);
    assert!(blk["allocations"][2].is_null());
    assert_eq!(blk["unallocated"][0], 2);
    assert_eq!(blk["attributes"][0]["handle_id"], "default/web-0");
    assert_eq!(blk["attributes"][0]["secondary"]["namespace"], "default");
    assert_eq!(blk["attributes"][0]["secondary"]["pod"], "web-0");
    assert_eq!(blk["attributes"][0]["secondary"]["node"], "n1");
    assert_eq!(blk["attributes"][1]["handle_id"], "k8s-pod-network.abc123");
    assert_eq!(blk["sequenceNumber"], 1);
    assert_eq!(blk["sequenceNumberForAllocation"]["1"], 1);
    assert_eq!(blk["strictAffinity"], false);
    assert_eq!(blk["deleted"], false);
    let aff = s.specs("blockaffinities");
    assert_eq!(
        aff["n1-10-244-0-0-26"],
        json!({"state": "confirmed", "node": "n1", "cidr": "10.244.0.0/26", "deleted": "false", "type": "host"})
    );
    let handles = s.specs("ipamhandles");
    assert_eq!(
        handles["k8s-pod-network.abc123"],
        json!({"handleID": "k8s-pod-network.abc123", "block": {"10.244.0.0/26": 1}, "deleted": false})
    );
    assert_eq!(
        handles[&handle_name("default/web-0")]["handleID"],
        "default/web-0"
    );
    let usage = ipam.usage().unwrap();
    assert_eq!(usage.blocks[0].pool.as_deref(), Some("default-ipv4"));
    assert_eq!((usage.blocks[0].used, usage.blocks[0].free), (2, 62));

    assert_eq!(ipam.release("default/web-0").unwrap(), [a]);
    assert!(!s
        .specs("ipamhandles")
        .contains_key(&handle_name("default/web-0")));
    assert!(s.specs("ipamblocks")["10-244-0-0-26"]["allocations"][0].is_null());
    assert_eq!(ipam.addresses_of("k8s-pod-network.abc123").unwrap(), [b]);

    assert_eq!(
        ipam.release_node("n1", &|_, _| false).unwrap(),
        [net("10.244.0.0/26")]
    );
    assert!(s.specs("ipamblocks").is_empty());
    assert!(s.specs("blockaffinities").is_empty());
    assert!(s.specs("ipamhandles").is_empty());
}

#[test]
fn a_block_another_node_creates_first_is_left_to_it() {
    let s = Setup::new();
    let ipam = s.ipam();
    let mut first = true;
    s.api.set_hook(move |objs, w| {
        if w.method == "POST" && w.plural == "ipamblocks" && std::mem::take(&mut first) {
            let mut other = Block::new(Block::parse_object_name(&w.name).unwrap(), "n2", "p");
            other
                .allocations
                .insert(other.cidr.network(), "theirs".into());
            objs.insert(
                "ipamblocks",
                json!({"metadata": {"name": w.name}, "spec": block_spec(&other, None, "t")}),
            );
        }
        None
    });
    let pools = [pool("p", "10.0.0.0/24", 26)];
    assert_eq!(
        ipam.allocate("n1", "mine", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.64")
    );
    let aff = ipam.affinities().unwrap();
    assert_eq!(aff[&net("10.0.0.0/26")].as_deref(), Some("n2"));
    assert_eq!(aff[&net("10.0.0.64/26")].as_deref(), Some("n1"));
    // Our pending affinity for the block we lost was taken back.
    let names: Vec<String> = s.specs("blockaffinities").into_keys().collect();
    assert_eq!(names, ["n1-10-0-0-64-26"]);
    assert_eq!(ipam.addresses_of("theirs").unwrap(), [ip("10.0.0.0")]);
}

#[test]
fn a_block_changed_between_read_and_replace_is_reread() {
    let s = Setup::new();
    let ipam = s.ipam();
    let pools = [pool("p", "10.0.0.0/24", 26)];
    ipam.allocate("n1", "a", IpFamily::V4, &pools).unwrap();
    // Another CNI ADD on n1 takes 10.0.0.1 just before our replace.
    let mut first = true;
    s.api.set_hook(move |objs, w| {
        if w.method == "PUT" && w.plural == "ipamblocks" && std::mem::take(&mut first) {
            objs.touch("ipamblocks", &w.name, |spec| {
                spec["allocations"][1] = json!(spec["attributes"].as_array().unwrap().len());
                spec["attributes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"handle_id": "racer"}));
            });
        }
        None
    });
    assert_eq!(
        ipam.allocate("n1", "b", IpFamily::V4, &pools).unwrap(),
        ip("10.0.0.2")
    );
    assert_eq!(ipam.addresses_of("racer").unwrap(), [ip("10.0.0.1")]);
    let log = s.api.objects.lock().unwrap().log.clone();
    let puts = log
        .iter()
        .filter(|l| l.starts_with("PUT ipamblocks"))
        .count();
    assert_eq!(puts, 2, "{log:#?}");
}

#[test]
fn release_node_delete_with_stale_precondition_rechecks() {
    let s = Setup::new();
    let ipam = s.ipam();
    let pools = [pool("p", "10.0.0.0/24", 26)];
    ipam.allocate("gone", "old", IpFamily::V4, &pools).unwrap();
    let mut first = true;
    s.api.set_hook(move |objs, w| {
        if w.method == "DELETE" && w.plural == "ipamblocks" && std::mem::take(&mut first) {
            objs.touch("ipamblocks", &w.name, |spec| {
                spec["allocations"][5] = json!(spec["attributes"].as_array().unwrap().len());
                spec["attributes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"handle_id": "live"}));
            });
        }
        None
    });
    let in_use = |_: IpAddr, h: &str| h == "live";
    assert!(ipam.release_node("gone", &in_use).unwrap().is_empty());
    assert_eq!(ipam.blocks_for("gone").unwrap(), [net("10.0.0.0/26")]);
    assert!(s.specs("blockaffinities").contains_key("gone-10-0-0-0-26"));
}

#[test]
fn threads_racing_through_the_api_with_injected_409s_never_share() {
    let s = Setup::new();
    let n = AtomicU64::new(0);
    s.api.set_hook(move |_, w| {
        let k = n.fetch_add(1, Ordering::Relaxed);
        (w.plural == "ipamblocks"
            && (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40).is_multiple_of(4))
        .then_some(409)
    });
    let ipams: Vec<Arc<KddIpam>> = (0..4).map(|_| Arc::new(s.ipam())).collect();
    let pools = Arc::new([pool("p", "10.0.0.0/25", 28)]);
    // Every node allocates before any claims the rest: a node that found the pool taken by the
    // others' extra claims would (rightly) get PoolsExhausted, with nothing to borrow.
    let allocated = Arc::new(std::sync::Barrier::new(ipams.len()));
    let threads: Vec<_> = ipams
        .iter()
        .enumerate()
        .map(|(t, ipam)| {
            let (ipam, pools, allocated) = (ipam.clone(), pools.clone(), allocated.clone());
            std::thread::spawn(move || {
                let node = format!("n{t}");
                let mut got = Vec::new();
                for i in 0..10 {
                    let h = format!("{node}-{i}");
                    got.push((
                        node.clone(),
                        ipam.allocate(&node, &h, IpFamily::V4, &*pools).unwrap(),
                    ));
                }
                allocated.wait();
                loop {
                    match ipam.claim_block(&node, IpFamily::V4, &*pools) {
                        Ok(_) => {}
                        Err(IpamError::PoolsExhausted { .. }) => return got,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let all: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let aff = ipams[0].affinities().unwrap();
    assert_eq!(aff.len(), 8, "every /28 of the /25 claimed: {aff:?}");
    let mut seen = HashSet::new();
    for (node, a) in &all {
        assert!(seen.insert(*a), "{a} handed out twice");
        let (_, owner) = aff.iter().find(|(b, _)| b.contains(a)).unwrap();
        assert_eq!(owner.as_deref(), Some(node.as_str()));
    }
    // One confirmed BlockAffinity per block, named for its owner.
    let affs = s.specs("blockaffinities");
    assert_eq!(affs.len(), 8, "{affs:#?}");
    for (cidr, owner) in &aff {
        let name = model::affinity_name(owner.as_deref().unwrap(), cidr);
        assert_eq!(affs[&name]["state"], "confirmed", "{name}");
    }
}

#[test]
fn unusable_and_half_deleted_blocks_stay_taken() {
    let s = Setup::new();
    let ipam = s.ipam();
    {
        let mut objs = s.api.objects.lock().unwrap();
        objs.insert(
            "ipamblocks",
            json!({"metadata": {"name": "10-0-0-0-26"}, "spec": {"cidr": "10.0.0.0/26", "allocations": [0]}}),
        );
        let mut b = Block::new(net("10.0.0.64/26"), "n9", "p");
        b.allocations.insert(ip("10.0.0.64"), "x".into());
        let mut spec = serde_json::to_value(block_spec(&b, None, "t")).unwrap();
        spec["deleted"] = true.into();
        objs.insert(
            "ipamblocks",
            json!({"metadata": {"name": "10-0-0-64-26"}, "spec": spec}),
        );
    }
    let pools = [pool("p", "10.0.0.0/24", 26)];
    assert_eq!(
        ipam.claim_block("n1", IpFamily::V4, &pools).unwrap(),
        net("10.0.0.128/26")
    );
    let usage = ipam.usage().unwrap();
    assert_eq!(usage.blocks.len(), 1);
    assert_eq!(
        usage
            .corrupt
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        [
            "IPAMBlock 10-0-0-0-26: spec.allocations: 1 entries for a block of 64 addresses; \
          skipped, its addresses stay taken"
        ]
    );
}

#[test]
fn callable_from_spawn_blocking_and_from_a_runtime_worker() {
    let s = Setup::new();
    let ipam = Arc::new(s.ipam());
    let pools = Arc::new([pool("p", "10.0.0.0/24", 26)]);
    let (i1, p1) = (ipam.clone(), pools.clone());
    let (i2, p2) = (ipam.clone(), pools.clone());
    let (a, b) = s.rt.block_on(async move {
        let a = tokio::task::spawn_blocking(move || i1.allocate("n1", "a", IpFamily::V4, &*p1))
            .await
            .unwrap();
        let b = tokio::spawn(async move { i2.allocate("n1", "b", IpFamily::V4, &*p2) })
            .await
            .unwrap();
        (a, b)
    });
    assert_eq!((a.unwrap(), b.unwrap()), (ip("10.0.0.0"), ip("10.0.0.1")));
}
