//! The Kubernetes (Calico KDD) [`BlockStore`]: IPAM in Calico's own objects in
//! `crd.projectcalico.org/v1`, so a cluster's IPAM looks as Calico's would, with optimistic
//! concurrency only (`resourceVersion`; a 409 means another writer got there first).
//!
//! ```text
//!  IPAMBlock     10-244-0-64-26      spec: cidr, affinity host:NODE, allocations, unallocated,
//!                                    attributes [{handle_id, secondary}], sequenceNumber, ...
//!  BlockAffinity n1-10-244-0-64-26   spec: state pending|confirmed, node, cidr, deleted "false",
//!                                    type host
//!  IPAMHandle    k8s-pod-network.X   spec: handleID, block {CIDR: count}, deleted
//! ```
//! (see [`model`] for the fields and names). A load lists the IPAMBlocks; a block's version is
//! the object as read, whose `resourceVersion` guards the write:
//! - claim (create): BlockAffinity `pending`, create the IPAMBlock (409 = someone else has it:
//!   our pending affinity is deleted and the core picks another block), affinity `confirmed`;
//! - allocate / release an address (update): replace the IPAMBlock at its resourceVersion;
//! - release a node's block (delete): delete the IPAMBlock with a resourceVersion
//!   precondition, then its BlockAffinity.
//!
//! After a block write the IPAMHandles of the handles whose count in it changed get the
//! difference (create / update at resourceVersion / delete when empty, re-read on 409). The
//! blocks are the record: this code never reads handles (release by handle scans the blocks),
//! they are kept for Calico's tools, and a handle write that fails is logged, not an error.
//!
//! Threads: the trait is sync and kube is async. The store holds a [`tokio::runtime::Handle`]
//! to the runtime its [`kube::Client`] was made on (the client's buffer and connection pool
//! live there, so a runtime of our own would not do) and runs each request with
//! `block_in_place(|| handle.block_on(..))`. So it may be called from a plain thread, from
//! `tokio::task::spawn_blocking` (preferred from async code), or directly on a worker of a
//! multi-thread runtime, which then stalls that worker's task for the request (tolerable for
//! the daemon's rare `release_node`). On a current-thread runtime it panics (tokio's rule).
//!
//! Not done: Calico's two-step deletes (`deleted: true`, then delete) — we delete with a
//! precondition instead, and treat blocks others marked `deleted` as taken; cleaning up
//! affinities left `pending` by a crash; IPAMConfig (strictAffinity, maxBlocksPerHost).

pub mod model;
pub mod watch;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, PostParams, Preconditions};
use kube::core::TypeMeta;
use kube::Client;
use serde_json::Value;

use super::core::{
    BlockStore, BlockTxn, Change, Commit, Corrupt, IpamCore, Loaded, Origin, Versioned,
};
use super::{Block, IpamError};
use model::{
    BlockAffinitySpec, IpamBlockSpec, IpamHandleSpec, API_VERSION, POOL_ANNOTATION,
    STATE_CONFIRMED, STATE_PENDING,
};

/// Longest wait for one API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of one IPAMHandle change that keeps conflicting.
const HANDLE_TRIES: u32 = 10;

/// IPAM on the Kubernetes API.
pub type KddIpam = IpamCore<KddStore>;

impl IpamCore<KddStore> {
    /// IPAM in the cluster `client` talks to; `rt` is the runtime the client was made on.
    pub fn kubernetes(client: Client, rt: tokio::runtime::Handle) -> KddIpam {
        IpamCore::with_store(KddStore::new(client, rt))
    }
}

/// An IPAMBlock as loaded: the object (for its metadata and resourceVersion), its spec and
/// the block read from it.
#[derive(Clone, Debug)]
pub struct KddVersion {
    obj: Arc<DynamicObject>,
    spec: Arc<IpamBlockSpec>,
    block: Arc<Block>,
}

impl KddVersion {
    pub fn resource_version(&self) -> Option<&str> {
        self.obj.metadata.resource_version.as_deref()
    }
}

pub struct KddStore {
    rt: tokio::runtime::Handle,
    blocks: Api<DynamicObject>,
    affinities: Api<DynamicObject>,
    handles: Api<DynamicObject>,
}

impl std::fmt::Debug for KddStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KddStore")
    }
}

fn api_err(object: impl Into<String>, e: kube::Error) -> IpamError {
    IpamError::Api {
        object: object.into(),
        message: e.to_string(),
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn object(kind: &str, name: &str, spec: &impl serde::Serialize) -> DynamicObject {
    DynamicObject {
        types: Some(TypeMeta {
            api_version: API_VERSION.into(),
            kind: kind.into(),
        }),
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: serde_json::json!({ "spec": spec }),
    }
}

fn spec_of<T: serde::de::DeserializeOwned>(o: &DynamicObject) -> Result<T, String> {
    serde_json::from_value(o.data.get("spec").cloned().unwrap_or(Value::Null))
        .map_err(|e| format!("spec: {e}"))
}

fn precondition(o: &DynamicObject) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: o.metadata.resource_version.clone(),
            uid: o.metadata.uid.clone(),
        }),
        ..Default::default()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

impl KddStore {
    pub fn new(client: Client, rt: tokio::runtime::Handle) -> KddStore {
        KddStore {
            rt,
            blocks: Api::all_with(client.clone(), &model::ipam_blocks()),
            affinities: Api::all_with(client.clone(), &model::block_affinities()),
            handles: Api::all_with(client, &model::ipam_handles()),
        }
    }

    /// Runs one request on the client's runtime, with a timeout (see the module's threads).
    fn run<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        tokio::task::block_in_place(|| {
            self.rt
                .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, f).await })
        })
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("{what}: no answer within {REQUEST_TIMEOUT:?}").into(),
            ))
        })
    }

    fn load(&self) -> Result<Loaded<KddVersion>, IpamError> {
        let list = self
            .run("list IPAMBlocks", self.blocks.list(&Default::default()))
            .map_err(|e| api_err("IPAMBlocks", e))?;
        let mut out = Loaded::default();
        for obj in list.items {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let pool = obj
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(POOL_ANNOTATION))
                .cloned();
            let corrupt = |cidr, message| Corrupt {
                origin: Origin::Object(name.clone()),
                cidr,
                message,
            };
            let spec: IpamBlockSpec = match spec_of(&obj) {
                Ok(s) => s,
                Err(m) => {
                    let cidr = Block::parse_object_name(&name).map(|c| c.trunc());
                    out.corrupt.push(corrupt(cidr, m));
                    continue;
                }
            };
            match model::parse_block(&name, &spec, pool.as_deref()) {
                Ok(block) if spec.deleted => out.deleting.push(block.cidr),
                Ok(block) => {
                    let version = KddVersion {
                        obj: Arc::new(obj),
                        spec: Arc::new(spec),
                        block: Arc::new(block.clone()),
                    };
                    out.blocks.insert(block.cidr, Versioned { block, version });
                }
                Err(bad) => out.corrupt.push(corrupt(bad.cidr, bad.message)),
            }
        }
        out.corrupt.sort_by(|a, b| a.origin.cmp(&b.origin));
        Ok(out)
    }

    fn block_object(&self, block: &Block, old: Option<&KddVersion>) -> DynamicObject {
        let spec = model::block_spec(block, old.map(|v| &*v.spec), &now());
        let mut obj = match old {
            Some(v) => {
                let mut o = (*v.obj).clone();
                o.types = Some(TypeMeta {
                    api_version: API_VERSION.into(),
                    kind: "IPAMBlock".into(),
                });
                if let Value::Object(m) = &mut o.data {
                    m.insert(
                        "spec".into(),
                        serde_json::to_value(&spec).unwrap_or_default(),
                    );
                }
                o
            }
            None => object("IPAMBlock", &Block::object_name(&block.cidr), &spec),
        };
        if let Some(pool) = &block.pool {
            obj.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(POOL_ANNOTATION.into(), pool.clone());
        }
        obj
    }

    fn create(&self, block: Block) -> Result<(), Commit> {
        let name = Block::object_name(&block.cidr);
        let node = block.affinity.clone().unwrap_or_default();
        let aff_name = model::affinity_name(&node, &block.cidr);
        let pending = object(
            "BlockAffinity",
            &aff_name,
            &BlockAffinitySpec::host(&node, &block.cidr, STATE_PENDING),
        );
        let pp = PostParams::default();
        let ours = match self.run(
            "create BlockAffinity",
            self.affinities.create(&pp, &pending),
        ) {
            Ok(o) => Some(o),
            // Left by an earlier try of this node: it is confirmed below if the block is ours.
            Err(e) if code(&e) == Some(409) => None,
            Err(e) => return Err(api_err(format!("BlockAffinity {aff_name}"), e).into()),
        };
        let obj = self.block_object(&block, None);
        if let Err(e) = self.run("create IPAMBlock", self.blocks.create(&pp, &obj)) {
            if let Some(a) = &ours {
                let dp = precondition(a);
                if let Err(e) = self.run("delete", self.affinities.delete(&aff_name, &dp)) {
                    tracing::warn!(affinity = aff_name, error = %e, "cannot delete the pending BlockAffinity of a block not claimed");
                }
            }
            return Err(match code(&e) {
                Some(409) => Commit::Conflict(format!("IPAMBlock {name} already exists")),
                _ => api_err(format!("IPAMBlock {name}"), e).into(),
            });
        }
        self.confirm(&aff_name, ours);
        self.handles_changed(&block.cidr, &BTreeMap::new(), &block.allocations);
        Ok(())
    }

    /// Marks our affinity `confirmed`; the block is ours already, so a failure is only logged.
    fn confirm(&self, name: &str, created: Option<DynamicObject>) {
        let mut current = created;
        for _ in 0..HANDLE_TRIES {
            let mut obj = match current.take() {
                Some(o) => o,
                None => match self.run("get", self.affinities.get_opt(name)) {
                    Ok(Some(o)) => o,
                    Ok(None) => {
                        tracing::warn!(
                            affinity = name,
                            "BlockAffinity went away before it was confirmed"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(affinity = name, error = %e, "cannot read BlockAffinity");
                        return;
                    }
                },
            };
            let Ok(mut spec) = spec_of::<BlockAffinitySpec>(&obj) else {
                tracing::warn!(
                    affinity = name,
                    "BlockAffinity has an invalid spec; left as it is"
                );
                return;
            };
            spec.state = STATE_CONFIRMED.into();
            spec.deleted = "false".into();
            obj.data["spec"] = serde_json::to_value(&spec).unwrap_or_default();
            obj.types = Some(TypeMeta {
                api_version: API_VERSION.into(),
                kind: "BlockAffinity".into(),
            });
            match self.run(
                "replace",
                self.affinities.replace(name, &PostParams::default(), &obj),
            ) {
                Ok(_) => return,
                Err(e) if code(&e) == Some(409) => continue,
                Err(e) => {
                    tracing::warn!(affinity = name, error = %e, "cannot confirm BlockAffinity");
                    return;
                }
            }
        }
        tracing::warn!(
            affinity = name,
            "BlockAffinity kept changing; not confirmed"
        );
    }

    fn update(&self, block: Block, old: KddVersion) -> Result<(), Commit> {
        let name = Block::object_name(&block.cidr);
        let obj = self.block_object(&block, Some(&old));
        match self.run(
            "replace IPAMBlock",
            self.blocks.replace(&name, &PostParams::default(), &obj),
        ) {
            Ok(_) => {}
            Err(e) => {
                return Err(match code(&e) {
                    Some(409) => Commit::Conflict(format!("IPAMBlock {name} changed")),
                    Some(404) => Commit::Conflict(format!("IPAMBlock {name} was deleted")),
                    _ => api_err(format!("IPAMBlock {name}"), e).into(),
                })
            }
        }
        self.handles_changed(&block.cidr, &old.block.allocations, &block.allocations);
        Ok(())
    }

    fn delete(&self, cidr: IpNet, old: KddVersion) -> Result<(), Commit> {
        let name = Block::object_name(&cidr);
        let dp = precondition(&old.obj);
        if let Err(e) = self.run("delete IPAMBlock", self.blocks.delete(&name, &dp)) {
            return Err(match code(&e) {
                Some(409) => Commit::Conflict(format!("IPAMBlock {name} changed")),
                Some(404) => Commit::Conflict(format!("IPAMBlock {name} was deleted")),
                _ => api_err(format!("IPAMBlock {name}"), e).into(),
            });
        }
        if let Some(node) = &old.block.affinity {
            let aff = model::affinity_name(node, &cidr);
            match self.run(
                "delete",
                self.affinities.delete(&aff, &DeleteParams::default()),
            ) {
                Ok(_) => {}
                Err(e) if code(&e) == Some(404) => {}
                Err(e) => {
                    tracing::warn!(affinity = aff, error = %e, "cannot delete the BlockAffinity of a released block")
                }
            }
        }
        self.handles_changed(&cidr, &old.block.allocations, &BTreeMap::new());
        Ok(())
    }

    /// Moves each handle's count in block `cidr` by what changed from `old` to `new`.
    fn handles_changed(
        &self,
        cidr: &IpNet,
        old: &BTreeMap<std::net::IpAddr, String>,
        new: &BTreeMap<std::net::IpAddr, String>,
    ) {
        let (before, after) = (model::handle_counts(old), model::handle_counts(new));
        let mut delta: BTreeMap<&str, i64> = BTreeMap::new();
        for (h, n) in &before {
            *delta.entry(h).or_default() -= *n as i64;
        }
        for (h, n) in &after {
            *delta.entry(h).or_default() += *n as i64;
        }
        for (handle, d) in delta.into_iter().filter(|(_, d)| *d != 0) {
            if let Err(e) = self.adjust_handle(handle, cidr, d) {
                tracing::warn!(handle, block = %cidr, error = %e, "cannot update IPAMHandle; the IPAMBlock is right");
            }
        }
    }

    fn adjust_handle(&self, handle: &str, cidr: &IpNet, delta: i64) -> Result<(), String> {
        let name = model::handle_name(handle);
        let key = cidr.to_string();
        let pp = PostParams::default();
        for _ in 0..HANDLE_TRIES {
            let current = self
                .run("get IPAMHandle", self.handles.get_opt(&name))
                .map_err(|e| e.to_string())?;
            let result = match current {
                None if delta <= 0 => return Ok(()),
                None => {
                    let spec = IpamHandleSpec {
                        handle_id: handle.into(),
                        block: BTreeMap::from([(key.clone(), delta as u64)]),
                        deleted: false,
                        extra: Default::default(),
                    };
                    let obj = object("IPAMHandle", &name, &spec);
                    self.run("create IPAMHandle", self.handles.create(&pp, &obj))
                        .map(drop)
                }
                Some(mut obj) => {
                    let mut spec: IpamHandleSpec = spec_of(&obj)?;
                    if spec.handle_id != handle {
                        return Err(format!(
                            "IPAMHandle {name} belongs to handle {:?}",
                            spec.handle_id
                        ));
                    }
                    let n = spec.block.get(&key).copied().unwrap_or(0) as i64 + delta;
                    if n > 0 {
                        spec.block.insert(key.clone(), n as u64);
                    } else {
                        spec.block.remove(&key);
                    }
                    if spec.block.is_empty() {
                        let dp = precondition(&obj);
                        self.run("delete IPAMHandle", self.handles.delete(&name, &dp))
                            .map(drop)
                    } else {
                        spec.deleted = false;
                        obj.data["spec"] = serde_json::to_value(&spec).unwrap_or_default();
                        obj.types = Some(TypeMeta {
                            api_version: API_VERSION.into(),
                            kind: "IPAMHandle".into(),
                        });
                        self.run("replace IPAMHandle", self.handles.replace(&name, &pp, &obj))
                            .map(drop)
                    }
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if matches!(code(&e), Some(409) | Some(404)) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("IPAMHandle {name} kept changing"))
    }
}

/// A KDD transaction is nothing but the store: all coordination is in the API.
pub struct KddTxn<'a> {
    store: &'a KddStore,
}

impl BlockStore for KddStore {
    type Version = KddVersion;
    type Txn<'a> = KddTxn<'a>;

    fn begin(&self, _write: bool) -> Result<KddTxn<'_>, IpamError> {
        Ok(KddTxn { store: self })
    }
}

impl BlockTxn for KddTxn<'_> {
    type Version = KddVersion;

    fn load(&mut self) -> Result<Loaded<KddVersion>, IpamError> {
        self.store.load()
    }

    fn commit(&mut self, change: Change<KddVersion>) -> Result<(), Commit> {
        match change {
            Change::Create(b) => self.store.create(b),
            Change::Update(b, v) => self.store.update(b, v),
            Change::Delete(c, v) => self.store.delete(c, v),
        }
    }
}
