//! The Kubernetes datastore: kube-rs watchers on the API server, feeding the same [`Snapshot`]s
//! as the file datastore.
//!
//! ```text
//!  watcher(Namespace) ─┐
//!  watcher(Node) ──────┤
//!  watcher(Pod) ───────┤  (kind, Ev)            Held (pure: last good version of
//!  watcher(NetworkPolicy)┼──── mpsc ──> owner ──> every object, see [`held`]) ──> Snapshot
//!  watcher(BGP*/IPPool) ┤                task     ──watch::Sender──> the daemon
//!  Secret reader ───────┤  (BGP passwords)  ^
//!  /version probe ──────┘  (reachability)   '── what is queued: one snapshot
//! ```
//!
//! - Watchers are kube-runtime's (list, then watch with bookmarks). Any error (`410 Gone`, a
//!   lost connection) starts a fresh list after a backoff (see [`watch_kind`]), and the view is
//!   in sync again only once that list completes. A relist is diffed against what is held
//!   ([`held::Held::apply`]): only real changes produce a new snapshot.
//! - Losing the API server changes nothing that is held: the dataplane and BGP stay as they are,
//!   and only [`Snapshot::not_in_sync`] says so (the daemon reports itself not ready).
//! - The first snapshot is published once every kind has been listed completely; until then
//!   [`KubeDatastore::start`] waits, so the daemon never acts on a partial view.
//! - BGPPeer `password.secretKeyRef`: only the Secrets named by BGPPeers are read, in the
//!   daemon's own namespace (as Calico does), every [`SECRET_REFRESH`] and when the references
//!   change. A Secret or key that does not exist is reported and the peer stays down; a Secret
//!   that cannot be read because the API is unreachable keeps its last value.

pub mod held;
pub mod kinds;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{Datastore, DatastoreError, ResourceError, Snapshot};
use held::{Ev, Held};
use kinds::{Kind, WATCHED};

/// How often the referenced Secrets are read again.
pub const SECRET_REFRESH: Duration = Duration::from_secs(10);
/// How often the API server's reachability is checked.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between a failed watch and the next list.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Settings of the Kubernetes backend.
#[derive(Clone, Debug)]
pub struct KubeCfg {
    /// Where BGP password Secrets are read (the daemon's own namespace).
    pub namespace: String,
    /// A kubeconfig to use; `None`: `KUBECONFIG`, `~/.kube/config`, or the in-cluster service
    /// account, as kube-rs infers it.
    pub kubeconfig: Option<PathBuf>,
}

impl KubeCfg {
    /// The namespace from `POD_NAMESPACE` (the DaemonSet sets it), else the service account's,
    /// else `kube-system`.
    pub fn from_env() -> KubeCfg {
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "kube-system".into());
        KubeCfg {
            namespace,
            kubeconfig: None,
        }
    }
}

/// What the owner task is told.
enum Msg {
    Event(usize, Ev),
    WatchError(usize, String),
    Secrets(BTreeMap<(String, String), Result<String, String>>),
    Probe(Result<(), String>),
}

struct Shared {
    beat: Mutex<Instant>,
    refs: watch::Sender<Vec<(String, String)>>,
}

/// A running Kubernetes backend; dropping it stops the watchers.
pub struct KubeDatastore {
    tx: watch::Sender<Arc<Snapshot>>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for KubeDatastore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Builds a client from `cfg` (kubeconfig, or inferred).
pub async fn client(cfg: &KubeCfg) -> Result<Client, DatastoreError> {
    let err = |e: String| DatastoreError::Kube(e);
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| err(format!("kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| err(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| err(format!("no Kubernetes configuration: {e}")))?,
    };
    Client::try_from(config).map_err(|e| err(format!("Kubernetes client: {e}")))
}

/// Follows one kind. Any error ends the stream and a fresh watcher lists again after a backoff
/// (1 s doubling to [`MAX_BACKOFF`], reset by a complete list), so the kind counts as in sync
/// again only once a list has gone through: a watch that merely stopped failing proves nothing
/// (kube-runtime's own backoff would resume the watch silently, or sleep through the API's
/// return). The relist is diffed by [`Held`], so it changes nothing that did not change.
fn watch_kind(client: Client, i: usize, kind: Kind, tx: mpsc::UnboundedSender<Msg>) {
    let api: Api<DynamicObject> = Api::all_with(client, &kind.api_resource());
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                let msg = match ev {
                    Ok(ev) => {
                        let json = |o: DynamicObject| serde_json::to_value(o).unwrap_or_default();
                        Msg::Event(
                            i,
                            match ev {
                                watcher::Event::Init => Ev::Init,
                                watcher::Event::InitApply(o) => Ev::InitApply(json(o)),
                                watcher::Event::InitDone => {
                                    backoff = Duration::from_secs(1);
                                    Ev::InitDone
                                }
                                watcher::Event::Apply(o) => Ev::Apply(json(o)),
                                watcher::Event::Delete(o) => Ev::Delete(json(o)),
                            },
                        )
                    }
                    Err(e) => Msg::WatchError(i, e.to_string()),
                };
                let failed = matches!(msg, Msg::WatchError(..));
                if tx.send(msg).is_err() {
                    return;
                }
                if failed {
                    break;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// Reads the Secrets the BGPPeers name, when the names change and every [`SECRET_REFRESH`].
async fn read_secrets(
    client: Client,
    namespace: String,
    mut refs: watch::Receiver<Vec<(String, String)>>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let mut last: BTreeMap<(String, String), Result<String, String>> = BTreeMap::new();
    loop {
        let wanted = refs.borrow_and_update().clone();
        let mut now = BTreeMap::new();
        for (name, key) in wanted {
            let value = match api.get_opt(&name).await {
                Ok(None) => Err(format!("not found in namespace {namespace}")),
                Ok(Some(s)) => match s.data.as_ref().and_then(|d| d.get(&key)) {
                    None => Err(format!("Secret {namespace}/{name} has no key {key:?}")),
                    Some(v) => String::from_utf8(v.0.clone())
                        .map(|p| p.trim_end_matches('\n').to_string())
                        .map_err(|_| format!("Secret {namespace}/{name} key {key:?} is not UTF-8")),
                },
                // The API cannot be asked: keep what was read before (or say why not).
                Err(e) => last
                    .get(&(name.clone(), key.clone()))
                    .cloned()
                    .unwrap_or_else(|| Err(format!("cannot be read: {e}"))),
            };
            now.insert((name, key), value);
        }
        if now != last {
            last = now.clone();
            if tx.send(Msg::Secrets(now)).is_err() {
                return;
            }
        }
        tokio::select! {
            r = refs.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(SECRET_REFRESH) => {}
        }
    }
}

async fn probe(client: Client, tx: mpsc::UnboundedSender<Msg>) {
    loop {
        let r = tokio::time::timeout(PROBE_INTERVAL * 2, client.apiserver_version()).await;
        let r = match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer".into()),
        };
        if tx.send(Msg::Probe(r)).is_err() {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The owner task's state.
struct Owner {
    held: Held,
    secrets: BTreeMap<(String, String), Result<String, String>>,
    /// Kinds whose watch failed and that have not been listed completely since, with the error.
    errors: BTreeMap<usize, String>,
    probe: Result<(), String>,
    revision: u64,
    published: Option<Arc<Snapshot>>,
    /// Whether the held objects or the Secrets changed since `published` was built; when not,
    /// a new snapshot (readiness changed) shares the published state instead of rebuilding it.
    dirty: bool,
    logged: std::collections::HashSet<String>,
}

impl Owner {
    fn not_in_sync(&self) -> Option<String> {
        if !self.held.synced() {
            return Some(format!(
                "Kubernetes datastore: not listed yet: {}",
                self.held.unsynced().join(", ")
            ));
        }
        if let Err(e) = &self.probe {
            return Some(format!("Kubernetes API server unreachable: {e}"));
        }
        let failing: Vec<String> = self
            .errors
            .iter()
            .map(|(i, e)| format!("{}: {e}", WATCHED[*i].kind))
            .collect();
        (!failing.is_empty())
            .then(|| format!("Kubernetes watch failed, relisting: {}", failing.join("; ")))
    }

    fn snapshot(&mut self) -> Option<Arc<Snapshot>> {
        if !self.held.synced() && self.published.is_none() {
            return None;
        }
        let not_in_sync = self.not_in_sync();
        if let Some(p) = self.published.as_ref().filter(|_| !self.dirty) {
            if p.not_in_sync == not_in_sync {
                return None;
            }
            let (state, errors) = (p.state.clone(), p.errors.clone());
            return Some(self.publish(state, errors, not_in_sync));
        }
        self.dirty = false;
        let t = Instant::now();
        let scan = self.held.build(self.secrets.clone());
        for e in &scan.errors {
            let text = e.to_string();
            if self.logged.insert(text.clone()) {
                warn!(error = %text, "rejected resource");
            }
        }
        let errs: std::collections::HashSet<String> =
            scan.errors.iter().map(ResourceError::to_string).collect();
        self.logged.retain(|t| errs.contains(t));
        if let Some(p) = &self.published {
            if p.state == scan.state && p.errors == scan.errors && p.not_in_sync == not_in_sync {
                return None;
            }
        }
        let s = self.publish(scan.state, scan.errors, not_in_sync);
        debug!(revision = self.revision, took = ?t.elapsed(), "snapshot built");
        Some(s)
    }

    /// The next revision, remembered as published.
    fn publish(
        &mut self,
        state: crate::datastore::ClusterState,
        errors: Vec<ResourceError>,
        not_in_sync: Option<String>,
    ) -> Arc<Snapshot> {
        self.revision += 1;
        let s = Arc::new(Snapshot {
            state,
            errors,
            revision: self.revision,
            not_in_sync,
        });
        self.published = Some(s.clone());
        s
    }
}

impl KubeDatastore {
    /// Connects, starts the watchers and waits until every kind has been listed once.
    pub async fn start(cfg: KubeCfg) -> Result<KubeDatastore, DatastoreError> {
        let client = client(&cfg).await?;
        KubeDatastore::start_with(client, cfg).await
    }

    /// As [`KubeDatastore::start`], with a client made elsewhere.
    pub async fn start_with(client: Client, cfg: KubeCfg) -> Result<KubeDatastore, DatastoreError> {
        let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
        for (i, kind) in WATCHED.iter().enumerate() {
            watch_kind(client.clone(), i, *kind, msg_tx.clone());
        }
        let (refs_tx, refs_rx) = watch::channel(Vec::new());
        let secrets = tokio::spawn(read_secrets(
            client.clone(),
            cfg.namespace.clone(),
            refs_rx,
            msg_tx.clone(),
        ));
        let prober = tokio::spawn(probe(client.clone(), msg_tx));
        let shared = Arc::new(Shared {
            beat: Mutex::new(Instant::now()),
            refs: refs_tx,
        });
        let mut owner = Owner {
            held: Held::default(),
            secrets: BTreeMap::new(),
            errors: BTreeMap::new(),
            probe: Ok(()),
            revision: 0,
            published: None,
            dirty: true,
            logged: Default::default(),
        };
        // The first complete view.
        let mut waited = Instant::now();
        let first = loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), msg_rx.recv()).await;
            match msg {
                Ok(Some(m)) => owner.take(m, &shared),
                Ok(None) => return Err(DatastoreError::Kube("watchers stopped".into())),
                Err(_) => {}
            }
            if owner.held.synced() {
                // Secrets the first view names are read before it is published, so a peer
                // with a password never starts without it.
                if !owner
                    .held
                    .secret_refs()
                    .iter()
                    .all(|r| owner.secrets.contains_key(r))
                {
                    continue;
                }
                if let Some(s) = owner.snapshot() {
                    break s;
                }
            }
            if waited.elapsed() >= Duration::from_secs(10) {
                waited = Instant::now();
                let why = owner.not_in_sync().unwrap_or_default();
                info!(%why, "waiting for the Kubernetes datastore");
            }
        };
        info!(revision = first.revision, "Kubernetes datastore listed");
        let (tx, _) = watch::channel(first);
        let out = tx.clone();
        let beat = shared.clone();
        let owner_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            loop {
                tokio::select! {
                    m = msg_rx.recv() => {
                        let Some(m) = m else { return };
                        owner.take(m, &beat);
                        // Coalesce a burst: whatever is queued already (and what arrives while
                        // a snapshot is built is taken by the next round), without waiting.
                        loop {
                            match msg_rx.try_recv() {
                                Ok(m) => owner.take(m, &beat),
                                Err(mpsc::error::TryRecvError::Empty) => break,
                                Err(mpsc::error::TryRecvError::Disconnected) => return,
                            }
                        }
                    }
                    _ = tick.tick() => {}
                }
                *beat.beat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                if let Some(s) = owner.snapshot() {
                    out.send_replace(s);
                }
            }
        });
        Ok(KubeDatastore {
            tx,
            shared,
            tasks: vec![
                owner_task.abort_handle(),
                secrets.abort_handle(),
                prober.abort_handle(),
            ],
        })
    }
}

impl Owner {
    fn take(&mut self, m: Msg, shared: &Shared) {
        match m {
            Msg::Event(i, ev) => {
                if matches!(ev, Ev::InitDone) {
                    self.errors.remove(&i);
                }
                if !self.held.apply(i, ev) {
                    return;
                }
                self.dirty = true;
                if self.held.kind(i) == "BGPPeer" {
                    let refs = self.held.secret_refs();
                    shared.refs.send_if_modified(|r| {
                        let changed = *r != refs;
                        *r = refs;
                        changed
                    });
                }
            }
            Msg::WatchError(i, e) => {
                if self.errors.get(&i) != Some(&e) {
                    warn!(kind = WATCHED[i].kind, error = %e, "Kubernetes watch failed; relisting");
                }
                self.errors.insert(i, e);
            }
            Msg::Secrets(s) => {
                if s != self.secrets {
                    self.secrets = s;
                    self.dirty = true;
                }
            }
            Msg::Probe(r) => {
                if r.is_err() != self.probe.is_err() {
                    match &r {
                        Ok(()) => info!("Kubernetes API server reachable again"),
                        Err(e) => warn!(error = %e, "Kubernetes API server unreachable"),
                    }
                }
                self.probe = r;
            }
        }
    }
}

impl Datastore for KubeDatastore {
    fn snapshot(&self) -> Result<Arc<Snapshot>, DatastoreError> {
        Ok(self.tx.borrow().clone())
    }

    fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    fn last_progress(&self) -> Instant {
        *self.shared.beat.lock().unwrap_or_else(|p| p.into_inner())
    }
}
