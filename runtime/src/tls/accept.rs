//! The accept loop: TCP, TLS handshakes off the accept path, per-connection peer identity.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PeerIdentity, PeerInfo, TlsMode, TlsReloader};

/// Pause after an accept error that is not specific to one connection (EMFILE, ENFILE, ENOBUFS...).
/// Retrying at once would spin on the same error; waiting gives in-flight connections time to close.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connections accepted per `poll_next` before yielding back to the executor, so a connection flood
/// cannot monopolise the task that polls the listener.
const ACCEPT_BUDGET: usize = 64;

/// Upper bound on handshakes in progress. Beyond it we stop accepting (the kernel backlog absorbs
/// the excess) until some finish, so a flood of silent clients cannot exhaust memory or descriptors.
/// The per-source cap keeps one address from reaching it.
const MAX_IN_FLIGHT_HANDSHAKES: usize = 1024;

/// Bytes of the HTTP/2 connection preface (`PRI * HTTP/2.0…`); an HTTP/1.1 request line with its
/// first header is longer. A connection has "spoken" once it sent this many bytes.
const PREFACE_LEN: usize = 24;

/// How the accept loop bounds connections that have not yet proven they are clients.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// A TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress from one source address (127.0.0.1 and ::1 exempt).
    pub max_handshakes_per_source: usize,
    /// A client PING sooner than this after the previous one is a strike; the third ends the
    /// connection (grpc-go's keepalive enforcement). `None` disables the HTTP/2 frame policy.
    pub min_ping_interval: Option<Duration>,
    /// SETTINGS and PRIORITY frames a client may send per 10 s.
    pub max_control_frames: u32,
    /// Whether a source address whose connection ended in GOAWAY `ENHANCE_YOUR_CALM` is held
    /// off for a while (the penalty box).
    pub penalize_abuse: bool,
    /// Whether the whole loopback range is exempt from the per-source protections, or only
    /// 127.0.0.1 and ::1 (see [`is_sidecar_source`]).
    pub exempt_all_loopback: bool,
}

impl AcceptLimits {
    /// Polices HTTP/2 (when `min_ping_interval` is set) and penalizes abuse.
    fn policy(&self) -> Option<crate::h2_policy::FramePolicy> {
        self.min_ping_interval.map(|min_ping_interval| {
            crate::h2_policy::FramePolicy::new(crate::h2_policy::PolicyLimits {
                min_ping_interval,
                max_control_frames: self.max_control_frames,
            })
        })
    }
}

/// Whether a connection has sent its preface yet; shared between [`Conn`] and the server's
/// connection task, which closes connections that stay silent.
#[derive(Debug, Default)]
pub struct Preface {
    read: AtomicUsize,
}

impl Preface {
    /// Whether the connection sent at least the length of the HTTP/2 preface.
    pub fn seen(&self) -> bool {
        self.read.load(Ordering::Relaxed) >= PREFACE_LEN
    }

    fn count(&self, n: usize) {
        if !self.seen() {
            self.read.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Handshakes in progress per source address; a slot is released when its guard drops.
#[derive(Debug, Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

struct SourceSlot {
    sources: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    /// Takes a slot for `ip`, or `None` when it has `max` handshakes in progress.
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot { sources: self.clone(), ip })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.sources.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Whether a source address is exempt from the per-source protections (handshake cap, penalty
/// box): where a sidecar proxy connects from on behalf of every client. With `all_loopback`
/// that is the whole loopback range (127.0.0.0/8 and ::1: Istio's sidecar uses 127.0.0.6);
/// without, only 127.0.0.1 and ::1.
pub(super) fn is_sidecar_source(ip: IpAddr, all_loopback: bool) -> bool {
    let ip = ip.to_canonical();
    if all_loopback {
        ip.is_loopback()
    } else {
        ip == IpAddr::V4(std::net::Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    }
}

/// The "source" the per-source protections count: an IPv4 address, or an IPv6 /64 (one
/// subscriber's allocation; counting single IPv6 addresses would give an attacker millions).
pub(super) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(segments))
        }
        v4 => v4,
    }
}

/// One accepted connection: plain TCP or TLS over TCP.
///
/// Implements tokio's `AsyncRead + AsyncWrite + Unpin` and tonic's `Connected` with
/// `ConnectInfo = PeerInfo`, so handlers find a [`PeerInfo`] in every request's extensions.
pub struct Conn {
    io: ConnIo,
    info: PeerInfo,
    preface: Arc<Preface>,
    /// HTTP/2 frame policing (keepalive enforcement, control-frame budget).
    policy: Option<crate::h2_policy::FramePolicy>,
    /// A GOAWAY being written because of a policy violation.
    goaway: Option<PendingGoaway>,
    /// Set once the GOAWAY is out: reads see end of stream, writes fail.
    closed: bool,
    /// Where an offence is reported; taken on the first.
    penalties: Option<Arc<super::penalty::PenaltyBox>>,
    /// Set when a read brought data: the next write first yields once (see
    /// [`Conn::coalesce`]).
    may_yield: bool,
}

enum ConnIo {
    Plain(TcpStream),
    // Boxed: a rustls connection is several hundred bytes, a TcpStream a few words.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Conn {
    fn new(
        io: ConnIo,
        info: PeerInfo,
        limits: &AcceptLimits,
        penalties: Option<Arc<super::penalty::PenaltyBox>>,
    ) -> Self {
        Conn {
            io,
            info,
            preface: Arc::default(),
            policy: limits.policy(),
            goaway: None,
            closed: false,
            penalties,
            may_yield: false,
        }
    }

    /// Write coalescing across streams. Requests read together are handled by tasks of their
    /// own; the first to answer wakes the connection, which the scheduler then runs at once, so
    /// each answer became its own write and TCP segment. Before the first write after a read,
    /// the connection yields once (`tokio::task::yield_now`: it runs again after the tasks
    /// that are ready), so the answers that are ready by then leave in one write. h2 keeps its
    /// frames buffered meanwhile; nothing is copied.
    fn coalesce(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !std::mem::take(&mut self.may_yield) {
            return Poll::Ready(());
        }
        let mut yielded = std::pin::pin!(tokio::task::yield_now());
        // Pending on a Tokio runtime (the wake is deferred); elsewhere the waker was woken at
        // once. Either way the connection is polled again.
        let _ = yielded.as_mut().poll(cx);
        Poll::Pending
    }

    /// Reports this connection's peer to the penalty box (once).
    fn offence(&mut self) {
        if let (Some(penalties), Some(remote)) = (self.penalties.take(), self.info.remote_addr) {
            penalties.punish(remote.ip());
        }
    }

    /// What is known about the peer; the same value tonic puts in request extensions.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }

    /// Whether the connection has sent its preface yet.
    pub fn preface(&self) -> Arc<Preface> {
        self.preface.clone()
    }

    /// The ALPN protocol negotiated by the TLS handshake (`None` for plain TCP or no agreement).
    #[cfg(test)]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.io {
            ConnIo::Plain(_) => None,
            ConnIo::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl ConnIo {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A GOAWAY the policy decided to send, and how much of it is written.
struct PendingGoaway {
    frame: Vec<u8>,
    written: usize,
}

impl Conn {
    /// Writes the pending GOAWAY, if any and if the server's output is between frames. Ready
    /// once it is written (or cannot be: the connection is then just closed).
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at_boundary = self.policy.as_ref().is_none_or(|p| p.at_write_boundary());
        let Some(goaway) = self.goaway.as_mut() else { return Poll::Ready(()) };
        if !at_boundary {
            // hyper is in the middle of a frame; its next writes complete it first. If it never
            // writes again, the connection still ends: reads see end of stream.
            return Poll::Ready(());
        }
        while goaway.written < goaway.frame.len() {
            match self.io.poll_write(cx, &goaway.frame[goaway.written..]) {
                Poll::Ready(Ok(n)) if n > 0 => goaway.written += n,
                // A peer that does not read (its window full) is not waited for: an abusive
                // one would hold the connection open. It is closed without the GOAWAY.
                Poll::Ready(_) | Poll::Pending => {
                    self.closed = true;
                    return Poll::Ready(());
                }
            }
        }
        let _ = self.io.poll_flush(cx);
        self.closed = true;
        Poll::Ready(())
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.goaway.is_some() || this.closed {
            // The connection is being ended: hyper reads end of stream.
            let _ = this.poll_goaway(cx);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        let read = &buf.filled()[before..];
        this.preface.count(read.len());
        this.may_yield |= !read.is_empty();
        if let Some(policy) = this.policy.as_mut()
            && !read.is_empty()
            && let Some(violation) = policy.on_read(read)
        {
            tracing::info!(remote = ?this.info.remote_addr, ?violation, "HTTP/2 policy violation; sending GOAWAY");
            this.goaway = Some(PendingGoaway { frame: policy.goaway(violation), written: 0 });
            this.offence();
            buf.set_filled(before);
            let _ = this.poll_goaway(cx);
            return Poll::Ready(Ok(()));
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.goaway.is_some() {
            std::task::ready!(this.poll_goaway(cx));
        }
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        std::task::ready!(this.coalesce(cx));
        let polled = this.io.poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(policy)) = (&polled, this.policy.as_mut())
            && policy.on_write(&buf[..*n])
        {
            this.offence();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.goaway.is_some() {
            std::task::ready!(this.poll_goaway(cx));
        }
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        std::task::ready!(this.coalesce(cx));
        let polled = this.io.poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(policy)) = (&polled, this.policy.as_mut()) {
            let mut left = *n;
            let mut calm_down = false;
            for slice in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(slice.len());
                calm_down |= policy.on_write(&slice[..take]);
                left -= take;
            }
            if calm_down {
                this.offence();
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.goaway.is_some() {
            std::task::ready!(this.poll_goaway(cx));
        }
        this.io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.goaway.is_some() {
            std::task::ready!(this.poll_goaway(cx));
        }
        this.io.poll_shutdown(cx)
    }
}

/// Turns a bound listener into the stream tonic's `serve_with_incoming_shutdown` consumes.
///
/// - TCP_NODELAY is set on every accepted socket (gRPC messages are small and latency-bound).
/// - With TLS, each handshake runs in its own task, bounded by `handshake_timeout`, so a slow or
///   malicious client never stalls accepting. Failed handshakes are logged at debug and counted in
///   `grpc_runtime_tls_handshake_failures_total`; they are never yielded as stream errors. Each
///   connection uses the configuration current when it was accepted.
/// - In mutual mode the client's leaf certificate is parsed into [`PeerInfo::identity`].
/// - Accept errors are logged and retried (after a short pause for resource exhaustion such as
///   EMFILE), never ending the stream. The stream therefore never yields `Err` and never ends.
/// - Accepting and spawning happen when the stream is polled, which must be inside a tokio runtime.
///   Dropping the stream closes the listener and aborts the handshakes in progress.
/// - At most `max_handshakes_per_source` handshakes run per source (an IPv4 address or an IPv6
///   /64; loopback, where a sidecar connects from, is exempt); more are closed at once and
///   counted with `reason="per_source_limit"`, so one source cannot fill the in-flight limit.
///   Many sources at once still can, for up to the handshake timeout each: a distributed flood
///   needs connection-rate limits in front of the pod (the load balancer), as for any server.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    limits: AcceptLimits,
) -> impl futures::Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    Incoming {
        listener,
        tls,
        limits,
        penalties: limits
            .penalize_abuse
            .then(|| Arc::new(super::penalty::PenaltyBox::new(limits.exempt_all_loopback))),
        per_source: Arc::default(),
        handshakes: JoinSet::new(),
        backoff: None,
    }
}

struct Incoming {
    listener: TcpListener,
    tls: Option<TlsReloader>,
    limits: AcceptLimits,
    penalties: Option<Arc<super::penalty::PenaltyBox>>,
    per_source: Arc<PerSource>,
    /// Handshakes in progress; `None` results are failures that were already logged and counted.
    handshakes: JoinSet<Option<Conn>>,
    /// Set after a resource-exhaustion accept error; accepting resumes when it fires.
    backoff: Option<Pin<Box<Sleep>>>,
}

impl futures::Stream for Incoming {
    type Item = Result<Conn, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(conn) = this.poll_accept(cx) {
            return Poll::Ready(Some(Ok(conn)));
        }
        // Polled after accepting so handshakes spawned just now register this task's waker.
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                Poll::Ready(Some(Ok(None))) => {}
                Poll::Ready(Some(Err(error))) => warn!(%error, "TLS handshake task failed"),
                // An empty set registers no waker; the listener (or backoff timer) is registered.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Incoming {
    /// Accepts what the listener has ready. Returns a plain connection at once; TLS connections are
    /// handed to handshake tasks. When it returns `None`, a waker is registered (listener, backoff
    /// timer, self-wake after the budget, or the handshake set at the in-flight limit).
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Option<Conn> {
        for _ in 0..ACCEPT_BUDGET {
            if let Some(backoff) = self.backoff.as_mut() {
                if backoff.as_mut().poll(cx).is_pending() {
                    return None;
                }
                self.backoff = None;
            }
            if self.handshakes.len() >= MAX_IN_FLIGHT_HANDSHAKES {
                return None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Pending => return None,
                Poll::Ready(Ok((stream, remote_addr))) => {
                    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
                    let remote_addr = SocketAddr::new(remote_addr.ip().to_canonical(), remote_addr.port());
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%remote_addr, %error, "cannot set TCP_NODELAY");
                    }
                    let info = PeerInfo {
                        remote_addr: Some(remote_addr),
                        local_addr: stream.local_addr().ok(),
                        identity: None,
                        tls: false,
                    };
                    let ip = remote_addr.ip();
                    if let Some(penalties) = &self.penalties {
                        match penalties.admit(ip) {
                            super::penalty::Admission::Admit => {}
                            super::penalty::Admission::Refuse => {
                                debug!(%remote_addr, "closing a connection from a penalized address");
                                continue;
                            }
                            super::penalty::Admission::Hold(duration, slot) => {
                                debug!(%remote_addr, "holding a connection from a penalized address");
                                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                                    runtime.spawn(async move {
                                        tokio::time::sleep(duration).await;
                                        drop((stream, slot));
                                    });
                                }
                                continue;
                            }
                        }
                    }
                    let Some(reloader) = &self.tls else {
                        return Some(Conn::new(
                            ConnIo::Plain(stream),
                            info,
                            &self.limits,
                            self.penalties.clone(),
                        ));
                    };
                    let slot = if is_sidecar_source(ip, self.limits.exempt_all_loopback) {
                        None
                    } else {
                        match self.per_source.acquire(source_key(ip), self.limits.max_handshakes_per_source) {
                            Some(slot) => Some(slot),
                            None => {
                                reloader.metrics().handshake_per_source_limit.inc();
                                debug!(%remote_addr, "too many TLS handshakes in progress from this address; closing");
                                continue;
                            }
                        }
                    };
                    self.spawn_handshake(reloader.clone(), stream, info, slot, self.penalties.clone());
                }
                // The failing connection is already gone; the next one may be fine.
                Poll::Ready(Err(error)) if is_connection_error(&error) => {
                    debug!(%error, "accepted connection failed before use");
                }
                Poll::Ready(Err(error)) => {
                    warn!(%error, backoff_ms = ACCEPT_ERROR_BACKOFF.as_millis(), "accept failed; retrying");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF)));
                }
            }
        }
        cx.waker().wake_by_ref();
        None
    }

    fn spawn_handshake(
        &mut self,
        reloader: TlsReloader,
        stream: TcpStream,
        info: PeerInfo,
        slot: Option<SourceSlot>,
        penalties: Option<Arc<super::penalty::PenaltyBox>>,
    ) {
        // try_current instead of JoinSet::spawn, which would panic outside a runtime.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let config = reloader.current();
                let limits = self.limits;
                let task = async move {
                    let conn = handshake(config, reloader, stream, info, limits, penalties).await;
                    drop(slot);
                    conn
                };
                self.handshakes.spawn_on(task, &runtime);
            }
            Err(error) => warn!(%error, "incoming polled outside a tokio runtime; dropping connection"),
        }
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

async fn handshake(
    config: Arc<ServerConfig>,
    reloader: TlsReloader,
    stream: TcpStream,
    mut info: PeerInfo,
    limits: AcceptLimits,
    penalties: Option<Arc<super::penalty::PenaltyBox>>,
) -> Option<Conn> {
    let timeout = limits.handshake_timeout;
    let metrics = reloader.metrics();
    let remote = info.remote_addr;
    let tls = match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            metrics.handshake_error.inc();
            debug!(?remote, %error, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics.handshake_timeout.inc();
            debug!(?remote, timeout_ms = timeout.as_millis(), "TLS handshake timed out");
            return None;
        }
    };
    if reloader.mode() == TlsMode::Mutual {
        // rustls verified the chain; without a parsable identity authorization would be blind, so
        // such a connection is refused rather than accepted anonymously.
        let leaf = tls.get_ref().1.peer_certificates().and_then(|certs| certs.first());
        match leaf.map(|der| PeerIdentity::from_client_der(der.as_ref())) {
            Some(Ok(identity)) => info.identity = Some(Arc::new(identity)),
            Some(Err(error)) => {
                metrics.handshake_identity.inc();
                debug!(?remote, %error, "refusing the client certificate");
                return None;
            }
            None => {
                metrics.handshake_error.inc();
                debug!(?remote, "mutual TLS connection without a client certificate");
                return None;
            }
        }
    }
    info.tls = true;
    Some(Conn::new(ConnIo::Tls(Box::new(tls)), info, &limits, penalties))
}
