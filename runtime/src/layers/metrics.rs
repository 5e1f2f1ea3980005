//! Layer 4: go-grpc-prometheus metrics. Counts every call (including those rejected by auth,
//! deadline and limits below), the messages in both directions and the handling time until the
//! final status, read from response headers (trailers-only) or trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::context::RequestContext;
use super::{ObservedBody, OnEnd, Outcome};
use crate::frames::FrameScanner;
use crate::method::RpcMethod;

/// Layer for [`Metrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower_layer::Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metrics { inner }
    }
}

/// Records `grpc_server_*` metrics.
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
}

/// Completion callback recording `handled`, `msg_sent` and `handling_seconds`.
pub struct RecordEnd {
    method: Option<Arc<RpcMethod>>,
    start: Instant,
}

impl OnEnd for RecordEnd {
    const COUNTS_MESSAGES: bool = true;

    fn on_end(self, outcome: Outcome) {
        if let Some(method) = self.method {
            let m = &method.metrics;
            m.handled(outcome.code).inc();
            m.msg_sent.inc_by(outcome.messages_sent);
            m.handling.observe(self.start.elapsed().as_secs_f64());
        }
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Metrics<S>
where
    S: tower_service::Service<http::Request<CountingBody<ReqBody>>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ObservedBody<ResBody, RecordEnd>>;
    type Error = S::Error;
    type Future = super::MapResponse<S::Future, RecordEnd>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = req.extensions().get::<RequestContext>().map(|c| c.method().clone());
        if let Some(method) = &method {
            method.metrics.started.inc();
        }
        let received = method.as_ref().map(|m| m.metrics.msg_received.clone());
        let req = req.map(|inner| CountingBody { inner, scanner: FrameScanner::default(), received });
        super::MapResponse::new(self.inner.call(req), RecordEnd { method, start: Instant::now() })
    }
}

pin_project! {
    /// Request body counting received messages into `grpc_server_msg_received_total`.
    pub struct CountingBody<B> {
        #[pin]
        inner: B,
        scanner: FrameScanner,
        received: Option<prometheus::IntCounter>,
    }
}

impl<B: Body<Data = Bytes>> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(received)) = (&polled, this.received.as_ref())
            && let Some(data) = frame.data_ref()
        {
            let scan = this.scanner.scan(data);
            if scan.messages > 0 {
                received.inc_by(scan.messages);
            }
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
