//! Calico's own kinds (`projectcalico.org/v3`, or `crd.projectcalico.org/v1` as the CRDs store
//! them): BGPConfiguration, BGPPeer and IPPool, with their decoders. Validation mirrors Calico's
//! where it matters for safety (pool CIDRs and block sizes, peer address forms); settings
//! calico-rs does not act on are refused (see also [`super::schema`]).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_yaml_ng::Value;

use super::fields::{asn_field, describe, FieldError, Obj};
use super::resources::{ObjectMeta, DEFAULT_BLOCK_SIZE_V4, DEFAULT_BLOCK_SIZE_V6};
use super::selector::Selector;

/// `projectcalico.org/v3` BGPConfiguration (`default` is the cluster-wide one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BgpConfiguration {
    pub metadata: ObjectMeta,
    pub as_number: Option<u32>,
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The BGP port of every node: the speaker listens on it and dials it on mesh and selector
    /// peers (default 179).
    pub listen_port: Option<u16>,
}

/// `spec.peerIP`: `ADDR`, `ADDR:PORT` or `[V6ADDR]:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// `spec.password` of a BGPPeer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BgpPassword {
    /// A plain string: our file datastore's form.
    Plain(String),
    /// Calico's `secretKeyRef`: only the Kubernetes backend can resolve it.
    SecretKeyRef { name: String, key: String },
}

/// `spec.sourceAddress` of a BGPPeer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceAddress {
    #[default]
    UseNodeIp,
    None,
}

/// `projectcalico.org/v3` BGPPeer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpPeer {
    pub metadata: ObjectMeta,
    /// Set unless the peer is selector-based (`peer_selector`).
    pub peer_ip: Option<PeerAddr>,
    /// Required with `peer_ip`; selector peers use the selected nodes' AS.
    pub as_number: Option<u32>,
    /// Only this node peers (`spec.node`); `None` with no `node_selector` means every node.
    pub node: Option<String>,
    pub node_selector: Option<Selector>,
    pub peer_selector: Option<Selector>,
    pub password: Option<BgpPassword>,
    pub keep_original_next_hop: bool,
    /// `UseNodeIP`: sessions are sourced from the node's address of the peer's family.
    pub source_address: SourceAddress,
    /// GTSM: the peer is at most this many hops away.
    pub ttl_security: Option<u8>,
}

/// `ipipMode` / `vxlanMode` of an IPPool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncapMode {
    #[default]
    Never,
    Always,
    CrossSubnet,
}

/// `projectcalico.org/v3` IPPool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPool {
    pub metadata: ObjectMeta,
    /// Always a network address (no host bits).
    pub cidr: IpNet,
    /// Prefix length of the blocks nodes claim; at least `cidr.prefix_len()`.
    pub block_size: u8,
    /// Defaults to `all()`.
    pub node_selector: Selector,
    pub disabled: bool,
    /// Always `Never` until encapsulation is implemented: decoding refuses the other modes.
    pub ipip_mode: EncapMode,
    /// Always `Never` until encapsulation is implemented: decoding refuses the other modes.
    pub vxlan_mode: EncapMode,
    /// Pods' traffic to addresses outside every pool is masqueraded (`felix::nat`).
    pub nat_outgoing: bool,
    /// `disableBGPExport`: the pool's prefixes are not advertised to any BGP peer.
    pub disable_bgp_export: bool,
}

pub(super) fn bgp_configuration(
    metadata: ObjectMeta,
    spec: &Obj<'_>,
) -> Result<BgpConfiguration, FieldError> {
    // BIRD's log level in Calico. Ours is the daemon's (CALICO_RS_LOG); Info is what it logs by
    // default, any other value would be a setting that does nothing.
    match spec.str("logSeverityScreen")? {
        None => {}
        Some(v) if v.eq_ignore_ascii_case("info") => {}
        Some(v) => {
            return Err(spec.err(
                "logSeverityScreen",
                format!(
                    "not supported by calico-rs: {v:?}; only Info is accepted (set the daemon's \
                     log level with CALICO_RS_LOG)"
                ),
            ))
        }
    }
    Ok(BgpConfiguration {
        metadata,
        as_number: asn_field(spec, "asNumber")?,
        node_to_node_mesh_enabled: spec.bool("nodeToNodeMeshEnabled")?,
        listen_port: spec.uint("listenPort", 65535)?.map(|n| n as u16),
    })
}

/// Parses `ADDR`, `V4ADDR:PORT` or `[V6ADDR]:PORT`.
pub fn parse_peer_addr(text: &str) -> Result<PeerAddr, String> {
    let t = text.trim();
    let bad = || format!("invalid peer address {text:?} (want ADDR, ADDR:PORT or [V6ADDR]:PORT)");
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(PeerAddr { ip, port: None });
    }
    let sa: std::net::SocketAddr = t.parse().map_err(|_| bad())?;
    if sa.port() == 0 {
        return Err(bad());
    }
    Ok(PeerAddr {
        ip: sa.ip(),
        port: Some(sa.port()),
    })
}

fn selector_field(obj: &Obj<'_>, key: &str) -> Result<Option<Selector>, FieldError> {
    let Some(a) = obj.get(key) else {
        return Ok(None);
    };
    let s = a.as_str()?;
    Selector::parse(s)
        .map(Some)
        .map_err(|e| a.err(format!("column {}: {}", e.column, e.message) + &format!(" in {s:?}")))
}

pub(super) fn bgp_peer(metadata: ObjectMeta, spec: &Obj<'_>) -> Result<BgpPeer, FieldError> {
    let peer_ip = match spec.get("peerIP") {
        Some(a) => Some(parse_peer_addr(a.as_str()?).map_err(|m| a.err(m))?),
        None => None,
    };
    let password = match spec.get("password") {
        None => None,
        Some(a) => match a.value {
            Value::String(s) => Some(BgpPassword::Plain(s.clone())),
            Value::Mapping(_) => {
                let o = a.as_obj()?;
                let Some(r) = o.obj("secretKeyRef")? else {
                    return Err(a.err("expected a string or {secretKeyRef: {name, key}}"));
                };
                let r = r.view();
                Some(BgpPassword::SecretKeyRef {
                    name: r.required_str("name")?.to_string(),
                    key: r.required_str("key")?.to_string(),
                })
            }
            v => {
                return Err(a.err(format!(
                    "expected a string or {{secretKeyRef: {{name, key}}}}, got {}",
                    describe(v)
                )))
            }
        },
    };
    let source_address = match spec.str("sourceAddress")? {
        None | Some("UseNodeIP") => SourceAddress::UseNodeIp,
        Some("None") => SourceAddress::None,
        Some(other) => {
            return Err(spec.err(
                "sourceAddress",
                format!("unknown value {other:?} (want UseNodeIP or None)"),
            ))
        }
    };
    let ttl_security = match spec.uint("ttlSecurity", 255)? {
        Some(0) | None => None,
        Some(n) => Some(n as u8),
    };
    let peer = BgpPeer {
        metadata,
        peer_ip,
        as_number: asn_field(spec, "asNumber")?,
        node: spec
            .str("node")?
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        node_selector: selector_field(spec, "nodeSelector")?,
        peer_selector: selector_field(spec, "peerSelector")?,
        password,
        keep_original_next_hop: spec.bool("keepOriginalNextHop")?.unwrap_or(false),
        source_address,
        ttl_security,
    };
    if peer.node.is_some() && peer.node_selector.is_some() {
        return Err(spec.err("nodeSelector", "cannot be used together with spec.node"));
    }
    match (&peer.peer_ip, &peer.peer_selector) {
        (Some(_), Some(_)) => {
            return Err(spec.err("peerSelector", "cannot be used together with spec.peerIP"))
        }
        (None, None) => return Err(spec.err("peerIP", "required (or spec.peerSelector)")),
        (Some(_), None) if peer.as_number.is_none() => {
            return Err(spec.err("asNumber", "required with spec.peerIP"))
        }
        _ => {}
    }
    Ok(peer)
}

fn encap_mode(spec: &Obj<'_>, key: &str) -> Result<EncapMode, FieldError> {
    match spec.str(key)? {
        None | Some("Never") | Some("") => Ok(EncapMode::Never),
        Some("Always") => Ok(EncapMode::Always),
        Some("CrossSubnet") => Ok(EncapMode::CrossSubnet),
        Some(other) => Err(spec.err(
            key,
            format!("unknown mode {other:?} (want Never, Always or CrossSubnet)"),
        )),
    }
}

/// IPPool settings calico-rs does not act on yet are refused, never ignored. Returns
/// `natOutgoing` (felix's `nat` table acts on it).
fn refuse_unimplemented_pool_settings(
    spec: &Obj<'_>,
    ipip_mode: EncapMode,
    vxlan_mode: EncapMode,
) -> Result<bool, FieldError> {
    for (key, mode) in [("ipipMode", ipip_mode), ("vxlanMode", vxlan_mode)] {
        if mode != EncapMode::Never {
            return Err(spec.err(
                key,
                format!("{mode:?} is not supported by calico-rs yet (encapsulation is not implemented); use Never"),
            ));
        }
    }
    let nat_outgoing = spec.bool("natOutgoing")?.unwrap_or(false);
    if let Some(a) = spec.get("assignmentMode") {
        if a.as_str()? != "Automatic" {
            return Err(a.err(format!(
                "{} is not supported by calico-rs; only Automatic",
                describe(a.value)
            )));
        }
    }
    for item in spec.seq("allowedUses")? {
        let u = item.as_str()?;
        if u != "Workload" && u != "Tunnel" {
            return Err(item.err(format!(
                "{u:?} is not supported by calico-rs (want Workload or Tunnel)"
            )));
        }
    }
    if spec.get("allowedUses").is_some()
        && !spec
            .seq("allowedUses")?
            .iter()
            .any(|i| i.as_str() == Ok("Workload"))
    {
        return Err(spec.err(
            "allowedUses",
            "a pool without Workload is not supported by calico-rs (IPAM gives its addresses to pods)",
        ));
    }
    Ok(nat_outgoing)
}

pub(super) fn ip_pool(metadata: ObjectMeta, spec: &Obj<'_>) -> Result<IpPool, FieldError> {
    let Some(a) = spec.get("cidr") else {
        return Err(spec.err("cidr", "required"));
    };
    let text = a.as_str()?;
    let cidr: IpNet = text
        .trim()
        .parse()
        .map_err(|_| a.err(format!("invalid CIDR {text:?}")))?;
    if cidr.trunc() != cidr {
        return Err(a.err(format!(
            "CIDR {text:?} has host bits set (did you mean \"{}\"?)",
            cidr.trunc()
        )));
    }
    let (default_size, min, max) = match cidr {
        IpNet::V4(_) => (DEFAULT_BLOCK_SIZE_V4, 20, 32),
        IpNet::V6(_) => (DEFAULT_BLOCK_SIZE_V6, 116, 128),
    };
    let block_size = match spec.uint("blockSize", 128)? {
        None => default_size,
        Some(n) if (min..=max).contains(&n) => n as u8,
        Some(n) => {
            return Err(spec.err(
                "blockSize",
                format!("{n} is out of range for this pool's family ({min}-{max})"),
            ))
        }
    };
    if block_size < cidr.prefix_len() {
        return Err(spec.err(
            "blockSize",
            format!(
                "block size /{block_size} is larger than the pool {cidr}; \
                 blockSize must be at least {}",
                cidr.prefix_len()
            ),
        ));
    }
    let ipip_mode = encap_mode(spec, "ipipMode")?;
    let vxlan_mode = encap_mode(spec, "vxlanMode")?;
    if ipip_mode != EncapMode::Never && cidr.addr().is_ipv6() {
        return Err(spec.err("ipipMode", "IPIP is not supported for IPv6 pools"));
    }
    if ipip_mode != EncapMode::Never && vxlan_mode != EncapMode::Never {
        return Err(spec.err("vxlanMode", "cannot be enabled together with spec.ipipMode"));
    }
    let nat_outgoing = refuse_unimplemented_pool_settings(spec, ipip_mode, vxlan_mode)?;
    Ok(IpPool {
        metadata,
        cidr,
        block_size,
        node_selector: selector_field(spec, "nodeSelector")?.unwrap_or_default(),
        disabled: spec.bool("disabled")?.unwrap_or(false),
        ipip_mode,
        vxlan_mode,
        nat_outgoing,
        disable_bgp_export: spec.bool("disableBGPExport")?.unwrap_or(false),
    })
}
