//! Progress of a long operator command (`replay`, `resync`), told by the core and shown by the
//! adapter: `ops::terminal::Bar` draws it on a terminal; tests and scripts pass [`Quiet`].

/// Told how far a long command is.
pub trait Progress {
    /// The number of items to go is known (an estimate where the server only estimates).
    fn start(&self, total: u64);
    /// `n` more were done.
    fn advance(&self, n: u64);
}

/// Progress nobody watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _total: u64) {}
    fn advance(&self, _n: u64) {}
}
