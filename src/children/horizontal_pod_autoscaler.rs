//! The `autoscaling/v2` HorizontalPodAutoscaler of `spec.autoscaling`.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use kube::discovery::ApiResource;
use serde_json::Value;

use super::labels::child_meta;
use super::{BuildError, ChildKind, ObservedChildren, Workload, to_value};
use crate::reconcile::validate::{ValidAutoscaling, ValidatedService};

/// The HorizontalPodAutoscaler kind.
pub struct HorizontalPodAutoscalerKind;

impl ChildKind for HorizontalPodAutoscalerKind {
    fn kind(&self) -> &'static str {
        "HorizontalPodAutoscaler"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource::erase::<HorizontalPodAutoscaler>(&())
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.autoscaling.is_some()
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        let default = ValidAutoscaling {
            min_replicas: 1,
            max_replicas: 1,
            cpu_utilization: None,
            memory_utilization: None,
        };
        to_value(self.kind(), &horizontal_pod_autoscaler(svc, svc.autoscaling.as_ref().unwrap_or(&default)))
    }
}

/// Builds the HorizontalPodAutoscaler scaling the Deployment.
pub fn horizontal_pod_autoscaler(svc: &ValidatedService, a: &ValidAutoscaling) -> HorizontalPodAutoscaler {
    let utilization = |resource: &str, percent: i32| MetricSpec {
        type_: "Resource".to_owned(),
        resource: Some(ResourceMetricSource {
            name: resource.to_owned(),
            target: MetricTarget {
                type_: "Utilization".to_owned(),
                average_utilization: Some(percent),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    };
    let mut metrics = Vec::new();
    if let Some(p) = a.cpu_utilization {
        metrics.push(utilization("cpu", p));
    }
    if let Some(p) = a.memory_utilization {
        metrics.push(utilization("memory", p));
    }
    HorizontalPodAutoscaler {
        metadata: child_meta(svc),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: svc.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            behavior: None,
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use crate::api::Autoscaling;
    use crate::children::tests::build;
    use crate::reconcile::validate::tests::sample;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn horizontal_pod_autoscaler_matches_snapshot() {
        let mut obj = sample();
        obj.spec.replicas = None;
        obj.spec.autoscaling = Some(Autoscaling {
            min_replicas: Some(2),
            max_replicas: 10,
            target_cpu_utilization_percentage: Some(70),
            target_memory_utilization_percentage: Some(80),
        });
        obj.spec.resources = Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_owned(), Quantity("250m".into())),
                    ("memory".to_owned(), Quantity("256Mi".into())),
                ]
                .into(),
            ),
            ..ResourceRequirements::default()
        });
        insta::assert_yaml_snapshot!(build(&obj, "HorizontalPodAutoscaler").expect("wanted"));
    }

    #[test]
    fn no_autoscaling_no_horizontal_pod_autoscaler() {
        assert_eq!(build(&sample(), "HorizontalPodAutoscaler"), None);
    }
}
