//! A local, Event Grid-compatible receiver for a custom topic, strict about the publish
//! contract (`shared/docs/event-grid-publish.md`) and able to inject faults.
//!
//! It serves `POST {path}?api-version=2018-01-01` over plain HTTP/1.1 and answers the
//! way Event Grid does: `200` with an empty body when every event was accepted, or an
//! error status with Event Grid's error body (without a `Content-Type`, as Azure sends
//! it) and nothing recorded. Every answer carries a fresh `x-ms-request-id`.
//!
//! # Module map
//!
//! - [`config`]: [`ReceiverConfig`], [`Schema`], [`Keep`].
//! - `contract`: the request-level rules (path, method, `api-version`, credentials,
//!   content headers, sizes, the body array) as pure functions.
//! - `schema`: the event-level rules of the Event Grid and CloudEvents schemas, parsed
//!   in one pass with borrowed strings and payloads left unparsed.
//! - [`faults`]: [`Fault`], [`FailRule`] and the pending-fault state.
//! - `state`: recorded events, request records, counters ([`Stats`]), the JSONL file.
//! - `server`: the accept loop, connections and the publish endpoint (hyper, directly).
//! - `control`: the HTTP control API under `/_receiver/`.
//! - `wire`: a leaf shared by the others: the response body type, the size limits, a
//!   rejection and Event Grid's error body, compact JSON.
//!
//! Imports between these modules form no circle (`devstack/tests/import_circles.rs`
//! checks it).
//!
//! # Checks, in order
//!
//! 1. Path not the configured one → `404`; a method other than `POST` → `405` with
//!    `Allow: POST`.
//! 2. The query lacks `api-version=2018-01-01` (exactly once; other parameters are
//!    fine) → `400`.
//! 3. Neither `aeg-sas-key: <key>` nor `Authorization: Bearer <token>` (when a token is
//!    configured) matches → `401`. Compared in constant time.
//! 4. `Content-Type` not `application/json` (Event Grid schema) or
//!    `application/cloudevents-batch+json` (CloudEvents), parameters allowed but a
//!    `charset` must be `utf-8` → `415`; a `Content-Encoding` other than `identity`, or
//!    a `Transfer-Encoding` other than `chunked` → `415`; any `Expect` header → `400`.
//! 5. A `Content-Length` over 1,048,576 → `413` before reading; a chunked body is
//!    counted while read and refused (`413`) as soon as it passes the limit.
//! 6. Not UTF-8, a BOM, not a JSON array → `400`; no events → `400`; more than 5,000 →
//!    `413`.
//! 7. Each event: an event over 1,048,576 bytes of compact JSON → `413`; otherwise the
//!    schema's rules → `400` naming the event's index and the property. Event Grid
//!    schema: exactly `id`, `subject`, `eventType`, `eventTime`, `dataVersion`, `data`;
//!    the four strings non-empty, `eventTime` RFC 3339 with an explicit offset (upper
//!    case `T`/`Z`), `data` an object; no `topic`, `metadataVersion` or other property,
//!    no property twice. CloudEvents: `specversion` `"1.0"`, non-empty `id`, `source`
//!    (a URI reference), `type`; optional `time` (RFC 3339), `subject`,
//!    `datacontenttype` (a media type), `dataschema` (an absolute URI); `data` or
//!    `data_base64` (valid base64), not both; extension names of lower-case ASCII
//!    letters and digits with string, 32-bit integer or boolean values; `null` is not a
//!    value for any attribute.
//! 8. `reject_ids` matches an event id → `400` (`InputJsonInvalid`, naming the index).
//!
//! A request is all-or-nothing: only a request that passes every check is recorded,
//! whole. Bodies of refused requests are still read (up to the limit) so the keep-alive
//! connection stays usable; when a body is left unread (`413`, `Expect`) the answer
//! carries `Connection: close`.
//!
//! # Faults
//!
//! Faults apply to requests outside the control API, in this order: a queued `fail`
//! rule (only for requests to the publish path) answers its status before any
//! validation; latency delays the answer of any request (after the decision, and after
//! recording if accepted); `drop_after_accept` closes the connection of an accepted
//! (already recorded) request without a response byte; `reject_ids` refuses requests
//! with a matching id. See [`ReceiverHandle::push_fault`].
//!
//! # Control API (same port)
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /_receiver/events[?since=K]` | `200`, the recorded events as a JSON array of the events themselves (their raw JSON), skipping the first `K`; `[]` unless keep is `all` |
//! | `GET /_receiver/ids[?since=K]` | `200`, accepted ids in arrival order, duplicates included: `["a","b"]`; `[]` if keep is `none` |
//! | `GET /_receiver/requests[?since=K]` | `200`, [`RequestRecord`]s: `[{"seq":1,"status":200,"outcome":"accepted","event_count":2,"body_bytes":312,"detail_code":null,"request_id":"…"}]`; outcomes `accepted`, `accepted_then_dropped`, `refused`, `injected` |
//! | `GET /_receiver/stats` | `200`, [`Stats`]: `{"requests":3,"requests_by_status":{"200":2,"503":1},"accepted_requests":2,"refused_requests":0,"injected_failures":1,"dropped_responses":0,"accepted_events":10,"distinct_ids":9,"duplicate_deliveries":1,"duplicate_ids":1}` |
//! | `GET /_receiver/faults` | `200`, pending faults: `{"fail":[{"count":1,"status":503,"retry_after":"1"}],"latency":{"ms":200,"count":null},"drop_after_accept":0,"reject_ids":"^poison-"}` |
//! | `POST /_receiver/faults` | one rule per request (below); `200` with the pending faults, or `400` |
//! | `DELETE /_receiver/faults` | `204`, every fault cleared |
//! | `DELETE /_receiver/events` | `204`, events, request records and counters reset |
//!
//! Fault rules for `POST /_receiver/faults`:
//!
//! - `{"fail":{"count":2,"status":503,"retry_after":"1","retry_after_ms":1000}}`: fail
//!   the next `count` (default 1) publish requests with `status`; `retry_after` (sent
//!   verbatim as `Retry-After`, e.g. `"2"` or an HTTP date) and `retry_after_ms` are
//!   optional. Rules queue in order.
//! - `{"latency_ms":200}`: delay every answer by 200 ms (`0` still counts as set; clear
//!   with `DELETE`); `{"latency":{"ms":200,"count":3}}`: only the next 3.
//! - `{"drop_after_accept":{"count":1}}`: accept the next `count` (default 1) valid
//!   requests, then close the connection without a response.
//! - `{"reject_ids":"^poison-"}`: refuse (400) any request with an event id matching this
//!   regex (`regex-lite` syntax); `{"reject_ids":null}` removes it.
//! - `{"fail_rate":{"rate":0.05,"status":503,"retry_after":"1"}}`: fail each request (that no
//!   queued `fail` rule takes) with that probability; `rate` 0 turns it off.
//!
//! Control errors use the same error shape, with `Content-Type: application/json`.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), eventgrid_receiver::ReceiverError> {
//! use eventgrid_receiver::{FailRule, ReceiverConfig};
//!
//! let receiver = eventgrid_receiver::start_local(ReceiverConfig::default()).await?;
//! let handle = receiver.handle();
//! handle.push_fault(FailRule::new(2, 503).retry_after("1").into())?;
//! // … point the publisher at receiver.endpoint() with key "local-dev-key" …
//! assert!(handle.stats().accepted_events == 0);
//! receiver.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
mod contract;
mod control;
mod error;
pub mod faults;
mod schema;
mod server;
mod state;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{DEFAULT_KEY, DEFAULT_PATH, Keep, ReceiverConfig, Schema};
pub use contract::API_VERSION;
pub use error::ReceiverError;
pub use faults::{FailRule, Fault};
pub use state::{RecordedEvent, RequestOutcome, RequestRecord, Stats};
pub use wire::{MAX_BODY_BYTES, MAX_EVENT_BYTES, MAX_EVENTS_PER_REQUEST};

use crate::state::{Shared, lock};

/// Starts a receiver on `addr` (port 0 picks a free port) and returns once it is
/// listening. The server runs on the current Tokio runtime until
/// [`RunningReceiver::shutdown`] (or until the [`RunningReceiver`] is dropped).
///
/// # Errors
///
/// [`ReceiverError::Config`] for an invalid configuration, [`ReceiverError::RecordFile`]
/// if the record file cannot be opened, [`ReceiverError::Bind`] /
/// [`ReceiverError::LocalAddr`] if the socket cannot be bound.
pub async fn start(
    config: ReceiverConfig,
    addr: SocketAddr,
) -> Result<RunningReceiver, ReceiverError> {
    config.validate()?;
    let record_file = match &config.record_path {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ReceiverError::RecordFile {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ReceiverError::Bind { addr, source })?;
    let local_addr = listener.local_addr().map_err(ReceiverError::LocalAddr)?;
    let shared = Arc::new(Shared::new(config, local_addr, record_file));
    let task = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
    tracing::debug!(addr = %local_addr, "Receiver listening");
    Ok(RunningReceiver {
        handle: ReceiverHandle { shared },
        task: Some(task),
    })
}

/// [`start`] on `127.0.0.1` with a free port: what tests want.
///
/// # Errors
///
/// As [`start`].
pub async fn start_local(config: ReceiverConfig) -> Result<RunningReceiver, ReceiverError> {
    start(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
}

/// A receiver that is listening. Dropping it stops the server too, without waiting;
/// [`Self::shutdown`] waits.
#[derive(Debug)]
pub struct RunningReceiver {
    handle: ReceiverHandle,
    /// The accept loop, which owns every connection task; `None` once awaited.
    task: Option<JoinHandle<()>>,
}

impl RunningReceiver {
    /// The bound address (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The publish endpoint without query, e.g. `http://127.0.0.1:PORT/api/events`.
    pub fn endpoint(&self) -> String {
        self.handle.endpoint()
    }

    /// A handle to inspect the receiver and script faults; clone it freely.
    pub fn handle(&self) -> ReceiverHandle {
        self.handle.clone()
    }

    /// Stops accepting connections, lets requests in flight finish (connections idle
    /// or still busy after a short grace period are closed), and waits for the server
    /// task and every connection task to end. Pending latency is cut short.
    pub async fn shutdown(mut self) {
        self.handle.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::error!(error = %error, "The receiver's server task failed");
        }
    }
}

impl Drop for RunningReceiver {
    fn drop(&mut self) {
        // Without this, a forgotten receiver would serve until its runtime ends.
        self.handle.shared.shutdown.send_replace(true);
    }
}

/// Inspects a running receiver and scripts its faults. Cheap to clone, `Send + Sync`;
/// keeps working (with nothing new arriving) after shutdown.
#[derive(Debug, Clone)]
pub struct ReceiverHandle {
    shared: Arc<Shared>,
}

impl ReceiverHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The publish endpoint without query, e.g. `http://127.0.0.1:PORT/api/events`
    /// (an unspecified bind address is shown as loopback).
    pub fn endpoint(&self) -> String {
        let mut addr = self.shared.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}{}", self.shared.config.path)
    }

    /// The configuration the receiver runs with.
    pub fn config(&self) -> &ReceiverConfig {
        &self.shared.config
    }

    /// Every recorded event in arrival order (empty unless [`Keep::All`]).
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.shared.events(0)
    }

    /// Accepted ids in arrival order, duplicates included (empty for [`Keep::None`]).
    pub fn accepted_ids(&self) -> Vec<String> {
        self.shared.accepted_ids(0)
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Every request outside the control API, in the order decided (empty for
    /// [`Keep::None`]).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests(0)
    }

    /// Waits until at least `count` events have been accepted since start or the last
    /// [`Self::reset`]; `false` if `timeout` passed first.
    pub async fn wait_for_events(&self, count: u64, timeout: Duration) -> bool {
        let mut accepted = self.shared.accepted_events.subscribe();
        tokio::time::timeout(timeout, accepted.wait_for(|n| *n >= count))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Adds a fault rule (see [`Fault`]).
    ///
    /// # Errors
    ///
    /// [`ReceiverError::Fault`] for a status that is not a final HTTP status or a
    /// `Retry-After` that is not a valid header value; nothing is added then.
    pub fn push_fault(&self, fault: Fault) -> Result<(), ReceiverError> {
        lock(&self.shared.faults).push(fault)
    }

    /// Delays every answer by `delay` (`None` removes any latency, counted or not).
    pub fn set_latency(&self, delay: Option<Duration>) {
        lock(&self.shared.faults).set_latency(delay);
    }

    /// Refuses (400) every request containing an event whose id matches `pattern`
    /// (`regex-lite` syntax; unanchored unless you anchor it). `None` removes it.
    ///
    /// # Errors
    ///
    /// [`ReceiverError::Pattern`] if the pattern does not compile; the previous
    /// pattern stays then.
    pub fn reject_ids(&self, pattern: Option<&str>) -> Result<(), ReceiverError> {
        lock(&self.shared.faults).set_reject_ids(pattern)
    }

    /// Removes every fault: fail rules, latency, pending drops, `reject_ids`.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Forgets every recorded event, request record and counter (the record file is
    /// left as it is). Faults are kept.
    pub fn reset(&self) {
        self.shared.reset();
    }
}
