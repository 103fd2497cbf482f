//! IPAM on Calico's Kubernetes objects against an API server (issue: the Kubernetes datastore):
//! the project's test API server in-process on 127.0.0.1 with manifests/' CRDs, and one kube-rs
//! client per node, racing as separate nodes would. Optimistic concurrency only: no block is
//! ever owned twice, no address handed out twice, and exhausting a pool gives each loser an error
//! naming the pool.
//!
//! Run with `cargo test -p calico-node --test ipam_kdd`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Barrier};

use calico_node::datastore::{ClusterState, IpFamily, IpPool};
use calico_node::ipam::kdd::KddIpam;
use calico_node::ipam::IpamError;
use ipnet::IpNet;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};

struct Api0 {
    rt: tokio::runtime::Runtime,
    url: String,
    _server: kube_test_server::ServerHandle,
}

fn start() -> Api0 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(async {
        let server = kube_test_server::Server::start(Default::default())
            .await
            .unwrap();
        let client = client_for(&server.url());
        let crd = ApiResource {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
        };
        let crds: Api<DynamicObject> = Api::all_with(client, &crd);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        for name in ["ipamblocks", "blockaffinities", "ipamhandles"] {
            let text = std::fs::read_to_string(dir.join(format!("10-crd-{name}.yaml"))).unwrap();
            let obj: DynamicObject = serde_yaml_ng::from_str(&text).unwrap();
            crds.create(&PostParams::default(), &obj).await.unwrap();
        }
        server
    });
    Api0 {
        url: server.url(),
        rt,
        _server: server,
    }
}

fn client_for(url: &str) -> kube::Client {
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

impl Api0 {
    /// A node's own IPAM: its own client, as on its own machine.
    fn node_ipam(&self) -> KddIpam {
        let _g = self.rt.enter();
        KddIpam::kubernetes(client_for(&self.url), self.rt.handle().clone())
    }

    /// (block name -> affinity) and (affinity name -> state) as stored.
    fn stored(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        self.rt.block_on(async {
            let client = client_for(&self.url);
            let ar = |plural: &str, kind: &str| ApiResource {
                group: "crd.projectcalico.org".into(),
                version: "v1".into(),
                api_version: "crd.projectcalico.org/v1".into(),
                kind: kind.into(),
                plural: plural.into(),
            };
            let list = |plural: &'static str, kind: &'static str, field: &'static str| {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar(plural, kind));
                async move {
                    api.list(&ListParams::default())
                        .await
                        .unwrap()
                        .items
                        .into_iter()
                        .map(|o| {
                            (
                                o.metadata.name.clone().unwrap(),
                                o.data["spec"][field]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_string(),
                            )
                        })
                        .collect::<BTreeMap<_, _>>()
                }
            };
            (
                list("ipamblocks", "IPAMBlock", "affinity").await,
                list("blockaffinities", "BlockAffinity", "state").await,
            )
        })
    }
}

fn pool(name: &str, cidr: &str, block: u8) -> IpPool {
    let (state, errors) = ClusterState::from_yaml(
        "test",
        &format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {name}}}\nspec: \
             {{cidr: {cidr}, blockSize: {block}}}\n"
        ),
    );
    assert!(errors.is_empty(), "{errors:?}");
    state.ip_pools[name].clone()
}

#[test]
fn twenty_nodes_claim_blocks_of_one_small_pool_at_once() {
    let api = start();
    let nodes: Vec<(String, KddIpam)> = (0..20)
        .map(|i| (format!("n{i}"), api.node_ipam()))
        .collect();
    let nodes = Arc::new(nodes);
    for round in 0..5 {
        // 4 blocks for 20 claimers.
        let p = pool(
            &format!("small{round}"),
            &format!("10.{}.0.0/24", 100 + round),
            26,
        );
        let barrier = Arc::new(Barrier::new(20));
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let (nodes, barrier, p) = (nodes.clone(), barrier.clone(), p.clone());
                std::thread::spawn(move || {
                    let (name, ipam) = &nodes[i];
                    barrier.wait();
                    (name.clone(), ipam.claim_block(name, IpFamily::V4, &[p]))
                })
            })
            .collect();
        let results: Vec<(String, Result<IpNet, IpamError>)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won: BTreeMap<IpNet, String> = results
            .iter()
            .filter_map(|(n, r)| r.as_ref().ok().map(|c| (*c, n.clone())))
            .collect();
        let wins = results.iter().filter(|(_, r)| r.is_ok()).count();
        assert_eq!(wins, 4, "round {round}: {results:?}");
        assert_eq!(
            won.len(),
            4,
            "round {round}: a block claimed twice: {results:?}"
        );
        for (n, r) in &results {
            if let Err(e) = r {
                let text = e.to_string();
                assert!(
                    matches!(e, IpamError::PoolsExhausted { .. })
                        && text.contains(&p.metadata.name),
                    "round {round}: {n} lost with an unclear error: {text}"
                );
            }
        }
        // What is stored says the same: one block per win, affine to its winner, confirmed.
        let (blocks, affinities) = api.stored();
        for (cidr, node) in &won {
            let name = cidr.to_string().replace(['.', '/'], "-");
            assert_eq!(
                blocks.get(&name),
                Some(&format!("host:{node}")),
                "block {name}"
            );
            let aff = format!("{node}-{name}");
            assert_eq!(
                affinities.get(&aff).map(String::as_str),
                Some("confirmed"),
                "{aff}"
            );
        }
        let in_pool = blocks
            .keys()
            .filter(|b| b.starts_with(&format!("10-{}-0-", 100 + round)))
            .count();
        assert_eq!(in_pool, 4, "round {round}: {blocks:?}");
    }
    // No claim was lost: every block a node won is its block.
    let all: BTreeSet<IpNet> = nodes
        .iter()
        .flat_map(|(n, i)| i.blocks_for(n).unwrap())
        .collect();
    assert_eq!(all.len(), 20, "{all:?}");
}

#[test]
fn a_thousand_allocations_from_five_nodes_never_share_an_address() {
    let api = start();
    let p = pool("big", "10.200.0.0/20", 26);
    let barrier = Arc::new(Barrier::new(5));
    let threads: Vec<_> = (0..5)
        .map(|n| {
            let (ipam, barrier, p) = (api.node_ipam(), barrier.clone(), p.clone());
            std::thread::spawn(move || {
                let node = format!("node{n}");
                barrier.wait();
                let got: Vec<(String, IpAddr)> = (0..200)
                    .map(|i| {
                        let h = format!("k8s-pod-network.{node}-{i}");
                        (
                            node.clone(),
                            ipam.allocate(&node, &h, IpFamily::V4, std::slice::from_ref(&p))
                                .unwrap(),
                        )
                    })
                    .collect();
                (got, ipam)
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut owners = BTreeMap::new();
    for t in threads {
        let (got, ipam) = t.join().unwrap();
        for (node, a) in got {
            assert!(seen.insert(a), "{a} handed out twice");
            owners.insert(a, node);
        }
        let _ = ipam;
    }
    assert_eq!(seen.len(), 1000);
    let ipam = api.node_ipam();
    let aff = ipam.affinities().unwrap();
    for (a, node) in &owners {
        let owner = aff
            .iter()
            .find(|(b, _)| b.contains(a))
            .map(|(_, o)| o.clone());
        assert_eq!(owner.flatten().as_deref(), Some(node.as_str()), "{a}");
    }
    // Each allocation is found again by its handle, and released once.
    assert_eq!(
        ipam.addresses_of("k8s-pod-network.node3-17").unwrap().len(),
        1
    );
    assert_eq!(ipam.release("k8s-pod-network.node3-17").unwrap().len(), 1);
    assert!(ipam.release("k8s-pod-network.node3-17").unwrap().is_empty());
}
