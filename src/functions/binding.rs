//! The HTTP function's public shape, read from the app root the way the host reads it: the
//! `route` and `methods` of `WriteDocumentHttp/function.json` and the `routePrefix` of
//! `host.json`. Raw routes (forwarding and standalone mode) and `Location` headers follow it,
//! so the files stay the one place that defines the public URL.

use std::path::Path;

use axum::http::Method;

use crate::config::ConfigError;
use crate::domain::DocumentId;

const FUNCTION_JSON: &str = "WriteDocumentHttp/function.json";
const EMBEDDED_FUNCTION_JSON: &str = include_str!("../../WriteDocumentHttp/function.json");
const EMBEDDED_HOST_JSON: &str = include_str!("../../host.json");
/// The methods this function implements.
const SUPPORTED: [Method; 3] = [Method::POST, Method::PUT, Method::DELETE];

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

fn bad(reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: FUNCTION_JSON,
        reason: reason.into(),
    }
}

impl HttpFunction {
    /// Reads the files from `app_root`, or the copies built into the binary where the app root
    /// has none (a container holding only the binary).
    ///
    /// # Errors
    /// When a file cannot be read or parsed, or the route has a shape this handler cannot
    /// serve.
    pub fn load(app_root: &Path) -> Result<Self, ConfigError> {
        let read = |rel: &str, embedded: &str| match std::fs::read_to_string(app_root.join(rel)) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(embedded.to_owned()),
            Err(e) => Err(bad(format!("cannot read {rel}: {e}"))),
        };
        Self::parse(
            &read("host.json", EMBEDDED_HOST_JSON)?,
            &read(FUNCTION_JSON, EMBEDDED_FUNCTION_JSON)?,
        )
    }

    /// Parses `host.json` and `function.json` texts.
    ///
    /// # Errors
    /// As [`HttpFunction::load`].
    pub fn parse(host_json: &str, function_json: &str) -> Result<Self, ConfigError> {
        let host: serde_json::Value = serde_json::from_str(host_json)
            .map_err(|e| bad(format!("host.json is not valid JSON: {e}")))?;
        let prefix = host
            .pointer("/extensions/http/routePrefix")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("api")
            .trim_matches('/')
            .to_owned();
        let function: serde_json::Value =
            serde_json::from_str(function_json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let trigger = function
            .get("bindings")
            .and_then(serde_json::Value::as_array)
            .and_then(|b| {
                b.iter().find(|b| {
                    b.get("type").and_then(serde_json::Value::as_str) == Some("httpTrigger")
                })
            })
            .ok_or_else(|| bad("has no httpTrigger binding"))?;
        let route = trigger
            .get("route")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("WriteDocumentHttp")
            .trim_matches('/');
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
        let methods = match trigger.get("methods").and_then(serde_json::Value::as_array) {
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
            return Err(bad("methods lists none of post, put, delete"));
        }
        let mut base = String::new();
        for part in std::iter::once(prefix.as_str())
            .chain(segments.iter().copied())
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

    /// The `Allow` header value for a URL with or without an id: PUT and DELETE need one.
    #[must_use]
    pub fn allow(&self, with_id: bool) -> String {
        self.methods
            .iter()
            .filter(|m| with_id || **m == Method::POST)
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where a document lives: the `Location` of a created document.
    #[must_use]
    pub fn location(&self, id: &DocumentId) -> String {
        format!("{}/{id}", self.base)
    }
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
        let f = HttpFunction::parse(EMBEDDED_HOST_JSON, EMBEDDED_FUNCTION_JSON).unwrap();
        assert_eq!(
            f.raw_routes(),
            (
                Some("/api/documents".into()),
                Some("/api/documents/{id}".into())
            )
        );
        assert_eq!(f.allow(true), "POST, PUT, DELETE");
        assert_eq!(f.allow(false), "POST");
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
        assert_eq!(f.allow(true), "POST, PUT, DELETE", "no methods = all");
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
            assert_eq!(e.setting, FUNCTION_JSON, "{route}");
        }
        let e = HttpFunction::parse(
            HOST,
            &function(r#"{"type":"httpTrigger","name":"req","methods":["get"]}"#),
        )
        .unwrap_err();
        assert_eq!(e.setting, FUNCTION_JSON);
    }
}
