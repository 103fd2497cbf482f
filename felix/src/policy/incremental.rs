//! [`Compiler`]: [`compile`](super::compile::compile) with memory, for the owner's hot path.
//!
//! The result is always exactly `compile(&input)` (a test checks it over random change sequences);
//! what the memory buys is speed. Selector sets dominate compile time (every selector matched
//! against every pod of its namespaces), and a set's members depend only on the namespace labels and
//! on the pods of the namespaces its scope resolves to. So between two inputs the compiler keeps the
//! members of every set and, before compiling, drops the ones that may have changed:
//! - namespaces (names or labels) differ, or the endpoints differ in interface or pod identity, or
//!   an input is irregular (duplicate or unusable endpoint): drop everything;
//! - otherwise, merge-join the old and new pod lists and drop the sets drawing from a namespace in
//!   which a pod appeared, vanished or changed (a namespace known only through its pods appearing or
//!   vanishing drops everything, since it changes what namespace selectors see).
//!
//! A pod changing labels or addresses therefore recomputes only the sets of its own namespace and
//! of the namespace selectors covering it.

use std::collections::BTreeSet;

use super::compile::{compile_with, valid_iface, Compiled};
use super::index::{effective_pods, SetCache};
use super::model::{Namespace, PolicyInput};

/// An incremental compiler. See the module docs.
#[derive(Debug, Default)]
pub struct Compiler {
    prev: Option<PolicyInput>,
    cache: SetCache,
}

impl Compiler {
    /// A compiler with nothing cached.
    pub fn new() -> Compiler {
        Compiler::default()
    }

    /// Compile `input` (equal to [`compile`](super::compile::compile)`(&input)`), reusing what the
    /// previous input allows. Keeps `input` for the next call.
    pub fn compile(&mut self, input: PolicyInput) -> Compiled {
        self.compile_and_take_old(input).0
    }

    /// [`Compiler::compile`], handing back the previous input instead of dropping it: freeing a
    /// 10k-pod snapshot takes milliseconds, which a caller on a latency path can spend elsewhere.
    pub fn compile_and_take_old(&mut self, input: PolicyInput) -> (Compiled, Option<PolicyInput>) {
        match &self.prev {
            Some(old) => invalidate(&mut self.cache, old, &input),
            None => self.cache.clear(),
        }
        let c = compile_with(&input, &mut self.cache);
        (c, self.prev.replace(input))
    }

    /// The last input compiled.
    pub fn input(&self) -> Option<&PolicyInput> {
        self.prev.as_ref()
    }

    /// Number of selector sets currently cached.
    pub fn cached_sets(&self) -> usize {
        self.cache.sets.len()
    }
}

fn sorted_namespaces(v: &[Namespace]) -> Vec<&Namespace> {
    let mut v: Vec<&Namespace> = v.iter().collect();
    v.sort();
    v
}

/// Endpoint identities, or `None` if any is unusable or duplicated (then the compiler's own
/// choice of endpoint decides membership, which this module does not replicate).
fn endpoint_keys(input: &PolicyInput) -> Option<Vec<(&str, &str, &str)>> {
    let mut keys: Vec<(&str, &str, &str)> = input
        .endpoints
        .iter()
        .map(|e| {
            (
                e.iface.as_str(),
                e.pod.namespace.as_str(),
                e.pod.name.as_str(),
            )
        })
        .collect();
    keys.sort_unstable();
    let n = keys.len();
    let ifaces: BTreeSet<&str> = keys.iter().map(|k| k.0).collect();
    let pods: BTreeSet<(&str, &str)> = keys.iter().map(|k| (k.1, k.2)).collect();
    (ifaces.len() == n && pods.len() == n && keys.iter().all(|k| valid_iface(k.0))).then_some(keys)
}

fn invalidate(cache: &mut SetCache, old: &PolicyInput, new: &PolicyInput) {
    if sorted_namespaces(&old.namespaces) != sorted_namespaces(&new.namespaces) {
        return cache.clear();
    }
    match (endpoint_keys(old), endpoint_keys(new)) {
        (Some(a), Some(b)) if a == b => {}
        _ => return cache.clear(),
    }
    let a = effective_pods(old, old.endpoints.iter());
    let b = effective_pods(new, new.endpoints.iter());
    let mut changed: BTreeSet<&str> = BTreeSet::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let ka = a.get(i).map(|p| (p.namespace.as_str(), p.name.as_str()));
        let kb = b.get(j).map(|p| (p.namespace.as_str(), p.name.as_str()));
        match (ka, kb) {
            (Some(x), Some(y)) if x == y => {
                if a[i] != b[j] {
                    changed.insert(x.0);
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                changed.insert(x.0);
                i += 1;
            }
            (Some(_), Some(y)) => {
                changed.insert(y.0);
                j += 1;
            }
            (Some(x), None) => {
                changed.insert(x.0);
                i += 1;
            }
            (None, Some(y)) => {
                changed.insert(y.0);
                j += 1;
            }
            (None, None) => break,
        }
    }
    if changed.is_empty() {
        return;
    }
    let listed: BTreeSet<&str> = new.namespaces.iter().map(|n| n.name.as_str()).collect();
    if changed.iter().any(|ns| !listed.contains(ns)) {
        return cache.clear();
    }
    cache.invalidate(&changed);
}

#[cfg(test)]
mod tests {
    use super::super::compile::compile;
    use super::super::model::{NetworkPolicy, Pod, WorkloadEndpoint};
    use super::*;

    /// A small deterministic generator (no rand dependency in the library).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }
    }

    fn base() -> PolicyInput {
        let mut input = PolicyInput::default();
        for (i, ns) in ["a", "b", "c", "d"].iter().enumerate() {
            input.namespaces.push(Namespace {
                name: ns.to_string(),
                labels: [("team".to_string(), format!("t{}", i % 2))].into(),
            });
            for p in 0..6 {
                input.pods.push(Pod {
                    namespace: ns.to_string(),
                    name: format!("p{p}"),
                    ips: vec![
                        format!("10.{i}.0.{p}").parse().unwrap(),
                        format!("fd00:{i}::{p}").parse().unwrap(),
                    ],
                    labels: [("app".to_string(), format!("x{}", p % 3))].into(),
                    ports: vec![],
                });
            }
        }
        for k in [0, 7, 14, 21] {
            let pod = input.pods[k].clone();
            input.endpoints.push(WorkloadEndpoint {
                iface: format!("cali{k}"),
                pod,
            });
        }
        let yaml = [
            "metadata: {name: p1, namespace: a}\nspec: {podSelector: {matchLabels: {app: x0}}, ingress: [{from: [{podSelector: {matchLabels: {app: x1}}}]}]}",
            "metadata: {name: p2, namespace: b}\nspec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: t0}}, podSelector: {matchLabels: {app: x2}}}]}]}",
            "metadata: {name: p3, namespace: c}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}}]}]}",
            "metadata: {name: p4, namespace: d}\nspec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [t1]}]}}]}]}",
        ];
        input.policies = yaml
            .iter()
            .map(|y| serde_yaml_ng::from_str::<NetworkPolicy>(y).unwrap())
            .collect();
        input
    }

    #[test]
    fn incremental_equals_fresh_compile_over_random_changes() {
        let mut rng = Lcg(42);
        let mut input = base();
        let mut c = Compiler::new();
        let mut hits = 0;
        for step in 0..400 {
            match rng.next(8) {
                0..=2 => {
                    let k = rng.next(input.pods.len());
                    let v = format!("x{}", rng.next(4));
                    input.pods[k].labels.insert("app".into(), v);
                }
                3 => {
                    let k = rng.next(input.pods.len());
                    let ip = format!("10.9.{}.{}", step % 200, rng.next(250))
                        .parse()
                        .unwrap();
                    input.pods[k].ips[0] = ip;
                }
                4 => {
                    if input.pods.len() > 4 {
                        let k = rng.next(input.pods.len());
                        input.pods.remove(k);
                    }
                }
                5 => {
                    let ns = ["a", "b", "c", "d", "e"][rng.next(5)];
                    input.pods.push(Pod {
                        namespace: ns.into(),
                        name: format!("new{step}"),
                        ips: vec![format!("10.8.{}.{}", step % 200, rng.next(250))
                            .parse()
                            .unwrap()],
                        labels: [("app".to_string(), format!("x{}", rng.next(3)))].into(),
                        ports: vec![],
                    });
                }
                6 => {
                    let k = rng.next(input.namespaces.len());
                    let t = format!("t{}", rng.next(3));
                    input.namespaces[k].labels.insert("team".into(), t);
                }
                _ => {
                    let k = rng.next(input.endpoints.len());
                    let v = format!("x{}", rng.next(3));
                    input.endpoints[k].pod.labels.insert("app".into(), v);
                }
            }
            let before = c.cached_sets();
            let got = c.compile(input.clone());
            hits += usize::from(before > 0 && c.cached_sets() > 0);
            let want = compile(&input);
            assert_eq!(got, want, "step {step}");
        }
        assert!(hits > 100, "the cache was rarely used ({hits})");
    }
}
