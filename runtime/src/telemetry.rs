//! Logs and traces: a `tracing` subscriber writing text or JSON lines, bridged to OpenTelemetry
//! so every RPC span has a trace id (propagated from the caller by the `OTEL_PROPAGATORS`),
//! exported over OTLP (gRPC or HTTP/protobuf, `http://` or `https://`) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Without an exporter no OpenTelemetry spans are built, but every RPC still gets a trace id
//! (the caller's from `traceparent`, or a new one): it reaches the logs and the
//! [`TraceContext`](crate::layers::trace::TraceContext) handlers see, so logs of one request can
//! be correlated across services.

use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler as SdkSampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogFormat, OtelConfig, OtlpProtocol, ParentRoot, Sampler};
use crate::logging::JsonLines;

/// Instrumentation scope name of the spans this crate creates.
pub const TRACER_NAME: &str = "grpc-runtime";

/// Longest one OTLP export may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`Telemetry::shutdown`] waits for the exporter to stop once buffered spans have been
/// flushed (the flush itself is bounded at 5 s by the OpenTelemetry SDK).
pub const EXPORTER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Setting up telemetry failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("building the OTLP span exporter for {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The CA certificates for an `https://` collector could not be loaded.
    #[error("loading the CA certificates for the OTLP collector: {0}")]
    Certificates(String),
    /// The exporter needs a Tokio runtime and none is running.
    #[error("telemetry must be set up inside a Tokio runtime")]
    NoRuntime,
}

/// Owns the tracer provider (when spans are exported); [`Telemetry::shutdown`] flushes
/// pending spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    installed: bool,
}

fn sampler(s: Sampler) -> SdkSampler {
    let root = |r: ParentRoot| match r {
        ParentRoot::AlwaysOn => SdkSampler::AlwaysOn,
        ParentRoot::AlwaysOff => SdkSampler::AlwaysOff,
        ParentRoot::TraceIdRatio(x) => SdkSampler::TraceIdRatioBased(x),
    };
    match s {
        Sampler::AlwaysOn => SdkSampler::AlwaysOn,
        Sampler::AlwaysOff => SdkSampler::AlwaysOff,
        Sampler::TraceIdRatio(x) => SdkSampler::TraceIdRatioBased(x),
        Sampler::ParentBased(r) => SdkSampler::ParentBased(Box::new(root(r))),
    }
}

impl Telemetry {
    /// Builds the tracer provider (and the OTLP exporter when configured), sets the global W3C
    /// `traceparent` + `baggage` propagator, and installs the global `tracing` subscriber.
    ///
    /// If a global subscriber is already set (a test harness, an embedding application), it is
    /// kept and only the provider is returned: log lines then go wherever that subscriber sends
    /// them.
    pub fn init(config: &Config) -> Result<Self, TelemetryError> {
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(
            config.otel.propagators.iter().map(|p| p.build()).collect(),
        ));
        // Without an exporter there is no OpenTelemetry SDK work at all: the trace layer still
        // continues the caller's trace id (or starts one) for logs and handlers, at a fraction
        // of the cost of building spans nobody receives.
        let provider = match &config.otel.endpoint {
            Some(_) => Some(Self::provider(config)?),
            None => None,
        };
        let otel = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer().with_tracer(p.tracer(TRACER_NAME)).with_tracked_inactivity(false)
        });
        // RUST_LOG was validated by Config; fall back to `info` defensively.
        let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let registry = tracing_subscriber::registry().with(filter).with(otel);
        let installed = match config.log_format {
            LogFormat::Json => registry.with(JsonLines::new(std::io::stdout)).try_init().is_ok(),
            LogFormat::Text => registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stdout))
                .try_init()
                .is_ok(),
        };
        Ok(Telemetry { provider, installed })
    }

    /// The tracer provider without installing anything global.
    pub fn provider(config: &Config) -> Result<SdkTracerProvider, TelemetryError> {
        let service_name = config.otel.service_name.clone().unwrap_or_else(default_service_name);
        let resource = Resource::builder_empty()
            .with_service_name(service_name)
            .with_attributes(
                config.otel.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let mut builder =
            SdkTracerProvider::builder().with_sampler(sampler(config.otel.sampler)).with_resource(resource);
        if let Some(endpoint) = &config.otel.endpoint {
            builder = builder.with_batch_exporter(exporter(&config.otel, endpoint)?);
        }
        Ok(builder.build())
    }

    /// Whether this call installed the global subscriber.
    pub fn installed_subscriber(&self) -> bool {
        self.installed
    }

    /// Exports spans still buffered and stops the exporter; call once, at the end of shutdown.
    /// Takes at most about 6 s with an unreachable collector.
    ///
    /// This blocks the calling thread. From async code run it with
    /// `tokio::task::spawn_blocking`: the OTLP exporter's connection is driven by the Tokio
    /// runtime, and blocking a current-thread runtime's only thread here starves it, so the
    /// flush times out and the spans are lost.
    pub fn shutdown(&self) {
        let Some(provider) = &self.provider else { return };
        // force_flush reports export failures (shutdown would drop them); the SDK bounds it.
        if let Err(err) = provider.force_flush() {
            tracing::warn!(error = %err, "flushing spans failed");
        }
        // Nothing is left to export, so stopping the exporter needs only a short bound (with
        // the SDK's default of another 5 s, an unresponsive collector costs 10 s).
        if let Err(err) = provider.shutdown_with_timeout(EXPORTER_SHUTDOWN_TIMEOUT) {
            tracing::debug!(error = %err, "tracer provider shutdown");
        }
    }
}

fn default_service_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "grpc-service".into())
}

/// The OTLP span exporter for `endpoint`. Each export is bounded by [`EXPORT_TIMEOUT`], and so is
/// the flush at shutdown, well inside the pod's grace period.
fn exporter(otel: &OtelConfig, endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let https = endpoint.starts_with("https://");
    let built = match otel.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (key, value) in &otel.headers.0 {
                // Both were validated by Config (header name and value syntax).
                if let (Ok(key), Ok(value)) = (
                    tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                    tonic::metadata::MetadataValue::try_from(value.as_str()),
                ) {
                    metadata.insert(key, value);
                }
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_string())
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(metadata);
            if https {
                let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                if let Some(path) = &otel.certificate {
                    let pem = std::fs::read(path)
                        .map_err(|e| TelemetryError::Certificates(format!("{}: {e}", path.display())))?;
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build()
        }
        OtlpProtocol::HttpProtobuf => {
            // The specification: OTEL_EXPORTER_OTLP_ENDPOINT is a base URL, traces go to
            // /v1/traces under it.
            let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let client = OtlpHttpClient::new(otel.certificate.as_deref())?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(otel.headers.0.iter().cloned().collect())
                .with_http_client(client)
                .build()
        }
    };
    built.map_err(|source| TelemetryError::Exporter { endpoint: endpoint.to_string(), source })
}

/// The HTTP client of the OTLP/HTTP exporter: hyper with rustls and the ring provider (the
/// exporter's bundled clients are reqwest, whose rustls brings a second crypto provider). The
/// exporter calls it from its own thread, so requests are spawned on the server's runtime.
struct OtlpHttpClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<Bytes>,
    >,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for OtlpHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpHttpClient")
    }
}

/// Largest OTLP response body read (the collector's answer is a few bytes).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

impl OtlpHttpClient {
    fn new(extra_ca: Option<&std::path::Path>) -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped; a collector they were needed for fails
        // its handshake, which the exporter logs.
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TelemetryError::Certificates(format!("{}: {e}", path.display())))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TelemetryError::Certificates(format!("{}: {e}", path.display())))?;
            }
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TelemetryError::Certificates(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
        Ok(OtlpHttpClient { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpHttpClient {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let send = client.request(request.map(http_body_util::Full::new));
            let response = tokio::time::timeout(EXPORT_TIMEOUT, send).await??;
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES).collect().await?.to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        });
        task.await?
    }
}
