//! [`ClusterState`]: one immutable, cheaply cloned snapshot of every resource, by kind.
//!
//! Built with [`StateBuilder`], which enforces one object per (kind, key): a second document with
//! the same key is rejected and names where the first came from, except that a core `v1` Node and
//! a `projectcalico.org/v3` Node of one name are merged (the v3 `spec.bgp` wins field by field),
//! since a Calico user may write either or both. Callers feed documents in a stable order (the file
//! backend sorts by file name) so the result depends only on the datastore's content.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::Arc;

use super::resources::{
    BgpConfiguration, BgpPeer, IpPool, Namespace, NetworkPolicy, Node, Pod, Resource,
};
use super::{ResourceError, Severity};

/// Default AS number when neither the Node nor the default BGPConfiguration sets one (Calico's).
pub const DEFAULT_AS_NUMBER: u32 = 64512;
/// Name of the cluster-wide BGPConfiguration.
pub const DEFAULT_BGP_CONFIGURATION: &str = "default";

/// `(namespace, name)` key of namespaced kinds.
pub type NsKey = (String, String);

/// Every resource of a snapshot. Cluster-scoped kinds are keyed by name, namespaced kinds by
/// `(namespace, name)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub pods: BTreeMap<NsKey, Arc<Pod>>,
    pub nodes: BTreeMap<String, Node>,
    pub network_policies: BTreeMap<NsKey, Arc<NetworkPolicy>>,
    pub bgp_configurations: BTreeMap<String, BgpConfiguration>,
    pub bgp_peers: BTreeMap<String, BgpPeer>,
    pub ip_pools: BTreeMap<String, IpPool>,
    /// BGP passwords from Secrets, by (Secret name, key): the password, or why it cannot be had.
    /// `None` when the backend cannot read Secrets (the file datastore).
    pub bgp_secrets: Option<BTreeMap<(String, String), Result<String, String>>>,
}

/// An immutable snapshot of the cluster; clones share one allocation. Derefs to [`Resources`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState(Arc<Resources>);

impl Deref for ClusterState {
    type Target = Resources;
    fn deref(&self) -> &Resources {
        &self.0
    }
}

impl From<Resources> for ClusterState {
    fn from(r: Resources) -> Self {
        ClusterState(Arc::new(r))
    }
}

/// IP family of a pool, block or address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of_addr(ip: &std::net::IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    pub fn of_net(net: &ipnet::IpNet) -> IpFamily {
        IpFamily::of_addr(&net.addr())
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

impl ClusterState {
    /// Parses YAML text (any number of documents) into a state; handy for tests and tools.
    pub fn from_yaml(origin: &str, text: &str) -> (ClusterState, Vec<ResourceError>) {
        let parsed = super::parse::parse_yaml(origin, text);
        let mut b = StateBuilder::default();
        let mut errors = parsed.errors;
        for (origin, r) in parsed.resources {
            if let Err(e) = b.add(&origin, r) {
                errors.push(*e);
            }
        }
        (b.build(), errors)
    }

    /// The cluster-wide BGPConfiguration (`default`), if any.
    pub fn bgp_configuration(&self) -> Option<&BgpConfiguration> {
        self.bgp_configurations.get(DEFAULT_BGP_CONFIGURATION)
    }

    /// The cluster default AS: `default` BGPConfiguration's `asNumber`, else 64512.
    pub fn default_as_number(&self) -> u32 {
        self.bgp_configuration()
            .and_then(|c| c.as_number)
            .unwrap_or(DEFAULT_AS_NUMBER)
    }

    /// A node's AS: its own setting, else the cluster default.
    pub fn as_number_of(&self, node: &str) -> u32 {
        self.nodes
            .get(node)
            .and_then(|n| n.bgp.as_number)
            .unwrap_or_else(|| self.default_as_number())
    }

    /// Whether the node-to-node mesh is on (default true).
    pub fn node_to_node_mesh_enabled(&self) -> bool {
        self.bgp_configuration()
            .and_then(|c| c.node_to_node_mesh_enabled)
            .unwrap_or(true)
    }

    /// Pods scheduled to `node`, in (namespace, name) order.
    pub fn pods_on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .values()
            .map(|p| &**p)
            .filter(move |p| p.node_name.as_deref() == Some(node))
    }

    /// NetworkPolicies of one namespace.
    pub fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        self.network_policies
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, p)| &**p)
    }

    /// The pools IPAM may use for `node` in `family`: enabled, of that family, and whose
    /// `nodeSelector` matches the node's labels (an unknown node has no labels), by name.
    pub fn ip_pools_for_node(&self, node: &str, family: IpFamily) -> Vec<IpPool> {
        let empty = BTreeMap::new();
        let labels = self.nodes.get(node).map_or(&empty, |n| &n.metadata.labels);
        self.ip_pools
            .values()
            .filter(|p| !p.disabled && IpFamily::of_net(&p.cidr) == family)
            .filter(|p| p.node_selector.matches(labels))
            .cloned()
            .collect()
    }
}

/// Accumulates resources, rejecting duplicates; see the module doc.
#[derive(Default)]
pub struct StateBuilder {
    res: Resources,
    /// (kind, key) -> (origin, apiVersion) of the first definition.
    seen: HashMap<(&'static str, String), (String, String)>,
    /// The caller holds at most one resource per kind and key (the Kubernetes backend, whose
    /// objects are keyed so): duplicates cannot occur and are not looked for.
    distinct: bool,
}

impl StateBuilder {
    /// A builder for resources that are distinct by construction (one per kind and key).
    pub fn distinct() -> StateBuilder {
        StateBuilder {
            distinct: true,
            ..Default::default()
        }
    }

    /// Adds one resource decoded at `origin`; a duplicate is returned as an error and skipped.
    pub fn add(&mut self, origin: &str, r: Resource) -> Result<(), Box<ResourceError>> {
        if !self.distinct {
            self.check_duplicate(origin, &r)?;
        }
        self.insert(r);
        Ok(())
    }

    /// An error if a resource of `r`'s kind and key was added before (a `v1` and a `v3` Node of
    /// one name merge instead).
    fn check_duplicate(&mut self, origin: &str, r: &Resource) -> Result<(), Box<ResourceError>> {
        let kind = r.kind();
        let key = r.display_name();
        let api_version = match r {
            Resource::Node(_, v) => v.clone(),
            _ => String::new(),
        };
        match self.seen.entry((kind, key.clone())) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let (first, first_version) = e.get();
                let mergeable = kind == "Node" && *first_version != api_version;
                if !mergeable {
                    return Err(Box::new(ResourceError {
                        origin: origin.to_string(),
                        kind: Some(kind.to_string()),
                        name: Some(key),
                        field: None,
                        message: format!(
                            "duplicate: already defined at {first}; this one is ignored"
                        ),
                        severity: Severity::Error,
                    }));
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((origin.to_string(), api_version.clone()));
            }
        }
        Ok(())
    }

    fn insert(&mut self, r: Resource) {
        let ns_key = |m: &super::resources::ObjectMeta| {
            (m.namespace.clone().unwrap_or_default(), m.name.clone())
        };
        match r {
            Resource::Namespace(n) => {
                self.res.namespaces.insert(n.metadata.name.clone(), n);
            }
            Resource::Pod(p) => {
                self.res.pods.insert(ns_key(&p.metadata), p);
            }
            Resource::NetworkPolicy(p) => {
                self.res.network_policies.insert(ns_key(&p.metadata), p);
            }
            Resource::BgpConfiguration(c) => {
                self.res
                    .bgp_configurations
                    .insert(c.metadata.name.clone(), c);
            }
            Resource::BgpPeer(p) => {
                self.res.bgp_peers.insert(p.metadata.name.clone(), p);
            }
            Resource::IpPool(p) => {
                self.res.ip_pools.insert(p.metadata.name.clone(), p);
            }
            Resource::Node(n, version) => match self.res.nodes.entry(n.metadata.name.clone()) {
                Entry::Vacant(e) => {
                    e.insert(n);
                }
                Entry::Occupied(mut e) => merge_node(e.get_mut(), n, version == "v1"),
            },
        }
    }

    /// The BGP passwords the backend read from Secrets (see [`Resources::bgp_secrets`]).
    pub fn bgp_secrets(&mut self, secrets: BTreeMap<(String, String), Result<String, String>>) {
        self.res.bgp_secrets = Some(secrets);
    }

    pub fn build(self) -> ClusterState {
        self.res.into()
    }
}

/// Merges two Node documents of one name; the Calico (v3) one's BGP fields win.
fn merge_node(into: &mut Node, other: Node, other_is_core: bool) {
    let (mut core, calico) = if other_is_core {
        (other, std::mem::replace(into, placeholder()))
    } else {
        (std::mem::replace(into, placeholder()), other)
    };
    core.metadata.labels.extend(calico.metadata.labels);
    core.metadata
        .annotations
        .extend(calico.metadata.annotations);
    let b = calico.bgp;
    core.bgp.ipv4_address = b.ipv4_address.or(core.bgp.ipv4_address);
    core.bgp.ipv6_address = b.ipv6_address.or(core.bgp.ipv6_address);
    core.bgp.as_number = b.as_number.or(core.bgp.as_number);
    core.bgp.route_reflector_cluster_id = b
        .route_reflector_cluster_id
        .or(core.bgp.route_reflector_cluster_id);
    for ip in calico.internal_ips {
        if !core.internal_ips.contains(&ip) {
            core.internal_ips.push(ip);
        }
    }
    *into = core;
}

fn placeholder() -> Node {
    Node {
        metadata: Default::default(),
        bgp: Default::default(),
        internal_ips: Vec::new(),
    }
}
