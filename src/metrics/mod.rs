//! Metrics: the instruments the core records through, one process-wide handle ([`global`]).
//!
//! The core (relay, publisher, db) only calls the recording methods of [`Metrics`]; it never
//! knows where the figures go. The exporters (OTLP/HTTP, Application Insights, the Prometheus
//! text of `GET /metrics`) are chosen from the settings in [`export`], which installs the
//! OpenTelemetry meter provider before anything records; without one every recording is a
//! no-op. A leaf: it imports nothing of the crate but the settings it exports by.
//!
//! Names and units follow OpenTelemetry's conventions (dotted names, UCUM units, `{thing}` for
//! counts); the Prometheus exposition turns `outbox.oldest_pending.age` (s) into
//! `outbox_oldest_pending_age_seconds` and counters into `…_total`. The README's "Operating it"
//! lists them.

pub mod export;
mod instruments;

pub use self::instruments::{Backlog, Metrics, Path, global};
