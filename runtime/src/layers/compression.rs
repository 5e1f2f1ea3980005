//! Layer 7: gzip message compression, for every service and both directions, as grpc-go
//! (`encoding/gzip`) and grpcio do it, without touching the generated service code.
//!
//! - **Requests** with `grpc-encoding: gzip` are decompressed message by message before the
//!   handler (which then sees plain messages); a decompressed message larger than
//!   `max_decoding_message_size` fails the call with `RESOURCE_EXHAUSTED` as soon as the limit
//!   is crossed, so a small "zip bomb" cannot make the server inflate gigabytes. Another
//!   encoding is answered `UNIMPLEMENTED` with the `grpc-accept-encoding` the server supports.
//! - **Responses** are compressed when the request's `grpc-accept-encoding` lists `gzip`:
//!   `grpc-encoding: gzip` is set and each message of at least [`MIN_COMPRESSED_SIZE`] bytes is
//!   sent compressed (the per-message flag lets small ones go as they are, where gzip's header
//!   would make them bigger).
//! - Every response advertises `grpc-accept-encoding: gzip,identity`.
//!
//! Calls that use no compression pay two header lookups and one header insert.

use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::Either;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{MaybeBody, Reject};

/// Messages smaller than this are sent uncompressed even when the client accepts gzip.
pub const MIN_COMPRESSED_SIZE: usize = 256;

static GRPC_ENCODING: http::HeaderName = http::HeaderName::from_static("grpc-encoding");
static GRPC_ACCEPT_ENCODING: http::HeaderName = http::HeaderName::from_static("grpc-accept-encoding");
const ACCEPTED: HeaderValue = HeaderValue::from_static("gzip,identity");
const GZIP: HeaderValue = HeaderValue::from_static("gzip");

/// Layer for [`Compression`].
#[derive(Debug, Clone, Copy)]
pub struct CompressionLayer {
    max_decoding: usize,
}

impl CompressionLayer {
    pub(crate) fn new(max_decoding: usize) -> Self {
        CompressionLayer { max_decoding }
    }
}

impl<S> tower_layer::Layer<S> for CompressionLayer {
    type Service = Compression<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Compression { inner, max_decoding: self.max_decoding }
    }
}

/// Decompresses requests and compresses responses.
#[derive(Debug, Clone)]
pub struct Compression<S> {
    inner: S,
    max_decoding: usize,
}

/// Whether a `grpc-accept-encoding` value lists gzip.
fn accepts_gzip(value: &HeaderValue) -> bool {
    value.as_bytes().split(|b| *b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"gzip"))
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Compression<S>
where
    S: tower_service::Service<http::Request<GunzipBody<ReqBody>>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<GzipBody<ResBody>>;
    type Error = S::Error;
    type Future = Either<Reject<GzipBody<ResBody>, S::Error>, CompressionFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let gunzip = match req.headers_mut().remove(&GRPC_ENCODING) {
            None => false,
            Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => false,
            Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
            Some(v) => {
                let status = tonic::Status::unimplemented(format!(
                    "grpc-encoding {} is not supported; this server accepts gzip and identity",
                    String::from_utf8_lossy(v.as_bytes())
                ));
                return Either::Left(Reject::new(status));
            }
        };
        let gzip = req.headers().get(&GRPC_ACCEPT_ENCODING).is_some_and(accepts_gzip);
        let max = self.max_decoding;
        let req = req.map(|inner| GunzipBody { inner, gunzip, max, buffer: BytesMut::new(), failed: false });
        Either::Right(CompressionFuture { inner: self.inner.call(req), gzip })
    }
}

pin_project! {
    /// Sets the response's encoding headers and wraps its body.
    pub struct CompressionFuture<F> {
        #[pin]
        inner: F,
        gzip: bool,
    }
}

impl<F, B, E> std::future::Future for CompressionFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<GzipBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        let headers = response.headers_mut();
        headers.insert(GRPC_ACCEPT_ENCODING.clone(), ACCEPTED);
        // A trailers-only response (an error status) has no messages to compress.
        let gzip = *this.gzip && !headers.contains_key(&crate::codes::GRPC_STATUS);
        if gzip {
            headers.insert(GRPC_ENCODING.clone(), GZIP);
        }
        Poll::Ready(Ok(response.map(|body| GzipBody {
            inner: MaybeBody::Inner { body },
            gzip,
            buffer: BytesMut::new(),
        })))
    }
}

/// Splits the complete messages off the front of `buffer`: `(compressed flag, payload)`.
fn next_message(buffer: &mut BytesMut) -> Option<(u8, Bytes)> {
    if buffer.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + len {
        return None;
    }
    let flag = buffer[0];
    buffer.advance(5);
    Some((flag, buffer.split_to(len).freeze()))
}

fn put_message(out: &mut BytesMut, flag: u8, payload: &[u8]) {
    out.reserve(5 + payload.len());
    out.put_u8(flag);
    // Payloads are bounded by the message size limits, far below 4 GiB.
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
}

pin_project! {
    /// A request body whose gzip-compressed messages are inflated (bounded by the limit).
    pub struct GunzipBody<B> {
        #[pin]
        inner: B,
        gunzip: bool,
        max: usize,
        buffer: BytesMut,
        failed: bool,
    }
}

impl<B> Body for GunzipBody<B>
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
        let mut this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        if !*this.gunzip {
            return this.inner.poll_frame(cx).map_err(|e| tonic::Status::from_error(e.into()));
        }
        loop {
            let frame = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Poll::Ready(Some(Err(tonic::Status::from_error(err.into())))),
                None if this.buffer.is_empty() => return Poll::Ready(None),
                None => {
                    *this.failed = true;
                    return Poll::Ready(Some(Err(tonic::Status::internal(
                        "request body ended inside a message",
                    ))));
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            this.buffer.extend_from_slice(&data);
            let mut out = BytesMut::new();
            while let Some((flag, payload)) = next_message(this.buffer) {
                if flag == 0 {
                    put_message(&mut out, 0, &payload);
                    continue;
                }
                let mut inflated = Vec::new();
                // Read one byte past the limit to tell "at the limit" from "over it".
                let limit = u64::try_from(*this.max).unwrap_or(u64::MAX).saturating_add(1);
                let read =
                    flate2::read::GzDecoder::new(payload.as_ref()).take(limit).read_to_end(&mut inflated);
                match read {
                    Err(_) => {
                        *this.failed = true;
                        return Poll::Ready(Some(Err(tonic::Status::internal(
                            "a request message is not valid gzip",
                        ))));
                    }
                    Ok(_) if inflated.len() > *this.max => {
                        *this.failed = true;
                        return Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                            "decompressed request message exceeds the limit of {} bytes",
                            this.max
                        )))));
                    }
                    Ok(_) => put_message(&mut out, 0, &inflated),
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.buffer.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.gunzip { SizeHint::default() } else { self.inner.size_hint() }
    }
}

pin_project! {
    /// A response body whose messages are gzip-compressed when the client accepts it.
    pub struct GzipBody<B> {
        #[pin]
        inner: MaybeBody<B>,
        gzip: bool,
        buffer: BytesMut,
    }
}

impl<B> Default for GzipBody<B> {
    fn default() -> Self {
        GzipBody { inner: MaybeBody::Empty, gzip: false, buffer: BytesMut::new() }
    }
}

fn gzip(payload: &[u8]) -> Option<Vec<u8>> {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(payload.len() / 2), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, payload).ok()?;
    encoder.finish().ok()
}

impl<B: Body<Data = Bytes>> Body for GzipBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if !*this.gzip {
            return this.inner.poll_frame(cx);
        }
        loop {
            let frame = match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers: nothing can follow, so no message is left half-buffered.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            this.buffer.extend_from_slice(&data);
            let mut out = BytesMut::new();
            while let Some((flag, payload)) = next_message(this.buffer) {
                match (flag, payload.len() >= MIN_COMPRESSED_SIZE) {
                    (0, true) => match gzip(&payload) {
                        Some(compressed) if compressed.len() < payload.len() => {
                            put_message(&mut out, 1, &compressed)
                        }
                        _ => put_message(&mut out, 0, &payload),
                    },
                    _ => put_message(&mut out, flag, &payload),
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffer.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.gzip { SizeHint::default() } else { self.inner.size_hint() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_found_among_accepted_encodings() {
        assert!(accepts_gzip(&HeaderValue::from_static("identity, gzip")));
        assert!(accepts_gzip(&HeaderValue::from_static("GZIP")));
        assert!(!accepts_gzip(&HeaderValue::from_static("identity,deflate")));
        assert!(!accepts_gzip(&HeaderValue::from_static("gzipx")));
    }

    #[test]
    fn messages_are_split_across_chunks() {
        let mut buffer = BytesMut::new();
        let mut framed = BytesMut::new();
        put_message(&mut framed, 0, b"hello");
        put_message(&mut framed, 1, b"world!");
        buffer.extend_from_slice(&framed[..7]);
        assert_eq!(next_message(&mut buffer), None);
        buffer.extend_from_slice(&framed[7..]);
        assert_eq!(next_message(&mut buffer), Some((0, Bytes::from_static(b"hello"))));
        assert_eq!(next_message(&mut buffer), Some((1, Bytes::from_static(b"world!"))));
        assert_eq!(next_message(&mut buffer), None);
    }
}
