//! Labels and owner references shared by every child object.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::reconcile::validate::ValidatedService;

/// `app.kubernetes.io/name`: the GrpcService name.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/managed-by`: always [`MANAGER`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/component`: set on the children of a kind that shares
/// its API with another kind (see `ChildKind::component`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `grpcoperator.io/service`: the GrpcService name; the operator's own key.
pub const SERVICE_LABEL: &str = "grpcoperator.io/service";
/// Value of [`MANAGED_BY_LABEL`], and the server-side apply field manager.
pub const MANAGER: &str = "grpc-operator";
/// Annotation holding a digest of what the operator last applied to a child;
/// a changed digest means the desired object changed (including removals,
/// which a subset comparison against the live object cannot see).
pub const APPLIED_DIGEST_ANNOTATION: &str = "grpcoperator.io/applied-digest";

/// Field manager that holds a field the operator stops setting, so that
/// server-side apply keeps its live value (see `ChildKind::handover`). Whoever
/// sets the field next (an HPA, `kubectl scale`) takes it over.
pub const HANDOVER_MANAGER: &str = "grpc-operator-handover";

/// Pod labels a GrpcService may not set: they form the Deployment selector and
/// the Service selector, and changing them would orphan pods.
pub const RESERVED_POD_LABELS: &[&str] = &[NAME_LABEL, MANAGED_BY_LABEL, SERVICE_LABEL];

/// The selector of the Deployment and the Service. It must never change for an
/// existing GrpcService (a Deployment selector is immutable), so it only
/// depends on the name.
pub fn selector_labels(svc: &ValidatedService) -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_LABEL.to_owned(), svc.name.clone()), (SERVICE_LABEL.to_owned(), svc.name.clone())])
}

/// Labels of every child object. The GrpcService's own labels are deliberately
/// not copied: `app.kubernetes.io/instance` is Argo CD's tracking label, and a
/// child carrying it would be shown (and pruned) as part of the Application.
pub fn object_labels(svc: &ValidatedService) -> BTreeMap<String, String> {
    let mut labels = selector_labels(svc);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
    labels
}

/// The controller reference to the GrpcService, when it has a uid.
pub fn owner_reference(svc: &ValidatedService) -> Option<OwnerReference> {
    svc.uid.as_ref().map(|uid| OwnerReference {
        api_version: format!("{}/v1alpha1", crate::api::GROUP),
        kind: "GrpcService".to_owned(),
        name: svc.name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Metadata of a child named after the GrpcService.
pub fn child_meta(svc: &ValidatedService) -> ObjectMeta {
    ObjectMeta {
        name: Some(svc.name.clone()),
        namespace: Some(svc.namespace.clone()),
        labels: Some(object_labels(svc)),
        owner_references: owner_reference(svc).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}
