//! fetch: reads the live children of one GrpcService, from the caches when
//! possible.

use std::sync::Arc;

use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use super::cache::KindCache;
use crate::children::labels::SERVICE_LABEL;
use crate::reconcile::validate::ValidatedService;

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

/// What one kind's cache and API showed.
#[derive(Clone, Debug)]
pub enum KindObserved {
    /// The kind's API is not served (its CRD is not installed).
    NotServed,
    /// The API is served.
    Served {
        /// The object with the child's name, owned or not; looked up only for
        /// a wanted kind.
        named: Option<Arc<DynamicObject>>,
        /// Other cached objects labelled as this GrpcService's children: an
        /// unwanted kind's child, or one under an old name. Candidates for
        /// pruning (only those we control are deleted).
        others: Vec<Arc<DynamicObject>>,
    },
}

/// Reads every kind's children of `svc`, in registry order.
///
/// The caches only hold objects labelled as managed by the operator, so a
/// miss for a wanted child falls back to a GET: a same-named object someone
/// else created must be seen (and left alone) rather than overwritten.
pub async fn children(
    client: &Client,
    kinds: &[KindCache],
    svc: &ValidatedService,
) -> Result<Vec<KindObserved>, FetchError> {
    let mut observed = Vec::with_capacity(kinds.len());
    for cache in kinds {
        let store = cache.store();
        if store.is_none() && cache.kind.optional() {
            observed.push(KindObserved::NotServed);
            continue;
        }
        // A required kind is always served; before its cache has synced
        // (the controller waits for that, so only in a race) it is read
        // from the API, and nothing is pruned.
        let wanted_name = cache.kind.wanted(svc).then(|| cache.kind.name(svc));
        let others = store.as_ref().map_or_else(Vec::new, |store| {
            store.state_filter(|o| {
                o.metadata.namespace.as_deref() == Some(svc.namespace.as_str())
                    && o.labels().get(SERVICE_LABEL) == Some(&svc.name)
                    && Some(o.name_any()) != wanted_name
            })
        });
        let cached = |name: &String| {
            store
                .as_ref()
                .and_then(|s| s.get(&ObjectRef::new_with(name, cache.api.clone()).within(&svc.namespace)))
        };
        let named = match &wanted_name {
            None => None,
            Some(name) => match cached(name) {
                Some(obj) => Some(obj),
                None => {
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(client.clone(), &svc.namespace, &cache.api);
                    match api.get_opt(name).await {
                        Ok(found) => found.map(Arc::new),
                        // The CRD went away between discovery and now.
                        Err(kube::Error::Api(s)) if s.code == 404 => None,
                        Err(source) => {
                            return Err(FetchError {
                                kind: cache.kind.kind(),
                                namespace: svc.namespace.clone(),
                                name: name.clone(),
                                source,
                            });
                        }
                    }
                }
            },
        };
        observed.push(KindObserved::Served { named, others });
    }
    Ok(observed)
}
