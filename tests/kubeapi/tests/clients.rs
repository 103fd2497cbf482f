//! kube-test-server against clients nobody here wrote: kubectl, the official Python client and
//! kube-rs, plus raw-HTTP checks of the wire behaviour. One test binary, one module per client
//! (in `tests/clients/`). Every server listens on an ephemeral port of 127.0.0.1.

#[path = "clients/kube_rs.rs"]
mod kube_rs;
#[path = "clients/kubectl.rs"]
mod kubectl;
#[path = "clients/protocol.rs"]
mod protocol;
#[path = "clients/python.rs"]
mod python;
#[path = "clients/support.rs"]
mod support;
