//! YAML text -> decoded resources, with every failure kept as data.
//!
//! A file is split into documents on `---` lines *before* YAML parsing, so a syntax error in one
//! document cannot hide the others. Documents are numbered from 1, counting only those with
//! content; `kind: List` (and `FooList`, as `calicoctl get -o yaml` writes) is expanded, its
//! items reported as `doc N items[i]`. Nothing here panics on any input: YAML nesting and alias
//! expansion are bounded by serde_yaml_ng, and every other failure becomes a [`ResourceError`].

use serde_yaml_ng::Value;

use super::resources::{decode, Decoded, ObjectError, Resource};
use super::{ResourceError, Severity};

/// Everything found in one text.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Decoded resources with their origin (`pools.yaml doc 2`), in document order.
    pub resources: Vec<(String, Resource)>,
    /// Rejected documents, unsupported kinds among them ([`Severity::Unsupported`]).
    pub errors: Vec<ResourceError>,
}

/// One document's text and the 1-based line it starts on.
struct Chunk<'a> {
    text: &'a str,
    first_line: usize,
}

fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\r', '\n']);
    (line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace))
        || line.trim_end() == "..."
}

fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
    })
}

fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) {
            chunks.push(Chunk {
                text: &text[start..offset],
                first_line: start_line,
            });
            // Content after `--- ` on the same line belongs to the next document.
            // serde_yaml_ng then counts the separator line as the document's line 1.
            let (rest, first) = if line.starts_with("---") {
                (3, i + 1)
            } else {
                (line.len(), i + 2)
            };
            start = offset + rest;
            start_line = first;
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        text: &text[start..],
        first_line: start_line,
    });
    chunks.retain(|c| has_content(c.text));
    chunks
}

/// serde_yaml_ng's message without its trailing "at line L column C", and the absolute line.
fn syntax_message(e: &serde_yaml_ng::Error, first_line: usize) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            // The location is relative to the document; drop it wherever serde_yaml_ng put it.
            let msg = msg.replace(&suffix, "");
            format!(
                "YAML syntax error at line {}, column {}: {msg}",
                first_line + loc.line() - 1,
                loc.column()
            )
        }
        None => format!("YAML error: {msg}"),
    }
}

impl Parsed {
    fn error(&mut self, origin: &str, e: ObjectError) {
        self.errors.push(ResourceError {
            origin: origin.to_string(),
            kind: e.kind,
            name: e.name,
            field: e.field,
            message: e.message,
            severity: Severity::Error,
        });
    }

    fn object(&mut self, origin: String, value: &Value, depth: usize) {
        if let Some(items) = list_items(value) {
            let items = match items {
                Ok(items) => items,
                Err(e) => return self.error(&origin, e),
            };
            if depth > 0 {
                return self.error(
                    &origin,
                    ObjectError {
                        kind: Some("List".into()),
                        name: None,
                        field: Some("items".into()),
                        message: "a List inside a List is not supported".into(),
                    },
                );
            }
            for (i, item) in items.iter().enumerate() {
                self.object(format!("{origin} items[{i}]"), item, depth + 1);
            }
            return;
        }
        match decode(value) {
            Ok(Decoded::Resource(r)) => {
                if let Some(problem) = r.problem() {
                    self.errors.push(ResourceError {
                        origin: origin.clone(),
                        kind: Some(r.kind().into()),
                        name: Some(r.display_name()),
                        field: Some("spec".into()),
                        message: problem.to_string(),
                        severity: Severity::Error,
                    });
                }
                self.resources.push((origin, r))
            }
            Ok(Decoded::Unsupported {
                api_version,
                kind,
                name,
            }) => self.errors.push(ResourceError {
                message: format!(
                    "unsupported kind: calico-rs does not implement {api_version} {kind}; the \
                     document is refused"
                ),
                origin,
                kind: Some(kind),
                name,
                field: None,
                severity: Severity::Unsupported,
            }),
            Err(e) => self.error(&origin, e),
        }
    }
}

/// `Some` when the value is a List kind: its items, or why they are unusable.
fn list_items(value: &Value) -> Option<Result<&Vec<Value>, ObjectError>> {
    let kind = value.get("kind")?.as_str()?;
    if !kind.ends_with("List") {
        return None;
    }
    let err = |message: String| ObjectError {
        kind: Some(kind.to_string()),
        name: None,
        field: Some("items".into()),
        message,
    };
    Some(match value.get("items") {
        Some(Value::Sequence(items)) => Ok(items),
        None | Some(Value::Null) => Err(err("required".into())),
        Some(v) => Err(err(format!(
            "expected a list, got {}",
            super::fields::type_name(v)
        ))),
    })
}

/// Parses every document of `text`; `origin` (e.g. the file name) prefixes every location.
pub fn parse_yaml(origin: &str, text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (n, chunk) in split_documents(text).into_iter().enumerate() {
        let doc_origin = format!("{origin} doc {}", n + 1);
        match serde_yaml_ng::from_str::<Value>(chunk.text) {
            Ok(Value::Null) => {}
            Ok(value) => out.object(doc_origin, &value, 0),
            Err(e) => out.error(
                &doc_origin,
                ObjectError {
                    kind: None,
                    name: None,
                    field: None,
                    message: syntax_message(&e, chunk.first_line),
                },
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_separator_lines_only() {
        let text = "---\na: 1\n---\n# only a comment\n---   \nb: |\n  ---x\n...\n--- c: 3\n";
        let chunks = split_documents(text);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.trim()).collect();
        assert_eq!(texts, ["a: 1", "b: |\n  ---x", "c: 3"]);
        assert_eq!(chunks[0].first_line, 1);
        assert_eq!(chunks[1].first_line, 5);
        assert_eq!(chunks[2].first_line, 9);
    }

    #[test]
    fn syntax_error_names_absolute_line_and_spares_other_docs() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [\n---\n\
                    apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
        let p = parse_yaml("ns.yaml", text);
        assert_eq!(p.resources.len(), 2);
        assert_eq!(p.errors.len(), 1);
        let e = p.errors[0].to_string();
        assert!(
            e.starts_with("ns.yaml doc 2: YAML syntax error at line 6, column 1: "),
            "{e}"
        );
        assert!(!e.contains("line 3"), "{e}");
    }

    #[test]
    fn lists_are_expanded_with_item_origins() {
        let text = "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nitems:\n\
                    - apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: a}\n  spec: {cidr: 10.0.0.0/16}\n\
                    - apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: b}\n  spec: {cidr: 10.0.0.0/33}\n\
                    - apiVersion: v1\n  kind: List\n  items: []\n";
        let p = parse_yaml("p.yaml", text);
        assert_eq!(p.resources.len(), 1);
        assert_eq!(p.resources[0].0, "p.yaml doc 1 items[0]");
        let msgs: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "p.yaml doc 1 items[1]: IPPool b: spec.cidr: invalid CIDR \"10.0.0.0/33\"",
                "p.yaml doc 1 items[2]: List: items: a List inside a List is not supported",
            ]
        );
    }

    #[test]
    fn unsupported_kinds_are_errors_and_policy_kinds_are_flagged() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n\
                    apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\n\
                    metadata: {name: y, namespace: prod}\n";
        let p = parse_yaml("u.yaml", text);
        assert!(p.resources.is_empty());
        let msgs: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "u.yaml doc 1: Deployment x: unsupported kind: calico-rs does not implement \
                 apps/v1 Deployment; the document is refused",
                "u.yaml doc 2: NetworkPolicy prod/y: unsupported kind: calico-rs does not \
                 implement projectcalico.org/v3 NetworkPolicy; the document is refused",
            ]
        );
        assert!(!p.errors[0].is_unenforced_policy());
        assert!(p.errors[1].is_unenforced_policy());
    }

    #[test]
    fn garbage_never_panics() {
        let pieces = [
            "---\n",
            "apiVersion: v1\n",
            "kind: Pod\n",
            "kind: List\n",
            "items:\n",
            "- ",
            "metadata:\n",
            "  name: x\n",
            "spec: {",
            "}",
            "[",
            "]",
            "&a ",
            "*a ",
            "!!binary ",
            "\"",
            "'",
            ":",
            "\t",
            "- - -\n",
            "cidr: 10.0.0.0/8\n",
            "kind: IPPool\n",
            "\u{0}",
            "é",
            "{{{{{{{{",
            "? ",
            "|\n",
            "  ",
            "blockSize: -1\n",
            "apiVersion: projectcalico.org/v3\n",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3_000 {
            let mut s = String::new();
            for _ in 0..(seed % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let _ = parse_yaml("fuzz.yaml", &s);
            seed = seed.wrapping_add(0x9e37_79b9);
        }
        // Pathological shapes.
        let _ = parse_yaml("deep.yaml", &"[".repeat(100_000));
        let _ = parse_yaml("deep.yaml", &"- ".repeat(10_000));
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n";
        let _ = parse_yaml("bomb.yaml", bomb);
    }
}
