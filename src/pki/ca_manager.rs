//! The CA's life cycle, the only part of the PKI that does I/O: it watches
//! the CA Secret, creates a root on first start, publishes the CA to the
//! reconcilers ([`Trust`]) and drives rotations.
//!
//! A CA that existed is never silently replaced: once the marker ConfigMap
//! records that a CA was created (or found), a missing or corrupt CA Secret
//! makes the CA unavailable, and every reconciler leaves its leaf Secret as
//! it is until a valid CA is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::authority::{self, CaProblem, Signer};
use super::trust::{
    Authority, CaState, OPERATOR_CA_LABEL, ROTATE_ANNOTATION, SINCE_ANNOTATION, STAGE_ANNOTATION, Stage,
    Trust, progress,
};
use crate::metrics::Metrics;
use crate::reconcile::error_chain;

/// Key of the marker ConfigMap holding the fingerprint of the CA it records.
pub const MARKER_FINGERPRINT_KEY: &str = "fingerprint";
/// How often rotation progress is checked.
const TICK: Duration = Duration::from_secs(1);
/// How often a rotation that waits for leaf Secrets names them in an Event.
const WAITING_EVENT_EVERY: Duration = Duration::from_secs(300);

/// A request about the CA failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {what} {namespace}/{name}")]
pub struct CaError {
    action: &'static str,
    what: &'static str,
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

struct Manager {
    client: Client,
    trust: Arc<Trust>,
    metrics: Metrics,
    reporter: Reporter,
    secrets: Api<Secret>,
    configmaps: Api<ConfigMap>,
    /// The last CA Secret the watch delivered.
    current: Option<Secret>,
    /// Whether the watch has listed once.
    listed: bool,
    /// A rotation request on a user's CA was reported (once).
    refused_rotation: bool,
    /// The marker is known to exist.
    marker_seen: bool,
    /// When the rotation last said what it waits for.
    waiting_reported: Option<std::time::Instant>,
}

/// Runs until the process ends.
pub async fn run(client: Client, trust: Arc<Trust>, metrics: Metrics, reporter: Reporter) {
    let s = &trust.settings;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &s.ca_namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &s.ca_namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", s.ca_name));
    let mut stream = std::pin::pin!(watcher(secrets.clone(), config).default_backoff());
    let mut m = Manager {
        client,
        trust: Arc::clone(&trust),
        metrics,
        reporter,
        secrets,
        configmaps,
        current: None,
        listed: false,
        refused_rotation: false,
        marker_seen: false,
        waiting_reported: None,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))) => {
                    m.current = Some(s);
                    if m.listed { m.sync().await; }
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    m.current = None;
                    m.sync().await;
                }
                Some(Ok(watcher::Event::Init)) => m.current = None,
                Some(Ok(watcher::Event::InitDone)) => {
                    m.listed = true;
                    m.sync().await;
                }
                Some(Err(e)) => {
                    m.metrics.watch_errors.with_label_values(&["CASecret"]).inc();
                    warn!(error = %error_chain(&e), "watching the CA Secret failed; retrying");
                }
                None => return,
            },
            _ = tick.tick() => if m.listed {
                // A sync that waited for the leaf caches (no CA Secret yet).
                if m.current.is_none() && matches!(m.trust.state(), CaState::Loading) {
                    m.sync().await;
                }
                m.advance_rotation().await;
            },
        }
    }
}

fn data_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Manager {
    fn err(&self, action: &'static str, what: &'static str) -> impl FnOnce(kube::Error) -> CaError + '_ {
        move |source| CaError {
            action,
            what,
            namespace: self.trust.settings.ca_namespace.clone(),
            name: self.trust.settings.ca_name.clone(),
            source,
        }
    }

    /// Reads the CA Secret the watch delivered into the shared state,
    /// creating a root when there never was a CA.
    async fn sync(&mut self) {
        if let Err(e) = self.try_sync().await {
            warn!(error = %error_chain(&e), "CA sync failed; retrying on the next change");
        }
    }

    async fn try_sync(&mut self) -> Result<(), CaError> {
        let Some(secret) = self.current.clone() else {
            return self.absent().await;
        };
        let operator_created = secret.labels().get(OPERATOR_CA_LABEL).is_some_and(|v| v == "root");
        let stage = secret.annotations().get(STAGE_ANNOTATION).and_then(|s| Stage::parse(s));
        match authority::parse(&data_of(&secret), now()) {
            Ok(material) => {
                if !self.marker_seen {
                    self.ensure_marker(&material.signer).await?;
                    self.marker_seen = true;
                }
                let authority = Authority::new(material, stage, operator_created);
                self.publish(CaState::Ready(Arc::new(authority)));
                if secret.annotations().contains_key(ROTATE_ANNOTATION) && stage.is_none() {
                    self.start_rotation(&secret).await?;
                }
            }
            Err(problem) => self.unavailable(&secret, problem).await,
        }
        Ok(())
    }

    async fn absent(&mut self) -> Result<(), CaError> {
        let s = &self.trust.settings;
        let marker =
            self.configmaps.get_opt(&s.ca_name).await.map_err(self.err("read", "CA marker ConfigMap"))?;
        if let Some(marker) = marker {
            let reason = format!(
                "the CA Secret {}/{} is gone, but a CA existed (marker ConfigMap {}/{}): existing certificates chain to it, so no new CA is created. Restore the Secret, or delete the marker to start over with a new CA",
                s.ca_namespace, s.ca_name, s.ca_namespace, s.ca_name
            );
            self.set_unavailable(reason, Some(marker.object_ref(&()))).await;
            return Ok(());
        }
        // No marker either (its namespace was deleted, say): leaf Secrets
        // issued by a CA still mean one existed. Never create a root while
        // that is unknown, or true.
        let Some(leaves) = self.trust.leaves() else { return Ok(()) };
        if let Some((example, _)) = leaves.first() {
            let reason = format!(
                "the CA Secret {}/{} and its marker are gone, but {} leaf Secrets (such as {example}) were issued by a CA: a new root would break them all. Restore the CA Secret; to start over with a new CA on purpose, delete the leaf Secrets",
                s.ca_namespace,
                s.ca_name,
                leaves.len()
            );
            self.set_unavailable(reason, None).await;
            return Ok(());
        }
        let root = authority::generate_root(
            &s.trust_domain,
            i64::try_from(s.ca_validity.as_secs()).unwrap_or(i64::MAX),
            now(),
        )
        .map_err(|e| {
            warn!(error = %e, "cannot create a CA");
            CaError {
                action: "create",
                what: "CA",
                namespace: s.ca_namespace.clone(),
                name: s.ca_name.clone(),
                source: kube::Error::Service(Box::new(e)),
            }
        })?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(s.ca_name.clone()),
                namespace: Some(s.ca_namespace.clone()),
                // Not labelled managed-by: the operator's caches of children
                // select on that label, and the CA is no child.
                labels: Some(BTreeMap::from([(OPERATOR_CA_LABEL.to_owned(), "root".to_owned())])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(to_bytes(authority::secret_data(&root, std::slice::from_ref(&root.cert), None))),
            ..Secret::default()
        };
        // A plain create: of two operators starting together, one wins and
        // the other reads the winner's CA from its watch.
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                info!(fingerprint = %root.cert.fingerprint, namespace = %s.ca_namespace, name = %s.ca_name, "created a new root CA");
                self.ensure_marker(&root).await?;
                self.marker_seen = true;
                self.event(
                    &created.object_ref(&()),
                    EventType::Normal,
                    "CACreated",
                    format!("Created a self-signed root CA (SHA-256 {})", root.cert.fingerprint),
                )
                .await;
                self.current = Some(created);
                Box::pin(self.try_sync()).await
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(self.err("create", "CA Secret")(e)),
        }
    }

    async fn ensure_marker(&self, signer: &Signer) -> Result<(), CaError> {
        let s = &self.trust.settings;
        let marker = ConfigMap {
            metadata: ObjectMeta {
                name: Some(s.ca_name.clone()),
                namespace: Some(s.ca_namespace.clone()),
                labels: Some(BTreeMap::from([(OPERATOR_CA_LABEL.to_owned(), "marker".to_owned())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (MARKER_FINGERPRINT_KEY.to_owned(), signer.cert.fingerprint.clone()),
                (
                    "note".to_owned(),
                    "grpc-operator records here that a CA exists: while this ConfigMap exists, a missing CA Secret is an outage to repair, never a reason to create a new CA.".to_owned(),
                ),
            ])),
            ..ConfigMap::default()
        };
        // Read first: a restarted operator finds it and writes nothing.
        if self
            .configmaps
            .get_opt(&s.ca_name)
            .await
            .map_err(self.err("read", "CA marker ConfigMap"))?
            .is_some()
        {
            return Ok(());
        }
        match self.configmaps.create(&PostParams::default(), &marker).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(self.err("create", "CA marker ConfigMap")(e)),
        }
    }

    async fn unavailable(&mut self, secret: &Secret, problem: CaProblem) {
        let s = &self.trust.settings;
        let reason = format!("the CA Secret {}/{} is unusable: {problem}", s.ca_namespace, s.ca_name);
        self.set_unavailable(reason, Some(secret.object_ref(&()))).await;
    }

    /// `about`: the object the Warning Event is about (the CA Secret, or the
    /// marker when the Secret is gone).
    async fn set_unavailable(&mut self, reason: String, about: Option<ObjectReference>) {
        if let CaState::Unavailable { reason: r } = self.trust.state()
            && r == reason
        {
            return;
        }
        warn!(%reason, "CA unavailable; leaf certificates are left as they are");
        if let Some(about) = about {
            self.event(&about, EventType::Warning, "CAUnavailable", reason.clone()).await;
        }
        self.metrics.ca_available.set(0);
        self.trust.set(CaState::Unavailable { reason });
    }

    fn publish(&self, state: CaState) {
        let CaState::Ready(new) = &state else { return };
        self.metrics.ca_available.set(1);
        self.metrics.ca_expiration.set(new.signer.cert.not_after);
        self.metrics.ca_rotation_stage.set(new.stage.map_or(0, Stage::number));
        if let CaState::Ready(old) = self.trust.state()
            && old.signer.cert.fingerprint == new.signer.cert.fingerprint
            && old.bundle_digest == new.bundle_digest
            && old.stage == new.stage
            && old.next.as_ref().map(|n| &n.cert.fingerprint)
                == new.next.as_ref().map(|n| &n.cert.fingerprint)
        {
            return;
        }
        info!(
            fingerprint = %new.signer.cert.fingerprint,
            bundle = new.bundle.len(),
            stage = new.stage.map_or("none", Stage::as_str),
            "CA loaded"
        );
        self.trust.set(state);
    }

    async fn start_rotation(&mut self, secret: &Secret) -> Result<(), CaError> {
        let CaState::Ready(ca) = self.trust.state() else { return Ok(()) };
        if !ca.operator_created {
            if !self.refused_rotation {
                self.refused_rotation = true;
                let note = "Rotation requested, but this CA was provided by the user: the operator never writes it. Publish the new CA in ca.crt next to the old one, wait for the workloads, then replace tls.crt and tls.key".to_owned();
                self.event(&secret.object_ref(&()), EventType::Warning, "CARotationRefused", note).await;
            }
            return Ok(());
        }
        let s = &self.trust.settings;
        let next = authority::generate_root(
            &s.trust_domain,
            i64::try_from(s.ca_validity.as_secs()).unwrap_or(i64::MAX),
            now(),
        )
        .map_err(|e| CaError {
            action: "create",
            what: "next root CA",
            namespace: s.ca_namespace.clone(),
            name: s.ca_name.clone(),
            source: kube::Error::Service(Box::new(e)),
        })?;
        let mut bundle = ca.bundle.clone();
        bundle.push(next.cert.clone());
        let data = authority::secret_data(&ca.signer, &bundle, Some(&next));
        let note = format!(
            "CA rotation stage 1/4 (publishing): new root {} added to every trust bundle",
            next.cert.fingerprint
        );
        self.write_stage(secret, data, Some(Stage::Publishing), note).await
    }

    /// Moves a running rotation to its next stage when the current one is done.
    async fn advance_rotation(&mut self) {
        let CaState::Ready(ca) = self.trust.state() else { return };
        let Some(stage) = ca.stage else {
            self.metrics.ca_rotation_pending.set(0);
            return;
        };
        let Some(secret) = self.current.clone() else { return };
        // Leaves not known yet (a restarted operator whose caches have not
        // listed): nothing advances on an unknown set.
        let Some(leaves) = self.trust.leaves() else { return };
        let (p, pending) = progress(&ca, &leaves);
        self.metrics.ca_rotation_pending.set(i64::try_from(p.pending).unwrap_or(i64::MAX));
        if p.pending == 0 {
            self.waiting_reported = None;
        } else if self.waiting_reported.is_none_or(|t| t.elapsed() >= WAITING_EVENT_EVERY) {
            // Nothing moves a stalled rotation but its blocking leaves
            // (a GrpcService whose reconcile fails): name them.
            if self.waiting_reported.is_some() {
                let shown: Vec<&str> = pending.iter().take(10).map(String::as_str).collect();
                let note = format!(
                    "CA rotation stage {} waits for {} of {} leaf Secrets: {}{}",
                    stage.as_str(),
                    p.pending,
                    p.leaves,
                    shown.join(", "),
                    if pending.len() > shown.len() { ", …" } else { "" }
                );
                self.event(&secret.object_ref(&()), EventType::Warning, "CARotationWaiting", note).await;
            }
            self.waiting_reported = Some(std::time::Instant::now());
        }
        let since = secret
            .annotations()
            .get(SINCE_ANNOTATION)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(jiff::Timestamp::as_second);
        let delay = i64::try_from(self.trust.settings.propagation_delay.as_secs()).unwrap_or(i64::MAX);
        let waited = since.is_some_and(|t| now() >= t.saturating_add(delay));
        let result = match stage {
            Stage::Publishing if p.pending == 0 => {
                let note = format!(
                    "CA rotation stage 2/4 (propagating): all {} leaf Secrets carry the new trust bundle; waiting {}s for kubelets and workloads",
                    p.leaves, delay
                );
                self.write_stage(&secret, data_of(&secret), Some(Stage::Propagating), note).await
            }
            Stage::Propagating if waited => {
                let Some(next) = &ca.next else { return };
                let data = authority::secret_data(next, &ca.bundle, None);
                let note = format!(
                    "CA rotation stage 3/4 (reissuing): root {} signs; re-issuing every leaf",
                    next.cert.fingerprint
                );
                self.write_stage(&secret, data, Some(Stage::Reissuing), note).await
            }
            Stage::Reissuing if p.pending == 0 => {
                let note = format!(
                    "CA rotation stage 4/4 (retiring): all {} leaves are signed by the new root; the old root leaves the bundles in {}s",
                    p.leaves, delay
                );
                self.write_stage(&secret, data_of(&secret), Some(Stage::Retiring), note).await
            }
            // Re-checked: a late write must not leave a leaf of the old root.
            Stage::Retiring if waited && p.pending == 0 => {
                let bundle = vec![ca.signer.cert.clone()];
                let data = authority::secret_data(&ca.signer, &bundle, None);
                let note = "CA rotation complete: the old root left every trust bundle".to_owned();
                self.write_stage(&secret, data, None, note).await
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn!(error = %error_chain(&e), "CA rotation step failed; retrying");
        }
    }

    /// Writes the CA Secret for a stage, with the resourceVersion it was read
    /// at: a concurrent change (another operator, a user) fails the write
    /// and the next watch event starts over.
    async fn write_stage(
        &mut self,
        secret: &Secret,
        data: BTreeMap<String, Vec<u8>>,
        stage: Option<Stage>,
        note: String,
    ) -> Result<(), CaError> {
        let mut updated = secret.clone();
        updated.metadata.managed_fields = None;
        updated.data = Some(to_bytes(data));
        let annotations = updated.metadata.annotations.get_or_insert_default();
        annotations.remove(ROTATE_ANNOTATION);
        match stage {
            Some(stage) => {
                annotations.insert(STAGE_ANNOTATION.to_owned(), stage.as_str().to_owned());
                annotations.insert(SINCE_ANNOTATION.to_owned(), jiff::Timestamp::now().to_string());
            }
            None => {
                annotations.remove(STAGE_ANNOTATION);
                annotations.remove(SINCE_ANNOTATION);
            }
        }
        let name = self.trust.settings.ca_name.clone();
        let written = self
            .secrets
            .replace(&name, &PostParams::default(), &updated)
            .await
            .map_err(self.err("update", "CA Secret"))?;
        info!(stage = stage.map_or("done", Stage::as_str), "{note}");
        self.event(&written.object_ref(&()), EventType::Normal, "CARotation", note).await;
        self.metrics.ca_rotation_stage.set(stage.map_or(0, Stage::number));
        self.current = Some(written);
        Box::pin(self.try_sync()).await
    }

    async fn event(&self, about: &ObjectReference, type_: EventType, reason: &str, note: String) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "ManageCA".to_owned(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, about).await {
            warn!(error = %error_chain(&e), "failed to publish a CA event");
        }
    }
}

fn to_bytes(data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, ByteString> {
    data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()
}

/// `grpc-operator ca rotate`: asks the running operator to rotate its CA.
pub async fn request_rotation(client: Client, namespace: &str, name: &str) -> Result<(), CaError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: jiff::Timestamp::now().to_string()}}});
    secrets.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ()).map_err(|source| {
        CaError {
            action: "annotate",
            what: "CA Secret",
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        }
    })
}
