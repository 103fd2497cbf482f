//! A test cluster: node namespaces on one segment, each running the real `calico-node-rs` against
//! one shared file datastore, pods with IPs from the real IPAM, and optionally a BIRD ToR. Used by
//! the node end-to-end tests, the soak and the node benchmark (which find the binaries with
//! [`crate::bins`]). Addresses and ASes are the lab command's ([`crate::plan`]); the documents are
//! [`crate::datastore`]'s flow-style ones; its daemons and BIRD are owned [`Proc`]s, gone when the
//! cluster drops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::datastore;
use crate::kubeapi::KubeApi;
use crate::lab::{Lab, Netns, Segment};
use crate::peers::Bird;
use crate::plan::{node_v4, node_v6, LAN_PREFIX_V4, LAN_PREFIX_V6, TOR_AS, TOR_V4, TOR_V6};
use crate::pods;
use crate::proc::Proc;
use crate::wait::eventually;
use anyhow::{bail, ensure, Context, Result};
use calico_node::datastore::ClusterState;
use calico_node::ipam::Ipam;
use ipnet::IpNet;

pub use crate::bins::{ctl_bin, daemon_bin};

pub const CONVERGE: Duration = Duration::from_secs(40);

#[derive(Clone)]
pub struct PodRef {
    pub ns: Netns,
    pub name: String,
    pub node: String,
    pub v4: String,
    pub v6: String,
}

pub struct NodeRef {
    pub name: String,
    pub index: usize,
    pub ns: Netns,
    pub pods: Vec<PodRef>,
    pub daemon: Proc,
    /// When the current daemon process was started.
    pub spawned: Instant,
}

pub struct Cluster {
    pub nodes: Vec<NodeRef>,
    pub tor: Option<Bird>,
    /// Extra `KEY=VALUE` environment of daemons started from now on (e.g. a PATH with a slow
    /// `nft`, to widen the window between a pod's route and its policy).
    pub daemon_env: Vec<String>,
    dir: PathBuf,
    lan: Segment,
    /// With the Kubernetes datastore: the API server the daemons watch, and the text of each
    /// "file" as last applied to it (the lab still writes every document to `dir` too, as a record,
    /// but no daemon reads it).
    kube: Option<KubeApi>,
    applied: Mutex<BTreeMap<String, String>>,
    // Last: everything above lives in its namespaces.
    lab: Lab,
}

impl Cluster {
    pub fn new(tag: &str, nodes: usize, pods_per_node: usize, tor: bool) -> Result<Cluster> {
        Cluster::build(tag, nodes, pods_per_node, tor.then_some(0), false)
    }

    /// The same cluster on the Kubernetes datastore: the lab's API server ([`KubeApi`]) with the
    /// CRDs of `manifests/`, every document applied to it with `kubectl`, and the daemons started
    /// with `--datastore kubernetes`.
    pub fn new_kube(tag: &str, nodes: usize, pods_per_node: usize, tor: bool) -> Result<Cluster> {
        Cluster::build(tag, nodes, pods_per_node, tor.then_some(0), true)
    }

    /// The API server, on the Kubernetes datastore.
    pub fn kube(&self) -> Option<&KubeApi> {
        self.kube.as_ref()
    }

    /// A cluster with a BIRD ToR that announces `routes` /26 prefixes (from 100.64.0.0) to every
    /// node, for scale measurements.
    pub fn with_tor_routes(
        tag: &str,
        nodes: usize,
        pods_per_node: usize,
        routes: usize,
    ) -> Result<Cluster> {
        Cluster::build(tag, nodes, pods_per_node, Some(routes), false)
    }

    fn build(
        tag: &str,
        nodes: usize,
        pods_per_node: usize,
        tor_routes: Option<usize>,
        kube: bool,
    ) -> Result<Cluster> {
        let lab = Lab::new(tag)?;
        let lan = lab.segment("lan")?;
        let dir = lab.dir().join("datastore");
        std::fs::create_dir_all(&dir)?;
        let kube = if kube {
            let api = KubeApi::start(&lab, &lan)?;
            api.install_crds()?;
            // The daemons read BGP password Secrets in their own namespace.
            api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n")?;
            Some(api)
        } else {
            None
        };
        let mut c = Cluster {
            nodes: vec![],
            tor: None,
            daemon_env: vec![],
            kube,
            applied: Mutex::new(BTreeMap::new()),
            dir,
            lan,
            lab,
        };
        c.write("base.yaml", &datastore::cluster_base())?;
        if let Some(routes) = tor_routes {
            let ns = c.lab.netns("tor")?;
            let (a4, a6) = (
                format!("{TOR_V4}/{LAN_PREFIX_V4}"),
                format!("{TOR_V6}/{LAN_PREFIX_V6}"),
            );
            c.lan.attach(&ns, "eth0", &[&a4, &a6])?;
            let mut conf = format!(
                "router id {TOR_V4};
protocol device {{ }}
"
            );
            let export = if routes > 0 {
                let base = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0));
                conf += "protocol static scale { ipv4;
";
                for k in 0..routes as u32 {
                    conf += &format!(
                        "  route {}/26 blackhole;
",
                        std::net::Ipv4Addr::from(base + k * 64)
                    );
                }
                conf += "}
";
                "where source = RTS_STATIC"
            } else {
                "none"
            };
            for i in 1..=nodes {
                let a4 = node_v4(i);
                conf += &format!(
                    "protocol bgp n{i} {{ local {TOR_V4} as {TOR_AS}; neighbor {a4} as {}; connect retry time 1;
  ipv4 {{ import all; export {export}; }}; ipv6 {{ import all; export none; }}; }}\n",
                    crate::plan::NODE_AS
                );
            }
            c.tor = Some(Bird::start(&ns, &conf)?);
            c.write("tor.yaml", &datastore::cluster_tor_peer())?;
        }
        for i in 1..=nodes {
            c.add_node(&format!("n{i}"), pods_per_node)?;
        }
        Ok(c)
    }

    /// Wait until every daemon answers `/readiness` with 200; returns each one's time from spawn
    /// to ready.
    pub fn wait_ready(&self, limit: Duration) -> Result<Vec<Duration>> {
        let mut out = Vec::new();
        for n in &self.nodes {
            // A tight poll (20 ms), so the figure is the daemon's, not the poller's backoff.
            let deadline = Instant::now() + limit;
            let took = loop {
                let r = n.ns.in_ns(|| http_get("127.0.0.1:9099", "/readiness"))?;
                match r {
                    Ok(resp) if resp.starts_with("HTTP/1.1 200") => break n.spawned.elapsed(),
                    r if Instant::now() > deadline => {
                        bail!("{} not ready after {limit:?}: {r:?}", n.name)
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            out.push(took);
        }
        Ok(out)
    }

    /// Node `name`'s status API socket (its daemon serves `--grpc unix:` this path).
    pub fn grpc_socket(&self, name: &str) -> PathBuf {
        self.lab.dir().join(format!("{name}.sock"))
    }

    /// The CNI plugin's socket of node `name`'s daemon (beside its status socket).
    pub fn cni_socket(&self, name: &str) -> PathBuf {
        self.lab.dir().join(format!("{name}.cni.sock"))
    }

    /// A plain host on the segment: namespace `name` with `addrs` (CIDRs) on its `eth0` and no
    /// other route (it reaches the nodes, not the pods: an "outside" address).
    pub fn add_host(&self, name: &str, addrs: &[&str]) -> Result<Netns> {
        let ns = self.lab.netns(name)?;
        self.lan.attach(&ns, "eth0", addrs)?;
        Ok(ns)
    }

    /// An extra BIRD (a peer the nodes reach on the segment) in a namespace `name` of its own, with
    /// `addrs` (CIDRs) on its `eth0`; `config` needs a `router id`.
    pub fn add_bird(&self, name: &str, addrs: &[&str], config: &str) -> Result<Bird> {
        let ns = self.lab.netns(name)?;
        self.lan.attach(&ns, "eth0", addrs)?;
        Bird::start(&ns, config)
    }

    pub fn write(&self, file: &str, text: &str) -> Result<()> {
        // Write-then-rename, as an editor or kubectl-style tool would: never a half file.
        datastore::write_atomic(&self.dir, file, text)?;
        let Some(api) = &self.kube else {
            return Ok(());
        };
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let gone = gone_objects(applied.get(file).map(String::as_str), Some(text));
        api.apply(text)
            .with_context(|| format!("kubectl apply of {file}"))?;
        if !gone.is_empty() {
            api.delete(&gone)?;
        }
        applied.insert(file.to_string(), text.to_string());
        Ok(())
    }

    /// The lab the cluster lives in (to add namespaces of a test's own).
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The shared file datastore directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every IPAM block file (name -> content): what must not change while documents are broken.
    pub fn block_files(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let mut out = std::collections::BTreeMap::new();
        if let Some(api) = &self.kube {
            let list: serde_json::Value =
                serde_json::from_str(&api.kubectl(&["get", "ipamblocks", "-o", "json"], None)?)?;
            for b in list["items"].as_array().into_iter().flatten() {
                out.insert(
                    b["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    format!("{} {}", b["metadata"]["resourceVersion"], b["spec"]),
                );
            }
            return Ok(out);
        }
        for e in std::fs::read_dir(self.dir.join("ipam/blocks"))? {
            let e = e?;
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            );
        }
        Ok(out)
    }

    /// `GET path` on node `name`'s health listener (which serves /metrics too).
    pub fn http(&self, name: &str, path: &str) -> Result<String> {
        let n = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .context("no such node")?;
        n.ns.in_ns(|| http_get("127.0.0.1:9099", path))?
    }

    /// `calicoctl-rs node WHAT -o json` against node `name`'s daemon.
    pub fn ctl_json(&self, name: &str, what: &str) -> Result<serde_json::Value> {
        let sock = format!("unix:{}", self.grpc_socket(name).display());
        let ctl = ctl_bin()?;
        let out = crate::proc::run(
            &[
                &ctl.to_string_lossy(),
                "node",
                what,
                "--grpc",
                &sock,
                "-o",
                "json",
            ],
            Duration::from_secs(10),
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.dir.join(file)).with_context(|| format!("removing {file}"))?;
        if let Some(api) = &self.kube {
            let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            let gone = gone_objects(applied.remove(file).as_deref(), None);
            if !gone.is_empty() {
                api.delete(&gone)?;
            }
        }
        Ok(())
    }

    fn state(&self) -> Result<ClusterState> {
        Ok(calico_node::datastore::file::scan_dir(&self.dir)?.state)
    }

    /// Add Node `name` to the datastore, its pods (IPs from IPAM, veths as a CNI plugin makes
    /// them), and start its daemon.
    pub fn add_node(&mut self, name: &str, pods: usize) -> Result<()> {
        let index = name
            .trim_start_matches('n')
            .parse::<usize>()
            .context("node names are nN")?;
        let (a4, a6) = (node_v4(index), node_v6(index));
        let ns = self.lab.netns(name)?;
        self.lan.attach(
            &ns,
            "eth0",
            &[
                &format!("{a4}/{LAN_PREFIX_V4}"),
                &format!("{a6}/{LAN_PREFIX_V6}"),
            ],
        )?;
        // felix answers pods' ARP for 169.254.1.1 by proxy ARP, which needs a non-cali route there.
        ns.ip(&["route", "add", "default", "via", &TOR_V4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &TOR_V6.to_string()])?;
        self.write(
            &format!("node-{name}.yaml"),
            &datastore::cluster_node(name, a4, a6),
        )?;
        let state = self.state()?;
        let mut refs = Vec::new();
        for j in 1..=pods {
            let short = format!("p{j}");
            let pod_name = format!("{name}-{short}");
            let ip = self.allocate(&state, name, &format!("default/{pod_name}"))?;
            let (v4, v6) = (ip.v4.to_string(), ip.v6.to_string());
            let p = pods::add_pod(&self.lab, &ns, &short, &v4, &v6)?;
            let r = PodRef {
                ns: p.ns,
                name: pod_name,
                node: name.to_string(),
                v4,
                v6,
            };
            self.write_pod(&r, &[])?;
            refs.push(r);
        }
        let spawned = Instant::now();
        let daemon = self.spawn_daemon(&ns, name)?;
        self.nodes.push(NodeRef {
            name: name.to_string(),
            index,
            ns,
            pods: refs,
            daemon,
            spawned,
        });
        Ok(())
    }

    /// A new pod `NODE-SHORT` on running node `node`, as the CNI plugin and the API server
    /// would make it: [`Cluster::reserve_pod`] then [`Cluster::plumb_pod`].
    pub fn add_pod(&mut self, node: &str, short: &str, labels: &[(&str, &str)]) -> Result<PodRef> {
        let r = self.reserve_pod(node, short)?;
        self.plumb_pod(&r, labels)?;
        Ok(r)
    }

    /// The first half of a new pod: its addresses from IPAM and its namespace, nothing the
    /// daemon can see yet.
    pub fn reserve_pod(&self, node: &str, short: &str) -> Result<PodRef> {
        let state = self.state()?;
        let n = self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .context("no such node")?;
        let pod_name = format!("{node}-{short}");
        let ip = self.allocate(&state, node, &format!("default/{pod_name}"))?;
        Ok(PodRef {
            ns: self.lab.netns(&format!("{}.{short}", n.ns.short()))?,
            name: pod_name,
            node: node.to_string(),
            v4: ip.v4.to_string(),
            v6: ip.v6.to_string(),
        })
    }

    /// The second half: its veth, then the Pod (with `labels`) in the datastore. Returns at once:
    /// whether it is reachable yet is the daemon's business.
    pub fn plumb_pod(&mut self, r: &PodRef, labels: &[(&str, &str)]) -> Result<()> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == r.node)
            .context("no such node")?;
        // The veth first, as the CNI plugin makes it before the pod's addresses are recorded:
        // the daemon then learns of the pod (its route and its policy) in one step.
        let iface = felix::workload_iface_name("default", &r.name);
        pods::make_veth(&self.nodes[i].ns, &iface, &r.ns)?;
        pods::configure_pod_side(&r.ns, &r.v4, &r.v6)?;
        self.write_pod(r, labels)?;
        self.nodes[i].pods.push(r.clone());
        Ok(())
    }

    fn write_pod(&self, p: &PodRef, labels: &[(&str, &str)]) -> Result<()> {
        let text = match &self.kube {
            None => datastore::cluster_pod(&p.name, &p.node, labels, &p.v4, &p.v6),
            Some(_) => datastore::cluster_pod_kube(&p.name, &p.node, labels, &p.v4, &p.v6),
        };
        self.write(&format!("pod-{}.yaml", p.name), &text)
    }

    pub fn label_pod(&self, p: &PodRef, labels: &[(&str, &str)]) -> Result<()> {
        self.write_pod(p, labels)
    }

    fn spawn_daemon(&self, ns: &Netns, name: &str) -> Result<Proc> {
        let bin = daemon_bin()?;
        let ds = match &self.kube {
            None => format!("file:{}", self.dir.display()),
            Some(_) => "kubernetes".to_string(),
        };
        let sock = format!("unix:{}", self.grpc_socket(name).display());
        let log = self.lab.dir().join(format!("{name}-daemon.log"));
        // The daemons' log level: CALICO_RS_LOG if the caller set it (e.g. debug, to see a
        // benchmark's stages), else info.
        let level = std::env::var("CALICO_RS_LOG").unwrap_or_else(|_| "info".into());
        let mut argv: Vec<String> = vec!["env".into(), format!("CALICO_RS_LOG={level}")];
        if let Some(api) = &self.kube {
            let kc = api.kubeconfig_path(crate::kubeapi::DAEMON_TOKEN);
            argv.push(format!("KUBECONFIG={}", kc.display()));
            argv.push("POD_NAMESPACE=kube-system".into());
        }
        argv.extend(self.daemon_env.iter().cloned());
        let bin = bin.to_string_lossy().into_owned();
        argv.push(bin);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        ns.spawn_log(
            &[
                &argv[..],
                &[
                    "run",
                    "--nodename",
                    name,
                    "--datastore",
                    &ds,
                    "--grpc",
                    &sock,
                    "--metrics-port",
                    "0",
                    // Short, so the join/leave test sees the release; long enough to be observed.
                    "--node-release-grace",
                    "3",
                ],
            ]
            .concat(),
            &log,
        )
    }

    /// Stop node `name`'s daemon and delete its Node and pods from the datastore.
    pub fn remove_node(&mut self, name: &str) -> Result<()> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .context("no such node")?;
        let mut n = self.nodes.remove(i);
        n.daemon.terminate(Duration::from_secs(5))?;
        for p in &n.pods {
            self.remove(&format!("pod-{}.yaml", p.name))?;
        }
        self.remove(&format!("node-{name}.yaml"))
    }

    /// SIGTERM node `i`'s daemon and start it again.
    pub fn restart_daemon(&mut self, i: usize) -> Result<()> {
        self.nodes[i].daemon.terminate(Duration::from_secs(5))?;
        self.start_daemon(i)
    }

    /// SIGKILL node `i`'s daemon (a crash: no NOTIFICATION, nothing cleaned up) and reap it;
    /// [`Cluster::start_daemon`] starts it again.
    pub fn kill_daemon(&mut self, i: usize) -> Result<()> {
        self.nodes[i].daemon.kill()
    }

    /// Start node `i`'s daemon again (after [`Cluster::kill_daemon`] or an exit), appending to
    /// the same log.
    pub fn start_daemon(&mut self, i: usize) -> Result<()> {
        let (ns, name) = (self.nodes[i].ns.clone(), self.nodes[i].name.clone());
        self.nodes[i].spawned = Instant::now();
        self.nodes[i].daemon = self.spawn_daemon(&ns, &name)?;
        Ok(())
    }

    /// Delete pod `name` as kubelet does: the CNI DEL (its veth, then its addresses back to
    /// IPAM), then the Pod from the datastore, then its namespace.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let (i, j) = self
            .nodes
            .iter()
            .enumerate()
            .find_map(|(i, n)| n.pods.iter().position(|p| p.name == name).map(|j| (i, j)))
            .with_context(|| format!("no pod {name}"))?;
        let p = self.nodes[i].pods.remove(j);
        let iface = felix::workload_iface_name("default", &p.name);
        self.nodes[i].ns.ip(&["link", "del", &iface])?;
        let handle = format!("default/{}", p.name);
        match &self.kube {
            None => {
                Ipam::new(&self.dir)?.release(&handle)?;
            }
            Some(api) => {
                api.with_ipam(|i| i.release(&handle))??;
            }
        }
        self.remove(&format!("pod-{}.yaml", p.name))?;
        self.lab.remove_netns(&p.ns);
        Ok(())
    }

    pub fn blocks_of(&self, node: &str) -> Result<Vec<IpNet>> {
        match &self.kube {
            None => Ok(Ipam::new(&self.dir)?.blocks_for(node)?),
            Some(api) => Ok(api.with_ipam(|i| i.blocks_for(node))??),
        }
    }

    /// The ToR BIRD's `show protocols` line of each node session (name, proto, table, state,
    /// since), by name: a flap changes it.
    /// What the daemons and the ToR's BIRD logged about BGP, for a failure message.
    pub fn bgp_story(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out += &format!("--- {} daemon (BGP lines):\n", n.name);
            for l in n.daemon.log().lines().filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("peer")
                    || l.contains("speaker")
                    || l.contains("bgp")
                    || l.contains("session")
            }) {
                out += l;
                out.push('\n');
            }
        }
        if let Some(tor) = &self.tor {
            out += "--- BIRD log:\n";
            out += &tor.log();
        }
        out
    }

    /// The ToR's BGP sessions with the nodes, by protocol name (BIRD's `show protocols`).
    pub fn tor_sessions(&self) -> Result<BTreeMap<String, TorSession>> {
        let tor = self.tor.as_ref().context("the cluster has no ToR")?;
        let out = tor.birdc("show protocols")?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with('n'))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (
                    w.first().copied().unwrap_or_default().to_string(),
                    TorSession(w.iter().take(5).copied().collect::<Vec<_>>().join(" ")),
                )
            })
            .collect())
    }

    /// Whether IPAM holds no address for `handle` any more.
    pub fn leaked_handle_gone(&self, handle: &str) -> Result<bool> {
        let ips = match &self.kube {
            None => Ipam::new(&self.dir)?.addresses_of(handle)?,
            Some(api) => api.with_ipam(|i| i.addresses_of(handle))??,
        };
        Ok(ips.is_empty())
    }

    /// A pod's addresses from IPAM (the file store in `dir`, or the API's IPAMBlocks).
    fn allocate(
        &self,
        state: &ClusterState,
        node: &str,
        handle: &str,
    ) -> Result<datastore::PodIps> {
        match &self.kube {
            None => datastore::allocate(&self.dir, state, node, handle),
            Some(api) => api.with_ipam(|i| datastore::allocate_with(i, state, node, handle))?,
        }
    }

    /// Routes carrying our protocol in node `n`'s namespace.
    pub fn our_routes(&self, n: &NodeRef) -> Result<BTreeSet<String>> {
        pods::our_prefixes(&n.ns)
    }

    /// What node `name` should hold: its pods, its blocks, every other live node's blocks.
    pub fn expected_routes(&self, name: &str) -> Result<BTreeSet<String>> {
        let mut want = BTreeSet::new();
        for n in &self.nodes {
            want.extend(self.blocks_of(&n.name)?.iter().map(|b| b.to_string()));
            if n.name == name {
                for p in &n.pods {
                    want.insert(format!("{}/32", p.v4));
                    want.insert(format!("{}/128", p.v6));
                }
            }
        }
        Ok(want)
    }

    pub fn wait_converged(&mut self, limit: Duration) -> Result<()> {
        for n in &mut self.nodes {
            if let Some(st) = n.daemon.try_status() {
                bail!("daemon of {} exited ({st}):\n{}", n.name, n.daemon.log());
            }
        }
        for n in &self.nodes {
            eventually(limit, || {
                let have = self.our_routes(n)?;
                let want = self.expected_routes(&n.name)?;
                ensure!(
                    have == want,
                    "{}: routes\n have {have:?}\n want {want:?}",
                    n.name
                );
                Ok(())
            })
            .with_context(|| format!("daemon log of {}:\n{}", n.name, tail(&n.daemon.log(), 30)))?;
        }
        Ok(())
    }

    /// Every pod pings every other pod, IPv4 and IPv6 (in parallel).
    pub fn expect_full_mesh_reachability(&self) -> Result<()> {
        let pods: Vec<&PodRef> = self.nodes.iter().flat_map(|n| n.pods.iter()).collect();
        let failures: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .flat_map(|a| pods.iter().map(move |b| (*a, *b)))
                .filter(|(a, b)| a.name != b.name)
                .flat_map(|(a, b)| [(a, b.v4.clone()), (a, b.v6.clone())])
                .map(|(a, dst)| {
                    s.spawn(move || {
                        eventually(Duration::from_secs(5), || ping(&a.ns, &dst))
                            .err()
                            .map(|e| format!("{} -> {dst}: {e}", a.name))
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().ok().flatten())
                .collect()
        });
        ensure!(
            failures.is_empty(),
            "unreachable pod pairs:\n{}",
            failures.join("\n")
        );
        Ok(())
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn ping(from: &Netns, to: &str) -> Result<()> {
    from.run_timeout(&["ping", "-n", "-c1", "-W1", to], Duration::from_secs(5))
        .map(|_| ())
}

/// Wait for a process to exit on its own and return its log.
pub fn wait_exit(mut p: Proc, limit: Duration) -> Result<String> {
    let t = std::time::Instant::now();
    while p.try_status().is_none() {
        if t.elapsed() > limit {
            bail!("{:?} still running after {limit:?}", p.argv());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(p.log())
}

/// `N packets transmitted, M received` from ping's summary.
pub fn ping_summary(out: &str) -> Result<(u64, u64)> {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .context("no ping summary")?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [sent, received, ..] => Ok((*sent, *received)),
        _ => bail!("cannot read {line:?}"),
    }
}

/// A minimal HTTP/1.1 GET (one request, connection closed): the first line and body.
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // One write: the server answers after its first read and closes.
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The objects of `before` that `after` no longer has, as minimal documents for
/// `kubectl delete -f -`.
fn gone_objects(before: Option<&str>, after: Option<&str>) -> String {
    let ids = |text: Option<&str>| -> BTreeSet<(String, String, String)> {
        let Some(text) = text else {
            return BTreeSet::new();
        };
        calico_node::datastore::parse::parse_yaml("lab", text)
            .resources
            .iter()
            .map(|(_, r)| {
                let api_version = match r {
                    calico_node::datastore::Resource::NetworkPolicy(_) => "networking.k8s.io/v1",
                    calico_node::datastore::Resource::BgpConfiguration(_)
                    | calico_node::datastore::Resource::BgpPeer(_)
                    | calico_node::datastore::Resource::IpPool(_) => "projectcalico.org/v3",
                    _ => "v1",
                };
                let m = r.metadata();
                let meta = match &m.namespace {
                    Some(ns) => format!("{{name: {}, namespace: {ns}}}", m.name),
                    None => format!("{{name: {}}}", m.name),
                };
                (api_version.to_string(), r.kind().to_string(), meta)
            })
            .collect()
    };
    let after = ids(after);
    ids(before)
        .difference(&after)
        .map(|(v, k, m)| format!("apiVersion: {v}\nkind: {k}\nmetadata: {m}\n---\n"))
        .collect()
}

/// One line of BIRD's `show protocols` (name, protocol, table, state, since). Two are equal when
/// all but "since" match and "since" is within a second: BIRD prints it with milliseconds,
/// computed from its monotonic clock and the current wall-clock offset, so the same unchanged
/// session reads a millisecond or two apart from one call to the next. A real flap moves it by
/// the session's re-establishment time, seconds at least.
#[derive(Clone)]
pub struct TorSession(pub String);

impl TorSession {
    /// ("all but since", since as seconds of the day if it is a time of day).
    fn parts(&self) -> (String, Option<f64>) {
        let w: Vec<&str> = self.0.split_whitespace().collect();
        let since = w.get(4).and_then(|t| {
            let mut f = t.split(':');
            let (h, m, s) = (f.next()?, f.next()?, f.next()?);
            Some(
                h.parse::<f64>().ok()? * 3600.0
                    + m.parse::<f64>().ok()? * 60.0
                    + s.parse::<f64>().ok()?,
            )
        });
        let head = match since {
            Some(_) => w.iter().take(4).copied().collect::<Vec<_>>().join(" "),
            None => self.0.clone(),
        };
        (head, since)
    }
}

impl PartialEq for TorSession {
    fn eq(&self, other: &TorSession) -> bool {
        let ((a, sa), (b, sb)) = (self.parts(), other.parts());
        a == b
            && match (sa, sb) {
                (Some(x), Some(y)) => (x - y).abs() < 1.0,
                (None, None) => true,
                _ => false,
            }
    }
}

impl std::fmt::Debug for TorSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tor_session_tests {
    use super::TorSession;

    #[test]
    fn since_within_a_second_is_the_same_session() {
        let s = |t: &str| TorSession(t.to_string());
        assert_eq!(
            s("n1 BGP --- up 03:45:27.458"),
            s("n1 BGP --- up 03:45:27.459")
        );
        assert_eq!(
            s("n1 BGP --- up 03:45:27.999"),
            s("n1 BGP --- up 03:45:28.001")
        );
        assert_ne!(
            s("n1 BGP --- up 03:45:27.458"),
            s("n1 BGP --- up 03:45:31.100")
        );
        assert_ne!(
            s("n1 BGP --- up 03:45:27.458"),
            s("n1 BGP --- start 03:45:27.458")
        );
        assert_eq!(s("n1 BGP --- up 2026-12-01"), s("n1 BGP --- up 2026-12-01"));
    }
}
