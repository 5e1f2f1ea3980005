//! Test doubles for grpc-operator.
//!
//! [`FakeApiServer`] serves a Kubernetes API double over real HTTP on 127.0.0.1 so that the
//! real `kube::Client`, kube-runtime's `Controller`/`watcher` and `kubectl --validate=false`
//! can run against it unchanged. It is test infrastructure, never product. See README.md
//! for what it implements and where it differs from a real kube-apiserver.

mod apply;
mod discovery;
mod errors;
mod faults;
mod kubeconfig;
mod managed_fields;
mod merge_keys;
mod patch;
mod registry;
mod request_log;
mod schema_validation;
mod selectors;
mod server;
mod store;
mod table;
mod watch;

#[cfg(test)]
mod tests;

pub use faults::{Fault, FaultKind};
pub use request_log::{RequestRecord, Verb};

use managed_fields::Scope;
use server::{Shared, lock};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Store, WriteCtx};

/// A Kubernetes API server double listening on `127.0.0.1`.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Binds `127.0.0.1:0` and serves in a tokio task.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Binds `addr` and serves in a tokio task.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            shutdown,
            addr,
        });
        let app = axum::Router::new().fallback(server::handle).with_state(shared.clone());
        let mut down = shared.shutdown.subscribe();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = down.wait_for(|d| *d).await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "fake apiserver stopped");
            }
        });
        Ok(Self { shared, task })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Cluster "fake", user "fake" (no auth), context "fake", namespace default.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig::kubeconfig_yaml(&self.url())
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path` (atomically, via a rename).
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        kubeconfig::write_atomically(path, &self.kubeconfig_yaml())
    }

    /// A `kube::Client` built from [`Self::kubeconfig_yaml`].
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Every request served so far, in order (helpers excluded).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Makes the next `fault.times` matching requests fail or hang.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Ends every open watch stream (the server closes the chunked responses).
    pub fn drop_watches(&self) {
        lock(&self.shared.store).drop_watchers();
    }

    /// Forgets the watch event history, like an etcd compaction: watches resuming from a
    /// resourceVersion older than the current one get a 410 Expired ERROR event.
    pub fn compact_history(&self) {
        lock(&self.shared.store).compact();
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Stops serving and closes watches and hung requests.
    pub async fn shutdown(self) {
        let _ = self.shared.shutdown.send(true);
        lock(&self.shared.store).drop_watchers();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
            task.abort();
        }
    }

    /// The stored object, if any (`group` "" is core; `resource` is the plural).
    pub fn get_object(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<serde_json::Value> {
        lock(&self.shared.store).get(group, resource, namespace, name).cloned()
    }

    /// Stored objects of a resource, in one namespace or all.
    pub fn list_objects(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Vec<serde_json::Value> {
        lock(&self.shared.store).list(group, resource, namespace)
    }

    /// Creates or replaces an object (status included) without schema validation, like a
    /// controller would; watchers see the event but `requests()` does not.
    pub fn put_object(
        &self,
        group: &str,
        resource: &str,
        obj: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let mut store = lock(&self.shared.store);
        let def = resource_def(&store, group, resource)?;
        let api_version = obj
            .get("apiVersion")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .or_else(|| def.preferred_version().map(|v| def.api_version(&v.name)))
            .unwrap_or_default();
        let md = obj.get("metadata");
        let name = md.and_then(|m| m.get("name")).and_then(serde_json::Value::as_str).map(str::to_string);
        let ns = md
            .and_then(|m| m.get("namespace"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .or_else(|| def.namespaced.then(|| "default".to_string()));
        let mut ctx = WriteCtx::helper(api_version, Scope::Main { exclude_status: false });
        let existing = name.as_deref().and_then(|n| store.get(group, resource, ns.as_deref(), n).cloned());
        let result = match (existing, name) {
            (Some(_), Some(n)) => {
                let mut obj = obj;
                if let Some(m) = obj.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                store.update(&def, ns.as_deref(), &n, obj, &mut ctx)
            }
            _ => store.create(&def, ns.as_deref(), obj, &mut ctx),
        };
        result.map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code))
    }

    /// Replaces `.status` the way a controller writing the status subresource would.
    pub fn set_status(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        status: serde_json::Value,
    ) -> anyhow::Result<()> {
        let mut store = lock(&self.shared.store);
        let def = resource_def(&store, group, resource)?;
        let mut obj = store
            .get(group, resource, namespace, name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{resource}.{group} {name:?} not found"))?;
        let api_version =
            obj.get("apiVersion").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        obj["status"] = status;
        if let Some(m) = obj.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let mut ctx = WriteCtx::helper(api_version, Scope::Status);
        store
            .update(&def, namespace, name, obj, &mut ctx)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code))
    }
}

/// The definition of a served resource, for the back-door helpers.
fn resource_def(store: &Store, group: &str, resource: &str) -> anyhow::Result<registry::ResourceDef> {
    store
        .registry
        .get(group, resource)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("unknown resource {resource}.{group}"))
}
