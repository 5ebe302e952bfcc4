//! A business document as received: parsed and validated once, here.
//!
//! After [`NewDocument::parse`] succeeds the document is known to be a JSON object that
//! MongoDB will store as given and whose event fits Event Grid; nothing downstream checks again.

use mongodb::bson::{self, Bson, Document};
use serde_json::Value;
use serde_json::value::RawValue;

/// Deepest nesting accepted (objects and arrays). MongoDB refuses documents nested deeper
/// than 100 levels; this limit leaves room below that and rejects hostile inputs early.
pub const MAX_DEPTH: usize = 64;

/// Longest accepted document id, in bytes.
pub const MAX_ID_BYTES: usize = 255;

/// Top-level field that marks an outbox entry, and holds its state (the outbox's `ROOT`).
pub const OUTBOX_FIELD: &str = "_outbox";
/// Top-level field that marks an idempotency record, and holds it (the idempotency
/// records' `ROOT`).
pub const IDEMPOTENCY_FIELD: &str = "_idempotency";
/// Top-level field holding a stored document's version (see [`crate::domain::change`]).
pub const META_FIELD: &str = "_meta";

/// Top-level fields documents must not use, the one list of them. Entries and idempotency
/// records can share the documents' collection (the `colocated` placement), where these roots
/// are what tells them apart from documents; `_meta` is written on every document.
pub const RESERVED_FIELDS: [&str; 3] = [OUTBOX_FIELD, META_FIELD, IDEMPOTENCY_FIELD];

/// Why a request body is not an acceptable document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The body is not declared as JSON.
    #[error("the body must be sent with Content-Type: application/json{}", got.as_deref().map(|g| format!(" (got {g:?})")).unwrap_or_default())]
    UnsupportedMediaType {
        /// The content type that was sent, if any.
        got: Option<String>,
    },
    /// Nothing was sent.
    #[error("the body is empty; send a JSON object")]
    Empty,
    /// The body is not well-formed JSON (or not UTF-8).
    #[error("the body is not valid JSON: {reason} at line {line}, column {column}")]
    MalformedJson {
        /// Kind of error.
        reason: &'static str,
        /// Line of the error, 1-based.
        line: usize,
        /// Column of the error, 1-based.
        column: usize,
    },
    /// The body is JSON but not an object.
    #[error("the body must be a JSON object, got {found}")]
    NotAnObject {
        /// What was sent instead.
        found: &'static str,
    },
    /// `_id` is not an acceptable document id.
    #[error("invalid _id: {reason}")]
    InvalidId {
        /// What is wrong with it.
        reason: String,
    },
    /// A field name MongoDB or this service cannot accept.
    #[error("invalid field name at {path}: {reason}")]
    InvalidKey {
        /// Where the field is, e.g. `$.items[2].a.b`.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("the document is nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
    /// A number MongoDB cannot store exactly.
    #[error("number at {path} is outside the range of a 64-bit integer")]
    NumberOutOfRange {
        /// Where the number is.
        path: String,
    },
    /// A request header that cannot be used.
    #[error("invalid {name} header: {reason}")]
    InvalidHeader {
        /// The header.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The document does not carry the collection's shard key.
    #[error("the document must have the shard key field {0:?}")]
    MissingShardKey(String),
    /// The document or its event is larger than allowed.
    #[error("the {what} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// `body` or `event`.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// A document id: 1–255 bytes of letters, digits and `-._~:@`, so that it can appear
/// unescaped in a URL path and in an event subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocumentId(String);

impl DocumentId {
    /// Accepts an id sent by a client.
    ///
    /// # Errors
    /// [`InputError::InvalidId`] when empty, too long or containing other characters.
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        if raw.is_empty() {
            return Err(InputError::InvalidId {
                reason: "must not be empty".into(),
            });
        }
        if raw.len() > MAX_ID_BYTES {
            return Err(InputError::InvalidId {
                reason: format!("must be at most {MAX_ID_BYTES} bytes"),
            });
        }
        if let Some(c) = raw.chars().find(|c| !is_id_char(*c)) {
            return Err(InputError::InvalidId {
                reason: format!(
                    "may contain only letters, digits and - . _ ~ : @ (found {:?})",
                    c.escape_default().to_string()
                ),
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh id (an ObjectId's 24 hex digits) for a document sent without `_id`.
    #[must_use]
    pub fn generate() -> Self {
        Self(bson::oid::ObjectId::new().to_hex())
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DocumentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is checked before the body is parsed: a JSON media type, the size, not empty.
fn check_envelope(
    content_type: Option<&str>,
    body: &[u8],
    max_body_bytes: usize,
) -> Result<(), InputError> {
    match content_type {
        Some(ct) if is_json_content_type(ct) => {}
        other => {
            return Err(InputError::UnsupportedMediaType {
                got: other.map(|s| s.chars().take(100).collect()),
            });
        }
    }
    if body.len() > max_body_bytes {
        return Err(InputError::TooLarge {
            what: "body",
            size: body.len(),
            limit: max_body_bytes,
        });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(InputError::Empty);
    }
    Ok(())
}

/// The body as JSON, or why it is not (with the line and column).
fn parse_json(body: &[u8]) -> Result<Value, InputError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.to_string().starts_with("number out of range") {
            return InputError::NumberOutOfRange {
                path: format!("line {}, column {}", e.line(), e.column()),
            };
        }
        InputError::MalformedJson {
            reason: match e.classify() {
                serde_json::error::Category::Eof => "unexpected end of input",
                serde_json::error::Category::Syntax if e.to_string().contains("recursion") => {
                    "nested too deeply"
                }
                serde_json::error::Category::Syntax => "syntax error",
                serde_json::error::Category::Data => "invalid value",
                serde_json::error::Category::Io => "unreadable input",
            },
            line: e.line(),
            column: e.column(),
        }
    })
}

/// Removes `_id` from `fields` and settles the document's id: the body's, the URL's (they must
/// agree when both are given), or a new one.
fn take_id(
    fields: &mut serde_json::Map<String, Value>,
    route_id: Option<&DocumentId>,
) -> Result<DocumentId, InputError> {
    match (fields.shift_remove("_id"), route_id) {
        (None, None) => Ok(DocumentId::generate()),
        (None, Some(route)) => Ok(route.clone()),
        (Some(Value::String(s)), route) => {
            let id = DocumentId::parse(&s)?;
            if route.is_some_and(|r| *r != id) {
                return Err(InputError::InvalidId {
                    reason: "the body's _id differs from the id in the URL".into(),
                });
            }
            Ok(id)
        }
        (Some(other), _) => Err(InputError::InvalidId {
            reason: format!("must be a string, got {}", kind_of(&other)),
        }),
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | ':' | '@')
}

/// Is `content_type` a JSON media type (`application/json`, `application/*+json`, `text/json`),
/// parameters allowed?
#[must_use]
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence == "text/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A validated document, ready to be stored and announced.
#[derive(Debug, Clone)]
pub struct NewDocument {
    id: DocumentId,
    bson: Document,
    json: Box<RawValue>,
}

impl NewDocument {
    /// Parses a request body into a document.
    ///
    /// `max_body_bytes` bounds the body as received (the event size is checked later, when it
    /// is built). `route_id` is the id named by the URL, if any: the body's `_id` must then be
    /// absent or equal to it.
    ///
    /// # Errors
    /// An [`InputError`] naming the first problem found.
    pub fn parse(
        content_type: Option<&str>,
        body: &[u8],
        max_body_bytes: usize,
        route_id: Option<&DocumentId>,
    ) -> Result<Self, InputError> {
        check_envelope(content_type, body, max_body_bytes)?;
        let value = parse_json(body)?;
        // serde_json turns an integer literal too long for 64 bits into an approximate float;
        // MongoDB would then store a different number than the client sent.
        check_integer_literals(body)?;
        let Value::Object(mut fields) = value else {
            return Err(InputError::NotAnObject {
                found: kind_of(&value),
            });
        };
        let id = take_id(&mut fields, route_id)?;
        if let Some(reserved) = RESERVED_FIELDS.iter().find(|f| fields.contains_key(**f)) {
            return Err(InputError::InvalidKey {
                path: format!("$.{reserved}"),
                reason: "this field name is reserved by outbox-relay",
            });
        }
        let mut bson = Document::new();
        bson.insert("_id", id.as_str());
        let mut path = String::from("$");
        for (key, value) in &fields {
            check_key(key, &path)?;
            let len = path.len();
            push_key(&mut path, key);
            bson.insert(key.clone(), to_bson(value, 1, &mut path)?);
            path.truncate(len);
        }
        // `_id` first, then the fields in the order the client sent them.
        let mut ordered = serde_json::Map::with_capacity(fields.len() + 1);
        ordered.insert("_id".to_owned(), Value::String(id.as_str().to_owned()));
        ordered.extend(fields);
        let json = serde_json::value::to_raw_value(&ordered)
            .map_err(|_| InputError::NotAnObject { found: "an object" })?;
        Ok(Self { id, bson, json })
    }

    /// The document's id.
    #[must_use]
    pub fn id(&self) -> &DocumentId {
        &self.id
    }

    /// The document as MongoDB stores it (with `_id`).
    #[must_use]
    pub fn bson(&self) -> &Document {
        &self.bson
    }

    /// The document as compact JSON (with `_id` as a string): the event's `data`.
    #[must_use]
    pub fn json(&self) -> &RawValue {
        &self.json
    }
}

/// Refuses integer literals outside the 64-bit range (in well-formed JSON; strings skipped).
fn check_integer_literals(body: &[u8]) -> Result<(), InputError> {
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < body.len()
                && matches!(body[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            let token = &body[start..i];
            let is_integer = !token.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
            if is_integer
                && std::str::from_utf8(token)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .is_none()
            {
                return Err(InputError::NumberOutOfRange {
                    path: format!("byte {start}"),
                });
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_key(key: &str, parent: &str) -> Result<(), InputError> {
    let reason = if key.starts_with('$') {
        "field names must not start with '$'"
    } else if key.contains('.') {
        "field names must not contain '.'"
    } else if key.contains('\0') {
        "field names must not contain NUL"
    } else {
        return Ok(());
    };
    let mut path = parent.to_owned();
    push_key(&mut path, key);
    Err(InputError::InvalidKey { path, reason })
}

fn push_key(path: &mut String, key: &str) {
    // Keep error messages short even for absurd keys.
    const MAX_SHOWN: usize = 64;
    path.push('.');
    if key.chars().count() > MAX_SHOWN {
        path.extend(key.chars().take(MAX_SHOWN));
        path.push('…');
    } else {
        path.push_str(key);
    }
}

fn to_bson(value: &Value, depth: usize, path: &mut String) -> Result<Bson, InputError> {
    Ok(match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::String(s) => Bson::String(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i32::try_from(i).map_or(Bson::Int64(i), Bson::Int32)
            } else if n.is_u64() {
                return Err(InputError::NumberOutOfRange { path: path.clone() });
            } else {
                // serde_json only yields finite floats: out-of-range literals are parse errors.
                Bson::Double(n.as_f64().unwrap_or_default())
            }
        }
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(InputError::TooDeep);
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(to_bson(item, depth + 1, path)?);
                path.truncate(len);
            }
            Bson::Array(out)
        }
        Value::Object(fields) => {
            if depth >= MAX_DEPTH {
                return Err(InputError::TooDeep);
            }
            let mut doc = Document::new();
            for (key, item) in fields {
                check_key(key, path)?;
                let len = path.len();
                push_key(path, key);
                doc.insert(key.clone(), to_bson(item, depth + 1, path)?);
                path.truncate(len);
            }
            Bson::Document(doc)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");
    const LIMIT: usize = 1 << 20;

    fn parse(body: &str) -> Result<NewDocument, InputError> {
        NewDocument::parse(JSON, body.as_bytes(), LIMIT, None)
    }

    #[test]
    fn a_document_without_id_gets_a_generated_one_first_in_its_json() {
        let d = parse(r#"{"title":"q","pages":7}"#).unwrap();
        assert_eq!(d.id().as_str().len(), 24);
        let json = d.json().get();
        assert!(
            json.starts_with(&format!(r#"{{"_id":"{}","title""#, d.id())),
            "{json}"
        );
        assert_eq!(d.bson().get_str("_id").unwrap(), d.id().as_str());
        assert_eq!(d.bson().get_i32("pages").unwrap(), 7);
    }

    #[test]
    fn a_client_id_is_kept_and_field_order_is_preserved() {
        let d = parse(r#"{"z":1,"_id":"order-42","a":{"y":2,"b":[1,2.5,"x",null,true]}}"#).unwrap();
        assert_eq!(d.id().as_str(), "order-42");
        assert_eq!(
            d.json().get(),
            r#"{"_id":"order-42","z":1,"a":{"y":2,"b":[1,2.5,"x",null,true]}}"#
        );
        let keys: Vec<_> = d.bson().keys().collect();
        assert_eq!(keys, ["_id", "z", "a"]);
    }

    #[test]
    fn large_integers_stay_exact() {
        let d = parse(r#"{"big":9007199254740993,"neg":-9223372036854775808}"#).unwrap();
        assert_eq!(d.bson().get_i64("big").unwrap(), 9_007_199_254_740_993);
        assert_eq!(d.bson().get_i64("neg").unwrap(), i64::MIN);
        for body in [
            r#"{"n":18446744073709551615}"#,
            r#"{"n":-9223372036854775809}"#,
            r#"{"a":[1,{"b":123456789012345678901234567890}]}"#,
            r#"{"f":1e400}"#,
        ] {
            assert!(
                matches!(parse(body), Err(InputError::NumberOutOfRange { .. })),
                "{body}"
            );
        }
        // Digits inside strings, floats and exponents are fine.
        assert!(
            parse(r#"{"s":"123456789012345678901234567890","f":1.5e300,"g":-0.0,"k\"":1}"#).is_ok()
        );
    }

    #[test]
    fn non_json_content_types_are_unsupported() {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let e = NewDocument::parse(ct, b"{}", LIMIT, None).unwrap_err();
            assert!(
                matches!(e, InputError::UnsupportedMediaType { .. }),
                "{ct:?}"
            );
        }
        for ct in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.acme+json",
            "text/json",
        ] {
            assert!(
                NewDocument::parse(Some(ct), b"{}", LIMIT, None).is_ok(),
                "{ct}"
            );
        }
    }

    #[test]
    fn malformed_and_non_object_bodies_are_rejected() {
        assert_eq!(parse("").unwrap_err(), InputError::Empty);
        assert_eq!(parse("  \n").unwrap_err(), InputError::Empty);
        assert!(matches!(
            parse(r#"{"a":"#).unwrap_err(),
            InputError::MalformedJson { .. }
        ));
        assert!(matches!(
            parse(r#"{"a":1}{"b":2}"#).unwrap_err(),
            InputError::MalformedJson { .. }
        ));
        assert!(matches!(
            NewDocument::parse(JSON, b"{\"a\":\"\xff\"}", LIMIT, None).unwrap_err(),
            InputError::MalformedJson { .. }
        ));
        for (body, found) in [
            ("[1]", "an array"),
            ("\"s\"", "a string"),
            ("null", "null"),
            ("3", "a number"),
        ] {
            assert_eq!(parse(body).unwrap_err(), InputError::NotAnObject { found });
        }
    }

    #[test]
    fn bad_ids_are_rejected() {
        for body in [
            r#"{"_id":5}"#,
            r#"{"_id":null}"#,
            r#"{"_id":{"$oid":"65f2c0a1e4b0a1b2c3d4e5f6"}}"#,
            r#"{"_id":""}"#,
            r#"{"_id":"a/b"}"#,
            r#"{"_id":"a b"}"#,
            r#"{"_id":"ünï"}"#,
        ] {
            assert!(
                matches!(parse(body), Err(InputError::InvalidId { .. })),
                "{body}"
            );
        }
        let long = format!(r#"{{"_id":"{}"}}"#, "x".repeat(MAX_ID_BYTES + 1));
        assert!(matches!(parse(&long), Err(InputError::InvalidId { .. })));
        let max = format!(r#"{{"_id":"{}"}}"#, "x".repeat(MAX_ID_BYTES));
        assert!(parse(&max).is_ok());
    }

    #[test]
    fn dollar_and_dot_keys_are_rejected_at_any_depth() {
        for (body, path) in [
            (r#"{"$set":1}"#, "$.$set"),
            (r#"{"a.b":1}"#, "$.a.b"),
            (r#"{"a":{"b":{"$where":"x"}}}"#, "$.a.b.$where"),
            (r#"{"a":[{"ok":1},{"x.y":2}]}"#, "$.a[1].x.y"),
            (r#"{"_outbox":{}}"#, "$._outbox"),
            (r#"{"_meta":{"version":9}}"#, "$._meta"),
            (r#"{"_idempotency":{}}"#, "$._idempotency"),
        ] {
            match parse(body) {
                Err(InputError::InvalidKey { path: got, .. }) => assert_eq!(got, path, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(parse(r#"{"a$":1,"_outbox_x":2,"nested":{"_outbox":1}}"#).is_ok());
    }

    #[test]
    fn nesting_beyond_the_limit_is_rejected() {
        let deep_ok =
            format!("{}{}", r#"{"a":"#.repeat(MAX_DEPTH - 1), "1") + &"}".repeat(MAX_DEPTH - 1);
        assert!(parse(&deep_ok).is_ok());
        let too_deep = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let body = format!(r#"{{"a":{too_deep}}}"#);
        assert_eq!(parse(&body).unwrap_err(), InputError::TooDeep);
        let absurd = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let body = format!(r#"{{"a":{absurd}}}"#);
        assert!(matches!(
            parse(&body).unwrap_err(),
            InputError::MalformedJson {
                reason: "nested too deeply",
                ..
            }
        ));
    }

    #[test]
    fn the_url_id_is_used_and_must_agree_with_the_body() {
        let route = DocumentId::parse("r-1").unwrap();
        let d = NewDocument::parse(JSON, br#"{"a":1}"#, LIMIT, Some(&route)).unwrap();
        assert_eq!(d.id(), &route);
        let d = NewDocument::parse(JSON, br#"{"_id":"r-1"}"#, LIMIT, Some(&route)).unwrap();
        assert_eq!(d.id(), &route);
        let e = NewDocument::parse(JSON, br#"{"_id":"other"}"#, LIMIT, Some(&route)).unwrap_err();
        assert!(matches!(e, InputError::InvalidId { .. }));
    }

    #[test]
    fn bodies_over_the_limit_are_too_large() {
        let e = NewDocument::parse(JSON, br#"{"a":"0123456789"}"#, 10, None).unwrap_err();
        assert!(matches!(e, InputError::TooLarge { what: "body", .. }));
    }
}
