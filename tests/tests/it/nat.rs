//! IPPool `natOutgoing` with real packets: an "outside" host on the segment has no route back to
//! the pod network, so a pod reaches it only masqueraded; traffic between pods of two nodes keeps
//! its source. The daemon's `calico-rs-nat` table follows the pools at runtime and comes back when
//! someone deletes it.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use calico_lab::cluster::Cluster;
use calico_lab::datastore;
use calico_lab::lab::Netns;

const OUT_V4: &str = "10.200.0.77";
const OUT_V6: &str = "fd00:200::77";

/// Connects from `from` to `addr` (`host:port` as socat writes it) and returns what the server
/// said: the peer address it saw.
fn peer_seen(from: &Netns, family: &str, addr: &str) -> Result<String> {
    let out = from.run_timeout(
        &[
            "socat",
            "-T",
            "2",
            "-",
            &format!("{family}:{addr},connect-timeout=2"),
        ],
        Duration::from_secs(5),
    )?;
    Ok(out.trim().to_string())
}

/// A TCP server in `ns` on `port` answering each connection with the peer address it sees.
fn echo_peer(ns: &Netns, listen: &str) -> Result<calico_lab::proc::Proc> {
    ns.spawn(&[
        "socat",
        &format!("{listen},reuseaddr,fork"),
        "SYSTEM:echo $SOCAT_PEERADDR",
    ])
}

fn pools(nat: bool) -> String {
    datastore::cluster_base().replace("blockSize: ", &format!("natOutgoing: {nat}, blockSize: "))
}

fn nat_table(node: &Netns) -> Result<String> {
    node.run(&["nft", "list", "table", "inet", "calico-rs-nat"])
}

#[test]
fn nat_outgoing_masquerades_only_traffic_leaving_every_pool() -> Result<()> {
    calico_lab::proc::have("socat")
        .then_some(())
        .context("socat missing: install Debian's socat (scripts/deps.sh does)")?;
    let mut c = Cluster::new("nat", 2, 1, false)?;
    c.wait_converged(Duration::from_secs(60))?;
    let out = c.add_host("out", &[&format!("{OUT_V4}/24"), &format!("{OUT_V6}/64")])?;
    let _s4 = echo_peer(&out, "TCP4-LISTEN:7000")?;
    let _s6 = echo_peer(&out, "TCP6-LISTEN:7001")?;
    let (n1, n2) = (c.nodes[0].ns.clone(), c.nodes[1].ns.clone());
    let a = c.nodes[0].pods[0].clone();
    let b = c.nodes[1].pods[0].clone();
    let _sb = echo_peer(&b.ns, "TCP4-LISTEN:7002")?;
    let out4 = format!("{OUT_V4}:7000");
    let out6 = format!("[{OUT_V6}]:7001");
    // The node reaches the outside host (the server is up) ...
    calico_lab::wait::eventually(Duration::from_secs(10), || {
        let seen = peer_seen(&n1, "TCP4", &out4)?;
        ensure!(seen == "10.200.0.11", "the outside host saw {seen}");
        Ok(())
    })?;
    // ... the pod does not: the outside host has no route back to 10.244.0.0/16.
    ensure!(
        peer_seen(&a.ns, "TCP4", &out4).is_err(),
        "the pod reached the outside host without natOutgoing"
    );
    ensure!(
        nat_table(&n1).is_err(),
        "a natOutgoing table without natOutgoing"
    );

    c.write("base.yaml", &pools(true))?;
    calico_lab::wait::eventually(Duration::from_secs(15), || {
        let seen = peer_seen(&a.ns, "TCP4", &out4)?;
        ensure!(
            seen == "10.200.0.11",
            "the outside host saw {seen}, not node 1"
        );
        let seen = peer_seen(&a.ns, "TCP6", &out6)?;
        ensure!(
            seen.trim_matches(['[', ']'])
                .parse::<std::net::Ipv6Addr>()
                .ok()
                == Some(calico_lab::plan::node_v6(1)),
            "the outside host saw {seen}, not node 1"
        );
        Ok(())
    })
    .context("natOutgoing: true did not masquerade the pod's traffic to the outside")?;
    // Between pools (a pod on another node) the source stays the pod's.
    let seen = peer_seen(&a.ns, "TCP4", &format!("{}:7002", b.v4))?;
    ensure!(
        seen == a.v4,
        "pod {} on n2 saw {seen}, not pod {} ({}): pod-to-pod traffic was masqueraded",
        b.name,
        a.name,
        a.v4
    );

    // Someone deletes the table: the daemon puts it back.
    n1.run(&["nft", "delete", "table", "inet", "calico-rs-nat"])?;
    calico_lab::wait::eventually(Duration::from_secs(10), || {
        let t = nat_table(&n1)?;
        ensure!(t.contains("masquerade"), "{t}");
        Ok(())
    })
    .context("the deleted natOutgoing table was not restored")?;
    let seen = peer_seen(&a.ns, "TCP4", &out4)?;
    ensure!(
        seen == "10.200.0.11",
        "after the repair the outside saw {seen}"
    );

    // natOutgoing off again: the table goes on both nodes, and the pod is cut off again.
    c.write("base.yaml", &pools(false))?;
    calico_lab::wait::eventually(Duration::from_secs(15), || {
        ensure!(
            nat_table(&n1).is_err(),
            "n1 still has the natOutgoing table"
        );
        ensure!(
            nat_table(&n2).is_err(),
            "n2 still has the natOutgoing table"
        );
        Ok(())
    })?;
    ensure!(
        peer_seen(&a.ns, "TCP4", &out4).is_err(),
        "the pod still reaches the outside host after natOutgoing was turned off"
    );
    Ok(())
}
