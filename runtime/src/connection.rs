//! Listeners and connections: dual-stack binding, the HTTP/2 (and, for gRPC-Web, HTTP/1.1)
//! settings, and each connection's lifetime: preface timeout, idle timeout, maximum age and
//! draining at shutdown.

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Limits};
use crate::layers::context::ConnectionState;
use crate::tls::{AcceptLimits, Conn, PeerInfo, TlsReloader};

/// Binds a listener. The unspecified IPv6 address (`[::]`, the default) binds dual-stack, IPv6
/// and IPv4 on one socket, whatever the host's `bindv6only`; where IPv6 is off it falls back to
/// `0.0.0.0` on the same port.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.ip() == Ipv6Addr::UNSPECIFIED {
        match bind_socket(addr, true) {
            Ok(listener) => return Ok(listener),
            // EAFNOSUPPORT, EADDRNOTAVAIL: the host has IPv6 off. Anything else (a port in use)
            // is an error for IPv4 too.
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrNotAvailable
                    || error.kind() == std::io::ErrorKind::Unsupported
                    || error.raw_os_error() == Some(97) =>
            {
                tracing::info!(%error, "IPv6 unavailable; listening on IPv4 only");
                return bind_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()), false);
            }
            Err(error) => return Err(error),
        }
    }
    bind_socket(addr, false)
}

fn bind_socket(addr: SocketAddr, dual_stack: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // As std and tokio do: a restarted server rebinds its port while old connections linger.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The HTTP settings of every connection. HTTP/1.1 is served only with gRPC-Web on.
pub(crate) fn builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let limits = &config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_header_list_size(limits.max_header_list_size)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.max_local_error_reset_streams);
    if !config.web_origins.enabled() {
        return builder.http2_only();
    }
    // HTTP/1.1 only carries gRPC-Web; bound how long a client may take to send headers.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    builder
}

/// Accepts connections until `stop` fires, then drains them: GOAWAY to every connection, wait up
/// to the shutdown timeout, close what remains.
pub(crate) async fn serve_connections<M, S, B>(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    make: M,
    config: Config,
    stop: CancellationToken,
) where
    M: Fn(PeerInfo) -> (S, Arc<ConnectionState>),
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(&config));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let limits = Arc::new(config.limits.clone());
    {
        let accept = AcceptLimits {
            handshake_timeout: config.limits.tls_handshake_timeout,
            max_handshakes_per_source: config.limits.max_handshakes_per_source,
            min_ping_interval: config.limits.min_ping_interval,
            max_control_frames: config.limits.max_control_frames,
            penalize_abuse: config.limits.penalize_abuse,
            exempt_all_loopback: config.limits.exempt_all_loopback,
        };
        let incoming = crate::tls::incoming(listener, tls, accept);
        let mut incoming = pin!(incoming);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                next = incoming.next() => {
                    let Some(next) = next else { break };
                    let conn = match next {
                        Ok(conn) => conn,
                        Err(err) => {
                            tracing::debug!(error = %err, "accept failed");
                            continue;
                        }
                    };
                    let (service, state) = make(conn.peer_info().clone());
                    connections.spawn(serve_connection(
                        builder.clone(),
                        conn,
                        service,
                        state,
                        drain_rx.clone(),
                        limits.clone(),
                    ));
                }
            }
        }
        // `incoming` (and the listener) is dropped here: the port stops accepting at once.
    }
    let _ = drain_tx.send(true);
    let open = connections.len();
    if open > 0 {
        tracing::info!(connections = open, "waiting for in-flight calls");
    }
    let drained = tokio::time::timeout(config.shutdown.timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            timeout = ?config.shutdown.timeout,
            "shutdown timeout reached; closing connections with calls still in flight"
        );
        connections.shutdown().await;
    }
}

/// The watchdog's orders to the connection task (0: none yet): send GOAWAY, or close now.
const GOAWAY: u8 = 1;
const CLOSE: u8 = 2;

/// The channel from a connection's watchdog to its task: an order and the task's waker.
#[derive(Default)]
struct Control {
    order: std::sync::atomic::AtomicU8,
    waker: futures::task::AtomicWaker,
}

impl Control {
    fn order(&self, order: u8) {
        self.order.fetch_max(order, std::sync::atomic::Ordering::AcqRel);
        self.waker.wake();
    }
}

/// Serves one connection. Its timers (preface, idle, maximum age, grace) and the shutdown drain
/// live in a watchdog task of their own, which orders a GOAWAY or a close through [`Control`]:
/// the connection task, woken several times per call, then polls only the connection and one
/// atomic, not timers and a watch channel each time.
async fn serve_connection<S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    conn: Conn,
    service: S,
    state: Arc<ConnectionState>,
    drain: tokio::sync::watch::Receiver<bool>,
    limits: Arc<Limits>,
) where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let remote = conn.peer_info().remote_addr;
    let control = Arc::new(Control::default());
    let watchdog = tokio::spawn(watchdog(control.clone(), conn.preface(), state, drain, limits, remote));
    let connection = builder.serve_connection(TokioIo::new(conn), service);
    let mut connection = pin!(connection);
    let mut goaway_sent = false;
    let result = std::future::poll_fn(|cx| {
        control.waker.register(cx.waker());
        match control.order.load(std::sync::atomic::Ordering::Acquire) {
            CLOSE => return std::task::Poll::Ready(None),
            GOAWAY if !goaway_sent => {
                goaway_sent = true;
                connection.as_mut().graceful_shutdown();
            }
            _ => {}
        }
        connection.as_mut().poll(cx).map(Some)
    })
    .await;
    watchdog.abort();
    if let Some(Err(err)) = result {
        tracing::debug!(?remote, error = %err, "connection ended with an error");
    }
}

/// A connection's timers: no preface within `preface_timeout` closes it; `max_connection_age`,
/// or `max_connection_idle` without a call in flight, sends GOAWAY and closes after
/// `max_connection_age_grace`; shutdown sends GOAWAY (the supervisor's shutdown timeout bounds
/// the rest).
async fn watchdog(
    control: Arc<Control>,
    preface: Arc<crate::tls::Preface>,
    state: Arc<ConnectionState>,
    mut drain: tokio::sync::watch::Receiver<bool>,
    limits: Arc<Limits>,
    remote: Option<SocketAddr>,
) {
    let start = Instant::now();
    let preface_deadline = start + limits.preface_timeout;
    let age_deadline = start + limits.max_connection_age;
    let mut next_idle_check = start + limits.max_connection_idle;
    let mut preface_checked = false;
    let mut hard_deadline: Option<Instant> = None;
    loop {
        let next = match hard_deadline {
            Some(hard) => hard,
            None if !preface_checked => preface_deadline.min(next_idle_check).min(age_deadline),
            None => next_idle_check.min(age_deadline),
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            changed = drain.changed() => {
                if changed.is_err() || *drain.borrow() {
                    control.order(GOAWAY);
                    return;
                }
                continue;
            }
        }
        let now = Instant::now();
        if let Some(hard) = hard_deadline {
            if now >= hard {
                tracing::debug!(?remote, "connection outlived its grace period; closing");
                control.order(CLOSE);
                return;
            }
            continue;
        }
        if !preface_checked && now >= preface_deadline {
            preface_checked = true;
            if !preface.seen() {
                tracing::debug!(?remote, "no preface within the timeout; closing");
                control.order(CLOSE);
                return;
            }
        }
        if now >= age_deadline {
            control.order(GOAWAY);
            hard_deadline = Some(now + limits.max_connection_age_grace);
            continue;
        }
        if now >= next_idle_check {
            match state.idle_for() {
                Some(idle) if idle >= limits.max_connection_idle => {
                    tracing::debug!(?remote, "connection idle; closing");
                    control.order(GOAWAY);
                    hard_deadline = Some(now + limits.max_connection_age_grace);
                }
                Some(idle) => next_idle_check = now + (limits.max_connection_idle - idle),
                None => next_idle_check = now + limits.max_connection_idle,
            }
        }
    }
}
