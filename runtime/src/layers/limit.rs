//! Layer 6: resource limits, right before your layers and the handler.
//!
//! - **Concurrency, in three budgets** that cannot starve each other, each held until the
//!   response stream ends:
//!   - unary calls: `max_concurrent_rpcs`;
//!   - streaming calls (client, server, bidi), which may last hours:
//!     `max_concurrent_streaming_rpcs`;
//!   - health `Check` (probes, load balancers, no credentials): `max_concurrent_health_rpcs`;
//!   - health `Watch` streams (no credentials, and they last): `max_concurrent_health_watches`,
//!     ended cleanly when shutdown begins, as the shutdown signal asks of long streams.
//!
//!   On top, one connection may hold at most `max_streaming_rpcs_per_connection` streaming
//!   calls, fewer than its HTTP/2 stream limit, so unary calls always find room on it. Beyond a
//!   budget, calls are shed at once with `RESOURCE_EXHAUSTED` rather than queued, so overload
//!   shows up as fast, retryable errors instead of growing latency.
//! - **Message size:** a request message declared larger than `max_decoding_message_size`
//!   fails the call with `RESOURCE_EXHAUSTED` (as grpc-go does) before its payload is read; a
//!   response message larger than `max_encoding_message_size` ends the call with
//!   `RESOURCE_EXHAUSTED` instead of being sent. The check reads the 5-byte message prefix, so
//!   it applies to every service whatever its codec settings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::Either;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;

use super::context::{RequestContext, ShutdownSignal};
use super::{InnerBody, MaybeBody};
use crate::codes::status_trailers;
use crate::config::Limits;
use crate::frames::FrameScanner;
use crate::method::Budget;

/// The server-wide budgets.
#[derive(Debug)]
struct Budgets {
    unary: Arc<Semaphore>,
    streaming: Arc<Semaphore>,
    health: Arc<Semaphore>,
    health_watch: Arc<Semaphore>,
}

/// Layer for [`Limit`].
#[derive(Debug, Clone)]
pub struct LimitLayer {
    budgets: Arc<Budgets>,
    max_decoding: usize,
    max_encoding: usize,
}

impl LimitLayer {
    pub(crate) fn new(limits: &Limits) -> Self {
        LimitLayer {
            budgets: Arc::new(Budgets {
                unary: Arc::new(Semaphore::new(limits.max_concurrent_rpcs)),
                streaming: Arc::new(Semaphore::new(limits.max_concurrent_streaming_rpcs)),
                health: Arc::new(Semaphore::new(limits.max_concurrent_health_rpcs)),
                health_watch: Arc::new(Semaphore::new(limits.max_concurrent_health_watches)),
            }),
            max_decoding: limits.max_decoding_message_size,
            max_encoding: limits.max_encoding_message_size,
        }
    }
}

impl<S> tower_layer::Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            budgets: self.budgets.clone(),
            max_decoding: self.max_decoding,
            max_encoding: self.max_encoding,
        }
    }
}

/// Enforces the limits.
#[derive(Debug, Clone)]
pub struct Limit<S> {
    inner: S,
    budgets: Arc<Budgets>,
    max_decoding: usize,
    max_encoding: usize,
}

/// The permits a call holds until its response ends.
#[derive(Debug)]
struct Permits {
    _server: OwnedSemaphorePermit,
    _connection: Option<OwnedSemaphorePermit>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Limit<S>
where
    S: tower_service::Service<http::Request<SizeLimitedBody<ReqBody>>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<LimitBody<ResBody>>;
    type Error = S::Error;
    type Future = Either<super::Reject<LimitBody<ResBody>, S::Error>, LimitFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let refuse = |status: tonic::Status| Either::Left(super::Reject::new(status));
        let context = req.extensions().get::<RequestContext>();
        let budget = context.map_or(Budget::Unary, |c| c.method().budget);
        let streams = matches!(budget, Budget::Streaming | Budget::HealthWatch);
        let (server, what) = match budget {
            Budget::Unary => (&self.budgets.unary, "concurrent call"),
            Budget::Streaming => (&self.budgets.streaming, "concurrent streaming call"),
            Budget::Health => (&self.budgets.health, "concurrent health call"),
            Budget::HealthWatch => (&self.budgets.health_watch, "health watch"),
        };
        let Ok(server) = server.clone().try_acquire_owned() else {
            return refuse(tonic::Status::resource_exhausted(format!("server is at its {what} limit")));
        };
        let connection = match context.filter(|_| streams) {
            Some(c) => match c.connection().streams.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return refuse(tonic::Status::resource_exhausted(
                        "this connection is at its limit of streaming calls; open another connection",
                    ));
                }
            },
            None => None,
        };
        let permit = Permits { _server: server, _connection: connection };
        // Health Watch streams never end on their own: they end when shutdown begins.
        let cut = match (budget, context) {
            (Budget::HealthWatch, Some(c)) => Some(c.shutdown().clone()),
            _ => None,
        };
        let max = self.max_decoding;
        let req =
            req.map(|inner| SizeLimitedBody { inner, scanner: FrameScanner::default(), max, failed: false });
        Either::Right(LimitFuture {
            inner: InnerBody::new(self.inner.call(req)),
            permit: Some(permit),
            max_encoding: self.max_encoding,
            cut,
        })
    }
}

pin_project! {
    /// Moves the permit into the response body once the handler answers.
    pub struct LimitFuture<F> {
        #[pin]
        inner: InnerBody<F>,
        permit: Option<Permits>,
        max_encoding: usize,
        cut: Option<ShutdownSignal>,
    }
}

impl<F, B, E> std::future::Future for LimitFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<LimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let permit = this.permit.take();
        let max = *this.max_encoding;
        let cut = this.cut.take();
        Poll::Ready(result.map(|response| {
            response.map(|inner| LimitBody {
                inner,
                permit,
                scanner: FrameScanner::default(),
                max,
                finished: false,
                cut: cut.map(|signal| Box::pin(signal.into_cancelled())),
            })
        }))
    }
}

pin_project! {
    /// Response body holding the concurrency permit until the stream ends and refusing
    /// oversized response messages.
    pub struct LimitBody<B> {
        #[pin]
        inner: MaybeBody<B>,
        permit: Option<Permits>,
        scanner: FrameScanner,
        max: usize,
        finished: bool,
        // Ends the stream with OK when shutdown begins (health Watch).
        cut: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    }
}

impl<B> Default for LimitBody<B> {
    fn default() -> Self {
        LimitBody {
            inner: MaybeBody::Empty,
            permit: None,
            scanner: FrameScanner::default(),
            max: 0,
            finished: true,
            cut: None,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for LimitBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        let polled = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(polled) => polled,
            Poll::Pending => {
                if let Some(cut) = this.cut.as_mut()
                    && cut.as_mut().poll(cx).is_ready()
                {
                    *this.finished = true;
                    this.permit.take();
                    this.inner.set(MaybeBody::Empty);
                    return Poll::Ready(Some(Ok(Frame::trailers(status_trailers(
                        Code::Ok,
                        "server shutting down",
                    )))));
                }
                return Poll::Pending;
            }
        };
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let scan = this.scanner.scan(data);
                    if scan.largest > *this.max as u64 {
                        tracing::warn!(
                            size = scan.largest,
                            limit = *this.max,
                            "response message over the size limit"
                        );
                        *this.finished = true;
                        this.permit.take();
                        this.inner.set(MaybeBody::Empty);
                        return Poll::Ready(Some(Ok(Frame::trailers(status_trailers(
                            Code::ResourceExhausted,
                            &format!(
                                "response message of {} bytes exceeds the limit of {} bytes",
                                scan.largest, this.max
                            ),
                        )))));
                    }
                } else {
                    *this.finished = true;
                    this.permit.take();
                }
            }
            Some(Err(_)) | None => {
                *this.finished = true;
                this.permit.take();
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// Request body failing the call when a message is declared larger than the limit.
    pub struct SizeLimitedBody<B> {
        #[pin]
        inner: B,
        scanner: FrameScanner,
        max: usize,
        failed: bool,
    }
}

impl<B> Body for SizeLimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let scan = this.scanner.scan(data);
                    if scan.largest > *this.max as u64 {
                        *this.failed = true;
                        // tonic hands a body error that is a `Status` to the client unchanged.
                        return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                            "request message of {} bytes exceeds the limit of {} bytes",
                            scan.largest, this.max
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(tonic::Status::from_error(err.into())))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
