//! A peer as the speaker core holds it, and the speaker's own identity, as plain data.
//!
//! Both [`super::import`] and [`super::export`] decide from these types, so neither depends on the
//! other. Nothing here owns a socket or a task: the session task of a peer is the shell's
//! (`speaker/mod.rs`); the core only knows it by the peer's [`SourceId`].

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ipnet::IpNet;

use crate::config::{PeerCfg, SpeakerCfg};
use crate::fsm::{Negotiated, State};
use crate::prefix_map::PrefixMap;
use crate::rib::{RouteAttrs, SourceId};
use crate::wire::Family;

/// What the routing decisions need to know about this speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Local {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Our route reflector cluster id (RFC 4456 7): the configured one, else the router id.
    pub cluster_id: Ipv4Addr,
    /// "Self" next hops for a family the session's own address cannot give.
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
}

impl Local {
    pub fn new(cfg: &SpeakerCfg) -> Local {
        Local {
            local_as: cfg.local_as,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id.unwrap_or(cfg.router_id),
            next_hop_v4: cfg.next_hop_v4,
            next_hop_v6: cfg.next_hop_v6,
        }
    }
}

/// One configured neighbour: its configuration, session state as last reported by its session
/// task, its Adj-RIB-Out and its counters. Its Adj-RIB-In is folded into the Loc-RIB (paths with
/// `source == id`).
#[derive(Debug)]
pub(crate) struct Peer {
    pub id: SourceId,
    pub cfg: PeerCfg,
    pub state: State,
    /// When `state` was entered (for status).
    pub since: SystemTime,
    /// The session's Established epoch: messages for an older epoch are dropped by the session.
    pub epoch: u64,
    /// Set while Established.
    pub negotiated: Option<Negotiated>,
    /// The peer's BGP Identifier in its last session; kept while its routes are held as stale.
    pub bgp_id: Ipv4Addr,
    /// Our address on the session (the "self" next hop).
    pub local: Option<IpAddr>,
    /// What we last announced to the peer, per prefix.
    pub adj_out: PrefixMap<Arc<RouteAttrs>>,
    /// Prefixes with a path from this peer in the Loc-RIB.
    pub accepted: u64,
    /// Prefixes the peer announces that import refused (policy, loops, RFC 7606).
    pub rejected: HashSet<IpNet>,
    pub last_error: Option<String>,
    /// Holding stale routes until this instant (restart timer, then stale timer).
    pub stale_until: Option<Instant>,
    /// Families still waiting for End-of-RIB while stale routes are held.
    pub stale_families: HashSet<Family>,
    /// The max-prefix NOTIFICATION was sent in this session.
    pub max_prefix_hit: bool,
    /// Families the peer has sent End-of-RIB for in this session.
    pub eor: HashSet<Family>,
}

impl Peer {
    pub fn new(id: SourceId, cfg: PeerCfg, since: SystemTime) -> Peer {
        Peer {
            id,
            cfg,
            state: State::Idle,
            since,
            epoch: 0,
            negotiated: None,
            bgp_id: Ipv4Addr::UNSPECIFIED,
            local: None,
            adj_out: PrefixMap::new(),
            accepted: 0,
            rejected: HashSet::new(),
            last_error: None,
            stale_until: None,
            stale_families: HashSet::new(),
            max_prefix_hit: false,
            eor: HashSet::new(),
        }
    }
    pub fn ebgp(&self, local_as: u32) -> bool {
        self.cfg.remote_as != local_as
    }
    pub fn established(&self) -> bool {
        self.state == State::Established && self.negotiated.is_some()
    }
}
