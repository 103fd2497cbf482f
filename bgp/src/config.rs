//! Speaker and peer configuration: typed, with defaults, validated before anything starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fsm::GrCfg;
use crate::policy::Policy;
use crate::wire::Family;

/// Configuration errors, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("speaker: router_id must not be 0.0.0.0")]
    ZeroRouterId,
    #[error("speaker: local_as must not be 0")]
    ZeroAs,
    #[error("peer {0}: remote_as must not be 0")]
    PeerZeroAs(IpAddr),
    #[error("peer {0}: hold_time {1} is not 0 and is below 3 s (RFC 4271 4.2)")]
    HoldTime(IpAddr, u16),
    #[error("peer {0}: password longer than 80 bytes (TCP MD5 limit)")]
    PasswordTooLong(IpAddr),
    #[error("peer {0}: ttl_security hops must be 1..=254")]
    TtlSecurity(IpAddr),
    #[error("peer {0}: ttl_security (GTSM) applies to eBGP peers only")]
    TtlSecurityIbgp(IpAddr),
    #[error("peer {0}: families must not be empty")]
    NoFamilies(IpAddr),
}

fn default_hold() -> u16 {
    90
}
fn default_connect_retry() -> Duration {
    Duration::from_secs(5)
}
fn default_port() -> u16 {
    179
}
fn yes() -> bool {
    true
}
fn default_families() -> Vec<Family> {
    vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
}

/// The local speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerCfg {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Addresses to accept connections on; empty: do not listen (all peers active-only).
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Route reflector cluster id (RFC 4456); defaults to the router id when any peer is a client.
    #[serde(default)]
    pub cluster_id: Option<Ipv4Addr>,
    /// Install and export several equal paths (ECMP).
    #[serde(default)]
    pub multipath: bool,
    /// Graceful restart (RFC 4724): advertise the capability and act as helper for peers.
    #[serde(default)]
    pub graceful_restart: Option<GracefulRestartCfg>,
    /// Next hops to use for "self" in a family the session's own address cannot give (IPv6 routes
    /// over an IPv4 session and the reverse).
    #[serde(default)]
    pub next_hop_v4: Option<Ipv4Addr>,
    #[serde(default)]
    pub next_hop_v6: Option<std::net::Ipv6Addr>,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![
        "0.0.0.0:179"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 179))),
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 179)),
    ]
}

/// Graceful restart settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracefulRestartCfg {
    /// Seconds peers should keep our routes while we restart (<= 4095).
    #[serde(default = "default_restart_time")]
    pub restart_time: u16,
    /// We are coming back from a restart with forwarding state kept: set the R and F bits.
    #[serde(default)]
    pub restarting: bool,
    /// Set the F bit: our forwarding state survives a restart of this speaker (e.g. the kernel
    /// routes a node daemon leaves in place), so peers keep our routes until our End-of-RIB.
    #[serde(default)]
    pub forwarding_preserved: bool,
    /// How long to keep a restarted peer's stale routes waiting for its End-of-RIB.
    #[serde(default = "default_stale_time")]
    pub stale_time: u16,
}

fn default_restart_time() -> u16 {
    120
}
fn default_stale_time() -> u16 {
    360
}

impl SpeakerCfg {
    pub fn new(local_as: u32, router_id: Ipv4Addr) -> SpeakerCfg {
        SpeakerCfg {
            local_as,
            router_id,
            listen: default_listen(),
            cluster_id: None,
            multipath: false,
            graceful_restart: None,
            next_hop_v4: None,
            next_hop_v6: None,
        }
    }
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.router_id.is_unspecified() {
            return Err(ConfigError::ZeroRouterId);
        }
        if self.local_as == 0 {
            return Err(ConfigError::ZeroAs);
        }
        Ok(())
    }
    pub(crate) fn gr(&self) -> Option<GrCfg> {
        self.graceful_restart.as_ref().map(|g| GrCfg {
            restart_time: g.restart_time.min(4095),
            restarting: g.restarting,
            forwarding_preserved: g.restarting || g.forwarding_preserved,
        })
    }
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCfg {
    pub address: IpAddr,
    pub remote_as: u32,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Source address for our connection.
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// Never connect out.
    #[serde(default)]
    pub passive: bool,
    #[serde(default = "default_hold")]
    pub hold_time: u16,
    #[serde(default = "default_connect_retry", with = "secs")]
    pub connect_retry: Duration,
    /// TCP MD5 signature key (RFC 2385).
    #[serde(default)]
    pub password: Option<String>,
    /// GTSM (RFC 5082): the peer is at most this many hops away (1 = directly connected).
    #[serde(default)]
    pub ttl_security: Option<u8>,
    /// This iBGP peer is a route-reflector client of ours (RFC 4456).
    #[serde(default)]
    pub rr_client: bool,
    /// Set ourselves as next hop toward this (iBGP) peer; always done toward eBGP peers unless
    /// `keep_next_hop`.
    #[serde(default)]
    pub next_hop_self: bool,
    /// Toward an eBGP peer, pass the next hop on unchanged (Calico's keepOriginalNextHop).
    #[serde(default)]
    pub keep_next_hop: bool,
    #[serde(default)]
    pub import: Policy,
    #[serde(default)]
    pub export: Policy,
    /// Most prefixes accepted from this peer; one more ends the session with Cease/1 (RFC 4486).
    #[serde(default)]
    pub max_prefixes: Option<u32>,
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
    /// Advertise the 4-octet AS capability (RFC 6793). Off only for peers that mishandle it, as
    /// BIRD's `enable as4 off`: the session then carries AS_TRANS and AS4_PATH.
    #[serde(default = "yes")]
    pub four_octet_as: bool,
    /// Free-form label for status (e.g. "node-to-node mesh", "global").
    #[serde(default)]
    pub description: String,
}

impl PeerCfg {
    pub fn new(address: IpAddr, remote_as: u32) -> PeerCfg {
        PeerCfg {
            address,
            remote_as,
            port: 179,
            local_address: None,
            passive: false,
            hold_time: 90,
            connect_retry: default_connect_retry(),
            password: None,
            ttl_security: None,
            rr_client: false,
            next_hop_self: false,
            keep_next_hop: false,
            import: Policy::default(),
            export: Policy::default(),
            max_prefixes: None,
            families: default_families(),
            four_octet_as: true,
            description: String::new(),
        }
    }
    pub fn validate(&self, local_as: u32) -> Result<(), ConfigError> {
        let a = self.address;
        if self.remote_as == 0 {
            return Err(ConfigError::PeerZeroAs(a));
        }
        if self.hold_time != 0 && self.hold_time < 3 {
            return Err(ConfigError::HoldTime(a, self.hold_time));
        }
        if self
            .password
            .as_ref()
            .is_some_and(|p| p.len() > crate::sockopt::MD5_MAX_KEY_LEN)
        {
            return Err(ConfigError::PasswordTooLong(a));
        }
        if let Some(h) = self.ttl_security {
            if h == 0 || h == 255 {
                return Err(ConfigError::TtlSecurity(a));
            }
            if self.remote_as == local_as {
                return Err(ConfigError::TtlSecurityIbgp(a));
            }
        }
        if self.families.is_empty() {
            return Err(ConfigError::NoFamilies(a));
        }
        Ok(())
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}
