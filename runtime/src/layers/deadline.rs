//! Layer 7: deadlines. Honours the client's `grpc-timeout`, applies the server default to
//! unary and client-streaming calls that send none, and ends a call that runs past its
//! deadline with `DEADLINE_EXCEEDED`, whether it is still in the handler (the handler future is
//! dropped, cancelling its work) or already streaming responses (the stream is cut with
//! `DEADLINE_EXCEEDED` trailers). tonic's own timeout would answer `CANCELLED`, which clients
//! and dashboards read as "the caller gave up", not "the server was too slow".

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::Code;

use super::context::RequestContext;
use super::{MaybeBody, inner_body};
use crate::codes::{error_response, status_trailers};

/// The call's deadline, in the request extensions when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Time left before the deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Longest `grpc-timeout` honoured; larger values (up to ~3 000 years in the wire format) are
/// clamped so `Instant` arithmetic cannot overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a `grpc-timeout` value: 1–8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let d = match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(MAX_TIMEOUT))
}

/// Layer for [`DeadlineService`].
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    default: Option<Duration>,
}

impl DeadlineLayer {
    pub(crate) fn new(default: Option<Duration>) -> Self {
        DeadlineLayer { default }
    }
}

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, default: self.default }
    }
}

/// Enforces deadlines.
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    default: Option<Duration>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for DeadlineService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<DeadlineBody<ResBody>>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let client = req.headers().get(&crate::codes::GRPC_TIMEOUT).and_then(|v| {
            let parsed = parse_grpc_timeout(v.as_bytes());
            if parsed.is_none() {
                tracing::debug!(value = ?v, "ignoring malformed grpc-timeout");
            }
            parsed
        });
        let context = req.extensions().get::<RequestContext>();
        let streams = context.is_some_and(|c| c.method().kind.server_streams());
        let timeout = client.or(if streams { None } else { self.default });
        // Counted from the call's arrival, which the context layer read the clock for.
        let start = context.map_or_else(Instant::now, |c| Instant::from_std(c.start()));
        let deadline = timeout.map(|t| start + t);
        if let Some(deadline) = deadline {
            req.extensions_mut().insert(Deadline(deadline));
        }
        DeadlineFuture { inner: self.inner.call(req), sleep: None, deadline }
    }
}

pin_project! {
    /// Races the inner future against the deadline. The timer is armed only once the inner
    /// future is pending: most unary handlers answer on their first poll, and registering a
    /// timer they never need is a measurable part of a call's cost. It is boxed for the same
    /// reason: a `Sleep` is large, and every layer above moves this future.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        sleep: Option<Pin<Box<Sleep>>>,
        deadline: Option<Instant>,
    }
}

fn exceeded() -> tonic::Status {
    tonic::Status::deadline_exceeded("deadline exceeded")
}

impl<F, B, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<DeadlineBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            let deadline = *this.deadline;
            return Poll::Ready(result.map(|response| {
                inner_body(response).map(|inner| DeadlineBody {
                    inner,
                    sleep: None,
                    deadline,
                    finished: false,
                })
            }));
        }
        let Some(deadline) = *this.deadline else { return Poll::Pending };
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        std::task::ready!(sleep.as_mut().poll(cx));
        let response: http::Response<()> = error_response(exceeded());
        Poll::Ready(Ok(response.map(|()| DeadlineBody {
            inner: MaybeBody::Empty,
            sleep: None,
            deadline: None,
            finished: true,
        })))
    }
}

pin_project! {
    /// A response body cut with `DEADLINE_EXCEEDED` trailers when the deadline passes mid-stream.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: MaybeBody<B>,
        sleep: Option<Pin<Box<Sleep>>>,
        deadline: Option<Instant>,
        finished: bool,
    }
}

impl<B: Body<Data = Bytes>> Body for DeadlineBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if *this.finished {
            return this.inner.poll_frame(cx);
        }
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            if frame.as_ref().is_none_or(|f| f.as_ref().map(|f| f.is_trailers()).unwrap_or(true)) {
                *this.finished = true;
            }
            return Poll::Ready(frame);
        }
        let Some(deadline) = *this.deadline else { return Poll::Pending };
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        std::task::ready!(sleep.as_mut().poll(cx));
        *this.finished = true;
        // Replace the stream: dropping the inner body stops the handler's stream.
        this.inner.set(MaybeBody::Empty);
        Poll::Ready(Some(Ok(Frame::trailers(status_trailers(Code::DeadlineExceeded, "deadline exceeded")))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(b"123456789S"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout(b"10"), None, "no unit");
        assert_eq!(parse_grpc_timeout(b"m"), None, "no digits");
        assert_eq!(parse_grpc_timeout(b"-1S"), None);
        assert_eq!(parse_grpc_timeout(b"99999999H"), Some(MAX_TIMEOUT));
    }
}
