//! A local OTLP/HTTP endpoint: takes `POST /v1/metrics` as a collector does, keeps every raw
//! body and its headers, and decodes them with the official OpenTelemetry proto definitions
//! (`opentelemetry-proto`'s prost types). It also takes Application Insights' `POST /v2/track`
//! (gzipped JSON envelopes), so that a connection string can point at it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use prost::Message as _;
use tokio::time::Instant;

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The running endpoint; stops when dropped.
pub struct OtlpSink {
    port: u16,
    /// The self-signed certificate's file, when it serves https.
    tls: Option<std::path::PathBuf>,
    received: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(ca) = &self.tls {
            let _ = std::fs::remove_file(ca);
        }
    }
}

fn router(received: Arc<Mutex<Vec<Received>>>) -> Router {
    Router::new()
        .route("/v1/metrics", post(take))
        .route("/v2/track", post(take))
        .with_state(received)
}

/// Accepts TCP connections and completes their TLS handshake before axum sees them.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl OtlpSink {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = router(Arc::clone(&received));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            tls: None,
            received,
            server,
        }
    }

    /// The same over https, with a self-signed certificate for 127.0.0.1 (Application
    /// Insights' exporter sends only https); the handler trusts it through `SSL_CERT_FILE`,
    /// which the platform's certificate store honours.
    pub async fn start_tls() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let ca_file =
            std::env::temp_dir().join(format!("outbox-test-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&ca_file, certified.cert.pem()).unwrap();
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(
            certified.signing_key.serialize_der(),
        )
        .unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        let app = router(Arc::clone(&received));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            tls: Some(ca_file),
            received,
            server,
        }
    }

    /// The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` (or a connection string) takes it.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The certificate to trust (as `SSL_CERT_FILE`), when it serves https.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_deref()
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The last export, decoded: with cumulative temporality it holds every total so far.
    pub fn latest(&self) -> Option<Export> {
        let last = self
            .received
            .lock()
            .unwrap()
            .iter()
            .rfind(|r| r.path == "/v1/metrics")
            .cloned()?;
        Some(Export(
            ExportMetricsServiceRequest::decode(last.body).expect("an OTLP metrics request"),
        ))
    }

    /// Waits (up to 60 s) for an export that satisfies `ready`; panics naming `what`.
    pub async fn wait_for(&self, what: &str, ready: impl Fn(&Export) -> bool) -> Export {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(export) = self.latest().filter(|e| ready(e)) {
                return export;
            }
            assert!(
                Instant::now() < deadline,
                "no OTLP export showed {what}; the last one: {:#?}",
                self.latest().map(|e| e.summary())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every Application Insights envelope received so far, unzipped and parsed.
    pub fn track_envelopes(&self) -> Vec<serde_json::Value> {
        self.received()
            .iter()
            .filter(|r| r.path == "/v2/track")
            .flat_map(|r| {
                let mut json = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::GzDecoder::new(&r.body[..]),
                    &mut json,
                )
                .expect("a gzipped body");
                let envelopes: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
                envelopes
            })
            .collect()
    }
}

async fn take(
    State(received): State<Arc<Mutex<Vec<Received>>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let path = uri.path().to_owned();
    received.lock().unwrap().push(Received {
        path,
        headers,
        body,
    });
    // An empty ExportMetricsServiceResponse: everything accepted.
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        Vec::new(),
    )
}

/// One decoded export.
#[derive(Debug, Clone)]
pub struct Export(pub ExportMetricsServiceRequest);

impl Export {
    fn metrics(&self) -> impl Iterator<Item = &Metric> {
        self.0
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
    }

    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics().find(|m| m.name == name)
    }

    /// The `service.name` of the exporting resource.
    pub fn service_name(&self) -> Option<String> {
        self.0
            .resource_metrics
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| string(kv.value.as_ref()))
    }

    /// A counter's or gauge's value: the sum of its points whose attributes include `with`;
    /// `None` when it has no such point.
    pub fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        let points = match self.metric(name)?.data.as_ref()? {
            metric::Data::Sum(s) => &s.data_points,
            metric::Data::Gauge(g) => &g.data_points,
            _ => return None,
        };
        let mut found = None;
        for p in points.iter().filter(|p| has(&p.attributes, with)) {
            let v = match p.value {
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                Some(number_data_point::Value::AsDouble(d)) => d,
                None => 0.0,
            };
            *found.get_or_insert(0.0) += v;
        }
        found
    }

    /// A histogram's count over its points whose attributes include `with`.
    pub fn histogram_count(&self, name: &str, with: &[(&str, &str)]) -> Option<u64> {
        match self.metric(name)?.data.as_ref()? {
            metric::Data::Histogram(h) => Some(
                h.data_points
                    .iter()
                    .filter(|p| has(&p.attributes, with))
                    .map(|p| p.count)
                    .sum(),
            ),
            _ => None,
        }
    }

    /// Every metric's name, unit and point count, for failure messages.
    pub fn summary(&self) -> Vec<String> {
        self.metrics()
            .map(|m| format!("{} [{}] {:?}", m.name, m.unit, m.data))
            .collect()
    }
}

fn has(attributes: &[KeyValue], with: &[(&str, &str)]) -> bool {
    with.iter().all(|(k, v)| {
        attributes
            .iter()
            .any(|kv| kv.key == *k && string(kv.value.as_ref()).as_deref() == Some(*v))
    })
}

fn string(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}
