//! The control API under `/_receiver/`: inspect what was recorded, script faults.
//!
//! The shapes are documented in the crate docs. Control requests are never subject to
//! faults, credentials or recording.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::error::{ReceiverError, error_chain};
use crate::faults::{FailRule, Fault, FaultSpec};
use crate::state::{Shared, lock};
use crate::wire::{Body, error_body};

/// Largest control request body accepted.
const MAX_CONTROL_BODY: usize = 64 * 1024;

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, detail_code: &str, message: &str) -> Response<Body> {
    json_response(status, error_body(status, detail_code, message))
}

fn serialized(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SerializationFailed",
            &e.to_string(),
        ),
    }
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Answers with `render(K)` for `since=K` in the query (default 0), or 400.
fn with_since(query: Option<&str>, render: impl FnOnce(usize) -> Response<Body>) -> Response<Body> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("since="))
        .map_or(Ok(0), str::parse);
    match value {
        Ok(since) => render(since),
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "QueryInvalid",
            "since must be a non-negative integer",
        ),
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        &format!("this control path allows {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

pub(crate) async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let method = request.method().clone();
    let response = match (
        path.trim_start_matches("/_receiver").trim_end_matches('/'),
        &method,
    ) {
        ("/events", &Method::GET) => with_since(query.as_deref(), |since| {
            json_response(StatusCode::OK, shared.events_json(since))
        }),
        ("/events", &Method::DELETE) => {
            shared.reset();
            no_content()
        }
        ("/events", _) => method_not_allowed("GET, DELETE"),
        ("/ids", &Method::GET) => with_since(query.as_deref(), |since| {
            serialized(&shared.accepted_ids(since))
        }),
        ("/requests", &Method::GET) => with_since(query.as_deref(), |since| {
            serialized(&shared.requests(since))
        }),
        ("/stats", &Method::GET) => serialized(&shared.stats()),
        ("/ids" | "/requests" | "/stats", _) => method_not_allowed("GET"),
        ("/faults", &Method::GET) => serialized(&lock(&shared.faults).view()),
        ("/faults", &Method::POST) => post_fault(shared, request).await,
        ("/faults", &Method::DELETE) => {
            lock(&shared.faults).clear();
            no_content()
        }
        ("/faults", _) => method_not_allowed("GET, POST, DELETE"),
        _ => error(
            StatusCode::NOT_FOUND,
            "ControlPathNotFound",
            "control paths: /_receiver/events, /_receiver/ids, /_receiver/requests, /_receiver/stats, /_receiver/faults",
        ),
    };
    tracing::debug!(method = %method, path, status = response.status().as_u16(), "Control request");
    response
}

async fn post_fault(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(request.into_body(), MAX_CONTROL_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BodyInvalid",
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let spec: FaultSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "FaultInvalid",
                &format!("not a fault rule: {e}"),
            );
        }
    };
    let mut faults = lock(&shared.faults);
    let applied = match spec {
        FaultSpec::Fail(rule) => faults.push(Fault::Fail(rule)),
        FaultSpec::LatencyMs(ms) => {
            faults.set_latency(Some(Duration::from_millis(ms)));
            Ok(())
        }
        FaultSpec::Latency { ms, count } => faults.push(Fault::Latency {
            delay: Duration::from_millis(ms),
            count,
        }),
        FaultSpec::DropAfterAccept { count } => faults.push(Fault::DropAfterAccept { count }),
        FaultSpec::RejectIds(pattern) => faults.set_reject_ids(pattern.as_deref()),
        FaultSpec::FailRate {
            rate,
            status,
            retry_after,
        } => {
            if (0.0..=1.0).contains(&rate) {
                // In range, so the product fits: 0 to 1000.
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "0..=1000"
                )]
                let permille = (rate * 1000.0).round() as u32;
                let mut rule = FailRule::new(1, status);
                rule.retry_after = retry_after;
                faults.push(Fault::FailRate { permille, rule })
            } else {
                Err(ReceiverError::Fault(format!(
                    "a fail rate must be between 0 and 1, got {rate}"
                )))
            }
        }
    };
    match applied {
        Ok(()) => serialized(&faults.view()),
        Err(e) => {
            drop(faults);
            error(StatusCode::BAD_REQUEST, "FaultInvalid", &error_chain(&e))
        }
    }
}
