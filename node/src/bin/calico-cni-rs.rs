//! `calico-cni-rs`: the CNI plugin. The runtime runs it with the `CNI_*` environment and the
//! network configuration on stdin; it answers on stdout (the result, or the spec's error object)
//! and exits non-zero on error. See `calico_node::cni`.

use std::io::{Read as _, Write as _};

use calico_node::cni::{plugin, CniEnv, CniError, Code, Command, NetConf};

/// The version to answer errors in when the configuration cannot tell.
const FALLBACK_VERSION: &str = "1.1.0";

const INSTALL_USAGE: &str = "usage: calico-cni-rs install --network-config FILE \
[--bin-dir DIR (/host/opt/cni/bin)] [--conf-dir DIR (/host/etc/cni/net.d)] \
[--conflist-name NAME (10-calico-rs.conflist)] [--nodename NAME (env NODENAME)]";

/// `calico-cni-rs install ...`: the init container's job (see `calico_node::cni::install`).
fn install(args: &[String]) -> i32 {
    use calico_node::cni::install::{install, InstallCfg};
    let mut cfg = InstallCfg {
        plugin: match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("calico-cni-rs install: locating this executable: {e}");
                return 1;
            }
        },
        bin_dir: "/host/opt/cni/bin".into(),
        conf_dir: "/host/etc/cni/net.d".into(),
        conflist_name: "10-calico-rs.conflist".into(),
        template: String::new(),
        nodename: std::env::var("NODENAME").ok(),
    };
    let mut config = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("calico-cni-rs install: {flag}: a value is required\n{INSTALL_USAGE}");
            return 2;
        };
        match flag.as_str() {
            "--network-config" => config = Some(value.clone()),
            "--bin-dir" => cfg.bin_dir = value.into(),
            "--conf-dir" => cfg.conf_dir = value.into(),
            "--conflist-name" => cfg.conflist_name = value.clone(),
            "--nodename" => cfg.nodename = Some(value.clone()),
            other => {
                eprintln!("calico-cni-rs install: unknown argument {other:?}\n{INSTALL_USAGE}");
                return 2;
            }
        }
    }
    let Some(config) = config else {
        eprintln!("calico-cni-rs install: --network-config is required\n{INSTALL_USAGE}");
        return 2;
    };
    cfg.template = match std::fs::read_to_string(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("calico-cni-rs install: {config}: {e}");
            return 1;
        }
    };
    match install(&cfg) {
        Ok(done) => {
            let said = |w: bool| if w { "written" } else { "unchanged" };
            println!(
                "{}/calico-cni-rs {}; {}/{} {}",
                cfg.bin_dir.display(),
                said(done.plugin_written),
                cfg.conf_dir.display(),
                cfg.conflist_name,
                said(done.conflist_written)
            );
            0
        }
        Err(e) => {
            eprintln!("calico-cni-rs install: {e}");
            1
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("install") {
        std::process::exit(install(&args[1..]));
    }
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
