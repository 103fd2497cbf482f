//! `calicoctl-rs ... -o json`: stable JSON for scripts. Field names are part of the CLI's contract:
//! they are only ever added, never renamed or removed. Times are RFC 3339 in UTC (`null` when
//! unknown), with the Unix seconds beside them where scripts compare times.
//!
//! - `node status`: `{"running": true, "ipv4": [StatusPeer], "ipv6": [StatusPeer]}` where a
//!   StatusPeer is the table row: `peer_address`, `peer_type` (Calico's words), `state` (BIRD's
//!   `up`/`start`/`down`), `since`, `since_unix`, `info` (BIRD's words), plus `bgp_state`,
//!   `as_number`, `last_error` (the daemon's text, `null` when none). When the daemon cannot be
//!   reached: `{"running": false, "error": "..."}` (exit status 1).
//! - `node peers`: `{"peers": [Peer]}`: `address`, `as_number`, `peer_type` (`node-mesh`, `global`,
//!   `node-specific`, `rr-client`, `rr-server`, `unknown`), `description`, `state` (RFC 4271 name),
//!   `since`, `since_unix`, `last_error`, `local_address`, `capabilities` (`null` unless OpenConfirm
//!   or Established: `hold_time`, `keepalive`, `four_octet_as`, `route_refresh`,
//!   `graceful_restart`, `families`, `peer_router_id`), `prefixes_received`, `prefixes_accepted`,
//!   `prefixes_advertised`, `graceful_restart_stale`.
//! - `node routes`: `{"routes": [{prefix, kind, next_hops, source_peer, as_path, installed,
//!   stale}]}`; `source_peer` is `null` for routes this node originates.
//! - `node blocks`: `{"blocks": [{cidr, affinity, pool, used, free}]}`.
//! - `node policy`: `{table, policies_compiled, rejected: [{namespace, name, reason}], rules,
//!   set_elements, endpoints, last_apply_micros, last_apply_at}`.
//! - `node info`: `{name, addresses, as_number, router_id, version, started_at, uptime_seconds,
//!   ready, live, not_ready_reasons}`.

use calico_proto::v1 as pb;
use serde::Serialize;

use super::render;

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// `node status -o json`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub running: bool,
    pub ipv4: Vec<StatusPeer>,
    pub ipv6: Vec<StatusPeer>,
}

/// `node status -o json` when the daemon could not be reached.
#[derive(Debug, Serialize)]
pub struct NotRunning {
    pub running: bool,
    pub error: String,
}

/// One row of the `node status` table.
#[derive(Debug, Serialize)]
pub struct StatusPeer {
    pub peer_address: String,
    pub peer_type: &'static str,
    pub state: &'static str,
    pub since: Option<String>,
    pub since_unix: u64,
    pub info: String,
    pub bgp_state: &'static str,
    pub as_number: u32,
    pub last_error: Option<String>,
}

pub fn status(peers: &[pb::Peer]) -> Status {
    let rows = |v6| {
        render::family_peers(peers, v6)
            .into_iter()
            .map(|p| StatusPeer {
                peer_address: p.address.clone(),
                peer_type: render::peer_type_name(p.r#type()),
                state: render::bird_state(p),
                since: render::rfc3339(p.since),
                since_unix: p.since,
                info: render::bird_info(p),
                bgp_state: render::bgp_state_name(p.state()),
                as_number: p.as_number,
                last_error: opt(&p.last_error),
            })
            .collect()
    };
    Status {
        running: true,
        ipv4: rows(false),
        ipv6: rows(true),
    }
}

pub fn not_running(error: &str) -> NotRunning {
    NotRunning {
        running: false,
        error: error.to_string(),
    }
}

#[derive(Debug, Serialize)]
pub struct Peers {
    pub peers: Vec<Peer>,
}

#[derive(Debug, Serialize)]
pub struct Peer {
    pub address: String,
    pub as_number: u32,
    pub peer_type: &'static str,
    pub description: String,
    pub state: &'static str,
    pub since: Option<String>,
    pub since_unix: u64,
    pub last_error: Option<String>,
    pub local_address: Option<String>,
    pub capabilities: Option<Capabilities>,
    pub prefixes_received: u64,
    pub prefixes_accepted: u64,
    pub prefixes_advertised: u64,
    pub graceful_restart_stale: bool,
}

#[derive(Debug, Serialize)]
pub struct Capabilities {
    pub hold_time: u32,
    pub keepalive: u32,
    pub four_octet_as: bool,
    pub route_refresh: bool,
    pub graceful_restart: bool,
    pub families: Vec<String>,
    pub peer_router_id: String,
}

/// Machine-friendly peer type token.
pub fn peer_type_token(t: pb::PeerType) -> &'static str {
    match t {
        pb::PeerType::Unspecified => "unknown",
        pb::PeerType::NodeMesh => "node-mesh",
        pb::PeerType::Global => "global",
        pb::PeerType::NodeSpecific => "node-specific",
        pb::PeerType::RrClient => "rr-client",
        pb::PeerType::RrServer => "rr-server",
    }
}

pub fn peers(peers: &[pb::Peer]) -> Peers {
    let mut sorted = render::family_peers(peers, false);
    sorted.extend(render::family_peers(peers, true));
    Peers {
        peers: sorted
            .into_iter()
            .map(|p| Peer {
                address: p.address.clone(),
                as_number: p.as_number,
                peer_type: peer_type_token(p.r#type()),
                description: p.description.clone(),
                state: render::bgp_state_name(p.state()),
                since: render::rfc3339(p.since),
                since_unix: p.since,
                last_error: opt(&p.last_error),
                local_address: opt(&p.local_address),
                capabilities: p.capabilities.as_ref().map(|c| Capabilities {
                    hold_time: c.hold_time,
                    keepalive: c.keepalive,
                    four_octet_as: c.four_octet_as,
                    route_refresh: c.route_refresh,
                    graceful_restart: c.graceful_restart,
                    families: c.families.clone(),
                    peer_router_id: c.peer_router_id.clone(),
                }),
                prefixes_received: p.prefixes_received,
                prefixes_accepted: p.prefixes_accepted,
                prefixes_advertised: p.prefixes_advertised,
                graceful_restart_stale: p.graceful_restart_stale,
            })
            .collect(),
    }
}

#[derive(Debug, Serialize)]
pub struct Routes {
    pub routes: Vec<Route>,
}

#[derive(Debug, Serialize)]
pub struct Route {
    pub prefix: String,
    pub kind: String,
    pub next_hops: Vec<String>,
    pub source_peer: Option<String>,
    pub as_path: Vec<u32>,
    pub installed: bool,
    pub stale: bool,
}

pub fn routes(routes: &[pb::Route]) -> Routes {
    Routes {
        routes: routes
            .iter()
            .map(|r| Route {
                prefix: r.prefix.clone(),
                kind: r.kind.clone(),
                next_hops: r.next_hops.clone(),
                source_peer: opt(&r.source_peer),
                as_path: r.as_path.clone(),
                installed: r.installed,
                stale: r.stale,
            })
            .collect(),
    }
}

#[derive(Debug, Serialize)]
pub struct Blocks {
    pub blocks: Vec<Block>,
}

#[derive(Debug, Serialize)]
pub struct Block {
    pub cidr: String,
    pub affinity: Option<String>,
    pub pool: String,
    pub used: u32,
    pub free: u32,
}

pub fn blocks(blocks: &[pb::Block]) -> Blocks {
    Blocks {
        blocks: blocks
            .iter()
            .map(|b| Block {
                cidr: b.cidr.clone(),
                affinity: opt(&b.affinity),
                pool: b.pool.clone(),
                used: b.used,
                free: b.free,
            })
            .collect(),
    }
}

#[derive(Debug, Serialize)]
pub struct Policy {
    pub table: String,
    pub policies_compiled: u32,
    pub rejected: Vec<Rejected>,
    pub rules: u32,
    pub set_elements: u32,
    pub endpoints: u32,
    pub last_apply_micros: u64,
    pub last_apply_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Rejected {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

pub fn policy(p: &pb::PolicyStatus) -> Policy {
    Policy {
        table: p.table.clone(),
        policies_compiled: p.policies_compiled,
        rejected: p
            .rejected
            .iter()
            .map(|r| Rejected {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                reason: r.reason.clone(),
            })
            .collect(),
        rules: p.rules,
        set_elements: p.set_elements,
        endpoints: p.endpoints,
        last_apply_micros: p.last_apply_micros,
        last_apply_at: render::rfc3339(p.last_apply_at),
    }
}

#[derive(Debug, Serialize)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<String>,
    pub as_number: u32,
    pub router_id: String,
    pub version: String,
    pub started_at: Option<String>,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub live: bool,
    pub not_ready_reasons: Vec<String>,
    pub resource_errors: Vec<ResourceError>,
}

#[derive(Debug, Serialize)]
pub struct ResourceError {
    pub origin: String,
    pub kind: String,
    pub name: String,
    pub field: String,
    pub message: String,
    pub severity: String,
}

pub fn resource_errors(errors: &[pb::ResourceError]) -> Vec<ResourceError> {
    errors
        .iter()
        .map(|e| ResourceError {
            origin: e.origin.clone(),
            kind: e.kind.clone(),
            name: e.name.clone(),
            field: e.field.clone(),
            message: e.message.clone(),
            severity: e.severity.clone(),
        })
        .collect()
}

pub fn node(n: &pb::Node) -> Node {
    Node {
        name: n.name.clone(),
        addresses: n.addresses.clone(),
        as_number: n.as_number,
        router_id: n.router_id.clone(),
        version: n.version.clone(),
        started_at: render::rfc3339(n.started_at),
        uptime_seconds: n.uptime_seconds,
        ready: n.ready,
        live: n.live,
        not_ready_reasons: n.not_ready_reasons.clone(),
        resource_errors: resource_errors(&n.resource_errors),
    }
}

/// Pretty JSON with a trailing newline.
pub fn to_string<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("plain data serializes");
    s.push('\n');
    s
}
