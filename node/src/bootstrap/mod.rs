//! Node bootstrap, as calico-node's startup step does it before the daemon runs: this node's
//! addresses (`IP`, `IP6` and their autodetection methods), AS number and router id written to
//! its Node, and the default IPPools created when none exists.
//!
//! ```text
//!  env (IP, IP6, IP_AUTODETECTION_METHOD, AS, CALICO_ROUTER_ID, CALICO_IPV4POOL_*, ...)
//!     -> BootstrapCfg (validated; a bad value is one clear line and exit 1)
//!     -> autodetect (this namespace's interfaces) -> NodeIdentity
//!     -> file datastore: DIR/calico-node-NAME.yaml (a projectcalico.org/v3 Node whose
//!        spec.bgp overrides the annotations of the user's v1 Node) + DIR/default-ipv4-ippool.yaml
//!        Kubernetes: the Node's projectcalico.org/* annotations (patched only when they change)
//!        + the IPPool objects
//! ```
//! Pools are created with create-if-absent only (`O_EXCL`, or the API's 409 AlreadyExists), so
//! two nodes starting at once create each pool once. Nothing is written when no setting asks
//! for it: with the file datastore and no `IP`/`IP6`/`AS`, the user's documents say everything.

pub mod autodetect;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::IpNet;

use autodetect::{Family, Iface, Method};

/// Environment variables, as calico-node names them.
pub mod env {
    pub const IP: &str = "IP";
    pub const IP6: &str = "IP6";
    pub const IP_AUTODETECTION_METHOD: &str = "IP_AUTODETECTION_METHOD";
    pub const IP6_AUTODETECTION_METHOD: &str = "IP6_AUTODETECTION_METHOD";
    pub const AS: &str = "AS";
    pub const CALICO_ROUTER_ID: &str = "CALICO_ROUTER_ID";
    pub const NO_DEFAULT_POOLS: &str = "NO_DEFAULT_POOLS";
    pub const CALICO_IPV4POOL_CIDR: &str = "CALICO_IPV4POOL_CIDR";
    pub const CALICO_IPV4POOL_BLOCK_SIZE: &str = "CALICO_IPV4POOL_BLOCK_SIZE";
    pub const CALICO_IPV4POOL_IPIP: &str = "CALICO_IPV4POOL_IPIP";
    pub const CALICO_IPV4POOL_VXLAN: &str = "CALICO_IPV4POOL_VXLAN";
    pub const CALICO_IPV4POOL_NAT_OUTGOING: &str = "CALICO_IPV4POOL_NAT_OUTGOING";
    pub const CALICO_IPV4POOL_NODE_SELECTOR: &str = "CALICO_IPV4POOL_NODE_SELECTOR";
    pub const CALICO_IPV6POOL_CIDR: &str = "CALICO_IPV6POOL_CIDR";
    pub const CALICO_IPV6POOL_BLOCK_SIZE: &str = "CALICO_IPV6POOL_BLOCK_SIZE";
    pub const CALICO_IPV6POOL_IPIP: &str = "CALICO_IPV6POOL_IPIP";
    pub const CALICO_IPV6POOL_VXLAN: &str = "CALICO_IPV6POOL_VXLAN";
    pub const CALICO_IPV6POOL_NAT_OUTGOING: &str = "CALICO_IPV6POOL_NAT_OUTGOING";
    pub const CALICO_IPV6POOL_NODE_SELECTOR: &str = "CALICO_IPV6POOL_NODE_SELECTOR";

    /// A pool's variables: CIDR, block size, IPIP, VXLAN, NAT outgoing, node selector.
    pub const IPV4POOL: [&str; 6] = [
        CALICO_IPV4POOL_CIDR,
        CALICO_IPV4POOL_BLOCK_SIZE,
        CALICO_IPV4POOL_IPIP,
        CALICO_IPV4POOL_VXLAN,
        CALICO_IPV4POOL_NAT_OUTGOING,
        CALICO_IPV4POOL_NODE_SELECTOR,
    ];
    pub const IPV6POOL: [&str; 6] = [
        CALICO_IPV6POOL_CIDR,
        CALICO_IPV6POOL_BLOCK_SIZE,
        CALICO_IPV6POOL_IPIP,
        CALICO_IPV6POOL_VXLAN,
        CALICO_IPV6POOL_NAT_OUTGOING,
        CALICO_IPV6POOL_NODE_SELECTOR,
    ];
}

/// `IP` / `IP6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrSetting {
    /// Not set: keep what the Node says; autodetect on Kubernetes if it says nothing.
    Unset,
    Autodetect,
    /// `none`: this family is not used.
    None,
    Addr(IpNet),
}

/// A default pool from `CALICO_IPV4POOL_*` / `CALICO_IPV6POOL_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: &'static str,
    pub cidr: IpNet,
    pub block_size: u8,
    pub ipip: String,
    pub vxlan: String,
    pub nat_outgoing: bool,
    pub node_selector: String,
}

/// Validated bootstrap settings.
#[derive(Clone, Debug)]
pub struct BootstrapCfg {
    pub ip: AddrSetting,
    pub ip6: AddrSetting,
    pub method4: Method,
    pub method6: Method,
    pub as_number: Option<u32>,
    pub router_id: Option<Ipv4Addr>,
    pub pools: Vec<PoolSpec>,
}

fn addr_setting(var: &str, v: Option<String>, family: Family) -> Result<AddrSetting, String> {
    let Some(v) = v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) else {
        return Ok(AddrSetting::Unset);
    };
    match v.as_str() {
        "autodetect" => return Ok(AddrSetting::Autodetect),
        "none" => return Ok(AddrSetting::None),
        _ => {}
    }
    let net: IpNet = v
        .parse()
        .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{var}={v:?}: want autodetect, none or an address (ADDR[/LEN])"))?;
    let ok = matches!(
        (family, net.addr()),
        (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
    );
    if !ok {
        return Err(format!("{var}={v:?}: wrong address family"));
    }
    Ok(AddrSetting::Addr(net))
}

fn pool(
    get: &dyn Fn(&str) -> Option<String>,
    vars: &[&str; 6],
    name: &'static str,
    v6: bool,
) -> Result<Option<PoolSpec>, String> {
    let var = |s: &str| {
        let i = [
            "CIDR",
            "BLOCK_SIZE",
            "IPIP",
            "VXLAN",
            "NAT_OUTGOING",
            "NODE_SELECTOR",
        ]
        .iter()
        .position(|x| *x == s)
        .expect("a pool variable");
        vars[i].to_string()
    };
    let val = |s: &str| {
        get(&var(s))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(cidr_text) = val("CIDR") else {
        return Ok(None);
    };
    let cidr: IpNet = cidr_text
        .parse()
        .map_err(|_| format!("{}={cidr_text:?}: not a CIDR", var("CIDR")))?;
    if cidr.addr().is_ipv6() != v6 {
        return Err(format!(
            "{}={cidr_text:?}: wrong address family",
            var("CIDR")
        ));
    }
    let default_block = if v6 { 122 } else { 26 };
    let block_size = match val("BLOCK_SIZE") {
        None => default_block,
        Some(b) => b
            .parse::<u8>()
            .ok()
            .filter(|b| *b >= cidr.prefix_len() && *b <= cidr.max_prefix_len())
            .ok_or_else(|| {
                format!(
                    "{}={b:?}: not a block size inside the pool",
                    var("BLOCK_SIZE")
                )
            })?,
    };
    let mode = |s: &str| -> Result<String, String> {
        match val(s) {
            None => Ok("Never".into()),
            Some(m) if ["Always", "CrossSubnet", "Never"].contains(&m.as_str()) => Ok(m),
            Some(m) => Err(format!(
                "{}={m:?}: want Always, CrossSubnet or Never",
                var(s)
            )),
        }
    };
    let nat_outgoing = match val("NAT_OUTGOING").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(o) => return Err(format!("{}={o:?}: want true or false", var("NAT_OUTGOING"))),
    };
    Ok(Some(PoolSpec {
        name,
        cidr,
        block_size,
        ipip: mode("IPIP")?,
        vxlan: mode("VXLAN")?,
        nat_outgoing,
        node_selector: val("NODE_SELECTOR").unwrap_or_else(|| "all()".into()),
    }))
}

impl BootstrapCfg {
    /// Reads and validates the settings; `get` looks a variable up (`std::env::var` in the
    /// binary).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<BootstrapCfg, String> {
        let method = |var: &str| -> Result<Method, String> {
            get(var)
                .unwrap_or_default()
                .parse()
                .map_err(|e| format!("{var}: {e}"))
        };
        let as_number = match get(env::AS)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(a) => Some(parse_asn(&a).ok_or_else(|| format!("AS={a:?}: not an AS number"))?),
        };
        let router_id = match get(env::CALICO_ROUTER_ID)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(r) => Some(
                r.parse()
                    .map_err(|_| format!("CALICO_ROUTER_ID={r:?}: want an IPv4 address"))?,
            ),
        };
        let no_default = match get(env::NO_DEFAULT_POOLS).as_deref().map(str::trim) {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(o) => return Err(format!("NO_DEFAULT_POOLS={o:?}: want true or false")),
        };
        let mut pools = Vec::new();
        if !no_default {
            pools.extend(pool(get, &env::IPV4POOL, "default-ipv4-ippool", false)?);
            pools.extend(pool(get, &env::IPV6POOL, "default-ipv6-ippool", true)?);
        }
        Ok(BootstrapCfg {
            ip: addr_setting(env::IP, get(env::IP), Family::V4)?,
            ip6: addr_setting(env::IP6, get(env::IP6), Family::V6)?,
            method4: method(env::IP_AUTODETECTION_METHOD)?,
            method6: method(env::IP6_AUTODETECTION_METHOD)?,
            as_number,
            router_id,
            pools,
        })
    }

    /// Whether anything is to be written for this node (file datastore: only when asked).
    pub fn sets_identity(&self) -> bool {
        self.ip != AddrSetting::Unset
            || self.ip6 != AddrSetting::Unset
            || self.as_number.is_some()
            || self.router_id.is_some()
    }
}

/// `64512` or the dotted `1.10` form.
fn parse_asn(s: &str) -> Option<u32> {
    match s.split_once('.') {
        Some((hi, lo)) => {
            Some((hi.parse::<u16>().ok()? as u32) << 16 | lo.parse::<u16>().ok()? as u32)
        }
        None => s.parse().ok().filter(|a| *a != 0),
    }
}

/// What bootstrap decided for this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub ipv4: Option<IpNet>,
    pub ipv6: Option<IpNet>,
    pub as_number: Option<u32>,
    pub router_id: Option<Ipv4Addr>,
}

/// Resolves `IP` / `IP6` against the interfaces; `current` is what the Node already says, kept
/// when the setting is [`AddrSetting::Unset`] (and `autodetect_unset` is false).
pub fn identity(
    cfg: &BootstrapCfg,
    current: (Option<IpNet>, Option<IpNet>),
    autodetect_unset: bool,
    ifaces: &[Iface],
    internal_ips: &[IpAddr],
    reach: &dyn Fn(&str, Family) -> Option<IpAddr>,
) -> Result<NodeIdentity, String> {
    let one = |s: &AddrSetting, cur: Option<IpNet>, m: &Method, f: Family, var: &str| {
        let detect = || {
            m.select(f, ifaces, internal_ips, reach).ok_or_else(|| {
                format!("{var}: autodetection ({m:?}) found no address of this family")
            })
        };
        match s {
            AddrSetting::None => Ok(None),
            AddrSetting::Addr(a) => Ok(Some(*a)),
            AddrSetting::Autodetect => detect().map(Some),
            AddrSetting::Unset if cur.is_some() => Ok(cur),
            AddrSetting::Unset if autodetect_unset && f == Family::V4 => detect().map(Some),
            AddrSetting::Unset => Ok(None),
        }
    };
    Ok(NodeIdentity {
        ipv4: one(&cfg.ip, current.0, &cfg.method4, Family::V4, env::IP)?,
        ipv6: one(&cfg.ip6, current.1, &cfg.method6, Family::V6, env::IP6)?,
        as_number: cfg.as_number,
        router_id: cfg.router_id,
    })
}

/// The `projectcalico.org/v3` Node document the file datastore gets for this node.
pub fn node_document(name: &str, id: &NodeIdentity) -> String {
    let mut bgp = Vec::new();
    if let Some(a) = id.ipv4 {
        bgp.push(format!("ipv4Address: {a}"));
    }
    if let Some(a) = id.ipv6 {
        bgp.push(format!("ipv6Address: \"{a}\""));
    }
    if let Some(a) = id.as_number {
        bgp.push(format!("asNumber: {a}"));
    }
    let mut doc = format!(
        "# Written by calico-node-rs at startup from IP/IP6/AS; edits are overwritten.\n\
         apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  bgp:\n"
    );
    if bgp.is_empty() {
        doc += "    {}\n";
    }
    for l in bgp {
        doc += &format!("    {l}\n");
    }
    doc
}

/// The `projectcalico.org/v3` (file) or `crd.projectcalico.org/v1` (Kubernetes) IPPool.
pub fn pool_document(p: &PoolSpec, api_version: &str) -> String {
    format!(
        "apiVersion: {api_version}\nkind: IPPool\nmetadata:\n  name: {}\nspec:\n  cidr: {}\n  \
         blockSize: {}\n  ipipMode: {}\n  vxlanMode: {}\n  natOutgoing: {}\n  nodeSelector: \"{}\"\n",
        p.name, p.cidr, p.block_size, p.ipip, p.vxlan, p.nat_outgoing, p.node_selector
    )
}

/// Writes `text` to `path` only if it differs, by temp file and rename.
fn write_if_changed(path: &Path, text: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// Bootstrap on the file datastore in `dir`: the node's identity when a setting asks for one,
/// and the default pools when no IPPool exists. Returns what was done, for the log.
pub fn file_startup(cfg: &BootstrapCfg, nodename: &str, dir: &Path) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let ds = crate::datastore::FileDatastore::open(dir).map_err(|e| e.to_string())?;
    let snap = crate::datastore::Datastore::snapshot(&ds).map_err(|e| e.to_string())?;
    drop(ds);
    if cfg.sets_identity() {
        let node = snap.state.nodes.get(nodename);
        let current = (
            node.and_then(|n| n.bgp.ipv4_address).map(IpNet::V4),
            node.and_then(|n| n.bgp.ipv6_address).map(IpNet::V6),
        );
        let internal = node.map(|n| n.internal_ips.clone()).unwrap_or_default();
        let id = identity(
            cfg,
            current,
            false,
            &autodetect::interfaces(),
            &internal,
            &autodetect::source_for,
        )?;
        let path = dir.join(format!("calico-node-{nodename}.yaml"));
        if write_if_changed(&path, &node_document(nodename, &id))
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            done.push(format!("wrote {} ({id:?})", path.display()));
        }
    }
    if snap.state.ip_pools.is_empty() {
        for p in &cfg.pools {
            let path = dir.join(format!("{}.yaml", p.name));
            // Written whole to a temp file, then linked into place: link(2) fails if the name
            // exists, so of two nodes starting together exactly one creates it, and no reader
            // ever sees half a file.
            let tmp = dir.join(format!(".{}.{}.tmp", p.name, std::process::id()));
            let io = |e: std::io::Error| format!("{}: {e}", path.display());
            std::fs::write(&tmp, pool_document(p, "projectcalico.org/v3")).map_err(io)?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => done.push(format!("created IPPool {} ({})", p.name, p.cidr)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    Ok(done)
}

/// The Node annotations calico-node writes.
pub const ANNOTATION_IPV4: &str = "projectcalico.org/IPv4Address";
pub const ANNOTATION_IPV6: &str = "projectcalico.org/IPv6Address";
pub const ANNOTATION_AS: &str = "projectcalico.org/ASNumber";

/// Bootstrap on Kubernetes: this node's addresses (autodetected when neither `IP` nor the Node
/// says one) and AS number as the Node's annotations, patched only when they change; the default
/// pools when no IPPool exists (a 409 AlreadyExists from a node that was quicker is fine).
pub async fn kube_startup(
    cfg: &BootstrapCfg,
    nodename: &str,
    client: kube::Client,
) -> Result<Vec<String>, String> {
    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    let mut done = Vec::new();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node = nodes
        .get(nodename)
        .await
        .map_err(|e| format!("Node {nodename}: {e}"))?;
    let ann = node.metadata.annotations.clone().unwrap_or_default();
    let parse = |k: &str| ann.get(k).and_then(|v| v.parse::<IpNet>().ok());
    let internal: Vec<IpAddr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let id = identity(
        cfg,
        (parse(ANNOTATION_IPV4), parse(ANNOTATION_IPV6)),
        true,
        &autodetect::interfaces(),
        &internal,
        &autodetect::source_for,
    )?;
    let mut patch = serde_json::Map::new();
    let mut set = |k: &str, v: Option<String>| {
        if ann.get(k) != v.as_ref() {
            patch.insert(
                k.into(),
                v.map_or(serde_json::Value::Null, serde_json::Value::String),
            );
        }
    };
    set(ANNOTATION_IPV4, id.ipv4.map(|a| a.to_string()));
    set(ANNOTATION_IPV6, id.ipv6.map(|a| a.to_string()));
    if let Some(asn) = id.as_number {
        set(ANNOTATION_AS, Some(asn.to_string()));
    }
    if !patch.is_empty() {
        let body = serde_json::json!({"metadata": {"annotations": patch}});
        nodes
            .patch(nodename, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(|e| format!("Node {nodename}: writing annotations: {e}"))?;
        done.push(format!("annotated Node {nodename}: {body}"));
    }
    let ar = crate::datastore::kubernetes::kinds::WATCHED
        .iter()
        .find(|k| k.kind == "IPPool")
        .expect("IPPool is watched")
        .api_resource();
    let pools: Api<DynamicObject> = Api::all_with(client, &ar);
    let existing = pools
        .list(&Default::default())
        .await
        .map_err(|e| format!("listing IPPools: {e}"))?;
    if existing.items.is_empty() {
        for p in &cfg.pools {
            let doc = pool_document(p, &ar.api_version);
            let obj: DynamicObject = serde_yaml_ng::from_str(&doc).map_err(|e| e.to_string())?;
            match pools.create(&PostParams::default(), &obj).await {
                Ok(_) => done.push(format!("created IPPool {} ({})", p.name, p.cidr)),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(format!("creating IPPool {}: {e}", p.name)),
            }
        }
    }
    Ok(done)
}
