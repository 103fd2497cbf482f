//! The datastore: where the node reads the cluster's resources from, as typed snapshots.
//!
//! ```text
//!  backend (file dir today, Kubernetes API later)
//!     | YAML/JSON documents
//!     v
//!  parse::parse_yaml -> resources::decode -> state::StateBuilder
//!     |                                           |
//!     | Vec<ResourceError> (bad docs, skipped)    | ClusterState (Arc, immutable)
//!     '---------------------> Snapshot <----------'
//!                               | tokio::sync::watch (latest value wins)
//!                               v
//!                            the daemon (one owner of what it derives from it)
//! ```
//!
//! Invariants: a bad document never stops the others; every rejection is returned as data
//! ([`ResourceError`]) and logged once; a backend publishes a new [`Snapshot`] only when the state
//! or the error list changed, so bursts of edits coalesce into one wake-up; the final snapshot
//! depends only on the datastore's content, not the order changes arrived in.
//!
//! The [`Datastore`] trait says nothing about files: the file backend ([`file::FileDatastore`])
//! and the Kubernetes backend ([`kubernetes::KubeDatastore`]) hand out the same snapshots.

mod calico;
pub mod fields;
pub mod file;
pub mod kubernetes;
pub mod parse;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod state;

#[cfg(test)]
mod fuzz_tests;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

pub use file::{FileDatastore, FileDatastoreCfg};
pub use resources::{
    BgpConfiguration, BgpPassword, BgpPeer, Container, ContainerPort, EncapMode, IpPool, Labels,
    Namespace, NetworkPolicy, Node, NodeBgp, ObjectMeta, PeerAddr, Pod, Protocol, Resource,
    SourceAddress,
};
pub use selector::{Selector, SelectorError};
pub use state::{ClusterState, IpFamily, Resources, StateBuilder, DEFAULT_AS_NUMBER};

/// How bad a [`ResourceError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The resource was kept, but part of it cannot be honoured (e.g. a Secret reference in
    /// file mode).
    Warning,
    /// The document was skipped.
    Error,
    /// A kind calico-rs does not implement: the document is refused.
    Unsupported,
}

/// A rejected (or partly unusable) resource, for logs and status.
///
/// Displays as `pools.yaml doc 2: IPPool default-ipv4: spec.cidr: invalid CIDR "10.0.0.0/33"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error, serde::Serialize)]
#[error("{}", self.render())]
pub struct ResourceError {
    /// Where: backend-specific, e.g. `pools.yaml doc 2` or `pools.yaml doc 1 items[3]`.
    pub origin: String,
    pub kind: Option<String>,
    /// `name` or `namespace/name`.
    pub name: Option<String>,
    /// Dotted field path, e.g. `spec.cidr`.
    pub field: Option<String>,
    pub message: String,
    pub severity: Severity,
}

impl ResourceError {
    /// Whether the document (or file) failed: not a mere warning. A file with such an error
    /// keeps the resources it last held (see [`file`]).
    pub fn is_failure(&self) -> bool {
        self.severity != Severity::Warning
    }

    /// A policy kind that is refused as unsupported: what it would isolate is not isolated, so
    /// the node reports itself not ready.
    pub fn is_unenforced_policy(&self) -> bool {
        self.severity == Severity::Unsupported
            && self
                .kind
                .as_deref()
                .is_some_and(|k| resources::POLICY_KINDS.contains(&k))
    }

    fn render(&self) -> String {
        let mut s = self.origin.clone();
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => s += &format!(": {k} {n}"),
            (Some(k), None) => s += &format!(": {k}"),
            (None, Some(n)) => s += &format!(": {n}"),
            (None, None) => {}
        }
        if let Some(f) = &self.field {
            s += &format!(": {f}");
        }
        s + ": " + &self.message
    }
}

/// One consistent view of the datastore.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub state: ClusterState,
    /// Rejected documents (skipped) and warnings, in a stable order.
    pub errors: Vec<ResourceError>,
    /// Increases by one with every published snapshot (0 before the first read completes).
    pub revision: u64,
    /// Why the backend's view may be behind the datastore (the API server unreachable, a watch
    /// failing): what it holds is kept, and the daemon reports itself not ready. `None`: in sync.
    pub not_in_sync: Option<String>,
}

/// Failures of the datastore itself (not of one resource).
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("datastore directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("datastore directory {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("Kubernetes datastore: {0}")]
    Kube(String),
    #[error("datastore directory {path}: cannot watch for changes: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A source of cluster state. Implementations keep their own watch running and publish a new
/// [`Snapshot`] after every change (coalescing bursts).
pub trait Datastore: Send + Sync {
    /// Reads the datastore now and returns a fresh snapshot (also published to watchers if it
    /// differs from the last one).
    fn snapshot(&self) -> Result<Arc<Snapshot>, DatastoreError>;

    /// The latest snapshot and every later one. The first value is already a full read.
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>>;

    /// When the backend's worker last made progress (for liveness).
    fn last_progress(&self) -> std::time::Instant;
}
