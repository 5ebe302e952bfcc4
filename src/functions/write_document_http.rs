//! `WriteDocumentHttp`: the HTTP function that changes a document with its event, and reads it
//! back.
//!
//! Two doors, one core: the host's envelope at `POST /WriteDocumentHttp` (the default), and the
//! raw request on the function's public route (`/api/documents[/{id}]`; forwarding mode and
//! standalone mode). One function serves the resource, reads included: one route and one key
//! for clients, and the methods come from its `function.json`.
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /api/documents/{id}` | 200 + `ETag`: the document; 304 when `If-None-Match` names it; 404 when missing |
//! | `POST /api/documents` (or `/{id}`) | 201 + `Location` + `ETag`: created |
//! | `PUT /api/documents/{id}` | 201 created / 200 replaced, `ETag`; `If-Match` → 412 (+ the current `ETag`) on mismatch, `If-None-Match: *` → create only |
//! | `DELETE /api/documents/{id}` | 200 deleted, 404 when missing; `If-Match` → 412 on mismatch |
//!
//! GET, PUT and DELETE without an id answer 405 naming the document route. Every write's
//! answer body is `{"id", "eventId", "version", "operation"}` or an error. A replay under the
//! same `Idempotency-Key` answers the same, with `Idempotent-Replayed: true`.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::binding::HttpFunction;
use super::error::{ApiError, ApiResponse};
use super::invoke::{HttpTriggerData, InvocationRequest, InvocationResponse};
use crate::documents::{
    self, DocumentService, MAX_BODY_BYTES, Read, ReadRequest, WriteRequest, Written,
};
use crate::domain::Operation;

/// Largest envelope accepted from the host: the body travels JSON-escaped inside it.
pub const MAX_ENVELOPE_BYTES: usize = 8 * MAX_BODY_BYTES;

/// Header marking an answer replayed from an idempotency record.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What the function needs: the use case, and the public shape the app root gives it. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct WriteDocumentHttp {
    documents: DocumentService,
    function: Arc<HttpFunction>,
}

impl WriteDocumentHttp {
    /// The function writing through `documents` on the route and methods of `function`.
    #[must_use]
    pub fn new(documents: DocumentService, function: HttpFunction) -> Self {
        Self {
            documents,
            function: Arc::new(function),
        }
    }

    /// The route and methods it answers on.
    #[must_use]
    pub fn function(&self) -> &HttpFunction {
        &self.function
    }
}

/// A request as the core needs it, however it arrived.
struct Incoming<'a> {
    method: &'a str,
    id: Option<&'a str>,
    header: &'a (dyn Fn(&str) -> Option<String> + Sync),
    body: &'a [u8],
}

/// The core of the function: a read (GET with an id) or a write (POST; PUT or DELETE with an
/// id), for the methods `function.json` allows.
async fn handle(state: &WriteDocumentHttp, req: Incoming<'_>) -> ApiResponse {
    let function = &state.function;
    let method = Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(|m| function.allows(m));
    let with_id = req.id.is_some();
    let op = match (method, req.id) {
        (Some(m), Some(id)) if m == Method::GET => return read(state, id, &req).await,
        (Some(m), _) if m == Method::POST => documents::Method::Create,
        (Some(m), Some(_)) if m == Method::PUT => documents::Method::Replace,
        (Some(m), Some(_)) if m == Method::DELETE => documents::Method::Delete,
        (allowed, _) => {
            let method: String = req.method.chars().take(16).collect();
            let allow = function.allow(with_id);
            // An allowed method left over here needs an id the URL did not give.
            let error = match function.item_route().filter(|_| allowed.is_some()) {
                Some(route) => ApiError::IdRequired {
                    method,
                    allow,
                    route,
                },
                None => ApiError::MethodNotAllowed { method, allow },
            };
            return error.response();
        }
    };
    write(state, op, &req).await
}

/// GET: the document with its `ETag`, or `304` with the `ETag` only.
async fn read(state: &WriteDocumentHttp, id: &str, req: &Incoming<'_>) -> ApiResponse {
    let if_none_match = (req.header)("if-none-match");
    let request = ReadRequest {
        id,
        if_none_match: if_none_match.as_deref(),
    };
    let (response, revision) = match state.documents.read(request).await {
        Ok(Read::Found { document, revision }) => {
            (ApiResponse::json(StatusCode::OK, &document), revision)
        }
        Ok(Read::NotModified { revision }) => {
            (ApiResponse::empty(StatusCode::NOT_MODIFIED), revision)
        }
        Err(e) => return ApiError::Read(e).response(),
    };
    match revision {
        Some(r) => response.with_header(header::ETAG, r.etag()),
        None => response,
    }
}

/// POST, PUT, DELETE: the change with its event.
async fn write(
    state: &WriteDocumentHttp,
    op: documents::Method,
    req: &Incoming<'_>,
) -> ApiResponse {
    let function = &state.function;
    let content_type = (req.header)("content-type");
    let if_match = (req.header)("if-match");
    let if_none_match = (req.header)("if-none-match");
    let idempotency_key = (req.header)("idempotency-key");
    let traceparent = (req.header)("traceparent");
    let request = WriteRequest {
        method: op,
        id: req.id,
        content_type: content_type.as_deref(),
        body: req.body,
        if_match: if_match.as_deref(),
        if_none_match: if_none_match.as_deref(),
        idempotency_key: idempotency_key.as_deref(),
        traceparent: traceparent.as_deref(),
    };
    match state.documents.write(request).await {
        Ok(written) => success(function, &written),
        Err(e) => ApiError::Write(e).response(),
    }
}

fn success(function: &HttpFunction, w: &Written) -> ApiResponse {
    let status = match w.operation {
        Operation::Created => StatusCode::CREATED,
        Operation::Replaced | Operation::Deleted => StatusCode::OK,
    };
    let mut body = json!({
        "id": w.document_id.as_str(),
        "eventId": w.event_id.to_string(),
        "version": w.revision.version,
        "operation": w.operation.as_str(),
    });
    if let Some(published) = w.published {
        body["published"] = published.into();
    }
    let mut r = ApiResponse::json(status, &body);
    if w.operation != Operation::Deleted {
        r = r.with_header(header::ETAG, w.revision.etag());
    }
    if w.operation == Operation::Created {
        r = r.with_header(header::LOCATION, function.location(&w.document_id));
    }
    if w.replayed {
        r = r.with_header(REPLAYED, "true");
    }
    r
}

/// `POST /WriteDocumentHttp`: the host's envelope. The answer to the host is 200 whatever the
/// outcome; the caller's status travels in `Outputs.res`.
pub async fn envelope(State(state): State<WriteDocumentHttp>, body: axum::body::Bytes) -> Response {
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
    let header = |name: &str| req.header(name).map(str::to_owned);
    let id = req
        .params
        .get("id")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let method = req.method.as_deref().unwrap_or("POST");
    let response = handle(
        &state,
        Incoming {
            method,
            id,
            header: &header,
            body: req.body.as_deref().unwrap_or_default().as_bytes(),
        },
    )
    .await;
    let log = log_line(method, &response);
    InvocationResponse::http(&response, vec![log]).into_host_response(StatusCode::OK)
}

/// The raw request on the collection URL (`/api/documents`).
pub async fn raw_collection(State(state): State<WriteDocumentHttp>, request: Request) -> Response {
    raw(&state, None, request).await
}

/// The raw request on a document's URL (`/api/documents/{id}`).
pub async fn raw_item(
    State(state): State<WriteDocumentHttp>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    raw(&state, Some(&id), request).await
}

async fn raw(state: &WriteDocumentHttp, id: Option<&str>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers: HeaderMap = parts.headers;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bytes = if parts.method == Method::POST || parts.method == Method::PUT {
        // Refuse an announced oversize body before reading any of it.
        let declared = header("content-length").and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
            return ApiError::BodyTooLarge {
                limit: MAX_BODY_BYTES,
            }
            .response()
            .into_response();
        }
        match read_limited(body, MAX_BODY_BYTES).await {
            Ok(b) => b,
            Err(e) => return e.response().into_response(),
        }
    } else {
        axum::body::Bytes::new()
    };
    handle(
        state,
        Incoming {
            method: parts.method.as_str(),
            id,
            header: &header,
            body: &bytes,
        },
    )
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

/// The line the host logs with the invocation: a write's answer, but never a document read
/// (bodies are not logged).
fn log_line(method: &str, r: &ApiResponse) -> String {
    let is_read = method.eq_ignore_ascii_case("GET");
    if is_read && (r.status.is_success() || r.status == StatusCode::NOT_MODIFIED) {
        format!("document read: answered {}", r.status.as_u16())
    } else if r.status.is_success() {
        format!("document written: {}", r.body)
    } else {
        format!("request answered {}: {}", r.status.as_u16(), r.body)
    }
}
