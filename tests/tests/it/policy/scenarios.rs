//! The matrix scenarios: policies (Kubernetes YAML) and the expected verdict of every probe,
//! written by hand per scenario from the NetworkPolicy semantics — not computed by the compiler
//! under test. `s` is the source pod, `d` the destination, `p` the probe (tcp|udp, 80|81).
//! Labels: pods `pod=a|b|c`; namespaces `ns=x|y|z`. Node 1 holds x/a x/c y/b z/a z/c (10.65.1.k),
//! node 2 holds x/b y/a y/c z/b (10.65.2.k); `http` is port 80 on pods a, c and 81 on pods b.

use super::probe::{Fam, Probe, Proto};
use super::topo::Pod;

/// One scenario.
pub struct Scenario {
    pub name: &'static str,
    pub family: Fam,
    pub yaml: &'static str,
    pub expect: fn(&Pod, &Pod, Probe) -> bool,
}

fn is(p: &Pod, id: &str) -> bool {
    p.id() == id
}

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;

macro_rules! sc {
    ($name:expr, $fam:expr, $yaml:expr, $f:expr) => {
        Scenario {
            name: $name,
            family: $fam,
            yaml: $yaml,
            expect: $f,
        }
    };
}

const DENY_INGRESS_X: &str = "
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}}
";

const ALLOW_FROM_Y_TO_X: &str = "
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
";

const HTTP_TO_X: &str = "
metadata: {name: http, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
";

const EGRESS_X_TO_Y: &str = "
metadata: {name: to-y, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
";

const V4_BLOCK_ALL_TO_X: &str = "
metadata: {name: v4-anywhere, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]
";

/// All matrix scenarios, run in this order on one cluster (policies replaced between them).
pub fn all() -> Vec<Scenario> {
    use Fam::{V4, V6};
    vec![
        sc!("no policies: everything open", V4, "", |_, _, _| true),
        sc!("deny all ingress in x", V4, DENY_INGRESS_X, |_, d, _| d.ns_name != "x"),
        sc!(
            "deny all egress in x",
            V4,
            "
metadata: {name: deny-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
",
            |s, _, _| s.ns_name != "x"
        ),
        sc!(
            "deny all both ways in x",
            V4,
            "
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
",
            |s, d, _| s.ns_name != "x" && d.ns_name != "x"
        ),
        sc!(
            "deny-all plus allow-all ingress (ingress: [{}]) is open",
            V4,
            "
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}}
---
metadata: {name: allow-all, namespace: x}
spec: {podSelector: {}, ingress: [{}]}
",
            |_, _, _| true
        ),
        sc!(
            "allow ingress from the same namespace",
            V4,
            "
metadata: {name: same-ns, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
",
            |s, d, _| d.ns_name != "x" || s.ns_name == "x"
        ),
        sc!(
            "x/a only from x/b (podSelector to podSelector)",
            V4,
            "
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
",
            |s, d, _| !is(d, "x/a") || is(s, "x/b")
        ),
        sc!("namespace selector: x only from ns y", V4, ALLOW_FROM_Y_TO_X, |s, d, _| {
            d.ns_name != "x" || s.ns_name == "y"
        }),
        sc!(
            "pod AND namespace selector in one peer",
            V4,
            "
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}
      podSelector: {matchLabels: {pod: c}}
",
            |s, d, _| !is(d, "x/a") || (s.ns_name != "x" && s.name == "c")
        ),
        sc!(
            "pod OR namespace selector (two peers)",
            V4,
            "
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}
",
            |s, d, _| !is(d, "x/a") || s.ns_name == "y" || is(s, "x/b")
        ),
        sc!(
            "namespaceSelector NotIn",
            V4,
            "
metadata: {name: notin, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x, y]}]}}]}]
",
            |s, d, _| d.ns_name != "x" || s.ns_name == "z"
        ),
        sc!(
            "matchExpressions In / NotIn on pods across all namespaces",
            V4,
            "
metadata: {name: exprs, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}
",
            |s, d, _| !(d.ns_name == "x" && d.name != "c") || s.name != "c"
        ),
        sc!(
            "Exists / DoesNotExist: a peer that matches no pod",
            V4,
            "
metadata: {name: nobody, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}
      podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}
",
            |_, d, _| !is(d, "x/a")
        ),
        sc!(
            "ports: TCP 80 only, from anywhere",
            V4,
            "
metadata: {name: tcp80, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: TCP, port: 80}]}]
",
            |_, d, p| d.ns_name != "x" || p.is(TCP, 80)
        ),
        sc!(
            "ports: UDP 81 only",
            V4,
            "
metadata: {name: udp81, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: UDP, port: 81}]}]
",
            |_, d, p| d.ns_name != "x" || p.is(UDP, 81)
        ),
        sc!(
            "ports: TCP 81 and UDP 80 (protocol default TCP)",
            V4,
            "
metadata: {name: mixed, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 81}, {protocol: UDP, port: 80}]}]
",
            |_, d, p| d.ns_name != "x" || p.is(TCP, 81) || p.is(UDP, 80)
        ),
        sc!(
            "endPort: TCP 80-81",
            V4,
            "
metadata: {name: range, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: TCP, port: 80, endPort: 81}]}]
",
            |_, d, p| d.ns_name != "x" || p.tcp()
        ),
        sc!(
            "named port serve-81-udp",
            V4,
            "
metadata: {name: named, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: UDP, port: serve-81-udp}]}]
",
            |_, d, p| d.ns_name != "x" || p.is(UDP, 81)
        ),
        sc!("named port resolved per target pod (http)", V4, HTTP_TO_X, |_, d, p| {
            d.ns_name != "x" || p.is(TCP, d.http_port())
        }),
        sc!("egress only: x to ns y", V4, EGRESS_X_TO_Y, |s, d, _| {
            s.ns_name != "x" || d.ns_name == "y"
        }),
        sc!(
            "egress named port resolved per destination (http)",
            V4,
            "
metadata: {name: http-out, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
",
            |s, d, p| s.ns_name != "x" || p.is(TCP, d.http_port())
        ),
        sc!(
            "egress UDP 80-81 (endPort) to y and z",
            V4,
            "
metadata: {name: udp-out, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}}]
    ports: [{protocol: UDP, port: 80, endPort: 81}]
",
            |s, d, p| s.ns_name != "x" || (d.ns_name != "x" && p.udp())
        ),
        sc!(
            "ipBlock with except: x only from node 2's pods",
            V4,
            "
metadata: {name: block, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.65.0.0/16, except: [10.65.1.0/24]}}]}]
",
            |s, d, _| d.ns_name != "x" || s.node == 2
        ),
        sc!(
            "egress ipBlock except one pod (y/b = 10.65.1.5)",
            V4,
            "
metadata: {name: block-out, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.65.0.0/16, except: [10.65.1.5/32]}}]}]
",
            |s, d, _| s.ns_name != "x" || !is(d, "y/b")
        ),
        sc!(
            "two policies on x/a are unioned",
            V4,
            "
metadata: {name: y-tcp80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]
---
metadata: {name: z-all, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
",
            |s, d, p| !is(d, "x/a") || (s.ns_name == "y" && p.is(TCP, 80)) || s.ns_name == "z"
        ),
        sc!(
            "deny-all plus one allow: only x/b -> x/a",
            V4,
            "
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}}
---
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
",
            |s, d, _| d.ns_name != "x" || (is(d, "x/a") && is(s, "x/b"))
        ),
        sc!(
            "ingress and egress together: x talks only to itself",
            V4,
            "
metadata: {name: island, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {}}]}]
  egress: [{to: [{podSelector: {}}]}]
",
            |s, d, _| (s.ns_name == "x") == (d.ns_name == "x")
        ),
        sc!(
            "a policy selecting no pod changes nothing",
            V4,
            "
metadata: {name: nobody, namespace: y}
spec: {podSelector: {matchLabels: {pod: zzz}}, policyTypes: [Ingress, Egress]}
",
            |_, _, _| true
        ),
        sc!(
            "policyTypes [Egress] ignores the ingress rules it carries",
            V4,
            "
metadata: {name: egress-type, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
",
            |s, _, _| s.ns_name != "x"
        ),
        sc!(
            "two rules are ORed: TCP 81 from anywhere, or anything from y",
            V4,
            "
metadata: {name: two-rules, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 81}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
",
            |s, d, p| d.ns_name != "x" || p.is(TCP, 81) || s.ns_name == "y"
        ),
        sc!(
            "SCTP only (SCTP probes skipped: TCP and UDP must be denied)",
            V4,
            "
metadata: {name: sctp-only, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: SCTP, port: 80}]}]
",
            |_, d, _| d.ns_name != "x"
        ),
        sc!(
            "all namespaces ({}) AND pod=a",
            V4,
            "
metadata: {name: any-ns-a, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]}]
",
            |s, d, _| d.ns_name != "x" || s.name == "a"
        ),
        sc!(
            "egress of one pod and ingress of another in different namespaces",
            V4,
            "
metadata: {name: za-out, namespace: z}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]
---
metadata: {name: yc-in, namespace: y}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
",
            |s, d, _| (!is(s, "z/a") || is(d, "z/b")) && (!is(d, "y/c") || s.ns_name == "z")
        ),
        sc!(
            "namespaceSelector on kubernetes.io/metadata.name (implicit label)",
            V4,
            "
metadata: {name: by-name, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]
",
            |s, d, _| d.ns_name != "x" || s.ns_name == "z"
        ),
        sc!("a v4 ipBlock 0.0.0.0/0 admits all IPv4", V4, V4_BLOCK_ALL_TO_X, |_, _, _| {
            true
        }),
        // IPv6: the same pods over their fd65:: addresses.
        sc!("IPv6: deny all ingress in x", V6, DENY_INGRESS_X, |_, d, _| d.ns_name != "x"),
        sc!("IPv6: x only from ns y", V6, ALLOW_FROM_Y_TO_X, |s, d, _| {
            d.ns_name != "x" || s.ns_name == "y"
        }),
        sc!(
            "IPv6: ipBlock with except: x only from node 2's pods",
            V6,
            "
metadata: {name: block6, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 'fd65::/16', except: ['fd65:1::/64']}}]}]
",
            |s, d, _| d.ns_name != "x" || s.node == 2
        ),
        sc!(
            "IPv6: a v4 ipBlock admits no IPv6 traffic",
            V6,
            V4_BLOCK_ALL_TO_X,
            |_, d, _| d.ns_name != "x"
        ),
        sc!("IPv6: named port per target pod (http)", V6, HTTP_TO_X, |_, d, p| {
            d.ns_name != "x" || p.is(TCP, d.http_port())
        }),
        sc!("IPv6: egress only: x to ns y", V6, EGRESS_X_TO_Y, |s, d, _| {
            s.ns_name != "x" || d.ns_name == "y"
        }),
    ]
}
