//! The CA Secret: reading it into a signer and a trust bundle, and creating
//! a new self-signed root.
//!
//! Layout of the Secret (`kubernetes.io/tls`):
//! - `tls.crt`: the signing CA certificate, then any intermediates up to a
//!   root (a user-provided intermediate CA);
//! - `tls.key`: its private key, PKCS#8 PEM;
//! - `ca.crt` (optional): the trust bundle published to every workload.
//!   Without it, the last certificate of `tls.crt` is the bundle;
//! - `next.crt` / `next.key`: the new root while a rotation publishes it
//!   (written only by the operator; see `super::trust`).

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{pem_certificates, sha256_hex, unix};

/// Key of the signing certificate (and chain).
pub const CERT_KEY: &str = "tls.crt";
/// Key of the signing key.
pub const KEY_KEY: &str = "tls.key";
/// Key of the trust bundle.
pub const BUNDLE_KEY: &str = "ca.crt";
/// Key of the next root's certificate during a rotation.
pub const NEXT_CERT_KEY: &str = "next.crt";
/// Key of the next root's key during a rotation.
pub const NEXT_KEY_KEY: &str = "next.key";

/// Clock skew allowance: certificates start this long before they are made.
pub const BACKDATE_SECONDS: i64 = 5 * 60;

/// One CA certificate, as the operator reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaCert {
    /// DER.
    pub der: Vec<u8>,
    /// SHA-256 of the DER, hex: the issuer fingerprint of annotations and status.
    pub fingerprint: String,
    /// Subject key identifier, hex; a leaf's authority key identifier names it.
    pub key_id: String,
    /// NotBefore, Unix seconds.
    pub not_before: i64,
    /// NotAfter, Unix seconds.
    pub not_after: i64,
}

impl CaCert {
    /// Reads one certificate.
    pub fn parse(der: Vec<u8>) -> Result<(Self, bool), CaProblem> {
        let (_, x509) = X509Certificate::from_der(&der).map_err(|_| CaProblem::Unparsable)?;
        let is_ca = x509.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        let key_id = x509
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(super::hex(k.0)),
                _ => None,
            })
            // RFC 7093 method 1, as rcgen computes it, when the CA has no SKI.
            .unwrap_or_else(|| {
                let spki = x509.tbs_certificate.subject_pki.raw;
                super::hex(&ring::digest::digest(&ring::digest::SHA256, spki).as_ref()[..20])
            });
        let cert = Self {
            fingerprint: sha256_hex(&der),
            key_id,
            not_before: unix(&x509.validity().not_before),
            not_after: unix(&x509.validity().not_after),
            der,
        };
        Ok((cert, is_ca))
    }

    /// PEM.
    pub fn pem(&self) -> String {
        super::certificate_pem(&self.der)
    }
}

/// A CA that signs leaves.
pub struct Signer {
    /// Its certificate.
    pub cert: CaCert,
    /// Certificates from it up to a root, excluding it (a user's intermediate).
    pub chain: Vec<Vec<u8>>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Signer {
    /// Without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("cert", &self.cert.fingerprint).finish_non_exhaustive()
    }
}

impl Signer {
    /// The rcgen issuer.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The signing key as PKCS#8 PEM (only ever written to the CA Secret).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// `tls.crt` of a leaf it signs: the chain after the leaf.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|der| super::certificate_pem(der)).collect()
    }
}

/// What the CA Secret holds.
#[derive(Debug)]
pub struct CaMaterial {
    /// The signing CA.
    pub signer: Signer,
    /// The trust bundle, in order.
    pub bundle: Vec<CaCert>,
    /// The next root, during a rotation.
    pub next: Option<Signer>,
}

/// Why a CA Secret is unusable. Bounded and free of key material: it ends
/// up in status conditions and Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaProblem {
    /// `tls.crt` is missing or empty.
    #[error("tls.crt is missing")]
    MissingCertificate,
    /// `tls.key` is missing or empty.
    #[error("tls.key is missing")]
    MissingKey,
    /// A certificate does not parse.
    #[error("a certificate does not parse as PEM X.509")]
    Unparsable,
    /// The key does not parse as a PKCS#8 ECDSA, Ed25519 or RSA key.
    #[error("tls.key does not parse as a PKCS#8 private key")]
    UnparsableKey,
    /// `tls.crt` is not a CA certificate.
    #[error("tls.crt is not a CA certificate (basicConstraints CA:TRUE)")]
    NotCa,
    /// The key is not the certificate's.
    #[error("tls.key does not belong to tls.crt")]
    KeyMismatch,
    /// The CA certificate has expired.
    #[error("the CA certificate has expired")]
    Expired,
    /// `ca.crt` does not contain the signing CA's root.
    #[error("ca.crt does not contain the CA that signs (or the root of its chain)")]
    NotInBundle,
    /// `next.crt`/`next.key` (a rotation in progress) are unusable.
    #[error("the next root of the rotation in progress (next.crt, next.key) is unusable")]
    BadNext,
}

impl CaProblem {
    /// Bounded label for metrics.
    pub fn category(self) -> &'static str {
        match self {
            Self::MissingCertificate | Self::MissingKey => "missing",
            Self::Unparsable | Self::UnparsableKey => "unparsable",
            Self::NotCa => "not_ca",
            Self::KeyMismatch => "key_mismatch",
            Self::Expired => "expired",
            Self::NotInBundle => "not_in_bundle",
            Self::BadNext => "bad_next",
        }
    }
}

fn signer(cert_pem: Option<&[u8]>, key_pem: Option<&[u8]>, now: i64) -> Result<Signer, CaProblem> {
    let cert_pem = cert_pem.filter(|b| !b.is_empty()).ok_or(CaProblem::MissingCertificate)?;
    let key_pem = key_pem.filter(|b| !b.is_empty()).ok_or(CaProblem::MissingKey)?;
    let mut ders = pem_certificates(cert_pem).map_err(|_| CaProblem::Unparsable)?.into_iter();
    let first = ders.next().ok_or(CaProblem::Unparsable)?;
    let chain: Vec<Vec<u8>> = ders.collect();
    let (cert, is_ca) = CaCert::parse(first)?;
    if !is_ca {
        return Err(CaProblem::NotCa);
    }
    if cert.not_after <= now {
        return Err(CaProblem::Expired);
    }
    let key_text = std::str::from_utf8(key_pem).map_err(|_| CaProblem::UnparsableKey)?;
    let key = KeyPair::from_pem(key_text).map_err(|_| CaProblem::UnparsableKey)?;
    let (_, x509) = X509Certificate::from_der(&cert.der).map_err(|_| CaProblem::Unparsable)?;
    if rcgen::PublicKeyData::der_bytes(&key)
        != x509.tbs_certificate.subject_pki.subject_public_key.data.as_ref()
    {
        return Err(CaProblem::KeyMismatch);
    }
    let issuer =
        Issuer::from_ca_cert_der(&cert.der.clone().into(), key).map_err(|_| CaProblem::Unparsable)?;
    Ok(Signer { cert, chain, issuer })
}

/// Reads the data of a CA Secret, checked at `now` (Unix seconds).
pub fn parse(data: &BTreeMap<String, Vec<u8>>, now: i64) -> Result<CaMaterial, CaProblem> {
    let get = |k: &str| data.get(k).map(Vec::as_slice);
    let signer = signer(get(CERT_KEY), get(KEY_KEY), now)?;
    let bundle_ders = match get(BUNDLE_KEY).filter(|b| !b.is_empty()) {
        Some(pem) => pem_certificates(pem).map_err(|_| CaProblem::Unparsable)?,
        None => vec![signer.chain.last().cloned().unwrap_or_else(|| signer.cert.der.clone())],
    };
    let mut bundle = Vec::with_capacity(bundle_ders.len());
    for der in bundle_ders {
        bundle.push(CaCert::parse(der)?.0);
    }
    // The certificate the bundle must hold: the signer's root (the end of
    // its chain), or the signer itself.
    let anchor = match signer.chain.last() {
        Some(der) => CaCert::parse(der.clone())?.0,
        None => signer.cert.clone(),
    };
    if !bundle.iter().any(|c| c.fingerprint == anchor.fingerprint) {
        return Err(CaProblem::NotInBundle);
    }
    let next = match (get(NEXT_CERT_KEY), get(NEXT_KEY_KEY)) {
        (None, None) => None,
        (cert, key) => Some(signer_or(cert, key, now)?),
    };
    Ok(CaMaterial { signer, bundle, next })
}

fn signer_or(cert: Option<&[u8]>, key: Option<&[u8]>, now: i64) -> Result<Signer, CaProblem> {
    signer(cert, key, now).map_err(|_| CaProblem::BadNext)
}

/// Creating a root failed (rcgen or the system RNG).
#[derive(Debug, thiserror::Error)]
#[error("failed to create a CA certificate: {0}")]
pub struct GenerateError(String);

/// A new self-signed ECDSA P-256 root for `trust_domain`, valid from
/// `now - 5 min` for `validity_seconds`.
pub fn generate_root(trust_domain: &str, validity_seconds: i64, now: i64) -> Result<Signer, GenerateError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| GenerateError(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "grpc-operator");
    dn.push(DnType::CommonName, format!("grpc-operator root CA {trust_domain} {}", super::rfc3339(now)));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = super::offset_time(now - BACKDATE_SECONDS);
    params.not_after = super::offset_time(now.saturating_add(validity_seconds));
    params.serial_number = Some(super::random_serial().map_err(|_| GenerateError("no randomness".into()))?);
    let cert = params.self_signed(&key).map_err(|e| GenerateError(e.to_string()))?;
    let der = cert.der().to_vec();
    let (ca, _) = CaCert::parse(der.clone()).map_err(|e| GenerateError(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_der(&der.into(), key).map_err(|e| GenerateError(e.to_string()))?;
    Ok(Signer { cert: ca, chain: Vec::new(), issuer })
}

/// The data of a CA Secret holding `signer`, `bundle` and, during a
/// rotation, `next`.
pub fn secret_data(signer: &Signer, bundle: &[CaCert], next: Option<&Signer>) -> BTreeMap<String, Vec<u8>> {
    let mut data = BTreeMap::new();
    data.insert(CERT_KEY.to_owned(), format!("{}{}", signer.cert.pem(), signer.chain_pem()).into_bytes());
    data.insert(KEY_KEY.to_owned(), signer.key_pem().into_bytes());
    data.insert(BUNDLE_KEY.to_owned(), bundle.iter().map(CaCert::pem).collect::<String>().into_bytes());
    if let Some(next) = next {
        data.insert(NEXT_CERT_KEY.to_owned(), next.cert.pem().into_bytes());
        data.insert(NEXT_KEY_KEY.to_owned(), next.key_pem().into_bytes());
    }
    data
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const NOW: i64 = 1_800_000_000;

    pub(crate) fn root() -> Signer {
        generate_root("cluster.local", 10 * 365 * 86_400, NOW).expect("root")
    }

    pub(crate) fn data_of(signer: &Signer) -> BTreeMap<String, Vec<u8>> {
        secret_data(signer, std::slice::from_ref(&signer.cert), None)
    }

    #[test]
    fn a_generated_root_reads_back_as_the_same_ca() {
        let root = root();
        let material = parse(&data_of(&root), NOW).expect("valid");
        assert_eq!(material.signer.cert, root.cert);
        assert_eq!(material.bundle, vec![root.cert.clone()]);
        assert!(material.next.is_none());
        assert_eq!(root.cert.not_before, NOW - BACKDATE_SECONDS);
        assert_eq!(root.cert.not_after, NOW + 10 * 365 * 86_400);
        assert_eq!(root.cert.key_id.len(), 40, "a 160-bit SKI");
    }

    #[test]
    fn a_ca_secret_without_a_bundle_trusts_the_signer() {
        let root = root();
        let mut data = data_of(&root);
        data.remove(BUNDLE_KEY);
        assert_eq!(parse(&data, NOW).expect("valid").bundle, vec![root.cert.clone()]);
    }

    #[test]
    fn damaged_ca_secrets_are_named_problems() {
        let root = root();
        let other = generate_root("cluster.local", 86_400, NOW).expect("root");
        type Damage = Box<dyn Fn(&mut BTreeMap<String, Vec<u8>>)>;
        let cases: Vec<(&str, Damage, CaProblem)> = vec![
            ("no key", Box::new(|d| drop(d.remove(KEY_KEY))), CaProblem::MissingKey),
            ("no cert", Box::new(|d| drop(d.remove(CERT_KEY))), CaProblem::MissingCertificate),
            (
                "garbage cert",
                Box::new(|d| drop(d.insert(CERT_KEY.into(), b"junk".to_vec()))),
                CaProblem::Unparsable,
            ),
            (
                "garbage key",
                Box::new(|d| {
                    drop(d.insert(
                        KEY_KEY.into(),
                        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
                    ))
                }),
                CaProblem::UnparsableKey,
            ),
            (
                "other key",
                Box::new(move |d| drop(d.insert(KEY_KEY.into(), other.key_pem().into_bytes()))),
                CaProblem::KeyMismatch,
            ),
        ];
        for (what, damage, problem) in cases {
            let mut data = data_of(&root);
            damage(&mut data);
            assert_eq!(parse(&data, NOW).map(|_| ()).expect_err(what), problem, "{what}");
        }
        assert_eq!(parse(&data_of(&root), NOW + 11 * 365 * 86_400).map(|_| ()), Err(CaProblem::Expired));
        let third = generate_root("cluster.local", 86_400, NOW).expect("root");
        let mut data = data_of(&root);
        data.insert(BUNDLE_KEY.into(), third.cert.pem().into_bytes());
        assert_eq!(parse(&data, NOW).map(|_| ()), Err(CaProblem::NotInBundle));
    }

    #[test]
    fn problems_never_carry_key_material() {
        for p in [CaProblem::KeyMismatch, CaProblem::UnparsableKey, CaProblem::BadNext] {
            assert!(!p.to_string().contains("BEGIN"), "{p}");
        }
    }
}
