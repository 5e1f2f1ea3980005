//! Controller scenarios on the real control plane: the real Controller, the
//! real Deployment controller, scheduler and garbage collector, kwok playing
//! the kubelets. Each test asserts the end state a user would check, and the
//! calls the operator made (seen by the proxy in front of the API server).

use std::time::Duration;

use grpc_operator::api::GrpcService;
use grpc_operator::reconcile::cleanup::FINALIZER;
use grpc_operator_testkit::{Fault, FaultKind, Verb};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::harness::{Harness, condition, count, create, eventually, owner_uid, patch_spec, sample};

/// Someone else (`kubectl edit`) changes the Deployment with a strategic merge patch.
async fn edit_deployment(h: &Harness, patch: Value) {
    let params = PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
    h.api::<Deployment>()
        .patch("user-service", &params, &Patch::Strategic(&patch))
        .await
        .expect("someone edits the Deployment");
}

/// A GrpcService whose pods cannot be scheduled: they ask for more CPU than the node has.
fn unschedulable(name: &str) -> GrpcService {
    let mut svc = sample(name);
    svc.spec.resources = Some(ResourceRequirements {
        // Not canonical on purpose: the API server stores it as "10k", and
        // the restart test shows the operator does not take that for drift.
        requests: Some([("cpu".to_owned(), Quantity("10000".into()))].into()),
        ..ResourceRequirements::default()
    });
    svc
}

#[tokio::test]
async fn created_grpc_service_gets_owned_deployment_and_service_and_ready_follows_availability() {
    let h = Harness::start().await;
    let created = create(&h, &unschedulable("user-service")).await;
    let uid = created.metadata.uid.clone().expect("uid");

    // Pods exist but stay Pending: the real Deployment controller reports it.
    let waiting = h.wait_ready("user-service", "False", "MinimumReplicasUnavailable").await;
    assert_eq!(waiting["status"]["observedGeneration"], 1);
    assert_eq!(waiting["status"]["endpoint"], format!("user-service.{}.svc:50051", h.ns()));
    assert_eq!(waiting["metadata"]["finalizers"], json!([FINALIZER]));
    let available = condition(&waiting, "DeploymentAvailable").expect("DeploymentAvailable");
    assert_eq!(available["status"], "False");

    let dep = h.deployment("user-service").await.expect("deployment");
    let svc = h.service("user-service").await.expect("service");
    assert_eq!(owner_uid(&dep), Some(uid.as_str()));
    assert_eq!(owner_uid(&svc), Some(uid.as_str()));
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"], json!(null), "TLS by default: not cleartext h2c");
    assert!(
        svc["spec"]["clusterIP"].as_str().is_some_and(|ip| !ip.is_empty()),
        "the real server allocated an IP"
    );

    // Children are written with server-side apply by one field manager.
    let writes = h.writes();
    let applies: Vec<_> =
        writes.iter().filter(|r| r.resource == "deployments" || r.resource == "services").collect();
    assert!(!applies.is_empty());
    for r in &applies {
        assert_eq!(r.verb, Verb::Apply, "{r:?}");
        assert_eq!(r.field_manager.as_deref(), Some("grpc-operator"), "{r:?}");
    }

    // Schedulable again: kwok runs the pods, they turn Ready, the Deployment Available.
    patch_spec(&h, "user-service", json!({"resources": null})).await;
    let ready = h.wait_ready("user-service", "True", "Ready").await;
    assert_eq!(ready["status"]["readyReplicas"], 2);
    assert_eq!(condition(&ready, "DeploymentAvailable").expect("condition")["status"], "True");
    h.shutdown().await;
}

#[tokio::test]
async fn spec_change_rolls_out_the_new_generation_and_advances_observed_generation() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    patch_spec(
        &h,
        "user-service",
        json!({"image": "registry.example.com/shop/user-service:2.0.0", "replicas": 3}),
    )
    .await;
    let ready = eventually("generation 2 Ready", || async {
        let obj = h.grpc_service("user-service").await?;
        let c = condition(&obj, "Ready")?;
        (c["status"] == "True" && c["observedGeneration"] == 2).then_some(obj)
    })
    .await;
    assert_eq!(ready["metadata"]["generation"], 2);
    assert_eq!(ready["status"]["observedGeneration"], 2);
    assert_eq!(ready["status"]["readyReplicas"], 3);
    let dep = h.deployment("user-service").await.expect("deployment");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/shop/user-service:2.0.0"
    );
    assert_eq!(dep["spec"]["replicas"], 3);
    assert_eq!(
        dep["status"]["updatedReplicas"], 3,
        "the real Deployment controller rolled out the new template"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn managed_field_edited_by_someone_else_is_corrected() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    edit_deployment(&h, json!({"spec": {"replicas": 7, "template": {"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}}})).await;

    eventually("replicas and image restored", || async {
        let dep = h.deployment("user-service").await?;
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
    let foreign: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "user-service", "labels": {"team": "legacy"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}},
                 "template": {"metadata": {"labels": {"app": "legacy"}},
                              "spec": {"containers": [{"name": "legacy", "image": "legacy:1"}]}}}
    }))
    .expect("deployment");
    let foreign =
        h.api::<Deployment>().create(&PostParams::default(), &foreign).await.expect("foreign deployment");
    h.proxy.clear_requests();

    create(&h, &sample("user-service")).await;
    let obj = h.wait_ready("user-service", "False", "NotOwned").await;
    let message = condition(&obj, "Ready").expect("ready")["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains(&format!("Deployment {}/user-service exists and is not owned", h.ns())),
        "{message}"
    );

    // Let a few retries happen, then check nothing was written to children.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = h.deployment("user-service").await.expect("still there");
    let before_rv = foreign.metadata.resource_version.clone().expect("rv");
    let after_spec_unchanged = after["spec"]["template"]["spec"]["containers"][0]["image"] == "legacy:1";
    assert!(after_spec_unchanged, "{after}");
    assert_eq!(after["metadata"]["generation"], 1, "spec never changed (rv was {before_rv})");
    assert!(after["metadata"]["ownerReferences"].is_null(), "no owner reference added");
    assert!(h.service("user-service").await.is_none(), "nothing is half-applied");
    let writes = h.writes();
    assert_eq!(
        count(&writes, Verb::Apply, "deployments") + count(&writes, Verb::Apply, "services"),
        0,
        "{writes:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn deleting_a_grpc_service_removes_the_finalizer_and_the_garbage_collector_removes_its_children() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;
    assert!(h.service("user-service").await.is_some());

    h.api::<GrpcService>().delete("user-service", &DeleteParams::default()).await.expect("delete accepted");
    eventually("GrpcService and children gone", || async {
        (h.grpc_service("user-service").await.is_none()
            && h.deployment("user-service").await.is_none()
            && h.service("user-service").await.is_none())
        .then_some(())
    })
    .await;
    let finalizer_patches =
        h.proxy.requests().iter().filter(|r| r.verb == Verb::Patch && r.resource == "grpcservices").count();
    assert!(finalizer_patches >= 2, "finalizer added then removed with patches");
    // The operator deleted nothing itself: the garbage collector did.
    let deletes: Vec<_> = h.proxy.requests().into_iter().filter(|r| r.verb == Verb::Delete).collect();
    assert!(deletes.is_empty(), "{deletes:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn restarted_operator_converges_without_duplicate_writes() {
    let mut h = Harness::start().await;
    create(&h, &sample("a")).await;
    create(&h, &unschedulable("b")).await;
    h.wait_ready("a", "True", "Ready").await;
    h.wait_ready("b", "False", "MinimumReplicasUnavailable").await;
    h.stop_controller().await;

    // A new operator (fresh caches, a full list) finds everything in place,
    // the Ready one and the waiting one alike: it writes nothing.
    h.proxy.clear_requests();
    h.start_controller().await;
    eventually("the new operator reconciled both", || async { (h.reconciles() >= 2).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let writes = h.writes();
    assert_eq!(count(&writes, Verb::Apply, "deployments"), 0, "children already match: {writes:?}");
    assert_eq!(count(&writes, Verb::Apply, "services"), 0, "{writes:?}");
    assert_eq!(count(&writes, Verb::Patch, "grpcservices"), 0, "finalizers already present: {writes:?}");
    assert!(writes.is_empty(), "statuses already right: {writes:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn injected_api_errors_and_cut_watches_still_converge() {
    let h = Harness::start().await;
    for (verb, resource, subresource, code, times) in [
        (Verb::Apply, "deployments", None, 500, 2),
        (Verb::Apply, "services", None, 429, 2),
        (Verb::Apply, "grpcservices", Some("status"), 409, 1),
        (Verb::Patch, "grpcservices", None, 503, 1),
    ] {
        h.proxy.inject(Fault {
            verb: Some(verb),
            resource: Some(resource.into()),
            subresource: subresource.map(Into::into),
            kind: FaultKind::Status(code),
            times,
        });
    }
    let watches = || h.proxy.requests().iter().filter(|r| r.verb == Verb::Watch).count();
    let before = watches();
    create(&h, &sample("user-service")).await;
    h.proxy.cut_watches();
    eventually("the operator re-watched", || async { (watches() >= before + 3).then_some(()) }).await;
    h.proxy.cut_watches();
    h.wait_ready("user-service", "True", "Ready").await;
    assert!(watches() >= before + 6, "each cut made the operator open its three watches again");

    let warnings: Vec<String> = h
        .events()
        .await
        .iter()
        .filter(|e| e["type"] == "Warning" && e["reason"] == "ReconcileFailed")
        .map(|e| e["note"].as_str().unwrap_or_default().to_owned())
        .collect();
    // One Event per failure streak, naming the first failure: the finalizer
    // patch, the first write of a reconcile. kube's own retry of 503s is off,
    // so each fault reaches the controller.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("[server_error] finalizer step failed"), "{warnings:?}");
    let obj = h.grpc_service("user-service").await.expect("object");
    assert_eq!(condition(&obj, "Synced").expect("synced")["status"], "True", "back in sync");
    let failed: Vec<u16> =
        h.proxy.requests().iter().map(|r| r.status).filter(|s| *s >= 400 && *s != 404).collect();
    assert!(
        failed.contains(&500) && failed.contains(&429) && failed.contains(&409) && failed.contains(&503),
        "{failed:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn an_api_outage_is_survived_and_changes_made_during_it_are_applied() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    // The gauges follow the operator's cache, which the watch updates a
    // moment after the server.
    eventually("one Ready GrpcService and nothing queued, in the metrics", || async {
        let scraped = h.metrics.encode();
        (scraped.contains("grpc_operator_grpcservices{ready=\"true\"} 1")
            && scraped.contains("\ngrpc_operator_queue_depth 0\n"))
        .then_some(())
    })
    .await;

    h.proxy.black_hole(Duration::from_secs(3));
    patch_spec(&h, "user-service", json!({"replicas": 3})).await;
    // Unready while the API does not answer (threshold 1 s in the tests), but
    // never unlive: a restart would not help.
    eventually("not ready during the outage", || async { h.health.ready().is_err().then_some(()) }).await;
    // The reconcile of the change hangs in the outage for longer than the
    // tests' stall threshold (2 s), and liveness still holds.
    for _ in 0..30 {
        assert!(h.health.live().is_ok(), "{:?}", h.health.live());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the change made during the outage is applied", || async {
        let dep = h.deployment("user-service").await?;
        (dep["spec"]["replicas"] == 3).then_some(())
    })
    .await;
    h.wait_ready("user-service", "True", "Ready").await;
    eventually("ready again", || async { h.health.ready().is_ok().then_some(()) }).await;
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
    assert!(h.deployment("bad").await.is_none() && h.service("bad").await.is_none());

    assert_eq!(condition(&obj, "Synced").expect("synced")["reason"], "InvalidSpec");

    // A valid object made invalid keeps its children exactly as they were:
    // not Synced, but still Ready, because the old pods still serve.
    create(&h, &sample("good")).await;
    h.wait_ready("good", "True", "Ready").await;
    let before = h.deployment("good").await.expect("deployment");
    patch_spec(&h, "good", json!({"replicas": 5, "env": [{"name": "POD_IP", "value": "x"}]})).await;
    let obj = h.wait_condition("good", "Synced", "False", "InvalidSpec").await;
    assert_eq!(condition(&obj, "Ready").expect("ready")["status"], "True");
    let after = h.deployment("good").await.expect("deployment");
    assert_eq!(before["metadata"]["generation"], after["metadata"]["generation"]);
    assert_eq!(after["spec"]["replicas"], 2);
    h.shutdown().await;
}

#[tokio::test]
async fn idle_grpc_service_causes_no_writes() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.proxy.clear_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes: Vec<_> = h.proxy.requests().into_iter().filter(|r| r.verb.is_write()).collect();
    assert!(writes.is_empty(), "{writes:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn pod_template_edit_alone_is_detected_though_the_cache_omits_templates() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;

    // Only the template changes: the operator's cache has no template, so it
    // must notice the new generation and compare the full object.
    edit_deployment(
        &h,
        json!({"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}}}),
    )
    .await;
    eventually("image restored", || async {
        let dep = h.deployment("user-service").await?;
        (dep["spec"]["template"]["spec"]["containers"][0]["image"]
            == "registry.example.com/shop/user-service:1.0.0")
            .then_some(())
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_hung_api_request_for_one_grpc_service_does_not_hold_up_another() {
    let h = Harness::start().await;
    h.proxy.inject(Fault {
        verb: Some(Verb::Apply),
        resource: Some("deployments".into()),
        subresource: None,
        kind: FaultKind::Hang,
        times: 1,
    });
    create(&h, &sample("a")).await;
    eventually("one Deployment apply hangs", || async {
        h.proxy
            .requests()
            .iter()
            .any(|r| r.verb == Verb::Apply && r.resource == "deployments" && r.status == 0)
            .then_some(())
    })
    .await;
    create(&h, &sample("b")).await;
    h.wait_ready("b", "True", "Ready").await;
    // No graceful shutdown: it would wait for the hung reconcile. The test's
    // runtime ends, and with it the controller and the proxy.
}

#[tokio::test]
async fn deleted_child_service_and_deployment_are_recreated() {
    let h = Harness::start().await;
    create(&h, &sample("user-service")).await;
    h.wait_ready("user-service", "True", "Ready").await;
    let old_svc = h.service("user-service").await.expect("service");

    // As a user would: kubectl delete service / deployment.
    h.api::<k8s_openapi::api::core::v1::Service>()
        .delete("user-service", &DeleteParams::default())
        .await
        .expect("service deleted");
    let recreated = eventually("the Service is back", || async {
        let svc = h.service("user-service").await?;
        (svc["metadata"]["uid"] != old_svc["metadata"]["uid"]).then_some(svc)
    })
    .await;
    assert_eq!(recreated["spec"]["ports"][0]["name"], "grpc");

    let old_dep = h.deployment("user-service").await.expect("deployment");
    h.api::<Deployment>().delete("user-service", &DeleteParams::default()).await.expect("deployment deleted");
    eventually("the Deployment is back", || async {
        let dep = h.deployment("user-service").await?;
        (dep["metadata"]["uid"] != old_dep["metadata"]["uid"]).then_some(())
    })
    .await;
    h.wait_ready("user-service", "True", "Ready").await;
    h.shutdown().await;
}

#[tokio::test]
async fn an_operator_killed_between_two_child_writes_converges_after_a_restart_without_duplicates() {
    let mut h = Harness::without_controller().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    h.write_operator_kubeconfig(&kubeconfig).await;
    // The Service apply, the second write, hangs: the operator process is
    // killed with the Deployment written and the Service not.
    h.proxy.inject(Fault {
        verb: Some(Verb::Apply),
        resource: Some("services".into()),
        subresource: None,
        kind: FaultKind::Hang,
        times: 1,
    });
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_grpc-operator"))
        .args(["run", "--namespace", h.ns(), "--admin-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("operator binary starts");
    create(&h, &sample("user-service")).await;
    eventually("the Deployment is written and the Service apply hangs", || async {
        let requests = h.proxy.requests();
        let deployment =
            requests.iter().any(|r| r.verb == Verb::Apply && r.resource == "deployments" && r.status == 201);
        let hanging =
            requests.iter().any(|r| r.verb == Verb::Apply && r.resource == "services" && r.status == 0);
        (deployment && hanging).then_some(())
    })
    .await;
    operator.start_kill().expect("SIGKILL");
    operator.wait().await.expect("reaped");
    assert!(h.service("user-service").await.is_none(), "killed before the Service was written");

    // A new operator finishes the job and repeats nothing.
    h.proxy.clear_requests();
    h.start_controller().await;
    h.wait_ready("user-service", "True", "Ready").await;
    let count_in_ns = |kind: &'static str| {
        let client = h.client.clone();
        let ns = h.ns().to_owned();
        async move {
            let ar = match kind {
                "deployments" => kube::discovery::ApiResource::erase::<Deployment>(&()),
                "services" => kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
                _ => kube::discovery::ApiResource::erase::<k8s_openapi::api::apps::v1::ReplicaSet>(&()),
            };
            let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(client, &ns, &ar);
            api.list(&Default::default()).await.expect("list").items.len()
        }
    };
    assert_eq!(count_in_ns("deployments").await, 1);
    assert_eq!(count_in_ns("services").await, 1);
    assert_eq!(count_in_ns("replicasets").await, 1, "the Deployment was not rolled out again");
    let writes = h.writes();
    assert_eq!(count(&writes, Verb::Apply, "deployments"), 0, "the Deployment already matched: {writes:?}");
    assert_eq!(count(&writes, Verb::Apply, "services"), 1, "{writes:?}");
    h.shutdown().await;
}
