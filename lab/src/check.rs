//! Connectivity checker: ping, TCP and UDP probes between lab namespaces, and reachability matrices.
//!
//! - [`EchoServer`]: TCP and UDP echo on some ports inside a namespace, served by a tokio runtime on a
//!   thread that entered the namespace (no processes to spawn). It answers `{name} {payload}`, so a
//!   probe learns *which* server answered (useful behind NAT or ECMP).
//! - Probes ([`tcp`], [`udp`], [`probe_all`]) run on one thread per source namespace, all of that
//!   source's probes concurrently; a blocked probe costs its timeout once, not once per probe. A 9x9
//!   pod matrix on two ports, TCP and UDP (324 probes), takes about one timeout.
//! - [`ping`], [`expect_some`] / [`expect_none`] for ICMP, or for any [`Target`] (`Tcp(addr)`,
//!   `Udp(addr)`, an address to ping).
//! - [`Matrix`]: expected vs actual reachability, printed as a grid on mismatch.
//! - [`ping_matrices`]: one ping from every pod to every other pod, per family, on a pool of
//!   threads (the lab command's pod matrix), rendered by [`render_grid`].
//!
//! A UDP "no" means no answer within the timeout (or ICMP unreachable); a TCP "no" means refused, reset
//! or timed out. Timeouts are short (default [`PROBE_TIMEOUT`]), so a "no" is only as good as the
//! timeout: probe "yes" cases with [`eventually`](crate::wait::eventually) when state is converging.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use calico_node::datastore::IpFamily;

use crate::lab::Netns;
use crate::netns;

/// Default timeout of one TCP/UDP probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

static NONCE: AtomicU64 = AtomicU64::new(1);

/// Transport of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The echo came back from the server with this name.
    Ok(String),
    /// TCP RST or ICMP unreachable.
    Refused,
    /// Nothing within the timeout.
    Timeout,
    /// Anything else (e.g. no route: `Network is unreachable`).
    Error(String),
}

impl Outcome {
    /// Whether the echo came back.
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(n) => write!(f, "ok (from {n})"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Echo server

/// TCP + UDP echo servers on `ports` inside a namespace; stopped when dropped.
pub struct EchoServer {
    name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Serve TCP and UDP on every port of `ports`, on all addresses of `ns` (IPv4 and IPv6: one
    /// dual-stack `[::]` socket each, or `0.0.0.0` if IPv6 is off). `name` is what probes see.
    pub fn start(ns: &Netns, name: &str, ports: &[u16]) -> Result<EchoServer> {
        Self::start_on(ns, name, &[], ports)
    }

    /// Like [`EchoServer::start`] but bound to the given addresses only (one socket per address and
    /// port). Binding the exact address makes UDP replies leave from the address the probe was sent
    /// to, which matters when a namespace has several addresses.
    pub fn start_on(ns: &Netns, name: &str, addrs: &[IpAddr], ports: &[u16]) -> Result<EchoServer> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let addrs = addrs.to_vec();
        let ports = ports.to_vec();
        let reply_name = name.to_string();
        let thread = ns.thread(&format!("echo-{name}"), move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                match bind_all(&addrs, &ports).await {
                    Ok((tcps, udps)) => {
                        let _ = ready_tx.send(Ok(()));
                        let name = std::sync::Arc::new(reply_name);
                        for l in tcps {
                            tokio::spawn(tcp_echo(l, name.clone()));
                        }
                        for s in udps {
                            tokio::spawn(udp_echo(s, name.clone()));
                        }
                        let _ = stop_rx.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("echo server thread died"))?
            .with_context(|| format!("echo server {name} in {}", ns.name()))?;
        Ok(EchoServer {
            name: name.to_string(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl fmt::Debug for EchoServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoServer")
            .field("name", &self.name)
            .finish()
    }
}

type Bound = (Vec<tokio::net::TcpListener>, Vec<tokio::net::UdpSocket>);

async fn bind_all(addrs: &[IpAddr], ports: &[u16]) -> Result<Bound> {
    let mut tcps = Vec::new();
    let mut udps = Vec::new();
    for &port in ports {
        if addrs.is_empty() {
            // `[::]` is dual-stack (net.ipv6.bindv6only=0 in a fresh namespace); IPv6 may be disabled.
            let (t, u) = match bind_one(IpAddr::from([0u16; 8]), port).await {
                Ok(tu) => tu,
                Err(_) => bind_one(IpAddr::from([0u8; 4]), port).await?,
            };
            tcps.push(t);
            udps.push(u);
        } else {
            for &a in addrs {
                let (t, u) = bind_one(a, port).await?;
                tcps.push(t);
                udps.push(u);
            }
        }
    }
    Ok((tcps, udps))
}

async fn bind_one(
    ip: IpAddr,
    port: u16,
) -> Result<(tokio::net::TcpListener, tokio::net::UdpSocket)> {
    let sa = SocketAddr::new(ip, port);
    let t = tokio::net::TcpListener::bind(sa)
        .await
        .with_context(|| format!("bind tcp {sa}"))?;
    let u = tokio::net::UdpSocket::bind(sa)
        .await
        .with_context(|| format!("bind udp {sa}"))?;
    Ok((t, u))
}

async fn tcp_echo(l: tokio::net::TcpListener, name: std::sync::Arc<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            // e.g. EMFILE: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            // Answer each chunk; the probe sends one line and waits for one reply.
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                if s.write_all(&reply).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn udp_echo(s: tokio::net::UdpSocket, name: std::sync::Arc<String>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut reply = format!("{name} ").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = s.send_to(&reply, from).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Probes

fn classify(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset => Outcome::Refused,
        TimedOut => Outcome::Timeout,
        _ => Outcome::Error(e.to_string()),
    }
}

/// Parse `{name} {payload}` and check the payload; returns the name.
fn check_reply(reply: &[u8], payload: &str) -> Outcome {
    let text = String::from_utf8_lossy(reply);
    match text.trim_end().rsplit_once(' ') {
        Some((name, p)) if p == payload.trim_end() => Outcome::Ok(name.to_string()),
        _ => Outcome::Error(format!("unexpected reply {text:?}")),
    }
}

/// One probe on the current thread's namespace (call inside a runtime on a namespace thread).
pub async fn probe_here(proto: Proto, to: SocketAddr, timeout: Duration) -> Outcome {
    let payload = format!("probe-{}\n", NONCE.fetch_add(1, Ordering::Relaxed));
    let fut = async {
        match proto {
            Proto::Tcp => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(to).await?;
                s.write_all(payload.as_bytes()).await?;
                let mut buf = vec![0u8; 512];
                let mut got = 0;
                loop {
                    let n = s.read(&mut buf[got..]).await?;
                    if n == 0 || buf[..got + n].ends_with(b"\n") {
                        got += n;
                        break;
                    }
                    got += n;
                }
                Ok::<_, std::io::Error>(check_reply(&buf[..got], &payload))
            }
            Proto::Udp => {
                let any: SocketAddr = if to.is_ipv4() {
                    ([0u8; 4], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let s = tokio::net::UdpSocket::bind(any).await?;
                s.connect(to).await?;
                s.send(payload.as_bytes()).await?;
                let mut buf = vec![0u8; 1500];
                let n = s.recv(&mut buf).await?;
                Ok(check_reply(&buf[..n], &payload))
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => classify(&e),
        Err(_) => Outcome::Timeout,
    }
}

/// One TCP probe from `ns` to `to` (connect, send a line, expect the echo).
pub fn tcp(ns: &Netns, to: SocketAddr, timeout: Duration) -> Result<Outcome> {
    ns.block_on(|| probe_here(Proto::Tcp, to, timeout))
}

/// One UDP probe from `ns` to `to` (send a datagram, expect the echo).
pub fn udp(ns: &Netns, to: SocketAddr, timeout: Duration) -> Result<Outcome> {
    ns.block_on(|| probe_here(Proto::Udp, to, timeout))
}

/// Run many probes at once; returns outcomes in the order given. One thread per distinct source
/// namespace, and all of its probes concurrently.
pub fn probe_all(
    probes: &[(&Netns, Proto, SocketAddr)],
    timeout: Duration,
) -> Result<Vec<Outcome>> {
    type Batch<'a> = (&'a Netns, Vec<(usize, Proto, SocketAddr)>);
    let mut by_ns: BTreeMap<&str, Batch> = BTreeMap::new();
    for (i, (ns, proto, to)) in probes.iter().enumerate() {
        by_ns
            .entry(ns.name())
            .or_insert_with(|| (ns, Vec::new()))
            .1
            .push((i, *proto, *to));
    }
    let mut out = vec![Outcome::Timeout; probes.len()];
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = by_ns
            .into_values()
            .map(|(ns, list)| {
                s.spawn(move || {
                    ns.block_on(|| async move {
                        let mut set = tokio::task::JoinSet::new();
                        for (i, proto, to) in list {
                            set.spawn(async move { (i, probe_here(proto, to, timeout).await) });
                        }
                        let mut res = Vec::new();
                        while let Some(r) = set.join_next().await {
                            res.push(r.map_err(|e| anyhow!("probe task: {e}"))?);
                        }
                        Ok::<_, anyhow::Error>(res)
                    })
                })
            })
            .collect();
        for h in handles {
            let res = h.join().map_err(|_| anyhow!("probe thread panicked"))???;
            for (i, o) in res {
                out[i] = o;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Ping and expectations

/// One ping (`ping -c1 -W1`, optionally `-I iface_or_source`), retried once: true if answered.
pub fn ping(ns: &Netns, addr: &str) -> bool {
    ping_opts(ns, addr, None, Duration::from_secs(1), 2)
}

/// Ping `addr` from `ns` with up to `tries` single echo requests, each waiting `timeout` (fractions of
/// a second are fine), from interface or source address `iface` if given.
pub fn ping_opts(
    ns: &Netns,
    addr: &str,
    iface: Option<&str>,
    timeout: Duration,
    tries: u32,
) -> bool {
    ping_in(ns.name(), addr, iface, timeout, tries)
}

/// [`ping_opts`] from the namespace named `ns`.
pub fn ping_in(ns: &str, addr: &str, iface: Option<&str>, timeout: Duration, tries: u32) -> bool {
    let w = format!("{:.3}", timeout.as_secs_f64());
    let mut argv = vec!["ping", "-n", "-q", "-c1", "-W", &w];
    if let Some(i) = iface {
        argv.extend_from_slice(&["-I", i]);
    }
    argv.push(addr);
    (0..tries.max(1)).any(|_| {
        netns::exec(ns, &argv, timeout + Duration::from_secs(5)).is_ok_and(|o| o.status.success())
    })
}

/// Something a namespace may or may not reach.
pub trait Target: fmt::Display {
    /// Try once with `timeout`; `Ok(true)` if it answered.
    fn reach(&self, ns: &Netns, timeout: Duration) -> Result<bool>;
}

/// A TCP echo target (an [`EchoServer`] port).
#[derive(Debug, Clone, Copy)]
pub struct Tcp(pub SocketAddr);
/// A UDP echo target (an [`EchoServer`] port).
#[derive(Debug, Clone, Copy)]
pub struct Udp(pub SocketAddr);

impl fmt::Display for Tcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp {}", self.0)
    }
}
impl fmt::Display for Udp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "udp {}", self.0)
    }
}
impl Target for Tcp {
    fn reach(&self, ns: &Netns, timeout: Duration) -> Result<bool> {
        Ok(tcp(ns, self.0, timeout)?.ok())
    }
}
impl Target for Udp {
    fn reach(&self, ns: &Netns, timeout: Duration) -> Result<bool> {
        Ok(udp(ns, self.0, timeout)?.ok())
    }
}
/// An address to ping.
impl Target for &str {
    fn reach(&self, ns: &Netns, timeout: Duration) -> Result<bool> {
        Ok(ping_opts(ns, self, None, timeout, 1))
    }
}
/// An address to ping.
impl Target for IpAddr {
    fn reach(&self, ns: &Netns, timeout: Duration) -> Result<bool> {
        Ok(ping_opts(ns, &self.to_string(), None, timeout, 1))
    }
}

/// Fail unless `ns` reaches `target` (pings get 1 s and one retry; TCP/UDP probes [`PROBE_TIMEOUT`]
/// and one retry).
pub fn expect_some(ns: &Netns, target: impl Target) -> Result<()> {
    let t = Duration::from_secs(1);
    for _ in 0..2 {
        if target.reach(ns, t)? {
            return Ok(());
        }
    }
    bail!("expected {} to reach {target}, it does not", ns.short())
}

/// Fail if `ns` reaches `target` within [`PROBE_TIMEOUT`] (or 0.5 s for a ping).
pub fn expect_none(ns: &Netns, target: impl Target) -> Result<()> {
    if target.reach(ns, Duration::from_millis(500))? {
        bail!("expected {} NOT to reach {target}, it does", ns.short());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Matrix

/// Reachability from row names (sources) to column names (targets). Cells not set are "unknown".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    rows: Vec<String>,
    cols: Vec<String>,
    cells: Vec<Option<bool>>,
}

impl Matrix {
    /// An all-unknown matrix.
    pub fn new<R: AsRef<str>, C: AsRef<str>>(rows: &[R], cols: &[C]) -> Matrix {
        Matrix {
            rows: rows.iter().map(|r| r.as_ref().to_string()).collect(),
            cols: cols.iter().map(|c| c.as_ref().to_string()).collect(),
            cells: vec![None; rows.len() * cols.len()],
        }
    }

    /// A matrix with every cell `f(row, col)`.
    pub fn from_fn<R: AsRef<str>, C: AsRef<str>>(
        rows: &[R],
        cols: &[C],
        f: impl Fn(&str, &str) -> bool,
    ) -> Matrix {
        let mut m = Matrix::new(rows, cols);
        for r in 0..m.rows.len() {
            for c in 0..m.cols.len() {
                m.cells[r * m.cols.len() + c] = Some(f(&m.rows[r], &m.cols[c]));
            }
        }
        m
    }

    fn index(&self, row: &str, col: &str) -> Result<usize> {
        let r = self
            .rows
            .iter()
            .position(|x| x == row)
            .with_context(|| format!("no row {row}"))?;
        let c = self
            .cols
            .iter()
            .position(|x| x == col)
            .with_context(|| format!("no column {col}"))?;
        Ok(r * self.cols.len() + c)
    }

    /// Set one cell.
    pub fn set(&mut self, row: &str, col: &str, reachable: bool) -> Result<()> {
        let i = self.index(row, col)?;
        self.cells[i] = Some(reachable);
        Ok(())
    }

    /// Set every cell of the matrix to `reachable`.
    pub fn set_all(&mut self, reachable: bool) {
        self.cells.iter_mut().for_each(|c| *c = Some(reachable));
    }

    /// Read one cell.
    pub fn get(&self, row: &str, col: &str) -> Option<bool> {
        self.index(row, col).ok().and_then(|i| self.cells[i])
    }

    /// (reachable cells, known cells).
    pub fn count(&self) -> (usize, usize) {
        let known = self.cells.iter().flatten();
        (known.clone().filter(|ok| **ok).count(), known.count())
    }

    /// Row and column names.
    pub fn rows(&self) -> &[String] {
        &self.rows
    }
    pub fn cols(&self) -> &[String] {
        &self.cols
    }

    /// `(row, col, expected, actual)` of every cell where `self` (expected) and `actual` disagree.
    pub fn mismatches(&self, actual: &Matrix) -> Vec<(String, String, Option<bool>, Option<bool>)> {
        let mut v = Vec::new();
        for r in &self.rows {
            for c in &self.cols {
                let (e, a) = (self.get(r, c), actual.get(r, c));
                if e != a {
                    v.push((r.clone(), c.clone(), e, a));
                }
            }
        }
        v
    }

    /// Ok if `actual` equals `self`; else an error holding expected, actual and a diff grid
    /// (`!` marks cells that differ).
    pub fn expect(&self, actual: &Matrix) -> Result<()> {
        let mism = self.mismatches(actual);
        if mism.is_empty() {
            return Ok(());
        }
        let mut diff = self.clone();
        let mut text = format!(
            "{} of {} cells differ (. = reachable, X = blocked, ? = unknown, ! = differs)\n\
             expected:\n{self}actual:\n{actual}diff:\n",
            mism.len(),
            self.cells.len()
        );
        let marks: Vec<(String, String)> =
            mism.iter().map(|m| (m.0.clone(), m.1.clone())).collect();
        diff.cells.iter_mut().for_each(|c| *c = None);
        text.push_str(&diff.render(|r, c| {
            if marks.iter().any(|(mr, mc)| mr == r && mc == c) {
                "!"
            } else {
                "."
            }
        }));
        for (r, c, e, a) in &mism {
            text.push_str(&format!(
                "  {r} -> {c}: expected {}, got {}\n",
                word(*e),
                word(*a)
            ));
        }
        bail!(text)
    }

    fn render(&self, cell: impl Fn(&str, &str) -> &'static str) -> String {
        let w0 = self.rows.iter().map(String::len).max().unwrap_or(0).max(4);
        let mut s = format!("{:w0$}", "");
        for c in &self.cols {
            s.push_str(&format!(" {c:>w$}", w = c.len().max(1)));
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!("{r:w0$}"));
            for c in &self.cols {
                s.push_str(&format!(" {:>w$}", cell(r, c), w = c.len().max(1)));
            }
            s.push('\n');
        }
        s
    }
}

fn word(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "reachable",
        Some(false) => "blocked",
        None => "unknown",
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(|r, c| match self.get(r, c) {
            Some(true) => ".",
            Some(false) => "X",
            None => "?",
        }))
    }
}

/// Probe every `(source, target)` pair with `proto` and return the actual reachability matrix
/// (rows: source names, columns: target names). All probes run concurrently (see [`probe_all`]).
pub fn reachability(
    sources: &[(&str, &Netns)],
    targets: &[(&str, SocketAddr)],
    proto: Proto,
    timeout: Duration,
) -> Result<Matrix> {
    let rows: Vec<&str> = sources.iter().map(|s| s.0).collect();
    let cols: Vec<&str> = targets.iter().map(|t| t.0).collect();
    let mut probes = Vec::new();
    for (_, ns) in sources {
        for (_, to) in targets {
            probes.push((*ns, proto, *to));
        }
    }
    let out = probe_all(&probes, timeout)?;
    let mut m = Matrix::new(&rows, &cols);
    let mut it = out.iter();
    for r in &rows {
        for c in &cols {
            m.set(r, c, it.next().is_some_and(Outcome::ok))?;
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Ping matrices

/// At most this many pings of [`ping_matrices`] run at once.
const PARALLEL: usize = 64;

/// A pod as a ping matrix sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingTarget {
    /// Column/row label, e.g. `n1p2`.
    pub label: String,
    /// Its namespace's name.
    pub netns: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// Pings every ordered pair in both families: a [`Matrix`] per family with the labels as rows and
/// columns, unknown on the diagonal. Pairs that fail are tried up to `retries` more times (a first
/// packet can be lost while neighbours resolve), unless most pairs fail: then the lab is broken,
/// not flaky, and each retry would cost a second per pair.
pub fn ping_matrices(pods: &[PingTarget], retries: usize) -> Vec<(IpFamily, Matrix)> {
    let n = pods.len();
    let labels: Vec<&str> = pods.iter().map(|p| p.label.as_str()).collect();
    let mut grids: Vec<(IpFamily, Matrix)> = [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .map(|family| {
            let mut m = Matrix::new(&labels, &labels);
            for i in 0..n {
                for j in (0..n).filter(|&j| j != i) {
                    m.cells[i * n + j] = Some(false);
                }
            }
            (family, m)
        })
        .collect();
    for round in 0..=retries {
        let jobs: Vec<(usize, usize)> = grids
            .iter()
            .enumerate()
            .flat_map(|(g, (_, m))| {
                m.cells
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c == Some(false))
                    .map(move |(k, _)| (g, k))
            })
            .collect();
        let total = 2 * n * n.saturating_sub(1);
        if jobs.is_empty() || (round > 0 && jobs.len() * 4 > total) {
            break;
        }
        let next = AtomicUsize::new(0);
        let done = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(jobs.len()) {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(g, cell)) = jobs.get(k) else {
                        break;
                    };
                    let (from, to) = (&pods[cell / n], &pods[cell % n]);
                    let dst = if g == 0 { to.v4 } else { to.v6 };
                    let dst = dst.to_string();
                    if ping_in(&from.netns, &dst, None, Duration::from_secs(1), 1) {
                        done.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((g, cell));
                    }
                });
            }
        });
        for (g, cell) in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
            grids[g].1.cells[cell] = Some(true);
        }
    }
    grids
}

/// A ping matrix as text: a title, a header row of labels, one row per source (`✓` reachable,
/// `✗` not, `·` unknown: itself), then `N/M pod pairs reachable over IPv4`.
pub fn render_grid(family: IpFamily, m: &Matrix) -> String {
    let w = m.cols.iter().map(|l| l.chars().count()).max().unwrap_or(1) + 1;
    let mut s = format!("{family} (row: from, column: to)\n{:w$}", "");
    for l in &m.cols {
        s += &format!("{l:>w$}");
    }
    s.push('\n');
    for (i, row) in m.rows.iter().enumerate() {
        s += &format!("{row:<w$}");
        for c in &m.cells[i * m.cols.len()..(i + 1) * m.cols.len()] {
            let mark = match c {
                None => "·",
                Some(true) => "✓",
                Some(false) => "✗",
            };
            s += &format!("{mark:>w$}");
        }
        s.push('\n');
    }
    let (ok, all) = m.count();
    s + &format!("{ok}/{all} pod pairs reachable over {family}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_diff_names_the_cells() {
        let names = ["x/a", "x/b"];
        let want = Matrix::from_fn(&names, &names, |r, c| r == c || c == "x/b");
        let mut got = want.clone();
        got.set("x/b", "x/a", true).unwrap();
        assert!(want.expect(&want.clone()).is_ok());
        let e = format!("{:#}", want.expect(&got).unwrap_err());
        assert!(e.contains("1 of 4 cells differ"), "{e}");
        assert!(
            e.contains("x/b -> x/a: expected blocked, got reachable"),
            "{e}"
        );
        assert!(e.contains("x/b    X   ."), "{e}");
    }

    #[test]
    fn reply_check() {
        assert_eq!(
            check_reply(b"srv probe-1\n", "probe-1\n"),
            Outcome::Ok("srv".into())
        );
        assert!(!check_reply(b"srv probe-2\n", "probe-1\n").ok());
    }

    fn labels(n: usize) -> Vec<String> {
        (1..=n).map(|k| format!("n{k}p1")).collect()
    }

    #[test]
    fn renders_a_grid_and_a_summary() {
        let l = labels(3);
        let mut m = Matrix::from_fn(&l, &l, |r, c| r != c && !(r == "n1p1" && c == "n3p1"));
        for x in &l {
            let i = m.index(x, x).unwrap();
            m.cells[i] = None;
        }
        assert_eq!(m.count(), (5, 6));
        let text = render_grid(IpFamily::V4, &m);
        let expected = "\
IPv4 (row: from, column: to)
      n1p1 n2p1 n3p1
n1p1     ·    ✓    ✗
n2p1     ✓    ·    ✓
n3p1     ✓    ✓    ·
5/6 pod pairs reachable over IPv4
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn one_pod_has_no_pairs() {
        let grids = ping_matrices(
            &[PingTarget {
                label: "n1p1".into(),
                netns: "crslab-n1p1".into(),
                v4: "10.244.0.1".parse().unwrap(),
                v6: "fd00:244::1".parse().unwrap(),
            }],
            1,
        );
        assert_eq!(grids.len(), 2);
        assert_eq!(grids[1].1.count(), (0, 0));
        assert!(
            render_grid(grids[1].0, &grids[1].1).ends_with("0/0 pod pairs reachable over IPv6\n")
        );
    }

    #[test]
    fn no_pods_no_pings() {
        let grids = ping_matrices(&[], 1);
        assert_eq!(grids.len(), 2);
        assert!(grids.iter().all(|(_, m)| m.count() == (0, 0)));
    }
}
