//! Route reflection (RFC 4456): our speaker reflects between GoBGP clients, follows the
//! client/non-client rules, and drops routes whose CLUSTER_LIST already holds its cluster id.

use anyhow::{anyhow, bail, ensure, Result};
use bgp::State;
use calico_lab::lab::Lab;
use calico_lab::peers::{Bird, Gobgp};
use calico_lab::wait::{consistently, eventually};

use super::gobgp::{attr, gobgp_conf, gobgp_paths};
use super::{peer_cfg, speaker_cfg, Ours, UP};

#[test]
fn reflects_between_gobgp_clients_and_catches_cluster_loops() -> Result<()> {
    let lab = Lab::new("rr")?;
    let lan = lab.segment("lan")?;
    let rr = lab.netns("rr")?;
    let n1 = lab.netns("c1")?;
    let n2 = lab.netns("c2")?;
    let n3 = lab.netns("c3")?;
    let n4 = lab.netns("bird")?;
    lan.attach(&rr, "eth0", &["10.0.0.1/24"])?;
    lan.attach(&n1, "eth0", &["10.0.0.2/24"])?;
    lan.attach(&n2, "eth0", &["10.0.0.3/24"])?;
    lan.attach(&n3, "eth0", &["10.0.0.4/24"])?;
    lan.attach(&n4, "eth0", &["10.0.0.5/24"])?;
    let to_rr = [("10.0.0.1", 65001, "")];
    let c1 = Gobgp::start(&n1, &gobgp_conf(65001, "2.2.2.2", &to_rr))?;
    let c2 = Gobgp::start(&n2, &gobgp_conf(65001, "3.3.3.3", &to_rr))?;
    let c3 = Gobgp::start(&n3, &gobgp_conf(65001, "4.4.4.4", &to_rr))?;
    // A non-client that sends us a route already carrying our cluster id: a reflection loop.
    let bird = Bird::start(
        &n4,
        r#"
router id 5.5.5.5;
protocol device { }
protocol static s4 { ipv4; route 10.55.0.0/26 blackhole; }
protocol bgp ours {
  local 10.0.0.5 as 65001;
  neighbor 10.0.0.1 as 65001;
  connect retry time 1;
  ipv4 { import all; export filter { bgp_cluster_list.add(10.0.0.1); accept; }; next hop self; };
}
"#,
    )?;

    let mut client1 = peer_cfg("10.0.0.2", 65001);
    client1.rr_client = true;
    let mut client2 = peer_cfg("10.0.0.3", 65001);
    client2.rr_client = true;
    let ours = Ours::start(
        &rr,
        speaker_cfg(65001, "10.0.0.1"),
        vec![
            client1,
            client2,
            peer_cfg("10.0.0.4", 65001),
            peer_cfg("10.0.0.5", 65001),
        ],
    )?;
    for p in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"] {
        ours.wait_state(p, State::Established, UP)?;
    }

    // Client -> other client and non-clients, with ORIGINATOR_ID and CLUSTER_LIST.
    c1.gobgp(&[
        "global",
        "rib",
        "add",
        "-a",
        "ipv4",
        "10.51.0.0/26",
        "nexthop",
        "10.0.0.2",
    ])?;
    let p = eventually(UP, || {
        gobgp_paths(&c2, "10.51.0.0/26")?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("not reflected to c2"))
    })?;
    let orig = attr(&p, 9).map(|a| a.to_string()).unwrap_or_default();
    ensure!(
        orig.contains("2.2.2.2"),
        "ORIGINATOR_ID should be c1's router id: {p}"
    );
    let cl = attr(&p, 10).map(|a| a.to_string()).unwrap_or_default();
    ensure!(
        cl.contains("10.0.0.1"),
        "CLUSTER_LIST should hold our cluster id: {p}"
    );
    let nh = attr(&p, 3).map(|a| a.to_string()).unwrap_or_default();
    ensure!(
        nh.contains("10.0.0.2"),
        "next hop unchanged by reflection: {p}"
    );
    eventually(UP, || {
        gobgp_paths(&c3, "10.51.0.0/26")?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("not reflected to non-client c3"))
    })?;

    // Non-client -> clients only, never to another non-client.
    c3.gobgp(&[
        "global",
        "rib",
        "add",
        "-a",
        "ipv4",
        "10.53.0.0/26",
        "nexthop",
        "10.0.0.4",
    ])?;
    eventually(UP, || {
        gobgp_paths(&c1, "10.53.0.0/26")?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("not reflected to c1"))
    })?;
    consistently(std::time::Duration::from_secs(2), || {
        ensure!(
            super::bird::bird_route(&bird, "10.53.0.0/26")?.is_none(),
            "non-client route leaked to a non-client"
        );
        Ok(())
    })?;

    // The looped route from BIRD is received but not accepted, and not passed on.
    let st = eventually(UP, || match ours.peer("10.0.0.5") {
        Some(p) if p.prefixes_received >= 1 => Ok(p),
        p => bail!("nothing received from BIRD yet: {p:?}"),
    })?;
    ensure!(st.prefixes_accepted == 0, "looped route accepted: {st:?}");
    ensure!(ours.learned("10.55.0.0/26")?.is_none());
    ensure!(
        gobgp_paths(&c1, "10.55.0.0/26")?.is_empty(),
        "looped route reflected"
    );
    Ok(())
}
