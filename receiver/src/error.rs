//! The error type of the library API.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything the library API can fail with.
///
/// Request-level problems (a publisher breaking the contract) are never errors of this
/// type: they are answered over HTTP with Event Grid's status and error body.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The listening socket could not be bound.
    #[error("cannot bind the receiver to {addr}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket's address could not be read back.
    #[error("cannot read the receiver's local address")]
    LocalAddr(#[source] std::io::Error),
    /// A [`crate::ReceiverConfig`] value is unusable; the message names it.
    #[error("invalid receiver configuration: {0}")]
    Config(String),
    /// The JSONL record file could not be opened for appending.
    #[error("cannot open the record file {path}")]
    RecordFile {
        /// The configured record file.
        path: PathBuf,
        /// Why opening failed.
        #[source]
        source: std::io::Error,
    },
    /// A `reject_ids` pattern is not a valid regular expression.
    #[error("invalid reject_ids pattern {pattern:?}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// The regex compiler's complaint.
        #[source]
        source: regex_lite::Error,
    },
    /// A fault rule is unusable (status out of range, bad `Retry-After` value); the
    /// message says which part.
    #[error("invalid fault rule: {0}")]
    Fault(String),
}

/// An error and its sources on one line, `outer: inner: …`.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
