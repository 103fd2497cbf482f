//! `calico-lab-rs`: the local lab (`up|status|down`), a cluster of network namespaces on this
//! machine running the `calico-node-rs` built beside it (see `calico_lab::cmd`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use calico_lab::cmd::{self, LabCfg};
use calico_lab::plan::DEFAULT_PREFIX;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "calico-lab-rs",
    version,
    about = "calico-rs lab: a cluster of network namespaces on this machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: LabCmd,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build and start the lab, wait until it converged, print BGP status and pod reachability.
    Up(UpArgs),
    /// Remove every namespace, process and file of the lab.
    Down(Which),
    /// Print the lab's BGP status and pod reachability again.
    Status(Which),
}

#[derive(clap::Args)]
struct UpArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 2)]
    pods_per_node: usize,
    /// Top-of-rack router: bird, gobgp or none.
    #[arg(long, default_value = "bird")]
    tor: String,
    /// Where the cluster is held: `file` (YAML in DIR/datastore) or `kubernetes` (a Kubernetes
    /// API server in the lab, the project's test server, with kubectl).
    #[arg(long, value_enum, default_value_t = cmd::LabDatastore::File)]
    datastore: cmd::LabDatastore,
    #[arg(long, default_value = cmd::DEFAULT_DIR)]
    dir: PathBuf,
    /// Prefix of the lab's network namespace names: `crs`, letters or digits, `-`. Another
    /// prefix and --dir make a second lab beside the first.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    netns_prefix: String,
    /// Remove an existing lab in --dir (or with this prefix) first instead of refusing.
    #[arg(long)]
    force: bool,
    /// Seconds to wait for BGP sessions and routes.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// The daemon binary (default: `calico-node-rs` next to this executable).
    #[arg(long)]
    node_bin: Option<PathBuf>,
}

/// Which lab `down` and `status` act on.
#[derive(clap::Args)]
struct Which {
    #[arg(long, default_value = cmd::DEFAULT_DIR)]
    dir: PathBuf,
    /// Used when --dir holds no lab record: the prefix of the namespaces to remove (`down`) or
    /// to name as strays (`status`).
    #[arg(long, default_value = DEFAULT_PREFIX)]
    netns_prefix: String,
}

fn main() {
    calico_node::cli::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    // The lab prints a report on stdout; only its problems should show beside it.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CALICO_RS_LOG")
        .unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let r: Result<()> = match cli.cmd {
        LabCmd::Up(a) => a.tor.parse().map_err(anyhow::Error::msg).and_then(|tor| {
            let mut cfg = LabCfg {
                nodes: a.nodes,
                pods_per_node: a.pods_per_node,
                tor,
                datastore: a.datastore,
                dir: a.dir,
                netns_prefix: a.netns_prefix,
                force: a.force,
                timeout: Duration::from_secs(a.timeout),
                ..LabCfg::default()
            };
            if let Some(bin) = a.node_bin {
                cfg.ctl_bin = calico_lab::bins::ctl_next_to(&bin);
                cfg.node_bin = bin;
            }
            cmd::up(&cfg)
        }),
        LabCmd::Down(w) => cmd::down(&w.dir, &w.netns_prefix),
        LabCmd::Status(w) => cmd::status(&w.dir, &w.netns_prefix),
    };
    if let Err(e) = r {
        eprintln!("calico-lab-rs: {e:#}");
        std::process::exit(1);
    }
}
