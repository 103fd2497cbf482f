//! The calculation step from YAML a Calico user would write.

use super::*;

fn state(yaml: &str) -> ClusterState {
    let (s, errs) = ClusterState::from_yaml("test.yaml", yaml);
    assert!(errs.is_empty(), "{errs:?}");
    s
}

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node1
  labels: {rack: a}
  annotations: {projectcalico.org/IPv4Address: 10.200.0.11/24, projectcalico.org/IPv6Address: "fd00:200::11/64"}
---
apiVersion: v1
kind: Node
metadata:
  name: node2
  labels: {rack: a}
  annotations: {projectcalico.org/IPv4Address: 10.200.0.12/24}
---
apiVersion: v1
kind: Node
metadata:
  name: node3
  labels: {rack: b}
  annotations: {projectcalico.org/IPv4Address: 10.200.0.13/24, projectcalico.org/ASNumber: "65003"}
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn full_mesh_by_default() {
    let s = state(NODES);
    let d = desired(&s, "node1", &[]);
    let sp = d.speaker.expect("speaker");
    assert_eq!(sp.router_id, "10.200.0.11".parse::<Ipv4Addr>().unwrap());
    assert_eq!(sp.local_as, 64512);
    assert_eq!(sp.next_hop_v6, Some("fd00:200::11".parse().unwrap()));
    let peers: Vec<(IpAddr, u32, PeerType)> = d
        .peers
        .values()
        .map(|p| (p.cfg.address, p.cfg.remote_as, p.peer_type))
        .collect();
    assert_eq!(
        peers,
        vec![
            (ip("10.200.0.12"), 64512, PeerType::NodeMesh),
            (ip("10.200.0.13"), 65003, PeerType::NodeMesh)
        ]
    );
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn bgp_peers_route_reflectors_and_mesh_off() {
    let yaml = format!(
        "{NODES}{}",
        r#"
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false, asNumber: 64600}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 10.200.0.1, asNumber: 65000, password: s3cret}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: rack-a-to-rr}
spec: {nodeSelector: "rack == 'a'", peerSelector: "has(rr)"}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: only-node2}
spec: {node: node2, peerIP: 10.9.9.9, asNumber: 65009}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: secret}
spec: {peerIP: 10.200.0.99, asNumber: 65000, password: {secretKeyRef: {name: s, key: k}}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: rr1, labels: {rr: "yes"}}
spec: {bgp: {ipv4Address: 10.200.0.5/24, routeReflectorClusterID: 224.0.0.1}}
"#
    );
    let s = state(&yaml);
    let d = desired(&s, "node1", &[]);
    let got: Vec<(IpAddr, PeerType, Option<String>)> = d
        .peers
        .values()
        .map(|p| (p.cfg.address, p.peer_type, p.cfg.password.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ip("10.200.0.1"), PeerType::Global, Some("s3cret".into())),
            (ip("10.200.0.5"), PeerType::RrServer, None),
        ]
    );
    assert_eq!(d.speaker.unwrap().local_as, 64600);
    assert!(
        d.errors.iter().any(|e| e
            .to_string()
            .starts_with("BGPPeer secret: spec.password.secretKeyRef: ")),
        "{:?}",
        d.errors
    );

    // The route reflector sees node1 and node2 (rack a) as clients; node3 is not selected.
    let rr = desired(&s, "rr1", &[]);
    assert_eq!(
        rr.speaker.as_ref().unwrap().cluster_id,
        Some("224.0.0.1".parse().unwrap())
    );
    let clients: Vec<(IpAddr, PeerType, bool)> = rr
        .peers
        .values()
        .filter(|p| p.peer_type == PeerType::RrClient)
        .map(|p| (p.cfg.address, p.peer_type, p.cfg.rr_client))
        .collect();
    assert_eq!(
        clients,
        vec![
            (ip("10.200.0.11"), PeerType::RrClient, true),
            (ip("10.200.0.12"), PeerType::RrClient, true)
        ]
    );
    // node2 has its own node-specific peer.
    let d2 = desired(&s, "node2", &[]);
    assert!(d2
        .peers
        .values()
        .any(|p| p.cfg.address == ip("10.9.9.9") && p.peer_type == PeerType::NodeSpecific));
    assert!(!d.peers.values().any(|p| p.cfg.address == ip("10.9.9.9")));
}

#[test]
fn originates_blocks_and_borrowed_pod_addresses() {
    let yaml = format!(
        "{NODES}{}",
        r#"
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  nodeName: node1
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.244.0.5, podIPs: [{ip: 10.244.0.5}, {ip: "fd00:244::5"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: static, namespace: default}
spec: {nodeName: node1}
status: {podIP: 10.99.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: default}
spec: {nodeName: node2}
status: {podIP: 10.244.0.70}
"#
    );
    let s = state(&yaml);
    let blocks: Vec<IpNet> = vec![
        "10.244.0.0/26".parse().unwrap(),
        "fd00:244::/122".parse().unwrap(),
    ];
    let d = desired(&s, "node1", &blocks);
    let orig: Vec<String> = d.originate.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        orig,
        vec!["10.99.0.7/32", "10.244.0.0/26", "fd00:244::/122"]
    );
    assert_eq!(d.local_pods.len(), 2);
    let web = d.local_pods.iter().find(|p| p.name == "web").unwrap();
    assert_eq!(web.iface, felix::workload_iface_name("default", "web"));
    assert_eq!(d.policy.endpoints.len(), 2);
    assert_eq!(d.policy.pods.len(), 3);
    let wp = d.policy.pods.iter().find(|p| p.name == "web").unwrap();
    assert_eq!(
        wp.ports,
        vec![pm::NamedPort {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 8080
        }]
    );
}

#[test]
fn learned_routes_skip_our_own_blocks_and_next_hops() {
    let s = state(NODES);
    let blocks: Vec<IpNet> = vec!["10.244.0.0/26".parse().unwrap()];
    let d = desired(&s, "node1", &blocks);
    let mut learned = BTreeMap::new();
    learned.insert("10.244.0.64/26".parse().unwrap(), vec![ip("10.200.0.12")]);
    learned.insert("10.244.0.0/26".parse().unwrap(), vec![ip("10.200.0.12")]);
    learned.insert("10.244.1.0/26".parse().unwrap(), vec![ip("10.200.0.11")]);
    let r = routes_input(&d, &learned);
    let cidrs: Vec<String> = r.remote_blocks.iter().map(|b| b.cidr.to_string()).collect();
    assert_eq!(cidrs, vec!["10.244.0.64/26"]);
    assert_eq!(r.local_blocks, blocks);
}

#[test]
fn a_node_without_ipv4_runs_no_bgp_and_says_why() {
    let s = state("apiVersion: v1\nkind: Node\nmetadata: {name: lonely}\n");
    let d = desired(&s, "lonely", &[]);
    assert!(d.speaker.is_none());
    assert_eq!(
        d.errors[0].to_string(),
        "Node lonely: metadata.annotations[projectcalico.org/IPv4Address]: missing: BGP needs an \
         IPv4 address (router id)"
    );
    let d = desired(&s, "ghost", &[]);
    assert_eq!(
        d.errors[0].to_string(),
        "Node ghost: not found in the datastore"
    );
}

#[test]
fn an_unparseable_policy_fails_closed() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: prod}
spec: {podSelector: {matchLabels: {app: web}}, ingress: "not a list"}
"#;
    let (s, _) = ClusterState::from_yaml("p.yaml", yaml);
    let d = desired(&s, "node1", &[]);
    if let Some(p) = d.policy.policies.first() {
        // Either felix's model took it (and validates it), or we replaced it by deny-all.
        assert_eq!(p.metadata.name, "broken");
    }
}

#[test]
fn mesh_dials_the_listen_port_and_peers_source_from_the_node_ip() {
    let s = state(&format!(
        "{NODES}---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\n\
         metadata: {{name: default}}\nspec: {{listenPort: 1179}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: tor}}\n\
         spec: {{peerIP: 10.200.0.1, asNumber: 65000}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: tor6}}\n\
         spec: {{peerIP: 'fd00:200::1', asNumber: 65000, sourceAddress: None}}\n"
    ));
    let d = desired(&s, "node1", &[]);
    assert_eq!(d.speaker.unwrap().listen_port, 1179);
    let mesh = &d.peers[&ip("10.200.0.12")].cfg;
    assert_eq!(mesh.port, 1179);
    let tor = &d.peers[&ip("10.200.0.1")].cfg;
    assert_eq!(tor.port, 179, "an explicit peer keeps its own port");
    assert_eq!(tor.local_address, Some(ip("10.200.0.11")));
    assert_eq!(d.peers[&ip("fd00:200::1")].cfg.local_address, None);
}

#[test]
fn pools_with_disable_bgp_export_are_not_advertised() {
    let s = state(&format!(
        "{NODES}---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: a}}\n\
         spec: {{cidr: 10.244.0.0/16}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: quiet}}\n\
         spec: {{cidr: 10.245.0.0/16, disableBGPExport: true}}\n"
    ));
    let export = &desired(&s, "node1", &[]).peers[&ip("10.200.0.12")]
        .cfg
        .export;
    let accepts = |p: &str| {
        export
            .apply(&p.parse().unwrap(), &bgp::wire::PathAttrs::default())
            .is_some()
    };
    assert!(accepts("10.244.1.0/26"));
    assert!(!accepts("10.245.1.0/26"));
    assert!(!accepts("192.168.0.0/24"));
}

// Each calculator on its own.

#[test]
fn origin_announces_blocks_and_pod_addresses_outside_them() {
    let s = state(&format!(
        "{NODES}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: default}}\n\
         spec: {{nodeName: node1}}\nstatus: {{podIP: 10.244.0.5}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: b, namespace: default}}\n\
         spec: {{nodeName: node1}}\nstatus: {{podIP: 10.99.0.7}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: h, namespace: default}}\n\
         spec: {{nodeName: node1, hostNetwork: true}}\nstatus: {{podIP: 10.200.0.11}}\n"
    ));
    let blocks: Vec<IpNet> = vec!["10.244.0.0/26".parse().unwrap()];
    let (pods, originate) = origin::local(&s, "node1", &blocks);
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let want: Vec<IpNet> = vec![
        "10.99.0.7/32".parse().unwrap(),
        "10.244.0.0/26".parse().unwrap(),
    ];
    assert_eq!(originate.into_iter().collect::<Vec<_>>(), want);
    assert_eq!(pods[0].iface, felix::workload_iface_name("default", "a"));
}

#[test]
fn peers_calculator_alone() {
    let s = state(NODES);
    let me_node = &s.nodes["node3"];
    let me = node_me(&s, me_node);
    let mut errors = Vec::new();
    let p = peers::peers(&s, "node3", &me, me_node, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    // node3 is in AS 65003: both mesh peers are eBGP from its side, in the cluster AS.
    let want: Vec<(IpAddr, u32)> = vec![(ip("10.200.0.11"), 64512), (ip("10.200.0.12"), 64512)];
    let have: Vec<(IpAddr, u32)> = p
        .values()
        .map(|s| (s.cfg.address, s.cfg.remote_as))
        .collect();
    assert_eq!(have, want);
    let mut errors = Vec::new();
    assert!(peers::speaker_spec(&s, "ghost", None, &mut errors).is_none());
    assert_eq!(errors.len(), 1);
}
