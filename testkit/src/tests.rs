//! End-to-end tests of the double with the real kube client, kube-runtime and kubectl.
#![allow(clippy::unwrap_used, clippy::panic)]

use crate::{FakeApiServer, Fault, FaultKind, Verb};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::time::Duration;

type TestResult = anyhow::Result<()>;

async fn next_within<S: futures::Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("stream item within 5s")
        .expect("stream not ended")
}

fn cm(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app": "demo"}},
        "data": data,
    }))
    .unwrap()
}

fn deployment(name: &str, replicas: i32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]}}
        }
    })
}

fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

const WIDGET_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1",
  "kind": "CustomResourceDefinition",
  "metadata": {"name": "widgets.example.test"},
  "spec": {
    "group": "example.test",
    "scope": "Namespaced",
    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
    "versions": [{
      "name": "v1", "served": true, "storage": true,
      "subresources": {"status": {}},
      "additionalPrinterColumns": [
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Image", "type": "string", "jsonPath": ".spec.image", "description": "The image."},
        {"name": "Policy", "type": "string", "jsonPath": ".spec.policy", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
      ],
      "schema": {"openAPIV3Schema": {
        "type": "object",
        "properties": {
          "spec": {
            "type": "object",
            "required": ["image"],
            "x-kubernetes-validations": [
              {"rule": "self.minReplicas <= self.replicas", "message": "minReplicas must not exceed replicas", "fieldPath": ".minReplicas"}
            ],
            "properties": {
              "image": {"type": "string", "pattern": "^[a-z]+:[0-9.]+$"},
              "replicas": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 1},
              "minReplicas": {"type": "integer", "default": 0},
              "policy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
              "podLabels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 8}}
            }
          },
          "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }
      }}
    }]
  }
}"#;

fn widget_api(client: kube::Client) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.test", "v1", "Widget"), "widgets");
    Api::namespaced_with(client, "default", &ar)
}

async fn install_widget_crd(client: &kube::Client) -> TestResult {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_str(WIDGET_CRD)?;
    crds.create(&PostParams::default(), &crd).await?;
    Ok(())
}

#[tokio::test]
async fn create_get_list_and_watch_work_with_kube_client() -> TestResult {
    let server = FakeApiServer::start().await?;
    let client = server.client().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next_within(&mut events).await?, watcher::Event::Init));
    assert!(matches!(next_within(&mut events).await?, watcher::Event::InitDone));

    let created = cms.create(&PostParams::default(), &cm("one", json!({"k": "v"}))).await?;
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    match next_within(&mut events).await? {
        watcher::Event::Apply(c) => assert_eq!(c.metadata.name.as_deref(), Some("one")),
        other => panic!("expected Apply, got {other:?}"),
    }
    assert_eq!(cms.get("one").await?.data, created.data);

    cms.create(&PostParams::default(), &cm("two", json!({}))).await?;
    let by_label = cms.list(&ListParams::default().labels("app=demo,tier notin (db)")).await?;
    assert_eq!(by_label.items.len(), 2);
    let by_field = cms.list(&ListParams::default().fields("metadata.name=two")).await?;
    assert_eq!(by_field.items.len(), 1);
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 2);

    let dup = cms.create(&PostParams::default(), &cm("one", json!({}))).await.unwrap_err();
    assert_eq!(api_code(&dup), Some(409));

    let verbs: Vec<Verb> = server.requests().iter().map(|r| r.verb).collect();
    assert!(verbs.contains(&Verb::Watch) && verbs.contains(&Verb::List) && verbs.contains(&Verb::Create));
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_not_found() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await?, "nope");
    let err = cms.create(&PostParams::default(), &cm("x", json!({}))).await.unwrap_err();
    assert_eq!(api_code(&err), Some(404));
    Ok(())
}

#[tokio::test]
async fn merge_patch_changes_fields_and_a_noop_patch_keeps_resource_version() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    cms.create(&PostParams::default(), &cm("p", json!({"a": "1", "b": "2"}))).await?;
    let patched = cms
        .patch("p", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": null, "c": "3"}})))
        .await?;
    let data = patched.data.clone().unwrap();
    assert_eq!(data.get("c").map(String::as_str), Some("3"));
    assert!(!data.contains_key("a"));
    let again = cms.patch("p", &PatchParams::default(), &Patch::Merge(json!({"data": {"c": "3"}}))).await?;
    assert_eq!(again.metadata.resource_version, patched.metadata.resource_version);

    let json_patched = cms
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(json!([
                {"op": "test", "path": "/data/b", "value": "2"},
                {"op": "replace", "path": "/data/b", "value": "20"}
            ]))?),
        )
        .await?;
    assert_eq!(json_patched.data.unwrap().get("b").map(String::as_str), Some("20"));

    // A stale resourceVersion on replace is a conflict.
    let mut stale = patched.clone();
    stale.data = Some(Default::default());
    let err = cms.replace("p", &PostParams::default(), &stale).await.unwrap_err();
    assert_eq!(api_code(&err), Some(409));
    Ok(())
}

#[tokio::test]
async fn noop_apply_keeps_resource_version() -> TestResult {
    let server = FakeApiServer::start().await?;
    let deps: Api<Deployment> = Api::default_namespaced(server.client().await?);
    let pp = PatchParams::apply("grpc-operator");
    let first = deps.patch("web", &pp, &Patch::Apply(deployment("web", 2, "nginx:1"))).await?;
    assert_eq!(first.metadata.generation, Some(1));
    let mf = first.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("grpc-operator"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(&mf[0].fields_v1)?;
    assert!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"main\"}"]["f:image"]
            .is_object()
    );

    server.clear_requests();
    let second = deps.patch("web", &pp, &Patch::Apply(deployment("web", 2, "nginx:1"))).await?;
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);
    assert_eq!(server.requests()[0].verb, Verb::Apply);
    assert_eq!(server.requests()[0].field_manager.as_deref(), Some("grpc-operator"));

    // Fields the manager stops applying are removed.
    let mut without_labels = deployment("web", 3, "nginx:1");
    without_labels["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
    let third = deps.patch("web", &pp, &Patch::Apply(without_labels)).await?;
    assert_eq!(third.metadata.generation, Some(2));
    let fourth = deps.patch("web", &pp, &Patch::Apply(deployment("web", 3, "nginx:1"))).await?;
    let c = &serde_json::to_value(&fourth)?["spec"]["template"]["spec"]["containers"][0];
    assert!(c.get("env").is_none(), "env was dropped from the applied config: {c}");

    let missing_manager = deps
        .patch("web", &PatchParams::default(), &Patch::Apply(deployment("web", 3, "nginx:1")))
        .await
        .unwrap_err();
    assert_eq!(api_code(&missing_manager), Some(400));
    Ok(())
}

#[tokio::test]
async fn apply_conflicts_without_force_and_force_takes_ownership() -> TestResult {
    let server = FakeApiServer::start().await?;
    let deps: Api<Deployment> = Api::default_namespaced(server.client().await?);
    deps.patch("web", &PatchParams::apply("owner"), &Patch::Apply(deployment("web", 2, "nginx:1"))).await?;
    // An Update by another manager takes ownership of replicas.
    deps.patch(
        "web",
        &PatchParams { field_manager: Some("hpa".into()), ..Default::default() },
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await?;
    let err = deps
        .patch("web", &PatchParams::apply("owner"), &Patch::Apply(deployment("web", 2, "nginx:1")))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else { panic!("{err:?}") };
    assert_eq!(status.code, 409);
    assert!(status.message.contains("conflict with \"hpa\""), "{}", status.message);
    assert!(status.message.contains(".spec.replicas"), "{}", status.message);

    let forced = deps
        .patch("web", &PatchParams::apply("owner").force(), &Patch::Apply(deployment("web", 2, "nginx:1")))
        .await?;
    assert_eq!(forced.spec.replicas, Some(2));
    let managers: Vec<String> =
        forced.metadata.managed_fields.unwrap().iter().filter_map(|m| m.manager.clone()).collect();
    assert_eq!(managers, vec!["owner".to_string()], "hpa lost its only field");
    Ok(())
}

#[tokio::test]
async fn status_subresource_and_generation_follow_the_real_rules() -> TestResult {
    let server = FakeApiServer::start().await?;
    let deps: Api<Deployment> = Api::default_namespaced(server.client().await?);
    let mut d = deployment("web", 1, "nginx:1");
    d["status"] = json!({"replicas": 7});
    let created = deps.create(&PostParams::default(), &serde_json::from_value(d)?).await?;
    assert!(created.status.is_none(), "create ignores status");

    let st = deps
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1}, "spec": {"replicas": 9}})),
        )
        .await?;
    assert_eq!(st.metadata.generation, Some(1));
    assert_eq!(st.spec.replicas, Some(1), "status writes ignore spec");
    assert_eq!(st.status.as_ref().unwrap().ready_replicas, Some(1));

    let main = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 5}, "metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    assert_eq!(main.metadata.generation, Some(1), "metadata changes do not bump generation");
    assert_eq!(main.status.unwrap().ready_replicas, Some(1), "main writes ignore status");

    let spec = deps
        .patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "nginx:2"}]}}}})))
        .await?;
    assert_eq!(spec.metadata.generation, Some(2));
    let containers = serde_json::to_value(&spec)?["spec"]["template"]["spec"]["containers"].clone();
    assert_eq!(containers, json!([{"name": "main", "image": "nginx:2"}]));

    server.set_status("apps", "deployments", Some("default"), "web", json!({"observedGeneration": 2}))?;
    let obj = server.get_object("apps", "deployments", Some("default"), "web").unwrap();
    assert_eq!(obj["status"]["observedGeneration"], json!(2));
    assert_eq!(obj["metadata"]["generation"], json!(2));
    Ok(())
}

#[tokio::test]
async fn deletion_waits_for_finalizers_and_forbids_new_ones() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    let mut c = cm("f", json!({}));
    c.metadata.finalizers = Some(vec!["example.test/cleanup".into()]);
    cms.create(&PostParams::default(), &c).await?;
    cms.delete("f", &DeleteParams::default()).await?;
    let marked = cms.get("f").await?;
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.generation, Some(2));

    let err = cms
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.test/cleanup", "other"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(422));

    cms.patch("f", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await?;
    assert_eq!(api_code(&cms.get("f").await.unwrap_err()), Some(404));
    Ok(())
}

#[tokio::test]
async fn deleting_an_owner_cascades_to_dependents() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    let owner = cms.create(&PostParams::default(), &cm("owner", json!({}))).await?;
    let owner_ref = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
        "uid": owner.metadata.uid.clone().unwrap(), "controller": true}]);
    for name in ["child", "orphan-candidate"] {
        let mut c = serde_json::to_value(cm(name, json!({})))?;
        c["metadata"]["ownerReferences"] = owner_ref.clone();
        cms.create(&PostParams::default(), &serde_json::from_value(c)?).await?;
    }
    let child_uid = cms.get("child").await?.metadata.uid.unwrap();
    let mut grandchild = serde_json::to_value(cm("grandchild", json!({})))?;
    grandchild["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "child", "uid": child_uid}]);
    cms.create(&PostParams::default(), &serde_json::from_value(grandchild)?).await?;

    cms.delete("owner", &DeleteParams::default()).await?;
    let left: Vec<String> = server
        .list_objects("", "configmaps", Some("default"))
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    assert!(left.is_empty(), "left: {left:?}");

    let owner2 = cms.create(&PostParams::default(), &cm("owner2", json!({}))).await?;
    let mut dep = serde_json::to_value(cm("kept", json!({})))?;
    dep["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner2.metadata.uid.unwrap()}]);
    cms.create(&PostParams::default(), &serde_json::from_value(dep)?).await?;
    cms.delete("owner2", &DeleteParams::orphan()).await?;
    let kept = cms.get("kept").await?;
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());
    Ok(())
}

#[tokio::test]
async fn crd_registration_serves_custom_objects_and_validates_them() -> TestResult {
    let server = FakeApiServer::start().await?;
    let client = server.client().await?;
    install_widget_crd(&client).await?;
    let crd = server
        .get_object("apiextensions.k8s.io", "customresourcedefinitions", None, "widgets.example.test")
        .unwrap();
    assert_eq!(crd["status"]["conditions"][1]["type"], json!("Established"));

    let discovery = kube::Discovery::new(client.clone()).run().await?;
    assert!(discovery.groups().any(|g| g.name() == "example.test"));

    let widgets = widget_api(client.clone());
    let ok: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.test/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"image": "app:1.0", "unknown": true}}))?;
    let created = widgets.create(&PostParams::default(), &ok).await?;
    assert_eq!(created.data["spec"]["replicas"], json!(1), "defaulted");
    assert!(created.data["spec"].get("unknown").is_none(), "pruned");

    let bad: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.test/v1", "kind": "Widget",
        "metadata": {"name": "w2"},
        "spec": {"replicas": 1001, "policy": "Sometimes", "podLabels": {"team": "far-too-long"}}}))?;
    let err = widgets.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = &err else { panic!("{err:?}") };
    assert_eq!(status.code, 422);
    assert_eq!(status.reason, "Invalid");
    for needle in [
        "Widget.example.test \"w2\" is invalid: [",
        "spec.replicas: Invalid value: 1001: spec.replicas in body should be less than or equal to 1000",
        "spec.image: Required value",
        "spec.policy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\"",
        "spec.podLabels[team]: Too long",
    ] {
        assert!(status.message.contains(needle), "missing {needle:?} in {}", status.message);
    }

    let cel: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.test/v1", "kind": "Widget",
        "metadata": {"name": "w3"}, "spec": {"image": "app:1.0", "replicas": 1, "minReplicas": 3}}))?;
    let err = widgets.create(&PostParams::default(), &cel).await.unwrap_err();
    let kube::Error::Api(status) = &err else { panic!("{err:?}") };
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("spec.minReplicas: Invalid value: \"integer\": minReplicas must not exceed replicas"),
        "{}",
        status.message
    );

    let strict = widgets.create(&PostParams::default(), &ok).await.unwrap_err();
    assert_eq!(api_code(&strict), Some(409));
    let raw = client
        .request_text(
            http::Request::post("/apis/example.test/v1/namespaces/default/widgets?fieldValidation=Strict")
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&json!({"apiVersion": "example.test/v1", "kind": "Widget",
                    "metadata": {"name": "w4"}, "spec": {"image": "app:1.0", "foo": 1}}))?)?,
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &raw else { panic!("{raw:?}") };
    assert_eq!(status.code, 400);
    assert!(
        status.message.contains("strict decoding error: unknown field \"spec.foo\""),
        "{}",
        status.message
    );

    // Deleting the CRD deletes its objects and unregisters the resource.
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    crds.delete("widgets.example.test", &DeleteParams::default()).await?;
    assert_eq!(api_code(&widgets.get("w1").await.unwrap_err()), Some(404));
    Ok(())
}

#[tokio::test]
async fn old_resource_version_watch_gets_410_and_watcher_relists() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    let first = cms.create(&PostParams::default(), &cm("a", json!({}))).await?;
    cms.create(&PostParams::default(), &cm("b", json!({}))).await?;
    server.compact_history();

    let mut stream = cms
        .watch(&WatchParams::default(), first.metadata.resource_version.as_deref().unwrap())
        .await?
        .boxed();
    match next_within(&mut stream).await? {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }

    // The watcher lists, then (lazily, on the next poll) watches from the list's version.
    let mut w = watcher(cms.clone(), watcher::Config::default()).boxed();
    while !matches!(next_within(&mut w).await?, watcher::Event::InitDone) {}
    server.put_object("", "configmaps", serde_json::to_value(cm("c", json!({})))?)?;
    server.compact_history();
    let mut saw_410 = false;
    let mut relisted = Vec::new();
    loop {
        match next_within(&mut w).await {
            Err(watcher::Error::WatchError(e)) if e.code == 410 => saw_410 = true,
            Err(e) => panic!("unexpected {e:?}"),
            Ok(watcher::Event::InitApply(c)) => relisted.push(c.metadata.name.unwrap()),
            Ok(watcher::Event::InitDone) => break,
            Ok(_) => {}
        }
    }
    assert!(saw_410);
    assert_eq!(relisted, vec!["a", "b", "c"]);
    Ok(())
}

#[tokio::test]
async fn injected_429_fails_once_then_the_retry_succeeds() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    server.inject(Fault {
        verb: Some(Verb::Create),
        resource: Some("configmaps".into()),
        subresource: None,
        kind: FaultKind::Status(429),
        times: 1,
    });
    // kube's client retries 429 answers honouring Retry-After, so the create succeeds.
    cms.create(&PostParams::default(), &cm("x", json!({}))).await?;
    let statuses: Vec<(Verb, u16)> = server.requests().iter().map(|r| (r.verb, r.status)).collect();
    assert_eq!(statuses, vec![(Verb::Create, 429), (Verb::Create, 201)]);

    server.inject(Fault {
        verb: Some(Verb::Get),
        resource: None,
        subresource: None,
        kind: FaultKind::Hang,
        times: 1,
    });
    let hung = tokio::time::timeout(Duration::from_millis(300), cms.get("x")).await;
    assert!(hung.is_err(), "hang never answers");
    assert!(cms.get("x").await.is_ok());
    Ok(())
}

#[tokio::test]
async fn drop_watches_ends_open_watch_streams() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    let mut stream = cms.watch(&WatchParams::default(), "0").await?.boxed();
    server.put_object("", "configmaps", serde_json::to_value(cm("x", json!({})))?)?;
    assert!(matches!(next_within(&mut stream).await?, WatchEvent::Added(_)));
    server.drop_watches();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await?;
    assert!(end.is_none(), "stream ended");
    Ok(())
}

#[tokio::test]
async fn watch_reports_bookmarks_and_selector_transitions() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    let rv = server.resource_version().to_string();
    let mut stream = cms.watch(&WatchParams::default().labels("app=demo"), &rv).await?.boxed();
    server.put_object("", "configmaps", serde_json::to_value(cm("x", json!({})))?)?;
    assert!(matches!(next_within(&mut stream).await?, WatchEvent::Added(_)));
    server.put_object(
        "",
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "x", "namespace": "default", "labels": {"app": "other"}}}),
    )?;
    assert!(matches!(next_within(&mut stream).await?, WatchEvent::Deleted(_)));
    assert!(matches!(next_within(&mut stream).await?, WatchEvent::Bookmark(_)));
    Ok(())
}

#[tokio::test]
async fn kubectl_applies_waits_and_deletes_against_the_double() -> TestResult {
    let kubectl = std::path::Path::new("/usr/bin/kubectl");
    if !kubectl.exists() {
        if std::env::var_os("CI").is_some() {
            panic!("kubectl is required at /usr/bin/kubectl when CI is set");
        }
        eprintln!("note: /usr/bin/kubectl not found; skipping the kubectl test");
        return Ok(());
    }
    let server = FakeApiServer::start().await?;
    let dir = std::env::temp_dir().join(format!("fake-apiserver-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    std::fs::write(dir.join("crd.json"), WIDGET_CRD)?;
    std::fs::write(
        dir.join("widget.yaml"),
        "apiVersion: example.test/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  image: app:1.0\n  replicas: 2\n",
    )?;
    let run = |args: Vec<String>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let cmd_args = args.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("/usr/bin/kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(&cmd_args)
                    .output()
            })
            .await??;
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            anyhow::ensure!(
                out.status.success(),
                "kubectl {args:?} failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok::<String, anyhow::Error>(stdout)
        }
    };
    let p = |s: &std::path::Path| s.display().to_string();
    run(vec!["apply".into(), "--validate=false".into(), "-f".into(), p(&dir.join("crd.json"))]).await?;
    run(vec!["apply".into(), "--validate=false".into(), "-f".into(), p(&dir.join("widget.yaml"))]).await?;
    // A second apply goes through the patch path.
    std::fs::write(
        dir.join("widget.yaml"),
        "apiVersion: example.test/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  image: app:1.1\n  replicas: 3\n  policy: Always\n",
    )?;
    run(vec!["apply".into(), "--validate=false".into(), "-f".into(), p(&dir.join("widget.yaml"))]).await?;
    let got: Value = serde_json::from_str(
        &run(vec!["get".into(), "widget".into(), "w1".into(), "-o".into(), "json".into()]).await?,
    )?;
    assert_eq!(got["spec"]["replicas"], json!(3));
    run(vec!["get".into(), "wd".into(), "-o".into(), "yaml".into()]).await?;
    server.set_status(
        "example.test",
        "widgets",
        Some("default"),
        "w1",
        json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Done", "message": "",
            "lastTransitionTime": "2025-01-01T00:00:00Z"}]}),
    )?;
    run(vec!["wait".into(), "--for=condition=Ready".into(), "--timeout=5s".into(), "widget/w1".into()])
        .await?;
    // Server-side printing: the CRD's additionalPrinterColumns (priority 1 only with -o wide).
    let words = |out: &str| -> Vec<Vec<String>> {
        out.lines().map(|l| l.split_whitespace().map(str::to_string).collect()).collect()
    };
    let out = run(vec!["get".into(), "widgets".into()]).await?;
    let lines = words(&out);
    assert_eq!(lines[0], ["NAME", "READY", "REPLICAS", "IMAGE", "AGE"], "kubectl get printed:\n{out}");
    assert_eq!(lines[1][..4], ["w1", "True", "3", "app:1.1"], "kubectl get printed:\n{out}");
    let out = run(vec!["get".into(), "wd".into(), "-A".into(), "-o".into(), "wide".into()]).await?;
    let lines = words(&out);
    assert_eq!(
        lines[0],
        ["NAMESPACE", "NAME", "READY", "REPLICAS", "IMAGE", "POLICY", "AGE"],
        "kubectl get -A -o wide printed:\n{out}"
    );
    assert_eq!(lines[1][..6], ["default", "w1", "True", "3", "app:1.1", "Always"], "printed:\n{out}");
    run(vec!["delete".into(), "widget".into(), "w1".into(), "--timeout=5s".into()]).await?;
    assert!(server.get_object("example.test", "widgets", Some("default"), "w1").is_none());
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn injected_500_is_answered_with_an_internal_error_status() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    server.inject(Fault {
        verb: None,
        resource: Some("configmaps".into()),
        subresource: None,
        kind: FaultKind::Status(500),
        times: 1,
    });
    let err = cms.list(&ListParams::default()).await.unwrap_err();
    let kube::Error::Api(status) = &err else { panic!("{err:?}") };
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    assert!(cms.list(&ListParams::default()).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn dry_run_writes_are_not_stored() -> TestResult {
    let server = FakeApiServer::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client().await?);
    let rv = server.resource_version();
    let answered =
        cms.create(&PostParams { dry_run: true, ..Default::default() }, &cm("dry", json!({}))).await?;
    assert_eq!(answered.metadata.name.as_deref(), Some("dry"));
    assert!(server.get_object("", "configmaps", Some("default"), "dry").is_none());
    assert_eq!(server.resource_version(), rv);
    Ok(())
}

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

async fn get_with_accept(client: &kube::Client, uri: &str, accept: &str) -> anyhow::Result<Value> {
    let req = http::Request::get(uri).header(http::header::ACCEPT, accept).body(Vec::new())?;
    Ok(serde_json::from_str(&client.request_text(req).await?)?)
}

fn column_names(table: &Value) -> Vec<&str> {
    table["columnDefinitions"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn is_age(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.ends_with('s') && s[..s.len() - 1].chars().all(|c| c.is_ascii_digit()))
}

#[tokio::test]
async fn custom_resources_are_printed_as_tables_with_the_crds_printer_columns() -> TestResult {
    let server = FakeApiServer::start().await?;
    let client = server.client().await?;
    install_widget_crd(&client).await?;
    let widgets = widget_api(client.clone());
    let w: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.test/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"image": "app:1.0", "replicas": 2}
    }))?;
    widgets.create(&PostParams::default(), &w).await?;
    widgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "example.test/v1", "kind": "Widget",
                "metadata": {"name": "w2"}, "spec": {"image": "app:2.0", "policy": "Never"}
            }))?,
        )
        .await?;
    server.set_status(
        "example.test",
        "widgets",
        Some("default"),
        "w1",
        json!({"conditions": [
            {"type": "Progressing", "status": "False", "reason": "Done", "message": "",
             "lastTransitionTime": "2025-01-01T00:00:00Z"},
            {"type": "Ready", "status": "True", "reason": "Done", "message": "",
             "lastTransitionTime": "2025-01-01T00:00:00Z"}]}),
    )?;

    let list_uri = "/apis/example.test/v1/namespaces/default/widgets";
    let table = get_with_accept(&client, list_uri, TABLE_ACCEPT).await?;
    assert_eq!(
        (table["kind"].as_str(), table["apiVersion"].as_str()),
        (Some("Table"), Some("meta.k8s.io/v1"))
    );
    assert_eq!(table["metadata"]["resourceVersion"], json!(server.resource_version().to_string()));
    assert_eq!(column_names(&table), ["Name", "Ready", "Replicas", "Image", "Policy", "Age"]);
    let defs = &table["columnDefinitions"];
    assert_eq!((defs[0]["type"].as_str(), defs[0]["format"].as_str()), (Some("string"), Some("name")));
    assert_eq!(defs[2]["type"], json!("integer"));
    assert_eq!(defs[3]["description"], json!("The image."));
    assert_eq!(
        defs[1]["description"],
        json!(
            r#"Custom resource definition column (in JSONPath format): .status.conditions[?(@.type=="Ready")].status"#
        )
    );
    assert_eq!((defs[4]["priority"].as_i64(), defs[5]["type"].as_str()), (Some(1), Some("date")));
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let cells = rows[0]["cells"].as_array().unwrap();
    assert_eq!(cells[..5], [json!("w1"), json!("True"), json!(2), json!("app:1.0"), Value::Null]);
    assert!(is_age(&cells[5]), "age cell {}", cells[5]);
    let cells = rows[1]["cells"].as_array().unwrap();
    // No status yet: the Ready cell is null (kubectl leaves it blank); replicas was defaulted.
    assert_eq!(cells[..5], [json!("w2"), Value::Null, json!(1), json!("app:2.0"), json!("Never")]);
    let object = &rows[0]["object"];
    assert_eq!(object["kind"], json!("PartialObjectMetadata"));
    assert_eq!(object["apiVersion"], json!("meta.k8s.io/v1"));
    assert_eq!(
        (object["metadata"]["name"].as_str(), object["metadata"]["namespace"].as_str()),
        (Some("w1"), Some("default"))
    );
    assert!(object.get("spec").is_none());

    // includeObject=Object embeds the whole object; None embeds nothing.
    let full = get_with_accept(&client, &format!("{list_uri}?includeObject=Object"), TABLE_ACCEPT).await?;
    assert_eq!(full["rows"][0]["object"]["kind"], json!("Widget"));
    assert_eq!(full["rows"][0]["object"]["spec"]["image"], json!("app:1.0"));
    let none = get_with_accept(&client, &format!("{list_uri}?includeObject=None"), TABLE_ACCEPT).await?;
    assert_eq!(none["rows"][0]["object"], Value::Null);

    // A get answers a one-row table at the object's resourceVersion; all-namespace lists work.
    let one = get_with_accept(&client, &format!("{list_uri}/w1"), TABLE_ACCEPT).await?;
    assert_eq!(one["rows"].as_array().map(Vec::len), Some(1));
    let w1 = server.get_object("example.test", "widgets", Some("default"), "w1").unwrap();
    assert_eq!(one["metadata"]["resourceVersion"], w1["metadata"]["resourceVersion"]);
    let all = get_with_accept(&client, "/apis/example.test/v1/widgets", TABLE_ACCEPT).await?;
    assert_eq!(all["rows"].as_array().map(Vec::len), Some(2));

    // Plain JSON when the client prefers it, and always for built-ins.
    let plain = get_with_accept(&client, list_uri, "application/json").await?;
    assert_eq!(plain["kind"], json!("WidgetList"));
    let cms = get_with_accept(&client, "/api/v1/namespaces/default/configmaps", TABLE_ACCEPT).await?;
    assert_eq!(cms["kind"], json!("ConfigMapList"));
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn crds_without_printer_columns_get_name_and_age_and_table_watches_send_headers_once() -> TestResult {
    let server = FakeApiServer::start().await?;
    let client = server.client().await?;
    let mut crd: Value = serde_json::from_str(WIDGET_CRD)?;
    crd["spec"]["versions"][0].as_object_mut().unwrap().remove("additionalPrinterColumns");
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    crds.create(&PostParams::default(), &serde_json::from_value(crd)?).await?;
    let widgets = widget_api(client.clone());
    widgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "example.test/v1", "kind": "Widget",
                "metadata": {"name": "w1"}, "spec": {"image": "app:1.0"}
            }))?,
        )
        .await?;
    let list_uri = "/apis/example.test/v1/namespaces/default/widgets";
    let table = get_with_accept(&client, list_uri, TABLE_ACCEPT).await?;
    assert_eq!(column_names(&table), ["Name", "Age"]);
    assert_eq!(table["columnDefinitions"][1]["type"], json!("date"));
    assert_eq!(table["rows"][0]["cells"][0], json!("w1"));
    assert!(is_age(&table["rows"][0]["cells"][1]));

    // kubectl get -w: every event is a one-row Table, only the first with columnDefinitions.
    let req = http::Request::get(format!("{list_uri}?watch=true"))
        .header(http::header::ACCEPT, TABLE_ACCEPT)
        .body(Vec::new())?;
    let mut events = Box::pin(client.request_events::<Value>(req).await?);
    for image in ["app:1.1", "app:1.2"] {
        widgets
            .patch("w1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"image": image}})))
            .await?;
    }
    let mut tables = Vec::new();
    for _ in 0..2 {
        match next_within(&mut events).await? {
            WatchEvent::Modified(t) => tables.push(t),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(tables[0]["kind"], json!("Table"));
    assert_eq!(column_names(&tables[0]), ["Name", "Age"]);
    assert_eq!(tables[1]["columnDefinitions"], Value::Null);
    assert_eq!(tables[1]["rows"][0]["cells"][0], json!("w1"));
    assert_eq!(tables[1]["rows"][0]["object"]["kind"], json!("PartialObjectMetadata"));
    server.shutdown().await;
    Ok(())
}
