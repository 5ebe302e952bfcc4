//! The change-stream source's checks (`OUTBOX_SOURCE=change-stream`): the stream on the
//! documents' collection opens from the saved position, and that position is not about to
//! fall out of the server's history (the oplog). Read-only: the checkpoint is read, never
//! leased, so a running reader is not disturbed.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Check, human};
use crate::config::{EventSource, Settings};
use crate::db::Db;
use crate::outbox::stream::{ChangeStore, Checkpoint, History, PositionTime, StreamError};

const OPEN: &str = "stream.open";
const OPEN_TITLE: &str = "change stream";
const HISTORY: &str = "stream.history";
const HISTORY_TITLE: &str = "change-stream position";
/// How long the probe waits for a first batch: it needs the server's answer to the open, not
/// changes.
const PROBE_WAIT: Duration = Duration::from_millis(100);
/// The share of the history below which a position counts as close to falling out of it.
const CLOSE_SHARE: i32 = 4;

const RESYNC_FIX: &str = "stop the relay and run `handler outbox resync` (publishes every document as it is, then reads on from the present), or delete the checkpoint document to start from the present and accept the gap; then size the oplog above the longest time the relay may be stopped";

/// Runs the checks; both are skipped unless the source is the change stream.
pub(super) async fn checks(settings: &Settings) -> Vec<Check> {
    if settings.mongodb.source != EventSource::ChangeStream {
        let why = "not used: OUTBOX_SOURCE=outbox";
        return vec![
            Check::skip(OPEN, OPEN_TITLE, why),
            Check::skip(HISTORY, HISTORY_TITLE, why),
        ];
    }
    let db = Db::new(settings.mongodb.clone());
    // The target's rules decide the pipeline the stream is opened with, as the reader's.
    let opened = async {
        let target = crate::outbox::stream::target::resolve(&db).await?;
        Ok::<_, crate::db::DbError>(ChangeStore::new(
            &db.database().await?,
            &settings.mongodb,
            target,
        ))
    };
    let store = match opened.await {
        Ok(store) => store,
        Err(e) => return vec![failed(OPEN, OPEN_TITLE, &e), skipped_history()],
    };
    let checkpoint = match store.checkpoint().await {
        Ok(c) => c,
        Err(e) => return vec![failed(OPEN, OPEN_TITLE, &e), skipped_history()],
    };
    let open = open(&store, &checkpoint).await;
    let history = match store.history().await {
        Ok(history) => position(&checkpoint, history, Utc::now()),
        Err(e) => Check::skip(
            HISTORY,
            HISTORY_TITLE,
            format!(
                "the server's history (local.oplog.rs) cannot be read by this user ({}): how close the position is to falling out of it is unknown",
                crate::telemetry::chain(&e)
            ),
        ),
    };
    vec![open, history]
}

fn skipped_history() -> Check {
    Check::skip(
        HISTORY,
        HISTORY_TITLE,
        "skipped: the checkpoint cannot be read",
    )
}

fn failed(id: &'static str, title: &'static str, e: &(dyn std::error::Error + 'static)) -> Check {
    Check::fail(
        id,
        title,
        format!("the database failed: {}", crate::telemetry::chain(e)),
        "run the doctor again; if it persists, check the server's log",
    )
}

/// Opens the stream from the saved position, as the reader would, asks for one batch (a
/// server may accept the open and refuse the position only then) and closes it. What the
/// batch holds is dropped: the doctor publishes nothing and moves no position.
async fn open(store: &ChangeStore, checkpoint: &Checkpoint) -> Check {
    let target = format!("{}.{}", store.database(), store.collection());
    let opened = match store.open(checkpoint, PROBE_WAIT).await {
        Ok(mut stream) => store.next(&mut stream, checkpoint).await.map(drop),
        Err(e) => Err(e),
    };
    match opened {
        Ok(()) => Check::pass(
            OPEN,
            OPEN_TITLE,
            if checkpoint.is_set() {
                format!("opened on {target} from the saved position")
            } else {
                format!(
                    "opened on {target}; no position saved yet (the first reader starts at the present)"
                )
            },
        ),
        Err(StreamError::PositionLost(why)) => Check::fail(OPEN, OPEN_TITLE, why, RESYNC_FIX),
        Err(e) => Check::fail(
            OPEN,
            OPEN_TITLE,
            format!(
                "the server refused a change stream on {target}: {}",
                crate::telemetry::chain(&e)
            ),
            "use a replica set (or Atlas); on Azure DocumentDB (Cosmos DB vCore) turn on the ChangeStreams preview flag; on Cosmos DB for MongoDB RU use OUTBOX_SOURCE=outbox",
        ),
    }
}

/// The saved position against the server's history at `now`.
fn position(checkpoint: &Checkpoint, history: Option<History>, now: DateTime<Utc>) -> Check {
    let Some(position) = checkpoint.time() else {
        return Check::skip(
            HISTORY,
            HISTORY_TITLE,
            "no position saved yet: the first reader starts at the present",
        );
    };
    let Some(history) = history else {
        return Check::skip(
            HISTORY,
            HISTORY_TITLE,
            "the server keeps no oplog to compare with",
        );
    };
    let at = position.time();
    let when = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let span =
        |d: chrono::Duration| human(Duration::from_secs(d.num_seconds().max(0).unsigned_abs()));
    let saved = format!(
        "the saved position ({}{}, {} old)",
        match position {
            PositionTime::Exact(_) => "",
            PositionTime::AtLeast(_) => "at least ",
        },
        when(at),
        span(now - at)
    );
    let window = history.newest - history.oldest;
    let kept = format!(
        "the server's history reaches back to {} ({} of changes)",
        when(history.oldest),
        span(window)
    );
    let headroom = at - history.oldest;
    // Before the oldest entry: lost once the oplog has rolled over. (A replica set whose oplog
    // never rolled still opens a stream from there, but a saved position cannot predate the
    // replica set's first entry unless it came from elsewhere, e.g. a restored backup.)
    if headroom < chrono::Duration::zero() {
        return Check::fail(
            HISTORY,
            HISTORY_TITLE,
            format!(
                "{saved} is older than the oldest change the server keeps: {kept}; changes since then are lost to the stream"
            ),
            RESYNC_FIX,
        );
    }
    if headroom < window / CLOSE_SHARE {
        return Check::warn(
            HISTORY,
            HISTORY_TITLE,
            format!(
                "{saved} is close to falling out of history: {kept}, so at the present write rate it is lost in about {}",
                span(headroom)
            ),
            "get a reader running (handler serve, or the OutboxTimer function) so the position moves on; enlarge the oplog (replSetResizeOplog, or Atlas's oplog size and minimum retention window); if it is lost, run `handler outbox resync`",
        );
    }
    Check::pass(
        HISTORY,
        HISTORY_TITLE,
        format!("{saved} is {} inside {kept}", span(headroom)),
    )
}

#[cfg(test)]
mod tests {
    use mongodb::bson::Timestamp;

    use super::*;
    use crate::ops::doctor::Verdict;

    fn at(secs: u32) -> Checkpoint {
        Checkpoint {
            start_at: Some(Timestamp {
                time: secs,
                increment: 1,
            }),
            ..Checkpoint::default()
        }
    }

    fn history(oldest: i64, newest: i64) -> Option<History> {
        Some(History {
            oldest: DateTime::from_timestamp(oldest, 0).unwrap(),
            newest: DateTime::from_timestamp(newest, 0).unwrap(),
        })
    }

    #[test]
    fn a_position_is_judged_by_its_place_in_the_servers_history() {
        let now = DateTime::from_timestamp(10_000, 0).unwrap();
        let h = history(1_000, 10_000);
        assert_eq!(position(&at(9_000), h, now).verdict, Verdict::Pass);
        let close = position(&at(2_000), h, now);
        assert_eq!(close.verdict, Verdict::Warn, "{close:?}");
        assert!(close.detail.contains("lost in about 1000 s"), "{close:?}");
        let lost = position(&at(999), h, now);
        assert_eq!(lost.verdict, Verdict::Fail, "{lost:?}");
        assert!(lost.fix.unwrap().contains("resync"));
        assert_eq!(
            position(&Checkpoint::default(), h, now).verdict,
            Verdict::Skip
        );
        assert_eq!(position(&at(9_000), None, now).verdict, Verdict::Skip);
    }
}
