//! The admin HTTP server on `ADMIN_PORT`: `/metrics`, `/healthz`, `/readyz`.
//!
//! It is separate from the gRPC port so probes and scrapes work whatever the gRPC port's TLS
//! mode (the kubelet cannot present a client certificate), and so it keeps answering (with
//! `/readyz` failing) while the gRPC side drains.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Registry;

use crate::health::Health;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) registry: Registry,
    pub(crate) health: Health,
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route(grpc_contract::admin::METRICS_PATH, get(metrics))
        .route(grpc_contract::admin::LIVENESS_PATH, get(healthz))
        .route(grpc_contract::admin::READINESS_PATH, get(readyz))
        .with_state(Arc::new(state))
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], crate::metrics::render(&state.registry))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when every registered service is `SERVING` and the server is not draining; 503 with the
/// reasons otherwise. TLS material is loaded by construction: `bind` fails without it, and a
/// broken rotation keeps the previous certificate.
async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    let mut reasons = Vec::new();
    if state.health.is_draining() {
        reasons.push("shutting down".to_string());
    }
    for name in state.health.not_serving() {
        reasons.push(format!("service {name} is not SERVING"));
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", reasons.join("; ")))
    }
}
