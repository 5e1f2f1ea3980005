//! desired: pure builders from a [`ValidatedService`] to the child objects.
//! No client, no I/O: `render` and the controller call the same functions, so
//! a preview is exactly what the controller applies.

pub mod deployment;
pub mod labels;
pub mod service;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Resource;
use serde::Serialize;

use crate::reconcile::validate::ValidatedService;
use labels::APPLIED_DIGEST_ANNOTATION;

/// Every child object of one GrpcService, in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The workload.
    pub deployment: Deployment,
    /// Its ClusterIP Service.
    pub service: Service,
}

/// Builds every child object, each stamped with the digest of its content.
pub fn desired(svc: &ValidatedService) -> Desired {
    Desired {
        deployment: with_digest(deployment::deployment(svc)),
        service: with_digest(service::service(svc)),
    }
}

impl Desired {
    /// The children as JSON values in apply order (Deployment, Service).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        Ok(vec![serde_json::to_value(&self.deployment)?, serde_json::to_value(&self.service)?])
    }
}

/// Stamps [`APPLIED_DIGEST_ANNOTATION`] with a digest of the object as built.
/// The controller compares it with the live object's annotation to see that
/// the desired object changed, including fields that were removed.
fn with_digest<K: Resource + Serialize>(mut obj: K) -> K {
    let digest = serde_json::to_vec(&obj).map(|bytes| fnv1a64(&bytes)).unwrap_or_default();
    obj.meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_DIGEST_ANNOTATION.to_owned(), format!("{digest:016x}"));
    obj
}

/// FNV-1a, 64 bit. Hand-written because the digest must be stable across Rust
/// releases (std's `DefaultHasher` is not) and is not a security boundary, so
/// a cryptographic hash crate would be weight without benefit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::validate::tests::sample;
    use crate::reconcile::validate::{Origin, validate};
    use k8s_openapi::api::core::v1::EnvVar;

    fn build(obj: &crate::api::GrpcService) -> Desired {
        desired(&validate(obj, Origin::Cluster).expect("valid"))
    }

    #[test]
    fn deployment_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&sample()).deployment);
    }

    #[test]
    fn service_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&sample()).service);
    }

    #[test]
    fn children_are_controlled_by_the_grpc_service() {
        let d = build(&sample());
        for meta in [&d.deployment.metadata, &d.service.metadata] {
            let owners = meta.owner_references.as_ref().expect("owner references");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "GrpcService");
            assert_eq!(owners[0].uid, "0b9e4f1c-5f1e-4a7a-9d43-1f0f3c2a7b10");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(owners[0].block_owner_deletion, Some(true));
        }
    }

    #[test]
    fn children_never_copy_the_argo_cd_instance_label() {
        let mut obj = sample();
        obj.metadata.labels = Some([("app.kubernetes.io/instance".to_owned(), "shop".to_owned())].into());
        let d = build(&obj);
        let values = serde_json::to_string(&d.to_values().expect("serializes")).expect("json");
        assert!(!values.contains("app.kubernetes.io/instance"), "{values}");
    }

    #[test]
    fn service_speaks_h2c_on_the_grpc_port_and_http_on_admin() {
        let svc = build(&sample()).service;
        let ports = svc.spec.and_then(|s| s.ports).expect("ports");
        let by_name = |n: &str| ports.iter().find(|p| p.name.as_deref() == Some(n)).cloned().expect("port");
        assert_eq!(by_name("grpc").app_protocol.as_deref(), Some("kubernetes.io/h2c"));
        assert_eq!(by_name("grpc").port, 50051);
        assert_eq!(by_name("admin").app_protocol.as_deref(), Some("http"));
        assert_eq!(by_name("admin").port, 9090);
    }

    #[test]
    fn container_follows_pod_security_restricted() {
        let dep = build(&sample()).deployment;
        let pod = dep.spec.expect("deployment spec").template.spec.expect("pod spec");
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_owned()]));
        assert_eq!(sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
        let psc = pod.security_context.expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
    }

    #[test]
    fn probes_are_http_on_the_admin_port() {
        let dep = build(&sample()).deployment;
        let c = &dep.spec.expect("deployment spec").template.spec.expect("pod spec").containers[0];
        let get = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref().and_then(|p| p.http_get.clone()).map(|g| (g.path, g.port))
        };
        let admin = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("admin".into());
        assert_eq!(get(&c.liveness_probe), Some((Some("/healthz".into()), admin.clone())));
        assert_eq!(get(&c.readiness_probe), Some((Some("/readyz".into()), admin)));
    }

    #[test]
    fn contract_env_precedes_user_env_and_resolves_pod_fields() {
        let mut obj = sample();
        obj.spec.env = vec![EnvVar { name: "FEATURE".into(), value: Some("on".into()), value_from: None }];
        let dep = build(&obj).deployment;
        let env = dep.spec.expect("deployment spec").template.spec.expect("pod spec").containers[0]
            .env
            .clone()
            .expect("env");
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "GRPC_PORT",
                "ADMIN_PORT",
                "POD_NAME",
                "POD_NAMESPACE",
                "POD_IP",
                "OTEL_SERVICE_NAME",
                "OTEL_RESOURCE_ATTRIBUTES",
                "LOG_FORMAT",
                "FEATURE"
            ]
        );
    }

    #[test]
    fn digest_changes_when_a_field_is_removed() {
        let mut obj = sample();
        obj.spec.env = vec![EnvVar { name: "FEATURE".into(), value: Some("on".into()), value_from: None }];
        let before = build(&obj);
        obj.spec.env.clear();
        let after = build(&obj);
        let digest = |d: &Desired| {
            d.deployment.metadata.annotations.clone().expect("annotations")[APPLIED_DIGEST_ANNOTATION].clone()
        };
        assert_ne!(digest(&before), digest(&after));
        assert_eq!(digest(&after), digest(&build(&obj)), "the digest is deterministic");
    }
}
