//! calico-rs gRPC API.
