//! cleanup: the finalizer. Later capabilities (Consul deregistration) clean
//! external state here before the finalizer is released; in-cluster children
//! are removed by the garbage collector through their ownerReferences.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::GrpcService;

/// Finalizer the operator keeps on every GrpcService it manages.
pub const FINALIZER: &str = "grpcoperator.io/cleanup";

/// Adding or removing the finalizer failed.
#[derive(Debug, thiserror::Error)]
pub enum FinalizerError {
    /// The patch adding it failed.
    #[error("failed to add finalizer {FINALIZER}")]
    Add(#[source] kube::Error),
    /// The patch removing it failed.
    #[error("failed to remove finalizer {FINALIZER}")]
    Remove(#[source] kube::Error),
    /// The patch could not be built.
    #[error("failed to build the finalizer patch")]
    Patch(#[source] serde_json::Error),
}

impl FinalizerError {
    /// The underlying API error, if any.
    pub fn api_error(&self) -> Option<&kube::Error> {
        match self {
            Self::Add(e) | Self::Remove(e) => Some(e),
            Self::Patch(_) => None,
        }
    }
}

/// True when `obj` carries the finalizer.
pub fn has_finalizer(obj: &GrpcService) -> bool {
    obj.metadata.finalizers.as_ref().is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Adds the finalizer. A JSON patch with a `test` of the current list makes a
/// concurrent change by someone else fail instead of being overwritten.
///
/// `obj` comes from the controller's cache, which can lag behind the server
/// (our own earlier patch may not have arrived yet). When the `test` fails,
/// the fresh object is read once: if it already has the finalizer there is
/// nothing to do, otherwise the patch is retried against the fresh list.
pub async fn add(api: &Api<GrpcService>, obj: &GrpcService, name: &str) -> Result<(), FinalizerError> {
    match add_patch(api, obj.metadata.finalizers.as_ref(), name).await {
        Err(FinalizerError::Add(kube::Error::Api(s))) if s.code == 422 || s.code == 409 => {
            let fresh = api.get(name).await.map_err(FinalizerError::Add)?;
            if has_finalizer(&fresh) {
                return Ok(());
            }
            add_patch(api, fresh.metadata.finalizers.as_ref(), name).await
        }
        other => other,
    }
}

async fn add_patch(
    api: &Api<GrpcService>,
    current: Option<&Vec<String>>,
    name: &str,
) -> Result<(), FinalizerError> {
    let patch = match current {
        None => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
        ]),
        Some(current) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": current },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
        ]),
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(FinalizerError::Patch)?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map(drop)
        .map_err(FinalizerError::Add)
}

/// Removes the finalizer, releasing the object for deletion.
pub async fn remove(api: &Api<GrpcService>, obj: &GrpcService, name: &str) -> Result<(), FinalizerError> {
    match remove_patch(api, obj.metadata.finalizers.as_ref(), name).await {
        // A stale cached list: retry once against the fresh object.
        Err(FinalizerError::Remove(kube::Error::Api(s))) if s.code == 422 || s.code == 409 => {
            match api.get_opt(name).await.map_err(FinalizerError::Remove)? {
                Some(fresh) => remove_patch(api, fresh.metadata.finalizers.as_ref(), name).await,
                None => Ok(()),
            }
        }
        other => other,
    }
}

async fn remove_patch(
    api: &Api<GrpcService>,
    current: Option<&Vec<String>>,
    name: &str,
) -> Result<(), FinalizerError> {
    let Some(current) = current else { return Ok(()) };
    let Some(index) = current.iter().position(|f| f == FINALIZER) else { return Ok(()) };
    let patch = json!([
        { "op": "test", "path": "/metadata/finalizers", "value": current },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(FinalizerError::Patch)?;
    match api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch)).await {
        Ok(_) => Ok(()),
        // Already gone: nothing left to release.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(FinalizerError::Remove(e)),
    }
}
