//! The reconcile pipeline: validate → fetch → desired → apply → status.
//!
//! Only `fetch`, `apply`, `status` and `cleanup` do I/O. `validate` turns the
//! object into a [`validate::ValidatedService`] (the only input of the
//! builders), and [`crate::children::desired`] builds every child from it
//! without a client, before anything is written. Failures of any step are
//! classified once ([`ErrorClass`]); the class decides the requeue, the
//! `Synced` condition, the metric label and the Event.

pub mod apply;
pub mod cache;
pub mod cleanup;
pub mod fetch;
pub mod memory;
pub mod quantity;
pub mod status;
pub mod validate;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use tracing::{debug, info, warn};

use crate::api::GrpcService;
use crate::children::{self, ObservedChildren, Registry};
use crate::metrics::Metrics;
use apply::{ApplyError, KindApplied, Owner};
use cache::KindCache;
use cleanup::FinalizerError;
use fetch::{FetchError, KindObserved};
use memory::Memory;
use status::{KindCondition, Observation, StatusError, Verdict, reason};
use validate::{InvalidSpec, Origin};

/// Tunables of the reconciler.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// Periodic re-check of a healthy object, plus a random part of up to the
    /// same again, so that 1,000 objects do not re-check in lockstep. Drift is
    /// seen through watches; this only bounds how long a missed event lasts.
    pub resync: Duration,
    /// How often a `NotOwned` conflict is re-checked (the foreign object is not
    /// watched, so its removal produces no event).
    pub not_owned_retry: Duration,
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Upper bound of the retry delay.
    pub backoff_max: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            not_owned_retry: Duration::from_secs(60),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Shared state of every reconcile in one controller scope (all namespaces,
/// or one namespace of a namespaced install).
pub struct Context {
    /// API client.
    pub client: Client,
    /// The child kinds.
    pub registry: Registry,
    /// One cache per kind, in registry order.
    pub kinds: Vec<KindCache>,
    /// Cache of GrpcServices: the freshest status the server holds.
    pub grpc_services: Store<GrpcService>,
    /// Identity of the operator in the Events it publishes.
    pub reporter: Reporter,
    /// Metrics.
    pub metrics: Metrics,
    /// Tunables.
    pub config: ReconcileConfig,
    /// Per-object memory.
    pub memory: Arc<Memory>,
    /// The operator's health (running reconciles are registered there).
    pub health: crate::health::Health,
    /// Objects waiting for a triggered reconcile.
    pub queued: Arc<memory::Queued>,
}

/// Locks `m`, recovering from poisoning: the maps behind these locks hold
/// bookkeeping that stays consistent even if a holder panicked mid-way, and
/// the controller must keep running.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    /// Preparing a kind's input (reading a Secret, issuing a certificate) failed.
    #[error("fetch step failed")]
    Prepare(#[from] children::PrepareError),
    /// A builder failed.
    #[error("desired step failed")]
    Build(#[from] children::BuildError),
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

/// The one classification of failures: it decides the requeue, the `Synced`
/// condition, the metric label and the Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The spec is invalid: wait for a change.
    InvalidSpec,
    /// A child is controlled by someone else: re-check periodically.
    NotOwned,
    /// The API server refused a request (400, 401, 403, 404, 422) or the
    /// operator built something unserializable: retrying the same request
    /// will not help until something changes, but it is retried with
    /// backoff in case RBAC or an admission webhook is fixed.
    Permanent,
    /// Conflicts, throttling, server errors, an unreachable API: retried with
    /// backoff; `Synced` goes False only if they persist.
    Transient,
}

impl ReconcileError {
    /// The pipeline step that failed (bounded).
    pub fn step(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "validate",
            Self::Fetch(_) | Self::Prepare(children::PrepareError::Read { .. }) => "fetch",
            Self::Prepare(children::PrepareError::Compute { .. }) => "issue",
            Self::Build(_) => "desired",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
            Self::Finalizer(_) => "finalizer",
        }
    }

    fn api_error(&self) -> Option<&kube::Error> {
        match self {
            Self::Fetch(e) => Some(&e.source),
            Self::Prepare(children::PrepareError::Read { source, .. }) => Some(source),
            Self::Prepare(children::PrepareError::Compute { .. }) => None,
            Self::Apply(e) => e.api_error(),
            Self::Status(e) => Some(&e.source),
            Self::Finalizer(e) => e.api_error(),
            Self::InvalidSpec(_) | Self::Build(_) => None,
        }
    }

    /// Class of the error, from which everything else follows.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::InvalidSpec(_) => ErrorClass::InvalidSpec,
            Self::Apply(ApplyError::NotOwned { .. }) => ErrorClass::NotOwned,
            Self::Build(_) => ErrorClass::Permanent,
            _ => match self.api_error() {
                Some(kube::Error::Api(s)) if matches!(s.code, 400 | 401 | 403 | 404 | 422) => {
                    ErrorClass::Permanent
                }
                Some(kube::Error::SerdeError(_)) => ErrorClass::Permanent,
                Some(_) => ErrorClass::Transient,
                None => ErrorClass::Permanent,
            },
        }
    }

    /// Bounded label for metrics and Events: the class refined by the API
    /// status.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidSpec(e) => e.category(),
            Self::Apply(ApplyError::NotOwned { .. }) => "not_owned",
            Self::Build(_) => "serialization",
            Self::Prepare(children::PrepareError::Compute { .. }) => "issue_failed",
            _ => self.api_error().map_or("unknown", api_category),
        }
    }

    /// The reason of `Synced` (and of `Ready` before any child exists).
    pub fn synced_reason(&self) -> &'static str {
        match self.class() {
            ErrorClass::InvalidSpec => reason::INVALID_SPEC,
            ErrorClass::NotOwned => reason::NOT_OWNED,
            ErrorClass::Permanent => reason::APPLY_REJECTED,
            ErrorClass::Transient => reason::API_UNAVAILABLE,
        }
    }

    /// Whether `Synced` should say so after `failures` consecutive failures.
    pub fn unsyncs_after(&self, failures: u32) -> bool {
        self.class() != ErrorClass::Transient || failures >= status::TRANSIENT_FAILURES_BEFORE_UNSYNCED
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
    let _running = ctx.health.reconcile_started();
    ctx.queued.remove(&ObjectRef::from_obj(obj.as_ref()));
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let mut result = pipeline(&obj, &ctx).await;
    if let Err(e) = &result {
        let failures = ctx.memory.record_failure(&uid);
        if e.unsyncs_after(failures) && !matches!(e, ReconcileError::Status(_)) {
            let synced = Verdict::not_ok(e.synced_reason(), truncate(error_chain(e), 1024));
            let generation = obj.metadata.generation.unwrap_or(0);
            let obs = Observation {
                generation,
                synced,
                kinds: None,
                replicas: None,
                ready_replicas: None,
                endpoint: None,
                certificate: None,
            };
            // Without this status the failure would be invisible: a failed
            // write is retried (with backoff) instead of the original error.
            if let Err(status_error) = report(&ctx, &obj, obs).await {
                warn!(name = %obj.name_any(), error = %error_chain(&status_error), "failed to report a failure in the status");
                result = Err(status_error.into());
            }
        }
    }
    let outcome = match &result {
        Ok((o, _)) => o.label(),
        Err(e) => match e.class() {
            ErrorClass::InvalidSpec => "invalid_spec",
            ErrorClass::NotOwned => "not_owned",
            _ => "error",
        },
    };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    ctx.metrics.duration.with_label_values(&[outcome]).observe(started.elapsed().as_secs_f64());
    ctx.metrics.managed.with_label_values(&["GrpcService"]).set(gauge(ctx.grpc_services.len()));
    for cache in &ctx.kinds {
        let n = cache.store().map_or(0, |s| s.len());
        ctx.metrics.managed.with_label_values(&[cache.kind.kind()]).set(gauge(n));
    }
    match result {
        Ok((outcome, due)) => {
            ctx.memory.reset_failures(&uid);
            ctx.health.api_answered();
            ctx.metrics.last_success.set(jiff::Timestamp::now().as_second());
            debug!(name = %obj.name_any(), namespace = ?obj.namespace(), outcome = outcome.label(), "reconciled");
            Ok(match outcome {
                Outcome::Deleted => Action::await_change(),
                // A kind's deadline (a certificate's renewal time) is kept
                // exactly: its jitter was chosen when it was issued.
                Outcome::Ready | Outcome::Progressing => {
                    let resync = jittered(ctx.config.resync);
                    Action::requeue(due.map_or(resync, |d| d.min(resync)))
                }
            })
        }
        Err(e) => Err(e),
    }
}

/// `base` plus a random part of up to `base`.
fn jittered(base: Duration) -> Duration {
    let extra = rand::rng().random_range(0..=u64::try_from(base.as_millis()).unwrap_or(u64::MAX));
    base + Duration::from_millis(extra)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Chooses what happens after a failed reconcile, by error class: an invalid
/// spec waits for the next change of the object, a foreign child is re-checked
/// periodically, everything else backs off exponentially per object (by uid),
/// with jitter so that many objects failing together do not retry in lockstep.
pub fn error_policy(obj: Arc<GrpcService>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let category = err.category();
    ctx.metrics.failures.with_label_values(&[err.step(), category]).inc();
    match err.class() {
        ErrorClass::InvalidSpec => Action::await_change(),
        ErrorClass::NotOwned => Action::requeue(ctx.config.not_owned_retry),
        ErrorClass::Permanent | ErrorClass::Transient => {
            let uid = obj.metadata.uid.clone().unwrap_or_default();
            let failures = ctx.memory.failures(&uid).max(1);
            // A throttling answer says when to come back; never sooner.
            let delay = backoff(&ctx.config, failures).max(retry_after(err));
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

/// The `Retry-After` of a throttled request (zero when none).
fn retry_after(err: &ReconcileError) -> Duration {
    match err.api_error() {
        Some(kube::Error::Api(s)) => s
            .details
            .as_ref()
            .map_or(Duration::ZERO, |d| Duration::from_secs(u64::from(d.retry_after_seconds))),
        _ => Duration::ZERO,
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

async fn pipeline(obj: &GrpcService, ctx: &Context) -> Result<(Outcome, Option<Duration>), ReconcileError> {
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<GrpcService> = Api::namespaced(ctx.client.clone(), &namespace);

    if obj.metadata.deletion_timestamp.is_some() {
        // Children are deleted by the garbage collector through their
        // ownerReferences; external state (later: Consul) is cleaned here.
        cleanup::remove(&api, obj, &name).await?;
        if let Some(uid) = &obj.metadata.uid {
            ctx.memory.forget(uid);
        }
        for kind in ctx.registry.kinds() {
            kind.forget(&ctx.metrics, &namespace, &name);
        }
        info!(%name, %namespace, "finalized");
        return Ok((Outcome::Deleted, None));
    }

    let valid = validate::validate(obj, Origin::Cluster).map_err(ReconcileError::InvalidSpec)?;
    if !cleanup::has_finalizer(obj) {
        cleanup::add(&api, obj, &name).await?;
    }

    // The whole desired state is computed before any write.
    let observed = fetch::children(&ctx.client, &ctx.kinds, &valid).await?;
    let uid = valid.uid.clone().unwrap_or_default();
    let mut owned = owned_children(&ctx.kinds, &observed, &uid);
    for (cache, o) in ctx.kinds.iter().zip(&observed) {
        if matches!(o, KindObserved::Served { .. }) && cache.kind.wanted(&valid) {
            let cx = children::PrepareCx {
                client: &ctx.client,
                svc: &valid,
                observed: &owned,
                grpc_services: &ctx.grpc_services,
            };
            if let Some(p) = cache.kind.prepare(cx).await? {
                owned.prepared.insert(cache.kind.kind(), p);
            }
        }
    }
    let desired = children::desired(&ctx.registry, &valid, &owned)?;
    let owner = Owner { uid: &uid, name: &name, namespace: &namespace };
    let applied = apply::apply_all(&ctx.client, &ctx.kinds, &ctx.memory, &owner, &desired, &observed).await?;

    let mut updated = Vec::new();
    let mut adopted = Vec::new();
    let mut conditions: Vec<KindCondition> = Vec::new();
    let mut deployment_status = None;
    let mut certificate = None;
    let mut due: Option<Duration> = None;
    let mut kind_events = Vec::new();
    // Per-object series of kinds the object no longer has (before the
    // wanted kinds record theirs: two kinds may share a series).
    for cache in ctx.kinds.iter().filter(|c| !c.kind.wanted(&valid)) {
        cache.kind.forget(&ctx.metrics, &namespace, &name);
    }
    for (cache, result) in ctx.kinds.iter().zip(&applied.kinds) {
        let kind = cache.kind.kind();
        let role = cache.kind.condition();
        let wanted = cache.kind.wanted(&valid);
        let (live, written) = match result {
            KindApplied::Present { live, written, .. } => (Some(live.as_ref()), *written),
            _ => (None, false),
        };
        if wanted && !matches!(result, KindApplied::NotServed) {
            if let Some((field, value)) = cache.kind.status_field(&valid, &owned, live)
                && field == "certificate"
            {
                certificate = serde_json::from_value(value).ok();
            }
            if let Some(d) = cache.kind.requeue_after(&valid, &owned, live) {
                due = Some(due.map_or(d, |x| x.min(d)));
            }
            kind_events.extend(cache.kind.record(&ctx.metrics, &valid, &owned, live, written));
        }
        let verdict = match result {
            KindApplied::NotServed if cache.kind.wanted(&valid) => Some(Verdict::not_ok(
                reason::CRD_NOT_INSTALLED,
                format!(
                    "the {kind} API ({}) is not served: install its CustomResourceDefinition",
                    cache.api.api_version
                ),
            )),
            KindApplied::NotServed => None,
            KindApplied::Absent if wanted => cache.kind.verdict(&valid, &owned, None),
            KindApplied::Absent => None,
            KindApplied::Present { live, written, existed, adopted: was_adopted } => {
                if *written {
                    ctx.metrics.child_writes.with_label_values(&[kind]).inc();
                    if *existed && !*was_adopted {
                        updated.push(kind);
                    }
                }
                if *was_adopted {
                    adopted.push(kind);
                }
                if kind == "Deployment" {
                    deployment_status = children::kept(live).get("status").cloned();
                }
                cache.kind.verdict(&valid, &owned, Some(live))
            }
        };
        if let (Some(role), Some(verdict)) = (role, verdict) {
            match conditions.iter_mut().find(|c| c.type_ == role.type_) {
                // Several kinds share a condition: False beats Unknown beats
                // True, the first of a rank wins;
                // when all are fine, every kind's message is kept.
                Some(c) if verdict.severity() > c.verdict.severity() => c.verdict = verdict,
                Some(c) if c.verdict.ok && verdict.ok && !verdict.message.is_empty() => {
                    c.verdict.message = format!("{}; {}", c.verdict.message, verdict.message);
                }
                Some(_) => {}
                None => conditions.push(KindCondition { type_: role.type_, verdict }),
            }
        }
    }
    let generation = valid.generation;
    for e in kind_events {
        let type_ = if e.warning { EventType::Warning } else { EventType::Normal };
        publish(ctx, obj, type_, e.reason, e.note).await;
    }
    for (reason, kinds, verb) in [("Applied", &updated, "Updated"), ("Adopted", &adopted, "Adopted")] {
        if !kinds.is_empty() {
            let note = format!("{verb} {} {name} for generation {generation}", kinds.join(" and "));
            publish(ctx, obj, EventType::Normal, reason, note).await;
        }
    }
    if !applied.pruned.is_empty() {
        for kind in &applied.pruned {
            ctx.metrics.child_writes.with_label_values(&[kind]).inc();
        }
        let note = format!("Deleted {} no longer wanted by the spec", applied.pruned.join(" and "));
        publish(ctx, obj, EventType::Normal, "Pruned", note).await;
    }

    let gating = ctx.registry.gating_conditions();
    // As `Ready` itself: the gating conditions present (a disabled
    // capability has none) are all True, and there is at least one.
    let gates: Vec<&KindCondition> = conditions.iter().filter(|c| gating.contains(&c.type_)).collect();
    let ready = !gates.is_empty() && gates.iter().all(|c| c.verdict.ok);
    let count = |field: &str| {
        deployment_status
            .as_ref()
            .and_then(|s| s.get(field))
            .and_then(serde_json::Value::as_i64)
            .map_or(0, |n| i32::try_from(n).unwrap_or(i32::MAX))
    };
    report(
        ctx,
        obj,
        Observation {
            generation,
            synced: Verdict::ok(reason::RECONCILE_SUCCEEDED, "the current spec is applied"),
            kinds: Some(conditions),
            replicas: Some(count("replicas")),
            ready_replicas: Some(count("readyReplicas")),
            endpoint: Some(valid.endpoint()),
            certificate: Some(certificate),
        },
    )
    .await?;
    Ok((if ready { Outcome::Ready } else { Outcome::Progressing }, due))
}

/// The live children we control, for builders that reuse observed state.
fn owned_children(kinds: &[KindCache], observed: &[KindObserved], uid: &str) -> ObservedChildren {
    let mut owned = ObservedChildren::default();
    for (cache, o) in kinds.iter().zip(observed) {
        if let KindObserved::Served { named: Some(live), .. } = o
            && live.owner_references().iter().any(|r| r.controller == Some(true) && r.uid == uid)
        {
            owned.live.insert(cache.kind.kind(), Arc::clone(live));
        }
    }
    owned
}

/// Writes the status (unless the server already holds it) and emits an Event
/// when `Ready` or `Synced` changes.
async fn report(ctx: &Context, obj: &GrpcService, obs: Observation) -> Result<(), StatusError> {
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<GrpcService> = Api::namespaced(ctx.client.clone(), &namespace);
    // The freshest copy the cache holds, with its resourceVersion: the
    // status the server holds as far as the watch has told us.
    let cached = ctx.grpc_services.get(&ObjectRef::from_obj(obj));
    let current = cached.as_ref().map_or(obj.status.as_ref(), |c| c.status.as_ref());
    let cached_rv = cached.as_ref().and_then(|c| c.metadata.resource_version.clone()).unwrap_or_default();
    let gating = ctx.registry.gating_conditions();
    let now = Time(jiff::Timestamp::now());
    let next = status::next_status(current, &obs, &gating, &now);
    if current == Some(&next) {
        return Ok(());
    }
    // The cache may not have seen our last write yet (the watch lags): when
    // it still shows the version that write was computed from, and the
    // status to write is the one written then, the server holds it already.
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let digest = crate::children::drift::digest(&next);
    if ctx.memory.status_write(&uid).is_some_and(|w| w.based_on == cached_rv && w.digest == digest) {
        return Ok(());
    }
    status::write(&api, obj, &next).await?;
    ctx.memory.remember_status_write(&uid, memory::StatusWrite { based_on: cached_rv, digest });
    for type_ in [status::READY, status::SYNCED] {
        let before = status::find(current, type_).map(|c| (c.status.clone(), c.reason.clone()));
        let Some(after) = status::find(Some(&next), type_) else { continue };
        let changed = before.as_ref().is_none_or(|(s, r)| *s != after.status || *r != after.reason);
        let ok = after.status == "True";
        // The first "not ready yet" and "synced" states of a new object are
        // not worth an Event: the status shows them, and Events are writes.
        let routine = (ok && type_ == status::SYNCED && before.is_none())
            || matches!(
                after.reason.as_str(),
                reason::ROLLOUT_IN_PROGRESS | reason::MINIMUM_REPLICAS_UNAVAILABLE | reason::NOT_FOUND
            );
        if changed && !routine {
            let event_type = if ok { EventType::Normal } else { EventType::Warning };
            let event_reason = if type_ == status::SYNCED && ok { "Synced" } else { after.reason.as_str() };
            publish(ctx, obj, event_type, event_reason, after.message.clone()).await;
        }
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
        assert_eq!(not_owned.class(), ErrorClass::NotOwned);
        let apply = |code| {
            ReconcileError::Apply(ApplyError::Request {
                action: "apply",
                kind: "Service",
                namespace: "n".into(),
                name: "a".into(),
                source: Box::new(api(code)),
            })
        };
        assert_eq!(apply(422).class(), ErrorClass::Permanent);
        assert_eq!(apply(503).class(), ErrorClass::Transient);
        assert_eq!(apply(409).class(), ErrorClass::Transient);
        assert!(apply(422).unsyncs_after(1), "a rejection shows at once");
        assert!(!apply(503).unsyncs_after(4) && apply(503).unsyncs_after(5), "transient ones after five");
        assert_eq!(apply(503).synced_reason(), reason::API_UNAVAILABLE);
    }
}
