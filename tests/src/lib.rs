//! calico-rs network-namespace lab: the library every integration test uses.
//!
//! - [`lab`]: [`Lab`](lab::Lab) owns namespaces (`crs{PID}-{TAG}-{name}`), veth links, bridged segments
//!   and a temp dir; it sweeps leftovers of dead runs on creation and removes everything on drop.
//! - [`proc`]: commands with deadlines and background processes ([`Proc`](proc::Proc)) killed on drop.
//! - [`wait`]: [`eventually`](wait::eventually) and friends instead of fixed sleeps.
//! - [`peers`]: BIRD 2, GoBGP and FRR bgpd daemons in lab namespaces, configured from strings and
//!   queried.
//! - [`pods`]: pods as a CNI plugin makes them; [`cluster`]: real `calico-node-rs` daemons on a
//!   shared file datastore, for end-to-end tests and benchmarks.
//! - [`mrt`]: an MRT TABLE_DUMP_V2 writer to bulk-load routes into GoBGP.
//! - [`check`]: ping / TCP / UDP probes, echo servers, `expect_some` / `expect_none`, matrices.
//! - [`soak`]: a cluster under random faults for N minutes, with probes that must and must not
//!   get through (`cargo run --release -p calico-tests --bin soak`).
//!
//! Nothing here ever changes the root network namespace. Tests need root.

pub mod check;
pub mod cluster;
pub mod lab;
pub mod mrt;
pub mod peers;
pub mod pods;
pub mod proc;
pub mod soak;
pub mod wait;

pub use lab::{Lab, Netns, Segment};
pub use peers::{Bird, Frr, Gobgp};
pub use proc::Proc;
pub use wait::eventually;
