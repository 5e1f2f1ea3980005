//! Layer 2: panic recovery. A panic in a handler, in a response stream or in any layer below
//! becomes an `INTERNAL` status for that one call, is logged and counted in
//! `grpc_req_panics_recovered_total`; the connection and the process keep serving.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tonic::Code;

use super::context::{Id, RequestContext};
use super::{MaybeBody, inner_body};
use crate::codes::{error_response, status_trailers};

/// The message clients see; the panic payload stays in the server log, since it may hold
/// internal details.
const PANIC_MESSAGE: &str = "internal error";

/// Layer for [`Recovery`].
#[derive(Debug, Clone)]
pub struct RecoveryLayer {
    panics: IntCounter,
}

impl RecoveryLayer {
    /// Creates the layer counting into `panics`.
    pub(crate) fn new(panics: IntCounter) -> Self {
        RecoveryLayer { panics }
    }
}

impl<S> tower_layer::Layer<S> for RecoveryLayer {
    type Service = Recovery<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Recovery { inner, panics: self.panics.clone() }
    }
}

/// Turns panics into `INTERNAL`.
#[derive(Debug, Clone)]
pub struct Recovery<S> {
    inner: S,
    panics: IntCounter,
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

fn record(panics: &IntCounter, request_id: &Option<Id>, payload: &(dyn Any + Send)) {
    panics.inc();
    let request_id = request_id.as_ref().map(Id::as_str).unwrap_or("");
    tracing::error!(panic = panic_message(payload), request_id, "RPC handler panicked; answered INTERNAL");
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Recovery<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<RecoveryBody<ResBody>>;
    type Error = S::Error;
    type Future = RecoveryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let panics = self.panics.clone();
        let request_id = req.extensions().get::<RequestContext>().map(|c| c.request_id().clone());
        // A panic while *creating* the future (a non-async handler prologue) is caught too.
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => RecoveryFuture::Running { future, panics, request_id },
            Err(payload) => {
                record(&panics, &request_id, &*payload);
                RecoveryFuture::Panicked { panics }
            }
        }
    }
}

fn internal_response<B>(panics: IntCounter) -> http::Response<RecoveryBody<B>> {
    let response: http::Response<()> = error_response(tonic::Status::internal(PANIC_MESSAGE));
    response.map(|()| RecoveryBody::empty(panics))
}

pin_project! {
    /// Future turning a panic while it is polled into an `INTERNAL` response.
    // pin_project_lite cannot carry doc comments on enum variant fields.
    #[allow(missing_docs)]
    #[project = RecoveryProj]
    pub enum RecoveryFuture<F> {
        /// The inner future.
        Running { #[pin] future: F, panics: IntCounter, request_id: Option<Id> },
        /// `call` itself panicked.
        Panicked { panics: IntCounter },
    }
}

impl<F, B, E> Future for RecoveryFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<RecoveryBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RecoveryProj::Running { future, panics, request_id } => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(result)) => {
                        let panics = panics.clone();
                        let request_id = request_id.clone();
                        Poll::Ready(
                            result.map(|r| {
                                inner_body(r).map(|body| RecoveryBody::new(body, panics, request_id))
                            }),
                        )
                    }
                    Err(payload) => {
                        record(panics, request_id, &*payload);
                        Poll::Ready(Ok(internal_response(panics.clone())))
                    }
                }
            }
            RecoveryProj::Panicked { panics } => Poll::Ready(Ok(internal_response(panics.clone()))),
        }
    }
}

pin_project! {
    /// A response body that turns a panic while producing the stream into `INTERNAL` trailers.
    pub struct RecoveryBody<B> {
        #[pin]
        inner: MaybeBody<B>,
        panics: IntCounter,
        request_id: Option<Id>,
        // Set after a panic: the inner body is never polled again and the status was sent.
        poisoned: bool,
    }
}

impl<B> RecoveryBody<B> {
    fn new(inner: MaybeBody<B>, panics: IntCounter, request_id: Option<Id>) -> Self {
        RecoveryBody { inner, panics, request_id, poisoned: false }
    }

    fn empty(panics: IntCounter) -> Self {
        RecoveryBody { inner: MaybeBody::Empty, panics, request_id: None, poisoned: false }
    }
}

impl<B: Body<Data = Bytes>> Body for RecoveryBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.poisoned {
            return Poll::Ready(None);
        }
        let inner = this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(polled) => polled,
            Err(payload) => {
                record(this.panics, this.request_id, &*payload);
                *this.poisoned = true;
                Poll::Ready(Some(Ok(Frame::trailers(status_trailers(Code::Internal, PANIC_MESSAGE)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.poisoned || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
