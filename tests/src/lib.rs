//! calico-rs end-to-end tests. The network-namespace lab they are built on (namespaces, pods,
//! BIRD/GoBGP/FRR drivers, the test cluster, probes) is the `calico-lab` crate (`lab/`); this
//! crate holds the test binary (`tests/it`), the benchmarks, and:
//!
//! - [`soak`]: a cluster under random faults for N minutes, with probes that must and must not
//!   get through (`cargo run --release -p calico-tests --bin soak`).
//!
//! Nothing here ever changes the root network namespace. Tests need root.

pub mod soak;
