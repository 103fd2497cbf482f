//! Kubernetes label selectors: validation, matching and a canonical text form.
//!
//! A [`Selector`] is the checked form of a [`LabelSelector`]: `matchLabels` become equality
//! requirements, `matchExpressions` become `In` / `NotIn` / `Exists` / `DoesNotExist` requirements,
//! all ANDed. Requirements are sorted and de-duplicated, so two selectors that mean the same thing
//! written in a different order have the same [`Selector::canonical`] text — the compiler names the
//! shared nftables sets after that text, which is what lets many policies share one set.
//!
//! Validation follows the API server: label keys are qualified names (`[prefix/]name`, name at most
//! 63 characters of `[A-Za-z0-9._-]` starting and ending alphanumeric, prefix a DNS subdomain),
//! values at most 63 characters of the same alphabet (or empty); `In`/`NotIn` need at least one
//! value, `Exists`/`DoesNotExist` none.

use std::collections::BTreeSet;
use std::fmt;

use super::model::{LabelSelector, Labels};

/// A checked label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

/// One requirement of a [`Selector`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    /// `key` is one of the values (`matchLabels` gives a one-value `In`).
    In(String, BTreeSet<String>),
    /// `key` is absent or not one of the values.
    NotIn(String, BTreeSet<String>),
    /// `key` is present.
    Exists(String),
    /// `key` is absent.
    DoesNotExist(String),
}

/// A validation failure: the field path inside the selector and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path relative to the selector, e.g. `matchExpressions[1].operator`.
    pub field: String,
    /// What is wrong, e.g. `unknown operator "Equals"`.
    pub reason: String,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn all() -> Selector {
        Selector::default()
    }

    /// Check `sel` and build its canonical form. Every problem is returned, not just the first.
    pub fn parse(sel: &LabelSelector) -> Result<Selector, Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            let field = format!("matchLabels.{k}");
            check_key(k, &field, &mut errs);
            check_value(v, &field, &mut errs);
            reqs.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("matchExpressions[{i}]");
            check_key(&e.key, &format!("{at}.key"), &mut errs);
            let values: Vec<String> = e.values.clone().unwrap_or_default();
            for (j, v) in values.iter().enumerate() {
                check_value(v, &format!("{at}.values[{j}]"), &mut errs);
            }
            let set: BTreeSet<String> = values.iter().cloned().collect();
            let needs_values = match e.operator.as_str() {
                "In" => Some(Requirement::In(e.key.clone(), set)),
                "NotIn" => Some(Requirement::NotIn(e.key.clone(), set)),
                "Exists" => None,
                "DoesNotExist" => None,
                other => {
                    errs.push(FieldError {
                        field: format!("{at}.operator"),
                        reason: format!(
                            "unknown operator {other:?} (want In, NotIn, Exists or DoesNotExist)"
                        ),
                    });
                    continue;
                }
            };
            match needs_values {
                Some(req) => {
                    if values.is_empty() {
                        errs.push(FieldError {
                            field: format!("{at}.values"),
                            reason: format!("operator {} needs at least one value", e.operator),
                        });
                    }
                    reqs.push(req);
                }
                None => {
                    if !values.is_empty() {
                        errs.push(FieldError {
                            field: format!("{at}.values"),
                            reason: format!("operator {} takes no values", e.operator),
                        });
                    }
                    reqs.push(if e.operator == "Exists" {
                        Requirement::Exists(e.key.clone())
                    } else {
                        Requirement::DoesNotExist(e.key.clone())
                    });
                }
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        reqs.sort();
        reqs.dedup();
        Ok(Selector { reqs })
    }

    /// Whether the selector matches every label set.
    pub fn is_all(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Canonical text, in `kubectl`'s selector syntax: `app=web,tier in (a,b),!legacy`;
    /// `{}` for the empty selector.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reqs.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let list = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
            match r {
                Requirement::In(k, vs) if vs.len() == 1 => write!(f, "{k}={}", list(vs))?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", list(vs))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", list(vs))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// A label name / value body: alphanumeric at both ends, `[-_.A-Za-z0-9]` inside, at most 63.
fn valid_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| is_name_char(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A DNS subdomain (RFC 1123): lowercase labels separated by dots, at most 253.
fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn check_key(key: &str, field: &str, errs: &mut Vec<FieldError>) {
    let ok = match key.split_once('/') {
        Some((prefix, name)) => valid_dns_subdomain(prefix) && valid_name_part(name),
        None => valid_name_part(key),
    };
    if !ok {
        errs.push(FieldError {
            field: field.to_string(),
            reason: format!("invalid label key {key:?}"),
        });
    }
}

fn check_value(value: &str, field: &str, errs: &mut Vec<FieldError>) {
    if !(value.is_empty() || valid_name_part(value)) {
        errs.push(FieldError {
            field: field.to_string(),
            reason: format!("invalid label value {value:?}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(yaml: &str) -> Result<Selector, Vec<FieldError>> {
        Selector::parse(&serde_yaml_ng::from_str::<LabelSelector>(yaml).unwrap())
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selects_all() {
        let s = sel("{}").unwrap();
        assert!(s.is_all());
        assert!(s.matches(&labels(&[])));
        assert_eq!(s.canonical(), "{}");
    }

    #[test]
    fn operators() {
        let s = sel(r#"
matchLabels: {app: web}
matchExpressions:
- {key: tier, operator: In, values: [fe, be]}
- {key: env, operator: NotIn, values: [dev]}
- {key: team, operator: Exists}
- {key: legacy, operator: DoesNotExist}
"#)
        .unwrap();
        let ok = labels(&[("app", "web"), ("tier", "fe"), ("team", "a")]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("env".into(), "dev".into());
        assert!(!s.matches(&l), "NotIn dev");
        l.insert("env".into(), "prod".into());
        assert!(s.matches(&l), "NotIn matches other values");
        let mut l = ok.clone();
        l.insert("legacy".into(), "".into());
        assert!(!s.matches(&l), "DoesNotExist");
        let mut l = ok.clone();
        l.remove("team");
        assert!(!s.matches(&l), "Exists");
        let mut l = ok.clone();
        l.insert("tier".into(), "db".into());
        assert!(!s.matches(&l), "In");
        assert_eq!(
            s.canonical(),
            "app=web,tier in (be,fe),env notin (dev),team,!legacy"
        );
    }

    #[test]
    fn canonical_ignores_order_and_duplicates() {
        let a = sel("matchLabels: {a: '1', b: '2'}").unwrap();
        let b = sel(r#"
matchExpressions:
- {key: b, operator: In, values: ['2']}
- {key: a, operator: In, values: ['1']}
- {key: a, operator: In, values: ['1']}
"#)
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn rejects_bad_input_with_field() {
        let e = sel("matchExpressions: [{key: app, operator: Equals, values: [x]}]").unwrap_err();
        assert_eq!(e[0].field, "matchExpressions[0].operator");
        assert!(e[0].reason.contains("Equals"), "{e:?}");
        let e = sel("matchExpressions: [{key: app, operator: In}]").unwrap_err();
        assert_eq!(e[0].field, "matchExpressions[0].values");
        let e = sel("matchExpressions: [{key: app, operator: Exists, values: [x]}]").unwrap_err();
        assert_eq!(e[0].field, "matchExpressions[0].values");
        let e = sel("matchLabels: {'bad key!': x}").unwrap_err();
        assert_eq!(e[0].field, "matchLabels.bad key!");
        let e = sel("matchLabels: {app: 'spaces are bad'}").unwrap_err();
        assert!(e[0].reason.contains("invalid label value"));
        assert!(sel("matchLabels: {'example.com/app': x, app: ''}").is_ok());
        assert!(sel("matchLabels: {'Bad_Prefix/app': x}").is_err());
    }
}
