//! Graceful restart (RFC 4724) with BIRD: BIRD as helper while we restart, and us as helper
//! while BIRD restarts.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};
use bgp::{GracefulRestartCfg, OriginAttrs, SpeakerCfg, State};
use calico_lab::lab::Lab;
use calico_lab::peers::Bird;
use calico_lab::wait::{consistently, eventually};

use super::{net, pair, peer_cfg, speaker_cfg, Ours, UP};

fn bird_conf(static_routes: &str, gr: bool) -> String {
    let gr = if gr {
        "graceful restart on; graceful restart time 8;"
    } else {
        "graceful restart off;"
    };
    format!(
        r#"
router id 10.0.0.2;
protocol device {{ }}
protocol static s4 {{ ipv4; {static_routes} }}
protocol bgp ours {{
  local 10.0.0.2 as 65002;
  neighbor 10.0.0.1 as 65001;
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  {gr}
  ipv4 {{ import all; export all; }};
}}
"#
    )
}

fn gr_cfg() -> SpeakerCfg {
    let mut c = speaker_cfg(65001, "10.0.0.1");
    c.graceful_restart = Some(GracefulRestartCfg {
        restart_time: 30,
        restarting: false,
        forwarding_preserved: true,
        stale_time: 30,
    });
    c
}

fn in_bird(bird: &Bird, prefix: &str) -> Result<bool> {
    Ok(super::bird::bird_route(bird, prefix)?.is_some())
}

/// Start ours with `routes` originated *before* the peer is added, as a restarting daemon does, so
/// our End-of-RIB follows a complete table.
fn start_with_routes(
    ns: &calico_lab::lab::Netns,
    cfg: SpeakerCfg,
    routes: &[&str],
) -> Result<Ours> {
    let ours = Ours::start(ns, cfg, vec![])?;
    ours.h.originate(
        routes
            .iter()
            .map(|r| (net(r), OriginAttrs::default()))
            .collect(),
    )?;
    ours.block(ours.h.add_peer(peer_cfg("10.0.0.2", 65002)))?;
    Ok(ours)
}

#[test]
fn bird_keeps_our_routes_while_we_restart() -> Result<()> {
    let lab = Lab::new("grus")?;
    let (a, b) = pair(&lab)?;
    let bird = Bird::start(&b, &bird_conf("", true))?;
    let ours = start_with_routes(&a, gr_cfg(), &["10.1.0.0/26", "10.1.0.64/26"])?;
    let st = ours.wait_state("10.0.0.2", State::Established, UP)?;
    ensure!(
        st.negotiated.expect("negotiated").graceful_restart,
        "GR not negotiated"
    );
    eventually(UP, || ensure_in(&bird, "10.1.0.0/26"))?;
    eventually(UP, || ensure_in(&bird, "10.1.0.64/26"))?;

    // Restart: close without NOTIFICATION. BIRD keeps our routes (stale) meanwhile.
    ours.stop(true);
    consistently(Duration::from_secs(3), || ensure_in(&bird, "10.1.0.0/26"))?;
    let proto = bird.birdc("show protocols all ours")?;
    ensure!(
        !proto.contains("Established"),
        "BIRD should have seen the session go down: {proto}"
    );

    // Back, with one route fewer: BIRD replaces the stale route and drops the other at our End-of-RIB.
    let mut cfg = gr_cfg();
    cfg.graceful_restart.as_mut().expect("gr").restarting = true;
    let ours = start_with_routes(&a, cfg, &["10.1.0.0/26"])?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;
    eventually(UP, || match in_bird(&bird, "10.1.0.64/26")? {
        false => Ok(()),
        true => bail!("10.1.0.64/26 should be gone after our End-of-RIB"),
    })?;
    ensure_in(&bird, "10.1.0.0/26")?;
    Ok(())
}

fn ensure_in(bird: &Bird, prefix: &str) -> Result<()> {
    ensure!(in_bird(bird, prefix)?, "{prefix} not in BIRD");
    Ok(())
}

#[test]
fn without_graceful_restart_bird_drops_our_routes_at_once() -> Result<()> {
    // The control for the test above: the same restart without GR loses the routes.
    let lab = Lab::new("grno")?;
    let (a, b) = pair(&lab)?;
    let bird = Bird::start(&b, &bird_conf("", false))?;
    let ours = start_with_routes(&a, speaker_cfg(65001, "10.0.0.1"), &["10.1.0.0/26"])?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;
    eventually(UP, || ensure_in(&bird, "10.1.0.0/26"))?;
    ours.stop(true);
    eventually(Duration::from_secs(5), || {
        match in_bird(&bird, "10.1.0.0/26")? {
            false => Ok(()),
            true => bail!("still there"),
        }
    })?;
    Ok(())
}

#[test]
fn we_keep_birds_routes_while_it_restarts() -> Result<()> {
    let lab = Lab::new("grbird")?;
    let (a, b) = pair(&lab)?;
    let both = "route 10.99.0.0/26 blackhole; route 10.99.0.64/26 blackhole;";
    let mut bird = Bird::start(&b, &bird_conf(both, true))?;
    let ours = start_with_routes(&a, gr_cfg(), &[])?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;
    ours.wait_learned("10.99.0.0/26", UP)?;
    ours.wait_learned("10.99.0.64/26", UP)?;

    // BIRD goes away without a NOTIFICATION (`birdc graceful restart`): we keep its routes, stale.
    bird.graceful_stop()?;
    let st = eventually(UP, || match ours.peer("10.0.0.2") {
        Some(p) if p.state != State::Established => Ok(p),
        _ => bail!("still Established"),
    })?;
    ensure!(st.gr_stale, "routes should be held as stale: {st:?}");
    let r = ours
        .learned("10.99.0.0/26")?
        .ok_or_else(|| anyhow!("route dropped during the restart"))?;
    ensure!(r.stale, "route should be marked stale: {r:?}");
    consistently(Duration::from_secs(2), || {
        ours.learned("10.99.0.64/26")?
            .ok_or_else(|| anyhow!("route dropped during the restart"))
    })?;

    // BIRD is back (restarting, -R) with one route fewer: the other is refreshed, the missing one
    // goes at its End-of-RIB.
    std::fs::write(
        bird.config_path(),
        bird_conf("route 10.99.0.0/26 blackhole;", true),
    )?;
    bird.graceful_start()?;
    ours.wait_state("10.0.0.2", State::Established, UP)?;
    ours.wait_not_learned("10.99.0.64/26", UP)?;
    let r = eventually(UP, || match ours.learned("10.99.0.0/26")? {
        Some(r) if !r.stale => Ok(r),
        r => bail!("not refreshed: {r:?}"),
    })?;
    assert_eq!(r.as_path, vec![65002]);
    eventually(UP, || match ours.peer("10.0.0.2") {
        Some(p) if !p.gr_stale => Ok(()),
        p => bail!("still stale: {p:?}"),
    })?;
    drop(bird);
    Ok(())
}

#[test]
fn stale_routes_expire_when_the_peer_does_not_return() -> Result<()> {
    let lab = Lab::new("grexp")?;
    let (a, b) = pair(&lab)?;
    // BIRD advertises a restart time of 8 s.
    let mut bird = Bird::start(&b, &bird_conf("route 10.99.0.0/26 blackhole;", true))?;
    let ours = start_with_routes(&a, gr_cfg(), &[])?;
    ours.wait_learned("10.99.0.0/26", UP)?;
    bird.graceful_stop()?;
    eventually(Duration::from_secs(3), || {
        match ours.learned("10.99.0.0/26")? {
            Some(r) if r.stale => Ok(()),
            r => bail!("expected a stale route, got {r:?}"),
        }
    })?;
    let t0 = std::time::Instant::now();
    ours.wait_not_learned("10.99.0.0/26", Duration::from_secs(15))?;
    let took = t0.elapsed();
    ensure!(
        took >= Duration::from_secs(4),
        "flushed after {took:?}, before the restart time"
    );
    Ok(())
}
