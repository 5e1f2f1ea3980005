//! The ServiceAccount the pods run as when `spec.serviceAccountName` is
//! unset. Identity (the SPIFFE ID in the workload certificate, and what
//! `allowedClients` names) is per service account, so without it every
//! GrpcService of a namespace would be `…/sa/default`, and an allow-list
//! could not tell them apart.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::discovery::ApiResource;
use serde_json::Value;

use super::labels::child_meta;
use super::{BuildError, ChangeMarker, ChildKind, ObservedChildren, Workload, to_value};
use crate::reconcile::validate::ValidatedService;

/// The ServiceAccount kind.
pub struct ServiceAccountKind;

impl ChildKind for ServiceAccountKind {
    fn kind(&self) -> &'static str {
        "ServiceAccount"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource::erase::<ServiceAccount>(&())
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.creates_service_account
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        to_value(self.kind(), &service_account(svc))
    }

    // ServiceAccounts have no generation.
    fn change_marker(&self) -> ChangeMarker {
        ChangeMarker::ResourceVersion
    }
}

/// Builds the ServiceAccount: no API token is mounted into the pods, since
/// a gRPC workload has no business with the Kubernetes API (a user who
/// needs one names their own account in `spec.serviceAccountName`).
pub fn service_account(svc: &ValidatedService) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(svc),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use crate::children::tests::build;
    use crate::reconcile::validate::tests::sample;

    #[test]
    fn service_account_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&sample(), "ServiceAccount").expect("wanted"));
    }

    #[test]
    fn a_named_service_account_is_the_users_and_none_is_created() {
        let mut obj = sample();
        obj.spec.service_account_name = Some("shared".into());
        assert_eq!(build(&obj, "ServiceAccount"), None);
    }
}
