//! Logs and traces: a `tracing` subscriber writing text or JSON lines, bridged to OpenTelemetry
//! so every RPC span has a W3C trace id (propagated from the caller's `traceparent`), exported
//! over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Without an exporter no OpenTelemetry spans are built, but every RPC still gets a trace id
//! (the caller's from `traceparent`, or a new one): it reaches the logs and the
//! [`TraceContext`](crate::layers::trace::TraceContext) handlers see, so logs of one request can
//! be correlated across services.

use std::time::Duration;

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
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]));
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
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                // Bounds each export, and so the flush at shutdown, well inside the pod's grace
                // period (drain delay + shutdown timeout + this < 30 s with the defaults).
                .with_timeout(EXPORT_TIMEOUT)
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
