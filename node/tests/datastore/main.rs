//! One contract for both datastore backends (issue: the Kubernetes datastore): the same steps —
//! add, change, delete, an invalid version, an invalid new object, an unsupported setting — run
//! against the file backend (a directory, inotify) and the Kubernetes backend (kube-rs watchers
//! against the project's test API server, in-process on 127.0.0.1), and the snapshots must say
//! the same thing.
//!
//! Run with `cargo test -p calico-node --test datastore`.

mod backends;
mod bootstrap;

use std::sync::Arc;
use std::time::Duration;

use calico_node::datastore::Snapshot;

pub use backends::{Backend, FileBackend, KubeBackend};

/// How long a change may take to show.
pub const WITHIN: Duration = Duration::from_secs(5);

/// A pool as a user writes it (file spelling; the Kubernetes backend applies it as its CRD).
pub fn pool(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {name}\nspec:\n  \
         cidr: {cidr}\n  blockSize: 26\n"
    )
}

pub fn policy(name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  \
         namespace: default\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports:\n    - port: \
         {port}\n"
    )
}

fn cidr_of(s: &Snapshot, name: &str) -> Option<String> {
    s.state.ip_pools.get(name).map(|p| p.cidr.to_string())
}

fn errors(s: &Snapshot) -> Vec<String> {
    s.errors.iter().map(|e| e.to_string()).collect()
}

/// The contract, for one backend.
pub fn contract(b: &mut dyn Backend) {
    let name = b.name();
    // Add.
    b.put("pool-a", &pool("a", "10.1.0.0/16"));
    let s = b.wait(&|s| cidr_of(s, "a").is_some());
    assert_eq!(cidr_of(&s, "a").as_deref(), Some("10.1.0.0/16"), "{name}");
    assert!(errors(&s).is_empty(), "{name}: {:?}", errors(&s));
    // Change.
    b.put("pool-a", &pool("a", "10.2.0.0/16"));
    b.wait(&|s| cidr_of(s, "a").as_deref() == Some("10.2.0.0/16"));
    // An invalid version keeps the last good one, and the error names kind, name and field.
    b.put("pool-a", &pool("a", "10.2.0.0/33"));
    let s = b.wait(&|s| !s.errors.is_empty());
    assert_eq!(
        cidr_of(&s, "a").as_deref(),
        Some("10.2.0.0/16"),
        "{name}: last good lost"
    );
    let e = errors(&s).join("\n");
    assert!(
        e.contains("IPPool a") && e.contains("spec.cidr"),
        "{name}: {e}"
    );
    // Fixed: the error goes, the fix is used.
    b.put("pool-a", &pool("a", "10.3.0.0/16"));
    let s = b.wait(&|s| cidr_of(s, "a").as_deref() == Some("10.3.0.0/16"));
    assert!(errors(&s).is_empty(), "{name}: {:?}", errors(&s));
    // An invalid new object is reported and not held.
    b.put("pool-bad", &pool("bad", "nope"));
    let s = b.wait(&|s| !s.errors.is_empty());
    assert!(cidr_of(&s, "bad").is_none(), "{name}");
    assert!(
        errors(&s).join("\n").contains("IPPool bad"),
        "{name}: {:?}",
        errors(&s)
    );
    b.delete("pool-bad");
    b.wait(&|s| s.errors.is_empty());
    // A setting we parse but do not act on is refused, never ignored.
    b.put(
        "pool-nat",
        &pool("nat", "10.9.0.0/16")
            .replace("blockSize: 26\n", "blockSize: 26\n  vxlanMode: Always\n"),
    );
    let s = b.wait(&|s| !s.errors.is_empty());
    assert!(cidr_of(&s, "nat").is_none(), "{name}");
    assert!(
        errors(&s).join("\n").contains("vxlanMode"),
        "{name}: {:?}",
        errors(&s)
    );
    b.delete("pool-nat");
    // A policy: add, change, delete.
    b.put("np", &policy("web", 80));
    b.wait(&|s| s.state.network_policies.len() == 1 && s.errors.is_empty());
    b.put("np", &policy("web", 443));
    b.wait(&|s| {
        s.state
            .network_policies
            .values()
            .any(|p| format!("{:?}", p.policy).contains("443"))
    });
    b.delete("np");
    b.wait(&|s| s.state.network_policies.is_empty());
    // Delete: only now is the pool gone.
    b.delete("pool-a");
    let s = b.wait(&|s| cidr_of(s, "a").is_none());
    assert!(
        s.state.ip_pools.is_empty(),
        "{name}: {:?}",
        s.state.ip_pools
    );
}

#[test]
fn file_backend_keeps_the_contract() {
    let mut b = FileBackend::default();
    contract(&mut b);
}

#[test]
fn kubernetes_backend_keeps_the_contract() {
    let mut b = KubeBackend::start();
    contract(&mut b);
}

/// Waits (polling the backend's snapshot) until `pred` holds; panics with the last snapshot.
pub fn wait_for(
    name: &str,
    get: &dyn Fn() -> Arc<Snapshot>,
    pred: &dyn Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let t = std::time::Instant::now();
    loop {
        let s = get();
        if pred(&s) {
            return s;
        }
        if t.elapsed() > WITHIN {
            panic!(
                "{name}: not within {WITHIN:?}; last snapshot: {:?}",
                errors(&s)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
