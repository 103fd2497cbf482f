//! calico-rs dataplane.
