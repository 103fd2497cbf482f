//! Naming tests: chain names are injective over (namespace, policy).

use std::collections::BTreeSet;

use super::*;
use crate::policy::ir::policy_chain;

fn input(yaml: &str) -> PolicyInput {
    serde_yaml::from_str(yaml).unwrap()
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

/// The case: namespace `a.b` with policy `c` and namespace `a` with policy `b.c` once
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
