//! Desired routes vs. the kernel: what to add, replace and delete, and what is still pending.
//!
//! [`Reconciler`] is the delta tracker of the route manager. It holds four things, all plain data:
//! the desired routes (from [`desired_routes`](super::desired_routes)), the kernel's routes in our
//! table split into *ours* (our protocol number) and *foreign* (any other), the links by name and
//! index, and the pending routes (failed or waiting, with exponential backoff). The driver feeds it
//! kernel dumps, netlink events and operation results; [`Reconciler::plan`] returns the operations
//! that would make the kernel match. No I/O, no clock: `now` is an argument.
//!
//! Rules:
//! - Only prefixes marked dirty (changed input, kernel event, link change, due retry) are looked at,
//!   except after a full dump, when all are. That keeps a one-pod change O(log n).
//! - Deletes come before adds and replaces. A foreign route is never the target of an operation.
//! - A route that is not ours yet is added with `NLM_F_EXCL`, so a foreign route holding the same
//!   prefix and metric is never overwritten: the prefix waits as [`RouteError::Foreign`] until that
//!   route goes. Only a route that is already ours is replaced (`NLM_F_REPLACE`, atomic: traffic
//!   keeps flowing while a route changes).
//! - A route whose interface is missing or down waits without a timer and is retried when the link
//!   changes. A route the kernel refused is retried after `retry_min`, doubling to `retry_max`.
//! - Surprises (`EEXIST` with no foreign route known, a link going down: IPv4 drops its routes
//!   without telling anyone) ask the driver for a full dump instead of guessing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::desired::{DesiredRoute, DesiredRoutes};
use super::RouteError;

/// `RT_SCOPE_UNIVERSE`.
pub const SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_LINK`.
pub const SCOPE_LINK: u8 = 253;

const ESRCH: i32 = 3;
const ENXIO: i32 = 6;
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const ENETDOWN: i32 = 100;

/// Identity of a route in a table: destination and metric (the kernel's key, TOS aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// Destination prefix.
    pub dst: IpNet,
    /// Metric (`RTA_PRIORITY`).
    pub metric: u32,
}

/// A route as the kernel reports it (decoded from `RTM_NEWROUTE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// Destination and metric.
    pub key: RouteKey,
    /// Routing table.
    pub table: u32,
    /// Route protocol number.
    pub protocol: u8,
    /// IPv4 TOS (ours are always 0).
    pub tos: u8,
    /// `RT_SCOPE_*`.
    pub scope: u8,
    /// What it does.
    pub kind: KernelKind,
}

/// The forwarding part of a kernel route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// `RTN_BLACKHOLE`.
    Blackhole,
    /// `RTN_UNICAST` to an interface, no gateway.
    Dev {
        /// Output interface index.
        oif: u32,
    },
    /// `RTN_UNICAST` via one or more gateways, sorted by (gateway, oif).
    Via {
        /// The next hops.
        hops: Vec<KernelHop>,
    },
    /// Anything else (unreachable, prohibit, local, ...): never matches a desired route.
    Other {
        /// `RTN_*` type.
        rtype: u8,
    },
}

/// One next hop of a kernel route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelHop {
    /// Gateway address.
    pub gateway: IpAddr,
    /// Output interface index (0 when unknown).
    pub oif: u32,
    /// `RTNH_F_ONLINK`.
    pub onlink: bool,
}

/// A desired route resolved against the links: exactly what is sent to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination and metric.
    pub key: RouteKey,
    /// What it does.
    pub kind: SpecKind,
}

/// The forwarding part of a [`RouteSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecKind {
    /// Blackhole.
    Blackhole,
    /// Scope link to an interface.
    Dev {
        /// Interface index.
        oif: u32,
    },
    /// Via gateways (ECMP if several), sorted.
    Via {
        /// Next hops.
        hops: Vec<SpecHop>,
    },
}

/// One next hop of a [`RouteSpec`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecHop {
    /// Gateway address.
    pub gateway: IpAddr,
    /// Interface index, or let the kernel resolve it.
    pub oif: Option<u32>,
    /// `onlink`.
    pub onlink: bool,
}

impl RouteSpec {
    /// Whether the kernel route does what this spec asks for.
    pub fn matches(&self, k: &KernelRoute) -> bool {
        if k.key != self.key || k.tos != 0 {
            return false;
        }
        match (&self.kind, &k.kind) {
            (SpecKind::Blackhole, KernelKind::Blackhole) => true,
            (SpecKind::Dev { oif }, KernelKind::Dev { oif: koif }) => {
                oif == koif && (self.key.dst.addr().is_ipv6() || k.scope == SCOPE_LINK)
            }
            (SpecKind::Via { hops }, KernelKind::Via { hops: khops }) => {
                hops.len() == khops.len()
                    && hops.iter().zip(khops).all(|(h, k)| {
                        h.gateway == k.gateway
                            && h.onlink == k.onlink
                            && h.oif.is_none_or(|o| o == k.oif)
                    })
            }
            _ => false,
        }
    }

    /// The kernel route this spec becomes once added with `protocol` in `table`.
    pub fn to_kernel(&self, protocol: u8, table: u32) -> KernelRoute {
        let v4 = self.key.dst.addr().is_ipv4();
        let (scope, kind) = match &self.kind {
            SpecKind::Blackhole => (SCOPE_UNIVERSE, KernelKind::Blackhole),
            SpecKind::Dev { oif } => (
                if v4 { SCOPE_LINK } else { SCOPE_UNIVERSE },
                KernelKind::Dev { oif: *oif },
            ),
            SpecKind::Via { hops } => (
                SCOPE_UNIVERSE,
                KernelKind::Via {
                    hops: hops
                        .iter()
                        .map(|h| KernelHop {
                            gateway: h.gateway,
                            oif: h.oif.unwrap_or(0),
                            onlink: h.onlink,
                        })
                        .collect(),
                },
            ),
        };
        KernelRoute {
            key: self.key,
            table,
            protocol,
            tos: 0,
            scope,
            kind,
        }
    }
}

/// One route operation for the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteOp {
    /// Create; fails with `EEXIST` if any route holds the key (`NLM_F_CREATE | NLM_F_EXCL`).
    Add(RouteSpec),
    /// Replace our route at the key (`NLM_F_CREATE | NLM_F_REPLACE`).
    Replace(RouteSpec),
    /// Delete our route (matched by protocol, so never someone else's).
    Delete(KernelRoute),
}

impl RouteOp {
    /// The destination concerned.
    pub fn dst(&self) -> IpNet {
        match self {
            RouteOp::Add(s) | RouteOp::Replace(s) => s.key.dst,
            RouteOp::Delete(k) => k.key.dst,
        }
    }

    /// `add`, `replace` or `delete`.
    pub fn verb(&self) -> &'static str {
        match self {
            RouteOp::Add(_) => "add",
            RouteOp::Replace(_) => "replace",
            RouteOp::Delete(_) => "delete",
        }
    }
}

/// What the kernel said about one operation that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    /// Positive errno.
    pub errno: i32,
    /// Errno text plus the extended ACK message, if any.
    pub message: String,
}

/// A desired route that is not (correctly) programmed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRoute {
    /// The prefix.
    pub dst: IpNet,
    /// Why it is not programmed.
    pub error: RouteError,
    /// Failed attempts so far (0 while only waiting).
    pub attempts: u32,
    /// When it is tried again; `None`: when something relevant changes (link, foreign route).
    pub retry_at: Option<Instant>,
}

/// A link as far as routes care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `IFF_UP`.
    pub up: bool,
    /// Hardware address.
    pub mac: Vec<u8>,
}

/// Settings of the reconciler (a subset of [`RoutesCfg`](super::RoutesCfg)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileCfg {
    /// Our protocol number.
    pub protocol: u8,
    /// Our table.
    pub table: u32,
    /// Metric; 0 = kernel default.
    pub metric: u32,
    /// First retry delay.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// Reply of [`Reconciler::apply_result`] and the event methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Followup {
    /// Nothing more to do than plan again.
    None,
    /// Our view of the kernel may be wrong: dump it.
    Dump,
}

/// The route delta tracker; see the module docs.
#[derive(Debug)]
pub struct Reconciler {
    cfg: ReconcileCfg,
    desired: BTreeMap<IpNet, DesiredRoute>,
    by_iface: HashMap<String, BTreeSet<IpNet>>,
    ours: BTreeMap<RouteKey, KernelRoute>,
    foreign: BTreeMap<RouteKey, u8>,
    links: HashMap<u32, LinkInfo>,
    link_names: HashMap<String, u32>,
    pending: BTreeMap<IpNet, PendingRoute>,
    dirty: BTreeSet<IpNet>,
    all_dirty: bool,
}

impl Reconciler {
    /// An empty reconciler: nothing desired, nothing known about the kernel.
    pub fn new(cfg: ReconcileCfg) -> Reconciler {
        Reconciler {
            cfg,
            desired: BTreeMap::new(),
            by_iface: HashMap::new(),
            ours: BTreeMap::new(),
            foreign: BTreeMap::new(),
            links: HashMap::new(),
            link_names: HashMap::new(),
            pending: BTreeMap::new(),
            dirty: BTreeSet::new(),
            all_dirty: true,
        }
    }

    /// The settings.
    pub fn cfg(&self) -> &ReconcileCfg {
        &self.cfg
    }

    /// The metric our route to `dst` has in the kernel (IPv6 turns 0 into 1024).
    pub fn metric_for(&self, dst: &IpNet) -> u32 {
        match (self.cfg.metric, dst) {
            (0, IpNet::V6(_)) => 1024,
            (m, _) => m,
        }
    }

    /// Replace the desired set; only prefixes whose route changed become dirty. Returns the old set,
    /// so the caller can free it off the latency path.
    pub fn set_desired(&mut self, new: DesiredRoutes) -> BTreeMap<IpNet, DesiredRoute> {
        use std::cmp::Ordering;
        let old = std::mem::take(&mut self.desired);
        let mut a = old.iter().peekable();
        let mut b = new.routes.iter().peekable();
        // One merge walk over both sorted maps: changed prefixes become dirty and the
        // interface index is updated in place.
        loop {
            let (gone, came) = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => (a.next(), None),
                (None, Some(_)) => (None, b.next()),
                (Some((ka, _)), Some((kb, _))) => match ka.cmp(kb) {
                    Ordering::Less => (a.next(), None),
                    Ordering::Greater => (None, b.next()),
                    Ordering::Equal => {
                        let (x, y) = (a.next(), b.next());
                        if x.map(|e| e.1) == y.map(|e| e.1) {
                            continue;
                        }
                        (x, y)
                    }
                },
            };
            if let Some((dst, r)) = gone {
                self.dirty.insert(*dst);
                if let Some(i) = r.needs_iface() {
                    if let Some(set) = self.by_iface.get_mut(i) {
                        set.remove(dst);
                        if set.is_empty() {
                            self.by_iface.remove(i);
                        }
                    }
                }
            }
            if let Some((dst, r)) = came {
                self.dirty.insert(*dst);
                if let Some(i) = r.needs_iface() {
                    match self.by_iface.get_mut(i) {
                        Some(set) => {
                            set.insert(*dst);
                        }
                        None => {
                            self.by_iface.insert(i.to_string(), BTreeSet::from([*dst]));
                        }
                    }
                }
            }
        }
        self.desired = new.routes;
        if !self.pending.is_empty() {
            // Keep failed deletes: the stale route is still there and is retried on its timer.
            self.pending.retain(|dst, p| {
                self.desired.contains_key(dst)
                    || matches!(p.error, RouteError::Kernel { op: "delete", .. })
            });
        }
        old
    }

    /// The desired routes.
    pub fn desired(&self) -> &BTreeMap<IpNet, DesiredRoute> {
        &self.desired
    }

    /// Our routes as the kernel holds them (as far as we know).
    pub fn ours(&self) -> &BTreeMap<RouteKey, KernelRoute> {
        &self.ours
    }

    /// Pending routes, by prefix.
    pub fn pending(&self) -> impl Iterator<Item = &PendingRoute> {
        self.pending.values()
    }

    /// The link with this name.
    pub fn link(&self, name: &str) -> Option<&LinkInfo> {
        self.link_names.get(name).and_then(|i| self.links.get(i))
    }

    /// Forget everything known about the kernel's routes and take a fresh dump (ours and foreign, any
    /// table: others are ignored). Every prefix becomes dirty.
    pub fn replace_kernel_routes(&mut self, routes: impl IntoIterator<Item = KernelRoute>) {
        self.ours.clear();
        self.foreign.clear();
        for r in routes {
            if r.table != self.cfg.table {
                continue;
            }
            if r.protocol == self.cfg.protocol {
                self.ours.insert(r.key, r);
            } else {
                self.foreign.insert(r.key, r.protocol);
            }
        }
        self.all_dirty = true;
    }

    /// Forget the links and take a fresh dump. Every prefix becomes dirty.
    pub fn replace_links(&mut self, links: impl IntoIterator<Item = LinkInfo>) {
        self.links.clear();
        self.link_names.clear();
        for l in links {
            self.link_names.insert(l.name.clone(), l.index);
            self.links.insert(l.index, l);
        }
        self.all_dirty = true;
    }

    /// `RTM_NEWROUTE` event.
    pub fn route_added(&mut self, r: KernelRoute) {
        if r.table != self.cfg.table {
            return;
        }
        let dst = r.key.dst;
        if r.protocol == self.cfg.protocol {
            self.ours.insert(r.key, r);
        } else {
            self.foreign.insert(r.key, r.protocol);
        }
        self.dirty.insert(dst);
    }

    /// `RTM_DELROUTE` event.
    pub fn route_removed(&mut self, r: &KernelRoute) {
        if r.table != self.cfg.table {
            return;
        }
        if r.protocol == self.cfg.protocol {
            self.ours.remove(&r.key);
        } else if self.foreign.remove(&r.key).is_some() {
            if let Some(p) = self.pending.get_mut(&r.key.dst) {
                p.retry_at = None;
            }
        }
        self.dirty.insert(r.key.dst);
    }

    /// `RTM_NEWLINK` event (or a link we changed ourselves).
    pub fn link_changed(&mut self, l: LinkInfo) -> Followup {
        let old = self.links.get(&l.index).cloned();
        if old.as_ref() == Some(&l) {
            return Followup::None;
        }
        let mut follow = Followup::None;
        if let Some(old) = &old {
            if old.name != l.name {
                self.link_names.remove(&old.name);
                self.mark_iface(&old.name.clone());
            }
            if old.up && !l.up {
                // IPv4 flushes routes through a link that goes down, without RTM_DELROUTE.
                self.forget_routes_via(l.index);
                follow = Followup::Dump;
            }
        }
        self.link_names.insert(l.name.clone(), l.index);
        let name = l.name.clone();
        self.links.insert(l.index, l);
        self.mark_iface(&name);
        follow
    }

    /// `RTM_DELLINK` event: its routes are gone (IPv4 does not say so).
    pub fn link_removed(&mut self, index: u32) {
        if let Some(old) = self.links.remove(&index) {
            if self.link_names.get(&old.name) == Some(&index) {
                self.link_names.remove(&old.name);
            }
            self.mark_iface(&old.name);
        }
        self.forget_routes_via(index);
    }

    /// An address was added or removed somewhere: routes that failed for an unreachable next hop
    /// may work now, so retry them at once.
    pub fn addresses_changed(&mut self, now: Instant) {
        for p in self.pending.values_mut() {
            if matches!(p.error, RouteError::Kernel { .. }) {
                p.retry_at = Some(now);
            }
        }
    }

    fn mark_iface(&mut self, name: &str) {
        if let Some(set) = self.by_iface.get(name) {
            for dst in set {
                if let Some(p) = self.pending.get_mut(dst) {
                    p.retry_at = None;
                }
                self.dirty.insert(*dst);
            }
        }
    }

    fn forget_routes_via(&mut self, index: u32) {
        let gone: Vec<RouteKey> = self
            .ours
            .iter()
            .filter(|(_, r)| match &r.kind {
                KernelKind::Dev { oif } => *oif == index,
                KernelKind::Via { hops } => hops.iter().all(|h| h.oif == index),
                _ => false,
            })
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.ours.remove(&k);
            self.dirty.insert(k.dst);
        }
    }

    /// The earliest time a pending route is due for a retry.
    pub fn next_retry(&self) -> Option<Instant> {
        self.pending.values().filter_map(|p| p.retry_at).min()
    }

    /// Whether anything is dirty or due at `now` (a [`Reconciler::plan`] could produce operations).
    pub fn has_work(&self, now: Instant) -> bool {
        self.all_dirty || !self.dirty.is_empty() || self.next_retry().is_some_and(|t| t <= now)
    }

    /// Operations that make the kernel match the desired routes, deletes first. Clears the dirty
    /// set and records waits (missing interface, foreign route) as pending.
    pub fn plan(&mut self, now: Instant) -> Vec<RouteOp> {
        let mut todo = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.all_dirty) {
            todo.extend(self.desired.keys().copied());
            todo.extend(self.ours.keys().map(|k| k.dst));
        }
        todo.extend(
            self.pending
                .values()
                .filter(|p| p.retry_at.is_some_and(|t| t <= now))
                .map(|p| p.dst),
        );
        let mut deletes = Vec::new();
        let mut sets = Vec::new();
        for dst in todo {
            self.plan_prefix(dst, now, &mut deletes, &mut sets);
        }
        deletes.extend(sets);
        deletes
    }

    fn plan_prefix(
        &mut self,
        dst: IpNet,
        now: Instant,
        deletes: &mut Vec<RouteOp>,
        sets: &mut Vec<RouteOp>,
    ) {
        if self
            .pending
            .get(&dst)
            .is_some_and(|p| p.retry_at.is_some_and(|t| t > now))
        {
            return;
        }
        let want_metric = self.metric_for(&dst);
        let lo = RouteKey { dst, metric: 0 };
        let hi = RouteKey {
            dst,
            metric: u32::MAX,
        };
        let want = self.desired.get(&dst);
        let mut current = None;
        let mut deleting = false;
        for (k, r) in self.ours.range(lo..=hi) {
            if want.is_some() && k.metric == want_metric && r.tos == 0 {
                current = Some(r);
            } else {
                deletes.push(RouteOp::Delete(r.clone()));
                deleting = true;
            }
        }
        let Some(want) = want else {
            if !deleting {
                self.pending.remove(&dst);
            }
            return;
        };
        let spec = match self.resolve(dst, want_metric, want) {
            Ok(spec) => spec,
            Err(wait) => {
                if let Some(cur) = current {
                    // It points at another (old) interface: not what is wanted.
                    let stays = self
                        .link_index(want)
                        .is_some_and(|i| cur.kind == KernelKind::Dev { oif: i });
                    if !stays {
                        deletes.push(RouteOp::Delete(cur.clone()));
                    }
                }
                self.set_pending(dst, wait, None, false);
                return;
            }
        };
        if current.is_some_and(|c| spec.matches(c)) {
            self.pending.remove(&dst);
            return;
        }
        if current.is_none() {
            if let Some(protocol) = self.foreign.get(&spec.key) {
                let error = RouteError::Foreign {
                    dst,
                    protocol: *protocol,
                };
                self.set_pending(dst, error, None, false);
                return;
            }
            sets.push(RouteOp::Add(spec));
        } else {
            sets.push(RouteOp::Replace(spec));
        }
    }

    fn link_index(&self, want: &DesiredRoute) -> Option<u32> {
        want.needs_iface()
            .and_then(|n| self.link_names.get(n))
            .copied()
    }

    fn resolve(
        &self,
        dst: IpNet,
        metric: u32,
        want: &DesiredRoute,
    ) -> Result<RouteSpec, RouteError> {
        let link = |name: &str| -> Result<u32, RouteError> {
            let l = self
                .link(name)
                .ok_or_else(|| RouteError::InterfaceMissing {
                    dst,
                    iface: name.to_string(),
                })?;
            if !l.up {
                return Err(RouteError::InterfaceDown {
                    dst,
                    iface: name.to_string(),
                });
            }
            Ok(l.index)
        };
        let kind = match want {
            DesiredRoute::Blackhole => SpecKind::Blackhole,
            DesiredRoute::Workload { iface, .. } => SpecKind::Dev { oif: link(iface)? },
            DesiredRoute::Via { next_hops } => {
                let mut hops = Vec::with_capacity(next_hops.len());
                for h in next_hops {
                    hops.push(SpecHop {
                        gateway: h.gateway,
                        oif: h.iface.as_deref().map(link).transpose()?,
                        onlink: h.onlink,
                    });
                }
                hops.sort();
                SpecKind::Via { hops }
            }
        };
        Ok(RouteSpec {
            key: RouteKey { dst, metric },
            kind,
        })
    }

    fn set_pending(&mut self, dst: IpNet, error: RouteError, now: Option<Instant>, failed: bool) {
        let p = self.pending.entry(dst).or_insert(PendingRoute {
            dst,
            error: error.clone(),
            attempts: 0,
            retry_at: None,
        });
        p.error = error;
        if failed {
            p.attempts += 1;
            let exp = p.attempts.saturating_sub(1).min(20);
            let delay = self
                .cfg
                .retry_min
                .saturating_mul(1 << exp)
                .min(self.cfg.retry_max);
            p.retry_at = now.map(|n| n + delay);
        } else {
            p.retry_at = None;
        }
    }

    /// Take the kernel's answer to an operation from the last [`Reconciler::plan`].
    pub fn apply_result(
        &mut self,
        op: &RouteOp,
        res: Result<(), OpError>,
        now: Instant,
    ) -> Followup {
        let dst = op.dst();
        let err = match res {
            Ok(()) => {
                match op {
                    RouteOp::Add(s) | RouteOp::Replace(s) => {
                        self.ours
                            .insert(s.key, s.to_kernel(self.cfg.protocol, self.cfg.table));
                        self.pending.remove(&dst);
                    }
                    RouteOp::Delete(k) => {
                        self.ours.remove(&k.key);
                        if !self.desired.contains_key(&dst) {
                            self.pending.remove(&dst);
                        }
                    }
                }
                return Followup::None;
            }
            Err(e) => e,
        };
        if let RouteOp::Delete(k) = op {
            if err.errno == ESRCH || err.errno == ENXIO {
                self.ours.remove(&k.key);
                if !self.desired.contains_key(&dst) {
                    self.pending.remove(&dst);
                }
                return Followup::None;
            }
        }
        let mut follow = Followup::None;
        let error = match (op, err.errno) {
            (RouteOp::Add(s), EEXIST) => match self.foreign.get(&s.key) {
                Some(p) => RouteError::Foreign { dst, protocol: *p },
                None => {
                    follow = Followup::Dump;
                    RouteError::Foreign { dst, protocol: 0 }
                }
            },
            (_, ENODEV) | (_, ENETDOWN) => {
                let iface = self
                    .desired
                    .get(&dst)
                    .and_then(|d| d.needs_iface())
                    .unwrap_or("?")
                    .to_string();
                if err.errno == ENODEV {
                    RouteError::InterfaceMissing { dst, iface }
                } else {
                    RouteError::InterfaceDown { dst, iface }
                }
            }
            _ => RouteError::Kernel {
                dst,
                op: op.verb(),
                errno: err.errno,
                message: err.message,
            },
        };
        self.set_pending(dst, error, Some(now), true);
        follow
    }
}

#[cfg(test)]
mod tests;
