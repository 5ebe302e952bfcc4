//! The Functions host's invocation envelopes — the only code that knows them.
//!
//! In: `{"Data": {<binding name>: …}, "Metadata": {…}}` with PascalCase names; unknown fields
//! are ignored, `Metadata` is never read, and everything is parsed leniently (the host has sent
//! odd timestamps, `null` schedule status, JSON strings where objects were expected).
//! Out: `{"Outputs": {…}, "Logs": […], "ReturnValue": null}`, always a non-empty JSON object
//! with `Content-Type: application/json`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::error::ApiResponse;

/// An invocation request: its `Data`. `Metadata` is informational and ignored.
#[derive(Debug, Deserialize)]
pub struct InvocationRequest<D> {
    /// One property per input binding.
    #[serde(rename = "Data")]
    pub data: D,
}

/// `Data` of `WriteDocumentHttp`: the `req` binding.
#[derive(Debug, Deserialize)]
pub struct HttpTriggerData {
    /// The HTTP request.
    pub req: HttpRequestData,
}

/// An HTTP request as the host describes it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpRequestData {
    /// Full URL as received by the host.
    #[serde(default)]
    pub url: Option<String>,
    /// Upper-case method.
    #[serde(default)]
    pub method: Option<String>,
    /// Query parameters (repeated ones joined with `,`).
    #[serde(default, deserialize_with = "lenient_string_map")]
    pub query: BTreeMap<String, String>,
    /// Headers; the host sends arrays of strings.
    #[serde(default, deserialize_with = "lenient_headers")]
    pub headers: Vec<(String, Vec<String>)>,
    /// Route parameters.
    #[serde(default, deserialize_with = "lenient_string_map")]
    pub params: BTreeMap<String, String>,
    /// The raw body as text; absent without a body (or for chunked uploads).
    #[serde(default, deserialize_with = "lenient_body")]
    pub body: Option<String>,
}

impl HttpRequestData {
    /// First value of a header, matched case-insensitively.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }
}

/// `Data` of `OutboxTimer`: the `timer` binding, kept as loose JSON.
#[derive(Debug, Default, Deserialize)]
pub struct TimerTriggerData {
    /// `{Schedule, ScheduleStatus, IsPastDue}`; any part may be missing or odd.
    #[serde(default)]
    pub timer: Value,
}

impl TimerTriggerData {
    /// Is this the host's catch-up run after downtime? Informational only.
    #[must_use]
    pub fn is_past_due(&self) -> bool {
        self.timer
            .get("IsPastDue")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// The answer to the host.
#[derive(Debug, Serialize)]
pub struct InvocationResponse {
    /// One property per output binding, matched by name case-sensitively (`res`).
    #[serde(rename = "Outputs")]
    pub outputs: serde_json::Map<String, Value>,
    /// Logged by the host at Information level, with the invocation.
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    /// Unused (no `$return` binding): always null.
    #[serde(rename = "ReturnValue")]
    pub return_value: Option<Value>,
}

/// The `res` output binding of an HTTP function.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HttpOutput {
    /// Status for the caller (the host reads `statusCode`, never `status`).
    #[serde(rename = "statusCode")]
    pub status_code: u16,
    /// Header values must be strings.
    pub headers: BTreeMap<String, String>,
    /// Sent verbatim.
    pub body: String,
}

impl From<&ApiResponse> for HttpOutput {
    fn from(r: &ApiResponse) -> Self {
        let mut headers = BTreeMap::new();
        // An answer without a body (304) has no content to type.
        if !r.body.is_empty() {
            headers.insert("Content-Type".to_owned(), "application/json".to_owned());
        }
        for (name, value) in &r.headers {
            headers.insert(canonical_header_name(name.as_str()), value.clone());
        }
        Self {
            status_code: r.status.as_u16(),
            headers,
            body: r.body.clone(),
        }
    }
}

/// `retry-after` → `Retry-After`: how the host's callers expect to see them.
fn canonical_header_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

impl InvocationResponse {
    /// A response with no outputs.
    #[must_use]
    pub fn logs(logs: Vec<String>) -> Self {
        Self {
            outputs: serde_json::Map::new(),
            logs,
            return_value: None,
        }
    }

    /// A response carrying `res` for an HTTP function.
    #[must_use]
    pub fn http(res: &ApiResponse, logs: Vec<String>) -> Self {
        let mut outputs = serde_json::Map::new();
        outputs.insert(
            "res".to_owned(),
            serde_json::to_value(HttpOutput::from(res)).unwrap_or_default(),
        );
        Self {
            outputs,
            logs,
            return_value: None,
        }
    }

    /// As an HTTP response to the host with `status` (200 for a completed invocation;
    /// non-2xx marks it failed).
    #[must_use]
    pub fn into_host_response(self, status: StatusCode) -> Response {
        let body = serde_json::to_string(&self).unwrap_or_else(|_| {
            r#"{"Outputs":{},"Logs":["could not serialize the response"],"ReturnValue":null}"#
                .to_owned()
        });
        (status, [(CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// `{"a":"b"}`, but also `"{}"` (a JSON string), null, or non-string values.
fn lenient_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let v = Value::deserialize(d)?;
    let v = match v {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
        other => other,
    };
    Ok(match v {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k, s)
            })
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// Header values as arrays of strings, tolerating single strings.
fn lenient_headers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, Vec<String>)>, D::Error> {
    let v = Value::deserialize(d)?;
    let Value::Object(map) = v else {
        return Ok(Vec::new());
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let values = match v {
                Value::Array(items) => items
                    .into_iter()
                    .map(|i| match i {
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
                Value::String(s) => vec![s],
                Value::Null => Vec::new(),
                other => vec![other.to_string()],
            };
            (k, values)
        })
        .collect())
}

/// The body as text; a body the host already parsed into JSON is turned back into text.
fn lenient_body<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_http_envelope_parses() {
        let raw = r#"{
          "Data": { "req": {
              "Url": "https://contoso-outbox.azurewebsites.net/api/WriteDocumentHttp?tenant=acme",
              "Method": "POST",
              "Query": { "tenant": "acme" },
              "Headers": { "Content-Type": ["application/json"], "Content-Length": ["38"] },
              "Params": {},
              "Identities": [ { "AuthenticationType": "WebJobsAuthLevel", "IsAuthenticated": true } ],
              "Body": "{\"title\":\"quarterly report\",\"pages\":7}"
          } },
          "Metadata": { "tenant": "\"acme\"", "sys": { "MethodName": "WriteDocumentHttp" } }
        }"#;
        let r: InvocationRequest<HttpTriggerData> = serde_json::from_str(raw).unwrap();
        let req = r.data.req;
        assert_eq!(req.method.as_deref(), Some("POST"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.query.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(
            req.body.as_deref(),
            Some(r#"{"title":"quarterly report","pages":7}"#)
        );
    }

    #[test]
    fn odd_shapes_are_tolerated() {
        let raw = r#"{"Data":{"req":{"Method":"POST","Query":"{}","Headers":{"X":"one","Y":null},"Params":null,"Body":{"a":1},"Extra":5}}}"#;
        let r: InvocationRequest<HttpTriggerData> = serde_json::from_str(raw).unwrap();
        assert!(r.data.req.query.is_empty());
        assert_eq!(r.data.req.header("x"), Some("one"));
        assert_eq!(r.data.req.body.as_deref(), Some(r#"{"a":1}"#));
        let raw = r#"{"Data":{"req":{}}}"#;
        let r: InvocationRequest<HttpTriggerData> = serde_json::from_str(raw).unwrap();
        assert!(r.data.req.body.is_none());
    }

    #[test]
    fn timer_payloads_parse_with_null_status_and_odd_timestamps() {
        for (raw, past_due) in [
            (
                r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#,
                false,
            ),
            (
                r#"{"Data":{"timer":{"ScheduleStatus":{"Last":"0001-01-01T00:00:00","Next":"2025-06-02T08:15:00.00417331+00:00","LastUpdated":"not a date"},"IsPastDue":true}}}"#,
                true,
            ),
            (r#"{"Data":{"timer":{"IsPastDue":"yes"}}}"#, false),
            (r#"{"Data":{}}"#, false),
            (r#"{"Data":{"timer":null}}"#, false),
        ] {
            let r: InvocationRequest<TimerTriggerData> = serde_json::from_str(raw).unwrap();
            assert_eq!(r.data.is_past_due(), past_due, "{raw}");
        }
    }

    #[test]
    fn responses_use_the_exact_property_names() {
        let res = ApiResponse::json(StatusCode::CREATED, &serde_json::json!({"id":"a"}))
            .with_header(axum::http::header::LOCATION, "/api/x/a");
        let v = serde_json::to_value(InvocationResponse::http(&res, vec!["hi".into()])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "Outputs": { "res": {
                    "statusCode": 201,
                    "headers": { "Content-Type": "application/json", "Location": "/api/x/a" },
                    "body": "{\"id\":\"a\"}"
                } },
                "Logs": ["hi"],
                "ReturnValue": null
            })
        );
        let not_modified = ApiResponse::empty(StatusCode::NOT_MODIFIED)
            .with_header(axum::http::header::ETAG, "\"L.1\"");
        assert_eq!(
            serde_json::to_value(HttpOutput::from(&not_modified)).unwrap(),
            serde_json::json!({ "statusCode": 304, "headers": { "Etag": "\"L.1\"" }, "body": "" })
        );
    }
}
