//! The CNI plugin's socket (see [`crate::cni::socket`]): the daemon allocates and releases pod
//! addresses for `calico-cni-rs` and, on Kubernetes, writes the Pod's CNI annotations, all with
//! its own credentials.
//!
//! ```text
//!  accept ──> one task per connection: read one request line, answer one reply line
//!    add  ──> per-handle lock ─> drop a queued release of it ─> IPAM allocate (pools of the
//!             current snapshot) ─> Pod annotations (pods/status merge patch) ─> addresses
//!             any failure after an allocation releases it before the error is answered
//!    del  ──> release task (per-handle lock: IPAM release, then the annotations if they are
//!             still this container's); answered when it is done, or after DEL_ANSWER with
//!             `queued`, the task going on and the queue retrying it until it succeeds
//! ```
//! The queue is in memory: if the daemon restarts meanwhile, the allocation has no Pod and the
//! leaked-address collector ([`super::gc`]) gives it back after its grace period.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::ipam::NodeIpam;
use crate::cni::socket::{PodId, Reply, Request, MAX_REQUEST};
use crate::datastore::resources::{ANNOTATION_POD_IP, ANNOTATION_POD_IPS};
use crate::datastore::{IpFamily, Snapshot};
use crate::grpc::GrpcError;

/// Calico's annotation naming the container whose addresses the Pod's annotations are.
pub const ANNOTATION_CONTAINER_ID: &str = "cni.projectcalico.org/containerID";
/// The IPAM handle prefix of the plugin's allocations (Calico's).
pub const HANDLE_PREFIX: &str = "k8s-pod-network.";
/// How long a `del` waits for its release before answering `queued`.
const DEL_ANSWER: Duration = Duration::from_millis(800);
/// Between retries of the queued releases.
const RETRY: Duration = Duration::from_secs(2);
/// Longest wait for one Pod request.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request line from the plugin.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the socket has served, for the metrics: requests by operation and outcome, and the
/// releases not done yet (in progress, or queued until the datastore answers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniCounts {
    pub requests: BTreeMap<(&'static str, &'static str), u64>,
    pub releases_pending: usize,
}

/// The running socket's handle.
#[derive(Clone)]
pub struct CniHandle {
    svc: Arc<Service>,
}

impl CniHandle {
    pub fn counts(&self) -> CniCounts {
        CniCounts {
            requests: self.svc.served.lock().expect("not poisoned").clone(),
            releases_pending: self.svc.queue.lock().expect("not poisoned").len(),
        }
    }
}

struct Service {
    node: String,
    ipam: Arc<dyn NodeIpam>,
    snaps: watch::Receiver<Arc<Snapshot>>,
    /// The Kubernetes client for Pod annotations (`None` on the file datastore).
    kube: Option<kube::Client>,
    /// One lock per handle in use: an ADD and a release of one container never interleave.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Releases waiting for the datastore: handle -> the pod whose annotations go with it.
    queue: Mutex<BTreeMap<String, Option<PodId>>>,
    wake: tokio::sync::Notify,
    /// IPAM writes one at a time: this daemon is the only writer of its node's blocks on the CNI
    /// path, so concurrent ADDs and DELs would only conflict with each other on the same block
    /// (optimistic concurrency: every loser backs off and re-reads). In turn, each takes one
    /// read-modify-write. Reads do not take it.
    writes: tokio::sync::Mutex<()>,
    /// Requests answered, by operation and outcome.
    served: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

/// Binds `path` (mode 0600) and serves the plugin until the runtime stops.
pub fn spawn(
    path: &Path,
    node: &str,
    ipam: Arc<dyn NodeIpam>,
    snaps: watch::Receiver<Arc<Snapshot>>,
    kube: Option<kube::Client>,
) -> Result<CniHandle, GrpcError> {
    let (listener, guard) = crate::grpc::server::bind_unix(path)?;
    info!(socket = %path.display(), "CNI plugin socket listening");
    let svc = Arc::new(Service {
        node: node.to_string(),
        ipam,
        snaps,
        kube,
        locks: Mutex::default(),
        queue: Mutex::default(),
        wake: tokio::sync::Notify::new(),
        writes: tokio::sync::Mutex::new(()),
        served: Mutex::default(),
    });
    let svc_handle = svc.clone();
    tokio::spawn(svc.clone().retry_queue());
    tokio::spawn(async move {
        let _guard = guard;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(svc.clone().connection(stream));
                }
                Err(e) => {
                    warn!(error = %e, "CNI socket: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(CniHandle { svc: svc_handle })
}

fn handle_of(container_id: &str) -> String {
    format!("{HANDLE_PREFIX}{container_id}")
}

impl Service {
    async fn connection(self: Arc<Self>, mut stream: UnixStream) {
        let (r, mut w) = stream.split();
        let mut line = Vec::new();
        let mut reader = BufReader::new(r).take(MAX_REQUEST as u64 + 1);
        let read = reader.read_until(b'\n', &mut line);
        let mut op = "invalid";
        let reply = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Err(_) => Reply::failed("request: none within 10 s", false),
            Ok(Err(e)) => Reply::failed(format!("request: {e}"), false),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                Reply::failed(format!("request: longer than {MAX_REQUEST} bytes"), false)
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Ok(req) => {
                    op = match &req {
                        Request::Add { .. } => "add",
                        Request::Del { .. } => "del",
                        Request::Addresses { .. } => "addresses",
                        Request::Status { .. } => "status",
                        Request::Gc { .. } => "gc",
                    };
                    self.serve(req).await
                }
                Err(e) => Reply::failed(format!("request: {e}"), false),
            },
        };
        let outcome = match (&reply.error, reply.queued) {
            (Some(_), _) => "error",
            (None, true) => "queued",
            (None, false) => "ok",
        };
        *self
            .served
            .lock()
            .expect("not poisoned")
            .entry((op, outcome))
            .or_default() += 1;
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        let _ = w.write_all(&out).await;
    }

    async fn serve(self: &Arc<Self>, req: Request) -> Reply {
        let node = match &req {
            Request::Add { node, .. }
            | Request::Del { node, .. }
            | Request::Status { node, .. }
            | Request::Gc { node, .. } => Some(node),
            Request::Addresses { .. } => None,
        };
        if let Some(n) = node.filter(|n| **n != self.node) {
            return Reply::failed(
                format!(
                    "nodename {n:?}: this daemon is node {:?} (the plugin's nodename must be the node's)",
                    self.node
                ),
                false,
            );
        }
        match req {
            Request::Add {
                container_id,
                pod,
                ipv4,
                ipv6,
                ipv4_pools,
                ipv6_pools,
                ..
            } => {
                self.add(&container_id, pod, [(ipv4, ipv4_pools), (ipv6, ipv6_pools)])
                    .await
            }
            Request::Del {
                container_id, pod, ..
            } => self.del(&container_id, pod).await,
            Request::Addresses { container_id } => {
                let ipam = self.ipam.clone();
                let h = handle_of(&container_id);
                match blocking(move || ipam.addresses_of(&h)).await {
                    Ok(ips) => Reply::ips(ips),
                    Err(e) => Reply::failed(format!("IPAM: {e}"), true),
                }
            }
            Request::Status { ipv4, ipv6, .. } => self.status(ipv4, ipv6),
            Request::Gc { valid, .. } => self.gc(valid).await,
        }
    }

    fn lock_of(&self, handle: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("not poisoned");
        locks.retain(|_, m| Arc::strong_count(m) > 1);
        locks.entry(handle.to_string()).or_default().clone()
    }

    fn status(&self, ipv4: bool, ipv6: bool) -> Reply {
        let snap = self.snaps.borrow().clone();
        if let Some(why) = &snap.not_in_sync {
            return Reply::failed(format!("datastore not in sync: {why}"), true);
        }
        for (on, family) in [(ipv4, IpFamily::V4), (ipv6, IpFamily::V6)] {
            if on && snap.state.ip_pools_for_node(&self.node, family).is_empty() {
                return Reply::failed(
                    format!(
                        "node {}: no enabled {family} IPPool selects this node",
                        self.node
                    ),
                    true,
                );
            }
        }
        Reply::default()
    }

    async fn add(
        self: &Arc<Self>,
        container_id: &str,
        pod: Option<PodId>,
        want: [(bool, Vec<String>); 2],
    ) -> Reply {
        let handle = handle_of(container_id);
        let lock = self.lock_of(&handle);
        let _held = lock.lock().await;
        self.queue.lock().expect("not poisoned").remove(&handle);
        let families = [IpFamily::V4, IpFamily::V6];
        let pools_now = {
            let snap = self.snaps.borrow();
            families.map(|f| snap.state.ip_pools_for_node(&self.node, f))
        };
        let mut ips = Vec::new();
        for (((on, named), family), mut pools) in want.into_iter().zip(families).zip(pools_now) {
            if !on {
                continue;
            }
            if !named.is_empty() {
                pools.retain(|p| {
                    named
                        .iter()
                        .any(|n| *n == p.metadata.name || *n == p.cidr.to_string())
                });
            }
            let (ipam, node, h) = (self.ipam.clone(), self.node.clone(), handle.clone());
            match self
                .write(move || ipam.allocate(&node, &h, family, &pools))
                .await
            {
                Ok(ip) => ips.push(ip),
                Err(e) => {
                    self.undo(&handle).await;
                    return Reply::failed(
                        format!("IPAM: {family} address for {handle}: {e}"),
                        true,
                    );
                }
            }
        }
        if let (Some(pod), Some(client)) = (&pod, &self.kube) {
            if let Err(e) = annotate(client, pod, container_id, &ips).await {
                self.undo(&handle).await;
                return Reply::failed(
                    format!(
                        "Pod {}/{}: writing its addresses: {e}",
                        pod.namespace, pod.name
                    ),
                    true,
                );
            }
        }
        info!(%handle, addresses = ?ips, pod = ?pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)), "CNI ADD: allocated");
        Reply::ips(ips)
    }

    /// Gives back what a failed ADD took (queued if that fails too).
    async fn undo(self: &Arc<Self>, handle: &str) {
        let (ipam, h) = (self.ipam.clone(), handle.to_string());
        if let Err(e) = self.write(move || ipam.release(&h)).await {
            warn!(%handle, error = %e, "undoing a failed ADD: release queued");
            self.queue
                .lock()
                .expect("not poisoned")
                .insert(handle.to_string(), None);
            self.wake.notify_one();
        }
    }

    async fn del(self: &Arc<Self>, container_id: &str, pod: Option<PodId>) -> Reply {
        let handle = handle_of(container_id);
        self.queue
            .lock()
            .expect("not poisoned")
            .insert(handle.clone(), pod);
        let me = self.clone();
        let h = handle.clone();
        let mut job = tokio::spawn(async move { me.release_queued(&h).await });
        match tokio::time::timeout(DEL_ANSWER, &mut job).await {
            Ok(Ok(Ok(()))) => Reply::default(),
            Ok(Ok(Err(e))) => {
                warn!(%handle, error = %e, "CNI DEL: release queued until the datastore answers");
                self.wake.notify_one();
                Reply {
                    queued: true,
                    ..Reply::default()
                }
            }
            Ok(Err(e)) => Reply::failed(format!("release of {handle}: {e}"), true),
            Err(_) => {
                info!(%handle, "CNI DEL: the datastore is slow; release queued");
                Reply {
                    queued: true,
                    ..Reply::default()
                }
            }
        }
    }

    /// Runs the queued release of `handle` (if it is still queued), removing it on success.
    async fn release_queued(self: &Arc<Self>, handle: &str) -> Result<(), String> {
        let lock = self.lock_of(handle);
        let _held = lock.lock().await;
        let Some(pod) = self
            .queue
            .lock()
            .expect("not poisoned")
            .get(handle)
            .cloned()
        else {
            return Ok(()); // an ADD took the handle again, or another attempt finished it
        };
        let (ipam, h) = (self.ipam.clone(), handle.to_string());
        let ips = self
            .write(move || ipam.release(&h))
            .await
            .map_err(|e| format!("IPAM: {e}"))?;
        if let (Some(pod), Some(client)) = (&pod, &self.kube) {
            let id = handle.strip_prefix(HANDLE_PREFIX).unwrap_or(handle);
            unannotate(client, pod, id).await.map_err(|e| {
                format!(
                    "Pod {}/{}: removing its addresses: {e}",
                    pod.namespace, pod.name
                )
            })?;
        }
        self.queue.lock().expect("not poisoned").remove(handle);
        info!(%handle, addresses = ?ips, "CNI DEL: released");
        Ok(())
    }

    async fn retry_queue(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
            // Give the attempt that queued it its chance first.
            tokio::time::sleep(RETRY).await;
            let handles: Vec<String> = self
                .queue
                .lock()
                .expect("not poisoned")
                .keys()
                .cloned()
                .collect();
            for h in handles {
                match self.release_queued(&h).await {
                    Ok(()) => {}
                    Err(e) => debug!(handle = %h, error = %e, "queued release: still failing"),
                }
            }
        }
    }

    async fn gc(self: &Arc<Self>, valid: Vec<String>) -> Reply {
        let view = self.ipam.subscribe().borrow().clone();
        let valid: std::collections::BTreeSet<String> = valid.into_iter().collect();
        let stale: std::collections::BTreeSet<String> = view
            .blocks
            .iter()
            .filter(|b| b.affinity.as_deref() == Some(self.node.as_str()))
            .flat_map(|b| b.allocations.iter().map(|(_, h)| h.clone()))
            .filter(|h| {
                h.strip_prefix(HANDLE_PREFIX)
                    .is_some_and(|id| !valid.contains(id))
            })
            .collect();
        for h in stale {
            let lock = self.lock_of(&h);
            let _held = lock.lock().await;
            let (ipam, hh) = (self.ipam.clone(), h.clone());
            match self.write(move || ipam.release(&hh)).await {
                Ok(ips) => info!(handle = %h, addresses = ?ips, "CNI GC: released"),
                Err(e) => return Reply::failed(format!("IPAM: release {h}: {e}"), true),
            }
        }
        Reply::default()
    }
}

impl Service {
    /// An IPAM write, in turn with the others (see [`Service::writes`]).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, crate::ipam::IpamError> + Send + 'static,
    ) -> Result<T, crate::ipam::IpamError> {
        let _turn = self.writes.lock().await;
        blocking(f).await
    }
}

/// Runs a (sync, possibly API-bound) IPAM call off the runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::ipam::IpamError> + Send + 'static,
) -> Result<T, crate::ipam::IpamError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(crate::ipam::IpamError::Api {
            object: "IPAM task".into(),
            message: e.to_string(),
        }),
    }
}

fn with_len(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Writes Calico's `cni.projectcalico.org/podIP(s)` and `containerID` on the Pod, through
/// `pods/status` as Calico does (that subresource may change metadata but never the spec).
async fn annotate(
    client: &kube::Client,
    pod: &PodId,
    container_id: &str,
    ips: &[IpAddr],
) -> Result<(), String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let all: Vec<String> = ips.iter().map(with_len).collect();
    let patch = json!({"metadata": {"annotations": {
        ANNOTATION_POD_IP: all.first().cloned().unwrap_or_default(),
        ANNOTATION_POD_IPS: all.join(","),
        ANNOTATION_CONTAINER_ID: container_id,
    }}});
    let (pp, merge) = (PatchParams::default(), Patch::Merge(&patch));
    let call = api.patch_status(&pod.name, &pp, &merge);
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {API_TIMEOUT:?}")),
    }
}

/// Removes those annotations if they are still `container_id`'s (a newer sandbox of the same
/// Pod keeps its own); a Pod that is gone needs nothing.
async fn unannotate(client: &kube::Client, pod: &PodId, container_id: &str) -> Result<(), String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    for _ in 0..3 {
        let got = match tokio::time::timeout(API_TIMEOUT, api.get_opt(&pod.name)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {API_TIMEOUT:?}")),
        };
        let Some(p) = got else { return Ok(()) };
        let ann = p.metadata.annotations.unwrap_or_default();
        if ann.get(ANNOTATION_CONTAINER_ID).map(String::as_str) != Some(container_id) {
            return Ok(());
        }
        let patch = json!({"metadata": {
            "resourceVersion": p.metadata.resource_version,
            "annotations": {ANNOTATION_POD_IP: null, ANNOTATION_POD_IPS: null, ANNOTATION_CONTAINER_ID: null},
        }});
        let (pp, merge) = (PatchParams::default(), Patch::Merge(&patch));
        let call = api.patch_status(&pod.name, &pp, &merge);
        match tokio::time::timeout(API_TIMEOUT, call).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => continue,
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => return Ok(()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {API_TIMEOUT:?}")),
        }
    }
    Err("the Pod kept changing (409 three times)".into())
}
