//! The Deployment running the workload, with the workload contract wired in.
//! Its condition, `DeploymentAvailable`, gates `Ready`.

use grpc_contract::admin::{ADMIN_PORT_NAME, GRPC_PORT_NAME, LIVENESS_PATH, READINESS_PATH};
use grpc_contract::env;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::labels::{MANAGED_BY_LABEL, MANAGER, child_meta, selector_labels};
use super::{BuildError, ChildKind, ConditionRole, ObservedChildren, Workload, to_value};
use crate::reconcile::status::{Verdict, reason};
use crate::reconcile::validate::ValidatedService;

/// Name of the workload container.
pub const CONTAINER_NAME: &str = "server";
/// Condition type of this kind.
pub const DEPLOYMENT_AVAILABLE: &str = "DeploymentAvailable";
/// Annotation recording that the operator sets `spec.replicas`, so that it
/// knows to hand the field over when `spec.replicas` becomes unset (the cache
/// holds no managedFields to tell).
pub const REPLICAS_ANNOTATION: &str = "grpcoperator.io/replicas";

/// The Deployment kind.
pub struct DeploymentKind;

impl ChildKind for DeploymentKind {
    fn kind(&self) -> &'static str {
        "Deployment"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource::erase::<Deployment>(&())
    }

    fn wanted(&self, _svc: &ValidatedService) -> bool {
        true
    }

    fn build(
        &self,
        svc: &ValidatedService,
        workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        to_value(self.kind(), &deployment(svc, workload))
    }

    // What `deployment_available` and `handover` read; the template, most of
    // the object, is dropped.
    fn cache_keeps(&self) -> &'static [&'static str] {
        &[
            "/spec/replicas",
            "/status/observedGeneration",
            "/status/replicas",
            "/status/updatedReplicas",
            "/status/readyReplicas",
            "/status/availableReplicas",
            "/status/conditions",
        ]
    }

    /// Also drops the conditions' timestamps, which nothing reads.
    fn slim(&self, obj: &mut DynamicObject) {
        super::slim_metadata(obj);
        let mut fields = super::kept_fields(&obj.data, self.cache_keeps());
        if let Some(conditions) = fields.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
            for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
                c.remove("lastUpdateTime");
                c.remove("lastTransitionTime");
            }
        }
        super::store_kept(obj, fields);
    }

    fn condition(&self) -> Option<ConditionRole> {
        Some(ConditionRole { type_: DEPLOYMENT_AVAILABLE, gates_ready: true })
    }

    fn verdict(
        &self,
        _svc: &ValidatedService,
        _observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<Verdict> {
        Some(match super::typed::<Deployment>(live?) {
            Ok(d) => deployment_available(&d),
            Err(e) => Verdict::not_ok(reason::ROLLOUT_IN_PROGRESS, format!("unreadable Deployment: {e}")),
        })
    }

    /// `spec.replicas` became unset: the live count is applied under the
    /// handover manager first, so the operator's apply without the field
    /// leaves it alone instead of resetting it to 1.
    fn handover(&self, desired: &Value, live: &DynamicObject) -> Option<Value> {
        let we_set_it =
            live.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(REPLICAS_ANNOTATION));
        if !we_set_it || desired.pointer("/spec/replicas").is_some() {
            return None;
        }
        let replicas = super::kept(live).pointer("/spec/replicas")?.clone();
        Some(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": live.metadata.name, "namespace": live.metadata.namespace},
            "spec": {"replicas": replicas},
        }))
    }
}

/// Builds the Deployment.
pub fn deployment(svc: &ValidatedService, workload: &Workload) -> Deployment {
    let mut pod_labels = svc.pod_labels.clone();
    // Selector labels last, so they always win (validate rejects them anyway).
    pod_labels.extend(selector_labels(svc));
    pod_labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());

    let mut metadata = child_meta(svc);
    if !workload.deployment_annotations.is_empty() {
        metadata.annotations.get_or_insert_default().extend(workload.deployment_annotations.clone());
    }
    if svc.replicas.is_some() {
        metadata
            .annotations
            .get_or_insert_default()
            .insert(REPLICAS_ANNOTATION.to_owned(), "managed".to_owned());
    }
    let mut pod_annotations = svc.pod_annotations.clone();
    pod_annotations.extend(workload.pod_annotations.clone());

    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            // Unset: whoever scales the Deployment owns the count (1 on create).
            replicas: svc.replicas,
            selector: LabelSelector { match_labels: Some(selector_labels(svc)), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(svc, workload)),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(svc: &ValidatedService, workload: &Workload) -> PodSpec {
    let containers = vec![container(svc, workload)];
    // The root filesystem is read-only; give the workload a writable /tmp.
    let mut volumes = vec![Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    volumes.extend(workload.volumes.iter().cloned());
    PodSpec {
        service_account_name: Some(svc.service_account.clone()),
        image_pull_secrets: (!svc.image_pull_secrets.is_empty()).then(|| svc.image_pull_secrets.clone()),
        // Pod Security Standard "restricted".
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        init_containers: (!workload.sidecars.is_empty()).then(|| workload.sidecars.clone()),
        containers,
        volumes: Some(volumes),
        // The runtime's whole shutdown: drain delay, in-flight calls, hooks
        // and flush, plus a margin (grpc_contract::shutdown).
        termination_grace_period_seconds: Some(svc.shutdown.termination_grace_seconds),
        ..PodSpec::default()
    }
}

fn container(svc: &ValidatedService, workload: &Workload) -> Container {
    let mut volume_mounts =
        vec![VolumeMount { name: "tmp".to_owned(), mount_path: "/tmp".to_owned(), ..VolumeMount::default() }];
    volume_mounts.extend(workload.volume_mounts.iter().cloned());
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
        env: Some(container_env(svc, workload)),
        resources: svc.resources.clone(),
        // HTTP probes on the admin port rather than gRPC probes: once mTLS is on,
        // the kubelet cannot present a client certificate to the gRPC port.
        liveness_probe: Some(http_probe(LIVENESS_PATH, ADMIN_PORT_NAME, 10, 3)),
        readiness_probe: Some(http_probe(READINESS_PATH, ADMIN_PORT_NAME, 5, 2)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    }
}

/// The workload contract first, then what other kinds contribute, then the
/// user's variables. `POD_*` precede `OTEL_RESOURCE_ATTRIBUTES` because it
/// references them with `$(VAR)`, which the kubelet only expands for
/// variables defined earlier in the list.
fn container_env(svc: &ValidatedService, workload: &Workload) -> Vec<EnvVar> {
    let mut vars = vec![
        value_var(env::GRPC_PORT, svc.port.to_string()),
        value_var(env::ADMIN_PORT, svc.admin_port.to_string()),
        field_var(env::POD_NAME, "metadata.name"),
        field_var(env::POD_NAMESPACE, "metadata.namespace"),
        field_var(env::POD_IP, "status.podIP"),
        value_var(env::OTEL_SERVICE_NAME, svc.name.clone()),
        value_var(
            env::OTEL_RESOURCE_ATTRIBUTES,
            format!("k8s.namespace.name=$({}),k8s.pod.name=$({})", env::POD_NAMESPACE, env::POD_NAME),
        ),
        value_var(env::LOG_FORMAT, "json".to_owned()),
        value_var(env::SHUTDOWN_DRAIN_DELAY, svc.shutdown.drain_delay.clone()),
        value_var(env::SHUTDOWN_TIMEOUT, svc.shutdown.timeout.clone()),
    ];
    if let Some(origins) = super::envoy_config::native_origins(svc) {
        vars.push(value_var(env::GRPC_WEB_ORIGINS, origins));
    }
    vars.extend(workload.env.iter().cloned());
    vars.extend(svc.env.iter().cloned());
    vars
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

/// An HTTP GET probe of `path` on the container port named `port`.
pub fn http_probe(path: &str, port: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
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

/// A container's part of Pod Security "restricted", with a read-only root
/// filesystem.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }
}

/// Whether `deployment` has rolled out its current spec with the minimum
/// available pods, following the same rules as `kubectl rollout status`.
pub fn deployment_available(deployment: &Deployment) -> Verdict {
    let generation = deployment.metadata.generation.unwrap_or(0);
    // No status and an empty one read the same: a cached copy keeps only some
    // status fields, and must give the verdict the full object gives.
    let empty = Default::default();
    let status = deployment.status.as_ref().unwrap_or(&empty);
    if status.observed_generation.unwrap_or(0) < generation {
        return Verdict::not_ok(
            reason::ROLLOUT_IN_PROGRESS,
            format!("Deployment has not yet observed generation {generation}"),
        );
    }
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| c.type_ == "Progressing")
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return Verdict::not_ok(
            reason::PROGRESS_DEADLINE_EXCEEDED,
            c.message.clone().unwrap_or_else(|| "Deployment exceeded its progress deadline".to_owned()),
        );
    }
    let want = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    if updated < want {
        return Verdict::not_ok(
            reason::ROLLOUT_IN_PROGRESS,
            format!("{updated} of {want} pods updated to the current spec"),
        );
    }
    let total = status.replicas.unwrap_or(0);
    if total > updated {
        return Verdict::not_ok(
            reason::ROLLOUT_IN_PROGRESS,
            format!("{} old pods pending termination", total - updated),
        );
    }
    let available = status.available_replicas.unwrap_or(0);
    let available_condition = conditions.iter().find(|c| c.type_ == "Available");
    match available_condition {
        Some(c) if c.status == "True" => {
            Verdict::ok(reason::MINIMUM_REPLICAS_AVAILABLE, format!("{available} of {want} pods available"))
        }
        Some(c) => Verdict::not_ok(
            reason::MINIMUM_REPLICAS_UNAVAILABLE,
            c.message.clone().unwrap_or_else(|| format!("{available} of {want} pods available")),
        ),
        None if want == 0 => Verdict::ok(reason::MINIMUM_REPLICAS_AVAILABLE, "scaled to zero"),
        None => Verdict::not_ok(
            reason::MINIMUM_REPLICAS_UNAVAILABLE,
            format!("{available} of {want} pods available"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::tests::{build, valid};
    use crate::reconcile::validate::tests::sample;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use k8s_openapi::api::core::v1::EnvVar;
    use kube::api::ObjectMeta;

    fn built(obj: &crate::api::GrpcService) -> Deployment {
        serde_json::from_value(build(obj, "Deployment").expect("always wanted")).expect("a Deployment")
    }

    #[test]
    fn deployment_matches_snapshot() {
        insta::assert_yaml_snapshot!(build(&sample(), "Deployment").expect("wanted"));
    }

    #[test]
    fn container_follows_pod_security_restricted() {
        let pod = built(&sample()).spec.expect("deployment spec").template.spec.expect("pod spec");
        let sc = pod.containers[0].security_context.as_ref().expect("security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_owned()]));
        assert_eq!(sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
        assert_eq!(pod.security_context.expect("pod security context").run_as_non_root, Some(true));
    }

    #[test]
    fn probes_are_http_on_the_admin_port() {
        let pod = built(&sample()).spec.expect("deployment spec").template.spec.expect("pod spec");
        let c = &pod.containers[0];
        let get = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref().and_then(|p| p.http_get.clone()).map(|g| (g.path, g.port))
        };
        let admin = IntOrString::String("admin".into());
        assert_eq!(get(&c.liveness_probe), Some((Some("/healthz".into()), admin.clone())));
        assert_eq!(get(&c.readiness_probe), Some((Some("/readyz".into()), admin)));
    }

    #[test]
    fn contract_env_precedes_contributed_and_user_env() {
        let mut obj = sample();
        obj.spec.env = vec![EnvVar { name: "FEATURE".into(), value: Some("on".into()), value_from: None }];
        let workload = Workload {
            env: vec![EnvVar { name: "TLS_MODE".into(), value: Some("mutual".into()), value_from: None }],
            ..Workload::default()
        };
        let dep = deployment(&valid(&obj), &workload);
        let env =
            dep.spec.expect("spec").template.spec.expect("pod spec").containers[0].env.clone().expect("env");
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
                "SHUTDOWN_DRAIN_DELAY",
                "SHUTDOWN_TIMEOUT",
                "TLS_MODE",
                "FEATURE"
            ]
        );
    }

    #[test]
    fn grace_period_covers_the_runtimes_shutdown_budget() {
        let mut obj = sample();
        obj.spec.shutdown =
            Some(crate::api::Shutdown { drain_delay: Some("10s".into()), timeout: Some("30s".into()) });
        let pod = built(&obj).spec.expect("spec").template.spec.expect("pod spec");
        assert_eq!(pod.termination_grace_period_seconds, Some(10 + 30 + 10 + 5));
        let env = pod.containers[0].env.clone().expect("env");
        let value = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
        assert_eq!(
            (value("SHUTDOWN_DRAIN_DELAY"), value("SHUTDOWN_TIMEOUT")),
            (Some("10s".into()), Some("30s".into()))
        );
    }

    #[test]
    fn unset_replicas_are_left_out_and_handed_over_once_the_operator_had_set_them() {
        let mut obj = sample();
        obj.spec.replicas = None;
        let unset = build(&obj, "Deployment").expect("wanted");
        assert!(unset.pointer("/spec/replicas").is_none(), "{unset}");
        assert!(unset.pointer("/metadata/annotations/grpcoperator.io~1replicas").is_none());

        let mut live: DynamicObject =
            serde_json::from_value(build(&sample(), "Deployment").expect("wanted")).expect("object");
        live.data["spec"]["replicas"] = 5.into();
        let patch = DeploymentKind.handover(&unset, &live).expect("a handover");
        assert_eq!(patch["spec"], json!({"replicas": 5}));
        assert_eq!(patch["metadata"]["name"], "user-service");
        let set = build(&sample(), "Deployment").expect("wanted");
        assert_eq!(DeploymentKind.handover(&set, &live), None, "still set: nothing to hand over");
        live.metadata.annotations = None;
        assert_eq!(DeploymentKind.handover(&unset, &live), None, "never ours: nothing to hand over");
    }

    fn with_status(replicas: i32, generation: i64, status: Option<DeploymentStatus>) -> Deployment {
        Deployment {
            metadata: ObjectMeta { generation: Some(generation), ..ObjectMeta::default() },
            spec: Some(DeploymentSpec { replicas: Some(replicas), ..DeploymentSpec::default() }),
            status,
        }
    }

    fn dep_status(observed: i64, updated: i32, available: i32, available_cond: &str) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(updated),
            updated_replicas: Some(updated),
            ready_replicas: Some(available),
            available_replicas: Some(available),
            conditions: Some(vec![DeploymentCondition {
                type_: "Available".into(),
                status: available_cond.into(),
                ..DeploymentCondition::default()
            }]),
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn a_cached_copy_gives_the_verdict_of_the_full_object() {
        let samples = [
            with_status(2, 1, None),
            with_status(2, 1, Some(DeploymentStatus::default())),
            with_status(2, 2, Some(dep_status(1, 2, 2, "True"))),
            with_status(2, 2, Some(dep_status(2, 2, 2, "True"))),
            with_status(2, 2, Some(dep_status(2, 2, 0, "False"))),
        ];
        for full in samples {
            let mut obj: DynamicObject =
                serde_json::from_value(serde_json::to_value(&full).expect("json")).expect("object");
            let whole = DeploymentKind.verdict(&valid(&sample()), &ObservedChildren::default(), Some(&obj));
            DeploymentKind.slim(&mut obj);
            assert_eq!(
                DeploymentKind.verdict(&valid(&sample()), &ObservedChildren::default(), Some(&obj)),
                whole,
                "{full:?}"
            );
        }
    }

    #[test]
    fn new_deployment_is_rolling_out() {
        let v = deployment_available(&with_status(2, 1, None));
        assert_eq!((v.ok, v.reason), (false, reason::ROLLOUT_IN_PROGRESS));
    }

    #[test]
    fn deployment_that_has_not_observed_its_generation_is_rolling_out() {
        let v = deployment_available(&with_status(2, 2, Some(dep_status(1, 2, 2, "True"))));
        assert_eq!((v.ok, v.reason), (false, reason::ROLLOUT_IN_PROGRESS));
    }

    #[test]
    fn rolled_out_deployment_with_available_pods_is_available() {
        let v = deployment_available(&with_status(2, 2, Some(dep_status(2, 2, 2, "True"))));
        assert_eq!((v.ok, v.reason), (true, reason::MINIMUM_REPLICAS_AVAILABLE));
        assert_eq!(v.message, "2 of 2 pods available");
    }

    #[test]
    fn deployment_without_minimum_available_pods_is_unavailable() {
        let v = deployment_available(&with_status(2, 2, Some(dep_status(2, 2, 0, "False"))));
        assert_eq!((v.ok, v.reason), (false, reason::MINIMUM_REPLICAS_UNAVAILABLE));
    }

    #[test]
    fn progress_deadline_is_reported() {
        let mut s = dep_status(2, 1, 1, "True");
        s.conditions.get_or_insert_default().push(DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"x\" has timed out progressing.".into()),
            ..DeploymentCondition::default()
        });
        let v = deployment_available(&with_status(2, 2, Some(s)));
        assert_eq!((v.ok, v.reason), (false, reason::PROGRESS_DEADLINE_EXCEEDED));
    }
}
