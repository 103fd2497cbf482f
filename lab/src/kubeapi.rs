//! The lab's Kubernetes API: the project's test API server (`kube-test-server`, from
//! `tests/kubeapi/`, never shipped) in its own namespace on the lab segment, a kubeconfig for
//! it, and `kubectl` (the real client) to put the lab's objects in it.
//!
//! ```text
//!   segment 10.200.0.0/24
//!   api .250:6443  kube-test-server (plain HTTP, every request logged for the RBAC check)
//!   nN  .1N        calico-node-rs --datastore kubernetes (KUBECONFIG=DIR/kubeconfig)
//! ```
//! Calico resources are written as the file datastore's `projectcalico.org/v3` documents and
//! applied as their CRDs (`crd.projectcalico.org/v1`, the same spec), so a test says the same
//! thing to either backend.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use calico_node::ipam::kdd::KddIpam;

use crate::lab::{Lab, Netns, Segment};
use crate::proc::Proc;

/// The API server's address on the lab segment.
pub const API_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 250);
/// Its IPv6 address on the lab command's segment (the tests' server is IPv4 only).
pub const API_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x250);
pub const API_PORT: u16 = 6443;
/// The token the daemons present (the request log names them by it).
pub const DAEMON_TOKEN: &str = "calico-node-rs";
/// The token the lab's kubectl presents.
pub const ADMIN_TOKEN: &str = "lab-admin";
/// The binary, built by `cargo build --workspace --bins`.
pub const SERVER_BIN: &str = "kube-test-server";

/// A running API server and the files that reach it.
pub struct KubeApi {
    ns: Netns,
    server: Proc,
    dir: PathBuf,
    /// The lab's own IPAM client (pods' addresses, as a CNI plugin would take them), on a runtime
    /// whose threads live in the API's namespace.
    ipam: Option<(tokio::runtime::Runtime, KddIpam)>,
}

/// A kubeconfig for `server` with a bearer token.
pub fn kubeconfig(server: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n\
         users:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context:\n    \
         cluster: lab\n    user: u\n    namespace: default\ncurrent-context: lab\n"
    )
}

/// The repository's `manifests/` directory.
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// `projectcalico.org/v3` (the file datastore's spelling) as the CRD's group and version.
pub fn as_crd(text: &str) -> String {
    text.replace(
        "apiVersion: projectcalico.org/v3",
        "apiVersion: crd.projectcalico.org/v1",
    )
}

impl KubeApi {
    /// Starts the server in namespace `api` on `lan` and waits until it answers.
    pub fn start(lab: &Lab, lan: &Segment) -> Result<KubeApi> {
        let ns = lab.netns("api")?;
        lan.attach(
            &ns,
            "eth0",
            &[&format!("{API_V4}/{}", crate::plan::LAN_PREFIX_V4)],
        )?;
        let dir = lab.dir().join("kubeapi");
        std::fs::create_dir_all(&dir)?;
        let bin = crate::bins::built_bin(SERVER_BIN)?;
        let listen = format!("{API_V4}:{API_PORT}");
        let log = dir.join("server.log");
        let requests = dir.join("requests.jsonl");
        let server = ns.spawn_log(
            &[
                &bin.to_string_lossy(),
                "--listen",
                &listen,
                "--request-log",
                &requests.to_string_lossy(),
                "--state",
                &dir.join("state").to_string_lossy(),
            ],
            &log,
        )?;
        let mut api = KubeApi {
            ns,
            server,
            dir,
            ipam: None,
        };
        std::fs::write(
            api.kubeconfig_path(DAEMON_TOKEN),
            kubeconfig(&api.url(), DAEMON_TOKEN),
        )?;
        std::fs::write(
            api.kubeconfig_path(ADMIN_TOKEN),
            kubeconfig(&api.url(), ADMIN_TOKEN),
        )?;
        let t = Instant::now();
        while api.http("GET", "/readyz").is_err() {
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "kube-test-server did not answer within 10 s; log:\n{}",
                api.server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        api.ipam = Some(api.ipam_client()?);
        Ok(api)
    }

    /// A multi-thread runtime started from inside the API's namespace (its threads stay there,
    /// so their sockets reach the server) and IPAM on a client made on it.
    fn ipam_client(&self) -> Result<(tokio::runtime::Runtime, KddIpam)> {
        let kc = self.kubeconfig_path(ADMIN_TOKEN);
        self.ns
            .in_ns(move || -> Result<(tokio::runtime::Runtime, KddIpam)> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?;
                let client = rt.block_on(async {
                    let kc = kube::config::Kubeconfig::read_from(&kc)?;
                    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                    anyhow::Ok(kube::Client::try_from(cfg)?)
                })?;
                let ipam = KddIpam::kubernetes(client, rt.handle().clone());
                Ok((rt, ipam))
            })?
    }

    /// Runs `f` with the lab's IPAM, on a thread inside the API's namespace.
    pub fn with_ipam<T: Send>(&self, f: impl FnOnce(&KddIpam) -> T + Send) -> Result<T> {
        let (_, ipam) = self.ipam.as_ref().context("no IPAM client")?;
        self.ns.in_ns(|| f(ipam))
    }

    /// `http://10.200.0.250:6443`.
    pub fn url(&self) -> String {
        format!("http://{API_V4}:{API_PORT}")
    }

    /// The kubeconfig presenting `token`.
    pub fn kubeconfig_path(&self, token: &str) -> PathBuf {
        self.dir.join(format!("kubeconfig-{token}"))
    }

    /// The server's request log (JSON lines).
    pub fn request_log(&self) -> PathBuf {
        self.dir.join("requests.jsonl")
    }

    pub fn server(&self) -> &Proc {
        &self.server
    }

    /// `kubectl ARGS` as the lab's admin, inside the API's namespace; `stdin` for `-f -`.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let kc = self.kubeconfig_path(ADMIN_TOKEN);
        let kc = kc.to_string_lossy();
        let mut argv = vec!["kubectl", "--kubeconfig", &kc, "--request-timeout", "10s"];
        argv.extend_from_slice(args);
        let argv = crate::netns::exec_argv(self.ns.name(), &argv)?;
        match stdin {
            Some(s) => crate::proc::run_stdin(&argv, s.as_bytes(), Duration::from_secs(20)),
            None => crate::proc::run(&argv, Duration::from_secs(20)),
        }
    }

    /// `kubectl apply -f -` of `text` (file-datastore spelling; see [`as_crd`]).
    pub fn apply(&self, text: &str) -> Result<String> {
        self.kubectl(
            &["apply", "--validate=false", "-f", "-"],
            Some(&as_crd(text)),
        )
    }

    /// `kubectl delete --ignore-not-found -f -` of `text`.
    pub fn delete(&self, text: &str) -> Result<String> {
        self.kubectl(
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            Some(&as_crd(text)),
        )
    }

    /// The CRDs of `manifests/`, applied and served.
    pub fn install_crds(&self) -> Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
            .context("manifests/")?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                std::fs::read_to_string(p)
                    .is_ok_and(|t| t.contains("kind: CustomResourceDefinition"))
            })
            .collect();
        files.sort();
        ensure!(
            !files.is_empty(),
            "no CustomResourceDefinition in manifests/"
        );
        for f in files {
            self.kubectl(
                &["apply", "--validate=false", "-f", &f.to_string_lossy()],
                None,
            )?;
        }
        Ok(())
    }

    /// A request to the server's test controls: `drop-watches`, `compact`, `outage?seconds=N`.
    pub fn control(&self, what: &str) -> Result<String> {
        self.http("POST", &format!("/_test/{what}"))
    }

    /// One plain HTTP/1.1 request from inside the API's namespace; the body if the status is 2xx.
    pub fn http(&self, method: &str, path: &str) -> Result<String> {
        self.http_body(method, path, "application/json", "")
    }

    /// [`KubeApi::http`] with a body of `content_type` (e.g. `application/merge-patch+json` for
    /// a PATCH): one round trip, for measurements a kubectl start would swamp.
    pub fn http_body(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<String> {
        let addr = SocketAddr::from((API_V4, API_PORT));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {API_V4}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let reply = self.ns.in_ns(move || -> Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(req.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })??;
        let status = reply.split_whitespace().nth(1).unwrap_or_default();
        if !status.starts_with('2') {
            bail!(
                "{method} {path}: {}",
                reply.lines().next().unwrap_or_default()
            );
        }
        Ok(reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    }
}
