//! Just enough of the API server's protobuf encoding to take the bodies kubectl's generators send
//! (`kubectl create namespace|configmap|secret|serviceaccount` use client-go's typed clients, which
//! send `application/vnd.kubernetes.protobuf`): the `k8s\0` + `runtime.Unknown` envelope, ObjectMeta's
//! plain fields, and those four kinds' fields, decoded to the same JSON a JSON client would send.
//!
//! Field numbers are those of k8s.io/api's `generated.proto`. Any other kind, and any field of these
//! kinds not listed, is refused (415 with the kind named) rather than dropped silently. Answers are
//! always JSON, which client-go accepts whatever it sent.

use serde_json::{json, Map, Value};

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// A decoding failure (the HTTP layer turns it into a 415 or 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtoError {
    /// Not the `k8s\0` envelope, or broken wire format.
    #[error("malformed protobuf body: {0}")]
    Malformed(&'static str),
    /// A kind (or a field of it) this server does not decode.
    #[error("protobuf bodies of {0} are not supported here: send JSON")]
    Unsupported(String),
}

type R<T> = Result<T, ProtoError>;

/// One field: number and payload.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> R<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or(ProtoError::Malformed("truncated varint"))?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ProtoError::Malformed("varint too long"))
}

fn fields(b: &[u8]) -> R<Vec<(u64, Wire<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let w = match key & 7 {
            0 => Wire::Varint(varint(b, &mut i)?),
            2 => {
                let n = varint(b, &mut i)? as usize;
                let end = i
                    .checked_add(n)
                    .filter(|e| *e <= b.len())
                    .ok_or(ProtoError::Malformed("length past the end"))?;
                let s = &b[i..end];
                i = end;
                Wire::Bytes(s)
            }
            _ => return Err(ProtoError::Malformed("unexpected wire type")),
        };
        out.push((key >> 3, w));
    }
    Ok(out)
}

fn string(w: &Wire<'_>) -> R<String> {
    match w {
        Wire::Bytes(b) => {
            String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed("string is not UTF-8"))
        }
        Wire::Varint(_) => Err(ProtoError::Malformed("expected a string")),
    }
}

fn bytes<'a>(w: &Wire<'a>) -> R<&'a [u8]> {
    match w {
        Wire::Bytes(b) => Ok(b),
        Wire::Varint(_) => Err(ProtoError::Malformed("expected bytes")),
    }
}

/// A `map<string, V>` entry: key 1, value 2.
fn entry<'a>(w: &Wire<'a>) -> R<(String, Option<Wire<'a>>)> {
    let mut key = String::new();
    let mut val = None;
    for (n, f) in fields(bytes(w)?)? {
        match n {
            1 => key = string(&f)?,
            2 => val = Some(f),
            _ => return Err(ProtoError::Malformed("map entry field")),
        }
    }
    Ok((key, val))
}

fn object_meta(b: &[u8], kind: &str) -> R<Value> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(b)? {
        match n {
            // gogo-protobuf writes empty strings too: an empty one is an unset field.
            1 | 2 | 3 | 6 => {
                let v = string(&f)?;
                let k = [
                    "name",
                    "generateName",
                    "namespace",
                    "",
                    "",
                    "resourceVersion",
                ][n as usize - 1];
                if !v.is_empty() {
                    m.insert(k.into(), v.into());
                }
            }
            11 | 12 => {
                let (k, v) = entry(&f)?;
                let v = v.map(|v| string(&v)).transpose()?.unwrap_or_default();
                if n == 11 {
                    &mut labels
                } else {
                    &mut annotations
                }
                .insert(k, v.into());
            }
            14 => finalizers.push(Value::from(string(&f)?)),
            // selfLink, uid, generation, timestamps: server-set, ignored as the JSON path ignores them.
            4 | 5 | 7 | 8 | 9 | 10 => {}
            _ => {
                return Err(ProtoError::Unsupported(format!(
                    "{kind} (metadata field {n})"
                )))
            }
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), labels.into());
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), annotations.into());
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), finalizers.into());
    }
    Ok(Value::Object(m))
}

fn map_field(obj: &mut Value, field: &str, f: &Wire<'_>, as_bytes: bool) -> R<()> {
    let (k, v) = entry(f)?;
    let v = match v {
        None => String::new(),
        Some(v) if as_bytes => crate::util::b64_encode(bytes(&v)?),
        Some(v) => string(&v)?,
    };
    if obj.get(field).is_none() {
        obj[field] = json!({});
    }
    obj[field][k] = v.into();
    Ok(())
}

/// Decodes a protobuf request body to the JSON object it stands for.
pub fn decode(body: &[u8]) -> R<Value> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or(ProtoError::Malformed("no k8s\\0 prefix"))?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(rest)? {
        match n {
            1 => {
                for (tn, tf) in fields(bytes(&f)?)? {
                    match tn {
                        1 => api_version = string(&tf)?,
                        2 => kind = string(&tf)?,
                        _ => {}
                    }
                }
            }
            2 => raw = bytes(&f)?,
            3 if !bytes(&f)?.is_empty() => {
                return Err(ProtoError::Unsupported("a content-encoded body".into()))
            }
            _ => {}
        }
    }
    let supported = api_version == "v1"
        && matches!(
            kind.as_str(),
            "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount"
        );
    if !supported {
        return Err(ProtoError::Unsupported(format!("{api_version} {kind}")));
    }
    let mut obj = json!({"apiVersion": api_version, "kind": kind});
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n) {
            (_, 1) => obj["metadata"] = object_meta(bytes(&f)?, &kind)?,
            ("Namespace", 2) => {
                let fin: R<Vec<Value>> = fields(bytes(&f)?)?
                    .iter()
                    .filter(|(n, _)| *n == 1)
                    .map(|(_, w)| string(w).map(Value::from))
                    .collect();
                obj["spec"] = json!({"finalizers": fin?});
            }
            ("Namespace", 3) => {}
            ("ConfigMap", 2) => map_field(&mut obj, "data", &f, false)?,
            ("ConfigMap", 3) => map_field(&mut obj, "binaryData", &f, true)?,
            ("ConfigMap", 4) | ("Secret", 5) => {
                obj["immutable"] = matches!(f, Wire::Varint(1)).into()
            }
            ("Secret", 2) => map_field(&mut obj, "data", &f, true)?,
            ("Secret", 3) => {
                let t = string(&f)?;
                if !t.is_empty() {
                    obj["type"] = t.into();
                }
            }
            ("Secret", 4) => map_field(&mut obj, "stringData", &f, false)?,
            ("ServiceAccount", 4) => {
                obj["automountServiceAccountToken"] = matches!(f, Wire::Varint(1)).into()
            }
            _ => return Err(ProtoError::Unsupported(format!("{kind} (field {n})"))),
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    fn entry_of(k: &str, v: &[u8]) -> Vec<u8> {
        [bytes_field(1, k.as_bytes()), bytes_field(2, v)].concat()
    }

    fn envelope(kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = [bytes_field(1, b"v1"), bytes_field(2, kind.as_bytes())].concat();
        [b"k8s\0".to_vec(), bytes_field(1, &tm), bytes_field(2, raw)].concat()
    }

    #[test]
    fn a_secret_as_kubectl_create_secret_sends_it() {
        let meta = [
            bytes_field(1, b"pw"),
            bytes_field(2, b""),
            bytes_field(3, b"kube-system"),
            bytes_field(11, &entry_of("app", b"bgp")),
        ]
        .concat();
        let raw = [
            bytes_field(1, &meta),
            bytes_field(2, &entry_of("password", b"s3cret")),
            bytes_field(3, b"Opaque"),
        ]
        .concat();
        let v = decode(&envelope("Secret", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"password": "czNjcmV0"},
                   "metadata": {"name": "pw", "namespace": "kube-system", "labels": {"app": "bgp"}}})
        );
    }

    #[test]
    fn namespaces_and_refusals() {
        let raw = [
            bytes_field(1, &bytes_field(1, b"demo")),
            bytes_field(2, b""),
            bytes_field(3, b""),
        ]
        .concat();
        assert_eq!(
            decode(&envelope("Namespace", &raw)).unwrap()["metadata"]["name"],
            "demo"
        );
        assert!(matches!(
            decode(&envelope("Pod", &raw)),
            Err(ProtoError::Unsupported(_))
        ));
        assert!(matches!(decode(b"{}"), Err(ProtoError::Malformed(_))));
        assert!(matches!(
            decode(&[b"k8s\0".as_slice(), &[0x12, 0x7f]].concat()),
            Err(ProtoError::Malformed(_))
        ));
        let odd = [bytes_field(1, &bytes_field(1, b"x")), bytes_field(9, b"?")].concat();
        assert!(matches!(
            decode(&envelope("ConfigMap", &odd)),
            Err(ProtoError::Unsupported(_))
        ));
    }
}
