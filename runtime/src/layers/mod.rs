//! The interceptor chain: tower layers around every RPC, outermost first.
//!
//! | # | layer | why here |
//! |---|---|---|
//! | 1 | [`context`] | resolves the method once and attaches request id, tenant and peer identity for everything below; outside recovery so even a panic's `INTERNAL` answer echoes `x-request-id` (it runs no user code) |
//! | 2 | [`recovery`] | a panic anywhere below (handler, stream, other layer) becomes `INTERNAL` and is counted |
//! | 3 | [`trace`] | the RPC span must enclose metrics, logs and the handler so every log line carries the trace id |
//! | 4 | [`metrics`] | counts every call, including those auth, deadline or limits reject |
//! | 5 | [`access_log`] | one line per call, with the final code, also for rejected calls |
//! | 6 | [`auth`] | rejects before any resources (deadline timers, concurrency permits) are spent |
//! | 7 | [`deadline`] | bounds everything below, including time queued for a permit |
//! | 8 | [`limit`] | concurrency limit and message size limits right before the handler |
//!
//! Every layer is generic over request and response bodies and wraps them without boxing (tonic's
//! router boxes once when it hands the request to the service).

pub mod access_log;
pub mod auth;
pub mod context;
pub mod deadline;
pub mod limit;
pub mod metrics;
pub mod recovery;
pub mod trace;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

use crate::codes::{code_of_error, status_code_in};
use crate::frames::FrameScanner;

/// How an RPC ended, as seen from the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The final status code (`Canceled` when the client went away first).
    pub code: Code,
    /// Response messages sent (counted only for callbacks with
    /// [`OnEnd::COUNTS_MESSAGES`]; 0 otherwise).
    pub messages_sent: u64,
}

/// Called once when an RPC's response ends, however it ends; implemented by the layers'
/// completion callbacks.
pub trait OnEnd: Send + 'static {
    /// Whether [`Outcome::messages_sent`] is needed (counting costs a scan of each chunk).
    const COUNTS_MESSAGES: bool = false;

    /// Receives the outcome, once.
    fn on_end(self, outcome: Outcome);
}

pin_project! {
    /// A response body that reports the call's [`Outcome`] once: from the trailers, from a body
    /// error, or as `Canceled` when dropped before the end (the client reset the stream).
    pub struct ObservedBody<B, E: OnEnd> {
        #[pin]
        inner: B,
        scanner: FrameScanner,
        sent: u64,
        on_end: Option<E>,
    }

    impl<B, E: OnEnd> PinnedDrop for ObservedBody<B, E> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(on_end) = this.on_end.take() {
                on_end.on_end(Outcome { code: Code::Cancelled, messages_sent: *this.sent });
            }
        }
    }
}

impl<B, E: OnEnd> ObservedBody<B, E> {
    /// Wraps a response; if its headers already carry `grpc-status` (a trailers-only response)
    /// the outcome is reported immediately.
    pub(crate) fn observe(response: http::Response<B>, on_end: E) -> http::Response<Self> {
        let (parts, inner) = response.into_parts();
        let mut body =
            ObservedBody { inner, scanner: FrameScanner::default(), sent: 0, on_end: Some(on_end) };
        if let Some(code) = status_code_in(&parts.headers)
            && let Some(on_end) = body.on_end.take()
        {
            on_end.on_end(Outcome { code, messages_sent: 0 });
        }
        http::Response::from_parts(parts, body)
    }
}

impl<B, E> Body for ObservedBody<B, E>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display + 'static,
    E: OnEnd,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if this.on_end.is_none() {
            return polled;
        }
        let code = match &polled {
            Poll::Pending => return polled,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if E::COUNTS_MESSAGES {
                        *this.sent += this.scanner.scan(data).messages;
                    }
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
        if let Some(on_end) = this.on_end.take() {
            on_end.on_end(Outcome { code, messages_sent: *this.sent });
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

pin_project! {
    /// A body that is either the inner service's or empty (for trailers-only responses a layer
    /// produces itself).
    // pin_project_lite cannot carry doc comments on enum variant fields.
    #[allow(missing_docs)]
    #[project = MaybeProj]
    pub enum MaybeBody<B> {
        /// The inner service's body.
        Inner { #[pin] body: B },
        /// No body.
        Empty,
    }
}

// Hand-written: a derive would require `B: Default`, which inner bodies need not be.
#[allow(clippy::derivable_impls)]
impl<B> Default for MaybeBody<B> {
    fn default() -> Self {
        MaybeBody::Empty
    }
}

impl<B: Body<Data = Bytes>> Body for MaybeBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            MaybeProj::Inner { body } => body.poll_frame(cx),
            MaybeProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MaybeBody::Inner { body } => body.is_end_stream(),
            MaybeBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MaybeBody::Inner { body } => body.size_hint(),
            MaybeBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Wraps an inner response's body in [`MaybeBody::Inner`].
pub(crate) fn inner_body<B>(response: http::Response<B>) -> http::Response<MaybeBody<B>> {
    response.map(|body| MaybeBody::Inner { body })
}

pin_project! {
    /// Future wrapping the inner response in an [`ObservedBody`] with the given callback.
    pub struct MapResponse<F, E: OnEnd> {
        #[pin]
        inner: F,
        on_end: Option<E>,
    }

    impl<F, E: OnEnd> PinnedDrop for MapResponse<F, E> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before the response: the client went away (or the connection closed)
            // while the handler was running.
            if let Some(on_end) = this.project().on_end.take() {
                on_end.on_end(Outcome { code: Code::Cancelled, messages_sent: 0 });
            }
        }
    }
}

impl<F, E: OnEnd> MapResponse<F, E> {
    pub(crate) fn new(inner: F, on_end: E) -> Self {
        MapResponse { inner, on_end: Some(on_end) }
    }
}

impl<F, B, Err, E> std::future::Future for MapResponse<F, E>
where
    F: std::future::Future<Output = Result<http::Response<B>, Err>>,
    E: OnEnd,
{
    type Output = Result<http::Response<ObservedBody<B, E>>, Err>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let Some(on_end) = this.on_end.take() else {
            // Polled after completion: a contract violation by the caller; stay pending forever
            // rather than panic.
            return Poll::Pending;
        };
        match result {
            Ok(response) => Poll::Ready(Ok(ObservedBody::observe(response, on_end))),
            Err(err) => {
                // The service failed without a response: hyper resets the stream, which the
                // client sees as an aborted call.
                on_end.on_end(Outcome { code: Code::Unknown, messages_sent: 0 });
                Poll::Ready(Err(err))
            }
        }
    }
}

pin_project! {
    /// Future wrapping the inner response body in [`MaybeBody::Inner`].
    pub struct InnerBody<F> {
        #[pin]
        inner: F,
    }
}

impl<F> InnerBody<F> {
    pub(crate) fn new(inner: F) -> Self {
        InnerBody { inner }
    }
}

impl<F, B, Err> std::future::Future for InnerBody<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, Err>>,
{
    type Output = Result<http::Response<MaybeBody<B>>, Err>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_ok(inner_body)
    }
}

/// A call refused by a layer without calling the inner service. Only the boxed status is
/// stored and the response is built when polled: this future is a variant of the layer's
/// future, which every layer above moves, so it must stay small.
pub struct Reject<B, E> {
    status: Option<Box<tonic::Status>>,
    _types: std::marker::PhantomData<fn() -> (B, E)>,
}

impl<B, E> Reject<B, E> {
    pub(crate) fn new(status: tonic::Status) -> Self {
        Reject { status: Some(Box::new(status)), _types: std::marker::PhantomData }
    }
}

impl<B: Default, E> std::future::Future for Reject<B, E> {
    type Output = Result<http::Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.status.take() {
            Some(status) => Poll::Ready(Ok(crate::codes::error_response(*status))),
            // Polled again after completion: a caller bug; stay pending rather than panic.
            None => Poll::Pending,
        }
    }
}
