//! The Grafana dashboard of one GrpcService.
//!
//! Templated by `namespace` and `service` (the `job` label), defaulting to
//! its own; its `uid` is derived from the namespace and name, so two
//! GrpcServices' dashboards never replace each other in Grafana. Every
//! panel's queries are listed by [`panel_queries`], which the tests run
//! against a real Prometheus.

use grpc_contract::metrics as m;
use serde_json::{Value, json};

use super::promql::{self, JOB, NAMESPACE, Op, POD, Selector, histogram_quantile, sum_by};
use super::rules::{SLI_ERRORS_RATE5M, SLI_REQUESTS_RATE5M};
use super::{ValidAlerts, number};
use crate::reconcile::validate::ValidatedService;

/// Grafana's variable for the rate window.
const RATE_WINDOW: &str = "$__rate_interval";

/// The dashboard's `uid`: at most 40 characters, from the namespace and
/// name.
pub fn uid(svc: &ValidatedService) -> String {
    let digest =
        ring::digest::digest(&ring::digest::SHA256, format!("{}/{}", svc.namespace, svc.name).as_bytes());
    let hex: String = digest.as_ref().iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("grpcsvc-{hex}")
}

/// A selector of the templated service's series.
fn templated(metric: &str) -> Selector {
    Selector::new(metric).eq(NAMESPACE, "$namespace").eq(JOB, "$service")
}

fn application(selector: Selector) -> Selector {
    selector.with(m::LABEL_SERVICE, Op::Nre, promql::alternatives(m::INFRASTRUCTURE_SERVICES))
}

/// One panel: title, unit and its queries (legend, expression).
pub struct Panel {
    /// Title.
    pub title: &'static str,
    /// Grafana unit.
    pub unit: &'static str,
    /// Queries: legend format and PromQL.
    pub queries: Vec<(&'static str, String)>,
    /// Description.
    pub description: &'static str,
}

/// The panels for `svc` (the certificate panel with TLS, the budget panel
/// with an SLO).
pub fn panels(svc: &ValidatedService, alerts: Option<&ValidAlerts>) -> Vec<Panel> {
    let by_method = [m::LABEL_SERVICE, m::LABEL_METHOD];
    let handled = application(templated(m::SERVER_HANDLED_TOTAL));
    let errors = handled.clone().with(m::LABEL_CODE, Op::Re, m::server_error_code_regex());
    let buckets = templated(&format!("{}_bucket", m::SERVER_HANDLING_SECONDS)).eq(m::LABEL_TYPE, "unary");
    let buckets = application(buckets);
    let quantile =
        |q: f64| histogram_quantile(q, &sum_by(&[promql::LE], &promql::rate(&buckets, RATE_WINDOW)));
    let mut panels = vec![
        Panel {
            title: "Requests by method",
            unit: "reqps",
            description: "Completed calls per second, by gRPC service and method.",
            queries: vec![(
                "{{grpc_service}}/{{grpc_method}}",
                sum_by(&by_method, &promql::rate(&handled, RATE_WINDOW)),
            )],
        },
        Panel {
            title: "Server-error ratio",
            unit: "percentunit",
            description: "Share of calls that ended in a server error (Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable, DataLoss).",
            queries: vec![(
                "{{grpc_service}}/{{grpc_method}}",
                format!(
                    "({} or {} * 0)\n/\n{}",
                    sum_by(&by_method, &promql::rate(&errors, RATE_WINDOW)),
                    sum_by(&by_method, &promql::rate(&handled, RATE_WINDOW)),
                    sum_by(&by_method, &promql::rate(&handled, RATE_WINDOW)),
                ),
            )],
        },
        Panel {
            title: "Latency of unary calls",
            unit: "s",
            description: "p50, p95 and p99 of unary calls, from grpc_server_handling_seconds.",
            queries: vec![("p50", quantile(0.5)), ("p95", quantile(0.95)), ("p99", quantile(0.99))],
        },
        Panel {
            title: "In flight",
            unit: "short",
            description: "Calls started and not yet completed.",
            queries: vec![(
                "{{grpc_service}}/{{grpc_method}}",
                format!(
                    "{}\n-\n{}",
                    sum_by(&by_method, &application(templated(m::SERVER_STARTED_TOTAL)).to_string()),
                    sum_by(&by_method, &handled.to_string()),
                ),
            )],
        },
        Panel {
            title: "Stream messages",
            unit: "short",
            description: "Stream messages received and sent per second.",
            queries: vec![
                (
                    "received {{grpc_service}}/{{grpc_method}}",
                    sum_by(&by_method, &promql::rate(&templated(m::SERVER_MSG_RECEIVED_TOTAL), RATE_WINDOW)),
                ),
                (
                    "sent {{grpc_service}}/{{grpc_method}}",
                    sum_by(&by_method, &promql::rate(&templated(m::SERVER_MSG_SENT_TOTAL), RATE_WINDOW)),
                ),
            ],
        },
        Panel {
            title: "Recovered panics",
            unit: "short",
            description: "Handler panics answered INTERNAL, per pod.",
            queries: vec![(
                "{{pod}}",
                sum_by(&[POD], &promql::increase(&templated(m::PANICS_RECOVERED_TOTAL), RATE_WINDOW)),
            )],
        },
    ];
    if svc.tls.enabled() {
        panels.push(Panel {
            title: "Certificate expiry",
            unit: "s",
            description: "Time left on the certificate each pod serves.",
            queries: vec![(
                "{{pod}}",
                format!(
                    "{} - time()",
                    promql::min_by(
                        &[POD],
                        &format!("{} > 0", templated(m::TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS))
                    )
                ),
            )],
        });
    }
    if let Some(slo) = alerts.and_then(|a| a.slo.as_ref()) {
        let window = format!("{}d", slo.window_days);
        panels.push(Panel {
            title: "SLO error budget left",
            unit: "percentunit",
            description: "Share of the SLO window's error budget not yet spent.",
            queries: vec![(
                "budget left",
                format!(
                    "1 - (\n  {}\n/\n  {}\n) / {}",
                    promql::sum_over_time(&templated(SLI_ERRORS_RATE5M), &window),
                    promql::sum_over_time(&templated(SLI_REQUESTS_RATE5M), &window),
                    number(slo.budget()),
                ),
            )],
        });
    }
    panels
}

/// Every query of the dashboard with its variables filled in for `svc` and
/// the rate window `rate_window`, as Grafana would send them.
pub fn panel_queries(
    svc: &ValidatedService,
    alerts: Option<&ValidAlerts>,
    rate_window: &str,
) -> Vec<(String, String)> {
    panels(svc, alerts)
        .into_iter()
        .flat_map(|p| {
            p.queries.into_iter().map(move |(legend, q)| {
                (
                    format!("{}: {legend}", p.title),
                    q.replace("$namespace", &svc.namespace)
                        .replace("$service", &svc.name)
                        .replace(RATE_WINDOW, rate_window),
                )
            })
        })
        .collect()
}

/// The dashboard JSON model.
pub fn dashboard(svc: &ValidatedService, alerts: Option<&ValidAlerts>) -> Value {
    let panels: Vec<Value> = panels(svc, alerts)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let i = u32::try_from(i).unwrap_or(0);
            let targets: Vec<Value> = p
                .queries
                .iter()
                .zip(b'A'..)
                .map(|((legend, expr), id)| {
                    json!({
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                        "expr": expr,
                        "legendFormat": legend,
                        "refId": char::from(id).to_string(),
                    })
                })
                .collect();
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "description": p.description,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": targets,
            })
        })
        .collect();
    let variable = |name: &str, label: &str, query: String, current: &str| {
        json!({
            "name": name,
            "label": label,
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "sort": 1,
            "current": {"text": current, "value": current},
        })
    };
    json!({
        "uid": uid(svc),
        "title": format!("gRPC {}/{}", svc.namespace, svc.name),
        "tags": ["grpc", "grpc-operator"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {"text": "Prometheus", "value": "prometheus"},
            },
            variable(
                "namespace",
                "Namespace",
                format!("label_values({}, {NAMESPACE})", m::SERVER_STARTED_TOTAL),
                &svc.namespace,
            ),
            variable(
                "service",
                "GrpcService",
                format!("label_values({}{{{NAMESPACE}=\"$namespace\"}}, {JOB})", m::SERVER_STARTED_TOTAL),
                &svc.name,
            ),
        ]},
        "panels": panels,
    })
}
