//! HTTP routing: a request's path and method to a resource, a verb and the store call, and the answer
//! back as JSON (objects, `XList`s, Status errors, watch streams).
//!
//! Paths: `/api/v1/[namespaces/NS/]PLURAL[/NAME[/status]]` and `/apis/G/V/...` the same; a namespaced
//! resource without `namespaces/NS` lists (or watches) across all namespaces. The answer is always
//! JSON (`Content-Type: application/json`); protobuf and Table are not offered, so clients use their
//! JSON decoding and client-side printing. Request bodies must be JSON (YAML is a 415), except
//! creates of the few kinds [`crate::proto`] decodes for kubectl's generators.
//! Everything under `/_test/` goes to the server's test controls. Every API request is logged (see
//! [`crate::reqlog`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::body::{full, RespBody};
use crate::discovery;
use crate::patch::{PatchType, ACCEPTED};
use crate::proto;
use crate::reqlog::{user_of, Entry};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::status::ApiError;
use crate::store::{ListOpts, ListPage, Obj, RvMatch, WatchFrom, WriteMode};
use crate::util::{parse_bool, parse_query};
use crate::watch::{self, WatchReq};

/// Largest request body accepted (etcd's object limit is 1.5 MiB; the API server's body limit 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Default watch length when `timeoutSeconds` is not given (upstream: 30-60 minutes).
const DEFAULT_WATCH: Duration = Duration::from_secs(1800);

/// A resource request, parsed from the path.
#[derive(Debug, Clone)]
struct Target {
    rt: Arc<ResourceType>,
    version: String,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Target {
    fn api_version(&self) -> String {
        self.rt.api_version(&self.version)
    }
}

fn json_response(code: u16, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn value_response(code: u16, v: &Value) -> Response<RespBody> {
    json_response(code, v.to_string())
}

fn error_response(e: &ApiError) -> Response<RespBody> {
    value_response(e.code, &e.to_status())
}

fn text_response(code: u16, s: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(full(s));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path.starts_with("/_test/") {
        return Ok(crate::server::control(&shared, req).await);
    }
    let user = user_of(
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let mut entry = Entry {
        user,
        verb: req.method().as_str().to_lowercase(),
        api_group: None,
        resource: None,
        subresource: None,
        namespace: None,
        name: None,
        code: 200,
        path: path.clone(),
    };
    let resp = match route(&shared, req, &mut entry).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    entry.code = resp.status().as_u16();
    shared.reqlog.record(&entry);
    Ok(resp)
}

async fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    entry: &mut Entry,
) -> Result<Response<RespBody>, ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = req.method() == Method::GET;
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez", ..] if get => Ok(text_response(200, "ok")),
        ["version"] if get => Ok(value_response(200, &discovery::version())),
        ["api"] if get => Ok(value_response(
            200,
            &discovery::core_versions(&shared.addr.to_string()),
        )),
        ["apis"] if get => {
            let v = discovery::group_list(shared.store.lock().expect("store lock").registry());
            Ok(value_response(200, &v))
        }
        ["apis", g] if get => {
            let v = discovery::group(shared.store.lock().expect("store lock").registry(), g);
            v.map(|v| value_response(200, &v))
                .ok_or_else(ApiError::no_route)
        }
        ["api", v] | ["apis", _, v] if get => {
            let g = if segs[0] == "api" { "" } else { segs[1] };
            if segs[0] == "api" && *v != "v1" {
                return Err(ApiError::no_route());
            }
            let v =
                discovery::resource_list(shared.store.lock().expect("store lock").registry(), g, v);
            v.map(|v| value_response(200, &v))
                .ok_or_else(ApiError::no_route)
        }
        ["api", "v1", rest @ ..] => {
            resource(
                shared,
                req,
                "",
                "v1",
                rest.iter().map(|s| s.to_string()).collect(),
                entry,
            )
            .await
        }
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            resource(
                shared,
                req,
                &g,
                &v,
                rest.iter().map(|s| s.to_string()).collect(),
                entry,
            )
            .await
        }
        _ => Err(ApiError::no_route()),
    }
}

/// Resolves `[namespaces/NS/]PLURAL[/NAME[/SUB]]` under a group/version.
fn target(
    shared: &Shared,
    group: &str,
    version: &str,
    rest: &[String],
) -> Result<Target, ApiError> {
    let store = shared.store.lock().expect("store lock");
    let reg = store.registry();
    let (ns, rest) = match rest {
        [n, ns, plural, tail @ ..]
            if n == "namespaces"
                && reg
                    .lookup(group, version, plural)
                    .is_some_and(|t| t.namespaced) =>
        {
            (
                Some(ns.clone()),
                std::iter::once(plural)
                    .chain(tail)
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (p, None, None),
        [p, n] => (p, Some(n.clone()), None),
        [p, n, s] => (p, Some(n.clone()), Some(s.as_str())),
        _ => return Err(ApiError::no_route()),
    };
    let rt = reg
        .lookup(group, version, plural)
        .ok_or_else(ApiError::no_route)?;
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(ApiError::no_route());
    }
    let status = match sub {
        None => false,
        Some("status") if rt.status => true,
        Some(_) => return Err(ApiError::no_route()),
    };
    Ok(Target {
        rt,
        version: version.to_string(),
        ns,
        name,
        status,
    })
}

fn query_flag(q: &[(String, String)], k: &str) -> Result<bool, ApiError> {
    match q.iter().rev().find(|(key, _)| key == k) {
        None => Ok(false),
        Some((_, v)) => parse_bool(v)
            .ok_or_else(|| ApiError::bad_request(format!("{k}: invalid boolean value {v:?}"))),
    }
}

fn query_str<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter()
        .rev()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn query_u64(q: &[(String, String)], k: &str) -> Result<Option<u64>, ApiError> {
    query_str(q, k)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "{k}: Invalid value: \"{v}\": must be a non-negative integer"
                ))
            })
        })
        .transpose()
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match body.collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

fn parse_json(b: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(b).map_err(|e| {
        ApiError::bad_request(format!("the body of the request is not valid JSON: {e}"))
    })
}

fn check_json_content(ct: &str) -> Result<(), ApiError> {
    match ct.split(';').next().unwrap_or("").trim() {
        "" | "application/json" | "*/*" => Ok(()),
        other => Err(ApiError::unsupported_media(other, "application/json")),
    }
}

async fn resource(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    group: &str,
    version: &str,
    rest: Vec<String>,
    entry: &mut Entry,
) -> Result<Response<RespBody>, ApiError> {
    let q = parse_query(req.uri().query().unwrap_or(""));
    let t = target(shared, group, version, &rest);
    // Log the authorizer's view even for requests that end in 404.
    entry.api_group = Some(group.to_string());
    match rest.as_slice() {
        [n, ns, r, ..] if n == "namespaces" => {
            entry.namespace = Some(ns.clone());
            entry.resource = Some(r.clone());
        }
        [r, ..] => entry.resource = Some(r.clone()),
        [] => {}
    }
    let t = t?;
    entry.resource = Some(t.rt.gr.resource.clone());
    entry.subresource = t.status.then(|| "status".to_string());
    entry.namespace = t.ns.clone();
    entry.name = t.name.clone();
    let method = req.method().clone();
    let watch = query_flag(&q, "watch")?;
    let dry_run = query_str(&q, "dryRun") == Some("All");
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let ns = t.ns.as_deref();
    let rt = &t.rt;
    entry.verb = match (&method, t.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        (m, _) => return Err(ApiError::method_not_allowed(m.as_str(), &rt.gr.to_string())),
    }
    .to_string();
    if t.status && !matches!(entry.verb.as_str(), "get" | "update" | "patch") {
        return Err(ApiError::method_not_allowed(
            method.as_str(),
            &format!("{}/status", rt.gr),
        ));
    }
    let labels = LabelSelector::parse(query_str(&q, "labelSelector").unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(
        query_str(&q, "fieldSelector").unwrap_or(""),
        &rt.gr.group,
        &rt.gr.resource,
    )
    .map_err(ApiError::bad_request)?;
    if entry.name.is_none() {
        entry.name = fields.required("metadata.name").map(String::from);
    }
    let av = t.api_version();
    match entry.verb.as_str() {
        "get" => {
            let o = shared.store.lock().expect("store lock").get(
                rt,
                ns,
                t.name.as_deref().unwrap_or(""),
            )?;
            Ok(json_response(200, o.json_as(&av)))
        }
        "list" => {
            let opts = ListOpts {
                labels,
                fields,
                limit: query_u64(&q, "limit")?.map(|l| l as usize),
                cont: query_str(&q, "continue").map(String::from),
                rv: query_u64(&q, "resourceVersion")?,
                rv_match: rv_match(&q)?,
            };
            let page = shared
                .store
                .lock()
                .expect("store lock")
                .list(rt, ns, &opts)?;
            Ok(json_response(200, list_json(rt, &av, &page)))
        }
        "watch" => {
            let fields = match &t.name {
                Some(n) => FieldSelector::name(n),
                None => fields,
            };
            let send_initial = query_flag(&q, "sendInitialEvents")?;
            let rvm = rv_match(&q)?;
            if send_initial && rvm != Some(RvMatch::NotOlderThan) {
                return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", "resourceVersionMatch", "FieldValueForbidden", "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
            }
            if !send_initial && rvm.is_some() {
                return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", "resourceVersionMatch", "FieldValueForbidden", "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"));
            }
            let rv = query_u64(&q, "resourceVersion")?;
            let from = match rv {
                _ if send_initial => WatchFrom::Initial,
                None | Some(0) => WatchFrom::Initial,
                Some(n) => WatchFrom::After(n),
            };
            let timeout = query_u64(&q, "timeoutSeconds")?
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_WATCH);
            let wr = WatchReq {
                rt: rt.clone(),
                api_version: av,
                ns: t.ns.clone(),
                labels,
                fields,
                from,
                send_initial,
                bookmarks: query_flag(&q, "allowWatchBookmarks")?,
                timeout,
            };
            let mut r = Response::new(watch::start(shared, wr));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(r)
        }
        "create" => {
            let body = if ct.starts_with(proto::MEDIA_TYPE) {
                proto::decode(&read_body(req).await?).map_err(|e| match e {
                    proto::ProtoError::Malformed(_) => ApiError::bad_request(e.to_string()),
                    proto::ProtoError::Unsupported(_) => {
                        ApiError::unsupported_media(&format!("{ct}: {e}"), "application/json")
                    }
                })?
            } else {
                check_json_content(&ct)?;
                parse_json(&read_body(req).await?)?
            };
            let o = shared
                .store
                .lock()
                .expect("store lock")
                .create(rt, ns, body, dry_run)?;
            Ok(json_response(201, o.json_as(&av)))
        }
        "update" => {
            check_json_content(&ct)?;
            let body = parse_json(&read_body(req).await?)?;
            let name = t.name.as_deref().unwrap_or("");
            let o = shared.store.lock().expect("store lock").update(
                rt,
                ns,
                name,
                body,
                WriteMode {
                    status_only: t.status,
                    dry_run,
                },
            )?;
            Ok(json_response(200, o.json_as(&av)))
        }
        "patch" => {
            let ptype = PatchType::from_content_type(&ct)
                .ok_or_else(|| ApiError::unsupported_media(&ct, ACCEPTED))?;
            let patch = parse_json(&read_body(req).await?)?;
            let name = t.name.as_deref().unwrap_or("");
            let o = shared.store.lock().expect("store lock").patch(
                rt,
                ns,
                name,
                ptype,
                &patch,
                WriteMode {
                    status_only: t.status,
                    dry_run,
                },
            )?;
            Ok(json_response(200, o.json_as(&av)))
        }
        "delete" => {
            let b = read_body(req).await?;
            let opts = if b.iter().all(u8::is_ascii_whitespace) {
                Value::Object(Default::default())
            } else {
                parse_json(&b)?
            };
            let dry_run = dry_run
                || opts
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x == "All"));
            let name = t.name.as_deref().unwrap_or("");
            let o = shared
                .store
                .lock()
                .expect("store lock")
                .delete(rt, ns, name, &opts, dry_run)?;
            Ok(json_response(200, o.json_as(&av)))
        }
        "deletecollection" => {
            let deleted = shared
                .store
                .lock()
                .expect("store lock")
                .delete_collection(rt, ns, &labels, &fields, dry_run)?;
            let rv = shared.store.lock().expect("store lock").rv();
            Ok(json_response(
                200,
                list_json(
                    rt,
                    &av,
                    &ListPage {
                        items: deleted,
                        rv,
                        cont: None,
                        remaining: None,
                    },
                ),
            ))
        }
        _ => unreachable!("verbs are matched above"),
    }
}

fn rv_match(q: &[(String, String)]) -> Result<Option<RvMatch>, ApiError> {
    match query_str(q, "resourceVersionMatch") {
        None => Ok(None),
        Some("NotOlderThan") => Ok(Some(RvMatch::NotOlderThan)),
        Some("Exact") => Ok(Some(RvMatch::Exact)),
        Some(other) => Err(ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            "resourceVersionMatch",
            "FieldValueNotSupported",
            &format!(
                "Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
            ),
        )),
    }
}

/// An `XList` by concatenating the stored serialisations.
fn list_json(rt: &ResourceType, api_version: &str, page: &ListPage) -> Bytes {
    let mut meta = serde_json::json!({"resourceVersion": page.rv.to_string()});
    if let Some(c) = &page.cont {
        meta["continue"] = c.clone().into();
    }
    if let Some(n) = page.remaining {
        meta["remainingItemCount"] = n.into();
    }
    let head =
        serde_json::json!({"kind": rt.list_kind, "apiVersion": api_version, "metadata": meta})
            .to_string();
    let size: usize = page.items.iter().map(|o| o.json.len() + 1).sum();
    let mut out = Vec::with_capacity(head.len() + size + 16);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    for (i, o) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&Obj::json_as(o, api_version));
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}
