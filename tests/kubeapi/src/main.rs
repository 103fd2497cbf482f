//! `kube-test-server`: the test API server as a process. Prints `listening on ADDR:PORT` on stdout
//! once it accepts connections; exits cleanly on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kube_test_server::{Server, ServerCfg};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};

/// A Kubernetes API server for tests (plain HTTP, in memory or journaled).
#[derive(Debug, Parser)]
#[command(name = "kube-test-server", version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:6443 (port 0: any free port).
    #[arg(long)]
    listen: SocketAddr,
    /// Append one JSON line per API request to this file.
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Keep objects in this journal file across restarts.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Number of events kept for watches and list pages (older resourceVersions get 410).
    #[arg(long, default_value_t = 100_000)]
    history: usize,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 1.0)]
    bookmark_seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.history == 0 {
        anyhow::bail!("--history must be at least 1");
    }
    if !(args.bookmark_seconds > 0.0 && args.bookmark_seconds.is_finite()) {
        anyhow::bail!("--bookmark-seconds must be a positive number");
    }
    let cfg = ServerCfg {
        listen: args.listen,
        request_log: args.request_log,
        state: args.state,
        history: args.history,
        bookmark_interval: Duration::from_secs_f64(args.bookmark_seconds),
    };
    let handle = Server::start(cfg).await.context("kube-test-server")?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("listening on {}\n", handle.addr()).as_bytes())
        .await?;
    out.flush().await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    handle.shutdown().await;
    Ok(())
}
