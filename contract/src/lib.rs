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
    /// Comma-separated browser origins allowed to call over gRPC-Web: exact
    /// origins, `https://*.example.com` patterns ([`crate::web`]), or `*`.
    /// Unset: the runtime serves no gRPC-Web and no HTTP/1.1.
    pub const GRPC_WEB_ORIGINS: &str = "GRPC_WEB_ORIGINS";
    /// Comma-separated SPIFFE ID patterns ([`crate::spiffe`]) of the peers
    /// allowed to call, with mutual TLS. A peer outside the list gets
    /// `PERMISSION_DENIED`; unset means any certificate the CA bundle trusts.
    pub const GRPC_ALLOWED_PEERS: &str = "GRPC_ALLOWED_PEERS";
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
        /// Trace context propagators: `tracecontext`, `baggage`, `b3`,
        /// `b3multi`, `jaeger`, `none` (comma-separated).
        pub const OTEL_PROPAGATORS: &str = "OTEL_PROPAGATORS";
        /// OTLP transport: `grpc` or `http/protobuf`.
        pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
        /// Headers sent with every OTLP export, `key=value,key=value`.
        pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
        /// PEM file of CA certificates trusted for an `https://` collector.
        pub const OTEL_EXPORTER_OTLP_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
        /// `off` removes the gRPC reflection services; `on` (default) serves
        /// them.
        pub const GRPC_REFLECTION: &str = "GRPC_REFLECTION";
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
        GRPC_ALLOWED_PEERS,
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
    /// Gauge: NotAfter of the leaf certificate being served, in unix seconds
    /// (absent with `TLS_MODE=disabled`).
    pub const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
        "grpc_runtime_tls_certificate_expiry_timestamp_seconds";
    /// Counter: certificate reloads that found changed files, by `result`
    /// (`success` or `failure`).
    pub const TLS_RELOADS_TOTAL: &str = "grpc_runtime_tls_reloads_total";
    /// Counter: failed TLS handshakes, by `reason` (`timeout`, `error`,
    /// `identity`, `per_source_limit`).
    pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "grpc_runtime_tls_handshake_failures_total";

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

    /// Codes that mean the caller was wrong (or over its quota): they do not
    /// count against the service's availability SLO.
    pub const CLIENT_ERROR_CODES: &[&str] = &[
        "Canceled",
        "InvalidArgument",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unauthenticated",
    ];

    /// Codes that mean the service failed: they count against its
    /// availability SLO and its error-rate alert. The OpenTelemetry
    /// convention for gRPC server spans: exactly these six mark a server
    /// span as an error.
    pub const SERVER_ERROR_CODES: &[&str] =
        &["Unknown", "DeadlineExceeded", "Unimplemented", "Internal", "Unavailable", "DataLoss"];

    /// gRPC services the runtime serves itself, left out of error-rate and
    /// latency alerts: health `Watch` streams last for hours, and neither
    /// says anything about the application.
    pub const INFRASTRUCTURE_SERVICES: &[&str] = &[
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    /// A `grpc_code` regex matching [`SERVER_ERROR_CODES`], for PromQL
    /// (`grpc_code=~"..."`).
    pub fn server_error_code_regex() -> String {
        SERVER_ERROR_CODES.join("|")
    }
}

/// HTTP limits of the runtime's server that a proxy in front of it (the
/// gRPC-Web sidecar) applies too, so that a request the proxy accepts is one
/// the runtime accepts.
pub mod limits {
    /// Largest request header list (`SETTINGS_MAX_HEADER_LIST_SIZE`), bytes.
    pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
    /// Concurrent streams per HTTP/2 connection.
    pub const MAX_CONCURRENT_STREAMS: u32 = 100;
}

/// gRPC-Web: the CORS header lists and the grammar of allowed origins, shared
/// by the runtime (native mode) and the operator's Envoy configuration.
pub mod web {
    /// Request headers a browser may send (`Access-Control-Allow-Headers`).
    pub const ALLOW_HEADERS: [&str; 8] = [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
        "x-request-id",
        "x-tenant-id",
        "traceparent",
    ];
    /// Response headers a browser may read (`Access-Control-Expose-Headers`).
    pub const EXPOSE_HEADERS: [&str; 4] =
        ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"];

    /// Why an origin pattern is refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum OriginError {
        /// Not `scheme://host[:port]`.
        NotAnOrigin,
        /// The scheme is not `http` or `https`.
        Scheme,
        /// A path, query or fragment follows the host.
        HasPath,
        /// A `*` other than as the whole leftmost host label.
        Wildcard,
    }

    impl OriginError {
        /// A sentence for error messages.
        pub const fn reason(self) -> &'static str {
            match self {
                OriginError::NotAnOrigin => "not an origin (scheme://host[:port])",
                OriginError::Scheme => "the scheme must be http or https",
                OriginError::HasPath => "an origin has no path, query or fragment",
                OriginError::Wildcard => {
                    "a * may only be the whole leftmost host label, above at least two more (https://*.example.com)"
                }
            }
        }
    }

    /// Checks an allowed-origin entry: an exact origin
    /// (`https://app.example.com`, `http://localhost:3000`) or a wildcard
    /// pattern whose leftmost host label is `*` (`https://*.example.com`),
    /// which matches exactly one label, as in a TLS wildcard certificate:
    /// `https://a.example.com` but neither `https://example.com` nor
    /// `https://a.b.example.com`. The lone `*` (any origin) is handled by
    /// the callers, not here.
    pub fn check_origin_pattern(pattern: &str) -> Result<(), OriginError> {
        let (scheme, rest) = pattern.split_once("://").ok_or(OriginError::NotAnOrigin)?;
        if scheme != "http" && scheme != "https" {
            return Err(OriginError::Scheme);
        }
        if rest.contains(['/', '?', '#']) {
            return Err(OriginError::HasPath);
        }
        let host = host_of(rest);
        if host.is_empty() {
            return Err(OriginError::NotAnOrigin);
        }
        let (first, others) = match host.split_once('.') {
            Some((first, others)) => (first, others),
            None => (host, ""),
        };
        // A wildcard needs two labels under it: `*.com` would admit every
        // site of a top-level domain, `allowAnyOrigin` in disguise.
        if others.contains('*') || (first.contains('*') && (first != "*" || !others.contains('.'))) {
            return Err(OriginError::Wildcard);
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':' | '*');
        if !rest.chars().all(valid) {
            return Err(OriginError::NotAnOrigin);
        }
        Ok(())
    }

    /// The host part of `host[:port]` (IPv6 literals keep their brackets).
    fn host_of(authority: &str) -> &str {
        if authority.starts_with('[') {
            return authority.split_inclusive(']').next().unwrap_or(authority);
        }
        authority.split(':').next().unwrap_or(authority)
    }

    /// An RE2 regex matching exactly what [`origin_matches`] matches for a
    /// wildcard entry (`https://*.example.com`), for a proxy that matches
    /// origins by regex (Envoy's CORS policy); `None` for an exact entry.
    pub fn origin_regex(pattern: &str) -> Option<String> {
        let (scheme, rest) = pattern.split_once("://*.")?;
        let mut regex = format!("(?i)^{}://[a-z0-9-]+\\.", escape(scheme));
        regex.push_str(&escape(rest));
        regex.push('$');
        Some(regex)
    }

    fn escape(text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 4);
        for c in text.chars() {
            if !c.is_ascii_alphanumeric() && c != '-' {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    /// Whether `origin` (as a browser sends it) matches an entry that
    /// [`check_origin_pattern`] accepted. Scheme and host compare
    /// ASCII-case-insensitively, the port exactly.
    pub fn origin_matches(pattern: &str, origin: &str) -> bool {
        let Some((scheme, rest)) = pattern.split_once("://*.") else {
            return pattern.eq_ignore_ascii_case(origin);
        };
        let Some((origin_scheme, origin_rest)) = origin.split_once("://") else { return false };
        if !scheme.eq_ignore_ascii_case(origin_scheme) {
            return false;
        }
        // One label, a dot, then exactly the pattern's remainder (domain and port).
        match origin_rest.split_once('.') {
            Some((label, remainder)) => {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && remainder.eq_ignore_ascii_case(rest)
            }
            None => false,
        }
    }
}

/// SPIFFE IDs (`spiffe://<trust domain>/<path>`) and the patterns of
/// [`crate::env::GRPC_ALLOWED_PEERS`]: a `*` stands for exactly one whole path
/// segment, in any position (`spiffe://cluster.local/ns/shop/sa/*`,
/// `spiffe://cluster.local/ns/*/sa/*`). The trust domain is always literal.
pub mod spiffe {
    /// Longest SPIFFE ID, per the SPIFFE ID specification.
    pub const MAX_LEN: usize = 2048;

    /// Why a SPIFFE ID or pattern is refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SpiffeError {
        /// It does not start with `spiffe://`.
        Scheme,
        /// The trust domain is empty or has characters other than lower-case
        /// letters, digits, `.`, `-` and `_`.
        TrustDomain,
        /// A path segment is empty, `.` or `..`, or has characters other than
        /// letters, digits, `.`, `-` and `_`.
        Segment,
        /// A `*` that is not a whole path segment (or one in an ID).
        Wildcard,
        /// Longer than [`MAX_LEN`].
        TooLong,
    }

    impl SpiffeError {
        /// A sentence for error messages.
        pub const fn reason(self) -> &'static str {
            match self {
                SpiffeError::Scheme => "must start with spiffe://",
                SpiffeError::TrustDomain => {
                    "the trust domain must be non-empty lower-case letters, digits, '.', '-' or '_'"
                }
                SpiffeError::Segment => {
                    "every path segment must be non-empty letters, digits, '.', '-' or '_', and not . or .."
                }
                SpiffeError::Wildcard => "a * must be a whole path segment (…/ns/*/sa/*)",
                SpiffeError::TooLong => "longer than 2048 bytes",
            }
        }
    }

    fn split(id: &str) -> Result<(&str, &str), SpiffeError> {
        if id.len() > MAX_LEN {
            return Err(SpiffeError::TooLong);
        }
        let rest = id.strip_prefix("spiffe://").ok_or(SpiffeError::Scheme)?;
        let (domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let domain_ok = !domain.is_empty()
            && domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !domain_ok {
            return Err(SpiffeError::TrustDomain);
        }
        Ok((domain, path))
    }

    fn check_segment(segment: &str, wildcard_ok: bool) -> Result<(), SpiffeError> {
        if wildcard_ok && segment == "*" {
            return Ok(());
        }
        if segment.contains('*') {
            return Err(SpiffeError::Wildcard);
        }
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok { Ok(()) } else { Err(SpiffeError::Segment) }
    }

    /// Checks a SPIFFE ID against the SPIFFE ID specification.
    pub fn check_id(id: &str) -> Result<(), SpiffeError> {
        let (_, path) = split(id)?;
        if path.is_empty() {
            return Ok(());
        }
        path[1..].split('/').try_for_each(|s| check_segment(s, false))
    }

    /// Checks an allow-list pattern: a SPIFFE ID whose path segments may be `*`.
    pub fn check_pattern(pattern: &str) -> Result<(), SpiffeError> {
        let (_, path) = split(pattern)?;
        if path.is_empty() {
            return Ok(());
        }
        path[1..].split('/').try_for_each(|s| check_segment(s, true))
    }

    /// Whether a valid SPIFFE ID matches a pattern [`check_pattern`] accepted:
    /// same trust domain, same number of segments, each equal or `*`.
    pub fn pattern_matches(pattern: &str, id: &str) -> bool {
        let (Ok((p_domain, p_path)), Ok((domain, path))) = (split(pattern), split(id)) else {
            return false;
        };
        if p_domain != domain {
            return false;
        }
        let mut p = p_path.split('/');
        let mut s = path.split('/');
        loop {
            match (p.next(), s.next()) {
                (None, None) => return true,
                (Some(a), Some(b)) if a == b || (a == "*" && !b.is_empty()) => {}
                _ => return false,
            }
        }
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
    fn origin_patterns_match_one_leftmost_label_only() {
        use web::{OriginError, check_origin_pattern, origin_matches};
        assert_eq!(check_origin_pattern("https://app.example.com"), Ok(()));
        assert_eq!(check_origin_pattern("http://localhost:3000"), Ok(()));
        assert_eq!(check_origin_pattern("https://*.example.com"), Ok(()));
        assert_eq!(check_origin_pattern("https://*.example.com:8443"), Ok(()));
        assert_eq!(check_origin_pattern("app.example.com"), Err(OriginError::NotAnOrigin));
        assert_eq!(check_origin_pattern("ftp://a.com"), Err(OriginError::Scheme));
        assert_eq!(check_origin_pattern("https://a.com/x"), Err(OriginError::HasPath));
        assert_eq!(check_origin_pattern("https://a.*.com"), Err(OriginError::Wildcard));
        assert_eq!(check_origin_pattern("https://*"), Err(OriginError::Wildcard));
        assert_eq!(check_origin_pattern("https://x*.a.com"), Err(OriginError::Wildcard));
        assert_eq!(
            check_origin_pattern("https://*.com"),
            Err(OriginError::Wildcard),
            "a whole top-level domain"
        );
        assert_eq!(check_origin_pattern("https://*.com:443"), Err(OriginError::Wildcard));

        assert!(origin_matches("https://*.example.com", "https://app.example.com"));
        assert!(origin_matches("https://*.example.com", "HTTPS://App.Example.COM"));
        assert!(!origin_matches("https://*.example.com", "https://example.com"));
        assert!(!origin_matches("https://*.example.com", "https://a.b.example.com"));
        assert!(!origin_matches("https://*.example.com", "http://app.example.com"));
        assert!(!origin_matches("https://*.example.com", "https://app.example.com.evil.io"));
        assert!(!origin_matches("https://*.example.com", "https://app.example.com:8443"));
        assert!(origin_matches("https://*.example.com:8443", "https://app.example.com:8443"));
        assert!(!origin_matches("https://*.example.com", "https://evil.io/.example.com"));
        assert!(origin_matches("http://localhost:3000", "http://localhost:3000"));
        assert!(!origin_matches("http://localhost:3000", "http://localhost:3001"));
    }

    #[test]
    fn spiffe_patterns_match_whole_segments_in_any_position() {
        use spiffe::{SpiffeError, check_id, check_pattern, pattern_matches};
        let id = "spiffe://cluster.local/ns/shop/sa/orders";
        assert_eq!(check_id(id), Ok(()));
        assert_eq!(check_id("spiffe://cluster.local/ns/*/sa/x"), Err(SpiffeError::Wildcard));
        assert_eq!(check_id("https://cluster.local/ns/a"), Err(SpiffeError::Scheme));
        assert_eq!(check_id("spiffe://Cluster.local/ns/a"), Err(SpiffeError::TrustDomain));
        assert_eq!(check_id("spiffe://cluster.local/ns//a"), Err(SpiffeError::Segment));
        assert_eq!(check_id("spiffe://cluster.local/ns/../a"), Err(SpiffeError::Segment));
        assert_eq!(check_id("spiffe://cluster.local/ns/a/"), Err(SpiffeError::Segment));
        assert_eq!(check_pattern("spiffe://cluster.local/ns/*/sa/*"), Ok(()));
        assert_eq!(check_pattern("spiffe://cluster.local/ns/shop*/sa/x"), Err(SpiffeError::Wildcard));
        assert_eq!(check_pattern("spiffe://*/ns/a"), Err(SpiffeError::TrustDomain));

        assert!(pattern_matches("spiffe://cluster.local/ns/shop/sa/*", id));
        assert!(pattern_matches("spiffe://cluster.local/ns/*/sa/*", id));
        assert!(pattern_matches("spiffe://cluster.local/*/shop/sa/orders", id));
        assert!(pattern_matches(id, id));
        assert!(!pattern_matches("spiffe://cluster.local/ns/*", id), "* is one segment, not a prefix");
        assert!(!pattern_matches("spiffe://cluster.local/ns/shop/sa/*/x", id));
        assert!(!pattern_matches("spiffe://other.domain/ns/shop/sa/*", id));
        assert!(!pattern_matches("spiffe://cluster.local/ns/billing/sa/*", id));
    }

    #[test]
    fn reserved_names_are_unique() {
        let mut names = env::RESERVED.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), env::RESERVED.len());
    }
}
