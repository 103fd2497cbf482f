//! Errors of the policy engine.
//!
//! Two kinds, kept apart because they are handled differently:
//! - [`InputError`]: something wrong with one input object (a NetworkPolicy field, an endpoint). It
//!   never stops the compiler; it is returned in a list, the object is failed closed or skipped, and
//!   everything else is still enforced. The message names the object and the field, e.g.
//!   `NetworkPolicy prod/web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "10.0.0.0/33"`.
//! - [`PolicyError`]: the driver could not do its job (`nft` missing or refusing a batch, the
//!   manager gone). The owner retries these with backoff.
//!
//! [`CfgValueError`] is for the configuration's text values (a daemon flag or an environment
//! variable parsed with `FromStr`), before anything starts.

use serde::{Deserialize, Serialize};

/// One rejected field of one input object.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, thiserror::Error,
)]
#[error("{kind} {namespace}/{name}: {field}: {reason}")]
pub struct InputError {
    /// `NetworkPolicy` or `WorkloadEndpoint`.
    pub kind: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    /// What is wrong with it, e.g. `invalid CIDR "10.0.0.0/33"`.
    pub reason: String,
}

impl InputError {
    /// An error about field `field` of NetworkPolicy `namespace/name`.
    pub fn policy(namespace: &str, name: &str, field: impl Into<String>, reason: String) -> Self {
        InputError {
            kind: "NetworkPolicy".to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            field: field.into(),
            reason,
        }
    }

    /// An error about field `field` of the workload endpoint of pod `namespace/name`.
    pub fn endpoint(namespace: &str, name: &str, field: impl Into<String>, reason: String) -> Self {
        InputError {
            kind: "WorkloadEndpoint".to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            field: field.into(),
            reason,
        }
    }
}

/// Failures of the nftables driver and the policy manager.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `nft` could not be started or talked to.
    #[error("running {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` rejected a batch (nothing of it was applied: batches are atomic).
    #[error("nft {what} failed ({status}): {stderr}")]
    Nft {
        /// What was being done (`full apply`, `incremental apply`, `probe`...).
        what: &'static str,
        /// Exit status.
        status: String,
        /// nft's error output (first lines).
        stderr: String,
    },
    /// The drift probe's netlink request failed.
    #[error("probing the table over nfnetlink: {0}")]
    Probe(#[source] std::io::Error),
    /// The configuration is unusable: which setting, and why.
    #[error("policy configuration: {field}: {reason}")]
    Config {
        /// The [`super::PolicyCfg`] field.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The input was compiled but applying it failed (the owner keeps retrying).
    #[error("policy apply failed: {0}")]
    Apply(String),
    /// The manager thread has stopped.
    #[error("policy manager stopped")]
    Stopped,
    /// Waiting for the manager timed out.
    #[error("timed out waiting for the policy manager ({0})")]
    Timeout(String),
}

/// A configuration value given as text that is none of the accepted spellings, e.g.
/// `defaultEndpointToHostAction: "Allow" is not one of Drop, Return, Accept (case-insensitive)`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {value:?} is not one of {accepted} (case-insensitive)")]
pub struct CfgValueError {
    /// The setting, by its Calico name (`defaultEndpointToHostAction`).
    pub setting: &'static str,
    /// The text given.
    pub value: String,
    /// The accepted values, comma-separated.
    pub accepted: &'static str,
}
