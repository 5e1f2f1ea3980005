//! A prometheus-operator `PrometheusRule`: one rule group per GrpcService,
//! built by [`crate::monitoring::rules`] from the runtime's metric names. An
//! optional kind, sharing `MonitoringReady` with the ServiceMonitor.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::Client;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::service_monitor::{monitoring_api, monitoring_meta};
use super::{
    BuildError, ChildKind, ConditionRole, ObservedChildren, PrepareCx, PrepareError, Prepared, Workload,
};
use crate::monitoring::selection::{Selection, Snapshot, Target};
use crate::monitoring::{GROUP, MONITORING_READY, rules};
use crate::reconcile::status::Verdict;
use crate::reconcile::validate::ValidatedService;

/// The PrometheusRule kind.
pub struct PrometheusRuleKind {
    selection: Arc<Selection>,
}

impl PrometheusRuleKind {
    /// Checking selection against `selection`'s watch (shared with the
    /// ServiceMonitor kind).
    pub fn new(selection: Arc<Selection>) -> Self {
        Self { selection }
    }
}

/// The labels of the PrometheusRule of `svc`.
pub fn labels(svc: &ValidatedService) -> BTreeMap<String, String> {
    let own = svc.monitoring.alerts.as_ref().map(|a| a.labels.clone()).unwrap_or_default();
    monitoring_meta(svc, &own).labels.unwrap_or_default()
}

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
        svc: &ValidatedService,
        observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<Verdict> {
        let snapshot = observed.prepared::<Snapshot>(self.kind());
        Some(crate::monitoring::selection::verdict(
            Target::PrometheusRule,
            live,
            snapshot,
            &svc.namespace,
            &labels(svc),
        ))
    }

    // What the cluster's Prometheus objects select, as of this reconcile.
    fn prepare<'a>(&'a self, _cx: PrepareCx<'a>) -> BoxFuture<'a, Result<Option<Prepared>, PrepareError>> {
        Box::pin(futures::future::ready(Ok(Some(Arc::new(self.selection.snapshot()) as Prepared))))
    }

    fn background(&self, client: &Client) -> Option<BoxFuture<'static, ()>> {
        self.selection.start(client)
    }

    // The ServiceMonitor kind forwards the shared watch's changes; a second
    // subscriber would reconcile everything twice per change.
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
