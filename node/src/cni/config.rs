//! The network configuration on stdin: the spec's keys, the Calico keys a Calico user already
//! writes in a conflist (mapped to ours), and nothing else: an unknown key is an error naming it,
//! as a typo in a CNI config must not be silently ignored.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::error::{CniError, Code};

/// Versions we speak.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where addresses come from.
#[derive(Clone, Debug, PartialEq)]
pub enum IpamCfg {
    /// `calico-ipam` (or `calico-rs-ipam`): our IPAM in the datastore.
    Calico {
        assign_ipv4: bool,
        assign_ipv6: bool,
        /// Pool names or CIDRs to take from (empty: every pool that selects the node).
        ipv4_pools: Vec<String>,
        ipv6_pools: Vec<String>,
    },
    /// Any other plugin (e.g. the stock `host-local`), called as the spec describes with this
    /// object as its `ipam` section.
    Delegate { plugin: String, conf: Value },
}

/// Which datastore the plugin allocates from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatastoreCfg {
    /// The file datastore directory, used directly.
    File(PathBuf),
    /// The local daemon does the IPAM and the Pod annotations with its own service account,
    /// asked over its socket (`daemon_socket`, see [`super::socket`]); the plugin holds no
    /// credentials, so Calico's `kubernetes.kubeconfig` is refused.
    Kubernetes { socket: PathBuf },
}

/// A parsed configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub datastore: DatastoreCfg,
    pub nodename: Option<String>,
    pub nodename_file: Option<PathBuf>,
    pub nodename_file_optional: bool,
    pub mtu: Option<u32>,
    pub ipam: IpamCfg,
    pub allow_ip_forwarding: bool,
    pub log_level: Option<String>,
    pub log_file_path: Option<PathBuf>,
    /// The previous plugin's result, when chained.
    pub prev_result: Option<Value>,
    /// The whole document, for delegating to an IPAM plugin.
    pub raw: Value,
}

/// Keys of the spec (and runtime-injected ones) every plugin accepts.
const SPEC_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "cniVersions",
    "disableCheck",
    "disableGC",
    // 1.1 GC: the attachments the runtime still has.
    "cni.dev/valid-attachments",
];

/// Calico's keys that we act on (or, for `policy`, that Calico writes with its only value).
const CALICO_KEYS: &[&str] = &[
    "datastore_type",
    "datastore_dir",
    "daemon_socket",
    "nodename",
    "nodename_file",
    "nodename_file_optional",
    "mtu",
    "container_settings",
    "log_level",
    "log_file_path",
    "kubernetes",
    "policy",
];

/// Calico keys we know and do not implement: refused with the reason.
const REFUSED: &[(&str, &str)] = &[
    (
        "etcd_endpoints",
        "the etcd datastore is not supported; use datastore_type kubernetes or file",
    ),
    ("etcd_discovery_srv", "the etcd datastore is not supported"),
    ("etcd_key_file", "the etcd datastore is not supported"),
    ("etcd_cert_file", "the etcd datastore is not supported"),
    ("etcd_ca_cert_file", "the etcd datastore is not supported"),
    (
        "feature_control",
        "feature_control (floating IPs, IP reservations) is not supported",
    ),
    ("ipv4_pools", "put ipv4_pools inside ipam"),
    ("ipv6_pools", "put ipv6_pools inside ipam"),
    ("windows_use_single_network", "Windows is not supported"),
    ("vxlan_mac_prefix", "Windows is not supported"),
    ("num_queues", "multi-queue veths are not supported"),
    (
        "endpoint_status_dir",
        "endpoint status files are not supported",
    ),
];

fn invalid(msg: String) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

fn str_of(m: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(format!("{key}: want a string, got {v}"))),
    }
}

fn check_keys(m: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), CniError> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(invalid(format!("{at}{k}: unknown key")));
        }
    }
    Ok(())
}

/// A Calico-style boolean: `true`, or the strings `"true"` / `"false"`.
fn flag(m: &Map<String, Value>, key: &str, at: &str, default: bool) -> Result<bool, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(v) => Err(invalid(format!("{at}{key}: want true or false, got {v}"))),
    }
}

fn pools(m: &Map<String, Value>, key: &str) -> Result<Vec<String>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("ipam.{key}: want strings, got {v}")))
            })
            .collect(),
        Some(v) => Err(invalid(format!("ipam.{key}: want a list, got {v}"))),
    }
}

fn ipam(v: Option<&Value>) -> Result<IpamCfg, CniError> {
    let Some(Value::Object(m)) = v else {
        return Err(invalid("ipam: required (an object with a type)".into()));
    };
    let plugin = str_of(m, "type")?.ok_or_else(|| invalid("ipam.type: required".into()))?;
    if plugin != "calico-ipam" && plugin != "calico-rs-ipam" {
        return Ok(IpamCfg::Delegate {
            plugin,
            conf: Value::Object(m.clone()),
        });
    }
    check_keys(
        m,
        "ipam.",
        &[
            "type",
            "assign_ipv4",
            "assign_ipv6",
            "ipv4_pools",
            "ipv6_pools",
            "subnet",
        ],
    )?;
    if m.contains_key("subnet") {
        return Err(invalid(
            "ipam.subnet: calico-ipam takes addresses from the IPPools; for a fixed subnet use \
             {\"type\": \"host-local\", \"subnet\": ...}"
                .into(),
        ));
    }
    let assign_ipv4 = flag(m, "assign_ipv4", "ipam.", true)?;
    let assign_ipv6 = flag(m, "assign_ipv6", "ipam.", false)?;
    if !assign_ipv4 && !assign_ipv6 {
        return Err(invalid(
            "ipam: assign_ipv4 and assign_ipv6 are both false".into(),
        ));
    }
    Ok(IpamCfg::Calico {
        assign_ipv4,
        assign_ipv6,
        ipv4_pools: pools(m, "ipv4_pools")?,
        ipv6_pools: pools(m, "ipv6_pools")?,
    })
}

impl NetConf {
    /// Parses the configuration on stdin.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(Code::Decode, "network configuration: not JSON")
                .with_details(e.to_string())
        })?;
        let Value::Object(m) = &raw else {
            return Err(CniError::new(
                Code::Decode,
                "network configuration: not a JSON object",
            ));
        };
        for (k, why) in REFUSED {
            if m.contains_key(*k) {
                return Err(CniError::new(Code::UnsupportedField, format!("{k}: {why}")));
            }
        }
        let allowed: Vec<&str> = SPEC_KEYS.iter().chain(CALICO_KEYS).copied().collect();
        check_keys(m, "", &allowed)?;
        let cni_version = str_of(m, "cniVersion")?.unwrap_or_else(|| "0.3.1".into());
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("cniVersion {cni_version:?} is not supported"),
            )
            .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
        let datastore = match str_of(m, "datastore_type")?.as_deref() {
            None | Some("kubernetes") => {
                match m.get("kubernetes") {
                    None | Some(Value::Null) => {}
                    Some(Value::Object(k)) if k.is_empty() => {}
                    Some(Value::Object(k)) => {
                        let key = k.keys().next().expect("not empty");
                        return Err(CniError::new(
                            Code::UnsupportedField,
                            format!(
                                "kubernetes.{key}: calico-cni-rs holds no Kubernetes credentials; \
                                 the node's calico-node-rs does the IPAM and the Pod annotations \
                                 (over daemon_socket), so remove the kubernetes section"
                            ),
                        ));
                    }
                    Some(v) => return Err(invalid(format!("kubernetes: want an object, got {v}"))),
                }
                if m.contains_key("datastore_dir") {
                    return Err(invalid(
                        "datastore_dir: only with datastore_type file".into(),
                    ));
                }
                let socket = str_of(m, "daemon_socket")?
                    .unwrap_or_else(|| super::socket::DEFAULT_SOCKET.into());
                if !socket.starts_with('/') {
                    return Err(invalid(format!(
                        "daemon_socket {socket:?}: want an absolute path"
                    )));
                }
                DatastoreCfg::Kubernetes {
                    socket: socket.into(),
                }
            }
            Some("file") => {
                if m.contains_key("daemon_socket") || m.contains_key("kubernetes") {
                    return Err(invalid(
                        "daemon_socket, kubernetes: only with datastore_type kubernetes".into(),
                    ));
                }
                DatastoreCfg::File(str_of(m, "datastore_dir")?.map(PathBuf::from).ok_or_else(
                    || invalid("datastore_dir: required with datastore_type file".into()),
                )?)
            }
            Some(other) => {
                return Err(invalid(format!(
                    "datastore_type {other:?}: want kubernetes or file"
                )))
            }
        };
        if let Some(p) = m.get("policy") {
            let ok = p.as_object().is_some_and(|o| {
                o.len() == 1 && o.get("type").and_then(Value::as_str) == Some("k8s")
            });
            if !ok {
                return Err(invalid(format!(
                    "policy: only {{\"type\": \"k8s\"}} is accepted (policy comes from the datastore), got {p}"
                )));
            }
        }
        let mtu = match m.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| (68..=65535).contains(n))
                    .ok_or_else(|| invalid(format!("mtu: want 68-65535, got {v}")))?
                    as u32,
            ),
        };
        let allow_ip_forwarding = match m.get("container_settings") {
            None | Some(Value::Null) => false,
            Some(Value::Object(c)) => {
                check_keys(c, "container_settings.", &["allow_ip_forwarding"])?;
                flag(c, "allow_ip_forwarding", "container_settings.", false)?
            }
            Some(v) => {
                return Err(invalid(format!(
                    "container_settings: want an object, got {v}"
                )))
            }
        };
        let log_level = str_of(m, "log_level")?;
        if let Some(l) = &log_level {
            let known = [
                "debug", "info", "warning", "warn", "error", "fatal", "panic", "none",
            ];
            if !known.contains(&l.to_ascii_lowercase().as_str()) {
                return Err(invalid(format!(
                    "log_level {l:?}: want debug, info, warning or error"
                )));
            }
        }
        Ok(NetConf {
            cni_version,
            name: str_of(m, "name")?.unwrap_or_default(),
            plugin_type: str_of(m, "type")?.unwrap_or_default(),
            datastore,
            nodename: str_of(m, "nodename")?,
            nodename_file: str_of(m, "nodename_file")?.map(PathBuf::from),
            nodename_file_optional: flag(m, "nodename_file_optional", "", false)?,
            mtu,
            ipam: ipam(m.get("ipam"))?,
            allow_ip_forwarding,
            log_level,
            log_file_path: str_of(m, "log_file_path")?.map(PathBuf::from),
            prev_result: m.get("prevResult").cloned(),
            raw,
        })
    }

    /// This node's name: `nodename`, else the contents of `nodename_file` (Calico's
    /// `/var/lib/calico/nodename`), else the host name.
    pub fn node_name(&self) -> Result<String, CniError> {
        if let Some(n) = self.nodename.as_ref().filter(|n| !n.is_empty()) {
            return Ok(n.clone());
        }
        let file = self
            .nodename_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/calico/nodename"));
        match std::fs::read_to_string(&file) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            _ if self.nodename_file.is_some() && !self.nodename_file_optional => {
                Err(CniError::new(
                    Code::TryAgainLater,
                    format!(
                        "nodename_file {}: not readable yet (is calico-node-rs running?)",
                        file.display()
                    ),
                ))
            }
            _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| CniError::new(Code::Io, "no nodename and no host name")),
        }
    }
}
