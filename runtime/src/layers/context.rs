//! Layer 1, outermost: request context. Resolves the RPC method once and attaches a [`RequestContext`]
//! (request id, tenant, peer) to the request's extensions, where every layer below and the
//! handler (`request.extensions().get::<RequestContext>()`) read it. The request id is echoed
//! in the response's `x-request-id` header.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderValue;
use pin_project_lite::pin_project;

use crate::method::{MethodTable, RpcMethod};
use crate::tls::PeerInfo;

/// Request metadata header carrying the caller's request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Request metadata header carrying the tenant.
pub const TENANT_ID_HEADER: &str = "x-tenant-id";
/// Longest accepted incoming request id or tenant id; longer ones are replaced / ignored so a
/// client cannot make every log line huge.
pub const MAX_ID_LEN: usize = 128;

/// Per-call metadata, in the request extensions.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The caller's `x-request-id` if it was a sane value, else a generated 32-hex-digit id.
    pub request_id: Arc<str>,
    /// `x-tenant-id`, if sent (and no longer than [`MAX_ID_LEN`] visible ASCII characters).
    pub tenant_id: Option<Arc<str>>,
    /// The connection's peer: address and, with mutual TLS, the verified certificate identity.
    pub peer: Option<PeerInfo>,
    /// The method being called (`unknown` for unregistered paths).
    pub method: Arc<RpcMethod>,
}

fn sane_id(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(s)
}

/// A fresh request id: 128 random bits in hex.
pub(crate) fn generate_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Layer for [`RequestContextService`].
#[derive(Debug, Clone)]
pub struct ContextLayer {
    methods: Arc<MethodTable>,
}

impl ContextLayer {
    pub(crate) fn new(methods: Arc<MethodTable>) -> Self {
        ContextLayer { methods }
    }
}

impl<S> tower_layer::Layer<S> for ContextLayer {
    type Service = RequestContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService { inner, methods: self.methods.clone() }
    }
}

/// Attaches [`RequestContext`].
#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
    methods: Arc<MethodTable>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RequestContextService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = EchoRequestId<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let headers = req.headers();
        let request_id: Arc<str> = match headers.get(REQUEST_ID_HEADER).and_then(sane_id) {
            Some(id) => Arc::from(id),
            None => Arc::from(generate_request_id()),
        };
        let tenant_id = headers.get(TENANT_ID_HEADER).and_then(sane_id).map(Arc::from);
        let peer = req.extensions().get::<PeerInfo>().cloned();
        let method = self.methods.lookup(req.uri().path());
        let echo = HeaderValue::from_str(&request_id).ok();
        req.extensions_mut().insert(RequestContext { request_id, tenant_id, peer, method });
        EchoRequestId { inner: self.inner.call(req), echo }
    }
}

pin_project! {
    /// Future adding `x-request-id` to the response headers.
    pub struct EchoRequestId<F> {
        #[pin]
        inner: F,
        echo: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for EchoRequestId<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.echo.take() {
            response.headers_mut().insert(REQUEST_ID_HEADER, id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_accepted() {
        assert_eq!(sane_id(&HeaderValue::from_static("abc-123")), Some("abc-123"));
        assert_eq!(sane_id(&HeaderValue::from_static("has space")), None);
        assert_eq!(sane_id(&HeaderValue::from_str(&"x".repeat(129)).unwrap()), None);
        assert_eq!(generate_request_id().len(), 32);
    }
}
