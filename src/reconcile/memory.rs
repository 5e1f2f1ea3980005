//! What the reconciler remembers per GrpcService between runs, keyed by uid
//! (a re-created object with the same name starts afresh): its consecutive
//! failures, for backoff and `Synced`, and which child versions it has
//! verified, so that an idle object costs no request.
//!
//! Entries are removed on every delete path: when a reconcile releases the
//! finalizer, when the watch reports a delete, and when a relist no longer
//! contains the object (deleted while the watch was down).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;

use crate::api::GrpcService;

/// Per-object memory of one controller scope.
#[derive(Default)]
pub struct Memory {
    objects: Mutex<HashMap<String, ObjectMemory>>,
}

/// The operator's last status write of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusWrite {
    /// resourceVersion of the cached object the write was computed from.
    pub based_on: String,
    /// Digest of the status written.
    pub digest: u64,
}

#[derive(Default)]
struct ObjectMemory {
    failures: u32,
    status_write: Option<StatusWrite>,
    /// Per child kind: (child uid, change marker) known to match what the
    /// operator wants. A Vec: a handful of entries, where a map's first node
    /// alone would cost several hundred bytes per object.
    verified: Vec<(&'static str, (String, String))>,
}

impl Memory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ObjectMemory>> {
        super::lock(&self.objects)
    }

    /// Records a failure of `uid`; returns the consecutive count.
    pub fn record_failure(&self, uid: &str) -> u32 {
        let mut objects = self.lock();
        let entry = objects.entry(uid.to_owned()).or_default();
        entry.failures = entry.failures.saturating_add(1);
        entry.failures
    }

    /// Consecutive failures of `uid`.
    pub fn failures(&self, uid: &str) -> u32 {
        self.lock().get(uid).map_or(0, |o| o.failures)
    }

    /// A success of `uid` ends its failure streak.
    pub fn reset_failures(&self, uid: &str) {
        if let Some(o) = self.lock().get_mut(uid) {
            o.failures = 0;
        }
    }

    /// The (child uid, marker) of `kind` last verified for `uid`.
    pub fn verified(&self, uid: &str, kind: &'static str) -> Option<(String, String)> {
        self.lock().get(uid).and_then(|o| o.verified.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.clone()))
    }

    /// Records that the child of `kind` at (child uid, marker) matches.
    pub fn remember_verified(&self, uid: &str, kind: &'static str, child: (String, String)) {
        let mut objects = self.lock();
        let verified = &mut objects.entry(uid.to_owned()).or_default().verified;
        match verified.iter_mut().find(|(k, _)| *k == kind) {
            Some(entry) => entry.1 = child,
            None => verified.push((kind, child)),
        }
    }

    /// The last status write of `uid`.
    pub fn status_write(&self, uid: &str) -> Option<StatusWrite> {
        self.lock().get(uid).and_then(|o| o.status_write.clone())
    }

    /// Records a status write of `uid`.
    pub fn remember_status_write(&self, uid: &str, write: StatusWrite) {
        self.lock().entry(uid.to_owned()).or_default().status_write = Some(write);
    }

    /// Forgets a verified child (it was pruned).
    pub fn forget_verified(&self, uid: &str, kind: &'static str) {
        if let Some(o) = self.lock().get_mut(uid) {
            o.verified.retain(|(k, _)| *k != kind);
        }
    }

    /// Forgets `uid` entirely (it was deleted).
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Keeps only the uids in `live` (after a relist).
    pub fn retain(&self, live: &HashSet<String>) {
        self.lock().retain(|uid, _| live.contains(uid));
    }

    /// Number of objects remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Objects with a pending trigger (a watch event of theirs or of a child)
/// whose reconcile has not started: the queue depth. kube-runtime's
/// scheduler does not expose its queue, so the controller keeps this set
/// beside it; periodic re-checks and retries after failures are not in it.
#[derive(Default)]
pub struct Queued {
    refs: Mutex<HashSet<ObjectRef<GrpcService>>>,
}

impl Queued {
    /// A trigger for `obj` was sent.
    pub fn push(&self, obj: ObjectRef<GrpcService>) {
        super::lock(&self.refs).insert(obj);
    }

    /// The reconcile of `obj` started, or it no longer exists.
    pub fn remove(&self, obj: &ObjectRef<GrpcService>) {
        super::lock(&self.refs).remove(obj);
    }

    /// Objects waiting.
    pub fn len(&self) -> usize {
        super::lock(&self.refs).len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_per_uid_and_released_on_delete_and_relist() {
        let m = Memory::default();
        assert_eq!(m.record_failure("a"), 1);
        assert_eq!(m.record_failure("a"), 2);
        m.remember_verified("b", "Service", ("s".into(), "7".into()));
        assert_eq!(m.verified("b", "Service"), Some(("s".into(), "7".into())));
        m.reset_failures("a");
        assert_eq!(m.failures("a"), 0);
        m.forget("a");
        assert_eq!(m.len(), 1);
        m.retain(&HashSet::new());
        assert!(m.is_empty());
    }
}
