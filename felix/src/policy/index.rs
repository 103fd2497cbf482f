//! The compiler's view of the cluster: pods by namespace, namespace labels, and a cache of
//! selector-set members that survives between compilations.
//!
//! [`effective_pods`] is the one definition of "the pods": the input's `pods`, plus local endpoints
//! missing from it, sorted by namespace/name, duplicates resolved by content (smallest wins) so the
//! order of the input never matters.
//!
//! [`SetCache`] holds, per selector set (keyed by its scope and selector), the namespaces its
//! scope resolved to and its members. Its contents are a pure function of (namespace labels, pods
//! of those namespaces), so an entry stays valid as long as neither changed; [`Compiler`]
//! (in `super::incremental`) drops exactly the entries whose namespaces saw a pod change, which
//! turns a one-pod change into recomputing a handful of sets instead of matching every selector
//! against every pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::ir::Elem;
use super::model::{Labels, Pod, PolicyInput, WorkloadEndpoint, NAMESPACE_NAME_LABEL};
use super::selector::Selector;
use super::validate::{NsScope, Proto};

fn key<'a>(p: &&'a Pod) -> (&'a str, &'a str) {
    (p.namespace.as_str(), p.name.as_str())
}

/// All pods (input pods plus local endpoints missing from them), sorted by key, one per key.
pub(crate) fn effective_pods<'a>(
    input: &'a PolicyInput,
    endpoints: impl Iterator<Item = &'a WorkloadEndpoint>,
) -> Vec<&'a Pod> {
    // Sort instead of a map: input usually arrives sorted, which makes this near-linear.
    let mut pods: Vec<&Pod> = input.pods.iter().collect();
    pods.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.cmp(b)));
    pods.dedup_by(|b, a| key(a) == key(b));
    let mut extra: Vec<&Pod> = endpoints
        .map(|ep| &ep.pod)
        .filter(|p| pods.binary_search_by(|q| key(q).cmp(&key(p))).is_err())
        .collect();
    if !extra.is_empty() {
        extra.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.cmp(b)));
        extra.dedup_by(|b, a| key(a) == key(b));
        pods.extend(extra);
        pods.sort_by(|a, b| key(a).cmp(&key(b)));
    }
    pods
}

/// Facts about the cluster, indexed for the compiler.
pub(crate) struct Index<'a> {
    /// Namespace -> labels (including the implicit name label).
    pub ns_labels: BTreeMap<&'a str, Labels>,
    /// Namespace -> its pods, in key order.
    pub pods_by_ns: BTreeMap<&'a str, Vec<&'a Pod>>,
    /// Every pod, in key order.
    pub all_pods: Vec<&'a Pod>,
    /// The local endpoints' pods.
    pub local_pods: Vec<&'a Pod>,
}

impl<'a> Index<'a> {
    pub fn new(input: &'a PolicyInput, endpoints: &[&'a WorkloadEndpoint]) -> Index<'a> {
        let pods = effective_pods(input, endpoints.iter().copied());
        let mut ns_labels: BTreeMap<&str, Labels> = BTreeMap::new();
        let mut sorted_ns: Vec<_> = input.namespaces.iter().collect();
        sorted_ns.sort();
        for ns in sorted_ns {
            ns_labels.entry(ns.name.as_str()).or_insert_with(|| {
                let mut l = ns.labels.clone();
                l.insert(NAMESPACE_NAME_LABEL.to_string(), ns.name.clone());
                l
            });
        }
        let mut pods_by_ns: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for pod in &pods {
            let ns = pod.namespace.as_str();
            ns_labels.entry(ns).or_insert_with(|| {
                Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])
            });
            pods_by_ns.entry(ns).or_default().push(pod);
        }
        Index {
            ns_labels,
            pods_by_ns,
            all_pods: pods,
            local_pods: endpoints.iter().map(|ep| &ep.pod).collect(),
        }
    }

    /// `(address . port)` of the pods (local ones, or all) with container port `name`/`proto`.
    pub fn named_port_members(&self, proto: Proto, name: &str, local: bool) -> Vec<(IpAddr, u16)> {
        let pods = if local {
            &self.local_pods
        } else {
            &self.all_pods
        };
        let mut out = Vec::new();
        for pod in pods {
            for np in &pod.ports {
                if np.name == name && Proto::from_k8s(&np.protocol) == Some(proto) {
                    out.extend(pod.ips.iter().map(|ip| (*ip, np.port)));
                }
            }
        }
        out
    }

    /// The namespaces a peer scope resolves to.
    pub fn namespaces(&self, scope: &NsScope) -> Vec<&'a str> {
        match scope {
            NsScope::Own(ns) => self.ns_labels.keys().copied().filter(|n| n == ns).collect(),
            NsScope::Selected(sel) => self
                .ns_labels
                .iter()
                .filter(|(_, l)| sel.matches(l))
                .map(|(n, _)| *n)
                .collect(),
        }
    }
}

/// Members of one selector set, with the namespaces they were drawn from.
#[derive(Clone, Debug, Default)]
pub(crate) struct CachedSet {
    /// Namespaces the scope resolved to.
    pub namespaces: Vec<String>,
    /// IPv4 members.
    pub v4: Arc<BTreeSet<Elem>>,
    /// IPv6 members.
    pub v6: Arc<BTreeSet<Elem>>,
}

/// What a selector set stands for: the namespace scope and the pod selector, compared whole (not
/// by their text or its hash).
pub(crate) type SelKey = (NsScope, Selector);

/// Selector-set members by scope and selector. See the module docs for when entries are valid.
#[derive(Clone, Debug, Default)]
pub(crate) struct SetCache {
    pub sets: HashMap<SelKey, CachedSet>,
}

impl SetCache {
    /// Forget everything.
    pub fn clear(&mut self) {
        self.sets.clear();
    }

    /// Forget the entries drawing from any of `namespaces`.
    pub fn invalidate(&mut self, namespaces: &BTreeSet<&str>) {
        self.sets
            .retain(|_, e| !e.namespaces.iter().any(|n| namespaces.contains(n.as_str())));
    }
}
