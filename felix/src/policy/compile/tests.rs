//! Naming tests: chain names are injective over (namespace, policy), and with a hash that always
//! collides the compiler still gives every distinct selector, block, port list, policy and
//! endpoint its own set or chain — the result equals the normal one up to names.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::policy::ir::policy_chain;

fn input(yaml: &str) -> PolicyInput {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn names_golden() -> PolicyInput {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/policy/golden/names.yaml");
    input(&std::fs::read_to_string(path).unwrap())
}

/// The chain an endpoint's ingress chain jumps to first.
fn first_jump<'a>(rs: &'a Ruleset, iface: &str) -> &'a str {
    match &rs.chains[&rs.to_wl[iface]].rules[0].verdict {
        Verdict::Jump(c) => c,
        v => panic!("{iface}: {v:?}"),
    }
}

/// The issue's case: namespace `a.b` with policy `c` and namespace `a` with policy `b.c` once
/// shared the chain `pi-a.b.c`, so both pods got the first policy's rules.
#[test]
fn dotted_namespace_and_dotted_policy_name_get_their_own_chains() {
    let rs = compile(&names_golden()).ruleset;
    let (ab, a) = (first_jump(&rs, "caliab"), first_jump(&rs, "calia"));
    assert_ne!(ab, a);
    assert_eq!(a, "pi-a.b.c", "a real Kubernetes name stays readable");
    assert!(ab.starts_with("pi-h"), "{ab}");
    let port = |chain: &str| rs.chains[chain].rules[0].matches.clone();
    assert_eq!(port(ab), vec![Match::Port(Proto::Tcp, 80, 80)]);
    assert_eq!(port(a), vec![Match::Port(Proto::Tcp, 81, 81)]);
    assert_eq!(rs.chains[ab].comment, "NetworkPolicy a.b/c ingress");
    assert_eq!(rs.chains[a].comment, "NetworkPolicy a/b.c ingress");
}

#[test]
fn policy_chain_names_are_injective() {
    let long = "x".repeat(240);
    let keys: Vec<(&str, &str)> = vec![
        ("a", "b.c"),
        ("a.b", "c"),
        ("a", "b-c"),
        ("a-b", "c"),
        ("a/b", "c"),
        ("a", "b/c"),
        ("a", "b_c"),
        ("a_b", "c"),
        ("", "a.b"),
        ("a.", "b"),
        ("a", ".b"),
        ("a", &long),
        ("a.", &long),
    ];
    for ingress in [true, false] {
        let names: BTreeSet<String> = keys
            .iter()
            .map(|(ns, n)| policy_chain(ingress, ns, n))
            .collect();
        assert_eq!(names.len(), keys.len(), "{names:?}");
        assert!(names.iter().all(|n| n.len() <= 255));
    }
    // Readable where Kubernetes names allow it; the prefix tells the directions apart.
    assert_eq!(policy_chain(true, "prod", "web.v2"), "pi-prod.web.v2");
    assert_eq!(policy_chain(false, "prod", "web.v2"), "pe-prod.web.v2");
}

/// Everything about `rs` except the names it picked: each chain by what it stands for (its
/// comment, or the interface it serves), each rule with its sets replaced by their comment and
/// elements, jumps by the target's identity.
fn without_names(rs: &Ruleset) -> BTreeMap<String, Vec<String>> {
    let mut id: BTreeMap<&str, String> = BTreeMap::new();
    for (map, dir) in [(&rs.to_wl, "to"), (&rs.from_wl, "from")] {
        for (iface, chain) in map {
            assert!(
                id.insert(chain, format!("{dir} {iface}")).is_none(),
                "{chain} shared"
            );
        }
    }
    for (name, c) in &rs.chains {
        if !c.comment.is_empty() {
            assert!(id.insert(name, c.comment.clone()).is_none(), "{name}");
        }
    }
    let set = |name: &str| {
        let s = &rs.sets[name];
        format!("[{} {:?}: {:?}]", s.comment, s.kind, s.elements)
    };
    let mut out = BTreeMap::new();
    for (name, c) in &rs.chains {
        let rules = c
            .rules
            .iter()
            .map(|r| {
                let m: Vec<String> = r
                    .matches
                    .iter()
                    .map(|m| match m {
                        Match::AddrIn {
                            family,
                            dir,
                            set: s,
                        } => {
                            format!("{family:?} {dir:?} {}", set(s))
                        }
                        Match::PortIn(p, s) => format!("{p:?} {}", set(s)),
                        Match::NamedPort {
                            family,
                            proto,
                            set: s,
                        } => {
                            format!("{family:?} {proto:?} {}", set(s))
                        }
                        other => format!("{other:?}"),
                    })
                    .collect();
                let v = match &r.verdict {
                    Verdict::Jump(c) => format!("jump {}", id[c.as_str()]),
                    v => format!("{v:?}"),
                };
                format!("{} -> {v} ({:?})", m.join(" "), r.comment)
            })
            .collect();
        out.insert(id[name.as_str()].clone(), rules);
    }
    out
}

const COLLIDING: &str = r#"
namespaces:
- {name: x, labels: {team: a}}
- {name: y, labels: {team: b}}
- {name: d.e}
pods:
- {namespace: x, name: a, ips: [10.0.0.1, "fd00::1"], labels: {app: a}}
- {namespace: x, name: b, ips: [10.0.0.2], labels: {app: b}}
- {namespace: y, name: c, ips: [10.0.0.3], labels: {app: a}}
- {namespace: d.e, name: f, ips: [10.0.0.4], labels: {app: f}}
endpoints:
- {iface: calia, namespace: x, name: a, ips: [10.0.0.1, "fd00::1"], labels: {app: a}}
- {iface: "cali@b", namespace: x, name: b, ips: [10.0.0.2], labels: {app: b}}
- {iface: "cali@f", namespace: d.e, name: f, ips: [10.0.0.4], labels: {app: f}}
policies:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: one, namespace: x}
  spec:
    podSelector: {matchLabels: {app: a}}
    policyTypes: [Ingress, Egress]
    ingress:
    - from:
      - podSelector: {matchLabels: {app: a}}
      - podSelector: {matchLabels: {app: b}}
      - namespaceSelector: {matchLabels: {team: b}}
      - ipBlock: {cidr: 192.168.0.0/16}
      - ipBlock: {cidr: 172.16.0.0/12, except: [172.16.1.0/24]}
      ports:
      - {protocol: TCP, port: 1001}
      - {protocol: TCP, port: 1003}
      - {protocol: TCP, port: 1005}
      - {protocol: TCP, port: 1007}
      - {protocol: TCP, port: 1009}
      - {protocol: TCP, port: 1011}
      - {protocol: TCP, port: 1013}
      - {protocol: TCP, port: 1015}
      - {protocol: TCP, port: 1017}
      - {protocol: TCP, port: 1019}
    egress:
    - to: [{ipBlock: {cidr: "fd00::/16"}}, {ipBlock: {cidr: "fd01::/16"}}]
      ports:
      - {protocol: UDP, port: 2001}
      - {protocol: UDP, port: 2003}
      - {protocol: UDP, port: 2005}
      - {protocol: UDP, port: 2007}
      - {protocol: UDP, port: 2009}
      - {protocol: UDP, port: 2011}
      - {protocol: UDP, port: 2013}
      - {protocol: UDP, port: 2015}
      - {protocol: UDP, port: 2017}
      - {protocol: UDP, port: 2019}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: g.h, namespace: d.e}
  spec:
    podSelector: {}
    ingress:
    - from: [{podSelector: {matchLabels: {app: f}}}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: i, namespace: d.e}
  spec:
    podSelector: {}
    ingress:
    - from: [{namespaceSelector: {}}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: two, namespace: x}
  spec:
    podSelector: {matchLabels: {app: b}}
    ingress:
    - from: [{podSelector: {matchLabels: {app: a}}}]
"#;

/// With a hash that maps everything to zeros, every hashed name collides: sets (`sel-`, `net-`,
/// `ports-h`), policy chains of a dotted namespace and endpoint chains of odd interfaces. Reuse
/// goes by content, so the ruleset is the normal one under other names.
#[test]
fn colliding_hashes_never_share_a_set_or_chain() {
    let input = input(COLLIDING);
    let normal = compile(&input);
    assert!(normal.errors.is_empty(), "{:?}", normal.errors);
    let zeros: NameHash = |_, n| "0".repeat(n);
    let colliding = compile_hashed(&input, &mut SetCache::default(), zeros);
    let (a, b) = (&normal.ruleset, &colliding.ruleset);
    assert_eq!(without_names(b), without_names(a));
    assert_eq!(b.sets.len(), a.sets.len());
    assert_eq!(b.chains.len(), a.chains.len());
    assert_eq!(colliding.stats, normal.stats);
    // The collisions did happen and were resolved with suffixes.
    let names: Vec<&str> = b
        .sets
        .keys()
        .chain(b.chains.keys())
        .map(|s| s.as_str())
        .collect();
    for want in [
        "sel-000000000000-v4",
        "sel-000000000000-2-v4",
        "sel-000000000000-3-v6",
        "net-000000000000-v4",
        "net-000000000000-2-v4",
        "ports-h000000000000",
        "ports-h000000000000-2",
        "pi-h0000000000000000",
        "pi-h0000000000000000-2",
        "tw-h000000000000",
        "tw-h000000000000-2",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // Each set holds what its own selector selects.
    let sel = |comment: &str| -> Vec<String> {
        b.sets
            .values()
            .filter(|s| s.comment == comment)
            .flat_map(|s| s.elements.iter().map(|e| e.to_string()))
            .collect()
    };
    assert_eq!(sel("namespace x; pods app=a"), ["10.0.0.1", "fd00::1"]);
    assert_eq!(sel("namespace x; pods app=b"), ["10.0.0.2"]);
    assert_eq!(sel("namespaces team=b; pods {}"), ["10.0.0.3"]);
}

/// The name table itself: a key keeps its name; another key with the same base gets a suffix.
#[test]
fn names_are_reused_by_key_only() {
    let mut n: Names<&str> = Names::default();
    assert_eq!(n.claim("a", "x".into()), "x");
    assert_eq!(n.claim("b", "x".into()), "x-2");
    assert_eq!(n.claim("a", "x".into()), "x");
    assert_eq!(n.claim("c", "x".into()), "x-3");
    assert_eq!(n.claim("d", "x-2".into()), "x-2-2");
    assert_eq!(n.get(&"b"), Some("x-2"));
    assert_eq!(n.get(&"e"), None);
}
