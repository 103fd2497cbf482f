//! The PATCH body types the API server accepts, applied to a JSON object: JSON merge patch (RFC 7386),
//! JSON patch (RFC 6902) and strategic merge patch (see [`strategic`]).
//!
//! All three are pure functions from (object, patch) to the new object; the store then treats the
//! result as an update (resourceVersion precondition, status handling, generation). Server-side apply
//! (`application/apply-patch+yaml`) is not done: it is a 415, as for any other media type.

pub mod strategic;

use serde_json::Value;

/// A PATCH's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/json-patch+json`
    Json,
}

/// Media types accepted for PATCH, for 415 messages.
pub const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json";

impl PatchType {
    /// The patch type of a Content-Type header (parameters ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            _ => None,
        }
    }
}

/// RFC 7386: objects merge recursively, `null` removes a member, anything else (arrays included)
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// An RFC 6901 pointer split into unescaped reference tokens.
fn pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("JSON pointer must start with '/': {p:?}"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(tok: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && tok == "-" {
        return Ok(len);
    }
    if tok.is_empty()
        || (tok.len() > 1 && tok.starts_with('0'))
        || !tok.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("invalid array index {tok:?}"));
    }
    let i: usize = tok
        .parse()
        .map_err(|_| format!("invalid array index {tok:?}"))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("array index {i} out of bounds"));
    }
    Ok(i)
}

fn get_mut<'a>(v: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    toks.iter().try_fold(v, |v, t| match v {
        Value::Object(m) => m
            .get_mut(t)
            .ok_or_else(|| format!("doc is missing path: {t:?}")),
        Value::Array(a) => {
            let i = index(t, a.len(), false)?;
            Ok(&mut a[i])
        }
        _ => Err(format!("doc is missing path: {t:?}")),
    })
}

fn add(doc: &mut Value, toks: &[String], val: Value) -> Result<(), String> {
    let Some((last, parent)) = toks.split_last() else {
        *doc = val;
        return Ok(());
    };
    match get_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), val);
            Ok(())
        }
        Value::Array(a) => {
            let i = index(last, a.len(), true)?;
            a.insert(i, val);
            Ok(())
        }
        _ => Err(format!("doc is missing path: {last:?}")),
    }
}

fn remove(doc: &mut Value, toks: &[String]) -> Result<Value, String> {
    let Some((last, parent)) = toks.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match get_mut(doc, parent)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("unable to remove nonexistent key: {last}: missing value")),
        Value::Array(a) => {
            let i = index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(format!("doc is missing path: {last:?}")),
    }
}

/// RFC 6902. All operations apply or none (the input is not changed on error).
pub fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut doc = doc.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation has no \"op\"")?;
        let path = pointer(
            op.get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation {name} has no \"path\""))?,
        )?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {name} has no \"value\""))
        };
        let from = || -> Result<Vec<String>, String> {
            pointer(
                op.get("from")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("operation {name} has no \"from\""))?,
            )
        };
        match name {
            "add" => add(&mut doc, &path, value()?)?,
            "remove" => {
                remove(&mut doc, &path)?;
            }
            "replace" => {
                let slot = get_mut(&mut doc, &path).map_err(|_| {
                    format!(
                        "replace operation does not apply: doc is missing key: /{}",
                        path.join("/")
                    )
                })?;
                *slot = value()?;
            }
            "move" => {
                let from = from()?;
                if path.len() > from.len() && path[..from.len()] == from[..] {
                    return Err("move operation: \"from\" is a prefix of \"path\"".into());
                }
                let v = remove(&mut doc, &from)?;
                add(&mut doc, &path, v)?;
            }
            "copy" => {
                let v = get_mut(&mut doc, &from()?)?.clone();
                add(&mut doc, &path, v)?;
            }
            "test" => {
                let got = get_mut(&mut doc, &path)?;
                if *got != value()? {
                    return Err(format!("testing value /{} failed", path.join("/")));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut t, p, want) in cases {
            merge_patch(&mut t, &p);
            assert_eq!(t, want, "patch {p}");
        }
    }

    #[test]
    fn rfc6902_operations() {
        let doc = json!({"foo": "bar", "arr": [1, 2], "a/b": {"c~d": 1}});
        let p = json!([
            {"op": "add", "path": "/baz", "value": "qux"},
            {"op": "add", "path": "/arr/1", "value": 9},
            {"op": "add", "path": "/arr/-", "value": 3},
            {"op": "replace", "path": "/foo", "value": "x"},
            {"op": "remove", "path": "/a~1b/c~0d"},
            {"op": "copy", "from": "/foo", "path": "/copied"},
            {"op": "move", "from": "/baz", "path": "/moved"},
            {"op": "test", "path": "/arr", "value": [1, 9, 2, 3]},
        ]);
        assert_eq!(
            json_patch(&doc, &p).unwrap(),
            json!({"foo": "x", "arr": [1, 9, 2, 3], "a/b": {}, "copied": "x", "moved": "qux"})
        );
    }

    #[test]
    fn rfc6902_failures_leave_nothing_half_done() {
        let doc = json!({"foo": "bar", "arr": [1]});
        for p in [
            json!([{"op": "remove", "path": "/nope"}]),
            json!([{"op": "replace", "path": "/nope", "value": 1}]),
            json!([{"op": "add", "path": "/arr/5", "value": 1}]),
            json!([{"op": "add", "path": "/arr/01", "value": 1}]),
            json!([{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/foo", "value": "baz"}]),
            json!([{"op": "move", "from": "/arr", "path": "/arr/0"}]),
            json!([{"op": "frob", "path": "/foo"}]),
            json!([{"op": "add", "path": "no-slash", "value": 1}]),
            json!({"op": "add"}),
        ] {
            assert!(json_patch(&doc, &p).is_err(), "{p} should fail");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            None
        );
    }
}
