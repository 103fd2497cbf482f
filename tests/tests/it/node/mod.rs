//! The node daemon end to end: real `calico-node-rs` processes in node namespaces sharing one file
//! datastore, pods plumbed as a CNI plugin would, a BIRD top-of-rack router, real packets.

mod bootstrap;
mod failsafe;
mod kube;
mod status;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use calico_lab::wait::{consistently, eventually};

use calico_lab::cluster::{self, Cluster, CONVERGE};

#[test]
fn three_nodes_and_a_bird_tor() -> Result<()> {
    let mut c = Cluster::new("node3", 3, 2, true)?;
    c.wait_converged(CONVERGE)?;
    // Every pod reaches every other pod, IPv4 and IPv6.
    c.expect_full_mesh_reachability()?;
    // The ToR learned every node's blocks.
    let tor = c.tor.as_ref().expect("tor");
    eventually(CONVERGE, || {
        let have: BTreeSet<String> = tor.prefixes("")?.iter().map(|p| p.to_string()).collect();
        for n in &c.nodes {
            for b in c.blocks_of(&n.name)? {
                ensure!(
                    have.contains(&b.to_string()),
                    "ToR lacks {b} of {}: {have:?}",
                    n.name
                );
            }
        }
        Ok(())
    })?;
    // Each node's routes are exactly: its pods, its blocks, the other nodes' blocks.
    for n in &c.nodes {
        eventually(CONVERGE, || {
            let have = c.our_routes(n)?;
            let want = c.expected_routes(&n.name)?;
            ensure!(
                have == want,
                "{}: routes\n have {have:?}\n want {want:?}",
                n.name
            );
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn nodes_join_and_leave_at_runtime() -> Result<()> {
    join_and_leave(Cluster::new("nodejoin", 2, 1, false)?)
}

/// The same on the Kubernetes datastore: the Node deleted through the API, its IPAMBlocks and
/// BlockAffinities released by another node's daemon after the grace period.
#[test]
fn nodes_join_and_leave_at_runtime_on_kubernetes() -> Result<()> {
    join_and_leave(Cluster::new_kube("kubejoin", 2, 1, false)?)
}

/// The daemons' `--node-release-grace` in [`Cluster`].
const NODE_RELEASE_GRACE: Duration = Duration::from_secs(3);

fn join_and_leave(mut c: Cluster) -> Result<()> {
    c.wait_converged(CONVERGE)?;
    // A third node appears in the datastore and starts its daemon: it joins the mesh.
    c.add_node("n3", 1)?;
    c.wait_converged(CONVERGE)?;
    c.expect_full_mesh_reachability()?;
    let n3_blocks = c.blocks_of("n3")?;
    ensure!(!n3_blocks.is_empty());
    // n1's status API follows: n3's blocks are remote blocks, installed in the kernel.
    eventually(CONVERGE, || {
        let have = api_routes(&c, "n1")?;
        for b in &n3_blocks {
            ensure!(
                have.get(&b.to_string()) == Some(&("remote-block".into(), true)),
                "n1's API routes lack installed {b}: {have:?}"
            );
        }
        Ok(())
    })?;
    // It leaves: its Node and pods go from the datastore, its daemon stops.
    c.remove_node("n3")?;
    let deleted = std::time::Instant::now();
    for n in &c.nodes {
        eventually(CONVERGE, || {
            let have = c.our_routes(n)?;
            for b in &n3_blocks {
                ensure!(
                    !have.contains(&b.to_string()),
                    "{}: still routes {b} of a deleted node",
                    n.name
                );
            }
            Ok(())
        })?;
    }
    eventually(CONVERGE, || {
        let have = api_routes(&c, "n1")?;
        for b in &n3_blocks {
            ensure!(
                !have.contains_key(&b.to_string()),
                "n1's API still shows {b} of a deleted node"
            );
        }
        // Its own blocks and pods, and n2's blocks, are all there and installed.
        let mine = c.blocks_of("n1")?.into_iter().chain(c.blocks_of("n2")?);
        for b in mine {
            ensure!(
                have.get(&b.to_string())
                    .is_some_and(|(_, installed)| *installed),
                "n1's API routes lack {b}: {have:?}"
            );
        }
        Ok(())
    })?;
    // Released once the Node has been gone for the grace period, and not before (no daemon
    // saw the deletion before `deleted`).
    eventually(CONVERGE, || {
        let left = c.blocks_of("n3")?;
        ensure!(
            left.is_empty(),
            "blocks of a deleted node not released: {left:?}"
        );
        Ok(())
    })?;
    let after = deleted.elapsed();
    ensure!(
        after + Duration::from_millis(100) >= NODE_RELEASE_GRACE,
        "n3's blocks released {after:?} after its Node was deleted, before the grace period \
         ({NODE_RELEASE_GRACE:?})"
    );
    c.expect_full_mesh_reachability()?;
    Ok(())
}

/// `calicoctl-rs node routes -o json` of `node`: prefix -> (kind, installed).
fn api_routes(
    c: &Cluster,
    node: &str,
) -> Result<std::collections::BTreeMap<String, (String, bool)>> {
    let sock = format!("unix:{}", c.grpc_socket(node).display());
    let ctl = cluster::ctl_bin()?;
    let out = calico_lab::proc::run(
        &[
            &ctl.to_string_lossy(),
            "node",
            "routes",
            "--grpc",
            &sock,
            "-o",
            "json",
        ],
        Duration::from_secs(10),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let routes = v["routes"].as_array().context("no routes array")?;
    Ok(routes
        .iter()
        .filter_map(|r| {
            Some((
                r["prefix"].as_str()?.to_string(),
                (r["kind"].as_str()?.to_string(), r["installed"].as_bool()?),
            ))
        })
        .collect())
}

#[test]
fn a_corrupt_file_is_reported_and_the_rest_keeps_working() -> Result<()> {
    let mut c = Cluster::new("nodebad", 2, 1, false)?;
    c.wait_converged(CONVERGE)?;
    c.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: [unclosed\n",
    )?;
    eventually(Duration::from_secs(5), || {
        let log = c.nodes[0].daemon.log();
        ensure!(
            log.contains("broken.yaml"),
            "no error naming broken.yaml in the log yet"
        );
        Ok(())
    })?;
    consistently(Duration::from_secs(2), || c.expect_full_mesh_reachability())?;
    // Fixing the file takes effect: it now holds a policy that isolates n1's pod.
    let pod = c.nodes[0].pods[0].clone();
    c.write(
        "broken.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: default}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
    )?;
    let other = &c.nodes[1].pods[0];
    eventually(Duration::from_secs(5), || {
        match cluster::ping(&other.ns, &pod.v4) {
            Ok(()) => bail!("still reachable"),
            Err(_) => Ok(()),
        }
    })?;
    Ok(())
}

#[test]
fn network_policy_from_the_datastore_is_enforced_within_a_second() -> Result<()> {
    let mut c = Cluster::new("nodepol", 2, 2, false)?;
    c.wait_converged(CONVERGE)?;
    c.expect_full_mesh_reachability()?;
    let web = c.nodes[0].pods[0].clone();
    let client = c.nodes[1].pods[0].clone();
    let client2 = c.nodes[1].pods[1].clone();
    c.label_pod(&web, &[("app", "web")])?;
    c.label_pod(&client, &[("role", "client")])?;
    std::thread::sleep(Duration::from_millis(1500));
    // Only role=client may reach app=web.
    let t0 = std::time::Instant::now();
    c.write(
        "policy.yaml",
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
"#,
    )?;
    // Probe back to back with a short timeout; the enforcement time is when the first probe
    // that went unanswered was sent.
    let took = loop {
        let sent = t0.elapsed();
        let answered = client2
            .ns
            .run_timeout(
                &["ping", "-n", "-c1", "-W0.2", &web.v4],
                Duration::from_secs(3),
            )
            .is_ok();
        if !answered {
            break sent;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(5),
            "a non-client still reaches web after 5 s"
        );
    };
    cluster::ping(&client.ns, &web.v4)?;
    cluster::ping(&client.ns, &web.v6)?;
    ensure!(took < Duration::from_secs(1), "enforced after {took:?}");
    eprintln!("policy enforced {took:?} after the file was written");
    // Removing it opens the pod again.
    c.remove("policy.yaml")?;
    eventually(Duration::from_secs(3), || {
        cluster::ping(&client2.ns, &web.v4)
    })?;
    Ok(())
}

#[test]
fn a_daemon_restart_loses_no_packet() -> Result<()> {
    let mut c = Cluster::new("noderst", 2, 1, false)?;
    c.wait_converged(CONVERGE)?;
    let a = c.nodes[0].pods[0].clone();
    let b = c.nodes[1].pods[0].clone();
    let pinger =
        a.ns.spawn(&["ping", "-n", "-i", "0.05", "-w", "12", &b.v4])?;
    std::thread::sleep(Duration::from_secs(1));
    c.restart_daemon(0)?;
    c.wait_converged(CONVERGE)?;
    std::thread::sleep(Duration::from_secs(1));
    c.restart_daemon(1)?;
    c.wait_converged(CONVERGE)?;
    let out = cluster::wait_exit(pinger, Duration::from_secs(20))?;
    let (sent, received) = cluster::ping_summary(&out)?;
    ensure!(sent >= 100, "ping sent only {sent}: {out}");
    ensure!(
        sent == received,
        "lost {} of {sent} packets across two daemon restarts:\n{out}",
        sent - received
    );
    Ok(())
}

/// Leaked addresses come back (issue: the Kubernetes datastore, garbage collection): a CNI ADD
/// that died between allocating and the Pod (an allocation with no Pod), and a Pod deleted
/// behind the plugin's back (its allocation stays), with the owning daemon restarted mid-way.
/// Each is released within the grace period plus 10 s; the addresses of running pods never are.
#[test]
fn leaked_addresses_come_back_and_running_pods_keep_theirs() -> Result<()> {
    leaks_come_back(Cluster::new("nodegc", 2, 2, false)?)
}

/// The same on the Kubernetes datastore: IPAMBlock allocations and IPAMHandles released by the
/// owning node's daemon, Pods deleted through the API.
#[test]
fn leaked_addresses_come_back_and_running_pods_keep_theirs_on_kubernetes() -> Result<()> {
    leaks_come_back(Cluster::new_kube("kubegc", 2, 2, false)?)
}

fn leaks_come_back(mut c: Cluster) -> Result<()> {
    let grace = Duration::from_secs(5);
    c.daemon_env = vec![format!("CALICO_RS_IPAM_GC_GRACE={}", grace.as_secs())];
    for i in 0..c.nodes.len() {
        c.restart_daemon(i)?;
    }
    c.wait_converged(CONVERGE)?;
    let died = c.reserve_pod("n1", "died")?;
    let behind = c.nodes[1].pods[1].clone();
    // Deleted from the datastore only: no CNI DEL.
    c.remove(&format!("pod-{}.yaml", behind.name))?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    c.restart_daemon(0)?;
    c.restart_daemon(1)?;
    let running: Vec<String> = [
        &c.nodes[0].pods[0],
        &c.nodes[0].pods[1],
        &c.nodes[1].pods[0],
    ]
    .iter()
    .map(|p| format!("default/{}", p.name))
    .collect();
    eventually(grace + Duration::from_secs(10), || {
        for h in [
            format!("default/{}", died.name),
            format!("default/{}", behind.name),
        ] {
            ensure!(
                c.leaked_handle_gone(&h)?,
                "{h} is still allocated after {:?}",
                t0.elapsed()
            );
        }
        Ok(())
    })?;
    eprintln!("leaks released {:?} after they leaked", t0.elapsed());
    if let Some(api) = c.kube() {
        // Their IPAMHandles go with them; the running pods' stay.
        let handles = api.kubectl(
            &["get", "ipamhandles.crd.projectcalico.org", "-o", "name"],
            None,
        )?;
        for h in [&died.name, &behind.name] {
            let name = calico_node::ipam::kdd::model::handle_name(&format!("default/{h}"));
            ensure!(
                !handles.lines().any(|l| l.ends_with(&format!("/{name}"))),
                "IPAMHandle {name} of a released leak is still there:\n{handles}"
            );
        }
        for h in &running {
            let name = calico_node::ipam::kdd::model::handle_name(h);
            ensure!(
                handles.lines().any(|l| l.ends_with(&format!("/{name}"))),
                "IPAMHandle {name} of a running pod is gone:\n{handles}"
            );
        }
    }
    // Long past the grace period, running pods still have their addresses.
    std::thread::sleep(grace + Duration::from_secs(1));
    for h in &running {
        ensure!(
            !c.leaked_handle_gone(h)?,
            "{h}, a running pod, lost its address"
        );
    }
    cluster::ping(&c.nodes[1].pods[0].ns, &c.nodes[0].pods[0].v4)?;
    Ok(())
}
