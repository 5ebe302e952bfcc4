//! Event Grid publishing: one request, and what its response means.
//!
//! The wire format of custom topics (Event Grid or CloudEvents 1.0 schema,
//! `api-version=2018-01-01`, `aeg-sas-key` or an Entra ID bearer token) is known only to this
//! module, so another target (namespace topics, say) can be added without touching the relay.
//!
//! What a response means is decided by [`classify`] on the status code alone (Event Grid's
//! messages are for humans); mechanics (sending, timing out) are separate.

pub mod auth;
pub mod backoff;
pub mod batch;
pub mod failure;
pub mod rate;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde::Deserialize;
use url::Url;

pub use self::failure::{FailureKind, PublishFailure};

use self::auth::{Auth, AuthError};
use self::rate::RateLimit;
use crate::config::{EventGridSettings, EventSchema};
use crate::domain::OutboxEvent;

/// The only API version of custom topics.
pub const API_VERSION: &str = "2018-01-01";

/// Longest error text kept from a response.
const MAX_MESSAGE_CHARS: usize = 512;

/// What to do after a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200: every event in the request was accepted.
    Published,
    /// Transient (408, 429, 5xx, transport, timeout): try again, not before `retry_after`.
    Retry {
        /// The server's `Retry-After` / `retry-after-ms`, if any.
        retry_after: Option<Duration>,
        /// What happened.
        failure: PublishFailure,
    },
    /// 400 or 413: something in the request can never be accepted; split it to find out what.
    Rejected {
        /// What happened.
        failure: PublishFailure,
    },
    /// 401, 403, 404, 415 and other 4xx: misconfiguration; stop and touch nothing.
    Halt {
        /// What happened.
        failure: PublishFailure,
    },
}

/// Decision for a status, before any detail is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Accepted.
    Published,
    /// Transient.
    Retry,
    /// Permanently refused content.
    Rejected,
    /// Configuration problem.
    Halt,
}

/// Maps a response status to what the relay does.
#[must_use]
pub const fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Published,
        408 | 429 | 500..=599 => Class::Retry,
        400 | 413 => Class::Rejected,
        _ => Class::Halt,
    }
}

/// Reads `retry-after-ms` or `Retry-After` (delta-seconds or an HTTP date) relative to `now`.
#[must_use]
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let ms = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    let header = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .and_then(|v| {
            v.parse::<u64>().map(Duration::from_secs).ok().or_else(|| {
                httpdate::parse_http_date(v)
                    .ok()
                    .map(|at| at.duration_since(now).unwrap_or_default())
            })
        });
    match (ms, header) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

fn truncate(s: &str) -> String {
    if s.chars().count() > MAX_MESSAGE_CHARS {
        let mut t: String = s.chars().take(MAX_MESSAGE_CHARS).collect();
        t.push('…');
        t
    } else {
        s.to_owned()
    }
}

/// Why a publisher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    /// The key cannot be sent as a header value.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Makes ring the process's TLS crypto provider (MongoDB's TLS uses ring too), before any
/// HTTP client is built. Calling it again does nothing.
pub fn install_crypto_provider() {
    // Fails only when a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sends batches to one Event Grid topic. Cheap to clone: the connection pool and the token
/// cache are shared.
#[derive(Clone)]
pub struct Publisher {
    client: reqwest::Client,
    url: Url,
    auth: Arc<Auth>,
    schema: EventSchema,
    source: Arc<str>,
    timeout: Duration,
    retries: u32,
    /// `EVENTGRID_MAX_EVENTS_PER_SEC`, shared by every clone (so by every path of the process).
    rate: Option<Arc<RateLimit>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("url", &self.url.as_str())
            .field("schema", &self.schema)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for the configured topic.
    ///
    /// # Errors
    /// When the key is not a valid header value or the HTTP client cannot be built.
    pub fn new(settings: &EventGridSettings) -> Result<Self, PublisherError> {
        install_crypto_provider();
        let mut url = settings.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        let client = reqwest::Client::builder()
            .http1_only()
            .user_agent(concat!("outbox-relay/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.publish_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(PublisherError::Client)?;
        Ok(Self {
            client,
            url,
            auth: Arc::new(Auth::new(&settings.auth)?),
            schema: settings.schema,
            source: settings.source.as_str().into(),
            timeout: settings.publish_timeout,
            retries: settings.publish_retries,
            rate: settings
                .max_events_per_sec
                .map(|per_sec| Arc::new(RateLimit::new(per_sec))),
        })
    }

    /// Quick retries of a transiently failed request inside one run.
    #[must_use]
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The per-request timeout.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The event as it goes on the wire for this topic's schema.
    #[must_use]
    pub fn render(&self, event: &OutboxEvent) -> Vec<u8> {
        let mut out = Vec::with_capacity(event.data.get().len() + 320);
        match self.schema {
            EventSchema::EventGrid => event.write_event_grid_json(&mut out),
            EventSchema::CloudEvents => {
                let collection = event.subject.split('/').next().unwrap_or_default();
                let source = format!("{}/{collection}", self.source);
                event.write_cloudevents_json(&source, &mut out);
            }
        }
        out
    }

    fn content_type(&self) -> &'static str {
        match self.schema {
            EventSchema::EventGrid => "application/json",
            EventSchema::CloudEvents => "application/cloudevents-batch+json; charset=utf-8",
        }
    }

    /// Sends one request whose body is a JSON array of `events` events, and says what it
    /// means; waits first for the rate limit (`EVENTGRID_MAX_EVENTS_PER_SEC`) if one is set.
    /// With Entra ID, a 401 gets one fresh token and one more try.
    #[tracing::instrument(skip_all, fields(bytes = body.len(), events))]
    pub async fn send(&self, body: Vec<u8>, events: usize) -> Outcome {
        if let Some(rate) = &self.rate {
            rate.acquire(events).await;
        }
        let body = bytes::Bytes::from(body);
        let first = self.send_once(body.clone(), false).await;
        match (&*self.auth, &first) {
            (Auth::Entra(_), Outcome::Halt { failure }) if failure.status == Some(401) => {
                tracing::warn!(error = %failure, "Event Grid refused the token; getting a fresh one");
                self.send_once(body, true).await
            }
            _ => first,
        }
    }

    async fn send_once(&self, body: bytes::Bytes, fresh_token: bool) -> Outcome {
        let (name, value) = match self.auth_header(fresh_token).await {
            Ok(header) => header,
            Err(no_token) => return no_token,
        };
        let started = std::time::Instant::now();
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, self.content_type())
            .header(name, value)
            .timeout(self.timeout)
            .body(body)
            .send()
            .await;
        let status = response.as_ref().ok().map(|r| r.status().as_u16());
        crate::metrics::global().eventgrid_request(status, started.elapsed());
        match response {
            Ok(r) => outcome(r).await,
            Err(e) => {
                let kind = if e.is_connect() {
                    FailureKind::Connect
                } else {
                    FailureKind::UnknownOutcome
                };
                Outcome::Retry {
                    retry_after: None,
                    failure: unanswered(kind, &transport_message(e)),
                }
            }
        }
    }

    /// The credential header; without an Entra ID token, the outcome to report instead.
    async fn auth_header(
        &self,
        fresh_token: bool,
    ) -> Result<(&'static str, reqwest::header::HeaderValue), Outcome> {
        match &*self.auth {
            Auth::Key(key) => Ok(("aeg-sas-key", key.clone())),
            Auth::Entra(entra) => match entra.header(fresh_token).await {
                Ok(v) => Ok(("authorization", v)),
                // No token: nothing was sent. A configuration (or platform) problem; stop the
                // run without spending attempts.
                Err(e) => Err(Outcome::Halt {
                    failure: unanswered(FailureKind::Auth, &e.to_string()),
                }),
            },
        }
    }
}

/// What Event Grid's response means, with the detail of an error response.
async fn outcome(response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    let class = classify(status);
    let headers = response.headers().clone();
    let request_id = headers
        .get("x-ms-request-id")
        .and_then(|v| v.to_str().ok())
        .map(truncate);
    let body = response.bytes().await;
    if class == Class::Published {
        // The status line is Event Grid's answer; an unreadable (empty) body changes nothing.
        return Outcome::Published;
    }
    let (code, message) = match body
        .as_deref()
        .ok()
        .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok())
    {
        Some(ErrorBody { error }) => (
            error.code.as_deref().map(truncate),
            error.message.as_deref().map(truncate).unwrap_or_default(),
        ),
        None => (None, String::new()),
    };
    let failure = PublishFailure {
        kind: FailureKind::Status,
        status: Some(status),
        code,
        message,
        request_id,
    };
    match class {
        Class::Retry => Outcome::Retry {
            retry_after: retry_after(&headers, SystemTime::now()),
            failure,
        },
        Class::Rejected => Outcome::Rejected { failure },
        Class::Halt | Class::Published => Outcome::Halt { failure },
    }
}

/// A failure without a response from Event Grid.
fn unanswered(kind: FailureKind, message: &str) -> PublishFailure {
    PublishFailure {
        kind,
        status: None,
        code: None,
        message: truncate(message),
        request_id: None,
    }
}

/// A transport error's causes on one line, without the URL (it is in the settings, and a
/// query string could one day carry something sensitive).
fn transport_message(e: reqwest::Error) -> String {
    crate::telemetry::chain(&e.without_url())
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn statuses_map_to_actions() {
        assert_eq!(classify(200), Class::Published);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify(s), Class::Retry, "{s}");
        }
        for s in [400, 413] {
            assert_eq!(classify(s), Class::Rejected, "{s}");
        }
        for s in [401, 403, 404, 405, 415] {
            assert_eq!(classify(s), Class::Halt, "{s}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert("retry-after-ms", HeaderValue::from_static("45000"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(45)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_str(&past).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }
}
