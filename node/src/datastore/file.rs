//! The file datastore: a directory of `*.yaml` / `*.yml` files, watched with inotify.
//!
//! ```text
//!  inotify (notify crate thread) --()--> std mpsc --> worker thread: debounce, scan_dir,
//!                                                     publish if changed --> watch::Sender
//! ```
//! Only the directory's top level is read, in file-name order (so duplicates resolve the same way
//! every time). Hidden files and editor leftovers are skipped; `DIR/ipam/` belongs to IPAM and is
//! never read here (the watch is not recursive, so IPAM's writes cause no events). A burst of
//! events is coalesced: the scan runs once the directory has been quiet for `debounce`, or after
//! `max_delay` at the latest, so a change is published well within a second. A full rescan also
//! runs every `resync_interval`, in case inotify lost events (queue overflow, directory replaced).
//!
//! A document that stops parsing is not a deletion. Each file remembers the resources it
//! contributed to the last scan; while the file has a failing document (a YAML syntax error, a
//! field error, an unsupported kind) or cannot be read, every resource it last held is kept (and
//! the ones that still decode take their new version), with a warning that names them. A resource
//! goes away only when its file is removed or parses cleanly without it. Half-written files and
//! typos therefore never release IPAM blocks, drop a BGP session or open a pod.
//!
//! The last good text of every file is also kept on disk, in `DIR/.lastgood/` (hidden, so never
//! read as resources; written by temp file and rename), so a daemon that starts while a
//! document is broken still holds what it said before: a restart never turns a typo into a
//! deletion either. A cached file whose original is gone is dropped (that is a deletion).
//!
//! If the directory itself becomes unreadable, the last good state is kept and the failure is
//! added to the snapshot's errors: withdrawing every route because a mount blinked would be worse.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;

use super::parse::parse_yaml;
use super::resources::{BgpPassword, Resource};
use super::state::{ClusterState, StateBuilder};
use super::{Datastore, DatastoreError, ResourceError, Severity, Snapshot};

/// Files larger than this are rejected unread (a datastore file is a few KiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The subdirectory IPAM owns.
pub const IPAM_SUBDIR: &str = "ipam";

/// Settings of the file backend.
#[derive(Clone, Debug)]
pub struct FileDatastoreCfg {
    pub dir: PathBuf,
    /// Quiet time after the last event before scanning.
    pub debounce: Duration,
    /// Longest wait from the first event of a burst to the scan.
    pub max_delay: Duration,
    /// Full rescan period, events or not.
    pub resync_interval: Duration,
}

impl FileDatastoreCfg {
    /// Defaults: 75 ms debounce, 300 ms max delay, 30 s resync.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileDatastoreCfg {
            dir: dir.into(),
            debounce: Duration::from_millis(75),
            max_delay: Duration::from_millis(300),
            resync_interval: Duration::from_secs(30),
        }
    }
}

/// Everything one scan of the directory found.
#[derive(Debug, Default)]
pub struct ScanResult {
    pub state: ClusterState,
    pub errors: Vec<ResourceError>,
}

/// The resources each file contributed to the last scan (origin and resource), by file name:
/// what a file that stops parsing keeps.
#[derive(Debug, Default)]
pub struct Scanner {
    held: BTreeMap<String, Vec<(String, Resource)>>,
    /// Where the last good text of each file is kept across restarts (`None`: memory only).
    cache: Option<PathBuf>,
    /// The text of each file as last cached.
    cached: BTreeMap<String, String>,
}

/// The subdirectory that keeps the last good text of every file.
pub const LAST_GOOD_SUBDIR: &str = ".lastgood";

/// Identity of a resource within a file: kind, API version for Nodes (a `v1` and a `v3` Node of
/// one name are two documents), and `namespace/name`.
fn held_key(r: &Resource) -> (&'static str, String, String) {
    let version = match r {
        Resource::Node(_, v) => v.clone(),
        _ => String::new(),
    };
    (r.kind(), version, r.display_name())
}

/// `parsed` overlaid on `held`: every resource that decodes now, plus those held before that no
/// longer do.
fn keep_held(
    parsed: Vec<(String, Resource)>,
    held: &[(String, Resource)],
) -> (Vec<(String, Resource)>, Vec<String>) {
    // A resource that decodes now but cannot be used as written yields to its last good version.
    let good_before: HashSet<_> = held
        .iter()
        .filter(|(_, r)| r.problem().is_none())
        .map(|(_, r)| held_key(r))
        .collect();
    let mut out: Vec<(String, Resource)> = parsed
        .into_iter()
        .filter(|(_, r)| r.problem().is_none() || !good_before.contains(&held_key(r)))
        .collect();
    let now: HashSet<_> = out.iter().map(|(_, r)| held_key(r)).collect();
    let mut kept = Vec::new();
    for (origin, r) in held {
        if !now.contains(&held_key(r)) {
            kept.push(format!("{} {}", r.kind(), r.display_name()));
            out.push((origin.clone(), r.clone()));
        }
    }
    (out, kept)
}

/// A watched directory; dropping it stops the watch and closes the watch channel.
pub struct FileDatastore {
    inner: Arc<Inner>,
    _watcher: notify::RecommendedWatcher,
}

struct Inner {
    dir: PathBuf,
    tx: watch::Sender<Arc<Snapshot>>,
    /// Serialises scan + publish, and remembers what was already logged.
    logged: Mutex<HashSet<String>>,
    /// What each file held at the last scan (always locked after `logged`).
    scanner: Mutex<Scanner>,
    /// When the worker last went round its loop (it wakes at least every [`WORKER_BEAT`]).
    beat: Mutex<Instant>,
}

/// The worker wakes at least this often, events or not, to show it is alive.
const WORKER_BEAT: Duration = Duration::from_secs(1);

/// Whether a file name is read as resources.
pub fn is_resource_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Names editors create while saving, and IPAM's directory: no reason to rescan.
fn is_noise(name: &str) -> bool {
    name == IPAM_SUBDIR
        || name == LAST_GOOD_SUBDIR
        || name == "4913"
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'))
}

fn is_relevant(dir: &Path, ev: &notify::Event) -> bool {
    if ev.need_rescan() || ev.paths.is_empty() {
        return true;
    }
    ev.paths.iter().any(|p| {
        if p == dir {
            return true;
        }
        match (p.parent(), p.file_name().and_then(|n| n.to_str())) {
            (Some(parent), Some(name)) => parent == dir && !is_noise(name),
            _ => false,
        }
    })
}

/// Reads every resource file of `dir` once (no watching, nothing held from before).
pub fn scan_dir(dir: &Path) -> Result<ScanResult, DatastoreError> {
    Scanner::default().scan(dir)
}

/// The text of a resource file, `Ok(None)` when it vanished, or why it cannot be used.
fn read_text(path: &Path) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, larger than the {MAX_FILE_BYTES}-byte limit; not read",
            meta.len()
        ));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    String::from_utf8(bytes).map(Some).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

impl Scanner {
    /// A scanner that keeps the last good text of every file in `cache` (created if needed) and
    /// starts from what it holds: files that fail to parse now keep the resources they had
    /// when they last parsed cleanly, even before this process.
    pub fn with_cache(cache: PathBuf) -> Scanner {
        let mut sc = Scanner {
            cache: Some(cache.clone()),
            ..Scanner::default()
        };
        let Ok(entries) = std::fs::read_dir(&cache) else {
            return sc;
        };
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_resource_file(&name) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let parsed = parse_yaml(&name, &text);
            if parsed.errors.iter().any(ResourceError::is_failure) {
                continue; // never cached like that; ignore a damaged cache file
            }
            sc.held.insert(name.clone(), parsed.resources);
            sc.cached.insert(name, text);
        }
        sc
    }

    /// Keeps `text` as the last good version of `name` (on disk when there is a cache).
    fn remember(&mut self, name: &str, text: &str) {
        let Some(cache) = &self.cache else { return };
        if self.cached.get(name).map(String::as_str) == Some(text) {
            return;
        }
        // Several daemons may share the directory (the lab): a temp name per process.
        let tmp = cache.join(format!(".{name}.{}.tmp", std::process::id()));
        let ok = std::fs::create_dir_all(cache)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, cache.join(name)));
        match ok {
            Ok(()) => {
                self.cached.insert(name.to_string(), text.to_string());
            }
            Err(e) => {
                tracing::warn!(file = name, error = %e, "cannot keep the last good version on disk")
            }
        }
    }

    /// Drops the cached copies of files that are gone (a removed file is a deletion).
    fn forget_removed(&mut self) {
        let Some(cache) = &self.cache else { return };
        let gone: Vec<String> = self
            .cached
            .keys()
            .filter(|n| !self.held.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            let _ = std::fs::remove_file(cache.join(&n));
            self.cached.remove(&n);
        }
    }

    /// Reads every resource file of `dir`; files that fail keep what they held last time.
    pub fn scan(&mut self, dir: &Path) -> Result<ScanResult, DatastoreError> {
        let io = |source| DatastoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if let Some(name) = entry.file_name().to_str() {
                if is_resource_file(name) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        let mut out = ScanResult::default();
        let mut builder = StateBuilder::default();
        let mut held = BTreeMap::new();
        for name in names {
            let file_error = |message: String, severity| ResourceError {
                origin: name.clone(),
                kind: None,
                name: None,
                field: None,
                message,
                severity,
            };
            let before = self.held.remove(&name).unwrap_or_default();
            let (resources, failed) = match read_text(&dir.join(&name)) {
                Ok(None) => continue,
                Ok(Some(text)) => {
                    let parsed = parse_yaml(&name, &text);
                    let failed = parsed.errors.iter().any(ResourceError::is_failure);
                    out.errors.extend(parsed.errors);
                    if !failed {
                        self.remember(&name, &text);
                    }
                    (parsed.resources, failed)
                }
                Err(message) => {
                    out.errors.push(file_error(message, Severity::Error));
                    (Vec::new(), true)
                }
            };
            let resources = if failed {
                let (resources, kept) = keep_held(resources, &before);
                if !kept.is_empty() {
                    out.errors.push(file_error(
                        format!(
                            "keeping the last good version of {} until the file reads cleanly: {}",
                            kept.len(),
                            kept.join(", ")
                        ),
                        Severity::Warning,
                    ));
                }
                resources
            } else {
                resources
            };
            for (origin, r) in &resources {
                if let Resource::BgpPeer(p) = r {
                    if let Some(BgpPassword::SecretKeyRef { name, key }) = &p.password {
                        out.errors.push(ResourceError {
                            origin: origin.clone(),
                            kind: Some("BGPPeer".into()),
                            name: Some(p.metadata.name.clone()),
                            field: Some("spec.password.secretKeyRef".into()),
                            message: format!(
                                "Secret references ({name}/{key}) are not supported by the file \
                                 datastore; put the password in spec.password as a string"
                            ),
                            severity: Severity::Warning,
                        });
                    }
                }
                if let Err(e) = builder.add(origin, r.clone()) {
                    out.errors.push(*e);
                }
            }
            held.insert(name, resources);
        }
        self.held = held;
        self.forget_removed();
        out.state = builder.build();
        Ok(out)
    }
}

impl Inner {
    fn log_new(&self, logged: &mut HashSet<String>, scan: &ScanResult) {
        let mut now = HashSet::new();
        for e in &scan.errors {
            let line = e.to_string();
            if !logged.contains(&line) {
                match e.severity {
                    Severity::Error => tracing::error!(error = %line, "resource rejected"),
                    Severity::Unsupported => {
                        tracing::error!(error = %line, "unsupported kind refused")
                    }
                    Severity::Warning => {
                        tracing::warn!(warning = %line, "resource partly unusable")
                    }
                }
            }
            now.insert(line);
        }
        *logged = now;
    }

    /// Scans and publishes if anything changed; returns the current snapshot.
    fn rescan(&self) -> Result<Arc<Snapshot>, DatastoreError> {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.tx.borrow().clone();
        let mut scanner = self.scanner.lock().unwrap_or_else(|p| p.into_inner());
        let scan = match scanner.scan(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "datastore scan failed; keeping the last state");
                let mut errors = cur.errors.clone();
                errors.retain(|x| x.origin != self.dir.display().to_string());
                errors.push(ResourceError {
                    origin: self.dir.display().to_string(),
                    kind: None,
                    name: None,
                    field: None,
                    message: format!("{e}; keeping the last state read"),
                    severity: Severity::Error,
                });
                self.publish(&cur, cur.state.clone(), errors);
                return Err(e);
            }
        };
        self.log_new(&mut logged, &scan);
        Ok(self.publish(&cur, scan.state, scan.errors))
    }

    fn publish(
        &self,
        cur: &Arc<Snapshot>,
        state: ClusterState,
        errors: Vec<ResourceError>,
    ) -> Arc<Snapshot> {
        if cur.revision > 0 && cur.state == state && cur.errors == errors {
            return cur.clone();
        }
        let snap = Arc::new(Snapshot {
            state,
            errors,
            revision: cur.revision + 1,
            not_in_sync: None,
        });
        tracing::debug!(revision = snap.revision, "datastore snapshot published");
        self.tx.send_replace(snap.clone());
        snap
    }
}

fn worker(inner: Arc<Inner>, rx: mpsc::Receiver<()>, cfg: FileDatastoreCfg) {
    let mut next_resync = Instant::now() + cfg.resync_interval;
    loop {
        *inner.beat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let wait = next_resync
            .saturating_duration_since(Instant::now())
            .min(WORKER_BEAT);
        match rx.recv_timeout(wait) {
            Ok(()) => {
                let deadline = Instant::now() + cfg.max_delay;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(cfg.debounce.min(left)) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) if Instant::now() < next_resync => continue,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let _ = inner.rescan();
        next_resync = Instant::now() + cfg.resync_interval;
    }
}

impl FileDatastore {
    /// Opens `dir` with default settings: reads it once, then watches it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, DatastoreError> {
        Self::open_with(FileDatastoreCfg::new(dir))
    }

    /// Opens with explicit settings. Fails if the directory cannot be read or watched.
    pub fn open_with(cfg: FileDatastoreCfg) -> Result<Self, DatastoreError> {
        let dir = cfg.dir.clone();
        let meta = std::fs::metadata(&dir).map_err(|source| DatastoreError::Io {
            path: dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(DatastoreError::NotADirectory(dir));
        }
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            tx,
            logged: Mutex::new(HashSet::new()),
            scanner: Mutex::new(Scanner::with_cache(dir.join(LAST_GOOD_SUBDIR))),
            beat: Mutex::new(Instant::now()),
        });
        let (ev_tx, ev_rx) = mpsc::channel::<()>();
        let watch_dir = dir.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if !is_relevant(&watch_dir, &ev) => {}
                Ok(_) => {
                    let _ = ev_tx.send(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "datastore watch error; rescanning");
                    let _ = ev_tx.send(());
                }
            })
            .map_err(|source| DatastoreError::Watch {
                path: dir.clone(),
                source,
            })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| DatastoreError::Watch {
                path: dir.clone(),
                source,
            })?;
        // Watch first, then read: a change between the two is then never missed.
        inner.rescan()?;
        let w = inner.clone();
        std::thread::Builder::new()
            .name("datastore-file".into())
            .spawn(move || worker(w, ev_rx, cfg))
            .map_err(|source| DatastoreError::Io { path: dir, source })?;
        Ok(FileDatastore {
            inner,
            _watcher: watcher,
        })
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Datastore for FileDatastore {
    fn snapshot(&self) -> Result<Arc<Snapshot>, DatastoreError> {
        self.inner.rescan()
    }

    fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.tx.subscribe()
    }

    /// When the worker thread last made progress (for liveness).
    fn last_progress(&self) -> Instant {
        *self.inner.beat.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
