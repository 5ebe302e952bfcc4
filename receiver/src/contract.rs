//! The request-level rules of Event Grid's publish contract, as pure functions.
//!
//! Every check returns a [`Rejection`] (defined in `wire`): the status, Event Grid's error `code`, a detail
//! code and a message. The server applies them in the documented order; the event-level
//! rules live in [`crate::schema`].

use hyper::StatusCode;
use hyper::header::{self, HeaderMap};
use serde_json::value::RawValue;

use crate::config::Schema;
use crate::schema::{self, ValidEvent};
use crate::wire::{Limits, Rejection};

/// The only `api-version` a custom topic accepts.
pub const API_VERSION: &str = "2018-01-01";

/// Step 2: the query must carry `api-version=2018-01-01` exactly once (other parameters
/// are allowed).
pub(crate) fn check_api_version(query: Option<&str>) -> Result<(), Rejection> {
    let mut found: Option<&str> = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "api-version" {
            if found.is_some() {
                return Err(Rejection::bad_request(
                    "ApiVersionInvalid",
                    "the api-version query parameter is given more than once",
                ));
            }
            found = Some(value);
        }
    }
    match found {
        None => Err(Rejection::bad_request(
            "ApiVersionMissing",
            format!("the api-version query parameter is missing; use api-version={API_VERSION}"),
        )),
        Some(API_VERSION) => Ok(()),
        Some(other) => Err(Rejection::bad_request(
            "ApiVersionInvalid",
            format!("api-version {other:?} is not supported; use api-version={API_VERSION}"),
        )),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Step 3: `aeg-sas-key: <key>` or `Authorization: Bearer <token>`.
pub(crate) fn check_auth(
    headers: &HeaderMap,
    key: &str,
    bearer_token: Option<&str>,
) -> Result<(), Rejection> {
    let sas_key = headers.get("aeg-sas-key");
    let authorization = headers.get(header::AUTHORIZATION);
    if let Some(given) = sas_key
        && constant_time_eq(given.as_bytes(), key.as_bytes())
    {
        return Ok(());
    }
    if let Some(given) = authorization {
        let given = given.as_bytes();
        let is_bearer = given.len() > 7 && given[..7].eq_ignore_ascii_case(b"bearer ");
        if is_bearer
            && let Some(expected) = bearer_token
            && constant_time_eq(&given[7..], expected.as_bytes())
        {
            return Ok(());
        }
    }
    let message = match (sas_key, authorization) {
        (None, None) => {
            "the request carries no credential: send aeg-sas-key or Authorization: Bearer"
        }
        (Some(_), _) => "the aeg-sas-key header does not match the topic's key",
        (None, Some(_)) => "the Authorization header does not carry a valid bearer token",
    };
    Err(Rejection::new(
        StatusCode::UNAUTHORIZED,
        "AuthenticationFailed",
        message,
    ))
}

fn unsupported(detail_code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, detail_code, message)
}

/// Checks one `Content-Type` value against the schema's media type; parameters are
/// allowed, but a `charset` must be `utf-8`.
pub(crate) fn content_type_matches(value: &str, schema: Schema) -> Result<(), String> {
    let mut parts = value.split(';');
    let media_type = parts.next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case(schema.media_type()) {
        return Err(format!(
            "Content-Type {value:?} is not supported by this topic ({} schema); use {}",
            schema,
            schema.media_type()
        ));
    }
    for param in parts {
        let Some((name, param_value)) = param.split_once('=') else {
            return Err(format!(
                "Content-Type {value:?} has a malformed parameter {param:?}"
            ));
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = param_value.trim().trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") {
                return Err(format!("Content-Type {value:?}: the charset must be utf-8"));
            }
        }
    }
    Ok(())
}

/// Step 4: `Content-Type`, `Content-Encoding`, `Transfer-Encoding` and `Expect`.
pub(crate) fn check_content_headers(headers: &HeaderMap, schema: Schema) -> Result<(), Rejection> {
    let mut content_types = headers.get_all(header::CONTENT_TYPE).iter();
    match (content_types.next(), content_types.next()) {
        (None, _) => {
            return Err(unsupported(
                "ContentTypeMissing",
                format!(
                    "the request has no Content-Type; use {}",
                    schema.media_type()
                ),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(unsupported(
                "ContentTypeInvalid",
                "the request has more than one Content-Type",
            ));
        }
        (Some(value), None) => {
            let value = value.to_str().map_err(|_| {
                unsupported(
                    "ContentTypeInvalid",
                    "the Content-Type is not visible ASCII",
                )
            })?;
            content_type_matches(value, schema)
                .map_err(|m| unsupported("ContentTypeInvalid", m))?;
        }
    }
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let is_identity = value.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("identity"))
        });
        if !is_identity {
            return Err(unsupported(
                "ContentEncodingUnsupported",
                format!("Content-Encoding {value:?} is not supported; send the body uncompressed"),
            ));
        }
    }
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let is_chunked = value.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        if !is_chunked {
            return Err(unsupported(
                "TransferEncodingUnsupported",
                format!("Transfer-Encoding {value:?} is not supported; send the body uncompressed"),
            ));
        }
    }
    if let Some(value) = headers.get(header::EXPECT) {
        return Err(Rejection::bad_request(
            "ExpectNotAllowed",
            format!("the publisher must not send an Expect header (got {value:?})"),
        ));
    }
    Ok(())
}

/// Step 5, before reading: a declared `Content-Length` over the limit is refused at once.
pub(crate) fn check_content_length(
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<Option<u64>, Rejection> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    let length = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Rejection::bad_request("ContentLengthInvalid", "the Content-Length is not a number")
        })?;
    if length > limits.max_body_bytes as u64 {
        return Err(body_too_large(Some(length), limits));
    }
    Ok(Some(length))
}

/// The 413 for a body over the limit (`declared` is the Content-Length, if known).
pub(crate) fn body_too_large(declared: Option<u64>, limits: &Limits) -> Rejection {
    let size = declared.map_or_else(|| "more than".to_owned(), |n| format!("{n}, more than"));
    Rejection::too_large(
        "RequestTooLarge",
        format!(
            "the request body is {size} the limit of {} bytes",
            limits.max_body_bytes
        ),
    )
}

/// A request body that passed every rule: its events in order.
#[derive(Debug)]
pub(crate) struct ValidBatch<'a> {
    pub(crate) events: Vec<ValidEvent<'a>>,
}

/// Steps 6 and 7: the body must be UTF-8 without BOM, a JSON array of 1 to
/// `max_events` events, each valid for the schema and within the event size limit.
///
/// `reject_ids` refuses the batch (400) if any event id matches it.
pub(crate) fn parse_batch<'a>(
    body: &'a [u8],
    schema: Schema,
    limits: &Limits,
    reject_ids: Option<&regex_lite::Regex>,
) -> Result<ValidBatch<'a>, Rejection> {
    let raw_events = parse_array(body)?;
    if raw_events.is_empty() {
        return Err(Rejection::bad_request(
            "InputJsonInvalid",
            "the request contains no events",
        ));
    }
    if raw_events.len() > limits.max_events {
        return Err(Rejection::too_large(
            "TooManyEvents",
            format!(
                "the request contains {} events, more than the limit of {}",
                raw_events.len(),
                limits.max_events
            ),
        ));
    }
    let mut events = Vec::with_capacity(raw_events.len());
    for (index, raw) in raw_events.into_iter().enumerate() {
        let event =
            schema::validate_event(raw, schema, limits).map_err(|problem| problem.at(index))?;
        events.push(event);
    }
    if let Some(pattern) = reject_ids
        && let Some((index, event)) = events
            .iter()
            .enumerate()
            .find(|(_, e)| pattern.is_match(&e.id))
    {
        return Err(Rejection::bad_request(
            "InputJsonInvalid",
            format!(
                "event at index {index}: id {:?} is refused (it matches reject_ids {:?})",
                event.id,
                pattern.as_str()
            ),
        ));
    }
    Ok(ValidBatch { events })
}

/// Counts the events of a body without validating them (for request records of
/// requests refused before validation); `None` if it is not a JSON array.
pub(crate) fn count_events(body: &[u8]) -> Option<usize> {
    parse_array(body).ok().map(|events| events.len())
}

fn parse_array(body: &[u8]) -> Result<Vec<&RawValue>, Rejection> {
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(Rejection::bad_request(
            "InputJsonInvalid",
            "the body starts with a UTF-8 byte order mark; send UTF-8 without BOM",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        Rejection::bad_request(
            "InputJsonInvalid",
            format!("the body is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first()
    {
        Some(b'[') => {}
        None => {
            return Err(Rejection::bad_request(
                "InputJsonInvalid",
                "the body is empty; expected a JSON array of events",
            ));
        }
        Some(_) => {
            return Err(Rejection::bad_request(
                "InputJsonInvalid",
                "the body must be a JSON array of events",
            ));
        }
    }
    serde_json::from_str::<Vec<&RawValue>>(text).map_err(|e| {
        Rejection::bad_request(
            "InputJsonInvalid",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const EVENT: &str = r#"{"id":"1","subject":"s","eventType":"T","eventTime":"2025-03-14T09:26:53.589Z","dataVersion":"1.0","data":{}}"#;

    #[test]
    fn api_version_is_required_and_must_be_2018_01_01() {
        assert!(check_api_version(Some("api-version=2018-01-01")).is_ok());
        assert!(check_api_version(Some("x=1&api-version=2018-01-01&y")).is_ok());
        for query in [
            None,
            Some(""),
            Some("api-version=2024-06-01"),
            Some("api-version"),
            Some("Api-Version=2018-01-01"),
        ] {
            assert_eq!(
                check_api_version(query).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{query:?}"
            );
        }
        let twice = check_api_version(Some("api-version=2018-01-01&api-version=2018-01-01"));
        assert_eq!(twice.unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn auth_accepts_the_key_or_the_configured_bearer_token_only() {
        let ok = |h: &[(&'static str, &'static str)], bearer| {
            check_auth(&headers(h), "k3y", bearer).is_ok()
        };
        assert!(ok(&[("aeg-sas-key", "k3y")], None));
        assert!(ok(&[("authorization", "Bearer t0k")], Some("t0k")));
        assert!(ok(&[("authorization", "bearer t0k")], Some("t0k")));
        assert!(ok(
            &[("aeg-sas-key", "wrong"), ("authorization", "Bearer t0k")],
            Some("t0k")
        ));
        assert!(!ok(&[], Some("t0k")));
        assert!(!ok(&[("aeg-sas-key", "k3y ")], None));
        assert!(!ok(&[("aeg-sas-key", "k3")], None));
        assert!(!ok(&[("authorization", "Bearer t0k")], None));
        assert!(!ok(&[("authorization", "Bearer t0kk")], Some("t0k")));
        assert!(!ok(&[("authorization", "Basic t0k")], Some("t0k")));
        assert!(!ok(&[("aeg-sas-token", "k3y")], None));
        let err = check_auth(&headers(&[]), "k3y", None).unwrap_err();
        assert_eq!(err.status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc\0", b"abc"));
    }

    #[test]
    fn content_type_must_match_the_schema() {
        let check =
            |h: &[(&'static str, &'static str)], schema| check_content_headers(&headers(h), schema);
        assert!(check(&[("content-type", "application/json")], Schema::EventGrid).is_ok());
        assert!(
            check(
                &[("content-type", "application/json; charset=utf-8")],
                Schema::EventGrid
            )
            .is_ok()
        );
        assert!(
            check(
                &[("content-type", "Application/JSON;charset=\"UTF-8\"")],
                Schema::EventGrid
            )
            .is_ok()
        );
        assert!(
            check(
                &[(
                    "content-type",
                    "application/cloudevents-batch+json; charset=utf-8"
                )],
                Schema::CloudEvents
            )
            .is_ok()
        );
        for (h, schema) in [
            (&[][..], Schema::EventGrid),
            (&[("content-type", "text/plain")][..], Schema::EventGrid),
            (
                &[("content-type", "application/json; charset=latin1")][..],
                Schema::EventGrid,
            ),
            (
                &[("content-type", "application/json; charset")][..],
                Schema::EventGrid,
            ),
            (
                &[("content-type", "application/cloudevents-batch+json")][..],
                Schema::EventGrid,
            ),
            (
                &[("content-type", "application/json")][..],
                Schema::CloudEvents,
            ),
            (
                &[("content-type", "application/cloudevents+json")][..],
                Schema::CloudEvents,
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("content-type", "application/json"),
                ][..],
                Schema::EventGrid,
            ),
        ] {
            assert_eq!(
                check(h, schema).unwrap_err().status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{h:?}"
            );
        }
    }

    #[test]
    fn content_encoding_other_than_identity_is_415_and_expect_is_400() {
        let json = ("content-type", "application/json");
        let check = |h: &[(&'static str, &'static str)]| {
            check_content_headers(&headers(h), Schema::EventGrid)
        };
        assert!(check(&[json, ("content-encoding", "identity")]).is_ok());
        assert!(check(&[json, ("transfer-encoding", "chunked")]).is_ok());
        assert_eq!(
            check(&[json, ("content-encoding", "gzip")])
                .unwrap_err()
                .status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            check(&[json, ("transfer-encoding", "gzip, chunked")])
                .unwrap_err()
                .status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            check(&[json, ("expect", "100-continue")])
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn declared_content_length_over_the_limit_is_413() {
        let limits = Limits::EVENT_GRID;
        assert_eq!(
            check_content_length(&headers(&[("content-length", "1048576")]), &limits).unwrap(),
            Some(1_048_576)
        );
        assert_eq!(check_content_length(&headers(&[]), &limits).unwrap(), None);
        let err =
            check_content_length(&headers(&[("content-length", "1048577")]), &limits).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn body_must_be_utf8_without_bom_and_a_non_empty_array() {
        let limits = Limits::EVENT_GRID;
        let parse = |body: &[u8]| {
            parse_batch(body, Schema::EventGrid, &limits, None).map(|b| b.events.len())
        };
        assert_eq!(parse(format!("[{EVENT}]").as_bytes()).unwrap(), 1);
        assert_eq!(
            parse(format!(" \n[ {EVENT} ,\n{EVENT} ]\n").as_bytes()).unwrap(),
            2
        );
        let bom = [b"\xEF\xBB\xBF".as_slice(), format!("[{EVENT}]").as_bytes()].concat();
        for body in [
            bom.as_slice(),
            b"[\"\xFF\"]",
            b"",
            b"   ",
            EVENT.as_bytes(),
            b"[]",
            b"[",
            format!("[{EVENT},]").as_bytes(),
            format!("[{EVENT}] x").as_bytes(),
            b"null",
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(
                err.status,
                StatusCode::BAD_REQUEST,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(err.detail_code, "InputJsonInvalid");
        }
    }

    #[test]
    fn event_count_limit_is_inclusive() {
        let limits = Limits {
            max_events: 3,
            ..Limits::EVENT_GRID
        };
        let batch = |n: usize| format!("[{}]", vec![EVENT; n].join(","));
        assert!(parse_batch(batch(3).as_bytes(), Schema::EventGrid, &limits, None).is_ok());
        let err = parse_batch(batch(4).as_bytes(), Schema::EventGrid, &limits, None).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.detail_code, "TooManyEvents");
    }

    #[test]
    fn one_invalid_event_refuses_the_batch_and_names_its_index() {
        let limits = Limits::EVENT_GRID;
        let bad = EVENT.replace(r#""subject":"s""#, r#""subject":"""#);
        let body = format!("[{EVENT},{EVENT},{bad}]");
        let err = parse_batch(body.as_bytes(), Schema::EventGrid, &limits, None).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("index 2"), "{}", err.message);
        assert!(err.message.contains("subject"), "{}", err.message);
    }

    #[test]
    fn reject_ids_refuses_the_batch_naming_the_index() {
        let limits = Limits::EVENT_GRID;
        let poison = EVENT.replace(r#""id":"1""#, r#""id":"poison-7""#);
        let body = format!("[{EVENT},{poison}]");
        let pattern = regex_lite::Regex::new("^poison-").unwrap();
        let err =
            parse_batch(body.as_bytes(), Schema::EventGrid, &limits, Some(&pattern)).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.detail_code, "InputJsonInvalid");
        assert!(err.message.contains("index 1"), "{}", err.message);
        let clean = format!("[{EVENT},{EVENT}]");
        assert!(parse_batch(clean.as_bytes(), Schema::EventGrid, &limits, Some(&pattern)).is_ok());
    }
}
