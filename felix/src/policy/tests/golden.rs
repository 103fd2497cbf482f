//! Compiler tests: golden rulesets, order independence, idempotence, incremental diffs.
//!
//! Each `golden/NAME.yaml` is a [`PolicyInput`]; `golden/NAME.nft` is the full script the compiler
//! and renderer must produce for it, with rejected inputs listed as `#` comments on top (so the file
//! is still a valid `nft -f` script; the integration tests load every golden file into a real
//! kernel). Diff goldens (`NAME.diff.nft`) hold the incremental script between two inputs.
//! Run with `UPDATE_GOLDEN=1` to rewrite the files after an intended change, then review the diff.

use std::path::{Path, PathBuf};

use crate::policy::compile::compile;
use crate::policy::model::{NetworkPolicy, PolicyInput};
use crate::policy::render::{render_diff, render_full, EndpointToHostAction};
use crate::policy::PolicyCfg;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/policy/golden")
}

fn load(name: &str) -> PolicyInput {
    let path = golden_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn full_text(input: &PolicyInput) -> String {
    full_text_with(&PolicyCfg::default(), input)
}

fn full_text_with(cfg: &PolicyCfg, input: &PolicyInput) -> String {
    let c = compile(input);
    let mut out = String::new();
    for e in &c.errors {
        out.push_str(&format!("# error: {e}\n"));
    }
    out.push_str(&render_full(cfg, &c.ruleset));
    out
}

/// Every input; `host` is also rendered per [`EndpointToHostAction`] (see `golden_host_actions`).
const INPUTS: [&str; 5] = ["basic", "failclosed", "egress-named", "names", "host"];

fn check_golden(file: &str, got: &str) {
    let path = golden_dir().join(file);
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    if want != got {
        let mut msg = format!("{file} differs from the compiler's output:\n");
        for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
            if w != g {
                msg.push_str(&format!("line {}:\n  want: {w}\n  got:  {g}\n", i + 1));
            }
        }
        msg.push_str(&format!(
            "({} lines wanted, {} got; UPDATE_GOLDEN=1 rewrites)",
            want.lines().count(),
            got.lines().count()
        ));
        panic!("{msg}");
    }
}

#[test]
fn golden_full_rulesets() {
    for name in INPUTS.into_iter().filter(|n| *n != "host") {
        check_golden(&format!("{name}.nft"), &full_text(&load(name)));
    }
}

/// One golden per defaultEndpointToHostAction (`host.drop.nft`, ...; the default, Accept, is what
/// every other golden shows). Only the `host-in` chain depends on the action.
#[test]
fn golden_host_actions() {
    let input = load("host");
    let mut host_in = Vec::new();
    for action in EndpointToHostAction::ALL {
        let cfg = PolicyCfg {
            endpoint_to_host: action,
            ..PolicyCfg::default()
        };
        let text = full_text_with(&cfg, &input);
        let file = format!("host.{}.nft", action.as_str().to_ascii_lowercase());
        check_golden(&file, &text);
        let (before, rest) = text.split_once("\tchain host-in {").unwrap();
        let (chain, after) = rest.split_once("\t}").unwrap();
        host_in.push((
            action,
            before.to_string(),
            chain.to_string(),
            after.to_string(),
        ));
    }
    assert_eq!(
        full_text(&input),
        full_text_with(
            &PolicyCfg {
                endpoint_to_host: EndpointToHostAction::Accept,
                ..PolicyCfg::default()
            },
            &input
        )
    );
    for (action, before, chain, after) in &host_in[1..] {
        assert_eq!(*before, host_in[0].1, "{action}: only host-in may differ");
        assert_eq!(*after, host_in[0].3, "{action}: only host-in may differ");
        assert_ne!(*chain, host_in[0].2, "{action}");
    }
    // Drop leaves out the egress policy (it cannot change the outcome); the others walk it.
    for (action, _, chain, _) in &host_in {
        let walks = chain.contains("iifname vmap @from-wl");
        assert_eq!(walks, *action != EndpointToHostAction::Drop, "{action}");
        // Replies to the node's own connections and IPv6 ND come before any drop.
        let est = chain.find("ct state established,related accept").unwrap();
        let nd = chain.find("nd-neighbor-solicit").unwrap();
        let last = chain.find("comment \"defaultEndpointToHostAction").unwrap();
        assert!(est < nd && nd < last, "{action}: {chain}");
    }
}

#[test]
fn endpoint_to_host_action_parses_calico_spellings_only() {
    use EndpointToHostAction::*;
    for (text, want) in [
        ("Drop", Drop),
        ("drop", Drop),
        ("DROP", Drop),
        ("Return", Return),
        ("rEtUrN", Return),
        ("Accept", Accept),
        ("accept", Accept),
    ] {
        assert_eq!(text.parse::<EndpointToHostAction>(), Ok(want), "{text}");
    }
    for a in EndpointToHostAction::ALL {
        assert_eq!(a.to_string().parse::<EndpointToHostAction>(), Ok(a));
    }
    for bad in [
        "",
        "Allow",
        "Deny",
        "Reject",
        " Drop",
        "Accept ",
        "Drop,Accept",
    ] {
        let e = bad.parse::<EndpointToHostAction>().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "defaultEndpointToHostAction: {bad:?} is not one of Drop, Return, Accept (case-insensitive)"
            )
        );
    }
    assert_eq!(PolicyCfg::default().endpoint_to_host, Accept);
}

#[test]
fn golden_label_change_is_set_elements_only() {
    let old = load("basic");
    let mut new = old.clone();
    // dev/other becomes a tool: joins the "team b, app in (tool)" set; nothing else changes.
    for p in &mut new.pods {
        if p.name == "other" {
            p.labels.insert("app".into(), "tool".into());
        }
    }
    let cfg = PolicyCfg::default();
    let (a, b) = (compile(&old).ruleset, compile(&new).ruleset);
    let (script, st) = render_diff(&cfg, &a, &b).unwrap().unwrap();
    assert_eq!(st.elements_added, 1);
    assert_eq!(st.elements_added + st.elements_removed, 1, "{st:?}");
    assert_eq!(st.chains_added + st.chains_changed + st.chains_removed, 0);
    check_golden("basic.label-change.diff.nft", &script);
}

#[test]
fn golden_policy_edit_rewrites_one_chain() {
    let old = load("basic");
    let mut new = old.clone();
    // Drop the ipBlock peer of prod/web and add a new endpoint.
    let web = new
        .policies
        .iter_mut()
        .find(|p| p.metadata.name == "web")
        .unwrap();
    web.spec.ingress.as_mut().unwrap()[0]
        .from
        .as_mut()
        .unwrap()
        .pop();
    let mut ep = new.endpoints[0].clone();
    ep.iface = "cali3333333333c".into();
    ep.pod.name = "web-2".into();
    ep.pod.ips = vec!["10.0.1.3".parse().unwrap()];
    new.endpoints.push(ep);
    let cfg = PolicyCfg::default();
    let (a, b) = (compile(&old).ruleset, compile(&new).ruleset);
    let (script, st) = render_diff(&cfg, &a, &b).unwrap().unwrap();
    assert_eq!(st.chains_changed, 1, "{st:?}");
    assert_eq!(
        st.chains_added, 2,
        "two endpoint chains for the new pod: {st:?}"
    );
    assert_eq!(st.sets_removed, 1, "the ipBlock set: {st:?}");
    check_golden("basic.policy-edit.diff.nft", &script);
    // And back: the reverse diff removes exactly what was added.
    let (_, back) = render_diff(&cfg, &b, &a).unwrap().unwrap();
    assert_eq!(back.chains_removed, 2);
    assert_eq!(back.sets_added, 1);
}

/// Deterministic permutations of every list in the input.
fn permutations(input: &PolicyInput) -> Vec<PolicyInput> {
    let mut out = Vec::new();
    for k in 0..4usize {
        let mut p = input.clone();
        fn perm<T>(v: &mut [T], k: usize) {
            if v.is_empty() {
                return;
            }
            match k % 4 {
                0 => v.reverse(),
                1 => v.rotate_left(1 % v.len()),
                2 => {
                    v.reverse();
                    v.rotate_right(2 % v.len());
                }
                _ => v.swap(0, v.len() - 1),
            }
        }
        perm(&mut p.pods, k);
        perm(&mut p.endpoints, k + 1);
        perm(&mut p.namespaces, k + 2);
        perm(&mut p.policies, k + 3);
        for pol in &mut p.policies {
            if let Some(rules) = &mut pol.spec.ingress {
                for r in rules {
                    if let Some(ports) = &mut r.ports {
                        perm(ports, k);
                    }
                }
            }
        }
        for pod in &mut p.pods {
            perm(&mut pod.ips, k);
        }
        out.push(p);
    }
    out
}

#[test]
fn result_does_not_depend_on_input_order() {
    for name in INPUTS {
        let input = load(name);
        let want = compile(&input);
        for p in permutations(&input) {
            assert_ne!(p, input);
            let got = compile(&p);
            assert_eq!(got.ruleset, want.ruleset, "{name}");
            assert_eq!(got.errors, want.errors, "{name}");
            assert_eq!(got.stats, want.stats, "{name}");
        }
    }
}

#[test]
fn reapplying_the_same_input_sends_nothing() {
    let cfg = PolicyCfg::default();
    for name in INPUTS {
        let input = load(name);
        let a = compile(&input).ruleset;
        let b = compile(&input).ruleset;
        assert_eq!(render_diff(&cfg, &a, &b).unwrap(), None, "{name}");
        for p in permutations(&input) {
            assert_eq!(
                render_diff(&cfg, &a, &compile(&p).ruleset).unwrap(),
                None,
                "{name}"
            );
        }
    }
}

#[test]
fn diff_from_empty_builds_everything_and_back_removes_it() {
    let cfg = PolicyCfg::default();
    let full = compile(&load("basic")).ruleset;
    let empty = crate::policy::ir::Ruleset::default();
    let (_, up) = render_diff(&cfg, &empty, &full).unwrap().unwrap();
    assert_eq!(up.sets_added, full.sets.len());
    assert_eq!(up.chains_added, full.chains.len());
    let (down_script, down) = render_diff(&cfg, &full, &empty).unwrap().unwrap();
    assert_eq!(down.sets_removed, full.sets.len());
    assert_eq!(down.chains_removed, full.chains.len());
    // Chains are flushed before any is deleted (endpoint chains jump to policy chains).
    let first_delete = down_script.find("delete chain").unwrap();
    assert!(down_script.rfind("flush chain").unwrap() < first_delete);
}

#[test]
fn unselected_pods_are_open_and_selected_ones_deny_by_default() {
    let c = compile(&load("basic"));
    let rs = &c.ruleset;
    // dev/other is selected by nothing: no chains, no map elements.
    assert!(!rs.to_wl.contains_key("cali2222222222b"));
    assert!(!rs.from_wl.contains_key("cali2222222222b"));
    let tw = &rs.chains["tw-cali1111111111a"];
    assert_eq!(
        tw.rules.last().unwrap().verdict,
        crate::policy::ir::Verdict::Deny
    );
    assert_eq!(c.stats.isolated_ingress, 1);
    assert_eq!(c.stats.isolated_egress, 1);
    assert_eq!(c.stats.compiled, 3);
}

#[test]
fn fail_closed_only_where_the_bad_policy_applies() {
    let c = compile(&load("failclosed"));
    assert_eq!(c.stats.rejected, 2);
    let texts: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        texts,
        [
            r#"NetworkPolicy x/bad-cidr: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR "10.0.0.0/33""#,
            r#"NetworkPolicy x/bad-proto: spec.egress[0].ports[0].protocol: unknown protocol "ICMP" (want TCP, UDP or SCTP)"#,
        ]
    );
    let rs = &c.ruleset;
    // a: ingress denied (bad-cidr covers ingress); egress open.
    assert_eq!(rs.chains["tw-calia"].rules.len(), 1);
    assert!(!rs.from_wl.contains_key("calia"));
    // b: egress denied (bad-proto); ingress still governed by allow-b.
    assert_eq!(rs.chains["fw-calib"].rules.len(), 1);
    assert!(rs.chains["tw-calib"]
        .rules
        .iter()
        .any(|r| r.verdict == crate::policy::ir::Verdict::Jump("pi-x.allow-b".into())));
}

#[test]
fn policies_parse_from_json_too() {
    let json = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
        "metadata":{"name":"np","namespace":"x"},
        "spec":{"podSelector":{},"ingress":[{"ports":[{"port":"http","protocol":"SCTP"}]}]}}"#;
    let p: NetworkPolicy = serde_json::from_str(json).unwrap();
    let input = PolicyInput {
        policies: vec![p],
        ..load("failclosed")
    };
    let c = compile(&input);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let text = render_full(&PolicyCfg::default(), &c.ruleset);
    assert!(
        text.contains("ip daddr . sctp dport @npl-sctp-http-v4 accept"),
        "{text}"
    );
}
