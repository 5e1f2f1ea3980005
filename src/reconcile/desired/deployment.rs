//! The Deployment running the workload, with the workload contract wired in.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{MANAGED_BY_LABEL, MANAGER, child_meta, selector_labels};
use crate::contract::{
    ADMIN_PORT_NAME, ENV_ADMIN_PORT, ENV_GRPC_PORT, ENV_LOG_FORMAT, ENV_OTEL_RESOURCE_ATTRIBUTES,
    ENV_OTEL_SERVICE_NAME, ENV_POD_IP, ENV_POD_NAME, ENV_POD_NAMESPACE, GRPC_PORT_NAME, LIVENESS_PATH,
    READINESS_PATH,
};
use crate::reconcile::validate::ValidatedService;

/// Name of the workload container.
pub const CONTAINER_NAME: &str = "server";

/// Builds the Deployment.
pub fn deployment(svc: &ValidatedService) -> Deployment {
    let mut pod_labels = svc.pod_labels.clone();
    // Selector labels last, so they always win (validate rejects them anyway).
    pod_labels.extend(selector_labels(svc));
    pod_labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());

    Deployment {
        metadata: child_meta(svc),
        spec: Some(DeploymentSpec {
            replicas: Some(svc.replicas),
            selector: LabelSelector { match_labels: Some(selector_labels(svc)), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!svc.pod_annotations.is_empty()).then(|| svc.pod_annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(svc)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(svc: &ValidatedService) -> PodSpec {
    PodSpec {
        service_account_name: svc.service_account_name.clone(),
        image_pull_secrets: (!svc.image_pull_secrets.is_empty()).then(|| svc.image_pull_secrets.clone()),
        // Pod Security Standard "restricted".
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(svc)],
        // The root filesystem is read-only; give the workload a writable /tmp.
        volumes: Some(vec![Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

fn container(svc: &ValidatedService) -> Container {
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(svc.image.clone()),
        image_pull_policy: svc.image_pull_policy.map(|p| p.as_str().to_owned()),
        ports: Some(vec![
            ContainerPort {
                name: Some(GRPC_PORT_NAME.to_owned()),
                container_port: svc.port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.to_owned()),
                container_port: svc.admin_port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        env: Some(env(svc)),
        resources: svc.resources.clone(),
        // HTTP probes on the admin port rather than gRPC probes: once mTLS is on,
        // the kubelet cannot present a client certificate to the gRPC port.
        liveness_probe: Some(http_probe(LIVENESS_PATH, 10, 3)),
        readiness_probe: Some(http_probe(READINESS_PATH, 5, 2)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

/// The workload contract first, then the user's variables. `POD_*` precede
/// `OTEL_RESOURCE_ATTRIBUTES` because it references them with `$(VAR)`, which
/// the kubelet only expands for variables defined earlier in the list.
fn env(svc: &ValidatedService) -> Vec<EnvVar> {
    let mut env = vec![
        value_var(ENV_GRPC_PORT, svc.port.to_string()),
        value_var(ENV_ADMIN_PORT, svc.admin_port.to_string()),
        field_var(ENV_POD_NAME, "metadata.name"),
        field_var(ENV_POD_NAMESPACE, "metadata.namespace"),
        field_var(ENV_POD_IP, "status.podIP"),
        value_var(ENV_OTEL_SERVICE_NAME, svc.name.clone()),
        value_var(
            ENV_OTEL_RESOURCE_ATTRIBUTES,
            format!("k8s.namespace.name=$({ENV_POD_NAMESPACE}),k8s.pod.name=$({ENV_POD_NAME})"),
        ),
        value_var(ENV_LOG_FORMAT, "json".to_owned()),
    ];
    env.extend(svc.env.iter().cloned());
    env
}

fn value_var(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value), value_from: None }
}

fn field_var(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_owned()),
                field_path: field_path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(1),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }
}
