//! `handler outbox replay`: publish again the published events still retained in a time window,
//! through the relay's own publisher (same topic, credential, schema and
//! `EVENTGRID_MAX_EVENTS_PER_SEC` rate limit).
//!
//! Events keep their ids by default, so consumers that de-duplicate by id drop what they have
//! seen; `--new-ids` gives each a derived id and a `replayof` naming the original (`wire.rs`).
//!
//! **Resumable**: events go in id order, and after each request Event Grid accepts, the last id
//! is stored in a checkpoint keyed by the window and options (`<OUTBOX_COLLECTION>_replays`).
//! Ctrl-C lets the request in flight finish and records it, so running the same command again
//! sends nothing twice. Only a request whose outcome is unknown (the process killed during it,
//! a timeout) can be sent again, with the same ids — as the relay does.

mod wire;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use self::wire::derived_id;

use crate::config::Settings;
use crate::db::{Db, DbError};
use crate::domain::{EventId, OutboxEvent};
use crate::outbox::Storage;
use crate::outbox::store::{
    ReplayCheckpoint, ReplayCheckpoints, ReplayWindow, stored_time, window_time,
};
use crate::progress::Progress;
use crate::publisher::batch::{self, MAX_REQUEST_BYTES};
use crate::publisher::{Outcome, PublishFailure, Publisher, PublisherError, backoff};

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// Events written at or after this time.
    pub since: DateTime<Utc>,
    /// Events written before this time; `None`: up to when the replay first started.
    pub until: Option<DateTime<Utc>>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Count, send nothing.
    pub dry_run: bool,
    /// Derived ids and a `replayof` attribute, for consumers that must see the events again.
    pub new_ids: bool,
}

impl ReplayRequest {
    /// The checkpoint's key: one per window and options, so the same command resumes.
    fn key(&self) -> String {
        let t = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        format!(
            "since={} until={} subject={} type={} ids={}",
            t(self.since),
            self.until.map_or_else(|| "open".to_owned(), t),
            self.subject.as_deref().unwrap_or("*"),
            self.event_type.as_deref().unwrap_or("*"),
            if self.new_ids { "new" } else { "original" }
        )
    }
}

/// A window's bound as given on the command line: RFC 3339 with an offset. Absolute only, so
/// that running the same command again names the same window (and resumes it).
///
/// # Errors
/// When `s` is not RFC 3339.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}: give a time such as 2026-12-05T09:00:00Z"))
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    /// The window's start.
    pub since: DateTime<Utc>,
    /// The window's end.
    pub until: DateTime<Utc>,
    /// Events this run sent (with `dry_run`: would send).
    pub sent: u64,
    /// Requests this run sent.
    pub requests: u64,
    /// Events an earlier, interrupted run of the same replay had sent already.
    pub resumed_after: u64,
    /// Stopped by Ctrl-C before the end; run the same command again to resume.
    pub interrupted: bool,
    /// Nothing was sent: only counted.
    pub dry_run: bool,
    /// The same replay had finished before; nothing was sent.
    pub already_finished: bool,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The database failed.
    #[error("the database failed")]
    Db(#[from] DbError),
    /// The publisher could not be built.
    #[error("cannot build the publisher")]
    Publisher(#[from] PublisherError),
    /// Event Grid refused a request (or kept failing); what it accepted before is recorded.
    #[error(
        "Event Grid did not accept a request after {sent} events ({failure}); run the same command again to resume"
    )]
    Refused {
        /// Events sent before.
        sent: u64,
        /// What Event Grid said.
        failure: PublishFailure,
    },
    /// `OUTBOX_RETENTION_HOURS=0`: entries are deleted once published, so none is left to send.
    #[error(
        "OUTBOX_RETENTION_HOURS=0 deletes entries once they are published: there is nothing to replay (set it above zero to keep published events for replay)"
    )]
    NothingKept,
}

/// Runs the replay until done, refused or `interrupt`ed (checked between requests).
///
/// # Errors
/// When published entries are not kept, the database fails, the publisher cannot be built, or
/// Event Grid refuses a request.
pub async fn run(
    settings: &Settings,
    request: &ReplayRequest,
    interrupt: &CancellationToken,
    progress: &dyn Progress,
) -> Result<ReplaySummary, ReplayError> {
    if !settings.mongodb.keeps_published() {
        return Err(ReplayError::NothingKept);
    }
    let db = Db::new(settings.mongodb.clone());
    let database = db.database().await?;
    let ready = Storage::new(db).ready().await?;
    let checkpoints = ReplayCheckpoints::new(
        &database,
        &format!("{}_replays", settings.mongodb.outbox_collection),
    );
    let key = request.key();
    let mut checkpoint = match checkpoints.load(&key).await? {
        Some(c) => c,
        None => ReplayCheckpoint {
            key,
            until: stored_time(request.until.unwrap_or_else(Utc::now)),
            after: None,
            replayed: 0,
            finished_at: None,
        },
    };
    let window = ReplayWindow {
        since: request.since,
        until: window_time(checkpoint.until),
        subject: request.subject.clone(),
        event_type: request.event_type.clone(),
    };
    let mut summary = ReplaySummary {
        since: window.since,
        until: window.until,
        sent: 0,
        requests: 0,
        resumed_after: u64::try_from(checkpoint.replayed).unwrap_or(0),
        interrupted: false,
        dry_run: request.dry_run,
        already_finished: checkpoint.finished_at.is_some(),
    };
    if summary.already_finished {
        return Ok(summary);
    }
    let remaining = ready
        .store
        .count_published(&window, checkpoint.after_id().as_ref())
        .await?;
    if request.dry_run {
        summary.sent = remaining;
        return Ok(summary);
    }
    progress.start(remaining);
    let sender = Sender {
        publisher: Publisher::new(&settings.eventgrid)?,
        settings,
        new_ids: request.new_ids.then(|| checkpoint.key.clone()),
    };
    let page = settings.relay.batch_size.get();
    let store = &ready.store;
    loop {
        let events = store
            .published_page(&window, checkpoint.after_id().as_ref(), page)
            .await?;
        if events.is_empty() {
            break;
        }
        let done = sender
            .send_page(
                &events,
                &mut checkpoint,
                &checkpoints,
                &mut summary,
                interrupt,
                progress,
            )
            .await?;
        if !done {
            summary.interrupted = true;
            return Ok(summary);
        }
    }
    checkpoint.finished_at = Some(mongodb::bson::DateTime::now());
    checkpoints.save(&checkpoint).await?;
    Ok(summary)
}

/// Sends pages of events as requests, recording each accepted one.
struct Sender<'a> {
    publisher: Publisher,
    settings: &'a Settings,
    /// With `--new-ids`: the replay's key, from which the new ids are derived.
    new_ids: Option<String>,
}

impl Sender<'_> {
    /// Sends `events` (one page, in id order) in requests within Event Grid's limits. Returns
    /// `false` when interrupted before the end of the page.
    async fn send_page(
        &self,
        events: &[OutboxEvent],
        checkpoint: &mut ReplayCheckpoint,
        checkpoints: &ReplayCheckpoints,
        summary: &mut ReplaySummary,
        interrupt: &CancellationToken,
        progress: &dyn Progress,
    ) -> Result<bool, ReplayError> {
        let rendered: Vec<Vec<u8>> = events.iter().map(|e| self.render(e)).collect();
        let sizes: Vec<usize> = rendered.iter().map(Vec::len).collect();
        let max_events = usize::try_from(self.settings.relay.batch_size.get()).unwrap_or(1);
        for range in batch::pack(&sizes, MAX_REQUEST_BYTES, max_events) {
            if interrupt.is_cancelled() {
                return Ok(false);
            }
            let n = range.len();
            let body = batch::body(rendered[range.clone()].iter().map(Vec::as_slice));
            self.send(body, n, summary.sent).await?;
            let last: &EventId = &events[range.end - 1].id;
            checkpoint.advance(last, n as u64);
            checkpoints.save(checkpoint).await?;
            summary.sent += n as u64;
            summary.requests += 1;
            progress.advance(n as u64);
        }
        Ok(true)
    }

    fn render(&self, event: &OutboxEvent) -> Vec<u8> {
        let json = self.publisher.render(event);
        match &self.new_ids {
            None => json,
            Some(key) => wire::with_new_id(&json, &event.id, key, self.settings.eventgrid.schema),
        }
    }

    /// One request, with the publisher's quick retries for transient failures.
    async fn send(&self, body: Vec<u8>, events: usize, sent: u64) -> Result<(), ReplayError> {
        let mut retry = 0;
        loop {
            match self.publisher.send(body.clone(), events).await {
                Outcome::Published => return Ok(()),
                Outcome::Retry {
                    retry_after,
                    failure,
                } if retry < self.publisher.retries() => {
                    retry += 1;
                    tracing::warn!(error = %failure, retry, "Replay request failed; retrying");
                    let wait = backoff::quick_retry_delay(retry, rand::random(), retry_after);
                    tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                }
                Outcome::Retry { failure, .. }
                | Outcome::Rejected { failure }
                | Outcome::Halt { failure } => {
                    return Err(ReplayError::Refused { sent, failure });
                }
            }
        }
    }
}

/// The summary for a terminal.
#[must_use]
pub fn render_summary(s: &ReplaySummary) -> String {
    let t = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let window = format!("{} – {}", t(s.since), t(s.until));
    if s.already_finished {
        return format!(
            "this replay of {window} finished before ({} events); nothing sent. To send them again, change the window (e.g. --until)\n",
            s.resumed_after
        );
    }
    if s.dry_run {
        return format!("dry run: {} events of {window} would be replayed\n", s.sent);
    }
    let resumed = if s.resumed_after > 0 {
        format!(" (resumed after {} sent earlier)", s.resumed_after)
    } else {
        String::new()
    };
    let mut out = format!(
        "replayed {} events of {window} in {} requests{resumed}\n",
        s.sent, s.requests
    );
    if s.interrupted {
        out.push_str(
            "interrupted: run the same command again to resume; nothing accepted is sent twice\n",
        );
    }
    out
}
