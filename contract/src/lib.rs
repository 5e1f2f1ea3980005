//! The workload contract: what grpc-operator provides to every pod it runs for
//! a `GrpcService`, and what `grpc-runtime` reads. Both sides use these
//! constants, so a renamed variable, file or metric is a compile error on the
//! side that was not updated rather than a silent mismatch in production.
//! `docs/workload-contract.md` is the prose form of this crate.
//!
//! No dependencies: this crate is linked by the operator and by every service.

#![forbid(unsafe_code)]

/// Environment variables, and their defaults when unset.
pub mod env {
    /// Port the gRPC server listens on (h2c, or TLS when `TLS_MODE` is set).
    pub const GRPC_PORT: &str = "GRPC_PORT";
    /// Port of the admin HTTP server: [`crate::admin`] paths.
    pub const ADMIN_PORT: &str = "ADMIN_PORT";
    /// Pod name, from the downward API.
    pub const POD_NAME: &str = "POD_NAME";
    /// Pod namespace, from the downward API.
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// Pod IP, from the downward API.
    pub const POD_IP: &str = "POD_IP";
    /// OpenTelemetry `service.name`: the GrpcService name.
    pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    /// OpenTelemetry resource attributes, `key=value,key=value`.
    pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    /// `json` or `text`; the operator always sets `json`.
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    /// `disabled`, `server` or `mutual`.
    pub const TLS_MODE: &str = "TLS_MODE";
    /// Directory of the mounted certificate Secret: [`crate::tls`] file names.
    pub const TLS_DIR: &str = "TLS_DIR";
    /// Comma-separated browser origins allowed to call over gRPC-Web, or `*`.
    pub const GRPC_WEB_ORIGINS: &str = "GRPC_WEB_ORIGINS";
    /// Consul agent address.
    pub const CONSUL_HTTP_ADDR: &str = "CONSUL_HTTP_ADDR";
    /// Path of the mounted Consul ACL token.
    pub const CONSUL_HTTP_TOKEN_FILE: &str = "CONSUL_HTTP_TOKEN_FILE";
    /// How long the workload keeps serving after SIGTERM while reporting not
    /// ready (`500ms`, `5s`, `1m`).
    pub const SHUTDOWN_DRAIN_DELAY: &str = "SHUTDOWN_DRAIN_DELAY";
    /// How long in-flight calls may run after the listener closes.
    pub const SHUTDOWN_TIMEOUT: &str = "SHUTDOWN_TIMEOUT";

    /// Not set by the operator; a user may set them in `spec.env`.
    pub mod user {
        /// A tracing `EnvFilter` directive, e.g. `info,grpc_runtime=debug`.
        pub const RUST_LOG: &str = "RUST_LOG";
        /// OTLP/gRPC collector; traces are exported only when set.
        pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
        /// OpenTelemetry sampler name.
        pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
        /// Ratio of the `*traceidratio` samplers.
        pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    }

    /// Default of [`GRPC_PORT`].
    pub const DEFAULT_GRPC_PORT: u16 = 50051;
    /// Default of [`ADMIN_PORT`].
    pub const DEFAULT_ADMIN_PORT: u16 = 9090;
    /// Default of [`SHUTDOWN_DRAIN_DELAY`], in milliseconds.
    pub const DEFAULT_SHUTDOWN_DRAIN_DELAY_MS: u64 = 5_000;
    /// Default of [`SHUTDOWN_TIMEOUT`], in milliseconds.
    pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 20_000;

    /// Variables the operator owns. A GrpcService may not set them in
    /// `spec.env`: the runtime would read a value that disagrees with the
    /// ports, probes and Service the operator generated. Names of later
    /// capabilities are reserved up front so that adding them to the operator
    /// never silently overrides a user's value.
    pub const RESERVED: &[&str] = &[
        GRPC_PORT,
        ADMIN_PORT,
        POD_NAME,
        POD_NAMESPACE,
        POD_IP,
        OTEL_SERVICE_NAME,
        OTEL_RESOURCE_ATTRIBUTES,
        LOG_FORMAT,
        TLS_MODE,
        TLS_DIR,
        GRPC_WEB_ORIGINS,
        CONSUL_HTTP_ADDR,
        CONSUL_HTTP_TOKEN_FILE,
        SHUTDOWN_DRAIN_DELAY,
        SHUTDOWN_TIMEOUT,
    ];
}

/// Shutdown timing the pod's `terminationGracePeriodSeconds` must cover.
pub mod shutdown {
    /// Longest the shutdown hooks (service-discovery deregistration) may run
    /// together, and longest the telemetry flush may run.
    pub const HOOK_TIMEOUT_MS: u64 = 5_000;
    /// What the runtime spends after in-flight calls end: every hook, then the
    /// telemetry flush, each bounded by [`HOOK_TIMEOUT_MS`].
    pub const FLUSH_AND_HOOKS_BUDGET_MS: u64 = 2 * HOOK_TIMEOUT_MS;
    /// Margin the operator adds on top, for the kubelet's SIGKILL timing and
    /// process exit.
    pub const GRACE_MARGIN_MS: u64 = 5_000;

    /// `SHUTDOWN_DRAIN_DELAY` when unset; must parse to
    /// [`crate::env::DEFAULT_SHUTDOWN_DRAIN_DELAY_MS`].
    pub const DEFAULT_DRAIN_DELAY: &str = "5s";
    /// `SHUTDOWN_TIMEOUT` when unset; must parse to
    /// [`crate::env::DEFAULT_SHUTDOWN_TIMEOUT_MS`].
    pub const DEFAULT_TIMEOUT: &str = "20s";

    /// Longest accepted `SHUTDOWN_DRAIN_DELAY` or `SHUTDOWN_TIMEOUT`: one hour.
    pub const MAX_DURATION_MS: u64 = 3_600_000;

    /// Why a duration was refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DurationError {
        /// Not `<integer><unit>` with unit `ms`, `s` or `m`.
        Malformed,
        /// Longer than [`MAX_DURATION_MS`].
        TooLong,
    }

    impl DurationError {
        /// What was wrong, for an error message.
        pub const fn reason(self) -> &'static str {
            match self {
                Self::Malformed => "must be a duration such as 500ms, 5s or 1m",
                Self::TooLong => "must be at most 1h",
            }
        }
    }

    /// Parses `SHUTDOWN_DRAIN_DELAY` / `SHUTDOWN_TIMEOUT`: `<integer><unit>`
    /// with unit `ms`, `s` or `m` (a Go-style subset), at most one hour, in
    /// milliseconds. The operator validates `spec.shutdown` with this same
    /// function, so a value it accepts is one the runtime accepts.
    pub fn parse_duration_ms(value: &str) -> Result<u64, DurationError> {
        let v = value.trim();
        let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
        let (digits, unit) = v.split_at(split);
        let n: u64 = digits.parse().map_err(|_| DurationError::Malformed)?;
        let ms = match unit {
            "ms" => n,
            "s" => n.saturating_mul(1_000),
            "m" => n.saturating_mul(60_000),
            _ => return Err(DurationError::Malformed),
        };
        if ms > MAX_DURATION_MS { Err(DurationError::TooLong) } else { Ok(ms) }
    }

    /// The pod's `terminationGracePeriodSeconds` for a drain delay and a
    /// timeout: both, plus [`FLUSH_AND_HOOKS_BUDGET_MS`], plus
    /// [`GRACE_MARGIN_MS`], rounded up to whole seconds.
    pub const fn termination_grace_seconds(drain_delay_ms: u64, timeout_ms: u64) -> u64 {
        let total = drain_delay_ms + timeout_ms + FLUSH_AND_HOOKS_BUDGET_MS + GRACE_MARGIN_MS;
        total.div_ceil(1000)
    }
}

/// File names inside `TLS_DIR` (the keys of a `kubernetes.io/tls` Secret).
pub mod tls {
    /// The workload certificate chain, PEM.
    pub const CERT_FILE: &str = "tls.crt";
    /// The private key, PEM.
    pub const KEY_FILE: &str = "tls.key";
    /// The trusted CA bundle, PEM (several CAs during a rotation).
    pub const CA_FILE: &str = "ca.crt";
}

/// The admin HTTP server on `ADMIN_PORT`.
pub mod admin {
    /// 200 while the process is alive (liveness probe).
    pub const LIVENESS_PATH: &str = "/healthz";
    /// 200 when every registered gRPC service is SERVING (readiness probe).
    pub const READINESS_PATH: &str = "/readyz";
    /// Prometheus text exposition.
    pub const METRICS_PATH: &str = "/metrics";
    /// Name of the gRPC container and Service port.
    pub const GRPC_PORT_NAME: &str = "grpc";
    /// Name of the admin container and Service port.
    pub const ADMIN_PORT_NAME: &str = "admin";
}

/// Metric and label names the runtime emits (go-grpc-prometheus names, so
/// dashboards and alerts of Go services keep working); the operator builds
/// its ServiceMonitor and PrometheusRule from them.
pub mod metrics {
    /// Counter: RPCs started on the server.
    pub const SERVER_STARTED_TOTAL: &str = "grpc_server_started_total";
    /// Counter: RPCs completed on the server, regardless of success or failure.
    pub const SERVER_HANDLED_TOTAL: &str = "grpc_server_handled_total";
    /// Counter: stream messages received on the server.
    pub const SERVER_MSG_RECEIVED_TOTAL: &str = "grpc_server_msg_received_total";
    /// Counter: stream messages sent by the server.
    pub const SERVER_MSG_SENT_TOTAL: &str = "grpc_server_msg_sent_total";
    /// Histogram: time from the start of an RPC to its end.
    pub const SERVER_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
    /// Counter: handler panics turned into `INTERNAL`.
    pub const PANICS_RECOVERED_TOTAL: &str = "grpc_req_panics_recovered_total";

    /// Label: `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub const LABEL_TYPE: &str = "grpc_type";
    /// Label: fully-qualified service name, e.g. `user.v1.UserService`.
    pub const LABEL_SERVICE: &str = "grpc_service";
    /// Label: method name, e.g. `GetUser`.
    pub const LABEL_METHOD: &str = "grpc_method";
    /// Label: status code, spelled as Go spells it (`OK`, `Canceled`, …).
    pub const LABEL_CODE: &str = "grpc_code";

    /// `grpc_server_handling_seconds` buckets: client_golang's `DefBuckets`,
    /// which go-grpc-prometheus uses.
    pub const HANDLING_SECONDS_BUCKETS: [f64; 11] =
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

    /// Every `grpc_code` value, in numeric order of the codes.
    pub const ALL_CODES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];

    /// Codes that mean the caller was wrong: they do not count against the
    /// service's availability SLO.
    pub const CLIENT_ERROR_CODES: &[&str] = &[
        "Canceled",
        "InvalidArgument",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unauthenticated",
    ];

    /// Codes that mean the service failed: they count against its
    /// availability SLO.
    pub const SERVER_ERROR_CODES: &[&str] = &[
        "Unknown",
        "DeadlineExceeded",
        "ResourceExhausted",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
    ];

    /// A `grpc_code` regex matching [`SERVER_ERROR_CODES`], for PromQL
    /// (`grpc_code=~"..."`).
    pub fn server_error_code_regex() -> String {
        SERVER_ERROR_CODES.join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_ok_a_client_error_or_a_server_error_exactly_once() {
        for code in metrics::ALL_CODES {
            let classes = usize::from(code == "OK")
                + usize::from(metrics::CLIENT_ERROR_CODES.contains(&code))
                + usize::from(metrics::SERVER_ERROR_CODES.contains(&code));
            assert_eq!(classes, 1, "{code}");
        }
    }

    #[test]
    fn grace_period_covers_drain_timeout_hooks_and_margin() {
        assert_eq!(shutdown::termination_grace_seconds(5_000, 20_000), 40);
        assert_eq!(shutdown::termination_grace_seconds(0, 1), 16);
    }

    #[test]
    fn durations_parse_like_the_runtime_documents_them() {
        use shutdown::{DurationError, parse_duration_ms};
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("60m"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("61m"), Err(DurationError::TooLong));
        assert_eq!(parse_duration_ms("5"), Err(DurationError::Malformed));
        assert_eq!(parse_duration_ms("1h"), Err(DurationError::Malformed));
        assert_eq!(parse_duration_ms("s"), Err(DurationError::Malformed));
    }

    #[test]
    fn default_durations_agree_with_their_millisecond_values() {
        assert_eq!(
            shutdown::parse_duration_ms(shutdown::DEFAULT_DRAIN_DELAY),
            Ok(env::DEFAULT_SHUTDOWN_DRAIN_DELAY_MS)
        );
        assert_eq!(
            shutdown::parse_duration_ms(shutdown::DEFAULT_TIMEOUT),
            Ok(env::DEFAULT_SHUTDOWN_TIMEOUT_MS)
        );
    }

    #[test]
    fn reserved_names_are_unique() {
        let mut names = env::RESERVED.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), env::RESERVED.len());
    }
}
