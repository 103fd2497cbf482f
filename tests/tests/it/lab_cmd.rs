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
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PREFIX))
        .collect()
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

/// Removes the lab however the test ends.
struct Down<'a> {
    bin: &'a Path,
    dir: &'a Path,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy();
        let _ = lab(self.bin, &["down", "--dir", &dir, "--netns-prefix", PREFIX]);
    }
}

/// Checks one `lab up` / `lab status` report of a converged 2-node lab with 2 pods per node.
fn check_report(what: &str, out: &str) -> Result<()> {
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
        out.contains("ToR: bird in crsitl-tor"),
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
    let _down = Down {
        bin: &bin,
        dir: &dir,
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
    check_report("lab up", &String::from_utf8_lossy(&up.stdout))?;
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
    check_report("lab status", &s)?;
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
