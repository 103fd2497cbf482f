//! An in-memory [`BlockStore`] for the core's tests, with the optimistic rules of the
//! Kubernetes store (a version per block, a stale update or delete and a create of an
//! overlapping block conflict) and hooks that play other writers: a function run inside every
//! commit just before it is checked, which can change the state ("another node committed
//! between our load and our commit") or refuse the commit outright.

use std::collections::BTreeMap;
use std::sync::Mutex;

use ipnet::IpNet;

use super::core::{BlockStore, BlockTxn, Change, Commit, Loaded, Versioned};
use super::{Block, IpamError};

/// The stored blocks, each with its version.
#[derive(Debug, Default)]
pub struct MemState {
    pub blocks: BTreeMap<IpNet, (Block, u64)>,
    next_version: u64,
    /// Commits attempted (the hook's view includes the current one).
    pub commits: u64,
    /// Commits refused as conflicts.
    pub conflicts: u64,
}

impl MemState {
    fn bump(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    /// Another writer's create; false if the block (or an overlapping one) exists.
    pub fn create(&mut self, block: Block) -> bool {
        if self
            .blocks
            .keys()
            .any(|c| c.contains(&block.cidr) || block.cidr.contains(c))
        {
            return false;
        }
        let v = self.bump();
        self.blocks.insert(block.cidr, (block, v));
        true
    }

    /// Another writer's change to an existing block.
    pub fn update(&mut self, cidr: &IpNet, f: impl FnOnce(&mut Block)) {
        let v = self.bump();
        if let Some((b, ver)) = self.blocks.get_mut(cidr) {
            f(b);
            *ver = v;
        }
    }
}

/// What the hook decides about a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Check it as usual (after whatever the hook changed).
    Check,
    /// Refuse it as a conflict without looking.
    Conflict,
}

type HookFn = Box<dyn FnMut(&mut MemState, &Change<u64>) -> Hook + Send>;

pub struct MemStore {
    state: Mutex<MemState>,
    hook: Mutex<Option<HookFn>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore {
            state: Mutex::new(MemState::default()),
            hook: Mutex::new(None),
        }
    }

    /// Runs `hook` inside every later commit, before the commit is checked.
    pub fn set_hook(&self, hook: impl FnMut(&mut MemState, &Change<u64>) -> Hook + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
    }

    pub fn clear_hook(&self) {
        *self.hook.lock().unwrap() = None;
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&mut MemState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

pub struct MemTxn<'a> {
    store: &'a MemStore,
}

impl BlockStore for MemStore {
    type Version = u64;
    type Txn<'a> = MemTxn<'a>;

    fn begin(&self, _write: bool) -> Result<MemTxn<'_>, IpamError> {
        Ok(MemTxn { store: self })
    }
}

impl BlockTxn for MemTxn<'_> {
    type Version = u64;

    fn load(&mut self) -> Result<Loaded<u64>, IpamError> {
        let st = self.store.state.lock().unwrap();
        let mut out = Loaded::default();
        for (cidr, (block, version)) in &st.blocks {
            out.blocks.insert(
                *cidr,
                Versioned {
                    block: block.clone(),
                    version: *version,
                },
            );
        }
        Ok(out)
    }

    fn commit(&mut self, change: Change<u64>) -> Result<(), Commit> {
        // The hook changes the state as another writer would have, between load and commit.
        let mut hook = self.store.hook.lock().unwrap();
        let mut st = self.store.state.lock().unwrap();
        st.commits += 1;
        let verdict = match hook.as_mut() {
            Some(h) => h(&mut st, &change),
            None => Hook::Check,
        };
        let conflict = |st: &mut MemState, what: String| {
            st.conflicts += 1;
            Err(Commit::Conflict(what))
        };
        if verdict == Hook::Conflict {
            return conflict(&mut st, "injected conflict".into());
        }
        match change {
            Change::Create(b) => {
                let cidr = b.cidr;
                if !st.create(b) {
                    return conflict(&mut st, format!("block {cidr} already exists"));
                }
            }
            Change::Update(b, v) => match st.blocks.get(&b.cidr) {
                Some((_, cur)) if *cur == v => {
                    let nv = st.bump();
                    st.blocks.insert(b.cidr, (b, nv));
                }
                _ => return conflict(&mut st, format!("block {} changed", b.cidr)),
            },
            Change::Delete(cidr, v) => match st.blocks.get(&cidr) {
                Some((_, cur)) if *cur == v => {
                    st.blocks.remove(&cidr);
                }
                _ => return conflict(&mut st, format!("block {cidr} changed")),
            },
        }
        Ok(())
    }
}
