//! Processes by pid: liveness through `/proc`, signals through `kill(1)`.
//!
//! `unsafe_code` is forbidden, so signals are sent by spawning `kill -s SIG PID` rather than
//! calling `libc::kill`. A process is only ever addressed by its own pid, and before a signal is
//! sent the pid is checked to still be *our* `mongod` (its command line names our data
//! directory), so a recycled pid is never signalled.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A signal we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Graceful shutdown (mongod flushes and exits cleanly).
    Term,
    /// Immediate death (a crash, as far as the data files can tell).
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Term => "TERM",
            Self::Kill => "KILL",
        }
    }
}

/// Whether `pid` names a live process. A zombie (`Z`) or dead (`X`) process counts as gone: it
/// holds no port, no files and no locks, it just has not been reaped by its parent yet.
pub(crate) fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_state(&stat).is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x')),
        Err(_) => false,
    }
}

/// The state letter from the contents of `/proc/PID/stat`: `PID (COMM) STATE ...`. `COMM` may
/// itself contain spaces and parentheses, so the state is found after the *last* `)`.
fn parse_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// The command line (argv) of `pid`, or `None` if it cannot be read (gone, or a kernel thread).
pub(crate) fn cmdline(pid: u32) -> Option<Vec<OsString>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args = parse_cmdline(&raw);
    (!args.is_empty()).then_some(args)
}

fn parse_cmdline(raw: &[u8]) -> Vec<OsString> {
    raw.split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| OsString::from_vec(arg.to_vec()))
        .collect()
}

/// Whether `pid` is a live `mongod` whose `--dbpath` is `dbpath`.
pub(crate) fn is_our_mongod(pid: u32, dbpath: &Path) -> bool {
    is_running(pid)
        && cmdline(pid).is_some_and(|args| {
            args.windows(2)
                .any(|pair| pair[0] == "--dbpath" && Path::new(&pair[1]) == dbpath)
        })
}

/// Sends `signal` to `pid` with `kill(1)`. A process that is already gone is not an error.
pub(crate) async fn send(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("kill")
        .args(["-s", signal.name(), &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("cannot run kill(1) (procps) to signal mongod")?;
    if !output.status.success() && is_running(pid) {
        bail!(
            "`kill -s {} {pid}` failed ({}): {}",
            signal.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Blocking, best-effort [`send`], for `Drop` and other places that cannot await: errors are
/// logged, not returned.
pub(crate) fn send_now(pid: u32, signal: Signal) {
    let result = std::process::Command::new("kill")
        .args(["-s", signal.name(), &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Err(err) = result {
        tracing::warn!(error = %err, "Cannot run kill(1) for mongod pid {pid}");
    }
}

/// Waits until `gone()` holds, polling, for at most `timeout`. Returns whether it held.
pub(crate) async fn wait_until(timeout: Duration, mut gone: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if gone() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_read_after_the_last_parenthesis() {
        assert_eq!(parse_state("42 (mongod) S 1 42 42 0"), Some('S'));
        assert_eq!(parse_state("42 (we (ird) name) Z 1 42"), Some('Z'));
        assert_eq!(parse_state("garbage"), None);
    }

    #[test]
    fn cmdline_splits_on_nul() {
        let args = parse_cmdline(b"mongod\0--dbpath\0/a b/data\0");
        assert_eq!(args, ["mongod", "--dbpath", "/a b/data"]);
    }

    #[test]
    fn this_process_is_running_and_is_not_a_mongod() {
        let me = std::process::id();
        assert!(is_running(me));
        assert!(!is_our_mongod(me, Path::new("/nowhere")));
        assert!(!is_running(u32::MAX));
    }
}
