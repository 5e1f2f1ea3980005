//! Child kinds: every kind of object a GrpcService owns is one module
//! implementing [`ChildKind`], and [`Registry::standard`] lists them in apply
//! order.
//!
//! Adding a kind means: one module here, one line in [`Registry::standard`],
//! its verbs in `config/rbac/role.yaml` (and the namespaced Role), and its
//! snapshot. The reconciler (`crate::reconcile`) is generic over the trait:
//! it caches, fetches, applies, prunes and adopts every kind the same way, and
//! folds each kind's condition into the status.
//!
//! A kind's builder is a pure function of the validated spec, the pod
//! template contributions of every wanted kind ([`Workload`]) and the live
//! children it needs ([`ObservedChildren`]); `render` calls it offline.

pub mod certificate;
pub mod deployment;
pub mod drift;
pub mod envoy_config;
pub mod grafana_dashboard;
pub mod horizontal_pod_autoscaler;
pub mod labels;
pub mod pod_disruption_budget;
pub mod prometheus_rule;
pub mod service;
pub mod service_account;
pub mod service_monitor;
pub mod tls_secret;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Container, EnvVar, ServicePort, Volume, VolumeMount};
use kube::Client;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use kube::runtime::reflector::Store;
use serde_json::Value;

use crate::api::GrpcService;
use crate::metrics::Metrics;
use crate::reconcile::status::Verdict;
use crate::reconcile::validate::ValidatedService;

/// What marks a change of a child's spec by anyone, so that a cached copy
/// without the spec can still tell "unchanged since we last checked".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeMarker {
    /// `metadata.generation`: the API server increments it on every spec
    /// change (Deployments, HPAs, PDBs), and not on status updates.
    Generation,
    /// `metadata.resourceVersion`: for kinds without a generation (Services,
    /// ConfigMaps, Secrets); any write moves it.
    ResourceVersion,
}

/// The status condition a kind contributes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConditionRole {
    /// Condition type, e.g. `DeploymentAvailable`. Several kinds may share
    /// one (the monitoring kinds share `MonitoringReady`); it is True when
    /// every wanted kind's verdict is.
    pub type_: &'static str,
    /// Whether serving depends on it, so that `Ready` follows it. Never true
    /// for a kind whose CRD may be absent.
    pub gates_ready: bool,
}

/// Pod template and Service additions that kinds contribute before any
/// object is built: the TLS Secret adds a volume and env, the gRPC-Web proxy
/// a sidecar container and a Service port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    /// Annotations added to the pod template.
    pub pod_annotations: BTreeMap<String, String>,
    /// Volumes added to the pod.
    pub volumes: Vec<Volume>,
    /// Native sidecars: init containers with `restartPolicy: Always`, which
    /// start before the workload container and stop after it.
    pub sidecars: Vec<Container>,
    /// Environment variables added to the workload container, after the
    /// contract's own and before the user's.
    pub env: Vec<EnvVar>,
    /// Volume mounts added to the workload container.
    pub volume_mounts: Vec<VolumeMount>,
    /// Ports added to the Service.
    pub service_ports: Vec<ServicePort>,
    /// Annotations added to the Deployment's own metadata (not the pods').
    pub deployment_annotations: BTreeMap<String, String>,
    /// The gRPC port serves TLS, so the Service no longer claims h2c.
    pub grpc_port_tls: bool,
}

/// What a kind's [`ChildKind::prepare`] computed for its builder.
pub type Prepared = Arc<dyn Any + Send + Sync>;

/// The live, owned children a builder may read, by kind: cached copies, so
/// read their content with [`kept`] (or [`typed`]), and list what is read in
/// the kind's [`ChildKind::cache_keeps`]. Plus what each kind prepared.
#[derive(Clone, Default)]
pub struct ObservedChildren {
    /// Live children by kind.
    pub live: BTreeMap<&'static str, Arc<DynamicObject>>,
    /// Prepared inputs by kind.
    pub prepared: BTreeMap<&'static str, Prepared>,
}

impl std::fmt::Debug for ObservedChildren {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedChildren")
            .field("live", &self.live.keys().collect::<Vec<_>>())
            .field("prepared", &self.prepared.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ObservedChildren {
    /// The live child of `kind`, if it exists and is owned.
    pub fn get(&self, kind: &str) -> Option<&DynamicObject> {
        self.live.get(kind).map(AsRef::as_ref)
    }

    /// What `kind` prepared, if it is a `T`.
    pub fn prepared<T: Any>(&self, kind: &str) -> Option<&T> {
        self.prepared.get(kind).and_then(|p| p.downcast_ref::<T>())
    }
}

/// What [`ChildKind::prepare`] may read.
pub struct PrepareCx<'a> {
    /// The operator's client.
    pub client: &'a Client,
    /// The validated spec.
    pub svc: &'a ValidatedService,
    /// The live owned children (cached copies).
    pub observed: &'a ObservedChildren,
    /// Every GrpcService the controller scope watches (cached).
    pub grpc_services: &'a Store<GrpcService>,
}

/// Preparing a kind's input failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Reading from the API failed.
    #[error("failed to read {kind} {namespace}/{name}")]
    Read {
        /// The kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Computing it failed (issuing a certificate).
    #[error("failed to prepare the {kind}")]
    Compute {
        /// The kind.
        kind: &'static str,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An Event a kind asks for after the apply step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindEvent {
    /// Warning rather than Normal.
    pub warning: bool,
    /// Reason (CamelCase, bounded).
    pub reason: &'static str,
    /// Note.
    pub note: String,
}

/// Building a child failed: a builder produced something that does not
/// serialize, which is a programming error reported like any other failure.
#[derive(Debug, thiserror::Error)]
#[error("failed to build the desired {kind}")]
pub struct BuildError {
    /// The kind.
    pub kind: &'static str,
    /// The serialization error.
    #[source]
    pub source: serde_json::Error,
}

/// One kind of child object.
pub trait ChildKind: Send + Sync + 'static {
    /// Kind, e.g. `Deployment`; also a bounded metric label.
    fn kind(&self) -> &'static str;

    /// Group, version and plural of its API.
    fn api_resource(&self) -> ApiResource;

    /// True when the API comes from a CRD that may not be installed
    /// (prometheus-operator's ServiceMonitor). Such a kind is skipped while
    /// its API is not served, and its condition says `CRDNotInstalled`.
    fn optional(&self) -> bool {
        false
    }

    /// The `app.kubernetes.io/component` label of this kind's children, for
    /// a kind that shares its API with another (two ConfigMap kinds): each
    /// kind's cache then holds only its own children, so neither prunes the
    /// other's. A kind without one owns the API's children that carry no
    /// component another kind claims (see [`Registry::watch_selector`]).
    fn component(&self) -> Option<&'static str> {
        None
    }

    /// Name of the child for `svc`.
    fn name(&self, svc: &ValidatedService) -> String {
        svc.name.clone()
    }

    /// Whether `svc` wants this child. An owned child that is not wanted is
    /// deleted (pruned).
    fn wanted(&self, svc: &ValidatedService) -> bool;

    /// Reads and computes what `contribute` and `build` need besides the
    /// spec and the cached children (the TLS Secret's certificate). Runs in
    /// the fetch step for every wanted kind; the only kind hook with I/O.
    fn prepare<'a>(&'a self, _cx: PrepareCx<'a>) -> BoxFuture<'a, Result<Option<Prepared>, PrepareError>> {
        Box::pin(futures::future::ready(Ok(None)))
    }

    /// Adds to the pod template and the Service. Called for every wanted
    /// kind, in registry order, before any object is built.
    fn contribute(&self, _svc: &ValidatedService, _observed: &ObservedChildren, _workload: &mut Workload) {}

    /// True when the live child must be left exactly as it is this time:
    /// nothing about it needs to change and its content is not cached (a
    /// Secret), or what it depends on is unavailable. Nothing is built or
    /// written for it.
    fn keep_live(&self, _svc: &ValidatedService, _observed: &ObservedChildren) -> bool {
        false
    }

    /// The desired object: apiVersion, kind, metadata (name, namespace,
    /// labels, ownerReference) and content. Pure.
    fn build(
        &self,
        svc: &ValidatedService,
        workload: &Workload,
        observed: &ObservedChildren,
    ) -> Result<Value, BuildError>;

    /// Whether applying `desired` would change `live` (a full object).
    fn drifted(&self, desired: &Value, live: &Value) -> bool {
        drift::needs_apply(desired, live)
    }

    /// What marks a spec change of this kind.
    fn change_marker(&self) -> ChangeMarker {
        ChangeMarker::Generation
    }

    /// JSON pointers the cache keeps besides the identifying metadata; the
    /// rest of a cached child is dropped to save memory (and, for Secrets,
    /// to keep key material out of the cache). What `verdict` and `handover`
    /// read must be listed here.
    fn cache_keeps(&self) -> &'static [&'static str] {
        &[]
    }

    /// Reduces an object before it enters the cache; the default keeps
    /// [`ChildKind::cache_keeps`] (see [`slim`]).
    fn slim(&self, obj: &mut DynamicObject) {
        slim(obj, self.cache_keeps());
    }

    /// The condition this kind contributes to, if any.
    fn condition(&self) -> Option<ConditionRole> {
        None
    }

    /// A task the controller runs once for this kind for as long as it
    /// runs (the monitoring kinds' watch of the cluster's Prometheus
    /// objects); `None` for most kinds, and for a task another kind started.
    fn background(&self, _client: &Client) -> Option<BoxFuture<'static, ()>> {
        None
    }

    /// Changes whenever every GrpcService should be reconciled again for
    /// this kind (a Prometheus object's selectors changed).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// This kind's verdict for its condition, from the live object (a cached
    /// copy or the server's answer to an apply; `None` when there is none)
    /// and what it prepared.
    fn verdict(
        &self,
        _svc: &ValidatedService,
        _observed: &ObservedChildren,
        _live: Option<&DynamicObject>,
    ) -> Option<Verdict> {
        None
    }

    /// A top-level status field this kind reports (`certificate`), from the
    /// live object and what it prepared.
    fn status_field(
        &self,
        _svc: &ValidatedService,
        _observed: &ObservedChildren,
        _live: Option<&DynamicObject>,
    ) -> Option<(&'static str, Value)> {
        None
    }

    /// When the GrpcService must be reconciled again at the latest, for
    /// this kind (a certificate's renewal time).
    fn requeue_after(
        &self,
        _svc: &ValidatedService,
        _observed: &ObservedChildren,
        _live: Option<&DynamicObject>,
    ) -> Option<Duration> {
        None
    }

    /// Records metrics after the apply step and returns the Events to
    /// publish; `written` says whether this run wrote the child.
    fn record(
        &self,
        _metrics: &Metrics,
        _svc: &ValidatedService,
        _observed: &ObservedChildren,
        _live: Option<&DynamicObject>,
        _written: bool,
    ) -> Vec<KindEvent> {
        Vec::new()
    }

    /// The GrpcService `namespace/name` is gone: drop its per-object metrics.
    fn forget(&self, _metrics: &Metrics, _namespace: &str, _name: &str) {}

    /// A patch to apply under [`labels::HANDOVER_MANAGER`] before `desired`
    /// is applied, so that a field the operator stops setting keeps its live
    /// value instead of being reset (the Deployment's replicas when
    /// `spec.replicas` becomes unset).
    fn handover(&self, _desired: &Value, _live: &DynamicObject) -> Option<Value> {
        None
    }
}

/// The child kinds, in apply order.
#[derive(Clone)]
pub struct Registry {
    kinds: Vec<Arc<dyn ChildKind>>,
}

impl Registry {
    /// Every kind the operator manages. The order is the apply order: a kind
    /// is applied after the kinds it references (the HPA and the PDB after
    /// the Deployment; later, the TLS Secret before it).
    ///
    /// The PKI settings come from [`crate::pki::trust::PkiSettings::default`]
    /// with no cluster (`render`, unit tests): leaf Secrets are built
    /// redacted. [`Registry::with_trust`] gives the live CA.
    pub fn standard() -> Self {
        Self::with_trust(crate::pki::trust::Trust::offline(crate::pki::trust::PkiSettings::default()))
    }

    /// Every kind, with the CA the operator runs and the default sidecar
    /// image.
    pub fn with_trust(trust: Arc<crate::pki::trust::Trust>) -> Self {
        Self::configured(trust, envoy_config::DEFAULT_ENVOY_IMAGE.to_owned())
    }

    /// Every kind, with the CA the operator runs and `envoy_image` as the
    /// gRPC-Web sidecar's default image (`--envoy-image`).
    pub fn configured(trust: Arc<crate::pki::trust::Trust>, envoy_image: String) -> Self {
        // One watch of the cluster's Prometheus objects for both monitoring kinds.
        let selection = Arc::new(crate::monitoring::selection::Selection::default());
        Self {
            kinds: vec![
                Arc::new(service_account::ServiceAccountKind),
                Arc::new(tls_secret::TlsSecretKind::new(Arc::clone(&trust))),
                Arc::new(certificate::CertificateKind::new(Arc::clone(&trust))),
                Arc::new(envoy_config::EnvoyConfigKind::new(envoy_image, trust)),
                Arc::new(deployment::DeploymentKind),
                Arc::new(service::ServiceKind),
                Arc::new(horizontal_pod_autoscaler::HorizontalPodAutoscalerKind),
                Arc::new(pod_disruption_budget::PodDisruptionBudgetKind),
                Arc::new(service_monitor::ServiceMonitorKind::new(Arc::clone(&selection))),
                Arc::new(prometheus_rule::PrometheusRuleKind::new(selection)),
                Arc::new(grafana_dashboard::GrafanaDashboardKind),
            ],
        }
    }

    /// This registry with `kind` appended (tests add kinds over test CRDs).
    #[must_use]
    pub fn with(mut self, kind: Arc<dyn ChildKind>) -> Self {
        self.kinds.push(kind);
        self
    }

    /// The kinds, in apply order.
    pub fn kinds(&self) -> &[Arc<dyn ChildKind>] {
        &self.kinds
    }

    /// The label selector of the watch (and so the cache) of the kind at
    /// `index`: the operator's children, narrowed by component where kinds
    /// share an API (see [`ChildKind::component`]).
    pub fn watch_selector(&self, index: usize) -> String {
        let mut selector = format!("{}={}", labels::MANAGED_BY_LABEL, labels::MANAGER);
        let Some(kind) = self.kinds.get(index) else { return selector };
        match kind.component() {
            Some(c) => selector.push_str(&format!(",{}={c}", labels::COMPONENT_LABEL)),
            None => {
                let api = kind.api_resource();
                for other in &self.kinds {
                    if let Some(c) = other.component()
                        && other.api_resource() == api
                    {
                        selector.push_str(&format!(",{}!={c}", labels::COMPONENT_LABEL));
                    }
                }
            }
        }
        selector
    }

    /// Condition types that `Ready` follows.
    pub fn gating_conditions(&self) -> Vec<&'static str> {
        let mut types: Vec<&'static str> = Vec::new();
        for role in self.kinds.iter().filter_map(|k| k.condition()) {
            if role.gates_ready && !types.contains(&role.type_) {
                types.push(role.type_);
            }
        }
        types
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.iter().map(|k| k.kind())).finish()
    }
}

/// One desired child.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredChild {
    /// Index of its kind in the registry.
    pub kind: usize,
    /// Its name.
    pub name: String,
    /// The object to apply, stamped with its digest; `None` leaves the live
    /// one as it is ([`ChildKind::keep_live`]).
    pub object: Option<Value>,
}

/// The whole desired state of one GrpcService, computed before any write.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Wanted children, in apply order.
    pub children: Vec<DesiredChild>,
}

impl Desired {
    /// The desired child of kind index `kind`, if wanted.
    pub fn child(&self, kind: usize) -> Option<&DesiredChild> {
        self.children.iter().find(|c| c.kind == kind)
    }
}

/// Builds every wanted child: contributions first, then the objects.
pub fn desired(
    registry: &Registry,
    svc: &ValidatedService,
    observed: &ObservedChildren,
) -> Result<Desired, BuildError> {
    let wanted: Vec<(usize, &Arc<dyn ChildKind>)> =
        registry.kinds().iter().enumerate().filter(|(_, k)| k.wanted(svc)).collect();
    let mut workload = Workload::default();
    for (_, kind) in &wanted {
        kind.contribute(svc, observed, &mut workload);
    }
    let mut children = Vec::with_capacity(wanted.len());
    for (index, kind) in wanted {
        let object = if kind.keep_live(svc, observed) {
            None
        } else {
            Some(drift::with_digest(kind.build(svc, &workload, observed)?))
        };
        children.push(DesiredChild { kind: index, name: kind.name(svc), object });
    }
    Ok(Desired { children })
}

/// Serializes a typed builder's object (a helper for [`ChildKind::build`]).
pub fn to_value<T: serde::Serialize>(kind: &'static str, obj: &T) -> Result<Value, BuildError> {
    serde_json::to_value(obj).map_err(|source| BuildError { kind, source })
}

/// Drops what the cache does not keep from a child: everything but
/// `apiVersion`, `kind`, the metadata the reconciler reads (name, namespace,
/// uid, resourceVersion, generation, labels, annotations without the
/// last-applied manifest, ownerReferences, deletionTimestamp) and the JSON
/// pointers in `keeps`, which are stored compactly (see [`kept`]).
pub fn slim(obj: &mut DynamicObject, keeps: &[&str]) {
    slim_metadata(obj);
    let fields = kept_fields(&obj.data, keeps);
    store_kept(obj, fields);
}

/// Keeps only the metadata the reconciler reads of a child.
pub fn slim_metadata(obj: &mut DynamicObject) {
    crate::run::trim_for_cache(obj);
    let mut meta = std::mem::take(&mut obj.metadata);
    obj.metadata = kube::api::ObjectMeta {
        labels: meta.labels.take(),
        annotations: meta.annotations.take(),
        owner_references: meta.owner_references.take(),
        ..crate::run::identity(&mut meta)
    };
}

/// The values at `keeps` in `data`, at the same places.
pub fn kept_fields(data: &Value, keeps: &[&str]) -> Value {
    let mut kept = Value::Object(serde_json::Map::new());
    for pointer in keeps {
        if let Some(v) = data.pointer(pointer) {
            drift::insert_pointer(&mut kept, pointer, v.clone());
        }
    }
    kept
}

/// Stores the kept fields of a cached child as one compact JSON string, or
/// nothing when there are none. A serde_json map allocates a B-tree node of
/// about 600 bytes even for one entry; a Deployment's kept status alone
/// would take five of them, per object, for the life of the cache.
pub fn store_kept(obj: &mut DynamicObject, fields: Value) {
    obj.data = match &fields {
        Value::Object(m) if m.is_empty() => Value::Null,
        _ => Value::String(fields.to_string()),
    };
}

/// The content of a child besides its metadata: its `data` for an object
/// from the API server, the kept fields for a cached copy (see [`slim`]).
pub fn kept(obj: &DynamicObject) -> std::borrow::Cow<'_, Value> {
    match &obj.data {
        Value::String(compact) => std::borrow::Cow::Owned(
            serde_json::from_str(compact).unwrap_or(Value::Object(serde_json::Map::new())),
        ),
        Value::Null => std::borrow::Cow::Owned(Value::Object(serde_json::Map::new())),
        data => std::borrow::Cow::Borrowed(data),
    }
}

/// A child as a typed object, from a cached copy or a full one.
pub fn typed<K: serde::de::DeserializeOwned>(obj: &DynamicObject) -> Result<K, serde_json::Error> {
    let mut value = kept(obj).into_owned();
    if let Value::Object(map) = &mut value {
        map.insert("metadata".to_owned(), serde_json::to_value(&obj.metadata)?);
    }
    serde_json::from_value(value)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::reconcile::validate::tests::sample;
    use crate::reconcile::validate::{Origin, validate};

    pub(crate) fn valid(obj: &crate::api::GrpcService) -> ValidatedService {
        validate(obj, Origin::Cluster).expect("valid")
    }

    /// The desired object of `kind` for `obj`, as JSON.
    pub(crate) fn build(obj: &crate::api::GrpcService, kind: &str) -> Option<Value> {
        let registry = Registry::standard();
        let v = valid(obj);
        let trust = crate::pki::trust::Trust::offline(crate::pki::trust::PkiSettings::default());
        let d = desired(&registry, &v, &tls_secret::render_observed(&v, &[], &trust)).expect("builds");
        d.children.into_iter().find(|c| registry.kinds()[c.kind].kind() == kind).and_then(|c| c.object)
    }

    #[test]
    fn children_are_controlled_by_the_grpc_service_and_carry_the_selector_labels() {
        let registry = Registry::standard();
        let d = desired(&registry, &valid(&sample()), &ObservedChildren::default()).expect("builds");
        let kinds: Vec<&str> = d.children.iter().map(|c| registry.kinds()[c.kind].kind()).collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "Secret",
                "Deployment",
                "Service",
                "PodDisruptionBudget",
                "ServiceMonitor",
                "PrometheusRule"
            ],
            "mutual TLS by default, an own identity, 2 replicas (a default budget), and monitoring by default"
        );
        for c in &d.children {
            let object = c.object.as_ref().expect("built");
            let owners = &object["metadata"]["ownerReferences"];
            assert_eq!(owners.as_array().map(Vec::len), Some(1), "{c:?}");
            assert_eq!(owners[0]["kind"], "GrpcService");
            assert_eq!(owners[0]["uid"], "0b9e4f1c-5f1e-4a7a-9d43-1f0f3c2a7b10");
            assert_eq!(owners[0]["controller"], true);
            assert_eq!(owners[0]["blockOwnerDeletion"], true);
            assert_eq!(object["metadata"]["labels"][labels::SERVICE_LABEL], "user-service");
            assert_eq!(object["metadata"]["labels"][labels::MANAGED_BY_LABEL], labels::MANAGER);
            let want =
                if registry.kinds()[c.kind].kind() == "Secret" { "user-service-tls" } else { "user-service" };
            assert_eq!(c.name, want);
        }
    }

    #[test]
    fn children_never_copy_the_argo_cd_instance_label() {
        let mut obj = sample();
        obj.metadata.labels = Some([("app.kubernetes.io/instance".to_owned(), "shop".to_owned())].into());
        let d = desired(&Registry::standard(), &valid(&obj), &ObservedChildren::default()).expect("builds");
        let text =
            serde_json::to_string(&d.children.iter().map(|c| &c.object).collect::<Vec<_>>()).expect("json");
        assert!(!text.contains("app.kubernetes.io/instance"), "{text}");
    }

    #[test]
    fn ready_follows_the_certificate_the_grpc_web_sidecar_and_the_deployment() {
        assert_eq!(
            Registry::standard().gating_conditions(),
            ["CertificateReady", "GrpcWebReady", "DeploymentAvailable"]
        );
    }

    #[test]
    fn the_cache_keeps_identifying_metadata_and_what_the_kind_asks_for() {
        let mut obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a", "managedFields": [{"manager": "x"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": []}}},
            "status": {"readyReplicas": 3}
        }))
        .expect("object");
        slim(&mut obj, &["/spec/replicas", "/status/readyReplicas"]);
        assert_eq!(obj.metadata.managed_fields, None);
        assert_eq!(obj.metadata.annotations, None);
        assert_eq!(obj.metadata.name.as_deref(), Some("a"));
        assert!(obj.data.is_string(), "stored compactly: {}", obj.data);
        assert_eq!(*kept(&obj), serde_json::json!({"status": {"readyReplicas": 3}, "spec": {"replicas": 3}}));
        slim(&mut obj, &[]);
        assert_eq!(obj.data, Value::Null, "nothing kept, nothing stored");
    }
}
