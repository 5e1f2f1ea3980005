//! The Grafana dashboard: a ConfigMap `<name>-dashboard` labelled
//! `grafana_dashboard: "1"` with a `grafana_folder` annotation, which the
//! Grafana Helm chart's dashboard sidecar loads. Built by
//! [`crate::monitoring::dashboard`].

use k8s_openapi::api::core::v1::ConfigMap;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::service_monitor::monitoring_meta;
use super::{BuildError, ChangeMarker, ChildKind, ObservedChildren, Workload};
use crate::monitoring::{DASHBOARD_FOLDER_ANNOTATION, DASHBOARD_LABEL, dashboard};
use crate::reconcile::validate::ValidatedService;

/// The dashboard ConfigMap kind.
pub struct GrafanaDashboardKind;

/// The `app.kubernetes.io/component` of the dashboard ConfigMap, which keeps
/// it apart from the other ConfigMap kinds' children.
pub const COMPONENT: &str = "grafana-dashboard";

/// Name of the ConfigMap.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-dashboard")
}

/// The ConfigMap's key, the file name in the Grafana sidecar's directory.
pub fn data_key(svc: &ValidatedService) -> String {
    format!("{}_{}.json", svc.namespace, svc.name)
}

impl ChildKind for GrafanaDashboardKind {
    fn kind(&self) -> &'static str {
        "GrafanaDashboard"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource::erase::<ConfigMap>(&())
    }

    fn component(&self) -> Option<&'static str> {
        Some(COMPONENT)
    }

    fn name(&self, svc: &ValidatedService) -> String {
        config_map_name(&svc.name)
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.monitoring.dashboard.is_some()
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        let folder = svc.monitoring.dashboard.as_ref().map(|d| d.folder.clone()).unwrap_or_default();
        let mut meta = monitoring_meta(svc, &svc.monitoring.labels);
        meta.name = Some(config_map_name(&svc.name));
        if let Some(labels) = meta.labels.as_mut() {
            labels.insert(DASHBOARD_LABEL.0.to_owned(), DASHBOARD_LABEL.1.to_owned());
            labels.insert(super::labels::COMPONENT_LABEL.to_owned(), COMPONENT.to_owned());
        }
        meta.annotations = Some([(DASHBOARD_FOLDER_ANNOTATION.to_owned(), folder)].into());
        let model = dashboard::dashboard(svc, svc.monitoring.alerts.as_ref());
        let text = serde_json::to_string_pretty(&model)
            .map_err(|source| BuildError { kind: "GrafanaDashboard", source })?;
        Ok(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            // One file per key in the Grafana sidecar's directory: the
            // namespace keeps same-named services apart.
            "data": {data_key(svc): text},
        }))
    }

    fn change_marker(&self) -> ChangeMarker {
        ChangeMarker::ResourceVersion
    }
}

#[cfg(test)]
mod tests {
    use crate::children::tests::build;
    use crate::reconcile::validate::tests::sample;

    #[test]
    fn dashboards_are_off_by_default_and_carry_the_sidecar_label_and_a_unique_uid() {
        assert_eq!(build(&sample(), "GrafanaDashboard"), None);
        let mut obj = sample();
        obj.spec.monitoring = Some(
            serde_json::from_value(serde_json::json!({"dashboard": {"enabled": true}})).expect("monitoring"),
        );
        let cm = build(&obj, "GrafanaDashboard").expect("wanted");
        assert_eq!(cm["metadata"]["name"], "user-service-dashboard");
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "shop");
        let model: serde_json::Value =
            serde_json::from_str(cm["data"]["shop_user-service.json"].as_str().unwrap_or_default())
                .expect("json");
        let uid = model["uid"].as_str().unwrap_or_default().to_owned();
        assert!(uid.len() <= 40 && uid.starts_with("grpcsvc-"), "{uid}");
        obj.metadata.namespace = Some("other".into());
        let other = build(&obj, "GrafanaDashboard").expect("wanted");
        let other_model = other["data"]["other_user-service.json"].as_str().unwrap_or_default();
        assert!(!other_model.is_empty() && !other_model.contains(&uid), "{other}");
        insta::assert_yaml_snapshot!(model);
    }
}
