//! Layer 1, outermost: request context. Resolves the RPC method once and attaches a [`RequestContext`]
//! (request id, tenant, peer) to the request's extensions, where every layer below and the
//! handler (`request.extensions().get::<RequestContext>()`) read it. The request id is echoed
//! in the response's `x-request-id` header.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::HeaderValue;
use pin_project_lite::pin_project;

use crate::method::{MethodTable, RpcMethod};
use crate::tls::PeerInfo;

/// Request metadata header carrying the caller's request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Request metadata header carrying the tenant.
pub const TENANT_ID_HEADER: &str = "x-tenant-id";

static REQUEST_ID: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_HEADER);
static TENANT_ID: http::HeaderName = http::HeaderName::from_static(TENANT_ID_HEADER);
/// Longest accepted incoming request id or tenant id; longer ones are replaced / ignored so a
/// client cannot make every log line huge.
pub const MAX_ID_LEN: usize = 128;

/// A request or tenant id: 1 to [`MAX_ID_LEN`] visible ASCII characters. Cloning is cheap (it
/// shares the header's bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Id(HeaderValue);

impl Id {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only constructed from values `sane_id` accepted, which are visible ASCII.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Per-call metadata, in the request extensions
/// (`request.extensions().get::<RequestContext>()`). Cloning is one reference count: layers
/// keep it until the call ends, and their futures and bodies are moved a lot.
#[derive(Debug, Clone)]
pub struct RequestContext(Arc<ContextInner>);

#[derive(Debug)]
struct ContextInner {
    request_id: Id,
    tenant_id: Option<Id>,
    peer: Option<PeerInfo>,
    peer_address: Option<Arc<str>>,
    method: Arc<RpcMethod>,
    connection: Arc<ConnectionState>,
    /// The call's trace context, set once by the observe layer.
    trace: std::sync::OnceLock<super::trace::TraceContext>,
    /// When the call arrived: the one clock read at the start of a call, which the observe
    /// layer times it from and the deadline layer counts the default deadline from.
    start: std::time::Instant,
}

/// Fires when the server begins to close its connections at shutdown (after the drain delay),
/// so long-lived streams can end cleanly, with a status of their choosing, before the shutdown
/// timeout cuts them. Read it from [`RequestContext::shutdown`].
#[derive(Debug, Clone, Default)]
pub struct ShutdownSignal(tokio_util::sync::CancellationToken);

impl ShutdownSignal {
    /// Completes once shutdown has begun closing connections.
    pub async fn cancelled(&self) {
        self.0.cancelled().await;
    }

    /// Whether shutdown has begun closing connections.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    pub(crate) fn fire(&self) {
        self.0.cancel();
    }

    pub(crate) fn into_cancelled(self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.cancelled_owned()
    }
}

/// What the chain knows about one connection, shared by its calls: the budget of long-lived
/// streams (so one connection's streams cannot take every stream slot of the server, and unary
/// calls on it always find room) and its activity, for closing idle connections.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    /// Streaming calls (server or bidi streaming, health `Watch` included) open on this
    /// connection.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    shutdown: ShutdownSignal,
    /// Calls in flight.
    active: AtomicUsize,
    /// When the last call ended, in milliseconds since `epoch`.
    last_end_ms: AtomicU64,
    epoch: std::time::Instant,
}

impl ConnectionState {
    pub(crate) fn new(max_streams: usize, shutdown: ShutdownSignal) -> Self {
        ConnectionState {
            streams: Arc::new(tokio::sync::Semaphore::new(max_streams)),
            shutdown,
            active: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// Counts a call as in flight until the guard drops.
    pub(crate) fn begin_call(self: &Arc<Self>) -> CallGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        CallGuard(self.clone(), None)
    }

    /// How long the connection has had no call in flight (`None` while one is).
    pub(crate) fn idle_for(&self) -> Option<std::time::Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = std::time::Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

/// A call in flight on a connection; see [`ConnectionState::begin_call`].
#[derive(Debug)]
pub(crate) struct CallGuard(Arc<ConnectionState>, Option<std::time::Instant>);

impl CallGuard {
    /// Records when the call ended (the caller read the clock anyway), sparing the drop a read.
    pub(crate) fn ended_at(&mut self, at: std::time::Instant) {
        self.1 = Some(at);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let state = &self.0;
        let since =
            self.1.map_or_else(|| state.epoch.elapsed(), |at| at.saturating_duration_since(state.epoch));
        let now = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        state.last_end_ms.fetch_max(now, Ordering::AcqRel);
        state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RequestContext {
    /// The peer's address as text (`ip:port`), formatted once per connection.
    pub fn peer_address(&self) -> Option<&str> {
        self.0.peer_address.as_deref()
    }

    /// The caller's `x-request-id` if it was a sane value, else a generated 32-hex-digit id.
    pub fn request_id(&self) -> &Id {
        &self.0.request_id
    }

    /// `x-tenant-id`, if sent (and no longer than [`MAX_ID_LEN`] visible ASCII characters).
    pub fn tenant_id(&self) -> Option<&Id> {
        self.0.tenant_id.as_ref()
    }

    /// The connection's peer: address and, with mutual TLS, the verified certificate identity.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.0.peer.as_ref()
    }

    /// The method being called (service and method `unknown` for unregistered paths).
    pub fn method(&self) -> &Arc<RpcMethod> {
        &self.0.method
    }

    pub(crate) fn connection(&self) -> &Arc<ConnectionState> {
        &self.0.connection
    }

    /// The call's trace context (also in the request extensions as
    /// [`TraceContext`](super::trace::TraceContext)).
    pub fn trace(&self) -> Option<&super::trace::TraceContext> {
        self.0.trace.get()
    }

    /// When the call arrived.
    pub fn start(&self) -> std::time::Instant {
        self.0.start
    }

    pub(crate) fn set_trace(&self, trace: super::trace::TraceContext) {
        let _ = self.0.trace.set(trace);
    }

    /// Fires when shutdown begins closing connections: a long-lived stream should end then.
    pub fn shutdown(&self) -> &ShutdownSignal {
        &self.0.connection.shutdown
    }

    /// A context for a request that did not pass the context layer (a wiring bug): the
    /// `unknown` method, a fresh request id, no peer.
    pub(crate) fn detached(unknown: Arc<RpcMethod>) -> Self {
        RequestContext(Arc::new(ContextInner {
            request_id: generate_request_id(),
            tenant_id: None,
            peer: None,
            peer_address: None,
            method: unknown,
            connection: Arc::new(ConnectionState::new(0, ShutdownSignal::default())),
            trace: std::sync::OnceLock::new(),
            start: std::time::Instant::now(),
        }))
    }
}

fn sane_id(value: &HeaderValue) -> Option<Id> {
    let b = value.as_bytes();
    let ok = !b.is_empty() && b.len() <= MAX_ID_LEN && b.iter().all(u8::is_ascii_graphic);
    ok.then(|| Id(value.clone()))
}

/// A fresh request id: 128 random bits as 32 lowercase hex digits.
pub(crate) fn generate_request_id() -> Id {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = rand::random::<u128>();
    let mut out = [0u8; 32];
    for byte in out.iter_mut().rev() {
        *byte = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    // Hex digits are always a valid header value.
    Id(HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0")))
}

/// Layer for [`RequestContextService`].
#[derive(Debug, Clone)]
pub struct ContextLayer {
    methods: Arc<MethodTable>,
    streams_per_connection: usize,
    shutdown: ShutdownSignal,
}

impl ContextLayer {
    pub(crate) fn new(
        methods: Arc<MethodTable>,
        streams_per_connection: usize,
        shutdown: ShutdownSignal,
    ) -> Self {
        ContextLayer { methods, streams_per_connection, shutdown }
    }
}

impl<S> tower_layer::Layer<S> for ContextLayer {
    type Service = RequestContextService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            inner,
            methods: self.methods.clone(),
            peer: None,
            peer_address: None,
            connection: Arc::new(ConnectionState::new(self.streams_per_connection, self.shutdown.clone())),
            streams_per_connection: self.streams_per_connection,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// Attaches [`RequestContext`].
#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
    methods: Arc<MethodTable>,
    /// The connection's peer, set once per connection by the server (cheaper than a request
    /// extension per call); otherwise read from a `PeerInfo` request extension.
    peer: Option<PeerInfo>,
    /// The peer's address, formatted once per connection for log lines.
    peer_address: Option<Arc<str>>,
    /// The connection's state; one per [`RequestContextService::for_peer`].
    connection: Arc<ConnectionState>,
    streams_per_connection: usize,
    shutdown: ShutdownSignal,
}

impl<S> RequestContextService<S> {
    /// This service for one connection.
    pub(crate) fn for_peer(mut self, peer: PeerInfo) -> Self {
        self.peer_address = peer.remote_addr.map(|a| Arc::from(a.to_string()));
        self.peer = Some(peer);
        self.connection = Arc::new(ConnectionState::new(self.streams_per_connection, self.shutdown.clone()));
        self
    }

    /// The state of the connection this service was made for.
    pub(crate) fn connection(&self) -> Arc<ConnectionState> {
        self.connection.clone()
    }
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
        let request_id = headers.get(&REQUEST_ID).and_then(sane_id).unwrap_or_else(generate_request_id);
        let tenant_id = headers.get(&TENANT_ID).and_then(sane_id);
        let (peer, peer_address) = match &self.peer {
            Some(peer) => (Some(peer.clone()), self.peer_address.clone()),
            None => {
                let peer = req.extensions().get::<PeerInfo>().cloned();
                let address = peer.as_ref().and_then(|p| p.remote_addr).map(|a| Arc::from(a.to_string()));
                (peer, address)
            }
        };
        let method = self.methods.lookup(req.uri().path());
        let echo = Some(request_id.0.clone());
        req.extensions_mut().insert(RequestContext(Arc::new(ContextInner {
            request_id,
            tenant_id,
            peer,
            peer_address,
            method,
            connection: self.connection.clone(),
            trace: std::sync::OnceLock::new(),
            start: std::time::Instant::now(),
        })));
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
        if let Some(mut id) = this.echo.take() {
            // "Never indexed" in HPACK: every id is unique, so adding it to the connection's
            // header table would only evict useful entries (and cost a table insertion).
            id.set_sensitive(true);
            response.headers_mut().insert(REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_accepted() {
        assert_eq!(sane_id(&HeaderValue::from_static("abc-123")).unwrap(), "abc-123");
        assert_eq!(sane_id(&HeaderValue::from_static("has space")), None);
        assert_eq!(sane_id(&HeaderValue::from_str(&"x".repeat(129)).unwrap()), None);
        let id = generate_request_id();
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, generate_request_id());
    }
}
