//! API errors as the API server reports them: a `kind: Status` object with `status: Failure`, a
//! `reason` from metav1's StatusReason list, the HTTP `code`, a `message` worded as kube-apiserver words
//! it (clients and people grep for these), and `details` naming the object.
//!
//! `details.kind` is the resource (`pods`) for NotFound, AlreadyExists and Conflict, and the Kind (`Pod`)
//! for Invalid, as in the real server.

use serde_json::{json, Map, Value};

use crate::resources::Gr;

/// One failure, ready to be written as a Status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// metav1.StatusReason (`NotFound`, `Conflict`, `Expired`, ...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details` (name, group, kind, causes), when there is an object to name.
    pub details: Option<Value>,
}

fn details(gr: &Gr, name: &str) -> Value {
    let mut d = Map::new();
    d.insert("name".into(), name.into());
    if !gr.group.is_empty() {
        d.insert("group".into(), gr.group.clone().into());
    }
    d.insert("kind".into(), gr.resource.clone().into());
    Value::Object(d)
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 `pods "x" not found`.
    pub fn not_found(gr: &Gr, name: &str) -> Self {
        ApiError {
            details: Some(details(gr, name)),
            ..Self::new(404, "NotFound", format!("{gr} \"{name}\" not found"))
        }
    }

    /// 404 for a path that names no served resource.
    pub fn no_route() -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    /// 409 `pods "x" already exists`.
    pub fn already_exists(gr: &Gr, name: &str) -> Self {
        ApiError {
            details: Some(details(gr, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{gr} \"{name}\" already exists"),
            )
        }
    }

    /// 409 Conflict with the standard optimistic-concurrency wording.
    pub fn stale(gr: &Gr, name: &str) -> Self {
        Self::conflict(
            gr,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 `Operation cannot be fulfilled on pods "x": WHY`.
    pub fn conflict(gr: &Gr, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(details(gr, name)),
            ..Self::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {gr} \"{name}\": {why}"),
            )
        }
    }

    /// 422 `Pod "x" is invalid: FIELD: WHAT`.
    pub fn invalid(
        kind: &str,
        group: &str,
        name: &str,
        field: &str,
        cause_reason: &str,
        what: &str,
    ) -> Self {
        let mut d = Map::new();
        d.insert("name".into(), name.into());
        if !group.is_empty() {
            d.insert("group".into(), group.into());
        }
        d.insert("kind".into(), kind.into());
        d.insert(
            "causes".into(),
            json!([{ "reason": cause_reason, "message": what, "field": field }]),
        );
        ApiError {
            details: Some(Value::Object(d)),
            ..Self::new(
                422,
                "Invalid",
                format!("{kind} \"{name}\" is invalid: {field}: {what}"),
            )
        }
    }

    /// 422 for a patch that cannot be applied (the API server's wording for JSON-patch failures).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 410 Expired (compacted resourceVersion or continue token).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(verb: &str, what: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({verb} {what})"
            ),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media(content_type: &str, accepted: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({content_type}) - accepted media types include: {accepted}"),
        )
    }

    /// 504 Timeout (a resourceVersion from the future).
    pub fn too_large_rv(asked: u64, current: u64) -> Self {
        ApiError {
            details: Some(
                json!({ "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }], "retryAfterSeconds": 1 }),
            ),
            ..Self::new(
                504,
                "Timeout",
                format!("Too large resource version: {asked}, current: {current}"),
            )
        }
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `kind: Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording() {
        let pods = Gr::new("", "pods");
        let e = ApiError::stale(&pods, "web").to_status();
        assert_eq!(e["reason"], "Conflict");
        assert_eq!(e["code"], 409);
        assert_eq!(
            e["message"],
            "Operation cannot be fulfilled on pods \"web\": the object has been modified; please apply your changes to the latest version and try again"
        );
        assert_eq!(e["details"], json!({"name": "web", "kind": "pods"}));
        let d = ApiError::not_found(&Gr::new("apps", "deployments"), "x").to_status();
        assert_eq!(d["message"], "deployments.apps \"x\" not found");
        assert_eq!(d["details"]["group"], "apps");
    }
}
