//! Serving status: the `grpc.health.v1.Health` service and the admin `/readyz` endpoint read the
//! same state, so a probe over HTTP and a gRPC health check never disagree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Handle to the server's health state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// Mirror of the per-service statuses (`""` included) for `/readyz`, which must answer
    /// synchronously without the reporter's async lock.
    statuses: Arc<Mutex<BTreeMap<String, bool>>>,
    draining: Arc<AtomicBool>,
}

impl Health {
    pub(crate) fn new(reporter: HealthReporter) -> Self {
        Health {
            reporter,
            statuses: Arc::new(Mutex::new(BTreeMap::new())),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets one service's status (`""` is the whole server). Unknown names are added. Once
    /// shutdown has begun, `SERVING` is ignored: a dependency check that recovers during the
    /// drain must not put the endpoint back into load balancers.
    pub async fn set_serving(&self, service: &str, serving: bool) {
        if serving && self.is_draining() {
            tracing::debug!(service, "ignoring SERVING during shutdown");
            return;
        }
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status(service, status).await;
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner).insert(service.to_string(), serving);
    }

    /// Whether `service` is currently `SERVING`.
    pub fn is_serving(&self, service: &str) -> bool {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner).get(service).copied().unwrap_or(false)
    }

    /// Services currently not `SERVING`, for the `/readyz` body.
    pub fn not_serving(&self) -> Vec<String> {
        self.statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, serving)| !**serving)
            .map(|(name, _)| if name.is_empty() { "\"\" (server)".to_string() } else { name.clone() })
            .collect()
    }

    /// Marks every service `NOT_SERVING` and the server as draining (shutdown has begun).
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let names: Vec<String> =
            self.statuses.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        for name in names {
            self.set_serving(&name, false).await;
        }
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
