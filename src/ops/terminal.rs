//! Long operator commands (`replay`, `resync`) on a terminal: a progress bar (drawn only when
//! stderr is a terminal) and Ctrl-C.

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;

/// A progress bar on stderr; invisible when stderr is not a terminal.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
    /// What is counted ("events", "documents").
    unit: &'static str,
}

impl Bar {
    /// A bar counting `unit`s that appears on [`Progress::start`].
    #[must_use]
    pub fn new(unit: &'static str) -> Self {
        Self {
            bar: ProgressBar::hidden(),
            unit,
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.bar
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.bar.set_length(total);
        let template = format!(
            "{{bar:40}} {{pos}}/{{len}} {}  {{per_sec}}  eta {{eta}}",
            self.unit
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style);
        }
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Cancels `interrupt` on the first Ctrl-C (SIGINT), so the command stops after the
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
