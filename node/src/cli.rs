//! What the command-line binaries share.

/// Makes a closed stdout (`calicoctl-rs node routes | head -1`, `lab status | less` quit early)
/// end the process quietly with status 141 (128 + SIGPIPE), as a C tool killed by SIGPIPE would,
/// instead of a panic message and a backtrace.
///
/// Rust programs ignore SIGPIPE, so `print!` to a closed pipe panics with "failed printing to
/// stdout: Broken pipe". Restoring the signal's default action needs `unsafe`, which the
/// workspace forbids, so a panic hook recognises that one panic; every other panic goes to the
/// hook that was there before.
pub fn exit_quietly_on_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        previous(info)
    }));
}

/// Exit status after stdout was closed: what a shell reports for a process killed by SIGPIPE.
pub const BROKEN_PIPE_STATUS: i32 = 128 + 13;
