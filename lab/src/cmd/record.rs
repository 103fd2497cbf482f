//! `DIR/lab.json`: what `up` made, so `status` and `down` (another process, later)
//! find it. Written after every step of `up` (temp + rename), so a crash leaves a record of
//! everything made so far; `down` also sweeps every namespace with the lab's prefix, record or not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{LabDatastore, Tor};
use crate::datastore::PodIps;
use crate::proc::ProcId;

/// Format version of `lab.json`.
const VERSION: u32 = 1;

/// The paths of a lab directory.
#[derive(Clone, Debug)]
pub struct Paths {
    pub dir: PathBuf,
    /// `DIR/datastore`: the daemons' file datastore (IPAM state in `DIR/datastore/ipam`).
    pub datastore: PathBuf,
    /// `DIR/run`: gRPC sockets, the ToR's config and control socket.
    pub run: PathBuf,
    /// `DIR/kubeapi`: the API server's state, request log and kubeconfigs (`--datastore
    /// kubernetes`).
    pub kubeapi: PathBuf,
    /// `DIR/logs`: one log per daemon, one for the ToR and one for the API server.
    pub logs: PathBuf,
    /// `DIR/lab.json`.
    pub record: PathBuf,
}

impl Paths {
    pub fn new(dir: &Path) -> Paths {
        Paths {
            dir: dir.to_path_buf(),
            datastore: dir.join("datastore"),
            kubeapi: dir.join("kubeapi"),
            run: dir.join("run"),
            logs: dir.join("logs"),
            record: dir.join("lab.json"),
        }
    }

    /// `DIR/run/NODE.sock`.
    pub fn grpc_socket(&self, node: &str) -> PathBuf {
        self.run.join(format!("{node}.sock"))
    }

    /// `DIR/run/NODE.cni.sock`: the CNI plugin's socket of the node's daemon (the daemon puts it
    /// beside its status socket).
    pub fn cni_socket(&self, node: &str) -> PathBuf {
        self.run.join(format!("{node}.cni.sock"))
    }

    /// `DIR/logs/NAME.log`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Everything `up` creates inside DIR (and `down` removes).
    pub fn made(&self) -> [&Path; 5] {
        [
            &self.datastore,
            &self.kubeapi,
            &self.run,
            &self.logs,
            &self.record,
        ]
    }
}

/// The content of `lab.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub nodes: usize,
    pub pods_per_node: usize,
    pub tor: Tor,
    /// Where the cluster is held (records of builds before the Kubernetes datastore have none:
    /// those labs used files).
    #[serde(default)]
    pub datastore: LabDatastore,
    pub node_bin: PathBuf,
    pub ctl_bin: Option<PathBuf>,
    /// Prefix of the lab's namespace names (records of builds before it was configurable have
    /// none: those labs used the default).
    #[serde(default = "default_prefix")]
    pub netns_prefix: String,
    /// Namespaces made so far, in creation order.
    pub namespaces: Vec<String>,
    pub tor_proc: Option<ProcId>,
    /// The Kubernetes API server (`--datastore kubernetes`).
    #[serde(default)]
    pub api_proc: Option<ProcId>,
    /// Node name -> its daemon.
    pub daemons: BTreeMap<String, ProcId>,
    /// Pod name -> its addresses.
    pub pods: BTreeMap<String, PodIps>,
    /// Unix time of `up`.
    pub created: u64,
}

fn default_prefix() -> String {
    crate::plan::DEFAULT_PREFIX.to_string()
}

impl Record {
    pub fn new(cfg: &super::LabCfg) -> Record {
        Record {
            version: VERSION,
            nodes: cfg.nodes,
            pods_per_node: cfg.pods_per_node,
            tor: cfg.tor,
            datastore: cfg.datastore,
            node_bin: cfg.node_bin.clone(),
            ctl_bin: cfg.ctl_bin.clone(),
            netns_prefix: cfg.netns_prefix.clone(),
            namespaces: Vec::new(),
            tor_proc: None,
            api_proc: None,
            daemons: BTreeMap::new(),
            pods: BTreeMap::new(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Every process the lab started.
    pub fn procs(&self) -> Vec<ProcId> {
        self.daemons
            .values()
            .chain(self.tor_proc.as_ref())
            .chain(self.api_proc.as_ref())
            .cloned()
            .collect()
    }

    pub fn save(&self, paths: &Paths) -> Result<()> {
        let tmp = paths.dir.join(".lab.json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text + "\n").with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &paths.record)
            .with_context(|| format!("writing {}", paths.record.display()))
    }

    /// The record in `paths`, `None` if there is none.
    pub fn load(paths: &Paths) -> Result<Option<Record>> {
        let text = match std::fs::read_to_string(&paths.record) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", paths.record.display())),
        };
        let rec: Record = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a lab record", paths.record.display()))?;
        if rec.version != VERSION {
            anyhow::bail!(
                "{}: lab record version {} (this build reads {VERSION})",
                paths.record.display(),
                rec.version
            );
        }
        Ok(Some(rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path());
        assert!(Record::load(&paths).unwrap().is_none());
        let mut rec = Record::new(&super::super::LabCfg::default());
        rec.namespaces.push("crslab-lan".into());
        rec.daemons.insert(
            "node1".into(),
            ProcId {
                pid: 42,
                start_time: 7,
            },
        );
        rec.pods.insert(
            "node1-pod1".into(),
            PodIps {
                v4: "10.244.0.0".parse().unwrap(),
                v6: "fd00:244::".parse().unwrap(),
            },
        );
        rec.save(&paths).unwrap();
        assert_eq!(Record::load(&paths).unwrap(), Some(rec.clone()));
        assert_eq!(rec.procs().len(), 1);
        let text = std::fs::read_to_string(&paths.record).unwrap();
        assert!(text.contains("\"tor\": \"bird\""), "{text}");
        std::fs::write(&paths.record, "{").unwrap();
        assert!(Record::load(&paths).is_err());
    }
}
