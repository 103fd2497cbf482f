//! `calico-node-rs`: the node daemon (`run`). (The local lab is `calico-lab-rs`, in `lab/`.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use calico_node::bootstrap::{self, BootstrapCfg};
use calico_node::daemon::{self, DaemonCfg, DatastoreKind};
use calico_node::status::NodeSnapshot;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

/// Environment variables, in one place.
mod env {
    pub const NODENAME: &str = "NODENAME";
    pub const DATASTORE_TYPE: &str = "DATASTORE_TYPE";
    pub const DATASTORE_DIR: &str = "CALICO_DATASTORE_DIR";
    pub const LOG: &str = "CALICO_RS_LOG";
}

#[derive(Parser)]
#[command(
    name = "calico-node-rs",
    version,
    about = "calico-rs node: BGP, routes and NetworkPolicy for one node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node daemon in the current network namespace.
    Run(Box<RunArgs>),
    /// Print the addresses bootstrap would give this node, from `IP`, `IP6` and their
    /// `*_AUTODETECTION_METHOD`s (as on Kubernetes: unset means autodetect for IPv4), and exit.
    Autodetect,
}

#[derive(clap::Args)]
struct RunArgs {
    /// This node's name (its Node resource).
    #[arg(long, env = env::NODENAME)]
    nodename: String,
    /// `file:DIR` or `kubernetes`. DATASTORE_TYPE=kubernetes or CALICO_DATASTORE_DIR=DIR work too.
    #[arg(long)]
    datastore: Option<String>,
    #[command(flatten)]
    grpc: calico_node::grpc::GrpcArgs,
    /// Address /liveness and /readiness listen on (Calico's default health host).
    #[arg(long, env = "FELIX_HEALTHHOST", default_value = "127.0.0.1")]
    health_host: std::net::IpAddr,
    /// /liveness and /readiness (0: off).
    #[arg(long, env = "FELIX_HEALTHPORT", default_value_t = 9099)]
    health_port: u16,
    /// Address Prometheus /metrics listens on.
    #[arg(long, env = "FELIX_PROMETHEUSMETRICSHOST", default_value = "127.0.0.1")]
    metrics_host: std::net::IpAddr,
    /// Prometheus /metrics (0: off).
    #[arg(long, env = "FELIX_PROMETHEUSMETRICSPORT", default_value_t = 9091)]
    metrics_port: u16,
    /// Seconds another node's Node must stay deleted before its IPAM blocks are released.
    #[arg(long, default_value_t = 60)]
    node_release_grace: u64,
    /// Seconds an allocation in this node's blocks must have had no Pod before it is released
    /// (a CNI ADD that died, a Pod deleted behind the plugin's back).
    #[arg(long, env = "CALICO_RS_IPAM_GC_GRACE", default_value_t = 60)]
    ipam_gc_grace: u64,
    /// Route protocol number that marks our kernel routes.
    #[arg(long, default_value_t = felix::routes::DEFAULT_ROUTE_PROTOCOL)]
    route_protocol: u8,
    /// Our nftables table (family inet).
    #[arg(long, default_value = "calico-rs")]
    nft_table: String,
    /// Traffic from local pods to this node, after their egress policy: Drop, Return or Accept
    /// (Calico's defaultEndpointToHostAction; Calico's manifest sets Accept). With Drop, pods
    /// cannot reach the node's BGP port, health or metrics.
    #[arg(
        long,
        env = "FELIX_DEFAULTENDPOINTTOHOSTACTION",
        default_value = "Accept"
    )]
    default_endpoint_to_host_action: felix::policy::EndpointToHostAction,
    /// The CNI plugin's socket (mode 0600), where calico-cni-rs asks for pod addresses; `none`
    /// turns it off. Default: /var/run/calico-rs/cni.sock beside the default status socket, else
    /// beside the --grpc unix socket as NAME.cni.sock (so daemons sharing a directory, as in
    /// the lab, do not collide).
    #[arg(long, env = "CALICO_RS_CNI_SOCKET", value_name = "PATH|none")]
    cni_socket: Option<String>,
}

/// The CNI socket: the flag, else beside the status socket (see `RunArgs::cni_socket`).
fn cni_socket(flag: Option<&str>, grpc: &str) -> Option<std::path::PathBuf> {
    match flag {
        Some("none") => None,
        Some(p) if !p.is_empty() => Some(p.into()),
        _ => {
            let beside = grpc
                .strip_prefix("unix:")
                .map(|p| p.strip_prefix("//").unwrap_or(p))
                .filter(|_| grpc != calico_node::grpc::DEFAULT_GRPC);
            Some(match beside {
                Some(p) => format!("{}.cni.sock", p.strip_suffix(".sock").unwrap_or(p)).into(),
                None => calico_node::cni::socket::DEFAULT_SOCKET.into(),
            })
        }
    }
}

fn datastore(arg: Option<String>) -> Result<DatastoreKind, String> {
    if let Some(a) = arg {
        return a.parse();
    }
    match std::env::var(env::DATASTORE_TYPE).as_deref() {
        Ok("kubernetes") => Ok(DatastoreKind::Kubernetes),
        Ok("file") | Err(_) => match std::env::var(env::DATASTORE_DIR) {
            Ok(dir) if !dir.is_empty() => Ok(DatastoreKind::File(dir.into())),
            _ => Err(format!(
                "no datastore: pass --datastore file:DIR or set {}",
                env::DATASTORE_DIR
            )),
        },
        Ok(other) => Err(format!(
            "{}={other:?}: expected file or kubernetes",
            env::DATASTORE_TYPE
        )),
    }
}

/// Logs go to stderr; `default` is the level when CALICO_RS_LOG is unset.
fn init_logs(default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env(env::LOG).unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// glibc malloc settings for the daemon, read by glibc only at start:
/// - `MALLOC_ARENA_MAX=1`: glibc gives each thread that allocates its own arena and keeps freed
///   memory in it; a node agent gains nothing from that and measured ~25% more peak RSS (40 vs
///   29 MiB with 20 peers and 10k routes).
/// - a fixed mmap threshold (and trim threshold) of 128 KiB: glibc otherwise raises its mmap
///   threshold after the first large free, so the large transient buffers of a 10k-route sync
///   end up inside the heap and leave it fragmented; fixed, they are mapped and unmapped whole
///   (about 1 MiB less peak RSS in the 20-peer, 10k-route benchmark).
const MALLOC_ENV: [(&str, &str); 3] = [
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
];

/// Re-executes once with [`MALLOC_ENV`] unless the operator set `MALLOC_ARENA_MAX` (then their
/// malloc settings stand as given).
fn cap_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    for (k, v) in MALLOC_ENV {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    let err = cmd.exec();
    tracing::warn!(error = %err, "could not re-exec with glibc malloc settings; continuing");
}

fn run(a: RunArgs) -> Result<()> {
    cap_malloc_arenas();
    let ds = match datastore(a.datastore.clone()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("calico-node-rs: {e}");
            std::process::exit(2);
        }
    };
    let boot = match BootstrapCfg::from_env(&|k| std::env::var(k).ok()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("calico-node-rs: {e}");
            std::process::exit(2);
        }
    };
    if let DatastoreKind::File(dir) = &ds {
        match bootstrap::file_startup(&boot, &a.nodename, dir) {
            Ok(done) => done.iter().for_each(|d| tracing::info!(%d, "bootstrap")),
            Err(e) => {
                eprintln!("calico-node-rs: bootstrap: {e}");
                std::process::exit(1);
            }
        }
    }
    let kube_boot = matches!(ds, DatastoreKind::Kubernetes).then_some(boot);
    let mut cfg = DaemonCfg::new(&a.nodename, ds);
    cfg.health_addr = std::net::SocketAddr::new(a.health_host, a.health_port);
    cfg.metrics_addr = std::net::SocketAddr::new(a.metrics_host, a.metrics_port);
    cfg.node_release_grace = std::time::Duration::from_secs(a.node_release_grace);
    cfg.ipam_gc_grace = std::time::Duration::from_secs(a.ipam_gc_grace);
    cfg.route_protocol = a.route_protocol;
    cfg.nft_table = a.nft_table.clone();
    cfg.endpoint_to_host = a.default_endpoint_to_host_action;
    cfg.cni_socket = cni_socket(a.cni_socket.as_deref(), &a.grpc.grpc);
    let grpc = match a.grpc.listen() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("calico-node-rs: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (status_tx, status_rx) =
            tokio::sync::watch::channel(Arc::new(NodeSnapshot::empty(&cfg.nodename)));
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut grpc_stop = stop_rx.clone();
        // Bind first: a bad address, a socket in use or bad TLS material stops the daemon before
        // it changes anything.
        let bound = match calico_node::grpc::bind(grpc).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("calico-node-rs: status API: {e}");
                std::process::exit(2);
            }
        };
        let grpc_task = tokio::spawn(async move {
            let stop = async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            };
            bound.serve(status_rx, stop).await
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        if let Some(boot) = kube_boot {
            let kc = calico_node::datastore::kubernetes::KubeCfg::from_env();
            let client = calico_node::datastore::kubernetes::client(&kc).await?;
            match bootstrap::kube_startup(&boot, &cfg.nodename, client).await {
                Ok(done) => done.iter().for_each(|d| tracing::info!(%d, "bootstrap")),
                Err(e) => {
                    eprintln!("calico-node-rs: bootstrap: {e}");
                    std::process::exit(1);
                }
            }
        }
        let r = daemon::run(cfg, status_tx, shutdown)
            .await
            .map_err(anyhow::Error::from);
        let _ = stop_tx.send(true);
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(2), grpc_task).await {
            tracing::warn!(error = %e, "status API");
        }
        r
    })
}

fn autodetect() -> Result<()> {
    let boot = BootstrapCfg::from_env(&|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
    let ifaces = bootstrap::autodetect::interfaces();
    let id = bootstrap::identity(
        &boot,
        (None, None),
        true,
        &ifaces,
        &[],
        &bootstrap::autodetect::source_for,
    )
    .map_err(anyhow::Error::msg)?;
    let show = |a: Option<ipnet::IpNet>| a.map_or("none".to_string(), |a| a.to_string());
    println!("IPv4: {}\nIPv6: {}", show(id.ipv4), show(id.ipv6));
    Ok(())
}

fn main() {
    calico_node::cli::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    init_logs("info");
    let r = match cli.cmd {
        Cmd::Run(a) => run(*a),
        Cmd::Autodetect => autodetect(),
    };
    if let Err(e) = r {
        eprintln!("calico-node-rs: {e:#}");
        std::process::exit(1);
    }
}
