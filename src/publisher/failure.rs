//! Why a publish failed: produced by the publisher (and by the relay for what it gives up on),
//! stored on the entries as their last error, and logged.
//!
//! A leaf: it imports nothing from the crate, so both the publisher and the outbox store can
//! name it without an import circle.

use serde::Serialize;

/// What kind of failure a publish was. The stored forms ([`Self::as_str`]) are part of the
/// entry's shape and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Nothing was sent (connection refused, DNS, TLS).
    Connect,
    /// Sent, but no readable answer (timeout, reset): Event Grid may have accepted it.
    UnknownOutcome,
    /// Event Grid answered with an error status.
    Status,
    /// No credential could be presented (no Entra ID token).
    Auth,
    /// The event is larger than Event Grid accepts; the relay dead-letters it unsent.
    TooLarge,
    /// The entry failed `OUTBOX_MAX_ATTEMPTS` times; the relay dead-letters it.
    MaxAttempts,
}

impl FailureKind {
    /// Stored form.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::UnknownOutcome => "unknown_outcome",
            Self::Status => "status",
            Self::Auth => "auth",
            Self::TooLarge => "too_large",
            Self::MaxAttempts => "max_attempts",
        }
    }
}

/// A failed publish, as recorded on the entries (`crate::outbox::LastError` is this type) and
/// logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The status, when there was a response.
    pub status: Option<u16>,
    /// Event Grid's `error.code`.
    pub code: Option<String>,
    /// Event Grid's `error.message`, the transport error, or the relay's reason (never a
    /// secret or a payload).
    pub message: String,
    /// `x-ms-request-id`, for support requests.
    pub request_id: Option<String>,
}

impl PublishFailure {
    /// Why an event of `size` bytes (as it goes on the wire) can never be published, even in a
    /// request of its own; `None` when it can. Dead-lettered without a request by every path.
    #[must_use]
    pub fn too_large(size: usize) -> Option<Self> {
        let fits = size <= crate::domain::MAX_EVENT_BYTES
            && super::batch::fits_alone(size, super::batch::MAX_REQUEST_BYTES);
        (!fits).then(|| Self {
            kind: FailureKind::TooLarge,
            status: None,
            code: None,
            message: format!(
                "the event is {size} bytes; Event Grid accepts at most {}",
                crate::domain::MAX_EVENT_BYTES
            ),
            request_id: None,
        })
    }
}

impl std::fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s}")?,
            None => f.write_str(self.kind.as_str())?,
        }
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (x-ms-request-id {id})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialize_as_their_stored_form() {
        for kind in [
            FailureKind::Connect,
            FailureKind::UnknownOutcome,
            FailureKind::Status,
            FailureKind::Auth,
            FailureKind::TooLarge,
            FailureKind::MaxAttempts,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
    }

    #[test]
    fn failures_read_as_one_line() {
        let f = PublishFailure {
            kind: FailureKind::Status,
            status: Some(503),
            code: Some("ServiceUnavailable".into()),
            message: "try later".into(),
            request_id: Some("r-1".into()),
        };
        assert_eq!(
            f.to_string(),
            "HTTP 503 ServiceUnavailable: try later (x-ms-request-id r-1)"
        );
        let f = PublishFailure {
            kind: FailureKind::Connect,
            status: None,
            code: None,
            message: String::new(),
            request_id: None,
        };
        assert_eq!(f.to_string(), "connect");
    }
}
