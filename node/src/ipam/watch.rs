//! IPAM changes as a watch, like the datastore: the daemon is told when a block is claimed,
//! released or its allocations change, instead of re-reading every block file on a timer inside
//! its async loop.
//!
//! ```text
//!  inotify on DIR/ipam/blocks (notify thread) --()--> worker thread: debounce, Ipam::usage,
//!                                                     publish if changed --> watch::Sender
//! ```
//! Block files are replaced by rename, so every change is a create or move event in that one
//! directory. A full read also runs every `resync` in case inotify lost events. The reads
//! happen on the worker thread, never on the daemon's runtime.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;

use super::{BlockUsage, Ipam, IpamError};

/// Debounce of a burst of block writes.
const DEBOUNCE: Duration = Duration::from_millis(30);

/// Every IPAM block with its use, as last read; `errors` are corrupt files and read failures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpamView {
    pub blocks: Vec<BlockUsage>,
    pub errors: Vec<String>,
}

/// A watched IPAM directory; dropping it stops the watch.
pub struct IpamWatch {
    rx: watch::Receiver<Arc<IpamView>>,
    _watcher: notify::RecommendedWatcher,
}

fn read(ipam: &Ipam) -> IpamView {
    match ipam.usage() {
        Ok(u) => IpamView {
            blocks: u.blocks,
            errors: u.corrupt.iter().map(|e| e.to_string()).collect(),
        },
        Err(e) => IpamView {
            blocks: Vec::new(),
            errors: vec![e.to_string()],
        },
    }
}

impl IpamWatch {
    /// Reads the IPAM state of datastore `dir` once, then follows it.
    pub fn start(dir: &Path, resync: Duration) -> Result<IpamWatch, IpamError> {
        let ipam = Ipam::new(dir)?;
        let blocks = ipam.store().blocks_dir().to_path_buf();
        let (ev_tx, ev_rx) = mpsc::channel::<()>();
        let watch_err = |e: notify::Error| IpamError::Io {
            path: blocks.clone(),
            source: std::io::Error::other(e),
        };
        let mut watcher =
            notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                let _ = ev_tx.send(());
            })
            .map_err(watch_err)?;
        watcher
            .watch(&blocks, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        // Watch first, then read: a change in between is never missed.
        let (tx, rx) = watch::channel(Arc::new(read(&ipam)));
        std::thread::Builder::new()
            .name("ipam-watch".into())
            .spawn(move || worker(ipam, ev_rx, tx, resync))
            .map_err(|source| IpamError::Io {
                path: blocks.clone(),
                source,
            })?;
        Ok(IpamWatch {
            rx,
            _watcher: watcher,
        })
    }

    /// The latest view and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<IpamView>> {
        self.rx.clone()
    }
}

fn worker(ipam: Ipam, rx: mpsc::Receiver<()>, tx: watch::Sender<Arc<IpamView>>, resync: Duration) {
    let mut next_resync = Instant::now() + resync;
    loop {
        let wait = next_resync.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(()) => {
                // Coalesce the burst (a claim writes a temp file, renames it, and so on).
                std::thread::sleep(DEBOUNCE);
                while rx.try_recv().is_ok() {}
            }
            Err(RecvTimeoutError::Timeout) => next_resync = Instant::now() + resync,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let view = read(&ipam);
        let changed = tx.send_if_modified(|cur| {
            if **cur != view {
                *cur = Arc::new(view);
                true
            } else {
                false
            }
        });
        if changed {
            tracing::debug!("IPAM blocks changed");
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{ObjectMeta, Selector};
    use crate::ipam::{IpFamily, IpPool};

    #[tokio::test]
    async fn a_claim_by_another_process_is_seen_within_a_second() {
        let d = tempfile::tempdir().unwrap();
        let w = IpamWatch::start(d.path(), Duration::from_secs(60)).unwrap();
        let mut rx = w.subscribe();
        assert!(rx.borrow_and_update().blocks.is_empty());
        let pool = IpPool {
            metadata: ObjectMeta {
                name: "p".into(),
                ..Default::default()
            },
            cidr: "10.0.0.0/24".parse().unwrap(),
            block_size: 26,
            node_selector: Selector::All,
            disabled: false,
            ipip_mode: crate::datastore::EncapMode::Never,
            vxlan_mode: crate::datastore::EncapMode::Never,
            nat_outgoing: false,
            disable_bgp_export: false,
        };
        // Another Ipam on the same directory stands for another node's process.
        Ipam::new(d.path())
            .unwrap()
            .allocate("n1", "h", IpFamily::V4, &[pool])
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .expect("no change within 1 s")
            .unwrap();
        let v = rx.borrow_and_update().clone();
        assert_eq!(v.blocks.len(), 1);
        assert_eq!(v.blocks[0].affinity.as_deref(), Some("n1"));
        assert_eq!(v.blocks[0].used, 1);
    }
}
