//! Watches: a chunked response of newline-delimited WatchEvents (`{"type":..,"object":..}`).
//!
//! Order of a stream: for a watch with no resourceVersion (or `"0"`), or with `sendInitialEvents=true`,
//! the current objects as ADDED, then (with `sendInitialEvents`) a BOOKMARK annotated
//! `k8s.io/initial-events-end: "true"` at the rv the initial events show; for a watch from an rv, the
//! retained events after it; then live events. Selectors are applied per event with the object before
//! and after, as the API server's watch cache does: an object that starts matching is ADDED, one that
//! stops matching is DELETED (its previous state, with the event's rv).
//!
//! A watch from an rv older than the history window is answered 200 with one ERROR event holding a 410
//! Expired Status ("too old resource version"), then ends, as kube-apiserver does. With
//! `allowWatchBookmarks`, a BOOKMARK (`{kind, apiVersion, metadata: {resourceVersion}}`) goes out every
//! bookmark interval: its rv is the store's rv when the tick came, after every event up to that rv
//! for this watch has been sent, so a client resuming from it misses nothing. A stream ends at
//! `timeoutSeconds`, on `/_test/drop-watches`, when its resource stops being served, or when the
//! client goes away.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::body::{ChannelBody, RespBody};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::status::ApiError;
use crate::store::{Event, EventType, Obj, WatchFrom, WatchStart};

/// What a watch request asks for.
#[derive(Debug, Clone)]
pub struct WatchReq {
    /// The resource.
    pub rt: Arc<ResourceType>,
    /// The `apiVersion` it is read through.
    pub api_version: String,
    /// One namespace, or all.
    pub ns: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// Where to start.
    pub from: WatchFrom,
    /// `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan`).
    pub send_initial: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`, or the server's default.
    pub timeout: Duration,
}

fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// The ERROR event of a watch from a compacted rv.
pub fn expired_event(asked: u64, oldest: u64) -> Bytes {
    let status =
        ApiError::expired(format!("too old resource version: {asked} ({oldest})")).to_status();
    event_line("ERROR", status.to_string().as_bytes())
}

struct Stream {
    req: WatchReq,
    tx: mpsc::Sender<Bytes>,
    last_rv: u64,
}

impl Stream {
    fn matches(&self, o: &Obj) -> bool {
        self.req.ns.as_deref().is_none_or(|ns| o.namespace() == ns)
            && self.req.labels.matches_obj(&o.value)
            && self.req.fields.matches(&o.value)
    }

    async fn send(&self, b: Bytes) -> bool {
        self.tx.send(b).await.is_ok()
    }

    async fn object(&self, kind: &str, o: &Obj) -> bool {
        self.send(event_line(kind, &o.json_as(&self.req.api_version)))
            .await
    }

    /// Sends one store event as this watch sees it; false when the client is gone.
    async fn event(&mut self, ev: &Event) -> bool {
        self.last_rv = self.last_rv.max(ev.rv);
        let now = self.matches(&ev.obj);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        match ev.kind {
            EventType::Added if now => self.object("ADDED", &ev.obj).await,
            EventType::Deleted if now || before => self.object("DELETED", &ev.obj).await,
            EventType::Modified if now && before => self.object("MODIFIED", &ev.obj).await,
            EventType::Modified if now => self.object("ADDED", &ev.obj).await,
            EventType::Modified if before => {
                let mut last = ev.prev.as_ref().expect("before implies prev").value.clone();
                last["metadata"]["resourceVersion"] = ev.rv.to_string().into();
                self.object("DELETED", &Obj::new(last)).await
            }
            _ => true,
        }
    }

    async fn bookmark(&self, rv: u64, initial_end: bool) -> bool {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.req.rt.kind, "apiVersion": self.req.api_version, "metadata": meta});
        self.send(event_line("BOOKMARK", obj.to_string().as_bytes()))
            .await
    }
}

/// Starts a watch: registers it with the store and returns the streaming body.
pub fn start(shared: &Arc<Shared>, req: WatchReq) -> RespBody {
    let (tx, body) = ChannelBody::channel(256);
    let started =
        shared
            .store
            .lock()
            .expect("store lock")
            .watch(&req.rt.gr, req.ns.as_deref(), req.from);
    match started {
        Err((asked, oldest)) => {
            // The receiver is in `body`, so this cannot fail; the stream ends when `tx` drops.
            let _ = tx.try_send(expired_event(asked, oldest));
        }
        Ok(ws) => {
            tokio::spawn(run(
                shared.clone(),
                Stream {
                    req,
                    tx,
                    last_rv: 0,
                },
                ws,
            ));
        }
    }
    body
}

async fn run(shared: Arc<Shared>, mut s: Stream, ws: WatchStart) {
    let WatchStart {
        initial,
        replay,
        rv,
        mut rx,
    } = ws;
    let mut drop_rx = shared.drop_watches.subscribe();
    s.last_rv = match s.req.from {
        WatchFrom::Initial => rv,
        WatchFrom::After(after) => after,
    };
    for o in &initial {
        if s.matches(o) && !s.object("ADDED", o).await {
            return;
        }
    }
    if s.req.send_initial && !s.bookmark(rv, true).await {
        return;
    }
    for ev in &replay {
        if !s.event(ev).await {
            return;
        }
    }
    let deadline = tokio::time::sleep(s.req.timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + shared.bookmark_interval,
        shared.bookmark_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => if !s.event(&ev).await { return },
                None => return,
            },
            _ = tick.tick(), if s.req.bookmarks => {
                let now = shared.store.lock().expect("store lock").rv();
                while let Ok(ev) = rx.try_recv() {
                    if !s.event(&ev).await { return }
                }
                let at = now.max(s.last_rv);
                if !s.bookmark(at, false).await { return }
                s.last_rv = at;
            },
            _ = &mut deadline => return,
            _ = drop_rx.changed() => return,
            _ = s.tx.closed() => return,
        }
    }
}

/// The object of a watch event line (for tests).
pub fn parse_line(line: &[u8]) -> Option<(String, Value)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    Some((
        v.get("type")?.as_str()?.to_string(),
        v.get("object")?.clone(),
    ))
}
