//! status: the conditions, computed from what one reconcile observed, and
//! written only when they differ from the status the server holds.
//!
//! Conditions, in order:
//! - `Ready`: what serving depends on is in place. It follows the conditions
//!   of the kinds that gate it (`DeploymentAvailable`; later
//!   `CertificateReady` and `GrpcWebReady`) and never those of optional
//!   integrations. Before any of them exists it carries the reason the
//!   reconcile could not create them.
//! - `Synced`: the last reconcile applied the current spec. False at the first
//!   permanent failure (invalid spec, a child owned by someone else, a
//!   request the API server rejects) or after
//!   [`TRANSIENT_FAILURES_BEFORE_UNSYNCED`] transient ones in a row.
//! - One condition per kind role, in registry order (`DeploymentAvailable`,
//!   …).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::{GrpcService, GrpcServiceStatus};
use crate::children::labels::MANAGER;

/// Aggregate condition: what serving depends on is in place.
pub const READY: &str = "Ready";
/// The last reconcile applied the current spec.
pub const SYNCED: &str = "Synced";

/// Consecutive transient failures (conflicts, throttling, server errors,
/// unreachable API) after which `Synced` goes False. One or two are routine
/// on a busy cluster and retried within a second; five in a row (about 8 s of
/// backoff) is worth showing.
pub const TRANSIENT_FAILURES_BEFORE_UNSYNCED: u32 = 5;

/// Condition reasons (bounded; also used as Event reasons).
pub mod reason {
    /// Everything `Ready` depends on is in place.
    pub const READY: &str = "Ready";
    /// The last reconcile succeeded.
    pub const RECONCILE_SUCCEEDED: &str = "ReconcileSucceeded";
    /// The spec is invalid; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A same-named child exists that the GrpcService does not own.
    pub const NOT_OWNED: &str = "NotOwned";
    /// A request was refused for good (400, 401, 403, 404, 422) or a child
    /// could not be built; retried with backoff.
    pub const APPLY_REJECTED: &str = "ApplyRejected";
    /// Repeated transient failures (conflicts, throttling, server errors,
    /// unreachable API); retried with backoff.
    pub const API_UNAVAILABLE: &str = "ApiUnavailable";
    /// The kind's CustomResourceDefinition is not installed.
    pub const CRD_NOT_INSTALLED: &str = "CRDNotInstalled";
    /// The child does not exist (yet).
    pub const NOT_FOUND: &str = "NotFound";
    /// The Deployment is rolling out the current spec.
    pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    /// The Deployment has fewer available pods than required.
    pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
    /// The Deployment exceeded its progress deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// The Deployment has the minimum available pods.
    pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
    /// The workload certificate is issued and current.
    pub const ISSUED: &str = "Issued";
    /// The CA is missing or unusable; certificates are left as they are.
    pub const CA_UNAVAILABLE: &str = "CAUnavailable";
    /// The CA has not been read yet (the operator just started).
    pub const CA_PENDING: &str = "CAPending";
    /// A GrpcService named in `allowedClients` cannot be resolved.
    pub const ALLOWED_CLIENT_UNRESOLVED: &str = "AllowedClientUnresolved";
    /// cert-manager has not issued the Secret yet.
    pub const CERTIFICATE_PENDING: &str = "CertificatePending";
    /// A monitoring object is applied; no Prometheus reported on it.
    pub const APPLIED: &str = "Applied";
    /// A Prometheus selects the monitoring objects.
    pub const SELECTED: &str = "Selected";
    /// A Prometheus reported a monitoring object invalid.
    pub const REJECTED_BY_PROMETHEUS: &str = "RejectedByPrometheus";
    /// No Prometheus selects a monitoring object.
    pub const NOT_SELECTED_BY_ANY_PROMETHEUS: &str = "NotSelectedByAnyPrometheus";
    /// Whether a Prometheus selects the monitoring objects cannot be told.
    pub const SELECTION_UNKNOWN: &str = "SelectionUnknown";
}

/// Writing the status failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to write the status of GrpcService {namespace}/{name}")]
pub struct StatusError {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// A condition without its timestamp, as computed by a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `True` or `False`.
    pub ok: bool,
    /// `Unknown` (with `ok` false): the operator cannot tell.
    pub unknown: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable detail; never secret material.
    pub message: String,
}

impl Verdict {
    /// A true condition.
    pub fn ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ok: true, unknown: false, reason, message: message.into() }
    }

    /// An `Unknown` condition.
    pub fn unknown(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ok: false, unknown: true, reason, message: message.into() }
    }

    /// False beats Unknown beats True: the rank of the verdict that wins
    /// when several kinds share a condition.
    pub fn severity(&self) -> u8 {
        match (self.ok, self.unknown) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        }
    }

    /// A false condition.
    pub fn not_ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ok: false, unknown: false, reason, message: message.into() }
    }
}

/// A kind's condition as observed by one reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindCondition {
    /// Condition type.
    pub type_: &'static str,
    /// The verdict.
    pub verdict: Verdict,
}

/// Everything the status step needs to know, computed by the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// `metadata.generation` that was reconciled.
    pub generation: i64,
    /// The `Synced` verdict.
    pub synced: Verdict,
    /// The kinds' conditions; `None` keeps the previous ones (the reconcile
    /// failed before looking at the children).
    pub kinds: Option<Vec<KindCondition>>,
    /// Pods of the Deployment; `None` keeps the previous value.
    pub replicas: Option<i32>,
    /// Ready pods of the Deployment; `None` keeps the previous value.
    pub ready_replicas: Option<i32>,
    /// The Service address; `None` keeps the previous value.
    pub endpoint: Option<String>,
    /// The workload certificate; `None` keeps the previous value,
    /// `Some(None)` clears it (TLS turned off).
    pub certificate: Option<Option<crate::api::CertificateStatus>>,
}

/// The status to write: `previous` updated with `obs`. `gating` lists the
/// condition types `Ready` follows. A condition keeps its
/// `lastTransitionTime` unless its status flips, so recomputing an unchanged
/// state yields a value equal to `previous`.
pub fn next_status(
    previous: Option<&GrpcServiceStatus>,
    obs: &Observation,
    gating: &[&str],
    now: &Time,
) -> GrpcServiceStatus {
    let previous = previous.cloned().unwrap_or_default();
    // A failed reconcile applied nothing: the generation the children and
    // `Ready` describe stays the last one applied (kstatus and Argo CD read
    // `observedGeneration` as "this spec is in effect"). Only `Synced` speaks
    // of the new generation. A new object has nothing older to describe.
    let applied = match (&obs.kinds, previous.observed_generation) {
        (None, Some(g)) => g,
        _ => obs.generation,
    };
    let kinds: Vec<Condition> = match &obs.kinds {
        Some(kinds) => kinds
            .iter()
            .map(|k| condition(&previous.conditions, k.type_, &k.verdict, obs.generation, now))
            .collect(),
        None => {
            previous.conditions.iter().filter(|c| c.type_ != READY && c.type_ != SYNCED).cloned().collect()
        }
    };
    let ready = ready_verdict(&kinds, gating, &obs.synced);
    let mut conditions = Vec::with_capacity(kinds.len() + 2);
    conditions.push(condition(&previous.conditions, READY, &ready, applied, now));
    conditions.push(condition(&previous.conditions, SYNCED, &obs.synced, obs.generation, now));
    conditions.extend(kinds);
    GrpcServiceStatus {
        observed_generation: Some(applied),
        conditions,
        replicas: obs.replicas.or(previous.replicas),
        ready_replicas: obs.ready_replicas.or(previous.ready_replicas),
        endpoint: obs.endpoint.clone().or(previous.endpoint),
        certificate: obs.certificate.clone().unwrap_or(previous.certificate),
    }
}

/// `Ready`: True when every gating condition present is True; otherwise the
/// first False one's reason. With none present (nothing could be created
/// yet), the reason the reconcile is stuck, or "not created yet".
fn ready_verdict(kinds: &[Condition], gating: &[&str], synced: &Verdict) -> Verdict {
    let gates: Vec<&Condition> = gating.iter().filter_map(|t| kinds.iter().find(|c| c.type_ == *t)).collect();
    if gates.is_empty() {
        return if synced.ok {
            Verdict::not_ok(reason::NOT_FOUND, "the children are not created yet")
        } else {
            synced.clone()
        };
    }
    match gates.iter().find(|c| c.status != "True") {
        None => Verdict::ok(
            reason::READY,
            gates.iter().map(|c| c.message.as_str()).filter(|m| !m.is_empty()).collect::<Vec<_>>().join("; "),
        ),
        Some(c) => Verdict {
            ok: false,
            unknown: c.status == "Unknown",
            reason: static_reason(&c.reason),
            message: c.message.clone(),
        },
    }
}

/// Condition reasons are `&'static str` in a [`Verdict`]; a reason read back
/// from a stored condition is mapped onto the known set.
fn static_reason(r: &str) -> &'static str {
    use reason::*;
    [
        READY,
        RECONCILE_SUCCEEDED,
        INVALID_SPEC,
        NOT_OWNED,
        APPLY_REJECTED,
        API_UNAVAILABLE,
        CRD_NOT_INSTALLED,
        NOT_FOUND,
        ROLLOUT_IN_PROGRESS,
        MINIMUM_REPLICAS_UNAVAILABLE,
        PROGRESS_DEADLINE_EXCEEDED,
        MINIMUM_REPLICAS_AVAILABLE,
        ISSUED,
        CA_UNAVAILABLE,
        CA_PENDING,
        ALLOWED_CLIENT_UNRESOLVED,
        CERTIFICATE_PENDING,
        APPLIED,
        SELECTED,
        REJECTED_BY_PROMETHEUS,
        NOT_SELECTED_BY_ANY_PROMETHEUS,
        SELECTION_UNKNOWN,
    ]
    .into_iter()
    .find(|k| *k == r)
    .unwrap_or("NotReady")
}

fn condition(previous: &[Condition], type_: &str, v: &Verdict, generation: i64, now: &Time) -> Condition {
    let status = match (v.ok, v.unknown) {
        (true, _) => "True",
        (false, true) => "Unknown",
        (false, false) => "False",
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: v.reason.to_owned(),
        message: v.message.clone(),
        observed_generation: Some(generation),
        last_transition_time,
    }
}

/// Finds a condition by type.
pub fn find<'a>(status: Option<&'a GrpcServiceStatus>, type_: &str) -> Option<&'a Condition> {
    status.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// Writes `next` with server-side apply on the status subresource. The
/// caller skips the write when the server already holds `next` (see
/// `reconcile::report`); a status someone else edited differs, so it is
/// corrected.
pub async fn write(
    api: &Api<GrpcService>,
    obj: &GrpcService,
    next: &GrpcServiceStatus,
) -> Result<(), StatusError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let body = json!({
        "apiVersion": format!("{}/v1alpha1", crate::api::GROUP),
        "kind": "GrpcService",
        "status": next,
    });
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
        .map(drop)
        .map_err(|source| StatusError {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATING: &[&str] = &["DeploymentAvailable"];

    fn obs(ok: bool, reason: &'static str) -> Observation {
        Observation {
            generation: 4,
            synced: Verdict::ok(reason::RECONCILE_SUCCEEDED, ""),
            kinds: Some(vec![KindCondition {
                type_: "DeploymentAvailable",
                verdict: Verdict { ok, unknown: false, reason, message: "m".into() },
            }]),
            replicas: Some(2),
            ready_replicas: Some(if ok { 2 } else { 0 }),
            endpoint: Some("a.b.svc:1".into()),
            certificate: None,
        }
    }

    fn failed(generation: i64, reason: &'static str, message: &str) -> Observation {
        Observation {
            generation,
            synced: Verdict::not_ok(reason, message),
            kinds: None,
            replicas: None,
            ready_replicas: None,
            endpoint: None,
            certificate: None,
        }
    }

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid timestamp"))
    }

    fn types(s: &GrpcServiceStatus) -> Vec<(&str, &str, &str)> {
        s.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect()
    }

    #[test]
    fn recomputing_an_unchanged_state_yields_an_equal_status() {
        let first = next_status(None, &obs(false, reason::ROLLOUT_IN_PROGRESS), GATING, &at(100));
        let again = next_status(Some(&first), &obs(false, reason::ROLLOUT_IN_PROGRESS), GATING, &at(200));
        assert_eq!(first, again, "only timestamps would differ, and they are kept");
    }

    #[test]
    fn ready_follows_the_gating_condition_and_synced_the_reconcile() {
        let s = next_status(None, &obs(false, reason::ROLLOUT_IN_PROGRESS), GATING, &at(100));
        assert_eq!(
            types(&s),
            [
                ("Ready", "False", "RolloutInProgress"),
                ("Synced", "True", "ReconcileSucceeded"),
                ("DeploymentAvailable", "False", "RolloutInProgress")
            ]
        );
        let s = next_status(Some(&s), &obs(true, reason::MINIMUM_REPLICAS_AVAILABLE), GATING, &at(200));
        assert_eq!(types(&s)[0], ("Ready", "True", "Ready"));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = next_status(None, &obs(false, reason::ROLLOUT_IN_PROGRESS), GATING, &at(100));
        let second =
            next_status(Some(&first), &obs(false, reason::MINIMUM_REPLICAS_UNAVAILABLE), GATING, &at(200));
        assert_eq!(find(Some(&second), READY).map(|c| c.last_transition_time.clone()), Some(at(100)));
        let third =
            next_status(Some(&second), &obs(true, reason::MINIMUM_REPLICAS_AVAILABLE), GATING, &at(300));
        let ready = find(Some(&third), READY).expect("ready");
        assert_eq!((ready.status.as_str(), ready.last_transition_time.clone()), ("True", at(300)));
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(third.observed_generation, Some(4));
    }

    #[test]
    fn a_failed_reconcile_keeps_the_children_conditions_and_ready_of_a_serving_service() {
        let first = next_status(None, &obs(true, reason::MINIMUM_REPLICAS_AVAILABLE), GATING, &at(100));
        let next = next_status(
            Some(&first),
            &failed(5, reason::INVALID_SPEC, "spec.replicas: bad"),
            GATING,
            &at(200),
        );
        assert_eq!(
            types(&next),
            [
                ("Ready", "True", "Ready"),
                ("Synced", "False", "InvalidSpec"),
                ("DeploymentAvailable", "True", "MinimumReplicasAvailable")
            ],
            "the old pods still serve"
        );
        assert_eq!(next.ready_replicas, Some(2));
        assert_eq!(next.observed_generation, Some(4), "generation 5 was not applied");
        assert_eq!(find(Some(&next), READY).and_then(|c| c.observed_generation), Some(4));
        assert_eq!(find(Some(&next), SYNCED).and_then(|c| c.observed_generation), Some(5));
    }

    #[test]
    fn a_new_object_that_cannot_be_reconciled_is_not_ready_for_that_reason() {
        let s = next_status(None, &failed(1, reason::NOT_OWNED, "Deployment x exists"), GATING, &at(100));
        assert_eq!(types(&s), [("Ready", "False", "NotOwned"), ("Synced", "False", "NotOwned")]);
        assert_eq!(s.conditions[0].message, "Deployment x exists");
    }

    #[test]
    fn conditions_of_kinds_no_longer_reported_are_dropped() {
        let first = next_status(None, &obs(true, reason::MINIMUM_REPLICAS_AVAILABLE), GATING, &at(100));
        let mut o = obs(true, reason::MINIMUM_REPLICAS_AVAILABLE);
        o.kinds.get_or_insert_default().push(KindCondition {
            type_: "MonitoringReady",
            verdict: Verdict::not_ok(reason::CRD_NOT_INSTALLED, "no ServiceMonitor CRD"),
        });
        let with = next_status(Some(&first), &o, GATING, &at(200));
        assert_eq!(types(&with)[0], ("Ready", "True", "Ready"), "optional integrations never gate Ready");
        assert_eq!(types(&with).len(), 4);
        let without =
            next_status(Some(&with), &obs(true, reason::MINIMUM_REPLICAS_AVAILABLE), GATING, &at(300));
        assert_eq!(types(&without).len(), 3);
    }
}
