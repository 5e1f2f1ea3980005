//! The live view of the CA that reconcilers read, and the stages of a CA
//! rotation with overlapping trust.
//!
//! A rotation never lets a workload see a certificate its peers do not yet
//! trust:
//! 1. `publishing`: a new root is created; every leaf Secret's `ca.crt`
//!    becomes old + new. Leaves are still signed by the old root.
//! 2. `propagating`: every leaf Secret carries the bundle; the operator waits
//!    `propagation delay` for the kubelet to sync the volumes and the
//!    workloads to reload them.
//! 3. `reissuing`: the new root signs; every leaf signed by the old one is
//!    re-issued.
//! 4. `retiring`: no leaf signed by the old root remains; after the delay
//!    again, the old root leaves every bundle, and the rotation ends.
//!
//! The stage is persisted in the CA Secret's annotations, so a restarted
//! operator resumes where it stopped.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kube::api::DynamicObject;

use super::authority::{CaCert, CaMaterial, Signer};
use super::inspect::{LeafSummary, bundle_digest};

/// Annotation on the CA Secret requesting a rotation (`grpc-operator ca rotate` sets it).
pub const ROTATE_ANNOTATION: &str = "grpcoperator.io/ca-rotate";
/// Annotation on the CA Secret holding the rotation stage.
pub const STAGE_ANNOTATION: &str = "grpcoperator.io/ca-rotation-stage";
/// Annotation on the CA Secret: when the current stage's wait started (RFC 3339).
pub const SINCE_ANNOTATION: &str = "grpcoperator.io/ca-rotation-since";
/// Label marking a CA Secret the operator created (and may therefore rotate).
pub const OPERATOR_CA_LABEL: &str = "grpcoperator.io/ca";

/// A rotation stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The bundle old + new is being written to every leaf Secret.
    Publishing,
    /// Every leaf Secret has the bundle; waiting for the workloads.
    Propagating,
    /// The new root signs; leaves of the old one are re-issued.
    Reissuing,
    /// No leaf of the old root remains; waiting before dropping it.
    Retiring,
}

impl Stage {
    /// The annotation value (and metric/Event wording).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publishing => "publishing",
            Self::Propagating => "propagating",
            Self::Reissuing => "reissuing",
            Self::Retiring => "retiring",
        }
    }

    /// Parses the annotation value.
    pub fn parse(value: &str) -> Option<Self> {
        [Self::Publishing, Self::Propagating, Self::Reissuing, Self::Retiring]
            .into_iter()
            .find(|s| s.as_str() == value)
    }

    /// 1 to 4, for the stage gauge (0 is "no rotation").
    pub fn number(self) -> i64 {
        match self {
            Self::Publishing => 1,
            Self::Propagating => 2,
            Self::Reissuing => 3,
            Self::Retiring => 4,
        }
    }
}

/// A usable CA, as leaves are issued from it.
#[derive(Debug)]
pub struct Authority {
    /// Signs new leaves.
    pub signer: Signer,
    /// The trust bundle every leaf Secret carries in `ca.crt`.
    pub bundle: Vec<CaCert>,
    /// `ca.crt` of every leaf Secret.
    pub bundle_pem: String,
    /// Digest of [`Self::bundle_pem`] ([`bundle_digest`]).
    pub bundle_digest: String,
    /// The next root while a rotation publishes it.
    pub next: Option<Signer>,
    /// The rotation stage, if one is running.
    pub stage: Option<Stage>,
    /// Whether the operator created this CA (only those are rotated by it).
    pub operator_created: bool,
}

impl Authority {
    /// From the CA Secret's content and its rotation stage.
    pub fn new(material: CaMaterial, stage: Option<Stage>, operator_created: bool) -> Self {
        let bundle_pem: String = material.bundle.iter().map(CaCert::pem).collect();
        Self {
            bundle_digest: bundle_digest(bundle_pem.as_bytes()),
            bundle_pem,
            signer: material.signer,
            bundle: material.bundle,
            next: material.next,
            stage,
            operator_created,
        }
    }

    /// Whether a leaf issued by the CA with key id `issuer_key_id` chains
    /// to the bundle: any root in it counts as correctly issued (during a
    /// rotation, both).
    pub fn trusts(&self, issuer_key_id: &str) -> bool {
        self.signer.cert.key_id == issuer_key_id || self.bundle.iter().any(|c| c.key_id == issuer_key_id)
    }
}

/// The CA as the reconcilers see it.
#[derive(Clone, Debug)]
pub enum CaState {
    /// Not read yet.
    Loading,
    /// Usable.
    Ready(Arc<Authority>),
    /// The marker says a CA existed, and there is no valid one: no leaf may
    /// be touched until it is back.
    Unavailable {
        /// Why; bounded text without key material.
        reason: String,
    },
    /// `render`: no cluster and no CA; leaf Secrets are shown redacted.
    Offline,
}

/// Settings of the operator's PKI (the `run` flags).
#[derive(Clone, Debug)]
pub struct PkiSettings {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Cluster DNS domain of Service names.
    pub cluster_domain: String,
    /// Namespace of the CA Secret.
    pub ca_namespace: String,
    /// Name of the CA Secret (and of the marker ConfigMap beside it).
    pub ca_name: String,
    /// Validity of a root the operator creates.
    pub ca_validity: Duration,
    /// How long a rotation waits for kubelets and workloads after every leaf
    /// Secret is written.
    pub propagation_delay: Duration,
}

impl Default for PkiSettings {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            ca_namespace: "grpc-operator-system".to_owned(),
            ca_name: "grpc-operator-ca".to_owned(),
            ca_validity: Duration::from_secs(10 * 365 * 86_400),
            propagation_delay: Duration::from_secs(120),
        }
    }
}

/// Lists the leaf Secrets one controller scope caches (slim copies); `None`
/// while its cache has not listed them yet.
pub type LeafSource = Box<dyn Fn() -> Option<Vec<Arc<DynamicObject>>> + Send + Sync>;

/// Shared by the CA manager (the writer) and every reconciler.
pub struct Trust {
    /// Settings.
    pub settings: PkiSettings,
    state: RwLock<CaState>,
    changes: tokio::sync::watch::Sender<u64>,
    sources: Mutex<Vec<LeafSource>>,
    /// How many controller scopes register a source (unknown until the
    /// controller says): fewer registered means the leaves are not known yet.
    expected_sources: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("settings", &self.settings).field("state", &self.state()).finish()
    }
}

impl Trust {
    /// A CA not read yet.
    pub fn new(settings: PkiSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            state: RwLock::new(CaState::Loading),
            changes: tokio::sync::watch::Sender::new(0),
            sources: Mutex::new(Vec::new()),
            expected_sources: std::sync::atomic::AtomicUsize::new(usize::MAX),
        })
    }

    /// For `render`.
    pub fn offline(settings: PkiSettings) -> Arc<Self> {
        let t = Self::new(settings);
        t.set(CaState::Offline);
        t
    }

    /// A ready CA (tests, benchmarks).
    pub fn ready(settings: PkiSettings, authority: Authority) -> Arc<Self> {
        let t = Self::new(settings);
        t.set(CaState::Ready(Arc::new(authority)));
        t
    }

    /// The current state.
    pub fn state(&self) -> CaState {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Publishes a new state; every scope reconciles all its GrpcServices.
    pub fn set(&self, state: CaState) {
        *self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        self.changes.send_modify(|n| *n += 1);
    }

    /// Fires on every [`Trust::set`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Registers the leaf Secrets of a controller scope, for the rotation's
    /// progress checks.
    pub fn add_leaf_source(&self, source: LeafSource) {
        self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(source);
    }

    /// How many controller scopes will register a leaf source.
    pub fn expect_sources(&self, scopes: usize) {
        self.expected_sources.store(scopes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every cached leaf Secret (`namespace/name` and summary), or `None`
    /// while that is not known: a scope has not registered, or its cache
    /// has not listed. A rotation never advances, and no root is created,
    /// on an unknown set of leaves.
    pub fn leaves(&self) -> Option<Vec<(String, LeafSummary)>> {
        let sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sources.len() < self.expected_sources.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let mut leaves = Vec::new();
        for source in sources.iter() {
            for o in source()? {
                let ours = o
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(crate::children::labels::SERVICE_LABEL));
                if let (true, Some(summary)) = (ours, crate::children::tls_secret::summary_of(&o)) {
                    let name = format!(
                        "{}/{}",
                        o.metadata.namespace.as_deref().unwrap_or_default(),
                        o.metadata.name.as_deref().unwrap_or_default()
                    );
                    leaves.push((name, summary));
                }
            }
        }
        Some(leaves)
    }

    /// The SPIFFE ID of a service account.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{}/ns/{namespace}/sa/{service_account}", self.settings.trust_domain)
    }
}

/// Rotation progress: leaf Secrets still to update in the current stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Leaf Secrets.
    pub leaves: usize,
    /// Of them, those without the current bundle (`publishing`) or still
    /// signed by a retiring root (`reissuing`).
    pub pending: usize,
}

/// Progress of `stage` over `leaves` for `authority`, with the names of the
/// leaf Secrets still pending.
pub fn progress(authority: &Authority, leaves: &[(String, LeafSummary)]) -> (Progress, Vec<String>) {
    let pending: Vec<String> = leaves
        .iter()
        .filter(|(_, l)| match authority.stage {
            Some(Stage::Publishing | Stage::Propagating) => l.bundle != authority.bundle_digest,
            Some(Stage::Reissuing | Stage::Retiring) => l.issuer_key_id != authority.signer.cert.key_id,
            None => false,
        })
        .map(|(name, _)| name.clone())
        .collect();
    (Progress { leaves: leaves.len(), pending: pending.len() }, pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::authority::tests::{NOW, data_of, root};
    use crate::pki::inspect::LeafSummary;

    fn summary(bundle: &str, issuer: &str) -> LeafSummary {
        LeafSummary {
            damage: None,
            serial: "1".into(),
            not_before: NOW,
            not_after: NOW + 3600,
            issuer_key_id: issuer.into(),
            sans: String::new(),
            bundle: bundle.into(),
            key: String::new(),
        }
    }

    #[test]
    fn rotation_progress_counts_the_leaves_each_stage_waits_for() {
        let old = root();
        let material = crate::pki::authority::parse(&data_of(&old), NOW).expect("CA");
        let mut ca = Authority::new(material, Some(Stage::Publishing), true);
        let leaves = vec![
            ("a/x-tls".to_owned(), summary(&ca.bundle_digest, &ca.signer.cert.key_id)),
            ("a/y-tls".to_owned(), summary("stale", &ca.signer.cert.key_id)),
        ];
        assert_eq!(progress(&ca, &leaves), (Progress { leaves: 2, pending: 1 }, vec!["a/y-tls".to_owned()]));
        ca.stage = Some(Stage::Reissuing);
        assert_eq!(progress(&ca, &leaves).0.pending, 0, "both signed by the signer");
        ca.stage = None;
        assert_eq!(progress(&ca, &leaves).0.pending, 0);
    }

    #[test]
    fn leaves_are_unknown_until_every_scope_has_listed() {
        let trust = Trust::new(PkiSettings::default());
        assert!(trust.leaves().is_none(), "the number of scopes is not known yet");
        trust.expect_sources(2);
        trust.add_leaf_source(Box::new(|| Some(Vec::new())));
        assert!(trust.leaves().is_none(), "one scope of two");
        trust.add_leaf_source(Box::new(|| None));
        assert!(trust.leaves().is_none(), "a scope whose cache has not listed");
        let trust = Trust::new(PkiSettings::default());
        trust.expect_sources(1);
        trust.add_leaf_source(Box::new(|| Some(Vec::new())));
        assert_eq!(trust.leaves().map(|l| l.len()), Some(0));
    }
}
