//! The change stream read ahead by a task of its own, so that a batch may stop lingering at any
//! moment without dropping a read half done.
//!
//! Why a task: a read cut short by a timeout drops the driver's `next_if_any` future. Dropped
//! while the driver resumes the stream after a lost connection (it takes the stream's resume
//! data out, then re-runs the `aggregate`), the stream is left on its dead cursor with no resume
//! data, and every later read answers "nothing yet" — forever, without an error. Seen as a
//! reader that went quiet after a `mongod` restart. Here only the task reads, always to the
//! end; the reader waits on a channel, which a timeout may cut at any point.
//!
//! Each item carries the stream's position right after it, so the position the reader saves is
//! the one after the last change it gathered, never one the task has read ahead to.

use std::time::Duration;

use mongodb::change_stream::event::ResumeToken;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::outbox::stream::{ChangeStore, Changes, Checkpoint, Read, StreamError};

/// Reads the task may run ahead of the reader (one server batch is buffered by the driver
/// besides).
const READ_AHEAD: usize = 256;

/// One read of the stream.
struct Item {
    read: Result<Option<Read>, StreamError>,
    /// The stream's position after this read.
    position: Option<ResumeToken>,
    /// How long the read took (an empty page that came back at once is a throttled stream).
    took: Duration,
}

/// A change stream being read by its own task.
pub(super) struct ChangeFeed {
    items: mpsc::Receiver<Item>,
    position: Option<ResumeToken>,
    task: JoinHandle<()>,
}

/// What [`ChangeFeed::next`] got.
pub(super) struct Next {
    /// The change, `None` when nothing came within the stream's wait.
    pub(super) read: Option<Read>,
    /// How long the read took.
    pub(super) took: Duration,
}

impl ChangeFeed {
    /// Starts reading the opened stream `changes`; `from` is where it was opened (named in
    /// errors).
    pub(super) fn start(store: ChangeStore, mut changes: Changes, from: Checkpoint) -> Self {
        let position = changes.position();
        let (tx, items) = mpsc::channel(READ_AHEAD);
        let task = tokio::spawn(async move {
            loop {
                let asked = Instant::now();
                let read = store.next(&mut changes, &from).await;
                let failed = read.is_err();
                let item = Item {
                    read,
                    position: changes.position(),
                    took: asked.elapsed(),
                };
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Self {
            items,
            position,
            task,
        }
    }

    /// The next read. Cancel-safe: a read not taken stays for the next call.
    ///
    /// # Errors
    /// The stream's error; the feed is finished then (open the stream again), and its
    /// [`ChangeFeed::position`] is after every change taken before the error.
    pub(super) async fn next(&mut self) -> Result<Next, StreamError> {
        let Some(item) = self.items.recv().await else {
            // Only a panic ends the task before its stream errs; its message is logged.
            return Err(StreamError::Db(crate::db::DbError::Other(
                mongodb::error::Error::custom("the change stream's reading task panicked"),
            )));
        };
        // An error's position counts too: every change before it was taken (on Cosmos DB RU
        // it ends the page being read).
        self.position = item.position;
        Ok(Next {
            read: item.read?,
            took: item.took,
        })
    }

    /// The position after the last read taken from the feed (before any read, where the
    /// stream was opened).
    pub(super) fn position(&self) -> Option<ResumeToken> {
        self.position.clone()
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}
