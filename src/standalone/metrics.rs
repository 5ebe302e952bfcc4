//! `GET /metrics`: the Prometheus text exposition of every instrument, behind the same key as
//! the other routes when one is set (a scrape configuration sends it as `?code=`; see the
//! README).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use secrecy::SecretString;

use super::require_key;
use crate::metrics::export::PrometheusText;

/// The `/metrics` route over `text`, requiring `key` when one is set.
pub fn routes(text: PrometheusText, key: Option<SecretString>) -> Router {
    let routes = Router::new().route("/metrics", get(scrape).with_state(text));
    match key {
        Some(key) => routes.route_layer(middleware::from_fn_with_state(Arc::new(key), require_key)),
        None => routes,
    }
}

async fn scrape(State(text): State<PrometheusText>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, PrometheusText::content_type())],
        text.render(),
    )
}
