//! TLS material for the status API (rustls through tonic): the server's certificate, key and the CA
//! that client certificates must chain to (mutual TLS: a client without a valid certificate is
//! refused during the handshake), and the client's side of the same.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::GrpcError;

/// A TLS handshake that has not finished by then is dropped (a stalled client holds no slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain of the server.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
}

impl TlsFiles {
    /// All three flags or none; a partial set is an error naming the missing flag.
    pub fn from_flags(
        spec: &str,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, GrpcError> {
        let missing = |missing| GrpcError::TlsIncomplete {
            spec: spec.to_string(),
            missing,
        };
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (None, _, _) => Err(missing("--grpc-tls-cert")),
            (_, None, _) => Err(missing("--grpc-tls-key")),
            (_, _, None) => Err(missing("--grpc-tls-client-ca")),
        }
    }

    /// Reads the files and builds the server side: client certificates are required.
    pub fn server_config(&self) -> Result<ServerTlsConfig, GrpcError> {
        let cert = read("certificate", &self.cert)?;
        let key = read("private key", &self.key)?;
        let ca = read("client CA", &self.client_ca)?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT))
    }
}

/// The client's TLS files (PEM), for `tcp:` targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The client certificate the server checks against its client CA.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA the server's certificate must chain to.
    pub ca: PathBuf,
    /// Name to check the server certificate against; default: the IP address dialled.
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Reads the files; `default_name` is used when no server name was given.
    pub fn client_config(&self, default_name: &str) -> Result<ClientTlsConfig, GrpcError> {
        let cert = read("certificate", &self.cert)?;
        let key = read("private key", &self.key)?;
        let ca = read("CA", &self.ca)?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(self.server_name.as_deref().unwrap_or(default_name)))
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|source| GrpcError::TlsFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_named() {
        let files = TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: "/nonexistent/ca.pem".into(),
        };
        let msg = files.server_config().unwrap_err().to_string();
        assert!(
            msg.starts_with("certificate /nonexistent/cert.pem: "),
            "{msg}"
        );
    }

    #[test]
    fn partial_flags() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert!(TlsFiles::from_flags("tcp:x", None, None, None)
            .unwrap()
            .is_none());
        let err = TlsFiles::from_flags("tcp:x", p("/c"), p("/k"), None).unwrap_err();
        assert!(err.to_string().contains("--grpc-tls-client-ca"), "{err}");
        let err = TlsFiles::from_flags("tcp:x", None, p("/k"), p("/ca")).unwrap_err();
        assert!(err.to_string().contains("--grpc-tls-cert"), "{err}");
    }
}
