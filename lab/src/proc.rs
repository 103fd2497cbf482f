//! Running commands and processes: the one place the lab (command and tests alike) starts one.
//!
//! Three shapes:
//! - [`run`] / [`run_stdin`] / [`output`]: a short command whose output we want. It always has a
//!   deadline ([`DEFAULT_TIMEOUT`] unless given), because a peer that is SIGSTOPped or wedged would
//!   otherwise hang the caller forever (e.g. `birdc` connects to a stopped BIRD and waits for its
//!   greeting); at the deadline it is SIGKILLed. The error names the command, the exit status and
//!   stderr, so a failed assertion says what the kernel or tool said.
//! - [`Proc`]: a long-running process owned by a test (BIRD, gobgpd, a daemon, iperf3...) with
//!   stdout and stderr appended to one log file. It is SIGKILLed and reaped when the handle drops,
//!   unless the lab is kept (`CRS_KEEP_LAB=1`).
//! - [`ProcId`]: a detached process that outlives its starter (the lab command's daemons and ToR,
//!   started with [`crate::netns::spawn_detached`]), identified by (pid, start time) so that a
//!   recycled pid is never signalled; [`stop_all`] ends them.
//!
//! Processes run inside a namespace through `ip netns exec NS CMD`: `ip` enters the namespace and then
//! `exec`s CMD, so the pid we hold *is* the command's pid and signals reach it directly. (A `pre_exec`
//! setns would need `unsafe`, which the workspace forbids.)

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Deadline for [`run`] when the caller does not give one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `argv` to completion within `timeout`; returns its stdout.
///
/// Errors (with the full command line) when it cannot start, exits non-zero (stderr included, and
/// stdout if there was any) or overruns the deadline (then it is SIGKILLed).
pub fn run(argv: &[&str], timeout: Duration) -> Result<String> {
    checked(argv, output(argv, None, timeout)?)
}

/// Like [`run`] but feeds `stdin` to the command.
pub fn run_stdin(argv: &[&str], stdin: &[u8], timeout: Duration) -> Result<String> {
    checked(argv, output(argv, Some(stdin), timeout)?)
}

/// Its stdout if `out` is a success, else an error naming `argv`, the status, stderr and stdout.
fn checked(argv: &[&str], out: std::process::Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if out.stdout.is_empty() {
                String::new()
            } else {
                format!(" [stdout: {}]", String::from_utf8_lossy(&out.stdout).trim())
            }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv` and returns its exit status and output whatever they are (an error only if it
/// could not be started or timed out: then it is SIGKILLed). `stdin` is written from a thread of
/// its own, so a command that does not read all of it cannot block us.
pub fn output(
    argv: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<std::process::Output> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", argv.join(" ")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r.with_context(|| format!("running `{}`", argv.join(" "))),
        Err(_) => {
            // Not reaped yet (the waiter still holds it), so the pid cannot have been reused.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = rx.recv();
            bail!("`{}` timed out after {timeout:?}", argv.join(" "))
        }
    }
}

/// `argv` as a command with stdin from /dev/null and stdout and stderr appended to `log`.
pub(crate) fn logged_command(argv: &[&str], log: &Path) -> Result<Command> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    Ok(cmd)
}

/// A background process owned by a test; SIGKILLed and reaped on drop (unless the lab is kept).
pub struct Proc {
    child: Child,
    argv: Vec<String>,
    log: PathBuf,
    keep: Arc<AtomicBool>,
    reaped: bool,
}

impl Proc {
    /// Start `argv` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(argv: &[&str], log: &Path, keep: Arc<AtomicBool>) -> Result<Proc> {
        let child = logged_command(argv, log)?
            .spawn()
            .with_context(|| format!("cannot start `{}`", argv.join(" ")))?;
        Ok(Proc {
            child,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            log: log.to_path_buf(),
            keep,
            reaped: false,
        })
    }

    /// The process id (of the command itself: `ip netns exec` execs it).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The command line it was started with.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Path of the log file holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Send `sig` to the process.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.reaped {
            bail!("`{}` has already exited", self.argv.join(" "));
        }
        kill(Pid::from_raw(self.pid()), sig)
            .with_context(|| format!("kill -{sig} {} (`{}`)", self.pid(), self.argv.join(" ")))
    }

    /// SIGSTOP: freeze it (its sockets stay open, its timers stop; a BGP peer's hold timer will expire).
    pub fn stop(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT: thaw it after [`Proc::stop`].
    pub fn cont(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// Whether it is still running (a stopped process counts as running).
    pub fn is_running(&mut self) -> bool {
        !self.reaped && matches!(self.child.try_wait(), Ok(None))
    }

    /// Its exit status if it has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL it and reap it. Idempotent.
    pub fn kill(&mut self) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        // SIGCONT first is not needed: SIGKILL also ends a stopped process.
        let _ = self.child.kill();
        self.child.wait().context("reaping child")?;
        self.reaped = true;
        Ok(())
    }

    /// SIGTERM it and wait up to `grace` for it to exit, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                self.reaped = true;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.keep.load(Ordering::Relaxed) {
            return;
        }
        let _ = self.kill();
    }
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.pid())
            .field("argv", &self.argv)
            .field("log", &self.log)
            .finish()
    }
}

/// A detached process, identified so that a recycled pid is never mistaken for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot).
    pub start_time: u64,
}

/// (state, start time) from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((state, fields.get(19)?.parse().ok()?))
}

impl ProcId {
    /// The live process `pid` (now).
    pub fn of(pid: u32) -> Option<ProcId> {
        stat(pid).map(|(_, start_time)| ProcId { pid, start_time })
    }

    /// Running (not exited, not a zombie) and still the same process.
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((s, t)) if t == self.start_time && s != 'Z' && s != 'X')
    }

    pub fn signal(&self, sig: Signal) {
        if self.alive() {
            let _ = kill(Pid::from_raw(self.pid as i32), sig);
        }
    }
}

/// Starts `argv` in a session of its own (so it outlives the caller and its terminal), stdin from
/// /dev/null, stdout and stderr appended to `log`. `argv` must exec in place (`setsid`, `ip netns
/// exec` do), so that the pid returned is the final command's.
pub(crate) fn spawn_session(argv: &[&str], log: &Path) -> Result<ProcId> {
    let mut full = vec!["setsid"];
    full.extend_from_slice(argv);
    let child = logged_command(&full, log)?
        .spawn()
        .with_context(|| format!("starting `{}`", argv.join(" ")))?;
    let pid = child.id();
    // Not reaped here: if it dies while we run, it stays a zombie, which `alive` treats as dead;
    // when we exit, init adopts and reaps it.
    drop(child);
    ProcId::of(pid).with_context(|| format!("`{}` exited at once", argv.join(" ")))
}

/// SIGTERM to each, up to `grace` for them to exit, then SIGKILL to the rest. Returns how many
/// were running.
pub fn stop_all(procs: &[ProcId], grace: Duration) -> usize {
    let running: Vec<&ProcId> = procs.iter().filter(|p| p.alive()).collect();
    for p in &running {
        p.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while running.iter().any(|p| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in running.iter().filter(|p| p.alive()) {
        p.signal(Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while running.iter().any(|p| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    running.len()
}

/// Whether `name` is an executable on `PATH` (or a path to one).
pub fn have(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return exec(Path::new(name));
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| exec(&d.join(name))))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_deadlines() {
        assert_eq!(run_stdin(&["cat"], b"hi", DEFAULT_TIMEOUT).unwrap(), "hi");
        let e = run(&["sh", "-c", "echo oops >&2; exit 3"], DEFAULT_TIMEOUT).unwrap_err();
        assert!(format!("{e:#}").contains("oops"), "{e:#}");
        let t = Instant::now();
        assert!(run(&["sleep", "5"], Duration::from_millis(200)).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn process_identity() {
        let me = ProcId::of(std::process::id()).unwrap();
        assert!(me.alive());
        let other = ProcId {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!other.alive());
        assert!(have("sh") && !have("no-such-binary-here"));
    }
}
