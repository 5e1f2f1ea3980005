//! Each test gets its own namespace on the shared real control plane
//! (testkit's [`TestCluster`]) and its own operator: the real Controller,
//! watching only that namespace, authenticated with the `grpc-operator`
//! ServiceAccount's token under the RBAC of `config/rbac`, talking to the API
//! server through a fault-injecting proxy.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpc_operator::api::{GrpcService, GrpcServiceSpec};
use grpc_operator::children::{ChildKind, Registry};
use grpc_operator::health::{Health, HealthConfig};
use grpc_operator::metrics::Metrics;
use grpc_operator::pki::trust::{PkiSettings, Trust};
use grpc_operator::reconcile::ReconcileConfig;
use grpc_operator::run::{ControllerOptions, run_controller};
use grpc_operator_testkit::{FaultProxy, RequestRecord, TestCluster, TestNamespace, Verb};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for the cluster to reach a state.
const PATIENCE: Duration = Duration::from_secs(60);

/// The test's hold on the cluster's CRDs: shared by most tests, exclusive for
/// a test that removes one.
#[allow(dead_code)]
enum CrdLock {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Exclusive(tokio::sync::RwLockWriteGuard<'static, ()>),
}

pub struct Harness {
    pub cluster: &'static TestCluster,
    /// Cluster-admin client for the test's own reads and writes.
    pub client: Client,
    pub ns: TestNamespace,
    /// Between the operator and the API server.
    pub proxy: FaultProxy,
    operator_token: String,
    controller: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// The child kinds the operator runs with (the standard ones, then
    /// `extra_kinds`), rebuilt at every start.
    pub registry: Registry,
    /// Kinds added to the standard ones.
    pub extra_kinds: Vec<Arc<dyn ChildKind>>,
    /// The operator's CA: its Secret lives in the test namespace.
    pub trust: Arc<Trust>,
    /// Namespaces the operator watches besides the test's own.
    pub extra_namespaces: Vec<String>,
    pub health: Health,
    /// The running operator's metrics.
    pub metrics: Metrics,
    _crds: CrdLock,
}

impl Harness {
    /// A fresh namespace with the operator's identity, no controller yet.
    pub async fn without_controller() -> Self {
        Self::new(false).await
    }

    /// Like [`Harness::without_controller`], alone on the cluster: no other
    /// test runs while this one may remove a CRD.
    pub async fn exclusive() -> Self {
        Self::new(true).await
    }

    async fn new(exclusive: bool) -> Self {
        // `TEST_LOG=grpc_operator=debug,kube=debug cargo test ...` shows the operator's logs.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        // The first call starts the cluster: seconds of blocking work.
        let cluster =
            tokio::task::spawn_blocking(TestCluster::get).await.expect("join").expect("test cluster");
        let crds = if exclusive {
            CrdLock::Exclusive(cluster.crds_exclusive().await)
        } else {
            CrdLock::Shared(cluster.crds_shared().await)
        };
        let client = cluster.client().await.expect("admin client");
        let ns = cluster.namespace(&client, "op").await.expect("namespace");
        let operator_token = cluster.operator_token(&client, &ns.name).await.expect("operator token");
        let admin = cluster.admin_config().await.expect("admin config");
        let proxy = FaultProxy::start(&admin).await.expect("proxy");
        let trust = Trust::new(PkiSettings {
            ca_namespace: ns.name.clone(),
            propagation_delay: Duration::from_secs(1),
            ..PkiSettings::default()
        });
        Self {
            cluster,
            client,
            ns,
            proxy,
            operator_token,
            controller: None,
            registry: Registry::with_trust(Arc::clone(&trust)),
            extra_kinds: Vec::new(),
            trust,
            extra_namespaces: Vec::new(),
            health: Health::default(),
            metrics: Metrics::new().expect("metrics"),
            _crds: crds,
        }
    }

    /// With the operator running in the namespace.
    pub async fn start() -> Self {
        let mut h = Self::without_controller().await;
        h.start_controller().await;
        h
    }

    /// With the operator running the standard child kinds and `kind`.
    pub async fn start_with(kind: Arc<dyn ChildKind>) -> Self {
        let mut h = Self::without_controller().await;
        h.extra_kinds.push(kind);
        h.start_controller().await;
        h
    }

    /// A kubeconfig for the operator binary: its identity, through the proxy.
    pub async fn write_operator_kubeconfig(&self, path: &std::path::Path) {
        self.cluster
            .write_operator_kubeconfig(&self.operator_token, &self.proxy.url(), path)
            .await
            .expect("operator kubeconfig");
    }

    pub fn ns(&self) -> &str {
        &self.ns.name
    }

    pub async fn start_controller(&mut self) {
        let mut config = self
            .cluster
            .operator_config(&self.operator_token, &self.proxy.url())
            .await
            .expect("operator config");
        grpc_operator::run::tune_client_config(&mut config);
        let client = Client::try_from(config).expect("operator client");
        let (tx, rx) = oneshot::channel::<()>();
        let opts = ControllerOptions {
            namespaces: std::iter::once(self.ns.name.clone())
                .chain(self.extra_namespaces.iter().cloned())
                .collect(),
            reconcile: ReconcileConfig {
                backoff_base: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
                not_owned_retry: Duration::from_millis(500),
                ..ReconcileConfig::default()
            },
            concurrency: 4,
            instance: Some("test".into()),
            debounce: Duration::from_millis(20),
            registry: self.registry.clone(),
            discovery_interval: Duration::from_millis(500),
            trust: Some(Arc::clone(&self.trust)),
        };
        self.health = Health::new(HealthConfig {
            probe_interval: Duration::from_millis(200),
            unreachable_after: Duration::from_secs(1),
            stall_after: Duration::from_secs(2),
        });
        self.metrics = Metrics::new().expect("metrics");
        // A restarted operator reads its CA afresh, as a new process would.
        self.trust = Trust::new(self.trust.settings.clone());
        self.registry = self
            .extra_kinds
            .iter()
            .fold(Registry::with_trust(Arc::clone(&self.trust)), |r, k| r.with(Arc::clone(k)));
        let opts = ControllerOptions {
            registry: self.registry.clone(),
            trust: Some(Arc::clone(&self.trust)),
            ..opts
        };
        let task = tokio::spawn(run_controller(
            client,
            opts,
            self.metrics.clone(),
            self.health.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        self.controller = Some((tx, task));
        let deadline = Instant::now() + PATIENCE;
        while !self.health.synced() {
            assert!(
                Instant::now() < deadline,
                "the controller's caches did not sync; its requests:\n{}",
                self.proxy
                    .requests()
                    .iter()
                    .map(|r| format!("{:?} {}{} -> {}", r.verb, r.path, r.query, r.status))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn get_json<K>(&self, name: &str) -> Option<Value>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let obj = self.api::<K>().get_opt(name).await.expect("GET succeeds")?;
        Some(serde_json::to_value(obj).expect("serializes"))
    }

    pub async fn deployment(&self, name: &str) -> Option<Value> {
        self.get_json::<Deployment>(name).await
    }

    pub async fn service(&self, name: &str) -> Option<Value> {
        self.get_json::<Service>(name).await
    }

    pub async fn grpc_service(&self, name: &str) -> Option<Value> {
        self.get_json::<GrpcService>(name).await
    }

    /// Waits for the Ready condition to have `status` and `reason`; returns the object.
    pub async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> Value {
        self.wait_condition(name, "Ready", status, reason).await
    }

    /// Waits for condition `type_` to have `status` and `reason`; returns the object.
    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str, reason: &str) -> Value {
        let what = format!("{name} {type_}={status} reason={reason}");
        eventually(&what, || async {
            let obj = self.grpc_service(name).await?;
            let c = condition(&obj, type_)?;
            (c["status"] == status && c["reason"] == reason).then_some(obj)
        })
        .await
    }

    /// Reconcile runs of the current operator, all outcomes.
    pub fn reconciles(&self) -> u64 {
        let families = prometheus::core::Collector::collect(&self.metrics.reconciles);
        families.iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
    }

    /// Write requests the operator made since the last clear, Events excluded.
    pub fn writes(&self) -> Vec<RequestRecord> {
        self.proxy.writes()
    }

    /// Events (events.k8s.io) in the namespace, as JSON.
    pub async fn events(&self) -> Vec<Value> {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.api();
        let list = api.list(&ListParams::default()).await.expect("list events");
        list.items.into_iter().map(|e| serde_json::to_value(e).expect("serializes")).collect()
    }

    pub async fn shutdown(mut self) {
        self.stop_controller().await;
    }
}

/// Merge-patches the spec of GrpcService `name`, as `kubectl patch --type=merge` does.
pub async fn patch_spec(h: &Harness, name: &str, spec: Value) {
    h.api::<GrpcService>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({ "spec": spec })))
        .await
        .expect("GrpcService patched");
}

/// The uid of the controller ownerReference of `obj`.
pub fn owner_uid(obj: &Value) -> Option<&str> {
    obj["metadata"]["ownerReferences"].as_array()?.iter().find(|o| o["controller"] == true)?["uid"].as_str()
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
            replicas: Some(2),
            autoscaling: None,
            disruption: None,
            shutdown: None,
            port: 50051,
            admin_port: 9090,
            services: vec!["user.v1.UserService".into()],
            env: vec![],
            resources: None,
            tls: None,
            grpc_web: None,
            monitoring: None,
            service_account_name: None,
            pod_annotations: Default::default(),
            pod_labels: Default::default(),
        },
    )
}

pub async fn create(h: &Harness, obj: &GrpcService) -> GrpcService {
    h.api::<GrpcService>().create(&PostParams::default(), obj).await.expect("GrpcService created")
}

/// Polls `f` every 50 ms until it yields a value, failing after a minute with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts recorded requests by verb and resource.
pub fn count(records: &[RequestRecord], verb: Verb, resource: &str) -> usize {
    records.iter().filter(|r| r.verb == verb && r.resource == resource).count()
}
