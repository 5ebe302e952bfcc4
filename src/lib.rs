//! outbox-relay: write a document and its event in one MongoDB transaction, then relay the
//! event to Azure Event Grid — as an Azure Functions custom handler.
//!
//! Module map (dependencies point inward; the core never sees the host's envelopes):
//!
//! - [`config`] — settings from the environment (the only reader of it).
//! - [`telemetry`] — logging set-up.
//! - [`domain`] — validated documents, event ids, the event itself. No I/O.
//! - [`metrics`] — the instruments the core records through, and their exporters (OTLP,
//!   Application Insights, Prometheus text); a leaf.
//! - [`db`] — the MongoDB client and driver-error classification; a leaf.
//! - [`outbox`] — storage of documents' changes with their outbox entries: the placement
//!   (chosen once), the write side ([`outbox::write`]), the relay side ([`outbox::store`]).
//! - [`documents`] — use case: a document and its outbox entry, atomically; reading it back.
//! - [`publisher`] — Event Grid requests: batching, auth, response classification, backoff.
//! - [`relay`] — use case: drain due entries to Event Grid, at least once.
//! - [`functions`] — adapters: the host's envelopes and raw HTTP, one module per function;
//!   [`functions::binding`] reads the app root's `host.json` and `function.json` files;
//!   [`functions::error`] maps the use case's errors to HTTP in one table.
//! - [`standalone`] — `handler serve`: the raw HTTP routes behind its own function-key check,
//!   the admin endpoint, and the timer's schedule.
//! - [`app`] — wiring (the one place the core is built) and serving, in either mode.
//! - [`ops`] — operator commands.
//! - [`admin`] — the outbox status page (`/admin/outbox`): figures, dead letters, requeue/skip.

pub mod admin;
pub mod app;
pub mod config;
pub mod db;
pub mod documents;
pub mod domain;
pub mod functions;
pub mod metrics;
pub mod ops;
pub mod outbox;
pub mod progress;
pub mod publisher;
pub mod push;
pub mod relay;
pub mod standalone;
pub mod telemetry;
