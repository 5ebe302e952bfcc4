//! One error type for the HTTP API, mapped to a status and a JSON body in one place: the use
//! case's [`WriteError`] and [`ReadError`] through one table each (`write_answer`,
//! `read_answer`), plus what the adapters refuse themselves (no route, method, key, body size).
//!
//! Bodies look like `{"error":{"code":"MalformedJson","message":"…"}}`. Client errors say what
//! to fix; server errors are generic — their detail is logged once, here, and never sent (no
//! driver text, no connection string, no key).

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::documents::{ReadError, WriteError};
use crate::domain::InputError;
use crate::telemetry::chain;

/// A response of the HTTP API, independent of how it travels (raw HTTP or the host's
/// `Outputs.res`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// Status for the caller.
    pub status: StatusCode,
    /// Headers besides `Content-Type: application/json`.
    pub headers: Vec<(HeaderName, String)>,
    /// JSON body; empty for an answer without one (`304`), which then has no `Content-Type`.
    pub body: String,
}

impl ApiResponse {
    /// A JSON response.
    #[must_use]
    pub fn json(status: StatusCode, body: &serde_json::Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    /// An answer without a body (`304 Not Modified`).
    #[must_use]
    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl IntoResponse for ApiResponse {
    fn into_response(self) -> Response {
        let has_body = !self.body.is_empty();
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        if has_body {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        } else {
            headers.remove(header::CONTENT_TYPE);
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.append(name, v);
            }
        }
        response
    }
}

/// Everything the HTTP API can answer with besides success: the use case's refusals and
/// failures, and what the adapters refuse before calling it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The write was refused or failed; answered as the module's table says.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The read was refused or failed; answered as the module's table says.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Standalone mode: no or a wrong function key.
    #[error("a valid function key is required (x-functions-key header or code query parameter)")]
    Unauthorized,
    /// No route for this path.
    #[error("not found")]
    NoRoute,
    /// The method is not supported on this route.
    #[error("method {method} is not allowed; use {allow}")]
    MethodNotAllowed {
        /// The method that was used.
        method: String,
        /// The methods that are.
        allow: String,
    },
    /// The method needs a document's URL, and the request named none (a collection is neither
    /// replaced, deleted nor listed).
    #[error("{method} needs a document id: use {route}")]
    IdRequired {
        /// The method that was used.
        method: String,
        /// The methods allowed without an id.
        allow: String,
        /// The route of a document, e.g. `/api/documents/{id}`.
        route: String,
    },
    /// The request is larger than accepted, known before reading it.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read.
    #[error("the request body could not be read")]
    UnreadableBody,
}

/// Status, error code, and the message sent.
type Answer = (StatusCode, &'static str, String);

/// The one table from the use case's error to HTTP. What the client can fix is said in the
/// error's own words; server errors get a generic message, their cause is logged, never sent.
fn write_answer(e: &WriteError) -> Answer {
    use InputError as I;
    use StatusCode as S;
    use WriteError as W;
    let own = || e.to_string();
    match e {
        W::Input(I::UnsupportedMediaType { .. }) => {
            (S::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", own())
        }
        W::Input(I::Empty) => (S::BAD_REQUEST, "EmptyBody", own()),
        W::Input(I::MalformedJson { .. }) => (S::BAD_REQUEST, "MalformedJson", own()),
        W::Input(I::NotAnObject { .. }) => (S::BAD_REQUEST, "NotAnObject", own()),
        W::Input(I::InvalidId { .. }) => (S::BAD_REQUEST, "InvalidId", own()),
        W::Input(I::InvalidKey { .. }) => (S::BAD_REQUEST, "InvalidFieldName", own()),
        W::Input(I::TooDeep) => (S::BAD_REQUEST, "TooDeep", own()),
        W::Input(I::NumberOutOfRange { .. }) => (S::BAD_REQUEST, "NumberOutOfRange", own()),
        W::Input(I::TooLarge { .. }) => (S::PAYLOAD_TOO_LARGE, "PayloadTooLarge", own()),
        W::Input(I::InvalidHeader { .. }) => (S::BAD_REQUEST, "InvalidHeader", own()),
        W::Input(I::MissingShardKey(_)) => (S::BAD_REQUEST, "MissingShardKey", own()),
        W::Conflict(_) => (S::CONFLICT, "Conflict", own()),
        W::NotFound(_) => (S::NOT_FOUND, "NotFound", own()),
        W::PreconditionFailed { .. } => (S::PRECONDITION_FAILED, "PreconditionFailed", own()),
        W::IdempotencyKeyReused => (S::UNPROCESSABLE_ENTITY, "IdempotencyKeyReused", own()),
        W::Unavailable { .. } => (
            S::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the service is temporarily unavailable".to_owned(),
        ),
        W::Busy { .. } => (S::SERVICE_UNAVAILABLE, "ServiceUnavailable", own()),
        W::Internal(_) => (
            S::INTERNAL_SERVER_ERROR,
            "InternalError",
            "internal error".to_owned(),
        ),
    }
}

/// The table from the read use case's error to HTTP, in the same words as the write's.
fn read_answer(e: &ReadError) -> Answer {
    use StatusCode as S;
    match e {
        ReadError::Input(input) => write_answer(&WriteError::Input(input.clone())),
        ReadError::NotFound(_) => (S::NOT_FOUND, "NotFound", e.to_string()),
        ReadError::Unavailable { .. } => (
            S::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the service is temporarily unavailable".to_owned(),
        ),
        ReadError::Internal(_) => (
            S::INTERNAL_SERVER_ERROR,
            "InternalError",
            "internal error".to_owned(),
        ),
    }
}

impl ApiError {
    /// Every error code the API can answer with, and its status (documented in
    /// `openapi.yaml`, which a test keeps in sync with this list).
    pub const CODES: &[(&str, u16)] = &[
        ("EmptyBody", 400),
        ("MalformedJson", 400),
        ("NotAnObject", 400),
        ("InvalidId", 400),
        ("InvalidFieldName", 400),
        ("TooDeep", 400),
        ("NumberOutOfRange", 400),
        ("InvalidHeader", 400),
        ("MissingShardKey", 400),
        ("UnreadableBody", 400),
        ("Unauthorized", 401),
        ("NotFound", 404),
        ("MethodNotAllowed", 405),
        ("Conflict", 409),
        ("PreconditionFailed", 412),
        ("PayloadTooLarge", 413),
        ("UnsupportedMediaType", 415),
        ("IdempotencyKeyReused", 422),
        ("InternalError", 500),
        ("ServiceUnavailable", 503),
    ];

    /// Status, code and message; the adapters' own refusals all say what to fix.
    fn answer(&self) -> Answer {
        let (status, code) = match self {
            Self::Write(e) => return write_answer(e),
            Self::Read(e) => return read_answer(e),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::NoRoute => (StatusCode::NOT_FOUND, "NotFound"),
            Self::MethodNotAllowed { .. } | Self::IdRequired { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed")
            }
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            Self::UnreadableBody => (StatusCode::BAD_REQUEST, "UnreadableBody"),
        };
        (status, code, self.to_string())
    }

    /// The response, logging server-side detail once.
    #[must_use]
    pub fn response(&self) -> ApiResponse {
        let (status, code, message) = self.answer();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %chain(self), "Request failed");
        } else if matches!(self, Self::Write(WriteError::Busy { .. })) {
            // Counted (outbox.writes.refused_busy); a line per refusal would flood the log
            // exactly when the service is overloaded.
            tracing::debug!(error = %self, "Request refused: too many writes at once");
        } else if status.is_server_error() {
            tracing::warn!(error = %chain(self), "Request failed: service unavailable");
        } else {
            tracing::debug!(code, error = %self, "Request rejected");
        }
        let mut r = ApiResponse::json(
            status,
            &json!({ "error": { "code": code, "message": message } }),
        );
        match self {
            Self::Write(
                WriteError::Unavailable { retry_after, .. } | WriteError::Busy { retry_after },
            )
            | Self::Read(ReadError::Unavailable { retry_after, .. }) => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0);
                r = r.with_header(header::RETRY_AFTER, format!("{secs:.0}"));
            }
            // The current revision, so that the client can retry without reading first.
            Self::Write(WriteError::PreconditionFailed {
                current: Some(current),
                ..
            }) => {
                r = r.with_header(header::ETAG, current.etag());
            }
            Self::MethodNotAllowed { allow, .. } | Self::IdRequired { allow, .. } => {
                r = r.with_header(header::ALLOW, allow.clone());
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::db::DbError;
    use crate::domain::DocumentId;

    fn status_code_body(e: &ApiError) -> (u16, String, serde_json::Value) {
        let r = e.response();
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        (
            r.status.as_u16(),
            body["error"]["code"].as_str().unwrap().to_owned(),
            body,
        )
    }

    fn db_error(text: &str) -> DbError {
        DbError::Other(mongodb::error::Error::custom(text.to_owned()))
    }

    fn unavailable(retry_after: Duration, source: Option<&str>) -> ApiError {
        WriteError::Unavailable {
            retry_after,
            source: source.map(db_error),
        }
        .into()
    }

    /// An input error answers with its own text.
    fn input(
        e: InputError,
        status: u16,
        code: &'static str,
    ) -> (ApiError, u16, &'static str, String) {
        let message = e.to_string();
        (WriteError::Input(e).into(), status, code, message)
    }

    fn case(
        e: impl Into<ApiError>,
        status: u16,
        code: &'static str,
        message: &str,
    ) -> (ApiError, u16, &'static str, String) {
        (e.into(), status, code, message.to_owned())
    }

    #[test]
    fn every_error_maps_to_its_status_code_and_message() {
        let id = || DocumentId::parse("a").unwrap();
        let cases = vec![
            input(
                InputError::UnsupportedMediaType { got: None },
                415,
                "UnsupportedMediaType",
            ),
            input(InputError::Empty, 400, "EmptyBody"),
            input(
                InputError::MalformedJson {
                    reason: "syntax error",
                    line: 1,
                    column: 2,
                },
                400,
                "MalformedJson",
            ),
            input(
                InputError::NotAnObject { found: "an array" },
                400,
                "NotAnObject",
            ),
            input(
                InputError::InvalidId { reason: "x".into() },
                400,
                "InvalidId",
            ),
            input(
                InputError::InvalidKey {
                    path: "$.$x".into(),
                    reason: "r",
                },
                400,
                "InvalidFieldName",
            ),
            input(InputError::TooDeep, 400, "TooDeep"),
            input(
                InputError::NumberOutOfRange { path: "$.n".into() },
                400,
                "NumberOutOfRange",
            ),
            input(
                InputError::TooLarge {
                    what: "event",
                    size: 2,
                    limit: 1,
                },
                413,
                "PayloadTooLarge",
            ),
            input(
                InputError::InvalidHeader {
                    name: "Idempotency-Key",
                    reason: "r",
                },
                400,
                "InvalidHeader",
            ),
            input(
                InputError::MissingShardKey("tenant".into()),
                400,
                "MissingShardKey",
            ),
            case(
                ApiError::BodyTooLarge { limit: 1 },
                413,
                "PayloadTooLarge",
                "the request body is larger than 1 bytes",
            ),
            case(
                ApiError::UnreadableBody,
                400,
                "UnreadableBody",
                "the request body could not be read",
            ),
            case(
                WriteError::Conflict(id()),
                409,
                "Conflict",
                "a document with _id a already exists",
            ),
            case(
                WriteError::NotFound(id()),
                404,
                "NotFound",
                "there is no document with _id a",
            ),
            case(ApiError::NoRoute, 404, "NotFound", "not found"),
            case(
                WriteError::PreconditionFailed {
                    reason: "x".into(),
                    current: None,
                },
                412,
                "PreconditionFailed",
                "precondition failed: x",
            ),
            case(
                ReadError::NotFound(id()),
                404,
                "NotFound",
                "there is no document with _id a",
            ),
            case(
                ReadError::Input(InputError::InvalidId { reason: "x".into() }),
                400,
                "InvalidId",
                "invalid _id: x",
            ),
            case(
                ReadError::Unavailable {
                    retry_after: Duration::from_secs(1),
                    source: None,
                },
                503,
                "ServiceUnavailable",
                "the service is temporarily unavailable",
            ),
            case(
                ReadError::Internal(db_error("boom")),
                500,
                "InternalError",
                "internal error",
            ),
            case(
                ApiError::IdRequired {
                    method: "PUT".into(),
                    allow: "POST".into(),
                    route: "/api/documents/{id}".into(),
                },
                405,
                "MethodNotAllowed",
                "PUT needs a document id: use /api/documents/{id}",
            ),
            case(
                WriteError::IdempotencyKeyReused,
                422,
                "IdempotencyKeyReused",
                "this Idempotency-Key was already used for a different request",
            ),
            case(
                ApiError::Unauthorized,
                401,
                "Unauthorized",
                "a valid function key is required (x-functions-key header or code query parameter)",
            ),
            case(
                unavailable(Duration::from_millis(1500), None),
                503,
                "ServiceUnavailable",
                "the service is temporarily unavailable",
            ),
            case(
                WriteError::Internal(db_error("boom")),
                500,
                "InternalError",
                "internal error",
            ),
            case(
                ApiError::MethodNotAllowed {
                    method: "GET".into(),
                    allow: "POST".into(),
                },
                405,
                "MethodNotAllowed",
                "method GET is not allowed; use POST",
            ),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (e, status, code, message) in cases {
            let (s, c, body) = status_code_body(&e);
            assert_eq!((s, c.as_str()), (status, code), "{e:?}");
            assert_eq!(body["error"]["message"], message.as_str(), "{e:?}");
            assert!(
                ApiError::CODES.contains(&(code, status)),
                "{code} missing from CODES"
            );
            seen.insert(code);
        }
        let listed: std::collections::BTreeSet<&str> =
            ApiError::CODES.iter().map(|(c, _)| *c).collect();
        assert_eq!(seen, listed, "every listed code is produced by some error");
    }

    #[test]
    fn unavailable_says_when_to_retry_and_405_says_what_is_allowed() {
        let r = unavailable(Duration::from_millis(1500), None).response();
        assert!(r.headers.contains(&(header::RETRY_AFTER, "2".into())));
        let r = ApiError::MethodNotAllowed {
            method: "GET".into(),
            allow: "POST".into(),
        }
        .response();
        assert!(r.headers.contains(&(header::ALLOW, "POST".into())));
    }

    #[test]
    fn a_412_names_the_current_revision_when_there_is_one() {
        let current = crate::domain::Revision {
            version: 3,
            lineage: "L".into(),
        };
        let r = ApiError::from(WriteError::PreconditionFailed {
            reason: "r".into(),
            current: Some(current),
        })
        .response();
        assert!(r.headers.contains(&(header::ETAG, "\"L.3\"".into())));
        let r = ApiError::from(WriteError::PreconditionFailed {
            reason: "r".into(),
            current: None,
        })
        .response();
        assert!(r.headers.iter().all(|(name, _)| name != header::ETAG));
    }

    #[test]
    fn reads_say_when_to_retry_and_a_missing_id_says_which_route() {
        let r = ApiError::from(ReadError::Unavailable {
            retry_after: Duration::from_millis(2500),
            source: None,
        })
        .response();
        assert!(r.headers.contains(&(header::RETRY_AFTER, "3".into())));
        let r = ApiError::IdRequired {
            method: "DELETE".into(),
            allow: "POST".into(),
            route: "/api/documents/{id}".into(),
        }
        .response();
        assert!(r.headers.contains(&(header::ALLOW, "POST".into())));
    }

    #[test]
    fn an_answer_without_a_body_has_no_content_type() {
        let r = ApiResponse::empty(StatusCode::NOT_MODIFIED).into_response();
        assert!(r.headers().get(header::CONTENT_TYPE).is_none());
        let r = ApiResponse::json(StatusCode::OK, &json!({})).into_response();
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn server_errors_never_show_their_cause() {
        let e: ApiError =
            WriteError::Internal(db_error("mongodb://admin:hunter2@db: connection refused")).into();
        let (_, _, body) = status_code_body(&e);
        assert_eq!(body["error"]["message"], "internal error");
        let e = unavailable(
            Duration::from_secs(1),
            Some("Server selection timeout: mongodb://u:p@h"),
        );
        let (_, _, body) = status_code_body(&e);
        assert!(!body.to_string().contains("mongodb://"), "{body}");
    }
}
