//! `WriteDocumentHttp`: the HTTP function that writes a document with its event.
//!
//! Two doors, one core: the envelope at `POST /WriteDocumentHttp` (the host's default) and the
//! raw request at `/api/WriteDocumentHttp` (forwarding mode, and standalone mode).

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ApiResponse};
use super::invoke::{HttpTriggerData, InvocationRequest, InvocationResponse};
use crate::documents::MAX_BODY_BYTES;

/// Public path of the function (route prefix `api`, no custom route).
pub const PUBLIC_PATH: &str = "/api/WriteDocumentHttp";
/// Largest envelope accepted from the host: the body travels JSON-escaped inside it.
pub const MAX_ENVELOPE_BYTES: usize = 8 * MAX_BODY_BYTES;
const ALLOW: &str = "POST";

/// The core of the function, whichever way the request arrived.
async fn handle(
    state: &AppState,
    method: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> ApiResponse {
    if !method.eq_ignore_ascii_case(Method::POST.as_str()) {
        return ApiError::MethodNotAllowed {
            method: method.chars().take(16).collect(),
            allow: ALLOW,
        }
        .response();
    }
    match state.documents.create(content_type, body).await {
        Ok(written) => ApiResponse::json(
            StatusCode::CREATED,
            &json!({ "id": written.document_id.as_str(), "eventId": written.event_id.to_string() }),
        )
        .with_header(
            header::LOCATION,
            format!("{PUBLIC_PATH}/{}", written.document_id),
        ),
        Err(e) => ApiError::from(e).response(),
    }
}

/// `POST /WriteDocumentHttp`: the host's envelope. The answer to the host is 200 whatever the
/// outcome; the caller's status travels in `Outputs.res`.
pub async fn envelope(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let request: InvocationRequest<HttpTriggerData> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            // Not something a client did: the host sent what we cannot read. Failing the
            // invocation (non-2xx) makes that visible in the host's logs.
            tracing::error!(error = %e, "Cannot read the host's invocation envelope");
            return InvocationResponse::logs(vec![format!("invalid invocation envelope: {e}")])
                .into_host_response(StatusCode::BAD_REQUEST);
        }
    };
    let req = request.data.req;
    let method = req.method.as_deref().unwrap_or("POST");
    let body = req.body.as_deref().unwrap_or_default();
    let response = handle(&state, method, req.header("content-type"), body.as_bytes()).await;
    let log = log_line(&response);
    InvocationResponse::http(&response, vec![log]).into_host_response(StatusCode::OK)
}

/// `/api/WriteDocumentHttp`: the raw request (forwarding mode, standalone mode).
pub async fn raw(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if parts.method != Method::POST {
        return handle(&state, parts.method.as_str(), None, &[])
            .await
            .into_response();
    }
    // Refuse an announced oversize body before reading any of it.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return ApiError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        }
        .response()
        .into_response();
    }
    let bytes = match read_limited(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return e.response().into_response(),
    };
    handle(&state, "POST", content_type.as_deref(), &bytes)
        .await
        .into_response()
}

/// Reads at most `limit` bytes, stopping as soon as the body is known to be larger.
async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    to_bytes(body, limit).await.map_err(|e| {
        let is_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if is_limit {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::UnreadableBody
        }
    })
}

fn log_line(r: &ApiResponse) -> String {
    if r.status.is_success() {
        format!("document written: {}", r.body)
    } else {
        format!("request answered {}: {}", r.status.as_u16(), r.body)
    }
}
