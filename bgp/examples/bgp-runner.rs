//! A standalone BGP speaker: reads a YAML config, runs the speaker, logs peer state changes, and
//! optionally installs learned routes in the kernel (through `ip -batch`, with a route protocol
//! number of our own, so nothing else is touched).
//!
//! ```yaml
//! speaker: { local_as: 65001, router_id: 10.0.0.1 }
//! peers:
//!   - { address: 10.0.0.2, remote_as: 65002 }
//! originate: [10.1.0.0/26]
//! install_proto: 81        # optional: install best routes learned from peers
//! ```
//! Run: `bgp-runner CONFIG.yaml`. SIGTERM or SIGINT: close sessions without NOTIFICATION (a
//! graceful restart for peers that negotiated it); SIGUSR1 prints the status as JSON.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use bgp::{OriginAttrs, PeerCfg, SpeakerCfg, SpeakerEvent};
use ipnet::IpNet;
use serde::Deserialize;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Deserialize)]
struct Cfg {
    speaker: SpeakerCfg,
    #[serde(default)]
    peers: Vec<PeerCfg>,
    #[serde(default)]
    originate: Vec<IpNet>,
    #[serde(default)]
    install_proto: Option<u8>,
}

fn install(proto: u8, changes: &[bgp::RouteChange]) -> Result<()> {
    let mut script = String::new();
    for c in changes {
        match &c.best {
            Some(b) if b.peer.is_some() && !b.next_hops.is_empty() => {
                let hops: Vec<String> = b
                    .next_hops
                    .iter()
                    .map(|h| format!("nexthop via {h} onlink"))
                    .collect();
                script += &format!(
                    "route replace {} proto {proto} {}\n",
                    c.prefix,
                    hops.join(" ")
                );
            }
            _ => script += &format!("route del {} proto {proto}\n", c.prefix),
        }
    }
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    child.wait()?;
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BGP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let path = std::env::args()
        .nth(1)
        .context("usage: bgp-runner CONFIG.yaml")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let cfg: Cfg =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{path}: invalid config"))?;
    // One thread, as BIRD: the speaker is I/O-bound (CPU figures in the benchmark), and one thread
    // keeps one malloc arena.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let speaker = bgp::start(cfg.speaker).await?;
        let mut events = speaker.subscribe();
        // Route changes are only built for subscribers: subscribe only when installing.
        let mut routes = cfg.install_proto.map(|_| speaker.subscribe_routes());
        for p in cfg.peers {
            let addr = p.address;
            speaker.add_peer(p).await.with_context(|| format!("peer {addr}"))?;
        }
        speaker.originate(cfg.originate.into_iter().map(|p| (p, OriginAttrs::default())).collect())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = usr1.recv() => println!("{}", serde_json::to_string(&*speaker.status())?),
                e = events.recv() => match e {
                    Ok(SpeakerEvent::PeerState { address, from, to, reason }) => {
                        println!(
                            "peer {address}: {from} -> {to}{}",
                            reason.map(|r| format!(" ({r})")).unwrap_or_default()
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
                r = async { match routes.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    let proto = cfg.install_proto.unwrap_or(0);
                    match r {
                        Ok(changes) => install(proto, &changes)?,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let all = speaker.routes().await?;
                            let changes: Vec<_> = all
                                .into_iter()
                                .map(|b| bgp::RouteChange { prefix: b.prefix, best: Some(b) })
                                .collect();
                            install(proto, &changes)?;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        speaker.shutdown(true).await;
        Ok(())
    })
}
