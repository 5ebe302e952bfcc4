//! `OutboxStatusHttp`: the outbox status page ([`crate::admin`]) as an HTTP function
//! (`authLevel: admin`, so the host asks for the master key). The host's envelope becomes a
//! request to the page's own routes, and their answer becomes the `res` output: one page, two
//! modes.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, Request, StatusCode, header};
use axum::response::Response;
use tower::ServiceExt as _;

use super::error::ApiResponse;
use super::invoke::{HttpTriggerData, InvocationRequest, InvocationResponse};
use crate::admin::{OutboxPage, PATH};

/// The function's public route (`route` of `OutboxStatusHttp/function.json` under `api/`).
pub const PUBLIC_PATH: &str = "/api/outbox/status";

/// The page's routes, seen by browsers at [`PUBLIC_PATH`].
pub fn page_routes(page: OutboxPage) -> Router {
    page.at_public_path(PUBLIC_PATH).routes()
}

/// `POST /OutboxStatusHttp`: one invocation, answered with the page (or a form's redirect).
pub async fn envelope(State(page): State<Router>, body: Bytes) -> Response {
    let request: InvocationRequest<HttpTriggerData> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Cannot read the host's invocation envelope");
            return InvocationResponse::logs(vec![format!("invalid invocation envelope: {e}")])
                .into_host_response(StatusCode::BAD_REQUEST);
        }
    };
    let req = request.data.req;
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(req.query.iter())
        .finish();
    let mut inner = Request::builder()
        .method(req.method.as_deref().unwrap_or("GET"))
        .uri(format!("{PATH}?{query}"));
    for (name, values) in &req.headers {
        if let Some(v) = values.first() {
            inner = inner.header(name.as_str(), v.as_str());
        }
    }
    let Ok(inner) = inner.body(Body::from(req.body.unwrap_or_default())) else {
        return InvocationResponse::logs(vec!["unusable request in the envelope".into()])
            .into_host_response(StatusCode::BAD_REQUEST);
    };
    let Ok(answer) = page.oneshot(inner).await;
    let status = answer.status();
    let kept: Vec<(HeaderName, String)> = answer
        .headers()
        .iter()
        .filter(|(k, _)| {
            [
                header::CONTENT_TYPE,
                header::LOCATION,
                header::CACHE_CONTROL,
                header::X_FRAME_OPTIONS,
            ]
            .contains(k)
        })
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.clone(), v.to_owned())))
        .collect();
    let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let res = ApiResponse {
        status,
        headers: kept,
        body,
    };
    InvocationResponse::http(
        &res,
        vec![format!("outbox status page: {}", status.as_u16())],
    )
    .into_host_response(StatusCode::OK)
}
