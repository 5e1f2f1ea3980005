//! Controller scenarios: the real Controller against the API double. Each test
//! asserts both the calls the operator made and the end state.

use std::time::Duration;

use grpc_operator::reconcile::cleanup::FINALIZER;
use grpc_operator_testkit::{Fault, FaultKind, Verb};
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::harness::{Harness, NS, condition, count, create, eventually, sample};

/// Someone else (`kubectl edit`) changes the Deployment with a strategic merge patch.
async fn edit_deployment(h: &Harness, patch: Value) {
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(h.client.clone(), NS);
    let params = PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
    deployments
        .patch("user-service", &params, &Patch::Strategic(&patch))
        .await
        .expect("someone edits the Deployment");
}

fn owner_uid(obj: &Value) -> Option<&str> {
    obj["metadata"]["ownerReferences"].as_array()?.iter().find(|o| o["controller"] == true)?["uid"].as_str()
}

#[tokio::test]
async fn created_grpc_service_gets_owned_deployment_and_service_and_ready_follows_availability() {
    let h = Harness::start().await;
    let created = create(&h, &sample("user-service")).await;
    let uid = created.metadata.uid.clone().expect("uid");

    let progressing = h.wait_ready("user-service", "False", "RolloutInProgress").await;
    assert_eq!(progressing["status"]["observedGeneration"], 1);
    assert_eq!(progressing["status"]["endpoint"], "user-service.shop.svc:50051");
    assert_eq!(progressing["metadata"]["finalizers"], json!([FINALIZER]));
    let available = condition(&progressing, "DeploymentAvailable").expect("DeploymentAvailable");
    assert_eq!(available["status"], "False");

    let dep = h.deployment("user-service").expect("deployment");
    let svc = h.service("user-service").expect("service");
    assert_eq!(owner_uid(&dep), Some(uid.as_str()));
    assert_eq!(owner_uid(&svc), Some(uid.as_str()));
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"], "kubernetes.io/h2c");

    // Children are written with server-side apply by one field manager.
    let writes = h.writes();
    let applies: Vec<_> =
        writes.iter().filter(|r| r.resource == "deployments" || r.resource == "services").collect();
    assert!(!applies.is_empty());
    for r in &applies {
        assert_eq!(r.verb, Verb::Apply, "{r:?}");
        assert_eq!(r.field_manager.as_deref(), Some("grpc-operator"), "{r:?}");
    }

    h.mark_available("user-service");
    let ready = h.wait_ready("user-service", "True", "Ready").await;
    assert_eq!(ready["status"]["readyReplicas"], 2);
    assert_eq!(condition(&ready, "DeploymentAvailable").expect("condition")["status"], "True");
    h.shutdown().await;
}

#[tokio::test]
async fn spec_change_rolls_out_the_new_generation_and_advances_observed_generation() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "False", "RolloutInProgress").await;
    h.mark_available("user-service");
    h.wait_ready("user-service", "True", "Ready").await;

    let patch = json!({"spec": {"image": "registry.example.com/shop/user-service:2.0.0", "replicas": 3}});
    h.api().patch("user-service", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patched");

    let rolling = h.wait_ready("user-service", "False", "RolloutInProgress").await;
    assert_eq!(rolling["metadata"]["generation"], 2);
    assert_eq!(rolling["status"]["observedGeneration"], 2);
    let dep = h.deployment("user-service").expect("deployment");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/shop/user-service:2.0.0"
    );
    assert_eq!(dep["spec"]["replicas"], 3);

    h.mark_available("user-service");
    let ready = h.wait_ready("user-service", "True", "Ready").await;
    assert_eq!(condition(&ready, "Ready").expect("ready")["observedGeneration"], 2);
    h.shutdown().await;
}

#[tokio::test]
async fn managed_field_edited_by_someone_else_is_corrected() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "False", "RolloutInProgress").await;

    edit_deployment(&h, json!({"spec": {"replicas": 7, "template": {"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}}})).await;

    eventually("replicas and image restored", || async {
        let dep = h.deployment("user-service")?;
        (dep["spec"]["replicas"] == 2
            && dep["spec"]["template"]["spec"]["containers"][0]["image"]
                == "registry.example.com/shop/user-service:1.0.0")
            .then_some(())
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn pre_existing_unowned_deployment_is_reported_and_left_untouched() {
    let h = Harness::start().await;
    let foreign = h
        .server
        .put_object(
            "apps",
            "deployments",
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "user-service", "namespace": NS, "labels": {"team": "legacy"}},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}},
                         "template": {"metadata": {"labels": {"app": "legacy"}},
                                      "spec": {"containers": [{"name": "legacy", "image": "legacy:1"}]}}}
            }),
        )
        .expect("foreign deployment");
    h.server.clear_requests();

    create(&h, &sample("user-service")).await;
    let obj = h.wait_ready("user-service", "False", "NotOwned").await;
    let message = condition(&obj, "Ready").expect("ready")["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("Deployment shop/user-service exists and is not owned"), "{message}");

    // Let a few retries happen, then check nothing was written to children.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = h.deployment("user-service").expect("still there");
    assert_eq!(after["metadata"]["resourceVersion"], foreign["metadata"]["resourceVersion"]);
    assert!(h.service("user-service").is_none(), "nothing is half-applied");
    let writes = h.writes();
    assert_eq!(
        count(&writes, Verb::Apply, "deployments") + count(&writes, Verb::Apply, "services"),
        0,
        "{writes:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn deleting_a_grpc_service_removes_the_finalizer_and_its_children() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "False", "RolloutInProgress").await;
    assert!(h.service("user-service").is_some());

    h.api().delete("user-service", &DeleteParams::default()).await.expect("delete accepted");
    eventually("GrpcService and children gone", || async {
        (h.grpc_service("user-service").is_none()
            && h.deployment("user-service").is_none()
            && h.service("user-service").is_none())
        .then_some(())
    })
    .await;
    let finalizer_removals =
        h.server.requests().iter().filter(|r| r.verb == Verb::Patch && r.resource == "grpcservices").count();
    assert!(finalizer_removals >= 2, "finalizer added then removed with patches");
    h.shutdown().await;
}

#[tokio::test]
async fn restarted_operator_converges_without_duplicate_writes() {
    let mut h = Harness::start().await;
    create(&h, &sample("a")).await;
    create(&h, &sample("b")).await;
    h.wait_ready("a", "False", "RolloutInProgress").await;
    h.wait_ready("b", "False", "RolloutInProgress").await;
    h.stop_controller().await;

    // While the operator is down, one Deployment becomes available.
    h.mark_available("a");
    h.server.clear_requests();
    h.start_controller().await;
    h.wait_ready("a", "True", "Ready").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let writes = h.writes();
    assert_eq!(count(&writes, Verb::Apply, "deployments"), 0, "children already match: {writes:?}");
    assert_eq!(count(&writes, Verb::Apply, "services"), 0, "{writes:?}");
    assert_eq!(count(&writes, Verb::Patch, "grpcservices"), 0, "finalizers already present: {writes:?}");
    // Only a's status changed; b's status is already right.
    assert_eq!(writes.len(), 1, "exactly one status write: {writes:?}");
    assert_eq!(writes[0].subresource.as_deref(), Some("status"));
    assert_eq!(writes[0].name.as_deref(), Some("a"));
    h.shutdown().await;
}

#[tokio::test]
async fn injected_api_errors_and_dropped_watches_still_converge() {
    let h = Harness::start().await;
    for (verb, resource, subresource, code, times) in [
        (Verb::Apply, "deployments", None, 500, 2),
        (Verb::Apply, "services", None, 429, 2),
        (Verb::Apply, "grpcservices", Some("status"), 409, 1),
        (Verb::Patch, "grpcservices", None, 503, 1),
    ] {
        h.server.inject(Fault {
            verb: Some(verb),
            resource: Some(resource.into()),
            subresource: subresource.map(Into::into),
            kind: FaultKind::Status(code),
            times,
        });
    }
    create(&h, &sample("user-service")).await;
    h.server.drop_watches();
    h.wait_ready("user-service", "False", "RolloutInProgress").await;
    h.server.drop_watches();
    h.mark_available("user-service");
    h.wait_ready("user-service", "True", "Ready").await;

    let warnings: Vec<String> = h
        .server
        .list_objects("events.k8s.io", "events", Some(NS))
        .iter()
        .filter(|e| e["type"] == "Warning" && e["reason"] == "ReconcileFailed")
        .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|n| n.starts_with("[server_error] apply step failed: failed to apply Deployment")),
        "{warnings:?}"
    );
    let failed: Vec<u16> =
        h.server.requests().iter().map(|r| r.status).filter(|s| *s >= 400 && *s != 404).collect();
    assert!(
        failed.contains(&500) && failed.contains(&429) && failed.contains(&409) && failed.contains(&503),
        "{failed:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn invalid_spec_reports_the_field_and_creates_or_changes_no_child() {
    let h = Harness::start().await;
    let mut bad = sample("bad");
    bad.spec.env = vec![EnvVar { name: "GRPC_PORT".into(), value: Some("1".into()), value_from: None }];
    create(&h, &bad).await;
    let obj = h.wait_ready("bad", "False", "InvalidSpec").await;
    let message = condition(&obj, "Ready").expect("ready")["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("spec.env[0].name"), "{message}");
    assert_eq!(obj["status"]["observedGeneration"], 1);
    assert!(h.deployment("bad").is_none() && h.service("bad").is_none());

    // A valid object made invalid keeps its children exactly as they were.
    create(&h, &sample("good")).await;
    h.wait_ready("good", "False", "RolloutInProgress").await;
    let before = h.deployment("good").expect("deployment");
    let patch = json!({"spec": {"replicas": 5, "env": [{"name": "POD_IP", "value": "x"}]}});
    h.api().patch("good", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patched");
    h.wait_ready("good", "False", "InvalidSpec").await;
    let after = h.deployment("good").expect("deployment");
    assert_eq!(before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"]);
    assert_eq!(after["spec"]["replicas"], 2);
    h.shutdown().await;
}

#[tokio::test]
async fn idle_grpc_service_causes_no_writes() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "False", "RolloutInProgress").await;
    h.mark_available("user-service");
    h.wait_ready("user-service", "True", "Ready").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.server.clear_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes: Vec<_> = h.server.requests().into_iter().filter(|r| r.verb.is_write()).collect();
    assert!(writes.is_empty(), "{writes:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn pod_template_edit_alone_is_detected_though_the_cache_omits_templates() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "False", "RolloutInProgress").await;

    // Only the template changes: the operator's cache has no template, so it
    // must notice the new generation and compare the full object.
    edit_deployment(
        &h,
        json!({"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}}}),
    )
    .await;
    eventually("image restored", || async {
        let dep = h.deployment("user-service")?;
        (dep["spec"]["template"]["spec"]["containers"][0]["image"]
            == "registry.example.com/shop/user-service:1.0.0")
            .then_some(())
    })
    .await;
    h.shutdown().await;
}
