//! BIRD 2 as a test peer: started from a config string inside a lab namespace, driven through `birdc`.
//!
//! Files (in the lab's temp dir): `{ns}-bird.{n}.conf`, the control socket `{ns}-bird.{n}.ctl` and the log
//! `{ns}-bird.{n}.log`, one log across restarts. BIRD runs in the foreground (`bird -f`), so the
//! [`Proc`] owns the daemon itself and it dies with the handle.
//!
//! The lab command's ToR ([`crate::cmd::tor`]) is a BIRD that outlives the command: it starts it
//! with the same [`daemon_argv`] and queries it with the same [`birdc`], [`parse_protocols`] and
//! [`parse_routes`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;

use crate::lab::Netns;
use crate::proc::{self, Proc};
use crate::wait::eventually;

/// How long `birdc` may take before it is considered hung (e.g. BIRD is SIGSTOPped).
pub const BIRDC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`Bird::start`] waits for the control socket to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running BIRD 2 daemon in a namespace.
#[derive(Debug)]
pub struct Bird {
    ns: Netns,
    conf: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    proc: Proc,
}

/// One route of `birdc show route` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdRoute {
    /// Routing table, e.g. `master4`.
    pub table: String,
    pub prefix: IpNet,
    /// `unicast`, `blackhole`, `unreachable`, ...
    pub kind: String,
    /// The protocol that supplied it (`s4`, `gobgp1`, ...).
    pub proto: String,
    /// Marked `*`: the best route for the prefix.
    pub primary: bool,
    /// Gateways from its `via ADDR on IFACE` lines.
    pub via: Vec<IpAddr>,
    /// Interfaces from its `via ... on IFACE` / `dev IFACE` lines.
    pub ifaces: Vec<String>,
    /// The rest of the header line, e.g. `(100) [AS65002i]`.
    pub info: String,
}

/// `bird -f -c CONF -s SOCK` (and `-R`, recovery after a graceful restart).
pub fn daemon_argv(conf: &Path, sock: &Path, recovery: bool) -> Vec<String> {
    let mut argv: Vec<String> = ["bird", "-f", "-c"].map(String::from).into();
    argv.push(conf.to_string_lossy().into_owned());
    argv.push("-s".into());
    argv.push(sock.to_string_lossy().into_owned());
    if recovery {
        argv.push("-R".into());
    }
    argv
}

/// One `birdc` command (e.g. `"show route all"`) on control socket `sock`; its output without the
/// greeting line. Fails if BIRD replies with an error or does not answer within `timeout`.
/// `birdc` only talks to the Unix socket: no need to enter the namespace.
pub fn birdc(sock: &Path, cmd: &str, timeout: Duration) -> Result<String> {
    let s = sock.to_string_lossy();
    let out = proc::run(&["birdc", "-s", &s, cmd], timeout)?;
    Ok(out
        .split_once('\n')
        .filter(|(first, _)| first.starts_with("BIRD ") && first.ends_with("ready."))
        .map(|(_, rest)| rest.to_string())
        .unwrap_or(out))
}

/// One line of `birdc show protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdProtocol {
    pub name: String,
    /// `BGP`, `Device`, `Kernel`, `Static`, ...
    pub proto: String,
    /// The protocol state: `up`, `start`, `down`, ...
    pub state: String,
    /// When the state was entered, as BIRD prints it.
    pub since: String,
    /// For BGP, the BGP state (`Established`, `Active`, ...) when BIRD prints one.
    pub bgp_state: Option<String>,
    /// The rest of the line (BGP: the last error).
    pub info: String,
}

/// Parse `birdc show protocols`.
///
/// ```text
/// Name       Proto      Table      State  Since         Info
/// node1_v4   BGP        ---        up     10:41:07.312  Established
/// node2_v6   BGP        ---        start  10:41:05.100  Active        Socket: Connection refused
/// ```
pub fn parse_protocols(text: &str) -> Vec<BirdProtocol> {
    let mut out = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 || cols[0] == "Name" || cols[0] == "BIRD" {
            continue;
        }
        // Info is "<BGP state>  <last error...>"; a down protocol may have no BGP state.
        let info: Vec<&str> = cols[5..].to_vec();
        let (bgp_state, rest) = match info.split_first() {
            Some((s, rest)) if is_bgp_state(s) => (Some(s.to_string()), rest.join(" ")),
            _ => (None, info.join(" ")),
        };
        out.push(BirdProtocol {
            name: cols[0].to_string(),
            proto: cols[1].to_string(),
            state: cols[3].to_string(),
            since: cols[4].to_string(),
            bgp_state,
            info: rest,
        });
    }
    out
}

fn is_bgp_state(s: &str) -> bool {
    matches!(
        s,
        "Idle" | "Connect" | "Active" | "OpenSent" | "OpenConfirm" | "Established" | "Close"
    )
}

impl Bird {
    /// Write `config`, start `bird -f -c CONF -s SOCK` in `ns` and wait until `birdc show status`
    /// answers. The config needs a `router id` unless `ns` has an IPv4 address.
    pub fn start(ns: &Netns, config: &str) -> Result<Bird> {
        let conf = ns.file("bird", "conf");
        let sock = conf.with_extension("ctl");
        let log = conf.with_extension("log");
        std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
        let proc = Self::launch(ns, &conf, &sock, &log, false)?;
        let mut bird = Bird {
            ns: ns.clone(),
            conf,
            sock,
            log,
            proc,
        };
        bird.wait_ready()?;
        Ok(bird)
    }

    fn launch(ns: &Netns, conf: &Path, sock: &Path, log: &Path, recovery: bool) -> Result<Proc> {
        let argv = daemon_argv(conf, sock, recovery);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        ns.spawn_log(&argv, log)
    }

    fn wait_ready(&mut self) -> Result<()> {
        eventually(START_TIMEOUT, || {
            if let Some(status) = self.proc.try_status() {
                return Ok(Err(anyhow!(
                    "bird in {} exited ({status}); log:\n{}",
                    self.ns.name(),
                    self.log()
                )));
            }
            let out = self.birdc("show status")?;
            if out.contains("Daemon is up and running") {
                Ok(Ok(()))
            } else {
                bail!("bird not up yet: {out}")
            }
        })
        .with_context(|| {
            format!(
                "bird in {} did not come up; log:\n{}",
                self.ns.name(),
                self.log()
            )
        })?
    }

    /// Run one `birdc` command (e.g. `"show route all"`); returns its output without the greeting line.
    /// Fails if BIRD replies with an error or does not answer within [`BIRDC_TIMEOUT`].
    pub fn birdc(&self, cmd: &str) -> Result<String> {
        birdc(&self.sock, cmd, BIRDC_TIMEOUT)
            .with_context(|| format!("birdc {cmd:?} in {}", self.ns.name()))
    }

    /// The state of protocol `name`: the BGP state for BGP (`Established`, `Active`, `Connect`,
    /// `OpenSent`, ... as BIRD reports it), else the protocol state (`up`, `down`, `start`).
    pub fn protocol_state(&self, name: &str) -> Result<String> {
        let out = self.birdc(&format!("show protocols all \"{name}\""))?;
        if let Some(state) = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("BGP state:"))
        {
            return Ok(state.trim().to_string());
        }
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(3))
            .map(str::to_string)
            .with_context(|| format!("protocol {name} not in output: {out}"))
    }

    /// Wait until BGP protocol `name` is `Established`.
    pub fn wait_established(&self, name: &str, timeout: Duration) -> Result<()> {
        eventually(timeout, || {
            let st = self.protocol_state(name)?;
            if st == "Established" {
                Ok(())
            } else {
                bail!("bird protocol {name} is {st}")
            }
        })
    }

    /// Parse `birdc show route {args}` (e.g. `""`, `"table master6"`, `"protocol gobgp1"`,
    /// `"for 10.0.0.1"`, `"10.0.0.0/24"`, `"all"` is not supported by the parser).
    /// A prefix BIRD does not know (`Network not found`, which `birdc` reports as an error) gives an
    /// empty list.
    pub fn routes(&self, args: &str) -> Result<Vec<BirdRoute>> {
        match self.show_route(args)? {
            Some(out) => parse_routes(&out),
            None => Ok(Vec::new()),
        }
    }

    /// The raw output of `birdc show route {args}` (e.g. `"10.0.0.0/24 all"` for the attributes), or
    /// `None` when BIRD knows no such route (`Network not found`, which `birdc` reports as an error).
    pub fn show_route(&self, args: &str) -> Result<Option<String>> {
        match self.birdc(&format!("show route {args}")) {
            Ok(out) => Ok(Some(out)),
            Err(e) if format!("{e:#}").contains("Network not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The distinct prefixes of `show route {args}`, IPv4 and IPv6, sorted.
    pub fn prefixes(&self, args: &str) -> Result<Vec<IpNet>> {
        let mut p: Vec<IpNet> = self.routes(args)?.into_iter().map(|r| r.prefix).collect();
        p.sort();
        p.dedup();
        Ok(p)
    }

    /// Replace the config and `birdc configure`; fails if BIRD rejects it (the old config stays).
    pub fn reconfigure(&mut self, config: &str) -> Result<()> {
        std::fs::write(&self.conf, config)?;
        let out = self.birdc("configure")?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            bail!("bird reconfigure: {out}")
        }
    }

    /// Crash-restart: SIGKILL BIRD (no NOTIFICATION; peers see the TCP session die or hold timer
    /// expire) and start it again with the same config.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill()?;
        self.proc = Self::launch(&self.ns, &self.conf, &self.sock, &self.log, false)?;
        self.wait_ready()
    }

    /// Graceful restart (RFC 4724) as BIRD does it: `birdc graceful restart` makes BIRD close its BGP
    /// sessions without NOTIFICATION and exit, so GR-capable peers keep its routes as stale; then it is
    /// started again with `-R` (recovery: it sets the Restart State bit and waits for peers' End-of-RIB).
    /// Needs `graceful restart on;` in the BGP protocols (and GR enabled on the peer).
    pub fn graceful_restart(&mut self) -> Result<()> {
        self.graceful_stop()?;
        self.graceful_start()
    }

    /// First half of [`Bird::graceful_restart`]: BIRD exits, peers hold its routes as stale.
    pub fn graceful_stop(&mut self) -> Result<()> {
        let out = self.birdc("graceful restart")?;
        if !out.contains("Graceful restart requested") {
            bail!("bird graceful restart: {out}");
        }
        let proc = &mut self.proc;
        eventually(Duration::from_secs(10), || {
            if proc.try_status().is_some() {
                Ok(())
            } else {
                bail!("bird still running after `graceful restart`")
            }
        })?;
        self.proc.kill()
    }

    /// Second half of [`Bird::graceful_restart`]: start again in recovery mode (`bird -R`).
    pub fn graceful_start(&mut self) -> Result<()> {
        self.proc = Self::launch(&self.ns, &self.conf, &self.sock, &self.log, true)?;
        self.wait_ready()
    }

    /// The daemon process (for `stop()` / `cont()` / `pid()`).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Mutable access to the process (`kill()`, `is_running()`).
    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// The namespace BIRD runs in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Path of the control socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// Path of the current config.
    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// BIRD's stdout/stderr so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// Parse the text of `birdc show route` (BIRD 2.0 layout, without `-v`).
///
/// ```text
/// Table master4:
/// 10.50.0.0/24         unicast [gobgp1 21:28:36.966] * (100) [AS65010?]
///         via 10.0.0.2 on eth0
///                      unicast [gobgp6 21:28:36.964 from fd00::2] (100) [AS65010?]
///         via 10.0.0.2 on eth0
/// 10.99.0.0/26         blackhole [s4 21:28:25.229] * (200)
/// ```
/// An indented header line is another route for the prefix above; tab-indented lines belong to the
/// route above them.
pub fn parse_routes(text: &str) -> Result<Vec<BirdRoute>> {
    let mut table = String::new();
    let mut prefix: Option<IpNet> = None;
    let mut routes: Vec<BirdRoute> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(t) = line.strip_prefix("Table ") {
            table = t.trim_end_matches(':').to_string();
            continue;
        }
        if line.starts_with('\t') {
            let Some(r) = routes.last_mut() else {
                continue;
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["via", gw, "on", dev, ..] => {
                    r.via
                        .push(gw.parse().with_context(|| format!("gateway in {line:?}"))?);
                    r.ifaces.push(dev.to_string());
                }
                ["dev", dev, ..] => r.ifaces.push(dev.to_string()),
                _ => {}
            }
            continue;
        }
        let rest = if line.starts_with(' ') {
            line.trim_start()
        } else {
            let (p, rest) = line
                .split_once(char::is_whitespace)
                .with_context(|| format!("route line {line:?}"))?;
            // BIRD prints e.g. `10.0.0.0/24 mpls 42` for labelled routes; only plain prefixes here.
            prefix = Some(p.parse().with_context(|| format!("prefix in {line:?}"))?);
            rest.trim_start()
        };
        let prefix = prefix.with_context(|| format!("route without prefix: {line:?}"))?;
        let (kind, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let rest = rest.trim_start();
        let (proto, rest) = match rest.strip_prefix('[') {
            Some(r) => {
                let (inside, after) = r.split_once(']').unwrap_or((r, ""));
                (
                    inside.split_whitespace().next().unwrap_or("").to_string(),
                    after.trim_start(),
                )
            }
            None => (String::new(), rest),
        };
        let (primary, info) = match rest.strip_prefix('*') {
            Some(r) => (true, r.trim()),
            None => (false, rest.trim()),
        };
        routes.push(BirdRoute {
            table: table.clone(),
            prefix,
            kind: kind.to_string(),
            proto,
            primary,
            via: Vec::new(),
            ifaces: Vec::new(),
            info: info.to_string(),
        });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_protocols() {
        let text = "Name       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     10:41:05.100  \n\
            kernel4    Kernel     master4    up     10:41:05.100  \n\
            node1_v4   BGP        ---        up     10:41:07.312  Established   \n\
            node1_v6   BGP        ---        start  10:41:05.100  Active        Socket: Connection refused\n\
            node3_v4   BGP        ---        down   10:41:05.100  \n";
        let p = parse_protocols(text);
        assert_eq!(p.len(), 5);
        assert_eq!(
            (p[0].name.as_str(), p[0].proto.as_str()),
            ("device1", "Device")
        );
        assert_eq!(p[2].bgp_state.as_deref(), Some("Established"));
        assert_eq!(p[2].since, "10:41:07.312");
        assert_eq!(
            (p[3].bgp_state.as_deref(), p[3].info.as_str()),
            (Some("Active"), "Socket: Connection refused")
        );
        assert_eq!(
            (p[4].state.as_str(), p[4].bgp_state.as_deref()),
            ("down", None)
        );
    }

    #[test]
    fn parses_bird_show_route() {
        let text = "Table master4:\n\
10.50.0.0/24         unicast [gobgp1 21:28:36.966] * (100) [AS65010?]\n\
\tvia 10.0.0.2 on eth0\n                     unicast [gobgp6 21:28:36.964 from fd00::2] (100) [AS65010?]\n\
\tvia 10.0.0.3 on eth1\n\
10.99.0.0/26         blackhole [s4 21:28:25.229] * (200)\n\
\n\
Table master6:\n\
fd50::/64            unicast [gobgp6 21:28:36.987] * (100) [AS65002?]\n\
\tvia fd00::2 on eth0\n";
        let r = parse_routes(text).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].prefix, "10.50.0.0/24".parse::<IpNet>().unwrap());
        assert_eq!(r[0].proto, "gobgp1");
        assert!(r[0].primary);
        assert_eq!(r[0].via, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(r[1].prefix, r[0].prefix);
        assert_eq!(r[1].proto, "gobgp6");
        assert!(!r[1].primary);
        assert_eq!(r[1].ifaces, vec!["eth1"]);
        assert_eq!(r[2].kind, "blackhole");
        assert_eq!(r[2].info, "(200)");
        assert_eq!(r[3].table, "master6");
        assert_eq!(r[3].via, vec!["fd00::2".parse::<IpAddr>().unwrap()]);
    }
}
