//! Logging: one subscriber, errors to stderr, everything else to stdout.
//!
//! The Functions host files every stderr line as an Error (or a Warning when it contains
//! "warn") and every stdout line as Information, so only `error` events go to stderr.

use std::fmt::Write as _;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Serving: errors to stderr, the rest to stdout (what the Functions host expects).
    Split,
    /// Operator commands: everything to stderr, so stdout carries only the command's output.
    Stderr,
}

/// Installs the global subscriber with the `RUST_LOG`-style `filter`.
///
/// A bad filter falls back to `info` and says so, rather than running without logs.
pub fn init(filter: &str, output: Output) {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let max_to_stderr = match output {
        Output::Split => Level::ERROR,
        Output::Stderr => Level::TRACE,
    };
    let writer = (|| Lossy(std::io::stderr()))
        .with_max_level(max_to_stderr)
        .or_else(|| Lossy(std::io::stdout()));
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    if let Some(e) = bad {
        tracing::warn!(error = %e, "RUST_LOG is not a valid filter; logging at info");
    }
}

/// A log destination whose failures are dropped. When stdout and stderr are both a pipe whose
/// reader is gone (`make run … | tee` after Ctrl-C), a failed write would make
/// `tracing-subscriber` report it with `eprintln!`, which panics on the same broken pipe —
/// inside whatever task was logging, such as the one that turns SIGTERM into a shutdown. A lost
/// log line is better than a process that can no longer stop.
struct Lossy<W>(W);

impl<W: std::io::Write> std::io::Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// An error and its causes on one line: `outer: cause: root cause`.
#[must_use]
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source's text; say it once.
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_show_every_cause() {
        let e = Outer(std::io::Error::other("root"));
        assert_eq!(super::chain(&e), "outer: root");
    }
}
