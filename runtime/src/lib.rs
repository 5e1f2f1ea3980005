//! # grpc-runtime
//!
//! A production gRPC server for services deployed by grpc-operator, on tonic 0.14: the Rust
//! counterpart of a Go "gRPC + Consul + Prometheus" service framework. It reads the operator's
//! workload contract (`docs/workload-contract.md`) from the environment and gives every service
//! the same interceptor chain, metrics, tracing, TLS, health and shutdown behaviour.
//!
//! ## Quick start
//!
//! ```text
//! use grpc_runtime::Server;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     Server::from_env()?                                   // GRPC_PORT, ADMIN_PORT, TLS_MODE, …
//!         .add_service(UserServiceServer::new(MyUsers::default()))
//!         .file_descriptor_set(user::FILE_DESCRIPTOR_SET)   // reflection + per-method metrics
//!         .bind()
//!         .await?
//!         .serve()                                          // until SIGTERM / SIGINT
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! `cargo run -p grpc-runtime --example user-service` runs a complete service
//! (`runtime/examples/user-service`), and `--example user-client` calls it.
//!
//! Every call then has, without further code: health (`grpc.health.v1`, per service and `""`),
//! reflection v1 and v1alpha, go-grpc-prometheus metrics on `ADMIN_PORT/metrics`, a trace span
//! continuing the caller's W3C `traceparent`, an access log line, deadline enforcement,
//! concurrency budgets and message size limits, and panic recovery; gRPC-Web with CORS when
//! `GRPC_WEB_ORIGINS` is set. Anything that is not gRPC (another content type, another method,
//! native gRPC over HTTP/1.1, a gRPC-Web call from an origin that is not allowed) is answered
//! with an HTTP error before any of it runs.
//!
//! ## Configuration
//!
//! From the environment ([`Config::from_env`]); [`Server::configure`] overrides anything. A bad
//! value fails startup with a [`ConfigError`] naming the variable and the reason.
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `GRPC_PORT` | `50051` | gRPC port (HTTP/2; HTTP/1.1 for gRPC-Web) |
//! | `ADMIN_PORT` | `9090` | admin HTTP port: `/metrics`, `/healthz`, `/readyz` |
//! | `TLS_MODE` | `disabled` | `disabled`, `server` (TLS) or `mutual` (client certificates required) |
//! | `TLS_DIR` | — | directory with `tls.crt`, `tls.key`, `ca.crt`; required unless TLS is disabled; reloaded on change (an expired or mismatched set is refused and the old one kept) |
//! | `GRPC_ALLOWED_PEERS` | unset (any certificate the CA trusts) | with `TLS_MODE=mutual`: comma-separated SPIFFE ID patterns allowed to call, `*` = one whole path segment (`spiffe://cluster.local/ns/shop/sa/*`); others get `PERMISSION_DENIED` |
//! | `GRPC_WEB_ORIGINS` | unset (no gRPC-Web, HTTP/2 only) | comma-separated browser origins allowed to call over gRPC-Web: exact, `https://*.example.com` (one label), or `*` |
//! | `GRPC_REFLECTION` | `on` | `off` removes the reflection services |
//! | `LOG_FORMAT` | `text` | `json` for one JSON object per line |
//! | `RUST_LOG` | `info` | log filter (`tracing_subscriber::EnvFilter` syntax) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset | OTLP collector URL, `http://` or `https://` (rustls with ring, the system's CAs); traces are exported only when set |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `grpc` | `grpc`, or `http/protobuf` (`/v1/traces` is appended to the endpoint) |
//! | `OTEL_EXPORTER_OTLP_HEADERS` | — | `key=value,…` (URL-encoded values) sent with every export; never logged |
//! | `OTEL_EXPORTER_OTLP_CERTIFICATE` | — | PEM file of extra CAs for an `https://` collector |
//! | `OTEL_PROPAGATORS` | `tracecontext,baggage` | any of `tracecontext`, `baggage`, `b3`, `b3multi`, `jaeger`, or `none`: callers instrumented with Zipkin or Jaeger keep their trace |
//! | `OTEL_SERVICE_NAME` | binary name | `service.name` resource attribute |
//! | `OTEL_RESOURCE_ATTRIBUTES` | — | `key=value,…` resource attributes |
//! | `OTEL_TRACES_SAMPLER` / `_ARG` | `parentbased_always_on` | sampler and its ratio |
//! | `SHUTDOWN_DRAIN_DELAY` | `5s` | after SIGTERM, keep serving while not ready so load balancers drop the endpoint |
//! | `SHUTDOWN_TIMEOUT` | `20s` | then in-flight calls get this long before their connections close |
//!
//! HTTP/2 and resource limits ([`Limits`]) and shutdown timing ([`ShutdownConfig`]) have
//! explicit, documented defaults and are set through [`Server::configure`]. [`Server::bind`]
//! validates the whole configuration, overrides included: a zero limit or an out-of-range
//! duration is a [`ConfigError`] naming the setting (`limits.max_concurrent_rpcs`), not a panic.
//! Listeners bind `[::]` dual-stack by default, falling back to IPv4 where IPv6 is off.
//!
//! ## Layer order
//!
//! Outermost first; see [`layers`] for why each sits where it does.
//!
//! 1. **context**: method lookup, `x-request-id` (generated when absent, echoed back even on
//!    errors), `x-tenant-id`, peer identity → [`RequestContext`] in the request extensions;
//! 2. **observe**: the RPC span (parent from `traceparent`, [`TraceContext`] in the extensions),
//!    `grpc_server_*` metrics with go-grpc-prometheus names ([`metrics`]) and the access log
//!    line, all from one observer of the response, so they agree on the final code;
//! 3. **recovery**: a panic becomes `INTERNAL`, counted in `grpc_req_panics_recovered_total`
//!    (and seen as `Internal` by the observer above);
//! 4. **auth**: the `GRPC_ALLOWED_PEERS` allow-list, then an [`Authenticator`]
//!    ([`MtlsAllowList`], [`BearerTokens`], or your own, which may await I/O) →
//!    `UNAUTHENTICATED` / `PERMISSION_DENIED`, [`Principal`] in the extensions; the health
//!    service is exempt;
//! 5. **deadline**: `grpc-timeout` or the server default → `DEADLINE_EXCEEDED`;
//! 6. **limits**: concurrency budgets (unary, streaming and health apart, and streaming calls
//!    per connection) → `RESOURCE_EXHAUSTED`; message sizes → `RESOURCE_EXHAUSTED`;
//! 7. **compression**: gzip in both directions when the client uses or accepts it;
//! 8. **your layers** ([`Server::layer`]): tower layers that see the principal and the deadline;
//! 9. your service.
//!
//! gRPC-Web requests pass through CORS and the tonic-web translation first; native gRPC skips
//! both.
//!
//! Handlers read the connection's peer from [`RequestContext::peer`]: the runtime accepts
//! connections itself (for TLS hot reload and draining), so tonic's `Request::remote_addr()`
//! and `peer_certs()` are not populated.
//!
//! ## Logs and traces
//!
//! `LOG_FORMAT=json` writes one JSON object per line: `timestamp`, `level`, `target`, the
//! event's fields, and inside an RPC its `trace_id`, `span_id` and `request_id`, so every line a
//! handler logs can be joined with the access line and the trace. The access log line (target
//! `grpc_runtime::access`, message `finished call`) has `grpc_service`, `grpc_method`,
//! `grpc_type`, `grpc_code`, `duration_us` (microseconds), `tenant_id` and `peer_address`; its level follows
//! the code (`info` for OK and client errors, `warn` for overload and timeouts, `error` for
//! server faults). `RUST_LOG=info,grpc_runtime::access=off` turns it off.
//!
//! The trace id is the caller's (W3C `traceparent`) or a new one. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, each RPC is an OpenTelemetry server span named
//! `package.Service/Method` with `rpc.system`, `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code`, exported over OTLP (gRPC or HTTP/protobuf, per
//! `OTEL_EXPORTER_OTLP_PROTOCOL`) and flushed at shutdown; without it, no spans are built (the
//! ids still reach logs and [`TraceContext`]).
//!
//! ## Shutdown
//!
//! On SIGTERM or SIGINT ([`BoundServer::serve`]): every service reports `NOT_SERVING` and
//! `/readyz` fails (and stays so: [`Health::set_serving`] cannot report `SERVING` again);
//! [`Server::on_shutdown`] hooks run (service-discovery deregistration; all together at most
//! 5 s); the drain delay passes while calls are still served; the listener closes, connections
//! get GOAWAY (calls that raced it are still served) and [`RequestContext::shutdown`] fires so
//! long-lived streams can end cleanly; in-flight calls may finish until the shutdown timeout,
//! then their connections are closed; spans are flushed (at most 5 s); `serve` returns `Ok`. A
//! second SIGTERM or SIGINT exits at once.
//! The operator sets the pod's `terminationGracePeriodSeconds` to cover all of it
//! (`grpc_contract::shutdown::termination_grace_seconds`).

//!
//! ## Migrating from grpc-go
//!
//! | grpc-go (with go-grpc-middleware v2, go-grpc-prometheus, otelgrpc) | grpc-runtime |
//! |---|---|
//! | `recovery.UnaryServerInterceptor` | built in: a panic is `INTERNAL`, counted in `grpc_req_panics_recovered_total` |
//! | `logging.UnaryServerInterceptor` with zap | built in: one JSON line per call, target `grpc_runtime::access`, level by code as `DefaultServerCodeToLevel` |
//! | `prometheus.NewServerMetrics(WithServerHandlingTimeHistogram())`, `grpc_prometheus` | built in, same names, labels, code spellings and buckets ([`metrics`]) on `ADMIN_PORT/metrics` |
//! | `otelgrpc.NewServerHandler()` | built in: the RPC span, exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set |
//! | `auth.UnaryServerInterceptor(authFunc)` | [`Server::authenticator`]; an [`Authenticator`] may await I/O ([`AuthDecision`]) |
//! | any other interceptor | [`Server::layer`]: a tower layer, after auth, deadline and limits |
//! | `grpc.MaxConcurrentStreams(n)` | `limits.max_concurrent_streams` |
//! | `grpc.MaxRecvMsgSize`, `grpc.MaxSendMsgSize` | `limits.max_decoding_message_size`, `max_encoding_message_size` |
//! | `keepalive.ServerParameters{MaxConnectionIdle, MaxConnectionAge, MaxConnectionAgeGrace, Time, Timeout}` | `limits.max_connection_idle`, `max_connection_age`, `max_connection_age_grace`, `keepalive_interval`, `keepalive_timeout` |
//! | `keepalive.EnforcementPolicy{MinTime}` | `limits.min_ping_interval` (GOAWAY `too_many_pings` on the third strike, as grpc-go); `PermitWithoutStream` is not distinguished |
//! | `grpc.ConnectionTimeout` | `limits.tls_handshake_timeout`, `limits.preface_timeout` |
//! | `import _ "google.golang.org/grpc/encoding/gzip"` | built in: gzip accepted and sent when the client asks |
//! | `health.NewServer()` | built in; [`BoundServer::health`] sets statuses |
//! | `reflection.Register(s)` | built in (`GRPC_REFLECTION=off` removes it) |
//! | `credentials.NewTLS` with `RequireAndVerifyClientCert` | `TLS_MODE=mutual`, `TLS_DIR` (reloaded on rotation), `GRPC_ALLOWED_PEERS` |
//! | `peer.FromContext(ctx)` | [`RequestContext::peer`] |
//! | `metadata.FromIncomingContext(ctx)` | `request.metadata()` (tonic) |
//! | `s.GracefulStop()` on SIGTERM | [`BoundServer::serve`]: NOT_SERVING, drain delay, GOAWAY, timeout, exit |
//! | `GRPC_GO_LOG_SEVERITY_LEVEL` | `RUST_LOG` |
//! | `OTEL_*` variables | the same names |
//! | `grpc_server_started_total`, `grpc_server_handled_total`, `grpc_server_msg_received_total`, `grpc_server_msg_sent_total`, `grpc_server_handling_seconds` | the same series; dashboards and alerts keep working |

// Every public item is documented: the crate is the contract's other side.
#![deny(missing_docs)]

pub(crate) mod admin;
pub mod auth;
pub(crate) mod codes;
pub mod config;
mod connection;
mod dispatch;
pub(crate) mod frames;
mod h2_policy;
pub mod health;
pub mod layers;
mod logging;
pub mod method;
pub mod metrics;
pub mod propagation;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use auth::{
    AuthDecision, AuthError, AuthMethod, AuthRequest, Authenticator, BearerTokens, MtlsAllowList, Principal,
};
pub use config::{AllowedPeers, Config, ConfigError, Limits, LogFormat, ShutdownConfig, WebOrigins};
pub use health::Health;
pub use layers::context::{RequestContext, ShutdownSignal};
pub use layers::deadline::Deadline;
pub use layers::trace::{Baggage, TraceContext};
pub use layers::user::HandlerService;
pub use server::{BoundServer, ServeError, Server, Signal};
pub use telemetry::Telemetry;
pub use tls::{PeerIdentity, PeerInfo, TlsMode};

/// Re-exported so services and the runtime agree on one tonic.
pub use tonic;
