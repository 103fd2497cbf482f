//! IPAM with block affinity, as Calico does it: each node claims whole blocks (`blockSize`,
//! /26 by default) from the IPPools that select it, and hands pod addresses out of its own blocks.
//! The daemon announces the blocks (not single pod routes) over BGP.
//!
//! State lives under `DIR/ipam/` and is shared by every node process on the machine:
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
//! A block file exists exactly while a node owns the block: claiming creates it, releasing the
//! node deletes it (with its allocations). Every operation is lock, read all blocks, decide
//! (pure: [`block`]), write changed files by temp + fsync + rename, unlock — so two nodes never
//! own one block and claims survive restarts. See [`store`] for corrupt files.
//!
//! Allocation: a handle that already has an address of the family gets it again (idempotent);
//! otherwise the lowest free address of the node's lowest affine block that lies in one of the
//! given pools; otherwise a new block is claimed from the first of those pools with room.
//! Every address of a block is handed out, `.0` included, as Calico does. Not done (Calico does
//! them): borrowing addresses from other nodes' blocks when the pools are full (Calico's
//! `strictAffinity: false`), releasing empty blocks, and handle reservations for static IPs.

pub mod block;
pub mod store;
pub mod watch;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;

pub use crate::datastore::IpFamily;
use crate::datastore::IpPool;
pub use block::Block;
use store::{Loaded, Store};

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
}

/// All blocks and the files that were skipped.
#[derive(Debug)]
pub struct IpamUsage {
    /// In CIDR order.
    pub blocks: Vec<BlockUsage>,
    pub corrupt: Vec<IpamError>,
}

/// IPAM over one datastore directory; cheap to create, safe to use from many threads and
/// processes at once (all coordination is the file lock).
#[derive(Debug)]
pub struct Ipam {
    store: Store,
    /// Corrupt files already logged, so a bad file is one log line, not one per call.
    warned: Mutex<HashSet<(PathBuf, String)>>,
}

fn pool_text(p: &IpPool) -> String {
    format!("{} ({}, /{} blocks)", p.metadata.name, p.cidr, p.block_size)
}

fn in_pool(block: &IpNet, pool: &IpPool) -> bool {
    pool.cidr.contains(block)
}

impl Ipam {
    /// IPAM state of the datastore directory `dir` (in `dir/ipam/`, created if needed).
    pub fn new(dir: impl AsRef<Path>) -> Result<Ipam, IpamError> {
        Ok(Ipam {
            store: Store::open(dir.as_ref())?,
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// The `DIR/ipam` directory.
    pub fn dir(&self) -> &Path {
        self.store.root()
    }

    fn load(&self, locked: &store::Locked<'_>) -> Result<Loaded, IpamError> {
        let loaded = locked.load()?;
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        for c in &loaded.corrupt {
            if warned.insert((c.path.clone(), c.message.clone())) {
                tracing::warn!(error = %c.to_error(), "corrupt IPAM block file");
            }
        }
        Ok(loaded)
    }

    /// Pools of `family`, enabled, in the given order. `pools` should come from
    /// `ClusterState::ip_pools_for_node`, which also applies each pool's `nodeSelector`.
    fn usable<'p>(
        node: &str,
        family: IpFamily,
        pools: &'p [IpPool],
    ) -> Result<Vec<&'p IpPool>, IpamError> {
        let usable: Vec<&IpPool> = pools
            .iter()
            .filter(|p| !p.disabled && IpFamily::of_net(&p.cidr) == family)
            .collect();
        if usable.is_empty() {
            return Err(IpamError::NoPools {
                node: node.to_string(),
                family,
            });
        }
        Ok(usable)
    }

    /// Claims a new block for `node` from the first pool with room; the caller holds the lock.
    fn claim_locked(
        &self,
        locked: &store::Locked<'_>,
        loaded: &mut Loaded,
        node: &str,
        family: IpFamily,
        pools: &[&IpPool],
    ) -> Result<IpNet, IpamError> {
        let taken = loaded.taken();
        for pool in pools {
            if let Some(cidr) = block::find_free_block(&pool.cidr, pool.block_size, &taken) {
                let b = Block::new(cidr, node, &pool.metadata.name);
                locked.write(&b)?;
                loaded.blocks.insert(cidr, b);
                tracing::info!(node, block = %cidr, pool = %pool.metadata.name, "claimed IPAM block");
                return Ok(cidr);
            }
        }
        Err(IpamError::PoolsExhausted {
            node: node.to_string(),
            family,
            pools: pools.iter().map(|p| pool_text(p)).collect(),
        })
    }

    /// Claims one more block for `node` (even if it has room in others); for pre-claiming a block
    /// to announce before the first pod, and for tests.
    pub fn claim_block(
        &self,
        node: &str,
        family: IpFamily,
        pools: &[IpPool],
    ) -> Result<IpNet, IpamError> {
        if node.is_empty() {
            return Err(IpamError::InvalidNode(node.to_string()));
        }
        let usable = Self::usable(node, family, pools)?;
        let locked = self.store.lock(true)?;
        let mut loaded = self.load(&locked)?;
        self.claim_locked(&locked, &mut loaded, node, family, &usable)
    }

    /// An address of `family` for `handle` on `node`: the one it already has, else the lowest
    /// free address in the node's blocks within `pools`, claiming a new block when they are full.
    pub fn allocate(
        &self,
        node: &str,
        handle: &str,
        family: IpFamily,
        pools: &[IpPool],
    ) -> Result<IpAddr, IpamError> {
        if node.is_empty() {
            return Err(IpamError::InvalidNode(node.to_string()));
        }
        if handle.is_empty() {
            return Err(IpamError::InvalidHandle(handle.to_string()));
        }
        let usable = Self::usable(node, family, pools)?;
        let locked = self.store.lock(true)?;
        let mut loaded = self.load(&locked)?;
        let existing = loaded
            .blocks
            .values()
            .filter(|b| b.family() == family)
            .flat_map(|b| &b.allocations)
            .find(|(_, h)| h.as_str() == handle)
            .map(|(ip, _)| *ip);
        if let Some(ip) = existing {
            return Ok(ip);
        }
        let affine = loaded
            .blocks
            .values()
            .filter(|b| b.is_affine_to(node) && b.family() == family)
            .filter(|b| usable.iter().any(|p| in_pool(&b.cidr, p)))
            .find(|b| b.free() > 0)
            .map(|b| b.cidr);
        let cidr = match affine {
            Some(c) => c,
            None => self.claim_locked(&locked, &mut loaded, node, family, &usable)?,
        };
        let block = loaded
            .blocks
            .get_mut(&cidr)
            .expect("block was just found or claimed");
        let ip = block.next_free().expect("block has a free address");
        block.allocations.insert(ip, handle.to_string());
        locked.write(block)?;
        tracing::debug!(node, handle, %ip, block = %cidr, "allocated address");
        Ok(ip)
    }

    /// Frees every address of `handle` (both families); returns them.
    pub fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let locked = self.store.lock(true)?;
        let mut loaded = self.load(&locked)?;
        let mut freed = Vec::new();
        for b in loaded.blocks.values_mut() {
            let before = b.allocations.len();
            b.allocations.retain(|ip, h| {
                let hit = h == handle;
                if hit {
                    freed.push(*ip);
                }
                !hit
            });
            if b.allocations.len() != before {
                locked.write(b)?;
            }
        }
        Ok(freed)
    }

    /// Releases every block affine to `node`, with the allocations in them (the node is gone),
    /// except blocks holding an address for which `in_use(address, handle)` is true (a pod that
    /// still exists): those are left as they are. Returns the released blocks.
    pub fn release_node(
        &self,
        node: &str,
        in_use: &dyn Fn(IpAddr, &str) -> bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        let locked = self.store.lock(true)?;
        let loaded = self.load(&locked)?;
        let mut released = Vec::new();
        for b in loaded.blocks.values().filter(|b| b.is_affine_to(node)) {
            if let Some((ip, handle)) = b.allocations.iter().find(|(ip, h)| in_use(**ip, h)) {
                tracing::warn!(node, block = %b.cidr, %ip, handle, "not releasing the block of a deleted node: a pod that exists still has an address in it");
                continue;
            }
            locked.remove(&b.cidr)?;
            tracing::info!(node, block = %b.cidr, allocations = b.allocations.len(), "released IPAM block");
            released.push(b.cidr);
        }
        Ok(released)
    }

    /// The blocks affine to `node`, in CIDR order.
    pub fn blocks_for(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        let locked = self.store.lock(false)?;
        Ok(self
            .load(&locked)?
            .blocks
            .values()
            .filter(|b| b.is_affine_to(node))
            .map(|b| b.cidr)
            .collect())
    }

    /// Every block's affinity, keyed by CIDR (for routes to other nodes' blocks).
    pub fn affinities(&self) -> Result<BTreeMap<IpNet, Option<String>>, IpamError> {
        let locked = self.store.lock(false)?;
        Ok(self
            .load(&locked)?
            .blocks
            .into_iter()
            .map(|(c, b)| (c, b.affinity))
            .collect())
    }

    /// The addresses held by `handle`.
    pub fn addresses_of(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let locked = self.store.lock(false)?;
        Ok(self
            .load(&locked)?
            .blocks
            .values()
            .flat_map(|b| &b.allocations)
            .filter(|(_, h)| h.as_str() == handle)
            .map(|(ip, _)| *ip)
            .collect())
    }

    /// Per-block use and the corrupt files, for status.
    pub fn usage(&self) -> Result<IpamUsage, IpamError> {
        let locked = self.store.lock(false)?;
        let loaded = self.load(&locked)?;
        Ok(IpamUsage {
            blocks: loaded
                .blocks
                .values()
                .map(|b| BlockUsage {
                    cidr: b.cidr,
                    affinity: b.affinity.clone(),
                    pool: b.pool.clone(),
                    used: b.allocations.len() as u64,
                    free: b.free(),
                })
                .collect(),
            corrupt: loaded.corrupt.iter().map(|c| c.to_error()).collect(),
        })
    }
}
