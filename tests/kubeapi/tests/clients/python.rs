//! The official Python client (`kubernetes` on PyPI) against the server, through
//! `check_clients.py`. The interpreter is the project's venv, `$CALICO_RS_VENV/bin/python3`
//! (default `/root/.cache/calico-rs/venv`, made with `python3 -m venv` and
//! `pip install kubernetes kubernetes-validate jsonschema pyyaml`); without it this test fails.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

fn python() -> PathBuf {
    let venv = std::env::var_os("CALICO_RS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/calico-rs/venv"));
    let py = venv.join("bin/python3");
    assert!(
        py.exists(),
        "{} is missing: create the venv with `python3 -m venv {}` and `{}/bin/pip install kubernetes kubernetes-validate jsonschema pyyaml` (scripts/deps.sh does this)",
        py.display(),
        venv.display(),
        venv.display()
    );
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_sees_what_the_api_concepts_say() {
    let py = python();
    let srv = start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/check_clients.py");
    let run = tokio::process::Command::new(&py)
        .arg(script)
        .arg(srv.url())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("check_clients.py finishes")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check_clients.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("python client: all"), "{stdout}");
    // The client really spoke to us, with its token, and got the answers the script checked.
    let reqs: Vec<serde_json::Value> = srv
        .requests()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        reqs.iter().all(|r| r["user"] == "python-token"),
        "the Python client sends its bearer token"
    );
    let has = |verb: &str, code: u64| reqs.iter().any(|r| r["verb"] == verb && r["code"] == code);
    assert!(
        has("update", 409)
            && has("create", 409)
            && has("list", 410)
            && has("watch", 200)
            && has("delete", 200)
    );
    assert!(reqs
        .iter()
        .any(|r| r["verb"] == "patch" && r["subresource"] == "status"));
}
