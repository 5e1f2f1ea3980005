//! Operator metrics, served on the admin port. Every label has a bounded set
//! of values (outcomes, steps, error classes, kinds), never error text. The
//! one per-object series is the certificate expiry gauge, labelled with the
//! GrpcService's namespace and name (bounded by the objects, like
//! kube-state-metrics), removed when the object or its TLS goes away.

use std::sync::{Arc, Mutex};

use crate::api::GrpcService;
use crate::health::Health;
use crate::reconcile::memory::Queued;
use kube::runtime::reflector::Store;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// What scrape-time gauges are computed from.
    views: Arc<Mutex<Views>>,
    /// GrpcServices by the status of their Ready condition.
    pub grpc_services: IntGaugeVec,
    /// Reconciles running now.
    pub running: IntGauge,
    /// Objects waiting for a triggered reconcile.
    pub queue_depth: IntGauge,
    /// Reconcile runs by outcome.
    pub reconciles: IntCounterVec,
    /// Failed reconciles by pipeline step and error class.
    pub failures: IntCounterVec,
    /// Reconcile duration by outcome.
    pub duration: HistogramVec,
    /// Objects the operator manages, by kind.
    pub managed: IntGaugeVec,
    /// Write requests sent for child objects, by kind.
    pub child_writes: IntCounterVec,
    /// Unix time of the last successful reconcile.
    pub last_success: IntGauge,
    /// Errors of the watches, by kind.
    pub watch_errors: IntCounterVec,
    /// NotAfter of each workload certificate, by GrpcService namespace and
    /// name (one series per object, as kube-state-metrics does).
    pub certificate_expiration: IntGaugeVec,
    /// Workload certificates issued, by reason (`issued`, `renewed`,
    /// `sans_changed`, `repaired`, `ca_rotated`).
    pub certificates_issued: IntCounterVec,
    /// NotAfter of the signing CA.
    pub ca_expiration: IntGauge,
    /// 1 while the CA is usable.
    pub ca_available: IntGauge,
    /// The CA rotation stage: 0 none, 1 publishing, 2 propagating,
    /// 3 reissuing, 4 retiring.
    pub ca_rotation_stage: IntGauge,
    /// Leaf Secrets the current rotation stage still waits for.
    pub ca_rotation_pending: IntGauge,
}

#[derive(Default)]
struct Views {
    grpc_services: Vec<Store<GrpcService>>,
    health: Option<Health>,
    queues: Vec<Arc<Queued>>,
}

/// Registering a metric failed (a duplicate name: a programming error).
#[derive(Debug, thiserror::Error)]
#[error("failed to register operator metrics")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers every metric, including process metrics.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("grpc_operator_reconcile_total", "Reconcile runs by outcome."),
            &["outcome"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "grpc_operator_reconcile_failures_total",
                "Failed reconcile runs by pipeline step and error class.",
            ),
            &["step", "class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("grpc_operator_reconcile_duration_seconds", "Duration of reconcile runs.")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["outcome"],
        )?;
        let managed = IntGaugeVec::new(
            Opts::new("grpc_operator_managed_objects", "Objects in the operator's caches, by kind."),
            &["kind"],
        )?;
        let child_writes = IntCounterVec::new(
            Opts::new(
                "grpc_operator_child_writes_total",
                "Server-side apply requests sent for child objects, by kind.",
            ),
            &["kind"],
        )?;
        let grpc_services = IntGaugeVec::new(
            Opts::new("grpc_operator_grpcservices", "GrpcServices by the status of their Ready condition."),
            &["ready"],
        )?;
        let running = IntGauge::new(
            "grpc_operator_reconciles_running",
            "Reconciles running now; at the concurrency limit, further triggers queue up.",
        )?;
        registry.register(Box::new(grpc_services.clone()))?;
        registry.register(Box::new(running.clone()))?;
        let queue_depth = IntGauge::new(
            "grpc_operator_queue_depth",
            "GrpcServices with a pending trigger (a watch event of theirs or of a child) whose reconcile has not started.",
        )?;
        registry.register(Box::new(queue_depth.clone()))?;
        let last_success = IntGauge::new(
            "grpc_operator_last_successful_reconcile_timestamp_seconds",
            "Unix time of the last successful reconcile.",
        )?;
        let watch_errors = IntCounterVec::new(
            Opts::new("grpc_operator_watch_errors_total", "Errors of the operator's watches, by kind."),
            &["kind"],
        )?;
        let certificate_expiration = IntGaugeVec::new(
            Opts::new(
                "grpc_operator_certificate_expiration_timestamp_seconds",
                "NotAfter (Unix time) of the workload certificate of each GrpcService.",
            ),
            &["namespace", "name"],
        )?;
        let certificates_issued = IntCounterVec::new(
            Opts::new("grpc_operator_certificates_issued_total", "Workload certificates issued, by reason."),
            &["reason"],
        )?;
        let ca_expiration = IntGauge::new(
            "grpc_operator_ca_expiration_timestamp_seconds",
            "NotAfter (Unix time) of the CA that signs workload certificates.",
        )?;
        let ca_available =
            IntGauge::new("grpc_operator_ca_available", "1 while the operator's CA is usable.")?;
        let ca_rotation_stage = IntGauge::new(
            "grpc_operator_ca_rotation_stage",
            "CA rotation stage: 0 none, 1 publishing, 2 propagating, 3 reissuing, 4 retiring.",
        )?;
        let ca_rotation_pending = IntGauge::new(
            "grpc_operator_ca_rotation_pending_leaves",
            "Leaf Secrets the current CA rotation stage still waits for.",
        )?;
        for m in [&ca_expiration, &ca_available, &ca_rotation_stage, &ca_rotation_pending] {
            registry.register(Box::new(m.clone()))?;
        }
        registry.register(Box::new(certificate_expiration.clone()))?;
        registry.register(Box::new(certificates_issued.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(watch_errors.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(managed.clone()))?;
        registry.register(Box::new(child_writes.clone()))?;
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Self {
            registry,
            views: Arc::default(),
            grpc_services,
            certificate_expiration,
            certificates_issued,
            ca_expiration,
            ca_available,
            ca_rotation_stage,
            ca_rotation_pending,
            running,
            queue_depth,
            reconciles,
            failures,
            duration,
            managed,
            child_writes,
            last_success,
            watch_errors,
        })
    }

    /// Counts the GrpcServices of `store` in `grpc_operator_grpcservices`.
    pub fn observe_grpc_services(&self, store: Store<GrpcService>) {
        crate::reconcile::lock(&self.views).grpc_services.push(store);
    }

    /// Counts `queued` in `grpc_operator_queue_depth`.
    pub fn observe_queue(&self, queued: Arc<Queued>) {
        crate::reconcile::lock(&self.views).queues.push(queued);
    }

    /// Reports `health`'s running reconciles.
    pub fn observe_health(&self, health: Health) {
        crate::reconcile::lock(&self.views).health = Some(health);
    }

    /// Recomputes the scrape-time gauges.
    fn refresh(&self) {
        let views = crate::reconcile::lock(&self.views);
        let mut counts = [0_i64; 3];
        for store in &views.grpc_services {
            for obj in store.state() {
                let ready =
                    obj.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
                let i = match ready.map(|c| c.status.as_str()) {
                    Some("True") => 0,
                    Some("False") => 1,
                    _ => 2,
                };
                counts[i] += 1;
            }
        }
        for (label, n) in ["true", "false", "unknown"].into_iter().zip(counts) {
            self.grpc_services.with_label_values(&[label]).set(n);
        }
        let queued: usize = views.queues.iter().map(|q| q.len()).sum();
        self.queue_depth.set(i64::try_from(queued).unwrap_or(i64::MAX));
        if let Some(health) = &views.health {
            self.running.set(i64::try_from(health.running()).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        self.refresh();
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
