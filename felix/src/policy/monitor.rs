//! Drift detection: changes to our table made by anyone but us, as they happen.
//!
//! A reader thread holds a netlink socket subscribed to the kernel's nf_tables notification group
//! (see [`netlink::parse_notifications`](super::netlink::parse_notifications)): every change in the
//! namespace arrives as a message naming its table, and every transaction ends with a generation
//! notice naming the committing thread. [`Tracker`] (pure, unit-tested) folds them: a transaction
//! that touched `inet <table>` and was committed by a PID/TID that is not one of our own runs
//! ([`OwnPids`]: our `nft -f` children and our element-batch thread) is drift. `nft flush table`,
//! `delete table`, and hand edits of any rule, set element or chain are all transactions.
//!
//! This replaced an `nft monitor` child (same events as text): formatting each event made nft use
//! more CPU than our whole full apply, and every full apply paid for it on a 2-core node. If the
//! socket overflows (`ENOBUFS`: events lost) the monitor reports [`MonitorEvent::Lost`] and the
//! owner re-applies, since a foreign change may be among the lost ones.

use std::thread::JoinHandle;

use rtnetlink::sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, TokioSocket};

use super::driver::OwnPids;
use super::error::PolicyError;
use super::netlink::{parse_notifications, Notification, NFNLGRP_NFTABLES};
use super::PolicyCfg;

const NFPROTO_INET: u8 = 1;
const ENOBUFS: i32 = 105;
/// Receive buffer. A full apply of a big table is a burst of tens of thousands of notifications;
/// the reader drains as they come, but on a busy node it can be starved for a while, and the
/// default cap (`net.core.rmem_max`, often 4 MB or less) then overflows. `SO_RCVBUFFORCE`
/// (CAP_NET_ADMIN, which we need anyway) lifts the cap; memory is used only while full.
const RCVBUF: usize = 64 << 20;

/// What the monitor reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorEvent {
    /// Someone else changed our table.
    Drift {
        /// PID and command of the committer (as the kernel names it).
        by: String,
        /// Number of changes to our table in that transaction.
        changes: usize,
    },
    /// Notifications were lost (socket overflow); a foreign change may be among them.
    Lost,
    /// The reader stopped (socket error); the owner restarts it.
    Exited(String),
}

/// Folds notifications into drift decisions.
#[derive(Debug)]
pub struct Tracker {
    table: String,
    own: OwnPids,
    touched: usize,
}

impl Tracker {
    /// A tracker for `inet <table>`.
    pub fn new(table: &str, own: OwnPids) -> Tracker {
        Tracker {
            table: table.to_string(),
            own,
            touched: 0,
        }
    }

    /// Feed one notification; returns a drift event when a foreign transaction that touched our
    /// table completes.
    pub fn event(&mut self, n: &Notification) -> Option<MonitorEvent> {
        match n {
            Notification::Object { family, table, .. } => {
                if *family == NFPROTO_INET && *table == self.table {
                    self.touched += 1;
                }
                None
            }
            Notification::Generation { pid, comm } => {
                let changes = std::mem::take(&mut self.touched);
                // Without a PID (old kernels) a change cannot be attributed; calling it
                // drift would make every apply of ours trigger another. Leave it to the probe.
                let pid = (*pid)?;
                (changes > 0 && !self.own.take(pid)).then(|| MonitorEvent::Drift {
                    by: format!("{pid} ({comm})"),
                    changes,
                })
            }
        }
    }
}

/// The reader thread; stopped and joined on drop.
#[derive(Debug)]
pub struct EventMonitor {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EventMonitor {
    /// Subscribe in the calling thread's network namespace (the reader thread inherits it) and
    /// start reading; `on_event` runs on the reader thread.
    pub fn spawn(
        cfg: &PolicyCfg,
        own: OwnPids,
        on_event: impl Fn(MonitorEvent) + Send + 'static,
    ) -> Result<EventMonitor, PolicyError> {
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let mut tracker = Tracker::new(&cfg.table, own);
        let spawn_err = |source| PolicyError::Spawn {
            cmd: "nf_tables event reader".into(),
            source,
        };
        let thread = std::thread::Builder::new()
            .name("felix-policy-events".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                rt.block_on(async move {
                    let sock = match subscribe() {
                        Ok(s) => s,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    let _ = ready_tx.send(Ok(()));
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => return,
                            r = sock.recv_from_full() => match r {
                                Ok((data, _)) => {
                                    for n in parse_notifications(&data) {
                                        if let Some(ev) = tracker.event(&n) {
                                            on_event(ev);
                                        }
                                    }
                                }
                                Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                                    tracker = Tracker::new(&tracker.table, tracker.own.clone());
                                    on_event(MonitorEvent::Lost);
                                }
                                Err(e) => return on_event(MonitorEvent::Exited(e.to_string())),
                            },
                        }
                    }
                });
            })
            .map_err(spawn_err)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(EventMonitor {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(spawn_err(e))
            }
            Err(_) => {
                let _ = thread.join();
                Err(spawn_err(std::io::Error::other("event reader died")))
            }
        }
    }

    /// Whether the reader still runs.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

fn subscribe() -> std::io::Result<TokioSocket> {
    let mut sock = TokioSocket::new(NETLINK_NETFILTER)?;
    let s = sock.socket_mut();
    s.bind_auto()?;
    // Best effort: a smaller buffer only makes overflow (reported as Lost) likelier.
    if nix::sys::socket::setsockopt(&*s, nix::sys::socket::sockopt::RcvBufForce, &RCVBUF).is_err() {
        let _ = s.set_rx_buf_sz(RCVBUF);
    }
    s.add_membership(NFNLGRP_NFTABLES)?;
    Ok(sock)
}

impl Drop for EventMonitor {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(table: &str) -> Notification {
        Notification::Object {
            msg: 8,
            family: NFPROTO_INET,
            table: table.into(),
        }
    }

    fn gen(pid: u32, comm: &str) -> Notification {
        Notification::Generation {
            pid: Some(pid),
            comm: comm.into(),
        }
    }

    #[test]
    fn foreign_transactions_on_our_table_are_drift() {
        let own = OwnPids::default();
        let mut t = Tracker::new("calico-rs", own.clone());
        // Someone flushes our table.
        assert_eq!(t.event(&obj("calico-rs")), None);
        assert_eq!(t.event(&obj("calico-rs")), None);
        assert_eq!(
            t.event(&gen(18876, "nft")),
            Some(MonitorEvent::Drift {
                by: "18876 (nft)".into(),
                changes: 2
            })
        );
        // Another table's change is not ours to care about.
        t.event(&obj("kube-proxy"));
        assert_eq!(t.event(&gen(77, "kube-proxy")), None);
        // Same name in another family is another table.
        t.event(&Notification::Object {
            msg: 0,
            family: 2,
            table: "calico-rs".into(),
        });
        assert_eq!(t.event(&gen(78, "nft")), None);
        // Our own apply.
        own.push(4242);
        t.event(&obj("calico-rs"));
        assert_eq!(t.event(&gen(4242, "nft")), None);
        // The same pid again is not ours any more (each run commits once).
        t.event(&obj("calico-rs"));
        assert!(t.event(&gen(4242, "nft")).is_some());
    }
}
