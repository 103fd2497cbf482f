//! The CNI plugin's core (`calico-cni-rs`): the configuration, the environment, results and
//! errors of the CNI specification (0.3.x, 0.4.0, 1.0.0, 1.1.0), as pure code over bytes and
//! values; the binary does the netlink and IPAM work around it.

pub mod config;
pub mod env;
pub mod error;
pub mod install;
pub mod plugin;
pub mod result;
pub mod socket;

#[cfg(test)]
mod tests;

pub use config::{DatastoreCfg, IpamCfg, NetConf, SUPPORTED_VERSIONS};
pub use env::{CniEnv, Command};
pub use error::{CniError, Code};
pub use result::AddResult;
