//! Layer 3: tracing. One span per RPC, named `package.Service/Method`, with the OpenTelemetry RPC
//! semantic-convention attributes (`rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`), its parent taken from the W3C `traceparent` / `baggage` request
//! metadata. The span encloses every layer below and the handler, so all their log lines carry
//! its `trace_id`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;
use tonic::Code;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::context::RequestContext;
use super::{ObservedBody, OnEnd, Outcome};

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

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Whether a code marks a server span as failed (OpenTelemetry gRPC semantic conventions: only
/// codes that indicate a server-side problem).
fn is_server_error(code: Code) -> bool {
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

/// Layer for [`Trace`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer {
    record_trace_id: bool,
}

impl TraceLayer {
    /// `record_trace_id` adds the trace id as a `trace_id` span field, for log formats that
    /// print span fields (text); the JSON format reads it from the OpenTelemetry context
    /// instead, which is cheaper than recording a field.
    pub(crate) fn new(record_trace_id: bool) -> Self {
        TraceLayer { record_trace_id }
    }
}

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner, record_trace_id: self.record_trace_id }
    }
}

/// Creates the RPC span.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    record_trace_id: bool,
}

/// Records the final status on the span.
pub struct SpanEnd {
    span: tracing::Span,
}

impl OnEnd for SpanEnd {
    fn on_end(self, outcome: Outcome) {
        // Set on the OpenTelemetry span directly rather than recorded as `tracing` fields: a
        // recorded field makes every formatting layer re-serialize the span's fields.
        self.span.set_attribute("rpc.grpc.status_code", outcome.code as i64);
        if is_server_error(outcome.code) {
            self.span.set_status(opentelemetry::trace::Status::error(crate::codes::code_label(outcome.code)));
        }
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Trace<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<SpanBody<ObservedBody<ResBody, SpanEnd>>>;
    type Error = S::Error;
    type Future = TraceFuture<tracing::instrument::Instrumented<super::MapResponse<S::Future, SpanEnd>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let context = req.extensions().get::<RequestContext>();
        let (name, service, method) = match context {
            Some(c) => {
                (c.method().full_name.as_str(), c.method().service.as_str(), c.method().method.as_str())
            }
            None => ("unknown", "unknown", "unknown"),
        };
        let request_id = context.map(|c| c.request_id().header_value().clone());
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            request_id = context.map(|c| c.request_id().as_str()).unwrap_or(""),
            trace_id = tracing::field::Empty,
        );
        // The trace context is computed even when no subscriber records the span: handlers
        // rely on it to propagate the trace.
        let (ids, baggage) = trace_ids(&span, req.headers());
        if let Some(baggage) = baggage {
            req.extensions_mut().insert(baggage);
        }
        if !span.is_disabled() {
            if self.record_trace_id {
                span.record("trace_id", tracing::field::display(ids.trace_id));
            }
            if let Some(request_id) = request_id {
                crate::logging::attach(
                    &span,
                    crate::logging::LogContext { trace_id: ids.trace_id, span_id: ids.span_id, request_id },
                );
            }
        }
        req.extensions_mut().insert(ids);
        let future = {
            let _entered = span.enter();
            super::MapResponse::new(self.inner.call(req), SpanEnd { span: span.clone() })
        };
        TraceFuture { inner: future.instrument(span.clone()), span: Some(span) }
    }
}

/// The RPC's trace context: from the OpenTelemetry span when spans are exported, else the
/// caller's trace id (W3C `traceparent`) with a new span id, or a new trace.
fn trace_ids(span: &tracing::Span, headers: &http::HeaderMap) -> (TraceContext, Option<Baggage>) {
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

pin_project! {
    /// Future wrapping the response body so its polls run inside the span.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: Option<tracing::Span>,
    }
}

impl<F, B, E> std::future::Future for TraceFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<SpanBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let span = this.span.take().unwrap_or_else(tracing::Span::none);
        Poll::Ready(result.map(|response| response.map(|inner| SpanBody { inner, span })))
    }
}

pin_project! {
    /// A response body polled inside the RPC span (streaming handlers log with the trace id).
    pub struct SpanBody<B> {
        #[pin]
        inner: B,
        span: tracing::Span,
    }
}

impl<B: Body<Data = Bytes>> Body for SpanBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
