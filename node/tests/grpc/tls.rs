//! Mutual TLS on loopback TCP, with a throwaway CA, server and client certificates made by rcgen:
//! the right client certificate works; no certificate, one from another CA, or plain HTTP/2 is
//! refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use calico_node::grpc::{self, BoundAddr, ClientCfg, ClientTls, GrpcAddr, GrpcListen, TlsFiles};
use calico_proto::v1 as pb;
use calico_proto::v1::node_status_client::NodeStatusClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::{snapshot, TestServer};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// Writes `NAME.pem` and `NAME-key.pem` for a leaf certificate; returns (cert, key) paths.
    fn leaf(&self, dir: &Path, name: &str, sans: &[&str], server: bool) -> (PathBuf, PathBuf) {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }
}

struct Pki {
    _dir: tempfile::TempDir,
    server: TlsFiles,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
    rogue_client: (PathBuf, PathBuf),
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("calico-rs test CA");
    let rogue = Ca::new("some other CA");
    let (cert, key) = ca.leaf(dir.path(), "server", &["127.0.0.1", "node1.example"], true);
    Pki {
        server: TlsFiles {
            cert,
            key,
            client_ca: ca.write(dir.path(), "ca"),
        },
        ca: dir.path().join("ca.pem"),
        client: ca.leaf(dir.path(), "client", &["calicoctl"], false),
        rogue_client: rogue.leaf(dir.path(), "rogue", &["calicoctl"], false),
        _dir: dir,
    }
}

async fn start(pki: &Pki) -> (TestServer, SocketAddr) {
    let listen = GrpcListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: pki.server.clone(),
    };
    let srv = TestServer::start(listen, snapshot()).await;
    let BoundAddr::Tcp(addr) = srv.addr.clone() else {
        panic!("tcp")
    };
    (srv, addr)
}

fn cfg(addr: SocketAddr, pki: &Pki, client: &(PathBuf, PathBuf), name: Option<&str>) -> ClientCfg {
    ClientCfg {
        addr: GrpcAddr::Tcp(addr),
        tls: Some(ClientTls {
            cert: client.0.clone(),
            key: client.1.clone(),
            ca: pki.ca.clone(),
            server_name: name.map(String::from),
        }),
        insecure_tcp: false,
    }
}

/// Connects and makes one call: TLS 1.3 reports a refused client certificate only after the
/// handshake, so the refusal can surface at connect or at the first call.
async fn get_node(cfg: &ClientCfg) -> Result<pb::Node, String> {
    let mut c = grpc::connect(cfg).await.map_err(|e| e.to_string())?;
    c.get_node(pb::GetNodeRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn mutual_tls_accepts_the_right_client_only() {
    let pki = pki();
    let (srv, addr) = start(&pki).await;

    // The right client certificate, verified by IP SAN and by DNS name.
    let node = get_node(&cfg(addr, &pki, &pki.client, None)).await.unwrap();
    assert_eq!(node.name, "node1");
    let node = get_node(&cfg(addr, &pki, &pki.client, Some("node1.example")))
        .await
        .unwrap();
    assert_eq!(node.name, "node1");

    // A client certificate from another CA.
    let err = get_node(&cfg(addr, &pki, &pki.rogue_client, None))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");

    // No client certificate at all (the server's certificate is trusted).
    let ca = std::fs::read(&pki.ca).unwrap();
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name("127.0.0.1"),
        )
        .unwrap();
    let res = match ep.connect().await {
        Ok(ch) => NodeStatusClient::new(ch)
            .get_node(pb::GetNodeRequest {})
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let err = res.expect_err("a client without certificate was served");
    assert!(err.contains("CertificateRequired"), "{err}");

    // Plain HTTP/2 to the TLS port.
    let plain = get_node(&ClientCfg {
        addr: GrpcAddr::Tcp(addr),
        tls: None,
        insecure_tcp: true,
    })
    .await;
    assert!(plain.is_err(), "plain HTTP/2 was served");

    // The server's name must match.
    let err = get_node(&cfg(addr, &pki, &pki.client, Some("other.example")))
        .await
        .unwrap_err();
    assert!(
        err.contains("not valid for name \"other.example\""),
        "{err}"
    );

    // Failed handshakes do not stop the server.
    get_node(&cfg(addr, &pki, &pki.client, None)).await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn bad_tls_material_is_reported_at_bind() {
    let pki = pki();
    // The key does not belong to the certificate.
    let mut files = pki.server.clone();
    files.key = pki.client.1.clone();
    let err = grpc::bind(GrpcListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: files,
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("KeyMismatch"), "{err}");

    // Garbage PEM.
    let mut files = pki.server.clone();
    let junk = pki._dir.path().join("junk.pem");
    std::fs::write(&junk, "not PEM").unwrap();
    files.cert = junk;
    assert!(grpc::bind(GrpcListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: files,
    })
    .await
    .is_err());

    // Missing file: named.
    let mut files = pki.server.clone();
    files.client_ca = "/nonexistent/ca.pem".into();
    let err = grpc::bind(GrpcListen::Tcp {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: files,
    })
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
