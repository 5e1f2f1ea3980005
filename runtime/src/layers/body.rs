//! Bodies and futures the layers share. The module is private: the types are `pub` only so the
//! layers' `Service` impls may name them, and no user can reach them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

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
