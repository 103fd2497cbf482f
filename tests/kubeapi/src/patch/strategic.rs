//! Strategic merge patch, to the extent `kubectl apply`, `kubectl label`, `kubectl annotate` and
//! `kubectl patch` (default type) need on the built-in types this server holds.
//!
//! It is a merge patch plus:
//! - lists of objects with a known merge key (by field name: `containers`, `initContainers`,
//!   `ephemeralContainers`, `volumes`, `env`, `imagePullSecrets` by `name`; `volumeMounts` by
//!   `mountPath`; `ports` by `containerPort` when items carry it, else by `port`; `conditions` and node
//!   `addresses` by `type`; `ownerReferences` by `uid`) merge item by item, new items appended;
//!   `metadata.finalizers` merges as a set; every other list is replaced, as for lists with no
//!   `patchStrategy` upstream;
//! - directives: `$patch: replace` (in a map: replace the map; as a list item: replace the list),
//!   `$patch: delete` (in a map: remove the field; as a list item: remove the item with that key),
//!   `$patch: merge`, `$retainKeys` (keep only the listed keys), `$deleteFromPrimitiveList/F` (remove
//!   values from the primitive list F), `$setElementOrder/F` (order the merged list F as given).
//!
//! Not done: per-type schema knowledge beyond those field names (a field named like one above in a
//! place where upstream has no strategy merges anyway), and server-side apply.

use serde_json::{Map, Value};

/// The merge key for list field `field`, judging by the items when a name serves two types.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let has = |k: &str| items.iter().any(|i| i.get(k).is_some());
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" if has("containerPort") => "containerPort",
        "ports" => "port",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

fn directive(m: &Map<String, Value>) -> Option<&str> {
    m.get("$patch").and_then(Value::as_str)
}

/// A patch value with every directive removed (for inserting where there is nothing to merge into).
pub fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| {
                    !i.as_object()
                        .is_some_and(|m| directive(m).is_some() && m.len() == 1)
                })
                .map(strip)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Applies a strategic merge patch to `target` (an object) in place.
pub fn apply(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        return Err("strategic merge patch must be a JSON object".into());
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object above")
    };
    merge_map(t, p)
}

fn merge_map(t: &mut Map<String, Value>, p: &Map<String, Value>) -> Result<(), String> {
    match directive(p) {
        Some("replace") => {
            let Value::Object(m) = strip(&Value::Object(p.clone())) else {
                unreachable!("strip keeps objects")
            };
            *t = m;
            return Ok(());
        }
        Some("merge") | None => {}
        Some("delete") => {
            return Err("$patch: delete is only valid as a field's value or a list item".into())
        }
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    let mut orders: Vec<(&str, &Value)> = Vec::new();
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field, v));
        } else if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v.as_array().ok_or_else(|| format!("{k} must be a list"))?;
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
        } else if k.starts_with('$') {
            if k != "$patch" && k != "$retainKeys" {
                return Err(format!("unknown directive {k}"));
            }
        } else if v.is_null() {
            t.remove(k);
        } else if let Value::Object(pm) = v {
            if directive(pm) == Some("delete") {
                t.remove(k);
            } else if let Some(Value::Object(tm)) = t.get_mut(k) {
                merge_map(tm, pm)?;
            } else {
                t.insert(k.clone(), strip(v));
            }
        } else if let Value::Array(pa) = v {
            let merged = merge_list(k, t.remove(k), pa)?;
            t.insert(k.clone(), merged);
        } else {
            t.insert(k.clone(), v.clone());
        }
    }
    if let Some(keep) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or("$retainKeys must be a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (t.get_mut(field), order.as_array()) {
            reorder(field, list, order);
        }
    }
    Ok(())
}

fn merge_list(field: &str, target: Option<Value>, patch: &[Value]) -> Result<Value, String> {
    if patch
        .iter()
        .any(|i| i.as_object().and_then(directive) == Some("replace"))
    {
        return Ok(strip(&Value::Array(patch.to_vec())));
    }
    let mut list = match target {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    if is_set_list(field) {
        for v in patch {
            if !list.contains(v) {
                list.push(v.clone());
            }
        }
        return Ok(Value::Array(list));
    }
    let key = match merge_key(field, patch) {
        Some(k) if patch.iter().all(Value::is_object) => k,
        _ => return Ok(strip(&Value::Array(patch.to_vec()))),
    };
    for item in patch {
        let pm = item
            .as_object()
            .expect("checked above: all items are objects");
        let Some(kv) = pm.get(key) else {
            return Err(format!(
                "map: {item} does not contain declared merge key: {key}"
            ));
        };
        let pos = list.iter().position(|x| x.get(key) == Some(kv));
        match (directive(pm), pos) {
            (Some("delete"), Some(i)) => {
                list.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => {
                if let Value::Object(tm) = &mut list[i] {
                    merge_map(tm, pm)?;
                }
            }
            (_, None) => list.push(strip(item)),
        }
    }
    Ok(Value::Array(list))
}

/// Orders `list` as `order` says: items named in `order` first, in that order, then the rest as they
/// were (what the API server does with `$setElementOrder`).
fn reorder(field: &str, list: &mut Vec<Value>, order: &[Value]) {
    let key = merge_key(field, order);
    let pos = |x: &Value| {
        order.iter().position(|o| match key {
            Some(k) => o.get(k).is_some() && o.get(k) == x.get(k),
            None => o == x,
        })
    };
    let mut items: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, x)| (pos(&x).unwrap_or(usize::MAX), i, x))
        .collect();
    items.sort_by_key(|(p, i, _)| (*p, *i));
    list.extend(items.into_iter().map(|(_, _, x)| x));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(mut t: Value, p: Value) -> Value {
        apply(&mut t, &p).unwrap();
        t
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        assert_eq!(
            run(
                json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
                json!({"metadata": {"labels": {"a": null, "c": "3"}}})
            ),
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}})
        );
    }

    #[test]
    fn containers_merge_by_name() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "b", "image": "b:1", "env": [{"name": "X", "value": "1"}]}
        ]}});
        let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}],
        "containers": [
            {"name": "a", "image": "a:2", "ports": [{"containerPort": 443}]},
            {"name": "b", "env": [{"name": "Y", "value": "2"}, {"name": "X", "$patch": "delete"}]},
            {"name": "c", "image": "c:1"}
        ]}});
        assert_eq!(
            run(pod, patch),
            json!({"spec": {"containers": [
                {"name": "c", "image": "c:1"},
                {"name": "a", "image": "a:2", "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}]},
                {"name": "b", "image": "b:1", "env": [{"name": "Y", "value": "2"}]}
            ]}})
        );
    }

    #[test]
    fn lists_without_a_key_are_replaced() {
        assert_eq!(
            run(
                json!({"spec": {"ingress": [{"from": [1]}], "policyTypes": ["Ingress"]}}),
                json!({"spec": {"ingress": [{"from": [2]}]}})
            ),
            json!({"spec": {"ingress": [{"from": [2]}], "policyTypes": ["Ingress"]}})
        );
    }

    #[test]
    fn directives() {
        assert_eq!(
            run(
                json!({"a": {"x": 1, "y": 2}, "b": 1}),
                json!({"a": {"$patch": "replace", "z": 3}})
            ),
            json!({"a": {"z": 3}, "b": 1})
        );
        assert_eq!(
            run(
                json!({"a": {"x": 1}, "b": 1}),
                json!({"a": {"$patch": "delete"}})
            ),
            json!({"b": 1})
        );
        assert_eq!(
            run(
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
                json!({"spec": {"containers": [{"name": "c"}, {"$patch": "replace"}]}})
            ),
            json!({"spec": {"containers": [{"name": "c"}]}})
        );
        assert_eq!(
            run(
                json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"]}})
            ),
            json!({"metadata": {"finalizers": ["a", "c"]}})
        );
        assert_eq!(
            run(
                json!({"metadata": {"finalizers": ["a"]}}),
                json!({"metadata": {"finalizers": ["a", "b"]}})
            ),
            json!({"metadata": {"finalizers": ["a", "b"]}})
        );
        assert_eq!(
            run(
                json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}),
                json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}})
            ),
            json!({"strategy": {"type": "Recreate"}})
        );
        let mut t = json!({});
        assert!(apply(&mut t, &json!({"a": 1, "$bogus": 1})).is_err());
        let mut pod = json!({"spec": {"containers": [{"name": "a"}]}});
        assert!(
            apply(&mut pod, &json!({"spec": {"containers": [{"image": "x"}]}})).is_err(),
            "missing merge key"
        );
    }

    #[test]
    fn inserted_values_lose_directives() {
        assert_eq!(
            run(
                json!({}),
                json!({"a": {"$patch": "merge", "b": {"$retainKeys": ["c"], "c": 1}}})
            ),
            json!({"a": {"b": {"c": 1}}})
        );
    }

    #[test]
    fn kubectl_apply_shaped_patch() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web"}, "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}});
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"x\":1}"}, "labels": {"tier": "front"}},
            "spec": {"$setElementOrder/containers": [{"name": "web"}], "containers": [{"image": "nginx:2", "name": "web"}]}
        });
        let out = run(pod, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "web", "image": "nginx:2"}])
        );
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "tier": "front"})
        );
    }
}
