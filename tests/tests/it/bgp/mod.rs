//! The BGP speaker against real BIRD 2, GoBGP and FRR peers, in network namespaces.
//!
//! Our speaker runs in-process on a thread that entered a node namespace (`Ours`); the test
//! drives it through its `SpeakerHandle` and checks what the real peers hold with `birdc`, the
//! `gobgp` CLI and `vtysh`.

mod bird;
mod collision;
mod frr;
mod gobgp;
mod gr;
mod rr;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bgp::{BestRoute, PeerCfg, PeerStatus, SpeakerCfg, SpeakerHandle, State};
use calico_lab::lab::{Lab, Netns};
use calico_lab::wait::eventually;

/// Our speaker, running in a namespace on its own thread and runtime.
pub struct Ours {
    pub h: SpeakerHandle,
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    rt: tokio::runtime::Runtime,
}

impl Ours {
    pub fn start(ns: &Netns, cfg: SpeakerCfg, peers: Vec<PeerCfg>) -> Result<Ours> {
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let thread = ns.thread("ours", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let h = match bgp::start(cfg).await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = htx.send(Err(anyhow!("{e}")));
                        return;
                    }
                };
                let _ = htx.send(Ok(h.clone()));
                let graceful = stop_rx.await.unwrap_or(false);
                h.shutdown(graceful).await;
            });
        })?;
        let h = hrx
            .recv_timeout(Duration::from_secs(10))
            .context("speaker did not start")??;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ours = Ours {
            h,
            stop: Some(stop),
            thread: Some(thread),
            rt,
        };
        for p in peers {
            ours.block(ours.h.add_peer(p))?;
        }
        Ok(ours)
    }

    pub fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn peer(&self, addr: &str) -> Option<PeerStatus> {
        let a: IpAddr = addr.parse().ok()?;
        self.h
            .status()
            .peers
            .iter()
            .find(|p| p.address == a)
            .cloned()
    }

    pub fn wait_state(&self, addr: &str, state: State, timeout: Duration) -> Result<PeerStatus> {
        eventually(timeout, || match self.peer(addr) {
            Some(p) if p.state == state => Ok(p),
            Some(p) => bail!(
                "peer {addr} is {} (last error: {:?}), want {state}",
                p.state,
                p.last_error
            ),
            None => bail!("no peer {addr}"),
        })
    }

    pub fn routes(&self) -> Result<Vec<BestRoute>> {
        Ok(self.block(self.h.routes())?)
    }

    /// The best route for `prefix` learned from a peer, if any.
    pub fn learned(&self, prefix: &str) -> Result<Option<BestRoute>> {
        let p: ipnet::IpNet = prefix.parse()?;
        Ok(self
            .routes()?
            .into_iter()
            .find(|r| r.prefix == p && r.peer.is_some()))
    }

    pub fn wait_learned(&self, prefix: &str, timeout: Duration) -> Result<BestRoute> {
        eventually(timeout, || {
            self.learned(prefix)?
                .ok_or_else(|| anyhow!("{prefix} not learned"))
        })
    }

    pub fn wait_not_learned(&self, prefix: &str, timeout: Duration) -> Result<()> {
        eventually(timeout, || match self.learned(prefix)? {
            Some(r) => bail!("{prefix} still learned: {r:?}"),
            None => Ok(()),
        })
    }

    /// Stop the speaker. `graceful`: close sessions without NOTIFICATION (a restart).
    pub fn stop(mut self, graceful: bool) {
        self.shutdown(graceful);
    }

    fn shutdown(&mut self, graceful: bool) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(graceful);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// Two namespaces on one link: `a` (ours) 10.0.0.1 / fd00::1, `b` (the peer) 10.0.0.2 / fd00::2.
pub fn pair(lab: &Lab) -> Result<(Netns, Netns)> {
    let a = lab.netns("a")?;
    let b = lab.netns("b")?;
    lab.veth((&a, "eth0"), (&b, "eth0"))?;
    a.addr("eth0", "10.0.0.1/24")?;
    a.addr("eth0", "fd00::1/64")?;
    b.addr("eth0", "10.0.0.2/24")?;
    b.addr("eth0", "fd00::2/64")?;
    a.up("eth0")?;
    b.up("eth0")?;
    Ok((a, b))
}

pub fn speaker_cfg(asn: u32, id: &str) -> SpeakerCfg {
    let mut c = SpeakerCfg::new(asn, id.parse().expect("router id"));
    c.next_hop_v6 = None;
    c
}

pub fn peer_cfg(addr: &str, asn: u32) -> PeerCfg {
    let mut p = PeerCfg::new(addr.parse().expect("peer address"), asn);
    p.connect_retry = Duration::from_secs(1);
    p.hold_time = 9;
    p
}

pub fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("prefix")
}

pub const UP: Duration = Duration::from_secs(20);
