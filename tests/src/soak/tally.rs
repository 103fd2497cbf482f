//! Reading the probes back into the report, and the duplicate-address scan.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{anyhow, Result};
use calico_node::ipam::Block;

use super::probe::{self, Expect, TcpResult};
use super::report::{during, episodes};
use super::Soak;
use calico_lab::cluster::Cluster;

impl Soak {
    pub(super) fn tally(&mut self, tcp: &[TcpResult]) {
        let (t0, events) = (self.t0, &self.events);
        let r = &mut self.report;
        for p in &self.results {
            if let Some(d) = &p.died {
                r.errors.push(format!("pinger {}: {d}", p.label));
            }
            match p.expect {
                Expect::Reach => {
                    r.reach_pings += p.sent;
                    let mut times = Vec::new();
                    for (_, t) in &p.lost {
                        if *t > p.stopped - probe::TAIL {
                            r.lost_in_windows += 1;
                        } else {
                            r.lost += 1;
                            times.push(*t);
                        }
                    }
                    times.sort_by(f64::total_cmp);
                    for (n, a, b) in episodes(&times, 1.5) {
                        r.findings.push(format!(
                            "lost {n} echo request{} {} from +{:.1} to +{:.1} s, {}",
                            plural(n),
                            p.label,
                            a - t0,
                            b - t0,
                            during(events, t0, a, b)
                        ));
                    }
                }
                Expect::Isolated => {
                    r.isolated_probes += p.sent;
                    r.breaches += p.answered;
                    let mut times: Vec<f64> = p.replies.iter().map(|(_, t)| *t).collect();
                    times.sort_by(f64::total_cmp);
                    for (n, a, b) in episodes(&times, 1.5) {
                        r.findings.push(format!(
                            "breach: {n} echo request{} {} answered from +{:.1} to +{:.1} s, {}",
                            plural(n),
                            p.label,
                            a - t0,
                            b - t0,
                            during(events, t0, a, b)
                        ));
                    }
                }
            }
        }
        for t in tcp {
            let mut times: Vec<f64> = t.unexpected.iter().map(|(t, _)| *t).collect();
            times.sort_by(f64::total_cmp);
            let what = t
                .unexpected
                .first()
                .map(|(_, o)| o.clone())
                .unwrap_or_default();
            if t.reach {
                r.reach_tcp += t.attempts;
                r.lost += t.unexpected.len() as u64;
            } else {
                r.isolated_probes += t.attempts;
                r.breaches += t.unexpected.len() as u64;
            }
            for (n, a, b) in episodes(&times, 3.0) {
                r.findings.push(format!(
                    "{} {n} TCP connection{} {} ({what}) from +{:.1} to +{:.1} s, {}",
                    if t.reach { "failed:" } else { "breach:" },
                    plural(n),
                    t.label,
                    a - t0,
                    b - t0,
                    during(events, t0, a, b)
                ));
            }
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Addresses held twice, one line each: an address with two owners among the IPAM allocations
/// (handle), the Pod documents (`namespace/name`) and the pods the soak made; overlapping IPAM
/// blocks; a pod whose address IPAM holds for no one (the next pod would get it).
pub fn duplicates(c: &Cluster) -> Result<Vec<String>> {
    let mut owners: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    let mut out = Vec::new();
    let mut blocks = Vec::new();
    for (file, text) in c.block_files()? {
        if file.starts_with('.') {
            continue;
        }
        let Some(cidr) = Block::parse_file_name(&file) else {
            continue;
        };
        let b =
            Block::from_yaml(&text, &cidr).map_err(|e| anyhow!("IPAM block file {file}: {e}"))?;
        for (ip, h) in b.allocations {
            owners.entry(ip).or_default().insert(h);
        }
        blocks.push(cidr);
    }
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            if a.contains(b) || b.contains(a) {
                out.push(format!("IPAM blocks {a} and {b} overlap"));
            }
        }
    }
    let held: BTreeSet<IpAddr> = owners.keys().copied().collect();
    let state = calico_node::datastore::file::scan_dir(c.dir())?.state;
    for ((ns, name), p) in &state.pods {
        for ip in &p.pod_ips {
            owners
                .entry(*ip)
                .or_default()
                .insert(format!("{ns}/{name}"));
        }
    }
    for n in &c.nodes {
        for p in &n.pods {
            for a in [&p.v4, &p.v6] {
                let ip: IpAddr = a.parse()?;
                owners
                    .entry(ip)
                    .or_default()
                    .insert(format!("default/{}", p.name));
                if !held.contains(&ip) {
                    out.push(format!("{ip} of pod {} is free in IPAM", p.name));
                }
            }
        }
    }
    for (ip, o) in owners {
        if o.len() > 1 {
            out.push(format!(
                "{ip} held by {}",
                o.into_iter().collect::<Vec<_>>().join(" and ")
            ));
        }
    }
    Ok(out)
}
