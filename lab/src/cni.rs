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
