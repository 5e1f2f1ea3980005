//! Layer 2: observation. One layer records everything about a call: the RPC span, the
//! go-grpc-prometheus metrics and the access log line. It reads the clock once at the start and
//! once at the end, and wraps the response in one body that sees the final code, so the three
//! always agree on it.
//!
//! - **Span**: named `package.Service/Method`, with the OpenTelemetry RPC attributes
//!   (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), its parent taken from
//!   the caller's propagation headers. The handler and every layer below run inside it (their
//!   log lines carry its `trace_id`); a server-error code marks it failed.
//! - **Metrics**: `grpc_server_started_total` when the call arrives; `handled_total`,
//!   `msg_sent_total` and `handling_seconds` when it ends; `msg_received_total` as request
//!   messages arrive. Calls refused by auth, deadline and limits below are counted too.
//! - **Access log**: one line per call (target `grpc_runtime::access`), at a level chosen by the
//!   code as go-grpc-middleware's logging does.
//!
//! It sits above [`recovery`](super::recovery), so a panic below is already an `INTERNAL`
//! response when it arrives here: the metric, the access line and the span all say `Internal`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::Status as SpanStatus;
use pin_project_lite::pin_project;
use tonic::Code;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::access_log::{ACCESS_LOG_TARGET, level_for};
use super::context::{CallGuard, Id, RequestContext};
use super::metrics::CountingBody;
use super::trace::trace_ids;
use crate::codes::{code_label, code_of_error, status_code_in};
use crate::frames::FrameScanner;
use crate::logging::CurrentRpc;
use crate::method::RpcMethod;

/// Layer for [`Observe`].
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    record_trace_id: bool,
    spans: bool,
    unknown: Arc<RpcMethod>,
}

impl ObserveLayer {
    /// `record_trace_id` adds the trace id as a `trace_id` span field, for log formats that
    /// print span fields (text); the JSON format reads it from the log context instead, which
    /// is cheaper than recording a field.
    ///
    /// `spans` creates a `tracing` span per call. It is needed when spans are exported
    /// (OpenTelemetry), printed (the text format shows span fields) or may be consumed by a
    /// subscriber the application installed. Without them (JSON logs, no exporter: the
    /// production default) the call's ids reach log lines through [`crate::logging::CurrentRpc`],
    /// a thread-local set around each poll, at a fraction of a span's cost.
    pub(crate) fn new(record_trace_id: bool, spans: bool, unknown: Arc<RpcMethod>) -> Self {
        ObserveLayer { record_trace_id, spans, unknown }
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            record_trace_id: self.record_trace_id,
            spans: self.spans,
            unknown: self.unknown.clone(),
        }
    }
}

/// Records the span, the metrics and the access line of every call.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    record_trace_id: bool,
    spans: bool,
    unknown: Arc<RpcMethod>,
}

/// What is needed when the call ends.
struct CallEnd {
    context: RequestContext,
    /// Counts the call as in flight on its connection (idle connections are closed).
    _active: CallGuard,
    start: Instant,
    span: tracing::Span,
}

impl CallEnd {
    fn finish(mut self, code: Code, messages_sent: u64) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        self._active.ended_at(now);
        let method = self.context.method();
        let m = &method.metrics;
        m.handled(code).inc();
        if messages_sent > 0 {
            m.msg_sent.inc_by(messages_sent);
        }
        m.handling.observe(elapsed.as_secs_f64());
        if !self.span.is_disabled() {
            // Set on the OpenTelemetry span directly rather than recorded as `tracing` fields:
            // a recorded field makes every formatting layer re-serialize the span's fields.
            self.span.set_attribute("rpc.grpc.status_code", code as i64);
            if super::trace::is_server_error(code) {
                self.span.set_status(SpanStatus::error(code_label(code)));
            }
        }
        let _entered = self.span.enter();
        let _current = CurrentRpc::enter(&self.context);
        // Whole microseconds: integers format far faster than floats, on every call.
        let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let ctx = &self.context;
        let tenant = ctx.tenant_id().map(Id::as_str).unwrap_or("");
        let peer = ctx.peer_address().unwrap_or("");
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: ACCESS_LOG_TARGET,
                    grpc_service = method.service.as_str(),
                    grpc_method = method.method.as_str(),
                    grpc_type = method.kind.as_str(),
                    grpc_code = code_label(code),
                    duration_us,
                    tenant_id = tenant,
                    peer_address = peer,
                    "finished call"
                )
            };
        }
        match level_for(code) {
            tracing::Level::ERROR => line!(error),
            tracing::Level::WARN => line!(warn),
            _ => line!(info),
        }
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower_service::Service<http::Request<CountingBody<ReqBody>>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The context layer always runs first; a missing context is a wiring bug, reported as
        // the `unknown` method rather than a panic.
        let context = match req.extensions().get::<RequestContext>() {
            Some(c) => c.clone(),
            None => RequestContext::detached(self.unknown.clone()),
        };
        let start = context.start();
        let method = context.method().clone();
        method.metrics.started.inc();
        let span = if self.spans {
            tracing::info_span!(
                "grpc.server",
                otel.name = method.full_name.as_str(),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = method.service.as_str(),
                rpc.method = method.method.as_str(),
                request_id = context.request_id().as_str(),
                trace_id = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
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
            crate::logging::attach(
                &span,
                crate::logging::LogContext {
                    trace_id: ids.trace_id,
                    span_id: ids.span_id,
                    request_id: context.request_id().header_value().clone(),
                },
            );
        }
        context.set_trace(ids);
        req.extensions_mut().insert(ids);
        let received = method.metrics.msg_received.clone();
        let req = req.map(|inner| CountingBody::new(inner, received));
        let inner = {
            let _entered = span.enter();
            let _current = CurrentRpc::enter(&context);
            self.inner.call(req)
        };
        let _active = context.connection().begin_call();
        ObserveFuture { inner, end: Some(CallEnd { context, _active, start, span }) }
    }
}

pin_project! {
    /// Runs the inner future inside the span and wraps its response in [`ObservedBody`].
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        end: Option<CallEnd>,
    }

    impl<F> PinnedDrop for ObserveFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the response: the client went away (or the connection closed)
            // while the handler was running.
            if let Some(end) = this.project().end.take() {
                end.finish(Code::Cancelled, 0);
            }
        }
    }
}

impl<F, B, E> std::future::Future for ObserveFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match this.end.as_ref() {
            Some(end) => {
                let _entered = end.span.enter();
                let _current = CurrentRpc::enter(&end.context);
                this.inner.poll(cx)
            }
            // Polled after completion: a caller bug; stay pending rather than panic.
            None => return Poll::Pending,
        };
        let result = std::task::ready!(polled);
        let Some(end) = this.end.take() else { return Poll::Pending };
        match result {
            Ok(response) => Poll::Ready(Ok(ObservedBody::observe(response, end))),
            Err(err) => {
                // The service failed without a response: hyper resets the stream, which the
                // client sees as an aborted call.
                end.finish(Code::Unknown, 0);
                Poll::Ready(Err(err))
            }
        }
    }
}

pin_project! {
    /// The response body: polled inside the span (streaming handlers log with the trace id),
    /// counting sent messages, and ending the call once: at the trailers, at a body error, or
    /// as `Canceled` when dropped before the end (the client reset the stream).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        scanner: FrameScanner,
        sent: u64,
        end: Option<CallEnd>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(end) = this.end.take() {
                end.finish(Code::Cancelled, *this.sent);
            }
        }
    }
}

impl<B> ObservedBody<B> {
    /// Wraps a response; a trailers-only response (`grpc-status` in the headers) ends the call
    /// at once.
    fn observe(response: http::Response<B>, end: CallEnd) -> http::Response<Self> {
        let (parts, inner) = response.into_parts();
        let end = match status_code_in(&parts.headers) {
            Some(code) => {
                end.finish(code, 0);
                None
            }
            None => Some(end),
        };
        http::Response::from_parts(
            parts,
            ObservedBody { inner, scanner: FrameScanner::default(), sent: 0, end },
        )
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let Some(end) = this.end.as_ref() else { return this.inner.poll_frame(cx) };
        let polled = {
            let _entered = end.span.enter();
            let _current = CurrentRpc::enter(&end.context);
            this.inner.poll_frame(cx)
        };
        let code = match &polled {
            Poll::Pending => return polled,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.sent += this.scanner.scan(data).messages;
                    return polled;
                }
                match frame.trailers_ref() {
                    Some(trailers) => status_code_in(trailers).unwrap_or(Code::Unknown),
                    None => return polled,
                }
            }
            Poll::Ready(Some(Err(err))) => code_of_error(err),
            // A gRPC response that ends without any status is a broken call for the client.
            Poll::Ready(None) => Code::Unknown,
        };
        if let Some(end) = this.end.take() {
            end.finish(code, *this.sent);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
