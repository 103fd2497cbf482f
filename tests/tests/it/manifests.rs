//! `manifests/` (CRDs, RBAC, ConfigMap, DaemonSet, samples): runs the manifest checker
//! `tests/manifests/check.py` with the tests' Python venv, and decodes every sample with the
//! daemon's own decoder, so a sample is valid both for the API server (its CRD) and for
//! calico-node-rs.
//!
//! The venv is `$CALICO_RS_VENV` (default `/root/.cache/calico-rs/venv`), which
//! `scripts/test.sh` creates (`calico_rs_pyenv` in `scripts/deps.sh`). Without it the test
//! fails: a skipped manifest check would look like a passing one.

use std::path::{Path, PathBuf};
use std::process::Command;

use calico_node::datastore::parse::parse_yaml;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn venv_python() -> PathBuf {
    let venv = std::env::var("CALICO_RS_VENV")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/root/.cache/calico-rs/venv".into());
    Path::new(&venv).join("bin/python3")
}

/// The lab's Calico YAML as the lab writes it (format strings in `calico_lab::datastore`,
/// which the checker cannot render itself).
fn write_lab_fixtures(dir: &Path) {
    use calico_lab::datastore as ds;
    std::fs::create_dir_all(dir).expect("fixture dir");
    for (name, text) in [
        ("lab-bgp.yaml", ds::bgp_yaml(true)),
        ("lab-pools.yaml", ds::pools_yaml()),
        ("cluster-base.yaml", ds::cluster_base()),
        ("cluster-tor.yaml", ds::cluster_tor_peer()),
    ] {
        std::fs::write(dir.join(name), text).expect("write fixture");
    }
}

#[test]
fn manifests_pass_the_checker() {
    let python = venv_python();
    assert!(
        python.exists(),
        "{} not found: the manifest checks need the tests' Python venv; create it with \
         `. scripts/deps.sh && calico_rs_pyenv` (scripts/test.sh does) or point CALICO_RS_VENV at one",
        python.display()
    );
    let root = repo_root();
    let fixtures = std::env::temp_dir().join(format!("crs{}-manifests", std::process::id()));
    write_lab_fixtures(&fixtures);
    let out = Command::new(&python)
        .arg("tests/manifests/check.py")
        .arg("--fixture-dir")
        .arg(&fixtures)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("running {} tests/manifests/check.py: {e}", python.display()));
    let _ = std::fs::remove_dir_all(&fixtures);
    let text = format!(
        "{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "manifest checks failed ({}):\n{text}",
        out.status
    );
    // The summary line, and proof that the rendered lab fixtures were checked.
    assert!(
        text.lines()
            .any(|l| l.starts_with("manifest checks: ") && l.ends_with(" passed, 0 failed")),
        "no summary line:\n{text}"
    );
    assert!(
        text.contains("lab-pools.yaml (rendered) doc 1: IPPool default-ipv4-ippool: matches"),
        "the lab's pools were not checked:\n{text}"
    );
}

#[test]
fn samples_decode_with_the_daemons_decoder() {
    let dir = repo_root().join("manifests/samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "too few samples in {}", dir.display());
    let mut decoded = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(f).expect("read sample");
        let parsed = parse_yaml(&name, &text);
        // Secrets belong to the API server, not to the daemon's resource kinds.
        let errors: Vec<String> = parsed
            .errors
            .iter()
            .filter(|e| e.kind.as_deref() != Some("Secret"))
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{name}: the daemon refuses a sample: {errors:#?}"
        );
        decoded += parsed.resources.len();
    }
    assert!(
        decoded >= 9,
        "only {decoded} resources decoded from the samples"
    );
}
