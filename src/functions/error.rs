//! One error type for the HTTP API, mapped to a status and a JSON body in one place.
//!
//! Bodies look like `{"error":{"code":"MalformedJson","message":"…"}}`. Client errors say what
//! to fix; server errors are generic — their detail is logged once, here, and never sent (no
//! driver text, no connection string, no key).

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::documents::WriteError;
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
    /// JSON body.
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

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl IntoResponse for ApiResponse {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.append(name, v);
            }
        }
        response
    }
}

/// Everything the HTTP API can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not an acceptable document.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A document with this id exists.
    #[error("a document with _id {0} already exists")]
    Conflict(String),
    /// No document with this id.
    #[error("there is no document with _id {0}")]
    NotFound(String),
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("precondition failed: {0}")]
    PreconditionFailed(&'static str),
    /// The `Idempotency-Key` was used for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// Standalone mode: no or a wrong function key.
    #[error("a valid function key is required (x-functions-key header or code query parameter)")]
    Unauthorized,
    /// No route for this path.
    #[error("not found")]
    NoRoute,
    /// The database is unavailable or throttling.
    #[error("the service is temporarily unavailable")]
    Unavailable {
        /// When to try again.
        retry_after: Duration,
        /// The cause, logged only.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A bug or a setup problem.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The method is not supported on this route.
    #[error("method {method} is not allowed; use {allow}")]
    MethodNotAllowed {
        /// The method that was used.
        method: String,
        /// The methods that are.
        allow: String,
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

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Input(i) => Self::Input(i),
            WriteError::Conflict(id) => Self::Conflict(id.to_string()),
            WriteError::NotFound(id) => Self::NotFound(id.to_string()),
            WriteError::PreconditionFailed(why) => Self::PreconditionFailed(why),
            WriteError::IdempotencyKeyReused => Self::IdempotencyKeyReused,
            WriteError::Unavailable {
                retry_after,
                source,
            } => Self::Unavailable {
                retry_after,
                source: source.map(|s| Box::new(s) as _),
            },
            WriteError::Internal(source) => Self::Internal(Box::new(source)),
        }
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

    /// Status and error code.
    #[must_use]
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Input(i) => match i {
                InputError::UnsupportedMediaType { .. } => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
                }
                InputError::Empty => (StatusCode::BAD_REQUEST, "EmptyBody"),
                InputError::MalformedJson { .. } => (StatusCode::BAD_REQUEST, "MalformedJson"),
                InputError::NotAnObject { .. } => (StatusCode::BAD_REQUEST, "NotAnObject"),
                InputError::InvalidId { .. } => (StatusCode::BAD_REQUEST, "InvalidId"),
                InputError::InvalidKey { .. } => (StatusCode::BAD_REQUEST, "InvalidFieldName"),
                InputError::TooDeep => (StatusCode::BAD_REQUEST, "TooDeep"),
                InputError::NumberOutOfRange { .. } => {
                    (StatusCode::BAD_REQUEST, "NumberOutOfRange")
                }
                InputError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
                InputError::InvalidHeader { .. } => (StatusCode::BAD_REQUEST, "InvalidHeader"),
                InputError::MissingShardKey(_) => (StatusCode::BAD_REQUEST, "MissingShardKey"),
            },
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            Self::NoRoute => (StatusCode::NOT_FOUND, "NotFound"),
            Self::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "PreconditionFailed"),
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "IdempotencyKeyReused")
            }
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            Self::UnreadableBody => (StatusCode::BAD_REQUEST, "UnreadableBody"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }

    /// The response, logging server-side detail once.
    #[must_use]
    pub fn response(&self) -> ApiResponse {
        let (status, code) = self.status_and_code();
        match self {
            Self::Internal(_) => {
                tracing::error!(error = %chain(self), "Request failed");
            }
            Self::Unavailable { .. } => {
                tracing::warn!(error = %chain(self), "Request failed: service unavailable");
            }
            _ => tracing::debug!(code, error = %self, "Request rejected"),
        }
        let message = self.to_string();
        let mut r = ApiResponse::json(
            status,
            &json!({ "error": { "code": code, "message": message } }),
        );
        match self {
            Self::Unavailable { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0);
                r = r.with_header(header::RETRY_AFTER, format!("{secs:.0}"));
            }
            Self::MethodNotAllowed { allow, .. } => {
                r = r.with_header(header::ALLOW, allow.clone());
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_code_body(e: &ApiError) -> (u16, String, serde_json::Value) {
        let r = e.response();
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        (
            r.status.as_u16(),
            body["error"]["code"].as_str().unwrap().to_owned(),
            body,
        )
    }

    #[test]
    fn every_error_maps_to_its_status_and_code() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (
                InputError::UnsupportedMediaType { got: None }.into(),
                415,
                "UnsupportedMediaType",
            ),
            (InputError::Empty.into(), 400, "EmptyBody"),
            (
                InputError::MalformedJson {
                    reason: "syntax error",
                    line: 1,
                    column: 2,
                }
                .into(),
                400,
                "MalformedJson",
            ),
            (
                InputError::NotAnObject { found: "an array" }.into(),
                400,
                "NotAnObject",
            ),
            (
                InputError::InvalidId { reason: "x".into() }.into(),
                400,
                "InvalidId",
            ),
            (
                InputError::InvalidKey {
                    path: "$.$x".into(),
                    reason: "r",
                }
                .into(),
                400,
                "InvalidFieldName",
            ),
            (InputError::TooDeep.into(), 400, "TooDeep"),
            (
                InputError::NumberOutOfRange { path: "$.n".into() }.into(),
                400,
                "NumberOutOfRange",
            ),
            (
                InputError::TooLarge {
                    what: "event",
                    size: 2,
                    limit: 1,
                }
                .into(),
                413,
                "PayloadTooLarge",
            ),
            (ApiError::BodyTooLarge { limit: 1 }, 413, "PayloadTooLarge"),
            (ApiError::UnreadableBody, 400, "UnreadableBody"),
            (ApiError::Conflict("a".into()), 409, "Conflict"),
            (ApiError::NotFound("a".into()), 404, "NotFound"),
            (ApiError::NoRoute, 404, "NotFound"),
            (ApiError::PreconditionFailed("x"), 412, "PreconditionFailed"),
            (ApiError::IdempotencyKeyReused, 422, "IdempotencyKeyReused"),
            (ApiError::Unauthorized, 401, "Unauthorized"),
            (
                InputError::InvalidHeader {
                    name: "Idempotency-Key",
                    reason: "r",
                }
                .into(),
                400,
                "InvalidHeader",
            ),
            (
                InputError::MissingShardKey("tenant".into()).into(),
                400,
                "MissingShardKey",
            ),
            (
                ApiError::Unavailable {
                    retry_after: Duration::from_millis(1500),
                    source: None,
                },
                503,
                "ServiceUnavailable",
            ),
            (ApiError::Internal("boom".into()), 500, "InternalError"),
            (
                ApiError::MethodNotAllowed {
                    method: "GET".into(),
                    allow: "POST".into(),
                },
                405,
                "MethodNotAllowed",
            ),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (e, status, code) in cases {
            let (s, c, _) = status_code_body(&e);
            assert_eq!((s, c.as_str()), (status, code), "{e:?}");
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
        let r = ApiError::Unavailable {
            retry_after: Duration::from_millis(1500),
            source: None,
        }
        .response();
        assert!(r.headers.contains(&(header::RETRY_AFTER, "2".into())));
        let r = ApiError::MethodNotAllowed {
            method: "GET".into(),
            allow: "POST".into(),
        }
        .response();
        assert!(r.headers.contains(&(header::ALLOW, "POST".into())));
    }

    #[test]
    fn server_errors_never_show_their_cause() {
        let e = ApiError::Internal("mongodb://admin:hunter2@db: connection refused".into());
        let (_, _, body) = status_code_body(&e);
        assert_eq!(body["error"]["message"], "internal error");
        let e = ApiError::Unavailable {
            retry_after: Duration::from_secs(1),
            source: Some("Server selection timeout: mongodb://u:p@h".into()),
        };
        let (_, _, body) = status_code_body(&e);
        assert!(!body.to_string().contains("mongodb://"), "{body}");
    }
}
