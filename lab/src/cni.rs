//! Calling a CNI plugin as a runtime does: the `CNI_*` environment, the configuration on stdin,
//! in a node's network namespace (through `nsenter --net`, which, unlike `ip netns exec`, leaves
//! `/sys` as it is).

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::lab::Netns;

/// What one call answered.
pub struct CniCall {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl CniCall {
    /// Stdout as JSON (`Null` when empty, as after a DEL).
    pub fn json(&self) -> Result<Value> {
        if self.stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("plugin stdout is not JSON: {}", self.stdout))
    }
}

/// Runs plugin `bin` in `node`'s namespace with `env` and `conf` on stdin.
pub fn call<K, V>(
    node: &Netns,
    bin: &Path,
    env: impl IntoIterator<Item = (K, V)>,
    conf: &str,
) -> Result<CniCall>
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    call_at(&node.path(), bin, env, conf)
}

/// [`call`] in the network namespace at `netns` (a `/run/netns/NAME` path).
pub fn call_at<K, V>(
    netns: &Path,
    bin: &Path,
    env: impl IntoIterator<Item = (K, V)>,
    conf: &str,
) -> Result<CniCall>
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let t = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg(bin)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(CniCall {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t.elapsed(),
    })
}

/// Leases the stock `host-local` IPAM plugin holds in `dir` (its `dataDir/NETWORK`): files named
/// by an address, not `last_reserved_ip.N` or `lock`. 0 if the directory does not exist.
pub fn host_local_leases(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

/// Pods `p0`..`p{n-1}` in `namespace` on node `node`, without addresses, as one multi-document
/// YAML for `kubectl apply` (what the kubelet has before the CNI ADD).
pub fn bare_pods_yaml(namespace: &str, n: usize, node: &str) -> String {
    (0..n)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {namespace}}}\n\
                 spec:\n  nodeName: {node}\n  containers: [{{name: c, image: busybox}}]\n"
            )
        })
        .collect()
}
