//! The daemon's read side of the Kubernetes IPAM: a `kube::runtime::watcher` on IPAMBlocks
//! giving the same [`IpamView`] as the file watch, so the daemon can take either.
//!
//! ```text
//!  watcher(IPAMBlock) --Event--> BlockSet (pure: last good block per object) --view-->
//!                                  watch::Sender<Arc<IpamView>> (only when it changed)
//! ```
//! Rules, the datastore's: an object that stops parsing keeps its last good block and is
//! reported in `errors` until it parses again or is deleted; a relist (`Init` .. `InitDone`)
//! is applied as a diff when it is complete, so objects missing from it are deleted and an
//! unchanged relist publishes nothing; a watch error is reported until the next event. A block
//! marked `deleted: true` (half way through Calico's delete) counts as gone.
//! The first view is published after the first complete list.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::watch;

use super::model::{self, IpamBlockSpec, POOL_ANNOTATION};
use crate::ipam::core::usage_of;
use crate::ipam::watch::IpamView;
use crate::ipam::{Block, IpamError};

/// What one IPAMBlock object says: a block, gone (marked deleted), or why it cannot be read.
type Read = Result<Option<Block>, String>;

fn read(obj: &DynamicObject) -> (String, Read) {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let pool = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POOL_ANNOTATION));
    let spec = obj
        .data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let read = match serde_json::from_value::<IpamBlockSpec>(spec) {
        Err(e) => Err(format!("spec: {e}")),
        Ok(spec) => match model::parse_block(&name, &spec, pool.map(String::as_str)) {
            Ok(_) if spec.deleted => Ok(None),
            Ok(b) => Ok(Some(b)),
            Err(bad) => Err(bad.message),
        },
    };
    (name, read)
}

/// Every IPAMBlock as last read well, by object name, and what is wrong now.
#[derive(Debug, Default)]
pub struct BlockSet {
    good: BTreeMap<String, Block>,
    errors: BTreeMap<String, String>,
    /// A relist in progress.
    relist: Option<BTreeMap<String, Read>>,
    watch_error: Option<String>,
}

impl BlockSet {
    fn set(&mut self, name: String, read: Read) {
        match read {
            Ok(Some(b)) => {
                self.good.insert(name.clone(), b);
                self.errors.remove(&name);
            }
            Ok(None) => self.remove(&name),
            Err(m) => {
                self.errors.insert(name, m);
            }
        }
    }

    fn remove(&mut self, name: &str) {
        self.good.remove(name);
        self.errors.remove(name);
    }

    pub fn apply(&mut self, ev: watcher::Event<DynamicObject>) {
        self.watch_error = None;
        match ev {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => {
                let (name, r) = read(&o);
                self.relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, r);
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .good
                    .keys()
                    .chain(self.errors.keys())
                    .filter(|n| !listed.contains_key(*n))
                    .cloned()
                    .collect();
                for n in gone {
                    self.remove(&n);
                }
                for (name, r) in listed {
                    self.set(name, r);
                }
            }
            watcher::Event::Apply(o) => {
                let (name, r) = read(&o);
                self.set(name, r);
            }
            watcher::Event::Delete(o) => {
                self.remove(o.metadata.name.as_deref().unwrap_or_default());
            }
        }
    }

    pub fn watch_failed(&mut self, e: &str) {
        self.watch_error = Some(format!("IPAMBlock watch: {e}"));
    }

    /// Blocks in CIDR order; errors by object name, the watch's last.
    pub fn view(&self) -> IpamView {
        let mut blocks: Vec<_> = self.good.values().map(usage_of).collect();
        blocks.sort_by_key(|b| b.cidr);
        let mut errors: Vec<String> = self
            .errors
            .iter()
            .map(|(name, message)| {
                IpamError::CorruptObject {
                    name: name.clone(),
                    message: message.clone(),
                }
                .to_string()
            })
            .collect();
        errors.extend(self.watch_error.clone());
        IpamView { blocks, errors }
    }
}

/// A running watch of IPAMBlocks; dropping it stops the watch.
pub struct KddIpamWatch {
    rx: watch::Receiver<Arc<IpamView>>,
    task: tokio::task::AbortHandle,
}

impl Drop for KddIpamWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KddIpamWatch {
    /// Starts watching on the current runtime.
    pub fn start(client: Client) -> KddIpamWatch {
        let api: Api<DynamicObject> = Api::all_with(client, &model::ipam_blocks());
        let (tx, rx) = watch::channel(Arc::new(IpamView::default()));
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            let mut set = BlockSet::default();
            let mut listed = false;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        listed |= matches!(ev, watcher::Event::InitDone);
                        set.apply(ev);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "IPAMBlock watch failed");
                        set.watch_failed(&e.to_string());
                    }
                }
                if !listed || set.relist.is_some() {
                    continue;
                }
                let view = set.view();
                tx.send_if_modified(|cur| {
                    let changed = **cur != view;
                    if changed {
                        *cur = Arc::new(view);
                    }
                    changed
                });
                if tx.is_closed() {
                    return;
                }
            }
        })
        .abort_handle();
        KddIpamWatch { rx, task }
    }

    /// The latest view and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<IpamView>> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::kdd::model::block_spec;
    use kube::api::ObjectMeta;

    fn obj(cidr: &str, node: &str, used: usize) -> DynamicObject {
        let mut b = Block::new(cidr.parse().unwrap(), node, "p");
        for i in 0..used {
            let ip = b.next_free().unwrap();
            b.allocations.insert(ip, format!("h{i}"));
        }
        let spec = block_spec(&b, None, "t");
        DynamicObject {
            types: None,
            metadata: ObjectMeta {
                name: Some(Block::object_name(&b.cidr)),
                ..Default::default()
            },
            data: serde_json::json!({ "spec": spec }),
        }
    }

    fn summary(set: &BlockSet) -> (Vec<String>, usize) {
        let v = set.view();
        let blocks = v
            .blocks
            .iter()
            .map(|b| {
                format!(
                    "{} {} {}",
                    b.cidr,
                    b.affinity.as_deref().unwrap_or("-"),
                    b.used
                )
            })
            .collect();
        (blocks, v.errors.len())
    }

    #[test]
    fn last_good_kept_relists_diffed_deletes_applied() {
        let mut s = BlockSet::default();
        s.apply(watcher::Event::Init);
        s.apply(watcher::Event::InitApply(obj("10.0.0.0/26", "n1", 2)));
        s.apply(watcher::Event::InitApply(obj("10.0.0.64/26", "n2", 0)));
        s.apply(watcher::Event::InitDone);
        assert_eq!(
            summary(&s),
            (
                vec!["10.0.0.0/26 n1 2".into(), "10.0.0.64/26 n2 0".into()],
                0
            )
        );
        // An update that does not parse: the last good block stays, with an error.
        let mut bad = obj("10.0.0.0/26", "n1", 3);
        bad.data["spec"]["allocations"] = serde_json::json!([0]);
        s.apply(watcher::Event::Apply(bad));
        let v = s.view();
        assert_eq!(v.blocks[0].used, 2);
        assert_eq!(
            v.errors,
            [
                "IPAMBlock 10-0-0-0-26: spec.allocations: 1 entries for a block of 64 addresses; \
              skipped, its addresses stay taken"
            ]
        );
        s.apply(watcher::Event::Apply(obj("10.0.0.0/26", "n1", 3)));
        assert_eq!(summary(&s).1, 0);
        // A relist without .64 deletes it; a block marked deleted is gone.
        let mut marked = obj("10.0.0.128/26", "n3", 0);
        marked.data["spec"]["deleted"] = true.into();
        s.apply(watcher::Event::Init);
        s.apply(watcher::Event::InitApply(obj("10.0.0.0/26", "n1", 3)));
        s.apply(watcher::Event::InitApply(marked));
        assert_eq!(
            summary(&s).0.len(),
            2,
            "nothing changes until the relist is done"
        );
        s.apply(watcher::Event::InitDone);
        assert_eq!(summary(&s), (vec!["10.0.0.0/26 n1 3".into()], 0));
        s.watch_failed("connection refused");
        assert_eq!(s.view().errors, ["IPAMBlock watch: connection refused"]);
        s.apply(watcher::Event::Delete(obj("10.0.0.0/26", "n1", 3)));
        assert_eq!(summary(&s), (vec![], 0));
    }
}
