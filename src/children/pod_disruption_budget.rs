//! The `policy/v1` PodDisruptionBudget of `spec.disruption` (or its default:
//! `maxUnavailable: 1` from 2 pods up; see `validate`).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::discovery::ApiResource;
use serde_json::Value;

use super::labels::{child_meta, selector_labels};
use super::{BuildError, ChildKind, ObservedChildren, Workload, to_value};
use crate::reconcile::validate::{DisruptionBudget, ValidatedService};

/// The PodDisruptionBudget kind.
pub struct PodDisruptionBudgetKind;

impl ChildKind for PodDisruptionBudgetKind {
    fn kind(&self) -> &'static str {
        "PodDisruptionBudget"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource::erase::<PodDisruptionBudget>(&())
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.disruption.is_some()
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        to_value(self.kind(), &pod_disruption_budget(svc))
    }
}

/// Builds the PodDisruptionBudget.
pub fn pod_disruption_budget(svc: &ValidatedService) -> PodDisruptionBudget {
    let (min_available, max_unavailable) = match &svc.disruption {
        Some(DisruptionBudget::MinAvailable(v)) => (Some(v.clone()), None),
        Some(DisruptionBudget::MaxUnavailable(v)) => (None, Some(v.clone())),
        None => (None, None),
    };
    PodDisruptionBudget {
        metadata: child_meta(svc),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(svc)),
                match_expressions: None,
            }),
            min_available,
            max_unavailable,
            // A crash-looping pod must not block node drains: evicting an
            // unhealthy pod never reduces serving capacity.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use crate::children::tests::build;
    use crate::reconcile::validate::tests::sample;

    #[test]
    fn pod_disruption_budget_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&sample(), "PodDisruptionBudget").expect("2 replicas: wanted"));
    }

    #[test]
    fn a_single_replica_gets_no_default_budget() {
        let mut obj = sample();
        obj.spec.replicas = Some(1);
        assert_eq!(build(&obj, "PodDisruptionBudget"), None);
    }
}
