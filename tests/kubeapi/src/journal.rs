//! `--state FILE`: an append-only journal of changes, one JSON line each, so a killed server comes back
//! with the same objects and a resourceVersion counter that never goes backwards.
//!
//! A line is `{"rv":N,"gr":"pods","ns":"default","name":"x","obj":{...}}` (a create or update) or the
//! same with `"obj":null` (a delete); a line with only `rv` marks the counter. Each change is one
//! `write(2)` of an already serialised object, without fsync: the kernel keeps it when the process is
//! killed, which is what tests do (a machine crash may lose the tail; a torn last line is skipped).
//! On open the file is replayed and rewritten as one line per live object plus a counter line
//! (written to `FILE.tmp`, then renamed), so it does not grow across restarts.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde_json::Value;

use crate::resources::Gr;
use crate::store::{Obj, ObjKey};

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    file: File,
}

/// What a journal held.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Live objects.
    pub objects: Vec<(Gr, ObjKey, Value)>,
    /// The highest rv ever used.
    pub rv: u64,
}

fn line(rv: u64, gr: &Gr, key: &ObjKey, obj: Option<&[u8]>) -> Vec<u8> {
    let head =
        serde_json::json!({"rv": rv, "gr": gr.to_string(), "ns": key.0, "name": key.1}).to_string();
    let mut out = Vec::with_capacity(head.len() + obj.map_or(4, <[u8]>::len) + 10);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"obj\":");
    out.extend_from_slice(obj.unwrap_or(b"null"));
    out.extend_from_slice(b"}\n");
    out
}

impl Journal {
    /// Replays `path` (if it exists), compacts it, and opens it for appending.
    pub fn open(path: &Path) -> std::io::Result<(Journal, Loaded)> {
        let mut live: BTreeMap<(Gr, ObjKey), Value> = BTreeMap::new();
        let mut rv = 0;
        if let Ok(f) = File::open(path) {
            for l in BufReader::new(f).lines() {
                let l = l?;
                let Ok(rec) = serde_json::from_str::<Value>(&l) else {
                    tracing::warn!(path = %path.display(), "skipping a torn journal line");
                    continue;
                };
                rv = rv.max(rec.get("rv").and_then(Value::as_u64).unwrap_or(0));
                let (Some(gr), Some(ns), Some(name)) = (
                    rec.get("gr").and_then(Value::as_str),
                    rec.get("ns").and_then(Value::as_str),
                    rec.get("name").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let k = (Gr::parse(gr), (ns.to_string(), name.to_string()));
                match rec.get("obj") {
                    Some(o) if o.is_object() => {
                        live.insert(k, o.clone());
                    }
                    _ => {
                        live.remove(&k);
                    }
                }
            }
        }
        let tmp = path.with_extension("tmp");
        {
            let mut out = std::io::BufWriter::new(File::create(&tmp)?);
            for ((gr, key), v) in &live {
                let orv = v
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(rv);
                out.write_all(&line(orv, gr, key, Some(&serde_json::to_vec(v)?)))?;
            }
            writeln!(out, "{{\"rv\":{rv}}}")?;
            out.flush()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        let objects = live
            .into_iter()
            .map(|((gr, key), v)| (gr, key, v))
            .collect();
        Ok((Journal { file }, Loaded { objects, rv }))
    }

    /// Records one change (`None`: a delete).
    pub fn append(
        &mut self,
        rv: u64,
        gr: &Gr,
        key: &ObjKey,
        obj: Option<&Obj>,
    ) -> std::io::Result<()> {
        self.file
            .write_all(&line(rv, gr, key, obj.map(|o| &o.json[..])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replay_and_compact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.jsonl");
        let pods = Gr::new("", "pods");
        let k = |n: &str| ("ns".to_string(), n.to_string());
        {
            let (mut j, l) = Journal::open(&p).unwrap();
            assert_eq!(l.rv, 0);
            let a = Obj::new(json!({"metadata": {"name": "a", "resourceVersion": "1"}}));
            j.append(1, &pods, &k("a"), Some(&a)).unwrap();
            let b = Obj::new(json!({"metadata": {"name": "b", "resourceVersion": "2"}}));
            j.append(2, &pods, &k("b"), Some(&b)).unwrap();
            j.append(3, &pods, &k("a"), None).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"rv\":4,\"gr\":\"po")
            .unwrap();
        let (_, l) = Journal::open(&p).unwrap();
        assert_eq!(l.rv, 3);
        assert_eq!(l.objects.len(), 1);
        assert_eq!(l.objects[0].1, k("b"));
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text.lines().count(),
            2,
            "compacted to one object and the counter: {text}"
        );
        let (_, again) = Journal::open(&p).unwrap();
        assert_eq!(again.rv, 3);
    }
}
