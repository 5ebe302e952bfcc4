//! The exporters, chosen from the settings: OTLP/HTTP (protobuf) when an `OTEL_EXPORTER_OTLP_*`
//! endpoint is set, Application Insights when `APPLICATIONINSIGHTS_CONNECTION_STRING` is, and the
//! Prometheus text of standalone mode's `GET /metrics`. All of them read the same instruments.
//!
//! The push exporters run on the SDK's own thread (its periodic reader) with a blocking HTTP
//! client, so a slow collector never holds up the runtime that relays.

use std::collections::HashMap;

use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prometheus::Encoder as _;
use secrecy::ExposeSecret as _;

use crate::config::{MetricsSettings, OtlpSettings};

/// Why the exporters could not be set up. Never carries a secret (a connection string, a
/// header's value).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP exporter refused its configuration.
    #[error("cannot set up the OTLP metrics exporter: {0}")]
    Otlp(String),
    /// The connection string could not be parsed.
    #[error(
        "setting APPLICATIONINSIGHTS_CONNECTION_STRING: cannot be read as an Application Insights connection string"
    )]
    AppInsights,
    /// The blocking HTTP client could not be built.
    #[error("cannot build the HTTP client of the Application Insights exporter: {0}")]
    Client(String),
    /// The Prometheus exporter could not be built.
    #[error("cannot set up the Prometheus exposition: {0}")]
    Prometheus(String),
}

/// The installed meter provider and, in standalone mode, the Prometheus registry it fills.
#[derive(Debug)]
pub struct Exporters {
    provider: SdkMeterProvider,
    prometheus: Option<PrometheusText>,
}

/// The Prometheus text exposition of every instrument. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PrometheusText(prometheus::Registry);

impl PrometheusText {
    /// The metrics in the Prometheus text format (version 0.0.4).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on metrics the registry itself would have refused.
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.0.gather(), &mut out) {
            tracing::warn!(error = %e, "Cannot encode the metrics as Prometheus text");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The content type of [`Self::render`]'s text.
    #[must_use]
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

impl Exporters {
    /// Builds the exporters the settings ask for (with `prometheus`, the text exposition too),
    /// and installs their meter provider as the process's, before anything records.
    ///
    /// # Errors
    /// When an exporter refuses its configuration.
    pub fn install(settings: &MetricsSettings, prometheus: bool) -> Result<Self, ExportError> {
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .build();
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        if let Some(otlp) = &settings.otlp {
            let exporter = otlp_exporter(otlp)?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(settings.export_interval)
                    .build(),
            );
            tracing::info!(endpoint = %redacted(&otlp.endpoint), "Exporting metrics over OTLP/HTTP");
        }
        if let Some(connection) = &settings.app_insights {
            let client = blocking_client()?;
            let exporter =
                opentelemetry_application_insights::Exporter::new_from_connection_string(
                    connection.expose_secret(),
                    client,
                )
                .map_err(|_| ExportError::AppInsights)?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(settings.export_interval)
                    .build(),
            );
            tracing::info!("Exporting metrics to Application Insights");
        }
        let text = if prometheus {
            let registry = prometheus::Registry::new();
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .map_err(|e| ExportError::Prometheus(e.to_string()))?;
            builder = builder.with_reader(exporter);
            Some(PrometheusText(registry))
        } else {
            None
        };
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Ok(Self {
            provider,
            prometheus: text,
        })
    }

    /// The Prometheus exposition, when it was asked for.
    #[must_use]
    pub fn prometheus(&self) -> Option<PrometheusText> {
        self.prometheus.clone()
    }

    /// Does anything read the instruments (so that sampling the backlog is worth its queries)?
    #[must_use]
    pub fn any(&self, settings: &MetricsSettings) -> bool {
        self.prometheus.is_some() || settings.pushes()
    }

    /// Sends what the push exporters have not sent yet and stops them. Blocks until they are
    /// done (each bounded by its timeout): call it off the runtime's worker threads.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "Cannot flush the last metrics");
        }
    }
}

/// The OTLP/HTTP protobuf exporter for `otlp`.
fn otlp_exporter(otlp: &OtlpSettings) -> Result<opentelemetry_otlp::MetricExporter, ExportError> {
    let headers: HashMap<String, String> = otlp
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
        .collect();
    opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(otlp.endpoint.as_str())
        .with_timeout(otlp.timeout)
        .with_headers(headers)
        .build()
        .map_err(|e| ExportError::Otlp(e.to_string()))
}

/// A blocking client for the Application Insights exporter, built on a thread of its own:
/// `reqwest`'s blocking client runs a runtime inside, which may not be created on a runtime's
/// thread.
fn blocking_client() -> Result<reqwest::blocking::Client, ExportError> {
    std::thread::spawn(|| reqwest::blocking::Client::builder().build())
        .join()
        .map_err(|_| ExportError::Client("the thread building it panicked".to_owned()))?
        .map_err(|e| ExportError::Client(e.to_string()))
}

/// The endpoint without user, password and query, for logs.
fn redacted(url: &url::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}
