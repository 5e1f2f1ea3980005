//! `grpc-operator run`: wires the reconcile pipeline into a kube-runtime
//! `Controller` with shared caches for the children.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, SinkExt, StreamExt, future};
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::utils::PredicateConfig;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::GrpcService;
use crate::children::Registry;
use crate::children::labels::{MANAGER, SERVICE_LABEL};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::pki::trust::Trust;
use crate::reconcile::cache::KindCache;
use crate::reconcile::memory::{Memory, Queued};
use crate::reconcile::{self, Context, ReconcileConfig};

/// Options of the controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Watch only these namespaces; empty watches all namespaces.
    pub namespaces: Vec<String>,
    /// The child kinds.
    pub registry: Registry,
    /// Reconciler tunables.
    pub reconcile: ReconcileConfig,
    /// Maximum concurrent reconciles per scope (0 = unbounded).
    pub concurrency: u16,
    /// `instance` of the Event reporter, usually the pod name.
    pub instance: Option<String>,
    /// Quiet period before a triggered reconcile runs; triggers arriving in
    /// it (a child created, then another) are merged into one run.
    pub debounce: Duration,
    /// How often the APIs of optional kinds (CRDs that may be installed or
    /// removed at any time) are looked up.
    pub discovery_interval: Duration,
    /// The CA the registry's TLS kind issues from; when set, the controller
    /// runs its manager (creates, watches and rotates the CA Secret).
    pub trust: Option<Arc<Trust>>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            registry: Registry::standard(),
            reconcile: ReconcileConfig::default(),
            concurrency: 16,
            instance: None,
            debounce: DEFAULT_DEBOUNCE,
            discovery_interval: DEFAULT_DISCOVERY_INTERVAL,
            trust: None,
        }
    }
}

/// Default [`ControllerOptions::debounce`]: long enough to merge the watch
/// events of one reconcile's own writes, short enough not to be noticed.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Default [`ControllerOptions::discovery_interval`]: a CRD installed later
/// is picked up within a minute.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(30);

/// Parses `WATCH_NAMESPACE` / `--namespace`: a comma-separated list; empty
/// means every namespace.
pub fn parse_namespaces(value: &str) -> Vec<String> {
    let mut out: Vec<String> =
        value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    out.sort();
    out.dedup();
    out
}

/// Applies the operator's client settings to a kubeconfig-derived config.
///
/// kube's default retry layer is turned off: it retries 429, 503 and 504 up
/// to 15 times with delays growing to minutes, inside one request. A
/// reconcile would hang there, holding a concurrency slot, and the failure
/// would never reach the status. The controller retries instead, per object
/// with backoff (honouring `Retry-After`), and reports persistent failures in
/// `Synced`.
pub fn tune_client_config(config: &mut kube::Config) {
    config.default_retry = false;
}

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
    #[error("cannot list GrpcServices{}", namespace.as_ref().map(|n| format!(" in namespace {n}")).unwrap_or_default())]
    List {
        /// The namespace, when watching some.
        namespace: Option<String>,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

/// Checks that the API server answers and serves GrpcServices in every
/// watched namespace, so that a misconfiguration is a clear message at start
/// rather than a retry loop.
pub async fn preflight(client: &Client, cluster_url: &str, namespaces: &[String]) -> Result<(), RunError> {
    if let Err(source) = client.apiserver_version().await {
        return Err(RunError::Unreachable { url: cluster_url.to_owned(), source });
    }
    let scopes: Vec<Option<&String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.iter().map(Some).collect() };
    for scope in scopes {
        let api: Api<GrpcService> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(RunError::CrdMissing),
            Err(source) => return Err(RunError::List { namespace: scope.cloned(), source }),
        }
    }
    Ok(())
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

/// Trims a GrpcService before it enters the cache: besides what
/// [`trim_for_cache`] drops, the labels, annotations and other metadata the
/// reconciler never reads (children do not copy the GrpcService's labels).
pub fn trim_grpc_service(obj: &mut GrpcService) {
    let mut meta = std::mem::take(&mut obj.metadata);
    obj.metadata = kube::api::ObjectMeta { finalizers: meta.finalizers.take(), ..identity(&mut meta) };
}

/// Moves out of `meta` what every cache keeps: name, namespace, uid,
/// resourceVersion, generation and deletionTimestamp.
pub fn identity(meta: &mut kube::api::ObjectMeta) -> kube::api::ObjectMeta {
    kube::api::ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        generation: meta.generation.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        ..kube::api::ObjectMeta::default()
    }
}

/// Triggers a reconcile when the spec changes (generation), deletion starts,
/// the finalizer appears or disappears (a stripped finalizer is put back) or
/// the status changes (a status edited by someone else is corrected; the
/// reconcile after the operator's own status write finds nothing to do).
fn trigger_fingerprint(obj: &GrpcService) -> Option<u64> {
    let mut h = DefaultHasher::new();
    obj.meta().generation.hash(&mut h);
    obj.meta().deletion_timestamp.is_some().hash(&mut h);
    reconcile::cleanup::has_finalizer(obj).hash(&mut h);
    serde_json::to_string(&obj.status).unwrap_or_default().hash(&mut h);
    Some(h.finish())
}

/// Runs the controller until `shutdown` resolves: one scope for all
/// namespaces, or one per watched namespace (a watch cannot select several
/// namespaces). `readiness` is set once every required cache has synced.
pub async fn run_controller(
    client: Client,
    opts: ControllerOptions,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let probe = tokio::spawn(health::probe_api(client.clone(), health.clone()));
    let ca_manager = opts.trust.as_ref().map(|trust| {
        let reporter = Reporter { controller: MANAGER.to_owned(), instance: opts.instance.clone() };
        tokio::spawn(crate::pki::ca_manager::run(
            client.clone(),
            Arc::clone(trust),
            metrics.clone(),
            reporter,
        ))
    });
    metrics.observe_health(health.clone());
    // Kinds' own watches (the monitoring kinds' Prometheus objects), once
    // for every scope.
    let background: Vec<tokio::task::JoinHandle<()>> =
        opts.registry.kinds().iter().filter_map(|k| k.background(&client)).map(tokio::spawn).collect();
    let scopes: Vec<Option<String>> = if opts.namespaces.is_empty() {
        vec![None]
    } else {
        opts.namespaces.iter().cloned().map(Some).collect()
    };
    if let Some(trust) = &opts.trust {
        trust.expect_sources(scopes.len());
    }
    let required = opts.registry.kinds().iter().filter(|k| !k.optional()).count() + 1;
    let sync = CacheSync::new(health.clone(), scopes.len() * required);
    future::join_all(scopes.into_iter().map(|scope| {
        run_scope(
            client.clone(),
            scope,
            opts.clone(),
            metrics.clone(),
            sync.clone(),
            health.clone(),
            shutdown.clone(),
        )
    }))
    .await;
    probe.abort();
    for task in background {
        task.abort();
    }
    if let Some(task) = ca_manager {
        task.abort();
    }
    health.set_synced(false);
    info!("controller stopped");
}

async fn run_scope(
    client: Client,
    scope: Option<String>,
    opts: ControllerOptions,
    metrics: Metrics,
    sync: CacheSync,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let grpc_api: Api<GrpcService> = match &scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let memory = Arc::new(Memory::default());
    let (grpc_store, grpc_writer) = reflector::store::<GrpcService>();
    metrics.observe_grpc_services(grpc_store.clone());
    let queued = Arc::new(Queued::default());
    metrics.observe_queue(Arc::clone(&queued));
    let enqueue = {
        let queued = Arc::clone(&queued);
        move |obj: &GrpcService| queued.push(ObjectRef::from_obj(obj))
    };
    let forget = {
        let (memory, store) = (Arc::clone(&memory), grpc_store.clone());
        move |event: &Result<watcher::Event<GrpcService>, watcher::Error>| match event {
            Ok(watcher::Event::Delete(obj)) => {
                if let Some(uid) = &obj.metadata.uid {
                    memory.forget(uid);
                }
            }
            // After a relist, objects deleted while the watch was down.
            Ok(watcher::Event::InitDone) => {
                let live: HashSet<String> =
                    store.state().iter().filter_map(|o| o.metadata.uid.clone()).collect();
                memory.retain(&live);
            }
            _ => {}
        }
    };
    // Child watches feed one trigger stream: a Controller cannot add an
    // `owns` watch once it runs, and optional kinds come and go.
    let (triggers, trigger_rx) = mpsc::channel::<ObjectRef<GrpcService>>(1024);
    // A GrpcService named in others' `allowedClients` changed (or went
    // away): they resolve it again.
    let mut referrer_triggers = triggers.clone();
    let referrers_of = {
        let store = grpc_store.clone();
        let queued = Arc::clone(&queued);
        move |event: &Result<watcher::Event<GrpcService>, watcher::Error>| {
            if let Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) = event {
                for r in referrers(&store, obj) {
                    queued.push(r.clone());
                    let _ = referrer_triggers.try_send(r);
                }
            }
        }
    };
    let watch_errors = metrics.watch_errors.with_label_values(&["GrpcService"]);
    let grpc_stream = watcher(grpc_api, watcher::Config::default())
        .default_backoff()
        .modify(trim_grpc_service)
        .reflect(grpc_writer)
        .inspect(sync.marker())
        .inspect(forget)
        .inspect(referrers_of)
        // Counted here; the Controller logs it (as a queue error).
        .inspect(move |event| {
            if event.is_err() {
                watch_errors.inc();
            }
        })
        .applied_objects()
        .predicate_filter(trigger_fingerprint, PredicateConfig::default())
        .inspect(move |obj| {
            if let Ok(obj) = obj {
                enqueue(obj);
            }
        });

    let mut tasks = Vec::new();
    let reporter = Reporter { controller: MANAGER.to_owned(), instance: opts.instance.clone() };
    let ctx = Arc::new(Context {
        kinds: KindCache::for_registry(&opts.registry),
        client,
        registry: opts.registry.clone(),
        grpc_services: grpc_store.clone(),
        reporter,
        metrics,
        config: opts.reconcile.clone(),
        memory,
        health,
        queued: Arc::clone(&queued),
    });

    let (reconcile_all, reconcile_all_rx) = mpsc::channel::<()>(16);
    if let Some(trust) = &opts.trust {
        // Every CA change (loaded, unavailable, a rotation stage) reaches
        // every GrpcService within the debounce.
        let mut changes = trust.subscribe();
        let mut all = reconcile_all.clone();
        tasks.push(tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let _ = all.send(()).await;
            }
        }));
        if let Some(index) = ctx.kinds.iter().position(|k| k.kind.kind() == "Secret") {
            let weak = Arc::downgrade(&ctx);
            trust.add_leaf_source(Box::new(move || {
                weak.upgrade().and_then(|ctx| ctx.kinds[index].store()).map(|store| store.state())
            }));
        }
    }
    // A kind's outside state changed (a Prometheus object's selectors):
    // every GrpcService is checked again.
    for mut changes in ctx.kinds.iter().filter_map(|k| k.kind.changes()) {
        let mut all = reconcile_all.clone();
        tasks.push(tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let _ = all.send(()).await;
            }
        }));
    }
    for index in (0..ctx.kinds.len()).filter(|i| !ctx.kinds[*i].kind.optional()) {
        let api = scoped_api(&ctx.client, scope.as_deref(), &ctx.kinds[index].api);
        let mut marker = sync.marker::<DynamicObject>();
        let on_synced = move || marker(&Ok(watcher::Event::InitDone));
        tasks.push(tokio::spawn(watch_kind(api, Arc::clone(&ctx), index, triggers.clone(), on_synced)));
    }
    if ctx.kinds.iter().any(|k| k.kind.optional()) {
        tasks.push(tokio::spawn(discover_optional_kinds(
            Arc::clone(&ctx),
            scope.clone(),
            triggers.clone(),
            reconcile_all.clone(),
            opts.discovery_interval,
        )));
    }
    drop((triggers, reconcile_all));

    // No reconcile before every required child cache has its first list: a
    // reconcile would otherwise read children from the API one by one, and
    // prune nothing.
    let shutdown = shutdown.shared();
    let synced = async {
        while !ctx.kinds.iter().filter(|k| !k.kind.optional()).all(|k| k.store().is_some()) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = synced => {}
        () = shutdown.clone() => {
            for task in tasks {
                task.abort();
            }
            return;
        }
    }

    Controller::for_stream(grpc_stream, grpc_store)
        .reconcile_on(trigger_rx)
        .reconcile_all_on(reconcile_all_rx)
        .with_config(ControllerConfig::default().concurrency(opts.concurrency).debounce(opts.debounce))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| {
            match res {
                Ok((obj, _)) => debug!(name = %obj.name, namespace = ?obj.namespace, "reconcile done"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                    debug!(name = %obj.name, namespace = ?obj.namespace, category = e.category(), "reconcile failed");
                }
                // A trigger for an object deleted meanwhile (a child's event
                // after its GrpcService went away): nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    let gone = ObjectRef::<GrpcService>::new(&obj.name);
                    queued.remove(&match &obj.namespace {
                        Some(ns) => gone.within(ns),
                        None => gone,
                    });
                    debug!(name = %obj.name, namespace = ?obj.namespace, "trigger for an object no longer cached");
                }
                Err(e) => warn!(error = %reconcile::error_chain(&e), "controller error"),
            }
            future::ready(())
        })
        .await;
    for task in tasks {
        task.abort();
    }
}

/// The GrpcServices of `store` whose `allowedClients` name `obj`.
fn referrers(store: &reflector::Store<GrpcService>, obj: &GrpcService) -> Vec<ObjectRef<GrpcService>> {
    let (Some(name), Some(ns)) = (obj.metadata.name.as_deref(), obj.metadata.namespace.as_deref()) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|r| {
            let own_ns = r.metadata.namespace.as_deref().unwrap_or_default();
            r.spec.tls.as_ref().is_some_and(|t| {
                t.allowed_clients.iter().any(|c| {
                    c.name.as_deref() == Some(name) && c.namespace.as_deref().unwrap_or(own_ns) == ns
                })
            })
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

fn scoped_api(client: &Client, scope: Option<&str>, api: &ApiResource) -> Api<DynamicObject> {
    match scope {
        Some(ns) => Api::namespaced_with(client.clone(), ns, api),
        None => Api::all_with(client.clone(), api),
    }
}

/// The GrpcService a child belongs to, from its labels (which adoption
/// candidates carry too, unlike an ownerReference).
fn owner_of(obj: &DynamicObject) -> Option<ObjectRef<GrpcService>> {
    let name = obj.labels().get(SERVICE_LABEL)?;
    Some(ObjectRef::new(name).within(obj.metadata.namespace.as_deref()?))
}

/// Watches one child kind: keeps its slim cache, publishes the store once the
/// first list is complete, and turns every change (deletes included) into a
/// trigger for the owning GrpcService. Ends when the API is no longer served.
async fn watch_kind(
    api: Api<DynamicObject>,
    ctx: Arc<Context>,
    index: usize,
    mut triggers: mpsc::Sender<ObjectRef<GrpcService>>,
    mut on_synced: impl FnMut() + Send + 'static,
) {
    let cache = &ctx.kinds[index];
    let kind = cache.kind.kind();
    let slimmer = Arc::clone(&cache.kind);
    let writer = reflector::store::Writer::new(cache.api.clone());
    let store = writer.as_reader();
    let config = watcher::Config::default().labels(&ctx.registry.watch_selector(index));
    let mut stream = std::pin::pin!(
        watcher(api, config).default_backoff().modify(move |o| slimmer.slim(o)).reflect(writer)
    );
    let mut published = false;
    // Owners of the children cached before a relist: a child deleted while
    // the watch was down produces no event, only its absence from the list.
    let mut before_relist: HashSet<ObjectRef<GrpcService>> = HashSet::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                before_relist = store.state().iter().filter_map(|o| owner_of(o)).collect();
            }
            Ok(watcher::Event::InitDone) => {
                // Also after a relist, when a reconcile withdrew the store
                // (an optional kind's API answered 404 before this watch saw it).
                if cache.store().is_none() {
                    cache.set_store(Some(store.clone()));
                    on_synced();
                    info!(kind, "cache synced");
                }
                published = true;
                for owner in std::mem::take(&mut before_relist) {
                    let _ = triggers.send(owner).await;
                }
            }
            // The first list triggers nothing: the Controller reconciles
            // every GrpcService once it starts, and it starts only after
            // this list (a trigger per child would fill the channel nobody
            // reads yet, and block this loop before InitDone).
            Ok(watcher::Event::InitApply(_)) if !published => {}
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) | watcher::Event::Delete(obj)) => {
                if let Some(owner) = owner_of(&obj) {
                    ctx.queued.push(owner.clone());
                    let _ = triggers.send(owner).await;
                }
            }
            Err(e) => {
                ctx.metrics.watch_errors.with_label_values(&[kind]).inc();
                if cache.kind.optional() && is_not_found(&e) {
                    info!(kind, "API no longer served; watch stopped");
                    cache.set_store(None);
                    return;
                }
                warn!(kind, error = %reconcile::error_chain(&e), "watch failed; retrying with backoff");
            }
        }
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s)) | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 404
    )
}

/// Starts and stops the watches of optional kinds as their APIs appear and
/// disappear (discovery works with namespaced permissions too), and has every
/// GrpcService reconciled on each change: to create the children a new CRD
/// allows, or to report `CRDNotInstalled`.
async fn discover_optional_kinds(
    ctx: Arc<Context>,
    scope: Option<String>,
    triggers: mpsc::Sender<ObjectRef<GrpcService>>,
    mut reconcile_all: mpsc::Sender<()>,
    interval: Duration,
) {
    let mut running: HashMap<usize, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        for (index, cache) in ctx.kinds.iter().enumerate().filter(|(_, c)| c.kind.optional()) {
            running.retain(|_, task| !task.is_finished());
            let kind = cache.kind.kind();
            match served(&ctx.client, &cache.api).await {
                Ok(true) if !running.contains_key(&index) => {
                    info!(kind, api = %cache.api.api_version, "API served; starting its watch");
                    let api = scoped_api(&ctx.client, scope.as_deref(), &cache.api);
                    let mut all = reconcile_all.clone();
                    let on_synced = move || {
                        let _ = all.try_send(());
                    };
                    let task =
                        tokio::spawn(watch_kind(api, Arc::clone(&ctx), index, triggers.clone(), on_synced));
                    running.insert(index, task);
                }
                Ok(false) => {
                    if let Some(task) = running.remove(&index) {
                        info!(kind, "API no longer served; stopping its watch");
                        task.abort();
                    }
                    if cache.store().is_some() {
                        cache.set_store(None);
                        let _ = reconcile_all.send(()).await;
                    }
                }
                Ok(true) => {}
                Err(e) => {
                    ctx.metrics.watch_errors.with_label_values(&[kind]).inc();
                    warn!(kind, error = %reconcile::error_chain(&e), "discovery failed");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Whether the API server serves `api` (group/version and plural).
pub async fn served(client: &Client, api: &ApiResource) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(&api.api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == api.plural)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets readiness once every required cache has its initial list, seen in
/// the watch streams themselves (`InitDone`).
///
/// Not `Store::wait_until_ready`: kube-runtime's store readiness is a futures
/// oneshot, which keeps one waker, and the Controller already waits on the
/// GrpcService store. A second waiter steals or loses the wake-up; on a real
/// API server that left `/readyz` at 503 for good, or the Controller never
/// starting.
#[derive(Clone)]
struct CacheSync {
    remaining: Arc<AtomicUsize>,
    health: Health,
}

impl CacheSync {
    fn new(health: Health, caches: usize) -> Self {
        Self { remaining: Arc::new(AtomicUsize::new(caches)), health }
    }

    /// An `inspect` callback for one cache's reflected watch stream; counts
    /// its first `InitDone` only.
    fn marker<K>(&self) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + Send + use<K> {
        let sync = self.clone();
        let mut seen = false;
        move |event| {
            if !seen && matches!(event, Ok(watcher::Event::InitDone)) {
                seen = true;
                if sync.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    info!("caches synced; controller ready");
                    sync.health.set_synced(true);
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
        let mut svc = k8s_openapi::api::core::v1::Service::default();
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
