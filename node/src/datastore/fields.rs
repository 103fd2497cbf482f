//! Field access over an untyped YAML value that remembers where it is, so that every rejection
//! names the field (`spec.bgp.ipv4Address: invalid address "10.0.0.300/24"`).
//!
//! Decoding by hand instead of `#[derive(Deserialize)]` is deliberate: serde's errors do not carry
//! the field path of a `serde_yaml_ng::Value`, and Calico users need to know which field was wrong.
//! Unknown fields are ignored, as the Kubernetes API server does on read.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

/// A rejected field: its dotted path from the object root and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `spec.containers[0].ports[1].containerPort`.
    pub field: String,
    /// What was wrong with it.
    pub message: String,
}

pub type FResult<T> = Result<T, FieldError>;

/// Short description of a value's type for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A mapping plus its path from the object root.
#[derive(Clone, Copy)]
pub struct Obj<'a> {
    map: &'a Mapping,
    path: &'a str,
}

/// A value plus its path; the owned path lets list items carry `[i]`.
pub struct At<'a> {
    pub value: &'a Value,
    pub path: String,
}

impl<'a> At<'a> {
    pub fn err(&self, message: impl Into<String>) -> FieldError {
        FieldError {
            field: self.path.clone(),
            message: message.into(),
        }
    }

    pub fn as_obj(&'a self) -> FResult<Obj<'a>> {
        match self.value {
            Value::Mapping(map) => Ok(Obj {
                map,
                path: &self.path,
            }),
            v => Err(self.err(format!("expected a map, got {}", type_name(v)))),
        }
    }

    pub fn as_str(&self) -> FResult<&'a str> {
        match self.value {
            Value::String(s) => Ok(s),
            v => Err(self.err(format!("expected a string, got {}", type_name(v)))),
        }
    }
}

impl<'a> Obj<'a> {
    /// The root object of a document; `what` names it in the error.
    pub fn root(v: &'a Value) -> FResult<Obj<'a>> {
        match v {
            Value::Mapping(map) => Ok(Obj { map, path: "" }),
            v => Err(FieldError {
                field: "(document)".into(),
                message: format!(
                    "expected a map with apiVersion and kind, got {}",
                    type_name(v)
                ),
            }),
        }
    }

    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn err(&self, key: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: self.path_of(key),
            message: message.into(),
        }
    }

    /// The field's value; a missing key and an explicit `null` are both `None`.
    pub fn get(&self, key: &str) -> Option<At<'a>> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(At {
                value,
                path: self.path_of(key),
            }),
        }
    }

    pub fn str(&self, key: &str) -> FResult<Option<&'a str>> {
        self.get(key).map(|a| a.as_str()).transpose()
    }

    pub fn required_str(&self, key: &str) -> FResult<&'a str> {
        match self.str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.err(key, "required")),
        }
    }

    pub fn bool(&self, key: &str) -> FResult<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(At {
                value: Value::Bool(b),
                ..
            }) => Ok(Some(*b)),
            Some(a) => Err(a.err(format!(
                "expected true or false, got {}",
                type_name(a.value)
            ))),
        }
    }

    /// An unsigned integer no larger than `max`; a numeric string is accepted too.
    pub fn uint(&self, key: &str, max: u64) -> FResult<Option<u64>> {
        let Some(a) = self.get(key) else {
            return Ok(None);
        };
        let n = match a.value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n <= max => Ok(Some(n)),
            Some(n) => Err(a.err(format!("{n} is out of range (0-{max})"))),
            None => Err(a.err(format!(
                "expected a whole number, got {}",
                describe(a.value)
            ))),
        }
    }

    pub fn obj(&self, key: &str) -> FResult<Option<ObjOwned<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(At {
                value: Value::Mapping(map),
                path,
            }) => Ok(Some(ObjOwned { map, path })),
            Some(a) => Err(a.err(format!("expected a map, got {}", type_name(a.value)))),
        }
    }

    /// List items with their paths (`key[i]`); a missing list is empty.
    pub fn seq(&self, key: &str) -> FResult<Vec<At<'a>>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(At {
                value: Value::Sequence(items),
                path,
            }) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, value)| At {
                    value,
                    path: format!("{path}[{i}]"),
                })
                .collect()),
            Some(a) => Err(a.err(format!("expected a list, got {}", type_name(a.value)))),
        }
    }

    /// A string-to-string map (labels, annotations). Numbers and booleans are taken as their
    /// text, which is friendlier than the API server's rejection of `tier: 1`.
    pub fn string_map(&self, key: &str) -> FResult<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let Some(a) = self.get(key) else {
            return Ok(out);
        };
        let Value::Mapping(map) = a.value else {
            return Err(a.err(format!("expected a map, got {}", type_name(a.value))));
        };
        for (k, v) in map {
            let Some(k) = scalar_text(k) else {
                return Err(a.err(format!("keys must be strings, got {}", type_name(k))));
            };
            let v = match v {
                Value::Null => String::new(),
                v => scalar_text(v).ok_or_else(|| FieldError {
                    field: format!("{}.{k}", a.path),
                    message: format!("expected a string, got {}", type_name(v)),
                })?,
            };
            out.insert(k, v);
        }
        Ok(out)
    }
}

/// An [`Obj`] whose path is owned (a nested map found by [`Obj::obj`]).
pub struct ObjOwned<'a> {
    map: &'a Mapping,
    path: String,
}

impl ObjOwned<'_> {
    pub fn view(&self) -> Obj<'_> {
        Obj {
            map: self.map,
            path: &self.path,
        }
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A value for an error message: scalars quoted, others by type.
pub fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        v => type_name(v).to_string(),
    }
}

/// Parses a BGP AS number: a plain 32-bit number or asdot `high.low`, as Calico's
/// `numorstring.ASNumber` accepts; 0 is not a valid AS.
pub fn parse_asn(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let n = match text.split_once('.') {
        Some((hi, lo)) => match (hi.parse::<u16>(), lo.parse::<u16>()) {
            (Ok(hi), Ok(lo)) => Some((u32::from(hi) << 16) | u32::from(lo)),
            _ => None,
        },
        None => text.parse::<u32>().ok(),
    };
    match n {
        Some(0) => Err("AS number 0 is reserved".into()),
        Some(n) => Ok(n),
        None => Err(format!(
            "invalid AS number {text:?} (want 1-4294967295 or asdot HIGH.LOW)"
        )),
    }
}

/// An AS number field given as a number or a string.
pub fn asn_field(obj: &Obj<'_>, key: &str) -> FResult<Option<u32>> {
    let Some(a) = obj.get(key) else {
        return Ok(None);
    };
    let text = match a.value {
        Value::Number(n) if n.is_f64() => {
            return Err(a.err(format!(
                "{n} read as a decimal number; quote asdot AS numbers (e.g. \"1.10\")"
            )))
        }
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        v => return Err(a.err(format!("expected an AS number, got {}", type_name(v)))),
    };
    parse_asn(&text).map(Some).map_err(|m| a.err(m))
}

/// Parses a Go duration as Kubernetes writes them (`90s`, `2m30s`, `1h`, `500ms`).
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (want e.g. \"120s\", \"2m\", \"1h30m\")");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn_forms() {
        assert_eq!(parse_asn("64512"), Ok(64512));
        assert_eq!(parse_asn("1.10"), Ok(65546));
        assert_eq!(parse_asn("4294967295"), Ok(u32::MAX));
        assert!(parse_asn("0").is_err());
        assert!(parse_asn("4294967296").is_err());
        assert!(parse_asn("65536.1").is_err());
        assert!(parse_asn("x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "10", "10x", "1e400h", "--1s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_in_errors() {
        let v: Value = serde_yaml_ng::from_str(
            "spec:\n  n: abc\n  list: [1, {a: 2}]\n  labels: {a: [1]}\n  big: 70000\n",
        )
        .unwrap();
        let root = Obj::root(&v).unwrap();
        let spec = root.obj("spec").unwrap().unwrap();
        let spec = spec.view();
        assert_eq!(spec.uint("n", 10).unwrap_err().field, "spec.n");
        let e = spec.uint("big", 65535).unwrap_err();
        assert_eq!(e.message, "70000 is out of range (0-65535)");
        let items = spec.seq("list").unwrap();
        assert_eq!(items[1].path, "spec.list[1]");
        assert_eq!(items[0].as_obj().err().unwrap().field, "spec.list[0]");
        assert_eq!(
            spec.string_map("labels").unwrap_err().field,
            "spec.labels.a"
        );
        assert_eq!(spec.required_str("nope").unwrap_err().field, "spec.nope");
    }
}
