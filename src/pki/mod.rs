//! The operator-run certificate authority and the workload certificates it
//! issues, as pure functions over bytes and a clock.
//!
//! - [`authority`]: reads a CA Secret into an [`authority::Authority`], or
//!   creates a new self-signed root.
//! - [`leaf`]: issues a workload certificate (an X509-SVID that is also a
//!   DNS server certificate) from an authority.
//! - [`inspect`]: reads a leaf Secret back into a small summary, so that the
//!   controller's cache holds what a renewal decision needs and never the key.
//! - [`trust`]: the shared, live view of the CA for the reconcilers, and the
//!   rotation stages.
//! - [`ca_manager`]: the only I/O: loads, creates and rotates the CA Secret.
//!
//! rcgen issues and x509-parser reads; both are used with ring only.

pub mod authority;
pub mod ca_manager;
pub mod inspect;
pub mod leaf;
pub mod trust;

use std::fmt::Write as _;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// SHA-256 of `bytes`, as lower-case hex: certificate fingerprints.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The DER certificates of a PEM bundle, in order; other PEM blocks (keys,
/// parameters) are skipped.
pub fn pem_certificates(text: &[u8]) -> Result<Vec<Vec<u8>>, pem::PemError> {
    Ok(pem::parse_many(text)?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect())
}

/// PEM of one DER certificate, with `\n` line endings.
pub fn certificate_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Seconds since the Unix epoch of an x509 time.
pub(crate) fn unix(t: &x509_parser::time::ASN1Time) -> i64 {
    t.timestamp()
}

/// A random 128-bit positive serial number (RFC 5280 allows up to 20
/// octets; the top bit is cleared so the DER INTEGER stays positive
/// without a leading zero).
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    bytes[0] &= 0x7f;
    // A leading zero octet would be dropped by the encoder: keep 16 octets.
    bytes[0] |= 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// `time::OffsetDateTime` of a Unix second (rcgen's time type).
pub(crate) fn offset_time(unix_seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 of a Unix second, for annotations and status.
pub fn rfc3339(unix_seconds: i64) -> String {
    jiff::Timestamp::from_second(unix_seconds).map(|t| t.to_string()).unwrap_or_default()
}
