//! What the Kubernetes backend holds: every watched object's last good version, by kind. Pure.
//!
//! The watcher's events arrive as [`Ev`]s; the rules are the file datastore's:
//! - an object that stops decoding keeps its last good version, and the error is reported by
//!   kind, name and field; one that decodes but cannot be used as written (a NetworkPolicy that
//!   does not fit the policy model) yields to its last good version too;
//! - an object goes away only when the API says it was deleted, or when a relist (`Init` ..
//!   `InitDone`, after a reconnect or `410 Gone`) no longer has it; a relist that lists the same
//!   objects changes nothing, so the snapshot built from it is equal and nothing is republished;
//! - the state depends only on what is held, not on the order events arrived in (objects are
//!   fed to the state builder by kind, then by `namespace/name`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::kinds::Kind;
use crate::datastore::file::ScanResult;
use crate::datastore::resources::{decode_as, Decoded, Resource};
use crate::datastore::schema::Fields;
use crate::datastore::state::StateBuilder;
use crate::datastore::{ResourceError, Severity};

/// Where errors of this backend come from, for [`ResourceError::origin`].
pub const ORIGIN: &str = "kubernetes";

/// A watcher event for one kind, with the object as JSON.
#[derive(Clone, Debug)]
pub enum Ev {
    /// A relist starts.
    Init,
    /// An object of the relist.
    InitApply(Value),
    /// The relist is complete: what it did not list is gone.
    InitDone,
    Apply(Value),
    Delete(Value),
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// The last good version (absent only if the object never decoded).
    good: Option<Resource>,
    /// Why the current version is not used (or is used only in part).
    error: Option<ResourceError>,
}

#[derive(Debug, Default)]
struct KindHeld {
    objects: BTreeMap<String, Entry>,
    /// During a relist: what it has listed so far.
    relist: Option<BTreeMap<String, Entry>>,
    /// A relist has completed at least once.
    synced: bool,
}

/// Every watched kind's objects; see the module doc.
#[derive(Debug)]
pub struct Held {
    kinds: Vec<(Kind, KindHeld)>,
}

/// `namespace/name` (or `name`) of an object, from its metadata.
fn key_of(obj: &Value) -> Option<String> {
    let meta = obj.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    Some(match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    })
}

/// Decodes `obj` as `kind` (setting `apiVersion` and `kind`, which list items lack).
fn decode_object(kind: &Kind, mut obj: Value) -> Result<Resource, Box<ResourceError>> {
    let name = key_of(&obj);
    let error = |field: Option<String>, message: String| {
        Box::new(ResourceError {
            origin: ORIGIN.into(),
            kind: Some(kind.kind.into()),
            name: name.clone(),
            field,
            message,
            severity: Severity::Error,
        })
    };
    let Some(map) = obj.as_object_mut() else {
        return Err(error(None, "not an object".into()));
    };
    map.insert("apiVersion".into(), Value::String(kind.api_version()));
    map.insert("kind".into(), Value::String(kind.kind.into()));
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        // Large, and never read.
        meta.remove("managedFields");
    }
    let doc = serde_yaml_ng::to_value(&obj).map_err(|e| error(None, e.to_string()))?;
    match decode_as(&doc, Fields::Served) {
        Ok(Decoded::Resource(r)) => Ok(r),
        Ok(Decoded::Unsupported { .. }) => Err(error(None, "not a kind calico-rs reads".into())),
        Err(e) => Err(error(e.field, e.message)),
    }
}

/// The entry for a new version of an object held as `before`.
fn entry(kind: &Kind, obj: Value, before: Option<&Entry>) -> Entry {
    let prior = before.and_then(|e| e.good.clone());
    match decode_object(kind, obj) {
        Ok(r) => match r.problem().map(str::to_string) {
            None => Entry {
                good: Some(r),
                error: None,
            },
            Some(problem) => {
                let usable_before = prior.filter(|p| p.problem().is_none());
                let error = Some(ResourceError {
                    origin: ORIGIN.into(),
                    kind: Some(r.kind().into()),
                    name: Some(r.display_name()),
                    field: None,
                    message: match &usable_before {
                        Some(_) => format!("{problem}; keeping the last good version"),
                        None => problem,
                    },
                    severity: Severity::Error,
                });
                Entry {
                    good: usable_before.or(Some(r)),
                    error,
                }
            }
        },
        Err(mut e) => {
            if prior.is_some() {
                e.message += "; keeping the last good version";
            }
            Entry {
                good: prior,
                error: Some(*e),
            }
        }
    }
}

impl Default for Held {
    fn default() -> Self {
        Held::new(super::kinds::WATCHED)
    }
}

impl Held {
    pub fn new(kinds: &[Kind]) -> Held {
        Held {
            kinds: kinds.iter().map(|k| (*k, KindHeld::default())).collect(),
        }
    }

    /// Applies one event of kind number `i` (an index into the kinds given to [`Held::new`]).
    /// Returns whether what is held changed.
    pub fn apply(&mut self, i: usize, ev: Ev) -> bool {
        let (kind, held) = &mut self.kinds[i];
        match ev {
            Ev::Init => {
                held.relist = Some(BTreeMap::new());
                false
            }
            Ev::InitApply(obj) => {
                let Some(key) = key_of(&obj) else {
                    return false;
                };
                let before = held.objects.get(&key);
                let e = entry(kind, obj, before);
                held.relist.get_or_insert_with(BTreeMap::new).insert(key, e);
                false
            }
            Ev::InitDone => {
                let listed = held.relist.take().unwrap_or_default();
                held.synced = true;
                if listed == held.objects {
                    return false;
                }
                held.objects = listed;
                true
            }
            Ev::Apply(obj) => {
                let Some(key) = key_of(&obj) else {
                    return false;
                };
                let e = entry(kind, obj, held.objects.get(&key));
                if held.objects.get(&key) == Some(&e) {
                    return false;
                }
                held.objects.insert(key, e);
                true
            }
            Ev::Delete(obj) => key_of(&obj).is_some_and(|k| held.objects.remove(&k).is_some()),
        }
    }

    /// Whether every kind has been listed completely at least once.
    /// The kind at index `i` of [`Held::new`]'s list.
    pub fn kind(&self, i: usize) -> &'static str {
        self.kinds[i].0.kind
    }

    pub fn synced(&self) -> bool {
        self.kinds.iter().all(|(_, h)| h.synced)
    }

    /// The kinds not listed completely yet.
    pub fn unsynced(&self) -> Vec<&'static str> {
        self.kinds
            .iter()
            .filter(|(_, h)| !h.synced)
            .map(|(k, _)| k.kind)
            .collect()
    }

    /// The BGPPeers' `secretKeyRef`s: (Secret name, key).
    pub fn secret_refs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (_, h) in self.kinds.iter().filter(|(k, _)| k.kind == "BGPPeer") {
            for e in h.objects.values() {
                if let Some(Resource::BgpPeer(p)) = &e.good {
                    if let Some(crate::datastore::BgpPassword::SecretKeyRef { name, key }) =
                        &p.password
                    {
                        out.push((name.clone(), key.clone()));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The cluster state and errors of what is held.
    pub fn build(&self, secrets: BTreeMap<(String, String), Result<String, String>>) -> ScanResult {
        // One entry per kind and key here, so no duplicates to look for.
        let mut builder = StateBuilder::distinct();
        let mut errors = Vec::new();
        for (_, h) in &self.kinds {
            for e in h.objects.values() {
                if let Some(err) = &e.error {
                    errors.push(err.clone());
                }
                if let Some(r) = &e.good {
                    if let Err(e) = builder.add(ORIGIN, r.clone()) {
                        errors.push(*e);
                    }
                }
            }
        }
        builder.bgp_secrets(secrets);
        ScanResult {
            state: builder.build(),
            errors,
        }
    }
}
