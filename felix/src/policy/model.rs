//! Typed input of the policy compiler.
//!
//! Two layers:
//! - **Kubernetes shapes** ([`NetworkPolicy`] and the structs under it): serde mirrors of
//!   `networking.k8s.io/v1` NetworkPolicy, so the node daemon can deserialize real YAML or JSON
//!   into them. They are deliberately lenient (strings where Kubernetes has enums, CIDRs as text):
//!   a bad value must not fail the whole document, it must be reported per policy and field by the
//!   validator ([`super::validate`]), so fields stay strings until then. Unknown fields are ignored.
//! - **Cluster facts** ([`PolicyInput`]): the local [`WorkloadEndpoint`]s (with their host-side
//!   interface), every [`Pod`] of the cluster (IPs, labels, named container ports), every
//!   [`Namespace`] (labels) and every policy. Plain data, no references between them except by
//!   name, so the compiler's result depends only on the values, never on their order.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The label Kubernetes (>= 1.21) puts on every namespace, holding its name. Added implicitly, so
/// `namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}` works without it being
/// listed in [`Namespace::labels`].
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Everything the policy ruleset of one node is computed from.
///
/// `pods` should list every pod of the cluster, local ones included; a local endpoint missing from
/// `pods` is added to it (so its address still counts as a selector member). A pod whose namespace
/// is missing from `namespaces` is treated as in a namespace with only [`NAMESPACE_NAME_LABEL`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInput {
    /// Pods running on this node, with their host-side interface.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEndpoint>,
    /// All pods of the cluster (for selector membership and named ports).
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// All namespaces, with their labels.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// All NetworkPolicies.
    #[serde(default)]
    pub policies: Vec<NetworkPolicy>,
}

/// A pod on this node: the pod plus the host side of its veth (`cali...`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpoint {
    /// Host-side interface name, e.g. `calic440f455693` (see `felix::workload_iface_name`).
    pub iface: String,
    /// The pod behind it.
    #[serde(flatten)]
    pub pod: Pod,
}

/// A pod of the cluster, as far as policy cares.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `status.podIPs` (IPv4 and/or IPv6).
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: Labels,
    /// Named container ports (`spec.containers[].ports[]` that have a name).
    #[serde(default)]
    pub ports: Vec<NamedPort>,
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedPort {
    /// `name`, e.g. `http`.
    pub name: String,
    /// `protocol`: `TCP` (default), `UDP` or `SCTP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// `containerPort`.
    pub port: u16,
}

fn default_protocol() -> String {
    "TCP".to_string()
}

/// A namespace and its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// Namespace name.
    pub name: String,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: Labels,
}

/// `networking.k8s.io/v1` NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// `apiVersion`, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `kind`, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `metadata` (name, namespace).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `spec`.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

impl NetworkPolicy {
    /// The namespace, `default` when unset (as `kubectl apply` would do).
    pub fn namespace(&self) -> &str {
        match self.metadata.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => "default",
        }
    }

    /// `namespace/name`, as errors and comments show it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.metadata.name)
    }
}

/// The part of `metadata` policy uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace` (`default` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.labels` (not used by policy semantics).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

/// `spec` of a NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// `podSelector`: the pods of the policy's namespace it applies to; `{}` selects all.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `policyTypes`: `Ingress` and/or `Egress`; defaulted when absent (see the validator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
    /// `ingress` rules; absent or empty with type `Ingress` means deny all ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    /// `egress` rules; absent or empty with type `Egress` means deny all egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
}

/// One `spec.ingress[]` rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyIngressRule {
    /// `from`: absent or empty means every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    /// `ports`: absent or empty means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// One `spec.egress[]` rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyEgressRule {
    /// `to`: absent or empty means every destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<NetworkPolicyPeer>>,
    /// `ports`: absent or empty means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// A peer of a rule: pods (by pod and/or namespace selector) or an `ipBlock`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// `podSelector`: pods of the policy's namespace, or of the namespaces `namespaceSelector` picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// `namespaceSelector`: all pods of the namespaces it selects (AND `podSelector` if both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// `ipBlock`: a CIDR minus exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    /// `cidr`, e.g. `10.0.0.0/16` or `fd00::/64`.
    #[serde(default)]
    pub cidr: String,
    /// `except`: CIDRs inside `cidr` that are not part of the block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// One entry of `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// `protocol`: `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `port`: a number or a container port name; absent means every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// `endPort`: with a numeric `port`, the last port of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// Kubernetes `IntOrString`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number (validated to 1..=65535 later).
    Int(i64),
    /// A name (validated as an IANA service name later).
    String(String),
}

/// `metav1.LabelSelector`. `{}` (both parts empty) selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// `matchLabels`: every key must have exactly this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// `matchExpressions`: every requirement must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// Label key.
    #[serde(default)]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[serde(default)]
    pub operator: String,
    /// Values for `In` / `NotIn` (must be empty for `Exists` / `DoesNotExist`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_yaml() {
        let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: prod
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: team, operator: In, values: [a, b]}
      podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {protocol: TCP, port: 80, endPort: 90}
    - {port: http}
  egress:
  - {}
"#;
        let p: NetworkPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(p.key(), "prod/web");
        let ing = &p.spec.ingress.as_ref().unwrap()[0];
        let from = ing.from.as_ref().unwrap();
        assert!(from[0].namespace_selector.is_some() && from[0].pod_selector.is_some());
        assert_eq!(
            from[1].ip_block.as_ref().unwrap().except,
            vec!["10.1.0.0/16"]
        );
        let ports = ing.ports.as_ref().unwrap();
        assert_eq!(ports[0].port, Some(IntOrString::Int(80)));
        assert_eq!(ports[0].end_port, Some(90));
        assert_eq!(ports[1].port, Some(IntOrString::String("http".into())));
        assert_eq!(p.spec.egress.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn namespace_defaults_to_default() {
        let p: NetworkPolicy = serde_yaml_ng::from_str("metadata: {name: x}\nspec: {}").unwrap();
        assert_eq!(p.key(), "default/x");
    }
}
