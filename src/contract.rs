//! The workload contract: what the operator provides to every pod it runs and
//! the `grpc-runtime` crate reads. `docs/workload-contract.md` is the prose form
//! of this module; the two must agree.

/// Port the gRPC server listens on (h2c, or TLS once `TLS_MODE` is set).
pub const ENV_GRPC_PORT: &str = "GRPC_PORT";
/// Port of the admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
pub const ENV_ADMIN_PORT: &str = "ADMIN_PORT";
/// Pod name, from the downward API.
pub const ENV_POD_NAME: &str = "POD_NAME";
/// Pod namespace, from the downward API.
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
/// Pod IP, from the downward API.
pub const ENV_POD_IP: &str = "POD_IP";
/// OpenTelemetry service name: the GrpcService name.
pub const ENV_OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// OpenTelemetry resource attributes (`k8s.namespace.name`, `k8s.pod.name`).
pub const ENV_OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// Log format; the operator always sets `json`.
pub const ENV_LOG_FORMAT: &str = "LOG_FORMAT";

/// Variables the operator owns. A `GrpcService` may not set them in `spec.env`:
/// the runtime would read a value that disagrees with the ports, probes and
/// Service the operator generated. Later contract additions (TLS, gRPC-Web,
/// Consul, OTLP endpoint) are reserved up front so that adding them to the
/// operator never silently overrides a user's value.
pub const RESERVED_ENV: &[&str] = &[
    ENV_GRPC_PORT,
    ENV_ADMIN_PORT,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_POD_IP,
    ENV_OTEL_SERVICE_NAME,
    ENV_OTEL_RESOURCE_ATTRIBUTES,
    ENV_LOG_FORMAT,
    "TLS_MODE",
    "TLS_DIR",
    "GRPC_WEB_ORIGINS",
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN_FILE",
];

/// Path of the admin liveness endpoint (process alive).
pub const LIVENESS_PATH: &str = "/healthz";
/// Path of the admin readiness endpoint (every service SERVING).
pub const READINESS_PATH: &str = "/readyz";
/// Path of the Prometheus endpoint on the admin port.
pub const METRICS_PATH: &str = "/metrics";
/// Name of the gRPC container and Service port.
pub const GRPC_PORT_NAME: &str = "grpc";
/// Name of the admin container and Service port.
pub const ADMIN_PORT_NAME: &str = "admin";
