//! The server: builder, listeners, connection handling and graceful shutdown.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderName, HeaderValue, Method};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::admin::{self, AdminState};
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, WebOrigins};
use crate::health::Health;
use crate::layers::access_log::AccessLogLayer;
use crate::layers::auth::AuthLayer;
use crate::layers::context::ContextLayer;
use crate::layers::deadline::DeadlineLayer;
use crate::layers::limit::{Closing, LimitLayer};
use crate::layers::metrics::MetricsLayer;
use crate::layers::recovery::RecoveryLayer;
use crate::layers::trace::TraceLayer;
use crate::method::{DescriptorError, MethodTable};
use crate::metrics::ServerMetrics;
use crate::telemetry::{Telemetry, TelemetryError};
use crate::tls::{PeerInfo, TlsError, TlsMetrics, TlsMode, TlsReloader};

/// Request headers browsers may send on gRPC-Web calls (CORS `Access-Control-Allow-Headers`).
pub const GRPC_WEB_ALLOW_HEADERS: [&str; 8] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "x-request-id",
    "x-tenant-id",
    "traceparent",
];
/// Response headers browsers may read on gRPC-Web calls (CORS `Access-Control-Expose-Headers`).
pub const GRPC_WEB_EXPOSE_HEADERS: [&str; 4] =
    ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"];

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("binding the {listener} listener on {addr}: {source}")]
    Bind {
        /// `gRPC` or `admin`.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS material could not be loaded at startup.
    #[error("loading TLS material: {0}")]
    Tls(#[from] TlsError),
    /// A registered file descriptor set is invalid.
    #[error("reading service descriptors: {0}")]
    Descriptors(#[from] DescriptorError),
    /// The reflection service could not be built from the descriptors.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Metrics could not be registered (a name clash with an application metric).
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Telemetry could not be set up.
    #[error("setting up telemetry: {0}")]
    Telemetry(#[from] TelemetryError),
    /// The admin server failed.
    #[error("admin server: {0}")]
    Admin(#[source] std::io::Error),
}

type ShutdownHook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// How long the shutdown hooks together may run before shutdown moves on without them, and
/// how long the telemetry flush may take: the workload contract's budget, which the operator
/// adds to the pod's `terminationGracePeriodSeconds`.
pub const SHUTDOWN_HOOK_TIMEOUT: Duration = Duration::from_millis(grpc_contract::shutdown::HOOK_TIMEOUT_MS);

/// Builder of a production gRPC server; see the [crate documentation](crate) for a guide.
pub struct Server {
    config: Config,
    routes: RoutesBuilder,
    services: Vec<&'static str>,
    descriptors: Vec<&'static [u8]>,
    authenticator: Option<Arc<dyn Authenticator>>,
    auth_exempt: HashSet<String>,
    registry: Registry,
    hooks: Vec<ShutdownHook>,
    init_telemetry: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("config", &self.config).field("services", &self.services).finish()
    }
}

impl Server {
    /// A server with the given configuration.
    pub fn new(config: Config) -> Self {
        Server {
            config,
            routes: RoutesBuilder::default(),
            services: Vec::new(),
            descriptors: Vec::new(),
            authenticator: None,
            auth_exempt: HashSet::from([HEALTH_SERVICE.to_string()]),
            registry: Registry::new(),
            hooks: Vec::new(),
            init_telemetry: true,
        }
    }

    /// A server configured from the workload contract's environment variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Config::from_env().map(Server::new)
    }

    /// Adds a tonic service. Its health status starts `SERVING`; register its file descriptor
    /// set with [`Server::file_descriptor_set`] for reflection and per-method metrics.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Registers an encoded `FileDescriptorSet` (what `tonic_prost_build` writes with
    /// `file_descriptor_set_path`): served by reflection, and the source of each method's
    /// streaming kind for metrics. Methods of services without descriptors are reported as
    /// `unknown` in metrics.
    pub fn file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptors.push(encoded);
        self
    }

    /// Authenticates every call (except exempt services) with `authenticator`.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Lets calls to `service` (`package.Service`) skip authentication. The health service is
    /// exempt by default, since probes and load balancers call it without credentials.
    pub fn auth_exempt_service(mut self, service: impl Into<String>) -> Self {
        self.auth_exempt.insert(service.into());
        self
    }

    /// Changes the configuration (builder overrides of the environment), e.g.
    /// `.configure(|c| c.limits.max_concurrent_rpcs = 64)`.
    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// The configuration as it stands.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry `/metrics` serves; register application metrics here.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs `hook` when shutdown begins, after every service reports `NOT_SERVING` and before
    /// the drain delay: the place to deregister from service discovery. The hooks run in order
    /// and together get at most [`SHUTDOWN_HOOK_TIMEOUT`].
    pub fn on_shutdown<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hooks.push(Box::new(move || Box::pin(hook())));
        self
    }

    /// Skips installing the global `tracing` subscriber and OpenTelemetry propagator (for
    /// applications that set up their own).
    pub fn without_telemetry_init(mut self) -> Self {
        self.init_telemetry = false;
        self
    }

    /// Validates the setup, loads TLS, binds both listeners and returns the server ready to
    /// serve (a bound port 0 has its real port in [`BoundServer::grpc_addr`]).
    pub async fn bind(self) -> Result<BoundServer, ServeError> {
        let config = self.config;
        let telemetry = if self.init_telemetry { Some(Telemetry::init(&config)?) } else { None };
        let registry = self.registry;
        let server_metrics = ServerMetrics::new(&registry)?;
        crate::metrics::register_process_metrics(&registry)?;
        let tls_metrics = TlsMetrics::new(&registry)?;

        let mut descriptors: Vec<&'static [u8]> = vec![
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        descriptors.extend(self.descriptors.iter().copied());
        let methods = Arc::new(MethodTable::build(&descriptors, &server_metrics)?);
        for name in &self.services {
            if !methods.has_service(name) {
                tracing::warn!(
                    service = name,
                    "no file descriptor set registered for this service: reflection will not list it and its \
                     metrics are reported as grpc_service=\"unknown\""
                );
            }
        }

        // Reflection lists every registered service, its own v1 and v1alpha included, so both
        // grpcurl 1.8 (v1alpha only) and current clients (v1) see the same listing.
        let reflection = |b: tonic_reflection::server::Builder<'static>| {
            descriptors
                .iter()
                .fold(b.include_reflection_service(false), |b, d| b.register_encoded_file_descriptor_set(d))
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1()?;
        let reflection_v1alpha =
            reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?;

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter);
        health.set_serving("", true).await;
        for name in &self.services {
            health.set_serving(name, true).await;
        }

        let mut routes = self.routes;
        routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
        let routes = routes.routes().prepare();

        let tls = match config.tls_mode {
            TlsMode::Disabled => None,
            mode => {
                // Config::from_lookup guarantees a directory for these modes; a builder override
                // that removed it is reported the same way.
                let dir = config.tls_dir.clone().ok_or_else(|| ConfigError {
                    variable: crate::config::ENV_TLS_DIR,
                    value: String::new(),
                    reason: format!("must be set when {}={}", crate::config::ENV_TLS_MODE, mode.as_str()),
                })?;
                Some(TlsReloader::load(mode, dir, tls_metrics)?)
            }
        };

        let closing = Closing::default();
        let limits = &config.limits;
        let chain = ServiceBuilder::new()
            .layer(ContextLayer::new(methods.clone()))
            .layer(RecoveryLayer::new(server_metrics.panics.clone()))
            .layer(TraceLayer::new(config.log_format == crate::config::LogFormat::Text))
            .layer(MetricsLayer)
            .layer(AccessLogLayer)
            .layer(AuthLayer::new(self.authenticator, self.auth_exempt))
            .layer(DeadlineLayer::new(limits.default_deadline))
            .layer(LimitLayer::new(
                limits.max_concurrent_rpcs,
                limits.max_decoding_message_size,
                limits.max_encoding_message_size,
                closing.clone(),
            ))
            .service(routes);

        let grpc_listener = TcpListener::bind(config.grpc_addr).await.map_err(|source| ServeError::Bind {
            listener: "gRPC",
            addr: config.grpc_addr,
            source,
        })?;
        let admin_listener = TcpListener::bind(config.admin_addr)
            .await
            .map_err(|source| ServeError::Bind { listener: "admin", addr: config.admin_addr, source })?;
        let grpc_addr = grpc_listener.local_addr().map_err(|source| ServeError::Bind {
            listener: "gRPC",
            addr: config.grpc_addr,
            source,
        })?;
        let admin_addr = admin_listener.local_addr().map_err(|source| ServeError::Bind {
            listener: "admin",
            addr: config.admin_addr,
            source,
        })?;

        Ok(BoundServer {
            chain,
            cors: cors_layer(&config.web_origins),
            grpc_listener,
            admin_listener,
            grpc_addr,
            admin_addr,
            admin: AdminState { registry: registry.clone(), health: health.clone() },
            health,
            tls,
            closing,
            hooks: self.hooks,
            telemetry,
            config,
            services: self.services,
        })
    }
}

/// Name of the standard health service.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

fn cors_layer(origins: &WebOrigins) -> CorsLayer {
    let allow_origin = match origins {
        WebOrigins::Any => AllowOrigin::any(),
        WebOrigins::None => AllowOrigin::list(std::iter::empty::<HeaderValue>()),
        WebOrigins::List(list) => {
            AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        }
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(GRPC_WEB_ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(GRPC_WEB_EXPOSE_HEADERS.map(HeaderName::from_static))
        .max_age(Duration::from_secs(24 * 3600))
}

/// A bound server, ready to serve.
pub struct BoundServer {
    chain: ChainService,
    cors: CorsLayer,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: AdminState,
    health: Health,
    tls: Option<TlsReloader>,
    closing: Closing,
    hooks: Vec<ShutdownHook>,
    telemetry: Option<Telemetry>,
    config: Config,
    services: Vec<&'static str>,
}

impl std::fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field("services", &self.services)
            .finish()
    }
}

type ChainService = crate::layers::context::RequestContextService<
    crate::layers::recovery::Recovery<
        crate::layers::trace::Trace<
            crate::layers::metrics::Metrics<
                crate::layers::access_log::AccessLog<
                    crate::layers::auth::Auth<
                        crate::layers::deadline::DeadlineService<
                            crate::layers::limit::Limit<tonic::service::Routes>,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

impl BoundServer {
    /// The gRPC listener's address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The health handle (set services `NOT_SERVING` while a dependency is down).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn serve(self) -> Result<(), ServeError> {
        self.serve_until(shutdown_signal()).await
    }

    /// Serves until `signal` completes, then shuts down gracefully:
    ///
    /// 1. every service reports `NOT_SERVING` and `/readyz` fails;
    /// 2. shutdown hooks run (service-discovery deregistration);
    /// 3. the drain delay passes while calls are still served, so the endpoint leaves load
    ///    balancers before it stops answering;
    /// 4. the listener closes and connections get GOAWAY; in-flight calls may finish until the
    ///    shutdown timeout, after which their connections are closed;
    /// 5. telemetry is flushed.
    pub async fn serve_until(self, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
        let BoundServer {
            chain,
            cors,
            grpc_listener,
            admin_listener,
            grpc_addr,
            admin_addr,
            admin,
            health,
            tls,
            closing,
            hooks,
            telemetry,
            config,
            services,
        } = self;
        let stop_admin = CancellationToken::new();
        let admin_task = {
            let stop = stop_admin.clone();
            let router = admin::router(admin);
            tokio::spawn(async move {
                axum::serve(admin_listener, router).with_graceful_shutdown(stop.cancelled_owned()).await
            })
        };
        let stop_watcher = CancellationToken::new();
        let watcher = tls.as_ref().map(|t| t.spawn_watcher(config.tls_reload_interval, stop_watcher.clone()));

        tracing::info!(
            grpc.address = %grpc_addr,
            admin.address = %admin_addr,
            tls.mode = config.tls_mode.as_str(),
            services = ?services,
            "serving"
        );
        let stop_accepting = CancellationToken::new();
        // One service stack per connection, carrying the connection's peer: cheaper than
        // adding it to every request's extensions.
        let make_service = move |peer: PeerInfo| {
            let grpc = chain.clone().for_peer(peer);
            let web = ServiceBuilder::new()
                .layer(cors.clone())
                .layer(tonic_web::GrpcWebLayer::new())
                .service(grpc.clone());
            Dispatch { grpc, web }
        };
        let connections = tokio::spawn(serve_connections(
            grpc_listener,
            tls,
            make_service,
            config.clone(),
            stop_accepting.clone(),
        ));

        signal.await;
        tracing::info!(drain_delay = ?config.shutdown.drain_delay, "shutdown: reporting NOT_SERVING");
        health.drain().await;
        let run_hooks = async {
            for hook in hooks {
                hook().await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_HOOK_TIMEOUT, run_hooks).await.is_err() {
            tracing::warn!("shutdown hooks did not finish within {SHUTDOWN_HOOK_TIMEOUT:?}; continuing");
        }
        tokio::time::sleep(config.shutdown.drain_delay).await;
        tracing::info!(timeout = ?config.shutdown.timeout, "shutdown: closing the listener and draining calls");
        closing.close();
        stop_accepting.cancel();
        if let Err(err) = connections.await {
            tracing::error!(error = %err, "connection supervisor failed");
        }
        stop_watcher.cancel();
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        stop_admin.cancel();
        let admin_result = admin_task.await;
        if let Some(telemetry) = telemetry {
            // Off the async threads: the exporter's connection runs on this runtime, which may
            // have only the thread running this future.
            let flush = tokio::task::spawn_blocking(move || telemetry.shutdown());
            match tokio::time::timeout(SHUTDOWN_HOOK_TIMEOUT, flush).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "flushing spans failed"),
                Err(_) => {
                    tracing::warn!("flushing spans did not finish within {SHUTDOWN_HOOK_TIMEOUT:?}; exiting")
                }
            }
        }
        tracing::info!("shutdown complete");
        match admin_result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(ServeError::Admin(err)),
            Err(join) => Err(ServeError::Admin(std::io::Error::other(join))),
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("received SIGTERM"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
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
    // HTTP/1.1 only carries gRPC-Web; bound how long a client may take to send headers.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    builder
}

/// Accepts connections until `stop` fires, then drains them: GOAWAY to every connection, wait
/// up to the shutdown timeout, close what remains.
async fn serve_connections<M, S, B>(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    make_service: M,
    config: Config,
    stop: CancellationToken,
) where
    M: Fn(PeerInfo) -> S,
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
    let builder = Arc::new(connection_builder(&config));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    {
        let incoming = crate::tls::incoming(listener, tls, config.limits.tls_handshake_timeout);
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
                    let service = make_service(conn.peer_info().clone());
                    connections.spawn(serve_connection(
                        builder.clone(),
                        conn,
                        service,
                        drain_rx.clone(),
                        config.limits.max_connection_age,
                        config.limits.max_connection_age_grace,
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

async fn serve_connection<S, B>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    conn: crate::tls::Conn,
    service: S,
    mut drain: tokio::sync::watch::Receiver<bool>,
    max_age: Duration,
    grace: Duration,
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
    let connection = builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(service));
    let mut connection = pin!(connection);
    // Max connection age, then its grace period; disarmed once shutdown drains the connection
    // (the supervisor's shutdown timeout bounds it from then on).
    let age = tokio::time::sleep(max_age);
    let mut age = pin!(age);
    let mut age_armed = true;
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = age.as_mut(), if age_armed => {
                if closing {
                    tracing::debug!("connection outlived its grace period; closing");
                    return;
                }
                // Max connection age: GOAWAY now, hard close after the grace period.
                closing = true;
                connection.as_mut().graceful_shutdown();
                age.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            changed = drain.changed(), if !closing => {
                if changed.is_err() || *drain.borrow() {
                    closing = true;
                    age_armed = false;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Sends gRPC-Web requests (and CORS preflights) through CORS and the gRPC-Web translation;
/// native gRPC goes straight to the chain without paying for either.
#[derive(Clone)]
struct Dispatch<G, W> {
    grpc: G,
    web: W,
}

fn is_web_request<B>(req: &http::Request<B>) -> bool {
    req.method() == Method::OPTIONS
        || req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc-web"))
}

impl<G, W, GB, WB> tower_service::Service<http::Request<hyper::body::Incoming>> for Dispatch<G, W>
where
    G: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<GB>,
            Error = Infallible,
        >,
    W: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<WB>,
            Error = Infallible,
        >,
{
    type Response = http::Response<http_body_util::Either<GB, WB>>;
    type Error = Infallible;
    type Future = DispatchFuture<G::Future, W::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both sides are always ready (no layer applies backpressure through poll_ready).
        match (self.grpc.poll_ready(cx), self.web.poll_ready(cx)) {
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if is_web_request(&req) {
            DispatchFuture::Web { future: self.web.call(req) }
        } else {
            DispatchFuture::Grpc { future: self.grpc.call(req) }
        }
    }
}

pin_project! {
    #[project = DispatchProj]
    enum DispatchFuture<G, W> {
        Grpc { #[pin] future: G },
        Web { #[pin] future: W },
    }
}

impl<G, W, GB, WB> Future for DispatchFuture<G, W>
where
    G: Future<Output = Result<http::Response<GB>, Infallible>>,
    W: Future<Output = Result<http::Response<WB>, Infallible>>,
{
    type Output = Result<http::Response<http_body_util::Either<GB, WB>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DispatchProj::Grpc { future } => future.poll(cx).map_ok(|r| r.map(http_body_util::Either::Left)),
            DispatchProj::Web { future } => future.poll(cx).map_ok(|r| r.map(http_body_util::Either::Right)),
        }
    }
}
