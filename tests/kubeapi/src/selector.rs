//! Label and field selectors, as `labelSelector=` and `fieldSelector=` carry them.
//!
//! Labels: the set-based syntax of the "Labels and Selectors" document: `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist), and `k>N` / `k<N` (integers),
//! requirements joined by `,` (AND). `!=` and `notin` match objects without the label, as upstream.
//! Keys and values are checked against the label syntax; a bad selector is a 400.
//!
//! Fields: `f=v`, `f==v`, `f!=v` joined by `,`, with `\` escapes. Every resource supports
//! `metadata.name` and `metadata.namespace`; a few per-kind fields are served (pods' `spec.nodeName`,
//! `status.phase` and others, see [`supported_fields`]); anything else is a 400 "field label not
//! supported", as upstream.

use serde_json::{Map, Value};

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Req>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Bang,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            ' ' | '\t' => {}
            '!' if next == Some('=') => {
                out.push(Tok::NotEq);
                i += 1;
            }
            '!' => out.push(Tok::Bang),
            '=' if next == Some('=') => {
                out.push(Tok::DoubleEq);
                i += 1;
            }
            '=' => out.push(Tok::Eq),
            '>' => out.push(Tok::Gt),
            '<' => out.push(Tok::Lt),
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            _ => {
                let start = i;
                while i < b.len() && !" \t!=><(),".contains(b[i]) {
                    i += 1;
                }
                out.push(Tok::Ident(b[start..i].iter().collect()));
                continue;
            }
        }
        i += 1;
    }
    Ok(out)
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn check_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if !crate::util::is_dns_subdomain(p) {
            return Err(format!(
                "invalid label key \"{k}\": prefix part must be a DNS-1123 subdomain"
            ));
        }
    }
    if !is_name_part(name) {
        return Err(format!(
            "invalid label key \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn check_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_name_part(v) {
        Ok(())
    } else {
        Err(format!("invalid label value: \"{v}\": at key: must be 63 characters or less and consist of alphanumerics, '-', '_' or '.'"))
    }
}

impl LabelSelector {
    /// Parses a selector; the error text is what the 400 says after "unable to parse requirement: ".
    pub fn parse(s: &str) -> Result<Self, String> {
        let toks = lex(s)?;
        let mut reqs = Vec::new();
        let mut i = 0;
        let ident = |i: usize| -> Result<String, String> {
            match toks.get(i) {
                Some(Tok::Ident(s)) => Ok(s.clone()),
                other => Err(format!("found '{other:?}', expected: identifier")),
            }
        };
        while i < toks.len() {
            if toks[i] == Tok::Bang {
                let k = ident(i + 1)?;
                check_key(&k)?;
                reqs.push(Req::NotExists(k));
                i += 2;
            } else {
                let k = ident(i)?;
                check_key(&k)?;
                i += 1;
                match toks.get(i) {
                    None | Some(Tok::Comma) => reqs.push(Req::Exists(k)),
                    Some(Tok::Eq | Tok::DoubleEq | Tok::NotEq) => {
                        let neg = toks[i] == Tok::NotEq;
                        i += 1;
                        let v = match toks.get(i) {
                            Some(Tok::Ident(v)) => {
                                i += 1;
                                v.clone()
                            }
                            None | Some(Tok::Comma) => String::new(),
                            Some(t) => return Err(format!("found '{t:?}', expected: identifier")),
                        };
                        check_value(&v)?;
                        reqs.push(if neg { Req::NotEq(k, v) } else { Req::Eq(k, v) });
                    }
                    Some(Tok::Gt | Tok::Lt) => {
                        let gt = toks[i] == Tok::Gt;
                        let v = ident(i + 1)?;
                        let n: i64 = v.parse().map_err(|_| {
                            format!(
                                "for 'Gt', 'Lt' operators, the value must be an integer: \"{v}\""
                            )
                        })?;
                        reqs.push(if gt { Req::Gt(k, n) } else { Req::Lt(k, n) });
                        i += 2;
                    }
                    Some(Tok::Ident(op)) if op == "in" || op == "notin" => {
                        let notin = op == "notin";
                        i += 1;
                        if toks.get(i) != Some(&Tok::Open) {
                            return Err("found no '(', expected: '('".into());
                        }
                        i += 1;
                        let mut vals = Vec::new();
                        loop {
                            match toks.get(i) {
                                Some(Tok::Ident(v)) => {
                                    check_value(v)?;
                                    vals.push(v.clone());
                                    i += 1;
                                }
                                Some(Tok::Comma | Tok::Close) => vals.push(String::new()),
                                other => {
                                    return Err(format!("found '{other:?}', expected: identifier"))
                                }
                            }
                            match toks.get(i) {
                                Some(Tok::Comma) => i += 1,
                                Some(Tok::Close) => {
                                    i += 1;
                                    break;
                                }
                                other => {
                                    return Err(format!("found '{other:?}', expected: ',' or ')'"))
                                }
                            }
                        }
                        if vals.len() == 1 && vals[0].is_empty() {
                            return Err(
                                "for 'in', 'notin' operators, values set can't be empty".into()
                            );
                        }
                        reqs.push(if notin {
                            Req::NotIn(k, vals)
                        } else {
                            Req::In(k, vals)
                        });
                    }
                    Some(t) => {
                        return Err(format!(
                            "found '{t:?}', expected: in, notin, =, ==, !=, gt, lt"
                        ))
                    }
                }
            }
            match toks.get(i) {
                None => {}
                Some(Tok::Comma) if i + 1 < toks.len() => i += 1,
                Some(t) => return Err(format!("found '{t:?}', expected: ',' or 'end of string'")),
            }
        }
        Ok(LabelSelector { reqs })
    }

    /// Does an object with these labels (`metadata.labels`, absent = none) match?
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::Gt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Req::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }

    /// Does an object match (by its `metadata.labels`)?
    pub fn matches_obj(&self, obj: &Value) -> bool {
        self.reqs.is_empty()
            || self.matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }

    /// No requirements?
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    /// (field path, equal?, value)
    reqs: Vec<(String, bool, String)>,
}

/// Fields a resource's field selectors may use beyond `metadata.name` and `metadata.namespace`.
pub fn supported_fields(group: &str, resource: &str) -> &'static [&'static str] {
    match (group, resource) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "namespaces") => &["status.phase"],
        ("", "secrets") => &["type"],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses and checks the fields against what the resource supports.
    pub fn parse(s: &str, group: &str, resource: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_unescaped(s, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some(i) = find_unescaped(&term, "!=") {
                (&term[..i], false, &term[i + 2..])
            } else if let Some(i) = find_unescaped(&term, "==") {
                (&term[..i], true, &term[i + 2..])
            } else if let Some(i) = find_unescaped(&term, "=") {
                (&term[..i], true, &term[i + 1..])
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{term}'"
                ));
            };
            let field = field.trim().to_string();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !supported_fields(group, resource).contains(&field.as_str())
            {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push((field, eq, unescape(value.trim())));
        }
        Ok(FieldSelector { reqs })
    }

    /// A selector on the name only (a watch on one object).
    pub fn name(name: &str) -> Self {
        FieldSelector {
            reqs: vec![("metadata.name".into(), true, name.into())],
        }
    }

    /// Does the object match? Missing fields compare as `""`; booleans as `true`/`false`.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, want)| {
            let v = field.split('.').try_fold(obj, |v, k| v.get(k));
            let got = match v {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ if field == "spec.hostNetwork" || field == "spec.unschedulable" => "false".into(),
                _ => String::new(),
            };
            (got == *want) == *eq
        })
    }

    /// No requirements?
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The `metadata.namespace` / `metadata.name` it requires by equality, if any (for narrowing scans).
    pub fn required(&self, field: &str) -> Option<&str> {
        self.reqs
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut esc = false;
    for c in s.chars() {
        if esc {
            if let Some(l) = out.last_mut() {
                l.push('\\');
                l.push(c);
            }
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == sep {
            out.push(String::new());
        } else if let Some(l) = out.last_mut() {
            l.push(c);
        }
    }
    out
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i..].starts_with(pat) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        if esc || c != '\\' {
            out.push(c);
            esc = false;
        } else {
            esc = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(sel: &str, labels: Value) -> bool {
        LabelSelector::parse(sel)
            .unwrap()
            .matches(labels.as_object())
    }

    #[test]
    fn equality() {
        let l = json!({"app": "web", "tier": "front"});
        assert!(m("app=web", l.clone()));
        assert!(m("app==web,tier=front", l.clone()));
        assert!(!m("app=db", l.clone()));
        assert!(m("app!=db", l.clone()));
        assert!(m("zone!=a", l.clone()), "!= matches a missing label");
        assert!(m("", l.clone()));
        assert!(m(" app = web , tier ", l.clone()));
        assert!(!m("app=", l.clone()));
        assert!(m("x=", json!({"x": ""})));
    }

    #[test]
    fn sets_and_existence() {
        let l = json!({"app": "web", "ver": "3"});
        assert!(m("app in (web,db)", l.clone()));
        assert!(m("app in (db, web)", l.clone()));
        assert!(!m("app notin (web)", l.clone()));
        assert!(m("zone notin (a)", l.clone()));
        assert!(!m("zone in (a)", l.clone()));
        assert!(m("app", l.clone()));
        assert!(!m("!app", l.clone()));
        assert!(m("!zone,app in (web),ver>2,ver<4", l.clone()));
        assert!(!m("ver>3", l.clone()));
        assert!(m("example.com/role", json!({"example.com/role": "x"})));
    }

    #[test]
    fn bad_selectors() {
        for s in [
            "app in web",
            "app in ()",
            "=web",
            "app=web,",
            "app=web,,x",
            "app=a b",
            "app>x",
            "a in (x",
            "-bad=1",
            "!",
        ] {
            assert!(LabelSelector::parse(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn fields() {
        let pod = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let f = |s: &str| FieldSelector::parse(s, "", "pods").unwrap().matches(&pod);
        assert!(f("metadata.name=a"));
        assert!(f("metadata.name==a,metadata.namespace=ns"));
        assert!(!f("metadata.name!=a"));
        assert!(f("spec.nodeName=n1,status.phase!=Pending"));
        assert!(f("spec.hostNetwork=false"));
        assert!(f("status.podIP="));
        assert!(FieldSelector::parse("spec.nodeName=x", "", "configmaps").is_err());
        assert!(FieldSelector::parse("nonsense", "", "pods").is_err());
        let esc = FieldSelector::parse("metadata.name=a\\,b", "", "pods").unwrap();
        assert!(esc.matches(&json!({"metadata": {"name": "a,b"}})));
        assert_eq!(
            FieldSelector::parse("metadata.namespace=ns", "", "pods")
                .unwrap()
                .required("metadata.namespace"),
            Some("ns")
        );
    }
}
