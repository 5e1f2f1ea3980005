//! A prometheus-operator `PrometheusRule`: one rule group per GrpcService,
//! built by [`crate::monitoring::rules`] from the runtime's metric names. An
//! optional kind, sharing `MonitoringReady` with the ServiceMonitor.

use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::service_monitor::{monitoring_api, monitoring_meta};
use super::{BuildError, ChildKind, ConditionRole, ObservedChildren, Workload};
use crate::monitoring::{GROUP, MONITORING_READY, rules};
use crate::reconcile::status::Verdict;
use crate::reconcile::validate::ValidatedService;

/// The PrometheusRule kind.
pub struct PrometheusRuleKind;

impl ChildKind for PrometheusRuleKind {
    fn kind(&self) -> &'static str {
        "PrometheusRule"
    }

    fn api_resource(&self) -> ApiResource {
        monitoring_api("PrometheusRule", "prometheusrules")
    }

    fn optional(&self) -> bool {
        true
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.monitoring.alerts.is_some()
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        let alerts = svc.monitoring.alerts.clone().unwrap_or_default();
        Ok(json!({
            "apiVersion": format!("{GROUP}/v1"),
            "kind": "PrometheusRule",
            "metadata": monitoring_meta(svc, &alerts.labels),
            "spec": {"groups": [rules::group(svc, &alerts)]},
        }))
    }

    fn cache_keeps(&self) -> &'static [&'static str] {
        &["/status/bindings"]
    }

    fn condition(&self) -> Option<ConditionRole> {
        Some(ConditionRole { type_: MONITORING_READY, gates_ready: false })
    }

    fn verdict(
        &self,
        _svc: &ValidatedService,
        _observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<Verdict> {
        Some(crate::monitoring::selection::applied_verdict("PrometheusRule", live))
    }
}

#[cfg(test)]
mod tests {
    use crate::children::tests::build;
    use crate::reconcile::validate::tests::sample;

    #[test]
    fn prometheus_rule_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&sample(), "PrometheusRule").expect("wanted by default"));
    }

    #[test]
    fn prometheus_rule_with_an_slo_matches_snapshot() {
        let mut obj = sample();
        obj.spec.monitoring = Some(
            serde_json::from_value(serde_json::json!({
                "labels": {"release": "kps"},
                "alerts": {"errorRatePercent": 2, "latencyP99Seconds": 0.25, "for": "2m",
                           "severity": {"page": "page", "ticket": "ticket"},
                           "runbookBaseURL": "https://runbooks.example.com/grpc"},
                "slo": {"objective": 99.5, "window": "28d"}
            }))
            .expect("monitoring"),
        );
        insta::assert_yaml_snapshot!(build(&obj, "PrometheusRule").expect("wanted"));
    }
}
