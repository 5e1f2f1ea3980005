//! fetch: reads the live children, from the controller's caches when possible.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// Reading a child object failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to read {kind} {namespace}/{name}")]
pub struct FetchError {
    /// Kind of the child.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// The live children of one GrpcService.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The Deployment named after it, if any (owned or not).
    pub deployment: Option<Arc<Deployment>>,
    /// The Service named after it, if any (owned or not).
    pub service: Option<Arc<Service>>,
}

/// Reads the children named `name` in `namespace`.
///
/// The caches only hold objects labelled as managed by the operator, so a miss
/// falls back to a GET: a same-named object someone else created must be seen
/// (and left alone) rather than overwritten.
pub async fn children(
    client: &Client,
    deployments: &Store<Deployment>,
    services: &Store<Service>,
    namespace: &str,
    name: &str,
) -> Result<Observed, FetchError> {
    Ok(Observed {
        deployment: cached_or_get(client, deployments, "Deployment", namespace, name).await?,
        service: cached_or_get(client, services, "Service", namespace, name).await?,
    })
}

async fn cached_or_get<K>(
    client: &Client,
    store: &Store<K>,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<K>>, FetchError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    if let Some(obj) = store.get(&ObjectRef::new(name).within(namespace)) {
        return Ok(Some(obj));
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map(|o| o.map(Arc::new)).map_err(|source| FetchError {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })
}
