//! The soak (issue 9) for two minutes: daemons killed and restarted, BIRD restarted, documents
//! broken and fixed, pods and policies churned, while pods ping each other and probe an isolated
//! pod. `CRS_SOAK_SEED` replays a sequence, `CRS_SOAK_MINUTES` changes the length.

use std::time::Duration;

use anyhow::{ensure, Result};
use calico_tests::soak::{self, SoakCfg};

#[test]
fn soak_two_minutes_loses_nothing_and_breaches_nothing() -> Result<()> {
    let minutes: f64 = std::env::var("CRS_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(2.0);
    let mut cfg = SoakCfg::new(Duration::from_secs_f64(minutes * 60.0));
    if let Some(seed) = std::env::var("CRS_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        cfg.seed = seed;
    }
    eprintln!(
        "soak: seed {} (CRS_SOAK_SEED={} replays it)",
        cfg.seed, cfg.seed
    );
    let report = soak::run(&cfg)?;
    ensure!(
        report.clean(),
        "the soak is not clean (replay with CRS_SOAK_SEED={}):\n{report}",
        cfg.seed
    );
    eprintln!("{report}");
    Ok(())
}
