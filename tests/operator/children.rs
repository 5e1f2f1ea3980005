//! The child kinds beyond the basics, on the real control plane: the HPA and
//! the PDB come and go with their sections, replicas are handed over to
//! whoever scales, orphans are adopted, an optional kind follows its CRD, and
//! the status tells the truth about failures and edits.

use std::sync::Arc;
use std::time::Duration;

use grpc_operator::api::GrpcService;
use grpc_operator::children::labels::child_meta;
use grpc_operator::children::{BuildError, ChildKind, ConditionRole, ObservedChildren, Workload};
use grpc_operator::reconcile::cleanup::FINALIZER;
use grpc_operator::reconcile::status::{Verdict, reason};
use grpc_operator::reconcile::validate::ValidatedService;
use grpc_operator_testkit::{Fault, FaultKind, Verb};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::harness::{Harness, condition, create, eventually, owner_uid, patch_spec, sample};

/// Whether `manager`'s managed fields of `obj` include `spec.replicas`.
fn owns_replicas(obj: &Value, manager: &str) -> bool {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["manager"] == manager && m["fieldsV1"]["f:spec"].get("f:replicas").is_some())
}

#[tokio::test]
async fn autoscaling_adds_an_hpa_hands_replicas_over_and_removing_it_prunes_hpa_and_budget() {
    let h = Harness::start().await;
    let mut svc = sample("user-service");
    svc.spec.replicas = Some(3);
    create(&h, &svc).await;
    h.wait_ready("user-service", "True", "Ready").await;
    let pdb = h.api::<PodDisruptionBudget>().get("user-service").await.expect("a default budget for 3 pods");
    let pdb = serde_json::to_value(pdb).expect("json");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");

    patch_spec(
        &h,
        "user-service",
        json!({"replicas": null, "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
               "resources": {"requests": {"cpu": "100m"}}}),
    )
    .await;
    let hpa = eventually("the HPA exists", || async {
        h.api::<HorizontalPodAutoscaler>().get_opt("user-service").await.ok().flatten()
    })
    .await;
    let hpa = serde_json::to_value(hpa).expect("json");
    assert_eq!(
        (hpa["spec"]["minReplicas"].clone(), hpa["spec"]["maxReplicas"].clone()),
        (json!(2), json!(5))
    );
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "user-service");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);

    // The operator no longer owns the count: it stayed 3, not reset to 1.
    let dep = eventually("the handover happened", || async {
        let dep = h.deployment("user-service").await?;
        (!owns_replicas(&dep, "grpc-operator")).then_some(dep)
    })
    .await;
    assert_eq!(dep["spec"]["replicas"], 3, "{}", dep["metadata"]["managedFields"]);

    // `kubectl scale` is not fought.
    let scale = json!({"spec": {"replicas": 4}});
    h.api::<Deployment>()
        .patch_scale("user-service", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scaled");
    let before = h.reconciles();
    eventually("the operator saw the scaled Deployment", || async {
        (h.reconciles() > before).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.deployment("user-service").await.expect("deployment")["spec"]["replicas"], 4);

    // Autoscaling off and replicas unset: nothing knows the pod count, so the
    // HPA and the default budget are pruned.
    patch_spec(&h, "user-service", json!({"autoscaling": null})).await;
    eventually("HPA and PDB pruned", || async {
        let hpa = h.api::<HorizontalPodAutoscaler>().get_opt("user-service").await.ok()?;
        let pdb = h.api::<PodDisruptionBudget>().get_opt("user-service").await.ok()?;
        (hpa.is_none() && pdb.is_none()).then_some(())
    })
    .await;
    assert_eq!(h.deployment("user-service").await.expect("deployment")["spec"]["replicas"], 4);
    let pruned = h.events().await.into_iter().any(|e| e["reason"] == "Pruned");
    assert!(pruned, "a Pruned Event says what was deleted");
    h.wait_ready("user-service", "True", "Ready").await;
    h.shutdown().await;
}

#[tokio::test]
async fn children_orphaned_by_a_cascade_orphan_delete_are_adopted_by_the_recreated_grpc_service() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    let orphan =
        DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..DeleteParams::default() };
    h.api::<GrpcService>().delete("user-service", &orphan).await.expect("kubectl delete --cascade=orphan");
    eventually("the GrpcService is gone and its children are orphans", || async {
        let gone = h.grpc_service("user-service").await.is_none();
        let dep = h.deployment("user-service").await?;
        let svc = h.service("user-service").await?;
        (gone && owner_uid(&dep).is_none() && owner_uid(&svc).is_none()).then_some(())
    })
    .await;

    let recreated = create(&h, &sample("user-service")).await;
    let uid = recreated.metadata.uid.expect("uid");
    h.wait_ready("user-service", "True", "Ready").await;
    let dep = h.deployment("user-service").await.expect("deployment");
    let svc = h.service("user-service").await.expect("service");
    assert_eq!((owner_uid(&dep), owner_uid(&svc)), (Some(uid.as_str()), Some(uid.as_str())));
    let obj = h.grpc_service("user-service").await.expect("object");
    assert_eq!(condition(&obj, "Synced").expect("synced")["status"], "True");
    assert!(h.events().await.iter().any(|e| e["reason"] == "Adopted"));
    h.shutdown().await;
}

#[tokio::test]
async fn a_stripped_finalizer_is_put_back_and_an_edited_status_is_corrected() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    let strip = json!({"metadata": {"finalizers": null}});
    h.api::<GrpcService>()
        .patch("user-service", &PatchParams::default(), &Patch::Merge(&strip))
        .await
        .expect("finalizer stripped");
    eventually("the finalizer is back", || async {
        let obj = h.grpc_service("user-service").await?;
        (obj["metadata"]["finalizers"] == json!([FINALIZER])).then_some(())
    })
    .await;

    let lie = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Edited",
        "message": "someone else", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    h.api::<GrpcService>()
        .patch_status("user-service", &PatchParams::default(), &Patch::Merge(&lie))
        .await
        .expect("status edited");
    let obj = h.wait_ready("user-service", "True", "Ready").await;
    assert_eq!(condition(&obj, "Synced").expect("synced")["status"], "True");
    assert_eq!(condition(&obj, "DeploymentAvailable").expect("available")["status"], "True");
    h.shutdown().await;
}

#[tokio::test]
async fn persistent_api_errors_turn_synced_false_while_ready_stays_true_then_recover() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    h.proxy.inject(Fault {
        verb: Some(Verb::Apply),
        resource: Some("deployments".into()),
        subresource: None,
        kind: FaultKind::Status(503),
        times: 8,
    });
    patch_spec(&h, "user-service", json!({"image": "registry.example.com/shop/user-service:2.0.0"})).await;
    let obj = h.wait_condition("user-service", "Synced", "False", "ApiUnavailable").await;
    let synced = condition(&obj, "Synced").expect("synced");
    assert!(synced["message"].as_str().is_some_and(|m| m.contains("failed to apply Deployment")), "{synced}");
    assert_eq!(condition(&obj, "Ready").expect("ready")["status"], "True", "the old pods still serve");

    h.wait_condition("user-service", "Synced", "True", "ReconcileSucceeded").await;
    let dep = h.deployment("user-service").await.expect("deployment");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/shop/user-service:2.0.0"
    );
    let failed = h.proxy.requests().iter().filter(|r| r.resource == "deployments" && r.status == 503).count();
    assert_eq!(failed, 8);
    h.shutdown().await;
}

/// A test-only optional kind over a CRD the test installs and removes.
struct WidgetKind;

const WIDGET_GROUP: &str = "test.grpcoperator.io";

fn widget_api() -> ApiResource {
    ApiResource {
        group: WIDGET_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{WIDGET_GROUP}/v1"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

impl ChildKind for WidgetKind {
    fn kind(&self) -> &'static str {
        "Widget"
    }

    fn api_resource(&self) -> ApiResource {
        widget_api()
    }

    fn optional(&self) -> bool {
        true
    }

    fn wanted(&self, _svc: &ValidatedService) -> bool {
        true
    }

    fn build(&self, svc: &ValidatedService, _: &Workload, _: &ObservedChildren) -> Result<Value, BuildError> {
        let meta =
            serde_json::to_value(child_meta(svc)).map_err(|source| BuildError { kind: "Widget", source })?;
        Ok(json!({"apiVersion": format!("{WIDGET_GROUP}/v1"), "kind": "Widget", "metadata": meta,
                  "spec": {"port": svc.port}}))
    }

    fn condition(&self) -> Option<ConditionRole> {
        Some(ConditionRole { type_: "WidgetReady", gates_ready: false })
    }

    fn verdict(
        &self,
        _svc: &ValidatedService,
        _observed: &ObservedChildren,
        _live: Option<&DynamicObject>,
    ) -> Option<Verdict> {
        Some(Verdict::ok(reason::READY, "the Widget exists"))
    }
}

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{WIDGET_GROUP}")},
        "spec": {"group": WIDGET_GROUP, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("CRD")
}

#[tokio::test]
async fn an_optional_kind_follows_its_crd_being_installed_and_removed_without_a_restart() {
    let h = Harness::start_with(Arc::new(WidgetKind)).await;
    // The operator's identity may manage Widgets in its namespace.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "widgets"},
        "rules": [{"apiGroups": [WIDGET_GROUP], "resources": ["widgets"],
                   "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]
    }))
    .expect("role");
    h.api::<Role>().create(&PostParams::default(), &role).await.expect("role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "widgets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "widgets"},
        "subjects": [{"kind": "ServiceAccount", "name": grpc_operator_testkit::OPERATOR_ACCOUNT, "namespace": h.ns()}]
    }))
    .expect("binding");
    h.api::<k8s_openapi::api::rbac::v1::RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");

    create(&h, &sample("user-service")).await;
    let obj = h.wait_ready("user-service", "True", "Ready").await;
    let widget = condition(&obj, "WidgetReady").expect("the optional kind's condition");
    assert_eq!(
        (widget["status"].clone(), widget["reason"].clone()),
        (json!("False"), json!("CRDNotInstalled"))
    );
    assert!(h.health.ready().is_ok(), "/readyz is unaffected");

    let crds: Api<CustomResourceDefinition> = Api::all(h.client.clone());
    crds.create(&PostParams::default(), &widget_crd()).await.expect("CRD installed");
    h.wait_condition("user-service", "WidgetReady", "True", "Ready").await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), h.ns(), &widget_api());
    let widget = widgets.get("user-service").await.expect("the operator created the Widget");
    let uid = h.grpc_service("user-service").await.expect("object")["metadata"]["uid"].clone();
    assert_eq!(widget.metadata.owner_references.expect("owner")[0].uid, uid.as_str().unwrap_or_default());
    assert_eq!(widget.data["spec"]["port"], 50051);
    h.proxy.clear_requests();

    crds.delete(&format!("widgets.{WIDGET_GROUP}"), &DeleteParams::default()).await.expect("CRD removed");
    let obj = h.wait_condition("user-service", "WidgetReady", "False", "CRDNotInstalled").await;
    assert_eq!(condition(&obj, "Ready").expect("ready")["status"], "True");
    // The watch stopped instead of failing in a loop.
    let errors = || {
        let families = prometheus::core::Collector::collect(&h.metrics.watch_errors);
        families.iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum::<u64>()
    };
    let settled = errors();
    h.proxy.clear_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(errors() <= settled + 1, "watch errors kept growing: {settled} then {}", errors());
    assert!(h.health.ready().is_ok());
    let widget_requests: Vec<_> =
        h.proxy.requests().into_iter().filter(|r| r.resource == "widgets").collect();
    assert!(widget_requests.is_empty(), "no request for a kind that is not served: {widget_requests:?}");
    h.shutdown().await;
}
