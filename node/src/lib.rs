//! calico-rs node daemon library.

pub mod bootstrap;
pub mod calc;
pub mod cli;
pub mod cni;
pub mod daemon;
pub mod datastore;
pub mod grpc;
pub mod ipam;
pub mod status;
