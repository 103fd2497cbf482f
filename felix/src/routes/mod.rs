//! Node routes: desired set from plain data, reconciled against the kernel over rtnetlink.
//!
//! ```text
//!   node::ClusterState ──RoutesInput──> RouteManagerHandle ──RoutesMsg (coalesced)──┐
//!                                        ▲  (watch: RoutesStatus)                   v
//!                                        └──────────────────────────────── RouteManager task
//!   kernel ──netlink multicast: links, v4/v6 routes, addresses─────────────────>  │ owns:
//!   kernel <──batched RTM_NEWROUTE / RTM_DELROUTE, RTM_SETLINK, dumps────────────  │ RouteSyncer
//! ```
//!
//! - [`desired`] (pure): [`desired_routes`] turns [`RoutesInput`] — local workload endpoints, blocks
//!   affine to this node, remote blocks with next hops — into one route per prefix, applying the
//!   conflict rules documented there.
//! - [`reconcile`] (pure): [`Reconciler`] holds the desired set, what the kernel has with our
//!   protocol number, the links by name, and per-route pending errors with backoff; it plans
//!   add / replace / delete operations and takes their results. `now` is an argument.
//! - `nl` (private): the only code that sees netlink bytes — message encoding and decoding,
//!   batched requests (many messages per `sendmsg`, one ACK per batch), dumps, the event socket.
//! - [`driver`]: [`RouteSyncer`] (sockets + reconciler; `apply_once`-style use by benchmarks) and
//!   [`RouteManager`] (the owner task and its handle).
//!
//! Invariants: a route is ours if and only if it carries [`RoutesCfg::protocol`] (default
//! [`DEFAULT_ROUTE_PROTOCOL`] = 80, Calico felix's number, unused by iproute2's `rt_protos`) in
//! [`RoutesCfg::table`]; routes with another protocol number are never changed or removed, and a
//! prefix held by one of them is reported as a conflict instead of being overwritten (new routes are
//! added with `NLM_F_EXCL`; only routes already ours are replaced). Restarting the manager removes
//! stale routes of ours and adds missing ones without touching routes that are still wanted.

pub mod desired;
pub mod driver;
mod nl;
pub mod reconcile;

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

pub use desired::{desired_routes, DesiredRoute, DesiredRoutes, Rejected};
pub use driver::{RouteManager, RouteManagerHandle, RouteSyncer, RoutesPinger, SyncReport};
pub use reconcile::{PendingRoute, Reconciler};

/// Calico felix's route protocol number; not listed in iproute2's `/etc/iproute2/rt_protos`.
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 80;

/// The kernel's main routing table.
pub const RT_TABLE_MAIN: u32 = 254;

/// Everything the routes of a node are computed from. Plain data; the node daemon fills it from its
/// cluster state (endpoints and affinities) and BGP (remote blocks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutesInput {
    /// Workload endpoints on this node.
    pub workloads: Vec<WorkloadEndpoint>,
    /// Blocks affine to this node: each gets a blackhole route.
    pub local_blocks: Vec<IpNet>,
    /// Blocks of other nodes, with the next hops that reach them.
    pub remote_blocks: Vec<RemoteBlock>,
}

/// A local workload endpoint: a pod's addresses and the host side of its veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadEndpoint {
    /// For logs and conflicts, e.g. `default/nginx`.
    pub id: String,
    /// Host-side interface, e.g. [`crate::workload_iface_name`]`("default", "nginx")`.
    pub iface: String,
    /// Pod addresses, normally /32 and /128; each gets a scope-link route to `iface`.
    pub nets: Vec<IpNet>,
}

/// A block owned by another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteBlock {
    /// The block, e.g. `10.65.1.0/26`.
    pub cidr: IpNet,
    /// One or more next hops (several: ECMP).
    pub next_hops: Vec<NextHop>,
}

/// A next hop of a remote block.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NextHop {
    /// The owning node's address (same family as the block).
    pub gateway: IpAddr,
    /// Pin the route to this interface (required with `onlink`); `None` lets the kernel resolve it.
    pub iface: Option<String>,
    /// `onlink`: treat `gateway` as directly reachable on `iface` even without a covering subnet.
    pub onlink: bool,
}

impl NextHop {
    /// A next hop the kernel resolves through its connected routes.
    pub fn via(gateway: IpAddr) -> NextHop {
        NextHop {
            gateway,
            iface: None,
            onlink: false,
        }
    }
}

/// Configuration of the route manager. Validate with [`RoutesCfg::validate`] before starting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutesCfg {
    /// Route protocol number that marks our routes (1..=255, not 2 `kernel`, not 3 `boot` — others
    /// use those). Default [`DEFAULT_ROUTE_PROTOCOL`].
    pub protocol: u8,
    /// Routing table. Default [`RT_TABLE_MAIN`].
    pub table: u32,
    /// Route metric; 0 means the kernel default (IPv4 0, IPv6 1024).
    pub metric: u32,
    /// Interfaces whose names start with this are workload interfaces that felix configures.
    pub workload_iface_prefix: String,
    /// Set up the host side of workload interfaces (sysctls, MAC, up); see [`crate::veth`].
    pub configure_workload_ifaces: bool,
    /// MAC enforced on workload interfaces when `configure_workload_ifaces`; `None` leaves it.
    pub workload_mac: Option<[u8; 6]>,
    /// Set `ip_forward` and IPv6 `all.forwarding` once at start.
    pub set_global_forwarding: bool,
    /// First retry delay of a failed route; doubles per failure up to `retry_max`.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Full resync (dump + diff) even when nothing happened; `None` disables it.
    pub resync_interval: Option<Duration>,
    /// Route messages per `sendmsg` (one ACK each batch); 1..=4096.
    pub batch_size: usize,
}

impl Default for RoutesCfg {
    fn default() -> Self {
        RoutesCfg {
            protocol: DEFAULT_ROUTE_PROTOCOL,
            table: RT_TABLE_MAIN,
            metric: 0,
            workload_iface_prefix: crate::veth::WORKLOAD_IFACE_PREFIX.to_string(),
            configure_workload_ifaces: true,
            workload_mac: Some(crate::veth::HOST_SIDE_MAC),
            set_global_forwarding: true,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(10),
            resync_interval: Some(Duration::from_secs(90)),
            batch_size: 512,
        }
    }
}

impl RoutesCfg {
    /// Check values that would make the manager misbehave; the error names the field.
    pub fn validate(&self) -> Result<(), RouteError> {
        let bad = |field: &'static str, reason: String| Err(RouteError::Config { field, reason });
        if matches!(self.protocol, 0 | 2 | 3) {
            return bad(
                "protocol",
                format!("{} is reserved (unspec/kernel/boot)", self.protocol),
            );
        }
        if self.table == 0 || self.table == 255 {
            return bad(
                "table",
                format!("{} is not a usable routing table", self.table),
            );
        }
        if self.workload_iface_prefix.is_empty() {
            return bad("workload_iface_prefix", "must not be empty".into());
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return bad(
                "retry_min",
                format!(
                    "need 0 < retry_min <= retry_max (got {:?}, {:?})",
                    self.retry_min, self.retry_max
                ),
            );
        }
        if !(1..=4096).contains(&self.batch_size) {
            return bad("batch_size", format!("{} not in 1..=4096", self.batch_size));
        }
        Ok(())
    }
}

/// What the manager reports after each sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutesStatus {
    /// Routes in the desired set.
    pub desired: usize,
    /// Routes of ours the kernel holds (as far as the manager knows).
    pub programmed: usize,
    /// Desired routes not (correctly) in the kernel yet, with why.
    pub pending: Vec<PendingRoute>,
    /// Inputs dropped by the conflict rules of [`desired_routes`].
    pub rejected: Vec<Rejected>,
    /// Workload interfaces whose host-side setup failed, with the error.
    pub iface_errors: Vec<(String, String)>,
    /// Duration of the last sync that changed something or was a full resync.
    pub last_sync: Option<Duration>,
    /// Duration of the last full resync (dump + diff + apply).
    pub last_resync: Option<Duration>,
    /// Full resyncs done.
    pub resyncs: u64,
    /// Route operations sent to the kernel.
    pub ops: u64,
}

impl RoutesStatus {
    /// Every desired route is programmed and nothing is pending.
    pub fn in_sync(&self) -> bool {
        self.pending.is_empty() && self.desired == self.programmed
    }
}

/// Errors of the route manager. Kernel errors name the route and what was attempted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// A configuration value is invalid.
    #[error("routes config: {field}: {reason}")]
    Config {
        /// The [`RoutesCfg`] field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The route's interface does not exist (yet).
    #[error("route {dst}: interface {iface} not present")]
    InterfaceMissing {
        /// The route.
        dst: IpNet,
        /// The interface.
        iface: String,
    },
    /// The route's interface exists but is down.
    #[error("route {dst}: interface {iface} is down")]
    InterfaceDown {
        /// The route.
        dst: IpNet,
        /// The interface.
        iface: String,
    },
    /// Another protocol's route holds the same prefix and metric; we leave it alone.
    #[error("route {dst}: held by a route of protocol {protocol} (not ours); left alone")]
    Foreign {
        /// The route.
        dst: IpNet,
        /// Its protocol number (0 when only known from `EEXIST`).
        protocol: u8,
    },
    /// The kernel refused a route operation.
    #[error("route {dst}: {op} failed: {message} (errno {errno})")]
    Kernel {
        /// The route.
        dst: IpNet,
        /// `add`, `replace` or `delete`.
        op: &'static str,
        /// The errno.
        errno: i32,
        /// The errno's text, plus the kernel's extended ACK message when it sent one.
        message: String,
    },
    /// Setting up the host side of a workload interface failed.
    #[error("interface {iface}: {what}: {message}")]
    Iface {
        /// The interface.
        iface: String,
        /// What was being done (`sysctl net/ipv4/conf/../proxy_arp`, `set link up`).
        what: String,
        /// The error.
        message: String,
    },
    /// The netlink socket failed.
    #[error("netlink {what}: {message}")]
    Netlink {
        /// What was being done (`open`, `dump routes`, `send batch`, ...).
        what: &'static str,
        /// The error.
        message: String,
    },
    /// The manager task is gone.
    #[error("route manager stopped")]
    Stopped,
}

impl RouteError {
    pub(crate) fn netlink(what: &'static str, e: impl std::fmt::Display) -> RouteError {
        RouteError::Netlink {
            what,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_values_name_their_field() {
        assert_eq!(RoutesCfg::default().validate(), Ok(()));
        let bad = |f: fn(&mut RoutesCfg)| {
            let mut c = RoutesCfg::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.protocol = 2).starts_with("routes config: protocol:"));
        assert!(bad(|c| c.table = 255).contains("table"));
        assert!(bad(|c| c.batch_size = 0).contains("batch_size"));
        assert!(bad(|c| c.retry_max = Duration::ZERO).contains("retry_min"));
        assert!(bad(|c| c.workload_iface_prefix.clear()).contains("workload_iface_prefix"));
    }
}
