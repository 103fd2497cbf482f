//! The README's main command end to end (issue 5, "The main job"): `calico-lab-rs up` builds a
//! lab of real daemons and a BIRD top-of-rack router, prints every node's `calicoctl-rs node
//! status` and a full pod matrix; `status` prints it again; `down` leaves no namespace, process or
//! file behind. The lab gets a namespace prefix and directory of its own, so a lab the
//! user has running is left alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

use calico_lab::bins;

/// Namespace prefix of this test's lab (`lab up --netns-prefix`): not the user's `crslab-`.
const PREFIX: &str = "crsitl-";

fn lab(lab_bin: &Path, args: &[&str]) -> Result<Output> {
    Command::new(lab_bin)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", lab_bin.display(), args.join(" ")))
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn namespaces() -> Vec<String> {
    namespaces_with(PREFIX)
}

/// Whether process `pid`, started at `start` (clock ticks since boot, field 22 of
/// `/proc/PID/stat`), is still there and not a zombie: a recycled pid does not count.
fn running(pid: u64, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    fields.first() != Some(&"Z") && fields.get(19).and_then(|t| t.parse().ok()) == Some(start)
}

/// Checks one `lab up` / `lab status` report of a converged 2-node lab with 2 pods per node.
fn check_report(what: &str, out: &str, prefix: &str) -> Result<()> {
    let running = out.matches("Calico process is running.").count();
    ensure!(running == 2, "{what}: {running} node status tables:\n{out}");
    for node in [
        "node1 (10.200.0.11, fd00:200::11):",
        "node2 (10.200.0.12, fd00:200::12):",
    ] {
        ensure!(out.contains(node), "{what}: no section {node}\n{out}");
    }
    // Both nodes list the ToR and each other as Established; nothing is down.
    let established = out
        .lines()
        .filter(|l| l.contains("| up ") && l.contains("Established"))
        .count();
    // Per node: ToR (v4), the other node (mesh), ToR (v6).
    ensure!(
        established == 6,
        "{what}: {established} Established rows:\n{out}"
    );
    ensure!(
        out.contains(&format!("ToR: bird in {prefix}tor")),
        "{what}: ToR line:\n{out}"
    );
    // 4 pods: 12 ordered pairs per family.
    ensure!(
        out.contains("24/24 pod pairs reachable (IPv4 and IPv6)"),
        "{what}: matrix:\n{out}"
    );
    Ok(())
}

#[test]
fn lab_up_status_down() -> Result<()> {
    let bin = bins::lab_bin()?;
    let dir: PathBuf = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let _down = DownWith {
        bin: &bin,
        dir: &dir,
        prefix: PREFIX,
    };
    // --force also sweeps namespaces a killed run of this test left behind.
    let up = lab(
        &bin,
        &[
            "up",
            "--nodes",
            "2",
            "--pods-per-node",
            "2",
            "--tor",
            "bird",
            "--dir",
            &d,
            "--netns-prefix",
            PREFIX,
            "--force",
            "--timeout",
            "60",
        ],
    )?;
    ensure!(up.status.success(), "lab up failed:\n{}", text(&up));
    check_report("lab up", &String::from_utf8_lossy(&up.stdout), PREFIX)?;
    let mut made = namespaces();
    made.sort();
    ensure!(
        made == [
            "crsitl-lan",
            "crsitl-n1p1",
            "crsitl-n1p2",
            "crsitl-n2p1",
            "crsitl-n2p2",
            "crsitl-node1",
            "crsitl-node2",
            "crsitl-tor"
        ],
        "namespaces {made:?}"
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json"))?)?;
    // The pods are the CNI plugin's: their addresses are held under Calico's handle for the
    // container the lab named, and are the ones the record and the Pods carry.
    let ipam = calico_node::ipam::Ipam::new(dir.join("datastore"))?;
    for pod in ["node1-pod1", "node1-pod2", "node2-pod1", "node2-pod2"] {
        let held = ipam.addresses_of(&format!("k8s-pod-network.lab-{pod}"))?;
        ensure!(held.len() == 2, "{pod}: the plugin's handle holds {held:?}");
        for ip in &held {
            ensure!(
                record["pods"][pod].to_string().contains(&ip.to_string()),
                "{pod}: {ip} is not in the record: {}",
                record["pods"]
            );
        }
    }
    // (pid, start time) of both daemons and the ToR.
    let procs: Vec<(u64, u64)> = record["daemons"]
        .as_object()
        .context("daemons in lab.json")?
        .values()
        .chain(std::iter::once(&record["tor_proc"]))
        .filter_map(|p| Some((p["pid"].as_u64()?, p["start_time"].as_u64()?)))
        .collect();
    ensure!(procs.len() == 3, "lab.json processes: {record}");
    ensure!(
        procs.iter().all(|&(pid, start)| running(pid, start)),
        "lab processes not running: {procs:?}"
    );

    let status = lab(&bin, &["status", "--dir", &d])?;
    ensure!(status.status.success(), "lab status:\n{}", text(&status));
    let s = String::from_utf8_lossy(&status.stdout);
    ensure!(
        s.contains("2/2 daemons running") && s.contains("Converged"),
        "lab status:\n{s}"
    );
    check_report("lab status", &s, PREFIX)?;
    // Its reader gone early (`lab status | head -0`): the exit status of SIGPIPE, no panic.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let cut = Command::new(&bin)
        .args(["status", "--dir", &d])
        .stdout(writer)
        .output()?;
    ensure!(
        cut.status.code() == Some(calico_node::cli::BROKEN_PIPE_STATUS)
            && !String::from_utf8_lossy(&cut.stderr).contains("panicked"),
        "lab status into a closed pipe:\n{}",
        text(&cut)
    );

    // A second `up` on the same lab refuses and leaves it running.
    let again = lab(
        &bin,
        &["up", "--nodes", "2", "--dir", &d, "--netns-prefix", PREFIX],
    )?;
    ensure!(!again.status.success(), "second up:\n{}", text(&again));
    ensure!(
        String::from_utf8_lossy(&again.stderr).contains("a lab exists"),
        "second up:\n{}",
        text(&again)
    );

    let down = lab(&bin, &["down", "--dir", &d])?;
    ensure!(down.status.success(), "lab down:\n{}", text(&down));
    ensure!(namespaces().is_empty(), "left: {:?}", namespaces());
    for &(pid, start) in &procs {
        ensure!(
            !running(pid, start),
            "process {pid} still running after lab down"
        );
    }
    ensure!(!dir.exists(), "{} left behind", dir.display());
    let gone = lab(&bin, &["status", "--dir", &d])?;
    ensure!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("no lab in"),
        "status after down:\n{}",
        text(&gone)
    );
    Ok(())
}

/// Namespace prefix of the Kubernetes lab (beside the file lab's, so both tests run at once).
const KPREFIX: &str = "crsitk-";

/// `lab up --datastore kubernetes` (issue 11, "The lab on the Kubernetes backend"): the API
/// server runs in the lab, the objects and the pods' IPAM are in it, the daemons converge on it
/// with the same report as on files; a NetworkPolicy created with kubectl reaches every node's
/// kernel (the matrix goes dark, then comes back when it is deleted); `down` stops the API server
/// too and leaves nothing.
#[test]
fn lab_up_on_kubernetes_takes_policy_from_kubectl() -> Result<()> {
    let bin = bins::lab_bin()?;
    let dir: PathBuf = std::env::temp_dir().join(format!("{KPREFIX}{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let _down = DownWith {
        bin: &bin,
        dir: &dir,
        prefix: KPREFIX,
    };
    let up = lab(
        &bin,
        &[
            "up",
            "--datastore",
            "kubernetes",
            "--nodes",
            "2",
            "--pods-per-node",
            "2",
            "--dir",
            &d,
            "--netns-prefix",
            KPREFIX,
            "--force",
            "--timeout",
            "60",
        ],
    )?;
    ensure!(up.status.success(), "lab up failed:\n{}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout);
    check_report("lab up (kubernetes)", &out, KPREFIX)?;
    ensure!(
        out.contains("datastore kubernetes") && out.contains("Kubernetes API http://10.200.0.250"),
        "lab up (kubernetes):\n{out}"
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json"))?)?;
    ensure!(record["datastore"] == "kubernetes", "{record}");
    let api = (
        record["api_proc"]["pid"].as_u64().context("api_proc")?,
        record["api_proc"]["start_time"]
            .as_u64()
            .context("api_proc")?,
    );
    ensure!(running(api.0, api.1), "API server not running");

    // What is in the API, through the real client: the Pods with the CNI plugin's annotations,
    // and IPAM's blocks, affine to the nodes that announce them.
    let api_ns = format!("{KPREFIX}api");
    let kubeconfig = dir.join("kubeapi/kubeconfig-lab-admin");
    let kubectl = |args: &[&str], stdin: Option<&str>| -> Result<String> {
        let mut argv = vec![
            "netns",
            "exec",
            &api_ns,
            "kubectl",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ];
        argv.extend_from_slice(args);
        let mut c = Command::new("ip");
        c.args(&argv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn()?;
        if let Some(s) = stdin {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(s.as_bytes())?;
        }
        drop(child.stdin.take());
        let o = child.wait_with_output()?;
        ensure!(o.status.success(), "kubectl {args:?}:\n{}", text(&o));
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let pods: serde_json::Value = serde_json::from_str(&kubectl(
        &["get", "pods", "-n", "default", "-o", "json"],
        None,
    )?)?;
    let items = pods["items"].as_array().context("items")?;
    ensure!(items.len() == 4, "pods: {pods}");
    for p in items {
        let ips = p["metadata"]["annotations"]["cni.projectcalico.org/podIPs"]
            .as_str()
            .context("podIPs annotation")?;
        ensure!(
            ips.starts_with("10.244.") && ips.contains(",fd00:244:"),
            "{ips}"
        );
        // Written by the node's daemon for the plugin's ADD of the lab's container.
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        ensure!(
            p["metadata"]["annotations"]["cni.projectcalico.org/containerID"]
                == format!("lab-{name}").as_str(),
            "{name}: not the CNI plugin's: {}",
            p["metadata"]
        );
    }
    let aff: serde_json::Value =
        serde_json::from_str(&kubectl(&["get", "blockaffinities", "-o", "json"], None)?)?;
    let mut owners: Vec<String> = aff["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a["spec"]["node"].as_str().unwrap_or("?"),
                a["spec"]["cidr"].as_str().unwrap_or("?"),
                a["spec"]["state"].as_str().unwrap_or("?")
            )
        })
        .collect();
    owners.sort();
    ensure!(
        owners
            == [
                "node1 10.244.0.0/26 confirmed",
                "node1 fd00:244::/122 confirmed",
                "node2 10.244.0.64/26 confirmed",
                "node2 fd00:244::40/122 confirmed",
            ],
        "block affinities: {owners:?}"
    );

    // A default-deny ingress policy, applied with kubectl: no pod reaches another.
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, \
                namespace: default}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
    kubectl(&["apply", "--validate=false", "-f", "-"], Some(deny))?;
    let dark = wait_matrix(&bin, &d, "0/24 pod pairs reachable")?;
    ensure!(
        dark.contains("Converged"),
        "status with the policy:\n{dark}"
    );
    kubectl(&["delete", "networkpolicy", "deny", "-n", "default"], None)?;
    wait_matrix(&bin, &d, "24/24 pod pairs reachable")?;

    let down = lab(&bin, &["down", "--dir", &d])?;
    ensure!(down.status.success(), "lab down:\n{}", text(&down));
    ensure!(
        !running(api.0, api.1),
        "API server still running after lab down"
    );
    let left: Vec<String> = namespaces_with(KPREFIX);
    ensure!(left.is_empty(), "left: {left:?}");
    ensure!(!dir.exists(), "{} left behind", dir.display());
    Ok(())
}

/// `lab status` until its output contains `want` (policy reaches the kernel within a second;
/// the status command itself pings every pair), at most 15 s.
fn wait_matrix(bin: &Path, dir: &str, want: &str) -> Result<String> {
    let t = std::time::Instant::now();
    loop {
        let s = lab(bin, &["status", "--dir", dir])?;
        let out = String::from_utf8_lossy(&s.stdout).into_owned();
        if out.contains(want) {
            return Ok(out);
        }
        ensure!(
            t.elapsed() < std::time::Duration::from_secs(15),
            "lab status never showed {want:?}:\n{}",
            text(&s)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Removes the lab with `prefix` in `dir` however the test ends.
struct DownWith<'a> {
    bin: &'a Path,
    dir: &'a Path,
    prefix: &'a str,
}

impl Drop for DownWith<'_> {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy();
        let _ = lab(
            self.bin,
            &["down", "--dir", &dir, "--netns-prefix", self.prefix],
        );
    }
}
