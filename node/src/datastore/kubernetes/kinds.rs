//! The kinds the Kubernetes backend watches, as the API serves them.
//!
//! Core and `networking.k8s.io` kinds are the ones the file datastore reads; Calico's resources
//! are its CRDs in `crd.projectcalico.org/v1` (cluster-scoped, the same spec as the
//! `projectcalico.org/v3` documents of the file datastore). List items come without `apiVersion`
//! and `kind`, so the backend sets them from this table before decoding.

use kube::api::ApiResource;

/// One watched resource type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// Calico's CRD group and version.
pub const CALICO_CRD_GROUP: &str = "crd.projectcalico.org";

const fn core(kind: &'static str, plural: &'static str, namespaced: bool) -> Kind {
    Kind {
        group: "",
        version: "v1",
        kind,
        plural,
        namespaced,
    }
}

const fn calico(kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        group: CALICO_CRD_GROUP,
        version: "v1",
        kind,
        plural,
        namespaced: false,
    }
}

/// Everything the cluster state is built from, in the order it is fed to the state builder.
pub const WATCHED: &[Kind] = &[
    core("Namespace", "namespaces", false),
    core("Node", "nodes", false),
    core("Pod", "pods", true),
    Kind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        namespaced: true,
    },
    calico("BGPConfiguration", "bgpconfigurations"),
    calico("BGPPeer", "bgppeers"),
    calico("IPPool", "ippools"),
];

impl Kind {
    /// `v1` or `GROUP/VERSION`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }
}
