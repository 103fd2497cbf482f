//! calico-rs node daemon library.
