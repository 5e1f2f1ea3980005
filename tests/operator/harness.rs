//! Starts the API double with the CRD installed and the controller running.

use std::future::Future;
use std::time::{Duration, Instant};

use grpc_operator::admin::Readiness;
use grpc_operator::api::{GrpcService, GrpcServiceSpec};
use grpc_operator::metrics::Metrics;
use grpc_operator::reconcile::ReconcileConfig;
use grpc_operator::run::{ControllerOptions, run_controller};
use grpc_operator_testkit::{FakeApiServer, RequestRecord, Verb};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const NS: &str = "shop";

pub struct Harness {
    pub server: FakeApiServer,
    pub client: Client,
    controller: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    pub readiness: Readiness,
}

impl Harness {
    /// The double with the CRD and namespace `shop`, no controller yet.
    pub async fn without_controller() -> Self {
        let server = FakeApiServer::start().await.expect("API double starts");
        let client = server.client().await.expect("client");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.create(&PostParams::default(), &GrpcService::crd()).await.expect("CRD registers");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(NS.into()), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        namespaces.create(&PostParams::default(), &ns).await.expect("namespace");
        Self { server, client, controller: None, readiness: Readiness::default() }
    }

    /// The double with the CRD installed and the controller running.
    pub async fn start() -> Self {
        let mut h = Self::without_controller().await;
        h.start_controller().await;
        h
    }

    pub async fn start_controller(&mut self) {
        let (tx, rx) = oneshot::channel::<()>();
        let opts = ControllerOptions {
            namespace: None,
            reconcile: ReconcileConfig {
                backoff_base: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
                not_owned_retry: Duration::from_millis(500),
                ..ReconcileConfig::default()
            },
            concurrency: 4,
            instance: Some("test".into()),
            debounce: Duration::from_millis(20),
        };
        self.readiness = Readiness::default();
        let task = tokio::spawn(run_controller(
            self.client.clone(),
            opts,
            Metrics::new().expect("metrics"),
            self.readiness.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        self.controller = Some((tx, task));
        let readiness = self.readiness.clone();
        eventually("controller caches sync", || {
            let r = readiness.clone();
            async move { r.get().then_some(()) }
        })
        .await;
    }

    pub async fn stop_controller(&mut self) {
        if let Some((tx, task)) = self.controller.take() {
            let _ = tx.send(());
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("controller stops within 10s")
                .expect("controller task");
        }
    }

    pub fn api(&self) -> Api<GrpcService> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn deployment(&self, name: &str) -> Option<Value> {
        self.server.get_object("apps", "deployments", Some(NS), name)
    }

    pub fn service(&self, name: &str) -> Option<Value> {
        self.server.get_object("", "services", Some(NS), name)
    }

    pub fn grpc_service(&self, name: &str) -> Option<Value> {
        self.server.get_object("grpcoperator.io", "grpcservices", Some(NS), name)
    }

    /// Plays the Deployment controller and kubelet: the current generation is
    /// rolled out and every pod is available.
    pub fn mark_available(&self, name: &str) {
        let dep = self.deployment(name).expect("deployment exists");
        let generation = dep["metadata"]["generation"].as_i64().unwrap_or(1);
        let replicas = dep["spec"]["replicas"].as_i64().unwrap_or(1);
        self.server
            .set_status(
                "apps",
                "deployments",
                Some(NS),
                name,
                json!({
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "conditions": [
                        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
                    ]
                }),
            )
            .expect("status written");
    }

    /// Waits for the Ready condition to have `status` and `reason`; returns the object.
    pub async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> Value {
        let what = format!("{name} Ready={status} reason={reason}");
        eventually(&what, || async {
            let obj = self.grpc_service(name)?;
            let c = condition(&obj, "Ready")?;
            (c["status"] == status && c["reason"] == reason).then_some(obj)
        })
        .await
    }

    /// Write requests recorded since the last clear, excluding Events.
    pub fn writes(&self) -> Vec<RequestRecord> {
        self.server.requests().into_iter().filter(|r| r.verb.is_write() && r.resource != "events").collect()
    }

    pub async fn shutdown(mut self) {
        self.stop_controller().await;
        self.server.shutdown().await;
    }
}

pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

pub fn sample(name: &str) -> GrpcService {
    GrpcService::new(
        name,
        GrpcServiceSpec {
            image: "registry.example.com/shop/user-service:1.0.0".into(),
            image_pull_policy: None,
            image_pull_secrets: vec![],
            replicas: 2,
            port: 50051,
            admin_port: 9090,
            services: vec!["user.v1.UserService".into()],
            env: vec![],
            resources: None,
            service_account_name: None,
            pod_annotations: Default::default(),
            pod_labels: Default::default(),
        },
    )
}

pub async fn create(h: &Harness, obj: &GrpcService) -> GrpcService {
    h.api().create(&PostParams::default(), obj).await.expect("GrpcService created")
}

/// Polls `f` every 20 ms until it yields a value, failing after 20 s with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts recorded requests by verb and resource.
pub fn count(records: &[RequestRecord], verb: Verb, resource: &str) -> usize {
    records.iter().filter(|r| r.verb == verb && r.resource == resource).count()
}
