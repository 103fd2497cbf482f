//! The soak's datastore faults: documents broken in place and fixed, junk files, and a second
//! policy that changes no reachability.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::{Soak, CONVERGE};
use calico_lab::wait::eventually;

/// Policies for `extra.yaml` that change no pod's reachability.
const EXTRA: &[(&str, &str)] = &[
    (
        "allow-all to stable",
        "spec: {podSelector: {matchLabels: {tier: stable}}, policyTypes: [Ingress], ingress: [{}]}",
    ),
    (
        "allow from pods to churned",
        "spec: {podSelector: {matchLabels: {tier: churn}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {}}]}]}",
    ),
    (
        "deny-all for nobody",
        "spec: {podSelector: {matchLabels: {app: nobody}}, policyTypes: [Ingress, Egress]}",
    ),
    (
        "allow-all egress of stable",
        "spec: {podSelector: {matchLabels: {tier: stable}}, policyTypes: [Egress], egress: [{}]}",
    ),
    (
        "ipBlock of the pools to stable",
        "spec: {podSelector: {matchLabels: {tier: stable}}, policyTypes: [Ingress], ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16}}, {ipBlock: {cidr: \"fd00:244::/48\"}}]}]}",
    ),
];

impl Soak {
    /// Broken versions of the document `file` (good text `good`): (how, text).
    fn broken_versions(file: &str, good: &str) -> Vec<(&'static str, String)> {
        let cut = |at: &str| good.find(at).map(|i| good[..i + at.len()].to_string());
        let mut v: Vec<(&'static str, Option<String>)> = Vec::new();
        if let Some(node) = file
            .strip_prefix("node-")
            .and_then(|f| f.strip_suffix(".yaml"))
        {
            let index: usize = node.trim_start_matches('n').parse().unwrap_or(0);
            let a4 = format!("10.200.0.{}/24", 10 + index);
            v.push((
                "syntax: cut inside a quoted string",
                cut("IPv6Address: \"fd00:"),
            ));
            v.push((
                "field: invalid IPv4 address",
                Some(good.replace(&a4, "10.200.0.300/24")),
            ));
            v.push((
                "syntax: unclosed flow mapping",
                Some(good.replace("metadata:\n  name: ", "metadata: {name: ")),
            ));
        }
        match file {
            "isolate.yaml" => {
                v.push((
                    "syntax: unclosed sequence",
                    Some(good.replace("ingress:", "ingress: [")),
                ));
                v.push((
                    "field: ingress[0].form",
                    Some(good.replace("- from:", "- form:")),
                ));
                v.push((
                    "field: podSelector.matchLabel",
                    Some(good.replace(
                        "{matchLabels: {role: isolated}}",
                        "{matchLabel: {role: isolated}}",
                    )),
                ));
                v.push((
                    "syntax: cut in a flow mapping",
                    cut("podSelector: {matchLabels: {role: iso"),
                ));
            }
            "tor.yaml" => {
                v.push((
                    "syntax: doubled brace",
                    Some(good.replace("spec: {", "spec: {{")),
                ));
                v.push((
                    "field: peerIP",
                    Some(good.replace("10.200.0.1,", "10.200.0.1:x,")),
                ));
                v.push((
                    "kind: BGPPeers",
                    Some(good.replace("kind: BGPPeer", "kind: BGPPeers")),
                ));
            }
            "base.yaml" => {
                v.push((
                    "syntax: unclosed flow mapping",
                    Some(good.replacen("blockSize: 26}", "blockSize: 26", 1)),
                ));
                v.push((
                    "field: blockSize 99",
                    Some(good.replace("blockSize: 26", "blockSize: 99")),
                ));
                v.push(("syntax: cut in the first IPPool", cut("{cidr: 10.2")));
            }
            _ => {}
        }
        v.into_iter()
            .filter_map(|(how, t)| t.filter(|t| t != good).map(|t| (how, t)))
            .collect()
    }

    pub(super) fn corrupt(&mut self, restart: bool) -> Result<()> {
        let files: Vec<String> = self.good.keys().cloned().collect();
        let file = self.rng.pick(&files).clone();
        let good = self.good[&file].clone();
        let versions = Self::broken_versions(&file, &good);
        ensure!(!versions.is_empty(), "no broken version of {file}");
        let (how, broken) = self.rng.pick(&versions).clone();
        let hold = self.rng.millis(2000, 5000);
        let victim = if file == "isolate.yaml" && self.rng.chance(50) {
            0
        } else {
            self.rng.below(self.c.nodes.len())
        };
        let blocks = self.c.block_files()?;
        if restart {
            self.begin(format!(
                "corrupt-restart {file} ({how}), kill-daemon {} while broken",
                self.node_name(victim)
            ));
        } else {
            self.begin(format!(
                "corrupt {file} ({how}) for {:.1} s",
                hold.as_secs_f64()
            ));
        }
        self.c.write(&file, &broken)?;
        let reporter = self.rng.below(self.c.nodes.len());
        let reporter = self.node_name(reporter);
        let down = self.rng.millis(0, 1000);
        let reports = |s: &Self, node: &str| {
            eventually(Duration::from_secs(5), || {
                ensure!(
                    s.errors_of(node)?.iter().any(|o| o.starts_with(&file)),
                    "{node} does not report the broken {file}"
                );
                Ok(())
            })
        };
        let broken_phase = (|| -> Result<()> {
            reports(self, &reporter)?;
            if restart {
                self.c.kill_daemon(victim)?;
                std::thread::sleep(down);
                self.c.start_daemon(victim)?;
                self.report.restarts += 1;
                self.c.wait_ready(CONVERGE)?;
                reports(self, &self.node_name(victim))?;
            }
            std::thread::sleep(hold);
            ensure!(
                self.c.block_files()? == blocks,
                "an IPAM block file changed while {file} was broken"
            );
            Ok(())
        })();
        // Always put the good text back, even when a check failed.
        self.c.write(&file, &good)?;
        broken_phase?;
        self.wait_no_errors_for(&file)?;
        if restart {
            self.settle()?;
        }
        Ok(())
    }

    /// The origins of node `name`'s datastore errors.
    pub(super) fn errors_of(&self, name: &str) -> Result<Vec<String>> {
        let v = self.c.ctl_json(name, "errors")?;
        Ok(v.as_array()
            .context("errors is not a list")?
            .iter()
            .map(|e| e["origin"].as_str().unwrap_or_default().to_string())
            .collect())
    }

    pub(super) fn wait_no_errors_for(&self, file: &str) -> Result<()> {
        for n in &self.c.nodes {
            eventually(Duration::from_secs(10), || {
                let errs = self.errors_of(&n.name)?;
                ensure!(
                    !errs.iter().any(|o| o.starts_with(file)),
                    "{} still reports {file} after it was fixed: {errs:?}",
                    n.name
                );
                Ok(())
            })?;
        }
        Ok(())
    }

    pub(super) fn junk(&mut self) -> Result<()> {
        self.junk += 1;
        let file = format!("junk-{}.yaml", self.junk);
        let bytes: Vec<u8> = (0..200)
            .map(|_| (self.rng.next_u64() & 0xff) as u8)
            .collect();
        let kinds: Vec<(&str, Vec<u8>)> = vec![
            ("random bytes", bytes),
            ("unknown kind", b"apiVersion: v1\nkind: Gizmo\nmetadata: {name: junk}\n".to_vec()),
            (
                "Pod with a field error",
                b"apiVersion: v1\nkind: Pod\nmetadata: {name: junk, namespace: default}\nspec: {nodeName: n1, bogus: 1}\nstatus: {podIP: 10.244.0.1}\n".to_vec(),
            ),
            (
                "NetworkPolicy with a field error",
                b"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: junk, namespace: default}\nspec:\n  podSelector: {}\n  ingres: [{}]\n".to_vec(),
            ),
            ("syntax soup", b"{{{{:::: [\n- - ]]\n".to_vec()),
        ];
        let (how, text) = self.rng.pick(&kinds).clone();
        let hold = self.rng.millis(1000, 3000);
        self.begin(format!(
            "junk {file} ({how}) for {:.1} s",
            hold.as_secs_f64()
        ));
        let tmp = self.c.dir().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, self.c.dir().join(&file))?;
        std::thread::sleep(hold);
        self.c.remove(&file)?;
        self.wait_no_errors_for(&file)
    }

    pub(super) fn policy(&mut self) -> Result<()> {
        if self.extra.is_some() && self.rng.chance(50) {
            let (name, _) = EXTRA[self.extra.take().unwrap_or_default()];
            self.begin(format!("policy: remove extra.yaml ({name})"));
            return self.c.remove("extra.yaml");
        }
        let k = self.rng.below(EXTRA.len());
        let (name, spec) = EXTRA[k];
        self.begin(format!("policy: write extra.yaml ({name})"));
        self.c.write(
            "extra.yaml",
            &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: extra, namespace: default}}\n{spec}\n"
            ),
        )?;
        self.extra = Some(k);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::ISOLATE;

    #[test]
    fn every_document_has_broken_versions_that_differ() {
        let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n  annotations:\n    projectcalico.org/IPv4Address: 10.200.0.12/24\n    projectcalico.org/IPv6Address: \"fd00:200::12/64\"\n";
        let tor = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.200.0.1, asNumber: 65000}\n";
        let base =
            "kind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.244.0.0/16, blockSize: 26}\n";
        for (file, good, n) in [
            ("node-n2.yaml", node, 3),
            ("isolate.yaml", ISOLATE, 4),
            ("tor.yaml", tor, 3),
            ("base.yaml", base, 3),
        ] {
            let v = Soak::broken_versions(file, good);
            assert_eq!(v.len(), n, "{file}: {v:?}");
            assert!(v.iter().all(|(_, t)| t != good));
        }
    }
}
