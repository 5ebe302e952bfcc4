//! Adapters between HTTP (the Functions host's envelopes, raw requests, standalone mode) and
//! the core. They know nothing of MongoDB or Event Grid.

pub mod error;
pub mod invoke;
pub mod outbox_timer;
pub mod write_document_http;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::routing::{any, get, post};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::documents::DocumentService;
use crate::relay::{Relay, RelayReport};

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Writes documents.
    pub documents: DocumentService,
    /// Drains the outbox.
    pub relay: Relay,
    /// Time one drain may take.
    pub time_budget: Duration,
    /// Cancelled when the process shuts down; stops drains between entries.
    pub shutdown: CancellationToken,
    /// Serializes drains started by this process's own schedule (the host does the same for
    /// its timer); manual runs may overlap them, which the relay is safe against.
    pub schedule_lock: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    /// Runs one drain within the time budget.
    pub async fn drain(&self) -> RelayReport {
        self.relay
            .drain_once(self.time_budget, &self.shutdown)
            .await
    }
}

/// Which routes to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Started by the Functions host: envelopes, and raw requests for forwarding mode.
    Functions,
    /// `handler serve`: raw requests and the admin endpoint.
    Standalone,
}

/// The router for `mode`.
pub fn router(state: AppState, mode: Mode) -> Router {
    // Bounded so a hung dependency cannot hold a connection forever; generous enough for a
    // whole drain.
    let timeout = state.time_budget + Duration::from_secs(60);
    let mut router = Router::new().route("/", get(health)).route(
        write_document_http::PUBLIC_PATH,
        any(write_document_http::raw),
    );
    router = match mode {
        Mode::Functions => router
            .route(
                "/WriteDocumentHttp",
                post(write_document_http::envelope).layer(DefaultBodyLimit::max(
                    write_document_http::MAX_ENVELOPE_BYTES,
                )),
            )
            .route("/OutboxTimer", post(outbox_timer::envelope)),
        Mode::Standalone => router.route("/admin/functions/OutboxTimer", post(outbox_timer::admin)),
    };
    router
        .layer(
            TraceLayer::new_for_http()
                // Failures are logged once, where their cause is known (ApiError, the relay).
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG))
                .make_span_with(|req: &Request<_>| {
                    let invocation = req
                        .headers()
                        .get("x-azure-functions-invocationid")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        invocation.id = invocation,
                    )
                }),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// `GET /`: the host's readiness and health probe. Answers at once, whatever the database
/// is doing.
async fn health() -> &'static str {
    "ok"
}
