//! The identity of a mutual-TLS peer and what the server knows about a connection.

use std::net::SocketAddr;
use std::sync::Arc;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Identity of an authenticated mTLS peer, parsed once per connection from the leaf certificate.
///
/// It is only ever built from a certificate that rustls has already verified against `ca.crt`,
/// that carries the `clientAuth` extended key usage and, when it names a SPIFFE ID, that is a
/// valid X509-SVID; authorization code may trust its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    spiffe_id: Option<String>,
    dns_names: Vec<String>,
    subject: String,
}

/// Why a verified client certificate is still refused as an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdentityError {
    /// Not parseable X.509 (rustls accepted it, so this is rare).
    #[error("the client certificate cannot be parsed: {0}")]
    Parse(String),
    /// No extended key usage, or one without `clientAuth`.
    #[error("the client certificate lacks the clientAuth extended key usage")]
    NotForClientAuth,
    /// A `spiffe://` URI SAN, but not a valid X509-SVID.
    #[error("the client certificate is not a valid X509-SVID: {0}")]
    NotAnSvid(&'static str),
}

impl PeerIdentity {
    /// The SPIFFE ID (the X509-SVID's one URI SAN), if the certificate has one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.spiffe_id.as_deref()
    }

    /// The DNS subject alternative names.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// RFC 4514-like rendering of the subject, e.g. `CN=client, O=example`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    #[cfg(test)]
    pub(crate) fn for_tests(spiffe_id: Option<&str>, dns_names: &[&str], subject: &str) -> Self {
        PeerIdentity {
            spiffe_id: spiffe_id.map(str::to_string),
            dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
            subject: subject.to_string(),
        }
    }

    /// Parses and checks the identity of a client's leaf certificate:
    /// - it must carry the `clientAuth` extended key usage (a server certificate, or one with no
    ///   EKU at all, is not a client credential);
    /// - a certificate with a `spiffe://` URI SAN must be a valid X509-SVID: exactly one URI SAN,
    ///   a valid SPIFFE ID, not a CA and not allowed to sign certificates.
    pub(crate) fn from_client_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let eku = cert.extended_key_usage().map_err(|e| IdentityError::Parse(e.to_string()))?;
        if !eku.is_some_and(|e| e.value.client_auth) {
            return Err(IdentityError::NotForClientAuth);
        }
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Some(san) = cert.subject_alternative_name().map_err(|e| IdentityError::Parse(e.to_string()))? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        let spiffe_id = if uris
            .iter()
            .any(|u| u.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("spiffe://")))
        {
            if uris.len() != 1 {
                return Err(IdentityError::NotAnSvid("an X509-SVID has exactly one URI SAN"));
            }
            let id = uris.remove(0);
            grpc_contract::spiffe::check_id(&id).map_err(|e| IdentityError::NotAnSvid(e.reason()))?;
            let constraints = cert.basic_constraints().map_err(|e| IdentityError::Parse(e.to_string()))?;
            if constraints.is_some_and(|c| c.value.ca) {
                return Err(IdentityError::NotAnSvid("a leaf X509-SVID must not be a CA"));
            }
            let usage = cert.key_usage().map_err(|e| IdentityError::Parse(e.to_string()))?;
            if usage.is_some_and(|u| u.value.key_cert_sign() || u.value.crl_sign()) {
                return Err(IdentityError::NotAnSvid("a leaf X509-SVID must not sign certificates or CRLs"));
            }
            Some(id)
        } else {
            None
        };
        Ok(PeerIdentity { spiffe_id, dns_names, subject: cert.subject().to_string() })
    }
}

/// What tonic inserts into every request's extensions for connections we accept (our
/// [`tonic::transport::server::Connected::ConnectInfo`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerInfo {
    /// Address of the client, when the socket could report it.
    pub remote_addr: Option<SocketAddr>,
    /// Local address the connection was accepted on.
    pub local_addr: Option<SocketAddr>,
    /// The verified client identity; `Some` exactly for connections accepted in [`TlsMode::Mutual`](super::TlsMode::Mutual).
    pub identity: Option<Arc<PeerIdentity>>,
    /// Whether the connection is TLS.
    pub tls: bool,
}
