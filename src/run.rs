//! `grpc-operator run`: wires the reconcile pipeline into a kube-runtime
//! `Controller` with shared caches for the children.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector;
use kube::runtime::utils::{PredicateConfig, predicates};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tracing::{debug, info, warn};

use crate::admin::Readiness;
use crate::api::GrpcService;
use crate::metrics::Metrics;
use crate::reconcile::desired::labels::{MANAGED_BY_LABEL, MANAGER};
use crate::reconcile::{self, Context, ReconcileConfig};

/// Options of the controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Watch only this namespace; `None` watches all namespaces.
    pub namespace: Option<String>,
    /// Reconciler tunables.
    pub reconcile: ReconcileConfig,
    /// Maximum concurrent reconciles (0 = unbounded).
    pub concurrency: u16,
    /// `instance` of the Event reporter, usually the pod name.
    pub instance: Option<String>,
    /// Quiet period before a triggered reconcile runs; triggers arriving in
    /// it (a child created, then another) are merged into one run.
    pub debounce: std::time::Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            reconcile: ReconcileConfig::default(),
            concurrency: 16,
            instance: None,
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

/// Default [`ControllerOptions::debounce`]: long enough to merge the watch
/// events of one reconcile's own writes, short enough not to be noticed.
pub const DEFAULT_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(100);

/// The controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The API server did not answer.
    #[error("cannot reach the Kubernetes API server at {url}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The GrpcService CRD is not installed.
    #[error(
        "the GrpcService CustomResourceDefinition is not installed in the cluster (install it with `kubectl apply -f crds/`)"
    )]
    CrdMissing,
    /// Listing GrpcServices failed for another reason (often RBAC).
    #[error("cannot list GrpcServices")]
    List(#[source] kube::Error),
}

/// Checks that the API server answers and serves GrpcServices, so that a
/// misconfiguration is a clear message at start rather than a retry loop.
pub async fn preflight(client: &Client, cluster_url: &str, namespace: Option<&str>) -> Result<(), RunError> {
    if let Err(source) = client.apiserver_version().await {
        return Err(RunError::Unreachable { url: cluster_url.to_owned(), source });
    }
    let api: Api<GrpcService> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(RunError::CrdMissing),
        Err(e) => Err(RunError::List(e)),
    }
}

/// Annotation `kubectl apply` (and Argo CD's default client-side apply)
/// stores the whole last applied manifest in.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the reconciler never reads before an object enters a cache:
/// managedFields (often the largest part of an object) and the
/// last-applied-configuration annotation (a full copy of the manifest).
pub fn trim_for_cache<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Triggers a reconcile only when the spec changed (generation) or deletion
/// started: status and finalizer writes, most of them the operator's own, do
/// not cause another run.
fn spec_or_deletion(obj: &GrpcService) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.meta().generation.hash(&mut h);
    obj.meta().deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Runs the controller until `shutdown` resolves. `readiness` is set once
/// every cache has synced.
pub async fn run_controller(
    client: Client,
    opts: ControllerOptions,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (grpc_api, deploy_api, svc_api): (Api<GrpcService>, Api<Deployment>, Api<Service>) =
        match &opts.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
        };
    let children = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));

    let sync = CacheSync::new(readiness.clone());
    let (grpc_store, grpc_writer) = reflector::store();
    let grpc_stream = watcher(grpc_api, watcher::Config::default())
        .default_backoff()
        .modify(trim_for_cache)
        .reflect(grpc_writer)
        .inspect(sync.marker(0))
        .applied_objects()
        .predicate_filter(spec_or_deletion, PredicateConfig::default());
    let (deploy_store, deploy_writer) = reflector::store();
    let deploy_stream = watcher(deploy_api, children.clone())
        .default_backoff()
        .modify(|d: &mut Deployment| {
            trim_for_cache(d);
            reconcile::apply::slim_deployment(d);
        })
        .reflect(deploy_writer)
        .inspect(sync.marker(1))
        // Deletes too: a deleted child must be recreated now, not at the next resync.
        .touched_objects()
        .predicate_filter(predicates::resource_version, PredicateConfig::default());
    let (svc_store, svc_writer) = reflector::store();
    let svc_stream = watcher(svc_api, children)
        .default_backoff()
        .modify(trim_for_cache)
        .reflect(svc_writer)
        .inspect(sync.marker(2))
        .touched_objects()
        .predicate_filter(predicates::resource_version, PredicateConfig::default());

    let reporter = Reporter { controller: MANAGER.to_owned(), instance: opts.instance.clone() };
    let ctx = Arc::new(Context::new(
        client,
        (grpc_store.clone(), deploy_store.clone(), svc_store.clone()),
        reporter,
        metrics,
        opts.reconcile.clone(),
    ));

    Controller::for_stream(grpc_stream, grpc_store)
        .owns_stream(deploy_stream)
        .owns_stream(svc_stream)
        .with_config(ControllerConfig::default().concurrency(opts.concurrency).debounce(opts.debounce))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| {
            match res {
                Ok((obj, _)) => debug!(name = %obj.name, namespace = ?obj.namespace, "reconcile done"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                    debug!(name = %obj.name, namespace = ?obj.namespace, category = e.category(), "reconcile failed");
                }
                Err(e) => warn!(error = %reconcile::error_chain(&e), "controller error"),
            }
            future::ready(())
        })
        .await;
    readiness.set(false);
    info!("controller stopped");
}

/// Sets readiness once every cache has its initial list, seen in the watch
/// streams themselves (`InitDone`).
///
/// Not `Store::wait_until_ready`: kube-runtime's store readiness is a futures
/// oneshot, which keeps one waker, and the Controller already waits on the
/// GrpcService store. A second waiter steals or loses the wake-up; on a real
/// API server that left `/readyz` at 503 for good, or the Controller never
/// starting.
#[derive(Clone)]
struct CacheSync {
    synced: Arc<[std::sync::atomic::AtomicBool; 3]>,
    readiness: Readiness,
}

impl CacheSync {
    fn new(readiness: Readiness) -> Self {
        Self { synced: Arc::new(Default::default()), readiness }
    }

    /// An `inspect` callback for cache number `i`'s reflected watch stream.
    fn marker<K>(&self, i: usize) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + use<K> {
        let sync = self.clone();
        move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                sync.synced[i].store(true, std::sync::atomic::Ordering::Release);
                let all = sync.synced.iter().all(|s| s.load(std::sync::atomic::Ordering::Acquire));
                if all && !sync.readiness.get() {
                    info!("caches synced; controller ready");
                    sync.readiness.set(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn cached_objects_lose_managed_fields_and_the_last_applied_manifest_only() {
        let mut svc = Service::default();
        svc.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        svc.metadata.annotations = Some(
            [
                (LAST_APPLIED_ANNOTATION.to_owned(), "{...}".to_owned()),
                ("grpcoperator.io/applied-digest".to_owned(), "abc".to_owned()),
            ]
            .into(),
        );
        trim_for_cache(&mut svc);
        assert_eq!(svc.metadata.managed_fields, None);
        assert_eq!(
            svc.metadata.annotations,
            Some([("grpcoperator.io/applied-digest".to_owned(), "abc".to_owned())].into())
        );
    }
}
