//! NetworkPolicy validation: the lenient Kubernetes shapes of [`super::model`] become checked,
//! typed policies, or a list of [`InputError`]s naming each bad field.
//!
//! The rules follow the API server's validation and defaulting:
//! - `policyTypes`: `Ingress` / `Egress`; when absent (or empty) it is `Ingress`, plus `Egress` if
//!   the policy has at least one egress rule. Rules of a direction not in `policyTypes` are ignored.
//! - A peer has `ipBlock` alone, or `podSelector` and/or `namespaceSelector`; never both kinds, never
//!   none. `podSelector` alone means pods of the policy's own namespace.
//! - `ipBlock.cidr` is a CIDR (host bits are cleared, as the API server tolerates them); each
//!   `except` is of the same family and strictly inside it.
//! - `ports[].protocol` is `TCP` (default), `UDP` or `SCTP` (case-sensitive, as in Kubernetes);
//!   `port` is 1-65535 or an IANA service name (1-15 of `[a-z0-9-]`, at least one letter, no
//!   leading, trailing or double `-`); `endPort` needs a numeric `port` and is `>= port`.
//!
//! A policy with any error is *failed*: [`FailedPolicy`] keeps what could still be read — which pods
//! it selects (all pods of its namespace if the selector itself is bad) and which directions it
//! covers (both if `policyTypes` is bad) — so the compiler can fail those pods closed.

use std::fmt;

use ipnet::IpNet;

use super::error::InputError;
use super::model::{IntOrString, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use super::selector::{FieldError, Selector};

/// Transport protocol of a port rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP (the Kubernetes default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// Parse the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_k8s(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// nftables keyword (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nft())
    }
}

/// One checked entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// Every port of the protocol (`port` absent).
    Any(Proto),
    /// `port` .. `endPort` (a single port has both ends equal).
    Range(Proto, u16, u16),
    /// A container port name, resolved against each target pod.
    Named(Proto, String),
}

/// Which namespaces a pod peer draws from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NsScope {
    /// The policy's own namespace (peer without `namespaceSelector`).
    Own(String),
    /// Namespaces matching `namespaceSelector`.
    Selected(Selector),
}

/// `ipBlock`: `net` minus `except`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    /// The CIDR (host bits cleared).
    pub net: IpNet,
    /// Excluded CIDRs, sorted, each inside `net`.
    pub except: Vec<IpNet>,
}

impl Block {
    /// `net` minus `except`, as disjoint prefixes in address order (usable as interval-set elements).
    pub fn prefixes(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        subtract(self.net, &self.except, &mut out);
        out
    }
}

fn subtract(net: IpNet, except: &[IpNet], out: &mut Vec<IpNet>) {
    if except.iter().any(|e| e.contains(&net)) {
        return;
    }
    if !except.iter().any(|e| net.contains(e)) {
        out.push(net);
        return;
    }
    // Some exception lies strictly inside: split in halves and recurse.
    if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
        for h in halves {
            subtract(h, except, out);
        }
    }
}

/// A checked peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods selected by `pods` in the namespaces of `namespaces`.
    Pods {
        /// Namespace scope.
        namespaces: NsScope,
        /// Pod selector (`{}` when only `namespaceSelector` was given).
        pods: Selector,
    },
    /// Addresses of an `ipBlock`.
    Block(Block),
}

/// A checked ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedRule {
    /// `None`: every peer (`from`/`to` absent or empty). Otherwise OR of the peers.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port. Otherwise OR of the ports.
    pub ports: Option<Vec<PortSpec>>,
}

/// A policy that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `podSelector`.
    pub selector: Selector,
    /// Ingress rules if the policy has type `Ingress` (an empty list denies all ingress).
    pub ingress: Option<Vec<CheckedRule>>,
    /// Egress rules if the policy has type `Egress`.
    pub egress: Option<Vec<CheckedRule>>,
}

/// What is still known about a policy that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its `podSelector`, or `None` if that is what is broken (then: every pod of the namespace).
    pub selector: Option<Selector>,
    /// Whether it covers ingress.
    pub ingress: bool,
    /// Whether it covers egress.
    pub egress: bool,
}

/// Result of validating one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Valid.
    Ok(CheckedPolicy),
    /// Invalid: fail its pods closed, report the errors.
    Failed(FailedPolicy, Vec<InputError>),
}

struct Ctx<'a> {
    ns: &'a str,
    name: &'a str,
    errs: Vec<InputError>,
}

impl Ctx<'_> {
    fn err(&mut self, field: impl Into<String>, reason: String) {
        self.errs
            .push(InputError::policy(self.ns, self.name, field, reason));
    }

    fn selector(&mut self, field: &str, sel: &super::model::LabelSelector) -> Option<Selector> {
        match Selector::parse(sel) {
            Ok(s) => Some(s),
            Err(list) => {
                for FieldError { field: f, reason } in list {
                    self.err(format!("{field}.{f}"), reason);
                }
                None
            }
        }
    }
}

/// Validate one policy.
pub fn check(p: &NetworkPolicy) -> Checked {
    let ns = p.namespace();
    let mut cx = Ctx {
        ns,
        name: &p.metadata.name,
        errs: Vec::new(),
    };
    if p.metadata.name.is_empty() {
        cx.err("metadata.name", "must not be empty".to_string());
    }
    let spec = &p.spec;
    let selector = cx.selector("spec.podSelector", &spec.pod_selector);

    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (mut ingress, mut egress, mut types_ok) = (false, false, true);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            ingress = true;
            egress = has_egress_rules;
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        types_ok = false;
                        cx.err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (want Ingress or Egress)"),
                        );
                    }
                }
            }
        }
    }

    let ingress_rules = ingress.then(|| {
        let list = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| (r.from.as_ref(), r.ports.as_ref()))
            .collect();
        check_rules(&mut cx, "ingress", list)
    });
    let egress_rules = egress.then(|| {
        let list = spec
            .egress
            .iter()
            .flatten()
            .map(|r| (r.to.as_ref(), r.ports.as_ref()))
            .collect();
        check_rules(&mut cx, "egress", list)
    });

    if cx.errs.is_empty() {
        if let Some(selector) = selector {
            return Checked::Ok(CheckedPolicy {
                namespace: ns.to_string(),
                name: p.metadata.name.clone(),
                selector,
                ingress: ingress_rules,
                egress: egress_rules,
            });
        }
    }
    let errs = std::mem::take(&mut cx.errs);
    Checked::Failed(
        FailedPolicy {
            namespace: ns.to_string(),
            name: p.metadata.name.clone(),
            selector,
            ingress: ingress || !types_ok,
            egress: egress || !types_ok,
        },
        errs,
    )
}

/// A rule's peers and ports, before checking.
type RawRule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

fn check_rules(cx: &mut Ctx, dir: &str, list: Vec<RawRule>) -> Vec<CheckedRule> {
    let peer_field = if dir == "ingress" { "from" } else { "to" };
    let mut out = Vec::new();
    for (i, (peers, ports)) in list.into_iter().enumerate() {
        let peers = match peers {
            Some(v) if !v.is_empty() => Some(
                v.iter()
                    .enumerate()
                    .filter_map(|(j, p)| {
                        check_peer(cx, &format!("spec.{dir}[{i}].{peer_field}[{j}]"), p)
                    })
                    .collect(),
            ),
            _ => None,
        };
        let ports = match ports {
            Some(v) if !v.is_empty() => Some(
                v.iter()
                    .enumerate()
                    .filter_map(|(j, p)| check_port(cx, &format!("spec.{dir}[{i}].ports[{j}]"), p))
                    .collect(),
            ),
            _ => None,
        };
        out.push(CheckedRule { peers, ports });
    }
    out
}

fn check_peer(cx: &mut Ctx, at: &str, peer: &NetworkPolicyPeer) -> Option<Peer> {
    let has_sel = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    if let Some(block) = &peer.ip_block {
        if has_sel {
            cx.err(
                at.to_string(),
                "ipBlock cannot be combined with podSelector or namespaceSelector".to_string(),
            );
            return None;
        }
        return check_block(cx, &format!("{at}.ipBlock"), block);
    }
    if !has_sel {
        cx.err(
            at.to_string(),
            "must specify podSelector, namespaceSelector or ipBlock".to_string(),
        );
        return None;
    }
    let pods = match &peer.pod_selector {
        Some(s) => cx.selector(&format!("{at}.podSelector"), s)?,
        None => Selector::all(),
    };
    let namespaces = match &peer.namespace_selector {
        Some(s) => NsScope::Selected(cx.selector(&format!("{at}.namespaceSelector"), s)?),
        None => NsScope::Own(cx.ns.to_string()),
    };
    Some(Peer::Pods { namespaces, pods })
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    if !s.contains('/') {
        return None;
    }
    s.parse::<IpNet>().ok().map(|n| n.trunc())
}

fn check_block(cx: &mut Ctx, at: &str, b: &super::model::IpBlock) -> Option<Peer> {
    let Some(net) = parse_cidr(&b.cidr) else {
        cx.err(format!("{at}.cidr"), format!("invalid CIDR {:?}", b.cidr));
        return None;
    };
    let mut except = Vec::new();
    let mut ok = true;
    for (i, e) in b.except.iter().enumerate() {
        let field = format!("{at}.except[{i}]");
        match parse_cidr(e) {
            None => {
                cx.err(field, format!("invalid CIDR {e:?}"));
                ok = false;
            }
            Some(x) if !net.contains(&x) || x.prefix_len() <= net.prefix_len() => {
                cx.err(field, format!("{x} is not strictly inside cidr {net}"));
                ok = false;
            }
            Some(x) => except.push(x),
        }
    }
    except.sort();
    except.dedup();
    ok.then_some(Peer::Block(Block { net, except }))
}

/// An IANA service name as Kubernetes accepts for a named port.
pub fn valid_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

fn check_port(cx: &mut Ctx, at: &str, p: &NetworkPolicyPort) -> Option<PortSpec> {
    let proto = match p.protocol.as_deref() {
        None => Proto::Tcp,
        Some(s) => match Proto::from_k8s(s) {
            Some(x) => x,
            None => {
                cx.err(
                    format!("{at}.protocol"),
                    format!("unknown protocol {s:?} (want TCP, UDP or SCTP)"),
                );
                return None;
            }
        },
    };
    let in_range = |n: i64| (1..=65535).contains(&n);
    match (&p.port, p.end_port) {
        (None, None) => Some(PortSpec::Any(proto)),
        (None, Some(_)) => {
            cx.err(
                format!("{at}.endPort"),
                "endPort requires a numeric port".to_string(),
            );
            None
        }
        (Some(IntOrString::String(name)), end) => {
            if !valid_port_name(name) {
                cx.err(format!("{at}.port"), format!("invalid port name {name:?}"));
                return None;
            }
            if end.is_some() {
                cx.err(
                    format!("{at}.endPort"),
                    "endPort cannot be used with a named port".to_string(),
                );
                return None;
            }
            Some(PortSpec::Named(proto, name.clone()))
        }
        (Some(IntOrString::Int(n)), end) => {
            if !in_range(*n) {
                cx.err(
                    format!("{at}.port"),
                    format!("port {n} out of range 1-65535"),
                );
                return None;
            }
            let last = end.unwrap_or(*n);
            if !in_range(last) || last < *n {
                cx.err(
                    format!("{at}.endPort"),
                    format!("endPort {last} must be in {n}-65535"),
                );
                return None;
            }
            Some(PortSpec::Range(proto, *n as u16, last as u16))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn errors(yaml: &str) -> Vec<String> {
        match check(&policy(yaml)) {
            Checked::Failed(_, e) => e.iter().map(|e| e.to_string()).collect(),
            Checked::Ok(_) => vec![],
        }
    }

    #[test]
    fn error_names_policy_and_field() {
        let e = errors(
            r#"
metadata: {name: web, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/33}
"#,
        );
        assert_eq!(
            e,
            vec![
                r#"NetworkPolicy prod/web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "10.0.0.0/33""#
            ]
        );
    }

    #[test]
    fn policy_types_default() {
        let only_ingress = policy("metadata: {name: a}\nspec: {podSelector: {}, egress: []}");
        let Checked::Ok(p) = check(&only_ingress) else {
            panic!()
        };
        assert!(p.ingress.is_some() && p.egress.is_none());
        let both = policy("metadata: {name: a}\nspec: {podSelector: {}, egress: [{}]}");
        let Checked::Ok(p) = check(&both) else {
            panic!()
        };
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress.map(|e| e.len()), Some(1));
        let egress_only = policy(
            "metadata: {name: a}\nspec: {podSelector: {}, policyTypes: [Egress], ingress: [{}]}",
        );
        let Checked::Ok(p) = check(&egress_only) else {
            panic!()
        };
        assert!(
            p.ingress.is_none(),
            "ingress rules ignored without the type"
        );
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn bad_fields_are_all_reported() {
        let e = errors(
            r#"
metadata: {name: bad, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Sideways]
  ingress:
  - from:
    - {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16, 10.0.0.0/8, nope]}
      podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16, 10.0.0.0/8, nope]}
    ports:
    - {protocol: ICMP}
    - {port: 0}
    - {port: 80, endPort: 79}
    - {port: Http}
    - {port: http, endPort: 90}
    - {endPort: 90}
"#,
        );
        let want = [
            "spec.policyTypes[1]: unknown policy type \"Sideways\"",
            "spec.ingress[0].from[0]: must specify",
            "spec.ingress[0].from[1]: ipBlock cannot be combined",
            "spec.ingress[0].from[2].ipBlock.except[0]: 11.0.0.0/16 is not strictly inside",
            "spec.ingress[0].from[2].ipBlock.except[1]: 10.0.0.0/8 is not strictly inside",
            "spec.ingress[0].from[2].ipBlock.except[2]: invalid CIDR \"nope\"",
            "spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\"",
            "spec.ingress[0].ports[1].port: port 0 out of range",
            "spec.ingress[0].ports[2].endPort: endPort 79 must be in 80-65535",
            "spec.ingress[0].ports[3].port: invalid port name \"Http\"",
            "spec.ingress[0].ports[4].endPort: endPort cannot be used with a named port",
            "spec.ingress[0].ports[5].endPort: endPort requires a numeric port",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, w) in e.iter().zip(want) {
            assert!(
                got.starts_with("NetworkPolicy x/bad: ") && got.contains(w),
                "{got} !~ {w}"
            );
        }
    }

    #[test]
    fn failed_policy_keeps_scope() {
        let p = policy(
            r#"
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{ports: [{protocol: ICMP}]}]
"#,
        );
        let Checked::Failed(f, _) = check(&p) else {
            panic!()
        };
        assert!(f.selector.is_some() && f.egress && !f.ingress);
        let p = policy(
            r#"
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Is}]}
  policyTypes: [Bogus]
"#,
        );
        let Checked::Failed(f, e) = check(&p) else {
            panic!()
        };
        assert!(f.selector.is_none() && f.ingress && f.egress);
        assert_eq!(e[0].field, "spec.podSelector.matchExpressions[0].operator");
    }

    #[test]
    fn block_minus_except() {
        let b = Block {
            net: "10.0.0.0/24".parse().unwrap(),
            except: vec![
                "10.0.0.0/26".parse().unwrap(),
                "10.0.0.200/32".parse().unwrap(),
            ],
        };
        let got: Vec<String> = b.prefixes().iter().map(|n| n.to_string()).collect();
        assert_eq!(
            got,
            [
                "10.0.0.64/26",
                "10.0.0.128/26",
                "10.0.0.192/29",
                "10.0.0.201/32",
                "10.0.0.202/31",
                "10.0.0.204/30",
                "10.0.0.208/28",
                "10.0.0.224/27"
            ]
        );
        let v6 = Block {
            net: "fd00::/64".parse().unwrap(),
            except: vec![],
        };
        assert_eq!(v6.prefixes(), vec!["fd00::/64".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn cidr_host_bits_are_cleared_and_bare_addresses_rejected() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_cidr("10.1.2.3").is_none());
        assert!(parse_cidr("fd00::1/129").is_none());
    }
}
