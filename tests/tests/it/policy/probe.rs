//! Connectivity probes and 9x9 matrices.
//!
//! A probe is one TCP connect or one UDP echo round trip from a pod to a pod, from a fresh source
//! port (see `Pod::fresh_port`), with a short timeout. A matrix probes every ordered pair of
//! distinct pods on TCP/80, TCP/81, UDP/80 and UDP/81 — 288 probes — with one thread per source
//! pod (inside its namespace) running all of that pod's probes concurrently, so a matrix takes
//! about one timeout however many probes fail. A pod talking to itself never leaves its own
//! namespace (no CNI can police it), so the diagonal is not probed.
//!
//! Probes that were expected to pass but failed are repeated up to twice with a longer timeout
//! before they count as a mismatch (a lost first packet is not a policy verdict); a probe that passed
//! where it should not have is a mismatch at once.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;

use super::topo::{Cluster, Pod};

/// Address family of a matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

/// Transport protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One kind of probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub proto: Proto,
    pub port: u16,
}

impl Probe {
    pub fn tcp(&self) -> bool {
        self.proto == Proto::Tcp
    }
    pub fn udp(&self) -> bool {
        self.proto == Proto::Udp
    }
    pub fn is(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && self.port == port
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = if self.tcp() { "tcp" } else { "udp" };
        write!(f, "{p}/{}", self.port)
    }
}

/// The four probes of every cell, in display order.
pub const PROBES: [Probe; 4] = [
    Probe {
        proto: Proto::Tcp,
        port: 80,
    },
    Probe {
        proto: Proto::Tcp,
        port: 81,
    },
    Probe {
        proto: Proto::Udp,
        port: 80,
    },
    Probe {
        proto: Proto::Udp,
        port: 81,
    },
];

/// How a probe ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Timeout,
    Failed(String),
}

impl Outcome {
    pub fn ok(&self) -> bool {
        *self == Outcome::Ok
    }
}

fn addr(p: &Pod, fam: Fam) -> IpAddr {
    match fam {
        Fam::V4 => p.v4,
        Fam::V6 => p.v6,
    }
}

/// Run `probes` (destination address, probe) from pod `src`, all concurrently; results in order.
pub fn run_from(
    src: &Pod,
    fam: Fam,
    probes: &[(IpAddr, Probe)],
    timeout: Duration,
) -> Result<Vec<Outcome>> {
    let local = addr(src, fam);
    let jobs: Vec<(SocketAddr, SocketAddr, Proto)> = probes
        .iter()
        .map(|(dst, p)| {
            (
                SocketAddr::new(local, src.fresh_port()),
                SocketAddr::new(*dst, p.port),
                p.proto,
            )
        })
        .collect();
    src.netns.block_on(move || async move {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(from, to, proto)| tokio::spawn(one(from, to, proto, timeout)))
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.unwrap_or_else(|e| Outcome::Failed(e.to_string())));
        }
        out
    })
}

async fn one(from: SocketAddr, to: SocketAddr, proto: Proto, timeout: Duration) -> Outcome {
    let r = tokio::time::timeout(timeout, async {
        match proto {
            Proto::Tcp => {
                let s = if from.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                s.bind(from)?;
                let _stream = s.connect(to).await?;
                Ok::<(), std::io::Error>(())
            }
            Proto::Udp => {
                let s = tokio::net::UdpSocket::bind(from).await?;
                s.connect(to).await?;
                s.send(b"probe").await?;
                let mut buf = [0u8; 16];
                let n = s.recv(&mut buf).await?;
                if &buf[..n] == b"probe" {
                    Ok(())
                } else {
                    Err(std::io::Error::other("wrong echo"))
                }
            }
        }
    })
    .await;
    match r {
        Err(_) => Outcome::Timeout,
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
    }
}

/// One observed matrix: `cells[src][dst][probe]`.
pub struct Matrix {
    pub cells: Vec<Vec<[Option<Outcome>; 4]>>,
}

/// Probe the whole matrix: one thread per source pod.
pub fn matrix(c: &Cluster, fam: Fam, timeout: Duration) -> Result<Matrix> {
    let n = c.pods.len();
    let results: Vec<Result<Vec<Outcome>>> = std::thread::scope(|s| {
        let hs: Vec<_> = c
            .pods
            .iter()
            .enumerate()
            .map(|(i, src)| {
                let probes: Vec<(IpAddr, Probe)> = c
                    .pods
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, d)| PROBES.iter().map(move |p| (addr(d, fam), *p)))
                    .collect();
                s.spawn(move || run_from(src, fam, &probes, timeout))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("probe thread panicked"))
            .collect()
    });
    let mut cells = vec![vec![[None, None, None, None]; n]; n];
    for (i, r) in results.into_iter().enumerate() {
        let mut it = r?.into_iter();
        for (j, cell) in cells[i].iter_mut().enumerate() {
            if j == i {
                continue;
            }
            for slot in cell.iter_mut() {
                *slot = it.next();
            }
        }
    }
    Ok(Matrix { cells })
}

/// Expected verdict of a probe from pod `src` to pod `dst`.
pub type Expect<'a> = dyn Fn(&Pod, &Pod, Probe) -> bool + 'a;

/// Probe the matrix and compare with `expect`; `Ok(None)` when equal, else a readable report.
pub fn check(c: &Cluster, fam: Fam, expect: &Expect) -> Result<Option<String>> {
    let mut m = matrix(c, fam, Duration::from_millis(300))?;
    // Re-probe expected-allowed failures with a longer timeout before calling them mismatches.
    for _ in 0..2 {
        let mut redo = false;
        for (i, src) in c.pods.iter().enumerate() {
            let mut probes = Vec::new();
            let mut slots = Vec::new();
            for (j, dst) in c.pods.iter().enumerate() {
                for (k, p) in PROBES.iter().enumerate() {
                    let got = m.cells[i][j][k].as_ref().map(Outcome::ok);
                    if got == Some(false) && expect(src, dst, *p) {
                        probes.push((addr(dst, fam), *p));
                        slots.push((j, k));
                    }
                }
            }
            if probes.is_empty() {
                continue;
            }
            redo = true;
            let out = run_from(src, fam, &probes, Duration::from_secs(1))?;
            for ((j, k), o) in slots.into_iter().zip(out) {
                m.cells[i][j][k] = Some(o);
            }
        }
        if !redo {
            break;
        }
    }
    let mut mismatches = Vec::new();
    for (i, src) in c.pods.iter().enumerate() {
        for (j, dst) in c.pods.iter().enumerate() {
            for (k, p) in PROBES.iter().enumerate() {
                if let Some(o) = &m.cells[i][j][k] {
                    let want = expect(src, dst, *p);
                    if o.ok() != want {
                        mismatches.push(format!(
                            "  {} -> {} {p}: expected {}, got {o:?}",
                            src.id(),
                            dst.id(),
                            if want { "allow" } else { "deny" }
                        ));
                    }
                }
            }
        }
    }
    if mismatches.is_empty() {
        return Ok(None);
    }
    let mut report = format!("{} probes differ:\n", mismatches.len());
    report.push_str(&mismatches.join("\n"));
    report.push_str("\nexpected:\n");
    report.push_str(&render(c, |i, j, k| {
        Some(expect(&c.pods[i], &c.pods[j], PROBES[k]))
    }));
    report.push_str("observed:\n");
    report.push_str(&render(c, |i, j, k| {
        m.cells[i][j][k].as_ref().map(Outcome::ok)
    }));
    Ok(Some(report))
}

/// A matrix as text: rows are sources, columns destinations; each cell is four characters for
/// tcp/80, tcp/81, udp/80, udp/81: `T` / `U` allowed, `.` denied, `?` not probed.
pub fn render(c: &Cluster, f: impl Fn(usize, usize, usize) -> Option<bool>) -> String {
    let mut s = String::from("from\\to ");
    for p in &c.pods {
        s.push_str(&format!("{:<5}", p.id()));
    }
    s.push('\n');
    for (i, src) in c.pods.iter().enumerate() {
        s.push_str(&format!("{:<8}", src.id()));
        for j in 0..c.pods.len() {
            if i == j {
                s.push_str(" -   ");
                continue;
            }
            let cell: String = (0..4)
                .map(|k| match f(i, j, k) {
                    Some(true) => {
                        if k < 2 {
                            'T'
                        } else {
                            'U'
                        }
                    }
                    Some(false) => '.',
                    None => '?',
                })
                .collect();
            s.push_str(&cell);
            s.push(' ');
        }
        s.push('\n');
    }
    s
}
