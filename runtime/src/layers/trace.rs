//! Trace context: the caller's propagated trace (W3C `traceparent` / `baggage`, or the other
//! propagators configured), continued by the RPC span the observe layer
//! creates, and handed to handlers as [`TraceContext`] and [`Baggage`].

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use tonic::Code;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The RPC's W3C trace context, in the request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits; all zeros when tracing is not set up.
    pub trace_id: opentelemetry::trace::TraceId,
    /// The RPC span's id.
    pub span_id: opentelemetry::trace::SpanId,
    /// Whether the trace is sampled (exported).
    pub sampled: bool,
}

/// The caller's W3C `baggage` entries, in the request extensions when the call carried any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baggage(pub Vec<(String, String)>);

impl Baggage {
    /// The value of one baggage entry.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

/// The propagation headers the configured propagators ask for, as constants: looking a header
/// up by `&str` parses the name on every call, and extraction asks for several per call.
static KNOWN: [http::HeaderName; 9] = [
    http::HeaderName::from_static("traceparent"),
    http::HeaderName::from_static("tracestate"),
    http::HeaderName::from_static("baggage"),
    http::HeaderName::from_static("b3"),
    http::HeaderName::from_static("x-b3-traceid"),
    http::HeaderName::from_static("x-b3-spanid"),
    http::HeaderName::from_static("x-b3-sampled"),
    http::HeaderName::from_static("x-b3-flags"),
    http::HeaderName::from_static("uber-trace-id"),
];

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match KNOWN.iter().find(|name| name.as_str() == key) {
            Some(name) => self.0.get(name),
            None => self.0.get(key),
        };
        value.and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether a code marks a server span as failed (OpenTelemetry gRPC semantic conventions: only
/// codes that indicate a server-side problem).
pub(crate) fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The RPC's trace context: from the OpenTelemetry span when spans are exported, else the
/// caller's trace id (W3C `traceparent`) with a new span id, or a new trace.
pub(crate) fn trace_ids(span: &tracing::Span, headers: &http::HeaderMap) -> (TraceContext, Option<Baggage>) {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let baggage = {
        use opentelemetry::baggage::BaggageExt;
        let b = parent.baggage();
        (!b.is_empty()).then(|| Baggage(b.iter().map(|(k, (v, _))| (k.to_string(), v.to_string())).collect()))
    };
    (trace_context(span, parent), baggage)
}

fn trace_context(span: &tracing::Span, parent: opentelemetry::Context) -> TraceContext {
    let remote = parent.span().span_context().clone();
    // Fails when no OpenTelemetry layer is installed (no exporter configured).
    if span.set_parent(parent).is_ok() {
        let cx = span.context();
        let otel_span = cx.span();
        let sc = otel_span.span_context();
        if sc.is_valid() {
            return TraceContext { trace_id: sc.trace_id(), span_id: sc.span_id(), sampled: sc.is_sampled() };
        }
    }
    let span_id = opentelemetry::trace::SpanId::from(rand::random::<u64>().max(1));
    if remote.is_valid() {
        TraceContext { trace_id: remote.trace_id(), span_id, sampled: remote.is_sampled() }
    } else {
        let trace_id = opentelemetry::trace::TraceId::from(rand::random::<u128>().max(1));
        TraceContext { trace_id, span_id, sampled: false }
    }
}
