//! The IPAM rules, written once over any [`BlockStore`]: claim a block for a node, allocate and
//! release by handle, release a deleted node's blocks, and the read-only views.
//!
//! ```text
//!  IpamCore::allocate ──begin──> store txn ──load──> Loaded (every block + its version)
//!        ^                                              │ decide (pure, see block.rs)
//!        │ Conflict: back off, re-load, decide again    v
//!        └──────────────────────────────────── commit(Change) ── Ok ──> done
//! ```
//! A store hands out each block with an opaque *version* and takes it back with the change; a
//! commit whose version is stale (or a create of a block that already exists) is a
//! [`Commit::Conflict`], and the whole operation is re-run from a fresh load, at most
//! [`RetryCfg::tries`] times with a small jittered backoff, then fails with
//! [`IpamError::Contended`] naming the node or handle. The file store holds its lock for the
//! whole transaction and never conflicts; the Kubernetes store relies on `resourceVersion`.
//!
//! Each commit is one change to one block, because the Kubernetes API has no multi-object
//! transaction: operations that touch several blocks (release of a dual-stack handle, release of
//! a node) commit them one by one, and each step is correct on its own, so a conflict half way
//! re-runs the rest from a fresh load and what was already done is not done twice.
//!
//! Invariants: a block is created only if no block overlapping it exists in the load (and the
//! store refuses a create of an existing block), so no block has two owners; an address is
//! written into a block only with that block's version, so no address is handed out twice.
//! Not done: borrowing addresses from other nodes' blocks, releasing empty blocks.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;

use super::block::{self, Block};
use super::{BlockUsage, IpFamily, IpPool, IpamError, IpamUsage};

/// One block as loaded, with the version its store needs to change it safely.
#[derive(Clone, Debug)]
pub struct Versioned<V> {
    pub block: Block,
    pub version: V,
}

/// Where a block that could not be used came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A block file of the file store.
    File(PathBuf),
    /// An `IPAMBlock` object, by name.
    Object(String),
}

/// A stored block that was skipped; its CIDR stays taken so its addresses are never reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    pub origin: Origin,
    /// The CIDR kept as taken; `None` if not even the name says which block it is.
    pub cidr: Option<IpNet>,
    pub message: String,
}

impl Corrupt {
    pub fn to_error(&self) -> IpamError {
        match &self.origin {
            Origin::File(path) => IpamError::CorruptBlock {
                path: path.clone(),
                message: self.message.clone(),
            },
            Origin::Object(name) => IpamError::CorruptObject {
                name: name.clone(),
                message: self.message.clone(),
            },
        }
    }
}

/// Every block of a store at one moment.
#[derive(Debug)]
pub struct Loaded<V> {
    /// Usable blocks by CIDR.
    pub blocks: BTreeMap<IpNet, Versioned<V>>,
    pub corrupt: Vec<Corrupt>,
    /// Blocks another writer is deleting (Calico's `deleted: true`): taken, not usable.
    pub deleting: Vec<IpNet>,
}

impl<V> Default for Loaded<V> {
    fn default() -> Self {
        Loaded {
            blocks: BTreeMap::new(),
            corrupt: Vec::new(),
            deleting: Vec::new(),
        }
    }
}

impl<V> Loaded<V> {
    /// Every CIDR no one may claim: usable blocks, corrupt ones and those being deleted.
    pub fn taken(&self) -> Vec<IpNet> {
        self.blocks
            .keys()
            .copied()
            .chain(self.corrupt.iter().filter_map(|c| c.cidr))
            .chain(self.deleting.iter().copied())
            .collect()
    }
}

/// One change to one block, with the version it was decided on.
#[derive(Clone, Debug)]
pub enum Change<V> {
    /// Claim: the block must not exist yet.
    Create(Block),
    /// New allocations of a block that must still be at `V`.
    Update(Block, V),
    /// Release: the block (with its allocations) goes, if still at `V`.
    Delete(IpNet, V),
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum Commit {
    /// Another writer got there first (the block changed, appeared or went): re-load and
    /// decide again. The text says what collided, for the error after the last try.
    Conflict(String),
    /// Anything else: the operation fails with this error.
    Failed(IpamError),
}

impl From<IpamError> for Commit {
    fn from(e: IpamError) -> Commit {
        Commit::Failed(e)
    }
}

/// A store of blocks. A transaction is a load followed by commits decided on that load.
pub trait BlockStore: Send + Sync {
    /// Opaque to the core: given out with each block by `load`, handed back with its change.
    type Version: Clone + fmt::Debug;
    type Txn<'a>: BlockTxn<Version = Self::Version>
    where
        Self: 'a;

    /// Starts a transaction: `write` if it will commit (the file store locks accordingly).
    fn begin(&self, write: bool) -> Result<Self::Txn<'_>, IpamError>;
}

/// One transaction on a [`BlockStore`].
pub trait BlockTxn {
    type Version;

    /// Every block; a block that cannot be used is reported in `corrupt`, not an error.
    fn load(&mut self) -> Result<Loaded<Self::Version>, IpamError>;

    /// Applies one change atomically, or reports a conflict and changes nothing.
    fn commit(&mut self, change: Change<Self::Version>) -> Result<(), Commit>;
}

/// How often and how patiently a conflicting operation is re-run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryCfg {
    /// Attempts in all, the first included.
    pub tries: u32,
    /// Backoff before the second attempt; doubles each time up to `max_backoff`; each wait is
    /// a random fraction of it, so colliding writers spread out.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryCfg {
    fn default() -> Self {
        RetryCfg {
            tries: 20,
            backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(100),
        }
    }
}

impl RetryCfg {
    fn wait(&self, attempt: u32) -> Duration {
        let cap = self
            .backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        // RandomState is seeded randomly per instance: enough jitter without a dependency.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Duration::from_nanos(nanos / 2 + r % (nanos / 2 + 1))
    }
}

/// What a step of a retried operation can end in.
enum Step {
    Conflict(String),
    Failed(IpamError),
}

impl From<Commit> for Step {
    fn from(c: Commit) -> Step {
        match c {
            Commit::Conflict(m) => Step::Conflict(m),
            Commit::Failed(e) => Step::Failed(e),
        }
    }
}

impl From<IpamError> for Step {
    fn from(e: IpamError) -> Step {
        Step::Failed(e)
    }
}

/// IPAM over a [`BlockStore`]; safe to share between threads.
#[derive(Debug)]
pub struct IpamCore<S> {
    pub(crate) store: S,
    retry: RetryCfg,
    /// Corrupt blocks already logged, so a bad block is one log line, not one per call.
    warned: Mutex<HashSet<(Origin, String)>>,
}

fn pool_text(p: &IpPool) -> String {
    format!("{} ({}, /{} blocks)", p.metadata.name, p.cidr, p.block_size)
}

fn in_pool(block: &IpNet, pool: &IpPool) -> bool {
    pool.cidr.contains(block)
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

/// A new block for `node` from the first pool with room (pure).
fn new_block<V>(
    loaded: &Loaded<V>,
    node: &str,
    family: IpFamily,
    pools: &[&IpPool],
) -> Result<Block, IpamError> {
    let taken = loaded.taken();
    pools
        .iter()
        .find_map(|pool| {
            block::find_free_block(&pool.cidr, pool.block_size, &taken)
                .map(|cidr| Block::new(cidr, node, &pool.metadata.name))
        })
        .ok_or_else(|| IpamError::PoolsExhausted {
            node: node.to_string(),
            family,
            pools: pools.iter().map(|p| pool_text(p)).collect(),
        })
}

fn check_node(node: &str) -> Result<(), IpamError> {
    if node.is_empty() {
        return Err(IpamError::InvalidNode(node.to_string()));
    }
    Ok(())
}

impl<S: BlockStore> IpamCore<S> {
    pub fn with_store(store: S) -> IpamCore<S> {
        IpamCore {
            store,
            retry: RetryCfg::default(),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// The same IPAM with another retry policy.
    pub fn with_retry(mut self, retry: RetryCfg) -> IpamCore<S> {
        self.retry = retry;
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn load(&self, txn: &mut S::Txn<'_>) -> Result<Loaded<S::Version>, IpamError> {
        let loaded = txn.load()?;
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        for c in &loaded.corrupt {
            if warned.insert((c.origin.clone(), c.message.clone())) {
                tracing::warn!(error = %c.to_error(), "corrupt IPAM block");
            }
        }
        Ok(loaded)
    }

    /// Runs `step` in fresh transactions until it does not conflict; `op` names the operation
    /// (node, handle) for the error after the last try.
    fn retried<R>(
        &self,
        op: impl Fn() -> String,
        mut step: impl FnMut(&mut S::Txn<'_>, Loaded<S::Version>) -> Result<R, Step>,
    ) -> Result<R, IpamError> {
        let mut last = String::new();
        for attempt in 0..self.retry.tries.max(1) {
            if attempt > 0 {
                std::thread::sleep(self.retry.wait(attempt - 1));
            }
            let mut txn = self.store.begin(true)?;
            let loaded = self.load(&mut txn)?;
            match step(&mut txn, loaded) {
                Ok(r) => return Ok(r),
                Err(Step::Failed(e)) => return Err(e),
                Err(Step::Conflict(what)) => {
                    tracing::debug!(op = %op(), attempt, conflict = %what, "IPAM write conflict, retrying");
                    last = what;
                }
            }
        }
        Err(IpamError::Contended {
            op: op(),
            tries: self.retry.tries.max(1),
            last,
        })
    }

    fn read(&self) -> Result<Loaded<S::Version>, IpamError> {
        let mut txn = self.store.begin(false)?;
        self.load(&mut txn)
    }

    /// Claims one more block for `node` (even if it has room in others); for pre-claiming a block
    /// to announce before the first pod, and for tests.
    pub fn claim_block(
        &self,
        node: &str,
        family: IpFamily,
        pools: &[IpPool],
    ) -> Result<IpNet, IpamError> {
        check_node(node)?;
        let usable = usable(node, family, pools)?;
        self.retried(
            || format!("node {node}: claim an {family} block"),
            |txn, loaded| {
                let b = new_block(&loaded, node, family, &usable)?;
                let cidr = b.cidr;
                let pool = b.pool.clone().unwrap_or_default();
                txn.commit(Change::Create(b))?;
                tracing::info!(node, block = %cidr, pool, "claimed IPAM block");
                Ok(cidr)
            },
        )
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
        check_node(node)?;
        if handle.is_empty() {
            return Err(IpamError::InvalidHandle(handle.to_string()));
        }
        let usable = usable(node, family, pools)?;
        self.retried(
            || format!("node {node}: allocate an {family} address for handle {handle}"),
            |txn, mut loaded| {
                let existing = loaded
                    .blocks
                    .values()
                    .filter(|v| v.block.family() == family)
                    .flat_map(|v| &v.block.allocations)
                    .find(|(_, h)| h.as_str() == handle)
                    .map(|(ip, _)| *ip);
                if let Some(ip) = existing {
                    return Ok(ip);
                }
                let affine = loaded
                    .blocks
                    .values()
                    .filter(|v| v.block.is_affine_to(node) && v.block.family() == family)
                    .filter(|v| usable.iter().any(|p| in_pool(&v.block.cidr, p)))
                    .find(|v| v.block.free() > 0)
                    .map(|v| v.block.cidr);
                let (ip, cidr) = match affine.and_then(|c| loaded.blocks.remove(&c)) {
                    Some(Versioned { mut block, version }) => {
                        let ip = block.next_free().expect("block has a free address");
                        block.allocations.insert(ip, handle.to_string());
                        let cidr = block.cidr;
                        txn.commit(Change::Update(block, version))?;
                        (ip, cidr)
                    }
                    None => {
                        // Claim and allocate in one create: no empty block is left behind if
                        // the allocation cannot be written.
                        let mut block = new_block(&loaded, node, family, &usable)?;
                        let ip = block.next_free().expect("a new block is empty");
                        block.allocations.insert(ip, handle.to_string());
                        let (cidr, pool) = (block.cidr, block.pool.clone().unwrap_or_default());
                        txn.commit(Change::Create(block))?;
                        tracing::info!(node, block = %cidr, pool, "claimed IPAM block");
                        (ip, cidr)
                    }
                };
                tracing::debug!(node, handle, %ip, block = %cidr, "allocated address");
                Ok(ip)
            },
        )
    }

    /// Frees every address of `handle` (both families); returns them.
    pub fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut freed = Vec::new();
        self.retried(
            || format!("release handle {handle}"),
            |txn, loaded| {
                for Versioned { mut block, version } in loaded.blocks.into_values() {
                    let mut mine = Vec::new();
                    block.allocations.retain(|ip, h| {
                        let hit = h == handle;
                        if hit {
                            mine.push(*ip);
                        }
                        !hit
                    });
                    if !mine.is_empty() {
                        txn.commit(Change::Update(block, version))?;
                        freed.extend(mine);
                    }
                }
                Ok(())
            },
        )?;
        freed.sort();
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
        let mut released = Vec::new();
        let mut kept = BTreeMap::new();
        self.retried(
            || format!("node {node}: release its blocks"),
            |txn, loaded| {
                for v in loaded.blocks.into_values() {
                    if !v.block.is_affine_to(node) {
                        continue;
                    }
                    let b = &v.block;
                    if let Some((ip, h)) = b.allocations.iter().find(|(ip, h)| in_use(**ip, h)) {
                        kept.insert(b.cidr, (*ip, h.clone()));
                        continue;
                    }
                    kept.remove(&b.cidr);
                    let allocations = b.allocations.len();
                    txn.commit(Change::Delete(b.cidr, v.version))?;
                    tracing::info!(node, block = %b.cidr, allocations, "released IPAM block");
                    released.push(b.cidr);
                }
                Ok(())
            },
        )?;
        for (cidr, (ip, handle)) in kept {
            tracing::warn!(node, block = %cidr, %ip, handle, "not releasing the block of a deleted node: a pod that exists still has an address in it");
        }
        released.sort();
        Ok(released)
    }

    /// The blocks affine to `node`, in CIDR order.
    pub fn blocks_for(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        Ok(self
            .read()?
            .blocks
            .values()
            .filter(|v| v.block.is_affine_to(node))
            .map(|v| v.block.cidr)
            .collect())
    }

    /// Every block's affinity, keyed by CIDR (for routes to other nodes' blocks).
    pub fn affinities(&self) -> Result<BTreeMap<IpNet, Option<String>>, IpamError> {
        Ok(self
            .read()?
            .blocks
            .into_iter()
            .map(|(c, v)| (c, v.block.affinity))
            .collect())
    }

    /// The addresses held by `handle`.
    pub fn addresses_of(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self
            .read()?
            .blocks
            .values()
            .flat_map(|v| &v.block.allocations)
            .filter(|(_, h)| h.as_str() == handle)
            .map(|(ip, _)| *ip)
            .collect())
    }

    /// Per-block use and the corrupt blocks, for status.
    pub fn usage(&self) -> Result<IpamUsage, IpamError> {
        let loaded = self.read()?;
        Ok(IpamUsage {
            blocks: loaded.blocks.values().map(|v| usage_of(&v.block)).collect(),
            corrupt: loaded.corrupt.iter().map(|c| c.to_error()).collect(),
        })
    }
}

/// The use of one block.
pub fn usage_of(b: &Block) -> BlockUsage {
    BlockUsage {
        cidr: b.cidr,
        affinity: b.affinity.clone(),
        pool: b.pool.clone(),
        used: b.allocations.len() as u64,
        free: b.free(),
        allocations: b
            .allocations
            .iter()
            .map(|(ip, h)| (*ip, h.clone()))
            .collect(),
    }
}
