//! `calico-cni-rs`: the CNI plugin. The runtime runs it with the `CNI_*` environment and the
//! network configuration on stdin; it answers on stdout (the result, or the spec's error object)
//! and exits non-zero on error. See `calico_node::cni`.

use std::io::{Read as _, Write as _};

use calico_node::cni::{plugin, CniEnv, CniError, Code, Command, NetConf};

/// The version to answer errors in when the configuration cannot tell.
const FALLBACK_VERSION: &str = "1.1.0";

fn main() {
    let code = match call() {
        Ok(Some(out)) => {
            println!("{out}");
            0
        }
        Ok(None) => 0,
        Err((e, version)) => {
            println!("{}", e.to_json(&version));
            1
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn call() -> Result<Option<serde_json::Value>, (CniError, String)> {
    let fallback = |e: CniError| (e, FALLBACK_VERSION.to_string());
    let env = CniEnv::from_env(&|k| std::env::var(k).ok()).map_err(fallback)?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| fallback(CniError::new(Code::Io, format!("reading stdin: {e}"))))?;
    if env.command == Command::Version {
        // VERSION's stdin holds only `cniVersion`.
        let v: serde_json::Value = serde_json::from_slice(&stdin).unwrap_or_default();
        let version = v
            .get("cniVersion")
            .and_then(|v| v.as_str())
            .unwrap_or(FALLBACK_VERSION);
        return Ok(Some(calico_node::cni::result::version_json(version)));
    }
    let conf = NetConf::parse(&stdin).map_err(fallback)?;
    let version = conf.cni_version.clone();
    let started = std::time::Instant::now();
    let out = plugin::run(&env, &conf);
    log(&conf, &env, &out, started.elapsed());
    out.map_err(|e| (e, version))
}

/// One line per call to `log_file_path`, when set (`log_level` `debug` adds the result).
fn log(
    conf: &NetConf,
    env: &CniEnv,
    out: &Result<Option<serde_json::Value>, CniError>,
    took: std::time::Duration,
) {
    let Some(path) = &conf.log_file_path else {
        return;
    };
    let level = conf
        .log_level
        .as_deref()
        .unwrap_or("info")
        .to_ascii_lowercase();
    let outcome = match out {
        Ok(Some(v)) if level == "debug" => format!("ok {v}"),
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error {}: {e}", e.code as u32),
    };
    if out.is_ok() && matches!(level.as_str(), "warning" | "warn" | "error" | "none") {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let line = format!(
        "{}.{:03} {:?} container={} ifname={} took={:?} {outcome}\n",
        now.as_secs(),
        now.subsec_millis(),
        env.command,
        env.container_id,
        env.ifname,
        took
    );
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}
