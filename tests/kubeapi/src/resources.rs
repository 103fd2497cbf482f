//! The resource table: which group/version/resource the server serves, with kind, scope, short names,
//! verbs and subresources, for routing and for discovery.
//!
//! Built-in types come from one static table and are served generically (no per-type validation or
//! defaulting beyond what `store` does for all). Custom resources are added when a
//! CustomResourceDefinition is stored (every `served` version, with the `status` subresource if the
//! version asks for it) and removed when it is deleted. Objects are stored once per group/resource,
//! whatever the version they are read through (custom-resource conversion is `None`: only `apiVersion`
//! changes). Not done: scale subresources, CRD schema validation, pruning and defaulting.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::status::ApiError;

/// Group and resource (plural): the identity objects are stored under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gr {
    /// API group, `""` for core.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

impl Gr {
    /// A group/resource pair.
    pub fn new(group: &str, resource: &str) -> Self {
        Gr {
            group: group.into(),
            resource: resource.into(),
        }
    }

    /// Parses the `Display` form back (`pods`, `deployments.apps`).
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((r, g)) => Gr::new(g, r),
            None => Gr::new("", s),
        }
    }
}

impl fmt::Display for Gr {
    /// `pods`, `deployments.apps`: the API server's `GroupResource.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// One served resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// Group and plural.
    pub gr: Gr,
    /// Served versions; the first is the preferred (and storage) version.
    pub versions: Vec<String>,
    /// Singular name (lower case).
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// List kind (`PodList`).
    pub list_kind: String,
    /// Namespace-scoped?
    pub namespaced: bool,
    /// Short names (`po`, `netpol`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Has a `status` subresource (PUT/PATCH to the object keep the stored status).
    pub status: bool,
    /// Defined by a CRD (no strategic merge patch; status dropped on create).
    pub custom: bool,
}

impl ResourceType {
    /// `apiVersion` for a version of this resource (`v1`, `apps/v1`).
    pub fn api_version(&self, version: &str) -> String {
        if self.gr.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.gr.group, version)
        }
    }

    /// The storage version.
    pub fn storage_version(&self) -> &str {
        &self.versions[0]
    }

    /// Verbs for discovery.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.gr.resource == "namespaces" {
            &[
                "create", "delete", "get", "list", "patch", "update", "watch",
            ]
        } else {
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }

    /// Names must be RFC 1123 subdomains (labels for namespaces)? RBAC objects and a few others allow
    /// any path-safe name (`system:node`).
    pub fn strict_names(&self) -> bool {
        self.gr.group != "rbac.authorization.k8s.io"
    }
}

/// (group, version, plural, singular, kind, namespaced, short names, status subresource)
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
);

const BUILTIN: &[Builtin] = &[
    (
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        true,
    ),
    ("", "v1", "nodes", "node", "Node", false, &["no"], true),
    ("", "v1", "pods", "pod", "Pod", true, &["po"], true),
    ("", "v1", "secrets", "secret", "Secret", true, &[], false),
    (
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        false,
    ),
    (
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        false,
    ),
    (
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        true,
    ),
    (
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        false,
    ),
    ("", "v1", "events", "event", "Event", true, &["ev"], false),
    (
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        true,
    ),
    (
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        true,
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        false,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        &["netpol"],
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
    ),
    (
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        false,
    ),
];

/// Every served resource, by group/resource.
#[derive(Debug, Clone)]
pub struct Registry {
    by_gr: BTreeMap<Gr, Arc<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// The built-in table only.
    pub fn builtin() -> Self {
        let mut by_gr = BTreeMap::new();
        for &(group, version, plural, singular, kind, namespaced, short, status) in BUILTIN {
            let in_all = matches!(plural, "pods" | "services" | "daemonsets" | "deployments");
            let rt = ResourceType {
                gr: Gr::new(group, plural),
                versions: vec![version.into()],
                singular: singular.into(),
                kind: kind.into(),
                list_kind: format!("{kind}List"),
                namespaced,
                short_names: short.iter().map(|s| s.to_string()).collect(),
                categories: if in_all { vec!["all".into()] } else { vec![] },
                status,
                custom: false,
            };
            by_gr.insert(rt.gr.clone(), Arc::new(rt));
        }
        Registry { by_gr }
    }

    /// The resource served at group/version/plural.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        let rt = self.by_gr.get(&Gr::new(group, plural))?;
        rt.versions.iter().any(|v| v == version).then(|| rt.clone())
    }

    /// The resource stored under a group/resource, whatever its versions.
    pub fn get(&self, gr: &Gr) -> Option<Arc<ResourceType>> {
        self.by_gr.get(gr).cloned()
    }

    /// All resources.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.by_gr.values()
    }

    /// Groups with their versions, in discovery order (core excluded, built-in groups before custom ones,
    /// versions as listed in the types, preferred first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        let mut types: Vec<&Arc<ResourceType>> = self
            .by_gr
            .values()
            .filter(|t| !t.gr.group.is_empty())
            .collect();
        types.sort_by_key(|t| t.custom);
        for t in types {
            let idx = match out.iter().position(|(g, _)| *g == t.gr.group) {
                Some(i) => i,
                None => {
                    out.push((t.gr.group.clone(), Vec::new()));
                    out.len() - 1
                }
            };
            for v in &t.versions {
                if !out[idx].1.contains(v) {
                    out[idx].1.push(v.clone());
                }
            }
        }
        out
    }

    /// Adds or replaces the resource a CustomResourceDefinition defines.
    pub fn register(&mut self, rt: ResourceType) -> Arc<ResourceType> {
        let rt = Arc::new(rt);
        self.by_gr.insert(rt.gr.clone(), rt.clone());
        rt
    }

    /// Removes a custom resource (built-ins are never removed).
    pub fn unregister(&mut self, gr: &Gr) -> Option<Arc<ResourceType>> {
        if self.by_gr.get(gr).is_some_and(|t| t.custom) {
            self.by_gr.remove(gr)
        } else {
            None
        }
    }

    /// Would this CRD's names clash with a built-in resource?
    pub fn is_builtin(&self, gr: &Gr) -> bool {
        self.by_gr.get(gr).is_some_and(|t| !t.custom)
    }
}

fn crd_invalid(name: &str, field: &str, what: &str) -> ApiError {
    ApiError::invalid(
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        name,
        field,
        "FieldValueInvalid",
        what,
    )
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The resource a CustomResourceDefinition object defines, checked as the API server checks the parts
/// that routing depends on (name = `plural.group`, scope, names, at least one served and exactly one
/// storage version).
pub fn crd_resource(crd: &Value) -> Result<ResourceType, ApiError> {
    let name = str_at(crd, &["metadata", "name"]);
    let spec = crd.get("spec").unwrap_or(&Value::Null);
    let group = str_at(spec, &["group"]);
    let plural = str_at(spec, &["names", "plural"]);
    let kind = str_at(spec, &["names", "kind"]);
    if group.is_empty() || !group.contains('.') {
        return Err(crd_invalid(
            name,
            "spec.group",
            &format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() || !crate::util::is_dns_label(plural) {
        return Err(crd_invalid(
            name,
            "spec.names.plural",
            &format!("Invalid value: \"{plural}\""),
        ));
    }
    if kind.is_empty() {
        return Err(crd_invalid(name, "spec.names.kind", "Required value"));
    }
    if name != format!("{plural}.{group}") {
        return Err(crd_invalid(
            name,
            "metadata.name",
            &format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let namespaced = match str_at(spec, &["scope"]) {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err(crd_invalid(
                name,
                "spec.scope",
                &format!(
                    "Unsupported value: \"{other}\": supported values: \"Cluster\", \"Namespaced\""
                ),
            ))
        }
    };
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let served: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .collect();
    if served.is_empty() {
        return Err(crd_invalid(
            name,
            "spec.versions",
            "Invalid value: must have at least one served version",
        ));
    }
    let storage: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
        .collect();
    if storage.len() != 1 {
        return Err(crd_invalid(
            name,
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let storage_name = str_at(storage[0], &["name"]).to_string();
    let mut names: Vec<String> = vec![storage_name.clone()];
    names.extend(
        served
            .iter()
            .map(|v| str_at(v, &["name"]).to_string())
            .filter(|n| *n != storage_name),
    );
    let status = storage[0].pointer("/subresources/status").is_some()
        || spec.pointer("/subresources/status").is_some();
    let names_obj = spec.get("names").unwrap_or(&Value::Null);
    let singular = match str_at(names_obj, &["singular"]) {
        "" => kind.to_lowercase(),
        s => s.to_string(),
    };
    let list_kind = match str_at(names_obj, &["listKind"]) {
        "" => format!("{kind}List"),
        s => s.to_string(),
    };
    Ok(ResourceType {
        gr: Gr::new(group, plural),
        versions: names,
        singular,
        kind: kind.to_string(),
        list_kind,
        namespaced,
        short_names: strings(names_obj.get("shortNames")),
        categories: strings(names_obj.get("categories")),
        status,
        custom: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtins() {
        let r = Registry::builtin();
        assert!(r.lookup("", "v1", "pods").unwrap().namespaced);
        assert!(r.lookup("", "v2", "pods").is_none());
        assert!(!r.lookup("", "v1", "nodes").unwrap().namespaced);
        assert_eq!(
            r.lookup("networking.k8s.io", "v1", "networkpolicies")
                .unwrap()
                .short_names,
            ["netpol"]
        );
        assert!(r.groups().iter().any(|(g, v)| g == "apps" && v == &["v1"]));
        assert_eq!(
            Gr::parse("deployments.apps"),
            Gr::new("apps", "deployments")
        );
        assert_eq!(
            Gr::parse("ippools.crd.projectcalico.org").to_string(),
            "ippools.crd.projectcalico.org"
        );
    }

    #[test]
    fn crds() {
        let crd = json!({
            "metadata": {"name": "ippools.crd.projectcalico.org"},
            "spec": {"group": "crd.projectcalico.org", "scope": "Cluster",
                "names": {"plural": "ippools", "kind": "IPPool", "shortNames": ["ipp"]},
                "versions": [{"name": "v1beta1", "served": true, "storage": false},
                             {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}
        });
        let rt = crd_resource(&crd).unwrap();
        assert_eq!(rt.versions, ["v1", "v1beta1"]);
        assert_eq!(rt.singular, "ippool");
        assert_eq!(rt.list_kind, "IPPoolList");
        assert!(rt.status && !rt.namespaced && rt.custom);
        let mut bad = crd.clone();
        bad["metadata"]["name"] = "x.crd.projectcalico.org".into();
        assert_eq!(crd_resource(&bad).unwrap_err().code, 422);
        let mut r = Registry::builtin();
        r.register(rt);
        assert!(r
            .lookup("crd.projectcalico.org", "v1beta1", "ippools")
            .is_some());
        assert!(r
            .unregister(&Gr::new("crd.projectcalico.org", "ippools"))
            .is_some());
        assert!(r.unregister(&Gr::new("", "pods")).is_none());
    }
}
