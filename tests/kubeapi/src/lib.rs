//! A Kubernetes API server for tests (never shipped). No kube-apiserver can be installed where this
//! project is built, so the Kubernetes datastore is tested against this one; it behaves as the
//! Kubernetes "API concepts" document says, and real clients (kubectl, the Python client, kube-rs) are
//! run against it in this crate's tests to keep it honest.
//!
//! Served: plain HTTP (no TLS, no authentication or authorisation: the bearer token only names the
//! user in the request log); the built-in resources in [`resources`] plus any CRD's; get, list (label
//! and field selectors, `limit`/`continue`, `resourceVersion`/`resourceVersionMatch`), watch (bookmarks,
//! `sendInitialEvents`, 410 on a compacted rv), create, update, the three patch types, delete and
//! deletecollection; legacy discovery. Test controls under `/_test/` (see [`server`]) drop watches,
//! compact history and simulate outages.
//!
//! Layout: [`store`] (objects, rv counter, history; pure and synchronous), [`selector`], [`patch`],
//! [`resources`], [`discovery`], [`status`] (errors), [`journal`] (`--state`), [`watch`] and [`http`]
//! (the async edges), [`server`] (listener, outages, controls), [`reqlog`].
//!
//! Not done: server-side apply, Table and protobuf output, protobuf request bodies (except creates of
//! Namespaces, ConfigMaps, Secrets and ServiceAccounts, which kubectl's generators send), OpenAPI (`/openapi/v2`, `/openapi/v3` are
//! 404: use `kubectl --validate=false`), aggregated discovery (clients fall back), admission and
//! per-type validation or defaulting beyond what [`store`] lists, graceful pod deletion, garbage
//! collection of owner references, CRD schema validation and pruning.

pub mod body;
pub mod discovery;
pub mod http;
pub mod journal;
pub mod patch;
pub mod proto;
pub mod reqlog;
pub mod resources;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;
pub mod util;
pub mod watch;

pub use server::{Server, ServerCfg, ServerHandle, StartError};
