//! IPAM with block affinity, as Calico does it: each node claims whole blocks (`blockSize`,
//! /26 by default) from the IPPools that select it, and hands pod addresses out of its own blocks.
//! The daemon announces the blocks (not single pod routes) over BGP.
//!
//! Layout: the rules are written once in [`core`] ([`IpamCore`]), over a [`BlockStore`] that
//! loads every block with a version and commits one change to one block at a time; a conflict
//! (another writer got there first) re-runs the operation from a fresh load. Two stores:
//! - [`store`] ([`FileStore`], [`Ipam`]): the file datastore's `DIR/ipam/`, shared by every node
//!   process on the machine, serialised by a file lock (so it never conflicts):
//! ```text
//! DIR/ipam/.lock                      flock: exclusive to change, shared to read
//! DIR/ipam/blocks/10-244-0-64-26.yaml one file per claimed block (Calico's IPAMBlock name):
//!     kind: IPAMBlock
//!     cidr: 10.244.0.64/26
//!     affinity: host:node-1           the owning node
//!     pool: default-ipv4              pool it came from (informational)
//!     allocations:                    address -> handle (e.g. "namespace/pod")
//!       10.244.0.64: default/web-0
//! ```
//! - [`kdd`] ([`kdd::KddStore`], [`kdd::KddIpam`]): Calico's `IPAMBlock`, `BlockAffinity` and
//!   `IPAMHandle` objects on the Kubernetes API, with `resourceVersion` as the version.
//!
//! The daemon reads blocks as an [`watch::IpamView`] from either [`watch::IpamWatch`] (inotify)
//! or [`kdd::watch::KddIpamWatch`] (a kube watcher).
//!
//! Invariants: a block exists exactly while a node owns it: claiming creates it, releasing the
//! node deletes it (with its allocations); a create of an existing block and a write at a stale
//! version are refused, so two nodes never own one block and an address is never handed out
//! twice; claims survive restarts. A stored block that cannot be read is skipped with an error
//! naming it and its CIDR stays taken.
//!
//! Allocation: a handle that already has an address of the family gets it again (idempotent);
//! otherwise the lowest free address of the node's lowest affine block that lies in one of the
//! given pools; otherwise a new block is claimed (with the address in it) from the first of
//! those pools with room. Every address of a block is handed out, `.0` included, as Calico
//! does. Not done (Calico does them): borrowing addresses from other nodes' blocks when the
//! pools are full (Calico's `strictAffinity: false`), releasing empty blocks, handle
//! reservations for static IPs, IPAMConfig.

pub mod block;
pub mod core;
pub mod kdd;
pub mod store;
pub mod watch;

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod memory;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use ipnet::IpNet;

pub use self::core::{
    BlockStore, BlockTxn, Change, Commit, Corrupt, IpamCore, Loaded, Origin, RetryCfg, Versioned,
};
pub use crate::datastore::IpFamily;
use crate::datastore::IpPool;
pub use block::Block;
pub use store::FileStore;

/// IPAM failures; messages name the node, pool, handle or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("IPAM state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: no enabled {family} IPPool selects this node")]
    NoPools { node: String, family: IpFamily },
    #[error("node {node}: no free {family} block: {}", exhausted_text(.pools))]
    PoolsExhausted {
        node: String,
        family: IpFamily,
        /// `name (cidr, /blockSize blocks)` of each pool tried.
        pools: Vec<String>,
    },
    #[error("IPAM block file {path}: {message}; skipped, its addresses stay taken")]
    CorruptBlock { path: PathBuf, message: String },
    #[error("IPAMBlock {name}: {message}; skipped, its addresses stay taken")]
    CorruptObject { name: String, message: String },
    #[error("{op}: gave up after {tries} tries, other writers kept changing the same blocks (last: {last})")]
    Contended {
        op: String,
        tries: u32,
        last: String,
    },
    #[error("IPAM {object}: Kubernetes API: {message}")]
    Api { object: String, message: String },
    #[error("IPAM handle {0:?}: must be non-empty")]
    InvalidHandle(String),
    #[error("IPAM node name {0:?}: must be non-empty")]
    InvalidNode(String),
}

fn exhausted_text(pools: &[String]) -> String {
    match pools {
        [one] => format!("IPPool {one} is exhausted (every block is claimed)"),
        many => format!(
            "IPPools {} are exhausted (every block is claimed)",
            many.join(", ")
        ),
    }
}

/// Use of one block, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUsage {
    pub cidr: IpNet,
    pub affinity: Option<String>,
    pub pool: Option<String>,
    pub used: u64,
    pub free: u64,
    /// Every allocated address with its handle.
    pub allocations: Vec<(std::net::IpAddr, String)>,
}

/// All blocks and the stored blocks that were skipped.
#[derive(Debug)]
pub struct IpamUsage {
    /// In CIDR order.
    pub blocks: Vec<BlockUsage>,
    pub corrupt: Vec<IpamError>,
}

/// IPAM over one datastore directory (the file store); cheap to create, safe to use from many
/// threads and processes at once (all coordination is the file lock).
pub type Ipam = IpamCore<FileStore>;

impl IpamCore<FileStore> {
    /// IPAM state of the datastore directory `dir` (in `dir/ipam/`, created if needed).
    pub fn new(dir: impl AsRef<Path>) -> Result<Ipam, IpamError> {
        Ok(IpamCore::with_store(FileStore::open(dir.as_ref())?))
    }

    /// The `DIR/ipam` directory.
    pub fn dir(&self) -> &Path {
        self.store.root()
    }
}
