//! The reconcile pipeline: fetch → validate → desired → apply → status.
//!
//! Only `fetch`, `apply`, `status` and `cleanup` do I/O. `validate` turns the
//! object into a [`validate::ValidatedService`] (the only input of the
//! builders), and `desired` builds the children from it without a client.

pub mod apply;
pub mod cleanup;
pub mod desired;
pub mod fetch;
pub mod quantity;
pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use tracing::{debug, info, warn};

use crate::api::{GrpcService, GrpcServiceStatus};
use crate::metrics::Metrics;
use apply::ApplyError;
use cleanup::FinalizerError;
use fetch::FetchError;
use status::{Observation, StatusError, Verdict, reason};
use validate::{InvalidSpec, Origin};

/// Tunables of the reconciler.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// Periodic re-check of a healthy object. Drift in owned objects is seen
    /// through watches; this only bounds how long a missed event can last.
    pub resync: Duration,
    /// How often a `NotOwned` conflict is re-checked (the foreign object is not
    /// watched, so its removal produces no event).
    pub not_owned_retry: Duration,
    /// First retry delay after a transient error.
    pub backoff_base: Duration,
    /// Upper bound of the retry delay.
    pub backoff_max: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(3600),
            not_owned_retry: Duration::from_secs(60),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Shared state of every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of Deployments labelled as managed by the operator.
    pub deployments: Store<Deployment>,
    /// Cache of Services labelled as managed by the operator.
    pub services: Store<Service>,
    /// Cache of GrpcServices (for the managed-objects gauge).
    pub grpc_services: Store<GrpcService>,
    /// Identity of the operator in the Events it publishes.
    pub reporter: Reporter,
    /// Metrics.
    pub metrics: Metrics,
    /// Tunables.
    pub config: ReconcileConfig,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<GrpcService>, u32>>,
    /// The status last written per object uid. The cached object handed to a
    /// reconcile can predate our own last status write (the watch event has
    /// not arrived yet); comparing with this instead avoids rewriting the
    /// same status and recomputing transition times from stale data. Only
    /// the operator writes this status.
    written_status: Mutex<HashMap<String, GrpcServiceStatus>>,
    /// Drift bookkeeping for Deployments, which are cached without their pod
    /// template (see [`apply::Slim`]).
    slim_deployments: apply::Slim,
}

impl Context {
    /// Creates the context.
    pub fn new(
        client: Client,
        stores: (Store<GrpcService>, Store<Deployment>, Store<Service>),
        reporter: Reporter,
        metrics: Metrics,
        config: ReconcileConfig,
    ) -> Self {
        let (grpc_services, deployments, services) = stores;
        Self {
            client,
            deployments,
            services,
            grpc_services,
            reporter,
            metrics,
            config,
            failures: Mutex::new(HashMap::new()),
            written_status: Mutex::new(HashMap::new()),
            slim_deployments: apply::Slim::default(),
        }
    }

    /// The freshest known status of `obj`.
    fn known_status(&self, obj: &GrpcService) -> Option<GrpcServiceStatus> {
        let uid = obj.metadata.uid.as_deref()?;
        let written = lock(&self.written_status);
        written.get(uid).cloned().or_else(|| obj.status.clone())
    }

    fn remember_status(&self, obj: &GrpcService, status: Option<GrpcServiceStatus>) {
        let Some(uid) = obj.metadata.uid.clone() else { return };
        let mut written = lock(&self.written_status);
        match status {
            Some(s) => written.insert(uid, s),
            None => written.remove(&uid),
        };
    }

    /// Records a failure and returns the consecutive count.
    fn record_failure(&self, key: ObjectRef<GrpcService>) -> u32 {
        let mut failures = lock(&self.failures);
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn reset_failures(&self, key: &ObjectRef<GrpcService>) {
        lock(&self.failures).remove(key);
    }
}

/// Locks `m`, recovering from poisoning: the maps behind these locks hold
/// bookkeeping that stays consistent even if a holder panicked mid-way, and
/// the controller must keep running.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A reconcile failed. Each variant wraps the error of one step.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The spec is invalid; the status says which field. Waits for a change.
    #[error("invalid spec: {0}")]
    InvalidSpec(#[source] InvalidSpec),
    /// Reading the children failed.
    #[error("fetch step failed")]
    Fetch(#[from] FetchError),
    /// Applying the children failed (or one is not owned).
    #[error("apply step failed")]
    Apply(#[from] ApplyError),
    /// Writing the status failed.
    #[error("status step failed")]
    Status(#[from] StatusError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer step failed")]
    Finalizer(#[from] FinalizerError),
}

impl ReconcileError {
    /// The pipeline step that failed (bounded).
    pub fn step(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "validate",
            Self::Fetch(_) => "fetch",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
            Self::Finalizer(_) => "finalizer",
        }
    }

    /// Class of the error (bounded): what `error_policy` decides on and what
    /// metrics and events are labelled with.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidSpec(e) => e.category(),
            Self::Apply(ApplyError::NotOwned { .. }) => "not_owned",
            Self::Apply(ApplyError::Serialize { .. }) => "serialization",
            Self::Apply(e) => e.api_error().map_or("unknown", api_category),
            Self::Fetch(e) => api_category(&e.source),
            Self::Status(e) => api_category(&e.source),
            Self::Finalizer(e) => e.api_error().map_or("serialization", api_category),
        }
    }
}

/// Bounded class of an API error.
pub fn api_category(err: &kube::Error) -> &'static str {
    match err {
        kube::Error::Api(s) => match s.code {
            409 => "conflict",
            429 => "throttled",
            404 => "not_found",
            400 | 422 => "rejected",
            401 | 403 => "forbidden",
            500..=599 => "server_error",
            _ => "api_error",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => "connection",
        kube::Error::SerdeError(_) => "serialization",
        _ => "client_error",
    }
}

/// What a successful run found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ready,
    Progressing,
    Deleted,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Progressing => "progressing",
            Self::Deleted => "deleted",
        }
    }
}

/// Reconciles one GrpcService.
pub async fn reconcile(obj: Arc<GrpcService>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = pipeline(&obj, &ctx).await;
    let outcome = match &result {
        Ok(o) => o.label(),
        Err(ReconcileError::InvalidSpec(_)) => "invalid_spec",
        Err(ReconcileError::Apply(ApplyError::NotOwned { .. })) => "not_owned",
        Err(_) => "error",
    };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    ctx.metrics.duration.with_label_values(&[outcome]).observe(started.elapsed().as_secs_f64());
    ctx.metrics.managed.with_label_values(&["GrpcService"]).set(gauge(ctx.grpc_services.len()));
    ctx.metrics.managed.with_label_values(&["Deployment"]).set(gauge(ctx.deployments.len()));
    ctx.metrics.managed.with_label_values(&["Service"]).set(gauge(ctx.services.len()));
    match result {
        Ok(outcome) => {
            ctx.reset_failures(&ObjectRef::from_obj(obj.as_ref()));
            debug!(name = %obj.name_any(), namespace = ?obj.namespace(), outcome = outcome.label(), "reconciled");
            Ok(match outcome {
                Outcome::Deleted => Action::await_change(),
                Outcome::Ready | Outcome::Progressing => Action::requeue(ctx.config.resync),
            })
        }
        Err(e) => Err(e),
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Chooses what happens after a failed reconcile, by error class: an invalid
/// spec waits for the next change of the object, a foreign child is re-checked
/// periodically, everything else backs off exponentially per object, with
/// jitter so that many objects failing together do not retry in lockstep.
pub fn error_policy(obj: Arc<GrpcService>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let category = err.category();
    ctx.metrics.failures.with_label_values(&[err.step(), category]).inc();
    match err {
        ReconcileError::InvalidSpec(_) => Action::await_change(),
        ReconcileError::Apply(ApplyError::NotOwned { .. }) => Action::requeue(ctx.config.not_owned_retry),
        _ => {
            let failures = ctx.record_failure(ObjectRef::from_obj(obj.as_ref()));
            let delay = backoff(&ctx.config, failures);
            warn!(
                name = %obj.name_any(),
                namespace = ?obj.namespace(),
                step = err.step(),
                category,
                failures,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = %error_chain(err),
                "reconcile failed"
            );
            // One Event per failure streak (not per retry): enough for
            // `kubectl describe`, without flooding the API while it is down.
            if failures == 1 {
                let note = truncate(format!("[{category}] {}", error_chain(err)), 1024);
                tokio::spawn(async move {
                    publish(&ctx, &obj, EventType::Warning, "ReconcileFailed", note).await;
                });
            }
            Action::requeue(delay)
        }
    }
}

/// Exponential backoff with "equal jitter": half the delay is fixed, half is
/// random, so retries spread out but never come back immediately.
pub fn backoff(config: &ReconcileConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let delay = config.backoff_base.saturating_mul(1 << exp).min(config.backoff_max);
    let half = delay / 2;
    let jitter = rand::rng().random_range(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
    half + Duration::from_millis(jitter)
}

/// `text` cut to at most `max` bytes, on a character boundary (Event notes
/// are limited to 1 KiB).
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `err` and its sources, joined with `: `.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

async fn pipeline(obj: &GrpcService, ctx: &Context) -> Result<Outcome, ReconcileError> {
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<GrpcService> = Api::namespaced(ctx.client.clone(), &namespace);

    if obj.metadata.deletion_timestamp.is_some() {
        // Children are deleted by the garbage collector through their
        // ownerReferences; external state (later: Consul) is cleaned here.
        cleanup::remove(&api, obj, &name).await?;
        ctx.remember_status(obj, None);
        if let Some(uid) = &obj.metadata.uid {
            ctx.slim_deployments.forget(uid);
        }
        info!(%name, %namespace, "finalized");
        return Ok(Outcome::Deleted);
    }

    let generation = obj.metadata.generation.unwrap_or(0);
    let valid = match validate::validate(obj, Origin::Cluster) {
        Ok(v) => v,
        Err(invalid) => {
            let ready = Verdict::not_ok(reason::INVALID_SPEC, invalid.to_string());
            report(ctx, &api, obj, Observation::without_children(generation, ready)).await?;
            return Err(ReconcileError::InvalidSpec(invalid));
        }
    };

    if !cleanup::has_finalizer(obj) {
        cleanup::add(&api, obj, &name).await?;
    }

    let desired = desired::desired(&valid);
    let observed = fetch::children(&ctx.client, &ctx.deployments, &ctx.services, &namespace, &name).await?;
    let uid = valid.uid.clone().unwrap_or_default();
    let applied = match apply::apply_all(&ctx.client, &desired, &observed, &uid, &ctx.slim_deployments).await
    {
        Ok(a) => a,
        Err(e) => {
            if let Some(ready) = reportable_apply_failure(&e) {
                report(ctx, &api, obj, Observation::without_children(generation, ready)).await?;
            }
            return Err(e.into());
        }
    };
    for kind in applied.written_kinds() {
        ctx.metrics.child_writes.with_label_values(&[kind]).inc();
    }
    let updated: Vec<&str> = applied.updated_kinds(&observed);
    if !updated.is_empty() {
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Applied",
            format!("Updated {} {name} to generation {generation}", updated.join(" and ")),
        )
        .await;
    }

    let deployment = applied.deployment.object();
    let available = status::deployment_available(deployment);
    let ready = if available.ok {
        Verdict::ok(reason::READY, format!("Deployment and Service are in place; {}", available.message))
    } else {
        Verdict::not_ok(available.reason, available.message.clone())
    };
    let outcome = if ready.ok { Outcome::Ready } else { Outcome::Progressing };
    let dep_status = deployment.status.as_ref();
    report(
        ctx,
        &api,
        obj,
        Observation {
            generation,
            ready,
            deployment: Some(available),
            replicas: Some(dep_status.and_then(|s| s.replicas).unwrap_or(0)),
            ready_replicas: Some(dep_status.and_then(|s| s.ready_replicas).unwrap_or(0)),
            endpoint: Some(valid.endpoint()),
        },
    )
    .await?;
    Ok(outcome)
}

/// A Ready verdict for apply failures worth showing in the status: the ones a
/// user must act on. Transient ones (conflicts, throttling, server errors) are
/// retried silently.
fn reportable_apply_failure(e: &ApplyError) -> Option<Verdict> {
    match e {
        ApplyError::NotOwned { .. } => Some(Verdict::not_ok(reason::NOT_OWNED, e.to_string())),
        ApplyError::Patch { source, .. } => match source.as_ref() {
            kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => {
                Some(Verdict::not_ok(reason::APPLY_FAILED, format!("{e}: {}", s.message)))
            }
            _ => None,
        },
        ApplyError::Serialize { .. } => None,
    }
}

impl Observation {
    fn without_children(generation: i64, ready: Verdict) -> Self {
        Self { generation, ready, deployment: None, replicas: None, ready_replicas: None, endpoint: None }
    }
}

/// Writes the status and emits an Event when the Ready condition changes
/// reason (a notable transition); unchanged states write nothing.
async fn report(
    ctx: &Context,
    api: &Api<GrpcService>,
    obj: &GrpcService,
    obs: Observation,
) -> Result<(), StatusError> {
    let current = ctx.known_status(obj);
    let previous =
        status::find(current.as_ref(), status::READY).map(|c| (c.status.clone(), c.reason.clone()));
    let now = Time(jiff::Timestamp::now());
    let next = status::next_status(current.as_ref(), &obs, &now);
    status::write(api, obj, current.as_ref(), &next).await?;
    ctx.remember_status(obj, Some(next));
    let changed =
        previous.as_ref().is_none_or(|(s, r)| (s == "True") != obs.ready.ok || r != obs.ready.reason);
    // The first "not ready yet" state of a new object is not worth an Event:
    // the status shows it, and Events are writes too.
    let notable = obs.ready.ok
        || !matches!(obs.ready.reason, reason::ROLLOUT_IN_PROGRESS | reason::MINIMUM_REPLICAS_UNAVAILABLE);
    if changed && notable {
        let type_ = if obs.ready.ok { EventType::Normal } else { EventType::Warning };
        publish(ctx, obj, type_, obs.ready.reason, obs.ready.message.clone()).await;
    }
    Ok(())
}

/// Publishes an Event; a failure is logged, never fails the reconcile.
async fn publish(ctx: &Context, obj: &GrpcService, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    // A Recorder per Event: kube-runtime's Recorder keeps every Event it
    // published for six minutes to merge repeats into a series, which costs
    // several KiB per object after a burst. The operator only publishes on
    // transitions, which do not repeat in quick succession, so the cache
    // would hold memory without merging anything.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(name = %obj.name_any(), error = %error_chain(&e), "failed to publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let config = ReconcileConfig {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..ReconcileConfig::default()
        };
        for _ in 0..50 {
            let first = backoff(&config, 1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1), "{first:?}");
            let fourth = backoff(&config, 4);
            assert!(fourth >= Duration::from_secs(4) && fourth <= Duration::from_secs(8), "{fourth:?}");
            let many = backoff(&config, 40);
            assert!(many >= Duration::from_secs(30) && many <= Duration::from_secs(60), "{many:?}");
        }
    }

    #[test]
    fn event_notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc".into(), 10), "abc");
        assert_eq!(truncate("aé".into(), 2), "a");
        assert_eq!(truncate("x".repeat(2000), 1024).len(), 1024);
    }

    #[test]
    fn error_categories_are_bounded_labels() {
        let api =
            |code| kube::Error::Api(Box::new(kube::core::Status { code, ..kube::core::Status::default() }));
        assert_eq!(api_category(&api(409)), "conflict");
        assert_eq!(api_category(&api(429)), "throttled");
        assert_eq!(api_category(&api(503)), "server_error");
        assert_eq!(api_category(&api(422)), "rejected");
        let not_owned = ReconcileError::Apply(ApplyError::NotOwned {
            kind: "Deployment",
            namespace: "n".into(),
            name: "a".into(),
            owner: None,
        });
        assert_eq!((not_owned.step(), not_owned.category()), ("apply", "not_owned"));
    }
}
