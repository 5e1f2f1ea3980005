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
pub struct TraceLayer;

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// Creates the RPC span.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

/// Records the final status on the span.
pub struct SpanEnd {
    span: tracing::Span,
}

impl OnEnd for SpanEnd {
    fn on_end(self, outcome: Outcome) {
        self.span.record("rpc.grpc.status_code", outcome.code as i64);
        if is_server_error(outcome.code) {
            self.span.record("otel.status_code", "ERROR");
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
        let (name, service, method, request_id) = match req.extensions().get::<RequestContext>() {
            Some(c) => (
                c.method.full_name.as_str(),
                c.method.service.as_str(),
                c.method.method.as_str(),
                &*c.request_id,
            ),
            None => ("unknown", "unknown", "unknown", ""),
        };
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            request_id = request_id,
            trace_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&HeaderExtractor(req.headers()))
            });
            // Fails only when no OpenTelemetry layer is installed; the span is then plain tracing.
            let _ = span.set_parent(parent);
            let cx = span.context();
            let otel_span = cx.span();
            let sc = otel_span.span_context();
            if sc.is_valid() {
                span.record("trace_id", tracing::field::display(sc.trace_id()));
                req.extensions_mut().insert(TraceContext {
                    trace_id: sc.trace_id(),
                    span_id: sc.span_id(),
                    sampled: sc.is_sampled(),
                });
            }
        }
        let future = {
            let _entered = span.enter();
            super::MapResponse::new(self.inner.call(req), SpanEnd { span: span.clone() })
        };
        TraceFuture { inner: future.instrument(span.clone()), span: Some(span) }
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
