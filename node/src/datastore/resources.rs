//! Typed resources, decoded from the YAML a Calico user already has.
//!
//! Kinds and API versions:
//! - `v1` Namespace, Pod, Node (Node's BGP settings from the `projectcalico.org/*` annotations);
//! - `projectcalico.org/v3` Node (`spec.bgp`), BGPConfiguration, BGPPeer, IPPool (also accepted
//!   as `crd.projectcalico.org/v1`, the CRD storage form, which has the same spec);
//! - `networking.k8s.io/v1` NetworkPolicy, decoded once into the policy engine's model
//!   (`felix::policy::model`); one that does not fit it is kept as [`NetworkPolicy::policy`]
//!   `Err`, reported, and enforced as deny-all for its namespace (fail closed) unless an earlier
//!   good version of it is kept (see `file`).
//!
//! Calico's BGPConfiguration, BGPPeer and IPPool live in [`super::calico`] (re-exported here).
//!
//! [`decode`] checks a document against its kind's schema ([`super::schema`]: unknown fields are
//! errors) and turns it into a [`Resource`], [`Decoded::Unsupported`] for a kind we do not
//! implement, or an [`ObjectError`] naming kind, name and field.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_yaml_ng::Value;

use super::calico::{bgp_configuration, bgp_peer, ip_pool};
pub use super::calico::{
    parse_peer_addr, BgpConfiguration, BgpPassword, BgpPeer, EncapMode, IpPool, PeerAddr,
    SourceAddress,
};
use super::fields::{asn_field, parse_asn, FieldError, Obj};
use super::schema;

/// Label and annotation maps.
pub type Labels = BTreeMap<String, String>;

/// Node annotation holding `ADDR/PREFIXLEN` of the node's IPv4 BGP address.
pub const ANN_IPV4_ADDRESS: &str = "projectcalico.org/IPv4Address";
/// Node annotation holding `ADDR/PREFIXLEN` of the node's IPv6 BGP address.
pub const ANN_IPV6_ADDRESS: &str = "projectcalico.org/IPv6Address";
/// Node annotation holding the node's AS number.
pub const ANN_AS_NUMBER: &str = "projectcalico.org/ASNumber";
/// Node annotation holding the route reflector cluster ID.
pub const ANN_RR_CLUSTER_ID: &str = "projectcalico.org/RouteReflectorClusterID";
/// Label the API server puts on every Namespace; added here too so selectors can rely on it.
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
/// Default IPv4 block size (Calico's).
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default IPv6 block size (Calico's).
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

const CALICO_V3: &str = "projectcalico.org/v3";
const CALICO_CRD: &str = "crd.projectcalico.org/v1";

/// Metadata common to all kinds; `namespace` is set for namespaced kinds only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: Labels,
    pub annotations: Labels,
}

/// Core `v1` Namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Labels include `kubernetes.io/metadata.name`, as the API server sets it.
    pub metadata: ObjectMeta,
}

/// L4 protocol of a container port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

/// One `spec.containers[].ports[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// One container; only its ports matter here (for named ports in policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub ports: Vec<ContainerPort>,
}

/// Core `v1` Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// `namespace` is always set (`default` when the document has none, as kubectl does).
    pub metadata: ObjectMeta,
    pub node_name: Option<String>,
    pub host_network: bool,
    pub containers: Vec<Container>,
    /// `status.phase`, e.g. `Running`, `Succeeded`.
    pub phase: Option<String>,
    /// `status.podIP` first, then the other `status.podIPs[].ip`, without duplicates.
    pub pod_ips: Vec<IpAddr>,
}

impl Pod {
    /// The namespace (always present for a decoded Pod).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// Resolves a named container port, as NetworkPolicy named ports do.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.container_port)
    }
}

/// A node's BGP settings: `spec.bgp` of a `projectcalico.org/v3` Node, else the annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBgp {
    pub ipv4_address: Option<Ipv4Net>,
    pub ipv6_address: Option<Ipv6Net>,
    pub as_number: Option<u32>,
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

/// A Node (core `v1` and/or `projectcalico.org/v3`, merged by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub metadata: ObjectMeta,
    pub bgp: NodeBgp,
    /// `status.addresses` of type `InternalIP` (a fallback when no BGP address is set).
    pub internal_ips: Vec<IpAddr>,
}

/// `networking.k8s.io/v1` NetworkPolicy, in the policy engine's model (namespace set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub metadata: ObjectMeta,
    /// The policy, or why the document does not have NetworkPolicy's shape.
    pub policy: Result<felix::policy::model::NetworkPolicy, String>,
}

/// One decoded resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    // The kinds a cluster has thousands of are shared (`Arc`) between the backend's held copy and
    // every snapshot, so a snapshot costs a pointer per object, not a copy.
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    /// The apiVersion is kept so a `v1` Node and a `v3` Node of one name can be merged.
    Node(Node, String),
    NetworkPolicy(Arc<NetworkPolicy>),
    BgpConfiguration(BgpConfiguration),
    BgpPeer(BgpPeer),
    IpPool(IpPool),
}

impl Resource {
    /// The kind as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Namespace(_) => "Namespace",
            Resource::Pod(_) => "Pod",
            Resource::Node(..) => "Node",
            Resource::NetworkPolicy(_) => "NetworkPolicy",
            Resource::BgpConfiguration(_) => "BGPConfiguration",
            Resource::BgpPeer(_) => "BGPPeer",
            Resource::IpPool(_) => "IPPool",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Namespace(r) => &r.metadata,
            Resource::Pod(r) => &r.metadata,
            Resource::Node(r, _) => &r.metadata,
            Resource::NetworkPolicy(r) => &r.metadata,
            Resource::BgpConfiguration(r) => &r.metadata,
            Resource::BgpPeer(r) => &r.metadata,
            Resource::IpPool(r) => &r.metadata,
        }
    }

    /// What is wrong with a resource that decoded but cannot be used as written (a NetworkPolicy
    /// that does not fit the policy model): reported as an error, and an earlier good version is
    /// preferred to it.
    pub fn problem(&self) -> Option<&str> {
        match self {
            Resource::NetworkPolicy(p) => p.policy.as_ref().err().map(String::as_str),
            _ => None,
        }
    }

    /// `namespace/name` for namespaced kinds, `name` otherwise.
    pub fn display_name(&self) -> String {
        let m = self.metadata();
        match &m.namespace {
            Some(ns) => format!("{ns}/{}", m.name),
            None => m.name.clone(),
        }
    }
}

/// A document that could not be decoded; `kind` and `name` are set when they could be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

/// What [`decode`] makes of a document.
// One short-lived value per document: boxing the resource would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded {
    Resource(Resource),
    /// A kind (or kind at this apiVersion) we do not implement: refused, never skipped quietly.
    Unsupported {
        api_version: String,
        kind: String,
        /// `metadata.name` (with the namespace when there is one), when it could be read.
        name: Option<String>,
    },
}

/// Kinds whose absence changes who can reach a pod: a Calico user's default-deny written as one
/// of these would not be enforced, so they make the node not ready until they are implemented.
pub const POLICY_KINDS: &[&str] = &[
    "NetworkPolicy",
    "GlobalNetworkPolicy",
    "StagedNetworkPolicy",
    "StagedGlobalNetworkPolicy",
    "StagedKubernetesNetworkPolicy",
    "HostEndpoint",
    "GlobalNetworkSet",
    "NetworkSet",
    "Tier",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// Decodes one document (a map with `apiVersion`, `kind`, `metadata`) written by a user.
pub fn decode(doc: &Value) -> Result<Decoded, ObjectError> {
    decode_as(doc, schema::Fields::Strict)
}

/// Decodes one document; `fields` says whether unknown fields are errors (see
/// [`schema::Fields`]).
pub fn decode_as(doc: &Value, fields: schema::Fields) -> Result<Decoded, ObjectError> {
    let plain = |e: FieldError| ObjectError {
        kind: None,
        name: None,
        field: Some(e.field),
        message: e.message,
    };
    let root = Obj::root(doc).map_err(plain)?;
    let kind = root.required_str("kind").map_err(plain)?.to_string();
    let api_version = root.required_str("apiVersion").map_err(|e| ObjectError {
        kind: Some(kind.clone()),
        ..plain(e)
    })?;
    let namespaced = matches!(kind.as_str(), "Pod" | "NetworkPolicy");
    let handled = matches!(
        (api_version, kind.as_str()),
        ("v1", "Namespace" | "Pod" | "Node")
            | ("networking.k8s.io/v1", "NetworkPolicy")
            | (
                CALICO_V3 | CALICO_CRD,
                "Node" | "BGPConfiguration" | "BGPPeer" | "IPPool"
            )
    );
    if !handled {
        let meta = root.obj("metadata").ok().flatten();
        let name = meta.as_ref().and_then(|m| {
            let m = m.view();
            let name = m.str("name").ok().flatten()?;
            Some(match m.str("namespace").ok().flatten() {
                Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
                _ => name.to_string(),
            })
        });
        return Ok(Decoded::Unsupported {
            api_version: api_version.to_string(),
            kind,
            name,
        });
    }
    let fail = |name: Option<String>, e: FieldError| ObjectError {
        kind: Some(kind.clone()),
        name,
        field: Some(e.field),
        message: e.message,
    };
    let metadata = decode_meta(&root, namespaced).map_err(|e| fail(None, e))?;
    let name = match &metadata.namespace {
        Some(ns) => format!("{ns}/{}", metadata.name),
        None => metadata.name.clone(),
    };
    let schema = match (kind.as_str(), api_version) {
        ("Namespace", _) => &schema::NAMESPACE,
        ("Pod", _) => &schema::POD,
        ("Node", "v1") => &schema::NODE_V1,
        ("Node", _) => &schema::NODE_V3,
        ("NetworkPolicy", _) => &schema::NETWORK_POLICY,
        ("BGPConfiguration", _) => &schema::BGP_CONFIGURATION,
        ("BGPPeer", _) => &schema::BGP_PEER,
        _ => &schema::IP_POOL,
    };
    schema::check(doc, schema, fields).map_err(|e| fail(Some(name.clone()), e))?;
    let spec_holder = root.obj("spec").map_err(|e| fail(Some(name.clone()), e))?;
    let empty = serde_yaml_ng::Mapping::new();
    let empty_value = Value::Mapping(empty);
    let spec_view = match &spec_holder {
        Some(s) => s.view(),
        None => Obj::root(&empty_value).map_err(|e| fail(Some(name.clone()), e))?,
    };
    let resource = match kind.as_str() {
        "Namespace" => Ok(Resource::Namespace(Arc::new(namespace(metadata)))),
        "Pod" => pod(metadata, &root, &spec_view).map(|p| Resource::Pod(Arc::new(p))),
        "Node" => node(metadata, &root, &spec_view).map(|n| Resource::Node(n, api_version.into())),
        "NetworkPolicy" => {
            network_policy(metadata, doc).map(|p| Resource::NetworkPolicy(Arc::new(p)))
        }
        "BGPConfiguration" => {
            bgp_configuration(metadata, &spec_view).map(Resource::BgpConfiguration)
        }
        "BGPPeer" => bgp_peer(metadata, &spec_view).map(Resource::BgpPeer),
        _ => ip_pool(metadata, &spec_view).map(Resource::IpPool),
    };
    resource
        .map(Decoded::Resource)
        .map_err(|e| fail(Some(name), e))
}

fn decode_meta(root: &Obj<'_>, namespaced: bool) -> Result<ObjectMeta, FieldError> {
    let Some(meta) = root.obj("metadata")? else {
        return Err(root.err("metadata.name", "required"));
    };
    let meta = meta.view();
    let name = meta.required_str("name")?.to_string();
    let namespace = match meta.str("namespace")? {
        Some(ns) if namespaced && !ns.is_empty() => Some(ns.to_string()),
        _ if namespaced => Some("default".to_string()),
        _ => None,
    };
    Ok(ObjectMeta {
        name,
        namespace,
        labels: meta.string_map("labels")?,
        annotations: meta.string_map("annotations")?,
    })
}

fn namespace(mut metadata: ObjectMeta) -> Namespace {
    metadata
        .labels
        .entry(LABEL_NAMESPACE_NAME.to_string())
        .or_insert_with(|| metadata.name.clone());
    Namespace { metadata }
}

fn parse_ip(a: &super::fields::At<'_>) -> Result<IpAddr, FieldError> {
    let s = a.as_str()?;
    s.trim()
        .parse()
        .map_err(|_| a.err(format!("invalid IP address {s:?}")))
}

fn pod(metadata: ObjectMeta, root: &Obj<'_>, spec: &Obj<'_>) -> Result<Pod, FieldError> {
    let mut containers = Vec::new();
    for c in spec.seq("containers")? {
        let c = c.as_obj()?;
        let mut ports = Vec::new();
        for p in c.seq("ports")? {
            let p = p.as_obj()?;
            let container_port = match p.uint("containerPort", 65535)? {
                Some(n) if n > 0 => n as u16,
                _ => return Err(p.err("containerPort", "required (1-65535)")),
            };
            let protocol = match p.str("protocol")? {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some("SCTP") => Protocol::Sctp,
                Some(other) => {
                    return Err(p.err(
                        "protocol",
                        format!("unknown protocol {other:?} (want TCP, UDP or SCTP)"),
                    ))
                }
            };
            ports.push(ContainerPort {
                name: p.str("name")?.map(str::to_string),
                container_port,
                protocol,
            });
        }
        containers.push(Container {
            name: c.str("name")?.unwrap_or_default().to_string(),
            ports,
        });
    }
    let mut pod_ips = Vec::new();
    let mut phase = None;
    if let Some(status) = root.obj("status")? {
        let status = status.view();
        phase = status.str("phase")?.map(str::to_string);
        if let Some(a) = status.get("podIP") {
            if !a.as_str()?.is_empty() {
                pod_ips.push(parse_ip(&a)?);
            }
        }
        for item in status.seq("podIPs")? {
            let item = item.as_obj()?;
            let Some(a) = item.get("ip") else {
                return Err(item.err("ip", "required"));
            };
            let ip = parse_ip(&a)?;
            if !pod_ips.contains(&ip) {
                pod_ips.push(ip);
            }
        }
    }
    if pod_ips.is_empty() {
        pod_ips = annotated_pod_ips(&metadata)?;
    }
    Ok(Pod {
        metadata,
        node_name: spec
            .str("nodeName")?
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        host_network: spec.bool("hostNetwork")?.unwrap_or(false),
        containers,
        phase,
        pod_ips,
    })
}

/// The CNI plugin's annotations, as Calico's writes them: `cni.projectcalico.org/podIPs`
/// (`10.244.0.5/32,fd00::5/128`), else `cni.projectcalico.org/podIP`. They say where a pod is
/// while the kubelet has not filled `status.podIPs` in yet.
fn annotated_pod_ips(metadata: &ObjectMeta) -> Result<Vec<IpAddr>, FieldError> {
    let (key, text) = match (
        metadata.annotations.get(ANNOTATION_POD_IPS),
        metadata.annotations.get(ANNOTATION_POD_IP),
    ) {
        (Some(t), _) => (ANNOTATION_POD_IPS, t),
        (None, Some(t)) => (ANNOTATION_POD_IP, t),
        (None, None) => return Ok(Vec::new()),
    };
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip = parse_if_addr(part)
            .map_err(|message| FieldError {
                field: format!("metadata.annotations.{key}"),
                message,
            })?
            .addr();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// Annotations Calico's CNI plugin writes on a Pod.
pub const ANNOTATION_POD_IP: &str = "cni.projectcalico.org/podIP";
pub const ANNOTATION_POD_IPS: &str = "cni.projectcalico.org/podIPs";

/// `ADDR/PREFIXLEN` (a bare address is taken as a host prefix).
fn parse_if_addr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n);
    }
    t.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid address {text:?} (want ADDR/PREFIXLEN)"))
}

fn node(metadata: ObjectMeta, root: &Obj<'_>, spec: &Obj<'_>) -> Result<Node, FieldError> {
    let ann = |key: &str| metadata.annotations.get(key).filter(|s| !s.is_empty());
    let ann_err = |key: &str, message: String| FieldError {
        field: format!("metadata.annotations.{key}"),
        message,
    };
    let mut bgp = NodeBgp::default();
    if let Some(v) = ann(ANN_IPV4_ADDRESS) {
        match parse_if_addr(v).map_err(|m| ann_err(ANN_IPV4_ADDRESS, m))? {
            IpNet::V4(n) => bgp.ipv4_address = Some(n),
            IpNet::V6(_) => {
                return Err(ann_err(
                    ANN_IPV4_ADDRESS,
                    format!("{v:?} is not an IPv4 address"),
                ))
            }
        }
    }
    if let Some(v) = ann(ANN_IPV6_ADDRESS) {
        match parse_if_addr(v).map_err(|m| ann_err(ANN_IPV6_ADDRESS, m))? {
            IpNet::V6(n) => bgp.ipv6_address = Some(n),
            IpNet::V4(_) => {
                return Err(ann_err(
                    ANN_IPV6_ADDRESS,
                    format!("{v:?} is not an IPv6 address"),
                ))
            }
        }
    }
    if let Some(v) = ann(ANN_AS_NUMBER) {
        bgp.as_number = Some(parse_asn(v).map_err(|m| ann_err(ANN_AS_NUMBER, m))?);
    }
    if let Some(v) = ann(ANN_RR_CLUSTER_ID) {
        bgp.route_reflector_cluster_id = Some(v.trim().parse().map_err(|_| {
            ann_err(
                ANN_RR_CLUSTER_ID,
                format!("invalid cluster ID {v:?} (want an IPv4 address)"),
            )
        })?);
    }
    if let Some(b) = spec.obj("bgp")? {
        let b = b.view();
        if let Some(a) = b.get("ipv4Address") {
            let s = a.as_str()?;
            match parse_if_addr(s).map_err(|m| a.err(m))? {
                IpNet::V4(n) => bgp.ipv4_address = Some(n),
                IpNet::V6(_) => return Err(a.err(format!("{s:?} is not an IPv4 address"))),
            }
        }
        if let Some(a) = b.get("ipv6Address") {
            let s = a.as_str()?;
            match parse_if_addr(s).map_err(|m| a.err(m))? {
                IpNet::V6(n) => bgp.ipv6_address = Some(n),
                IpNet::V4(_) => return Err(a.err(format!("{s:?} is not an IPv6 address"))),
            }
        }
        if let Some(n) = asn_field(&b, "asNumber")? {
            bgp.as_number = Some(n);
        }
        if let Some(a) = b.get("routeReflectorClusterID") {
            let s = a.as_str()?;
            bgp.route_reflector_cluster_id =
                Some(s.trim().parse().map_err(|_| {
                    a.err(format!("invalid cluster ID {s:?} (want an IPv4 address)"))
                })?);
        }
    }
    let mut internal_ips = Vec::new();
    if let Some(status) = root.obj("status")? {
        for a in status.view().seq("addresses")? {
            let o = a.as_obj()?;
            if o.str("type")? == Some("InternalIP") {
                if let Some(addr) = o.get("address") {
                    internal_ips.push(parse_ip(&addr)?);
                }
            }
        }
    }
    Ok(Node {
        metadata,
        bgp,
        internal_ips,
    })
}

fn network_policy(metadata: ObjectMeta, doc: &Value) -> Result<NetworkPolicy, FieldError> {
    let raw = serde_json::to_value(doc).map_err(|e| FieldError {
        field: "(document)".into(),
        message: format!("not representable as JSON: {e}"),
    })?;
    let policy = serde_json::from_value::<felix::policy::model::NetworkPolicy>(raw)
        .map(|mut p| {
            p.metadata.namespace = metadata.namespace.clone();
            p
        })
        .map_err(|e| format!("not a valid NetworkPolicy: {e}; its namespace's pods are isolated"));
    Ok(NetworkPolicy { metadata, policy })
}

#[cfg(test)]
mod tests;
