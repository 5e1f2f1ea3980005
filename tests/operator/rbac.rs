//! The operator's ClusterRole (`config/rbac/role.yaml`) and the Role of the
//! namespaced install (`config/namespaced/watched/role.yaml`) are exactly
//! what it uses: a lifecycle run as its ServiceAccount under each, then its
//! requests read back from kube-apiserver's audit log and compared with the
//! grants. And an operator given namespaces watches only those.

use std::collections::BTreeSet;

use grpc_operator::api::GrpcService;
use grpc_operator::pki::trust::{ROTATE_ANNOTATION, STAGE_ANNOTATION};
use grpc_operator_testkit::audit::{self, Permission};
use grpc_operator_testkit::{Fault, FaultKind, OPERATOR_ACCOUNT, Verb};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::{Harness, create, eventually, sample};
use crate::monitoring::{prometheus_rule_api, service_monitor_api};

fn perm(group: &str, resource: &str, verb: &str) -> Permission {
    (group.to_owned(), resource.to_owned(), verb.to_owned())
}

const CLUSTER_ROLE: &str = "config/rbac/role.yaml";
const NAMESPACED_ROLE: &str = "config/namespaced/watched/role.yaml";
const CA_ROLE_FILE: &str = "config/ca-rbac/role.yaml";

fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(grpc_operator_testkit::repo_root().join(path)).expect("repository file")
}

#[test]
fn the_namespaced_role_has_exactly_the_cluster_roles_rules() {
    let rules = |path: &str| {
        let doc: serde_json::Value = serde_saphyr::from_str(&read_repo_file(path)).expect("YAML");
        doc["rules"].clone()
    };
    assert_eq!(
        rules(NAMESPACED_ROLE),
        rules(CLUSTER_ROLE),
        "copy the rules of {CLUSTER_ROLE} to {NAMESPACED_ROLE}"
    );
}

#[tokio::test]
async fn the_cluster_role_grants_exactly_what_the_operator_uses() {
    // The testkit binds the ServiceAccount to the ClusterRole.
    let h = Harness::start().await;
    run_lifecycle_and_compare(h, CLUSTER_ROLE).await;
}

#[tokio::test]
async fn the_namespaced_role_grants_exactly_what_the_operator_uses() {
    let mut h = Harness::without_controller().await;
    // As config/namespaced installs it: the Role in the watched namespace,
    // and the ServiceAccount bound to it instead of the ClusterRole.
    let role: k8s_openapi::api::rbac::v1::Role =
        serde_saphyr::from_str(&read_repo_file(NAMESPACED_ROLE)).expect("Role");
    let bindings = h.api::<k8s_openapi::api::rbac::v1::RoleBinding>();
    bindings.delete(OPERATOR_ACCOUNT, &DeleteParams::default()).await.expect("ClusterRole binding removed");
    h.api::<k8s_openapi::api::rbac::v1::Role>().create(&PostParams::default(), &role).await.expect("Role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": OPERATOR_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "grpc-operator"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": h.ns()}]
    }))
    .expect("binding");
    bindings.create(&PostParams::default(), &binding).await.expect("Role binding");
    h.start_controller().await;
    run_lifecycle_and_compare(h, NAMESPACED_ROLE).await;
}

#[tokio::test]
async fn an_operator_given_two_namespaces_reconciles_there_and_never_looks_elsewhere() {
    let mut h = Harness::without_controller().await;
    let other = h.cluster.namespace(&h.client, "op-b").await.expect("namespace b");
    let unwatched = h.cluster.namespace(&h.client, "op-c").await.expect("namespace c");
    // The operator's ServiceAccount (in the first namespace) may work in the second.
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": OPERATOR_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "grpc-operator"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": h.ns()}]
    }))
    .expect("binding");
    kube::Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(h.client.clone(), &other.name)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding in b");
    h.extra_namespaces = vec![other.name.clone()];
    h.start_controller().await;

    for ns in [h.ns().to_owned(), other.name.clone(), unwatched.name.clone()] {
        kube::Api::<GrpcService>::namespaced(h.client.clone(), &ns)
            .create(&PostParams::default(), &sample("user-service"))
            .await
            .expect("GrpcService created");
    }
    h.wait_ready("user-service", "True", "Ready").await;
    let in_other = kube::Api::<GrpcService>::namespaced(h.client.clone(), &other.name);
    eventually("the second namespace's GrpcService is Ready", || async {
        let obj = serde_json::to_value(in_other.get("user-service").await.ok()?).ok()?;
        (crate::harness::condition(&obj, "Ready")?["status"] == "True").then_some(())
    })
    .await;
    let untouched = kube::Api::<GrpcService>::namespaced(h.client.clone(), &unwatched.name)
        .get("user-service")
        .await
        .expect("third");
    assert!(untouched.status.is_none() && untouched.metadata.finalizers.is_none(), "{untouched:?}");
    let looked: Vec<String> = h
        .proxy
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| {
            p.contains(&format!("/namespaces/{}/", unwatched.name))
                || p.ends_with(&format!("/namespaces/{}", unwatched.name))
        })
        .collect();
    assert!(looked.is_empty(), "requests to the unwatched namespace: {looked:?}");
    h.shutdown().await;
}

async fn run_lifecycle_and_compare(h: Harness, role_file: &str) {
    // One failed apply, so that a ReconcileFailed Event is published, and a
    // conflict on the finalizer patch, so that the object is re-read.
    for (verb, resource, code) in [(Verb::Apply, "deployments", 500), (Verb::Patch, "grpcservices", 409)] {
        h.proxy.inject(Fault {
            verb: Some(verb),
            resource: Some(resource.into()),
            subresource: None,
            kind: FaultKind::Status(code),
            times: 1,
        });
    }
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    // Children carry blockOwnerDeletion, which OwnerReferencesPermissionEnforcement
    // (on in the test cluster) admits only with update on grpcservices/finalizers.
    let dep = h.deployment("user-service").await.expect("deployment");
    assert_eq!(dep["metadata"]["ownerReferences"][0]["blockOwnerDeletion"], true);

    // Autoscaling on (an HPA is created, the budget stays for minReplicas 2),
    // changed (patched), then off (HPA and budget pruned: delete).
    let spec = |spec: serde_json::Value| json!({ "spec": spec });
    let grpc = h.api::<GrpcService>();
    let merge = |v| Patch::Merge(v);
    let on = spec(json!({"replicas": null, "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
                          "resources": {"requests": {"cpu": "100m"}}}));
    grpc.patch("user-service", &PatchParams::default(), &merge(&on)).await.expect("autoscaling on");
    let hpas = h.api::<HorizontalPodAutoscaler>();
    let hpa_max = |max: i32| {
        let hpas = hpas.clone();
        async move {
            let hpa = hpas.get_opt("user-service").await.ok().flatten()?;
            (hpa.spec.max_replicas == max).then_some(())
        }
    };
    eventually("HPA created", || hpa_max(4)).await;
    let changed = spec(json!({"autoscaling": {"maxReplicas": 5}}));
    grpc.patch("user-service", &PatchParams::default(), &merge(&changed)).await.expect("autoscaling changed");
    eventually("HPA patched", || hpa_max(5)).await;
    let off = spec(json!({"autoscaling": null}));
    grpc.patch("user-service", &PatchParams::default(), &merge(&off)).await.expect("autoscaling off");
    eventually("HPA and PDB pruned", || async {
        let hpa = h.api::<HorizontalPodAutoscaler>().get_opt("user-service").await.ok()?;
        let pdb = h.api::<PodDisruptionBudget>().get_opt("user-service").await.ok()?;
        (hpa.is_none() && pdb.is_none()).then_some(())
    })
    .await;

    // A template edit makes the operator read the whole Deployment and re-apply it.
    let params = PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
    let edit =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}}});
    h.api::<Deployment>().patch("user-service", &params, &Patch::Strategic(&edit)).await.expect("edit");
    eventually("image restored", || async {
        let dep = h.deployment("user-service").await?;
        (dep["spec"]["template"]["spec"]["containers"][0]["image"] != "evil:latest").then_some(())
    })
    .await;

    // A CA rotation runs its four stages (the CA Secret is updated).
    h.api::<Secret>()
        .patch(
            &h.trust.settings.ca_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "now"}}})),
        )
        .await
        .expect("rotation requested");
    eventually("the CA rotation completes", || async {
        let ca = h.api::<Secret>().get(&h.trust.settings.ca_name).await.ok()?;
        let a = ca.metadata.annotations.unwrap_or_default();
        let bundle = ca.data.unwrap_or_default().get("ca.crt").map(|b| b.0.clone()).unwrap_or_default();
        let roots = String::from_utf8_lossy(&bundle).matches("BEGIN CERTIFICATE").count();
        (!a.contains_key(ROTATE_ANNOTATION) && !a.contains_key(STAGE_ANNOTATION) && roots == 1).then_some(())
    })
    .await;

    // cert-manager issues instead (its CRDs are on the test cluster): a
    // Certificate is created and the operator's Secret pruned; back, and the
    // Certificate is pruned.
    grpc.patch(
        "user-service",
        &PatchParams::default(),
        &Patch::Merge(&spec(json!({"tls": {"issuerRef": {"name": "ca"}}}))),
    )
    .await
    .expect("issuerRef on");
    let certificates = crate::mtls::certificate_api(&h);
    eventually("a Certificate, and the Secret pruned", || async {
        let cert = certificates.get_opt("user-service").await.ok()?;
        let secret = h.api::<Secret>().get_opt("user-service-tls").await.ok()?;
        (cert.is_some() && secret.is_none()).then_some(())
    })
    .await;
    grpc.patch(
        "user-service",
        &PatchParams::default(),
        &Patch::Merge(&spec(json!({"tls": {"issuerRef": null}}))),
    )
    .await
    .expect("issuerRef off");
    eventually("the Certificate pruned, the Secret back", || async {
        let cert = certificates.get_opt("user-service").await.ok()?;
        let secret = h.api::<Secret>().get_opt("user-service-tls").await.ok()?;
        (cert.is_none() && secret.is_some()).then_some(())
    })
    .await;

    // The gRPC-Web sidecar on (its ConfigMap is created, the browser
    // certificate Secret it names is read), then off (the ConfigMap pruned).
    let web = json!({"grpcWeb": {"enabled": true, "allowedOrigins": ["https://app.example.com"],
                                 "browserTLS": {"secretName": "browser-certificate"}}});
    let on = spec(web);
    grpc.patch("user-service", &PatchParams::default(), &merge(&on)).await.expect("gRPC-Web on");
    let config_maps = h.api::<ConfigMap>();
    eventually("the sidecar's ConfigMap", || async {
        config_maps.get_opt("user-service-envoy").await.ok()?.map(|_| ())
    })
    .await;
    let off = spec(json!({"grpcWeb": null}));
    grpc.patch("user-service", &PatchParams::default(), &merge(&off)).await.expect("gRPC-Web off");
    eventually("the sidecar's ConfigMap pruned", || async {
        config_maps.get_opt("user-service-envoy").await.ok()?.is_none().then_some(())
    })
    .await;

    // Monitoring (prometheus-operator's CRDs are on the test cluster): the
    // ServiceMonitor and PrometheusRule exist by default; a changed interval
    // patches the ServiceMonitor, the dashboard comes and goes with its
    // ConfigMap, and monitoring off prunes both monitoring objects.
    let monitors = service_monitor_api(&h);
    let rules = prometheus_rule_api(&h);
    eventually("the ServiceMonitor and the PrometheusRule", || async {
        let sm = monitors.get_opt("user-service").await.ok()??;
        rules.get_opt("user-service").await.ok()??;
        Some(sm)
    })
    .await;
    let monitoring = |m: serde_json::Value| spec(json!({ "monitoring": m }));
    let changed = monitoring(json!({"serviceMonitor": {"interval": "15s"}, "dashboard": {"enabled": true}}));
    grpc.patch("user-service", &PatchParams::default(), &merge(&changed))
        .await
        .expect("interval changed, dashboard on");
    eventually("the ServiceMonitor patched and the dashboard created", || async {
        let sm = monitors.get_opt("user-service").await.ok()??;
        config_maps.get_opt("user-service-dashboard").await.ok()??;
        (sm.data["spec"]["endpoints"][0]["interval"] == "15s").then_some(())
    })
    .await;
    let off = monitoring(
        json!({"serviceMonitor": {"enabled": false}, "alerts": {"enabled": false}, "dashboard": null}),
    );
    grpc.patch("user-service", &PatchParams::default(), &merge(&off)).await.expect("monitoring off");
    eventually("ServiceMonitor, PrometheusRule and dashboard pruned", || async {
        let sm = monitors.get_opt("user-service").await.ok()?;
        let rule = rules.get_opt("user-service").await.ok()?;
        let dashboard = config_maps.get_opt("user-service-dashboard").await.ok()?;
        (sm.is_none() && rule.is_none() && dashboard.is_none()).then_some(())
    })
    .await;

    // TLS off and an account of the user's: the certificate Secret and the
    // ServiceAccount are pruned.
    grpc.patch(
        "user-service",
        &PatchParams::default(),
        &merge(&spec(json!({"tls": {"mode": "disabled"}, "serviceAccountName": "default"}))),
    )
    .await
    .expect("TLS off");
    eventually("Secret and ServiceAccount pruned", || async {
        let secret = h.api::<Secret>().get_opt("user-service-tls").await.ok()?;
        let sa = h.api::<ServiceAccount>().get_opt("user-service").await.ok()?;
        (secret.is_none() && sa.is_none()).then_some(())
    })
    .await;

    h.api::<GrpcService>().delete("user-service", &DeleteParams::default()).await.expect("delete");
    eventually("GrpcService gone", || async { h.grpc_service("user-service").await.is_none().then_some(()) })
        .await;

    let user = format!("system:serviceaccount:{}:{OPERATOR_ACCOUNT}", h.ns());
    let log = h.cluster.info().audit_log.clone();
    let role = read_repo_file(role_file);
    let mut granted = audit::permissions_granted(&role).expect("role parses");
    // The CA's Role in the operator's namespace (the test namespace here).
    granted.extend(audit::permissions_granted(&read_repo_file(CA_ROLE_FILE)).expect("CA role parses"));
    // The monitoring selection check's read-only ClusterRole (bound to every
    // test's operator account, as the cluster-wide install binds it).
    granted.extend(
        audit::permissions_granted(&read_repo_file("config/monitoring-selection/role.yaml"))
            .expect("selection role parses"),
    );
    // Checked by admission on the children's ownerReferences, never requested
    // itself; the blockOwnerDeletion assertion above shows it was needed.
    // Likewise delete on Deployments and Services: checked when an orphan is
    // adopted (children_orphaned_by_a_cascade_orphan_delete_... fails without it).
    let admission_only: BTreeSet<Permission> = [
        perm("grpcoperator.io", "grpcservices/finalizers", "update"),
        perm("apps", "deployments", "delete"),
        perm("", "services", "delete"),
    ]
    .into();

    // The finalizer's addition (the proxy answered the first try itself) and
    // its removal: the last requests of the run.
    let (used, events) = eventually("the audit log shows the finalizer's removal", || async {
        let events = audit::events_of(&log, &user).ok()?;
        let finalizer_patches = events
            .iter()
            .filter(|e| {
                e.verb == "patch"
                    && e.object_ref
                        .as_ref()
                        .is_some_and(|o| o.resource == "grpcservices" && o.subresource.is_empty())
            })
            .count();
        (finalizer_patches >= 2).then(|| (audit::permissions_used(&events), events.len()))
    })
    .await;
    h.shutdown().await;

    let unused: Vec<_> = granted.difference(&used).filter(|p| !admission_only.contains(*p)).collect();
    let denied_or_ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(
        unused.is_empty() && denied_or_ungranted.is_empty(),
        "from {events} audit events of {user}:\ngranted but never used: {unused:?}\nused but not granted: {denied_or_ungranted:?}\nused: {used:?}"
    );
}
