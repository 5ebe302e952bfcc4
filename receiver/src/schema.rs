//! Event-level rules for both input schemas, parsed in one pass over each event with
//! borrowed strings and the payload left as a [`RawValue`] (never built into a tree).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::Schema;
use crate::wire::{Limits, Rejection, compact};

/// One event that passed every rule.
#[derive(Debug)]
pub(crate) struct ValidEvent<'a> {
    pub(crate) id: Cow<'a, str>,
    /// `subject`; `None` only for a CloudEvent without one.
    pub(crate) subject: Option<Cow<'a, str>>,
    /// `eventType`, or the CloudEvent's `type`.
    pub(crate) event_type: Cow<'a, str>,
    /// The event's compact JSON (borrowed from the body when it was sent compact).
    pub(crate) json: Cow<'a, str>,
}

/// A rule broken by one event; [`Problem::at`] names the event's index.
#[derive(Debug)]
pub(crate) struct Problem {
    is_too_large: bool,
    message: String,
}

impl Problem {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            is_too_large: false,
            message: message.into(),
        }
    }

    pub(crate) fn at(self, index: usize) -> Rejection {
        let message = format!("event at index {index}: {}", self.message);
        if self.is_too_large {
            Rejection::too_large("EventTooLarge", message)
        } else {
            Rejection::bad_request("InputJsonInvalid", message)
        }
    }
}

/// Validates one event (`raw` is one element of the body's array).
pub(crate) fn validate_event<'a>(
    raw: &'a RawValue,
    schema: Schema,
    limits: &Limits,
) -> Result<ValidEvent<'a>, Problem> {
    let text = raw.get();
    let json = compact(text);
    if json.len() > limits.max_event_bytes {
        return Err(Problem {
            is_too_large: true,
            message: format!(
                "the event is {} bytes of compact JSON, more than the limit of {}",
                json.len(),
                limits.max_event_bytes
            ),
        });
    }
    if !text.starts_with('{') {
        return Err(Problem::invalid(format!(
            "must be a JSON object, not {}",
            kind_of_raw(text)
        )));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = match schema {
        Schema::EventGrid => de.deserialize_map(EventGridVisitor),
        Schema::CloudEvents => de.deserialize_map(CloudEventVisitor),
    };
    // The array pass already validated the JSON, so this only fails on limits such as
    // nesting depth.
    let fields = fields.map_err(|e| Problem::invalid(format!("cannot be parsed: {e}")))??;
    Ok(ValidEvent {
        id: fields.id,
        subject: fields.subject,
        event_type: fields.event_type,
        json,
    })
}

struct Fields<'a> {
    id: Cow<'a, str>,
    subject: Option<Cow<'a, str>>,
    event_type: Cow<'a, str>,
}

fn kind_of_raw(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A property name, borrowed unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A property value, classified; strings are kept (borrowed), containers skipped.
enum Val<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    /// A number that is not an `i64` (fraction, exponent, or too large).
    OtherNumber,
    Bool,
    Null,
    Object,
    Array,
}

impl Val<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Self::Str(_) => "a string",
            Self::Int(_) | Self::OtherNumber => "a number",
            Self::Bool => "a boolean",
            Self::Null => "null",
            Self::Object => "an object",
            Self::Array => "an array",
        }
    }
}

impl<'de> Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Val::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Val::OtherNumber, Val::Int))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Val::OtherNumber)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Val::Bool)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Val::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Array)
    }
}

/// Records the first problem of an event; later properties are still consumed (the
/// deserializer requires it) but no longer checked.
struct Checker {
    problem: Option<Problem>,
}

impl Checker {
    fn fail(&mut self, message: String) {
        if self.problem.is_none() {
            self.problem = Some(Problem::invalid(message));
        }
    }

    fn set_once<T>(&mut self, slot: &mut Option<T>, name: &str, value: T) {
        if slot.is_some() {
            self.fail(format!("property `{name}` appears more than once"));
        } else {
            *slot = Some(value);
        }
    }

    /// A required or optional string property that must not be empty.
    fn non_empty_string<'a>(&mut self, name: &str, value: Val<'a>) -> Option<Cow<'a, str>> {
        match value {
            Val::Str(s) if !s.is_empty() => Some(s),
            Val::Str(_) => {
                self.fail(format!("property `{name}` must be a non-empty string"));
                None
            }
            other => {
                self.fail(format!(
                    "property `{name}` must be a non-empty string, not {}",
                    other.kind()
                ));
                None
            }
        }
    }

    fn timestamp(&mut self, name: &str, value: Val<'_>) -> bool {
        let Some(s) = self.non_empty_string(name, value) else {
            return false;
        };
        if is_rfc3339(&s) {
            true
        } else {
            self.fail(format!(
                "property `{name}` {s:?} is not an RFC 3339 timestamp with an explicit offset \
                 (e.g. 2025-03-14T09:26:53.589Z)"
            ));
            false
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Problem> {
        match self.problem {
            Some(problem) => Err(problem),
            None => Ok(value),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, upper-case `T` and `Z`, and a real
/// date and time.
pub(crate) fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let shape_ok = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape_ok {
        return false;
    }
    let mut rest = &b[19..];
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &tail[n..];
    }
    let offset_ok = match rest {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    };
    offset_ok && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

struct EventGridVisitor;

impl<'de> Visitor<'de> for EventGridVisitor {
    type Value = Result<Fields<'de>, Problem>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an Event Grid event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut check = Checker { problem: None };
        let (mut id, mut subject, mut event_type) = (None, None, None);
        let (mut event_time, mut data_version, mut data) = (None, None, None);
        while let Some(Key(name)) = map.next_key()? {
            if check.problem.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match name.as_ref() {
                "data" => {
                    let raw: &RawValue = map.next_value()?;
                    if !raw.get().starts_with('{') {
                        check.fail(format!(
                            "property `data` must be a JSON object, not {}",
                            kind_of_raw(raw.get())
                        ));
                    }
                    check.set_once(&mut data, "data", ());
                }
                "id" | "subject" | "eventType" | "dataVersion" | "eventTime" => {
                    let value: Val<'de> = map.next_value()?;
                    match name.as_ref() {
                        "eventTime" => {
                            let ok = check.timestamp("eventTime", value);
                            check.set_once(&mut event_time, "eventTime", ok);
                        }
                        field => {
                            let s = check.non_empty_string(field, value);
                            let slot = match field {
                                "id" => &mut id,
                                "subject" => &mut subject,
                                "eventType" => &mut event_type,
                                _ => &mut data_version,
                            };
                            if let Some(s) = s {
                                check.set_once(slot, field, s);
                            }
                        }
                    }
                }
                "topic" | "metadataVersion" => {
                    map.next_value::<IgnoredAny>()?;
                    check.fail(format!(
                        "property `{name}` must not be sent; Event Grid sets it"
                    ));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    check.fail(format!(
                        "unknown property `{name}`; an event has exactly id, subject, eventType, \
                         eventTime, dataVersion and data (put anything else inside data)"
                    ));
                }
            }
        }
        let present = [
            ("id", id.is_some()),
            ("subject", subject.is_some()),
            ("eventType", event_type.is_some()),
            ("eventTime", event_time.is_some()),
            ("dataVersion", data_version.is_some()),
            ("data", data.is_some()),
        ];
        if let Some((missing, _)) = present.iter().find(|(_, is_present)| !is_present) {
            check.fail(format!("required property `{missing}` is missing"));
        }
        Ok(match (id, event_type) {
            (Some(id), Some(event_type)) => check.finish(Fields {
                id,
                subject,
                event_type,
            }),
            _ => Err(check
                .problem
                .unwrap_or_else(|| Problem::invalid("required property is missing"))),
        })
    }
}

struct CloudEventVisitor;

impl<'de> Visitor<'de> for CloudEventVisitor {
    type Value = Result<Fields<'de>, Problem>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvents 1.0 event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut check = Checker { problem: None };
        let (mut id, mut source, mut event_type, mut subject) = (None, None, None, None);
        let (mut specversion, mut time, mut datacontenttype, mut dataschema) =
            (None, None, None, None);
        let (mut data, mut data_base64) = (None, None);
        let mut extensions: Vec<Cow<'de, str>> = Vec::new();
        while let Some(Key(name)) = map.next_key()? {
            if check.problem.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if name == "data" {
                let _: &RawValue = map.next_value()?;
                check.set_once(&mut data, "data", ());
                continue;
            }
            let value: Val<'de> = map.next_value()?;
            match name.as_ref() {
                "specversion" => match value {
                    Val::Str(s) if s == "1.0" => {
                        check.set_once(&mut specversion, "specversion", ())
                    }
                    Val::Str(s) => {
                        check.fail(format!("property `specversion` must be \"1.0\", not {s:?}"))
                    }
                    other => check.fail(format!(
                        "property `specversion` must be the string \"1.0\", not {}",
                        other.kind()
                    )),
                },
                "id" | "type" | "subject" => {
                    if let Some(s) = check.non_empty_string(&name, value) {
                        let slot = match name.as_ref() {
                            "id" => &mut id,
                            "type" => &mut event_type,
                            _ => &mut subject,
                        };
                        check.set_once(slot, &name, s);
                    }
                }
                "source" => {
                    if let Some(s) = check.non_empty_string("source", value) {
                        if is_uri_reference(&s) {
                            check.set_once(&mut source, "source", ());
                        } else {
                            check.fail(format!("property `source` {s:?} is not a URI reference"));
                        }
                    }
                }
                "time" => {
                    if check.timestamp("time", value) {
                        check.set_once(&mut time, "time", ());
                    }
                }
                "datacontenttype" => {
                    if let Some(s) = check.non_empty_string("datacontenttype", value) {
                        if is_media_type(&s) {
                            check.set_once(&mut datacontenttype, "datacontenttype", ());
                        } else {
                            check.fail(format!(
                                "property `datacontenttype` {s:?} is not a media type"
                            ));
                        }
                    }
                }
                "dataschema" => {
                    if let Some(s) = check.non_empty_string("dataschema", value) {
                        if is_absolute_uri(&s) {
                            check.set_once(&mut dataschema, "dataschema", ());
                        } else {
                            check.fail(format!(
                                "property `dataschema` {s:?} is not an absolute URI"
                            ));
                        }
                    }
                }
                "data_base64" => match value {
                    Val::Str(s) if is_base64(&s) => {
                        check.set_once(&mut data_base64, "data_base64", ())
                    }
                    Val::Str(_) => {
                        check.fail("property `data_base64` is not valid base64".to_owned())
                    }
                    other => check.fail(format!(
                        "property `data_base64` must be a base64 string, not {}",
                        other.kind()
                    )),
                },
                _ => {
                    let is_valid_name = name
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
                    if !is_valid_name {
                        check.fail(format!(
                            "extension attribute name `{name}` must consist of lower-case ASCII letters and digits"
                        ));
                    } else if extensions.contains(&name) {
                        check.fail(format!("property `{name}` appears more than once"));
                    } else {
                        match value {
                            Val::Str(_) | Val::Bool => {}
                            Val::Int(n) if i32::try_from(n).is_ok() => {}
                            Val::Int(_) => check.fail(format!(
                                "extension attribute `{name}` is an integer outside the 32-bit range"
                            )),
                            other => check.fail(format!(
                                "extension attribute `{name}` must be a string, integer or boolean, not {}",
                                other.kind()
                            )),
                        }
                        extensions.push(name);
                    }
                }
            }
        }
        if data.is_some() && data_base64.is_some() {
            check.fail("an event carries either `data` or `data_base64`, never both".to_owned());
        }
        let present = [
            ("specversion", specversion.is_some()),
            ("id", id.is_some()),
            ("source", source.is_some()),
            ("type", event_type.is_some()),
        ];
        if let Some((missing, _)) = present.iter().find(|(_, is_present)| !is_present) {
            check.fail(format!("required attribute `{missing}` is missing"));
        }
        Ok(match (id, event_type) {
            (Some(id), Some(event_type)) => check.finish(Fields {
                id,
                subject,
                event_type,
            }),
            _ => Err(check
                .problem
                .unwrap_or_else(|| Problem::invalid("required attribute is missing"))),
        })
    }
}

/// No whitespace or control characters (what a URI reference can never contain).
fn is_uri_reference(s: &str) -> bool {
    !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `scheme:` followed by anything a URI may contain.
fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && is_uri_reference(rest)
}

/// `type/subtype[;parameters]` with RFC 7230 token characters.
fn is_media_type(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or("").trim();
    let is_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
    };
    essence
        .split_once('/')
        .is_some_and(|(t, sub)| is_token(t) && is_token(sub))
}

/// Standard base64 with padding (RFC 4648 §4).
fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let padding = b.iter().rev().take_while(|&&c| c == b'=').count();
    padding <= 2
        && b[..b.len() - padding]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;
    use serde_json::{Value, json};

    use super::*;

    fn check(event: &Value, schema: Schema) -> Result<ValidEvent<'static>, Rejection> {
        let text: &'static str = Box::leak(event.to_string().into_boxed_str());
        let raw: &'static RawValue = serde_json::from_str(text).unwrap();
        validate_event(raw, schema, &Limits::EVENT_GRID).map_err(|p| p.at(0))
    }

    fn eg() -> Value {
        json!({
            "id": "65f2c0a1e4b0a1b2c3d4e5f6",
            "subject": "orders/65f2c0a1",
            "eventType": "Contoso.Orders.OrderPlaced",
            "eventTime": "2025-03-14T09:26:53.589Z",
            "dataVersion": "1.0",
            "data": { "orderId": "65f2c0a1", "total": 129.5 }
        })
    }

    fn ce() -> Value {
        json!({
            "specversion": "1.0",
            "id": "65f2c0a1",
            "source": "/outbox/orders",
            "type": "Contoso.Orders.OrderPlaced",
            "time": "2025-03-14T09:26:53+01:00",
            "subject": "orders/65f2c0a1",
            "datacontenttype": "application/json",
            "dataschema": "https://example.com/schemas/order.json",
            "data": { "orderId": "65f2c0a1" }
        })
    }

    fn with(mut event: Value, name: &str, value: Value) -> Value {
        event[name] = value;
        event
    }

    fn without(mut event: Value, name: &str) -> Value {
        event.as_object_mut().unwrap().shift_remove(name);
        event
    }

    fn assert_400(event: &Value, schema: Schema, field: &str) {
        let err = check(event, schema).expect_err(&event.to_string());
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{event}");
        assert_eq!(err.detail_code, "InputJsonInvalid");
        assert!(err.message.contains("index 0"), "{}", err.message);
        assert!(
            err.message.contains(field),
            "{} should name {field}",
            err.message
        );
    }

    #[test]
    fn valid_event_grid_event_is_accepted_with_its_fields() {
        let event = check(&eg(), Schema::EventGrid).unwrap();
        assert_eq!(event.id, "65f2c0a1e4b0a1b2c3d4e5f6");
        assert_eq!(event.subject.as_deref(), Some("orders/65f2c0a1"));
        assert_eq!(event.event_type, "Contoso.Orders.OrderPlaced");
        assert_eq!(event.json, eg().to_string());
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let event = check(&with(eg(), "id", json!("a\"b\u{e9}")), Schema::EventGrid).unwrap();
        assert_eq!(event.id, "a\"b\u{e9}");
    }

    #[test]
    fn event_grid_event_must_have_exactly_the_six_properties() {
        for name in [
            "id",
            "subject",
            "eventType",
            "eventTime",
            "dataVersion",
            "data",
        ] {
            assert_400(&without(eg(), name), Schema::EventGrid, name);
        }
        assert_400(
            &with(eg(), "topic", json!("/subscriptions/x")),
            Schema::EventGrid,
            "topic",
        );
        assert_400(
            &with(eg(), "metadataVersion", json!("1")),
            Schema::EventGrid,
            "metadataVersion",
        );
        assert_400(&with(eg(), "extra", json!(1)), Schema::EventGrid, "extra");
        assert_400(&with(eg(), "ID", json!("x")), Schema::EventGrid, "ID");
    }

    #[test]
    fn event_grid_string_properties_must_be_non_empty_strings() {
        for name in ["id", "subject", "eventType", "dataVersion"] {
            assert_400(&with(eg(), name, json!("")), Schema::EventGrid, name);
            assert_400(&with(eg(), name, json!(1)), Schema::EventGrid, name);
            assert_400(&with(eg(), name, Value::Null), Schema::EventGrid, name);
        }
        assert_400(
            &with(eg(), "dataVersion", json!(1.0)),
            Schema::EventGrid,
            "dataVersion",
        );
    }

    #[test]
    fn event_time_must_be_rfc3339_with_offset() {
        for time in [
            "2025-03-14T09:26:53Z",
            "2025-03-14T09:26:53.5+05:30",
            "2025-03-14T09:26:53.123456789-08:00",
        ] {
            assert!(
                check(&with(eg(), "eventTime", json!(time)), Schema::EventGrid).is_ok(),
                "{time}"
            );
        }
        for time in [
            "2025-03-14T09:26:53",
            "2025-03-14 09:26:53Z",
            "2025-03-14t09:26:53Z",
            "2025-03-14T09:26:53z",
            "2025-03-14T09:26:53.Z",
            "2025-03-14T09:26:53+0100",
            "2025-13-14T09:26:53Z",
            "2025-02-30T09:26:53Z",
            "2025-03-14T25:26:53Z",
            "2025-03-14",
            "1741944413",
        ] {
            assert_400(
                &with(eg(), "eventTime", json!(time)),
                Schema::EventGrid,
                "eventTime",
            );
        }
        assert_400(
            &with(eg(), "eventTime", json!(1_741_944_413)),
            Schema::EventGrid,
            "eventTime",
        );
    }

    #[test]
    fn event_grid_data_must_be_an_object() {
        for data in [json!([1]), json!("x"), json!(1), Value::Null, json!(true)] {
            assert_400(&with(eg(), "data", data), Schema::EventGrid, "data");
        }
    }

    #[test]
    fn duplicate_properties_are_refused() {
        let text = r#"{"id":"1","id":"2","subject":"s","eventType":"T","eventTime":"2025-03-14T09:26:53Z","dataVersion":"1","data":{}}"#;
        let raw: &RawValue = serde_json::from_str(text).unwrap();
        let err = validate_event(raw, Schema::EventGrid, &Limits::EVENT_GRID)
            .unwrap_err()
            .at(0);
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("more than once"), "{}", err.message);
    }

    #[test]
    fn non_object_events_are_refused() {
        for event in [json!("x"), json!([]), json!(1), Value::Null] {
            assert_400(&event, Schema::EventGrid, "JSON object");
            assert_400(&event, Schema::CloudEvents, "JSON object");
        }
    }

    #[test]
    fn event_over_the_size_limit_is_413() {
        let limits = Limits {
            max_event_bytes: 400,
            ..Limits::EVENT_GRID
        };
        let of_size = |n: usize| {
            let mut event = eg();
            event["data"]["pad"] = json!("");
            let base = event.to_string().len();
            event["data"]["pad"] = json!("x".repeat(n - base));
            event.to_string()
        };
        let text = of_size(400);
        assert_eq!(text.len(), 400);
        let raw: &RawValue = serde_json::from_str(&text).unwrap();
        assert!(validate_event(raw, Schema::EventGrid, &limits).is_ok());
        let text = of_size(401);
        let raw: &RawValue = serde_json::from_str(&text).unwrap();
        let err = validate_event(raw, Schema::EventGrid, &limits)
            .unwrap_err()
            .at(3);
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.detail_code, "EventTooLarge");
        assert!(err.message.contains("index 3"), "{}", err.message);
    }

    #[test]
    fn size_limit_counts_compact_json_not_whitespace() {
        let compact_text = eg().to_string();
        let limits = Limits {
            max_event_bytes: compact_text.len(),
            ..Limits::EVENT_GRID
        };
        let pretty = serde_json::to_string_pretty(&eg()).unwrap();
        assert!(pretty.len() > compact_text.len());
        let raw: &RawValue = serde_json::from_str(&pretty).unwrap();
        let event = validate_event(raw, Schema::EventGrid, &limits).unwrap();
        assert_eq!(event.json, compact_text);
    }

    #[test]
    fn valid_cloud_events_are_accepted() {
        let event = check(&ce(), Schema::CloudEvents).unwrap();
        assert_eq!(event.id, "65f2c0a1");
        assert_eq!(event.event_type, "Contoso.Orders.OrderPlaced");
        assert_eq!(event.subject.as_deref(), Some("orders/65f2c0a1"));
        let minimal = json!({"specversion":"1.0","id":"1","source":"/s","type":"T"});
        assert!(
            check(&minimal, Schema::CloudEvents)
                .unwrap()
                .subject
                .is_none()
        );
        let binary = with(without(ce(), "data"), "data_base64", json!("aGVsbG8="));
        assert!(check(&binary, Schema::CloudEvents).is_ok());
        let extensions = with(
            with(with(ce(), "traceparent", json!("00-ab")), "seq2", json!(-5)),
            "flag",
            json!(true),
        );
        assert!(check(&extensions, Schema::CloudEvents).is_ok());
    }

    #[test]
    fn cloud_events_required_attributes_are_checked() {
        for name in ["specversion", "id", "source", "type"] {
            assert_400(&without(ce(), name), Schema::CloudEvents, name);
        }
        for name in [
            "id",
            "source",
            "type",
            "subject",
            "datacontenttype",
            "dataschema",
            "time",
        ] {
            assert_400(&with(ce(), name, json!("")), Schema::CloudEvents, name);
            assert_400(&with(ce(), name, json!(7)), Schema::CloudEvents, name);
        }
        assert_400(
            &with(ce(), "specversion", json!("0.3")),
            Schema::CloudEvents,
            "specversion",
        );
        assert_400(
            &with(ce(), "specversion", json!(1.0)),
            Schema::CloudEvents,
            "specversion",
        );
        assert_400(
            &with(ce(), "time", json!("2025-03-14T09:26:53")),
            Schema::CloudEvents,
            "time",
        );
        assert_400(
            &with(ce(), "dataschema", json!("/relative")),
            Schema::CloudEvents,
            "dataschema",
        );
        assert_400(
            &with(ce(), "source", json!("has space")),
            Schema::CloudEvents,
            "source",
        );
        assert_400(
            &with(ce(), "datacontenttype", json!("json")),
            Schema::CloudEvents,
            "datacontenttype",
        );
    }

    #[test]
    fn cloud_events_data_and_data_base64_are_exclusive() {
        assert_400(
            &with(ce(), "data_base64", json!("aGVsbG8=")),
            Schema::CloudEvents,
            "data_base64",
        );
        let bad = with(without(ce(), "data"), "data_base64", json!("not base64!"));
        assert_400(&bad, Schema::CloudEvents, "data_base64");
    }

    #[test]
    fn cloud_events_extension_attributes_are_checked() {
        assert_400(
            &with(ce(), "traceParent", json!("x")),
            Schema::CloudEvents,
            "traceParent",
        );
        assert_400(
            &with(ce(), "my_ext", json!("x")),
            Schema::CloudEvents,
            "my_ext",
        );
        assert_400(&with(ce(), "ext", json!(1.5)), Schema::CloudEvents, "ext");
        assert_400(
            &with(ce(), "ext", json!(4_294_967_296_i64)),
            Schema::CloudEvents,
            "ext",
        );
        assert_400(
            &with(ce(), "ext", json!({"a": 1})),
            Schema::CloudEvents,
            "ext",
        );
        assert_400(&with(ce(), "ext", json!([1])), Schema::CloudEvents, "ext");
        assert_400(&with(ce(), "ext", Value::Null), Schema::CloudEvents, "ext");
    }

    #[test]
    fn event_grid_events_are_not_cloud_events_and_vice_versa() {
        assert!(check(&eg(), Schema::CloudEvents).is_err());
        assert!(check(&ce(), Schema::EventGrid).is_err());
    }

    #[test]
    fn helpers_recognise_their_formats() {
        assert!(is_base64("") && is_base64("aGk=") && is_base64("aGVsbG8h"));
        assert!(!is_base64("aGk") && !is_base64("a===") && !is_base64("a-_b"));
        assert!(is_absolute_uri("urn:x") && !is_absolute_uri("1x:y") && !is_absolute_uri("x:"));
        assert!(is_media_type("application/json; charset=utf-8") && !is_media_type("/json"));
    }
}
