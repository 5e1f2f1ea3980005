//! Whether any Prometheus selects the ServiceMonitor and the rules.
//!
//! prometheus-operator's semantics: a missing (null) selector selects
//! nothing and `{}` selects everything; a missing namespace selector means
//! the selecting object's own namespace. `Prometheus` selects ServiceMonitors
//! and rules, `PrometheusAgent` ServiceMonitors only, `ThanosRuler` rules
//! only.
//!
//! [`Selection`] watches those objects (and the namespaces' labels, which
//! namespace selectors match) cluster-wide and hands every reconcile a
//! [`Snapshot`]; [`check`] turns one into the `MonitoringReady` verdict. An
//! operator that may not read them (a namespaced install without the
//! `grpc-operator-monitoring-selection` ClusterRole) reports
//! `SelectionUnknown`. Where prometheus-operator publishes `status.bindings`
//! on our objects, they win over the computed answer ([`verdict`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, Selector, SelectorExt};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::Value;
use tracing::{info, warn};

use super::GROUP;
use crate::reconcile::status::{Verdict, reason};

/// What a monitoring object is, for the selectors that pick it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A ServiceMonitor (`serviceMonitorSelector`).
    ServiceMonitor,
    /// A PrometheusRule (`ruleSelector`).
    PrometheusRule,
}

impl Target {
    fn kind(self) -> &'static str {
        match self {
            Self::ServiceMonitor => "ServiceMonitor",
            Self::PrometheusRule => "PrometheusRule",
        }
    }

    fn selector_field(self) -> &'static str {
        match self {
            Self::ServiceMonitor => "serviceMonitorSelector",
            Self::PrometheusRule => "ruleSelector",
        }
    }

    fn namespace_selector_field(self) -> &'static str {
        match self {
            Self::ServiceMonitor => "serviceMonitorNamespaceSelector",
            Self::PrometheusRule => "ruleNamespaceSelector",
        }
    }

    /// Where the user sets labels for this object.
    fn labels_field(self) -> &'static str {
        match self {
            Self::ServiceMonitor => "spec.monitoring.labels or spec.monitoring.serviceMonitor.labels",
            Self::PrometheusRule => "spec.monitoring.labels or spec.monitoring.alerts.labels",
        }
    }
}

/// A kind of object that selects monitoring objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectingKind {
    /// Kind.
    pub kind: &'static str,
    /// Plural.
    pub plural: &'static str,
    /// API version (PrometheusAgent is still `v1alpha1`).
    pub version: &'static str,
    /// Selects ServiceMonitors.
    pub monitors: bool,
    /// Selects PrometheusRules.
    pub rules: bool,
}

/// prometheus-operator's kinds that select ServiceMonitors or rules.
pub const SELECTING_KINDS: [SelectingKind; 3] = [
    SelectingKind { kind: "Prometheus", plural: "prometheuses", version: "v1", monitors: true, rules: true },
    SelectingKind {
        kind: "PrometheusAgent",
        plural: "prometheusagents",
        version: "v1alpha1",
        monitors: true,
        rules: false,
    },
    SelectingKind {
        kind: "ThanosRuler",
        plural: "thanosrulers",
        version: "v1",
        monitors: false,
        rules: true,
    },
];

impl SelectingKind {
    fn selects(&self, target: Target) -> bool {
        match target {
            Target::ServiceMonitor => self.monitors,
            Target::PrometheusRule => self.rules,
        }
    }

    /// Its API.
    pub fn api(&self) -> ApiResource {
        ApiResource {
            group: GROUP.to_owned(),
            version: self.version.to_owned(),
            api_version: format!("{GROUP}/{}", self.version),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }
}

/// One selecting object: its selectors for ServiceMonitors and rules
/// (`None`: the field is unset, so it selects none).
#[derive(Clone, Debug, PartialEq)]
pub struct Selecting {
    /// Kind (`Prometheus`, …).
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `serviceMonitorSelector` and `serviceMonitorNamespaceSelector`.
    pub monitors: (Option<LabelSelector>, Option<LabelSelector>),
    /// `ruleSelector` and `ruleNamespaceSelector`.
    pub rules: (Option<LabelSelector>, Option<LabelSelector>),
}

impl Selecting {
    /// From a live object of `kind`.
    pub fn from_object(kind: &SelectingKind, obj: &DynamicObject) -> Self {
        let field = |name: &str| -> Option<LabelSelector> {
            obj.data
                .get("spec")
                .and_then(|s| s.get(name))
                .and_then(|v| serde_json::from_value(v.clone()).ok())
        };
        let pair = |t: Target| (field(t.selector_field()), field(t.namespace_selector_field()));
        Self {
            kind: kind.kind,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            monitors: if kind.monitors { pair(Target::ServiceMonitor) } else { (None, None) },
            rules: if kind.rules { pair(Target::PrometheusRule) } else { (None, None) },
        }
    }

    fn scope(&self, target: Target) -> &(Option<LabelSelector>, Option<LabelSelector>) {
        match target {
            Target::ServiceMonitor => &self.monitors,
            Target::PrometheusRule => &self.rules,
        }
    }

    fn label_namespace_selector(&self) -> bool {
        [&self.monitors.1, &self.rules.1].into_iter().flatten().any(|s| !is_empty(s))
    }
}

/// What one selecting kind's watch shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// Not read yet.
    Pending,
    /// The CRD is not installed.
    NotServed,
    /// Reading it was refused (the message says why).
    Unreadable(String),
    /// Every object of the kind.
    Listed(Vec<Selecting>),
}

/// What a reconcile knows about the cluster's selecting objects.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// By selecting kind.
    pub sources: BTreeMap<&'static str, Source>,
    /// Labels by namespace; `None` while unknown (not read, or refused).
    pub namespaces: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            sources: SELECTING_KINDS.iter().map(|k| (k.kind, Source::Pending)).collect(),
            namespaces: None,
        }
    }
}

fn is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

fn matches(s: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(s.clone()).is_ok_and(|sel| sel.matches(labels))
}

/// A selector as a user reads it: `release=kps, team in (a,b)`.
fn describe(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => format!("{} {op} ({values})", e.key),
        });
    }
    parts.join(", ")
}

/// How one selecting object stands to our object.
enum Match {
    Selected,
    /// Cannot tell without the namespace's labels.
    Unknown(String),
    /// Not selected; a hint naming what would be needed.
    Not(String),
}

fn match_one(
    s: &Selecting,
    target: Target,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    namespaces: Option<&BTreeMap<String, BTreeMap<String, String>>>,
) -> Match {
    let who = format!("{} {}/{}", s.kind, s.namespace, s.name);
    let (selector, ns_selector) = s.scope(target);
    let Some(selector) = selector else {
        return Match::Not(format!(
            "{who} selects no {}s ({} is unset)",
            target.kind(),
            target.selector_field()
        ));
    };
    match ns_selector {
        None if s.namespace != namespace => {
            return Match::Not(format!(
                "{who} looks only in its own namespace {} ({} is unset)",
                s.namespace,
                target.namespace_selector_field()
            ));
        }
        None => {}
        Some(ns) if is_empty(ns) => {}
        Some(ns) => match namespaces.map(|all| all.get(namespace)) {
            None => {
                return Match::Unknown(format!(
                    "{who} selects namespaces by label ({}) and the operator cannot read namespaces",
                    describe(ns)
                ));
            }
            Some(ns_labels) => {
                if !matches(ns, &ns_labels.cloned().unwrap_or_default()) {
                    return Match::Not(format!(
                        "{who} looks only in namespaces labelled {} (label namespace {namespace} so)",
                        describe(ns)
                    ));
                }
            }
        },
    }
    if matches(selector, labels) {
        Match::Selected
    } else {
        Match::Not(format!(
            "{who} selects {}s labelled {} (set them in {})",
            target.kind(),
            describe(selector),
            target.labels_field()
        ))
    }
}

/// Whether any selecting object in `snapshot` selects our `target` in
/// `namespace` with `labels`.
pub fn check(
    snapshot: &Snapshot,
    target: Target,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Verdict {
    let mut selected = Vec::new();
    let mut hints = Vec::new();
    let mut unknown = Vec::new();
    let mut any_served = false;
    for kind in SELECTING_KINDS.iter().filter(|k| k.selects(target)) {
        match snapshot.sources.get(kind.kind).unwrap_or(&Source::Pending) {
            Source::Pending => unknown.push(format!("{} objects are not read yet", kind.kind)),
            Source::NotServed => {}
            Source::Unreadable(why) => {
                any_served = true;
                unknown.push(format!("cannot read {} objects: {why}", kind.kind));
            }
            Source::Listed(objects) => {
                any_served = true;
                for s in objects {
                    match match_one(s, target, namespace, labels, snapshot.namespaces.as_ref()) {
                        Match::Selected => selected.push(format!("{} {}/{}", s.kind, s.namespace, s.name)),
                        Match::Unknown(why) => unknown.push(why),
                        Match::Not(hint) => hints.push(hint),
                    }
                }
            }
        }
    }
    if !selected.is_empty() {
        return Verdict::ok(
            reason::SELECTED,
            format!("the {} is selected by {}", target.kind(), selected.join(", ")),
        );
    }
    if !unknown.is_empty() {
        return Verdict::unknown(
            reason::SELECTION_UNKNOWN,
            format!("whether a Prometheus selects the {} is unknown: {}", target.kind(), unknown.join("; ")),
        );
    }
    let why = if !any_served {
        "prometheus-operator's Prometheus CRD is not installed".to_owned()
    } else if hints.is_empty() {
        "no Prometheus object exists in the cluster".to_owned()
    } else {
        hints.join("; ")
    };
    Verdict::not_ok(
        reason::NOT_SELECTED_BY_ANY_PROMETHEUS,
        format!("no Prometheus selects the {}: {why}", target.kind()),
    )
}

/// How long a refused or missing source waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(60);

/// The cluster's selecting objects, kept current by [`Selection::run`].
pub struct Selection {
    state: RwLock<Snapshot>,
    changes: tokio::sync::watch::Sender<u64>,
    started: AtomicBool,
    retry: Duration,
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selection").field("snapshot", &self.snapshot()).finish()
    }
}

impl Default for Selection {
    fn default() -> Self {
        Self::new(RETRY)
    }
}

impl Selection {
    /// Nothing read yet; sources that are refused or missing are retried
    /// every `retry`.
    pub fn new(retry: Duration) -> Self {
        Self {
            state: RwLock::new(Snapshot::default()),
            changes: tokio::sync::watch::channel(0).0,
            started: AtomicBool::new(false),
            retry,
        }
    }

    /// What is known now.
    pub fn snapshot(&self) -> Snapshot {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Changes whenever a verdict may have changed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot) -> bool) {
        let changed = {
            let mut state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut state)
        };
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn set_source(&self, kind: &'static str, source: Source) {
        self.update(|s| s.sources.insert(kind, source.clone()).as_ref() != Some(&source));
    }

    /// The watches, once per process: a second call (the other monitoring
    /// kind) returns `None`.
    pub fn start(self: &Arc<Self>, client: &Client) -> Option<BoxFuture<'static, ()>> {
        if self.started.swap(true, Ordering::AcqRel) {
            return None;
        }
        let this = Arc::clone(self);
        let client = client.clone();
        Some(Box::pin(async move {
            let mut tasks: Vec<BoxFuture<'static, ()>> = SELECTING_KINDS
                .iter()
                .map(|k| Box::pin(Arc::clone(&this).watch_kind(client.clone(), *k)) as BoxFuture<'static, ()>)
                .collect();
            tasks.push(Box::pin(Arc::clone(&this).watch_namespaces(client.clone())));
            futures::future::join_all(tasks).await;
        }))
    }

    async fn watch_kind(self: Arc<Self>, client: Client, kind: SelectingKind) {
        let api_resource = kind.api();
        loop {
            match crate::run::served(&client, &api_resource).await {
                Ok(false) => {
                    self.set_source(kind.kind, Source::NotServed);
                    tokio::time::sleep(self.retry.min(crate::run::DEFAULT_DISCOVERY_INTERVAL)).await;
                    continue;
                }
                Ok(true) => {}
                Err(e) => {
                    warn!(kind = kind.kind, error = %e, "discovery failed");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource);
            let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
            let mut listed: BTreeMap<(String, String), Selecting> = BTreeMap::new();
            let mut initial: BTreeMap<(String, String), Selecting> = BTreeMap::new();
            let key = |o: &DynamicObject| (o.namespace().unwrap_or_default(), o.name_any());
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => initial.clear(),
                    Ok(watcher::Event::InitApply(o)) => {
                        initial.insert(key(&o), Selecting::from_object(&kind, &o));
                    }
                    Ok(watcher::Event::InitDone) => {
                        listed = std::mem::take(&mut initial);
                        self.set_source(kind.kind, Source::Listed(listed.values().cloned().collect()));
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        listed.insert(key(&o), Selecting::from_object(&kind, &o));
                        self.set_source(kind.kind, Source::Listed(listed.values().cloned().collect()));
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        listed.remove(&key(&o));
                        self.set_source(kind.kind, Source::Listed(listed.values().cloned().collect()));
                    }
                    Err(e) => match api_status(&e) {
                        Some(403) => {
                            info!(kind = kind.kind, "reading it is forbidden; selection reported as unknown");
                            self.set_source(
                                kind.kind,
                                Source::Unreadable(format!(
                                    "list of {} cluster-wide is forbidden (bind the ClusterRole grpc-operator-monitoring-selection)",
                                    kind.plural
                                )),
                            );
                            break;
                        }
                        Some(404) => {
                            self.set_source(kind.kind, Source::NotServed);
                            break;
                        }
                        _ => {
                            warn!(kind = kind.kind, error = %e, "watch failed; retrying");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                    },
                }
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    async fn watch_namespaces(self: Arc<Self>, client: Client) {
        let uses_labels = |s: &Snapshot| {
            s.sources.values().any(|src| match src {
                Source::Listed(objs) => objs.iter().any(Selecting::label_namespace_selector),
                _ => false,
            })
        };
        loop {
            let api: Api<kube::core::PartialObjectMeta<Namespace>> = Api::all(client.clone());
            let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
            let mut initial = BTreeMap::new();
            while let Some(event) = stream.next().await {
                let labels = |o: &kube::core::PartialObjectMeta<Namespace>| {
                    (o.name_any(), o.metadata.labels.clone().unwrap_or_default())
                };
                match event {
                    Ok(watcher::Event::Init) => initial.clear(),
                    Ok(watcher::Event::InitApply(o)) => {
                        let (k, v) = labels(&o);
                        initial.insert(k, v);
                    }
                    Ok(watcher::Event::InitDone) => {
                        let all = std::mem::take(&mut initial);
                        self.update(|s| {
                            let changed = s.namespaces.as_ref() != Some(&all);
                            s.namespaces = Some(all);
                            changed && uses_labels(s)
                        });
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        let (k, v) = labels(&o);
                        self.update(|s| {
                            let map = s.namespaces.get_or_insert_with(BTreeMap::new);
                            let changed = map.get(&k) != Some(&v);
                            map.insert(k, v);
                            changed && uses_labels(s)
                        });
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        let (k, _) = labels(&o);
                        self.update(|s| {
                            s.namespaces.as_mut().is_some_and(|m| m.remove(&k).is_some()) && uses_labels(s)
                        });
                    }
                    Err(e) => {
                        if api_status(&e) == Some(403) {
                            info!("reading namespaces is forbidden; namespace selectors cannot be matched");
                            self.update(|s| s.namespaces.take().is_some());
                            break;
                        }
                        warn!(error = %e, "namespace watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            tokio::time::sleep(self.retry).await;
        }
    }
}

fn api_status(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// `MonitoringReady` for one monitoring object: it must exist; then
/// prometheus-operator's own report on it (`status.bindings`, published with
/// its `StatusForConfigurationResources` feature) wins; otherwise the
/// selectors in `snapshot` decide.
pub fn verdict(
    target: Target,
    live: Option<&DynamicObject>,
    snapshot: Option<&Snapshot>,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Verdict {
    let kind = target.kind();
    let Some(live) = live else {
        return Verdict::not_ok(reason::NOT_FOUND, format!("the {kind} does not exist yet"));
    };
    if let Some(v) = bindings_verdict(kind, live, snapshot) {
        return v;
    }
    match snapshot {
        Some(snapshot) => check(snapshot, target, namespace, labels),
        None => Verdict::ok(reason::APPLIED, format!("the {kind} is applied")),
    }
}

/// The verdict of `live`'s `status.bindings`, when it has any: rejected by
/// a Prometheus, or selected. A binding naming an object `snapshot` lists as
/// gone is stale (prometheus-operator stopped, or its feature gate was
/// turned off, after it wrote it) and does not count.
pub fn bindings_verdict(kind: &str, live: &DynamicObject, snapshot: Option<&Snapshot>) -> Option<Verdict> {
    let kept = crate::children::kept(live);
    let current = |b: &Value| {
        let Some(snapshot) = snapshot else { return true };
        let Some(k) = SELECTING_KINDS.iter().find(|k| b["resource"].as_str() == Some(k.plural)) else {
            return true;
        };
        match snapshot.sources.get(k.kind) {
            Some(Source::Listed(objects)) => objects.iter().any(|o| {
                b["namespace"].as_str() == Some(o.namespace.as_str())
                    && b["name"].as_str() == Some(o.name.as_str())
            }),
            Some(Source::NotServed) => false,
            _ => true,
        }
    };
    let bindings: Vec<Value> = kept
        .pointer("/status/bindings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| current(b))
        .cloned()
        .collect();
    let name = |b: &Value| {
        format!(
            "{} {}/{}",
            b["resource"].as_str().unwrap_or("prometheuses"),
            b["namespace"].as_str().unwrap_or_default(),
            b["name"].as_str().unwrap_or_default()
        )
    };
    let accepted = |b: &Value| {
        b["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Accepted")).cloned()
    };
    if let Some((b, c)) =
        bindings.iter().filter_map(|b| accepted(b).map(|c| (b, c))).find(|(_, c)| c["status"] == "False")
    {
        return Some(Verdict::not_ok(
            reason::REJECTED_BY_PROMETHEUS,
            format!(
                "{} rejected the {kind}: {}: {}",
                name(b),
                c["reason"].as_str().unwrap_or("Invalid"),
                c["message"].as_str().unwrap_or_default()
            ),
        ));
    }
    let selected: Vec<String> =
        bindings.iter().filter(|b| accepted(b).is_some_and(|c| c["status"] == "True")).map(name).collect();
    (!selected.is_empty())
        .then(|| Verdict::ok(reason::SELECTED, format!("the {kind} is selected by {}", selected.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(status: serde_json::Value) -> DynamicObject {
        let mut obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "user-service", "namespace": "shop"},
            "status": status,
        }))
        .expect("object");
        crate::children::slim(&mut obj, &["/status/bindings"]);
        obj
    }

    #[test]
    fn bindings_published_by_prometheus_operator_decide_the_verdict() {
        let rejected = live(serde_json::json!({"bindings": [{
            "group": "monitoring.coreos.com", "resource": "prometheuses", "name": "k8s", "namespace": "monitoring",
            "conditions": [{"type": "Accepted", "status": "False", "reason": "InvalidConfiguration", "message": "bad"}]
        }]}));
        let labels = BTreeMap::new();
        let v = verdict(Target::ServiceMonitor, Some(&rejected), Some(&Snapshot::default()), "shop", &labels);
        assert_eq!((v.ok, v.reason), (false, reason::REJECTED_BY_PROMETHEUS));
        assert!(
            v.message.contains("prometheuses monitoring/k8s") && v.message.contains("bad"),
            "{}",
            v.message
        );

        let accepted = live(serde_json::json!({"bindings": [{
            "resource": "prometheuses", "name": "k8s", "namespace": "monitoring",
            "conditions": [{"type": "Accepted", "status": "True"}]
        }]}));
        let v = verdict(Target::ServiceMonitor, Some(&accepted), Some(&Snapshot::default()), "shop", &labels);
        assert_eq!((v.ok, v.reason), (true, reason::SELECTED));
        // The Prometheus it names is gone: the binding is stale, the selectors decide.
        let mut gone = Snapshot::default();
        gone.sources.insert("Prometheus", Source::Listed(Vec::new()));
        gone.sources.insert("PrometheusAgent", Source::NotServed);
        let v = verdict(Target::ServiceMonitor, Some(&accepted), Some(&gone), "shop", &labels);
        assert_eq!((v.ok, v.reason), (false, reason::NOT_SELECTED_BY_ANY_PROMETHEUS), "{}", v.message);

        let none = live(serde_json::json!({}));
        let v = verdict(Target::ServiceMonitor, Some(&none), Some(&Snapshot::default()), "shop", &labels);
        assert_eq!(
            (v.unknown, v.reason),
            (true, reason::SELECTION_UNKNOWN),
            "no report: the selectors decide"
        );
        let v = verdict(Target::ServiceMonitor, None, None, "shop", &labels);
        assert_eq!(v.reason, reason::NOT_FOUND);
    }

    fn selector(v: serde_json::Value) -> Option<LabelSelector> {
        Some(serde_json::from_value(v).expect("selector"))
    }

    fn prometheus(ns: &str, sm: Option<LabelSelector>, sm_ns: Option<LabelSelector>) -> Selecting {
        Selecting {
            kind: "Prometheus",
            namespace: ns.into(),
            name: "k8s".into(),
            monitors: (sm.clone(), sm_ns.clone()),
            rules: (sm, sm_ns),
        }
    }

    fn snapshot(
        objects: Vec<Selecting>,
        namespaces: Option<BTreeMap<String, BTreeMap<String, String>>>,
    ) -> Snapshot {
        Snapshot {
            sources: BTreeMap::from([
                ("Prometheus", Source::Listed(objects)),
                ("PrometheusAgent", Source::NotServed),
                ("ThanosRuler", Source::NotServed),
            ]),
            namespaces,
        }
    }

    fn ours(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([("app.kubernetes.io/name".to_owned(), "a".to_owned())]);
        l.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        l
    }

    #[test]
    fn selectors_follow_prometheus_operators_semantics() {
        let release = selector(serde_json::json!({"matchLabels": {"release": "kps"}}));
        let all = selector(serde_json::json!({}));
        // {} everywhere: selected.
        let s = snapshot(vec![prometheus("monitoring", all.clone(), all.clone())], Some(BTreeMap::new()));
        let v = check(&s, Target::ServiceMonitor, "shop", &ours(&[]));
        assert_eq!((v.ok, v.reason), (true, reason::SELECTED), "{}", v.message);
        assert!(v.message.contains("Prometheus monitoring/k8s"), "{}", v.message);

        // A null selector selects nothing.
        let s = snapshot(vec![prometheus("monitoring", None, all.clone())], Some(BTreeMap::new()));
        let v = check(&s, Target::PrometheusRule, "shop", &ours(&[]));
        assert_eq!(v.reason, reason::NOT_SELECTED_BY_ANY_PROMETHEUS);
        assert!(v.message.contains("ruleSelector is unset"), "{}", v.message);

        // A null namespace selector: only the Prometheus's own namespace.
        let s = snapshot(vec![prometheus("monitoring", all.clone(), None)], Some(BTreeMap::new()));
        let v = check(&s, Target::ServiceMonitor, "shop", &ours(&[]));
        assert_eq!(v.reason, reason::NOT_SELECTED_BY_ANY_PROMETHEUS);
        assert!(v.message.contains("its own namespace monitoring"), "{}", v.message);
        assert_eq!(check(&s, Target::ServiceMonitor, "monitoring", &ours(&[])).reason, reason::SELECTED);

        // Missing labels are named, with where to set them.
        let s = snapshot(vec![prometheus("monitoring", release.clone(), all.clone())], Some(BTreeMap::new()));
        let v = check(&s, Target::ServiceMonitor, "shop", &ours(&[]));
        assert!(!v.ok && !v.unknown, "{v:?}");
        assert!(
            v.message.contains("labelled release=kps") && v.message.contains("spec.monitoring.labels"),
            "{}",
            v.message
        );
        assert_eq!(
            check(&s, Target::ServiceMonitor, "shop", &ours(&[("release", "kps")])).reason,
            reason::SELECTED
        );
    }

    #[test]
    fn namespace_label_selectors_need_the_namespaces_labels() {
        let all = selector(serde_json::json!({}));
        let team = selector(
            serde_json::json!({"matchExpressions": [{"key": "monitoring", "operator": "In", "values": ["on"]}]}),
        );
        let labelled = BTreeMap::from([(
            "shop".to_owned(),
            BTreeMap::from([("monitoring".to_owned(), "on".to_owned())]),
        )]);
        let s = snapshot(vec![prometheus("monitoring", all.clone(), team.clone())], Some(labelled));
        assert_eq!(check(&s, Target::ServiceMonitor, "shop", &ours(&[])).reason, reason::SELECTED);
        let v = check(&s, Target::ServiceMonitor, "other", &ours(&[]));
        assert!(v.message.contains("namespaces labelled monitoring in (on)"), "{}", v.message);
        let unreadable = snapshot(vec![prometheus("monitoring", all, team)], None);
        let v = check(&unreadable, Target::ServiceMonitor, "shop", &ours(&[]));
        assert_eq!((v.unknown, v.reason), (true, reason::SELECTION_UNKNOWN));
    }

    #[test]
    fn unreadable_or_absent_prometheus_objects_are_unknown_or_not_selected() {
        let mut s = Snapshot::default();
        s.sources.insert("Prometheus", Source::Unreadable("forbidden".into()));
        s.sources.insert("PrometheusAgent", Source::NotServed);
        let v = check(&s, Target::ServiceMonitor, "shop", &ours(&[]));
        assert_eq!((v.unknown, v.reason), (true, reason::SELECTION_UNKNOWN));
        assert!(v.message.contains("forbidden"), "{}", v.message);
        let none = snapshot(Vec::new(), Some(BTreeMap::new()));
        let v = check(&none, Target::ServiceMonitor, "shop", &ours(&[]));
        assert_eq!(v.reason, reason::NOT_SELECTED_BY_ANY_PROMETHEUS);
        assert!(v.message.contains("no Prometheus object exists"), "{}", v.message);
        // A ThanosRuler selects rules, never ServiceMonitors.
        let mut ruler = none.clone();
        ruler.sources.insert(
            "ThanosRuler",
            Source::Listed(vec![Selecting {
                kind: "ThanosRuler",
                namespace: "shop".into(),
                name: "r".into(),
                monitors: (None, None),
                rules: (selector(serde_json::json!({})), None),
            }]),
        );
        assert_eq!(check(&ruler, Target::PrometheusRule, "shop", &ours(&[])).reason, reason::SELECTED);
        assert_eq!(
            check(&ruler, Target::ServiceMonitor, "shop", &ours(&[])).reason,
            reason::NOT_SELECTED_BY_ANY_PROMETHEUS
        );
    }
}
