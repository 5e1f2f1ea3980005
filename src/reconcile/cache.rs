//! The controller's cache of one child kind in one scope: a reflector store
//! of slim copies (see `children::slim`), present only while the kind's API is
//! served and its watch has listed everything once.

use std::sync::{Arc, RwLock};

use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use kube::runtime::reflector::Store;

use crate::children::ChildKind;

/// Cache of one kind.
pub struct KindCache {
    /// The kind.
    pub kind: Arc<dyn ChildKind>,
    /// Its API.
    pub api: ApiResource,
    store: RwLock<Option<Store<DynamicObject>>>,
}

impl KindCache {
    /// A cache with no store yet.
    pub fn new(kind: Arc<dyn ChildKind>) -> Self {
        let api = kind.api_resource();
        Self { kind, api, store: RwLock::new(None) }
    }

    /// One cache per kind of `registry`, in its order; none has a store yet.
    pub fn for_registry(registry: &crate::children::Registry) -> Vec<Self> {
        registry.kinds().iter().map(|k| Self::new(Arc::clone(k))).collect()
    }

    /// The synced store, or `None` while the API is not served (or the first
    /// list has not completed).
    pub fn store(&self) -> Option<Store<DynamicObject>> {
        self.store.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Publishes a synced store, or withdraws it (`None`) when the API stops
    /// being served.
    pub fn set_store(&self, store: Option<Store<DynamicObject>>) {
        *self.store.write().unwrap_or_else(std::sync::PoisonError::into_inner) = store;
    }
}
