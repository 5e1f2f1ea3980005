//! The workload certificate Secret `<name>-tls` (`kubernetes.io/tls`,
//! `tls.crt`, `tls.key`, `ca.crt`), issued by the operator's CA, and its
//! wiring into the pods: the volume at `TLS_DIR`, `TLS_MODE` and
//! `GRPC_ALLOWED_PEERS`. Its condition, `CertificateReady`, gates `Ready`.
//!
//! The cache keeps a summary of each Secret ([`LeafSummary`]), never its
//! data: a renewal decision needs NotAfter, the issuer, the SANs and whether
//! the key matches, all computed when the watch delivers the object. Only
//! when the summary says something must change is the Secret read in full,
//! which also guards against a cache that has not seen the operator's own
//! last write yet.
//!
//! Decisions, in order: no Secret, a damaged one, an expired one or one
//! from an issuer the bundle does not hold is issued afresh; changed SANs
//! re-issue; a leaf not signed by the current signer (a CA rotation's stage
//! 3) re-issues; the renewal time re-issues; a stale `ca.crt` is rewritten
//! with the same certificate; changed labels or owner are rewritten. While
//! the CA is unavailable, nothing is touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use grpc_contract::env;
use grpc_contract::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use k8s_openapi::api::core::v1::{EnvVar, Secret, SecretVolumeSource, Volume, VolumeMount};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use super::labels::{child_meta, object_labels, owner_reference};
use super::{
    BuildError, ChangeMarker, ChildKind, ConditionRole, KindEvent, ObservedChildren, PrepareCx, PrepareError,
    Prepared, Workload,
};
use crate::api::TlsMode;
use crate::metrics::Metrics;
use crate::pki::inspect::{Damage, LeafSummary, summarize};
use crate::pki::leaf::{LeafInfo, LeafRequest, issue};
use crate::pki::rfc3339;
use crate::pki::trust::{Authority, CaState, Trust};
use crate::reconcile::status::{Verdict, reason};
use crate::reconcile::validate::{ValidAllowedClient, ValidatedService};

/// Condition type of the TLS kinds.
pub const CERTIFICATE_READY: &str = "CertificateReady";
/// Annotation: NotBefore of the certificate (RFC 3339).
pub const NOT_BEFORE_ANNOTATION: &str = "grpcoperator.io/not-before";
/// Annotation: NotAfter of the certificate (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "grpcoperator.io/not-after";
/// Annotation: when the operator renews it (RFC 3339), jitter included.
pub const RENEWAL_ANNOTATION: &str = "grpcoperator.io/renewal-time";
/// Annotation: serial number (hex).
pub const SERIAL_ANNOTATION: &str = "grpcoperator.io/serial";
/// Annotation: SHA-256 fingerprint of the CA that signed it.
pub const ISSUER_ANNOTATION: &str = "grpcoperator.io/issuer-fingerprint";
/// Annotation on the Deployment: how each GrpcService of `allowedClients`
/// resolved last (JSON `{"ns/name": "spiffe://…"}`), so that one that can no
/// longer be resolved keeps its last value instead of widening the list.
pub const ALLOWED_CLIENTS_ANNOTATION: &str = "grpcoperator.io/allowed-clients";
/// Name of the pod volume of the certificate Secret.
pub const VOLUME_NAME: &str = "grpc-tls";
/// Where the Secret is mounted (`TLS_DIR`).
pub const MOUNT_PATH: &str = "/var/run/secrets/grpcoperator.io/tls";
/// Placeholder of Secret data in `render` output.
pub const REDACTED: &str = "<redacted: issued by the operator's CA at apply time>";

/// Name of the certificate Secret of GrpcService `name`.
pub fn secret_name(name: &str) -> String {
    format!("{name}-tls")
}

/// The DNS SANs: the Service's names, then `spec.tls.dnsNames`.
pub fn dns_names(svc: &ValidatedService, cluster_domain: &str) -> Vec<String> {
    let (n, ns) = (&svc.name, &svc.namespace);
    let mut names = vec![
        n.clone(),
        format!("{n}.{ns}"),
        format!("{n}.{ns}.svc"),
        format!("{n}.{ns}.svc.{cluster_domain}"),
    ];
    for extra in &svc.tls.dns_names {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    names
}

/// The summary of a leaf Secret: the one the cache keeps, or computed from
/// the data of a full object.
pub fn summary_of(obj: &DynamicObject) -> Option<LeafSummary> {
    let kept = super::kept(obj);
    if let Some(s) = kept.get("summary") {
        return serde_json::from_value(s.clone()).ok();
    }
    kept.get("data").map(|d| summarize(&decode_data(d)))
}

fn decode_data(data: &Value) -> BTreeMap<String, Vec<u8>> {
    let engine = base64::engine::general_purpose::STANDARD;
    data.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), engine.decode(v.as_str()?).ok()?)))
        .collect()
}

/// Why a Secret is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// There was none.
    Issued,
    /// The renewal time came.
    Renewed,
    /// The SANs changed (name, namespace, service account, dnsNames).
    SansChanged,
    /// It was damaged, expired or from an unknown issuer.
    Repaired(&'static str),
    /// The CA that signs changed (a rotation).
    CaRotated,
    /// Only `ca.crt` changes: the same certificate with the current bundle.
    Rebundled,
    /// Only labels or the owner change.
    Refreshed,
}

impl Why {
    /// Bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Renewed => "renewed",
            Self::SansChanged => "sans_changed",
            Self::Repaired(_) => "repaired",
            Self::CaRotated => "ca_rotated",
            Self::Rebundled => "rebundled",
            Self::Refreshed => "refreshed",
        }
    }

    /// Whether a new certificate is issued.
    pub fn issues(self) -> bool {
        !matches!(self, Self::Rebundled | Self::Refreshed)
    }

    fn sentence(self) -> String {
        match self {
            Self::Issued => "issued".to_owned(),
            Self::Renewed => "renewed".to_owned(),
            Self::SansChanged => "re-issued: its names changed".to_owned(),
            Self::Repaired(what) => format!("re-issued: the Secret {what}"),
            Self::CaRotated => "re-issued by the new CA".to_owned(),
            Self::Rebundled => "given the current trust bundle".to_owned(),
            Self::Refreshed => "relabelled".to_owned(),
        }
    }
}

/// What the Secret needs, decided from its summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing.
    Keep,
    /// A write, for this reason.
    Write(Why),
}

/// The facts of the live Secret the decision reads.
#[derive(Clone, Debug)]
pub struct LiveLeaf<'a> {
    /// Its summary.
    pub summary: &'a LeafSummary,
    /// Its renewal time annotation, Unix seconds.
    pub renewal: Option<i64>,
    /// Whether its labels and owner are the operator's.
    pub metadata_ok: bool,
}

/// Decides what the Secret needs at `now`. Pure.
pub fn decide(
    svc: &ValidatedService,
    ca: &Authority,
    live: Option<&LiveLeaf<'_>>,
    wanted_sans: &str,
    now: i64,
) -> Decision {
    let Some(live) = live else { return Decision::Write(Why::Issued) };
    let s = live.summary;
    if let Some(damage) = s.damage {
        let what = match damage {
            Damage::MissingCertificate => "had no tls.crt",
            Damage::MissingKey => "had no tls.key",
            Damage::MissingBundle => "had no ca.crt",
            Damage::Unparsable => "did not parse",
            Damage::KeyMismatch => "held a key that is not the certificate's",
        };
        return Decision::Write(Why::Repaired(what));
    }
    if s.not_after <= now {
        return Decision::Write(Why::Repaired("held an expired certificate"));
    }
    if !ca.trusts(&s.issuer_key_id) {
        return Decision::Write(Why::Repaired("held a certificate of another CA"));
    }
    if s.sans != wanted_sans {
        return Decision::Write(Why::SansChanged);
    }
    if s.issuer_key_id != ca.signer.cert.key_id {
        return Decision::Write(Why::CaRotated);
    }
    if now >= renewal_due(svc, ca, s, live.renewal) {
        return Decision::Write(Why::Renewed);
    }
    if s.bundle != ca.bundle_digest {
        return Decision::Write(Why::Rebundled);
    }
    if !live.metadata_ok {
        return Decision::Write(Why::Refreshed);
    }
    Decision::Keep
}

/// When a live leaf is due for renewal: its renewal annotation, but never
/// later than the spec's `renewBefore` allows now (it may have grown since
/// issuance). A leaf the CA's expiry cut short keeps its annotation (two
/// thirds of its life): renewing it by `renewBefore` would re-issue on every
/// reconcile, since the next leaf is cut at the same point. Without an
/// annotation, the time is computed the same way, without jitter.
pub fn renewal_due(svc: &ValidatedService, ca: &Authority, s: &LeafSummary, annotation: Option<i64>) -> i64 {
    let issued = s.not_before + crate::pki::authority::BACKDATE_SECONDS;
    // Issued with NotAfter = the CA's: it was cut short.
    let cut_short = s.not_after >= ca.signer.cert.not_after;
    let by_spec = if cut_short {
        issued + (s.not_after - issued) * 2 / 3
    } else {
        s.not_after - svc.tls.renew_before_seconds
    };
    // Never more often than once a minute, whatever the annotation says.
    annotation.map_or(by_spec, |r| r.min(by_spec)).max(issued + 60)
}

/// What the Secret's builder gets.
#[derive(Clone, Debug)]
pub enum Plan {
    /// The live Secret is right.
    Keep,
    /// Leave the live Secret (if any) alone: the CA is not usable.
    Hold {
        /// Condition reason.
        reason: &'static str,
        /// Condition message.
        message: String,
    },
    /// `render`: show the Secret without key material.
    Redacted,
    /// Write this content.
    Write(Arc<Content>),
}

/// The content of a Secret to write.
pub struct Content {
    /// `tls.crt`, `tls.key`, `ca.crt`.
    pub data: BTreeMap<String, Vec<u8>>,
    /// The certificate's facts.
    pub info: LeafInfo,
    /// Why.
    pub why: Why,
}

impl std::fmt::Debug for Content {
    /// Without the data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content").field("info", &self.info).field("why", &self.why).finish_non_exhaustive()
    }
}

/// `GRPC_ALLOWED_PEERS`, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    /// The value.
    pub value: String,
    /// `ns/name` → SPIFFE ID of every GrpcService entry that resolved now or
    /// before.
    pub resolved: BTreeMap<String, String>,
    /// `ns/name` of the entries that could not be resolved.
    pub unresolved: Vec<String>,
    /// Entries that stand for several GrpcServices sharing a service account.
    pub shared: Vec<String>,
}

impl Peers {
    /// `CertificateReady=False`, reason `AllowedClientUnresolved`, when an
    /// entry of `allowedClients` could not be resolved.
    pub fn unresolved_verdict(&self) -> Option<Verdict> {
        (!self.unresolved.is_empty()).then(|| {
            Verdict::not_ok(
                reason::ALLOWED_CLIENT_UNRESOLVED,
                format!(
                    "allowedClients names GrpcServices that cannot be found: {}; they keep their last resolved identity, or are denied",
                    self.unresolved.join(", ")
                ),
            )
        })
    }
}

/// What [`TlsSecretKind::prepare`] computed.
#[derive(Clone, Debug)]
pub struct TlsPrepared {
    /// The Secret.
    pub plan: Plan,
    /// `GRPC_ALLOWED_PEERS` (mode `mutual` only).
    pub peers: Option<Peers>,
}

/// The SPIFFE ID matched by no workload: `GRPC_ALLOWED_PEERS` when every
/// entry of `allowedClients` is unresolved (deny rather than widen).
pub fn deny_all_peer(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/grpc-operator/no-client")
}

/// Resolves `allowedClients` against the GrpcServices the scope caches.
/// `previous` is the last resolution (the Deployment's annotation).
pub fn resolve_peers(
    svc: &ValidatedService,
    trust: &Trust,
    lookup: &dyn Fn(&str, &str) -> Option<Arc<crate::api::GrpcService>>,
    all_in: &dyn Fn(&str) -> Vec<Arc<crate::api::GrpcService>>,
    previous: &BTreeMap<String, String>,
) -> Peers {
    let mut peers = Peers::default();
    let mut list: Vec<String> = Vec::new();
    if svc.tls.allowed_clients.is_empty() {
        list.push(format!("spiffe://{}/ns/*/sa/*", trust.settings.trust_domain));
    }
    for client in &svc.tls.allowed_clients {
        match client {
            ValidAllowedClient::Pattern(p) => list.push(p.clone()),
            ValidAllowedClient::Service { namespace, name } => {
                let key = format!("{namespace}/{name}");
                match lookup(namespace, name) {
                    Some(other) => {
                        let sa = other.spec.service_account_name.clone().unwrap_or_else(|| name.clone());
                        let id = trust.spiffe_id(namespace, &sa);
                        let sharing: Vec<String> = all_in(namespace)
                            .iter()
                            .filter(|o| {
                                o.spec.service_account_name.clone().unwrap_or_else(|| o.name_any()) == sa
                            })
                            .map(|o| o.name_any())
                            .collect();
                        if sharing.len() > 1 {
                            peers.shared.push(format!(
                                "{key} stands for {id}, the identity of GrpcServices {} (they share service account {sa}): all of them may call",
                                sharing.join(", ")
                            ));
                        }
                        peers.resolved.insert(key, id.clone());
                        list.push(id);
                    }
                    None => {
                        // The last resolution, read back from an annotation
                        // anyone with access to the Deployment could edit: only
                        // an exact identity of that namespace is believed.
                        let prefix = format!("spiffe://{}/ns/{namespace}/sa/", trust.settings.trust_domain);
                        let believable = |id: &String| {
                            id.strip_prefix(&prefix).is_some_and(|sa| !sa.is_empty() && !sa.contains('/'))
                                && grpc_contract::spiffe::check_id(id).is_ok()
                        };
                        if let Some(id) = previous.get(&key).filter(|id| believable(id)) {
                            peers.resolved.insert(key.clone(), id.clone());
                            list.push(id.clone());
                        }
                        peers.unresolved.push(key);
                    }
                }
            }
        }
    }
    // The gRPC-Web sidecar calls the workload with the workload's own
    // certificate: without its identity, `allowedClients` would lock the
    // proxy out. Browser callers are authorized by the application.
    if !svc.tls.allowed_clients.is_empty() && svc.grpc_web.as_ref().is_some_and(|w| w.sidecar()) {
        list.push(trust.spiffe_id(&svc.namespace, &svc.service_account));
    }
    let mut seen = std::collections::HashSet::new();
    list.retain(|p| seen.insert(p.clone()));
    if list.is_empty() {
        list.push(deny_all_peer(&trust.settings.trust_domain));
    }
    peers.value = list.join(",");
    peers
}

/// The pod wiring of a TLS Secret named `secret`: volume, mount and env.
pub fn wiring(svc: &ValidatedService, secret: &str, peers: Option<&Peers>, workload: &mut Workload) {
    workload.volumes.push(Volume {
        name: VOLUME_NAME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    // The whole directory, never a subPath: the kubelet swaps the `..data`
    // link of a Secret volume in place, and subPath mounts never update.
    workload.volume_mounts.push(VolumeMount {
        name: VOLUME_NAME.to_owned(),
        mount_path: MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let var =
        |name: &str, value: String| EnvVar { name: name.to_owned(), value: Some(value), value_from: None };
    workload.env.push(var(env::TLS_MODE, svc.tls.mode.as_str().to_owned()));
    workload.env.push(var(env::TLS_DIR, MOUNT_PATH.to_owned()));
    if let Some(peers) = peers {
        workload.env.push(var(env::GRPC_ALLOWED_PEERS, peers.value.clone()));
        if !peers.resolved.is_empty() {
            workload.deployment_annotations.insert(
                ALLOWED_CLIENTS_ANNOTATION.to_owned(),
                serde_json::to_string(&peers.resolved).unwrap_or_default(),
            );
        }
    }
    workload.grpc_port_tls = true;
}

/// The previous resolution, from the live Deployment.
pub fn previous_resolution(observed: &ObservedChildren) -> BTreeMap<String, String> {
    observed
        .get("Deployment")
        .and_then(|d| d.annotations().get(ALLOWED_CLIENTS_ANNOTATION))
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

/// Resolves `GRPC_ALLOWED_PEERS` for `cx`, when the mode is mutual.
pub fn peers_for(cx: &PrepareCx<'_>, trust: &Trust) -> Option<Peers> {
    if cx.svc.tls.mode != TlsMode::Mutual {
        return None;
    }
    let store = cx.grpc_services;
    let lookup = |ns: &str, name: &str| store.get(&ObjectRef::new(name).within(ns));
    let all_in =
        |ns: &str| store.state().into_iter().filter(|o| o.namespace().as_deref() == Some(ns)).collect();
    Some(resolve_peers(cx.svc, trust, &lookup, &all_in, &previous_resolution(cx.observed)))
}

/// What `render` gives the builders: the Secret redacted, and
/// `GRPC_ALLOWED_PEERS` resolved against the GrpcServices of the input.
pub fn render_observed(
    svc: &ValidatedService,
    all: &[Arc<crate::api::GrpcService>],
    trust: &Trust,
) -> ObservedChildren {
    let lookup = |ns: &str, name: &str| {
        all.iter().find(|o| o.namespace().as_deref() == Some(ns) && o.name_any() == name).cloned()
    };
    let all_in = |ns: &str| all.iter().filter(|o| o.namespace().as_deref() == Some(ns)).cloned().collect();
    let peers = (svc.tls.mode == TlsMode::Mutual)
        .then(|| resolve_peers(svc, trust, &lookup, &all_in, &BTreeMap::new()));
    let mut observed = ObservedChildren::default();
    observed.prepared.insert(
        "Certificate",
        Arc::new(super::certificate::CertificatePrepared { peers: peers.clone() }) as Prepared,
    );
    observed.prepared.insert("Secret", Arc::new(TlsPrepared { plan: Plan::Redacted, peers }) as Prepared);
    observed
}

/// The TLS Secret kind.
pub struct TlsSecretKind {
    trust: Arc<Trust>,
}

impl TlsSecretKind {
    /// With the CA the operator runs.
    pub fn new(trust: Arc<Trust>) -> Self {
        Self { trust }
    }

    fn prepared<'a>(&self, observed: &'a ObservedChildren) -> Option<&'a TlsPrepared> {
        observed.prepared::<TlsPrepared>(self.kind())
    }

    async fn plan(&self, cx: &PrepareCx<'_>) -> Result<Plan, PrepareError> {
        let ca = match self.trust.state() {
            CaState::Offline => return Ok(Plan::Redacted),
            // Just started: what exists stays, nothing new is issued yet.
            CaState::Loading => {
                return Ok(match cx.observed.get(self.kind()) {
                    Some(_) => Plan::Keep,
                    None => Plan::Hold {
                        reason: reason::CA_PENDING,
                        message: "the CA has not been read yet".into(),
                    },
                });
            }
            CaState::Unavailable { reason: why } => {
                return Ok(Plan::Hold {
                    reason: reason::CA_UNAVAILABLE,
                    message: format!("{why}; the certificate Secret is left as it is"),
                });
            }
            CaState::Ready(ca) => ca,
        };
        let svc = cx.svc;
        let now = jiff::Timestamp::now().as_second();
        let names = dns_names(svc, &self.trust.settings.cluster_domain);
        let spiffe = self.trust.spiffe_id(&svc.namespace, &svc.service_account);
        let wanted_sans = crate::pki::inspect::san_digest(&names, &spiffe);
        let cached = cx.observed.get(self.kind());
        let cached_summary = cached.and_then(summary_of);
        let live_of = |obj: &DynamicObject| -> (Option<i64>, bool) {
            let renewal = obj
                .annotations()
                .get(RENEWAL_ANNOTATION)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(jiff::Timestamp::as_second);
            (renewal, metadata_ok(svc, obj))
        };
        let decision = match (cached, &cached_summary) {
            (Some(obj), Some(summary)) => {
                let (renewal, metadata_ok) = live_of(obj);
                decide(svc, &ca, Some(&LiveLeaf { summary, renewal, metadata_ok }), &wanted_sans, now)
            }
            _ => decide(svc, &ca, None, &wanted_sans, now),
        };
        if decision == Decision::Keep {
            return Ok(Plan::Keep);
        }
        // No Secret in the cache, and the fetch step's GET found none either
        // (a cache miss of a wanted child is always read): issue at once.
        let full = if cached.is_none() {
            None
        } else {
            // Something changes: read the Secret in full. The cache may not have
            // seen the operator's own last write, and a rebundle or a kept key
            // needs the data anyway.
            let name = secret_name(&svc.name);
            let api: Api<Secret> = Api::namespaced(cx.client.clone(), &svc.namespace);
            match api.get_opt(&name).await {
                Ok(full) => full.filter(|s| {
                    s.owner_references()
                        .iter()
                        .any(|o| o.controller == Some(true) && Some(&o.uid) == svc.uid.as_ref())
                }),
                Err(source) => {
                    return Err(PrepareError::Read {
                        kind: "Secret",
                        namespace: svc.namespace.clone(),
                        name,
                        source,
                    });
                }
            }
        };
        let data: BTreeMap<String, Vec<u8>> = full
            .as_ref()
            .and_then(|s| s.data.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let summary = summarize(&data);
        let decision = match &full {
            Some(secret) => {
                let obj: DynamicObject =
                    serde_json::from_value(serde_json::to_value(secret).unwrap_or_default())
                        .map_err(|e| PrepareError::Compute { kind: "Secret", source: Box::new(e) })?;
                let (renewal, metadata_ok) = live_of(&obj);
                decide(
                    svc,
                    &ca,
                    Some(&LiveLeaf { summary: &summary, renewal, metadata_ok }),
                    &wanted_sans,
                    now,
                )
            }
            None => decide(svc, &ca, None, &wanted_sans, now),
        };
        let why = match decision {
            Decision::Keep => return Ok(Plan::Keep),
            Decision::Write(why) => why,
        };
        let bundle = ca.bundle_pem.clone().into_bytes();
        let content = if why.issues() {
            // A repaired Secret's key is never certified again: it may be
            // one someone else planted there.
            let reuse = (!svc.tls.rotate_key && !matches!(why, Why::Repaired(_)) && summary.damage.is_none())
                .then(|| data.get(KEY_FILE).and_then(|k| String::from_utf8(k.clone()).ok()))
                .flatten();
            let request = LeafRequest {
                dns_names: &names,
                spiffe_id: &spiffe,
                duration_seconds: svc.tls.duration_seconds,
                renew_before_seconds: svc.tls.renew_before_seconds,
                key_pem: reuse.as_deref(),
            };
            let leaf = issue(&ca.signer, &request, now, rand::random::<f64>())
                .map_err(|e| PrepareError::Compute { kind: "Secret", source: Box::new(e) })?;
            Content {
                data: BTreeMap::from([
                    (CERT_FILE.to_owned(), leaf.cert_pem.into_bytes()),
                    (KEY_FILE.to_owned(), leaf.key_pem.into_bytes()),
                    (CA_FILE.to_owned(), bundle),
                ]),
                info: leaf.info,
                why,
            }
        } else {
            let annotations = full.as_ref().map(|s| s.annotations().clone()).unwrap_or_default();
            let renewal = annotations
                .get(RENEWAL_ANNOTATION)
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or(summary.not_after - svc.tls.renew_before_seconds, jiff::Timestamp::as_second);
            let mut data = data;
            data.insert(CA_FILE.to_owned(), bundle);
            Content {
                data,
                info: LeafInfo {
                    serial: summary.serial.clone(),
                    not_before: summary.not_before,
                    not_after: summary.not_after,
                    renewal,
                    issuer_fingerprint: annotations.get(ISSUER_ANNOTATION).cloned().unwrap_or_else(|| {
                        ca.bundle
                            .iter()
                            .find(|c| c.key_id == summary.issuer_key_id)
                            .map_or_else(String::new, |c| c.fingerprint.clone())
                    }),
                },
                why,
            }
        };
        Ok(Plan::Write(Arc::new(content)))
    }
}

/// Whether the live Secret carries the operator's labels and owner.
fn metadata_ok(svc: &ValidatedService, live: &DynamicObject) -> bool {
    let labels = live.labels();
    object_labels(svc).iter().all(|(k, v)| labels.get(k) == Some(v))
        && owner_reference(svc).is_none_or(|o| live.owner_references().contains(&o))
}

fn annotations(info: &LeafInfo) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NOT_BEFORE_ANNOTATION.to_owned(), rfc3339(info.not_before)),
        (NOT_AFTER_ANNOTATION.to_owned(), rfc3339(info.not_after)),
        (RENEWAL_ANNOTATION.to_owned(), rfc3339(info.renewal)),
        (SERIAL_ANNOTATION.to_owned(), info.serial.clone()),
        (ISSUER_ANNOTATION.to_owned(), info.issuer_fingerprint.clone()),
    ])
}

/// The facts of the live Secret, from its annotations and summary.
fn live_info(live: &DynamicObject) -> Option<LeafInfo> {
    let summary = summary_of(live)?;
    if summary.damage.is_some() {
        return None;
    }
    let a = live.annotations();
    let time =
        |k: &str| a.get(k).and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(jiff::Timestamp::as_second);
    Some(LeafInfo {
        serial: summary.serial.clone(),
        not_before: summary.not_before,
        not_after: summary.not_after,
        renewal: time(RENEWAL_ANNOTATION).unwrap_or(summary.not_after),
        issuer_fingerprint: a.get(ISSUER_ANNOTATION).cloned().unwrap_or_default(),
    })
}

impl ChildKind for TlsSecretKind {
    fn kind(&self) -> &'static str {
        "Secret"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource::erase::<Secret>(&())
    }

    fn name(&self, svc: &ValidatedService) -> String {
        secret_name(&svc.name)
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.tls.operator_issued()
    }

    fn prepare<'a>(&'a self, cx: PrepareCx<'a>) -> BoxFuture<'a, Result<Option<Prepared>, PrepareError>> {
        Box::pin(async move {
            let plan = self.plan(&cx).await?;
            let peers = peers_for(&cx, &self.trust);
            Ok(Some(Arc::new(TlsPrepared { plan, peers }) as Prepared))
        })
    }

    fn contribute(&self, svc: &ValidatedService, observed: &ObservedChildren, workload: &mut Workload) {
        let peers = self.prepared(observed).and_then(|p| p.peers.as_ref());
        wiring(svc, &secret_name(&svc.name), peers, workload);
    }

    fn keep_live(&self, _svc: &ValidatedService, observed: &ObservedChildren) -> bool {
        matches!(self.prepared(observed).map(|p| &p.plan), Some(Plan::Keep | Plan::Hold { .. }))
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        let mut meta = child_meta(svc);
        meta.name = Some(secret_name(&svc.name));
        let engine = base64::engine::general_purpose::STANDARD;
        let (data, annotations) = match self.prepared(observed).map(|p| &p.plan) {
            Some(Plan::Write(content)) => (
                content.data.iter().map(|(k, v)| (k.clone(), Value::String(engine.encode(v)))).collect(),
                annotations(&content.info),
            ),
            // `render`, or a kind used without its prepare step: show the
            // shape of the Secret, never key material.
            _ => (
                [CERT_FILE, KEY_FILE, CA_FILE]
                    .into_iter()
                    .map(|k| (k.to_owned(), Value::String(REDACTED.to_owned())))
                    .collect::<serde_json::Map<String, Value>>(),
                BTreeMap::new(),
            ),
        };
        if !annotations.is_empty() {
            meta.annotations = Some(annotations);
        }
        let mut object = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "kubernetes.io/tls",
            "data": data,
        });
        // `to_value` of ObjectMeta keeps absent fields out; nothing else to do.
        if object["metadata"]["annotations"].is_null()
            && let Some(m) = object["metadata"].as_object_mut()
        {
            m.remove("annotations");
        }
        Ok(object)
    }

    // Secrets have no generation.
    fn change_marker(&self) -> ChangeMarker {
        ChangeMarker::ResourceVersion
    }

    /// The summary replaces the data: the cache never holds key material.
    fn slim(&self, obj: &mut DynamicObject) {
        let summary = summary_of(obj);
        super::slim_metadata(obj);
        super::store_kept(obj, summary.map_or(Value::Null, |s| json!({"summary": s})));
    }

    fn condition(&self) -> Option<ConditionRole> {
        Some(ConditionRole { type_: CERTIFICATE_READY, gates_ready: true })
    }

    fn verdict(
        &self,
        _svc: &ValidatedService,
        observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<Verdict> {
        let prepared = self.prepared(observed)?;
        if let Plan::Hold { reason, message } = &prepared.plan {
            return Some(Verdict::not_ok(reason, message.clone()));
        }
        if let Some(v) = prepared.peers.as_ref().and_then(Peers::unresolved_verdict) {
            return Some(v);
        }
        let info = match &prepared.plan {
            Plan::Write(c) => Some(c.info.clone()),
            _ => live.and_then(live_info),
        }?;
        Some(Verdict::ok(
            reason::ISSUED,
            format!(
                "certificate {} valid until {}, renewed at {}",
                info.serial,
                rfc3339(info.not_after),
                rfc3339(info.renewal)
            ),
        ))
    }

    fn status_field(
        &self,
        _svc: &ValidatedService,
        observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<(&'static str, Value)> {
        let info = match &self.prepared(observed)?.plan {
            Plan::Write(c) => Some(c.info.clone()),
            Plan::Redacted => None,
            _ => live.and_then(live_info),
        }?;
        Some((
            "certificate",
            json!({
                "notBefore": rfc3339(info.not_before),
                "notAfter": rfc3339(info.not_after),
                "renewalTime": rfc3339(info.renewal),
                "serialNumber": info.serial,
                "issuerFingerprint": info.issuer_fingerprint,
            }),
        ))
    }

    /// The renewal time, exactly (its jitter was chosen at issuance). None
    /// while the CA is unavailable: the CA's return triggers every object.
    fn requeue_after(
        &self,
        svc: &ValidatedService,
        observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<Duration> {
        let due = match &self.prepared(observed)?.plan {
            Plan::Write(c) => c.info.renewal,
            Plan::Keep => {
                let live = live?;
                let summary = summary_of(live)?;
                let info = live_info(live)?;
                match self.trust.state() {
                    CaState::Ready(ca) => renewal_due(svc, &ca, &summary, Some(info.renewal)),
                    _ => info.renewal,
                }
            }
            Plan::Hold { .. } | Plan::Redacted => return None,
        };
        let wait = due - jiff::Timestamp::now().as_second();
        Some(Duration::from_secs(u64::try_from(wait.max(1)).unwrap_or(1)))
    }

    fn record(
        &self,
        metrics: &Metrics,
        svc: &ValidatedService,
        observed: &ObservedChildren,
        live: Option<&DynamicObject>,
        written: bool,
    ) -> Vec<KindEvent> {
        let mut events = Vec::new();
        let Some(prepared) = self.prepared(observed) else { return events };
        let info = match &prepared.plan {
            Plan::Write(c) => Some(c.info.clone()),
            _ => live.and_then(live_info),
        };
        if let Some(info) = &info {
            metrics
                .certificate_expiration
                .with_label_values(&[&svc.namespace, &svc.name])
                .set(info.not_after);
        }
        if let (Plan::Write(c), true) = (&prepared.plan, written)
            && c.why.issues()
        {
            metrics.certificates_issued.with_label_values(&[c.why.label()]).inc();
        }
        // A new object's first certificate is no news (the status shows it,
        // and an Event is a write); every later one is.
        if let (Plan::Write(c), true) = (&prepared.plan, written)
            && c.why != Why::Issued
        {
            events.push(KindEvent {
                warning: matches!(c.why, Why::Repaired(_)),
                reason: if c.why.issues() { "CertificateIssued" } else { "CertificateUpdated" },
                note: format!(
                    "Certificate {} {}; valid until {}, renewed at {} (issuer {})",
                    c.info.serial,
                    c.why.sentence(),
                    rfc3339(c.info.not_after),
                    rfc3339(c.info.renewal),
                    short(&c.info.issuer_fingerprint)
                ),
            });
        }
        if let Some(peers) = &prepared.peers
            && peers.resolved != previous_resolution(observed)
        {
            for note in &peers.shared {
                events.push(KindEvent { warning: true, reason: "SharedIdentity", note: note.clone() });
            }
        }
        events
    }

    fn forget(&self, metrics: &Metrics, namespace: &str, name: &str) {
        let _ = metrics.certificate_expiration.remove_label_values(&[namespace, name]);
    }
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::authority::generate_root;
    use crate::pki::authority::tests::NOW;
    use crate::pki::inspect::san_digest;
    use crate::pki::trust::PkiSettings;
    use crate::reconcile::validate::tests::sample;
    use crate::reconcile::validate::{Origin, validate};

    fn ready(ca_validity: i64) -> (Authority, Trust) {
        let root = generate_root("cluster.local", ca_validity, NOW).expect("root");
        let material =
            crate::pki::authority::parse(&crate::pki::authority::tests::data_of(&root), NOW).expect("CA");
        let trust = Trust::offline(PkiSettings::default());
        (Authority::new(material, None, true), Arc::try_unwrap(trust).unwrap_or_else(|_| unreachable!()))
    }

    fn leaf(ca: &Authority, svc: &ValidatedService, now: i64) -> (LeafSummary, LeafInfo, String) {
        let names = dns_names(svc, "cluster.local");
        let id = format!("spiffe://cluster.local/ns/{}/sa/{}", svc.namespace, svc.service_account);
        let l = issue(
            &ca.signer,
            &LeafRequest {
                dns_names: &names,
                spiffe_id: &id,
                duration_seconds: svc.tls.duration_seconds,
                renew_before_seconds: svc.tls.renew_before_seconds,
                key_pem: None,
            },
            now,
            0.5,
        )
        .expect("leaf");
        let data = BTreeMap::from([
            (CERT_FILE.to_owned(), l.cert_pem.into_bytes()),
            (KEY_FILE.to_owned(), l.key_pem.into_bytes()),
            (CA_FILE.to_owned(), ca.bundle_pem.clone().into_bytes()),
        ]);
        (summarize(&data), l.info, san_digest(&names, &id))
    }

    fn decide_at(
        svc: &ValidatedService,
        ca: &Authority,
        s: &LeafSummary,
        info: &LeafInfo,
        sans: &str,
        now: i64,
    ) -> Decision {
        let live = LiveLeaf { summary: s, renewal: Some(info.renewal), metadata_ok: true };
        decide(svc, ca, Some(&live), sans, now)
    }

    #[test]
    fn a_current_leaf_is_kept_until_its_renewal_time_and_renewed_then() {
        let (ca, _) = ready(10 * 365 * 86_400);
        let svc = validate(&sample(), Origin::Cluster).expect("valid");
        let (s, info, sans) = leaf(&ca, &svc, NOW);
        assert_eq!(decide_at(&svc, &ca, &s, &info, &sans, NOW + 60), Decision::Keep);
        assert_eq!(decide_at(&svc, &ca, &s, &info, &sans, info.renewal - 1), Decision::Keep);
        assert_eq!(decide_at(&svc, &ca, &s, &info, &sans, info.renewal), Decision::Write(Why::Renewed));
        assert_eq!(decide_at(&svc, &ca, &s, &info, "other", NOW + 60), Decision::Write(Why::SansChanged));
    }

    #[test]
    fn a_leaf_cut_short_by_its_ca_is_renewed_at_two_thirds_of_its_life_not_in_a_loop() {
        // The CA has 5 days left; the spec asks for 30-day leaves renewed 10 days early.
        let (ca, _) = ready(5 * 86_400);
        let svc = validate(&sample(), Origin::Cluster).expect("valid");
        let now = NOW + 60;
        let (s, info, sans) = leaf(&ca, &svc, now);
        assert_eq!(s.not_after, ca.signer.cert.not_after, "cut at the CA's NotAfter");
        assert_eq!(decide_at(&svc, &ca, &s, &info, &sans, now + 1), Decision::Keep, "not due at once");
        let due = renewal_due(&svc, &ca, &s, Some(info.renewal));
        assert!(due > now + 3 * 86_400 - 3600, "two thirds of ~5 days: {}", due - now);
        assert_eq!(decide_at(&svc, &ca, &s, &info, &sans, due), Decision::Write(Why::Renewed));
    }

    #[test]
    fn a_leaf_of_another_ca_or_an_expired_one_is_repaired_and_a_stale_bundle_rebundled() {
        let (ca, _) = ready(10 * 365 * 86_400);
        let (other, _) = ready(10 * 365 * 86_400);
        let svc = validate(&sample(), Origin::Cluster).expect("valid");
        let (s, info, sans) = leaf(&other, &svc, NOW);
        assert!(matches!(
            decide_at(&svc, &ca, &s, &info, &sans, NOW + 60),
            Decision::Write(Why::Repaired(_))
        ));
        let (s, info, sans) = leaf(&ca, &svc, NOW);
        let expired = s.not_after + 1;
        assert!(matches!(decide_at(&svc, &ca, &s, &info, &sans, expired), Decision::Write(Why::Repaired(_))));
        let mut stale = s.clone();
        stale.bundle = "0".repeat(32);
        assert_eq!(decide_at(&svc, &ca, &stale, &info, &sans, NOW + 60), Decision::Write(Why::Rebundled));
    }

    #[test]
    fn an_unresolved_client_never_widens_the_list_even_with_a_tampered_annotation() {
        let (_, trust) = ready(86_400);
        let mut obj = sample();
        obj.spec.tls = Some(
            serde_json::from_value(
                serde_json::json!({"allowedClients": [{"name": "web"}, {"name": "gone"}]}),
            )
            .expect("tls"),
        );
        let svc = validate(&obj, Origin::Cluster).expect("valid");
        let none = |_: &str, _: &str| None;
        let empty = |_: &str| Vec::new();
        // Nothing resolved, nothing remembered: deny everyone.
        let p = resolve_peers(&svc, &trust, &none, &empty, &BTreeMap::new());
        assert_eq!(p.value, deny_all_peer("cluster.local"));
        assert_eq!(p.unresolved, ["shop/web", "shop/gone"]);
        // A remembered identity is kept; a widened one written into the
        // annotation by someone else is not believed.
        let previous = BTreeMap::from([
            ("shop/web".to_owned(), "spiffe://cluster.local/ns/shop/sa/web".to_owned()),
            ("shop/gone".to_owned(), "spiffe://cluster.local/ns/*/sa/*".to_owned()),
        ]);
        let p = resolve_peers(&svc, &trust, &none, &empty, &previous);
        assert_eq!(p.value, "spiffe://cluster.local/ns/shop/sa/web");
        let elsewhere =
            BTreeMap::from([("shop/web".to_owned(), "spiffe://cluster.local/ns/other/sa/web".to_owned())]);
        assert_eq!(
            resolve_peers(&svc, &trust, &none, &empty, &elsewhere).value,
            deny_all_peer("cluster.local")
        );
    }
}
