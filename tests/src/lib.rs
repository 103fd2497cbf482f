//! calico-rs network-namespace lab.
