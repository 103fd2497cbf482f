//! calico-rs gRPC API: the `calico_rs.node.v1.NodeStatus` service, generated at build time from
//! `proto/calico_rs/node/v1/node_status.proto` (documented there).

/// Version 1 of the node status API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("calico_rs.node.v1");
}
