use std::collections::HashMap;

use serde_json::json;

use super::*;

fn conf(v: serde_json::Value) -> Result<NetConf, CniError> {
    NetConf::parse(v.to_string().as_bytes())
}

/// What Calico's manifest writes into its conflist, with our datastore keys.
fn calico_style() -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico-cni-rs",
        "datastore_type": "kubernetes", "nodename": "n1", "mtu": 1450,
        "log_level": "info", "log_file_path": "/var/log/calico/cni/cni.log",
        "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"},
        "container_settings": {"allow_ip_forwarding": false},
        "policy": {"type": "k8s"}
    })
}

#[test]
fn a_calico_config_parses() {
    let c = conf(calico_style()).unwrap();
    assert_eq!(c.cni_version, "1.0.0");
    assert_eq!(c.mtu, Some(1450));
    assert_eq!(c.node_name().unwrap(), "n1");
    assert_eq!(
        c.ipam,
        IpamCfg::Calico {
            assign_ipv4: true,
            assign_ipv6: true,
            ipv4_pools: vec![],
            ipv6_pools: vec![]
        }
    );
    assert_eq!(
        c.datastore,
        DatastoreCfg::Kubernetes {
            socket: "/var/run/calico-rs/cni.sock".into()
        }
    );
    // Calico's kubeconfig: refused, naming it (the plugin holds no credentials).
    let mut k = calico_style();
    k["kubernetes"] = json!({"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"});
    let e = conf(k).unwrap_err();
    assert!(e.msg.contains("kubernetes.kubeconfig"), "{e}");
    let mut k = calico_style();
    k["daemon_socket"] = json!("/run/x/cni.sock");
    assert_eq!(
        conf(k).unwrap().datastore,
        DatastoreCfg::Kubernetes {
            socket: "/run/x/cni.sock".into()
        }
    );
    let mut k = calico_style();
    k["daemon_socket"] = json!("rel.sock");
    assert!(conf(k).unwrap_err().msg.contains("daemon_socket"));
    let mut k = calico_style();
    k["datastore_dir"] = json!("/x");
    assert!(conf(k).unwrap_err().msg.contains("datastore_dir"));
    let mut f = calico_style();
    f["datastore_type"] = json!("file");
    f["datastore_dir"] = json!("/var/lib/calico-rs/datastore");
    assert_eq!(
        conf(f).unwrap().datastore,
        DatastoreCfg::File("/var/lib/calico-rs/datastore".into())
    );
}

#[test]
fn other_ipam_plugins_are_delegated_with_their_section() {
    let mut v = calico_style();
    v["ipam"] =
        json!({"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]], "anything": 1});
    match conf(v).unwrap().ipam {
        IpamCfg::Delegate { plugin, conf } => {
            assert_eq!(plugin, "host-local");
            assert_eq!(conf["anything"], 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_and_unsupported_keys_are_errors_naming_them() {
    let cases: &[(&str, serde_json::Value, Code, &str)] = &[
        ("top", json!({"mtuu": 1400}), Code::InvalidConfig, "mtuu"),
        (
            "ipam",
            json!({"ipam": {"type": "calico-ipam", "assign_ipv5": true}}),
            Code::InvalidConfig,
            "ipam.assign_ipv5",
        ),
        (
            "container",
            json!({"container_settings": {"allow_ip_fwd": true}}),
            Code::InvalidConfig,
            "container_settings.allow_ip_fwd",
        ),
        (
            "etcd",
            json!({"etcd_endpoints": "http://x"}),
            Code::UnsupportedField,
            "etcd_endpoints",
        ),
        (
            "policy",
            json!({"policy": {"type": "none"}}),
            Code::InvalidConfig,
            "policy",
        ),
        ("mtu", json!({"mtu": 20}), Code::InvalidConfig, "mtu"),
        (
            "datastore",
            json!({"datastore_type": "etcdv3"}),
            Code::InvalidConfig,
            "datastore_type",
        ),
        (
            "file without dir",
            json!({"datastore_type": "file"}),
            Code::InvalidConfig,
            "datastore_dir",
        ),
        (
            "version",
            json!({"cniVersion": "2.0.0"}),
            Code::IncompatibleVersion,
            "cniVersion",
        ),
        (
            "no ipam",
            json!({"ipam": null}),
            Code::InvalidConfig,
            "ipam",
        ),
        (
            "no family",
            json!({"ipam": {"type": "calico-ipam", "assign_ipv4": "false"}}),
            Code::InvalidConfig,
            "assign_ipv4",
        ),
        (
            "subnet",
            json!({"ipam": {"type": "calico-ipam", "subnet": "usePodCidr"}}),
            Code::InvalidConfig,
            "ipam.subnet",
        ),
        (
            "log",
            json!({"log_level": "loud"}),
            Code::InvalidConfig,
            "log_level",
        ),
    ];
    for (what, patch, code, names) in cases {
        let mut v = calico_style();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        let e = conf(v).expect_err(what);
        assert_eq!(e.code, *code, "{what}: {e}");
        assert!(e.msg.contains(names), "{what}: {e}");
    }
    let e = NetConf::parse(b"{nope").unwrap_err();
    assert_eq!(e.code, Code::Decode);
}

fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CniEnv::from_env(&|k| m.get(k).cloned())
}

#[test]
fn the_environment_is_read_as_runtimes_send_it() {
    let e = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ])
    .unwrap();
    assert_eq!(e.command, Command::Add);
    assert_eq!(e.pod, Some(("prod".into(), "web-0".into())));
    assert_eq!(e.handle(), "k8s-pod-network.abc123");
    assert_eq!(e.host_iface(), felix::workload_iface_name("prod", "web-0"));
    assert_eq!(e.path.len(), 2);
    // containerd's DEL has an empty CNI_NETNS.
    let d = env(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", ""),
        ("CNI_IFNAME", "eth0"),
    ])
    .unwrap();
    assert_eq!(d.netns, None);
    assert!(d.host_iface().starts_with("cali"));
    for (bad, var) in [
        (vec![("CNI_COMMAND", "MOVE")], "CNI_COMMAND"),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_CONTAINERID",
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ],
            "CNI_NETNS",
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "a-very-long-ifname"),
            ],
            "CNI_IFNAME",
        ),
        (
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "nokey"),
            ],
            "CNI_ARGS",
        ),
    ] {
        let e = env(&bad).expect_err(var);
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains(var), "{e}");
    }
    assert_eq!(
        env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
        Command::Version
    );
}

#[test]
fn results_and_errors_follow_each_version() {
    let r = AddResult {
        interfaces: vec![
            result::Iface {
                name: "cali0".into(),
                mac: "ee:ee:ee:ee:ee:ee".into(),
                sandbox: None,
            },
            result::Iface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: Some("/run/netns/x".into()),
            },
        ],
        ips: vec![
            ("10.244.0.5/32".parse().unwrap(), 1),
            ("fd00::5/128".parse().unwrap(), 1),
        ],
        routes: vec![(
            "0.0.0.0/0".parse().unwrap(),
            Some("169.254.1.1".parse().unwrap()),
        )],
        dns: json!({}),
    };
    let old = r.to_json("0.3.1");
    assert_eq!(old["ips"][0]["version"], "4");
    assert_eq!(old["ips"][1]["version"], "6");
    let new = r.to_json("1.0.0");
    assert!(new["ips"][0].get("version").is_none());
    assert_eq!(new["ips"][0]["interface"], 1);
    assert_eq!(new["interfaces"][1]["sandbox"], "/run/netns/x");
    assert!(new["interfaces"][0].get("sandbox").is_none());
    assert_eq!(new["routes"][0]["gw"], "169.254.1.1");
    let v = result::version_json("1.1.0");
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "0.4.0"));
    let e: serde_json::Value = serde_json::from_str(
        &CniError::new(Code::InvalidConfig, "mtu: bad")
            .with_details("x")
            .to_json("1.0.0"),
    )
    .unwrap();
    assert_eq!(
        e,
        json!({"cniVersion": "1.0.0", "code": 7, "msg": "mtu: bad", "details": "x"})
    );
}

#[test]
fn a_previous_plugins_result_is_passed_on_before_ours() {
    let ours = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cali0"}, {"name": "eth1", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.244.0.5/32", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
        "dns": {},
    });
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "192.168.5.2/24", "interface": 0}],
        "dns": {"nameservers": ["192.168.5.1"]},
    });
    let m = result::merge_prev(&prev, ours.clone()).unwrap();
    let names: Vec<&str> = m["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eth0", "cali0", "eth1"]);
    assert_eq!(m["ips"][0]["interface"], 0, "prev's IP keeps its index");
    assert_eq!(m["ips"][1]["address"], "10.244.0.5/32");
    assert_eq!(
        m["ips"][1]["interface"], 2,
        "ours shifted past prev's interfaces"
    );
    assert_eq!(m["routes"].as_array().unwrap().len(), 1);
    assert_eq!(m["dns"]["nameservers"][0], "192.168.5.1");
    // An empty previous result changes nothing.
    assert_eq!(
        result::merge_prev(&json!({"cniVersion": "1.0.0"}), ours.clone()).unwrap(),
        ours
    );
    // A malformed one is an error naming the field.
    let e = result::merge_prev(&json!({"interfaces": "eth0"}), ours.clone()).unwrap_err();
    assert!(e.contains("prevResult.interfaces"), "{e}");
    assert!(result::merge_prev(&json!([1]), ours).is_err());
}
