//! The object store: every object by group/resource and (namespace, name), one global resourceVersion
//! counter, the event history that watches and consistent list pages are served from, and the open
//! watches to notify.
//!
//! Invariants:
//! - `rv` only grows; every change (create, update, delete) takes the next value, and the object (or,
//!   for a delete, its last state) carries it as `metadata.resourceVersion`, as with etcd's revision.
//! - `history` holds every event with rv in `(compacted, rv]`, oldest first, at most `history_cap` of
//!   them; `compacted` is the oldest rv a watch may start after. An rv below it is "too old" (410).
//! - Watchers are notified while the store is locked, in rv order, so a watch started under the lock
//!   sees exactly the events after its starting point, none twice.
//! - Objects keep their JSON serialisation (`Obj::json`), so lists and watch events of thousands of
//!   objects are byte concatenations, not serialisation work.
//!
//! The store is synchronous and held under one mutex by the HTTP layer; nothing in it blocks.
//! Writes are in [`write`], lists in [`list`]; persistence is [`crate::journal`].

mod list;
mod write;

pub use list::{ListOpts, ListPage, RvMatch};
pub use write::WriteMode;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::journal::Journal;
use crate::resources::{Gr, Registry, ResourceType};
use crate::status::ApiError;

/// Namespace ("" for cluster-scoped) and name.
pub type ObjKey = (String, String);

/// A stored object and its serialisation.
#[derive(Debug)]
pub struct Obj {
    /// The object.
    pub value: Value,
    /// `value` as JSON.
    pub json: Bytes,
    /// Its resourceVersion.
    pub rv: u64,
}

impl Obj {
    /// Wraps a value (its `metadata.resourceVersion` must already be set).
    pub fn new(value: Value) -> Arc<Obj> {
        let rv = value
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let json =
            Bytes::from(serde_json::to_vec(&value).expect("a serde_json::Value always serialises"));
        Arc::new(Obj { value, json, rv })
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The JSON as read through `api_version` (custom resources served in several versions are stored
    /// in one; conversion only changes `apiVersion`).
    pub fn json_as(&self, api_version: &str) -> Bytes {
        if self.value.get("apiVersion").and_then(Value::as_str) == Some(api_version) {
            return self.json.clone();
        }
        let mut v = self.value.clone();
        v["apiVersion"] = api_version.into();
        Bytes::from(serde_json::to_vec(&v).expect("a serde_json::Value always serialises"))
    }

    /// `metadata.namespace` (`""` when cluster-scoped).
    pub fn namespace(&self) -> &str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

impl EventType {
    /// The WatchEvent `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as history and watches see it.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// Added, modified or deleted.
    pub kind: EventType,
    /// Which resource.
    pub gr: Gr,
    /// Which object.
    pub key: ObjKey,
    /// The object after the change (for a delete, its last state with the delete's rv).
    pub obj: Arc<Obj>,
    /// The object before the change (`None` for a create).
    pub prev: Option<Arc<Obj>>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// The current objects first (as ADDED), then changes.
    Initial,
    /// Changes after this resourceVersion.
    After(u64),
}

/// A started watch: what to send first, then the live feed.
#[derive(Debug)]
pub struct WatchStart {
    /// Current objects (for [`WatchFrom::Initial`]).
    pub initial: Vec<Arc<Obj>>,
    /// Past events to replay (for [`WatchFrom::After`]).
    pub replay: Vec<Arc<Event>>,
    /// The store's rv at the start.
    pub rv: u64,
    /// Later events of this resource.
    pub rx: mpsc::UnboundedReceiver<Arc<Event>>,
}

#[derive(Debug)]
struct Watcher {
    gr: Gr,
    tx: mpsc::UnboundedSender<Arc<Event>>,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    registry: Registry,
    objects: HashMap<Gr, BTreeMap<ObjKey, Arc<Obj>>>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    compacted: u64,
    watchers: Vec<Watcher>,
    journal: Option<Journal>,
}

/// Namespaces the API server creates at start.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

impl Store {
    /// An in-memory store with the system namespaces.
    pub fn new(history_cap: usize) -> Self {
        let mut s = Store {
            registry: Registry::builtin(),
            objects: HashMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
            watchers: Vec::new(),
            journal: None,
        };
        s.bootstrap();
        s
    }

    /// A store persisted in a journal file: loads what the file holds (and compacts the file), or
    /// starts fresh with the system namespaces. History starts empty: watches from before the restart
    /// get 410, as after an etcd compaction.
    pub fn open(history_cap: usize, path: &Path) -> std::io::Result<Self> {
        let (journal, loaded) = Journal::open(path)?;
        let mut s = Store::new_empty(history_cap);
        s.rv = loaded.rv;
        s.compacted = loaded.rv;
        // CRDs first, so their resources are known when their objects are loaded.
        let crds = Gr::new("apiextensions.k8s.io", "customresourcedefinitions");
        for (_, _, v) in loaded.objects.iter().filter(|(gr, _, _)| *gr == crds) {
            if let Ok(rt) = crate::resources::crd_resource(v) {
                if !s.registry.is_builtin(&rt.gr) {
                    s.registry.register(rt);
                }
            }
        }
        for (gr, key, v) in loaded.objects {
            if s.registry.get(&gr).is_some() {
                s.objects.entry(gr).or_default().insert(key, Obj::new(v));
            }
        }
        let fresh = s.rv == 0;
        s.journal = Some(journal);
        if fresh {
            s.bootstrap();
        }
        Ok(s)
    }

    fn new_empty(history_cap: usize) -> Self {
        Store {
            registry: Registry::builtin(),
            objects: HashMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
            watchers: Vec::new(),
            journal: None,
        }
    }

    fn bootstrap(&mut self) {
        let ns = self
            .registry
            .get(&Gr::new("", "namespaces"))
            .expect("namespaces is built in");
        for name in SYSTEM_NAMESPACES {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            self.create(&ns, None, body, false)
                .expect("system namespaces are valid and new");
        }
    }

    /// The resource table.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch or consistent list may start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Forgets all history: every watch or list page from an older rv now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Number of objects of a resource.
    pub fn count(&self, gr: &Gr) -> usize {
        self.objects.get(gr).map_or(0, BTreeMap::len)
    }

    /// One object.
    pub fn get(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Obj>, ApiError> {
        self.lookup(&rt.gr, ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.gr, name))
    }

    fn lookup(&self, gr: &Gr, ns: Option<&str>, name: &str) -> Option<Arc<Obj>> {
        self.objects
            .get(gr)?
            .get(&(ns.unwrap_or("").to_string(), name.to_string()))
            .cloned()
    }

    /// Records a change: takes the next rv, stores (or removes) the object, appends the event to history
    /// and the journal, and notifies watchers. `value` is `None` for a delete.
    fn commit(&mut self, gr: &Gr, key: ObjKey, value: Option<Value>) -> Arc<Obj> {
        let rv = self.rv + 1;
        let map = self.objects.entry(gr.clone()).or_default();
        let prev = map.get(&key).cloned();
        let (kind, obj) = match value {
            Some(mut v) => {
                v["metadata"]["resourceVersion"] = rv.to_string().into();
                let obj = Obj::new(v);
                map.insert(key.clone(), obj.clone());
                (
                    if prev.is_some() {
                        EventType::Modified
                    } else {
                        EventType::Added
                    },
                    obj,
                )
            }
            None => {
                map.remove(&key);
                let mut last = prev
                    .as_ref()
                    .expect("only existing objects are deleted")
                    .value
                    .clone();
                last["metadata"]["resourceVersion"] = rv.to_string().into();
                (EventType::Deleted, Obj::new(last))
            }
        };
        self.rv = rv;
        if let Some(j) = &mut self.journal {
            let live = (kind != EventType::Deleted).then_some(&*obj);
            if let Err(e) = j.append(rv, gr, &key, live) {
                tracing::error!(error = %e, "journal write failed");
            }
        }
        let ev = Arc::new(Event {
            rv,
            kind,
            gr: gr.clone(),
            key,
            obj: obj.clone(),
            prev,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        self.watchers
            .retain(|w| w.gr != ev.gr || w.tx.send(ev.clone()).is_ok());
        obj
    }

    /// Starts a watch on a resource (optionally one namespace). `Err((asked, oldest))` when `from` is
    /// older than the retained history.
    pub fn watch(
        &mut self,
        gr: &Gr,
        ns: Option<&str>,
        from: WatchFrom,
    ) -> Result<WatchStart, (u64, u64)> {
        let (initial, replay) = match from {
            WatchFrom::Initial => {
                let objs = self.objects.get(gr);
                let initial = match (objs, ns) {
                    (None, _) => Vec::new(),
                    (Some(m), None) => m.values().cloned().collect(),
                    (Some(m), Some(ns)) => m
                        .range((ns.to_string(), String::new())..)
                        .take_while(|(k, _)| k.0 == ns)
                        .map(|(_, v)| v.clone())
                        .collect(),
                };
                (initial, Vec::new())
            }
            WatchFrom::After(after) => {
                if after < self.compacted {
                    return Err((after, self.compacted));
                }
                let start = self.history.partition_point(|e| e.rv <= after);
                let replay = self
                    .history
                    .range(start..)
                    .filter(|e| e.gr == *gr)
                    .cloned()
                    .collect();
                (Vec::new(), replay)
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.retain(|w| !w.tx.is_closed());
        self.watchers.push(Watcher { gr: gr.clone(), tx });
        Ok(WatchStart {
            initial,
            replay,
            rv: self.rv,
            rx,
        })
    }

    /// Open watches (closed ones are pruned on the next change).
    pub fn watch_count(&self) -> usize {
        self.watchers.iter().filter(|w| !w.tx.is_closed()).count()
    }
}

#[cfg(test)]
mod tests;
