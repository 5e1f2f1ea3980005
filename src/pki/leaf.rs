//! Workload certificates: one ECDSA P-256 key and one certificate per
//! GrpcService that is both an X509-SVID (exactly one `spiffe://` URI SAN)
//! and a server certificate for the Service's DNS names.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use serde::{Deserialize, Serialize};

use super::authority::{BACKDATE_SECONDS, Signer};

/// What to issue.
#[derive(Clone, Debug)]
pub struct LeafRequest<'a> {
    /// DNS SANs, in order.
    pub dns_names: &'a [String],
    /// The one URI SAN.
    pub spiffe_id: &'a str,
    /// Requested lifetime from issuance.
    pub duration_seconds: i64,
    /// How long before NotAfter it is renewed.
    pub renew_before_seconds: i64,
    /// The key to certify again (PKCS#8 PEM), with `privateKeyRotation:
    /// Never`; `None` generates a new one.
    pub key_pem: Option<&'a str>,
}

/// Facts about an issued leaf, as annotations and status show them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeafInfo {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// NotBefore, Unix seconds.
    pub not_before: i64,
    /// NotAfter, Unix seconds.
    pub not_after: i64,
    /// When the operator renews it, Unix seconds.
    pub renewal: i64,
    /// SHA-256 fingerprint of the signing CA certificate.
    pub issuer_fingerprint: String,
}

/// A new certificate and its key.
pub struct IssuedLeaf {
    /// `tls.crt`: the leaf, then the signer's chain.
    pub cert_pem: String,
    /// `tls.key`: PKCS#8 PEM.
    pub key_pem: String,
    /// Its facts.
    pub info: LeafInfo,
}

impl std::fmt::Debug for IssuedLeaf {
    /// Without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLeaf").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Issuing failed. The message names the step, never key material.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The key to reuse does not parse.
    #[error("the existing private key cannot be reused: it does not parse as PKCS#8")]
    ReuseKey,
    /// A SAN is not IA5 (ASCII) text.
    #[error("{0:?} cannot be a subject alternative name")]
    San(String),
    /// rcgen failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Renewal time of a leaf valid until `not_after` that was issued at `now`
/// for `duration`: `not_after - renew_before`, made earlier by up to 10 % of
/// `renew_before` (`jitter` in `[0, 1)`), so that leaves issued together do
/// not renew together. Computed from NotAfter, never from the backdated
/// NotBefore, or a short certificate would renew in a loop.
///
/// When the CA's own expiry cut the leaf short, renewing before
/// `renew_before` would not help (the next leaf is cut at the same point),
/// so it renews at two thirds of what is left instead.
///
/// The jitter never takes more than half of the time between issuance and
/// `not_after - renew_before`: with `duration: 1h, renewBefore: 56m` that
/// time is 4 minutes, less than 10 % of 56 minutes, and an unbounded jitter
/// would put the renewal before the issuance.
pub fn renewal_time(now: i64, not_after: i64, duration: i64, renew_before: i64, jitter: f64) -> i64 {
    let jitter = jitter.clamp(0.0, 0.999_999);
    let planned = not_after - renew_before;
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    let early = ((jitter * (renew_before as f64) / 10.0) as i64).min(((planned - now) / 2).max(0));
    let renewal = planned - early;
    if not_after < now.saturating_add(duration) {
        renewal.max(now + (not_after - now) * 2 / 3)
    } else {
        renewal
    }
}

/// Issues a leaf signed by `signer` at `now` (Unix seconds).
pub fn issue(
    signer: &Signer,
    req: &LeafRequest<'_>,
    now: i64,
    jitter: f64,
) -> Result<IssuedLeaf, IssueError> {
    let key = match req.key_pem {
        Some(pem) => KeyPair::from_pem(pem).map_err(|_| IssueError::ReuseKey)?,
        None => {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| IssueError::Sign(e.to_string()))?
        }
    };
    let not_after = now.saturating_add(req.duration_seconds).min(signer.cert.not_after);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "grpc-operator");
    if let Some(first) = req.dns_names.first() {
        dn.push(DnType::CommonName, first.chars().take(64).collect::<String>());
    }
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = super::offset_time(now - BACKDATE_SECONDS);
    params.not_after = super::offset_time(not_after);
    let serial = super::random_serial().map_err(|_| IssueError::Sign("no randomness".into()))?;
    let serial_hex = super::hex(&serial.to_bytes());
    params.serial_number = Some(serial);
    let mut sans = Vec::with_capacity(req.dns_names.len() + 1);
    for name in req.dns_names {
        sans.push(SanType::DnsName(name.clone().try_into().map_err(|_| IssueError::San(name.clone()))?));
    }
    sans.push(SanType::URI(
        req.spiffe_id.to_owned().try_into().map_err(|_| IssueError::San(req.spiffe_id.into()))?,
    ));
    params.subject_alt_names = sans;
    let cert = params.signed_by(&key, signer.issuer()).map_err(|e| IssueError::Sign(e.to_string()))?;
    Ok(IssuedLeaf {
        cert_pem: format!("{}{}", super::certificate_pem(cert.der()), signer.chain_pem()),
        key_pem: key.serialize_pem(),
        info: LeafInfo {
            serial: serial_hex,
            not_before: now - BACKDATE_SECONDS,
            not_after,
            renewal: renewal_time(now, not_after, req.duration_seconds, req.renew_before_seconds, jitter),
            issuer_fingerprint: signer.cert.fingerprint.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::authority::tests::{NOW, root};
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn request<'a>(names: &'a [String]) -> LeafRequest<'a> {
        LeafRequest {
            dns_names: names,
            spiffe_id: "spiffe://cluster.local/ns/shop/sa/user-service",
            duration_seconds: 720 * 3600,
            renew_before_seconds: 240 * 3600,
            key_pem: None,
        }
    }

    #[test]
    fn a_leaf_is_an_svid_and_a_server_certificate_chained_to_the_ca() {
        let ca = root();
        let names = vec!["user-service".to_owned(), "user-service.shop.svc".to_owned()];
        let leaf = issue(&ca, &request(&names), NOW, 0.5).expect("issued");
        let der = crate::pki::pem_certificates(leaf.cert_pem.as_bytes()).expect("pem").remove(0);
        let (_, x509) = X509Certificate::from_der(&der).expect("parses");
        assert_eq!(x509.validity().not_before.timestamp(), NOW - 300);
        assert_eq!(x509.validity().not_after.timestamp(), NOW + 720 * 3600);
        assert_eq!(x509.tbs_certificate.raw_serial().len(), 16, "128-bit serial");
        assert!(!x509.basic_constraints().expect("ok").expect("present").value.ca);
        let ku = x509.key_usage().expect("ok").expect("present").value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.key_encipherment());
        let eku = x509.extended_key_usage().expect("ok").expect("present").value;
        assert!(eku.server_auth && eku.client_auth);
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        let mut aki = None;
        for ext in x509.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        match n {
                            GeneralName::URI(u) => uris.push((*u).to_owned()),
                            GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    aki = a.key_identifier.as_ref().map(|k| crate::pki::hex(k.0));
                }
                _ => {}
            }
        }
        assert_eq!(uris, ["spiffe://cluster.local/ns/shop/sa/user-service"]);
        assert_eq!(dns, names);
        assert_eq!(aki.as_deref(), Some(ca.cert.key_id.as_str()));
        assert!(
            x509.extensions()
                .iter()
                .any(|e| matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(_)))
        );
        assert!(
            x509.verify_signature(Some(
                &X509Certificate::from_der(&ca.cert.der).expect("ca").1.tbs_certificate.subject_pki
            ))
            .is_ok()
        );
        assert_eq!(leaf.info.issuer_fingerprint, ca.cert.fingerprint);
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn renewal_comes_before_not_after_minus_renew_before_by_at_most_a_tenth_of_it() {
        let (d, rb) = (3600, 56 * 60);
        let not_after = NOW + d;
        assert_eq!(renewal_time(NOW, not_after, d, rb, 0.0), not_after - rb);
        // 56 minutes of 60 before expiry: the jitter takes at most half of
        // the 4 minutes, so the renewal never comes before the issuance.
        assert_eq!(renewal_time(NOW, not_after, d, rb, 0.999_999), NOW + 120);
        let long = renewal_time(NOW, NOW + 720 * 3600, 720 * 3600, 240 * 3600, 0.999_999);
        assert_eq!(long, NOW + 480 * 3600 - 24 * 3600 + 1, "10 % of 240h, less a rounding second");
    }

    #[test]
    fn a_leaf_never_outlives_its_ca_and_then_renews_at_two_thirds_of_its_life() {
        let ca = crate::pki::authority::generate_root("cluster.local", 10 * 86_400, NOW).expect("root");
        let names = vec!["a".to_owned()];
        let leaf = issue(&ca, &request(&names), NOW, 0.0).expect("issued");
        assert_eq!(leaf.info.not_after, ca.cert.not_after);
        assert_eq!(leaf.info.renewal, NOW + (ca.cert.not_after - NOW) * 2 / 3);
    }

    #[test]
    fn never_rotation_certifies_the_same_key_again() {
        let ca = root();
        let names = vec!["a".to_owned()];
        let first = issue(&ca, &request(&names), NOW, 0.0).expect("issued");
        let again =
            issue(&ca, &LeafRequest { key_pem: Some(&first.key_pem), ..request(&names) }, NOW + 10, 0.0)
                .expect("re-issued");
        assert_eq!(first.key_pem, again.key_pem);
        assert_ne!(first.info.serial, again.info.serial);
        let fresh = issue(&ca, &request(&names), NOW + 20, 0.0).expect("issued");
        assert_ne!(first.key_pem, fresh.key_pem);
    }
}
