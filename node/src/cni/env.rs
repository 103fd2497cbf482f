//! The CNI environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
//! `CNI_PATH`) and the Kubernetes pod identity runtimes pass in `CNI_ARGS`.

use std::path::PathBuf;

use super::error::{CniError, Code};

/// The operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The environment of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// Empty on a DEL from containerd, and for VERSION/STATUS/GC.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, when the runtime is a kubelet.
    pub pod: Option<(String, String)>,
    /// `K8S_POD_NAME` alone: podman passes the container's name so.
    pub container_name: Option<String>,
    pub path: Vec<PathBuf>,
}

/// Parses `CNI_ARGS` (`K=V;K=V`); `IgnoreUnknown` is accepted, other unknown keys are ignored only
/// when it is set, as the spec's conventions say.
pub fn parse_args(args: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for part in args.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_ARGS: {part:?} is not KEY=VALUE"),
            )
        })?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

impl CniEnv {
    /// Reads the environment through `get`.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let need = |k: &str| {
            get(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| CniError::new(Code::InvalidEnvironment, format!("{k}: required")))
        };
        let command = match need("CNI_COMMAND")?.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("CNI_COMMAND {other:?}: want ADD, DEL, CHECK, VERSION, STATUS or GC"),
                ))
            }
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = if per_container {
            need("CNI_CONTAINERID")?
        } else {
            get("CNI_CONTAINERID").unwrap_or_default()
        };
        let netns = get("CNI_NETNS")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "CNI_NETNS: required",
            ));
        }
        let ifname = if per_container {
            need("CNI_IFNAME")?
        } else {
            get("CNI_IFNAME").unwrap_or_default()
        };
        if per_container
            && (ifname.len() > 15 || ifname.contains('/') || ifname == "." || ifname == "..")
        {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_IFNAME {ifname:?}: not a valid interface name"),
            ));
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        let arg = |k: &str| args.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        let pod = match (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) {
            (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
            _ => None,
        };
        let container_name = arg("K8S_POD_NAME").filter(|n| pod.is_none() && !n.is_empty());
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            pod,
            container_name,
            path,
        })
    }

    /// The IPAM handle, as Calico's plugin names it.
    pub fn handle(&self) -> String {
        format!("k8s-pod-network.{}", self.container_id)
    }

    /// The host-side interface: Calico's name for a Kubernetes pod, else the one of the
    /// container's endpoint (plain podman or containerd containers, see [`endpoint_name`]).
    pub fn host_iface(&self) -> String {
        match &self.pod {
            Some((ns, name)) => felix::workload_iface_name(ns, name),
            None => {
                felix::workload_iface_name(ENDPOINT_NAMESPACE, &endpoint_name(&self.container_id))
            }
        }
    }
}

/// The namespace of the endpoints of containers that are not Kubernetes pods.
pub const ENDPOINT_NAMESPACE: &str = "cni";

/// The endpoint (a Pod in [`ENDPOINT_NAMESPACE`]) of a container that is not a Kubernetes pod:
/// the container ID when it is a valid Pod name of at most 200 characters without dots (as
/// podman's and containerd's hex IDs are), else `cni-` and a digest of it.
pub fn endpoint_name(container_id: &str) -> String {
    // Up to 200 characters, so that `cni-endpoint-NAME.yaml` fits a file name; no dots, so
    // every label of the DNS subdomain is valid when the whole is.
    let ok = !container_id.is_empty()
        && container_id.len() <= 200
        && container_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && container_id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && container_id
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        container_id.to_string()
    } else {
        let digest = felix::workload_iface_name("cni-endpoint", container_id);
        format!(
            "cni-{}",
            &digest[felix::veth::WORKLOAD_IFACE_PREFIX.len()..]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_are_valid_pod_names() {
        let hex = "3f2a9c0d".repeat(8);
        assert_eq!(
            endpoint_name(&hex),
            hex,
            "a runtime's hex ID is its own name"
        );
        for odd in [
            "Upper_Case",
            "-lead",
            "trail-",
            "",
            "a..b",
            &"a".repeat(201),
        ] {
            let n = endpoint_name(odd);
            assert!(n.starts_with("cni-") && n.len() <= 253, "{odd:?} -> {n}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{odd:?} -> {n}"
            );
            assert_eq!(n, endpoint_name(odd), "stable");
        }
        assert_ne!(endpoint_name("A"), endpoint_name("B"));
    }
}
