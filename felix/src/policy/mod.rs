//! Kubernetes NetworkPolicy -> one nftables table, applied atomically and kept in sync.
//!
//! ```text
//!  node daemon ──PolicyInput──> PolicyHandle::update ──PolicyMsg (coalesced)──┐
//!       ^  (watch: PolicyStatus: compiled / rejected / counts / last apply)   v
//!       └──────────────────────────────────────────────────────────  owner thread (manager)
//!                                                                      │ compile (pure)
//!                                                                      │ render_diff / render_full (pure)
//!   `nft monitor` child ──"someone else changed our table"──Drift──>   │ NftDriver: `nft -f -`
//!   kernel <──────────────────────── one batch per change ─────────────┘
//! ```
//!
//! - [`model`]: the input — serde mirrors of `networking.k8s.io/v1` NetworkPolicy (real YAML or
//!   JSON deserializes into them), plus pods, namespaces and the node's workload endpoints.
//! - [`selector`], [`validate`]: label selectors and policy validation; errors name the policy and
//!   the field (`NetworkPolicy prod/web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR ...`).
//! - [`compile`] (pure): input -> [`ir::Ruleset`] (sets, chains, dispatch-map elements) + errors.
//! - [`render`] (pure): ruleset -> full `nft` script, or the diff of two rulesets as one script.
//! - [`driver`]: runs `nft -f -`, remembers what the kernel has, applies diffs, falls back to full.
//! - [`monitor`]: an `nft monitor` child that reports changes to our table made by anyone else.
//! - [`nlprobe`]: the periodic intactness probe, one filtered nfnetlink rule dump.
//! - [`manager`]: the owner thread tying them together; [`spawn`] returns a [`PolicyHandle`].
//!
//! # The ruleset
//! One table, `table inet calico-rs` ([`PolicyCfg::table`]); no other table is read or written.
//! Base chains dispatch through verdict maps keyed by interface name (`iifname vmap @from-wl`,
//! `oifname vmap @to-wl`) to per-endpoint chains (`fw-IFACE` = the pod's egress, `tw-IFACE` = its
//! ingress), which jump to per-policy chains (`pe-NS.NAME`, `pi-NS.NAME`) and deny at the end. Peer
//! pods and ipBlocks live in named sets shared by every rule that names the same selector or block
//! (`sel-HASH-v4`, `net-HASH-v6`), port lists in shared interval sets (`ports-80_443`), named
//! ports in `(address . port)` sets (`np-tcp-http-v4`). Per-packet cost is a conntrack lookup, one
//! map lookup per direction and, for a new flow only, the rules of the policies selecting the pod,
//! each one set lookup — independent of the number of pods. See [`render`] for the base chains.
//!
//! # Why `nft -f -` with text, not the `nftables` crate's JSON
//! Both drive the same `nft` binary / libnftables. Text is what we need and what is fast: named
//! verdict maps (the dispatch) cannot be declared with the crate's typed API and need raw JSON
//! anyway, its ruleset reader fails on a table holding one, and the same 10k-rule batch loads in
//! ~0.39 s as text against ~0.6 s as JSON (see `shared/CRATES.md`). The script is fed on stdin
//! (no temp files) and rendering is a pure function with golden-file tests, so the text form is as
//! checkable as a typed one. nft's stderr is captured into [`PolicyError::Nft`].
//!
//! # Atomicity and incrementality
//! Every change is one `nft -f` run = one netlink batch = one kernel transaction. The first apply
//! (and any repair) replaces the table whole (`add table; delete table; table { ... }`); after that
//! the driver diffs the ruleset it last applied against the new one and sends only changed set
//! elements, chains and map elements. It keeps its own copy of what it applied and never lists the
//! ruleset on the hot path (listing a big table takes seconds). Re-applying the same input sends
//! nothing.
//!
//! # Drift
//! Two mechanisms, because either alone has a blind spot:
//! - **`nft monitor`** (event-driven, milliseconds): a child process prints every ruleset change in
//!   the namespace, each transaction closed by `# new generation N by process PID (COMM)`. A
//!   transaction that touched `inet <table>` from a PID that is not one of our own `nft -f` runs is
//!   drift: the manager re-applies the full table (debounced ~50 ms). This catches `flush table`,
//!   `delete table`, and hand edits of any rule, set element or chain.
//! - **Probe** (every [`PolicyCfg::probe_interval`], default 500 ms): one netlink rule dump of the
//!   `fwd-egress` base chain, filtered by the kernel ([`nlprobe`]), checking its rule count and the
//!   dispatch rule's marker comment. Microseconds at any scale (`nft list chain` would load nft's
//!   whole cache: 0.1-0.4 s on big tables), it catches a flushed or deleted table even if the
//!   monitor died or lost events; a dead monitor is restarted and followed by a full re-apply.
//!
//! # Bad input
//! A policy that fails validation is reported ([`PolicyStatus::rejected`]) and the pods it selects
//! are denied in the directions it covers (fail closed); its selector, if that is what is broken,
//! is taken as "every pod of its namespace"; unreadable `policyTypes` as both directions. Every
//! other policy is compiled as usual.

pub mod compile;
pub mod driver;
pub mod error;
mod incremental;
mod index;
pub mod ir;
pub mod manager;
pub mod model;
pub mod monitor;
pub mod nlprobe;
pub mod render;
pub mod selector;
pub mod validate;

#[cfg(test)]
mod golden_tests;

use std::path::PathBuf;
use std::time::Duration;

pub use compile::{compile, CompileStats, Compiled};
pub use driver::{ApplyKind, ApplyReport, NftDriver};
pub use error::{InputError, PolicyError};
pub use incremental::Compiler;
pub use manager::{spawn, PolicyHandle, PolicyMsg, PolicyStatus};
pub use model::{
    LabelSelector, NamedPort, Namespace, NetworkPolicy, Pod, PolicyInput, WorkloadEndpoint,
};
pub use render::DenyAction;

/// Default table name.
pub const DEFAULT_TABLE: &str = "calico-rs";

/// Configuration of the policy engine.
#[derive(Clone, Debug)]
pub struct PolicyCfg {
    /// Name of our table in family `inet`.
    pub table: String,
    /// What denied packets get.
    pub deny: DenyAction,
    /// Prefix of workload interfaces (for the invalid-state and node<->pod rules).
    pub iface_prefix: String,
    /// The `nft` binary.
    pub nft: PathBuf,
    /// Watch `nft monitor` for changes made by others.
    pub monitor: bool,
    /// How often the owner probes that the table is intact (zero: never).
    pub probe_interval: Duration,
    /// Upper bound of the retry backoff after a failed apply.
    pub max_backoff: Duration,
}

impl Default for PolicyCfg {
    fn default() -> Self {
        PolicyCfg {
            table: DEFAULT_TABLE.to_string(),
            deny: DenyAction::Drop,
            iface_prefix: crate::veth::WORKLOAD_IFACE_PREFIX.to_string(),
            nft: PathBuf::from("nft"),
            monitor: true,
            probe_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl PolicyCfg {
    /// Check the values before starting anything.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.table;
        if t.is_empty()
            || t.len() > 64
            || !t.as_bytes()[0].is_ascii_alphabetic()
            || !ir::is_ident_safe(t)
        {
            return Err(format!(
                "policy table name {t:?}: use up to 64 letters, digits, '-', '_' or '.', starting with a letter"
            ));
        }
        if self.iface_prefix.is_empty() || !ir::is_ident_safe(&self.iface_prefix) {
            return Err(format!(
                "workload interface prefix {:?} is not usable",
                self.iface_prefix
            ));
        }
        Ok(())
    }
}
