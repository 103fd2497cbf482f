//! Bad input never opens a pod, frees an address or drops a session (issue: fail safe).
//!
//! Real daemons, a BIRD ToR and real packets. Each datastore document kind that can do harm when
//! it disappears (Node, NetworkPolicy, BGPPeer, IPPool) is broken in place, once with a YAML
//! syntax error and once with a field error; while it is broken nothing may change: no IPAM block
//! file, no BGP session (BIRD's "since" would move on a flap), no route at the ToR, and the
//! isolated pod stays isolated. The error must show in the status API, the metrics and the log.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use calico_lab::cluster::{self, Cluster, CONVERGE};
use calico_lab::wait::{consistently, eventually};

/// Allows ingress to every pod of `default` only from pods labelled role=nobody: n1's pod is
/// isolated from n2's.
const ISOLATE: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: isolate, namespace: default}\nspec:\n  podSelector: {}\n  \
    policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {role: nobody}}\n";

fn tor_prefixes(c: &Cluster) -> Result<Vec<String>> {
    let tor = c.tor.as_ref().context("tor")?;
    let mut v: Vec<String> = tor.prefixes("")?.iter().map(|p| p.to_string()).collect();
    v.sort();
    Ok(v)
}

/// The node's datastore errors as the status API serves them: (origin, severity).
fn api_errors(c: &Cluster, node: &str) -> Result<Vec<(String, String)>> {
    let v = c.ctl_json(node, "errors")?;
    Ok(v.as_array()
        .context("errors is not a list")?
        .iter()
        .map(|e| {
            (
                e["origin"].as_str().unwrap_or_default().to_string(),
                e["severity"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn metric(c: &Cluster, node: &str, series: &str) -> Result<f64> {
    let body = c.http(node, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .with_context(|| format!("{series} not in the metrics of {node}"))
}

#[test]
fn broken_documents_keep_their_last_good_version() -> Result<()> {
    let mut c = Cluster::new("nodesafe", 2, 1, true)?;
    c.wait_converged(CONVERGE)?;
    let victim = c.nodes[0].pods[0].clone();
    let other = c.nodes[1].pods[0].clone();
    c.write("isolate.yaml", ISOLATE)?;
    eventually(Duration::from_secs(5), || {
        ensure!(
            cluster::ping(&other.ns, &victim.v4).is_err(),
            "n1's pod is not isolated yet"
        );
        Ok(())
    })?;
    let blocks = c.block_files()?;
    ensure!(!blocks.is_empty());
    let sessions = c.tor_sessions()?;
    ensure!(sessions.len() == 2, "{sessions:?}");
    let prefixes = tor_prefixes(&c)?;
    let base = std::fs::read_to_string(c.dir().join("base.yaml"))?;
    let tor_peer = std::fs::read_to_string(c.dir().join("tor.yaml"))?;
    let node2 = std::fs::read_to_string(c.dir().join("node-n2.yaml"))?;

    let cases: Vec<(&str, String, String)> = vec![
        (
            "node-n2.yaml",
            node2.clone(),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n2\n".into(),
        ),
        (
            "node-n2.yaml",
            node2.clone(),
            node2.replace("10.200.0.12/24", "10.200.0.300/24"),
        ),
        (
            "isolate.yaml",
            ISOLATE.into(),
            ISOLATE.replace("ingress:", "ingress: ["),
        ),
        // Without strict fields this typo would mean "allow from everywhere".
        (
            "isolate.yaml",
            ISOLATE.into(),
            ISOLATE.replace("- from:", "- form:"),
        ),
        (
            "tor.yaml",
            tor_peer.clone(),
            tor_peer.replace("spec: {", "spec: {{"),
        ),
        (
            "tor.yaml",
            tor_peer.clone(),
            tor_peer.replace("10.200.0.1,", "10.200.0.1:x,"),
        ),
        (
            "base.yaml",
            base.clone(),
            base.replace("blockSize: 26}", "blockSize: 26"),
        ),
        (
            "base.yaml",
            base.clone(),
            base.replace("blockSize: 26", "blockSize: 99"),
        ),
    ];
    let mut errors_before = metric(&c, "n1", "calico_rs_resource_errors_total")?;
    for (file, good, broken) in &cases {
        ensure!(good != broken, "{file}: the broken text is the good one");
        c.write(file, broken)?;
        // The error shows in the status API, the metrics and the log, naming the file.
        eventually(Duration::from_secs(5), || {
            let errs = api_errors(&c, "n1")?;
            ensure!(
                errs.iter()
                    .any(|(o, sev)| o.starts_with(file) && sev == "error"),
                "n1's status API lacks an error for {file}: {errs:?}"
            );
            Ok(())
        })?;
        let now = metric(&c, "n1", "calico_rs_resource_errors{severity=\"error\"}")?;
        ensure!(now >= 1.0, "{file}: error gauge {now}");
        let total = metric(&c, "n1", "calico_rs_resource_errors_total")?;
        ensure!(total > errors_before, "{file}: error counter did not move");
        errors_before = total;
        ensure!(
            c.nodes[0].daemon.log().contains(*file),
            "n1's log does not name {file}"
        );
        // Nothing changes while it is broken.
        consistently(Duration::from_secs(2), || {
            ensure!(
                c.block_files()? == blocks,
                "{file}: an IPAM block file changed"
            );
            let now = c.tor_sessions()?;
            ensure!(
                now == sessions,
                "{file}: a BGP session with the ToR flapped: {sessions:?} became {now:?}\n{}",
                c.bgp_story()
            );
            ensure!(
                tor_prefixes(&c)? == prefixes,
                "{file}: the ToR's routes changed"
            );
            ensure!(
                cluster::ping(&other.ns, &victim.v4).is_err(),
                "{file}: the isolated pod became reachable"
            );
            Ok(())
        })?;
        c.write(file, good)?;
        eventually(Duration::from_secs(5), || {
            let errs = api_errors(&c, "n1")?;
            ensure!(errs.is_empty(), "errors left after fixing {file}: {errs:?}");
            Ok(())
        })?;
    }
    // The node status view points at the errors while there are some.
    c.write("isolate.yaml", &ISOLATE.replace("- from:", "- form:"))?;
    eventually(Duration::from_secs(5), || {
        let sock = format!("unix:{}", c.grpc_socket("n1").display());
        let out = calico_lab::proc::run(
            &[
                &cluster::ctl_bin()?.to_string_lossy(),
                "node",
                "status",
                "--grpc",
                &sock,
            ],
            Duration::from_secs(10),
        )?;
        ensure!(
            out.contains("1 datastore document has problems: see calicoctl-rs node errors"),
            "{out}"
        );
        Ok(())
    })?;
    // A fix takes effect: the corrected policy now lets n2's pod in.
    c.write(
        "isolate.yaml",
        &ISOLATE.replace("{matchLabels: {role: nobody}}", "{}"),
    )?;
    eventually(Duration::from_secs(5), || {
        cluster::ping(&other.ns, &victim.v4)
    })?;
    ensure!(c.tor_sessions()? == sessions, "a BGP session flapped");
    ensure!(c.block_files()? == blocks, "an IPAM block file changed");
    Ok(())
}

/// `calicoctl-rs node routes -o json` of `node`: is `prefix` installed?
fn route_installed(c: &Cluster, node: &str, prefix: &str) -> Result<bool> {
    let v = c.ctl_json(node, "routes")?;
    Ok(v["routes"]
        .as_array()
        .context("no routes array")?
        .iter()
        .any(|r| r["prefix"] == prefix && r["installed"] == true))
}

#[test]
fn a_new_pod_is_never_reachable_before_its_policy() -> Result<()> {
    let mut c = Cluster::new("nodegate", 2, 1, false)?;
    c.wait_converged(CONVERGE)?;
    // n1's nft takes 1.5 s per run (as a big ruleset does): a route programmed without waiting
    // for the policy would be in the kernel long before the rules.
    let real = calico_lab::proc::run(&["sh", "-c", "command -v nft"], Duration::from_secs(5))?;
    let bin = c.dir().join("slow-nft");
    std::fs::create_dir_all(&bin)?;
    let script = bin.join("nft");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nsleep 1.5\nexec {} \"$@\"\n", real.trim()),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    c.daemon_env = vec![format!(
        "PATH={}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )];
    c.restart_daemon(0)?;
    c.wait_converged(CONVERGE)?;
    c.write(
        "locked.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: locked, namespace: default}\n\
         spec: {podSelector: {matchLabels: {app: locked}}, policyTypes: [Ingress]}\n",
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let client = c.nodes[1].pods[0].clone();
    let locked = c.reserve_pod("n1", "locked")?;
    // Probe every 5 ms from before the pod exists until well after its route is in.
    let probe = client.ns.spawn(&[
        "ping", "-n", "-i", "0.005", "-W", "1", "-w", "6", &locked.v4,
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    c.plumb_pod(&locked, &[("app", "locked")])?;
    // Its route does go in, once its policy is in the kernel ...
    eventually(Duration::from_secs(10), || {
        ensure!(
            route_installed(&c, "n1", &format!("{}/32", locked.v4))?,
            "the locked pod's route is not installed"
        );
        Ok(())
    })?;
    // ... and not one probe got through, before or after.
    let out = cluster::wait_exit(probe, Duration::from_secs(15))?;
    let (sent, received) = cluster::ping_summary(&out)?;
    ensure!(sent > 200, "only {sent} probes sent: {out}");
    ensure!(
        received == 0,
        "{received} of {sent} probes reached the isolated pod:\n{out}"
    );
    // Control: a pod no policy selects, added the same way, becomes reachable.
    let open = c.add_pod("n1", "open", &[])?;
    eventually(Duration::from_secs(5), || {
        cluster::ping(&client.ns, &open.v4)
    })?;
    Ok(())
}

#[test]
fn a_wedged_loop_fails_liveness_within_ten_seconds() -> Result<()> {
    let mut c = Cluster::new("nodelive", 1, 1, false)?;
    c.wait_converged(CONVERGE)?;
    let live = |c: &Cluster| c.http("n1", "/liveness");
    let first = live(&c)?;
    ensure!(
        first.starts_with("HTTP/1.1 200"),
        "not live at start: {first}"
    );
    // Stays live while it works (the watchdog's pings are answered).
    consistently(Duration::from_secs(3), || {
        let r = live(&c)?;
        ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
        Ok(())
    })?;
    // The test hook stops the daemon loop 5 s after start.
    c.daemon_env = vec!["CALICO_RS_TEST_WEDGE=daemon:5".into()];
    c.restart_daemon(0)?;
    c.wait_ready(CONVERGE)?;
    let t0 = c.nodes[0].spawned;
    let took = loop {
        let r = live(&c)?;
        if r.starts_with("HTTP/1.1 503") {
            ensure!(r.contains("not live: daemon (no progress for"), "{r}");
            break t0.elapsed();
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "still live 15 s after the daemon loop stopped: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let after_wedge = took.saturating_sub(Duration::from_secs(5));
    eprintln!("liveness failed {after_wedge:?} after the loop stopped");
    ensure!(after_wedge < Duration::from_secs(10), "{after_wedge:?}");
    ensure!(
        c.nodes[0]
            .daemon
            .log()
            .contains("test hook CALICO_RS_TEST_WEDGE"),
        "the hook did not fire"
    );
    Ok(())
}

#[test]
fn the_status_api_reports_as_paths_and_the_last_policy_apply() -> Result<()> {
    let c = Cluster::with_tor_routes("nodeapi", 1, 1, 2)?;
    c.wait_ready(CONVERGE)?;
    eventually(CONVERGE, || {
        let v = c.ctl_json("n1", "routes")?;
        let r = v["routes"]
            .as_array()
            .context("no routes")?
            .iter()
            .find(|r| r["prefix"] == "100.64.0.0/26")
            .cloned()
            .context("the ToR's route is not in the API yet")?;
        ensure!(r["as_path"] == serde_json::json!([65000]), "{r}");
        ensure!(r["stale"] == false, "{r}");
        Ok(())
    })?;
    let p = c.ctl_json("n1", "policy")?;
    ensure!(p["last_apply_at"].is_string(), "no last apply time: {p}");
    Ok(())
}

#[test]
fn unsupported_policy_kinds_make_the_node_not_ready() -> Result<()> {
    let mut c = Cluster::new("nodeunsup", 1, 1, false)?;
    c.wait_converged(CONVERGE)?;
    c.write(
        "gnp.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: default-deny}\n\
         spec: {selector: all(), types: [Ingress, Egress]}\n",
    )?;
    eventually(Duration::from_secs(5), || {
        let r = c.http("n1", "/readiness")?;
        ensure!(
            r.starts_with("HTTP/1.1 503")
                && r.contains("1 unsupported policy resource(s) not enforced, first: gnp.yaml doc 1: GlobalNetworkPolicy default-deny"),
            "{r}"
        );
        Ok(())
    })?;
    let errs = api_errors(&c, "n1")?;
    ensure!(
        errs == [("gnp.yaml doc 1".to_string(), "unsupported".to_string())],
        "{errs:?}"
    );
    let gauge = metric(
        &c,
        "n1",
        "calico_rs_resource_errors{severity=\"unsupported\"}",
    )?;
    ensure!(gauge == 1.0, "unsupported gauge {gauge}");
    c.remove("gnp.yaml")?;
    c.wait_ready(Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn a_speaker_that_cannot_start_is_reported_and_retried() -> Result<()> {
    let mut c = Cluster::new("nodespk", 2, 1, false)?;
    c.wait_converged(CONVERGE)?;
    // Something else holds the port the BGPConfiguration moves the speakers to, on n1 only.
    let squatter = c.nodes[0].ns.spawn(&[
        "socat",
        "TCP6-LISTEN:1179,reuseaddr,fork,ipv6only=0",
        "SYSTEM:true",
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    let base = std::fs::read_to_string(c.dir().join("base.yaml"))?;
    c.write(
        "base.yaml",
        &base.replace(
            "nodeToNodeMeshEnabled: true}",
            "nodeToNodeMeshEnabled: true, listenPort: 1179}",
        ),
    )?;
    eventually(Duration::from_secs(10), || {
        let r = c.http("n1", "/readiness")?;
        ensure!(
            r.starts_with("HTTP/1.1 503") && r.contains("BGP speaker not running:"),
            "{r}"
        );
        Ok(())
    })?;
    drop(squatter);
    // Retried with backoff: it starts, and the mesh forms on the new port (n2 dials 1179).
    c.wait_converged(CONVERGE)?;
    c.expect_full_mesh_reachability()?;
    let log = c.nodes[0].daemon.log();
    ensure!(
        log.contains("cannot start the BGP speaker"),
        "no failure in the log"
    );
    Ok(())
}

#[test]
fn with_drop_pods_cannot_reach_their_node() -> Result<()> {
    let mut c = Cluster::new("nodee2h", 1, 1, false)?;
    c.wait_converged(CONVERGE)?;
    let pod = c.nodes[0].pods[0].clone();
    let bgp_port = |pod: &cluster::PodRef| {
        pod.ns
            .run_timeout(
                &["nc", "-z", "-w", "1", "10.200.0.11", "179"],
                Duration::from_secs(5),
            )
            .is_ok()
    };
    // Accept (the default, as Calico's manifest): the node's BGP port answers the pod.
    ensure!(
        bgp_port(&pod),
        "with Accept the pod cannot reach its node's BGP port"
    );
    c.daemon_env = vec!["FELIX_DEFAULTENDPOINTTOHOSTACTION=Drop".into()];
    c.restart_daemon(0)?;
    c.wait_converged(CONVERGE)?;
    eventually(Duration::from_secs(5), || {
        ensure!(
            !bgp_port(&pod),
            "with Drop the pod still reaches its node's BGP port"
        );
        Ok(())
    })?;
    // Pod-to-pod traffic through the node is not affected.
    let other = c.add_pod("n1", "p2", &[])?;
    eventually(Duration::from_secs(5), || cluster::ping(&pod.ns, &other.v4))?;
    Ok(())
}
