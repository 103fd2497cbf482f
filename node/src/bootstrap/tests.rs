use std::collections::HashMap;
use std::net::IpAddr;

use super::autodetect::{Family, Iface, Method};
use super::*;

fn ifaces() -> Vec<Iface> {
    let i = |name: &str, addrs: &[&str]| Iface {
        name: name.into(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    };
    vec![
        i("lo", &["127.0.0.1/8", "::1/128"]),
        i("docker0", &["172.17.0.1/16"]),
        i("cali1234", &["169.254.1.1/32"]),
        i("eth0", &["fe80::1/64", "10.0.0.5/24", "fd00::5/64"]),
        i("eth1", &["192.168.7.9/24"]),
        i("bond0", &["10.9.0.2/16"]),
    ]
}

fn pick(method: &str, family: Family) -> Option<String> {
    let m: Method = method.parse().unwrap();
    let reach = |dest: &str, _: Family| -> Option<IpAddr> {
        (dest == "192.168.7.1").then(|| "192.168.7.9".parse().unwrap())
    };
    let internal: Vec<IpAddr> = vec!["10.9.0.2".parse().unwrap()];
    m.select(family, &ifaces(), &internal, &reach)
        .map(|n| n.to_string())
}

#[test]
fn each_method_picks_the_address_calico_would() {
    assert_eq!(
        pick("first-found", Family::V4).as_deref(),
        Some("10.0.0.5/24")
    );
    assert_eq!(pick("", Family::V6).as_deref(), Some("fd00::5/64"));
    assert_eq!(
        pick("interface=eth1", Family::V4).as_deref(),
        Some("192.168.7.9/24")
    );
    assert_eq!(
        pick("interface=bond.*,eth1", Family::V4).as_deref(),
        Some("192.168.7.9/24")
    );
    // Whole-name match: "eth" alone matches nothing.
    assert_eq!(pick("interface=eth", Family::V4), None);
    assert_eq!(
        pick("skip-interface=eth0", Family::V4).as_deref(),
        Some("192.168.7.9/24")
    );
    assert_eq!(
        pick("can-reach=192.168.7.1", Family::V4).as_deref(),
        Some("192.168.7.9/24")
    );
    assert_eq!(pick("can-reach=8.8.8.8", Family::V4), None);
    assert_eq!(
        pick("cidr=10.9.0.0/16", Family::V4).as_deref(),
        Some("10.9.0.2/16")
    );
    assert_eq!(
        pick("cidr=10.99.0.0/16,192.168.0.0/16", Family::V4).as_deref(),
        Some("192.168.7.9/24")
    );
    assert_eq!(
        pick("kubernetes-internal-ip", Family::V4).as_deref(),
        Some("10.9.0.2/16")
    );
    assert_eq!(pick("kubernetes-internal-ip", Family::V6), None);
}

#[test]
fn bad_methods_are_refused_with_the_reason() {
    for bad in [
        "interface=",
        "interface=(",
        "cidr=10.0.0.0/33",
        "can-reach=",
        "fastest",
    ] {
        assert!(bad.parse::<Method>().is_err(), "{bad} was accepted");
    }
}

fn cfg(vars: &[(&str, &str)]) -> Result<BootstrapCfg, String> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    BootstrapCfg::from_env(&|k| m.get(k).cloned())
}

#[test]
fn settings_are_validated() {
    let c = cfg(&[]).unwrap();
    assert_eq!(c.ip, AddrSetting::Unset);
    assert!(!c.sets_identity());
    assert!(c.pools.is_empty());
    let c = cfg(&[
        ("IP", "10.0.0.7/24"),
        ("IP6", "none"),
        ("AS", "64513"),
        ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
        ("CALICO_IPV4POOL_BLOCK_SIZE", "24"),
    ])
    .unwrap();
    assert_eq!(c.ip, AddrSetting::Addr("10.0.0.7/24".parse().unwrap()));
    assert_eq!(c.ip6, AddrSetting::None);
    assert_eq!(c.as_number, Some(64513));
    assert_eq!(c.pools[0].block_size, 24);
    assert_eq!(c.pools[0].ipip, "Never");
    assert_eq!(cfg(&[("AS", "1.10")]).unwrap().as_number, Some(65546));
    assert!(cfg(&[
        ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
        ("NO_DEFAULT_POOLS", "true")
    ])
    .unwrap()
    .pools
    .is_empty());
    for bad in [
        ("IP", "10.0.0.300"),
        ("IP", "fd00::1"),
        ("IP6", "10.0.0.1"),
        ("AS", "0"),
        ("CALICO_ROUTER_ID", "x"),
        ("NO_DEFAULT_POOLS", "yes"),
        ("IP_AUTODETECTION_METHOD", "interface=("),
        ("CALICO_IPV4POOL_CIDR", "fd00::/48"),
    ] {
        let e = cfg(&[bad]).expect_err(&format!("{bad:?} was accepted"));
        assert!(e.contains(bad.0), "{e}");
    }
    let e = cfg(&[
        ("CALICO_IPV4POOL_CIDR", "10.0.0.0/16"),
        ("CALICO_IPV4POOL_BLOCK_SIZE", "8"),
    ]);
    assert!(e.unwrap_err().contains("BLOCK_SIZE"));
}

#[test]
fn identity_keeps_the_node_address_unless_told() {
    let reach = |_: &str, _: Family| None;
    let c = cfg(&[]).unwrap();
    let cur = (Some("10.1.1.1/24".parse().unwrap()), None);
    let id = identity(&c, cur, false, &ifaces(), &[], &reach).unwrap();
    assert_eq!(id.ipv4, cur.0);
    // On Kubernetes an unset IP with no address on the Node is autodetected.
    let id = identity(&c, (None, None), true, &ifaces(), &[], &reach).unwrap();
    assert_eq!(
        id.ipv4.map(|a| a.to_string()).as_deref(),
        Some("10.0.0.5/24")
    );
    let c = cfg(&[
        ("IP", "autodetect"),
        ("IP_AUTODETECTION_METHOD", "interface=nothing"),
    ])
    .unwrap();
    let e = identity(&c, cur, false, &ifaces(), &[], &reach).unwrap_err();
    assert!(e.contains("IP"), "{e}");
}

#[test]
fn file_startup_writes_the_node_and_creates_the_default_pool_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&[
        ("IP", "10.0.0.7/24"),
        ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
    ])
    .unwrap();
    let done = file_startup(&c, "n1", dir.path()).unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    // A second node starting against the same directory finds the pool.
    let done = file_startup(&c, "n2", dir.path()).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    let ds = crate::datastore::FileDatastore::open(dir.path()).unwrap();
    let s = crate::datastore::Datastore::snapshot(&ds).unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.state.ip_pools.len(), 1);
    assert_eq!(
        s.state.ip_pools["default-ipv4-ippool"].cidr.to_string(),
        "10.244.0.0/16"
    );
    assert_eq!(
        s.state.nodes["n1"]
            .bgp
            .ipv4_address
            .map(|a| a.to_string())
            .as_deref(),
        Some("10.0.0.7/24")
    );
    // Unchanged settings write nothing.
    assert!(file_startup(&c, "n1", dir.path()).unwrap().is_empty());
}
