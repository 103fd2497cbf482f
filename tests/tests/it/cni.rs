//! `calico-cni-rs` driven as a runtime drives it (the `CNI_*` environment, the configuration on
//! stdin, the answer on stdout), in a lab node's namespace with the real daemon running: ADD gives
//! the pod its veth and addresses from the file datastore's IPAM and the daemon makes it
//! reachable; CHECK, a failed ADD that leaves nothing behind, and DEL (idempotent, and with an
//! empty `CNI_NETNS`) leave no veth and no allocation.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use calico_lab::cluster::Cluster;
use calico_lab::lab::Netns;
use calico_node::ipam::Ipam;
use serde_json::Value;

/// One plugin call in `node`'s namespace: exit success and the stdout JSON (`Null` if empty).
fn call(node: &Netns, env: &[(&str, &str)], conf: &str) -> Result<(bool, Value)> {
    let c = calico_lab::cni::call(
        node,
        &calico_lab::bins::cni_bin()?,
        env.iter().copied(),
        conf,
    )?;
    Ok((c.ok, c.json()?))
}

fn conf(dir: &std::path::Path, version: &str) -> String {
    format!(
        r#"{{"cniVersion": "{version}", "name": "k8s-pod-network", "type": "calico-cni-rs",
            "datastore_type": "file", "datastore_dir": "{}", "nodename": "n1", "mtu": 1400,
            "ipam": {{"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}}}}"#,
        dir.display()
    )
}

fn links(ns: &Netns) -> Result<String> {
    ns.ip(&["-br", "link"])
}

#[test]
fn add_check_del_with_the_daemon_running() -> Result<()> {
    let mut c = Cluster::new("cni", 1, 0, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let node = c.nodes[0].ns.clone();
    let pod = c.lab().netns("n1.web")?;
    let netns = pod.path().display().to_string();
    let conf = conf(c.dir(), "1.0.0");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web";
    let env = |cmd: &'static str, netns: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "c0ffee01".to_string()),
            ("CNI_NETNS", netns.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_ARGS", args.to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
        ]
    };
    let run = |e: Vec<(&'static str, String)>| {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        call(&node, &e, &conf)
    };

    // VERSION.
    let (ok, v) = run(env("VERSION", ""))?;
    ensure!(ok, "VERSION failed: {v}");
    let versions = v["supportedVersions"].to_string();
    for want in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        ensure!(versions.contains(want), "VERSION lacks {want}: {v}");
    }

    // ADD.
    let (ok, res) = run(env("ADD", &netns))?;
    ensure!(ok, "ADD failed: {res}");
    ensure!(res["cniVersion"] == "1.0.0", "result version: {res}");
    let host = felix::workload_iface_name("default", "web");
    ensure!(
        res["interfaces"][0]["name"] == host.as_str(),
        "host iface: {res}"
    );
    ensure!(
        res["interfaces"][0]["mac"] == "ee:ee:ee:ee:ee:ee",
        "host MAC: {res}"
    );
    ensure!(
        res["interfaces"][1]["name"] == "eth0",
        "container iface: {res}"
    );
    ensure!(
        res["interfaces"][1]["sandbox"] == netns.as_str(),
        "sandbox: {res}"
    );
    let ips: Vec<String> = res["ips"]
        .as_array()
        .context("ips")?
        .iter()
        .map(|i| i["address"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(ips.len() == 2, "want one IPv4 and one IPv6 address: {res}");
    ensure!(
        res["ips"][0]["interface"] == 1,
        "ips name the container iface: {res}"
    );
    let v4 = ips[0].trim_end_matches("/32").to_string();
    let v6 = ips[1].trim_end_matches("/128").to_string();
    ensure!(
        v4.starts_with("10.244.") && ips[0].ends_with("/32"),
        "IPv4 from the pool: {res}"
    );
    ensure!(
        v6.starts_with("fd00:244:") && ips[1].ends_with("/128"),
        "IPv6 from the pool: {res}"
    );
    let ipam = Ipam::new(c.dir())?;
    let held = ipam.addresses_of("k8s-pod-network.c0ffee01")?;
    ensure!(
        held.len() == 2,
        "IPAM handle k8s-pod-network.c0ffee01 holds {held:?}"
    );
    let pod_side = pod.ip(&["addr", "show", "dev", "eth0"])?;
    ensure!(
        pod_side.contains(&format!("{v4}/32")) && pod_side.contains(&format!("{v6}/128")),
        "eth0: {pod_side}"
    );
    ensure!(pod_side.contains("mtu 1400"), "eth0 MTU: {pod_side}");
    let routes = pod.ip(&["route"])?;
    ensure!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "pod routes: {routes}"
    );
    let routes6 = pod.ip(&["-6", "route"])?;
    ensure!(
        routes6.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
        "pod IPv6 routes: {routes6}"
    );

    // The Pod, as the kubelet would create it: the daemon programs its route, and it answers.
    c.write(
        "pod-web.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: default}}\nspec: {{nodeName: n1}}\n\
             status: {{podIP: {v4}, podIPs: [{{ip: {v4}}}, {{ip: \"{v6}\"}}]}}\n"
        ),
    )?;
    let t = Instant::now();
    loop {
        let r = node.ip(&["route", "show", &format!("{v4}/32")])?;
        if r.contains(&host) {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("no route to {v4} via {host} 10 s after the Pod: {r}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    calico_lab::cluster::ping(&node, &v4)?;
    calico_lab::cluster::ping(&node, &v6)?;

    // CHECK: right, then wrong (an address taken off).
    let (ok, v) = run(env("CHECK", &netns))?;
    ensure!(ok, "CHECK of a good attachment failed: {v}");

    // A retried ADD of the same container: the veth is made again with the same addresses (the
    // stale host end replaced, as Calico's plugin does), and the pod still answers.
    let (ok, again) = run(env("ADD", &netns))?;
    ensure!(ok, "a retried ADD failed: {again}");
    ensure!(
        again["ips"] == res["ips"],
        "a retried ADD changed the addresses: {again}"
    );
    ensure!(
        ipam.addresses_of("k8s-pod-network.c0ffee01")?.len() == 2,
        "the retried ADD lost the addresses"
    );
    calico_lab::wait::eventually(Duration::from_secs(10), || {
        calico_lab::cluster::ping(&node, &v4)
    })
    .context("the pod does not answer after a retried ADD")?;
    pod.ip(&["addr", "del", &format!("{v6}/128"), "dev", "eth0"])?;
    let (ok, v) = run(env("CHECK", &netns))?;
    ensure!(!ok, "CHECK passed with {v6} missing");
    ensure!(
        v["code"].as_u64().is_some() && v["msg"].as_str().unwrap_or("").contains(&v6),
        "CHECK error: {v}"
    );

    // DEL, twice, then once more with an empty CNI_NETNS (containerd's).
    for netns in [netns.as_str(), netns.as_str(), ""] {
        let (ok, v) = run(env("DEL", netns))?;
        ensure!(ok, "DEL (netns {netns:?}) failed: {v}");
    }
    ensure!(
        !links(&node)?.contains(&host),
        "{host} left after DEL: {}",
        links(&node)?
    );
    ensure!(
        !links(&pod)?.contains("eth0"),
        "eth0 left after DEL: {}",
        links(&pod)?
    );
    let held = ipam.addresses_of("k8s-pod-network.c0ffee01")?;
    ensure!(held.is_empty(), "addresses left after DEL: {held:?}");
    Ok(())
}

#[test]
fn a_failed_add_leaves_no_veth_and_no_address() -> Result<()> {
    let mut c = Cluster::new("cnf", 1, 0, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let node = c.nodes[0].ns.clone();
    let pod = c.lab().netns("n1.busy")?;
    // The container already has an eth0: the veth's container end cannot be made.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "crsx0",
    ])?;
    let netns = pod.path().display().to_string();
    let conf = conf(c.dir(), "0.4.0");
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "deadbeef02"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=busy"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let (ok, v) = call(&node, &env, &conf)?;
    ensure!(!ok, "ADD succeeded over an existing eth0: {v}");
    ensure!(
        v["cniVersion"] == "0.4.0",
        "the error is in the caller's version: {v}"
    );
    ensure!(
        v["code"].as_u64().is_some() && v["msg"].as_str().is_some(),
        "CNI error object: {v}"
    );
    let host = felix::workload_iface_name("default", "busy");
    ensure!(
        !links(&node)?.contains(&host),
        "{host} left after a failed ADD"
    );
    let held = Ipam::new(c.dir())?.addresses_of("k8s-pod-network.deadbeef02")?;
    ensure!(
        held.is_empty(),
        "addresses left after a failed ADD: {held:?}"
    );

    // An unknown key in the configuration is refused, naming it; nothing is made.
    let bad = conf.replacen("\"mtu\"", "\"mtuu\"", 1);
    let pod2 = c.lab().netns("n1.typo")?;
    let netns2 = pod2.path().display().to_string();
    let env2 = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "deadbeef03"),
        ("CNI_NETNS", netns2.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let (ok, v) = call(&node, &env2, &bad)?;
    ensure!(
        !ok && v["msg"].as_str().unwrap_or("").contains("mtuu"),
        "typo not named: {v}"
    );
    ensure!(
        !links(&pod2)?.contains("eth0"),
        "eth0 made despite the bad config"
    );

    // Chained after a plugin whose result is malformed: refused naming it, before anything is made.
    let prev = conf.replacen(
        "\"ipam\"",
        "\"prevResult\": {\"cniVersion\": \"0.4.0\", \"interfaces\": \"eth9\"}, \"ipam\"",
        1,
    );
    let (ok, v) = call(&node, &env2, &prev)?;
    ensure!(
        !ok && v["msg"]
            .as_str()
            .unwrap_or("")
            .contains("prevResult.interfaces"),
        "a malformed prevResult is not named: {v}"
    );
    ensure!(
        !links(&pod2)?.contains("eth0"),
        "eth0 made despite the bad prevResult"
    );
    let held = Ipam::new(c.dir())?.addresses_of("k8s-pod-network.deadbeef03")?;
    ensure!(
        held.is_empty(),
        "addresses taken despite the bad prevResult: {held:?}"
    );

    // The last step fails (the plain container's endpoint cannot be written: a directory is in
    // its place), after the veth and the addresses were made: both are undone.
    let blocker = c.dir().join("cni-endpoint-deadbeef03.yaml");
    std::fs::create_dir_all(blocker.join("in-the-way"))?;
    let (ok, v) = call(&node, &env2, &conf)?;
    std::fs::remove_dir_all(&blocker)?;
    ensure!(
        !ok && v["msg"].as_str().unwrap_or("").contains("endpoint"),
        "ADD succeeded without its endpoint: {v}"
    );
    ensure!(
        !links(&pod2)?.contains("eth0"),
        "eth0 left after the endpoint failed"
    );
    let host = calico_node::cni::env::endpoint_name("deadbeef03");
    let host = felix::workload_iface_name("cni", &host);
    ensure!(
        !links(&node)?.contains(&host),
        "{host} left after the endpoint failed"
    );
    let held = Ipam::new(c.dir())?.addresses_of("k8s-pod-network.deadbeef03")?;
    ensure!(
        held.is_empty(),
        "addresses left after the endpoint failed: {held:?}"
    );
    Ok(())
}

#[test]
fn fifty_adds_at_once_get_fifty_addresses_and_fifty_dels_leave_nothing() -> Result<()> {
    fifty_at_once(false)
}

/// The same through the daemon's socket on the Kubernetes datastore: 50 ADDs at once are 50
/// concurrent IPAM transactions on the IPAMBlocks (optimistic concurrency on resourceVersion) and
/// 50 Pod annotations.
#[test]
fn fifty_adds_at_once_through_the_daemon_socket() -> Result<()> {
    fifty_at_once(true)
}

fn fifty_at_once(kube: bool) -> Result<()> {
    const N: usize = 50;
    let mut c = if kube {
        Cluster::new_kube("cnck", 1, 0, false)?
    } else {
        Cluster::new("cnc", 1, 0, false)?
    };
    c.wait_converged(Duration::from_secs(60))?;
    let node = c.nodes[0].ns.clone();
    let conf = if kube {
        let pods = calico_lab::cni::bare_pods_yaml("load", N, "n1");
        let api = c.kube().context("kube")?;
        api.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: load}\n")?;
        api.apply(&pods)?;
        format!(
            r#"{{"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "calico-cni-rs",
                "datastore_type": "kubernetes", "daemon_socket": "{}", "nodename": "n1",
                "ipam": {{"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}}}}"#,
            c.cni_socket("n1").display()
        )
    } else {
        conf(c.dir(), "1.1.0")
    };
    let pods: Vec<Netns> = (0..N)
        .map(|i| c.lab().netns(&format!("n1.p{i}")))
        .collect::<Result<_>>()?;
    let env = |cmd: &str, i: usize, netns: &str| -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), cmd.into()),
            ("CNI_CONTAINERID".into(), format!("c{i:04}")),
            ("CNI_NETNS".into(), netns.into()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                format!("K8S_POD_NAMESPACE=load;K8S_POD_NAME=p{i}"),
            ),
            ("CNI_PATH".into(), "/usr/lib/cni".into()),
        ]
    };
    let all = |cmd: &str| -> Result<Vec<(bool, Value)>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let e = env(cmd, i, &p.path().display().to_string());
                    let (node, conf) = (&node, &conf);
                    s.spawn(move || {
                        let e: Vec<(&str, &str)> =
                            e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        call(node, &e, conf)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        })
    };
    let added = all("ADD")?;
    let mut addrs = std::collections::BTreeSet::new();
    for (i, (ok, v)) in added.iter().enumerate() {
        ensure!(*ok, "ADD {i} failed: {v}");
        for ip in v["ips"].as_array().context("ips")? {
            let a = ip["address"].as_str().unwrap_or_default().to_string();
            ensure!(addrs.insert(a.clone()), "{a} handed out twice");
        }
    }
    ensure!(
        addrs.len() == 2 * N,
        "{} addresses for {N} pods",
        addrs.len()
    );
    let veths = links(&node)?
        .lines()
        .filter(|l| l.starts_with("cali"))
        .count();
    ensure!(veths == N, "{veths} cali veths for {N} pods");
    let dels = all("DEL")?;
    for (i, (ok, v)) in dels.iter().enumerate() {
        ensure!(*ok, "DEL {i} failed: {v}");
    }
    let left = links(&node)?;
    ensure!(
        !left.lines().any(|l| l.starts_with("cali")),
        "veths left: {left}"
    );
    let used = || -> Result<u64> {
        let usage = if kube {
            c.kube().context("kube")?.with_ipam(|i| i.usage())??
        } else {
            Ipam::new(c.dir())?.usage()?
        };
        Ok(usage.blocks.iter().map(|b| b.used).sum())
    };
    if kube {
        // A DEL the daemon could not finish within its deadline was answered "queued": those
        // releases complete in the background.
        let queued = c.nodes[0].daemon.log().matches("release queued").count();
        eprintln!("{queued} of {N} DELs were answered before their release was done");
        calico_lab::wait::eventually(Duration::from_secs(30), || {
            let n = used()?;
            ensure!(n == 0, "{n} addresses still allocated after {N} DELs");
            Ok(())
        })?;
    }
    let n = used()?;
    ensure!(n == 0, "{n} addresses still allocated after {N} DELs");
    Ok(())
}

#[test]
fn delegated_ipam_host_local() -> Result<()> {
    let host_local = std::path::Path::new("/usr/lib/cni/host-local");
    ensure!(
        host_local.is_file(),
        "{} missing: install Debian's containernetworking-plugins (scripts/deps.sh does)",
        host_local.display()
    );
    let mut c = Cluster::new("cnd", 1, 0, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let node = c.nodes[0].ns.clone();
    let pod = c.lab().netns("n1.hl")?;
    let netns = pod.path().display().to_string();
    // host-local keeps its leases in dataDir: the lab's directory, never /var/lib/cni.
    let data = c.lab().dir().join("host-local");
    let conf = format!(
        r#"{{"cniVersion": "1.0.0", "name": "hl-net", "type": "calico-cni-rs",
            "datastore_type": "file", "datastore_dir": "{}", "nodename": "n1",
            "ipam": {{"type": "host-local", "dataDir": "{}",
                      "ranges": [[{{"subnet": "10.99.0.0/24"}}], [{{"subnet": "fd00:99::/64"}}]]}}}}"#,
        c.dir().display(),
        data.display()
    );
    let env = |cmd: &'static str| {
        [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "ab12"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=hl"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    };
    let (ok, res) = call(&node, &env("ADD"), &conf)?;
    ensure!(ok, "ADD with host-local failed: {res}");
    let ips: Vec<&str> = res["ips"]
        .as_array()
        .context("ips")?
        .iter()
        .filter_map(|i| i["address"].as_str())
        .collect();
    ensure!(
        ips.iter().any(|a| a.starts_with("10.99.0."))
            && ips.iter().any(|a| a.starts_with("fd00:99::")),
        "addresses from host-local's ranges: {res}"
    );
    let v4 = ips
        .iter()
        .find(|a| a.starts_with("10.99."))
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let pod_side = pod.ip(&["addr", "show", "dev", "eth0"])?;
    ensure!(pod_side.contains(&format!("{v4}/32")), "eth0: {pod_side}");
    let lease = data.join("hl-net").join(&v4);
    ensure!(
        lease.is_file(),
        "host-local lease {} missing",
        lease.display()
    );
    ensure!(
        Ipam::new(c.dir())?
            .addresses_of("k8s-pod-network.ab12")?
            .is_empty(),
        "our IPAM was used despite the delegation"
    );
    let (ok, v) = call(&node, &env("DEL"), &conf)?;
    ensure!(ok, "DEL with host-local failed: {v}");
    ensure!(
        !lease.exists(),
        "host-local lease {} left after DEL",
        lease.display()
    );
    let host = felix::workload_iface_name("default", "hl");
    ensure!(!links(&node)?.contains(&host), "{host} left after DEL");
    Ok(())
}

/// `calico-cni-rs install`, as the init container runs it: plugin and conflist written once,
/// unchanged the second time; the installed plugin answers VERSION.
#[test]
fn install_writes_the_plugin_and_the_conflist_once() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("crs-cni-install-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/30-configmap.yaml"
    ))?)?;
    let template = dir.join("cni_network_config");
    std::fs::write(
        &template,
        cm["data"]["cni_network_config"].as_str().context("key")?,
    )?;
    let bin = calico_lab::bins::cni_bin()?;
    let run = || -> Result<String> {
        let out = Command::new(&bin)
            .args(["install", "--network-config"])
            .arg(&template)
            .arg("--bin-dir")
            .arg(dir.join("bin"))
            .arg("--conf-dir")
            .arg(dir.join("net.d"))
            .args(["--nodename", "node-9"])
            .output()?;
        ensure!(
            out.status.success(),
            "install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let first = run()?;
    ensure!(
        first.matches("written").count() == 2,
        "first install: {first}"
    );
    let second = run()?;
    ensure!(
        second.matches("unchanged").count() == 2,
        "second install: {second}"
    );
    let conf = std::fs::read_to_string(dir.join("net.d/10-calico-rs.conflist"))?;
    ensure!(
        conf.contains("\"nodename\": \"node-9\""),
        "conflist: {conf}"
    );
    let out = Command::new(dir.join("bin/calico-cni-rs"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        v["supportedVersions"].to_string().contains("1.1.0"),
        "installed plugin: {v}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// 1.1's STATUS and GC: STATUS answers success with a pool for the node and code 50 without a
/// datastore; GC releases exactly the allocations of containers not in the valid list.
#[test]
fn status_and_gc() -> Result<()> {
    let mut c = Cluster::new("cng", 1, 0, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let node = c.nodes[0].ns.clone();
    let conf = conf(c.dir(), "1.1.0");
    let (ok, v) = call(
        &node,
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
        &conf,
    )?;
    ensure!(ok, "STATUS failed: {v}");
    let gone = conf.replacen(
        &c.dir().display().to_string(),
        "/nonexistent/crs-datastore",
        1,
    );
    let (ok, v) = call(
        &node,
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
        &gone,
    )?;
    ensure!(!ok && v["code"] == 50, "STATUS without a datastore: {v}");
    let pods: Vec<Netns> = (0..3)
        .map(|i| c.lab().netns(&format!("n1.g{i}")))
        .collect::<Result<_>>()?;
    for (i, p) in pods.iter().enumerate() {
        let (id, netns, name) = (
            format!("gc{i}"),
            p.path().display().to_string(),
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME=g{i}"),
        );
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", name.as_str()),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        let (ok, v) = call(&node, &env, &conf)?;
        ensure!(ok, "ADD {id}: {v}");
    }
    // An allocation that is not this plugin's (the lab's own handle form): GC leaves it alone.
    let state = calico_node::datastore::file::scan_dir(c.dir())?.state;
    calico_lab::datastore::allocate(c.dir(), &state, "n1", "default/not-cni")?;
    // A GC without the list is refused (it must never mean "nothing is valid").
    let (ok, v) = call(
        &node,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &conf,
    )?;
    ensure!(
        !ok && v["msg"]
            .as_str()
            .unwrap_or("")
            .contains("valid-attachments"),
        "GC without the list: {v}"
    );
    let gc = conf.replacen(
        "\"mtu\": 1400,",
        r#""mtu": 1400, "cni.dev/valid-attachments": [{"containerID": "gc0", "ifname": "eth0"}, {"containerID": "gc2", "ifname": "eth0"}],"#,
        1,
    );
    let (ok, v) = call(
        &node,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &gc,
    )?;
    ensure!(ok, "GC failed: {v}");
    let ipam = Ipam::new(c.dir())?;
    for (id, kept) in [("gc0", true), ("gc1", false), ("gc2", true)] {
        let n = ipam.addresses_of(&format!("k8s-pod-network.{id}"))?.len();
        ensure!(
            n == if kept { 2 } else { 0 },
            "after GC, {id} holds {n} addresses (kept: {kept})"
        );
    }
    let n = ipam.addresses_of("default/not-cni")?.len();
    ensure!(
        n == 2,
        "GC released another owner's allocation ({n} left of 2)"
    );
    Ok(())
}

/// Chaining, as a runtime runs a conflist: our ADD, then the stock `portmap` and `bandwidth`
/// plugins with our result as their `prevResult`. The published port reaches the container (a
/// TCP connection to the node's address, DNATed by portmap's rules), bandwidth shapes the host
/// end it finds in our result, and DEL in reverse order removes their rules and our veth.
#[test]
fn chained_with_the_stock_portmap_and_bandwidth() -> Result<()> {
    for p in ["portmap", "bandwidth"] {
        ensure!(
            std::path::Path::new("/usr/lib/cni").join(p).is_file(),
            "/usr/lib/cni/{p} missing: install Debian's containernetworking-plugins"
        );
    }
    let mut c = Cluster::new("cnp", 1, 0, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let node = c.nodes[0].ns.clone();
    let pod = c.lab().netns("n1.pm")?;
    let netns = pod.path().display().to_string();
    let ours = conf(c.dir(), "1.0.0");
    let env = |cmd: &'static str| {
        [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "chain01"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pm",
            ),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    };
    let stock = |plugin: &str, cmd: &'static str, prev: &Value| -> Result<Value> {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": plugin,
            "capabilities": {"portMappings": true, "bandwidth": true},
            "runtimeConfig": {
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000}
            },
            "prevResult": prev,
        });
        let bin = std::path::PathBuf::from(format!("/usr/lib/cni/{plugin}"));
        let out = calico_lab::cni::call(&node, &bin, env(cmd), &conf.to_string())?;
        ensure!(
            out.ok,
            "{plugin} {cmd} failed: {} {}",
            out.stdout,
            out.stderr
        );
        out.json()
    };
    let (ok, res) = call(&node, &env("ADD"), &ours)?;
    ensure!(ok, "ADD failed: {res}");
    let after_portmap = stock("portmap", "ADD", &res)?;
    ensure!(
        after_portmap["ips"] == res["ips"],
        "portmap changed the result: {after_portmap}"
    );
    let after_bw = stock("bandwidth", "ADD", &after_portmap)?;
    let host = felix::workload_iface_name("default", "pm");
    let qdisc = node.run(&["tc", "qdisc", "show", "dev", &host])?;
    ensure!(
        qdisc.contains("tbf"),
        "bandwidth shaped no qdisc on {host}: {qdisc}"
    );
    // The Pod, so the daemon routes to it.
    let v4 = res["ips"][0]["address"]
        .as_str()
        .context("ip")?
        .trim_end_matches("/32")
        .to_string();
    c.write(
        "pod-pm.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pm, namespace: default}}\nspec: {{nodeName: n1}}\n\
             status: {{podIP: {v4}, podIPs: [{{ip: {v4}}}]}}\n"
        ),
    )?;
    let t = Instant::now();
    while !node
        .ip(&["route", "show", &format!("{v4}/32")])?
        .contains(&host)
    {
        ensure!(
            t.elapsed() < Duration::from_secs(10),
            "no route to {v4} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A listener on the container's port 80; a connection to the node's 8080.
    let listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.name(),
            "timeout",
            "10",
            "nc",
            "-l",
            "80",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let node_ip = calico_lab::plan::node_v4(1).to_string();
    node.sh(&format!("echo through-portmap | nc -N -w 3 {node_ip} 8080"))?;
    let got = listener.wait_with_output()?;
    let got = String::from_utf8_lossy(&got.stdout);
    ensure!(
        got.contains("through-portmap"),
        "the published port did not reach the container: {got:?}"
    );
    // DEL in reverse order: their rules and our veth go.
    stock("bandwidth", "DEL", &after_bw)?;
    stock("portmap", "DEL", &after_bw)?;
    let (ok, v) = call(&node, &env("DEL"), &ours)?;
    ensure!(ok, "DEL failed: {v}");
    let nat = node.run(&["iptables-save", "-t", "nat"])?;
    ensure!(
        !nat.contains("8080"),
        "portmap's DNAT left after DEL: {nat}"
    );
    ensure!(!links(&node)?.contains(&host), "{host} left after DEL");
    Ok(())
}

/// A runtime no one here wrote: podman 4 (CNI network backend) calls the plugin from a conflist,
/// in a lab node's namespace, with its configuration and storage in the lab's directory (never
/// /etc). The container sees its address and the Calico gateway; `--rm` and `podman rm` leave no
/// veth and no allocation.
#[test]
fn podman_runs_containers_through_the_plugin() -> Result<()> {
    need(&[
        ("podman", "podman"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
    ])?;
    let mut c = Cluster::new("cnm", 2, 0, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let top = c.lab().dir().join("podman");
    let rootfs = busybox_rootfs(&top.join("rootfs"), &["sh", "ip", "sleep", "httpd", "nc"])?;
    std::fs::create_dir_all(rootfs.join("www"))?;
    std::fs::write(rootfs.join("www/index.html"), "hello from crs-a\n")?;
    let root = rootfs.display().to_string();
    // One podman per node: its configuration, storage and CNI directories in the lab dir.
    let setup = |name: &str| -> Result<std::path::PathBuf> {
        let dir = top.join(name);
        let (net_d, cni_bin) = (dir.join("net.d"), dir.join("cni-bin"));
        std::fs::create_dir_all(&net_d)?;
        std::fs::create_dir_all(&cni_bin)?;
        std::fs::copy(calico_lab::bins::cni_bin()?, cni_bin.join("calico-cni-rs"))?;
        std::fs::write(
            net_d.join("crsnet.conflist"),
            file_conflist("crsnet", c.dir(), name),
        )?;
        // Delegated IPAM: the stock host-local, its leases in the test directory.
        std::fs::write(
            net_d.join("crshl.conflist"),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "crshl", "plugins": [
                    {{"type": "calico-cni-rs", "datastore_type": "file", "datastore_dir": "{}",
                      "nodename": "{name}",
                      "ipam": {{"type": "host-local", "dataDir": "{}",
                               "ranges": [[{{"subnet": "10.251.0.0/24"}}]]}}}}]}}"#,
                c.dir().display(),
                dir.join("host-local").display()
            ),
        )?;
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n\
                 volume_path = \"{d}/volumes\"\nstatic_dir = \"{d}/static\"\n",
                cni_bin.display(),
                net_d.display()
            ),
        )?;
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/runroot\"\ngraphroot = \"{d}/graphroot\"\n"
            ),
        )?;
        Ok(dir)
    };
    let dirs = [setup("n1")?, setup("n2")?];
    // podman through nsenter (ip netns exec would remount /sys), options before --rootfs.
    let podman = |i: usize, args: &[&str]| -> Result<(bool, String)> {
        let out = Command::new("timeout")
            .arg("60")
            .arg("nsenter")
            .arg(format!("--net={}", c.nodes[i].ns.path().display()))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", dirs[i].join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", dirs[i].join("storage.conf"))
            .output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let podman_ok = |i: usize, args: &[&str]| -> Result<String> {
        let (ok, out) = podman(i, args)?;
        ensure!(ok, "podman {args:?} on n{}: {out}", i + 1);
        Ok(out)
    };
    let ipam = Ipam::new(c.dir())?;
    let endpoints = || -> Result<Vec<String>> {
        Ok(std::fs::read_dir(c.dir())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("cni-endpoint-"))
            .collect())
    };
    // (veths on both nodes, the plugin's allocations, endpoint documents)
    let ours = || -> Result<(usize, u64, usize)> {
        let mut veths = 0;
        for n in &c.nodes {
            veths += links(&n.ns)?
                .lines()
                .filter(|l| l.starts_with("cali"))
                .count();
        }
        let held = ipam
            .usage()?
            .blocks
            .iter()
            .flat_map(|b| b.allocations.clone())
            .filter(|(_, h)| h.starts_with("k8s-pod-network."))
            .count() as u64;
        Ok((veths, held, endpoints()?.len()))
    };
    let out = podman_ok(
        0,
        &[
            "run",
            "--rm",
            "--network",
            "crsnet",
            "--rootfs",
            &root,
            "/bin/sh",
            "-c",
            "ip -4 addr show eth0; ip -4 route",
        ],
    )?;
    ensure!(
        out.contains("inet 10.244."),
        "the container's eth0 has no pool address: {out}"
    );
    ensure!(
        out.contains("default via 169.254.1.1 dev eth0"),
        "the container's routes: {out}"
    );
    ensure!(
        ours()? == (0, 0, 0),
        "--rm left veths/allocations/endpoints: {:?}",
        ours()?
    );
    // The same with host-local as the IPAM plugin: its address, our veth and gateways, and
    // nothing left after --rm (no lease either).
    let out = podman_ok(
        0,
        &[
            "run",
            "--rm",
            "--network",
            "crshl",
            "--rootfs",
            &root,
            "/bin/sh",
            "-c",
            "ip -4 addr show eth0; ip -4 route",
        ],
    )?;
    ensure!(
        out.contains("inet 10.251.0.") && out.contains("default via 169.254.1.1 dev eth0"),
        "the host-local container's eth0 and routes: {out}"
    );
    let lease_dir = dirs[0].join("host-local/crshl");
    ensure!(
        lease_dir.join("last_reserved_ip.0").exists(),
        "host-local kept no state in {}: it was not the IPAM plugin",
        lease_dir.display()
    );
    let leases = calico_lab::cni::host_local_leases(&lease_dir);
    ensure!(
        ours()? == (0, 0, 0) && leases == 0,
        "--rm (host-local) left veths/allocations/endpoints {:?}, {leases} leases",
        ours()?
    );

    // A web server on n1, a client on n2: each container is an endpoint the daemons route.
    let a = podman_ok(
        0,
        &[
            "run",
            "-d",
            "--name",
            "crs-a",
            "--network",
            "crsnet",
            "--rootfs",
            &root,
            "/bin/httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ],
    )?;
    let a = a.trim().to_string();
    podman_ok(
        1,
        &[
            "run",
            "-d",
            "--name",
            "crs-b",
            "--network",
            "crsnet",
            "--rootfs",
            &root,
            "/bin/sleep",
            "120",
        ],
    )?;
    let held = ipam.addresses_of(&format!("k8s-pod-network.{a}"))?;
    ensure!(held.len() == 1, "podman's container {a} holds {held:?}");
    let a_ip = held[0].to_string();
    ensure!(
        ours()? == (2, 2, 2),
        "two containers: {:?} {:?}",
        ours()?,
        endpoints()?
    );
    let doc = std::fs::read_to_string(c.dir().join(format!("cni-endpoint-{a}.yaml")))?;
    ensure!(
        doc.contains(&a_ip) && doc.contains("\"nodeName\": \"n1\""),
        "endpoint of crs-a: {doc}"
    );
    // busybox-static's wget crashes in a bare rootfs (its static resolver); nc speaks HTTP.
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {a_ip} 8080");
    let fetch = || podman(1, &["exec", "crs-b", "sh", "-c", &get]);
    calico_lab::wait::eventually(Duration::from_secs(20), || {
        let (ok, out) = fetch()?;
        ensure!(
            ok && out.contains("hello from crs-a"),
            "crs-b on n2 cannot fetch from crs-a ({a_ip}) on n1: {out}"
        );
        Ok(())
    })
    .with_context(|| {
        format!(
            "routes on n2: {}\ncrs-a: {:?}",
            c.nodes[1]
                .ns
                .run(&["ip", "route"])
                .unwrap_or_else(|e| format!("{e:#}")),
            podman(0, &["logs", "crs-a"]),
        )
    })?;
    // A NetworkPolicy in the endpoints' namespace isolates crs-a: real TCP from n2 fails.
    c.write(
        "cni-deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, \
         namespace: cni}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )?;
    calico_lab::wait::eventually(Duration::from_secs(10), || {
        let (ok, out) = fetch()?;
        ensure!(
            !ok,
            "crs-a still answers under a deny-all ingress policy: {out}"
        );
        Ok(())
    })?;
    c.remove("cni-deny.yaml")?;
    calico_lab::wait::eventually(Duration::from_secs(10), || {
        let (ok, out) = fetch()?;
        ensure!(ok, "crs-a does not answer again without the policy: {out}");
        Ok(())
    })?;

    // podman rm: addresses, veths and endpoints are gone on both nodes.
    podman_ok(0, &["rm", "-f", "-t", "0", "crs-a"])?;
    podman_ok(1, &["rm", "-f", "-t", "0", "crs-b"])?;
    ensure!(
        ours()? == (0, 0, 0),
        "podman rm left veths/allocations/endpoints: {:?}",
        ours()?
    );
    Ok(())
}

/// Fails naming the Debian package of each program in `bins` (program, package) that is missing.
fn need(bins: &[(&str, &str)]) -> Result<()> {
    for (bin, pkg) in bins {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()?
                .status
                .success(),
            "{bin} missing: install Debian's {pkg} (scripts/deps.sh does)"
        );
    }
    Ok(())
}

/// A conflist naming only our plugin on the file datastore in `dir`, for node `node`.
fn file_conflist(name: &str, dir: &std::path::Path, node: &str) -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "{name}", "plugins": [
            {{"type": "calico-cni-rs", "datastore_type": "file", "datastore_dir": "{}",
              "nodename": "{node}", "ipam": {{"type": "calico-ipam"}}}}]}}"#,
        dir.display()
    )
}

/// A container root filesystem at `dir`: busybox-static and the given applets linked to it.
fn busybox_rootfs(dir: &std::path::Path, applets: &[&str]) -> Result<std::path::PathBuf> {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()?
            .stdout,
    )?;
    std::fs::copy(busybox.trim(), dir.join("bin/busybox"))?;
    for a in applets {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a))?;
    }
    Ok(dir.to_path_buf())
}

/// containerd 1.6 (Debian's) with `ctr run --cni`, which calls the plugins of `/etc/cni/net.d`
/// from `/opt/cni/bin`: ctr runs in the node's namespace and in a private mount namespace where
/// those two paths are the test's directories (over private overlays of `/etc` and `/opt`, so
/// nothing on the host changes); containerd itself runs with its root, state and sockets in the
/// lab directory. `--rm` makes ctr send the DEL with an empty `CNI_NETNS`, as containerd does once
/// the sandbox is gone: the veth, the address and the endpoint go with it.
#[test]
fn containerd_runs_a_container_through_the_plugin() -> Result<()> {
    need(&[
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
    ])?;
    let mut c = Cluster::new("cnd", 1, 0, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let node = c.nodes[0].ns.clone();
    let top = c.lab().dir().join("containerd");
    let rootfs = busybox_rootfs(&top.join("rootfs"), &["sh", "ip", "sleep"])?;
    let (net_d, cni_bin) = (top.join("net.d"), top.join("cni-bin"));
    for d in [&net_d, &cni_bin, &top.join("opt")] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::copy(calico_lab::bins::cni_bin()?, cni_bin.join("calico-cni-rs"))?;
    std::fs::write(
        net_d.join("10-crsnet.conflist"),
        file_conflist("crsnet", c.dir(), "n1"),
    )?;
    let t = top.display();
    let sock = top.join("containerd.sock");
    std::fs::write(
        top.join("config.toml"),
        format!(
            "version = 2\nroot = \"{t}/root\"\nstate = \"{t}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{t}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{t}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{t}/debug.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{t}/opt\"\n"
        ),
    )?;
    // containerd in the host's namespaces (it touches no network; runc needs the host's
    // /sys/fs/cgroup, which `ip netns exec` would hide), killed by PID when the test ends.
    let log = std::fs::File::create(top.join("containerd.log"))?;
    let mut containerd = Command::new("containerd")
        .arg("--config")
        .arg(top.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    // On the way out: containerd by PID, then any shim of ours it left (named by our socket).
    struct KillOnDrop<'a>(&'a mut std::process::Child, String);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&self.1) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
    let _guard = KillOnDrop(&mut containerd, sock.display().to_string());
    // A container ID of this run's own, and runc's state in the lab dir (its default is
    // /run/containerd/runc, shared with every other run).
    let id = format!("crs-ctr{}", std::process::id());
    calico_lab::wait::eventually(Duration::from_secs(20), || {
        ensure!(
            sock.exists(),
            "containerd has not opened {}",
            sock.display()
        );
        Ok(())
    })?;
    let script = top.join("ctr-run.sh");
    std::fs::write(
        &script,
        format!(
            "set -e\n\
             mkdir -p {t}/etc-up {t}/etc-work {t}/opt-up {t}/opt-work\n\
             mount -t overlay overlay -o lowerdir=/etc,upperdir={t}/etc-up,workdir={t}/etc-work /etc\n\
             mount -t overlay overlay -o lowerdir=/opt,upperdir={t}/opt-up,workdir={t}/opt-work /opt\n\
             mkdir -p /etc/cni/net.d /opt/cni/bin\n\
             mount --bind {} /etc/cni/net.d\n\
             mount --bind {} /opt/cni/bin\n\
             exec ctr --address {} run --rm --cni --runc-root {t}/runc --rootfs {} {id} \\\n  \
             /bin/sh -c 'ip -4 addr show eth0; ip -4 route; sleep 8'\n",
            net_d.display(),
            cni_bin.display(),
            sock.display(),
            rootfs.display(),
        ),
    )?;
    let ctr = Command::new("timeout")
        .arg("90")
        .arg("nsenter")
        .arg(format!("--net={}", node.path().display()))
        .args(["unshare", "-m", "--propagation", "private", "sh"])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let ipam = Ipam::new(c.dir())?;
    let handle = format!("k8s-pod-network.default-{id}");
    let handle = handle.as_str();
    let endpoint = c.dir().join(format!("cni-endpoint-default-{id}.yaml"));
    // While it runs: its address is held under Calico's handle, its endpoint is written, and the
    // daemon routes it (a ping from the node reaches the container).
    let ip = calico_lab::wait::eventually(Duration::from_secs(30), || {
        let held = ipam.addresses_of(handle)?;
        ensure!(held.len() == 1, "{handle} holds {held:?}");
        Ok(held[0])
    });
    let ip = match ip {
        Ok(ip) => ip,
        Err(e) => {
            let out = ctr.wait_with_output()?;
            bail!(
                "{e:#}\nctr: {}{}\ncontainerd: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(top.join("containerd.log")).unwrap_or_default()
            );
        }
    };
    ensure!(endpoint.exists(), "no endpoint for the container");
    ensure!(
        links(&node)?
            .lines()
            .filter(|l| l.starts_with("cali"))
            .count()
            == 1,
        "the container's veth: {}",
        links(&node)?
    );
    calico_lab::wait::eventually(Duration::from_secs(10), || {
        node.run(&["ping", "-c", "1", "-W", "1", &ip.to_string()])
            .map(drop)
    })
    .context("the node cannot reach its containerd container")?;
    let out = ctr.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "ctr run: {text}");
    ensure!(
        text.contains(&format!("inet {ip}/32")) && text.contains("default via 169.254.1.1"),
        "the container's eth0 and routes: {text}"
    );
    // ctr's DEL came with an empty CNI_NETNS: nothing of the container is left.
    let veths = links(&node)?
        .lines()
        .filter(|l| l.starts_with("cali"))
        .count();
    ensure!(veths == 0, "veths left: {}", links(&node)?);
    ensure!(
        ipam.addresses_of(handle)?.is_empty(),
        "{handle} still holds addresses"
    );
    ensure!(!endpoint.exists(), "the endpoint is left");
    Ok(())
}

/// The Kubernetes datastore: the plugin holds no credentials and asks the node's daemon over its
/// socket; the daemon allocates from the IPAMBlocks and writes the Pod's CNI annotations, from
/// which it then routes the pod. A DEL during an API outage is answered within a second and
/// the release happens once the API is back. A Pod that does not exist and a wrong nodename
/// are refused with nothing left behind.
#[test]
fn kubernetes_datastore_through_the_daemon_socket() -> Result<()> {
    let mut c = Cluster::new_kube("cnik", 1, 0, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let node = c.nodes[0].ns.clone();
    let api = c.kube().context("kube")?;
    api.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: kweb, namespace: default}\nspec:\n  \
         nodeName: n1\n  containers: [{name: c, image: busybox}]\n",
    )?;
    let pod = c.lab().netns("n1.kweb")?;
    let netns = pod.path().display().to_string();
    let socket = c.cni_socket("n1");
    let conf = |nodename: &str| {
        format!(
            r#"{{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico-cni-rs",
                "datastore_type": "kubernetes", "daemon_socket": "{}", "nodename": "{nodename}",
                "ipam": {{"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true"}},
                "policy": {{"type": "k8s"}}}}"#,
            socket.display()
        )
    };
    let env = |cmd: &'static str, id: &str, name: &str, netns: &str| -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), cmd.into()),
            ("CNI_CONTAINERID".into(), id.into()),
            ("CNI_NETNS".into(), netns.into()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
            ),
            ("CNI_PATH".into(), "/usr/lib/cni".into()),
        ]
    };
    let run = |e: Vec<(String, String)>, conf: &str| {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        call(&node, &e, conf)
    };
    let held = |handle: &str| -> Result<Vec<std::net::IpAddr>> {
        let h = handle.to_string();
        Ok(api.with_ipam(move |i| i.addresses_of(&h))??)
    };

    // ADD: addresses from the daemon, the Pod annotated, the pod routed and answering.
    let (ok, res) = run(env("ADD", "k0001", "kweb", &netns), &conf("n1"))?;
    ensure!(ok, "ADD failed: {res}");
    let ips: Vec<String> = res["ips"]
        .as_array()
        .context("ips")?
        .iter()
        .map(|i| i["address"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(ips.len() == 2, "want an IPv4 and an IPv6 address: {res}");
    let v4 = ips[0].trim_end_matches("/32").to_string();
    ensure!(v4.starts_with("10.244."), "IPv4 from the pool: {res}");
    ensure!(
        held("k8s-pod-network.k0001")?.len() == 2,
        "IPAMBlocks do not hold the handle's two addresses"
    );
    let ann = api.kubectl(
        &[
            "get",
            "pod",
            "kweb",
            "-o",
            "jsonpath={.metadata.annotations}",
        ],
        None,
    )?;
    ensure!(
        ann.contains(&format!("{v4}/32"))
            && ann.contains("cni.projectcalico.org/podIPs")
            && ann.contains("k0001"),
        "Pod annotations: {ann}"
    );
    let host = felix::workload_iface_name("default", "kweb");
    calico_lab::wait::eventually(Duration::from_secs(10), || {
        let r = node.ip(&["route", "show", &format!("{v4}/32")])?;
        ensure!(r.contains(&host), "no route to {v4} via {host}: {r}");
        Ok(())
    })?;
    calico_lab::cluster::ping(&node, &v4)?;
    let (ok, v) = run(env("CHECK", "k0001", "kweb", &netns), &conf("n1"))?;
    ensure!(ok, "CHECK failed: {v}");

    // Refusals: a wrong nodename, a Pod that does not exist. Nothing is left of either.
    let other = c.lab().netns("n1.ghost")?;
    let other_ns = other.path().display().to_string();
    let (ok, v) = run(env("ADD", "k0002", "kweb2", &other_ns), &conf("n9"))?;
    ensure!(
        !ok && v["msg"].as_str().unwrap_or("").contains("n9"),
        "wrong nodename: {v}"
    );
    let (ok, v) = run(env("ADD", "k0003", "ghost", &other_ns), &conf("n1"))?;
    ensure!(
        !ok && v["msg"].as_str().unwrap_or("").contains("ghost"),
        "ADD for a Pod that does not exist: {v}"
    );
    ensure!(
        held("k8s-pod-network.k0003")?.is_empty(),
        "the refused ADD left its addresses"
    );
    ensure!(
        !links(&node)?.contains(&felix::workload_iface_name("default", "ghost")),
        "the refused ADD left its veth"
    );

    // DEL while the API server is down: answered within a second; released once it is back.
    api.control("outage?seconds=6")?;
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (ok, v) = run(env("DEL", "k0001", "kweb", &netns), &conf("n1"))?;
    let took = t.elapsed();
    ensure!(ok, "DEL during the outage failed: {v}");
    ensure!(
        took < Duration::from_secs(1) + Duration::from_millis(300),
        "DEL during the outage took {took:?} (the plugin itself is most of the 300 ms margin)"
    );
    ensure!(!links(&node)?.contains(&host), "{host} left after DEL");
    let log = c.nodes[0].daemon.log();
    ensure!(
        log.contains("release queued"),
        "the daemon did not queue the release during the outage:\n{log}"
    );
    calico_lab::wait::eventually(Duration::from_secs(30), || {
        ensure!(
            held("k8s-pod-network.k0001")?.is_empty(),
            "the queued release has not happened"
        );
        let ann = api.kubectl(
            &[
                "get",
                "pod",
                "kweb",
                "-o",
                "jsonpath={.metadata.annotations}",
            ],
            None,
        )?;
        ensure!(!ann.contains("podIP"), "annotations left: {ann}");
        Ok(())
    })?;
    ensure!(
        c.nodes[0].daemon.log().contains("CNI DEL: released"),
        "no release logged after the outage"
    );
    // DEL again (the runtime retries): fine.
    let (ok, v) = run(env("DEL", "k0001", "kweb", ""), &conf("n1"))?;
    ensure!(ok, "second DEL failed: {v}");
    Ok(())
}
