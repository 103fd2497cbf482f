//! calico-rs network-namespace lab: one library for the lab command (`calico-lab-rs
//! up|status|down`, [`cmd`]) and for the tests (`tests/`), kept out of the product crates (as
//! holo keeps its topology harness beside its tests).
//!
//! ```text
//!  proc     commands with deadlines; Proc (owned, killed on drop), ProcId (detached, outlives us)
//!  netns    the only way to touch networking: ip -n / ip netns exec in lab namespaces, guarded
//!  lab      the tests' Lab / Netns / Segment (crs{PID}-{TAG}-*, removed on drop, swept)
//!  pods     pods as the CNI plugin makes them (both labs)
//!  routes   the daemon's kernel routes as the lab reads them (both labs)
//!  peers    BIRD 2, GoBGP, FRR drivers and parsers (tests' peers, the command's ToR)
//!  check    probes, echo servers, expect_some / expect_none, reachability and ping matrices
//!  plan     the lab's names and addresses (the command's layout; the cluster's addresses)
//!  datastore  the YAML documents and IPAM pod addresses (both labs)
//!  cluster  the tests' cluster of real daemons on a shared datastore
//!  cmd      the lab command: up (plan -> namespaces -> datastore -> pods -> ToR -> daemons ->
//!           converge -> report), status, down; recorded in DIR/lab.json
//!  bins     finding calico-node-rs, calicoctl-rs, calico-lab-rs beside the running executable
//! ```
//!
//! Nothing here ever changes the root network namespace: every namespace it acts on is one it
//! names (`crslab-*` and other `crs<letter>…-` prefixes for the command, `crs<PID>-*` for the
//! tests; see [`netns`]). It needs root.

pub mod bins;
pub mod check;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod datastore;
pub mod kubeapi;
pub mod lab;
pub mod mrt;
pub mod netns;
pub mod peers;
pub mod plan;
pub mod pods;
pub mod proc;
pub mod routes;
pub mod wait;

pub use lab::{Lab, Netns, Segment};
pub use peers::{Bird, Frr, Gobgp};
pub use proc::Proc;
pub use wait::eventually;
