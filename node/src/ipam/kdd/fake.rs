//! A tiny in-process Kubernetes API for the KDD store's tests: cluster-scoped custom resources
//! of `crd.projectcalico.org/v1` with get, list, create, replace and delete, a per-object
//! `resourceVersion` and `uid`, 409 on a create of an existing name, on a replace at a stale
//! resourceVersion and on a delete whose preconditions fail, 404 for missing objects. No watch,
//! no selectors, no paging. A hook sees each write before it is applied and may refuse it or
//! change the objects first, standing in for another writer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

const PREFIX: &str = "/apis/crd.projectcalico.org/v1/";

/// One write as the hook sees it.
#[derive(Clone, Debug)]
pub struct Write {
    pub method: String,
    pub plural: String,
    pub name: String,
}

type Hook = Box<dyn FnMut(&mut Objects, &Write) -> Option<u16> + Send>;

/// Objects by (plural, name), and the resourceVersion counter.
#[derive(Default)]
pub struct Objects {
    pub items: BTreeMap<(String, String), Value>,
    rv: u64,
    /// Every request, `METHOD plural[/name]`.
    pub log: Vec<String>,
}

impl Objects {
    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Another writer's change: `f` edits the object's spec and its resourceVersion moves on.
    pub fn touch(&mut self, plural: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let rv = self.next_rv();
        if let Some(o) = self.items.get_mut(&(plural.into(), name.into())) {
            f(&mut o["spec"]);
            o["metadata"]["resourceVersion"] = rv.into();
        }
    }

    /// Another writer's create.
    pub fn insert(&mut self, plural: &str, mut obj: Value) {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = rv.clone().into();
        obj["metadata"]["uid"] = format!("uid-{rv}").into();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.items.insert((plural.into(), name), obj);
    }

    pub fn specs(&self, plural: &str) -> BTreeMap<String, Value> {
        self.items
            .iter()
            .filter(|((p, _), _)| p == plural)
            .map(|((_, n), o)| (n.clone(), o["spec"].clone()))
            .collect()
    }
}

#[derive(Clone, Default)]
pub struct FakeApi {
    pub objects: Arc<Mutex<Objects>>,
    hook: Arc<Mutex<Option<Hook>>>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

impl FakeApi {
    pub fn set_hook(&self, hook: impl FnMut(&mut Objects, &Write) -> Option<u16> + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
    }

    /// A client on this API; must be called inside a runtime.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (code, out) = api.handle(parts.method.as_str(), parts.uri.path(), body);
                let resp = http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(serde_json::to_vec(&out).unwrap()))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        kube::Client::new(svc, "default")
    }

    fn handle(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return status(404, "NotFound", "not served");
        };
        let (plural, name) = match rest.split_once('/') {
            Some((p, n)) => (p.to_string(), n.to_string()),
            None => (rest.to_string(), String::new()),
        };
        let name = match (method, name.is_empty()) {
            ("POST", _) => body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            _ => name,
        };
        let mut objects = self.objects.lock().unwrap();
        objects.log.push(format!("{method} {plural}/{name}"));
        if method != "GET" {
            let w = Write {
                method: method.into(),
                plural: plural.clone(),
                name: name.clone(),
            };
            if let Some(h) = self.hook.lock().unwrap().as_mut() {
                if let Some(code) = h(&mut objects, &w) {
                    return status(code, "Conflict", "injected by the test");
                }
            }
        }
        let key = (plural.clone(), name.clone());
        match (method, name.is_empty()) {
            ("GET", true) => {
                let items: Vec<Value> = objects
                    .items
                    .iter()
                    .filter(|((p, _), _)| *p == plural)
                    .map(|(_, o)| {
                        // List items come without apiVersion and kind, as from a real server.
                        let mut o = o.clone();
                        if let Some(m) = o.as_object_mut() {
                            m.remove("apiVersion");
                            m.remove("kind");
                        }
                        o
                    })
                    .collect();
                let rv = objects.rv.to_string();
                (
                    200,
                    json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "List",
                             "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", false) => match objects.items.get(&key) {
                Some(o) => (200, o.clone()),
                None => status(404, "NotFound", &format!("{plural} {name:?} not found")),
            },
            ("POST", _) => {
                if objects.items.contains_key(&key) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("{plural} {name:?} already exists"),
                    );
                }
                objects.insert(&plural, body);
                (201, objects.items[&key].clone())
            }
            ("PUT", false) => {
                let Some(cur) = objects.items.get(&key) else {
                    return status(404, "NotFound", &format!("{plural} {name:?} not found"));
                };
                let want = body["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                if want.is_empty() {
                    return status(
                        422,
                        "Invalid",
                        "metadata.resourceVersion: must be specified for an update",
                    );
                }
                if cur["metadata"]["resourceVersion"] != want {
                    return status(409, "Conflict", "the object has been modified");
                }
                let uid = cur["metadata"]["uid"].clone();
                let mut new = body;
                new["metadata"]["resourceVersion"] = objects.next_rv().into();
                new["metadata"]["uid"] = uid;
                objects.items.insert(key.clone(), new);
                (200, objects.items[&key].clone())
            }
            ("DELETE", false) => {
                let Some(cur) = objects.items.get(&key) else {
                    return status(404, "NotFound", &format!("{plural} {name:?} not found"));
                };
                let pre = &body["preconditions"];
                for field in ["resourceVersion", "uid"] {
                    if pre[field].is_string() && pre[field] != cur["metadata"][field] {
                        return status(409, "Conflict", &format!("precondition failed: {field}"));
                    }
                }
                let gone = objects.items.remove(&key).unwrap();
                objects.next_rv();
                (200, gone)
            }
            _ => status(405, "MethodNotAllowed", method),
        }
    }
}
