//! Running commands and owning background processes.
//!
//! Two shapes of process:
//! - [`run`]: a short command whose stdout we want. It always has a deadline ([`DEFAULT_TIMEOUT`] unless
//!   given), because a peer that is SIGSTOPped or wedged would otherwise hang the test forever (e.g.
//!   `birdc` connects to a stopped BIRD and waits for its greeting). The error names the command, the exit
//!   status and stderr, so a failed assertion says what the kernel or tool said.
//! - [`Proc`]: a long-running process (BIRD, gobgpd, iperf3...) with stdout and stderr appended to one log
//!   file. It is SIGKILLed and reaped when the handle drops, unless the lab is kept (`CRS_KEEP_LAB=1`).
//!
//! Processes run inside a namespace through `ip netns exec NS CMD`: `ip` enters the namespace and then
//! `exec`s CMD, so the pid we hold *is* the command's pid and signals reach it directly. (A `pre_exec`
//! setns would need `unsafe`, which the workspace forbids.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Deadline for [`run`] when the caller does not give one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `argv` to completion within `timeout`; returns its stdout.
///
/// Errors (with the full command line) when it cannot start, exits non-zero (stderr included) or overruns
/// the deadline (then it is SIGKILLed).
pub fn run(argv: &[&str], timeout: Duration) -> Result<String> {
    let out = run_output(argv, None, timeout)?;
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

/// Like [`run`] but feeds `stdin` to the command.
pub fn run_stdin(argv: &[&str], stdin: &[u8], timeout: Duration) -> Result<String> {
    let out = run_output(argv, Some(stdin), timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `argv` within `timeout` and return its raw output whatever the exit status (the lab's
/// runner: SIGKILLed at the deadline, stdin written from a thread of its own).
pub fn run_output(
    argv: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<std::process::Output> {
    calico_node::lab::sys::output(argv, stdin, timeout)
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
        let (prog, args) = argv.split_first().context("empty command")?;
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
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
