//! What the fuzzers check, shared by the libFuzzer targets in `node/fuzz/` (which include this file
//! by path) and the bounded loop in `fuzz_tests.rs`, so that CI checks exactly what the long runs
//! check. The includer names the calico-node crate `node` (`use crate as node;` inside the crate,
//! `use calico_node as node;` in the fuzz crate); everything else is an ordinary dependency.
//!
//! - [`datastore`]: bytes -> UTF-8 (lossy) -> `parse_yaml` and `ClusterState::from_yaml` -> for a
//!   few nodes, the calculation step -> felix's policy compiler and renderer. Nothing may panic;
//!   every Calico selector decoded from a document must survive its own round trip; the incremental
//!   compiler must give what a fresh compile gives; a diff of a ruleset against itself is empty.
//! - [`selectors`]: bytes -> the Calico selector parser (the whole text and each line) and, when the
//!   text is YAML for one Kubernetes label selector or a list of them, felix's selector check.
//!   A Calico selector that parses prints (`Display`) text that parses back to an equal value.
//!   felix's selector has no text parser (its `Display` is the canonical name of shared nft sets),
//!   so instead: parsing ignores the order of `matchExpressions`, matching agrees with a direct
//!   reading of the `LabelSelector`, and two selectors have the same canonical text exactly when
//!   they are equal.

use std::collections::{BTreeMap, BTreeSet};

use felix::policy::ir::Ruleset;
use felix::policy::model::{LabelSelector, Labels};
use felix::policy::render::{render_diff, render_full};
use felix::policy::selector::Selector as LabelSel;
use felix::policy::{compile, validate, Compiler, PolicyCfg};

use super::node::calc;
use super::node::datastore::parse::parse_yaml;
use super::node::datastore::{ClusterState, Resource, Selector};

/// Nodes whose view of one state is computed: each costs a calculation and two compiles.
const MAX_NODES: usize = 3;

/// The datastore decoders and what the node does with their output.
pub fn datastore(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_yaml("fuzz.yaml", &text);
    for e in &parsed.errors {
        let _ = e.to_string();
    }
    for (_, r) in &parsed.resources {
        match r {
            Resource::IpPool(p) => calico_round_trip(&p.node_selector),
            Resource::BgpPeer(p) => {
                for s in [&p.node_selector, &p.peer_selector].into_iter().flatten() {
                    calico_round_trip(s);
                }
            }
            Resource::NetworkPolicy(np) => {
                // The policy as the datastore decoded it, through felix's validation.
                if let Ok(p) = &np.policy {
                    let _ = validate::check(p);
                }
            }
            _ => {}
        }
    }

    let (state, errors) = ClusterState::from_yaml("fuzz.yaml", &text);
    for e in &errors {
        let _ = e.to_string();
    }
    // This node's view for the nodes the documents name (local pods come from `spec.nodeName`),
    // and for a node the datastore does not know.
    let mut nodes: BTreeSet<&str> = state.nodes.keys().map(String::as_str).collect();
    nodes.extend(state.pods.values().filter_map(|p| p.node_name.as_deref()));
    let names: Vec<&str> = nodes
        .into_iter()
        .take(MAX_NODES)
        .chain(["not-in-the-datastore"])
        .collect();
    let cfg = PolicyCfg::default();
    let mut compiler = Compiler::new();
    let mut prev = Ruleset::default();
    for node in names {
        let d = calc::desired(&state, node, &[]);
        let _ = calc::routes_input(&d, &BTreeMap::new());
        let fresh = compile(&d.policy);
        let incremental = compiler.compile(d.policy.clone());
        assert_eq!(
            incremental, fresh,
            "node {node}: the incremental compiler differs from a fresh compile"
        );
        let _ = render_full(&cfg, &fresh.ruleset);
        let _ = render_diff(&cfg, &prev, &fresh.ruleset);
        assert!(
            matches!(render_diff(&cfg, &fresh.ruleset, &fresh.ruleset), Ok(None)),
            "node {node}: a ruleset differs from itself"
        );
        prev = fresh.ruleset;
    }
}

/// Both selector parsers.
pub fn selectors(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for t in std::iter::once(&*text).chain(text.lines()) {
        if let Ok(s) = Selector::parse(t) {
            calico_round_trip(&s);
        }
    }

    let list = serde_yaml_ng::from_str::<Vec<LabelSelector>>(&text)
        .or_else(|_| serde_yaml_ng::from_str::<LabelSelector>(&text).map(|s| vec![s]))
        .unwrap_or_default();
    let parsed: Vec<LabelSel> = list.iter().filter_map(label_selector).collect();
    for a in &parsed {
        for b in &parsed {
            assert_eq!(
                a.canonical() == b.canonical(),
                a == b,
                "canonical text {:?} vs {:?}",
                a.canonical(),
                b.canonical()
            );
        }
    }
}

/// A Calico selector's `Display` text parses back to the same selector.
pub fn calico_round_trip(s: &Selector) {
    let shown = s.to_string();
    match Selector::parse(&shown) {
        Ok(back) => assert_eq!(&back, s, "{shown:?} parses to a different selector"),
        Err(e) => panic!("{s:?} prints text that does not parse: {e}"),
    }
    let _ = s.matches(&BTreeMap::new());
}

/// felix's check of one Kubernetes label selector; the checked form if it is valid.
fn label_selector(sel: &LabelSelector) -> Option<LabelSel> {
    let parsed = LabelSel::parse(sel);
    let mut reversed = sel.clone();
    if let Some(e) = &mut reversed.match_expressions {
        e.reverse();
    }
    match (&parsed, LabelSel::parse(&reversed)) {
        (Ok(a), Ok(b)) => assert_eq!(a, &b, "matchExpressions order changed the selector"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("matchExpressions order decides validity: {a:?} / {b:?}"),
    }
    let s = parsed.ok()?;
    for labels in label_sets(sel) {
        assert_eq!(
            s.matches(&labels),
            reference_matches(sel, &labels),
            "{} on {labels:?}",
            s.canonical()
        );
    }
    Some(s)
}

/// `metav1.LabelSelector` semantics read straight off the input.
fn reference_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let found = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => found.is_some_and(|v| values.contains(v)),
                "NotIn" => found.is_none_or(|v| !values.contains(v)),
                "Exists" => found.is_some(),
                _ => found.is_none(),
            }
        })
}

/// Label sets built from the keys and values a selector mentions: none, each key with its first
/// or last value or with `""`, every other key.
fn label_sets(sel: &LabelSelector) -> Vec<Labels> {
    let mut mentioned: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        mentioned.entry(k).or_default().push(v);
    }
    for e in sel.match_expressions.iter().flatten() {
        let vs = mentioned.entry(&e.key).or_default();
        vs.extend(e.values.iter().flatten().map(String::as_str));
    }
    let pick = |value: &dyn Fn(&[&str]) -> String, every: usize| -> Labels {
        mentioned
            .iter()
            .step_by(every)
            .map(|(k, vs)| (k.to_string(), value(vs)))
            .collect()
    };
    let first = |vs: &[&str]| vs.first().copied().unwrap_or("").to_string();
    let last = |vs: &[&str]| vs.last().copied().unwrap_or("").to_string();
    vec![
        Labels::new(),
        pick(&first, 1),
        pick(&last, 1),
        pick(&|_| String::new(), 1),
        pick(&first, 2),
    ]
}
