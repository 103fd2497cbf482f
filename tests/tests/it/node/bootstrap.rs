//! Node bootstrap in a namespace with several interfaces: each `IP_AUTODETECTION_METHOD` picks
//! the address calico-node would (`calico-node-rs autodetect`, the same code the daemon's startup
//! runs), and a daemon started with `IP` and `CALICO_IPV4POOL_CIDR` on the file datastore writes
//! its Node and creates the default pool once when two nodes start together, on the file datastore
//! and on the Kubernetes API.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use calico_lab::lab::Lab;
use calico_lab::wait::eventually;

fn autodetect(ns: &str, env: &[(&str, &str)]) -> Result<(bool, String)> {
    let bin = calico_lab::bins::daemon_bin()?;
    let mut argv: Vec<String> = vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        ns.into(),
        "env".into(),
    ];
    for (k, v) in env {
        argv.push(format!("{k}={v}"));
    }
    argv.push(bin.to_string_lossy().into_owned());
    argv.push("autodetect".into());
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

#[test]
fn autodetection_methods_pick_the_right_interface() -> Result<()> {
    let lab = Lab::new("autodet")?;
    let ns = lab.netns("host")?;
    // Interface order: docker0 (skipped by first-found), eth0, eth1, bond0.
    for (name, v4, v6) in [
        ("docker0", "172.17.0.1/16", None),
        ("eth0", "10.30.0.5/24", Some("fd00:30::5/64")),
        ("eth1", "192.168.77.9/24", None),
        ("bond0", "10.31.0.2/16", None),
    ] {
        // No dummy module on these kernels: a veth pair inside the namespace.
        let peer = format!("p{name}");
        ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
        ns.ip(&["link", "set", &peer, "up"])?;
        ns.ip(&["addr", "add", v4, "dev", name])?;
        if let Some(v6) = v6 {
            ns.ip(&["addr", "add", v6, "dev", name, "nodad"])?;
        }
        ns.ip(&["link", "set", name, "up"])?;
    }
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "dev",
        "eth1",
        "src",
        "192.168.77.9",
    ])?;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "IPv4: 10.30.0.5/24"),
        (
            &[("IP_AUTODETECTION_METHOD", "first-found")],
            "IPv4: 10.30.0.5/24",
        ),
        (
            &[("IP_AUTODETECTION_METHOD", "interface=eth1")],
            "IPv4: 192.168.77.9/24",
        ),
        (
            &[("IP_AUTODETECTION_METHOD", "interface=bond.*")],
            "IPv4: 10.31.0.2/16",
        ),
        (
            &[("IP_AUTODETECTION_METHOD", "skip-interface=eth0,eth1")],
            "IPv4: 10.31.0.2/16",
        ),
        (
            &[("IP_AUTODETECTION_METHOD", "can-reach=198.51.100.7")],
            "IPv4: 192.168.77.9/24",
        ),
        (
            &[("IP_AUTODETECTION_METHOD", "cidr=10.31.0.0/16")],
            "IPv4: 10.31.0.2/16",
        ),
        (&[("IP", "10.99.0.1/24")], "IPv4: 10.99.0.1/24"),
        (&[("IP6", "autodetect")], "IPv6: fd00:30::5/64"),
        (
            &[
                ("IP6", "autodetect"),
                ("IP6_AUTODETECTION_METHOD", "interface=eth1"),
            ],
            "found no address",
        ),
        (
            &[("IP_AUTODETECTION_METHOD", "interface=(")],
            "IP_AUTODETECTION_METHOD",
        ),
    ];
    for (env, want) in cases {
        let (ok, out) = autodetect(ns.name(), env)?;
        ensure!(
            out.contains(want),
            "{env:?}: want {want:?}, got (ok={ok}) {out}"
        );
        ensure!(
            ok == want.starts_with("IPv"),
            "{env:?}: exit status {ok} for {out}"
        );
    }
    Ok(())
}

#[test]
fn startup_writes_the_node_and_two_nodes_create_the_default_pool_once() -> Result<()> {
    let lab = Lab::new("boot")?;
    let dir = lab.dir().join("ds");
    std::fs::create_dir_all(&dir)?;
    let bin = calico_lab::bins::daemon_bin()?;
    let mut procs = Vec::new();
    for (i, name) in ["b1", "b2"].iter().enumerate() {
        let ns = lab.netns(name)?;
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peth0",
        ])?;
        ns.ip(&["link", "set", "peth0", "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("10.40.0.{}/24", i + 1),
            "dev",
            "eth0",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        let log = lab.dir().join(format!("{name}.log"));
        let argv = [
            "env".to_string(),
            "IP=autodetect".into(),
            "CALICO_IPV4POOL_CIDR=10.244.0.0/16".into(),
            bin.to_string_lossy().into_owned(),
            "run".into(),
            "--nodename".into(),
            name.to_string(),
            "--datastore".into(),
            format!("file:{}", dir.display()),
            "--grpc".into(),
            format!("unix:{}", lab.dir().join(format!("{name}.sock")).display()),
            "--health-port".into(),
            "0".into(),
            "--metrics-port".into(),
            "0".into(),
            "--nft-table".into(),
            format!("crsboot{i}"),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        procs.push(calico_lab::netns::spawn_detached(ns.name(), &argv, &log)?);
    }
    let r = eventually(Duration::from_secs(10), || {
        for (i, name) in ["b1", "b2"].iter().enumerate() {
            let node = std::fs::read_to_string(dir.join(format!("calico-node-{name}.yaml")))
                .with_context(|| format!("no Node written for {name}"))?;
            ensure!(
                node.contains(&format!("ipv4Address: 10.40.0.{}/24", i + 1)),
                "{node}"
            );
        }
        let pool = std::fs::read_to_string(dir.join("default-ipv4-ippool.yaml"))?;
        ensure!(pool.contains("cidr: 10.244.0.0/16"), "{pool}");
        Ok(())
    });
    for p in &procs {
        p.signal(nix::sys::signal::Signal::SIGTERM);
    }
    r?;
    let pools = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("ippool"))
        .count();
    ensure!(pools == 1, "{pools} pool files");
    let mut logs = String::new();
    for name in ["b1", "b2"] {
        logs += &std::fs::read_to_string(lab.dir().join(format!("{name}.log")))?;
    }
    let created = logs.matches("created IPPool default-ipv4-ippool").count();
    ensure!(
        created == 1,
        "the pool was created {created} times:\n{logs}"
    );
    Ok(())
}

/// The same on the Kubernetes datastore: two daemons started at once against the API server,
/// on a cluster with no IPPool, write their Nodes' `projectcalico.org/IPv4Address` annotations and
/// create the default pool once between them (create-if-absent: the slower one gets 409).
#[test]
fn on_kubernetes_two_nodes_annotate_their_nodes_and_create_the_default_pool_once() -> Result<()> {
    use calico_lab::kubeapi::{KubeApi, DAEMON_TOKEN};
    let lab = Lab::new("kboot")?;
    let lan = lab.segment("lan")?;
    let api = KubeApi::start(&lab, &lan)?;
    api.install_crds()?;
    // The kubelet registers the Nodes; calico-node only annotates them.
    api.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n---\napiVersion: v1\n\
         kind: Node\nmetadata: {name: k1}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: k2}\n",
    )?;
    let bin = calico_lab::bins::daemon_bin()?;
    let kc = api.kubeconfig_path(DAEMON_TOKEN);
    let mut argvs = Vec::new();
    let mut nss = Vec::new();
    for (i, name) in ["k1", "k2"].iter().enumerate() {
        let ns = lab.netns(name)?;
        lan.attach(&ns, "eth0", &[&format!("10.200.0.{}/24", 21 + i)])?;
        argvs.push(vec![
            "env".to_string(),
            format!("KUBECONFIG={}", kc.display()),
            "POD_NAMESPACE=kube-system".into(),
            "IP=autodetect".into(),
            "IP_AUTODETECTION_METHOD=interface=eth0".into(),
            "CALICO_IPV4POOL_CIDR=10.244.0.0/16".into(),
            bin.to_string_lossy().into_owned(),
            "run".into(),
            "--nodename".into(),
            name.to_string(),
            "--datastore".into(),
            "kubernetes".into(),
            "--grpc".into(),
            format!("unix:{}", lab.dir().join(format!("{name}.sock")).display()),
            "--health-port".into(),
            "0".into(),
            "--metrics-port".into(),
            "0".into(),
            "--nft-table".into(),
            format!("crskboot{i}"),
        ]);
        nss.push(ns);
    }
    // Both spawned back to back, before either can have listed the pools.
    let mut procs = Vec::new();
    for (i, ns) in nss.iter().enumerate() {
        let argv: Vec<&str> = argvs[i].iter().map(String::as_str).collect();
        let log = lab.dir().join(format!("k{}.log", i + 1));
        procs.push(calico_lab::netns::spawn_detached(ns.name(), &argv, &log)?);
    }
    let r = eventually(Duration::from_secs(15), || {
        for (i, name) in ["k1", "k2"].iter().enumerate() {
            let a = api.kubectl(
                &[
                    "get",
                    "node",
                    name,
                    "-o",
                    "jsonpath={.metadata.annotations}",
                ],
                None,
            )?;
            ensure!(
                a.contains(&format!("10.200.0.{}/24", 21 + i)),
                "{name}: {a}"
            );
        }
        let pools = api.kubectl(
            &[
                "get",
                "ippools.crd.projectcalico.org",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.cidr}{\"\\n\"}{end}",
            ],
            None,
        )?;
        ensure!(
            pools.trim() == "default-ipv4-ippool 10.244.0.0/16",
            "pools: {pools:?}"
        );
        Ok(())
    });
    for p in &procs {
        p.signal(nix::sys::signal::Signal::SIGTERM);
    }
    r?;
    let mut logs = String::new();
    for name in ["k1", "k2"] {
        logs += &std::fs::read_to_string(lab.dir().join(format!("{name}.log")))?;
    }
    let created = logs.matches("created IPPool default-ipv4-ippool").count();
    ensure!(
        created == 1,
        "the pool was created {created} times:\n{logs}"
    );
    // What the API server saw: every create of an IPPool by a daemon, and which it accepted.
    let creates: Vec<u64> = std::fs::read_to_string(api.request_log())?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| {
            r["user"] == DAEMON_TOKEN && r["verb"] == "create" && r["resource"] == "ippools"
        })
        .filter_map(|r| r["code"].as_u64())
        .collect();
    ensure!(
        creates.iter().filter(|&&c| c == 201).count() == 1
            && creates.iter().all(|&c| c == 201 || c == 409),
        "IPPool creates answered {creates:?}"
    );
    eprintln!("IPPool creates by the two daemons, answered: {creates:?}");
    Ok(())
}
