//! A prometheus-operator `ServiceMonitor` (monitoring.coreos.com/v1): the
//! Service's `admin` port `/metrics`, plus the gRPC-Web sidecar's
//! `envoy-metrics` port `/stats/prometheus`. An optional kind: without
//! prometheus-operator's CRDs, `MonitoringReady` says `CRDNotInstalled`.
//!
//! `jobLabel: app.kubernetes.io/name` makes `job` the GrpcService's name,
//! which is what the PrometheusRule's expressions select on.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use grpc_contract::admin::{ADMIN_PORT_NAME, METRICS_PATH};
use kube::Client;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::labels::{NAME_LABEL, child_meta, selector_labels};
use super::{
    BuildError, ChildKind, ConditionRole, ObservedChildren, PrepareCx, PrepareError, Prepared, Workload,
};
use crate::monitoring::selection::{Selection, Snapshot, Target};
use crate::monitoring::{GROUP, MONITORING_READY};
use crate::reconcile::status::Verdict;
use crate::reconcile::validate::ValidatedService;

/// The Service port of the sidecar's Envoy stats.
pub const ENVOY_METRICS_PORT_NAME: &str = "envoy-metrics";
/// Envoy's Prometheus exposition path.
pub const ENVOY_METRICS_PATH: &str = "/stats/prometheus";

/// The ServiceMonitor kind.
pub struct ServiceMonitorKind {
    selection: Arc<Selection>,
}

impl ServiceMonitorKind {
    /// Checking selection against `selection`'s watch.
    pub fn new(selection: Arc<Selection>) -> Self {
        Self { selection }
    }
}

/// The labels of the ServiceMonitor of `svc`.
pub fn labels(svc: &ValidatedService) -> BTreeMap<String, String> {
    let own = svc.monitoring.service_monitor.as_ref().map(|s| s.labels.clone()).unwrap_or_default();
    monitoring_meta(svc, &own).labels.unwrap_or_default()
}

/// The monitoring.coreos.com/v1 API of `kind` (`plural`).
pub fn monitoring_api(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.to_owned(),
        version: "v1".to_owned(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// Metadata of a monitoring child: the child's labels plus `extra`.
pub fn monitoring_meta(
    svc: &ValidatedService,
    extra: &std::collections::BTreeMap<String, String>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut meta = child_meta(svc);
    if let Some(labels) = meta.labels.as_mut() {
        for (k, v) in extra {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    meta
}

impl ChildKind for ServiceMonitorKind {
    fn kind(&self) -> &'static str {
        "ServiceMonitor"
    }

    fn api_resource(&self) -> ApiResource {
        monitoring_api("ServiceMonitor", "servicemonitors")
    }

    fn optional(&self) -> bool {
        true
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.monitoring.service_monitor.is_some()
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        let settings = svc.monitoring.service_monitor.clone().unwrap_or_default();
        let endpoint = |port: &str, path: &str| {
            let mut e = json!({
                "port": port,
                "path": path,
                "interval": settings.interval,
                "honorLabels": false,
            });
            if let (Some(t), Some(obj)) = (&settings.scrape_timeout, e.as_object_mut()) {
                obj.insert("scrapeTimeout".to_owned(), json!(t));
            }
            e
        };
        let mut endpoints = vec![endpoint(ADMIN_PORT_NAME, METRICS_PATH)];
        if svc.grpc_web.as_ref().is_some_and(|w| w.sidecar()) {
            endpoints.push(endpoint(ENVOY_METRICS_PORT_NAME, ENVOY_METRICS_PATH));
        }
        Ok(json!({
            "apiVersion": format!("{GROUP}/v1"),
            "kind": "ServiceMonitor",
            "metadata": monitoring_meta(svc, &settings.labels),
            "spec": {
                "jobLabel": NAME_LABEL,
                "selector": {"matchLabels": selector_labels(svc)},
                "namespaceSelector": {"matchNames": [svc.namespace]},
                "endpoints": endpoints,
            },
        }))
    }

    fn cache_keeps(&self) -> &'static [&'static str] {
        &["/status/bindings"]
    }

    // Never gating: its CRD may be absent, and serving does not depend on
    // being scraped.
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
            Target::ServiceMonitor,
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

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.selection.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use crate::children::tests::build;
    use crate::reconcile::validate::tests::sample;

    #[test]
    fn service_monitor_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&sample(), "ServiceMonitor").expect("wanted by default"));
    }

    #[test]
    fn the_sidecars_envoy_metrics_are_scraped_too_and_labels_reach_the_service_monitor() {
        let mut obj = sample();
        obj.spec.grpc_web = Some(
            serde_json::from_value(
                serde_json::json!({"enabled": true, "allowedOrigins": ["https://app.example.com"]}),
            )
            .expect("grpcWeb"),
        );
        obj.spec.monitoring = Some(
            serde_json::from_value(serde_json::json!({
                "labels": {"release": "kps"},
                "serviceMonitor": {"interval": "15s", "scrapeTimeout": "10s", "labels": {"team": "users"}}
            }))
            .expect("monitoring"),
        );
        let sm = build(&obj, "ServiceMonitor").expect("wanted");
        let ports: Vec<&str> = sm["spec"]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["port"].as_str())
            .collect();
        assert_eq!(ports, ["admin", "envoy-metrics"]);
        assert_eq!(sm["spec"]["endpoints"][1]["path"], "/stats/prometheus");
        assert_eq!(sm["spec"]["endpoints"][0]["scrapeTimeout"], "10s");
        assert_eq!(sm["metadata"]["labels"]["release"], "kps");
        assert_eq!(sm["metadata"]["labels"]["team"], "users");
    }

    #[test]
    fn a_disabled_service_monitor_is_not_wanted() {
        let mut obj = sample();
        obj.spec.monitoring = Some(
            serde_json::from_value(serde_json::json!({"serviceMonitor": {"enabled": false}}))
                .expect("monitoring"),
        );
        assert_eq!(build(&obj, "ServiceMonitor"), None);
        assert!(build(&obj, "PrometheusRule").is_some(), "alerts stay on");
    }
}
