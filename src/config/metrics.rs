//! Where metrics go: the standard OpenTelemetry variables (`OTEL_*`), Application Insights'
//! `APPLICATIONINSIGHTS_CONNECTION_STRING`, and how often the backlog is read.
//!
//! The ecosystem's names win over the area-prefix rule here: collectors, Azure and every
//! OpenTelemetry SDK already use them, and a deployment sets them once for all its processes.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{ConfigError, Env, Limit};

/// `OUTBOX_METRICS_INTERVAL_SECS`: the backlog queries are cheap, but not free on an RU account.
const MAX_BACKLOG_INTERVAL: Limit = Limit {
    max: Duration::from_secs(3600),
    said: "3600 seconds (an hour)",
};
/// `OTEL_METRIC_EXPORT_INTERVAL` and the OTLP timeouts.
const MAX_EXPORT_MILLIS: Limit = Limit {
    max: Duration::from_secs(3600),
    said: "3600000 milliseconds (an hour)",
};

/// The only OTLP protocol this build sends.
const HTTP_PROTOBUF: &str = "http/protobuf";

/// Where and how often metrics are exported.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// OTLP/HTTP export, when an endpoint is set.
    pub otlp: Option<OtlpSettings>,
    /// `APPLICATIONINSIGHTS_CONNECTION_STRING` (secret: it holds the ingestion key).
    pub app_insights: Option<SecretString>,
    /// `OTEL_METRIC_EXPORT_INTERVAL`: how often the push exporters send.
    pub export_interval: Duration,
    /// `OTEL_SERVICE_NAME`: the `service.name` of the exported resource.
    pub service_name: String,
    /// `OUTBOX_METRICS_INTERVAL_SECS`: how often the backlog, the oldest pending age and the
    /// dead letters are read from the database (never per request).
    pub backlog_interval: Duration,
}

/// OTLP/HTTP (protobuf) export of metrics.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The metrics URL: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` as given, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/metrics` (the specification's rule).
    pub endpoint: Url,
    /// `OTEL_EXPORTER_OTLP_(METRICS_)HEADERS`: `key=value` pairs, values secret (API keys).
    pub headers: Vec<(String, SecretString)>,
    /// `OTEL_EXPORTER_OTLP_(METRICS_)TIMEOUT`.
    pub timeout: Duration,
}

impl MetricsSettings {
    /// Reads the metrics settings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad value (a secret's value is never quoted).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            otlp: otlp(env)?,
            app_insights: app_insights(env)?,
            export_interval: MAX_EXPORT_MILLIS.check(
                "OTEL_METRIC_EXPORT_INTERVAL",
                env.millis_or("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?,
            )?,
            service_name: env.string_or("OTEL_SERVICE_NAME", "outbox-relay"),
            backlog_interval: env.secs_within(
                "OUTBOX_METRICS_INTERVAL_SECS",
                15,
                MAX_BACKLOG_INTERVAL,
            )?,
        })
    }

    /// Does anything push metrics out of the process (OTLP, Application Insights)?
    #[must_use]
    pub fn pushes(&self) -> bool {
        self.otlp.is_some() || self.app_insights.is_some()
    }
}

fn otlp(env: &Env) -> Result<Option<OtlpSettings>, ConfigError> {
    let endpoint = if let Some(raw) = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        endpoint_url("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &raw)?
    } else if let Some(raw) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let base = raw.trim_end_matches('/');
        endpoint_url("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("{base}/v1/metrics"))?
    } else {
        return Ok(None);
    };
    protocol(env)?;
    let headers = match env.get("OTEL_EXPORTER_OTLP_METRICS_HEADERS") {
        Some(raw) => headers("OTEL_EXPORTER_OTLP_METRICS_HEADERS", &raw)?,
        None => match env.get("OTEL_EXPORTER_OTLP_HEADERS") {
            Some(raw) => headers("OTEL_EXPORTER_OTLP_HEADERS", &raw)?,
            None => Vec::new(),
        },
    };
    let timeout = match env.get("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT") {
        Some(_) => env.millis_within("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", 0, MAX_EXPORT_MILLIS)?,
        None => env.millis_within("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, MAX_EXPORT_MILLIS)?,
    };
    Ok(Some(OtlpSettings {
        endpoint,
        headers,
        timeout,
    }))
}

/// The protocol must be `http/protobuf`: the per-signal setting wins, so that a Function App
/// whose host exports over gRPC can still export our metrics over HTTP.
fn protocol(env: &Env) -> Result<(), ConfigError> {
    let name = if env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL").is_some() {
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
    } else {
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    };
    match env.get(name) {
        Some(p) if p != HTTP_PROTOBUF => Err(ConfigError::new(
            name,
            format!(
                "must be {HTTP_PROTOBUF}, the only OTLP protocol this handler sends, got {p:?} (set OTEL_EXPORTER_OTLP_METRICS_PROTOCOL={HTTP_PROTOBUF} to keep another one for the Functions host)"
            ),
        )),
        _ => Ok(()),
    }
}

/// An `http(s)` URL. Its value may carry credentials, so an error does not quote it.
fn endpoint_url(name: &'static str, raw: &str) -> Result<Url, ConfigError> {
    match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url),
        _ => Err(ConfigError::new(
            name,
            "must be an http:// or https:// URL (e.g. http://localhost:4318)",
        )),
    }
}

/// `key=value,key2=value2`, values percent-decoded, as the specification says. Errors name the
/// setting, never a value.
fn headers(name: &'static str, raw: &str) -> Result<Vec<(String, SecretString)>, ConfigError> {
    raw.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                ConfigError::new(
                    name,
                    "must be a list of key=value pairs separated by commas",
                )
            })?;
            let key = key.trim();
            let valid_key = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !valid_key {
                return Err(ConfigError::new(
                    name,
                    "has a header name that is empty or not a token",
                ));
            }
            let value: String =
                url::form_urlencoded::parse(format!("v={}", value.trim()).as_bytes())
                    .map(|(_, v)| v.into_owned())
                    .next()
                    .unwrap_or_default();
            Ok((key.to_owned(), SecretString::from(value)))
        })
        .collect()
}

/// A connection string that at least names an instrumentation key; the exporter parses the rest.
fn app_insights(env: &Env) -> Result<Option<SecretString>, ConfigError> {
    let Some(raw) = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") else {
        return Ok(None);
    };
    let secret = SecretString::from(raw);
    if !secret
        .expose_secret()
        .to_ascii_lowercase()
        .contains("instrumentationkey=")
    {
        return Err(ConfigError::new(
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
            "must be an Application Insights connection string (InstrumentationKey=…;IngestionEndpoint=…)",
        ));
    }
    Ok(Some(secret))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
        )
    }

    #[test]
    fn nothing_set_exports_nothing_and_samples_every_15_seconds() {
        let s = MetricsSettings::from_env(&env(&[])).unwrap();
        assert!(s.otlp.is_none() && s.app_insights.is_none() && !s.pushes());
        assert_eq!(s.backlog_interval, Duration::from_secs(15));
        assert_eq!(s.export_interval, Duration::from_secs(60));
        assert_eq!(s.service_name, "outbox-relay");
    }

    #[test]
    fn the_base_endpoint_gets_the_metrics_path_the_signal_endpoint_does_not() {
        let s = MetricsSettings::from_env(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318/",
        )]))
        .unwrap();
        assert_eq!(
            s.otlp.unwrap().endpoint.as_str(),
            "http://collector:4318/v1/metrics"
        );
        let s = MetricsSettings::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://other:9/m"),
        ]))
        .unwrap();
        assert_eq!(s.otlp.unwrap().endpoint.as_str(), "http://other:9/m");
    }

    #[test]
    fn headers_are_decoded_and_bad_values_are_named_but_not_quoted() {
        let s = MetricsSettings::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret, x=1"),
        ]))
        .unwrap();
        let headers: Vec<(String, String)> = s
            .otlp
            .unwrap()
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
            .collect();
        assert_eq!(
            headers,
            [
                ("api-key".into(), "s=cret".into()),
                ("x".into(), "1".into())
            ]
        );
        let e = MetricsSettings::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "topsecretvalue"),
        ]))
        .unwrap_err();
        assert_eq!(e.setting, "OTEL_EXPORTER_OTLP_HEADERS");
        assert!(!e.to_string().contains("topsecretvalue"), "{e}");
        let e = MetricsSettings::from_env(&env(&[(
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
            "secret-but-wrong",
        )]))
        .unwrap_err();
        assert!(!e.to_string().contains("secret-but-wrong"), "{e}");
    }

    #[test]
    fn only_http_protobuf_is_accepted() {
        let e = MetricsSettings::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap_err();
        assert_eq!(e.setting, "OTEL_EXPORTER_OTLP_PROTOCOL");
        let s = MetricsSettings::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap();
        assert!(s.otlp.is_some());
        let s =
            MetricsSettings::from_env(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).unwrap();
        assert!(
            s.otlp.is_none(),
            "no endpoint: the protocol does not matter"
        );
    }
}
