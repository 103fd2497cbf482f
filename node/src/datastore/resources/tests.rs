//! Decoding tests: every kind, defaults, and the field named in each rejection.

use std::net::IpAddr;

use super::*;
use crate::datastore::parse::parse_yaml;
use crate::datastore::state::{ClusterState, IpFamily};

fn one(text: &str) -> Resource {
    let p = parse_yaml("t.yaml", text);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.resources.len(), 1, "{:?}", p.errors);
    p.resources.into_iter().next().unwrap().1
}

fn err(text: &str) -> String {
    let p = parse_yaml("t.yaml", text);
    assert!(p.resources.is_empty(), "decoded: {:?}", p.resources);
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    p.errors[0].to_string()
}

fn pool(spec: &str) -> String {
    format!("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec:\n{spec}")
}

fn peer(spec: &str) -> String {
    format!("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: r\nspec:\n{spec}")
}

#[test]
fn namespace_gets_the_metadata_name_label() {
    let Resource::Namespace(ns) = one(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n  labels: {team: a, tier: 1}\n",
    ) else {
        panic!()
    };
    assert_eq!(ns.metadata.labels["kubernetes.io/metadata.name"], "prod");
    assert_eq!(ns.metadata.labels["tier"], "1");
    assert_eq!(ns.metadata.namespace, None);
}

#[test]
fn pod_fields() {
    let Resource::Pod(p) = one(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: prod\n  labels: {app: web}\n\
         spec:\n  nodeName: node-1\n  containers:\n  - name: c\n    ports:\n    - {name: http, containerPort: 8080}\n\
         \x20   - {name: dns, containerPort: 53, protocol: UDP}\n\
         status:\n  phase: Running\n  podIP: 10.244.0.5\n  podIPs:\n  - ip: 10.244.0.5\n  - ip: fd00::5\n",
    ) else {
        panic!()
    };
    assert_eq!(p.namespace(), "prod");
    assert_eq!(p.node_name.as_deref(), Some("node-1"));
    assert_eq!(
        p.pod_ips,
        [
            "10.244.0.5".parse::<IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(p.named_port("http", Protocol::Tcp), Some(8080));
    assert_eq!(p.named_port("dns", Protocol::Udp), Some(53));
    assert_eq!(p.named_port("dns", Protocol::Tcp), None);
    assert_eq!(p.phase.as_deref(), Some("Running"));
    assert!(!p.host_network);
}

#[test]
fn pod_without_namespace_is_in_default() {
    let Resource::Pod(p) = one("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n") else {
        panic!()
    };
    assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
    assert!(p.pod_ips.is_empty());
}

#[test]
fn pod_errors_name_the_field() {
    let base = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: prod}\n";
    assert_eq!(
        err(&format!("{base}status: {{podIP: 10.0.0.300}}\n")),
        "t.yaml doc 1: Pod prod/web: status.podIP: invalid IP address \"10.0.0.300\""
    );
    assert_eq!(
        err(&format!("{base}spec:\n  containers:\n  - ports: [{{containerPort: 70000}}]\n")),
        "t.yaml doc 1: Pod prod/web: spec.containers[0].ports[0].containerPort: 70000 is out of range (0-65535)"
    );
    assert_eq!(
        err(&format!("{base}spec:\n  containers:\n  - ports: [{{containerPort: 80, protocol: ICMP}}]\n")),
        "t.yaml doc 1: Pod prod/web: spec.containers[0].ports[0].protocol: unknown protocol \"ICMP\" (want TCP, UDP or SCTP)"
    );
    assert_eq!(
        err("apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n"),
        "t.yaml doc 1: Pod: metadata.name: required"
    );
}

#[test]
fn node_from_annotations_and_calico_spec_merge() {
    let text = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {rack: r1}\n  annotations:\n\
                \x20   projectcalico.org/IPv4Address: 172.18.0.2/24\n    projectcalico.org/ASNumber: \"64513\"\n\
                status:\n  addresses:\n  - {type: InternalIP, address: 172.18.0.2}\n  - {type: Hostname, address: n1}\n\
                ---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec:\n  bgp:\n\
                \x20   ipv6Address: fd00::2/64\n    asNumber: '1.10'\n    routeReflectorClusterID: 224.0.0.1\n";
    let (state, errors) = ClusterState::from_yaml("nodes.yaml", text);
    assert!(errors.is_empty(), "{errors:?}");
    let n = &state.nodes["n1"];
    assert_eq!(n.bgp.ipv4_address.unwrap().to_string(), "172.18.0.2/24");
    assert_eq!(n.bgp.ipv6_address.unwrap().to_string(), "fd00::2/64");
    assert_eq!(n.bgp.as_number, Some(65546));
    assert_eq!(
        n.bgp.route_reflector_cluster_id,
        Some("224.0.0.1".parse().unwrap())
    );
    assert_eq!(n.metadata.labels["rack"], "r1");
    assert_eq!(n.internal_ips, ["172.18.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(state.as_number_of("n1"), 65546);
    assert_eq!(state.as_number_of("other"), 64512);
}

#[test]
fn node_errors() {
    assert_eq!(
        err("apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  annotations: {projectcalico.org/IPv4Address: 10.0.0.1/40}\n"),
        "t.yaml doc 1: Node n1: metadata.annotations.projectcalico.org/IPv4Address: invalid address \"10.0.0.1/40\" (want ADDR/PREFIXLEN)"
    );
    assert_eq!(
        err("apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  annotations: {projectcalico.org/ASNumber: abc}\n"),
        "t.yaml doc 1: Node n1: metadata.annotations.projectcalico.org/ASNumber: invalid AS number \"abc\" (want 1-4294967295 or asdot HIGH.LOW)"
    );
    assert_eq!(
        err("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 'fd00::1/64'}}\n"),
        "t.yaml doc 1: Node n1: spec.bgp.ipv4Address: \"fd00::1/64\" is not an IPv4 address"
    );
    assert_eq!(
        err("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {asNumber: 1.10}}\n"),
        "t.yaml doc 1: Node n1: spec.bgp.asNumber: 1.1 read as a decimal number; quote asdot AS numbers (e.g. \"1.10\")"
    );
}

#[test]
fn network_policy_is_decoded_into_the_policy_model() {
    let Resource::NetworkPolicy(p) = one(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: prod}\n\
         spec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    ) else {
        panic!()
    };
    assert_eq!(p.metadata.namespace.as_deref(), Some("prod"));
    let policy = p.policy.as_ref().expect("a valid policy");
    assert_eq!(policy.spec.policy_types, Some(vec!["Ingress".to_string()]));
    assert_eq!(policy.metadata.namespace.as_deref(), Some("prod"));
    // One that does not fit the model is kept, reported, and marked.
    let parsed = parse_yaml(
        "t.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\n\
         spec: {podSelector: {}, ingress: \"not a list\"}\n",
    );
    assert_eq!(parsed.resources.len(), 1);
    assert!(parsed.resources[0].1.problem().is_some());
    assert!(
        parsed.errors[0].to_string().starts_with(
            "t.yaml doc 1: NetworkPolicy default/bad: spec: not a valid NetworkPolicy: "
        ),
        "{}",
        parsed.errors[0]
    );
}

#[test]
fn bgp_configuration_fields() {
    let Resource::BgpConfiguration(c) = one(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec:\n\
         \x20 asNumber: 65000\n  nodeToNodeMeshEnabled: false\n  logSeverityScreen: Info\n  listenPort: 1179\n",
    ) else {
        panic!()
    };
    assert_eq!(c.as_number, Some(65000));
    assert_eq!(c.node_to_node_mesh_enabled, Some(false));
    assert_eq!(c.listen_port, Some(1179));
    assert_eq!(
        err("apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshEnabled: nope}\n"),
        "t.yaml doc 1: BGPConfiguration default: spec.nodeToNodeMeshEnabled: expected true or false, got a string"
    );
    // Settings calico-rs would not act on are refused, not ignored.
    let bgpc = |spec: &str| {
        err(&format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {{name: default}}\nspec: {spec}\n"
        ))
    };
    assert_eq!(
        bgpc("{serviceClusterIPs: [{cidr: 10.96.0.0/12}]}"),
        "t.yaml doc 1: BGPConfiguration default: spec.serviceClusterIPs: not supported by \
         calico-rs: service address advertisement is not implemented"
    );
    assert!(bgpc("{logSeverityScreen: Debug}").starts_with(
        "t.yaml doc 1: BGPConfiguration default: spec.logSeverityScreen: not supported"
    ));
    assert_eq!(
        bgpc("{nodeToNodeMeshEnable: false}"),
        "t.yaml doc 1: BGPConfiguration default: spec.nodeToNodeMeshEnable: unknown field \
         \"nodeToNodeMeshEnable\" (did you mean \"nodeToNodeMeshEnabled\"?)"
    );
}

#[test]
fn bgp_peer_fields() {
    let Resource::BgpPeer(p) = one(&peer(
        "  peerIP: 172.18.0.100:1179\n  asNumber: 65001\n  node: n1\n  password: s3cret\n\
         \x20 keepOriginalNextHop: true\n  sourceAddress: None\n  ttlSecurity: 1\n",
    )) else {
        panic!()
    };
    assert_eq!(
        p.peer_ip,
        Some(PeerAddr {
            ip: "172.18.0.100".parse().unwrap(),
            port: Some(1179)
        })
    );
    assert_eq!(p.as_number, Some(65001));
    assert_eq!(p.node.as_deref(), Some("n1"));
    assert_eq!(p.password, Some(BgpPassword::Plain("s3cret".into())));
    assert!(p.keep_original_next_hop);
    assert_eq!(p.source_address, SourceAddress::None);
    assert_eq!(p.ttl_security, Some(1));

    let Resource::BgpPeer(p) = one(&peer(
        "  nodeSelector: has(edge)\n  peerSelector: route-reflector == 'true'\n  password: {secretKeyRef: {name: s, key: k}}\n",
    )) else {
        panic!()
    };
    assert!(p.peer_ip.is_none());
    assert_eq!(p.node_selector.unwrap().to_string(), "has(edge)");
    assert_eq!(
        p.password,
        Some(BgpPassword::SecretKeyRef {
            name: "s".into(),
            key: "k".into()
        })
    );

    let Resource::BgpPeer(p) = one(&peer("  peerIP: '[fd00::1]:179'\n  asNumber: '65001'\n"))
    else {
        panic!()
    };
    assert_eq!(p.peer_ip.unwrap().port, Some(179));
}

#[test]
fn bgp_peer_errors() {
    let cases = [
        ("  peerIP: 10.0.0.1:x\n  asNumber: 1\n", "spec.peerIP: invalid peer address \"10.0.0.1:x\" (want ADDR, ADDR:PORT or [V6ADDR]:PORT)"),
        ("  peerIP: 10.0.0.1\n", "spec.asNumber: required with spec.peerIP"),
        ("  asNumber: 1\n", "spec.peerIP: required (or spec.peerSelector)"),
        ("  peerIP: 10.0.0.1\n  asNumber: 1\n  peerSelector: all()\n", "spec.peerSelector: cannot be used together with spec.peerIP"),
        ("  peerIP: 10.0.0.1\n  asNumber: 1\n  node: a\n  nodeSelector: all()\n", "spec.nodeSelector: cannot be used together with spec.node"),
        ("  peerSelector: \"rack == r1\"\n", "spec.peerSelector: column 9: expected a quoted value after '==', found 'r1' in \"rack == r1\""),
        ("  peerIP: 10.0.0.1\n  asNumber: 1\n  password: [a]\n", "spec.password: expected a string or {secretKeyRef: {name, key}}, got a list"),
        ("  peerIP: 10.0.0.1\n  asNumber: 1\n  password: {secretKeyRef: {name: s}}\n", "spec.password.secretKeyRef.key: required"),
        ("  peerIP: 10.0.0.1\n  asNumber: 1\n  maxRestartTime: soon\n", "spec.maxRestartTime: not supported by calico-rs: the graceful restart time is fixed at 120 s"),
        ("  peerIP: 10.0.0.1\n  asNumber: 1\n  ttlSecurity: 300\n", "spec.ttlSecurity: 300 is out of range (0-255)"),
        ("  peerIP: 10.0.0.1\n  asNumber: 1\n  sourceAddress: Any\n", "spec.sourceAddress: unknown value \"Any\""),
    ];
    for (spec, want) in cases {
        let got = err(&peer(spec));
        assert!(
            got.starts_with(&format!("t.yaml doc 1: BGPPeer r: {want}")),
            "{spec}\n got: {got}\nwant: {want}"
        );
    }
}

#[test]
fn ip_pool_defaults() {
    let Resource::IpPool(p) = one(&pool("  cidr: 10.244.0.0/16\n")) else {
        panic!()
    };
    assert_eq!(p.block_size, 26);
    assert_eq!(p.node_selector.to_string(), "all()");
    assert!(!p.disabled && !p.nat_outgoing);
    assert_eq!(
        (p.ipip_mode, p.vxlan_mode),
        (EncapMode::Never, EncapMode::Never)
    );
    let Resource::IpPool(p) = one(&pool(
        "  cidr: fd00:10:244::/48\n  nodeSelector: rack == 'r1'\n  disabled: true\n  vxlanMode: Never\n  natOutgoing: false\n  disableBGPExport: true\n  allowedUses: [Workload, Tunnel]\n  assignmentMode: Automatic\n",
    )) else {
        panic!()
    };
    assert_eq!(p.block_size, 122);
    assert!(p.disabled && !p.nat_outgoing && p.disable_bgp_export);
    let Resource::IpPool(p) = one(&pool(
        "  cidr: 10.244.0.0/16
  natOutgoing: true
",
    )) else {
        panic!()
    };
    assert!(p.nat_outgoing);
}

#[test]
fn ip_pool_errors() {
    let cases = [
        (
            "  cidr: 10.0.0.0/33\n",
            "spec.cidr: invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            "  cidr: 10.0.0.1/16\n",
            "spec.cidr: CIDR \"10.0.0.1/16\" has host bits set (did you mean \"10.0.0.0/16\"?)",
        ),
        ("  blockSize: 26\n", "spec.cidr: required"),
        (
            "  cidr: 10.0.0.0/16\n  blockSize: 19\n",
            "spec.blockSize: 19 is out of range for this pool's family (20-32)",
        ),
        (
            "  cidr: fd00::/64\n  blockSize: 64\n",
            "spec.blockSize: 64 is out of range for this pool's family (116-128)",
        ),
        (
            "  cidr: 10.0.0.0/28\n",
            "spec.blockSize: block size /26 is larger than the pool 10.0.0.0/28",
        ),
        (
            "  cidr: 10.0.0.0/16\n  ipipMode: Sometimes\n",
            "spec.ipipMode: unknown mode \"Sometimes\"",
        ),
        (
            "  cidr: fd00::/64\n  ipipMode: Always\n",
            "spec.ipipMode: IPIP is not supported for IPv6 pools",
        ),
        (
            "  cidr: 10.0.0.0/16\n  ipipMode: Always\n  vxlanMode: Always\n",
            "spec.vxlanMode: cannot be enabled together with spec.ipipMode",
        ),
        (
            "  cidr: 10.0.0.0/16\n  ipipMode: CrossSubnet\n",
            "spec.ipipMode: CrossSubnet is not supported by calico-rs yet",
        ),
        (
            "  cidr: 10.0.0.0/16\n  vxlanMode: Always\n",
            "spec.vxlanMode: Always is not supported by calico-rs yet",
        ),
        (
            "  cidr: 10.0.0.0/16\n  natOutgoing: \"yes\"\n",
            "spec.natOutgoing",
        ),
        (
            "  cidr: 10.0.0.0/16\n  assignmentMode: Manual\n",
            "spec.assignmentMode: \"Manual\" is not supported by calico-rs",
        ),
        (
            "  cidr: 10.0.0.0/16\n  allowedUses: [Tunnel]\n",
            "spec.allowedUses: a pool without Workload is not supported",
        ),
        (
            "  cidr: 10.0.0.0/16\n  natOutgoinng: true\n",
            "spec.natOutgoinng: unknown field \"natOutgoinng\" (did you mean \"natOutgoing\"?)",
        ),
        (
            "  cidr: [10.0.0.0/16]\n",
            "spec.cidr: expected a string, got a list",
        ),
        (
            "  cidr: 10.0.0.0/16\n  blockSize: big\n",
            "spec.blockSize: expected a whole number, got \"big\"",
        ),
    ];
    for (spec, want) in cases {
        let got = err(&pool(spec));
        assert!(
            got.starts_with(&format!("t.yaml doc 1: IPPool p: {want}")),
            "{spec}\n got: {got}\nwant: {want}"
        );
    }
}

#[test]
fn document_level_errors() {
    assert_eq!(
        err("- a\n- b\n"),
        "t.yaml doc 1: (document): expected a map with apiVersion and kind, got a list"
    );
    assert_eq!(
        err("apiVersion: v1\nmetadata: {name: a}\n"),
        "t.yaml doc 1: kind: required"
    );
    assert_eq!(
        err("kind: Pod\nmetadata: {name: a}\n"),
        "t.yaml doc 1: Pod: apiVersion: required"
    );
    assert_eq!(
        err("apiVersion: v1\nkind: Namespace\n"),
        "t.yaml doc 1: Namespace: metadata.name: required"
    );
    assert_eq!(
        err("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: [x]}\n"),
        "t.yaml doc 1: Namespace: metadata.labels: expected a map, got a list"
    );
}

#[test]
fn state_helpers() {
    let named =
        |name: &str, spec: &str| pool(spec).replace("name: p\n", &format!("name: {name}\n"));
    let text = format!(
        "{}---\n{}---\n{}---\n{}",
        named(
            "a-rack1",
            "  cidr: 10.244.0.0/16\n  nodeSelector: rack == 'r1'\n"
        ),
        named("b-all", "  cidr: 10.245.0.0/16\n"),
        named("c-off", "  cidr: 10.246.0.0/16\n  disabled: true\n"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {rack: r1}}\n"
    );
    let (state, errors) = ClusterState::from_yaml("x.yaml", &text);
    assert!(errors.is_empty(), "{errors:?}");
    let names = |n: &str| -> Vec<String> {
        state
            .ip_pools_for_node(n, IpFamily::V4)
            .into_iter()
            .map(|p| p.metadata.name)
            .collect()
    };
    assert_eq!(names("n1"), ["a-rack1", "b-all"]);
    assert_eq!(names("n2"), ["b-all"]);
    assert!(state.ip_pools_for_node("n1", IpFamily::V6).is_empty());
    assert!(state.node_to_node_mesh_enabled());
    assert_eq!(state.default_as_number(), 64512);
    let clone = state.clone();
    assert_eq!(clone, state);
}
