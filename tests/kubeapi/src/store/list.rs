//! Lists: selectors, `limit` + `continue`, `resourceVersion` + `resourceVersionMatch`.
//!
//! Every page is consistent: the first page is taken at the current rv (or, with `Exact`, at the rv
//! asked for), and its continue token carries that rv and the last key returned, so later pages show
//! the collection as it was then. Past states are rebuilt from the event history (the first event
//! after the rv for a key holds the key's state at the rv in `prev`), which works while the rv is not
//! compacted; a compacted one is a 410, as with etcd. `NotOlderThan` (and an unset match with an rv)
//! serves the current state; an rv beyond the current one is a 504 "Too large resource version".
//!
//! `remainingItemCount` is given only when no selector is used, as upstream. A continue token is
//! given only when more matching objects follow (upstream may also give one when only non-matching
//! keys follow).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{Obj, ObjKey, Store};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::util;

/// `resourceVersionMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RvMatch {
    /// At least this fresh.
    NotOlderThan,
    /// Exactly this rv.
    Exact,
}

/// A list request's options.
#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size (`None` or 0: everything).
    pub limit: Option<usize>,
    /// Continue token from the previous page.
    pub cont: Option<String>,
    /// `resourceVersion`.
    pub rv: Option<u64>,
    /// `resourceVersionMatch`.
    pub rv_match: Option<RvMatch>,
}

/// One page.
#[derive(Debug)]
pub struct ListPage {
    /// The objects, in key order.
    pub items: Vec<Arc<Obj>>,
    /// The rv the page shows the collection at.
    pub rv: u64,
    /// Token for the next page.
    pub cont: Option<String>,
    /// Objects after this page (no selectors only).
    pub remaining: Option<u64>,
}

/// Encodes a continue token: the list's rv and the last key returned.
pub fn encode_continue(rv: u64, key: &ObjKey) -> String {
    let t = json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": key.0, "name": key.1});
    util::b64url_encode(t.to_string().as_bytes())
}

/// Decodes a continue token.
pub fn decode_continue(token: &str) -> Option<(u64, ObjKey)> {
    let raw = util::b64url_decode(token)?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((
        v.get("rv")?.as_u64()?,
        (
            v.get("ns")?.as_str()?.to_string(),
            v.get("name")?.as_str()?.to_string(),
        ),
    ))
}

impl Store {
    /// The state of a resource's keys at `at` where it differs from now: key -> object then (`None`:
    /// did not exist). Needs `at >= compacted`.
    fn past_overrides(&self, rt: &ResourceType, at: u64) -> BTreeMap<ObjKey, Option<Arc<Obj>>> {
        let mut out = BTreeMap::new();
        let start = self.history.partition_point(|e| e.rv <= at);
        for e in self.history.range(start..).filter(|e| e.gr == rt.gr) {
            out.entry(e.key.clone()).or_insert_with(|| e.prev.clone());
        }
        out
    }

    /// LIST. `ns` limits to one namespace (namespaced resources only).
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOpts,
    ) -> Result<ListPage, ApiError> {
        let (at, start) = match (&opts.cont, opts.rv_match, opts.rv) {
            (Some(token), _, _) => {
                let (rv, key) = decode_continue(token).ok_or_else(|| ApiError::bad_request(format!("invalid continue token: {token}")))?;
                if rv < self.compacted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some(key))
            }
            (None, Some(RvMatch::Exact), Some(rv)) => {
                if rv < self.compacted {
                    return Err(ApiError::expired(format!("too old resource version: {rv} ({})", self.compacted)));
                }
                (rv, None)
            }
            (None, Some(RvMatch::Exact), None) => {
                return Err(ApiError::bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"))
            }
            (None, _, rv) => {
                if let Some(rv) = rv.filter(|rv| *rv > self.rv) {
                    return Err(ApiError::too_large_rv(rv, self.rv));
                }
                (self.rv, None)
            }
        };
        if at > self.rv {
            return Err(ApiError::too_large_rv(at, self.rv));
        }
        let empty = BTreeMap::new();
        let current = self.objects.get(&rt.gr).unwrap_or(&empty);
        let overrides = if at == self.rv {
            BTreeMap::new()
        } else {
            self.past_overrides(rt, at)
        };
        let ns = ns.or(opts.fields.required("metadata.namespace"));
        let lower: Bound<ObjKey> = match (&start, ns) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let bounds = (lower, Bound::Unbounded);
        let mut now = current.range::<ObjKey, _>(bounds.clone()).peekable();
        let mut then = overrides.range::<ObjKey, _>(bounds).peekable();
        // Merge the current map and the overrides, overrides winning on equal keys.
        let merged = std::iter::from_fn(|| loop {
            let pick_then = match (now.peek(), then.peek()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((a, _)), Some((b, _))) => b <= a,
            };
            if pick_then {
                let (k, v) = then.next().expect("peeked");
                if now.peek().is_some_and(|(a, _)| *a == k) {
                    now.next();
                }
                if let Some(v) = v {
                    return Some((k, v));
                }
            } else {
                return now.next();
            }
        });
        let in_ns = |k: &ObjKey| ns.is_none_or(|ns| k.0 == ns);
        let matching = merged
            .take_while(|(k, _)| in_ns(k))
            .filter(|(_, o)| opts.labels.matches_obj(&o.value) && opts.fields.matches(&o.value));
        let limit = opts.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut rest = matching.peekable();
        while items.len() < limit {
            match rest.next() {
                Some((_, o)) => items.push(o.clone()),
                None => break,
            }
        }
        let mut cont = None;
        let mut remaining = None;
        if rest.peek().is_some() {
            let last = items
                .last()
                .expect("limit > 0, so a page that stops early has items");
            let key = (
                if rt.namespaced {
                    last.namespace().to_string()
                } else {
                    String::new()
                },
                last.name().to_string(),
            );
            cont = Some(encode_continue(at, &key));
            if opts.labels.is_empty() && opts.fields.is_empty() {
                remaining = Some(rest.count() as u64);
            }
        }
        Ok(ListPage {
            items,
            rv: at,
            cont,
            remaining,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, &("ns".into(), "p-1".into()));
        assert_eq!(decode_continue(&t), Some((42, ("ns".into(), "p-1".into()))));
        assert_eq!(decode_continue("not a token!"), None);
    }
}
