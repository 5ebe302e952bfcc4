//! What a receiver remembers: accepted events, request records, counters, faults.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::{Keep, ReceiverConfig};
use crate::faults::Faults;
use crate::schema::ValidEvent;

/// One accepted event, as [`crate::ReceiverHandle::events`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordedEvent {
    /// [`RequestRecord::seq`] of the request that carried the event.
    pub request: u64,
    /// The event's `id`.
    pub id: String,
    /// The event's `subject`; empty for a CloudEvent without one (an empty subject is
    /// never accepted, so this is unambiguous).
    pub subject: String,
    /// `eventType` (Event Grid schema) or `type` (CloudEvents).
    pub event_type: String,
    /// The event's JSON exactly as received, made compact if it was not (whitespace
    /// outside strings removed); nothing else is changed.
    pub raw: String,
}

impl RecordedEvent {
    /// Parses [`Self::raw`] into a JSON value.
    ///
    /// # Errors
    ///
    /// Never in practice: the receiver only records valid JSON.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.raw)
    }
}

/// How a request to the publish endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// `200`: every event was recorded.
    Accepted,
    /// Every event was recorded, then the connection was closed without a response
    /// (`drop_after_accept`).
    AcceptedThenDropped,
    /// Refused by the contract or `reject_ids` (or answered `500` because the record
    /// file could not be written); nothing was recorded.
    Refused,
    /// Failed by a `fail` rule before validation; nothing was recorded.
    Injected,
}

/// One request that reached the receiver (outside the control API), for tests that
/// check batching. Kept unless [`Keep::None`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestRecord {
    /// 1-based position among recorded requests, in the order they were decided.
    pub seq: u64,
    /// The status decided (`200` also for [`RequestOutcome::AcceptedThenDropped`],
    /// although none was sent).
    pub status: u16,
    /// How the request ended.
    pub outcome: RequestOutcome,
    /// Number of events in the body, if the body was read and is a JSON array (also for
    /// refused and injected requests).
    pub event_count: Option<usize>,
    /// Body bytes read (for a 413 on `Content-Length`, the declared length, unread).
    pub body_bytes: u64,
    /// `error.details[0].code` of the error answer, if any.
    pub detail_code: Option<String>,
    /// The `x-ms-request-id` sent (or that would have been sent).
    pub request_id: String,
    /// When the request was decided (its events recorded, for an accepted one), in
    /// milliseconds since the Unix epoch: what latency and rate measurements read.
    pub decided_at_ms: u64,
}

/// Counters since start or the last reset, as [`crate::ReceiverHandle::stats`] and
/// `GET /_receiver/stats` return them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Requests outside the control API (any path or method).
    pub requests: u64,
    /// Responses sent, by status (`{"200": 3, "503": 2}` in JSON). Dropped responses are
    /// not in here: see `dropped_responses`.
    pub requests_by_status: BTreeMap<u16, u64>,
    /// Requests whose events were recorded (including dropped responses).
    pub accepted_requests: u64,
    /// Requests refused by the contract or `reject_ids`.
    pub refused_requests: u64,
    /// Requests failed by a `fail` rule.
    pub injected_failures: u64,
    /// Accepted requests answered by closing the connection (`drop_after_accept`).
    pub dropped_responses: u64,
    /// Events recorded, duplicates included.
    pub accepted_events: u64,
    /// Distinct event ids recorded.
    pub distinct_ids: u64,
    /// Deliveries of an id already seen (`accepted_events - distinct_ids`).
    pub duplicate_deliveries: u64,
    /// Distinct ids delivered more than once.
    pub duplicate_ids: u64,
}

/// An accepted event as stored: shares the request body's buffer when it was compact.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub(crate) request: u64,
    pub(crate) id: Box<str>,
    pub(crate) subject: Option<Box<str>>,
    pub(crate) event_type: Box<str>,
    pub(crate) raw: Bytes,
}

impl StoredEvent {
    fn to_public(&self) -> RecordedEvent {
        RecordedEvent {
            request: self.request,
            id: self.id.to_string(),
            subject: self.subject.as_deref().unwrap_or_default().to_owned(),
            event_type: self.event_type.to_string(),
            raw: String::from_utf8_lossy(&self.raw).into_owned(),
        }
    }
}

/// Recorded data, behind one mutex so that events, counters and the record file always
/// agree (a request is recorded whole or not at all).
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub(crate) events: Vec<StoredEvent>,
    /// Ids in arrival order, only for [`Keep::Ids`] (for [`Keep::All`] they are in
    /// `events`).
    pub(crate) ids: Vec<Box<str>>,
    pub(crate) requests: Vec<RequestRecord>,
    /// Deliveries per id, for the distinct/duplicate counters.
    seen: HashMap<Box<str>, u32>,
    pub(crate) stats: Stats,
    next_seq: u64,
}

/// A request's fate, to be recorded.
#[derive(Debug)]
pub(crate) struct Decided {
    pub(crate) status: u16,
    pub(crate) outcome: RequestOutcome,
    pub(crate) event_count: Option<usize>,
    pub(crate) body_bytes: u64,
    pub(crate) detail_code: Option<&'static str>,
    pub(crate) request_id: String,
}

/// Everything the server task, the connections and the handles share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ReceiverConfig,
    pub(crate) local_addr: SocketAddr,
    pub(crate) recorded: Mutex<Recorded>,
    pub(crate) faults: Mutex<Faults>,
    /// The JSONL record file, if configured. Written under the `recorded` lock.
    record_file: Option<Mutex<File>>,
    /// Accepted events so far, for handles waiting on deliveries.
    pub(crate) accepted_events: watch::Sender<u64>,
    /// Set to `true` once: stop accepting, shut connections down, cut latency short.
    pub(crate) shutdown: watch::Sender<bool>,
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the data consistent
/// before anything that could panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(
        config: ReceiverConfig,
        local_addr: SocketAddr,
        record_file: Option<File>,
    ) -> Self {
        Self {
            config,
            local_addr,
            recorded: Mutex::new(Recorded::default()),
            faults: Mutex::new(Faults::default()),
            record_file: record_file.map(Mutex::new),
            accepted_events: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
        }
    }

    /// Records a request that was not accepted.
    pub(crate) fn record_request(&self, decided: &Decided) {
        let mut recorded = lock(&self.recorded);
        recorded.push_request(decided, self.config.keep, true);
    }

    /// Records an accepted request and its events: appends them to the record file
    /// (one flush), then to memory. All or nothing.
    ///
    /// # Errors
    ///
    /// Writing the record file failed; nothing was recorded in memory.
    pub(crate) fn record_accepted(
        &self,
        decided: &Decided,
        body: &Bytes,
        events: &[ValidEvent<'_>],
    ) -> Result<(), std::io::Error> {
        let lines = self.record_file.as_ref().map(|_| {
            let mut lines = Vec::with_capacity(events.iter().map(|e| e.json.len() + 1).sum());
            for event in events {
                lines.extend_from_slice(event.json.as_bytes());
                lines.push(b'\n');
            }
            lines
        });
        let keep = self.config.keep;
        let response_sent = decided.outcome == RequestOutcome::Accepted;
        let mut recorded = lock(&self.recorded);
        // The file is written under the `recorded` lock so that its order is the order in
        // memory, and before memory so that a failed write leaves nothing recorded.
        if let (Some(file), Some(lines)) = (&self.record_file, lines) {
            let mut file = lock(file);
            file.write_all(&lines)?;
            file.flush()?;
        }
        let seq = recorded.push_request(decided, keep, response_sent);
        recorded.stats.accepted_requests += 1;
        for event in events {
            let count = recorded
                .seen
                .entry(Box::from(event.id.as_ref()))
                .or_insert(0);
            *count += 1;
            let count = *count;
            recorded.stats.accepted_events += 1;
            match count {
                1 => recorded.stats.distinct_ids += 1,
                2 => {
                    recorded.stats.duplicate_ids += 1;
                    recorded.stats.duplicate_deliveries += 1;
                }
                _ => recorded.stats.duplicate_deliveries += 1,
            }
            match keep {
                Keep::All => {
                    let raw = match &event.json {
                        std::borrow::Cow::Borrowed(s) => body.slice_ref(s.as_bytes()),
                        std::borrow::Cow::Owned(s) => Bytes::copy_from_slice(s.as_bytes()),
                    };
                    recorded.events.push(StoredEvent {
                        request: seq,
                        id: Box::from(event.id.as_ref()),
                        subject: event.subject.as_deref().map(Box::from),
                        event_type: Box::from(event.event_type.as_ref()),
                        raw,
                    });
                }
                Keep::Ids => recorded.ids.push(Box::from(event.id.as_ref())),
                Keep::None => {}
            }
        }
        let total = recorded.stats.accepted_events;
        drop(recorded);
        self.accepted_events.send_replace(total);
        Ok(())
    }

    pub(crate) fn events(&self, since: usize) -> Vec<RecordedEvent> {
        let recorded = lock(&self.recorded);
        recorded
            .events
            .iter()
            .skip(since)
            .map(StoredEvent::to_public)
            .collect()
    }

    /// The recorded events' JSON as one JSON array, from the `since`-th on.
    pub(crate) fn events_json(&self, since: usize) -> Vec<u8> {
        let recorded = lock(&self.recorded);
        let events = recorded.events.get(since..).unwrap_or_default();
        let mut out = Vec::with_capacity(2 + events.iter().map(|e| e.raw.len() + 1).sum::<usize>());
        out.push(b'[');
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&event.raw);
        }
        out.push(b']');
        out
    }

    pub(crate) fn accepted_ids(&self, since: usize) -> Vec<String> {
        let recorded = lock(&self.recorded);
        match self.config.keep {
            Keep::All => recorded
                .events
                .iter()
                .skip(since)
                .map(|e| e.id.to_string())
                .collect(),
            Keep::Ids => recorded
                .ids
                .iter()
                .skip(since)
                .map(ToString::to_string)
                .collect(),
            Keep::None => Vec::new(),
        }
    }

    pub(crate) fn requests(&self, since: usize) -> Vec<RequestRecord> {
        let recorded = lock(&self.recorded);
        recorded.requests.get(since..).unwrap_or_default().to_vec()
    }

    pub(crate) fn stats(&self) -> Stats {
        lock(&self.recorded).stats.clone()
    }

    pub(crate) fn reset(&self) {
        *lock(&self.recorded) = Recorded::default();
        self.accepted_events.send_replace(0);
    }
}

impl Recorded {
    fn push_request(&mut self, decided: &Decided, keep: Keep, response_sent: bool) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        let stats = &mut self.stats;
        stats.requests += 1;
        if response_sent {
            *stats.requests_by_status.entry(decided.status).or_insert(0) += 1;
        }
        match decided.outcome {
            RequestOutcome::Accepted => {}
            RequestOutcome::AcceptedThenDropped => stats.dropped_responses += 1,
            RequestOutcome::Refused => stats.refused_requests += 1,
            RequestOutcome::Injected => stats.injected_failures += 1,
        }
        if keep != Keep::None {
            self.requests.push(RequestRecord {
                seq,
                status: decided.status,
                outcome: decided.outcome,
                event_count: decided.event_count,
                body_bytes: decided.body_bytes,
                detail_code: decided.detail_code.map(str::to_owned),
                request_id: decided.request_id.clone(),
                decided_at_ms: now_ms(),
            });
        }
        seq
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
