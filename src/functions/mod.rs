//! Adapters between HTTP (the Functions host's envelopes, raw requests, standalone mode) and
//! the core. They know nothing of MongoDB or Event Grid.

pub mod binding;
pub mod error;
pub mod invoke;
pub mod outbox_timer;
pub mod write_document_http;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use secrecy::{ExposeSecret, SecretString};
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
    /// The public route and methods of `WriteDocumentHttp`.
    pub http_function: Arc<binding::HttpFunction>,
    /// Standalone mode: the key callers must present.
    pub standalone_key: Option<SecretString>,
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
    let (collection, item) = state.http_function.raw_routes();
    let mut api = Router::new();
    if let Some(path) = collection {
        api = api.route(&path, any(write_document_http::raw_collection));
    }
    if let Some(path) = item {
        api = api.route(&path, any(write_document_http::raw_item));
    }
    let router = match mode {
        Mode::Functions => api
            .route(
                "/WriteDocumentHttp",
                post(write_document_http::envelope).layer(DefaultBodyLimit::max(
                    write_document_http::MAX_ENVELOPE_BYTES,
                )),
            )
            .route("/OutboxTimer", post(outbox_timer::envelope)),
        // In Azure the host checks function keys; standalone mode checks its own.
        Mode::Standalone => api
            .route("/admin/functions/OutboxTimer", post(outbox_timer::admin))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_key)),
    };
    router
        .route("/", get(health))
        .fallback(|| async { error::ApiError::NoRoute.response().into_response() })
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

/// Standalone mode: with `STANDALONE_FUNCTION_KEY` set, every API and admin request must carry
/// it in `x-functions-key` or `?code=` (as Azure's function keys), compared in constant time.
async fn require_key(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.standalone_key else {
        return next.run(request).await;
    };
    let from_header = request
        .headers()
        .get("x-functions-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_query = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
    });
    let presented = from_header.or(from_query).unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), expected.expose_secret().as_bytes()) {
        next.run(request).await
    } else {
        error::ApiError::Unauthorized.response().into_response()
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    // Lengths are not secret enough to hide (they leak through the request size anyway), but
    // the contents are.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `GET /`: the host's readiness and health probe. Answers at once, whatever the database
/// is doing.
async fn health() -> &'static str {
    "ok"
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_compare_equal_only_when_identical() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
        assert!(!super::constant_time_eq(b"", b"secret"));
    }
}
