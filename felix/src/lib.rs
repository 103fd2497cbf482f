//! calico-rs dataplane: desired state in, kernel state out.
//!
//! - [`routes`]: the routes of a node (a /32 or /128 per local workload to its `cali*` interface, a
//!   blackhole per local block, a route per remote block via the owning node), computed by a pure
//!   function and kept programmed over rtnetlink by one owner task that reconciles against the kernel.
//! - [`nat`]: `natOutgoing`, the masquerade of pool traffic leaving every pool, in a table of
//!   its own.
//! - [`veth`]: the host side of a workload's veth: its name ([`workload_iface_name`]) and the link and
//!   sysctl settings that let a pod use `169.254.1.1` / `fe80::ecee:eeff:feee:eeee` as its gateway.
//!
//! Everything here acts on the network namespace it runs in (see [`routes::driver`] for which thread
//! that is) and only touches kernel objects it owns: routes carrying its route protocol number and
//! the `cali*` interfaces.

pub mod nat;
pub mod policy;
pub mod routes;
pub mod veth;

pub use veth::workload_iface_name;
