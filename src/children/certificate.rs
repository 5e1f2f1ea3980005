//! A cert-manager `Certificate` (cert-manager.io/v1), when `spec.tls.issuerRef`
//! names an issuer: cert-manager issues and renews the `<name>-tls` Secret
//! (same DNS names, the SPIFFE ID in `uris`), and the operator mounts it
//! exactly as its own. An optional kind: without cert-manager's CRDs,
//! `CertificateReady` says `CRDNotInstalled`.
//!
//! cert-manager does not reload workloads and has no CA rotation with
//! overlapping trust; the runtime's file reload covers the first, and the
//! issuer's own CA handling the second (docs/tls.md).

use std::sync::Arc;

use futures::future::BoxFuture;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use super::labels::child_meta;
use super::tls_secret::{CERTIFICATE_READY, Peers, dns_names, peers_for, secret_name, wiring};
use super::{
    BuildError, ChildKind, ConditionRole, ObservedChildren, PrepareCx, PrepareError, Prepared, Workload,
};
use crate::api::IssuerKind;
use crate::pki::trust::Trust;
use crate::reconcile::status::{Verdict, reason};
use crate::reconcile::validate::ValidatedService;

/// API group of cert-manager.
pub const GROUP: &str = "cert-manager.io";

/// The cert-manager Certificate kind.
pub struct CertificateKind {
    trust: Arc<Trust>,
}

impl CertificateKind {
    /// With the operator's PKI settings (trust and cluster domains).
    pub fn new(trust: Arc<Trust>) -> Self {
        Self { trust }
    }
}

/// What the Certificate kind prepared: `GRPC_ALLOWED_PEERS`.
#[derive(Clone, Debug)]
pub struct CertificatePrepared {
    /// Resolved peers (mode `mutual` only).
    pub peers: Option<Peers>,
}

/// A cert-manager duration: hours and minutes (`720h0m`).
fn go_duration(seconds: i64) -> String {
    format!("{}h{}m", seconds / 3600, (seconds % 3600) / 60)
}

impl ChildKind for CertificateKind {
    fn kind(&self) -> &'static str {
        "Certificate"
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: GROUP.to_owned(),
            version: "v1".to_owned(),
            api_version: format!("{GROUP}/v1"),
            kind: "Certificate".to_owned(),
            plural: "certificates".to_owned(),
        }
    }

    fn optional(&self) -> bool {
        true
    }

    fn wanted(&self, svc: &ValidatedService) -> bool {
        svc.tls.enabled() && svc.tls.issuer_ref.is_some()
    }

    fn prepare<'a>(&'a self, cx: PrepareCx<'a>) -> BoxFuture<'a, Result<Option<Prepared>, PrepareError>> {
        Box::pin(async move {
            let peers = peers_for(&cx, &self.trust);
            Ok(Some(Arc::new(CertificatePrepared { peers }) as Prepared))
        })
    }

    fn contribute(&self, svc: &ValidatedService, observed: &ObservedChildren, workload: &mut Workload) {
        let peers = observed.prepared::<CertificatePrepared>(self.kind()).and_then(|p| p.peers.as_ref());
        wiring(svc, &secret_name(&svc.name), peers, workload);
    }

    fn build(
        &self,
        svc: &ValidatedService,
        _workload: &Workload,
        _observed: &ObservedChildren,
    ) -> Result<Value, BuildError> {
        let issuer = svc.tls.issuer_ref.clone().unwrap_or(crate::api::IssuerRef {
            name: String::new(),
            kind: None,
            group: None,
        });
        let kind = match issuer.kind.unwrap_or(IssuerKind::Issuer) {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        };
        let rotation = if svc.tls.rotate_key { "Always" } else { "Never" };
        Ok(json!({
            "apiVersion": format!("{GROUP}/v1"),
            "kind": "Certificate",
            "metadata": child_meta(svc),
            "spec": {
                "secretName": secret_name(&svc.name),
                "duration": go_duration(svc.tls.duration_seconds),
                "renewBefore": go_duration(svc.tls.renew_before_seconds),
                "dnsNames": dns_names(svc, &self.trust.settings.cluster_domain),
                "uris": [self.trust.spiffe_id(&svc.namespace, &svc.service_account)],
                "usages": ["digital signature", "server auth", "client auth"],
                "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": rotation},
                "issuerRef": {
                    "name": issuer.name,
                    "kind": kind,
                    "group": issuer.group.unwrap_or_else(|| GROUP.to_owned()),
                },
            },
        }))
    }

    fn cache_keeps(&self) -> &'static [&'static str] {
        &["/status/conditions", "/status/notBefore", "/status/notAfter", "/status/renewalTime"]
    }

    // Not gating on its own account (its CRD may be absent, see
    // `ConditionRole`). The condition type is the TLS Secret kind's, which
    // gates `Ready`, so `Ready` follows the Certificate too: with `issuerRef`
    // the pods cannot start before cert-manager writes the Secret anyway.
    fn condition(&self) -> Option<ConditionRole> {
        Some(ConditionRole { type_: CERTIFICATE_READY, gates_ready: false })
    }

    fn verdict(
        &self,
        _svc: &ValidatedService,
        observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<Verdict> {
        if let Some(v) = observed
            .prepared::<CertificatePrepared>(self.kind())
            .and_then(|p| p.peers.as_ref())
            .and_then(Peers::unresolved_verdict)
        {
            return Some(v);
        }
        let kept = super::kept(live?);
        let ready = kept
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned();
        Some(match ready {
            Some(c) if c["status"] == "True" => Verdict::ok(
                reason::ISSUED,
                format!(
                    "cert-manager issued the certificate; valid until {}",
                    kept.pointer("/status/notAfter").and_then(Value::as_str).unwrap_or("?")
                ),
            ),
            Some(c) => Verdict::not_ok(
                reason::CERTIFICATE_PENDING,
                format!(
                    "cert-manager: {}: {}",
                    c["reason"].as_str().unwrap_or("NotReady"),
                    c["message"].as_str().unwrap_or("")
                ),
            ),
            None => Verdict::not_ok(
                reason::CERTIFICATE_PENDING,
                "cert-manager has not issued the certificate yet",
            ),
        })
    }

    /// The expiry gauge, from the Certificate's status (cert-manager's own
    /// `certmanager_certificate_expiration_timestamp_seconds` says the same
    /// where cert-manager is scraped).
    fn record(
        &self,
        metrics: &crate::metrics::Metrics,
        svc: &ValidatedService,
        _observed: &ObservedChildren,
        live: Option<&DynamicObject>,
        _written: bool,
    ) -> Vec<super::KindEvent> {
        let not_after = live
            .map(super::kept)
            .and_then(|k| k.pointer("/status/notAfter").and_then(Value::as_str).map(str::to_owned))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if let Some(t) = not_after {
            metrics.certificate_expiration.with_label_values(&[&svc.namespace, &svc.name]).set(t.as_second());
        }
        Vec::new()
    }

    fn forget(&self, metrics: &crate::metrics::Metrics, namespace: &str, name: &str) {
        let _ = metrics.certificate_expiration.remove_label_values(&[namespace, name]);
    }

    fn status_field(
        &self,
        _svc: &ValidatedService,
        _observed: &ObservedChildren,
        live: Option<&DynamicObject>,
    ) -> Option<(&'static str, Value)> {
        let kept = super::kept(live?);
        let status = kept.get("status")?;
        Some((
            "certificate",
            json!({
                "notBefore": status.get("notBefore"),
                "notAfter": status.get("notAfter"),
                "renewalTime": status.get("renewalTime"),
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::children::tests::build;
    use crate::reconcile::validate::tests::sample;

    #[test]
    fn certificate_matches_snapshot() {
        let mut obj = sample();
        obj.spec.tls = Some(
            serde_json::from_value(serde_json::json!({
                "issuerRef": {"name": "company-ca", "kind": "ClusterIssuer"},
                "duration": "2160h", "dnsNames": ["users.example.com"]
            }))
            .expect("tls"),
        );
        insta::assert_yaml_snapshot!(build(&obj, "Certificate").expect("wanted"));
        assert_eq!(build(&obj, "Secret"), None, "cert-manager writes the Secret");
        assert_eq!(build(&sample(), "Certificate"), None, "the operator's CA by default");
    }
}
