//! Configuration from the workload contract's environment variables, with typed errors.
//!
//! The operator sets these variables (see `docs/workload-contract.md`); locally every one has a
//! default that serves plaintext on the contract ports. A bad value is a startup error naming
//! the variable and what was wrong with it, never a silent fallback.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::tls::TlsMode;

/// `GRPC_PORT`: the gRPC port (h2c, or TLS when `TLS_MODE` is not `disabled`).
pub const ENV_GRPC_PORT: &str = grpc_contract::env::GRPC_PORT;
/// `ADMIN_PORT`: the admin HTTP port serving `/metrics`, `/healthz`, `/readyz`.
pub const ENV_ADMIN_PORT: &str = grpc_contract::env::ADMIN_PORT;
/// `TLS_MODE`: `disabled`, `server` or `mutual`.
pub const ENV_TLS_MODE: &str = grpc_contract::env::TLS_MODE;
/// `TLS_DIR`: directory holding `tls.crt`, `tls.key` and `ca.crt` (the mounted Secret).
pub const ENV_TLS_DIR: &str = grpc_contract::env::TLS_DIR;
/// `GRPC_WEB_ORIGINS`: comma-separated browser origins allowed to call over gRPC-Web.
pub const ENV_GRPC_WEB_ORIGINS: &str = grpc_contract::env::GRPC_WEB_ORIGINS;
/// `LOG_FORMAT`: `json` or `text`.
pub const ENV_LOG_FORMAT: &str = grpc_contract::env::LOG_FORMAT;
/// `RUST_LOG`: a tracing `EnvFilter` directive, e.g. `info,grpc_runtime=debug`.
pub const ENV_RUST_LOG: &str = grpc_contract::env::user::RUST_LOG;
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP/gRPC collector; traces are exported only when set.
pub const ENV_OTEL_ENDPOINT: &str = grpc_contract::env::user::OTEL_EXPORTER_OTLP_ENDPOINT;
/// `OTEL_SERVICE_NAME`: the `service.name` resource attribute.
pub const ENV_OTEL_SERVICE_NAME: &str = grpc_contract::env::OTEL_SERVICE_NAME;
/// `OTEL_RESOURCE_ATTRIBUTES`: extra resource attributes, `key=value,key=value`.
pub const ENV_OTEL_RESOURCE_ATTRIBUTES: &str = grpc_contract::env::OTEL_RESOURCE_ATTRIBUTES;
/// `OTEL_TRACES_SAMPLER`: `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
/// `parentbased_always_off` or `parentbased_traceidratio`.
pub const ENV_OTEL_TRACES_SAMPLER: &str = grpc_contract::env::user::OTEL_TRACES_SAMPLER;
/// `OTEL_TRACES_SAMPLER_ARG`: the ratio for the `*traceidratio` samplers, in `[0, 1]`.
pub const ENV_OTEL_TRACES_SAMPLER_ARG: &str = grpc_contract::env::user::OTEL_TRACES_SAMPLER_ARG;
/// `OTEL_PROPAGATORS`: `tracecontext`, `baggage`, `b3`, `b3multi`, `jaeger` or `none`,
/// comma-separated. Default `tracecontext,baggage`.
pub const ENV_OTEL_PROPAGATORS: &str = grpc_contract::env::user::OTEL_PROPAGATORS;
/// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (default) or `http/protobuf`.
pub const ENV_OTEL_EXPORTER_OTLP_PROTOCOL: &str = grpc_contract::env::user::OTEL_EXPORTER_OTLP_PROTOCOL;
/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value,…` sent with every export (URL-encoded values).
pub const ENV_OTEL_EXPORTER_OTLP_HEADERS: &str = grpc_contract::env::user::OTEL_EXPORTER_OTLP_HEADERS;
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`: a PEM file of CA certificates trusted for an `https://`
/// collector, in addition to the system's.
pub const ENV_OTEL_EXPORTER_OTLP_CERTIFICATE: &str = grpc_contract::env::user::OTEL_EXPORTER_OTLP_CERTIFICATE;

/// `GRPC_ALLOWED_PEERS`: comma-separated SPIFFE ID patterns of the peers allowed to call (mutual
/// TLS); a `*` stands for one whole path segment.
pub const ENV_GRPC_ALLOWED_PEERS: &str = grpc_contract::env::GRPC_ALLOWED_PEERS;
/// `GRPC_REFLECTION`: `off` removes the reflection services; `on` (default) serves them.
pub const ENV_GRPC_REFLECTION: &str = grpc_contract::env::user::GRPC_REFLECTION;

/// `SHUTDOWN_DRAIN_DELAY`: how long to keep serving after SIGTERM while reporting not ready
/// (`500ms`, `5s`, `1m`).
pub const ENV_SHUTDOWN_DRAIN_DELAY: &str = grpc_contract::env::SHUTDOWN_DRAIN_DELAY;
/// `SHUTDOWN_TIMEOUT`: how long in-flight calls may run after the listener closes.
pub const ENV_SHUTDOWN_TIMEOUT: &str = grpc_contract::env::SHUTDOWN_TIMEOUT;

/// Default gRPC port of the workload contract.
pub const DEFAULT_GRPC_PORT: u16 = grpc_contract::env::DEFAULT_GRPC_PORT;
/// Default admin port of the workload contract.
pub const DEFAULT_ADMIN_PORT: u16 = grpc_contract::env::DEFAULT_ADMIN_PORT;

/// A configuration value that cannot be used: which variable, the offending value (for
/// variables that never hold secrets) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or builder setting) at fault.
    pub variable: &'static str,
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(variable: &'static str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError { variable, value: value.to_string(), reason: reason.into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines (the default outside Kubernetes).
    #[default]
    Text,
    /// One JSON object per line, for log collectors (what the operator sets).
    Json,
}

/// Trace sampling, from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Sampler {
    /// Sample everything.
    AlwaysOn,
    /// Sample nothing.
    AlwaysOff,
    /// Sample this fraction of traces by trace id.
    TraceIdRatio(f64),
    /// Follow the caller's sampling decision; root spans use the inner sampler.
    ParentBased(ParentRoot),
}

/// The root-span sampler of [`Sampler::ParentBased`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ParentRoot {
    /// Sample every root span.
    AlwaysOn,
    /// Sample no root span.
    AlwaysOff,
    /// Sample this fraction of root spans.
    TraceIdRatio(f64),
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// OTLP/gRPC (the endpoint is the collector's gRPC address, usually port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`/v1/traces` is appended to the endpoint, usually port
    /// 4318).
    HttpProtobuf,
}

/// Headers sent with every OTLP export. They often carry credentials, so `Debug` shows only
/// their names.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct OtlpHeaders(pub Vec<(String, String)>);

impl std::fmt::Debug for OtlpHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(k, _)| format!("{k}=<redacted>"))).finish()
    }
}

/// OpenTelemetry settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OtelConfig {
    /// OTLP endpoint, e.g. `http://otel-collector:4317` (gRPC) or `https://collector:4318`
    /// (HTTP); `None` disables export (spans are still created, so trace ids reach logs and are
    /// propagated).
    pub endpoint: Option<String>,
    /// The OTLP transport.
    pub protocol: OtlpProtocol,
    /// Headers sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: OtlpHeaders,
    /// Extra CA certificates (PEM file) for an `https://` endpoint.
    pub certificate: Option<PathBuf>,
    /// The propagators that extract the caller's trace context (and inject it in outgoing
    /// calls through the global propagator).
    pub propagators: Vec<crate::propagation::Propagator>,
    /// `service.name`; defaults to the binary name.
    pub service_name: Option<String>,
    /// Extra resource attributes.
    pub resource_attributes: Vec<(String, String)>,
    /// Sampler; the OpenTelemetry default is parent-based always-on.
    pub sampler: Sampler,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            headers: OtlpHeaders::default(),
            certificate: None,
            propagators: vec![
                crate::propagation::Propagator::TraceContext,
                crate::propagation::Propagator::Baggage,
            ],
            service_name: None,
            resource_attributes: Vec::new(),
            sampler: Sampler::ParentBased(ParentRoot::AlwaysOn),
        }
    }
}

/// Which browser origins may call over gRPC-Web. gRPC-Web, and HTTP/1.1 with it, is served only
/// when this is not [`WebOrigins::None`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WebOrigins {
    /// No gRPC-Web at all: the server speaks HTTP/2 only.
    #[default]
    None,
    /// Any origin (`GRPC_WEB_ORIGINS=*`).
    Any,
    /// These origins: exact (`scheme://host[:port]`, lower case) or wildcard patterns whose
    /// leftmost host label is `*` (`https://*.example.com`, one label).
    List(Vec<String>),
}

impl WebOrigins {
    /// Whether gRPC-Web is served.
    pub fn enabled(&self) -> bool {
        !matches!(self, WebOrigins::None)
    }

    /// Whether a browser's `Origin` header value is allowed.
    pub fn allows(&self, origin: &[u8]) -> bool {
        match self {
            WebOrigins::None => false,
            WebOrigins::Any => true,
            WebOrigins::List(list) => std::str::from_utf8(origin)
                .is_ok_and(|o| list.iter().any(|p| grpc_contract::web::origin_matches(p, o))),
        }
    }
}

/// The peers allowed to call, from `GRPC_ALLOWED_PEERS`: SPIFFE ID patterns, checked against
/// the verified client certificate's SPIFFE ID. A peer outside the list gets
/// `PERMISSION_DENIED`; a call without a client certificate `UNAUTHENTICATED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPeers(Vec<String>);

impl AllowedPeers {
    /// Parses a comma-separated list of patterns (see [`grpc_contract::spiffe`]).
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let mut patterns = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            grpc_contract::spiffe::check_pattern(item).map_err(|e| {
                ConfigError::new(ENV_GRPC_ALLOWED_PEERS, value, format!("{item:?}: {}", e.reason()))
            })?;
            patterns.push(item.to_string());
        }
        if patterns.is_empty() {
            return Err(ConfigError::new(ENV_GRPC_ALLOWED_PEERS, value, "lists no SPIFFE ID"));
        }
        Ok(AllowedPeers(patterns))
    }

    /// The patterns.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    /// Whether a SPIFFE ID is allowed.
    pub fn allows(&self, spiffe_id: &str) -> bool {
        self.0.iter().any(|p| grpc_contract::spiffe::pattern_matches(p, spiffe_id))
    }
}

/// HTTP/2 and resource limits. Every value is explicit because the library defaults differ
/// between gRPC implementations and some of tonic's are unset (unbounded). Change them through
/// [`crate::Server::configure`]; new limits will be added, so the struct is `non_exhaustive`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection. Default 100, the value the
    /// HTTP/2 RFC recommends as a minimum and most proxies use.
    pub max_concurrent_streams: u32,
    /// Unary RPCs in flight across all connections before new ones are shed with
    /// `RESOURCE_EXHAUSTED`. Default 1024.
    pub max_concurrent_rpcs: usize,
    /// Streaming RPCs (client, server or bidi) in flight across all connections, a budget
    /// apart from unary calls so long-lived streams cannot starve them. Default 1024.
    pub max_concurrent_streaming_rpcs: usize,
    /// Unary calls to `grpc.health.v1.Health` (`Check`, which probes and load balancers call
    /// without credentials) in flight, a budget apart from the others. Default 256.
    pub max_concurrent_health_rpcs: usize,
    /// Health `Watch` streams open (they need no credentials and last), a budget apart from
    /// `Check`'s, so open streams can never shut out a probe. Default 1024.
    pub max_concurrent_health_watches: usize,
    /// Streaming calls (health `Watch` included) one connection may hold; less than
    /// `max_concurrent_streams`, so unary calls always find room on every connection.
    /// Default (`None`) half of `max_concurrent_streams`.
    pub max_streaming_rpcs_per_connection: Option<usize>,
    /// HTTP/2 PING interval on idle connections. Default 60 s.
    pub keepalive_interval: Duration,
    /// How long to wait for a PING ack before closing. Default 20 s.
    pub keepalive_timeout: Duration,
    /// Connections are gracefully closed (GOAWAY) after this age so clients re-resolve and load
    /// spreads over new pods. Default 30 min.
    pub max_connection_age: Duration,
    /// After `max_connection_age`, in-flight calls get this long before the connection is cut.
    /// Default 5 min.
    pub max_connection_age_grace: Duration,
    /// A connection with no call in flight for this long is closed with GOAWAY (grpc-go's
    /// `MaxConnectionIdle`). Default 5 min.
    pub max_connection_idle: Duration,
    /// A plaintext connection must send its first bytes within this, and every connection its
    /// first request within `tls_handshake_timeout` + this. Default 10 s.
    pub preface_timeout: Duration,
    /// TLS handshakes in progress from one source address; more are closed at once. The
    /// loopback addresses 127.0.0.1 and ::1 are exempt: a sidecar proxy connects from there.
    /// Default 16.
    pub max_handshakes_per_source: usize,
    /// Keepalive enforcement, as grpc-go's `keepalive.EnforcementPolicy.MinTime`: a client PING
    /// sooner than this after its previous one is a strike (strikes reset when the server sends
    /// headers or data), and the third strike ends the connection with GOAWAY
    /// `ENHANCE_YOUR_CALM` / `too_many_pings`. Default 5 min, grpc-go's; `None` turns the
    /// HTTP/2 frame policy off (the control-frame budget too).
    pub min_ping_interval: Option<Duration>,
    /// SETTINGS and PRIORITY frames a client may send per 10 s before GOAWAY
    /// `ENHANCE_YOUR_CALM`. Default 100.
    pub max_control_frames: u32,
    /// Hold off a source address whose connection ended in GOAWAY `ENHANCE_YOUR_CALM` (1 s,
    /// doubling per repeat, at most 60 s; its new connections are held open unread), so an
    /// attacker that reconnects at once cannot make the server redo handshakes. An IPv6 source
    /// is its /64. Default true.
    pub penalize_abuse: bool,
    /// Exempt the whole loopback range (127.0.0.0/8, ::1) from the per-source protections
    /// (handshake cap, penalty box): a sidecar proxy connects from there on behalf of every
    /// client (Istio's from 127.0.0.6). `false` exempts only 127.0.0.1 and ::1 (tests use
    /// another loopback address as an outside client). Default true.
    pub exempt_all_loopback: bool,
    /// Largest request message accepted; larger ones fail with `RESOURCE_EXHAUSTED` (as in
    /// grpc-go). Default 4 MiB, the gRPC default.
    pub max_decoding_message_size: usize,
    /// Largest response message sent; a larger one ends the call with `RESOURCE_EXHAUSTED`.
    /// Default 4 MiB.
    pub max_encoding_message_size: usize,
    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`: request metadata bigger than this is refused.
    /// Default 16 KiB.
    pub max_header_list_size: u32,
    /// Remotely reset streams allowed to queue before the connection is closed with
    /// `ENHANCE_YOUR_CALM`: the HTTP/2 rapid-reset (CVE-2023-44487) bound. Default 20.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server itself may reset for protocol errors before closing the connection:
    /// the bound against "MadeYouReset" (CVE-2025-8671). tonic passes "unlimited" unless set.
    /// Default 1024.
    pub max_local_error_reset_streams: usize,
    /// A TLS handshake must finish within this. Default 5 s.
    pub tls_handshake_timeout: Duration,
    /// Deadline applied to unary and client-streaming calls that send no `grpc-timeout`.
    /// `None` means no server default. Default 30 s. Server- and bidi-streaming calls without a
    /// client deadline run until the client, the handler or shutdown ends them.
    pub default_deadline: Option<Duration>,
}

impl Limits {
    /// [`Limits::max_streaming_rpcs_per_connection`], its default resolved.
    pub fn streaming_rpcs_per_connection(&self) -> usize {
        self.max_streaming_rpcs_per_connection.unwrap_or((self.max_concurrent_streams as usize / 2).max(1))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_streams: grpc_contract::limits::MAX_CONCURRENT_STREAMS,
            max_concurrent_rpcs: 1024,
            max_concurrent_streaming_rpcs: 1024,
            max_concurrent_health_rpcs: 256,
            max_concurrent_health_watches: 1024,
            max_streaming_rpcs_per_connection: None,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(5 * 60),
            max_connection_idle: Duration::from_secs(5 * 60),
            preface_timeout: Duration::from_secs(10),
            max_handshakes_per_source: 16,
            min_ping_interval: Some(Duration::from_secs(5 * 60)),
            max_control_frames: 100,
            penalize_abuse: true,
            exempt_all_loopback: true,
            max_decoding_message_size: 4 << 20,
            max_encoding_message_size: 4 << 20,
            max_header_list_size: grpc_contract::limits::MAX_HEADER_LIST_BYTES,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            tls_handshake_timeout: Duration::from_secs(5),
            default_deadline: Some(Duration::from_secs(30)),
        }
    }
}

/// Graceful-shutdown timing. The defaults fit the Kubernetes default 30 s grace period:
/// 5 s drain delay + 20 s for in-flight calls + telemetry flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// After SIGTERM, keep serving (but report not ready) this long so the endpoint leaves
    /// load balancers before the listener closes. Default 5 s.
    pub drain_delay: Duration,
    /// In-flight calls get this long to finish after the listener closes; what remains is
    /// cancelled. Default 20 s.
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_delay: Duration::from_millis(grpc_contract::env::DEFAULT_SHUTDOWN_DRAIN_DELAY_MS),
            timeout: Duration::from_millis(grpc_contract::env::DEFAULT_SHUTDOWN_TIMEOUT_MS),
        }
    }
}

/// Everything the server reads from the environment, after validation. Start from
/// [`Config::default`] or [`Config::from_env`] and change fields; new settings will be added,
/// so the struct is `non_exhaustive`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Address of the gRPC listener. Default `[::]:GRPC_PORT`, dual-stack (IPv6 and IPv4),
    /// falling back to `0.0.0.0` where IPv6 is off.
    pub grpc_addr: SocketAddr,
    /// Address of the admin listener. Default `[::]:ADMIN_PORT`, dual-stack like the gRPC one.
    pub admin_addr: SocketAddr,
    /// TLS mode.
    pub tls_mode: TlsMode,
    /// Directory of `tls.crt`, `tls.key`, `ca.crt`; required unless TLS is disabled.
    pub tls_dir: Option<PathBuf>,
    /// How often the TLS files are checked for rotation. Default 2 s.
    pub tls_reload_interval: Duration,
    /// gRPC-Web CORS origins.
    pub web_origins: WebOrigins,
    /// SPIFFE ID patterns of the peers allowed to call (`GRPC_ALLOWED_PEERS`); `None` allows any
    /// certificate the CA bundle trusts.
    pub allowed_peers: Option<AllowedPeers>,
    /// Whether the reflection services are served (`GRPC_REFLECTION`). Default true.
    pub reflection: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directive (`RUST_LOG`). Default `info`.
    pub log_filter: String,
    /// OpenTelemetry settings.
    pub otel: OtelConfig,
    /// HTTP/2 and resource limits.
    pub limits: Limits,
    /// Shutdown timing.
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        Config {
            grpc_addr: SocketAddr::new(any, DEFAULT_GRPC_PORT),
            admin_addr: SocketAddr::new(any, DEFAULT_ADMIN_PORT),
            tls_mode: TlsMode::Disabled,
            tls_dir: None,
            tls_reload_interval: Duration::from_secs(2),
            web_origins: WebOrigins::None,
            allowed_peers: None,
            reflection: true,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            otel: OtelConfig::default(),
            limits: Limits::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup` (a variable name to its value), so tests and
    /// embedders need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = Config::default();
        if let Some(v) = get(ENV_GRPC_PORT) {
            config.grpc_addr.set_port(parse_port(ENV_GRPC_PORT, &v)?);
        }
        if let Some(v) = get(ENV_ADMIN_PORT) {
            config.admin_addr.set_port(parse_port(ENV_ADMIN_PORT, &v)?);
        }
        if config.grpc_addr.port() == config.admin_addr.port() {
            return Err(ConfigError::new(
                ENV_ADMIN_PORT,
                &config.admin_addr.port().to_string(),
                format!("must differ from {ENV_GRPC_PORT}"),
            ));
        }
        if let Some(v) = get(ENV_TLS_MODE) {
            config.tls_mode = v
                .trim()
                .parse()
                .map_err(|_| ConfigError::new(ENV_TLS_MODE, &v, "must be one of disabled, server, mutual"))?;
        }
        config.tls_dir = get(ENV_TLS_DIR).map(PathBuf::from);
        if config.tls_mode != TlsMode::Disabled && config.tls_dir.is_none() {
            return Err(ConfigError::new(
                ENV_TLS_DIR,
                "",
                format!("must be set when {ENV_TLS_MODE}={}", config.tls_mode.as_str()),
            ));
        }
        if let Some(v) = get(ENV_GRPC_WEB_ORIGINS) {
            config.web_origins = parse_origins(&v)?;
        }
        if let Some(v) = get(ENV_GRPC_ALLOWED_PEERS) {
            config.allowed_peers = Some(AllowedPeers::parse(&v)?);
        }
        if let Some(v) = get(ENV_GRPC_REFLECTION) {
            config.reflection = match v.trim() {
                "on" => true,
                "off" => false,
                _ => return Err(ConfigError::new(ENV_GRPC_REFLECTION, &v, "must be on or off")),
            };
        }
        if let Some(v) = get(ENV_LOG_FORMAT) {
            config.log_format = match v.trim() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => return Err(ConfigError::new(ENV_LOG_FORMAT, &v, "must be json or text")),
            };
        }
        if let Some(v) = get(ENV_RUST_LOG) {
            tracing_subscriber::EnvFilter::try_new(&v)
                .map_err(|e| ConfigError::new(ENV_RUST_LOG, &v, format!("not a valid filter: {e}")))?;
            config.log_filter = v;
        }
        if let Some(v) = get(ENV_OTEL_ENDPOINT) {
            let uri: http::Uri = v
                .trim()
                .parse()
                .map_err(|e| ConfigError::new(ENV_OTEL_ENDPOINT, &v, format!("not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(ConfigError::new(
                    ENV_OTEL_ENDPOINT,
                    &v,
                    "must be an http:// or https:// URL with a host, e.g. http://otel-collector:4317",
                ));
            }
            config.otel.endpoint = Some(v.trim().to_string());
        }
        if let Some(v) = get(ENV_OTEL_EXPORTER_OTLP_PROTOCOL) {
            config.otel.protocol = match v.trim() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::HttpProtobuf,
                _ => {
                    return Err(ConfigError::new(
                        ENV_OTEL_EXPORTER_OTLP_PROTOCOL,
                        &v,
                        "must be grpc or http/protobuf",
                    ));
                }
            };
        }
        if let Some(v) = get(ENV_OTEL_EXPORTER_OTLP_HEADERS) {
            config.otel.headers = parse_otlp_headers(&v)?;
        }
        config.otel.certificate = get(ENV_OTEL_EXPORTER_OTLP_CERTIFICATE).map(|s| PathBuf::from(s.trim()));
        if let Some(v) = get(ENV_OTEL_PROPAGATORS) {
            config.otel.propagators = parse_propagators(&v)?;
        }
        config.otel.service_name = get(ENV_OTEL_SERVICE_NAME).map(|s| s.trim().to_string());
        if let Some(v) = get(ENV_OTEL_RESOURCE_ATTRIBUTES) {
            config.otel.resource_attributes = parse_resource_attributes(&v)?;
        }
        if let Some(v) = get(ENV_SHUTDOWN_DRAIN_DELAY) {
            config.shutdown.drain_delay = parse_duration(ENV_SHUTDOWN_DRAIN_DELAY, &v)?;
        }
        if let Some(v) = get(ENV_SHUTDOWN_TIMEOUT) {
            config.shutdown.timeout = parse_duration(ENV_SHUTDOWN_TIMEOUT, &v)?;
        }
        config.otel.sampler = parse_sampler(get(ENV_OTEL_TRACES_SAMPLER), get(ENV_OTEL_TRACES_SAMPLER_ARG))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the whole configuration, builder overrides included ([`crate::Server::bind`] calls
    /// it): what the environment parser checks, plus every limit and duration. A setting of the
    /// builder is named by its field path, e.g. `limits.max_concurrent_rpcs`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.grpc_addr.port() != 0 && self.grpc_addr.port() == self.admin_addr.port() {
            return Err(ConfigError::new(
                ENV_ADMIN_PORT,
                &self.admin_addr.port().to_string(),
                format!("must differ from {ENV_GRPC_PORT}"),
            ));
        }
        if self.tls_mode != TlsMode::Disabled && self.tls_dir.is_none() {
            return Err(ConfigError::new(
                ENV_TLS_DIR,
                "",
                format!("must be set when {ENV_TLS_MODE}={}", self.tls_mode.as_str()),
            ));
        }
        if self.allowed_peers.is_some() && self.tls_mode != TlsMode::Mutual {
            return Err(ConfigError::new(
                ENV_GRPC_ALLOWED_PEERS,
                "",
                format!("needs {ENV_TLS_MODE}=mutual: without client certificates no peer has a SPIFFE ID"),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_filter).map_err(|e| {
            ConfigError::new(ENV_RUST_LOG, &self.log_filter, format!("not a valid filter: {e}"))
        })?;
        for (key, value) in &self.otel.headers.0 {
            let valid = http::HeaderName::from_bytes(key.as_bytes()).is_ok()
                && !key.ends_with("-bin")
                && http::HeaderValue::from_str(value).is_ok();
            if !valid {
                return Err(ConfigError::new(
                    ENV_OTEL_EXPORTER_OTLP_HEADERS,
                    "<redacted>",
                    format!("header {key:?} is not a valid text header"),
                ));
            }
        }
        if let Some(endpoint) = &self.otel.endpoint {
            let uri: Result<http::Uri, _> = endpoint.parse();
            if !uri.is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()) {
                return Err(ConfigError::new(
                    ENV_OTEL_ENDPOINT,
                    endpoint,
                    "must be an http:// or https:// URL with a host",
                ));
            }
        }
        let ratio = match self.otel.sampler {
            Sampler::TraceIdRatio(r) | Sampler::ParentBased(ParentRoot::TraceIdRatio(r)) => Some(r),
            _ => None,
        };
        if ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err(ConfigError::new(
                ENV_OTEL_TRACES_SAMPLER_ARG,
                &format!("{ratio:?}"),
                "must be between 0 and 1",
            ));
        }
        if let WebOrigins::List(list) = &self.web_origins {
            for origin in list {
                grpc_contract::web::check_origin_pattern(origin)
                    .map_err(|e| ConfigError::new(ENV_GRPC_WEB_ORIGINS, origin, e.reason()))?;
            }
        }
        let l = &self.limits;
        let positive: [(&'static str, usize); 12] = [
            ("limits.max_concurrent_streams", l.max_concurrent_streams as usize),
            ("limits.max_concurrent_rpcs", l.max_concurrent_rpcs),
            ("limits.max_concurrent_streaming_rpcs", l.max_concurrent_streaming_rpcs),
            ("limits.max_concurrent_health_rpcs", l.max_concurrent_health_rpcs),
            ("limits.max_concurrent_health_watches", l.max_concurrent_health_watches),
            ("limits.max_streaming_rpcs_per_connection", l.streaming_rpcs_per_connection()),
            ("limits.max_decoding_message_size", l.max_decoding_message_size),
            ("limits.max_encoding_message_size", l.max_encoding_message_size),
            ("limits.max_handshakes_per_source", l.max_handshakes_per_source),
            ("limits.max_control_frames", l.max_control_frames as usize),
            ("limits.max_pending_accept_reset_streams", l.max_pending_accept_reset_streams),
            ("limits.max_local_error_reset_streams", l.max_local_error_reset_streams),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(field, "0", "must be at least 1"));
            }
        }
        // tokio's semaphores hold at most usize::MAX >> 3 permits.
        for (field, value) in &positive[1..6] {
            if *value > MAX_BUDGET {
                return Err(ConfigError::new(
                    field,
                    &value.to_string(),
                    format!("must be at most {MAX_BUDGET}"),
                ));
            }
        }
        if l.streaming_rpcs_per_connection() >= l.max_concurrent_streams as usize
            && l.max_concurrent_streams > 1
        {
            return Err(ConfigError::new(
                "limits.max_streaming_rpcs_per_connection",
                &l.streaming_rpcs_per_connection().to_string(),
                format!(
                    "must be less than limits.max_concurrent_streams ({}), so unary calls always find room",
                    l.max_concurrent_streams
                ),
            ));
        }
        if l.max_header_list_size < 1024 {
            return Err(ConfigError::new(
                "limits.max_header_list_size",
                &l.max_header_list_size.to_string(),
                "must be at least 1024 bytes",
            ));
        }
        let durations: [(&'static str, Duration, Duration, Duration); 11] = [
            ("limits.keepalive_interval", l.keepalive_interval, Duration::from_secs(1), MAX_LONG),
            ("limits.keepalive_timeout", l.keepalive_timeout, Duration::from_millis(100), MAX_SHORT),
            ("limits.max_connection_age", l.max_connection_age, Duration::from_secs(1), MAX_LONG),
            ("limits.max_connection_age_grace", l.max_connection_age_grace, Duration::ZERO, MAX_LONG),
            ("limits.max_connection_idle", l.max_connection_idle, Duration::from_secs(1), MAX_LONG),
            ("limits.preface_timeout", l.preface_timeout, Duration::from_millis(100), MAX_SHORT),
            ("limits.tls_handshake_timeout", l.tls_handshake_timeout, Duration::from_millis(100), MAX_SHORT),
            ("tls_reload_interval", self.tls_reload_interval, Duration::from_millis(10), MAX_SHORT),
            (ENV_SHUTDOWN_DRAIN_DELAY, self.shutdown.drain_delay, Duration::ZERO, MAX_SHUTDOWN),
            (ENV_SHUTDOWN_TIMEOUT, self.shutdown.timeout, Duration::ZERO, MAX_SHUTDOWN),
            (
                "limits.default_deadline",
                l.default_deadline.unwrap_or(Duration::from_secs(1)),
                Duration::from_millis(1),
                MAX_LONG,
            ),
        ];
        for (field, value, min, max) in durations {
            if value < min || value > max {
                return Err(ConfigError::new(
                    field,
                    &format!("{value:?}"),
                    format!("must be between {min:?} and {max:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// Largest concurrency budget accepted.
const MAX_BUDGET: usize = 1 << 24;
/// Longest timeout of the handshake and ping kind.
const MAX_SHORT: Duration = Duration::from_secs(10 * 60);
/// Longest connection lifetime setting: a week.
const MAX_LONG: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest shutdown phase: the contract's bound on its durations.
const MAX_SHUTDOWN: Duration = Duration::from_millis(grpc_contract::shutdown::MAX_DURATION_MS);

fn parse_port(variable: &'static str, value: &str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u16>() {
        Ok(0) => Err(ConfigError::new(variable, value, "must be between 1 and 65535")),
        Ok(port) => Ok(port),
        Err(_) => Err(ConfigError::new(variable, value, "must be a port number between 1 and 65535")),
    }
}

/// A duration as `<integer><unit>` with unit `ms`, `s` or `m`, at most 1h: the contract's
/// parser, which the operator validates `spec.shutdown` with.
fn parse_duration(variable: &'static str, value: &str) -> Result<Duration, ConfigError> {
    grpc_contract::shutdown::parse_duration_ms(value)
        .map(Duration::from_millis)
        .map_err(|e| ConfigError::new(variable, value, e.reason()))
}

fn parse_origins(value: &str) -> Result<WebOrigins, ConfigError> {
    let items: Vec<&str> = value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items == ["*"] {
        return Ok(WebOrigins::Any);
    }
    let mut origins = Vec::with_capacity(items.len());
    for item in items {
        if item == "*" {
            return Err(ConfigError::new(ENV_GRPC_WEB_ORIGINS, value, "`*` must be the only entry"));
        }
        grpc_contract::web::check_origin_pattern(item).map_err(|e| {
            ConfigError::new(ENV_GRPC_WEB_ORIGINS, value, format!("{item:?}: {}", e.reason()))
        })?;
        origins.push(item.to_ascii_lowercase());
    }
    Ok(WebOrigins::List(origins))
}

fn parse_propagators(value: &str) -> Result<Vec<crate::propagation::Propagator>, ConfigError> {
    let names: Vec<&str> = value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if names == ["none"] {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in names {
        let Some(p) = crate::propagation::Propagator::parse(name) else {
            return Err(ConfigError::new(
                ENV_OTEL_PROPAGATORS,
                value,
                format!("{name:?} is not one of tracecontext, baggage, b3, b3multi, jaeger, none (alone)"),
            ));
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// `key=value,…` with URL-encoded values (the OpenTelemetry specification's format). Errors
/// name the entry's position, never its content: these headers carry credentials.
fn parse_otlp_headers(value: &str) -> Result<OtlpHeaders, ConfigError> {
    let redacted = |reason: String| ConfigError::new(ENV_OTEL_EXPORTER_OTLP_HEADERS, "<redacted>", reason);
    let mut out = Vec::new();
    for (index, pair) in value.split(',').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
        let Some((key, val)) = pair.split_once('=') else {
            return Err(redacted(format!("entry #{} is not key=value", index + 1)));
        };
        let key = key.trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(key.as_bytes()).is_err() {
            return Err(redacted(format!("entry #{} has an invalid header name", index + 1)));
        }
        let val = percent_decode(val.trim())
            .ok_or_else(|| redacted(format!("entry #{} has a bad %-escape", index + 1)))?;
        if http::HeaderValue::from_str(&val).is_err() {
            return Err(redacted(format!("entry #{} has an invalid header value", index + 1)));
        }
        out.push((key, val));
    }
    Ok(OtlpHeaders(out))
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_resource_attributes(value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for pair in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((key, val)) = pair.split_once('=') else {
            return Err(ConfigError::new(
                ENV_OTEL_RESOURCE_ATTRIBUTES,
                value,
                format!("{pair:?} is not key=value"),
            ));
        };
        if key.trim().is_empty() {
            return Err(ConfigError::new(
                ENV_OTEL_RESOURCE_ATTRIBUTES,
                value,
                format!("{pair:?} has an empty key"),
            ));
        }
        out.push((key.trim().to_string(), val.trim().to_string()));
    }
    Ok(out)
}

fn parse_sampler(sampler: Option<String>, arg: Option<String>) -> Result<Sampler, ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        match &arg {
            None => Ok(1.0),
            Some(a) => match a.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => {
                    Err(ConfigError::new(ENV_OTEL_TRACES_SAMPLER_ARG, a, "must be a number between 0 and 1"))
                }
            },
        }
    };
    let Some(name) = sampler else {
        return Ok(Sampler::ParentBased(ParentRoot::AlwaysOn));
    };
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(ParentRoot::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(ParentRoot::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(ParentRoot::TraceIdRatio(ratio()?)),
        _ => {
            return Err(ConfigError::new(
                ENV_OTEL_TRACES_SAMPLER,
                &name,
                "must be one of always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off, parentbased_traceidratio",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn an_empty_environment_gives_the_contract_defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.grpc_addr.port(), 50051);
        assert_eq!(c.admin_addr.port(), 9090);
        assert_eq!(c.tls_mode, TlsMode::Disabled);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.web_origins, WebOrigins::None);
        assert_eq!(c.otel.endpoint, None);
    }

    #[test]
    fn the_contract_variables_are_read() {
        let c = config(&[
            ("GRPC_PORT", "6000"),
            ("ADMIN_PORT", "6001"),
            ("TLS_MODE", "mutual"),
            ("TLS_DIR", "/etc/tls"),
            ("GRPC_WEB_ORIGINS", "https://app.example.com, http://localhost:3000"),
            ("LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SERVICE_NAME", "user-service"),
            ("OTEL_RESOURCE_ATTRIBUTES", "k8s.namespace.name=prod,k8s.pod.name=user-0"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("SHUTDOWN_DRAIN_DELAY", "500ms"),
            ("SHUTDOWN_TIMEOUT", "1m"),
        ])
        .unwrap();
        assert_eq!((c.grpc_addr.port(), c.admin_addr.port()), (6000, 6001));
        assert_eq!(c.tls_mode, TlsMode::Mutual);
        assert_eq!(c.tls_dir, Some(PathBuf::from("/etc/tls")));
        assert_eq!(
            c.web_origins,
            WebOrigins::List(vec!["https://app.example.com".into(), "http://localhost:3000".into()])
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.otel.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(c.otel.resource_attributes.len(), 2);
        assert_eq!(c.otel.sampler, Sampler::ParentBased(ParentRoot::TraceIdRatio(0.25)));
        assert_eq!(
            c.shutdown,
            ShutdownConfig { drain_delay: Duration::from_millis(500), timeout: Duration::from_secs(60) }
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_the_reason() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[("GRPC_PORT", "http")], "GRPC_PORT", "port number"),
            (&[("GRPC_PORT", "0")], "GRPC_PORT", "between 1 and 65535"),
            (&[("ADMIN_PORT", "70000")], "ADMIN_PORT", "port number"),
            (&[("GRPC_PORT", "9090")], "ADMIN_PORT", "must differ"),
            (&[("TLS_MODE", "on")], "TLS_MODE", "disabled, server, mutual"),
            (&[("TLS_MODE", "server")], "TLS_DIR", "must be set"),
            (&[("GRPC_WEB_ORIGINS", "app.example.com")], "GRPC_WEB_ORIGINS", "not an origin"),
            (&[("GRPC_WEB_ORIGINS", "https://a.com/path")], "GRPC_WEB_ORIGINS", "no path"),
            (&[("GRPC_WEB_ORIGINS", "*,https://a.com")], "GRPC_WEB_ORIGINS", "only entry"),
            (&[("GRPC_WEB_ORIGINS", "https://a.*.com")], "GRPC_WEB_ORIGINS", "leftmost host label"),
            (
                &[("GRPC_ALLOWED_PEERS", "spiffe://td/ns/*/sa/*")],
                "GRPC_ALLOWED_PEERS",
                "needs TLS_MODE=mutual",
            ),
            (
                &[("TLS_MODE", "mutual"), ("TLS_DIR", "/t"), ("GRPC_ALLOWED_PEERS", "spiffe://td/ns/a*")],
                "GRPC_ALLOWED_PEERS",
                "whole path segment",
            ),
            (
                &[("TLS_MODE", "mutual"), ("TLS_DIR", "/t"), ("GRPC_ALLOWED_PEERS", " , ")],
                "GRPC_ALLOWED_PEERS",
                "lists no SPIFFE ID",
            ),
            (&[("GRPC_REFLECTION", "no")], "GRPC_REFLECTION", "on or off"),
            (&[("OTEL_PROPAGATORS", "tracecontext,xray")], "OTEL_PROPAGATORS", "not one of"),
            (&[("OTEL_PROPAGATORS", "none,b3")], "OTEL_PROPAGATORS", "not one of"),
            (
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "grpc or http/protobuf",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret,broken")],
                "OTEL_EXPORTER_OTLP_HEADERS",
                "entry #2",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret%zz")],
                "OTEL_EXPORTER_OTLP_HEADERS",
                "%-escape",
            ),
            (&[("LOG_FORMAT", "yaml")], "LOG_FORMAT", "json or text"),
            (&[("SHUTDOWN_DRAIN_DELAY", "5")], "SHUTDOWN_DRAIN_DELAY", "such as 500ms"),
            (&[("SHUTDOWN_TIMEOUT", "2h")], "SHUTDOWN_TIMEOUT", "such as 500ms"),
            (&[("SHUTDOWN_TIMEOUT", "120m")], "SHUTDOWN_TIMEOUT", "at most 1h"),
            (&[("RUST_LOG", "info,[")], "RUST_LOG", "not a valid filter"),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http:// or https://",
            ),
            (&[("OTEL_RESOURCE_ATTRIBUTES", "a=b,oops")], "OTEL_RESOURCE_ATTRIBUTES", "not key=value"),
            (&[("OTEL_TRACES_SAMPLER", "sometimes")], "OTEL_TRACES_SAMPLER", "must be one of"),
            (
                &[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")],
                "OTEL_TRACES_SAMPLER_ARG",
                "between 0 and 1",
            ),
        ];
        for (vars, variable, reason) in cases {
            let err = config(vars).unwrap_err();
            assert_eq!(err.variable, *variable, "{vars:?}");
            assert!(err.reason.contains(reason), "{vars:?}: {err}");
            assert!(err.to_string().starts_with(variable), "{err}");
        }
    }

    #[test]
    fn allowed_peers_origins_and_reflection_are_read() {
        let c = config(&[
            ("TLS_MODE", "mutual"),
            ("TLS_DIR", "/t"),
            ("GRPC_ALLOWED_PEERS", "spiffe://cluster.local/ns/shop/sa/*, spiffe://cluster.local/ns/*/sa/api"),
            ("GRPC_WEB_ORIGINS", "https://*.Example.com"),
            ("GRPC_REFLECTION", "off"),
        ])
        .unwrap();
        let peers = c.allowed_peers.unwrap();
        assert!(peers.allows("spiffe://cluster.local/ns/shop/sa/orders"));
        assert!(peers.allows("spiffe://cluster.local/ns/billing/sa/api"));
        assert!(!peers.allows("spiffe://cluster.local/ns/billing/sa/worker"));
        assert!(c.web_origins.allows(b"https://app.example.com"));
        assert!(!c.web_origins.allows(b"https://example.com"));
        assert!(!c.reflection);
        assert!(config(&[]).unwrap().reflection);
        assert_eq!(config(&[]).unwrap().grpc_addr.ip(), std::net::Ipv6Addr::UNSPECIFIED);
    }

    #[test]
    fn otlp_settings_and_propagators_are_read_and_header_values_never_shown() {
        use crate::propagation::Propagator;
        let c = config(&[
            ("OTEL_PROPAGATORS", "b3multi, jaeger, tracecontext, b3multi"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20s3cret,x-tenant=a"),
        ])
        .unwrap();
        assert_eq!(
            c.otel.propagators,
            vec![Propagator::B3Multi, Propagator::Jaeger, Propagator::TraceContext]
        );
        assert_eq!(c.otel.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otel.headers.0[0], ("authorization".to_string(), "Bearer s3cret".to_string()));
        assert!(!format!("{c:?}").contains("s3cret"));
        let err = config(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=s3cret,b")]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(config(&[("OTEL_PROPAGATORS", "none")]).unwrap().otel.propagators.is_empty());
    }

    #[test]
    fn a_lone_star_allows_any_origin() {
        assert_eq!(config(&[("GRPC_WEB_ORIGINS", "*")]).unwrap().web_origins, WebOrigins::Any);
    }
}
