//! Layer 8: resource limits, right before the handler.
//!
//! - **Concurrency:** at most `max_concurrent_rpcs` calls run at once across all connections;
//!   the permit is held until the response stream ends. Beyond that, calls are shed at once
//!   with `RESOURCE_EXHAUSTED` rather than queued, so overload shows up as fast, retryable
//!   errors instead of growing latency.
//! - **Shutdown:** once the server stops accepting, calls still arriving on open connections
//!   (HTTP/1.1 gRPC-Web has no GOAWAY) are refused with `UNAVAILABLE`, which clients retry
//!   elsewhere.
//! - **Message size:** a request message declared larger than `max_decoding_message_size`
//!   fails the call with `RESOURCE_EXHAUSTED` (as grpc-go does) before its payload is read; a
//!   response message larger than `max_encoding_message_size` ends the call with
//!   `RESOURCE_EXHAUSTED` instead of being sent. The check reads the 5-byte message prefix, so
//!   it applies to every service whatever its codec settings.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::Either;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;

use super::{InnerBody, MaybeBody};
use crate::codes::status_trailers;
use crate::frames::FrameScanner;

/// Shared switch the server flips when it stops accepting.
#[derive(Debug, Clone, Default)]
pub(crate) struct Closing(Arc<AtomicBool>);

impl Closing {
    pub(crate) fn close(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Layer for [`Limit`].
#[derive(Debug, Clone)]
pub struct LimitLayer {
    permits: Arc<Semaphore>,
    max_decoding: usize,
    max_encoding: usize,
    closing: Closing,
}

impl LimitLayer {
    pub(crate) fn new(
        max_concurrent: usize,
        max_decoding: usize,
        max_encoding: usize,
        closing: Closing,
    ) -> Self {
        LimitLayer { permits: Arc::new(Semaphore::new(max_concurrent)), max_decoding, max_encoding, closing }
    }
}

impl<S> tower_layer::Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            permits: self.permits.clone(),
            max_decoding: self.max_decoding,
            max_encoding: self.max_encoding,
            closing: self.closing.clone(),
        }
    }
}

/// Enforces the limits.
#[derive(Debug, Clone)]
pub struct Limit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max_decoding: usize,
    max_encoding: usize,
    closing: Closing,
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
        if self.closing.is_closed() {
            return refuse(tonic::Status::unavailable("server is shutting down"));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return refuse(tonic::Status::resource_exhausted("server is at its concurrent call limit"));
        };
        let max = self.max_decoding;
        let req =
            req.map(|inner| SizeLimitedBody { inner, scanner: FrameScanner::default(), max, failed: false });
        Either::Right(LimitFuture {
            inner: InnerBody::new(self.inner.call(req)),
            permit: Some(permit),
            max_encoding: self.max_encoding,
        })
    }
}

pin_project! {
    /// Moves the permit into the response body once the handler answers.
    pub struct LimitFuture<F> {
        #[pin]
        inner: InnerBody<F>,
        permit: Option<OwnedSemaphorePermit>,
        max_encoding: usize,
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
        Poll::Ready(result.map(|response| {
            response.map(|inner| LimitBody {
                inner,
                permit,
                scanner: FrameScanner::default(),
                max,
                finished: false,
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
        permit: Option<OwnedSemaphorePermit>,
        scanner: FrameScanner,
        max: usize,
        finished: bool,
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
        let polled = std::task::ready!(this.inner.as_mut().poll_frame(cx));
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
