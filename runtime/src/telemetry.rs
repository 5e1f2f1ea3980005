//! Logs and traces: a `tracing` subscriber writing text or JSON lines, bridged to OpenTelemetry
//! so every RPC span has a W3C trace id (propagated from the caller's `traceparent`), exported
//! over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Spans are created even without an exporter: the trace id then still reaches the logs and the
//! [`TraceContext`](crate::layers::trace::TraceContext) handlers see, so logs of one request can
//! be correlated across services that do export.

use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler as SdkSampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogFormat, ParentRoot, Sampler};

/// Instrumentation scope name of the spans this crate creates.
pub const TRACER_NAME: &str = "grpc-runtime";

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
}

/// Owns the tracer provider; [`Telemetry::shutdown`] flushes pending spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
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
        let provider = Self::provider(config)?;
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
        let tracer = provider.tracer(TRACER_NAME);
        // RUST_LOG was validated by Config; fall back to `info` defensively.
        let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_tracked_inactivity(false);
        let registry = tracing_subscriber::registry().with(filter).with(otel);
        let installed = match config.log_format {
            LogFormat::Json => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(false)
                        .with_span_list(true)
                        .with_writer(std::io::stdout),
                )
                .try_init()
                .is_ok(),
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
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|source| TelemetryError::Exporter { endpoint: endpoint.clone(), source })?;
            builder = builder.with_batch_exporter(exporter);
        }
        Ok(builder.build())
    }

    /// Whether this call installed the global subscriber.
    pub fn installed_subscriber(&self) -> bool {
        self.installed
    }

    /// Exports spans still buffered and stops the exporter; call once, at the end of shutdown.
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.force_flush() {
            tracing::warn!(error = %err, "flushing spans failed");
        }
        if let Err(err) = self.provider.shutdown() {
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
