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
use hyper_util::service::TowerToHyperService;
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
        match bind_dual_stack(addr) {
            Ok(listener) => return Ok(listener),
            Err(error) => {
                tracing::info!(%error, "IPv6 unavailable; listening on IPv4 only");
                return bind_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()), false);
            }
        }
    }
    bind_socket(addr, false)
}

fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_socket(addr, true)
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
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
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

/// Why a connection is being closed gracefully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Not closing.
    No,
    /// Max age or idle: GOAWAY, then a hard close after the grace period.
    Aged,
    /// Server shutdown: GOAWAY; the supervisor's shutdown timeout bounds the rest.
    Draining,
}

async fn serve_connection<S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    conn: Conn,
    service: S,
    state: Arc<ConnectionState>,
    mut drain: tokio::sync::watch::Receiver<bool>,
    limits: Arc<Limits>,
) where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let preface = conn.preface();
    let remote = conn.peer_info().remote_addr;
    let connection = builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(service));
    let mut connection = pin!(connection);
    let start = Instant::now();
    // One timer serves the preface deadline, the idle checks and the max age.
    let preface_deadline = start + limits.preface_timeout;
    let age_deadline = start + limits.max_connection_age;
    let mut hard_deadline: Option<Instant> = None;
    let mut next_idle_check = start + limits.max_connection_idle;
    let next_wake = |closing: Closing, preface_seen: bool, idle: Instant, hard: Option<Instant>| match closing
    {
        Closing::No if !preface_seen => preface_deadline.min(idle).min(age_deadline),
        Closing::No => idle.min(age_deadline),
        Closing::Aged => hard.unwrap_or(age_deadline),
        // Drain: the supervisor bounds it; sleep far away (a week is plenty for Instant math).
        Closing::Draining => Instant::now() + Duration::from_secs(7 * 24 * 3600),
    };
    let mut closing = Closing::No;
    let timer = tokio::time::sleep_until(next_wake(closing, false, next_idle_check, None));
    let mut timer = pin!(timer);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(?remote, error = %err, "connection ended with an error");
                }
                return;
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                match closing {
                    Closing::Aged if hard_deadline.is_some_and(|d| now >= d) => {
                        tracing::debug!(?remote, "connection outlived its grace period; closing");
                        return;
                    }
                    Closing::No if !preface.seen() && now >= preface_deadline => {
                        tracing::debug!(?remote, "no preface within the timeout; closing");
                        return;
                    }
                    Closing::No if now >= age_deadline => {
                        closing = Closing::Aged;
                        hard_deadline = Some(now + limits.max_connection_age_grace);
                        connection.as_mut().graceful_shutdown();
                    }
                    Closing::No if now >= next_idle_check => match state.idle_for() {
                        Some(idle) if idle >= limits.max_connection_idle => {
                            tracing::debug!(?remote, "connection idle; closing");
                            closing = Closing::Aged;
                            hard_deadline = Some(now + limits.max_connection_age_grace);
                            connection.as_mut().graceful_shutdown();
                        }
                        Some(idle) => next_idle_check = now + (limits.max_connection_idle - idle),
                        None => next_idle_check = now + limits.max_connection_idle,
                    },
                    _ => {}
                }
                timer.as_mut().reset(next_wake(closing, preface.seen(), next_idle_check, hard_deadline));
            }
            changed = drain.changed(), if closing != Closing::Draining => {
                if changed.is_err() || *drain.borrow() {
                    if closing == Closing::No {
                        connection.as_mut().graceful_shutdown();
                    }
                    closing = Closing::Draining;
                    timer.as_mut().reset(next_wake(closing, true, next_idle_check, hard_deadline));
                }
            }
        }
    }
}
