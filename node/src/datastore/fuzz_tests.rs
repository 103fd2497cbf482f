//! Bounded fuzzing that runs with `cargo test` (issue 9): a deterministic mutation loop over the
//! seed corpus of the libFuzzer targets in `node/fuzz/` (`corpus/datastore`, `corpus/selectors`:
//! the YAML documents and selector strings of the unit, calculation, felix golden and cluster
//! tests), checking the same properties as those targets ([`checks`]). A panic anywhere fails the
//! test and prints the input that caused it. The long runs are libFuzzer's (`node/fuzz/README.md`).
//!
//! The PRNG is seeded, so a failure reproduces exactly; mutations are byte-level (bit flips,
//! interesting bytes, inserts, deletes, truncation, splices from other seeds, short runs repeated)
//! and YAML-aware (dictionary tokens from `node/fuzz/*.dict`, whole lines deleted, duplicated or
//! moved, values replaced, documents of two seeds joined). Without the short-run repeats the loop
//! would not have found the selector `Display` bug that libFuzzer found (see selector.rs).

mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

// checks.rs is shared with the fuzz crate, where calico-node is an extern crate; it reaches us as
// `super::node`.
use crate as node;

/// xorshift64* (Vigna), as in `bgp::wire`'s property tests.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// In `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The seed files of one target, in name order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "{}: only {} seeds",
        dir.display(),
        files.len()
    );
    files
}

/// The tokens of a libFuzzer dictionary (`"..."` lines with `\\`, `\"` and `\xNN` escapes).
fn dictionary(target: &str) -> Vec<Vec<u8>> {
    let path = fuzz_dir().join(format!("{target}.dict"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut tokens = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let quoted = &line.as_bytes()[line.find('"').expect(line)..];
        let body = &quoted[1..quoted.len() - 1];
        let mut tok = Vec::new();
        let mut i = 0;
        while i < body.len() {
            match (body[i], body.get(i + 1)) {
                (b'\\', Some(b'x')) => {
                    let hex = std::str::from_utf8(&body[i + 2..i + 4]).unwrap();
                    tok.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 4;
                }
                (b'\\', Some(&c)) => {
                    tok.push(c);
                    i += 2;
                }
                (c, _) => {
                    tok.push(c);
                    i += 1;
                }
            }
        }
        tokens.push(tok);
    }
    assert!(tokens.len() > 20, "{}", path.display());
    tokens
}

const INTERESTING: &[u8] = b"\n :-{}[]'\"&*#|!,=()0\t\xff";
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"255",
    b"256",
    b"65535",
    b"65536",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"1.5",
    b"1e9",
    b"0x1f",
];

fn lines(buf: &[u8]) -> Vec<Vec<u8>> {
    buf.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// One random mutation of `buf`.
fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, donors: &[Vec<u8>], dict: &[Vec<u8>]) {
    let len = buf.len();
    match rng.below(13) {
        0 if len > 0 => {
            let i = rng.below(len);
            buf[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            buf[i] = *rng.pick(INTERESTING);
        }
        2 => {
            let i = rng.below(len + 1);
            buf.insert(i, rng.next() as u8);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let n = (1 + rng.below(8)).min(len - at);
            buf.drain(at..at + n);
        }
        4 => buf.truncate(rng.below(len + 1)),
        5 => {
            let d = rng.pick(donors);
            if !d.is_empty() {
                let from = rng.below(d.len());
                let n = 1 + rng.below((d.len() - from).min(64));
                let at = rng.below(len + 1);
                buf.splice(at..at, d[from..from + n].iter().copied());
            }
        }
        6 | 7 => {
            // A dictionary token, half the time at the start of a line.
            let tok = rng.pick(dict).clone();
            let mut at = rng.below(len + 1);
            if rng.below(2) == 0 {
                at = buf[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
            }
            buf.splice(at..at, tok);
        }
        8 => {
            let mut ls = lines(buf);
            if !ls.is_empty() {
                let i = rng.below(ls.len());
                match rng.below(3) {
                    0 => {
                        ls.remove(i);
                    }
                    1 => {
                        let l = ls[i].clone();
                        ls.insert(i, l);
                    }
                    _ => {
                        let l = ls.remove(i);
                        let j = rng.below(ls.len() + 1);
                        ls.insert(j, l);
                    }
                }
                *buf = ls.concat();
            }
        }
        9 => {
            // Replace what follows the first ": " of a line by a token or a number.
            let mut ls = lines(buf);
            if !ls.is_empty() {
                let i = rng.below(ls.len());
                if let Some(p) = ls[i].windows(2).position(|w| w == b": ") {
                    let value = if rng.below(2) == 0 {
                        rng.pick(dict).clone()
                    } else {
                        rng.pick(NUMBERS).to_vec()
                    };
                    ls[i].truncate(p + 2);
                    ls[i].extend(value);
                    ls[i].push(b'\n');
                    *buf = ls.concat();
                }
            }
        }
        10 => {
            // Documents of another seed after ours.
            if !buf.ends_with(b"\n") {
                buf.push(b'\n');
            }
            let d: &Vec<u8> = rng.pick(donors);
            buf.extend_from_slice(b"---\n");
            buf.extend_from_slice(d);
        }
        11 if len > 0 => {
            // A short run repeated (`!!!!`, `has(a) && has(a) && ...`): depth and length limits.
            let at = rng.below(len);
            let n = (1 + rng.below(8)).min(len - at);
            let run = buf[at..at + n].to_vec();
            let times = 2 + rng.below(63);
            buf.splice(at..at, run.iter().copied().cycle().take(n * times));
        }
        12 if len > 0 => {
            // A digit run becomes another number.
            let i = rng.below(len);
            if let Some(s) = buf[i..].iter().position(u8::is_ascii_digit) {
                let s = i + s;
                let e = buf[s..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(buf.len(), |n| s + n);
                buf.splice(s..e, rng.pick(NUMBERS).iter().copied());
            }
        }
        _ => buf.extend(rng.pick(dict).iter().copied()),
    }
}

/// Runs `check` on `input`; a panic is re-raised with the input, so the failure can be replayed.
fn run_one(check: fn(&[u8]), input: &[u8], what: &str) {
    if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(input))) {
        let msg = e
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| e.downcast_ref::<&str>().copied())
            .unwrap_or("(non-string panic)");
        panic!(
            "{what}: {msg}\ninput (as the target reads it): {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

/// `iterations` mutants of the seeds (1-4 mutations each, seeded PRNG), each checked.
fn mutation_loop(target: &str, check: fn(&[u8]), iterations: usize, seed: u64) {
    let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
    let dict = dictionary(target);
    let mut rng = Rng::new(seed);
    for i in 0..iterations {
        let mut buf = rng.pick(&seeds).clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut buf, &seeds, &dict);
        }
        // libFuzzer's default -max_len for these corpora.
        buf.truncate(4096);
        run_one(
            check,
            &buf,
            &format!("{target} iteration {i} (seed {seed})"),
        );
    }
}

#[test]
fn seed_corpus_decodes() {
    let mut resources = 0;
    for (name, bytes) in corpus("datastore") {
        run_one(checks::datastore, &bytes, &format!("datastore seed {name}"));
        resources += super::parse::parse_yaml("seed", &String::from_utf8_lossy(&bytes))
            .resources
            .len();
    }
    let (mut calico, mut k8s) = (0, 0);
    for (name, bytes) in corpus("selectors") {
        run_one(checks::selectors, &bytes, &format!("selectors seed {name}"));
        let text = String::from_utf8_lossy(&bytes);
        calico += usize::from(super::Selector::parse(&text).is_ok());
        k8s += usize::from(
            serde_yaml_ng::from_str::<felix::policy::LabelSelector>(&text)
                .is_ok_and(|s| felix::policy::selector::Selector::parse(&s).is_ok()),
        );
    }
    // The seeds must mostly be what they claim to be, or the mutants test only the error paths.
    assert!(
        resources >= 100,
        "datastore seeds decode to {resources} resources"
    );
    assert!(calico >= 30, "{calico} Calico selector seeds parse");
    assert!(k8s >= 10, "{k8s} Kubernetes selector seeds are valid");
}

#[test]
fn datastore_mutants_never_panic() {
    mutation_loop("datastore", checks::datastore, 20_000, 1);
}

#[test]
fn selector_mutants_never_panic() {
    mutation_loop("selectors", checks::selectors, 100_000, 2);
}
