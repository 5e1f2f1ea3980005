//! apply: server-side apply of the desired children, one field manager, and
//! only when something differs, so that an idle object causes no writes.

use std::fmt::Debug;
use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::desired::labels::{APPLIED_DIGEST_ANNOTATION, MANAGER};

/// Applying a child failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A same-named object exists that this GrpcService does not control. It
    /// is left untouched.
    #[error("{kind} {namespace}/{name} exists and is not owned by this GrpcService{}", owner.as_ref().map(|o| format!(" (controlled by {o})")).unwrap_or_default())]
    NotOwned {
        /// Kind of the child.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// `Kind/name` of its controller, if it has one.
        owner: Option<String>,
    },
    /// The server-side apply request failed.
    #[error("failed to apply {kind} {namespace}/{name}")]
    Patch {
        /// Kind of the child.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error (boxed: `kube::Error` is large and this type is
        /// returned on every reconcile).
        #[source]
        source: Box<kube::Error>,
    },
    /// The desired object could not be serialized.
    #[error("failed to serialize the desired {kind}")]
    Serialize {
        /// Kind of the child.
        kind: &'static str,
        /// The serialization error.
        #[source]
        source: serde_json::Error,
    },
}

impl ApplyError {
    /// The underlying API error, if any.
    pub fn api_error(&self) -> Option<&kube::Error> {
        match self {
            Self::Patch { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// What applying one child did.
#[derive(Clone, Debug)]
pub enum Applied<K> {
    /// The live object already matched; no request was sent.
    Unchanged(Arc<K>),
    /// The object was created or updated; this is the server's answer.
    Written(Arc<K>),
}

impl<K> Applied<K> {
    /// The live object after this step.
    pub fn object(&self) -> &Arc<K> {
        match self {
            Self::Unchanged(o) | Self::Written(o) => o,
        }
    }

    /// True when a write was sent.
    pub fn written(&self) -> bool {
        matches!(self, Self::Written(_))
    }
}

/// Applies `desired` unless `live` already matches it.
///
/// `live` is refused when it is not controlled by `owner_uid`: a same-named
/// object that someone else created is never taken over.
pub async fn apply_child<K>(
    client: &Client,
    kind: &'static str,
    desired: &K,
    live: Option<&Arc<K>>,
    owner_uid: &str,
    slim: Option<&Slim>,
) -> Result<Applied<K>, ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let namespace = desired.namespace().unwrap_or_default();
    let name = desired.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let ser = |source| ApplyError::Serialize { kind, source };
    if let Some(live) = live {
        check_owned(kind, Some(live.as_ref()), owner_uid)?;
        let unchanged = match slim {
            None => !needs_apply(desired, live).map_err(ser)?,
            Some(slim) => match slim.decide(desired, live, owner_uid).map_err(ser)? {
                SlimDecision::Apply => false,
                SlimDecision::Unchanged => true,
                SlimDecision::Verify => {
                    // The cached copy lacks the stripped fields and no apply
                    // of ours vouches for them: read the whole object once.
                    let full = api.get(&name).await.map_err(|source| ApplyError::Patch {
                        kind,
                        namespace: namespace.clone(),
                        name: name.clone(),
                        source: Box::new(source),
                    })?;
                    if needs_apply(desired, &full).map_err(ser)? {
                        false
                    } else {
                        slim.remember(owner_uid, &full);
                        return Ok(Applied::Unchanged(Arc::new(full)));
                    }
                }
            },
        };
        if unchanged {
            return Ok(Applied::Unchanged(Arc::clone(live)));
        }
    }
    let params = PatchParams::apply(MANAGER).force();
    let written = api
        .patch(&name, &params, &Patch::Apply(desired))
        .await
        .map_err(|source| ApplyError::Patch { kind, namespace, name, source: Box::new(source) })?;
    if let Some(slim) = slim {
        slim.remember(owner_uid, &written);
    }
    Ok(Applied::Written(Arc::new(written)))
}

/// Paths stripped from cached Deployments: the pod template is most of a
/// Deployment's size and the reconciler only needs it to detect drift.
pub const SLIM_DEPLOYMENT_PATHS: &[&str] = &["/spec/template"];

/// Drops the fields the cache does not keep (see [`SLIM_DEPLOYMENT_PATHS`]).
pub fn slim_deployment(d: &mut k8s_openapi::api::apps::v1::Deployment) {
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// Drift detection for children cached without some fields.
///
/// Any change to a Deployment's spec increments its `metadata.generation`,
/// so when the live generation is the one our last apply (or a full
/// comparison) produced, the stripped fields still hold what we applied.
/// Otherwise the object is read in full once.
#[derive(Default)]
pub struct Slim {
    /// Per owner uid: (child uid, child generation) last known to match.
    verified: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
}

/// What [`Slim::decide`] concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum SlimDecision {
    /// Something visible in the slim copy differs.
    Apply,
    /// Nothing differs.
    Unchanged,
    /// The slim copy matches, but the stripped fields are not vouched for.
    Verify,
}

impl Slim {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, i64)>> {
        super::lock(&self.verified)
    }

    /// Compares `desired` with a slim `live` copy.
    pub fn decide<K: Resource + Serialize>(
        &self,
        desired: &K,
        live: &K,
        owner_uid: &str,
    ) -> Result<SlimDecision, serde_json::Error> {
        if applied_digest(desired) != applied_digest(live) {
            return Ok(SlimDecision::Apply);
        }
        let mut want = serde_json::to_value(desired)?;
        for path in SLIM_DEPLOYMENT_PATHS {
            remove_pointer(&mut want, path);
        }
        if !is_subset(&want, &serde_json::to_value(live)?) {
            return Ok(SlimDecision::Apply);
        }
        let known = self.lock().get(owner_uid).cloned();
        let live_id = (live.meta().uid.clone().unwrap_or_default(), live.meta().generation.unwrap_or(0));
        Ok(if known == Some(live_id) { SlimDecision::Unchanged } else { SlimDecision::Verify })
    }

    /// Records that `live` (a full object) matches what the operator wants.
    pub fn remember<K: Resource>(&self, owner_uid: &str, live: &K) {
        let id = (live.meta().uid.clone().unwrap_or_default(), live.meta().generation.unwrap_or(0));
        self.lock().insert(owner_uid.to_owned(), id);
    }

    /// Forgets an owner (it was deleted).
    pub fn forget(&self, owner_uid: &str) {
        self.lock().remove(owner_uid);
    }
}

fn remove_pointer(value: &mut Value, pointer: &str) {
    let Some((parent, key)) = pointer.rsplit_once('/') else { return };
    if let Some(Value::Object(map)) = value.pointer_mut(parent) {
        map.remove(key);
    }
}

/// True when applying `desired` would change `live`: the operator changed
/// what it wants (the digest annotation differs — this catches removed
/// fields), or someone else changed or removed a field the operator sets.
pub fn needs_apply<K: Resource + Serialize>(desired: &K, live: &K) -> Result<bool, serde_json::Error> {
    if applied_digest(desired) != applied_digest(live) {
        return Ok(true);
    }
    Ok(!is_subset(&serde_json::to_value(desired)?, &serde_json::to_value(live)?))
}

/// The digest the operator stamped on an object (see `desired`).
fn applied_digest<K: Resource>(obj: &K) -> Option<&String> {
    obj.meta().annotations.as_ref().and_then(|a| a.get(APPLIED_DIGEST_ANNOTATION))
}

/// True when every field of `want` is present in `have` with the same value.
/// Lists match when the elements of `want` match distinct elements of `have`
/// in order, so entries other managers added (sidecars, extra owner
/// references) do not make the operator re-apply forever.
pub fn is_subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            w.iter().all(|(k, wv)| h.get(k).is_some_and(|hv| is_subset(wv, hv)))
        }
        (Value::Array(w), Value::Array(h)) => {
            let mut rest = h.iter();
            w.iter().all(|wv| rest.any(|hv| is_subset(wv, hv)))
        }
        (Value::Number(w), Value::Number(h)) => w.as_f64() == h.as_f64(),
        _ => want == have,
    }
}

/// The children after the apply step.
#[derive(Clone, Debug)]
pub struct AppliedChildren {
    /// The Deployment.
    pub deployment: Applied<k8s_openapi::api::apps::v1::Deployment>,
    /// The Service.
    pub service: Applied<k8s_openapi::api::core::v1::Service>,
}

impl AppliedChildren {
    /// Kinds that were written.
    pub fn written_kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.deployment.written() {
            kinds.push("Deployment");
        }
        if self.service.written() {
            kinds.push("Service");
        }
        kinds
    }

    /// Kinds that existed before and were written (updates, not creations).
    pub fn updated_kinds(&self, observed: &super::fetch::Observed) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.deployment.written() && observed.deployment.is_some() {
            kinds.push("Deployment");
        }
        if self.service.written() && observed.service.is_some() {
            kinds.push("Service");
        }
        kinds
    }
}

/// Applies every child. Ownership of all of them is checked before anything
/// is written, so a foreign object blocks the whole set rather than leaving it
/// half-applied.
pub async fn apply_all(
    client: &Client,
    desired: &super::desired::Desired,
    observed: &super::fetch::Observed,
    owner_uid: &str,
    slim_deployments: &Slim,
) -> Result<AppliedChildren, ApplyError> {
    check_owned("Deployment", observed.deployment.as_deref(), owner_uid)?;
    check_owned("Service", observed.service.as_deref(), owner_uid)?;
    let deployment = apply_child(
        client,
        "Deployment",
        &desired.deployment,
        observed.deployment.as_ref(),
        owner_uid,
        Some(slim_deployments),
    )
    .await?;
    let service =
        apply_child(client, "Service", &desired.service, observed.service.as_ref(), owner_uid, None).await?;
    Ok(AppliedChildren { deployment, service })
}

fn check_owned<K: Resource>(kind: &'static str, live: Option<&K>, owner_uid: &str) -> Result<(), ApplyError> {
    let Some(live) = live else { return Ok(()) };
    let controller = live.meta().owner_references.iter().flatten().find(|o| o.controller == Some(true));
    if controller.is_some_and(|c| c.uid == owner_uid) {
        return Ok(());
    }
    Err(ApplyError::NotOwned {
        kind,
        namespace: live.meta().namespace.clone().unwrap_or_default(),
        name: live.meta().name.clone().unwrap_or_default(),
        owner: controller.map(|c| format!("{}/{}", c.kind, c.name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_added_by_the_server_or_others_do_not_force_an_apply() {
        let want = json!({"spec": {"replicas": 2, "ports": [{"name": "grpc", "port": 1}]}});
        let have = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10,
            "ports": [{"name": "grpc", "port": 1, "protocol": "TCP"}, {"name": "sidecar", "port": 2}]},
            "status": {}});
        assert!(is_subset(&want, &have));
    }

    #[test]
    fn a_changed_or_missing_field_forces_an_apply() {
        let want = json!({"spec": {"replicas": 2, "ports": [{"name": "grpc", "port": 1}]}});
        assert!(!is_subset(&want, &json!({"spec": {"replicas": 3, "ports": [{"name": "grpc", "port": 1}]}})));
        assert!(!is_subset(&want, &json!({"spec": {"replicas": 2}})));
        assert!(!is_subset(&want, &json!({"spec": {"replicas": 2, "ports": []}})));
    }

    #[test]
    fn list_order_matters_because_the_server_keeps_it() {
        let want = json!([{"name": "a"}, {"name": "b"}]);
        assert!(is_subset(&want, &json!([{"name": "a"}, {"name": "x"}, {"name": "b"}])));
        assert!(!is_subset(&want, &json!([{"name": "b"}, {"name": "a"}])));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(is_subset(&json!({"a": 1}), &json!({"a": 1.0})));
    }
}

#[cfg(test)]
mod slim_tests {
    use super::*;
    use crate::reconcile::desired::desired;
    use crate::reconcile::validate::tests::sample;
    use crate::reconcile::validate::{Origin, validate};
    use k8s_openapi::api::apps::v1::Deployment;

    const OWNER: &str = "0b9e4f1c-5f1e-4a7a-9d43-1f0f3c2a7b10";

    fn live(generation: i64) -> (Deployment, Deployment) {
        let want = desired(&validate(&sample(), Origin::Cluster).expect("valid")).deployment;
        let mut full = want.clone();
        full.metadata.uid = Some("dep-uid".into());
        full.metadata.generation = Some(generation);
        let mut slim = full.clone();
        slim_deployment(&mut slim);
        (want, slim)
    }

    #[test]
    fn slim_copy_is_verified_in_full_until_an_apply_vouches_for_its_generation() {
        let (want, slim_live) = live(3);
        let slim = Slim::default();
        assert_eq!(slim.decide(&want, &slim_live, OWNER).expect("decides"), SlimDecision::Verify);
        let mut full = want.clone();
        full.metadata.uid = Some("dep-uid".into());
        full.metadata.generation = Some(3);
        slim.remember(OWNER, &full);
        assert_eq!(slim.decide(&want, &slim_live, OWNER).expect("decides"), SlimDecision::Unchanged);
        let (_, edited) = live(4);
        assert_eq!(slim.decide(&want, &edited, OWNER).expect("decides"), SlimDecision::Verify);
    }

    #[test]
    fn visible_difference_in_a_slim_copy_means_apply() {
        let (want, mut slim_live) = live(3);
        slim_live.spec.get_or_insert_default().replicas = Some(9);
        assert_eq!(Slim::default().decide(&want, &slim_live, OWNER).expect("decides"), SlimDecision::Apply);
    }
}
