//! `soak`: run the calico-rs soak (see `calico_tests::soak`) and print its report; exit status
//! 1 unless it is clean (0 lost / 0 breaches / 0 duplicate IPs / 0 panics, no daemon died by
//! itself, no action or check failed). Needs root; uses the `calico-node-rs` built beside it
//! (`cargo build --release -p calico-node -p calico-tests --bins` for a release run).

use std::time::Duration;

use anyhow::Result;
use calico_tests::soak::{self, SoakCfg};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Kill, restart, corrupt and churn a calico-rs lab while probing it")]
struct Args {
    /// Minutes of actions (setup and final checks come on top).
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Seed of the action sequence (printed; pass it again to replay). Random by default.
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes in the lab (3 to 20).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Do not print each action as it starts.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if !(a.minutes.is_finite() && a.minutes >= 0.0) {
        eprintln!(
            "soak: --minutes {}: expected a number of minutes >= 0",
            a.minutes
        );
        std::process::exit(2);
    }
    let mut cfg = SoakCfg::new(Duration::from_secs_f64(a.minutes * 60.0));
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    cfg.nodes = a.nodes;
    cfg.verbose = !a.quiet;
    eprintln!("soak: seed {}", cfg.seed);
    let report = soak::run(&cfg)?;
    println!("{report}");
    if !report.clean() {
        std::process::exit(1);
    }
    Ok(())
}
