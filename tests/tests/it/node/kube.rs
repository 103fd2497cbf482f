//! The Kubernetes datastore end to end (issue: the Kubernetes datastore): the lab's API server
//! (`kube-test-server` in its own namespace), objects put in with the real `kubectl`, real
//! daemons on `--datastore kubernetes`, a BIRD ToR and real packets.
//!
//! ```text
//!   segment 10.200.0.0/24
//!   api .250:6443 -- n1 .11 -- n2 .12 -- tor .1 (BIRD AS 65000)
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use calico_lab::cluster::{self, Cluster, CONVERGE};
use calico_lab::wait::{consistently, eventually};

/// Everything the daemons programmed: routes and nft tables per node.
fn kernel(c: &Cluster) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for n in &c.nodes {
        let routes = c.our_routes(n)?;
        let nft = n.ns.run(&["nft", "list", "table", "inet", "calico-rs"])?;
        out.insert(n.name.clone(), format!("{routes:?}\n{nft}"));
    }
    Ok(out)
}

fn readiness(c: &Cluster, node: &str) -> String {
    c.http(node, "/readiness").unwrap_or_else(|e| e.to_string())
}

#[test]
fn the_lab_on_kubernetes_reaches_as_on_files_and_kubectl_policies_are_enforced() -> Result<()> {
    let mut c = Cluster::new_kube("kubelab", 2, 2, true)?;
    c.wait_converged(CONVERGE)?;
    c.expect_full_mesh_reachability()?;
    let api = c.kube().context("kube")?;
    let web = c.nodes[0].pods[0].clone();
    let client = c.nodes[1].pods[0].clone();
    let other = c.nodes[1].pods[1].clone();
    api.kubectl(&["label", "pod", &web.name, "app=web"], None)?;
    api.kubectl(&["label", "pod", &client.name, "role=client"], None)?;
    std::thread::sleep(Duration::from_millis(1500));
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, \
        namespace: default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - \
        from: [{podSelector: {matchLabels: {role: client}}}]\n";
    let t0 = Instant::now();
    api.apply(policy)?;
    let took = first_unanswered(&other, &web.v4, t0)?;
    ensure!(
        took < Duration::from_secs(1),
        "kubectl apply enforced after {took:?}"
    );
    cluster::ping(&client.ns, &web.v4)?;
    // `kubectl label` moves a pod into the policy's sources within a second...
    let t0 = Instant::now();
    api.kubectl(&["label", "pod", &other.name, "role=client"], None)?;
    let took = first_answered(&other, &web.v4, t0)?;
    ensure!(
        took < Duration::from_secs(1),
        "kubectl label allowed after {took:?}"
    );
    // ... and out of it.
    let t0 = Instant::now();
    api.kubectl(&["label", "pod", &other.name, "role-"], None)?;
    let took = first_unanswered(&other, &web.v4, t0)?;
    ensure!(
        took < Duration::from_secs(1),
        "label removal enforced after {took:?}"
    );
    Ok(())
}

/// Pings `to` from `from` back to back; when the first answered one was sent, after `t0`.
fn first_answered(from: &cluster::PodRef, to: &str, t0: Instant) -> Result<Duration> {
    loop {
        let sent = t0.elapsed();
        if from
            .ns
            .run_timeout(&["ping", "-n", "-c1", "-W0.2", to], Duration::from_secs(3))
            .is_ok()
        {
            return Ok(sent);
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(5),
            "{to} still silent after 5 s"
        );
    }
}

/// Pings `to` from `from` back to back; when the first unanswered one was sent, after `t0`.
fn first_unanswered(from: &cluster::PodRef, to: &str, t0: Instant) -> Result<Duration> {
    loop {
        let sent = t0.elapsed();
        let answered = from
            .ns
            .run_timeout(&["ping", "-n", "-c1", "-W0.2", to], Duration::from_secs(3))
            .is_ok();
        if !answered {
            return Ok(sent);
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(5),
            "{to} still answers after 5 s"
        );
    }
}

#[test]
fn losing_the_api_server_changes_nothing_and_relists_change_nothing() -> Result<()> {
    let mut c = Cluster::new_kube("kubeout", 2, 1, true)?;
    c.wait_converged(CONVERGE)?;
    let (a, b) = (c.nodes[0].pods[0].clone(), c.nodes[1].pods[0].clone());
    eventually(Duration::from_secs(10), || {
        ensure!(
            readiness(&c, "n1").starts_with("HTTP/1.1 200"),
            "{}",
            readiness(&c, "n1")
        );
        Ok(())
    })?;
    let sessions = c.tor_sessions()?;
    ensure!(sessions.len() == 2, "{sessions:?}");
    let before = kernel(&c)?;
    let api = c.kube().context("kube")?;
    // 60 s as the issue asks; CRS_KUBE_OUTAGE_SECS shortens it when debugging.
    let outage = Duration::from_secs(
        std::env::var("CRS_KUBE_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    api.control(&format!("outage?seconds={}", outage.as_secs()))?;
    let t0 = Instant::now();
    eventually(Duration::from_secs(10), || {
        let r = readiness(&c, "n1");
        ensure!(r.contains("not ready") && r.contains("Kubernetes"), "{r}");
        Ok(())
    })?;
    // While it is gone: nothing in the kernel or in BGP moves, pods keep talking.
    consistently(
        outage.saturating_sub(t0.elapsed() + Duration::from_secs(3)),
        || {
            ensure!(
                kernel(&c)? == before,
                "the kernel changed during the outage"
            );
            let now = c.tor_sessions()?;
            ensure!(
                now == sessions,
                "a BGP session flapped during the outage: before {sessions:?}, now {now:?}\n{}",
                c.bgp_story()
            );
            cluster::ping(&a.ns, &b.v4)?;
            ensure!(
                !readiness(&c, "n2").starts_with("HTTP/1.1 200"),
                "n2 ready during the outage"
            );
            Ok(())
        },
    )?;
    // Back: ready again, and still nothing changed.
    eventually(Duration::from_secs(30), || {
        ensure!(
            readiness(&c, "n1").starts_with("HTTP/1.1 200"),
            "{}",
            readiness(&c, "n1")
        );
        ensure!(
            readiness(&c, "n2").starts_with("HTTP/1.1 200"),
            "{}",
            readiness(&c, "n2")
        );
        Ok(())
    })?;
    ensure!(kernel(&c)? == before, "the kernel changed after the outage");
    ensure!(
        c.tor_sessions()? == sessions,
        "a BGP session flapped after the outage"
    );
    // Every watch dropped, then history compacted (410 Gone): the daemons relist and change
    // nothing.
    for what in ["drop-watches", "compact"] {
        api.control(what)?;
        consistently(Duration::from_secs(3), || {
            ensure!(kernel(&c)? == before, "{what}: the kernel changed");
            ensure!(
                c.tor_sessions()? == sessions,
                "{what}: a BGP session flapped"
            );
            Ok(())
        })?;
    }
    // And the daemons still follow the API: a new pod on n2 is reached from n1.
    let p = c.add_pod("n2", "late", &[])?;
    eventually(Duration::from_secs(10), || cluster::ping(&a.ns, &p.v4))?;
    Ok(())
}

#[test]
fn bgp_passwords_come_from_secrets_and_a_missing_secret_keeps_the_peer_down() -> Result<()> {
    let c = Cluster::new_kube("kubemd5", 1, 0, false)?;
    let api = c.kube().context("kube")?;
    let bird = c.add_bird(
        "tormd5",
        &["10.200.0.5/24"],
        &format!(
            "router id 10.200.0.5;\nprotocol device {{ }}\nprotocol bgp tormd5 {{ local 10.200.0.5 as \
             65005; neighbor {} as {}; password \"s3cret\"; connect retry time 1;\n  ipv4 {{ import \
             all; export none; }}; }}\n",
            calico_lab::plan::node_v4(1),
            calico_lab::plan::NODE_AS
        ),
    )?;
    c.write(
        "md5-peer.yaml",
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: md5}\nspec: {peerIP: \
         10.200.0.5, asNumber: 65005, password: {secretKeyRef: {name: calico-rs-bgp-passwords, key: md5}}}\n",
    )?;
    // No Secret yet: reported, and the peer is not configured (never up without MD5).
    eventually(Duration::from_secs(10), || {
        let errs = c.ctl_json("n1", "errors")?.to_string();
        ensure!(
            errs.contains("calico-rs-bgp-passwords") && errs.contains("md5"),
            "{errs}"
        );
        Ok(())
    })?;
    consistently(Duration::from_secs(3), || {
        let out = bird.birdc("show protocols tormd5")?;
        ensure!(
            !out.contains("Established"),
            "up without its password: {out}"
        );
        Ok(())
    })?;
    api.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: calico-rs-bgp-passwords, namespace: kube-system}\n\
         data: {md5: czNjcmV0}\n",
    )?;
    eventually(Duration::from_secs(30), || {
        let out = bird.birdc("show protocols tormd5")?;
        ensure!(out.contains("Established"), "{out}");
        Ok(())
    })?;
    Ok(())
}

fn kube(c: &Cluster) -> Result<&calico_lab::kubeapi::KubeApi> {
    c.kube().context("not a Kubernetes cluster")
}

/// One RBAC rule, for one namespace (a Role's) or cluster-wide.
struct Rule {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

fn strings(v: &serde_yaml_ng::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of every ClusterRole and Role in `manifests/`.
fn manifest_rules() -> Result<Vec<Rule>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(calico_lab::kubeapi::manifests_dir())? {
        let path = e?.path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(path)?;
        for doc in text.split("\n---") {
            let Ok(v) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(doc) else {
                continue;
            };
            let kind = v["kind"].as_str().unwrap_or_default();
            if kind != "ClusterRole" && kind != "Role" {
                continue;
            }
            let namespace = (kind == "Role").then(|| {
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            });
            for r in v["rules"].as_sequence().into_iter().flatten() {
                out.push(Rule {
                    namespace: namespace.clone(),
                    groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    verbs: strings(&r["verbs"]),
                    names: strings(&r["resourceNames"]),
                });
            }
        }
    }
    Ok(out)
}

/// What the authorizer sees of one request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Request {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn allows(r: &Rule, q: &Request) -> bool {
    let any = |v: &[String], x: &str| v.iter().any(|s| s == "*" || s == x);
    (r.namespace.is_none() || r.namespace == q.namespace)
        && any(&r.groups, &q.group)
        && any(&r.resources, &q.resource)
        && any(&r.verbs, &q.verb)
        && (r.names.is_empty() || q.name.as_ref().is_some_and(|n| r.names.contains(n)))
}

#[test]
fn the_daemons_requests_are_exactly_what_the_manifests_rbac_allows() -> Result<()> {
    let mut c = Cluster::new_kube("kuberbac", 3, 1, false)?;
    // Every request path the daemon has: the watches, bootstrap (Node annotations: AS is not in
    // the lab's Nodes yet), a BGP password Secret, releasing a deleted node's blocks, and the
    // default pool when none exists.
    c.daemon_env = vec!["AS=64512".into(), "CALICO_RS_IPAM_GC_GRACE=3".into()];
    for i in 0..c.nodes.len() {
        c.restart_daemon(i)?;
    }
    c.wait_converged(CONVERGE)?;
    kube(&c)?.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: calico-rs-bgp-passwords, namespace: \
         kube-system}\ndata: {tor: czNjcmV0}\n",
    )?;
    c.write(
        "peer.yaml",
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: \
         10.200.0.1, asNumber: 65000, password: {secretKeyRef: {name: calico-rs-bgp-passwords, \
         key: tor}}}\n",
    )?;
    eventually(Duration::from_secs(10), || {
        let n = kube(&c)?.kubectl(
            &[
                "get",
                "node",
                "n1",
                "-o",
                "jsonpath={.metadata.annotations}",
            ],
            None,
        )?;
        ensure!(n.contains("projectcalico.org/ASNumber"), "{n}");
        Ok(())
    })?;
    // An address taken for a pod whose CNI ADD never finished: n1 gives it back.
    let leak = c.reserve_pod("n1", "leak")?;
    eventually(Duration::from_secs(15), || {
        ensure!(
            c.leaked_handle_gone(&format!("default/{}", leak.name))?,
            "the leaked address {} is still allocated",
            leak.v4
        );
        Ok(())
    })?;
    c.remove_node("n3")?;
    eventually(Duration::from_secs(20), || {
        ensure!(
            c.blocks_of("n3")?.is_empty(),
            "n3's blocks are not released"
        );
        Ok(())
    })?;
    // No pool left: a starting daemon creates the default one.
    kube(&c)?.kubectl(&["delete", "ippools.crd.projectcalico.org", "--all"], None)?;
    c.daemon_env
        .push("CALICO_IPV4POOL_CIDR=10.250.0.0/16".into());
    c.add_node("n4", 0)?;
    eventually(Duration::from_secs(20), || {
        let p = kube(&c)?.kubectl(
            &["get", "ippools.crd.projectcalico.org", "-o", "name"],
            None,
        )?;
        ensure!(p.contains("default-ipv4-ippool"), "{p}");
        Ok(())
    })?;
    // A pod through the CNI plugin on n4, which has no block yet: its daemon claims one, takes
    // an address, annotates the Pod; DEL gives it all back.
    kube(&c)?.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cnipod, namespace: default}\nspec:\n  \
         nodeName: n4\n  containers: [{name: c, image: busybox}]\n",
    )?;
    let n4 = c
        .nodes
        .iter()
        .find(|n| n.name == "n4")
        .context("n4")?
        .ns
        .clone();
    let pod = c.lab().netns("n4.cnipod")?;
    let conf = format!(
        r#"{{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico-cni-rs",
            "datastore_type": "kubernetes", "daemon_socket": "{}", "nodename": "n4",
            "ipam": {{"type": "calico-ipam"}}}}"#,
        c.cni_socket("n4").display()
    );
    let bin = calico_lab::bins::cni_bin()?;
    for cmd in ["ADD", "DEL"] {
        let netns = pod.path().display().to_string();
        let env = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "rbac01"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=cnipod",
            ),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        let r = calico_lab::cni::call(&n4, &bin, env, &conf)?;
        ensure!(r.ok, "CNI {cmd} on n4: {} {}", r.stdout, r.stderr);
    }
    std::thread::sleep(Duration::from_secs(2));

    let log = std::fs::read_to_string(kube(&c)?.request_log())?;
    let mut requests = std::collections::BTreeSet::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["user"] != calico_lab::kubeapi::DAEMON_TOKEN || v["resource"].is_null() {
            // Discovery and /version are open to every authenticated user
            // (system:discovery, system:public-info-viewer).
            continue;
        }
        let mut resource = v["resource"].as_str().unwrap_or_default().to_string();
        if let Some(sub) = v["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        requests.insert(Request {
            verb: v["verb"].as_str().unwrap_or_default().into(),
            group: v["apiGroup"].as_str().unwrap_or_default().into(),
            resource,
            namespace: v["namespace"].as_str().map(str::to_string),
            name: v["name"].as_str().map(str::to_string),
        });
    }
    ensure!(!requests.is_empty(), "no request of the daemons was logged");
    let rules = manifest_rules()?;
    ensure!(!rules.is_empty(), "no RBAC rules in manifests/");
    let denied: Vec<&Request> = requests
        .iter()
        .filter(|q| !rules.iter().any(|r| allows(r, q)))
        .collect();
    ensure!(
        denied.is_empty(),
        "requests the manifests' RBAC denies: {denied:#?}"
    );
    let mut unused = Vec::new();
    for r in &rules {
        for g in &r.groups {
            for res in &r.resources {
                for verb in &r.verbs {
                    let used = requests.iter().any(|q| {
                        &q.group == g
                            && &q.resource == res
                            && &q.verb == verb
                            && (r.namespace.is_none() || r.namespace == q.namespace)
                    });
                    if !used {
                        unused.push(format!("{g}/{res} {verb}"));
                    }
                }
            }
        }
    }
    ensure!(
        unused.is_empty(),
        "RBAC rules no daemon request used: {unused:?}\nrequests: {requests:#?}"
    );
    Ok(())
}

#[test]
fn kubectl_applies_the_manifests_and_the_samples() -> Result<()> {
    let c = Cluster::new_kube("kubeapply", 0, 0, false)?;
    let api = kube(&c)?;
    let dir = calico_lab::kubeapi::manifests_dir();
    let out = api.kubectl(
        &["apply", "--validate=false", "-f", &dir.to_string_lossy()],
        None,
    )?;
    for what in [
        "customresourcedefinition.apiextensions.k8s.io/ippools.crd.projectcalico.org",
        "serviceaccount/calico-node-rs",
        "clusterrole.rbac.authorization.k8s.io/calico-node-rs",
        "role.rbac.authorization.k8s.io/calico-node-rs",
        "configmap/calico-rs-config",
        "daemonset.apps/calico-node-rs",
    ] {
        ensure!(
            out.contains(what),
            "kubectl apply did not make {what}:\n{out}"
        );
    }
    let samples = dir.join("samples");
    let out = api.kubectl(
        &[
            "apply",
            "--validate=false",
            "-f",
            &samples.to_string_lossy(),
        ],
        None,
    )?;
    ensure!(out.contains("ippool.crd.projectcalico.org/"), "{out}");
    ensure!(out.contains("bgppeer.crd.projectcalico.org/"), "{out}");
    let ds: serde_json::Value = serde_json::from_str(&api.kubectl(
        &[
            "get",
            "-n",
            "kube-system",
            "daemonset",
            "calico-node-rs",
            "-o",
            "json",
        ],
        None,
    )?)?;
    ensure!(
        ds["spec"]["template"]["spec"]["hostNetwork"] == true,
        "{}",
        ds["spec"]["template"]["spec"]
    );
    // Applying again changes nothing.
    let again = api.kubectl(
        &["apply", "--validate=false", "-f", &dir.to_string_lossy()],
        None,
    )?;
    ensure!(
        again.lines().all(|l| l.ends_with("unchanged")),
        "a second apply changed something:\n{again}"
    );
    Ok(())
}
