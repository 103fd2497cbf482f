//! Synthetic cluster for the policy benchmark: 100 namespaces x 100 pods, 10 policies per
//! namespace, a realistic label mix, and the naive linear reference ruleset.
//!
//! Namespaces `ns-NNN` carry `team=team-(N%10)` and `env=prod|staging|dev`. Pod `pNN` of a namespace
//! has `app=app-(NN%10)`, `tier=frontend|backend|db` and `version=v1|v2`, named ports `http`
//! (TCP 8080), `metrics` (TCP 9090) and, on db pods, `sql` (TCP 5432). The ten policies of every
//! namespace are the usual shapes: default deny, app-to-app, frontend from a team's namespaces on
//! a named port, backend from frontend on a port range and DNS, db from backend on a named port,
//! egress to DNS in ns-000, egress to the internet on 443 (ipBlock with except), metrics scraping
//! from prod (namespace AND pod selector), matchExpressions, and an ipBlock ingress.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use felix::policy::ir::{Elem, Match, Ruleset, Verdict};
use felix::policy::{NamedPort, Namespace, NetworkPolicy, Pod, PolicyInput, WorkloadEndpoint};
use felix::workload_iface_name;

pub const NAMESPACES: usize = 100;
pub const PODS_PER_NS: usize = 100;

fn labels(kv: &[(&str, String)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Pod number `n` (0-based over the cluster): IPv4 10.64.0.0 + n + 1, IPv6 fd64::n+1.
pub fn pod_ips(n: usize) -> (IpAddr, IpAddr) {
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + n as u32 + 1);
    let v6 = Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0)) + n as u128 + 1);
    (IpAddr::V4(v4), IpAddr::V6(v6))
}

pub fn pod(n: usize) -> Pod {
    let (ns, j) = (n / PODS_PER_NS, n % PODS_PER_NS);
    let tier = ["frontend", "backend", "db"][j % 3];
    let mut ports = vec![
        NamedPort {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 8080,
        },
        NamedPort {
            name: "metrics".into(),
            protocol: "TCP".into(),
            port: 9090,
        },
    ];
    if tier == "db" {
        ports.push(NamedPort {
            name: "sql".into(),
            protocol: "TCP".into(),
            port: 5432,
        });
    }
    let (v4, v6) = pod_ips(n);
    Pod {
        namespace: format!("ns-{ns:03}"),
        name: format!("p{j:02}"),
        ips: vec![v4, v6],
        labels: labels(&[
            ("app", format!("app-{}", j % 10)),
            ("tier", tier.to_string()),
            ("version", format!("v{}", 1 + j % 2)),
        ]),
        ports,
    }
}

fn policy(yaml: &str) -> NetworkPolicy {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"))
}

/// The ten policies of namespace `i`.
pub fn policies(i: usize) -> Vec<NetworkPolicy> {
    let ns = format!("ns-{i:03}");
    let app = format!("app-{}", i % 10);
    let team = format!("team-{}", (i + 3) % 10);
    let o = i % 256;
    vec![
        policy(&format!("metadata: {{name: default-deny, namespace: {ns}}}\nspec: {{podSelector: {{}}}}")),
        policy(&format!(
            "metadata: {{name: {app}-self, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: {app}}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: {app}}}}}}}], ports: [{{port: 8080}}]}}]"
        )),
        policy(&format!(
            "metadata: {{name: frontend-from-{team}, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{tier: frontend}}}}
  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: {team}}}}}}}], ports: [{{port: http}}]}}]"
        )),
        policy(&format!(
            "metadata: {{name: backend-from-frontend, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{tier: backend}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{tier: frontend}}}}}}]
    ports: [{{port: 8080, endPort: 8090}}, {{protocol: UDP, port: 53}}]"
        )),
        policy(&format!(
            "metadata: {{name: db-from-backend, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{tier: db}}}}
  ingress: [{{from: [{{podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [backend]}}]}}}}], ports: [{{port: sql}}]}}]"
        )),
        policy(&format!(
            "metadata: {{name: egress-dns, namespace: {ns}}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: ns-000}}}}}}]
    ports: [{{protocol: UDP, port: 53}}, {{protocol: TCP, port: 53}}]
  - to: [{{podSelector: {{}}}}]"
        )),
        policy(&format!(
            "metadata: {{name: {app}-internet, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: {app}}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]}}}}], ports: [{{port: 443}}]}}]"
        )),
        policy(&format!(
            "metadata: {{name: metrics-from-prod, namespace: {ns}}}
spec:
  podSelector: {{}}
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{env: prod}}}}, podSelector: {{matchLabels: {{app: app-0}}}}}}]
    ports: [{{port: metrics}}]"
        )),
        policy(&format!(
            "metadata: {{name: v2-from-staging, namespace: {ns}}}
spec:
  podSelector: {{matchExpressions: [{{key: version, operator: In, values: [v2]}}, {{key: tier, operator: NotIn, values: [db]}}]}}
  ingress:
  - from: [{{namespaceSelector: {{matchExpressions: [{{key: env, operator: In, values: [staging, dev]}}]}}, podSelector: {{matchExpressions: [{{key: app, operator: Exists}}]}}}}]
    ports: [{{port: 8080}}, {{port: 8443}}]"
        )),
        policy(&format!(
            "metadata: {{name: lb-range, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{tier: frontend}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: 192.168.0.0/16, except: [192.168.{o}.0/24]}}}}], ports: [{{port: 80}}]}}]"
        )),
    ]
}

/// Which pods run on the benchmark node: every `stride`-th (stride 91 gives 110 pods, spread over
/// the namespaces like a real node; stride 1 puts the whole cluster on it).
pub fn input(stride: usize, extra: &[NetworkPolicy]) -> PolicyInput {
    let n = NAMESPACES * PODS_PER_NS;
    let pods: Vec<Pod> = (0..n).map(pod).collect();
    let endpoints = (0..n)
        .step_by(stride)
        .map(|k| WorkloadEndpoint {
            iface: workload_iface_name(&pods[k].namespace, &pods[k].name),
            pod: pods[k].clone(),
        })
        .collect();
    let namespaces = (0..NAMESPACES)
        .map(|i| Namespace {
            name: format!("ns-{i:03}"),
            labels: labels(&[
                ("team", format!("team-{}", i % 10)),
                ("env", ["prod", "staging", "dev"][i % 3].to_string()),
            ]),
        })
        .collect();
    let mut policies: Vec<NetworkPolicy> = (0..NAMESPACES).flat_map(policies).collect();
    policies.extend_from_slice(extra);
    PolicyInput {
        endpoints,
        pods,
        namespaces,
        policies,
    }
}

/// The naive reference: the same compiled policy as a stateless linear ACL — one rule per allowed
/// (source, destination, port) with sets, named ports and maps expanded into single values, plus
/// the reply rule of each, then a drop per isolated pod; no conntrack, no sets, no maps. Every
/// packet walks the list until its rule.
pub struct Naive {
    /// The script actually loaded.
    pub script: String,
    /// Rules of the full expansion.
    pub total_rules: usize,
    /// Rules in the loaded script.
    pub loaded_rules: usize,
}

/// Build [`Naive`]. The full expansion is far too big to load (millions of rules), so at most
/// `cap` rules per chain are kept, in their natural order, and the rules that mention `flow`
/// (the benchmark pods' addresses) are moved after them: the measured flow then walks `cap` rules
/// per packet and per direction, where in the full ruleset it would walk many more.
pub fn naive(rs: &Ruleset, input: &PolicyInput, table: &str, cap: usize, flow: &[IpAddr]) -> Naive {
    let mut ips: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for ep in &input.endpoints {
        ips.insert(ep.iface.as_str(), ep.pod.ips.clone());
    }
    let elems = |set: &str| -> Vec<Elem> { rs.sets[set].elements.iter().cloned().collect() };
    let needles: Vec<String> = flow.iter().map(|ip| format!(" {ip} ")).collect();
    let mentions_flow = |r: &str| needles.iter().any(|n| format!("{r} ").contains(n.as_str()));
    // Two base chains, as ours: an accept ends only its own chain, so egress (priority 0) and
    // ingress (priority 1) are both checked.
    let mut s =
        format!("add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n");
    let (mut total, mut loaded) = (0, 0);
    for (dispatch, ingress, chain, prio) in [
        (&rs.from_wl, false, "naive-egress", 0),
        (&rs.to_wl, true, "naive-ingress", 1),
    ] {
        let mut kept = Vec::new();
        let mut flow_rules = Vec::new();
        let mut drops = Vec::new();
        for (iface, pc_name) in dispatch {
            let own = &ips[iface.as_str()];
            let mut rules = Vec::new();
            for r in &rs.chains[pc_name].rules {
                let Verdict::Jump(pc) = &r.verdict else {
                    continue;
                };
                for pr in &rs.chains[pc].rules {
                    expand(pr, own, ingress, &elems, &mut rules);
                }
            }
            total += rules.len();
            for r in rules {
                if mentions_flow(&r) {
                    flow_rules.push(r);
                } else if kept.len() < cap {
                    kept.push(r);
                }
            }
            for ip in own {
                let fam = if ip.is_ipv4() { "ip" } else { "ip6" };
                let d = if ingress { "daddr" } else { "saddr" };
                // After every accept: an earlier pod's drop must not eat a later pod's replies.
                drops.push(format!("{fam} {d} {ip} drop"));
            }
        }
        total += drops.len();
        let _ = writeln!(
            s,
            "\tchain {chain} {{\n\t\ttype filter hook forward priority {prio}; policy accept;"
        );
        for r in kept.iter().chain(&flow_rules).chain(&drops) {
            let _ = writeln!(s, "\t\t{r}");
        }
        s.push_str("\t}\n");
        loaded += kept.len() + flow_rules.len() + drops.len();
    }
    s.push_str("}\n");
    Naive {
        script: s,
        total_rules: total,
        loaded_rules: loaded,
    }
}

/// A peer address or prefix (`None`: any).
type Peer = Option<String>;
/// (protocol, port or range, `""` for any port of the protocol); `None`: any protocol.
type Port = Option<(String, String)>;

fn expand(
    r: &felix::policy::ir::Rule,
    own: &[IpAddr],
    ingress: bool,
    elems: &dyn Fn(&str) -> Vec<Elem>,
    out: &mut Vec<String>,
) {
    // Peers (None = any), ports as (proto, "" = any port | "80" | "80-90"), or named-port pairs.
    let mut peers: Vec<Peer> = vec![None];
    let mut ports: Vec<Port> = vec![None];
    let mut named: Option<(String, Vec<(IpAddr, u16)>)> = None;
    for m in &r.matches {
        match m {
            Match::AddrIn { set, .. } => {
                peers = elems(set).iter().map(|e| Some(e.to_string())).collect();
            }
            Match::Proto(p) => ports = vec![Some((p.nft().into(), String::new()))],
            Match::Port(p, a, b) => {
                let v = if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                };
                ports = vec![Some((p.nft().into(), v))];
            }
            Match::PortIn(p, set) => {
                ports = elems(set)
                    .iter()
                    .map(|e| Some((p.nft().into(), e.to_string())))
                    .collect();
            }
            Match::NamedPort { proto, set, .. } => {
                let pairs = elems(set)
                    .into_iter()
                    .filter_map(|e| match e {
                        Elem::AddrPort(a, p) => Some((a, p)),
                        _ => None,
                    })
                    .collect();
                named = Some((proto.nft().to_string(), pairs));
            }
        }
    }
    for me in own {
        let v6 = me.is_ipv6();
        let fam = if v6 { "ip6" } else { "ip" };
        let mut combos: Vec<(Peer, Port)> = Vec::new();
        match &named {
            // Named ports resolve against the destination: me for ingress, the peer for egress.
            Some((proto, pairs)) if ingress => {
                for (a, p) in pairs.iter().filter(|(a, _)| a == me) {
                    let _ = a;
                    for peer in &peers {
                        combos.push((peer.clone(), Some((proto.clone(), p.to_string()))));
                    }
                }
            }
            Some((proto, pairs)) => {
                for (a, p) in pairs.iter().filter(|(a, _)| a.is_ipv6() == v6) {
                    let a = a.to_string();
                    if peers
                        .iter()
                        .any(|x| x.is_none() || x.as_deref() == Some(a.as_str()))
                    {
                        combos.push((Some(a), Some((proto.clone(), p.to_string()))));
                    }
                }
            }
            None => {
                for peer in &peers {
                    for port in &ports {
                        combos.push((peer.clone(), port.clone()));
                    }
                }
            }
        }
        for (peer, port) in combos {
            if peer.as_ref().is_some_and(|p| p.contains(':') != v6) {
                continue;
            }
            // Forward direction: src -> dst; the reply swaps addresses and ports.
            let (src, dst) = if ingress {
                (peer.clone(), Some(me.to_string()))
            } else {
                (Some(me.to_string()), peer.clone())
            };
            let addr = |s: &Option<String>, d: &Option<String>| {
                let mut t = String::new();
                if let Some(s) = s {
                    let _ = write!(t, "{fam} saddr {s} ");
                }
                if let Some(d) = d {
                    let _ = write!(t, "{fam} daddr {d} ");
                }
                t
            };
            let (fwd_port, back_port) = match &port {
                None => (String::new(), String::new()),
                Some((proto, p)) if p.is_empty() => (
                    format!("meta l4proto {proto} "),
                    format!("meta l4proto {proto} "),
                ),
                Some((proto, p)) => (format!("{proto} dport {p} "), format!("{proto} sport {p} ")),
            };
            out.push(format!("{}{fwd_port}accept", addr(&src, &dst)));
            out.push(format!("{}{back_port}accept", addr(&dst, &src)));
        }
    }
}
