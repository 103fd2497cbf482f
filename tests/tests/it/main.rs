//! The one integration-test binary of calico-rs: each end-to-end area is a module here.
//! Tests need root and create their own network namespaces (see `calico_lab::lab`).

mod bgp;
mod check_selftest;
mod cni;
mod lab_cmd;
mod lab_selftest;
mod manifests;
mod nat;
mod node;
mod peers_selftest;
mod policy;
mod routes;
mod soak;
