//! Discovery, in the legacy (unaggregated) form: `/version`, `/api` (APIVersions), `/apis`
//! (APIGroupList), `/apis/G` (APIGroup), `/api/v1` and `/apis/G/V` (APIResourceList, subresources
//! as `pods/status`).
//!
//! Aggregated discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`)
//! is not served: the answer is always the legacy type with `Content-Type: application/json`, which
//! client-go (kubectl) takes as "not aggregated" and falls back to per-group requests.

use serde_json::{json, Value};

use crate::resources::{Registry, ResourceType};

/// The version this server claims to be.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs[0]})
}

/// `/apis`.
pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/G`, if served.
pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    let groups = reg.groups();
    let (g, vs) = groups.iter().find(|(g, _)| g == name)?;
    let mut v = group_json(g, vs);
    v["kind"] = "APIGroup".into();
    v["apiVersion"] = "v1".into();
    Some(v)
}

fn resource_json(rt: &ResourceType) -> Value {
    let mut r = json!({
        "name": rt.gr.resource,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": rt.verbs(),
    });
    if !rt.short_names.is_empty() {
        r["shortNames"] = json!(rt.short_names);
    }
    if !rt.categories.is_empty() {
        r["categories"] = json!(rt.categories);
    }
    r
}

/// `/api/v1` or `/apis/G/V`, if served.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for rt in reg
        .all()
        .filter(|t| t.gr.group == group && t.versions.iter().any(|v| v == version))
    {
        resources.push(resource_json(rt));
        if rt.status {
            resources.push(json!({
                "name": format!("{}/status", rt.gr.resource),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let reg = Registry::builtin();
        let core = resource_list(&reg, "", "v1").unwrap();
        let pods = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["namespaced"], true);
        assert!(core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "pods/status"));
        assert!(resource_list(&reg, "apps", "v2").is_none());
        let groups = group_list(&reg);
        assert!(groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["preferredVersion"]["groupVersion"] == "apps/v1"));
        assert_eq!(
            group(&reg, "networking.k8s.io").unwrap()["kind"],
            "APIGroup"
        );
    }
}
