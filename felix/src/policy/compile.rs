//! The policy compiler (pure): [`PolicyInput`] -> [`Ruleset`] + rejected-input list.
//!
//! ```text
//!  PolicyInput ── normalise (dedupe, sort, index pods by namespace, named ports) ──┐
//!  policies ── validate::check ──> CheckedPolicy | FailedPolicy (+ InputErrors)  ──┤
//!                                                                                  v
//!  for each local endpoint, each direction:
//!    failed policy selects it   -> endpoint chain = deny          (fail closed)
//!    valid policies select it   -> endpoint chain = jump pi-/pe-<policy> ...; deny
//!    nothing selects it         -> no chain, no map element       (open)
//!  policy chains and the sets their rules name are built on first use, shared after that
//!  (by what they stand for, never by a hashed name alone: see `Names`).
//! ```
//!
//! Semantics (networking.k8s.io/v1): a pod selected by at least one policy of a direction is
//! isolated in that direction and gets the union of those policies' rules; a rule matches if any of
//! its peers AND any of its ports match; a missing `from`/`to` or `ports` matches everything.
//! Peers: pod selector in the policy's namespace, namespace selector (all pods of the selected
//! namespaces), both (pods matching the pod selector *in* the selected namespaces), or ipBlock (CIDR
//! minus excepts, its own family only). Named ports resolve against the *target* pod — the
//! destination of the packet in both directions — so they compile to one lookup of
//! `(daddr . dport)` in a set holding `(pod IP . container port)` of every pod with that port name
//! and protocol; a pod without the name simply has no element.
//!
//! The result depends only on the input's content: every collection is sorted or keyed, duplicates
//! are resolved by content, so any permutation of the input compiles to the same [`Ruleset`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use super::error::InputError;
use super::index::{CachedSet, Index, SelKey, SetCache};
use super::ir::{
    endpoint_chain, policy_chain_with, short_hash, Chain, Dir, Elem, Family, Match, NameHash, Rule,
    Ruleset, SetDef, SetKind, Verdict,
};
use super::model::{Labels, NetworkPolicy, PolicyInput, WorkloadEndpoint};
use super::selector::Selector;
use super::validate::{
    check, Block, Checked, CheckedPolicy, CheckedRule, FailedPolicy, NsScope, Peer, PortSpec, Proto,
};

/// Counts describing one compilation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Policies in the input (after removing duplicates).
    pub policies: usize,
    /// Policies that validated.
    pub compiled: usize,
    /// Policies rejected (see the error list).
    pub rejected: usize,
    /// Policy chains in the ruleset (policy x direction selecting at least one local endpoint).
    pub active_policy_chains: usize,
    /// Local endpoints.
    pub endpoints: usize,
    /// Endpoints isolated for ingress / egress.
    pub isolated_ingress: usize,
    /// See `isolated_ingress`.
    pub isolated_egress: usize,
    /// Endpoint directions denied because a rejected policy selects them.
    pub failed_closed: usize,
}

/// What [`compile`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// The desired table content.
    pub ruleset: Ruleset,
    /// Rejected inputs, sorted.
    pub errors: Vec<InputError>,
    /// Counts.
    pub stats: CompileStats,
}

/// Compile the whole input. Never fails: bad objects are reported in [`Compiled::errors`].
pub fn compile(input: &PolicyInput) -> Compiled {
    compile_with(input, &mut SetCache::default())
}

/// [`compile`] reusing (and filling) a cache of selector-set members; the caller guarantees the
/// cache's entries are valid for `input` (see [`super::incremental::Compiler`]).
pub(crate) fn compile_with(input: &PolicyInput, cache: &mut SetCache) -> Compiled {
    compile_hashed(input, cache, short_hash)
}

/// [`compile_with`] naming hashed sets and chains with `hash` (tests force collisions with it).
pub(crate) fn compile_hashed(
    input: &PolicyInput,
    cache: &mut SetCache,
    hash: NameHash,
) -> Compiled {
    let mut errors = Vec::new();
    let mut stats = CompileStats::default();
    let endpoints = local_endpoints(input, &mut errors);
    let policies = checked_policies(input, &mut errors, &mut stats);
    let index = Index::new(input, &endpoints);
    let mut b = Builder {
        index: &index,
        rs: Ruleset::default(),
        cache,
        hash,
        set_names: Names::default(),
        chain_names: Names::default(),
    };
    stats.endpoints = endpoints.len();
    for ep in &endpoints {
        for ingress in [true, false] {
            b.endpoint_direction(ep, ingress, &policies, &mut stats);
        }
    }
    stats.active_policy_chains =
        b.rs.chains
            .keys()
            .filter(|c| c.starts_with("pi-") || c.starts_with("pe-"))
            .count();
    errors.sort();
    errors.dedup();
    Compiled {
        ruleset: b.rs,
        errors,
        stats,
    }
}

/// The local endpoints, one per interface, sorted by interface. Of several endpoints on one
/// interface the least (by content, so not by input order) keeps it and the others are reported;
/// an invalid interface name ([`valid_iface`]) is reported and its endpoints skipped.
fn local_endpoints<'a>(
    input: &'a PolicyInput,
    errors: &mut Vec<InputError>,
) -> Vec<&'a WorkloadEndpoint> {
    let mut by_iface: BTreeMap<&str, Vec<&WorkloadEndpoint>> = BTreeMap::new();
    for ep in &input.endpoints {
        by_iface.entry(ep.iface.as_str()).or_default().push(ep);
    }
    let mut endpoints = Vec::new();
    for (iface, mut eps) in by_iface {
        eps.sort();
        let ep = eps[0];
        if !valid_iface(iface) {
            errors.push(InputError::endpoint(
                &ep.pod.namespace,
                &ep.pod.name,
                "iface",
                format!("invalid interface name {iface:?}"),
            ));
            continue;
        }
        for dup in &eps[1..] {
            errors.push(InputError::endpoint(
                &dup.pod.namespace,
                &dup.pod.name,
                "iface",
                format!(
                    "interface {iface:?} already used by pod {}/{}",
                    ep.pod.namespace, ep.pod.name
                ),
            ));
        }
        endpoints.push(ep);
    }
    endpoints
}

/// Every policy of the input, validated, by namespace (each namespace's in name order).
struct NsPolicies<'a> {
    valid: BTreeMap<&'a str, Vec<CheckedPolicy>>,
    failed: BTreeMap<&'a str, Vec<FailedPolicy>>,
}

impl NsPolicies<'_> {
    /// Rejected policies of namespace `ns` that cover this direction and select `labels` (a
    /// policy whose selector is broken selects every pod of its namespace).
    fn failing(&self, ns: &str, labels: &Labels, ingress: bool) -> Vec<&FailedPolicy> {
        self.failed
            .get(ns)
            .into_iter()
            .flatten()
            .filter(|f| if ingress { f.ingress } else { f.egress })
            .filter(|f| f.selector.as_ref().is_none_or(|s| s.matches(labels)))
            .collect()
    }

    /// Valid policies of namespace `ns` that cover this direction and select `labels`.
    fn selecting(&self, ns: &str, labels: &Labels, ingress: bool) -> Vec<&CheckedPolicy> {
        self.valid
            .get(ns)
            .into_iter()
            .flatten()
            .filter(|p| {
                if ingress {
                    p.ingress.is_some()
                } else {
                    p.egress.is_some()
                }
            })
            .filter(|p| p.selector.matches(labels))
            .collect()
    }
}

/// One version of every policy (by namespace and name), validated; counts them in `stats` and
/// reports rejected ones in `errors`.
fn checked_policies<'a>(
    input: &'a PolicyInput,
    errors: &mut Vec<InputError>,
    stats: &mut CompileStats,
) -> NsPolicies<'a> {
    let mut by_key: BTreeMap<(&str, &str), Vec<&NetworkPolicy>> = BTreeMap::new();
    for p in &input.policies {
        by_key
            .entry((p.namespace(), p.metadata.name.as_str()))
            .or_default()
            .push(p);
    }
    let mut out = NsPolicies {
        valid: BTreeMap::new(),
        failed: BTreeMap::new(),
    };
    for ((ns, name), versions) in by_key {
        let p = one_version(ns, name, &versions, errors);
        stats.policies += 1;
        match check(p) {
            Checked::Ok(c) => {
                stats.compiled += 1;
                out.valid.entry(ns).or_default().push(c);
            }
            Checked::Failed(f, errs) => {
                stats.rejected += 1;
                errors.extend(errs);
                out.failed.entry(ns).or_default().push(f);
            }
        }
    }
    out
}

/// The policy to use of several with one namespace and name (which the API server never
/// produces): the least by content, so the choice does not depend on the input's order; more than
/// one is reported.
fn one_version<'a>(
    ns: &str,
    name: &str,
    versions: &[&'a NetworkPolicy],
    errors: &mut Vec<InputError>,
) -> &'a NetworkPolicy {
    if let [p] = versions {
        return p;
    }
    errors.push(InputError::policy(
        ns,
        name,
        "metadata.name",
        format!(
            "{} policies with this name; using one of them",
            versions.len()
        ),
    ));
    versions
        .iter()
        .min_by_key(|p| serde_json::to_string(p).unwrap_or_default())
        .copied()
        .expect("non-empty")
}

/// The deny rules of an endpoint direction that a rejected policy selects (fail closed), one per
/// rejected policy, each naming it.
fn fail_closed_rules(fails: &[&FailedPolicy]) -> Vec<Rule> {
    fails
        .iter()
        .map(|f| Rule {
            matches: vec![],
            verdict: Verdict::Deny,
            comment: Some(format!(
                "fail closed: NetworkPolicy {}/{} is invalid",
                f.namespace, f.name
            )),
        })
        .collect()
}

pub(crate) fn valid_iface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b'"' || b == b'\\' || b <= b' ' || b >= 0x7f)
}

/// A way a rule can match the peer address.
enum PeerAlt {
    Any,
    Set(Family, String),
}

/// A way a rule can match the port.
enum PortAlt {
    Any,
    L4(Match),
    Named(Proto, String),
}

/// What a shared named set stands for: reuse of a set goes by this, never by its (hashed) name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SetKey {
    /// Pods of a selector in a namespace scope (`sel-`).
    Pods(SelKey),
    /// An ipBlock (`net-`).
    Block(Block),
    /// Disjoint port ranges (`ports-`).
    Ports(Vec<(u16, u16)>),
}

/// What a chain stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ChainKey {
    /// A policy in one direction (`pi-` / `pe-`).
    Policy {
        ingress: bool,
        namespace: String,
        name: String,
    },
    /// A local endpoint in one direction (`tw-` / `fw-`).
    Endpoint { ingress: bool, iface: String },
}

/// Names handed out in one compilation, by the key they stand for.
///
/// Names come from content — readable where the content allows, else a hash of it — so two
/// different keys can only be given the same name by a hash collision (48 or 64 bits). Reuse goes
/// by the key, never by the name alone: a key gets the name it got before; a new key whose name is
/// taken gets `NAME-2`, `NAME-3`, ... (a form no plain name has). Which of two colliding keys keeps
/// the plain name follows the compile order, which the input's content fixes, so the result still
/// depends on the content only.
struct Names<K> {
    by_key: HashMap<K, String>,
    taken: HashSet<String>,
}

impl<K> Default for Names<K> {
    fn default() -> Self {
        Names {
            by_key: HashMap::new(),
            taken: HashSet::new(),
        }
    }
}

impl<K: Hash + Eq> Names<K> {
    /// The name `key` was given, if any.
    fn get(&self, key: &K) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// The name of `key`: the one it has, else `base` if free, else `base-N`.
    fn claim(&mut self, key: K, base: String) -> String {
        if let Some(n) = self.by_key.get(&key) {
            return n.clone();
        }
        let mut name = base.clone();
        let mut n = 2;
        while self.taken.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.taken.insert(name.clone());
        self.by_key.insert(key, name.clone());
        name
    }
}

struct Builder<'a, 'c> {
    index: &'a Index<'a>,
    rs: Ruleset,
    cache: &'c mut SetCache,
    hash: NameHash,
    /// Set names (for `sel-` and `net-` sets: the stem before `-v4` / `-v6`).
    set_names: Names<SetKey>,
    chain_names: Names<ChainKey>,
}

impl Builder<'_, '_> {
    /// The endpoint chain of `ep` in one direction, with its dispatch-map element: deny if a
    /// rejected policy selects it (fail closed), else a jump to each selecting policy's chain and
    /// deny; nothing if no policy selects it (open).
    fn endpoint_direction(
        &mut self,
        ep: &WorkloadEndpoint,
        ingress: bool,
        policies: &NsPolicies<'_>,
        stats: &mut CompileStats,
    ) {
        let ns = ep.pod.namespace.as_str();
        let labels = &ep.pod.labels;
        let fails = policies.failing(ns, labels, ingress);
        let pols = policies.selecting(ns, labels, ingress);
        let rules = if !fails.is_empty() {
            stats.failed_closed += 1;
            fail_closed_rules(&fails)
        } else if !pols.is_empty() {
            self.isolating_rules(&pols, ingress, ns, &ep.pod.name)
        } else {
            return;
        };
        if ingress {
            stats.isolated_ingress += 1;
        } else {
            stats.isolated_egress += 1;
        }
        let chain = self.endpoint_chain(ingress, &ep.iface);
        let map = if ingress {
            &mut self.rs.to_wl
        } else {
            &mut self.rs.from_wl
        };
        map.insert(ep.iface.clone(), chain.clone());
        self.rs.chains.insert(
            chain,
            Chain {
                comment: String::new(),
                rules,
            },
        );
    }

    /// A jump to the chain of each of `pols` (building them on first use), in order, then deny:
    /// the union of their rules, as NetworkPolicy isolation requires.
    fn isolating_rules(
        &mut self,
        pols: &[&CheckedPolicy],
        ingress: bool,
        ns: &str,
        pod: &str,
    ) -> Vec<Rule> {
        let mut rules: Vec<Rule> = pols
            .iter()
            .map(|p| Rule {
                matches: vec![],
                verdict: Verdict::Jump(self.policy_chain(p, ingress)),
                comment: None,
            })
            .collect();
        rules.push(Rule {
            matches: vec![],
            verdict: Verdict::Deny,
            comment: Some(format!("{ns}/{pod}: no policy allows")),
        });
        rules
    }

    /// Name of the endpoint chain of `iface` in one direction.
    fn endpoint_chain(&mut self, ingress: bool, iface: &str) -> String {
        let base = endpoint_chain(if ingress { "tw" } else { "fw" }, iface, self.hash);
        let key = ChainKey::Endpoint {
            ingress,
            iface: iface.to_string(),
        };
        self.chain_names.claim(key, base)
    }

    /// Name of the chain of `p` in one direction, building it (and its sets) on first use.
    fn policy_chain(&mut self, p: &CheckedPolicy, ingress: bool) -> String {
        let key = ChainKey::Policy {
            ingress,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        if let Some(name) = self.chain_names.get(&key) {
            return name.to_string();
        }
        let base = policy_chain_with(ingress, &p.namespace, &p.name, self.hash);
        let name = self.chain_names.claim(key, base);
        let (dir, label, list) = if ingress {
            (
                Dir::Src,
                "ingress",
                p.ingress.as_deref().unwrap_or_default(),
            )
        } else {
            (Dir::Dst, "egress", p.egress.as_deref().unwrap_or_default())
        };
        let mut rules: Vec<Rule> = Vec::new();
        for (i, rule) in list.iter().enumerate() {
            for r in self.rule(rule, dir, &format!("{label}[{i}]")) {
                if !rules.contains(&r) {
                    rules.push(r);
                }
            }
        }
        self.rs.chains.insert(
            name.clone(),
            Chain {
                comment: format!("NetworkPolicy {}/{} {label}", p.namespace, p.name),
                rules,
            },
        );
        name
    }

    fn rule(&mut self, rule: &CheckedRule, dir: Dir, label: &str) -> Vec<Rule> {
        let peers: Vec<PeerAlt> = match &rule.peers {
            None => vec![PeerAlt::Any],
            Some(list) => {
                let mut v = Vec::new();
                for peer in list {
                    match peer {
                        Peer::Pods { namespaces, pods } => {
                            let [n4, n6] = self.pod_sets(namespaces, pods);
                            v.push(PeerAlt::Set(Family::V4, n4));
                            v.push(PeerAlt::Set(Family::V6, n6));
                        }
                        Peer::Block(b) => v.push(self.block_set(b)),
                    }
                }
                v
            }
        };
        let ports = match &rule.ports {
            None => vec![PortAlt::Any],
            Some(list) => self.port_alts(list),
        };
        let mut out = Vec::new();
        for peer in &peers {
            for port in &ports {
                let fams: Vec<Option<Family>> = match (peer, port) {
                    (PeerAlt::Set(f, _), _) => vec![Some(*f)],
                    (PeerAlt::Any, PortAlt::Named(..)) => Family::BOTH.map(Some).to_vec(),
                    (PeerAlt::Any, _) => vec![None],
                };
                for fam in fams {
                    let mut matches = Vec::new();
                    if let PeerAlt::Set(f, set) = peer {
                        matches.push(Match::AddrIn {
                            family: *f,
                            dir,
                            set: set.clone(),
                        });
                    }
                    match port {
                        PortAlt::Any => {}
                        PortAlt::L4(m) => matches.push(m.clone()),
                        PortAlt::Named(proto, n) => {
                            let family = fam.unwrap_or(Family::V4);
                            let set = self.named_port_set(*proto, n, family, dir == Dir::Src);
                            matches.push(Match::NamedPort {
                                family,
                                proto: *proto,
                                set,
                            });
                        }
                    }
                    out.push(Rule {
                        matches,
                        verdict: Verdict::Accept,
                        comment: Some(label.to_string()),
                    });
                }
            }
        }
        out
    }

    /// Ports of one rule: per protocol, "any" absorbs numbers, numbers merge into disjoint ranges
    /// (inline when one range, a shared named set otherwise); named ports stay separate.
    fn port_alts(&mut self, list: &[PortSpec]) -> Vec<PortAlt> {
        let mut any: BTreeSet<Proto> = BTreeSet::new();
        let mut ranges: BTreeMap<Proto, Vec<(u16, u16)>> = BTreeMap::new();
        let mut named: BTreeSet<(Proto, String)> = BTreeSet::new();
        for p in list {
            match p {
                PortSpec::Any(proto) => {
                    any.insert(*proto);
                }
                PortSpec::Range(proto, a, b) => ranges.entry(*proto).or_default().push((*a, *b)),
                PortSpec::Named(proto, n) => {
                    named.insert((*proto, n.clone()));
                }
            }
        }
        let mut out = Vec::new();
        for proto in &any {
            out.push(PortAlt::L4(Match::Proto(*proto)));
        }
        for (proto, mut rs) in ranges {
            if any.contains(&proto) {
                continue;
            }
            rs.sort();
            let mut merged: Vec<(u16, u16)> = Vec::new();
            for (a, b) in rs {
                match merged.last_mut() {
                    Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            if let [(a, b)] = merged[..] {
                out.push(PortAlt::L4(Match::Port(proto, a, b)));
            } else {
                out.push(PortAlt::L4(Match::PortIn(proto, self.port_set(&merged))));
            }
        }
        for (proto, n) in named {
            if !any.contains(&proto) {
                out.push(PortAlt::Named(proto, n));
            }
        }
        out
    }

    /// The v4 and v6 sets of the pods `pods` selects in the namespaces of `scope`.
    fn pod_sets(&mut self, scope: &NsScope, pods: &Selector) -> [String; 2] {
        let sel: SelKey = (scope.clone(), pods.clone());
        let key = SetKey::Pods(sel.clone());
        let with_family = |stem: &str| Family::BOTH.map(|f| format!("{stem}-{}", f.suffix()));
        if let Some(stem) = self.set_names.get(&key) {
            return with_family(stem);
        }
        let scope_text = match scope {
            NsScope::Own(ns) => format!("namespace {ns}"),
            NsScope::Selected(s) => format!("namespaces {s}"),
        };
        let desc = format!("{scope_text}; pods {pods}");
        let stem = self
            .set_names
            .claim(key, format!("sel-{}", (self.hash)(&desc, 12)));
        let names = with_family(&stem);
        if !self.cache.sets.contains_key(&sel) {
            let (mut v4, mut v6) = (Vec::new(), Vec::new());
            let namespaces = self.index.namespaces(scope);
            for ns in &namespaces {
                for pod in self.index.pods_by_ns.get(ns).into_iter().flatten() {
                    if pods.matches(&pod.labels) {
                        for ip in &pod.ips {
                            if ip.is_ipv4() { &mut v4 } else { &mut v6 }.push(Elem::Addr(*ip));
                        }
                    }
                }
            }
            // Bulk build from a vector: far cheaper than one insert per element.
            let entry = CachedSet {
                namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
                v4: Arc::new(v4.into_iter().collect()),
                v6: Arc::new(v6.into_iter().collect()),
            };
            self.cache.sets.insert(sel.clone(), entry);
        }
        let entry = &self.cache.sets[&sel];
        for (name, (fam, elements)) in names
            .iter()
            .zip([(Family::V4, &entry.v4), (Family::V6, &entry.v6)])
        {
            self.rs.sets.insert(
                name.clone(),
                SetDef {
                    kind: SetKind::Addr(fam),
                    comment: desc.clone(),
                    elements: elements.clone(),
                },
            );
        }
        names
    }

    fn block_set(&mut self, b: &Block) -> PeerAlt {
        let fam = if b.net.addr().is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let mut desc = b.net.to_string();
        if !b.except.is_empty() {
            let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
            desc.push_str(" except ");
            desc.push_str(&ex.join(","));
        }
        let key = SetKey::Block(b.clone());
        let built = self.set_names.get(&key).is_some();
        let stem = self
            .set_names
            .claim(key, format!("net-{}", (self.hash)(&desc, 12)));
        let name = format!("{stem}-{}", fam.suffix());
        if !built {
            let elements = Arc::new(b.prefixes().into_iter().map(Elem::Net).collect());
            self.rs.sets.insert(
                name.clone(),
                SetDef {
                    kind: SetKind::Net(fam),
                    comment: format!("ipBlock {desc}"),
                    elements,
                },
            );
        }
        PeerAlt::Set(fam, name)
    }

    fn port_set(&mut self, ranges: &[(u16, u16)]) -> String {
        let text: Vec<String> = ranges
            .iter()
            .map(|(a, b)| Elem::Ports(*a, *b).to_string())
            .collect();
        let key = SetKey::Ports(ranges.to_vec());
        if let Some(name) = self.set_names.get(&key) {
            return name.to_string();
        }
        let mut base = format!("ports-{}", text.join("_"));
        if base.len() > 48 {
            base = format!("ports-h{}", (self.hash)(&text.join(","), 12));
        }
        let name = self.set_names.claim(key, base);
        self.rs.sets.entry(name.clone()).or_insert_with(|| SetDef {
            kind: SetKind::Ports,
            comment: format!("ports {}", text.join(",")),
            elements: Arc::new(ranges.iter().map(|(a, b)| Elem::Ports(*a, *b)).collect()),
        });
        name
    }

    /// `(address . port)` set of a named port. Ingress rules (`local`) only ever see local
    /// endpoints as destinations, so their set holds just those; egress rules get every pod.
    fn named_port_set(&mut self, proto: Proto, port: &str, fam: Family, local: bool) -> String {
        let (prefix, scope) = if local {
            ("npl", "local pods")
        } else {
            ("np", "all pods")
        };
        let name = format!("{prefix}-{}-{port}-{}", proto.nft(), fam.suffix());
        if !self.rs.sets.contains_key(&name) {
            let elements: BTreeSet<Elem> = self
                .index
                .named_port_members(proto, port, local)
                .into_iter()
                .filter(|(ip, _)| Family::of(ip) == fam)
                .map(|(ip, p)| Elem::AddrPort(ip, p))
                .collect();
            let elements = Arc::new(elements);
            self.rs.sets.insert(
                name.clone(),
                SetDef {
                    kind: SetKind::AddrPort(fam),
                    comment: format!("named port {port}/{} of {scope}", proto.nft()),
                    elements,
                },
            );
        }
        name
    }
}

#[cfg(test)]
mod tests;
