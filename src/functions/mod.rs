//! Adapters between HTTP (the Functions host's envelopes, raw requests) and the core. They know
//! nothing of MongoDB or Event Grid.
//!
//! Each function has its own state ([`WriteDocumentHttp`], [`OutboxTimer`]); [`router`] serves
//! them in Functions mode, and standalone mode ([`crate::standalone`]) reuses [`raw_routes`]
//! and [`finish`] around its own routes.

pub mod binding;
pub mod error;
pub mod invoke;
pub mod outbox_status_http;
pub mod outbox_timer;
pub mod write_document_http;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use outbox_timer::OutboxTimer;
pub use write_document_http::WriteDocumentHttp;

/// Functions mode: the host's envelopes at `/WriteDocumentHttp`, `/OutboxTimer` and
/// `/OutboxStatusHttp` (the status page, `page`), and the raw requests on the function's public
/// route (forwarding mode).
pub fn router(
    write: WriteDocumentHttp,
    timer: OutboxTimer,
    page: crate::admin::OutboxPage,
) -> Router {
    let time_budget = timer.time_budget();
    let routes = raw_routes(write.clone())
        .route(
            "/WriteDocumentHttp",
            post(write_document_http::envelope)
                .layer(DefaultBodyLimit::max(
                    write_document_http::MAX_ENVELOPE_BYTES,
                ))
                .with_state(write),
        )
        .route(
            "/OutboxTimer",
            post(outbox_timer::envelope).with_state(timer),
        )
        .route(
            "/OutboxStatusHttp",
            post(outbox_status_http::envelope).with_state(outbox_status_http::page_routes(page)),
        );
    finish(routes, time_budget)
}

/// The raw requests of `WriteDocumentHttp` on its public route (`/api/documents[/{id}]`).
pub fn raw_routes(write: WriteDocumentHttp) -> Router {
    let (collection, item) = write.function().raw_routes();
    let mut api = Router::new();
    if let Some(path) = collection {
        api = api.route(&path, any(write_document_http::raw_collection));
    }
    if let Some(path) = item {
        api = api.route(&path, any(write_document_http::raw_item));
    }
    api.with_state(write)
}

/// What every mode serves around its `routes`: the health probe, `NotFound` for anything else,
/// one span per request, and a timeout long enough for a drain of `time_budget`.
pub fn finish(routes: Router, time_budget: Duration) -> Router {
    // Bounded so a hung dependency cannot hold a connection forever; generous enough for a
    // whole drain.
    let timeout = time_budget + Duration::from_secs(60);
    routes
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
}

/// `GET /`: the host's readiness and health probe. Answers at once, whatever the database
/// is doing.
async fn health() -> &'static str {
    "ok"
}
