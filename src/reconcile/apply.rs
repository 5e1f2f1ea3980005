//! apply: writes the desired children in registry order with server-side
//! apply (one field manager, force), adopts our orphans, then prunes owned
//! children that are no longer wanted.
//!
//! Order of the step, for one GrpcService:
//! 1. every live child is checked for ownership before anything is written,
//!    so a foreign object blocks the whole set instead of leaving it
//!    half-applied;
//! 2. each desired child is applied in registry order, only when it differs
//!    from the live one (an idle object causes no writes);
//! 3. owned children nobody wants any more are deleted.
//!
//! Every write is idempotent (apply, delete with a uid precondition), so a
//! run killed between two writes converges on the next one.

use std::sync::Arc;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};

use super::cache::KindCache;
use super::fetch::KindObserved;
use super::memory::Memory;
use crate::children::labels::{HANDOVER_MANAGER, MANAGED_BY_LABEL, MANAGER, SERVICE_LABEL};
use crate::children::{ChangeMarker, Desired, drift};

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
    /// A request about a child failed.
    #[error("failed to {action} {kind} {namespace}/{name}")]
    Request {
        /// `apply`, `read`, `hand over` or `delete`.
        action: &'static str,
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
}

impl ApplyError {
    /// The underlying API error, if any.
    pub fn api_error(&self) -> Option<&kube::Error> {
        match self {
            Self::Request { source, .. } => Some(source.as_ref()),
            Self::NotOwned { .. } => None,
        }
    }
}

/// What the step did to one kind.
#[derive(Clone, Debug)]
pub enum KindApplied {
    /// The kind's API is not served.
    NotServed,
    /// Not wanted, and nothing (left) to prune.
    Absent,
    /// Wanted; the live object after the step.
    Present {
        /// The live object (the server's answer when written).
        live: Arc<DynamicObject>,
        /// Whether a write was sent.
        written: bool,
        /// Whether it existed before (an update rather than a creation).
        existed: bool,
        /// Whether it was adopted (it had our labels and no controller).
        adopted: bool,
    },
}

/// What the apply step did, per kind (registry order), plus the pruned kinds.
#[derive(Clone, Debug)]
pub struct AppliedChildren {
    /// Per kind.
    pub kinds: Vec<KindApplied>,
    /// Kinds of which an owned child was deleted.
    pub pruned: Vec<&'static str>,
}

/// How a live object relates to the GrpcService.
enum Ownership {
    Ours,
    /// Our labels and no controller: left behind by `--cascade=orphan`, or
    /// created by an older operator. Taken over, as a ReplicaSet adopts Pods.
    Adoptable,
    Foreign(Option<String>),
}

fn ownership(live: &DynamicObject, owner_uid: &str, service: &str) -> Ownership {
    let controller = live.owner_references().iter().find(|o| o.controller == Some(true));
    match controller {
        Some(c) if c.uid == owner_uid => Ownership::Ours,
        Some(c) => Ownership::Foreign(Some(format!("{}/{}", c.kind, c.name))),
        None => {
            let labels = live.labels();
            if labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGER)
                && labels.get(SERVICE_LABEL).map(String::as_str) == Some(service)
            {
                Ownership::Adoptable
            } else {
                Ownership::Foreign(None)
            }
        }
    }
}

fn controlled_by(obj: &DynamicObject, owner_uid: &str) -> bool {
    obj.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == owner_uid)
}

/// The change marker of `obj` for a kind.
fn marker(obj: &DynamicObject, change: ChangeMarker) -> (String, String) {
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let marker = match change {
        ChangeMarker::Generation => obj.metadata.generation.map(|g| g.to_string()).unwrap_or_default(),
        ChangeMarker::ResourceVersion => obj.metadata.resource_version.clone().unwrap_or_default(),
    };
    (uid, marker)
}

/// Everything the step needs about the GrpcService.
pub struct Owner<'a> {
    /// Its uid.
    pub uid: &'a str,
    /// Its name (the `grpcoperator.io/service` label of its children).
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
}

/// Applies every desired child and prunes the unwanted ones.
pub async fn apply_all(
    client: &Client,
    kinds: &[KindCache],
    memory: &Memory,
    owner: &Owner<'_>,
    desired: &Desired,
    observed: &[KindObserved],
) -> Result<AppliedChildren, ApplyError> {
    // 1. Ownership of every live child first.
    for child in &desired.children {
        if let Some(KindObserved::Served { named: Some(live), .. }) = observed.get(child.kind)
            && let Ownership::Foreign(by) = ownership(live, owner.uid, owner.name)
        {
            return Err(ApplyError::NotOwned {
                kind: kinds[child.kind].kind.kind(),
                namespace: owner.namespace.to_owned(),
                name: child.name.clone(),
                owner: by,
            });
        }
    }

    // 2. Apply in order.
    let mut result: Vec<KindApplied> = observed
        .iter()
        .map(|o| match o {
            KindObserved::NotServed => KindApplied::NotServed,
            KindObserved::Served { .. } => KindApplied::Absent,
        })
        .collect();
    for child in &desired.children {
        let Some(KindObserved::Served { named, .. }) = observed.get(child.kind) else { continue };
        let cache = &kinds[child.kind];
        let Some(object) = &child.object else {
            // Left as it is (`ChildKind::keep_live`).
            if let Some(live) = named {
                result[child.kind] = KindApplied::Present {
                    live: Arc::clone(live),
                    written: false,
                    existed: true,
                    adopted: false,
                };
            }
            continue;
        };
        let applied = apply_child(client, cache, memory, owner, &child.name, object, named.as_ref()).await?;
        result[child.kind] = applied;
    }

    // 3. Prune.
    let mut pruned = Vec::new();
    for (index, o) in observed.iter().enumerate() {
        let KindObserved::Served { others, .. } = o else { continue };
        let cache = &kinds[index];
        for obj in others.iter().filter(|o| controlled_by(o, owner.uid)) {
            if prune(client, cache, owner.namespace, obj).await? {
                pruned.push(cache.kind.kind());
            }
            memory.forget_verified(owner.uid, cache.kind.kind());
        }
    }
    Ok(AppliedChildren { kinds: result, pruned })
}

async fn apply_child(
    client: &Client,
    cache: &KindCache,
    memory: &Memory,
    owner: &Owner<'_>,
    name: &str,
    desired: &serde_json::Value,
    live: Option<&Arc<DynamicObject>>,
) -> Result<KindApplied, ApplyError> {
    let kind = cache.kind.kind();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), owner.namespace, &cache.api);
    let request_error = |action: &'static str| {
        move |source: kube::Error| ApplyError::Request {
            action,
            kind,
            namespace: owner.namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        }
    };
    let change = cache.kind.change_marker();
    let adopted = live.is_some_and(|l| matches!(ownership(l, owner.uid, owner.name), Ownership::Adoptable));

    if let Some(live) = live
        && !adopted
        && drift::digest_of(desired)
            == live.annotations().get(crate::children::labels::APPLIED_DIGEST_ANNOTATION).map(String::as_str)
        && metadata_matches(desired, live)
    {
        // The cached copy has no spec: it is vouched for by the marker of
        // the last version the operator verified, or read in full once.
        let seen = marker(live, change);
        if memory.verified(owner.uid, kind).as_ref() == Some(&seen) {
            return Ok(KindApplied::Present {
                live: Arc::clone(live),
                written: false,
                existed: true,
                adopted,
            });
        }
        match api.get_opt(name).await.map_err(request_error("read"))? {
            Some(full) if !cache.kind.drifted(desired, &serde_json::to_value(&full).unwrap_or_default()) => {
                memory.remember_verified(owner.uid, kind, marker(&full, change));
                return Ok(KindApplied::Present {
                    live: Arc::new(full),
                    written: false,
                    existed: true,
                    adopted,
                });
            }
            // Drifted, or deleted since the cache saw it: apply.
            _ => {}
        }
    }

    if let Some(live) = live
        && let Some(patch) = cache.kind.handover(desired, live)
    {
        api.patch(name, &PatchParams::apply(HANDOVER_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(request_error("hand over"))?;
    }
    let written = match api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(desired)).await {
        Ok(written) => written,
        // The CRD of an optional kind was removed after the cache saw it:
        // not an error, the kind is simply not served any more.
        // Withdrawn until its watch lists again (a recreated CRD) or stops
        // (a 404), whichever comes first.
        Err(kube::Error::Api(s)) if s.code == 404 && cache.kind.optional() => {
            cache.set_store(None);
            return Ok(KindApplied::NotServed);
        }
        Err(e) => return Err(request_error("apply")(e)),
    };
    memory.remember_verified(owner.uid, kind, marker(&written, change));
    Ok(KindApplied::Present { live: Arc::new(written), written: true, existed: live.is_some(), adopted })
}

/// The desired metadata (labels, annotations, ownerReferences) is visible in
/// a cached copy, so a change there is seen without a read.
fn metadata_matches(desired: &serde_json::Value, live: &DynamicObject) -> bool {
    let live_meta = serde_json::to_value(&live.metadata).unwrap_or_default();
    desired.get("metadata").is_none_or(|want| drift::is_subset(want, &live_meta))
}

/// Deletes an owned child; false when it was already gone (or replaced).
async fn prune(
    client: &Client,
    cache: &KindCache,
    namespace: &str,
    obj: &DynamicObject,
) -> Result<bool, ApplyError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &cache.api);
    let name = obj.name_any();
    // The uid precondition: never delete a same-named successor.
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: obj.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::background()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(source) => Err(ApplyError::Request {
            action: "delete",
            kind: cache.kind.kind(),
            namespace: namespace.to_owned(),
            name,
            source: Box::new(source),
        }),
    }
}
