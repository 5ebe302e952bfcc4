//! The HTTP/1.1 server: accept loop, connections, and the publish endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::config::CONTROL_PREFIX;
use crate::contract;
use crate::control;
use crate::state::{Decided, RequestOutcome, Shared, lock};
use crate::wire::{Body, Limits, Rejection, error_body};

/// How long connections may take to finish their request in flight once shutdown
/// begins, before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Returned by the service to make hyper close the connection without writing a
/// response (hyper never answers a service error on HTTP/1; it drops the connection).
#[derive(Debug, thiserror::Error)]
#[error("connection closed without a response on purpose")]
pub(crate) struct CloseConnection;

/// Accepts connections until shutdown, then lets each connection finish its request in
/// flight (up to [`SHUTDOWN_GRACE`]) and returns once every connection task has ended.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    // Every connection task lives in this set, so none outlives `serve`.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&shared)));
                }
                Err(error) => {
                    // Typically out of file descriptors; back off instead of spinning.
                    tracing::warn!(error = %error, "Cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(ended) = connections.join_next(), if !connections.is_empty() => report_task(ended),
        }
    }
    drop(listener);
    // Connections watch the same shutdown flag and shut down gracefully on their own.
    let deadline = tokio::time::sleep(SHUTDOWN_GRACE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ended = connections.join_next() => match ended {
                Some(ended) => report_task(ended),
                None => break,
            },
            () = &mut deadline => {
                tracing::debug!(connections = connections.len(), "Aborting connections still open after the shutdown grace period");
                connections.shutdown().await;
                break;
            }
        }
    }
    tracing::debug!("Receiver stopped");
}

/// Resolves once shutdown has begun (or the flag's sender is gone).
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, never held across an await.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn report_task(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended
        && error.is_panic()
    {
        tracing::error!(error = %error, "A connection task panicked");
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Small responses: send them without waiting for Nagle.
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.shutdown.subscribe();
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    let mut builder = http1::Builder::new();
    // No header read timeout: closing idle keep-alive connections on a timer would race
    // with a publisher reusing them and produce spurious unknown outcomes.
    builder.keep_alive(true).header_read_timeout(None);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        let is_on_purpose =
            std::error::Error::source(&error).is_some_and(|s| s.is::<CloseConnection>());
        if is_on_purpose {
            tracing::debug!(peer = %peer, "Connection closed without a response");
        } else {
            tracing::debug!(peer = %peer, error = %error, "Connection ended with an error");
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, CloseConnection> {
    let path = request.uri().path();
    if path == "/_receiver" || path.starts_with(CONTROL_PREFIX) {
        return Ok(control::handle(&shared, request).await);
    }
    publish(&shared, request).await
}

/// The body as read: complete, or how far reading got.
enum BodyRead {
    Complete(Bytes),
    /// More than the limit arrived; reading stopped after `read` bytes.
    TooLarge {
        read: u64,
    },
    /// Not read (an `Expect` header, or a declared length over the limit).
    Skipped {
        declared: u64,
    },
    /// The client broke the body off (or sent malformed chunked framing).
    Failed {
        read: u64,
    },
}

impl BodyRead {
    fn bytes(&self) -> u64 {
        match self {
            Self::Complete(body) => body.len() as u64,
            Self::TooLarge { read } | Self::Failed { read } => *read,
            Self::Skipped { declared } => *declared,
        }
    }

    /// Whether the connection can be reused: the body was consumed.
    fn is_consumed(&self) -> bool {
        matches!(self, Self::Complete(_))
    }

    fn event_count(&self) -> Option<usize> {
        match self {
            Self::Complete(body) => contract::count_events(body),
            _ => None,
        }
    }
}

/// Reads the body, counting as it arrives and stopping as soon as it passes `limit`.
async fn read_body(mut body: Incoming, limit: usize, declared: Option<u64>) -> BodyRead {
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit));
    let mut single: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut read: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return BodyRead::Failed { read };
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        read += data.len() as u64;
        if read > limit as u64 {
            return BodyRead::TooLarge { read };
        }
        // Keep a single-frame body as is; join only when a second frame arrives.
        if let Some(buf) = joined.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(first) = single.take() {
            let mut buf = BytesMut::with_capacity(capacity.max(first.len() + data.len()));
            buf.extend_from_slice(&first);
            buf.extend_from_slice(&data);
            joined = Some(buf);
        } else {
            single = Some(data);
        }
    }
    BodyRead::Complete(joined.map(BytesMut::freeze).or(single).unwrap_or_default())
}

/// What the publish endpoint answers, before latency is applied.
struct Answer {
    status: StatusCode,
    body: Option<String>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    close: bool,
}

impl Answer {
    fn error(rejection: &Rejection, close: bool) -> Self {
        Self {
            status: rejection.status,
            body: Some(rejection.body()),
            headers: Vec::new(),
            close,
        }
    }
}

/// One request to the publish endpoint, and what is needed to answer it.
struct Exchange<'a> {
    shared: &'a Shared,
    parts: hyper::http::request::Parts,
    request_id: String,
    started: Instant,
    /// The latency fault taken for this request, applied just before answering.
    latency: Option<Duration>,
}

impl Exchange<'_> {
    /// Logs and records a request that was not accepted, then answers it.
    async fn answer(&self, decided: &Decided, answer: Answer, detail: &str) -> Response<Body> {
        log_request(&self.parts, decided, self.started, detail);
        self.shared.record_request(decided);
        respond(self.shared, answer, self.latency, &self.request_id).await
    }

    /// Refuses the request with `rejection`.
    async fn refuse(
        &self,
        rejection: &Rejection,
        event_count: Option<usize>,
        body_bytes: u64,
        close: bool,
    ) -> Response<Body> {
        let decided = Decided {
            status: rejection.status.as_u16(),
            outcome: RequestOutcome::Refused,
            event_count,
            body_bytes,
            detail_code: Some(rejection.detail_code),
            request_id: self.request_id.clone(),
        };
        let mut answer = Answer::error(rejection, close);
        if rejection.status == StatusCode::METHOD_NOT_ALLOWED {
            answer
                .headers
                .push((header::ALLOW, HeaderValue::from_static("POST")));
        }
        self.answer(&decided, answer, &rejection.message).await
    }
}

async fn publish(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Body>, CloseConnection> {
    let limits = Limits::EVENT_GRID;
    let config = &shared.config;
    let (parts, body) = request.into_parts();
    let is_endpoint = parts.uri.path() == config.path;
    let (fail, latency, reject_ids) = {
        let mut faults = lock(&shared.faults);
        let fail = if is_endpoint {
            faults.take_fail()
        } else {
            None
        };
        (fail, faults.take_latency(), faults.reject_ids())
    };
    // Polling the body of a request with `Expect: 100-continue` would make hyper send
    // `100 Continue`; such requests are answered without reading.
    let has_expect = parts.headers.contains_key(header::EXPECT);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let exchange = Exchange {
        shared,
        parts,
        request_id: uuid::Uuid::new_v4().to_string(),
        started: Instant::now(),
        latency,
    };
    // Requests answered before validation still have their body read (up to the
    // limit), so that the publisher's keep-alive connection stays usable.
    let drain = |body: Incoming| async move {
        match declared {
            Some(n) if n > limits.max_body_bytes as u64 => BodyRead::Skipped { declared: n },
            _ if has_expect => BodyRead::Skipped {
                declared: declared.unwrap_or(0),
            },
            _ => read_body(body, limits.max_body_bytes, declared).await,
        }
    };

    // Injected failures come before any validation.
    if let Some(fail) = fail {
        let read = drain(body).await;
        let message = format!(
            "failure injected by the receiver (fail rule, {} left)",
            fail.remaining
        );
        let mut answer = Answer {
            status: fail.status,
            body: Some(error_body(fail.status, "InjectedFault", &message)),
            headers: Vec::new(),
            close: !read.is_consumed(),
        };
        if let Some(value) = fail.retry_after {
            answer.headers.push((header::RETRY_AFTER, value));
        }
        if let Some(ms) = fail.retry_after_ms {
            answer.headers.push((
                header::HeaderName::from_static("retry-after-ms"),
                HeaderValue::from(ms),
            ));
        }
        let decided = Decided {
            status: fail.status.as_u16(),
            outcome: RequestOutcome::Injected,
            event_count: read.event_count(),
            body_bytes: read.bytes(),
            detail_code: Some("InjectedFault"),
            request_id: exchange.request_id.clone(),
        };
        return Ok(exchange.answer(&decided, answer, &message).await);
    }

    // Steps 1 to 4: path, method, api-version, credentials, content headers.
    let parts = &exchange.parts;
    let early = if !is_endpoint {
        Some(Rejection::new(
            StatusCode::NOT_FOUND,
            "EndpointNotFound",
            format!(
                "no topic endpoint at {}; publish to {}",
                parts.uri.path(),
                config.path
            ),
        ))
    } else if parts.method != Method::POST {
        Some(Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("method {} is not allowed; publish with POST", parts.method),
        ))
    } else {
        contract::check_api_version(parts.uri.query())
            .and_then(|()| {
                contract::check_auth(&parts.headers, &config.key, config.bearer_token.as_deref())
            })
            .and_then(|()| contract::check_content_headers(&parts.headers, config.schema))
            .err()
    };
    if let Some(rejection) = early {
        let read = drain(body).await;
        return Ok(exchange
            .refuse(
                &rejection,
                read.event_count(),
                read.bytes(),
                !read.is_consumed(),
            )
            .await);
    }

    // Step 5: the size, declared first, then counted while reading.
    if let Err(rejection) = contract::check_content_length(&parts.headers, &limits) {
        return Ok(exchange
            .refuse(&rejection, None, declared.unwrap_or(0), true)
            .await);
    }
    let body = match read_body(body, limits.max_body_bytes, declared).await {
        BodyRead::Complete(body) => body,
        BodyRead::TooLarge { read } => {
            let rejection = contract::body_too_large(None, &limits);
            return Ok(exchange.refuse(&rejection, None, read, true).await);
        }
        BodyRead::Skipped { .. } | BodyRead::Failed { .. } => {
            tracing::debug!(request.id = %exchange.request_id, "Request body broken off by the client");
            return Err(CloseConnection);
        }
    };
    let body_bytes = body.len() as u64;

    // Steps 6 to 8: the body, every event, reject_ids.
    let batch = match contract::parse_batch(&body, config.schema, &limits, reject_ids.as_deref()) {
        Ok(batch) => batch,
        Err(rejection) => {
            let event_count = contract::count_events(&body);
            return Ok(exchange
                .refuse(&rejection, event_count, body_bytes, false)
                .await);
        }
    };

    // Accepted: record everything, then answer (or, for drop_after_accept, close).
    let is_dropped = lock(&shared.faults).take_drop_after_accept();
    let decided = Decided {
        status: 200,
        outcome: if is_dropped {
            RequestOutcome::AcceptedThenDropped
        } else {
            RequestOutcome::Accepted
        },
        event_count: Some(batch.events.len()),
        body_bytes,
        detail_code: None,
        request_id: exchange.request_id.clone(),
    };
    if let Err(error) = shared.record_accepted(&decided, &body, &batch.events) {
        tracing::error!(request.id = %exchange.request_id, error = %error, "Cannot append to the record file");
        let rejection = Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "RecordFailed",
            "the receiver could not write its record file",
        );
        return Ok(exchange
            .refuse(&rejection, Some(batch.events.len()), body_bytes, false)
            .await);
    }
    log_request(
        parts,
        &decided,
        exchange.started,
        &format!("{} events", batch.events.len()),
    );
    if is_dropped {
        sleep_unless_shutdown(shared, latency).await;
        return Err(CloseConnection);
    }
    let answer = Answer {
        status: StatusCode::OK,
        body: None,
        headers: Vec::new(),
        close: false,
    };
    Ok(respond(shared, answer, latency, &exchange.request_id).await)
}

fn log_request(
    parts: &hyper::http::request::Parts,
    decided: &Decided,
    started: Instant,
    detail: &str,
) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let events = decided.event_count.unwrap_or(0);
    let code = decided.detail_code.unwrap_or("");
    let text = match decided.outcome {
        RequestOutcome::Accepted => "Request accepted",
        RequestOutcome::AcceptedThenDropped => {
            "Request accepted, connection closed without a response"
        }
        RequestOutcome::Refused => "Request refused",
        RequestOutcome::Injected => "Request failed by an injected fault",
    };
    tracing::info!(
        request.id = %decided.request_id,
        method = %parts.method,
        path = parts.uri.path(),
        status = decided.status,
        events,
        body_bytes = decided.body_bytes,
        code,
        duration_ms,
        "{text}: {detail}"
    );
}

async fn sleep_unless_shutdown(shared: &Shared, delay: Option<Duration>) {
    let Some(delay) = delay else {
        return;
    };
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = stopped(&mut shutdown) => {}
    }
}

async fn respond(
    shared: &Shared,
    answer: Answer,
    latency: Option<Duration>,
    request_id: &str,
) -> Response<Body> {
    sleep_unless_shutdown(shared, latency).await;
    // Error bodies go out without a Content-Type, as Azure sends them: publishers must
    // not depend on one.
    let mut response = Response::new(Full::new(answer.body.map(Bytes::from).unwrap_or_default()));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-ms-request-id", value);
    }
    for (name, value) in answer.headers {
        headers.insert(name, value);
    }
    if answer.close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
