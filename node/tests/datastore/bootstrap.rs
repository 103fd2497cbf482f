//! Node bootstrap on the Kubernetes API (issue: the Kubernetes datastore, "two nodes starting at
//! once create it once"): many rounds of two nodes running calico-node's startup at the same
//! moment against a cluster with no IPPool, each with its own client. Every round ends with one
//! `default-ipv4-ippool` and one `default-ipv6-ippool`, each created by exactly one of them (the
//! other's create answered 409 AlreadyExists), and both Nodes annotated.

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};

use calico_node::bootstrap::{kube_startup, BootstrapCfg};

const ROUNDS: usize = 10;

fn cfg(ip: &str) -> BootstrapCfg {
    let vars = [
        ("IP", ip.to_string()),
        ("IP6", "none".to_string()),
        ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16".to_string()),
        ("CALICO_IPV6POOL_CIDR", "fd00:244::/48".to_string()),
    ];
    BootstrapCfg::from_env(&|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap()
}

#[test]
fn two_nodes_starting_at_once_create_the_default_pools_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = kube_test_server::Server::start(Default::default())
            .await
            .unwrap();
        let client =
            || kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        super::backends::install(&client()).await;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client());
        for name in ["n1", "n2"] {
            let node = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}
            }))
            .unwrap();
            nodes.create(&PostParams::default(), &node).await.unwrap();
        }
        let pools: Api<DynamicObject> = Api::all_with(
            client(),
            &calico_node::datastore::kubernetes::kinds::WATCHED
                .iter()
                .find(|k| k.kind == "IPPool")
                .unwrap()
                .api_resource(),
        );
        let (c1, c2) = (cfg("10.0.0.1/24"), cfg("10.0.0.2/24"));
        let mut raced = 0;
        let creates = || {
            server
                .requests()
                .lines()
                .filter(|l| l.contains("\"verb\":\"create\"") && l.contains("\"ippools\""))
                .count()
        };
        for round in 0..ROUNDS {
            let before = creates();
            let (a, b) = tokio::join!(
                kube_startup(&c1, "n1", client()),
                kube_startup(&c2, "n2", client())
            );
            let done: Vec<String> = a.unwrap().into_iter().chain(b.unwrap()).collect();
            for pool in ["default-ipv4-ippool", "default-ipv6-ippool"] {
                let created = done
                    .iter()
                    .filter(|d| d.starts_with(&format!("created IPPool {pool} ")))
                    .count();
                assert_eq!(created, 1, "round {round}: {pool}: {done:?}");
            }
            let names: Vec<String> = pools
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            assert_eq!(
                names,
                ["default-ipv4-ippool", "default-ipv6-ippool"],
                "round {round}"
            );
            // Either one node created both pools before the other listed (2 creates), or both
            // listed an empty cluster and tried (4 creates: two answered 409).
            match creates() - before {
                2 => {}
                4 => raced += 1,
                n => panic!("round {round}: {n} IPPool creates"),
            }
            for name in names {
                pools.delete(&name, &DeleteParams::default()).await.unwrap();
            }
        }
        for name in ["n1", "n2"] {
            let n = nodes.get(name).await.unwrap();
            let ann = n.metadata.annotations.unwrap_or_default();
            let want = if name == "n1" {
                "10.0.0.1/24"
            } else {
                "10.0.0.2/24"
            };
            assert_eq!(
                ann.get("projectcalico.org/IPv4Address").map(String::as_str),
                Some(want)
            );
        }
        eprintln!("{raced} of {ROUNDS} rounds had both nodes create the pools at once");
        assert!(
            raced > 0,
            "no round raced: the test did not exercise two creates of one pool"
        );
    });
}
