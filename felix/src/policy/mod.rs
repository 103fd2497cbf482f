//! Kubernetes NetworkPolicy -> one nftables table, applied atomically and kept in sync.
//!
//! ```text
//!  node daemon ──PolicyInput──> PolicyHandle::update ──PolicyMsg (coalesced)──┐
//!       ^  (PolicyStatus: compiled / rejected / counts / last apply)          v
//!       └──────────────────────────────────────────────────────────  owner thread (manager)
//!                                                                      │ Compiler (pure, incremental)
//!                                                                      │ render_diff / render_full (pure)
//!   nf_tables event reader ──"someone else changed our table"──Drift─> │ NftDriver
//!   kernel <── `nft -f -` (structure) / nfnetlink batch (set elements) ┘  one transaction per change
//! ```
//!
//! - [`model`]: the input — serde mirrors of `networking.k8s.io/v1` NetworkPolicy (real YAML or
//!   JSON deserializes into them), plus pods, namespaces and the node's workload endpoints.
//! - [`selector`], [`validate`]: label selectors and policy validation; errors name the policy and
//!   the field (`NetworkPolicy prod/web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR ...`).
//! - [`compile`] (pure): input -> [`ir::Ruleset`] (sets, chains, dispatch-map elements) + errors;
//!   [`Compiler`] gives the same result reusing selector-set members between inputs.
//! - [`render`] (pure): ruleset -> full `nft` script, or the diff of two rulesets as one script.
//! - [`driver`]: runs `nft -f -`, remembers what the kernel has, applies diffs, falls back to full.
//! - [`netlink`]: what is done over raw nfnetlink: the intactness probe, element-only changes and
//!   decoding change notifications.
//! - [`monitor`]: the reader of change notifications that tells our transactions from others'.
//! - [`manager`]: the owner thread tying them together; [`spawn`] returns a [`PolicyHandle`].
//!
//! # Using it (the node daemon)
//! `let h = policy::spawn(PolicyCfg::default())?` on a thread in the node's network namespace;
//! then `h.update(input)` with a full [`PolicyInput`] snapshot whenever anything changes (it
//! returns a sequence number and never blocks; bursts coalesce). [`PolicyHandle::status`] /
//! [`PolicyHandle::subscribe`] give a [`PolicyStatus`]: policies compiled and rejected (each
//! [`InputError`] names object and field), chains / rules / sets / set elements / map elements in
//! the kernel, the last compile and apply durations and kinds, drift repairs, the last error.
//! [`PolicyHandle::wait_applied`] blocks until an input is in the kernel.
//!
//! # The ruleset
//! One table, `table inet calico-rs` ([`PolicyCfg::table`]); no other table is read or written.
//! Base chains dispatch through verdict maps keyed by interface name (`iifname vmap @from-wl`,
//! `oifname vmap @to-wl`) to per-endpoint chains (`fw-IFACE` = the pod's egress, `tw-IFACE` = its
//! ingress), which jump to per-policy chains (`pe-NS.NAME`, `pi-NS.NAME`; `pi-hHASH` where the
//! namespace has a dot or the name is too long, so that no two policies share a chain, see
//! [`ir::policy_chain`]) and deny at the end. Peer pods and ipBlocks live in named sets shared by
//! every rule that names the same selector or block (`sel-HASH-v4`, `net-HASH-v6`; reused only for
//! the same selector or block, a hash collision gets `sel-HASH-2-v4`), port lists in shared
//! interval sets (`ports-80_443`), named ports in `(address . port)` sets (`np-tcp-http-v4`;
//! `npl-` for ingress, local pods only). Per packet: a conntrack lookup and one map lookup per
//! direction; for a new flow only, the rules of
//! the policies selecting the pod, each one set lookup — independent of the number of pods. Only
//! policies selecting a local pod, and the sets they name, are in the table. See [`render`] for the
//! base chains, including traffic between the node and its own pods: the node always reaches
//! them; what they open towards the node passes their egress policy and then
//! [`PolicyCfg::endpoint_to_host`] (Calico's `defaultEndpointToHostAction`).
//!
//! # Why `nft -f -` with text, not the `nftables` crate's JSON
//! Both drive the same `nft` binary / libnftables. Text is what we need and what is fast: named
//! verdict maps (the dispatch) cannot be declared with the crate's typed API and need raw JSON
//! anyway, its ruleset reader fails on a table holding one, and the same 10k-rule batch loads in
//! ~0.39 s as text against ~0.6 s as JSON (see `shared/CRATES.md`). The script is fed on stdin
//! (no temp files) and rendering is a pure function with golden-file tests, so the text form is as
//! checkable as a typed one. nft's stderr is captured into [`PolicyError::Nft`].
//! The one exception is the hot path of pod churn — elements of address sets and nothing else —
//! which goes as one nfnetlink batch on a long-lived socket ([`netlink`]): the same single
//! transaction without a process start, nft's cache fetch and a socket close that blocks for
//! 6-30 ms after element deletes (measured; a kernel effect), i.e. ~1 ms instead of 10-40.
//!
//! # Atomicity and incrementality
//! Every change is one kernel transaction (one `nft -f` run, or one nfnetlink batch). The first
//! apply (and any repair) replaces the table whole (`add table; delete table; table { ... }`);
//! after that the driver diffs the ruleset it last applied against the new one and sends only
//! changed set elements, chains and map elements. It keeps its own copy of what it applied and
//! never lists the ruleset (listing a big table takes seconds). Re-applying the same input sends
//! nothing.
//!
//! # Drift
//! Two mechanisms, because either alone has a blind spot:
//! - **Change notifications** (event-driven, milliseconds; [`monitor`]): a socket subscribed to
//!   nf_tables' notification group sees every change in the namespace and, per transaction, the
//!   committing PID. A transaction that touched `inet <table>` and was not committed by one of our
//!   own `nft` runs or element batches is drift: the owner re-applies the full table (20 ms
//!   debounce). This catches `flush table`, `delete table`, and hand edits of any rule, set element
//!   or chain. Lost notifications (socket overflow) also trigger a re-apply (rate-limited).
//!   A full apply runs unsubscribed: while anyone listens, the kernel builds a notification per
//!   rule and set element inside the commit (a 60k-element apply took 4-5x as long). The ruleset
//!   generation (`NFT_MSG_GETGEN`), read before the apply and after resubscribing, must have
//!   moved by exactly our one transaction; otherwise someone else committed in the window and
//!   it is treated as lost notifications.
//! - **Probe** (every [`PolicyCfg::probe_interval`], default 500 ms): one netlink rule dump of the
//!   `fwd-egress` base chain, filtered by the kernel ([`netlink`]), checking its rule count and the
//!   dispatch rule's marker comment. Microseconds at any scale (`nft list chain` would load nft's
//!   whole cache: 0.1-0.4 s on big tables), it catches a flushed or deleted table even if the
//!   event reader died or lost events; a dead reader is restarted and followed by a re-apply.
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
pub mod netlink;
pub mod render;
pub mod selector;
pub mod validate;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use compile::{compile, CompileStats, Compiled};
pub use driver::{ApplyKind, ApplyReport, NftDriver};
pub use error::{CfgValueError, InputError, PolicyError};
pub use incremental::Compiler;
pub use manager::{spawn, PolicyHandle, PolicyMsg, PolicyPinger, PolicyStatus};
pub use model::{
    LabelSelector, NamedPort, Namespace, NetworkPolicy, Pod, PolicyInput, WorkloadEndpoint,
};
pub use render::{DenyAction, EndpointToHostAction};

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
    /// What new flows from local workloads to the node itself get after their egress policy
    /// (Calico's `defaultEndpointToHostAction`; parse Calico's spellings with `FromStr`). Default
    /// [`EndpointToHostAction::Accept`], as Calico's `calico.yaml` manifest sets it; Calico felix's
    /// own built-in default is `Drop`.
    pub endpoint_to_host: EndpointToHostAction,
    /// The `nft` binary.
    pub nft: PathBuf,
    /// Watch nf_tables change notifications for changes made by others (see [`monitor`]).
    pub monitor: bool,
    /// How often the owner probes that the table is intact (zero: never).
    pub probe_interval: Duration,
    /// Upper bound of the retry backoff after a failed apply.
    pub max_backoff: Duration,
    /// Send element-only changes (pods changing labels or addresses) as an nfnetlink batch on a
    /// long-lived socket instead of running `nft` (see [`netlink`]).
    pub netlink_elements: bool,
}

impl Default for PolicyCfg {
    fn default() -> Self {
        PolicyCfg {
            table: DEFAULT_TABLE.to_string(),
            deny: DenyAction::Drop,
            iface_prefix: crate::veth::WORKLOAD_IFACE_PREFIX.to_string(),
            endpoint_to_host: EndpointToHostAction::Accept,
            nft: PathBuf::from("nft"),
            monitor: true,
            probe_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            netlink_elements: true,
        }
    }
}

impl PolicyCfg {
    /// Check the values before starting anything.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let t = &self.table;
        if t.is_empty()
            || t.len() > 64
            || !t.as_bytes()[0].is_ascii_alphabetic()
            || !ir::is_ident_safe(t)
        {
            return Err(PolicyError::Config {
                field: "table",
                reason: format!(
                    "{t:?}: use up to 64 letters, digits, '-', '_' or '.', starting with a letter"
                ),
            });
        }
        if self.iface_prefix.is_empty() || !ir::is_ident_safe(&self.iface_prefix) {
            return Err(PolicyError::Config {
                field: "iface_prefix",
                reason: format!("{:?} is not usable", self.iface_prefix),
            });
        }
        Ok(())
    }
}
