//! Reconciler scenarios against a simulated kernel table (same EEXIST / ESRCH / ENODEV rules).

use super::*;
use crate::routes::{desired_routes, NextHop, RemoteBlock, RoutesInput, WorkloadEndpoint};

const PROTO: u8 = 80;

fn cfg() -> ReconcileCfg {
    ReconcileCfg {
        protocol: PROTO,
        table: 254,
        metric: 0,
        retry_min: Duration::from_millis(100),
        retry_max: Duration::from_secs(2),
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn link(index: u32, name: &str, up: bool) -> LinkInfo {
    LinkInfo {
        index,
        name: name.into(),
        up,
        mac: vec![0xee; 6],
    }
}

fn input() -> RoutesInput {
    RoutesInput {
        workloads: vec![
            WorkloadEndpoint {
                id: "ns/a".into(),
                iface: "calia".into(),
                nets: vec![net("10.65.0.1/32"), net("fd10::1/128")],
            },
            WorkloadEndpoint {
                id: "ns/b".into(),
                iface: "calib".into(),
                nets: vec![net("10.65.0.2/32")],
            },
        ],
        local_blocks: vec![net("10.65.0.0/26"), net("fd10::/122")],
        remote_blocks: vec![RemoteBlock {
            cidr: net("10.65.1.0/26"),
            next_hops: vec![
                NextHop::via("10.99.0.3".parse().unwrap()),
                NextHop::via("10.99.0.2".parse().unwrap()),
            ],
        }],
    }
}

/// A kernel table that answers like Linux does for the operations we send.
#[derive(Default)]
struct FakeKernel {
    routes: BTreeMap<RouteKey, KernelRoute>,
    /// ifindexes that exist.
    links: BTreeSet<u32>,
    /// errno to return for adds/replaces of these prefixes.
    fail: HashMap<IpNet, i32>,
}

impl FakeKernel {
    fn exec(&mut self, op: &RouteOp) -> Result<(), OpError> {
        let e = |errno| {
            Err(OpError {
                errno,
                message: format!("errno {errno}"),
            })
        };
        match op {
            RouteOp::Add(s) | RouteOp::Replace(s) => {
                if let Some(errno) = self.fail.get(&s.key.dst) {
                    return e(*errno);
                }
                if let SpecKind::Dev { oif } = s.kind {
                    if !self.links.contains(&oif) {
                        return e(ENODEV);
                    }
                }
                if matches!(op, RouteOp::Add(_)) && self.routes.contains_key(&s.key) {
                    return e(EEXIST);
                }
                self.routes.insert(s.key, s.to_kernel(PROTO, 254));
                Ok(())
            }
            RouteOp::Delete(k) => match self.routes.get(&k.key) {
                Some(r) if r.protocol == k.protocol => {
                    self.routes.remove(&k.key);
                    Ok(())
                }
                _ => e(ESRCH),
            },
        }
    }

    fn ours(&self) -> BTreeMap<RouteKey, KernelRoute> {
        self.routes
            .iter()
            .filter(|(_, r)| r.protocol == PROTO)
            .map(|(k, r)| (*k, r.clone()))
            .collect()
    }
}

/// Plan and apply until nothing is left to do; returns the number of operations.
fn converge(rec: &mut Reconciler, k: &mut FakeKernel, now: Instant) -> usize {
    let mut n = 0;
    for _ in 0..10 {
        let ops = rec.plan(now);
        if ops.is_empty() {
            return n;
        }
        for op in &ops {
            let r = k.exec(op);
            if rec.apply_result(op, r, now) == Followup::Dump {
                rec.replace_kernel_routes(k.routes.values().cloned());
            }
        }
        n += ops.len();
    }
    panic!("no convergence");
}

fn started(links: &[LinkInfo]) -> (Reconciler, FakeKernel) {
    let mut rec = Reconciler::new(cfg());
    rec.replace_links(links.iter().cloned());
    let k = FakeKernel {
        links: links.iter().map(|l| l.index).collect(),
        ..Default::default()
    };
    (rec, k)
}

#[test]
fn programs_everything_then_is_idempotent() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    rec.set_desired(desired_routes(&input()));
    assert_eq!(converge(&mut rec, &mut k, now), 6);
    assert_eq!(k.routes.len(), 6);
    assert_eq!(rec.ours(), &k.ours());
    assert_eq!(rec.pending().count(), 0);
    // Same input again, and a full dump of the same kernel: nothing to do (run twice).
    rec.set_desired(desired_routes(&input()));
    assert!(rec.plan(now).is_empty());
    rec.replace_kernel_routes(k.routes.values().cloned());
    assert!(rec.plan(now).is_empty());
    let pod = &k.routes[&RouteKey {
        dst: net("10.65.0.1/32"),
        metric: 0,
    }];
    assert_eq!(pod.kind, KernelKind::Dev { oif: 5 });
    assert_eq!(pod.scope, SCOPE_LINK);
    let v6 = &k.routes[&RouteKey {
        dst: net("fd10::1/128"),
        metric: 1024,
    }];
    assert_eq!(v6.kind, KernelKind::Dev { oif: 5 });
    let ecmp = &k.routes[&RouteKey {
        dst: net("10.65.1.0/26"),
        metric: 0,
    }];
    let KernelKind::Via { hops } = &ecmp.kind else {
        panic!()
    };
    assert_eq!(hops.len(), 2);
    assert!(hops[0].gateway < hops[1].gateway);
}

#[test]
fn restart_removes_stale_keeps_wanted_without_touching_them() {
    let now = Instant::now();
    let links = [link(5, "calia", true), link(6, "calib", true)];
    let (mut rec, mut k) = started(&links);
    rec.set_desired(desired_routes(&input()));
    converge(&mut rec, &mut k, now);

    // New process: pod b is gone, a new remote block appeared.
    let mut next = input();
    next.workloads.pop();
    next.remote_blocks.push(RemoteBlock {
        cidr: net("fd10::40/122"),
        next_hops: vec![NextHop::via("fd00::2".parse().unwrap())],
    });
    let mut rec2 = Reconciler::new(cfg());
    rec2.replace_links(links.iter().cloned());
    rec2.replace_kernel_routes(k.routes.values().cloned());
    rec2.set_desired(desired_routes(&next));
    let ops = rec2.plan(now);
    let mut verbs: Vec<(&str, String)> = ops
        .iter()
        .map(|o| (o.verb(), o.dst().to_string()))
        .collect();
    verbs.sort();
    assert_eq!(
        verbs,
        [
            ("add", "fd10::40/122".to_string()),
            ("delete", "10.65.0.2/32".to_string())
        ]
    );
    assert_eq!(ops[0].verb(), "delete", "deletes go first");
}

#[test]
fn foreign_routes_are_never_touched() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    let key = RouteKey {
        dst: net("10.65.0.2/32"),
        metric: 0,
    };
    let foreign = KernelRoute {
        key,
        table: 254,
        protocol: 4,
        tos: 0,
        scope: SCOPE_LINK,
        kind: KernelKind::Dev { oif: 9 },
    };
    let unrelated = KernelRoute {
        key: RouteKey {
            dst: net("192.168.0.0/16"),
            metric: 0,
        },
        ..foreign.clone()
    };
    k.routes.insert(key, foreign.clone());
    k.routes.insert(unrelated.key, unrelated.clone());
    rec.replace_kernel_routes(k.routes.values().cloned());
    rec.set_desired(desired_routes(&input()));
    converge(&mut rec, &mut k, now);
    assert_eq!(k.routes[&key], foreign, "the static route stays");
    assert_eq!(k.routes[&unrelated.key], unrelated);
    let p: Vec<_> = rec.pending().collect();
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].error,
        RouteError::Foreign {
            dst: key.dst,
            protocol: 4
        }
    );
    assert!(p[0].error.to_string().contains("protocol 4"));

    // Its owner removes it: ours goes in.
    k.routes.remove(&key);
    rec.route_removed(&foreign);
    converge(&mut rec, &mut k, now);
    assert_eq!(k.routes[&key].protocol, PROTO);
    assert_eq!(rec.pending().count(), 0);
}

#[test]
fn unknown_foreign_route_gives_eexist_and_asks_for_a_dump() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    let key = RouteKey {
        dst: net("10.65.0.0/26"),
        metric: 0,
    };
    k.routes.insert(
        key,
        KernelRoute {
            key,
            table: 254,
            protocol: 12,
            tos: 0,
            scope: 0,
            kind: KernelKind::Other { rtype: 7 },
        },
    );
    rec.set_desired(desired_routes(&input()));
    let ops = rec.plan(now);
    let add = ops.iter().find(|o| o.dst() == key.dst).unwrap();
    let res = k.exec(add);
    assert_eq!(rec.apply_result(add, res, now), Followup::Dump);
    rec.replace_kernel_routes(k.routes.values().cloned());
    converge(&mut rec, &mut k, now + Duration::from_secs(5));
    let p = rec.pending().next().unwrap();
    assert_eq!(
        p.error,
        RouteError::Foreign {
            dst: key.dst,
            protocol: 12
        }
    );
}

#[test]
fn tampered_route_is_restored_and_changed_one_replaced() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    rec.set_desired(desired_routes(&input()));
    converge(&mut rec, &mut k, now);
    // Someone deletes a pod route: the event makes it dirty and it is added back.
    let key = RouteKey {
        dst: net("10.65.0.1/32"),
        metric: 0,
    };
    let gone = k.routes.remove(&key).unwrap();
    rec.route_removed(&gone);
    assert_eq!(
        rec.plan(now),
        vec![RouteOp::Add(RouteSpec {
            key,
            kind: SpecKind::Dev { oif: 5 }
        })]
    );
    // Someone points our route elsewhere (keeping our protocol): replaced.
    let mut bent = gone.clone();
    bent.kind = KernelKind::Dev { oif: 6 };
    k.routes.insert(key, bent.clone());
    rec.route_added(bent);
    let ops = rec.plan(now);
    assert_eq!(
        ops,
        vec![RouteOp::Replace(RouteSpec {
            key,
            kind: SpecKind::Dev { oif: 5 }
        })]
    );
}

#[test]
fn missing_interface_waits_then_route_follows_the_link() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(6, "calib", true)]);
    rec.set_desired(desired_routes(&input()));
    converge(&mut rec, &mut k, now);
    let waits: Vec<_> = rec.pending().map(|p| p.error.clone()).collect();
    assert_eq!(waits.len(), 2, "two addresses of pod a");
    assert!(matches!(&waits[0], RouteError::InterfaceMissing { iface, .. } if iface == "calia"));
    assert!(rec.next_retry().is_none(), "waiting needs no timer");

    // The link appears, down: still waiting. Then up: both routes at once.
    assert_eq!(rec.link_changed(link(7, "calia", false)), Followup::None);
    k.links.insert(7);
    assert!(rec.plan(now).is_empty());
    assert!(matches!(
        rec.pending().next().unwrap().error,
        RouteError::InterfaceDown { .. }
    ));
    let _ = rec.link_changed(link(7, "calia", true));
    let ops = rec.plan(now);
    assert_eq!(ops.len(), 2);
    assert!(ops.iter().all(|o| matches!(
        o,
        RouteOp::Add(RouteSpec {
            kind: SpecKind::Dev { oif: 7 },
            ..
        })
    )));
}

#[test]
fn link_gone_drops_bookkeeping_and_readds_on_return() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    rec.set_desired(desired_routes(&input()));
    converge(&mut rec, &mut k, now);
    // calia deleted: the kernel drops its routes silently (IPv4).
    k.routes.retain(|_, r| r.kind != KernelKind::Dev { oif: 5 });
    k.links.remove(&5);
    rec.link_removed(5);
    assert_eq!(rec.ours(), &k.ours());
    assert!(rec.plan(now).is_empty());
    assert_eq!(rec.pending().count(), 2);
    // Recreated with another index.
    k.links.insert(8);
    let _ = rec.link_changed(link(8, "calia", true));
    converge(&mut rec, &mut k, now);
    assert_eq!(rec.pending().count(), 0);
    assert_eq!(k.routes.len(), 6);
}

#[test]
fn link_down_asks_for_a_dump() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    rec.set_desired(desired_routes(&input()));
    converge(&mut rec, &mut k, now);
    assert_eq!(rec.link_changed(link(5, "calia", false)), Followup::Dump);
    assert_eq!(rec.ours().len(), 4);
}

#[test]
fn failures_back_off_exponentially_without_blocking_others() {
    let t0 = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    let bad = net("10.65.1.0/26");
    k.fail.insert(bad, 101); // ENETUNREACH
    rec.set_desired(desired_routes(&input()));
    converge(&mut rec, &mut k, t0);
    assert_eq!(k.routes.len(), 5, "every other route is in");
    let p = rec.pending().next().unwrap().clone();
    assert_eq!(p.attempts, 1);
    assert!(matches!(
        p.error,
        RouteError::Kernel {
            errno: 101,
            op: "add",
            ..
        }
    ));
    assert!(p.error.to_string().contains("10.65.1.0/26"));
    assert_eq!(rec.next_retry(), Some(t0 + Duration::from_millis(100)));
    assert!(rec.plan(t0 + Duration::from_millis(99)).is_empty());
    // Retries at 100 ms, then 200 ms later, then 400 ms later...
    let mut t = t0;
    for (attempt, gap) in [
        (2, 100),
        (3, 200),
        (4, 400),
        (5, 800),
        (6, 1600),
        (7, 2000),
        (8, 2000),
    ] {
        t += Duration::from_millis(gap);
        let ops = rec.plan(t);
        assert_eq!(ops.len(), 1, "attempt {attempt}");
        let r = k.exec(&ops[0]);
        let _ = rec.apply_result(&ops[0], r, t);
        assert_eq!(rec.pending().next().unwrap().attempts, attempt);
    }
    // The next hop becomes reachable; an address event retries at once.
    k.fail.clear();
    rec.addresses_changed(t);
    converge(&mut rec, &mut k, t);
    assert_eq!(rec.pending().count(), 0);
    assert_eq!(k.routes.len(), 6);
}

#[test]
fn stale_metric_and_delete_of_vanished_route() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    // A leftover of ours with another metric for a wanted prefix, and one for an unwanted prefix
    // that is already gone by the time we delete it.
    let odd = RouteKey {
        dst: net("10.65.0.0/26"),
        metric: 7,
    };
    let stale = KernelRoute {
        key: odd,
        table: 254,
        protocol: PROTO,
        tos: 0,
        scope: 0,
        kind: KernelKind::Blackhole,
    };
    k.routes.insert(odd, stale.clone());
    let ghost = KernelRoute {
        key: RouteKey {
            dst: net("10.77.0.0/26"),
            metric: 0,
        },
        ..stale.clone()
    };
    rec.replace_kernel_routes([stale, ghost]);
    rec.set_desired(desired_routes(&input()));
    converge(&mut rec, &mut k, now);
    assert!(!k.routes.contains_key(&odd));
    assert_eq!(rec.ours(), &k.ours());
    assert_eq!(rec.pending().count(), 0);
}

#[test]
fn final_state_depends_only_on_last_input() {
    let now = Instant::now();
    let links = [
        link(5, "calia", true),
        link(6, "calib", true),
        link(7, "calic", true),
    ];
    let mut other = input();
    other.workloads[1].iface = "calic".into();
    other.local_blocks.clear();
    other.remote_blocks[0].next_hops.truncate(1);

    let (mut r1, mut k1) = started(&links);
    r1.set_desired(desired_routes(&input()));
    converge(&mut r1, &mut k1, now);
    r1.set_desired(desired_routes(&other));
    converge(&mut r1, &mut k1, now);

    let (mut r2, mut k2) = started(&links);
    r2.set_desired(desired_routes(&other));
    converge(&mut r2, &mut k2, now);
    assert_eq!(k1.routes, k2.routes);
    assert_eq!(r1.ours(), r2.ours());
}

#[test]
fn gateway_routes_match_with_or_without_pinned_interface() {
    let spec = RouteSpec {
        key: RouteKey {
            dst: net("10.65.1.0/26"),
            metric: 0,
        },
        kind: SpecKind::Via {
            hops: vec![SpecHop {
                gateway: "10.99.0.2".parse().unwrap(),
                oif: None,
                onlink: false,
            }],
        },
    };
    let mut k = spec.to_kernel(PROTO, 254);
    if let KernelKind::Via { hops } = &mut k.kind {
        hops[0].oif = 3; // the kernel fills in the interface it resolved
    }
    assert!(spec.matches(&k));
    let mut pinned = spec.clone();
    if let SpecKind::Via { hops } = &mut pinned.kind {
        hops[0].oif = Some(4);
    }
    assert!(!pinned.matches(&k));
    let mut onlink = spec.clone();
    if let SpecKind::Via { hops } = &mut onlink.kind {
        hops[0].onlink = true;
    }
    assert!(!onlink.matches(&k));
}

#[test]
fn one_changed_pod_plans_one_operation() {
    let now = Instant::now();
    let (mut rec, mut k) = started(&[link(5, "calia", true), link(6, "calib", true)]);
    let mut i = input();
    rec.set_desired(desired_routes(&i));
    converge(&mut rec, &mut k, now);
    i.workloads.push(WorkloadEndpoint {
        id: "ns/c".into(),
        iface: "calib".into(),
        nets: vec![net("10.65.0.3/32")],
    });
    rec.set_desired(desired_routes(&i));
    let ops = rec.plan(now);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].dst(), net("10.65.0.3/32"));
    // Removing it again: one delete, the index for calib still holds pod b.
    i.workloads.pop();
    for op in &ops {
        let r = k.exec(op);
        let _ = rec.apply_result(op, r, now);
    }
    rec.set_desired(desired_routes(&i));
    let ops = rec.plan(now);
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].verb(), "delete");
    for op in &ops {
        let r = k.exec(op);
        let _ = rec.apply_result(op, r, now);
    }
    // calib flaps: pod b's route is looked at again (it is still there, so nothing to do).
    let _ = rec.link_changed(link(6, "calib", true));
    assert!(rec.plan(now).is_empty());
}
