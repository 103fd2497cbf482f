//! The node status API (`calico_rs.node.v1.NodeStatus`, see `proto/`): the server the daemon runs,
//! the client `calicoctl-rs` and the fallback controller use, and the text and JSON forms the CLI
//! prints.
//!
//! ```text
//!  daemon tasks --publish--> watch::Sender<Arc<NodeSnapshot>>
//!                                  |
//!                          StatusRx (one clone per request / stream)
//!                                  |
//!          server::StatusService --convert--> proto messages --tonic--> unix:PATH | tcp:ADDR (mTLS)
//!                                                                            |
//!                                          client::connect <-----------------'
//!                                                |
//!                               render (tables) / json (stable field names)
//! ```
//!
//! Invariants:
//! - Handlers only read the latest published snapshot (`borrow().clone()` of an `Arc`): a request
//!   never waits on, or locks anything owned by, the BGP or dataplane tasks.
//! - The Unix socket is never reachable with a mode other than 0600: it is bound under a temporary
//!   name, chmod-ed, then renamed into place. A live socket at the path (another daemon) is an error;
//!   a stale one is removed.
//! - TCP is served only with mutual TLS (client certificate required, checked against the client CA)
//!   unless the operator passed the explicit insecure flag.

pub mod client;
pub mod convert;
pub mod json;
pub mod render;
pub mod server;
pub mod table;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use client::{connect, connect_with, ClientCfg};
pub use server::{bind, serve, Bound, BoundAddr};
pub use tls::{ClientTls, TlsFiles};

/// Where the daemon listens by default, and where `calicoctl-rs` looks by default.
pub const DEFAULT_SOCKET: &str = "/var/run/calico-rs/node.sock";
/// The default `--grpc` value.
pub const DEFAULT_GRPC: &str = "unix:/var/run/calico-rs/node.sock";

/// Errors of the status API: configuration, binding, TLS material, connecting.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// `--grpc` is neither `unix:PATH` nor `tcp:ADDR`.
    #[error("--grpc {spec:?}: {reason}")]
    BadAddr { spec: String, reason: String },
    /// `tcp:` without TLS material and without the insecure flag.
    #[error(
        "--grpc tcp:{addr}: refusing plain TCP: anyone who can reach {addr} could read the node's \
         status (peers, routes, IPAM blocks, policy) unauthenticated and unencrypted, and \
         impersonate the daemon to its clients. Give --grpc-tls-cert, --grpc-tls-key and \
         --grpc-tls-client-ca for mutual TLS, or --grpc-insecure-tcp to accept that risk"
    )]
    PlainTcpRefused { addr: SocketAddr },
    /// The client was asked for `tcp:` without TLS material and without the insecure flag.
    #[error(
        "--grpc tcp:{addr}: refusing plain TCP: give --tls-cert, --tls-key and --tls-ca for mutual \
         TLS, or --grpc-insecure-tcp for a daemon started with it (its status is readable, \
         unauthenticated, by anyone who can reach {addr})"
    )]
    ClientPlainTcp { addr: SocketAddr },
    /// Some but not all of the TLS flags.
    #[error("--grpc {spec}: TLS needs {missing} as well")]
    TlsIncomplete { spec: String, missing: &'static str },
    /// TLS flags on a Unix socket, where they would silently do nothing.
    #[error("--grpc unix:{path}: TLS flags apply only to tcp: addresses", path = path.display())]
    TlsOnUnix { path: PathBuf },
    /// A TLS file could not be read.
    #[error("{what} {path}: {source}", path = path.display())]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TLS material was read but rustls rejected it (bad PEM, key not matching, ...).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// Another process serves the socket path.
    #[error("{path}: another process is serving this socket", path = path.display())]
    SocketInUse { path: PathBuf },
    /// Something that is not a socket sits where the socket should go.
    #[error("{path}: exists and is not a socket; not removing it", path = path.display())]
    NotASocket { path: PathBuf },
    /// Creating, binding or chmod-ing the socket or listener.
    #[error("{what} {target}: {source}")]
    Io {
        what: &'static str,
        target: String,
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("gRPC server: {0}")]
    Serve(String),
    /// The client could not reach the daemon.
    #[error("connecting to {target}: {reason}")]
    Connect { target: String, reason: String },
}

/// A `--grpc` address: `unix:PATH` or `tcp:ADDR` (`tcp:127.0.0.1:50051`, `tcp:[::1]:50051`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for GrpcAddr {
    type Err = GrpcError;

    fn from_str(spec: &str) -> Result<GrpcAddr, GrpcError> {
        let bad = |reason: &str| GrpcError::BadAddr {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = spec.strip_prefix("unix:") {
            // Accept the URI spelling `unix:///path` too.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            if !Path::new(path).is_absolute() {
                return Err(bad("the socket path must be absolute"));
            }
            Ok(GrpcAddr::Unix(PathBuf::from(path)))
        } else if let Some(addr) = spec.strip_prefix("tcp:") {
            let addr = addr.strip_prefix("//").unwrap_or(addr);
            addr.parse()
                .map(GrpcAddr::Tcp)
                .map_err(|_| bad("expected tcp:IP:PORT (IPv6 as tcp:[::1]:PORT)"))
        } else {
            Err(bad("expected unix:PATH or tcp:IP:PORT"))
        }
    }
}

impl std::fmt::Display for GrpcAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            GrpcAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl Default for GrpcAddr {
    fn default() -> GrpcAddr {
        GrpcAddr::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

/// What the daemon listens on, validated: TCP always carries its TLS material unless the operator
/// chose [`GrpcListen::TcpInsecure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcListen {
    /// A Unix socket, mode 0600.
    Unix(PathBuf),
    /// TCP with mutual TLS.
    Tcp { addr: SocketAddr, tls: TlsFiles },
    /// Plain TCP, only with `--grpc-insecure-tcp`.
    TcpInsecure(SocketAddr),
}

impl GrpcListen {
    /// Validates a `--grpc` address with the TLS flags and the insecure flag.
    pub fn new(
        addr: GrpcAddr,
        tls: Option<TlsFiles>,
        insecure_tcp: bool,
    ) -> Result<GrpcListen, GrpcError> {
        match (addr, tls) {
            (GrpcAddr::Unix(path), None) => Ok(GrpcListen::Unix(path)),
            (GrpcAddr::Unix(path), Some(_)) => Err(GrpcError::TlsOnUnix { path }),
            (GrpcAddr::Tcp(addr), Some(tls)) => Ok(GrpcListen::Tcp { addr, tls }),
            (GrpcAddr::Tcp(addr), None) if insecure_tcp => Ok(GrpcListen::TcpInsecure(addr)),
            (GrpcAddr::Tcp(addr), None) => Err(GrpcError::PlainTcpRefused { addr }),
        }
    }

    /// Parses `unix:PATH` / `tcp:ADDR` and validates it as [`GrpcListen::new`] does.
    pub fn parse(
        spec: &str,
        tls: Option<TlsFiles>,
        insecure_tcp: bool,
    ) -> Result<GrpcListen, GrpcError> {
        GrpcListen::new(spec.parse()?, tls, insecure_tcp)
    }
}

impl Default for GrpcListen {
    fn default() -> GrpcListen {
        GrpcListen::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

/// The daemon's gRPC flags, for `#[command(flatten)]` in its clap parser.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcArgs {
    /// Serve the status API on `unix:PATH` (mode 0600) or `tcp:IP:PORT` (mutual TLS).
    #[arg(long = "grpc", value_name = "unix:PATH|tcp:ADDR", default_value = DEFAULT_GRPC)]
    pub grpc: String,
    /// Server certificate (PEM) for `tcp:`.
    #[arg(long = "grpc-tls-cert", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM) for `tcp:`.
    #[arg(long = "grpc-tls-key", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to, for `tcp:`.
    #[arg(long = "grpc-tls-client-ca", value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve `tcp:` without TLS: anyone who can reach the port reads the node's status.
    #[arg(long = "grpc-insecure-tcp")]
    pub insecure_tcp: bool,
}

impl GrpcArgs {
    /// Validates the flags into a [`GrpcListen`]: one clear error for any bad combination.
    pub fn listen(&self) -> Result<GrpcListen, GrpcError> {
        let tls = TlsFiles::from_flags(
            &self.grpc,
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_client_ca.clone(),
        )?;
        GrpcListen::parse(&self.grpc, tls, self.insecure_tcp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            cert: "/c.pem".into(),
            key: "/k.pem".into(),
            client_ca: "/ca.pem".into(),
        }
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "unix:/run/x.sock".parse::<GrpcAddr>().unwrap(),
            GrpcAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "unix:///run/x.sock".parse::<GrpcAddr>().unwrap(),
            GrpcAddr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:50051".parse::<GrpcAddr>().unwrap(),
            GrpcAddr::Tcp("127.0.0.1:50051".parse().unwrap())
        );
        assert_eq!(
            "tcp:[::1]:7".parse::<GrpcAddr>().unwrap(),
            GrpcAddr::Tcp("[::1]:7".parse().unwrap())
        );
        for bad in [
            "",
            "unix:",
            "unix:rel/x",
            "tcp:localhost:1",
            "tcp:1.2.3.4",
            "http://x",
        ] {
            assert!(bad.parse::<GrpcAddr>().is_err(), "{bad}");
        }
        assert_eq!(GrpcAddr::default().to_string(), DEFAULT_GRPC);
    }

    #[test]
    fn tcp_needs_tls_or_the_insecure_flag() {
        let err = GrpcListen::parse("tcp:127.0.0.1:1", None, false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("refusing plain TCP"), "{msg}");
        assert!(msg.contains("unauthenticated and unencrypted"), "{msg}");
        assert!(msg.contains("--grpc-insecure-tcp"), "{msg}");
        assert_eq!(
            GrpcListen::parse("tcp:127.0.0.1:1", None, true).unwrap(),
            GrpcListen::TcpInsecure("127.0.0.1:1".parse().unwrap())
        );
        assert!(matches!(
            GrpcListen::parse("tcp:127.0.0.1:1", Some(tls()), false).unwrap(),
            GrpcListen::Tcp { .. }
        ));
        assert!(matches!(
            GrpcListen::parse("unix:/x.sock", Some(tls()), false),
            Err(GrpcError::TlsOnUnix { .. })
        ));
    }

    #[test]
    fn daemon_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            grpc: GrpcArgs,
        }
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.grpc.listen().unwrap(), GrpcListen::default());
        let cli = Cli::try_parse_from(["x", "--grpc", "tcp:127.0.0.1:9", "--grpc-tls-cert", "/c"])
            .unwrap();
        let msg = cli.grpc.listen().unwrap_err().to_string();
        assert!(msg.contains("--grpc-tls-key"), "{msg}");
        let cli = Cli::try_parse_from([
            "x",
            "--grpc",
            "tcp:127.0.0.1:9",
            "--grpc-tls-cert",
            "/c.pem",
            "--grpc-tls-key",
            "/k.pem",
            "--grpc-tls-client-ca",
            "/ca.pem",
        ])
        .unwrap();
        assert_eq!(
            cli.grpc.listen().unwrap(),
            GrpcListen::Tcp {
                addr: "127.0.0.1:9".parse().unwrap(),
                tls: tls()
            }
        );
    }
}
