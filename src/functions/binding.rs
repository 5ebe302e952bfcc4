//! The function app's files in the app root, read the way the host reads them. The one reader
//! of `host.json` and the `function.json` files; each user takes what it needs:
//!
//! - [`HttpFunction`]: the `route` and `methods` of `WriteDocumentHttp`'s httpTrigger under
//!   `host.json`'s `routePrefix`. Raw routes (forwarding and standalone mode) and `Location`
//!   headers follow it, so the files stay the one place that defines the public URL.
//! - [`timer_schedule`]: the `schedule` of `OutboxTimer`'s timerTrigger, which standalone mode
//!   follows unless `OUTBOX_SCHEDULE` is set.
//!
//! Where the app root has no such file (a container holding only the binary), the copy built
//! into the binary is used.

use std::path::{Path, PathBuf};

use axum::http::Method;
use serde_json::Value;

use crate::config::ConfigError;
use crate::domain::DocumentId;

/// A file of the function app, with the copy built into the binary.
struct AppFile {
    /// Relative to the app root.
    path: &'static str,
    embedded: &'static str,
}

const HOST_JSON: AppFile = AppFile {
    path: "host.json",
    embedded: include_str!("../../host.json"),
};
const WRITE_DOCUMENT_HTTP: AppFile = AppFile {
    path: "WriteDocumentHttp/function.json",
    embedded: include_str!("../../WriteDocumentHttp/function.json"),
};
const OUTBOX_TIMER: AppFile = AppFile {
    path: "OutboxTimer/function.json",
    embedded: include_str!("../../OutboxTimer/function.json"),
};

impl AppFile {
    /// The file's text in `app_root`, or the built-in copy when the app root has none.
    fn read(&self, app_root: &Path) -> std::io::Result<String> {
        match std::fs::read_to_string(app_root.join(self.path)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(self.embedded.to_owned()),
            other => other,
        }
    }
}

/// The binding of type `kind` (`httpTrigger`, `timerTrigger`) in a parsed `function.json`.
fn binding<'a>(function: &'a Value, kind: &str) -> Option<&'a Value> {
    function
        .get("bindings")?
        .as_array()?
        .iter()
        .find(|b| b.get("type").and_then(Value::as_str) == Some(kind))
}

/// Why `OutboxTimer/function.json` gives no schedule.
#[derive(Debug, thiserror::Error)]
pub enum TimerScheduleError {
    /// The file exists but cannot be read.
    #[error("{} cannot be read: {error}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not JSON, or has no timerTrigger with a `schedule`.
    #[error("{} has no timerTrigger schedule", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
}

/// The `schedule` of `OutboxTimer/function.json` in `app_root` (or of the built-in copy), as
/// written: it may name an app setting as `%NAME%`, which the caller resolves.
///
/// # Errors
/// When the file cannot be read or has no schedule.
pub fn timer_schedule(app_root: &Path) -> Result<String, TimerScheduleError> {
    let path = app_root.join(OUTBOX_TIMER.path);
    let text = OUTBOX_TIMER
        .read(app_root)
        .map_err(|error| TimerScheduleError::Unreadable {
            path: path.clone(),
            error,
        })?;
    schedule_in(&text).ok_or(TimerScheduleError::Missing { path })
}

fn schedule_in(function_json: &str) -> Option<String> {
    let function: Value = serde_json::from_str(function_json).ok()?;
    binding(&function, "timerTrigger")?
        .get("schedule")?
        .as_str()
        .map(str::to_owned)
}

/// `functionTimeout` of `host.json` in `app_root` (or of the built-in copy): `None` when it is
/// not set or is `-1` (unbounded, on dedicated plans). For `handler outbox doctor`.
///
/// # Errors
/// When the file cannot be read, is not JSON, or the value is not `[d.]hh:mm:ss`.
pub fn function_timeout(app_root: &Path) -> Result<Option<std::time::Duration>, String> {
    let text = HOST_JSON
        .read(app_root)
        .map_err(|e| format!("cannot read host.json: {e}"))?;
    let host: Value =
        serde_json::from_str(&text).map_err(|e| format!("host.json is not valid JSON: {e}"))?;
    match host.get("functionTimeout").and_then(Value::as_str) {
        None | Some("-1") => Ok(None),
        Some(raw) => parse_timespan(raw)
            .map(Some)
            .ok_or_else(|| format!("host.json's functionTimeout {raw:?} is not [d.]hh:mm:ss")),
    }
}

/// A .NET `TimeSpan` as `host.json` writes it: `hh:mm:ss`, optionally `d.` in front.
fn parse_timespan(raw: &str) -> Option<std::time::Duration> {
    let (days, clock) = match raw.split_once('.') {
        Some((d, rest)) if !d.contains(':') => (d.parse::<u64>().ok()?, rest),
        _ => (0, raw),
    };
    let parts: Vec<u64> = clock
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = parts.as_slice() else {
        return None;
    };
    (*m < 60 && *s < 60)
        .then(|| std::time::Duration::from_secs(((days * 24 + h) * 60 + m) * 60 + s))
}

/// The methods this function implements, in the order `Allow` lists them.
const SUPPORTED: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

/// The public route and methods of `WriteDocumentHttp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFunction {
    /// `/api/documents`: the route without its id parameter.
    base: String,
    /// Whether the route has an `{id}` parameter, and whether it may be left out.
    id: Option<IdParam>,
    /// Allowed methods, in a stable order.
    methods: Vec<Method>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdParam {
    optional: bool,
}

/// Errors in the HTTP function's files name `WriteDocumentHttp/function.json`.
fn bad(reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: WRITE_DOCUMENT_HTTP.path,
        reason: reason.into(),
    }
}

impl HttpFunction {
    /// Reads `host.json` and `WriteDocumentHttp/function.json` from `app_root`, or the copies
    /// built into the binary where the app root has none.
    ///
    /// # Errors
    /// When a file cannot be read or parsed, or the route has a shape this handler cannot
    /// serve.
    pub fn load(app_root: &Path) -> Result<Self, ConfigError> {
        let read = |file: &AppFile| {
            file.read(app_root)
                .map_err(|e| bad(format!("cannot read {}: {e}", file.path)))
        };
        Self::parse(&read(&HOST_JSON)?, &read(&WRITE_DOCUMENT_HTTP)?)
    }

    /// Parses `host.json` and `function.json` texts.
    ///
    /// # Errors
    /// As [`HttpFunction::load`].
    pub fn parse(host_json: &str, function_json: &str) -> Result<Self, ConfigError> {
        let host: Value = serde_json::from_str(host_json)
            .map_err(|e| bad(format!("host.json is not valid JSON: {e}")))?;
        let prefix = host
            .pointer("/extensions/http/routePrefix")
            .and_then(Value::as_str)
            .unwrap_or("api")
            .trim_matches('/');
        let function: Value =
            serde_json::from_str(function_json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let trigger =
            binding(&function, "httpTrigger").ok_or_else(|| bad("has no httpTrigger binding"))?;
        let route = trigger
            .get("route")
            .and_then(Value::as_str)
            .unwrap_or("WriteDocumentHttp")
            .trim_matches('/');
        let (segments, id) = split_route(route)?;
        let methods = allowed_methods(trigger)?;
        let mut base = String::new();
        for part in std::iter::once(prefix)
            .chain(segments)
            .filter(|p| !p.is_empty())
        {
            base.push('/');
            base.push_str(part);
        }
        Ok(Self { base, id, methods })
    }

    /// The axum paths to serve the raw requests on.
    #[must_use]
    pub fn raw_routes(&self) -> (Option<String>, Option<String>) {
        let collection = match self.id {
            Some(IdParam { optional: false }) => None,
            _ => Some(if self.base.is_empty() {
                "/".to_owned()
            } else {
                self.base.clone()
            }),
        };
        let item = self.id.map(|_| format!("{}/{{id}}", self.base));
        (collection, item)
    }

    /// Is `method` allowed?
    #[must_use]
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    /// The `Allow` header value for a URL with or without an id: GET, PUT and DELETE need one.
    #[must_use]
    pub fn allow(&self, with_id: bool) -> String {
        self.methods
            .iter()
            .filter(|m| with_id || **m == Method::POST)
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The route of a document (`/api/documents/{id}`), when the function has one: what a
    /// method that needs an id must use.
    #[must_use]
    pub fn item_route(&self) -> Option<String> {
        self.raw_routes().1
    }

    /// Where a document lives: the `Location` of a created document.
    #[must_use]
    pub fn location(&self, id: &DocumentId) -> String {
        format!("{}/{id}", self.base)
    }
}

/// The route's fixed segments, and its last `{id}` / `{id?}` parameter if any (constraints such
/// as `{id:alpha}` are the host's business).
fn split_route(route: &str) -> Result<(Vec<&str>, Option<IdParam>), ConfigError> {
    let mut segments: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    let id = match segments.last() {
        Some(last) if last.starts_with('{') => {
            let inner = last.trim_start_matches('{').trim_end_matches('}');
            let (name, optional) = inner
                .strip_suffix('?')
                .map_or((inner, false), |n| (n, true));
            let name = name.split(':').next().unwrap_or_default();
            if name != "id" {
                return Err(bad(format!(
                    "route {route:?}: the only supported parameter is a last segment {{id}} or {{id?}}"
                )));
            }
            segments.pop();
            Some(IdParam { optional })
        }
        _ => None,
    };
    if segments.iter().any(|s| s.contains('{') || s.contains('*')) {
        return Err(bad(format!(
            "route {route:?}: parameters other than a last {{id}} segment are not supported"
        )));
    }
    Ok((segments, id))
}

/// The supported methods the trigger lists (all of them when it lists none).
fn allowed_methods(trigger: &Value) -> Result<Vec<Method>, ConfigError> {
    let methods: Vec<Method> = match trigger.get("methods").and_then(Value::as_array) {
        None => SUPPORTED.to_vec(),
        Some(list) => {
            let wanted: Vec<String> = list
                .iter()
                .filter_map(|m| m.as_str().map(str::to_ascii_uppercase))
                .collect();
            SUPPORTED
                .iter()
                .filter(|m| wanted.iter().any(|w| w == m.as_str()))
                .cloned()
                .collect()
        }
    };
    if methods.is_empty() {
        return Err(bad("methods lists none of get, post, put, delete"));
    }
    Ok(methods)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = r#"{"version":"2.0"}"#;

    fn function(trigger: &str) -> String {
        format!(r#"{{"bindings":[{trigger},{{"type":"http","direction":"out","name":"res"}}]}}"#)
    }

    #[test]
    fn the_shipped_files_give_documents_with_an_optional_id() {
        let f = HttpFunction::parse(HOST_JSON.embedded, WRITE_DOCUMENT_HTTP.embedded).unwrap();
        assert_eq!(
            f.raw_routes(),
            (
                Some("/api/documents".into()),
                Some("/api/documents/{id}".into())
            )
        );
        assert_eq!(f.allow(true), "GET, POST, PUT, DELETE");
        assert_eq!(f.allow(false), "POST");
        assert_eq!(f.item_route().as_deref(), Some("/api/documents/{id}"));
        assert_eq!(
            f.location(&DocumentId::parse("a-1").unwrap()),
            "/api/documents/a-1"
        );
    }

    #[test]
    fn without_a_route_the_function_name_is_the_path() {
        let f = HttpFunction::parse(
            HOST,
            &function(r#"{"type":"httpTrigger","direction":"in","name":"req","methods":["post"]}"#),
        )
        .unwrap();
        assert_eq!(
            f.raw_routes(),
            (Some("/api/WriteDocumentHttp".into()), None)
        );
        assert!(f.allows(&Method::POST));
        assert!(!f.allows(&Method::PUT));
        assert!(!f.allows(&Method::GET));
        assert_eq!(f.item_route(), None);
    }

    #[test]
    fn the_route_prefix_comes_from_host_json() {
        let f = HttpFunction::parse(
            r#"{"extensions":{"http":{"routePrefix":""}}}"#,
            &function(r#"{"type":"httpTrigger","name":"req","route":"v1/docs/{id:alpha?}"}"#),
        )
        .unwrap();
        assert_eq!(
            f.raw_routes(),
            (Some("/v1/docs".into()), Some("/v1/docs/{id}".into()))
        );
        assert_eq!(f.allow(true), "GET, POST, PUT, DELETE", "no methods = all");
    }

    #[test]
    fn unsupported_routes_are_refused_naming_the_file() {
        for route in ["docs/{tenant}/{id}", "docs/{name}", "{*rest}"] {
            let e = HttpFunction::parse(
                HOST,
                &function(&format!(
                    r#"{{"type":"httpTrigger","name":"req","route":"{route}"}}"#
                )),
            )
            .unwrap_err();
            assert_eq!(e.setting, WRITE_DOCUMENT_HTTP.path, "{route}");
        }
        let e = HttpFunction::parse(
            HOST,
            &function(r#"{"type":"httpTrigger","name":"req","methods":["patch","head"]}"#),
        )
        .unwrap_err();
        assert_eq!(e.setting, WRITE_DOCUMENT_HTTP.path);
    }

    #[test]
    fn the_timer_schedule_is_the_timer_triggers_schedule() {
        assert_eq!(
            schedule_in(OUTBOX_TIMER.embedded).as_deref(),
            Some("0 */1 * * * *")
        );
        assert_eq!(
            schedule_in(r#"{"bindings":[{"type":"timerTrigger","schedule":"%OUTBOX_SCHEDULE%"}]}"#)
                .as_deref(),
            Some("%OUTBOX_SCHEDULE%")
        );
        for odd in ["", "not json", r#"{"bindings":[{"type":"httpTrigger"}]}"#] {
            assert_eq!(schedule_in(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn function_timeouts_are_read_as_timespans() {
        use std::time::Duration;
        assert_eq!(parse_timespan("00:05:00"), Some(Duration::from_secs(300)));
        assert_eq!(
            parse_timespan("1.02:00:30"),
            Some(Duration::from_secs(26 * 3600 + 30))
        );
        assert_eq!(parse_timespan("00:61:00"), None);
        assert_eq!(parse_timespan("5m"), None);
    }
}
