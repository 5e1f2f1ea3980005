//! The server: builder, binding, and the lifecycle from serving to graceful shutdown.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tower::ServiceBuilder;
use tower_http::cors::CorsLayer;

use crate::admin::{self, AdminState};
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::connection::serve_connections;
use crate::dispatch::{Dispatch, cors_layer};
use crate::health::Health;
use crate::layers::auth::AuthLayer;
use crate::layers::compression::CompressionLayer;
use crate::layers::context::{ContextLayer, ShutdownSignal};
use crate::layers::deadline::DeadlineLayer;
use crate::layers::limit::LimitLayer;
use crate::layers::observe::ObserveLayer;
use crate::layers::recovery::RecoveryLayer;
use crate::layers::user::{BoxedLayer, Handler, HandlerService};
use crate::method::{DescriptorError, MethodTable};
use crate::metrics::ServerMetrics;
use crate::telemetry::{Telemetry, TelemetryError};
use crate::tls::{PeerInfo, Protocols, TlsError, TlsMetrics, TlsMode, TlsReloader};

pub use crate::dispatch::{GRPC_WEB_ALLOW_HEADERS, GRPC_WEB_EXPOSE_HEADERS};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A service was added without the file descriptor set that describes it.
    #[error(
        "service {service} has no file descriptor set: register its FILE_DESCRIPTOR_SET with \
         Server::file_descriptor_set, or its methods would be unknown to metrics, deadlines, limits \
         and authentication exemptions"
    )]
    MissingDescriptors {
        /// The service (`package.Service`).
        service: &'static str,
    },
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
    layers: Vec<BoxedLayer>,
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
            layers: Vec::new(),
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
    /// `file_descriptor_set_path`): served by reflection, and the source of each method's name,
    /// streaming kind and budget for metrics, deadlines and limits. Every service added must be
    /// described by one, or [`Server::bind`] fails with [`ServeError::MissingDescriptors`].
    pub fn file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptors.push(encoded);
        self
    }

    /// Authenticates every call (except exempt services) with `authenticator`, after the
    /// `GRPC_ALLOWED_PEERS` allow-list. Its verdict may await I/O ([`crate::AuthDecision`]).
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

    /// Adds your tower layer around every call's handler: after authentication (it sees the
    /// [`crate::Principal`]), the deadline and the concurrency limits, before the handler. Layers
    /// added first run first. The layer wraps a [`HandlerService`] and must produce a service of
    /// the same request and response types with no error: answer refusals as gRPC statuses
    /// (`tonic::Status::into_http`). Each call through your layers costs one allocation.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower_layer::Layer<HandlerService> + Send + 'static,
        L::Service: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower_service::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    {
        self.layers.push(Box::new(move |inner| HandlerService::new(layer.layer(inner))));
        self
    }

    /// Skips installing the global `tracing` subscriber and OpenTelemetry propagator (for
    /// applications that set up their own).
    pub fn without_telemetry_init(mut self) -> Self {
        self.init_telemetry = false;
        self
    }

    /// Validates the setup (the configuration, builder overrides included, and the descriptors),
    /// loads TLS, binds both listeners and returns the server ready to serve (a bound port 0 has
    /// its real port in [`BoundServer::grpc_addr`]).
    pub async fn bind(self) -> Result<BoundServer, ServeError> {
        let config = self.config;
        config.validate()?;
        let telemetry = if self.init_telemetry { Some(Telemetry::init(&config)?) } else { None };
        let registry = self.registry;
        let server_metrics = ServerMetrics::new(&registry)?;
        crate::metrics::register_process_metrics(&registry)?;
        let tls_metrics = TlsMetrics::new(&registry)?;

        let mut descriptors: Vec<&'static [u8]> = vec![tonic_health::pb::FILE_DESCRIPTOR_SET];
        if config.reflection {
            descriptors.push(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
            descriptors.push(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
        }
        descriptors.extend(self.descriptors.iter().copied());
        let methods = Arc::new(MethodTable::build(&descriptors, &server_metrics)?);
        if let Some(service) = self.services.iter().find(|name| !methods.has_service(name)) {
            return Err(ServeError::MissingDescriptors { service });
        }

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter);
        health.set_serving("", true).await;
        for name in &self.services {
            health.set_serving(name, true).await;
        }

        let mut routes = self.routes;
        routes.add_service(health_service);
        if config.reflection {
            // Reflection lists every registered service, its own v1 and v1alpha included, so
            // both grpcurl 1.8 (v1alpha only) and current clients (v1) see the same listing.
            let reflection = |b: tonic_reflection::server::Builder<'static>| {
                descriptors.iter().fold(b.include_reflection_service(false), |b, d| {
                    b.register_encoded_file_descriptor_set(d)
                })
            };
            routes
                .add_service(reflection(tonic_reflection::server::Builder::configure()).build_v1()?)
                .add_service(reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?);
        }
        let routes = routes.routes().prepare();

        let tls = match config.tls_mode {
            TlsMode::Disabled => None,
            mode => {
                // Config::validate guarantees a directory for these modes.
                let dir = config.tls_dir.clone().ok_or_else(|| ConfigError {
                    variable: crate::config::ENV_TLS_DIR,
                    value: String::new(),
                    reason: format!("must be set when {}={}", crate::config::ENV_TLS_MODE, mode.as_str()),
                })?;
                let protocols =
                    if config.web_origins.enabled() { Protocols::Http2AndHttp1 } else { Protocols::Http2 };
                Some(TlsReloader::load(mode, dir, tls_metrics, protocols)?)
            }
        };
        if config.tls_mode == TlsMode::Mutual
            && config.allowed_peers.is_none()
            && self.authenticator.is_none()
        {
            tracing::warn!(
                "TLS_MODE=mutual without GRPC_ALLOWED_PEERS or an authenticator: every certificate the CA \
                 bundle trusts may call every method"
            );
        }

        let shutdown = ShutdownSignal::default();
        let limits = &config.limits;
        let chain = ServiceBuilder::new()
            .layer(ContextLayer::new(
                methods.clone(),
                limits.streaming_rpcs_per_connection(),
                shutdown.clone(),
            ))
            .layer(ObserveLayer::new(
                config.log_format == crate::config::LogFormat::Text,
                // Spans only where something consumes them: see ObserveLayer::new.
                !self.init_telemetry
                    || config.log_format == crate::config::LogFormat::Text
                    || config.otel.endpoint.is_some(),
                methods.unknown(),
            ))
            .layer(RecoveryLayer::new(server_metrics.panics.clone()))
            .layer(AuthLayer::new(config.allowed_peers.clone(), self.authenticator, self.auth_exempt))
            .layer(DeadlineLayer::new(limits.default_deadline))
            .layer(LimitLayer::new(limits))
            .layer(CompressionLayer::new(limits.max_decoding_message_size))
            .service(Handler::new(routes, self.layers));

        let grpc_listener = crate::connection::bind(config.grpc_addr).map_err(|source| ServeError::Bind {
            listener: "gRPC",
            addr: config.grpc_addr,
            source,
        })?;
        let admin_listener = crate::connection::bind(config.admin_addr)
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
            shutdown,
            hooks: self.hooks,
            telemetry,
            config,
            services: self.services,
        })
    }
}

/// Name of the standard health service.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// A bound server, ready to serve.
pub struct BoundServer {
    chain: Chain,
    cors: CorsLayer,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: AdminState,
    health: Health,
    tls: Option<TlsReloader>,
    shutdown: ShutdownSignal,
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

type Chain = crate::layers::context::RequestContextService<
    crate::layers::observe::Observe<
        crate::layers::recovery::Recovery<
            crate::layers::auth::Auth<
                crate::layers::deadline::DeadlineService<
                    crate::layers::limit::Limit<crate::layers::compression::Compression<Handler>>,
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

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully. A second SIGTERM or SIGINT
    /// during shutdown exits the process at once (status 128 + the signal number), as an
    /// impatient operator at a terminal expects.
    pub async fn serve(self) -> Result<(), ServeError> {
        // Registered once, before serving: a second signal that comes right after the first
        // is not lost between two registrations.
        let mut signals = Signals::new();
        self.serve_until(async move {
            signals.next().await;
            tokio::spawn(async move {
                let signal = signals.next().await;
                tracing::warn!("second {signal:?} during shutdown: exiting now");
                std::process::exit(128 + signal.number());
            });
        })
        .await
    }

    /// Serves until `signal` completes, then shuts down gracefully:
    ///
    /// 1. every service reports `NOT_SERVING` and `/readyz` fails; from then on
    ///    [`Health::set_serving`] cannot report `SERVING` again;
    /// 2. shutdown hooks run (service-discovery deregistration), together at most
    ///    [`SHUTDOWN_HOOK_TIMEOUT`];
    /// 3. the drain delay passes while calls are still served, so the endpoint leaves load
    ///    balancers before it stops answering;
    /// 4. the listener closes, connections get GOAWAY (calls that raced it are still served), and
    ///    [`RequestContext::shutdown`](crate::RequestContext::shutdown) fires so long-lived
    ///    streams can end cleanly; in-flight calls may finish until the shutdown timeout, after
    ///    which their connections are closed;
    /// 5. telemetry is flushed, at most [`SHUTDOWN_HOOK_TIMEOUT`].
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
            shutdown,
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
            grpc_web = config.web_origins.enabled(),
            services = ?services,
            "serving"
        );
        let stop_accepting = CancellationToken::new();
        let origins = Arc::new(config.web_origins.clone());
        // One service stack per connection, carrying the connection's peer: cheaper than adding
        // it to every request's extensions.
        let make_service = move |peer: PeerInfo| {
            let grpc = chain.clone().for_peer(peer);
            let state = grpc.connection();
            let web = ServiceBuilder::new()
                .layer(cors.clone())
                .layer(tonic_web::GrpcWebLayer::new())
                .service(grpc.clone());
            (Dispatch { grpc, web, origins: origins.clone() }, state)
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
        stop_accepting.cancel();
        shutdown.fire();
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
            // Off the async threads (the exporter's connection runs on this runtime, which may
            // have only the thread running this future), and on a thread of its own rather
            // than the blocking pool: the runtime waits for blocking tasks when it is dropped,
            // which would unbound the flush.
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new().name("telemetry-flush".into()).spawn(move || {
                telemetry.shutdown();
                let _ = done_tx.send(());
            });
            match spawned {
                Ok(_) => {
                    if tokio::time::timeout(SHUTDOWN_HOOK_TIMEOUT, done_rx).await.is_err() {
                        tracing::warn!(
                            "flushing spans did not finish within {SHUTDOWN_HOOK_TIMEOUT:?}; exiting"
                        );
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot start the span flush"),
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

/// A signal that stops the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM (Kubernetes stopping the pod).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

impl Signal {
    /// The POSIX signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Terminate => 15,
            Signal::Interrupt => 2,
        }
    }
}

/// SIGTERM and SIGINT listeners, registered once.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term = signal(SignalKind::terminate())
                .map_err(|err| tracing::warn!(error = %err, "cannot listen for SIGTERM"))
                .ok();
            let int = signal(SignalKind::interrupt())
                .map_err(|err| tracing::warn!(error = %err, "cannot listen for SIGINT"))
                .ok();
            Signals { term, int }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let term = async {
                match self.term.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match self.int.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => {
                    tracing::info!("received SIGTERM");
                    Signal::Terminate
                }
                _ = int => {
                    tracing::info!("received SIGINT");
                    Signal::Interrupt
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Interrupt
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C), with the signal received.
pub async fn shutdown_signal() -> Signal {
    Signals::new().next().await
}
