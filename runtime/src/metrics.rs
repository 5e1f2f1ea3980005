//! Prometheus metrics with go-grpc-prometheus names and labels.
//!
//! Existing Grafana dashboards and alert rules for Go services match on these exact names,
//! labels and code spellings, so a Rust service drops into them unchanged. The names are public
//! constants because the operator generates its PrometheusRule alerts from them.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use tonic::Code;

use crate::codes::{ALL_CODES, code_label};
use crate::method::RpcKind;

/// Counter: RPCs started on the server.
pub const SERVER_STARTED_TOTAL: &str = grpc_contract::metrics::SERVER_STARTED_TOTAL;
/// Counter: RPCs completed on the server, regardless of success or failure.
pub const SERVER_HANDLED_TOTAL: &str = grpc_contract::metrics::SERVER_HANDLED_TOTAL;
/// Counter: stream messages received on the server.
pub const SERVER_MSG_RECEIVED_TOTAL: &str = grpc_contract::metrics::SERVER_MSG_RECEIVED_TOTAL;
/// Counter: stream messages sent by the server.
pub const SERVER_MSG_SENT_TOTAL: &str = grpc_contract::metrics::SERVER_MSG_SENT_TOTAL;
/// Histogram: time from the start of an RPC to its end (the last response message or status).
pub const SERVER_HANDLING_SECONDS: &str = grpc_contract::metrics::SERVER_HANDLING_SECONDS;
/// Counter: handler panics turned into `INTERNAL` (the go-grpc-middleware recovery name).
pub const PANICS_RECOVERED_TOTAL: &str = grpc_contract::metrics::PANICS_RECOVERED_TOTAL;

/// Label: the streaming kind, `unary`, `client_stream`, `server_stream` or `bidi_stream`.
pub const LABEL_TYPE: &str = grpc_contract::metrics::LABEL_TYPE;
/// Label: fully-qualified service name, e.g. `user.v1.UserService`.
pub const LABEL_SERVICE: &str = grpc_contract::metrics::LABEL_SERVICE;
/// Label: method name, e.g. `GetUser`.
pub const LABEL_METHOD: &str = grpc_contract::metrics::LABEL_METHOD;
/// Label: status code, spelled as Go spells it (`OK`, `NotFound`, `DeadlineExceeded`, …); see
/// grpc-go's `codes.Code.String()`.
pub const LABEL_CODE: &str = grpc_contract::metrics::LABEL_CODE;

/// `grpc_server_handling_seconds` buckets: Prometheus client_golang's `DefBuckets`, which
/// go-grpc-prometheus uses, so histogram_quantile over mixed Go and Rust fleets is consistent.
pub const HANDLING_SECONDS_BUCKETS: [f64; 11] = grpc_contract::metrics::HANDLING_SECONDS_BUCKETS;

/// The server's metric families, registered once per server.
#[derive(Debug, Clone)]
pub(crate) struct ServerMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    msg_received: IntCounterVec,
    msg_sent: IntCounterVec,
    handling: HistogramVec,
    pub(crate) panics: IntCounter,
}

/// One method's metric children, looked up once at startup so the request path only touches
/// atomics.
#[derive(Debug, Clone)]
pub(crate) struct MethodMetrics {
    pub(crate) started: IntCounter,
    handled: [IntCounter; 17],
    pub(crate) msg_received: IntCounter,
    pub(crate) msg_sent: IntCounter,
    pub(crate) handling: Histogram,
}

impl MethodMetrics {
    /// The `grpc_server_handled_total` child for `code`.
    pub(crate) fn handled(&self, code: Code) -> &IntCounter {
        // `Code as usize` is 0..=16 for every variant, the array's index range.
        &self.handled[code as usize]
    }
}

impl ServerMetrics {
    /// Creates the families and registers them.
    pub(crate) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let labels = [LABEL_TYPE, LABEL_SERVICE, LABEL_METHOD];
        let started = IntCounterVec::new(
            Opts::new(SERVER_STARTED_TOTAL, "Total number of RPCs started on the server."),
            &labels,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                SERVER_HANDLED_TOTAL,
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            &[LABEL_TYPE, LABEL_SERVICE, LABEL_METHOD, LABEL_CODE],
        )?;
        let msg_received = IntCounterVec::new(
            Opts::new(
                SERVER_MSG_RECEIVED_TOTAL,
                "Total number of RPC stream messages received on the server.",
            ),
            &labels,
        )?;
        let msg_sent = IntCounterVec::new(
            Opts::new(SERVER_MSG_SENT_TOTAL, "Total number of gRPC stream messages sent by the server."),
            &labels,
        )?;
        let handling = HistogramVec::new(
            HistogramOpts::new(
                SERVER_HANDLING_SECONDS,
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(HANDLING_SECONDS_BUCKETS.to_vec()),
            &labels,
        )?;
        let panics =
            IntCounter::new(PANICS_RECOVERED_TOTAL, "Total number of panics recovered in RPC handlers.")?;
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(msg_received.clone()))?;
        registry.register(Box::new(msg_sent.clone()))?;
        registry.register(Box::new(handling.clone()))?;
        registry.register(Box::new(panics.clone()))?;
        Ok(ServerMetrics { started, handled, msg_received, msg_sent, handling, panics })
    }

    /// Pre-creates every child of one method, including `handled` for all 17 codes (as
    /// go-grpc-prometheus's `InitializeMetrics` does), so `rate()` and absent-series alerts work
    /// from the first scrape.
    pub(crate) fn method(&self, kind: RpcKind, service: &str, method: &str) -> MethodMetrics {
        let labels = [kind.as_str(), service, method];
        let handled = ALL_CODES
            .map(|code| self.handled.with_label_values(&[kind.as_str(), service, method, code_label(code)]));
        MethodMetrics {
            started: self.started.with_label_values(&labels),
            handled,
            msg_received: self.msg_received.with_label_values(&labels),
            msg_sent: self.msg_sent.with_label_values(&labels),
            handling: self.handling.with_label_values(&labels),
        }
    }
}

/// Registers process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// open fds, start time) on Linux, where the prometheus crate can read `/proc`.
pub(crate) fn register_process_metrics(registry: &Registry) -> Result<(), prometheus::Error> {
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
    Ok(())
}

/// Renders a registry in the Prometheus text exposition format.
pub(crate) fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buffer = Vec::new();
    // TextEncoder only fails on a write error, and writing into a Vec cannot fail.
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}
