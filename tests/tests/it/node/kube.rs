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

/// BIRD's `show protocols` line of each session (name, state and since): a flap changes it.
fn bird_sessions(c: &Cluster) -> Result<BTreeMap<String, String>> {
    let tor = c.tor.as_ref().context("tor")?;
    let out = tor.birdc("show protocols")?;
    Ok(out
        .lines()
        .filter(|l| l.starts_with('n'))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w.first().copied().unwrap_or_default().to_string(),
                w.iter().take(5).copied().collect::<Vec<_>>().join(" "),
            )
        })
        .collect())
}

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
    let sessions = bird_sessions(&c)?;
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
            ensure!(
                bird_sessions(&c)? == sessions,
                "a BGP session flapped during the outage"
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
        bird_sessions(&c)? == sessions,
        "a BGP session flapped after the outage"
    );
    // Every watch dropped, then history compacted (410 Gone): the daemons relist and change
    // nothing.
    for what in ["drop-watches", "compact"] {
        api.control(what)?;
        consistently(Duration::from_secs(3), || {
            ensure!(kernel(&c)? == before, "{what}: the kernel changed");
            ensure!(
                bird_sessions(&c)? == sessions,
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
