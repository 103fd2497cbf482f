//! `lab up --datastore kubernetes`: the lab's cluster held by a Kubernetes API instead of files.
//!
//! ```text
//!   PREFIXapi  10.200.0.250:6443  kube-test-server (detached; state in DIR/kubeapi/state,
//!                                 every request in DIR/kubeapi/requests.jsonl)
//!   up:   CRDs of manifests/ -> Namespaces kube-system, default -> BGPConfiguration, BGPPeers,
//!         IPPools, Nodes (kubectl apply) -> pod addresses from IPAM in IPAMBlocks/BlockAffinities
//!         (as a CNI plugin takes them) -> Pods with `cni.projectcalico.org/podIPs` (kubectl)
//!   the daemons: KUBECONFIG=DIR/kubeapi/kubeconfig-calico-node-rs calico-node-rs run
//!         --datastore kubernetes
//! ```
//! The server is the project's test API server (`tests/kubeapi/`, never shipped): no
//! kube-apiserver can be installed on these machines. `kubectl` is the real client and talks to
//! it from inside `PREFIXapi`; the lab's own IPAM client does too ([`LabIpam`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use calico_node::ipam::kdd::KddIpam;
use ipnet::IpNet;

use super::record::{Paths, Record};
use crate::datastore;
use crate::kubeapi::{as_crd, kubeconfig, ADMIN_TOKEN, API_PORT, API_V4, DAEMON_TOKEN, SERVER_BIN};
use crate::plan::Plan;
use crate::{netns, proc};

/// The CRDs of `manifests/`, built into the lab binary so it needs no checkout at run time.
pub const CRDS: [(&str, &str); 6] = [
    (
        "10-crd-bgpconfigurations.yaml",
        include_str!("../../../manifests/10-crd-bgpconfigurations.yaml"),
    ),
    (
        "10-crd-bgppeers.yaml",
        include_str!("../../../manifests/10-crd-bgppeers.yaml"),
    ),
    (
        "10-crd-blockaffinities.yaml",
        include_str!("../../../manifests/10-crd-blockaffinities.yaml"),
    ),
    (
        "10-crd-ipamblocks.yaml",
        include_str!("../../../manifests/10-crd-ipamblocks.yaml"),
    ),
    (
        "10-crd-ipamhandles.yaml",
        include_str!("../../../manifests/10-crd-ipamhandles.yaml"),
    ),
    (
        "10-crd-ippools.yaml",
        include_str!("../../../manifests/10-crd-ippools.yaml"),
    ),
];

/// The namespace the daemons run in (they read BGP password Secrets there).
const DAEMON_NAMESPACE: &str = "kube-system";

/// `kube-test-server` in the directory of `node_bin` (`cargo build --release --workspace --bins`
/// puts them together).
pub fn server_next_to(node_bin: &Path) -> Option<PathBuf> {
    let p = node_bin.parent()?.join(SERVER_BIN);
    p.is_file().then_some(p)
}

/// `DIR/kubeapi/kubeconfig-TOKEN`.
pub fn kubeconfig_path(paths: &Paths, token: &str) -> PathBuf {
    paths.kubeapi.join(format!("kubeconfig-{token}"))
}

/// The environment a daemon needs to reach the API: `KUBECONFIG=…`, `POD_NAMESPACE=kube-system`.
pub fn daemon_env(paths: &Paths) -> [String; 2] {
    [
        format!(
            "KUBECONFIG={}",
            kubeconfig_path(paths, DAEMON_TOKEN).display()
        ),
        format!("POD_NAMESPACE={DAEMON_NAMESPACE}"),
    ]
}

/// How a user reaches the lab's API with kubectl (the server is reachable only from the lab's
/// namespaces).
pub fn hint(plan: &Plan, paths: &Paths) -> String {
    format!(
        "Kubernetes API http://{API_V4}:{API_PORT} in {ns}; kubectl: `ip netns exec {ns} kubectl \
         --kubeconfig {} get pods,networkpolicies,ipamblocks -A`",
        kubeconfig_path(paths, ADMIN_TOKEN).display(),
        ns = plan.api_ns(),
    )
}

/// Makes `PREFIXapi`, starts the server there (detached, recorded in `rec`) and waits until it
/// answers.
pub fn start(plan: &Plan, paths: &Paths, rec: &mut Record, server_bin: &Path) -> Result<()> {
    super::net::api(plan, &mut rec.namespaces)?;
    rec.save(paths)?;
    std::fs::create_dir_all(&paths.kubeapi)
        .with_context(|| format!("creating {}", paths.kubeapi.display()))?;
    let url = format!("http://{API_V4}:{API_PORT}");
    for token in [DAEMON_TOKEN, ADMIN_TOKEN] {
        std::fs::write(kubeconfig_path(paths, token), kubeconfig(&url, token))?;
    }
    let listen = format!("{API_V4}:{API_PORT}");
    let state = paths.kubeapi.join("state");
    let requests = paths.kubeapi.join("requests.jsonl");
    let argv = [
        &*server_bin.to_string_lossy(),
        "--listen",
        &listen,
        "--request-log",
        &requests.to_string_lossy(),
        "--state",
        &state.to_string_lossy(),
    ];
    let log = paths.log("kubeapi");
    rec.api_proc = Some(netns::spawn_detached(&plan.api_ns(), &argv, &log)?);
    rec.save(paths)?;
    let t = Instant::now();
    loop {
        match get(plan, "/readyz") {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() > Duration::from_secs(10) => {
                bail!(
                    "the API server did not answer within 10 s ({e:#}); log {}:\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A plain `GET path` to the server, from inside `PREFIXapi`: the body if the status is 2xx.
fn get(plan: &Plan, path: &str) -> Result<String> {
    let addr = SocketAddr::from((API_V4, API_PORT));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {API_V4}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    let reply = netns::in_named_ns(&plan.api_ns(), move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let status = reply.split_whitespace().nth(1).unwrap_or_default();
    ensure!(
        status.starts_with('2'),
        "GET {path}: {}",
        reply.lines().next().unwrap_or_default()
    );
    Ok(reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// `kubectl ARGS` as the lab's admin, inside `PREFIXapi`, `stdin` for `-f -`.
pub fn kubectl(plan: &Plan, paths: &Paths, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let kc = kubeconfig_path(paths, ADMIN_TOKEN);
    let kc = kc.to_string_lossy();
    let mut argv = vec!["kubectl", "--kubeconfig", &kc, "--request-timeout", "10s"];
    argv.extend_from_slice(args);
    let ns = plan.api_ns();
    let argv = netns::exec_argv(&ns, &argv)?;
    match stdin {
        Some(s) => proc::run_stdin(&argv, s.as_bytes(), Duration::from_secs(30)),
        None => proc::run(&argv, Duration::from_secs(30)),
    }
}

/// `kubectl apply -f -` of `text` (the test server serves no OpenAPI, hence `--validate=false`).
fn apply(plan: &Plan, paths: &Paths, what: &str, text: &str) -> Result<()> {
    kubectl(
        plan,
        paths,
        &["apply", "--validate=false", "-f", "-"],
        Some(text),
    )
    .with_context(|| format!("kubectl apply of {what}"))
    .map(drop)
}

/// Puts the lab's cluster into the API: the CRDs, the Namespaces, the Calico resources and
/// Nodes, and the Pods without addresses (the CNI plugin gets them from the daemons, which write
/// them on the Pods).
pub fn populate(plan: &Plan, paths: &Paths, tor: bool) -> Result<()> {
    for (name, crd) in CRDS {
        apply(plan, paths, name, crd)?;
    }
    wait_served(plan)?;
    apply(
        plan,
        paths,
        "Namespace kube-system",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {DAEMON_NAMESPACE}\n"),
    )?;
    let docs = datastore::documents(plan, tor);
    datastore::state_of(&docs)?;
    for (name, text) in &docs {
        apply(plan, paths, name, &as_crd(text))?;
    }
    if plan.pods().next().is_some() {
        apply(
            plan,
            paths,
            "pods",
            &datastore::pods_yaml_kube_unplumbed(plan),
        )?;
    }
    Ok(())
}

/// Waits until the Calico group is in discovery (a CRD is served once it is established).
fn wait_served(plan: &Plan) -> Result<()> {
    let t = Instant::now();
    loop {
        let r = get(plan, "/apis/crd.projectcalico.org/v1");
        match r {
            Ok(body) if CRDS.iter().all(|(f, _)| body.contains(plural(f))) => return Ok(()),
            _ if t.elapsed() > Duration::from_secs(10) => {
                bail!("the Calico CRDs are not served after 10 s: {r:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `10-crd-ippools.yaml` -> `ippools`.
fn plural(file: &str) -> &str {
    file.trim_start_matches("10-crd-").trim_end_matches(".yaml")
}

/// The lab's IPAM client on the API (IPAMBlocks, BlockAffinities, IPAMHandles), on a runtime
/// whose threads live in `PREFIXapi`, so its sockets reach the server.
pub struct LabIpam {
    ns: String,
    _rt: tokio::runtime::Runtime,
    ipam: KddIpam,
}

impl LabIpam {
    pub fn open(plan: &Plan, paths: &Paths) -> Result<LabIpam> {
        let kc = kubeconfig_path(paths, ADMIN_TOKEN);
        let ns = plan.api_ns();
        let (rt, ipam) = netns::in_named_ns(&ns, move || -> Result<_> {
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
        })??;
        Ok(LabIpam { ns, _rt: rt, ipam })
    }

    /// Runs `f` with the client, on a thread inside `PREFIXapi`.
    pub fn with<T: Send>(&self, f: impl FnOnce(&KddIpam) -> T + Send) -> Result<T> {
        netns::in_named_ns(&self.ns, || f(&self.ipam))
    }

    /// Block -> affine node, as [`calico_node::ipam::Ipam::affinities`] gives it for files.
    pub fn affinities(&self) -> Result<BTreeMap<IpNet, Option<String>>> {
        Ok(self.with(|i| i.affinities())??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_of_the_manifests_is_built_in() {
        let dir = crate::kubeapi::manifests_dir();
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("kind: CustomResourceDefinition"))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let built: Vec<&str> = CRDS.iter().map(|(f, _)| *f).collect();
        assert_eq!(on_disk, built);
        for (f, text) in CRDS {
            assert!(
                text.contains(&format!("plural: {}", plural(f))),
                "{f} names another plural"
            );
        }
    }
}
