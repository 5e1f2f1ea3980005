//! status: computes conditions from what was observed and applied, and writes
//! them only when they changed (timestamps aside), so an idle object causes no
//! writes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::desired::labels::MANAGER;
use crate::api::{GrpcService, GrpcServiceStatus};

/// Aggregate condition: everything the GrpcService asks for is in place.
pub const READY: &str = "Ready";
/// The Deployment has rolled out the current spec with the minimum available pods.
pub const DEPLOYMENT_AVAILABLE: &str = "DeploymentAvailable";

/// Reasons of the `Ready` condition (bounded; also used as Event reasons).
pub mod reason {
    /// Everything is in place.
    pub const READY: &str = "Ready";
    /// The spec is invalid; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A same-named child exists that the GrpcService does not own.
    pub const NOT_OWNED: &str = "NotOwned";
    /// Applying a child failed; the operator retries with backoff.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// The Deployment is rolling out the current spec.
    pub const ROLLOUT_IN_PROGRESS: &str = "RolloutInProgress";
    /// The Deployment has fewer available pods than required.
    pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
    /// The Deployment exceeded its progress deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// The Deployment has the minimum available pods.
    pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
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
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl Verdict {
    /// A true condition.
    pub fn ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ok: true, reason, message: message.into() }
    }

    /// A false condition.
    pub fn not_ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self { ok: false, reason, message: message.into() }
    }
}

/// Whether `deployment` has rolled out its current spec with the minimum
/// available pods, following the same rules as `kubectl rollout status`.
pub fn deployment_available(deployment: &Deployment) -> Verdict {
    let generation = deployment.metadata.generation.unwrap_or(0);
    let Some(status) = &deployment.status else {
        return Verdict::not_ok(reason::ROLLOUT_IN_PROGRESS, "waiting for the Deployment controller");
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Verdict::not_ok(
            reason::ROLLOUT_IN_PROGRESS,
            format!("Deployment has not yet observed generation {generation}"),
        );
    }
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| c.type_ == "Progressing")
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return Verdict::not_ok(
            reason::PROGRESS_DEADLINE_EXCEEDED,
            c.message.clone().unwrap_or_else(|| "Deployment exceeded its progress deadline".to_owned()),
        );
    }
    let want = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    if updated < want {
        return Verdict::not_ok(
            reason::ROLLOUT_IN_PROGRESS,
            format!("{updated} of {want} pods updated to the current spec"),
        );
    }
    let total = status.replicas.unwrap_or(0);
    if total > updated {
        return Verdict::not_ok(
            reason::ROLLOUT_IN_PROGRESS,
            format!("{} old pods pending termination", total - updated),
        );
    }
    let available = status.available_replicas.unwrap_or(0);
    let available_condition = conditions.iter().find(|c| c.type_ == "Available");
    match available_condition {
        Some(c) if c.status == "True" => {
            Verdict::ok(reason::MINIMUM_REPLICAS_AVAILABLE, format!("{available} of {want} pods available"))
        }
        Some(c) => Verdict::not_ok(
            reason::MINIMUM_REPLICAS_UNAVAILABLE,
            c.message.clone().unwrap_or_else(|| format!("{available} of {want} pods available")),
        ),
        None if want == 0 => Verdict::ok(reason::MINIMUM_REPLICAS_AVAILABLE, "scaled to zero"),
        None => Verdict::not_ok(
            reason::MINIMUM_REPLICAS_UNAVAILABLE,
            format!("{available} of {want} pods available"),
        ),
    }
}

/// Everything the status step needs to know, computed by the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// `metadata.generation` that was reconciled.
    pub generation: i64,
    /// The aggregate verdict.
    pub ready: Verdict,
    /// The Deployment verdict; `None` keeps the previous condition (the
    /// Deployment was not looked at, e.g. the spec is invalid).
    pub deployment: Option<Verdict>,
    /// Pods of the Deployment; `None` keeps the previous value.
    pub replicas: Option<i32>,
    /// Ready pods of the Deployment; `None` keeps the previous value.
    pub ready_replicas: Option<i32>,
    /// The Service address; `None` keeps the previous value.
    pub endpoint: Option<String>,
}

/// The status to write: `previous` updated with `obs`. A condition keeps its
/// `lastTransitionTime` unless its status flips, so recomputing an unchanged
/// state yields a value equal to `previous`.
pub fn next_status(previous: Option<&GrpcServiceStatus>, obs: &Observation, now: &Time) -> GrpcServiceStatus {
    let previous = previous.cloned().unwrap_or_default();
    let mut conditions = Vec::new();
    conditions.push(condition(&previous.conditions, READY, &obs.ready, obs.generation, now));
    match &obs.deployment {
        Some(v) => {
            conditions.push(condition(&previous.conditions, DEPLOYMENT_AVAILABLE, v, obs.generation, now))
        }
        None => {
            conditions.extend(previous.conditions.iter().find(|c| c.type_ == DEPLOYMENT_AVAILABLE).cloned())
        }
    }
    GrpcServiceStatus {
        observed_generation: Some(obs.generation),
        conditions,
        replicas: obs.replicas.or(previous.replicas),
        ready_replicas: obs.ready_replicas.or(previous.ready_replicas),
        endpoint: obs.endpoint.clone().or(previous.endpoint),
    }
}

fn condition(previous: &[Condition], type_: &str, v: &Verdict, generation: i64, now: &Time) -> Condition {
    let status = if v.ok { "True" } else { "False" };
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

/// Writes `next` with server-side apply on the status subresource, unless it
/// equals `current` (what the server is known to hold). Returns whether it
/// wrote.
pub async fn write(
    api: &Api<GrpcService>,
    obj: &GrpcService,
    current: Option<&GrpcServiceStatus>,
    next: &GrpcServiceStatus,
) -> Result<bool, StatusError> {
    if current == Some(next) {
        return Ok(false);
    }
    let name = obj.metadata.name.clone().unwrap_or_default();
    let body = json!({
        "apiVersion": format!("{}/v1alpha1", crate::api::GROUP),
        "kind": "GrpcService",
        "status": next,
    });
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
        .map(|_| true)
        .map_err(|source| StatusError {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use kube::api::ObjectMeta;

    fn deployment(replicas: i32, generation: i64, status: Option<DeploymentStatus>) -> Deployment {
        Deployment {
            metadata: ObjectMeta { generation: Some(generation), ..ObjectMeta::default() },
            spec: Some(DeploymentSpec { replicas: Some(replicas), ..DeploymentSpec::default() }),
            status,
        }
    }

    fn dep_status(observed: i64, updated: i32, available: i32, available_cond: &str) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(observed),
            replicas: Some(updated),
            updated_replicas: Some(updated),
            ready_replicas: Some(available),
            available_replicas: Some(available),
            conditions: Some(vec![DeploymentCondition {
                type_: "Available".into(),
                status: available_cond.into(),
                ..DeploymentCondition::default()
            }]),
            ..DeploymentStatus::default()
        }
    }

    #[test]
    fn new_deployment_is_rolling_out() {
        let v = deployment_available(&deployment(2, 1, None));
        assert_eq!((v.ok, v.reason), (false, reason::ROLLOUT_IN_PROGRESS));
    }

    #[test]
    fn deployment_that_has_not_observed_its_generation_is_rolling_out() {
        let v = deployment_available(&deployment(2, 2, Some(dep_status(1, 2, 2, "True"))));
        assert_eq!((v.ok, v.reason), (false, reason::ROLLOUT_IN_PROGRESS));
    }

    #[test]
    fn rolled_out_deployment_with_available_pods_is_available() {
        let v = deployment_available(&deployment(2, 2, Some(dep_status(2, 2, 2, "True"))));
        assert_eq!((v.ok, v.reason), (true, reason::MINIMUM_REPLICAS_AVAILABLE));
        assert_eq!(v.message, "2 of 2 pods available");
    }

    #[test]
    fn deployment_without_minimum_available_pods_is_unavailable() {
        let v = deployment_available(&deployment(2, 2, Some(dep_status(2, 2, 0, "False"))));
        assert_eq!((v.ok, v.reason), (false, reason::MINIMUM_REPLICAS_UNAVAILABLE));
    }

    #[test]
    fn progress_deadline_is_reported() {
        let mut s = dep_status(2, 1, 1, "True");
        s.conditions.get_or_insert_default().push(DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"x\" has timed out progressing.".into()),
            ..DeploymentCondition::default()
        });
        let v = deployment_available(&deployment(2, 2, Some(s)));
        assert_eq!((v.ok, v.reason), (false, reason::PROGRESS_DEADLINE_EXCEEDED));
    }

    fn obs(ok: bool, reason: &'static str) -> Observation {
        Observation {
            generation: 4,
            ready: Verdict { ok, reason, message: "m".into() },
            deployment: Some(Verdict { ok, reason, message: "m".into() }),
            replicas: Some(2),
            ready_replicas: Some(if ok { 2 } else { 0 }),
            endpoint: Some("a.b.svc:1".into()),
        }
    }

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid timestamp"))
    }

    #[test]
    fn recomputing_an_unchanged_state_yields_an_equal_status() {
        let first = next_status(None, &obs(false, reason::ROLLOUT_IN_PROGRESS), &at(100));
        let again = next_status(Some(&first), &obs(false, reason::ROLLOUT_IN_PROGRESS), &at(200));
        assert_eq!(first, again, "only timestamps would differ, and they are kept");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = next_status(None, &obs(false, reason::ROLLOUT_IN_PROGRESS), &at(100));
        let second = next_status(Some(&first), &obs(false, reason::MINIMUM_REPLICAS_UNAVAILABLE), &at(200));
        assert_eq!(find(Some(&second), READY).map(|c| c.last_transition_time.clone()), Some(at(100)));
        let third = next_status(Some(&second), &obs(true, reason::READY), &at(300));
        let ready = find(Some(&third), READY).expect("ready");
        assert_eq!((ready.status.as_str(), ready.last_transition_time.clone()), ("True", at(300)));
        assert_eq!(ready.observed_generation, Some(4));
        assert_eq!(third.observed_generation, Some(4));
    }

    #[test]
    fn invalid_spec_keeps_the_previous_deployment_condition() {
        let first = next_status(None, &obs(true, reason::READY), &at(100));
        let invalid = Observation {
            generation: 5,
            ready: Verdict::not_ok(reason::INVALID_SPEC, "spec.replicas: bad"),
            deployment: None,
            replicas: None,
            ready_replicas: None,
            endpoint: None,
        };
        let next = next_status(Some(&first), &invalid, &at(200));
        assert_eq!(find(Some(&next), DEPLOYMENT_AVAILABLE), find(Some(&first), DEPLOYMENT_AVAILABLE));
        assert_eq!(find(Some(&next), READY).map(|c| c.reason.as_str()), Some(reason::INVALID_SPEC));
        assert_eq!(next.ready_replicas, Some(2));
        assert_eq!(next.observed_generation, Some(5));
    }
}
