//! Reading a workload certificate Secret back: what a renewal decision needs,
//! in a few dozen bytes, so that the controller's cache of Secrets never
//! holds a private key (see `children::tls_secret`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use grpc_contract::tls::{CA_FILE, CERT_FILE, KEY_FILE};

/// What is wrong with a leaf Secret. Bounded; used as a reason in Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
pub enum Damage {
    /// `tls.crt` missing or empty.
    #[error("tls.crt is missing")]
    MissingCertificate,
    /// `tls.key` missing or empty.
    #[error("tls.key is missing")]
    MissingKey,
    /// `ca.crt` missing or empty.
    #[error("ca.crt is missing")]
    MissingBundle,
    /// Something does not parse.
    #[error("the certificate or key does not parse")]
    Unparsable,
    /// The key is not the certificate's.
    #[error("tls.key does not belong to tls.crt")]
    KeyMismatch,
}

/// The facts of a leaf Secret the controller keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeafSummary {
    /// Why it cannot be served as is, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damage: Option<Damage>,
    /// Serial, hex.
    #[serde(default)]
    pub serial: String,
    /// NotBefore, Unix seconds.
    #[serde(default)]
    pub not_before: i64,
    /// NotAfter, Unix seconds.
    #[serde(default)]
    pub not_after: i64,
    /// Authority key identifier, hex: which CA signed it.
    #[serde(default)]
    pub issuer_key_id: String,
    /// Digest of its SANs ([`san_digest`]).
    #[serde(default)]
    pub sans: String,
    /// SHA-256 of `ca.crt`, hex.
    #[serde(default)]
    pub bundle: String,
    /// SHA-256 of the public key, hex: tells a new key from a re-certified one.
    #[serde(default)]
    pub key: String,
}

/// A digest of a SAN list, as the controller wants it and as a certificate
/// has it: DNS names in order, then the URI.
pub fn san_digest(dns_names: &[String], uri: &str) -> String {
    let mut text = String::new();
    for n in dns_names {
        text.push_str("dns:");
        text.push_str(n);
        text.push('\n');
    }
    text.push_str("uri:");
    text.push_str(uri);
    super::sha256_hex(text.as_bytes())[..32].to_owned()
}

/// SHA-256 of a trust bundle's bytes, hex.
pub fn bundle_digest(pem: &[u8]) -> String {
    super::sha256_hex(pem)[..32].to_owned()
}

/// Reads the data of a leaf Secret.
pub fn summarize(data: &BTreeMap<String, Vec<u8>>) -> LeafSummary {
    let mut s = LeafSummary {
        damage: None,
        serial: String::new(),
        not_before: 0,
        not_after: 0,
        issuer_key_id: String::new(),
        sans: String::new(),
        bundle: String::new(),
        key: String::new(),
    };
    let get = |k: &str| data.get(k).map(Vec::as_slice).filter(|b| !b.is_empty());
    let (Some(cert), Some(key)) = (get(CERT_FILE), get(KEY_FILE)) else {
        s.damage =
            Some(if get(CERT_FILE).is_none() { Damage::MissingCertificate } else { Damage::MissingKey });
        return s;
    };
    match get(CA_FILE) {
        Some(bundle) => s.bundle = bundle_digest(bundle),
        None => s.damage = Some(Damage::MissingBundle),
    }
    let Some(der) = super::pem_certificates(cert).ok().and_then(|v| v.into_iter().next()) else {
        s.damage = Some(Damage::Unparsable);
        return s;
    };
    let Ok((_, x509)) = X509Certificate::from_der(&der) else {
        s.damage = Some(Damage::Unparsable);
        return s;
    };
    s.serial = super::hex(x509.tbs_certificate.raw_serial());
    s.not_before = super::unix(&x509.validity().not_before);
    s.not_after = super::unix(&x509.validity().not_after);
    let (mut dns, mut uri) = (Vec::new(), String::new());
    for ext in x509.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                if let Some(k) = &a.key_identifier {
                    s.issuer_key_id = super::hex(k.0);
                }
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                        GeneralName::URI(u) => uri = (*u).to_owned(),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    s.sans = san_digest(&dns, &uri);
    let public = x509.tbs_certificate.subject_pki.subject_public_key.data.as_ref();
    s.key = super::sha256_hex(public)[..32].to_owned();
    let key_ok = std::str::from_utf8(key)
        .ok()
        .and_then(|text| rcgen::KeyPair::from_pem(text).ok())
        .map(|k| rcgen::PublicKeyData::der_bytes(&k) == public);
    match key_ok {
        None => s.damage = Some(Damage::Unparsable),
        Some(false) => s.damage = Some(Damage::KeyMismatch),
        Some(true) => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::authority::tests::{NOW, root};
    use crate::pki::leaf::{LeafRequest, issue};

    fn secret(names: &[String]) -> (BTreeMap<String, Vec<u8>>, crate::pki::leaf::IssuedLeaf) {
        let ca = root();
        let leaf = issue(
            &ca,
            &LeafRequest {
                dns_names: names,
                spiffe_id: "spiffe://cluster.local/ns/a/sa/b",
                duration_seconds: 3600,
                renew_before_seconds: 1200,
                key_pem: None,
            },
            NOW,
            0.0,
        )
        .expect("issued");
        let data = BTreeMap::from([
            (CERT_FILE.to_owned(), leaf.cert_pem.clone().into_bytes()),
            (KEY_FILE.to_owned(), leaf.key_pem.clone().into_bytes()),
            (CA_FILE.to_owned(), ca.cert.pem().into_bytes()),
        ]);
        (data, leaf)
    }

    #[test]
    fn a_fresh_leaf_secret_summarizes_to_its_facts() {
        let names = vec!["a".to_owned(), "a.b.svc".to_owned()];
        let (data, leaf) = secret(&names);
        let s = summarize(&data);
        assert_eq!(s.damage, None);
        assert_eq!(s.serial, leaf.info.serial);
        assert_eq!(s.not_after, leaf.info.not_after);
        assert_eq!(s.sans, san_digest(&names, "spiffe://cluster.local/ns/a/sa/b"));
        assert_eq!(s.bundle, bundle_digest(&data[CA_FILE]));
        assert!(!serde_json::to_string(&s).expect("json").contains("PRIVATE"));
    }

    #[test]
    fn damage_is_named() {
        let names = vec!["a".to_owned()];
        let (data, _) = secret(&names);
        let (other, _) = secret(&names);
        let mut no_key = data.clone();
        no_key.remove(KEY_FILE);
        assert_eq!(summarize(&no_key).damage, Some(Damage::MissingKey));
        let mut mismatched = data.clone();
        mismatched.insert(KEY_FILE.into(), other[KEY_FILE].clone());
        assert_eq!(summarize(&mismatched).damage, Some(Damage::KeyMismatch));
        let mut no_bundle = data.clone();
        no_bundle.remove(CA_FILE);
        assert_eq!(summarize(&no_bundle).damage, Some(Damage::MissingBundle));
        let mut garbage = data;
        garbage.insert(CERT_FILE.into(), b"not pem".to_vec());
        assert_eq!(summarize(&garbage).damage, Some(Damage::Unparsable));
    }
}
