//! Create, update, patch and delete, with the API server's rules for metadata and status.
//!
//! - Create: `name` or `generateName` required (422), kind/apiVersion must fit the path (400), the
//!   body's namespace must match the path's (400), the namespace must exist (404), the name must be
//!   free (409 AlreadyExists), `resourceVersion` must be unset (400). The server sets `uid`,
//!   `creationTimestamp`, `generation: 1` and `resourceVersion`. Custom resources with a status
//!   subresource lose `status` on create; pods start with `status: {phase: Pending}`; namespaces get
//!   `spec.finalizers: [kubernetes]`, `status.phase: Active` and the label
//!   `kubernetes.io/metadata.name` (kept on updates); secrets default to `type: Opaque`
//!   and their `stringData` is folded into `data` (on updates too);
//!   CRDs get their Established and NamesAccepted conditions and start being served.
//! - Update (and every patch, once applied): a set `metadata.resourceVersion` that is not the stored
//!   one is a 409 Conflict; unset means unconditional. Server-managed metadata is kept. With a status
//!   subresource, writes to the object keep the stored status and writes to `/status` change only
//!   status (for pods, as upstream's pod status strategy: status, labels and annotations). `generation` goes up when anything but metadata and status changes. An update that changes
//!   nothing is not a change (no new rv, no event), as upstream.
//! - Delete: `preconditions` (uid, resourceVersion) must match (409). An object with finalizers gets a
//!   `deletionTimestamp` and stays until an update removes the last finalizer. Otherwise it goes at
//!   once (pods too: no kubelet here, no grace period). Deleting a namespace deletes everything in it at
//!   once (upstream the namespace is Terminating while a controller empties it); deleting a CRD deletes
//!   its objects, stops serving it and ends its watches.
//! - `dry_run` runs every check and returns the would-be object without storing it.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{Obj, ObjKey, Store};
use crate::patch::{self, PatchType};
use crate::resources::{crd_resource, Gr, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::util;

/// How a write is done: to `/status` only, and/or as a dry run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteMode {
    /// Through the `status` subresource: only `status` changes.
    pub status_only: bool,
    /// `dryRun=All`: check, answer, store nothing.
    pub dry_run: bool,
}

fn meta_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn is_crd(rt: &ResourceType) -> bool {
    rt.gr == Gr::new("apiextensions.k8s.io", "customresourcedefinitions")
}

/// Sets `kind` and `apiVersion` to the stored ones after checking the body's agree with the path.
fn check_type(rt: &ResourceType, v: &mut Value) -> Result<(), ApiError> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && kind != rt.kind {
        let av = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{av}\" cannot be handled as a {}: the kind of the object ({kind}) does not match the kind of the endpoint ({})",
            rt.kind, rt.kind
        )));
    }
    let av = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if !av.is_empty() {
        let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
        if group != rt.gr.group || !rt.versions.iter().any(|x| x == version) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                rt.api_version(rt.storage_version())
            )));
        }
    }
    v["kind"] = rt.kind.clone().into();
    v["apiVersion"] = rt.api_version(rt.storage_version()).into();
    Ok(())
}

fn check_body(v: &Value) -> Result<(), ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    if v.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// Everything but metadata, status, kind and apiVersion: what `generation` tracks.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "metadata" | "status" | "kind" | "apiVersion")
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    strip(a) == strip(b)
}

/// A Secret's write-only `stringData` goes into `data` (base64), as the API server's Secret strategy
/// does on every create and update.
fn fold_string_data(rt: &ResourceType, v: &mut Value) {
    if rt.gr != Gr::new("", "secrets") {
        return;
    }
    let Some(Value::Object(sd)) = v.as_object_mut().and_then(|m| m.remove("stringData")) else {
        return;
    };
    if !v.get("data").is_some_and(Value::is_object) {
        v["data"] = json!({});
    }
    for (k, s) in sd {
        v["data"][k] = util::b64_encode(s.as_str().unwrap_or("").as_bytes()).into();
    }
}

/// Every Namespace carries `kubernetes.io/metadata.name: NAME` (the API server sets it on create and
/// update, so policies can select namespaces by name).
fn namespace_name_label(rt: &ResourceType, v: &mut Value) {
    if rt.gr != Gr::new("", "namespaces") {
        return;
    }
    let name = meta_str(v, "name").to_string();
    if !v["metadata"].get("labels").is_some_and(Value::is_object) {
        v["metadata"]["labels"] = json!({});
    }
    v["metadata"]["labels"]["kubernetes.io/metadata.name"] = name.into();
}

fn has_finalizers(v: &Value) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn crd_status(crd: &Value, rt: &ResourceType) -> Value {
    let now = util::now_rfc3339();
    let mut names = crd
        .pointer("/spec/names")
        .cloned()
        .unwrap_or_else(|| json!({}));
    names["singular"] = rt.singular.clone().into();
    names["listKind"] = rt.list_kind.clone().into();
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    json!({
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": names,
        "storedVersions": [rt.storage_version()],
    })
}

impl Store {
    /// POST.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        check_body(&body)?;
        check_type(rt, &mut body)?;
        if body.get("metadata").is_none() {
            body["metadata"] = json!({});
        }
        let mut name = meta_str(&body, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&body, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.gr.group,
                    "",
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                ));
            }
            name = loop {
                let n = format!("{prefix}{}", util::name_suffix());
                if self.lookup(&rt.gr, ns, &n).is_none() {
                    break n;
                }
            };
            body["metadata"]["name"] = name.clone().into();
        }
        let strict_label = rt.gr.resource == "namespaces";
        if strict_label && !util::is_dns_label(&name) {
            return Err(ApiError::invalid(&rt.kind, &rt.gr.group, &name, "metadata.name", "FieldValueInvalid", &format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")));
        }
        if let Some(why) = util::name_error(&name, rt.strict_names()) {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.gr.group,
                &name,
                "metadata.name",
                "FieldValueInvalid",
                &why,
            ));
        }
        if !meta_str(&body, "resourceVersion").is_empty() {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let ns_key = self.check_namespace(rt, ns, &mut body)?;
        if self.lookup(&rt.gr, Some(&ns_key), &name).is_some() {
            return Err(ApiError::already_exists(&rt.gr, &name));
        }
        let meta = body["metadata"]
            .as_object_mut()
            .expect("made an object above");
        meta.insert("uid".into(), util::new_uid().into());
        meta.insert("creationTimestamp".into(), util::now_rfc3339().into());
        meta.insert("generation".into(), 1.into());
        for server_only in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            meta.remove(server_only);
        }
        fold_string_data(rt, &mut body);
        namespace_name_label(rt, &mut body);
        let mut new_rt = None;
        match (rt.gr.group.as_str(), rt.gr.resource.as_str()) {
            _ if rt.custom && rt.status => {
                body.as_object_mut().expect("checked").remove("status");
            }
            ("", "pods") => body["status"] = json!({"phase": "Pending"}),
            ("", "secrets")
                if body
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty() =>
            {
                body["type"] = "Opaque".into()
            }
            ("", "namespaces") => {
                body["spec"] = json!({"finalizers": ["kubernetes"]});
                body["status"] = json!({"phase": "Active"});
            }
            _ if is_crd(rt) => {
                let crt = crd_resource(&body)?;
                if self.registry.is_builtin(&crt.gr) {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        &rt.gr.group,
                        &name,
                        "spec.names.plural",
                        "FieldValueInvalid",
                        "Invalid value: conflicts with a built-in resource",
                    ));
                }
                body["status"] = crd_status(&body, &crt);
                new_rt = Some(crt);
            }
            _ => {}
        }
        if dry_run {
            body["metadata"]["resourceVersion"] = "".into();
            return Ok(Obj::new(body));
        }
        let obj = self.commit(&rt.gr, (ns_key, name), Some(body));
        if let Some(crt) = new_rt {
            self.registry.register(crt);
        }
        Ok(obj)
    }

    /// The namespace key for a body, after checking it against the path and that it exists.
    fn check_namespace(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        body: &mut Value,
    ) -> Result<String, ApiError> {
        let body_ns = meta_str(body, "namespace").to_string();
        if !rt.namespaced {
            body["metadata"]
                .as_object_mut()
                .map(|m| m.remove("namespace"));
            return Ok(String::new());
        }
        let ns = ns.ok_or_else(ApiError::no_route)?;
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
        body["metadata"]["namespace"] = ns.into();
        if self.lookup(&Gr::new("", "namespaces"), None, ns).is_none() {
            return Err(ApiError::not_found(&Gr::new("", "namespaces"), ns));
        }
        Ok(ns.to_string())
    }

    /// PUT (to the object, or to `/status` with `status_only`).
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        mode: WriteMode,
    ) -> Result<Arc<Obj>, ApiError> {
        check_body(&body)?;
        check_type(rt, &mut body)?;
        let body_name = meta_str(&body, "name");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let cur = self.get(rt, ns, name)?;
        self.apply_update(rt, ns, cur, body, mode)
    }

    /// PATCH: the patch applied to the stored object, then handled as an update (so a
    /// `metadata.resourceVersion` in the patch is a precondition).
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        ptype: PatchType,
        patch: &Value,
        mode: WriteMode,
    ) -> Result<Arc<Obj>, ApiError> {
        let cur = self.get(rt, ns, name)?;
        let mut new = cur.value.clone();
        match ptype {
            PatchType::Merge => {
                if !patch.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut new, patch);
            }
            PatchType::Strategic => {
                if rt.custom {
                    return Err(ApiError::unsupported_media("application/strategic-merge-patch+json", "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"));
                }
                patch::strategic::apply(&mut new, patch).map_err(ApiError::bad_request)?;
            }
            PatchType::Json => {
                new = patch::json_patch(&new, patch).map_err(|e| {
                    ApiError::unprocessable(format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ))
                })?;
            }
        }
        check_body(&new)?;
        check_type(rt, &mut new)?;
        if meta_str(&new, "name") != name {
            return Err(ApiError::invalid(
                &rt.kind,
                &rt.gr.group,
                name,
                "metadata.name",
                "FieldValueInvalid",
                "Invalid value: field is immutable",
            ));
        }
        self.apply_update(rt, ns, cur, new, mode)
    }

    fn apply_update(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        cur: Arc<Obj>,
        mut new: Value,
        mode: WriteMode,
    ) -> Result<Arc<Obj>, ApiError> {
        let WriteMode {
            status_only,
            dry_run,
        } = mode;
        let name = cur.name().to_string();
        let want_rv = meta_str(&new, "resourceVersion");
        if !want_rv.is_empty() && want_rv != cur.rv.to_string() {
            return Err(ApiError::stale(&rt.gr, &name));
        }
        if rt.namespaced {
            let body_ns = meta_str(&new, "namespace");
            if !body_ns.is_empty() && Some(body_ns) != ns {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
        }
        let mut out = if status_only {
            let mut out = cur.value.clone();
            match new.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    out.as_object_mut()
                        .expect("stored objects are objects")
                        .remove("status");
                }
            }
            // Pods' status strategy keeps the spec (and owner references) but lets labels and
            // annotations change: how CNI plugins (Calico's) record a pod's addresses.
            if rt.gr == Gr::new("", "pods") {
                for key in ["labels", "annotations"] {
                    match new.get("metadata").and_then(|m| m.get(key)) {
                        Some(v) => out["metadata"][key] = v.clone(),
                        None => {
                            if let Some(m) = out["metadata"].as_object_mut() {
                                m.remove(key);
                            }
                        }
                    }
                }
            }
            out
        } else {
            if new.get("metadata").is_none() {
                new["metadata"] = json!({});
            }
            let meta = new["metadata"]
                .as_object_mut()
                .expect("checked by check_body");
            meta.remove("selfLink");
            meta.remove("managedFields");
            for keep in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ] {
                match cur.value["metadata"].get(keep) {
                    Some(v) => meta.insert(keep.into(), v.clone()),
                    None => meta.remove(keep),
                };
            }
            if rt.status {
                match cur.value.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().expect("checked").remove("status");
                    }
                }
            }
            fold_string_data(rt, &mut new);
            namespace_name_label(rt, &mut new);
            if !same_content(&cur.value, &new) {
                let g = cur
                    .value
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                new["metadata"]["generation"] = (g + 1).into();
            }
            new
        };
        out["metadata"]["resourceVersion"] = cur.rv.to_string().into();
        if out == cur.value {
            return Ok(cur);
        }
        let mut new_rt = None;
        if is_crd(rt) && !status_only {
            let crt = crd_resource(&out)?;
            if crt.gr != Gr::parse(&name) {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.gr.group,
                    &name,
                    "spec.group",
                    "FieldValueInvalid",
                    "Invalid value: field is immutable",
                ));
            }
            new_rt = Some(crt);
        }
        if dry_run {
            return Ok(Obj::new(out));
        }
        let key: ObjKey = (ns.filter(|_| rt.namespaced).unwrap_or("").to_string(), name);
        if out.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&out) {
            self.cascade(rt, &key);
            return Ok(self.commit(&rt.gr, key, None));
        }
        let obj = self.commit(&rt.gr, key, Some(out));
        if let Some(crt) = new_rt {
            self.registry.register(crt);
        }
        Ok(obj)
    }

    /// DELETE of one object, with the DeleteOptions body (`{}` when none was sent).
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
        dry_run: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        let cur = self.get(rt, ns, name)?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
            let have = meta_str(&cur.value, "uid");
            if uid != have {
                return Err(ApiError::conflict(&rt.gr, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}")));
            }
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            if rv != cur.rv.to_string() {
                return Err(ApiError::conflict(
                    &rt.gr,
                    name,
                    &format!("the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified", cur.rv),
                ));
            }
        }
        if dry_run {
            return Ok(cur);
        }
        let key: ObjKey = (
            ns.filter(|_| rt.namespaced).unwrap_or("").to_string(),
            name.to_string(),
        );
        if has_finalizers(&cur.value) {
            if cur.value.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(cur);
            }
            let mut v = cur.value.clone();
            v["metadata"]["deletionTimestamp"] = util::now_rfc3339().into();
            v["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            return Ok(self.commit(&rt.gr, key, Some(v)));
        }
        self.cascade(rt, &key);
        Ok(self.commit(&rt.gr, key, None))
    }

    /// What goes with an object: a namespace's contents, a CRD's objects (and its serving).
    fn cascade(&mut self, rt: &ResourceType, key: &ObjKey) {
        if rt.gr == Gr::new("", "namespaces") {
            let ns = &key.1;
            let mut doomed: Vec<(Gr, ObjKey)> = Vec::new();
            for t in self.registry.all().filter(|t| t.namespaced) {
                if let Some(m) = self.objects.get(&t.gr) {
                    doomed.extend(
                        m.range((ns.clone(), String::new())..)
                            .take_while(|(k, _)| k.0 == *ns)
                            .map(|(k, _)| (t.gr.clone(), k.clone())),
                    );
                }
            }
            for (gr, k) in doomed {
                self.commit(&gr, k, None);
            }
        } else if is_crd(rt) {
            let gr = Gr::parse(&key.1);
            if self.registry.is_builtin(&gr) {
                return;
            }
            let keys: Vec<ObjKey> = self
                .objects
                .get(&gr)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for k in keys {
                self.commit(&gr, k, None);
            }
            self.objects.remove(&gr);
            self.registry.unregister(&gr);
            self.watchers.retain(|w| w.gr != gr);
        }
    }

    /// DELETE on a collection: every matching object, as one delete each. Returns what was deleted
    /// (or marked for deletion).
    pub fn delete_collection(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        dry_run: bool,
    ) -> Result<Vec<Arc<Obj>>, ApiError> {
        let matching: Vec<Arc<Obj>> = self
            .objects
            .get(&rt.gr)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| ns.is_none_or(|ns| k.0 == ns))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for o in matching
            .into_iter()
            .filter(|o| labels.matches_obj(&o.value) && fields.matches(&o.value))
        {
            let ns = rt.namespaced.then(|| o.namespace().to_string());
            out.push(self.delete(rt, ns.as_deref(), o.name(), &json!({}), dry_run)?);
        }
        Ok(out)
    }
}
