//! FRR's `bgpd` as a test peer: started from a config string inside a lab namespace, with no zebra
//! (`-Z`) and no kernel routes (`-n`), driven through `vtysh` and its `json` output.
//!
//! Files (in the lab's temp dir): the config `{ns}-frr.{n}.conf`, the pid file `{ns}-frr.{n}.pid`,
//! the log `{ns}-frr.{n}.log` (one across restarts) and the directory `{ns}-frr.{n}.vty/` that holds
//! the vty socket `bgpd.vty` (`bgpd --vty_socket DIR`, `vtysh --vty_socket DIR`): each daemon has
//! its own, so several run side by side and nothing under `/var/run/frr` is used. The vty TCP port
//! is off (`-P 0`); BGP listens on port 179 of the namespace. bgpd runs in the foreground as root
//! (`-S`: no switch to the `frr` user, which could not write the lab's files), so the [`Proc`] is
//! the daemon and [`Frr::stop`] signals that PID.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use serde_json::Value;

use crate::lab::Netns;
use crate::proc::{self, Proc};
use crate::wait::eventually;

/// The FRR daemon this driver runs.
pub const BGPD: &str = "/usr/lib/frr/bgpd";
/// Deadline of one `vtysh` call (a SIGSTOPped bgpd makes it fail, not hang).
pub const VTYSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Frr::start`] waits for bgpd to answer on its vty socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running FRR bgpd in a namespace.
#[derive(Debug)]
pub struct Frr {
    ns: Netns,
    conf: PathBuf,
    pid_file: PathBuf,
    vty: PathBuf,
    log: PathBuf,
    proc: Proc,
}

/// One path of `show bgp ipv4|ipv6 unicast json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrrRoute {
    pub prefix: IpNet,
    /// Next hops as FRR shows them (IPv6: the global one first, then a link-local one if sent).
    pub next_hops: Vec<IpAddr>,
    /// AS_PATH flattened, as FRR prints it in `path`.
    pub as_path: Vec<u32>,
    pub best: bool,
    pub valid: bool,
    /// Held as stale during a peer's graceful restart.
    pub stale: bool,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    /// The neighbor it came from (`peerId`); `None` for FRR's own routes.
    pub peer: Option<IpAddr>,
}

impl Frr {
    /// Write `config` (FRR's `bgpd.conf` syntax), start bgpd in `ns` and wait until it answers
    /// `show bgp summary json`.
    pub fn start(ns: &Netns, config: &str) -> Result<Frr> {
        let conf = ns.file("frr", "conf");
        let pid_file = conf.with_extension("pid");
        let vty = conf.with_extension("vty");
        let log = conf.with_extension("log");
        std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
        std::fs::create_dir_all(&vty).with_context(|| format!("creating {}", vty.display()))?;
        let proc = Self::launch(ns, &conf, &pid_file, &vty, &log)?;
        let mut frr = Frr {
            ns: ns.clone(),
            conf,
            pid_file,
            vty,
            log,
            proc,
        };
        frr.wait_ready()?;
        Ok(frr)
    }

    fn launch(ns: &Netns, conf: &Path, pid_file: &Path, vty: &Path, log: &Path) -> Result<Proc> {
        let (c, p, v) = (
            conf.to_string_lossy(),
            pid_file.to_string_lossy(),
            vty.to_string_lossy(),
        );
        let argv = [
            BGPD,
            "-Z",
            "-n",
            "-S",
            "-P",
            "0",
            "-f",
            &c,
            "-i",
            &p,
            "--vty_socket",
            &v,
            "--log",
            "stdout",
        ];
        ns.spawn_log(&argv, log)
    }

    fn wait_ready(&mut self) -> Result<()> {
        eventually(START_TIMEOUT, || {
            if let Some(status) = self.proc.try_status() {
                return Ok(Err(anyhow!(
                    "bgpd in {} exited ({status}); log:\n{}",
                    self.ns.name(),
                    self.log()
                )));
            }
            self.json("show bgp summary json")?;
            Ok(Ok(()))
        })
        .with_context(|| {
            format!(
                "bgpd in {} did not come up; log:\n{}",
                self.ns.name(),
                self.log()
            )
        })?
    }

    /// Run one `vtysh -c` command against this bgpd; returns its output. FRR reports some errors
    /// (`% Unknown command`, `% Malformed address`) with a zero exit status: those are errors here too.
    pub fn vtysh(&self, cmd: &str) -> Result<String> {
        let v = self.vty.to_string_lossy();
        // vtysh only talks to the Unix socket: no need to enter the namespace.
        let out = proc::run(
            &["vtysh", "--vty_socket", &v, "-d", "bgpd", "-c", cmd],
            VTYSH_TIMEOUT,
        )
        .with_context(|| format!("vtysh {cmd:?} in {}", self.ns.name()))?;
        if out.trim_start().starts_with('%') {
            bail!("vtysh {cmd:?} in {}: {}", self.ns.name(), out.trim());
        }
        Ok(out)
    }

    /// [`Frr::vtysh`] for a command ending in `json`, parsed.
    pub fn json(&self, cmd: &str) -> Result<Value> {
        let out = self.vtysh(cmd)?;
        serde_json::from_str(&out).with_context(|| format!("vtysh {cmd:?}: not JSON: {out}"))
    }

    /// `show bgp neighbors ADDR json`: the neighbor's object (`bgpState`, `connectionsEstablished`,
    /// `connectionsDropped`, `neighborCapabilities`, ...).
    pub fn neighbor(&self, addr: &str) -> Result<Value> {
        let v = self.json(&format!("show bgp neighbors {addr} json"))?;
        v.get(addr)
            .cloned()
            .ok_or_else(|| anyhow!("FRR has no neighbor {addr}: {v}"))
    }

    /// The neighbor's BGP state as FRR spells it (`Established`, `Active`, `OpenSent`, ...).
    pub fn neighbor_state(&self, addr: &str) -> Result<String> {
        let n = self.neighbor(addr)?;
        n.get("bgpState")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no bgpState for {addr}: {n}"))
    }

    /// Sessions with the neighbor FRR has brought up and seen go down so far:
    /// (`connectionsEstablished`, `connectionsDropped`).
    pub fn neighbor_counts(&self, addr: &str) -> Result<(u64, u64)> {
        let n = self.neighbor(addr)?;
        let count = |k: &str| {
            n.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow!("no {k} for {addr}: {n}"))
        };
        Ok((
            count("connectionsEstablished")?,
            count("connectionsDropped")?,
        ))
    }

    /// Wait until FRR's session with `addr` is Established.
    pub fn wait_established(&self, addr: &str, timeout: Duration) -> Result<()> {
        eventually(timeout, || match self.neighbor_state(addr)?.as_str() {
            "Established" => Ok(()),
            s => bail!("FRR's session with {addr} is {s}"),
        })
    }

    /// Every path of FRR's `show bgp ipv4 unicast json` and `show bgp ipv6 unicast json`.
    pub fn routes(&self) -> Result<Vec<FrrRoute>> {
        let mut out = Vec::new();
        for fam in ["ipv4", "ipv6"] {
            let v = self.json(&format!("show bgp {fam} unicast json"))?;
            out.extend(parse_routes(&v)?);
        }
        Ok(out)
    }

    /// The paths FRR holds for `prefix`.
    pub fn route(&self, prefix: &str) -> Result<Vec<FrrRoute>> {
        let p: IpNet = prefix.parse().with_context(|| format!("prefix {prefix}"))?;
        Ok(self
            .routes()?
            .into_iter()
            .filter(|r| r.prefix == p)
            .collect())
    }

    /// Crash-restart: SIGKILL bgpd (no NOTIFICATION; its kernel closes the connections) and start it
    /// again with the same config and files.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill()?;
        let _ = std::fs::remove_file(&self.pid_file);
        self.proc = Self::launch(&self.ns, &self.conf, &self.pid_file, &self.vty, &self.log)?;
        self.wait_ready()
    }

    /// SIGTERM the daemon (the PID we started; bgpd's pid file must name it too) and wait up to
    /// `grace` for it to exit, then SIGKILL. bgpd sends its peers a NOTIFICATION (Cease) on SIGTERM.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if self.proc.is_running() {
            if let Some(pid) = self.pid_from_file() {
                if pid != self.proc.pid() {
                    bail!(
                        "bgpd pid file {} says {pid}, we started {}",
                        self.pid_file.display(),
                        self.proc.pid()
                    );
                }
            }
        }
        self.proc.terminate(grace)
    }

    /// The PID bgpd wrote to its pid file, once it has.
    pub fn pid_from_file(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The daemon process (for `stop()` / `cont()` / `pid()`).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The namespace bgpd runs in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Path of the config it was started with.
    pub fn config_path(&self) -> &Path {
        &self.conf
    }

    /// The directory holding the vty socket.
    pub fn vty_dir(&self) -> &Path {
        &self.vty
    }

    /// bgpd's stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// Parse `show bgp ipv4|ipv6 unicast json` (FRR 8):
/// ```text
/// {"vrfId": 0, ..., "routes": {"10.1.0.0/26": [{"valid": true, "bestpath": true, "path": "65001",
///   "locPrf": 100, "metric": 7, "peerId": "10.0.0.1", "nexthops": [{"ip": "10.0.0.1", ...}]}]}}
/// ```
/// `bestpath`, `stale`, `locPrf`, `metric` are absent when false or unset; `peerId` is `(unspec)`
/// for FRR's own routes.
pub fn parse_routes(v: &Value) -> Result<Vec<FrrRoute>> {
    let Some(routes) = v.get("routes").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (prefix, paths) in routes {
        let prefix: IpNet = prefix
            .parse()
            .with_context(|| format!("prefix {prefix:?} in FRR's routes"))?;
        for p in paths.as_array().into_iter().flatten() {
            let flag = |k: &str| p.get(k).and_then(Value::as_bool).unwrap_or(false);
            let num = |k: &str| {
                p.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
            };
            let as_path = p
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u32>().with_context(|| format!("AS {s:?}")))
                .collect::<Result<Vec<_>>>()?;
            let next_hops = p
                .get("nexthops")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|n| n.get("ip").and_then(Value::as_str))
                .filter_map(|s| s.parse().ok())
                .collect();
            out.push(FrrRoute {
                prefix,
                next_hops,
                as_path,
                best: flag("bestpath"),
                valid: flag("valid"),
                stale: flag("stale"),
                local_pref: num("locPrf"),
                med: num("metric"),
                peer: p
                    .get("peerId")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frr_show_bgp_json() {
        let v: Value = serde_json::from_str(
            r#"{"vrfId":0,"vrfName":"default","routerId":"10.0.0.2","defaultLocPrf":100,
            "localAS":65002,"routes":{
              "10.1.0.0/26":[{"valid":true,"bestpath":true,"selectionReason":"First path received",
                "pathFrom":"external","prefix":"10.1.0.0","prefixLen":26,"network":"10.1.0.0/26",
                "metric":7,"weight":0,"peerId":"10.0.0.1","path":"4200000001 65010","origin":"IGP",
                "nexthops":[{"ip":"10.0.0.1","hostname":"x","afi":"ipv4","used":true}]}],
              "10.98.0.0/26":[{"valid":true,"bestpath":true,"pathFrom":"external",
                "prefix":"10.98.0.0","prefixLen":26,"network":"10.98.0.0/26","metric":0,
                "weight":32768,"peerId":"(unspec)","path":"","origin":"IGP",
                "nexthops":[{"ip":"0.0.0.0","afi":"ipv4","used":true}]}],
              "fd01::/122":[{"valid":true,"stale":true,"locPrf":100,"path":"{65003,65004}",
                "peerId":"fd00::1","nexthops":[{"ip":"fd00::1","scope":"global"},
                {"ip":"fe80::1","scope":"link-local","used":true}]}]}}"#,
        )
        .unwrap();
        let r = parse_routes(&v).unwrap();
        assert_eq!(r.len(), 3);
        let ours = r.iter().find(|r| r.prefix.to_string() == "10.1.0.0/26");
        let ours = ours.unwrap();
        assert_eq!(ours.as_path, vec![4_200_000_001, 65010]);
        assert_eq!(ours.next_hops, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(ours.best && ours.valid && !ours.stale);
        assert_eq!(ours.med, Some(7));
        assert_eq!(ours.peer, Some("10.0.0.1".parse().unwrap()));
        let own = r.iter().find(|r| r.prefix.to_string() == "10.98.0.0/26");
        let own = own.unwrap();
        assert!(own.as_path.is_empty() && own.peer.is_none());
        let v6 = r.iter().find(|r| r.prefix.to_string() == "fd01::/122");
        let v6 = v6.unwrap();
        assert!(v6.stale && !v6.best);
        assert_eq!(v6.local_pref, Some(100));
        assert_eq!(v6.as_path, vec![65003, 65004]);
        assert_eq!(v6.next_hops.len(), 2);
        assert!(parse_routes(&serde_json::json!({})).unwrap().is_empty());
    }
}
