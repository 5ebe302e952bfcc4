//! What the receiver's layers share: the response body type, Event Grid's size limits,
//! a rejection and Event Grid's error body, compact JSON.
//!
//! A leaf: it imports nothing from this crate, so the request rules (`contract`), the
//! event rules (`schema`), the control API and the server can all use it without
//! importing one another in a circle.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;

/// The response body type of every answer.
pub(crate) type Body = Full<Bytes>;

/// Largest accepted request body, in bytes as sent on the wire (1 MiB).
pub const MAX_BODY_BYTES: usize = 1_048_576;
/// Largest accepted event, in bytes of compact JSON (1 MiB).
pub const MAX_EVENT_BYTES: usize = 1_048_576;
/// Most events accepted in one request.
pub const MAX_EVENTS_PER_REQUEST: usize = 5_000;

/// The size limits a request is held to; the constants above in production, smaller
/// values in unit tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_events: usize,
}

impl Limits {
    /// Event Grid's limits.
    pub(crate) const EVENT_GRID: Self = Self {
        max_body_bytes: MAX_BODY_BYTES,
        max_event_bytes: MAX_EVENT_BYTES,
        max_events: MAX_EVENTS_PER_REQUEST,
    };
}

/// Why a request is refused: what goes into the status line and the error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    /// `error.details[0].code`, e.g. `InputJsonInvalid`.
    pub(crate) detail_code: &'static str,
    /// `error.message` and `error.details[0].message`.
    pub(crate) message: String,
}

impl Rejection {
    pub(crate) fn new(
        status: StatusCode,
        detail_code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            detail_code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(detail_code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail_code, message)
    }

    pub(crate) fn too_large(detail_code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, detail_code, message)
    }

    /// The error body Event Grid sends:
    /// `{"error":{"code":…,"message":…,"details":[{"code":…,"message":…}]}}`.
    pub(crate) fn body(&self) -> String {
        error_body(self.status, self.detail_code, &self.message)
    }
}

/// Event Grid's top-level error `code` for a status.
pub(crate) fn error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        408 => "RequestTimeout",
        409 => "Conflict",
        413 => "PayloadTooLarge",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        s if s >= 500 => "ServerError",
        _ => "Error",
    }
}

/// Renders Event Grid's error shape.
pub(crate) fn error_body(status: StatusCode, detail_code: &str, message: &str) -> String {
    serde_json::json!({
        "error": {
            "code": error_code(status),
            "message": message,
            "details": [{ "code": detail_code, "message": message }],
        }
    })
    .to_string()
}

/// The compact form of a JSON text: whitespace outside strings removed. Borrowed when
/// the text already is compact (the common case: serializers write compact JSON).
pub(crate) fn compact(raw: &str) -> Cow<'_, str> {
    let bytes = raw.as_bytes();
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    // Fast path: find the first whitespace byte outside a string, if any.
    let mut in_string = false;
    let mut escaped = false;
    let mut first_ws = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_ws(b) {
            first_ws = Some(i);
            break;
        }
    }
    let Some(start) = first_ws else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..start]);
    // `start` is outside any string, so the state restarts clean there.
    let mut in_string = false;
    let mut escaped = false;
    for ch in raw[start..].chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
            out.push(ch);
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !matches!(ch, ' ' | '\t' | '\n' | '\r') {
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_event_grid_shape() {
        let rejection = Rejection::bad_request("InputJsonInvalid", "bad \"thing\"");
        let body: serde_json::Value = serde_json::from_str(&rejection.body()).unwrap();
        assert_eq!(body["error"]["code"], "BadRequest");
        assert_eq!(body["error"]["message"], "bad \"thing\"");
        assert_eq!(body["error"]["details"][0]["code"], "InputJsonInvalid");
        assert_eq!(body["error"]["details"][0]["message"], "bad \"thing\"");
        assert_eq!(
            error_code(StatusCode::SERVICE_UNAVAILABLE),
            "ServiceUnavailable"
        );
        assert_eq!(error_code(StatusCode::TOO_MANY_REQUESTS), "TooManyRequests");
    }

    #[test]
    fn compact_removes_whitespace_outside_strings_only() {
        assert!(matches!(compact(r#"{"a":"b c"}"#), Cow::Borrowed(_)));
        assert_eq!(
            compact("{ \"a\" :\n [1, \"x \\\" y\" ,\t{}] }"),
            r#"{"a":[1,"x \" y",{}]}"#
        );
        assert_eq!(compact(r#"{"a\\": "é ü"}"#), r#"{"a\\":"é ü"}"#);
    }
}
