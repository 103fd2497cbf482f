//! `natOutgoing`: traffic from the pods of a pool that has it, to addresses outside every
//! IPPool, leaves the node masqueraded (its source becomes the outgoing interface's address), as
//! Calico's `cali-nat-outgoing` does. Traffic between pools, which includes traffic to other
//! nodes' pods, keeps its source.
//!
//! One table of our own, `table inet calico-rs-nat` ([`DEFAULT_TABLE`]), next to the policy
//! table: two interval sets per family (every pool; the pools with `natOutgoing`) and one base
//! chain on the postrouting hook at `srcnat` priority:
//!
//! ```text
//! ip  saddr @masq-pools-v4 ip  daddr != @all-pools-v4 masquerade
//! ip6 saddr @masq-pools-v6 ip6 daddr != @all-pools-v6 masquerade
//! ```
//!
//! The table exists only while some pool has `natOutgoing`. It is small and changes only when
//! pools do, so every change replaces it whole in one `nft -f` transaction
//! (`add table; delete table; table { ... }`), and an owner thread ([`spawn`]) keeps it: it
//! applies each new [`NatSpec`], retries a failed apply, and every [`NatCfg::check_interval`]
//! compares `nft list table` with what it read right after its own apply, re-applying (and
//! counting a repair) when someone changed or deleted the table.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Default table name (family `inet`).
pub const DEFAULT_TABLE: &str = "calico-rs-nat";
/// The base chain's rule comment.
pub const COMMENT: &str = "calico-rs natOutgoing";

/// What the table holds: the CIDRs of every IPPool and of those whose pods are masqueraded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatSpec {
    pub all_pools: Vec<IpNet>,
    pub masq_pools: Vec<IpNet>,
}

impl NatSpec {
    /// Whether nothing is masqueraded (no table).
    pub fn is_empty(&self) -> bool {
        self.masq_pools.is_empty()
    }
}

/// Configuration of the owner thread.
#[derive(Clone, Debug)]
pub struct NatCfg {
    pub table: String,
    pub nft: PathBuf,
    /// How often the table is compared with what was applied (zero: never).
    pub check_interval: Duration,
}

impl Default for NatCfg {
    fn default() -> Self {
        NatCfg {
            table: DEFAULT_TABLE.into(),
            nft: PathBuf::from("nft"),
            check_interval: Duration::from_secs(2),
        }
    }
}

/// The `nft -f` script that makes the kernel hold `spec` in `table`: the table replaced whole, or
/// deleted when nothing is masqueraded. Pure.
pub fn render(table: &str, spec: &NatSpec) -> String {
    let mut s = format!("add table inet {table}\ndelete table inet {table}\n");
    if spec.is_empty() {
        return s;
    }
    let set = |name: &str, ty: &str, nets: &mut dyn Iterator<Item = &IpNet>| {
        let elems: Vec<String> = nets.map(|n| n.trunc().to_string()).collect();
        let elements = if elems.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", elems.join(", "))
        };
        format!("\tset {name} {{ type {ty}; flags interval; auto-merge;{elements} }}\n")
    };
    let v4 = |n: &&IpNet| n.addr().is_ipv4();
    let v6 = |n: &&IpNet| n.addr().is_ipv6();
    s += &format!("table inet {table} {{\n\tcomment \"{COMMENT}\"\n");
    s += &set(
        "all-pools-v4",
        "ipv4_addr",
        &mut spec.all_pools.iter().filter(v4),
    );
    s += &set(
        "masq-pools-v4",
        "ipv4_addr",
        &mut spec.masq_pools.iter().filter(v4),
    );
    s += &set(
        "all-pools-v6",
        "ipv6_addr",
        &mut spec.all_pools.iter().filter(v6),
    );
    s += &set(
        "masq-pools-v6",
        "ipv6_addr",
        &mut spec.masq_pools.iter().filter(v6),
    );
    s += "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n";
    s += &format!(
        "\t\tip saddr @masq-pools-v4 ip daddr != @all-pools-v4 masquerade comment \"{COMMENT}\"\n"
    );
    s += &format!(
        "\t\tip6 saddr @masq-pools-v6 ip6 daddr != @all-pools-v6 masquerade comment \"{COMMENT}\"\n"
    );
    s += "\t}\n}\n";
    s
}

/// What the owner thread did (for logs, status and metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatStatus {
    /// The spec in the kernel (after the last successful apply).
    pub applied: Option<NatSpec>,
    /// Successful applies, and how many of them repaired a changed table.
    pub applies: u64,
    pub repairs: u64,
    /// The last apply's error, cleared by the next success.
    pub last_error: Option<String>,
}

/// The handle of the owner thread; dropping it stops the thread (the table stays).
pub struct NatHandle {
    tx: mpsc::Sender<NatSpec>,
    status: Arc<Mutex<NatStatus>>,
}

impl NatHandle {
    /// Asks for `spec` (coalesced: only the latest counts).
    pub fn set(&self, spec: NatSpec) {
        let _ = self.tx.send(spec);
    }

    pub fn status(&self) -> NatStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Starts the owner thread in the caller's network namespace. It does nothing until the first
/// [`NatHandle::set`]; an empty spec then deletes a table a previous run left.
pub fn spawn(cfg: NatCfg) -> std::io::Result<NatHandle> {
    let (tx, rx) = mpsc::channel::<NatSpec>();
    let status = Arc::new(Mutex::new(NatStatus::default()));
    let st = status.clone();
    std::thread::Builder::new()
        .name("nat".into())
        .spawn(move || owner(cfg, rx, st))?;
    Ok(NatHandle { tx, status })
}

fn owner(cfg: NatCfg, rx: mpsc::Receiver<NatSpec>, status: Arc<Mutex<NatStatus>>) {
    let mut want: Option<NatSpec> = None;
    // What `nft list table` printed right after our last apply (None: no table expected, or
    // not known yet).
    let mut listed: Option<String> = None;
    let mut dirty = false;
    let mut backoff = Duration::from_millis(200);
    let mut next_check = Instant::now() + cfg.check_interval;
    loop {
        let wait = if want.is_none() {
            // Nothing asked for yet: nothing to apply or check.
            Duration::from_secs(3600)
        } else if dirty {
            backoff
        } else if cfg.check_interval.is_zero() {
            Duration::from_secs(3600)
        } else {
            next_check.saturating_duration_since(Instant::now())
        };
        match rx.recv_timeout(wait) {
            Ok(mut spec) => {
                while let Ok(newer) = rx.try_recv() {
                    spec = newer;
                }
                if want.as_ref() != Some(&spec) || dirty {
                    want = Some(spec);
                    dirty = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let Some(spec) = &want else { continue };
        let mut repair = false;
        if !dirty && Instant::now() >= next_check && !cfg.check_interval.is_zero() {
            next_check = Instant::now() + cfg.check_interval;
            match &listed {
                Some(expected) => {
                    let now = list(&cfg).ok();
                    if now.as_deref() != Some(expected.as_str()) {
                        tracing::warn!(table = %cfg.table, "the natOutgoing table was changed by someone else; restoring it");
                        dirty = true;
                        repair = true;
                    }
                }
                // The listing after our apply failed: take the baseline now.
                None if !spec.is_empty() => listed = list(&cfg).ok(),
                None => {}
            }
        }
        if !dirty {
            continue;
        }
        // Nothing to masquerade and no table (the usual start): no transaction at all, so the
        // policy owner's full apply next to it is not disturbed (see `policy::manager`).
        let skip = spec.is_empty() && list(&cfg).is_err();
        let result = if skip {
            Ok(())
        } else {
            run(&cfg, &render(&cfg.table, spec))
        };
        match result {
            Ok(()) => {
                listed = if spec.is_empty() {
                    None
                } else {
                    list(&cfg).ok()
                };
                dirty = false;
                backoff = Duration::from_millis(200);
                next_check = Instant::now() + cfg.check_interval;
                let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
                st.applies += 1;
                st.repairs += u64::from(repair);
                st.last_error = None;
                if st.applied.as_ref() != Some(spec) {
                    tracing::info!(table = %cfg.table, masquerade = ?spec.masq_pools, pools = ?spec.all_pools, "natOutgoing table applied");
                }
                st.applied = Some(spec.clone());
            }
            Err(e) => {
                tracing::warn!(table = %cfg.table, error = %e, retry_in = ?backoff, "natOutgoing table not applied");
                let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
                st.last_error = Some(e);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// `nft -f -` with `script`; stderr on failure.
fn run(cfg: &NatCfg, script: &str) -> Result<(), String> {
    let mut child = Command::new(&cfg.nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", cfg.nft.display()))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", cfg.nft.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `nft list table inet TABLE` (with handles, so a rule deleted and re-added by hand differs).
fn list(cfg: &NatCfg) -> Result<String, String> {
    let out = Command::new(&cfg.nft)
        .args(["-a", "list", "table", "inet", &cfg.table])
        .output()
        .map_err(|e| format!("running {}: {e}", cfg.nft.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_table_masquerades_only_masq_pools_to_outside_every_pool() {
        let spec = NatSpec {
            all_pools: nets(&["10.244.0.0/16", "10.245.0.0/16", "fd00:244::/48"]),
            masq_pools: nets(&["10.244.0.0/16"]),
        };
        let s = render("calico-rs-nat", &spec);
        assert!(s.starts_with("add table inet calico-rs-nat\ndelete table inet calico-rs-nat\n"));
        assert!(s.contains(
            "set all-pools-v4 { type ipv4_addr; flags interval; auto-merge; elements = { 10.244.0.0/16, 10.245.0.0/16 }; }"
        ), "{s}");
        assert!(s.contains(
            "set masq-pools-v4 { type ipv4_addr; flags interval; auto-merge; elements = { 10.244.0.0/16 }; }"
        ), "{s}");
        // No IPv6 pool masquerades: its set is declared empty, and matches nothing.
        assert!(
            s.contains("set masq-pools-v6 { type ipv6_addr; flags interval; auto-merge; }"),
            "{s}"
        );
        assert!(s.contains("elements = { fd00:244::/48 }"), "{s}");
        assert!(s.contains("type nat hook postrouting priority srcnat; policy accept;"));
        assert!(s.contains("ip saddr @masq-pools-v4 ip daddr != @all-pools-v4 masquerade"));
        assert!(s.contains("ip6 saddr @masq-pools-v6 ip6 daddr != @all-pools-v6 masquerade"));
    }

    #[test]
    fn nothing_to_masquerade_deletes_the_table() {
        let spec = NatSpec {
            all_pools: nets(&["10.244.0.0/16"]),
            masq_pools: vec![],
        };
        assert_eq!(
            render("t", &spec),
            "add table inet t\ndelete table inet t\n",
            "only the delete"
        );
    }
}
