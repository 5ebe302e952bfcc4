//! The replay on a terminal: a progress bar (drawn only when stderr is a terminal) and Ctrl-C.

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::Progress;

/// A progress bar on stderr; invisible when stderr is not a terminal.
#[derive(Debug)]
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar that appears on [`Progress::start`].
    #[must_use]
    pub fn new() -> Self {
        Self(ProgressBar::hidden())
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.0.set_length(total);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
        {
            self.0.set_style(style);
        }
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Cancels `interrupt` on the first Ctrl-C (SIGINT), so the replay stops after the
/// request in flight and records it; a second signal exits at once.
pub fn watch_interrupts(interrupt: CancellationToken) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("stopping after the request in flight (Ctrl-C again to stop at once)");
        interrupt.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}
