//! TLS and mutual TLS for the gRPC server: certificate loading with hot reload, the accept loop that
//! performs handshakes off the accept path, and the per-connection peer identity.
//!
//! Design notes:
//! - Only the `ring` crypto provider is used, always passed explicitly, so `aws-lc-rs` never enters the
//!   dependency tree and no process-wide default provider has to be installed.
//! - Certificates come from a directory holding `tls.crt`, `tls.key` and `ca.crt` (a mounted Kubernetes
//!   Secret). The reloader re-reads them by content so rotation needs no restart; a connection keeps
//!   the configuration it was accepted with, new connections use the newest valid one.
//! - The accept loop never lets one client stall the server: handshakes run in their own tasks, bounded by a
//!   timeout, and failures are counted and logged instead of surfacing as stream errors.

mod accept;
pub(crate) mod identity;
pub(crate) mod penalty;
mod reload;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub(crate) use accept::{AcceptLimits, Conn, Preface, incoming};
pub use identity::{PeerIdentity, PeerInfo};
pub(crate) use reload::{Protocols, TlsReloader};

/// Name of the counter of certificate reload attempts, labelled `result="success"|"failure"`.
pub const TLS_RELOADS_TOTAL: &str = grpc_contract::metrics::TLS_RELOADS_TOTAL;
/// Name of the gauge holding the NotAfter (unix seconds) of the leaf certificate currently served.
pub const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
    grpc_contract::metrics::TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS;
/// Name of the counter of failed TLS handshakes, labelled
/// `reason="timeout"|"error"|"identity"|"per_source_limit"`.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = grpc_contract::metrics::TLS_HANDSHAKE_FAILURES_TOTAL;

/// File name of the certificate chain (leaf first, then intermediates) inside the TLS directory.
pub const CERT_FILE: &str = grpc_contract::tls::CERT_FILE;
/// File name of the private key of the leaf certificate inside the TLS directory.
pub const KEY_FILE: &str = grpc_contract::tls::KEY_FILE;
/// File name of the CA bundle that client certificates are verified against (mutual TLS).
pub const CA_FILE: &str = grpc_contract::tls::CA_FILE;

/// TLS_MODE values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain TCP (for example behind a mesh sidecar that terminates TLS).
    Disabled,
    /// Server-authenticated TLS; clients are not asked for a certificate.
    Server,
    /// Mutual TLS: every client must present a certificate issued by a CA in `ca.crt`.
    Mutual,
}

impl TlsMode {
    /// The TLS_MODE spelling of this mode.
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Server => "server",
            TlsMode::Mutual => "mutual",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when a TLS_MODE value is not one of the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TLS_MODE {value:?}: expected one of \"disabled\", \"server\", \"mutual\"")]
pub struct ParseTlsModeError {
    /// The rejected input, as given.
    pub value: String,
}

impl FromStr for TlsMode {
    type Err = ParseTlsModeError;

    /// Accepts the values case-insensitively and ignores surrounding whitespace, because environment
    /// values are often hand-written in manifests.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        [TlsMode::Disabled, TlsMode::Server, TlsMode::Mutual]
            .into_iter()
            .find(|mode| mode.as_str().eq_ignore_ascii_case(trimmed))
            .ok_or_else(|| ParseTlsModeError { value: s.to_owned() })
    }
}

/// Errors loading TLS material. Every variant names the file involved; no variant ever carries key
/// material (PEM errors of the key file are reduced to a fixed description for that reason).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// TLS material was loaded with [`TlsMode::Disabled`].
    #[error("TLS_MODE=disabled has no TLS material to load")]
    Disabled,
    /// A required file does not exist (or is a dangling symlink).
    #[error("{}: file does not exist", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("{}: cannot read file: {source}", path.display())]
    Unreadable {
        /// The unreadable file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{}: malformed PEM: {reason}", path.display())]
    MalformedPem {
        /// The malformed file.
        path: PathBuf,
        /// What is wrong, without any of the file's content.
        reason: &'static str,
    },
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("{}: no CERTIFICATE PEM block found", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The leaf certificate cannot be parsed as X.509.
    #[error("{}: leaf certificate is not valid X.509: {reason}", path.display())]
    InvalidCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The parser's description of the problem.
        reason: String,
    },
    /// The leaf certificate's NotAfter has passed.
    #[error("{}: the certificate expired at unix time {not_after}", path.display())]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Its NotAfter, unix seconds.
        not_after: i64,
    },
    /// The leaf certificate's NotBefore is more than a minute in the future.
    #[error("{}: the certificate is not valid before unix time {not_before}", path.display())]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Its NotBefore, unix seconds.
        not_before: i64,
    },
    /// The key file holds no PKCS#8, PKCS#1 or SEC1 private key block.
    #[error("{}: no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY PEM block found", path.display())]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// The private key block cannot be used (unsupported algorithm, corrupt DER...).
    #[error("{}: unusable private key: {reason}", path.display())]
    InvalidPrivateKey {
        /// The key file.
        path: PathBuf,
        /// The crypto provider's description, which never includes key bytes.
        reason: String,
    },
    /// The private key is not the key of the leaf certificate (e.g. a half-rotated Secret).
    #[error(
        "{}: private key does not match the leaf certificate in {}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// The CA bundle holds no `CERTIFICATE` block.
    #[error("{}: no CERTIFICATE PEM block found in the CA bundle", path.display())]
    NoCaCertificate {
        /// The CA bundle.
        path: PathBuf,
    },
    /// A certificate of the CA bundle cannot be used as a trust anchor.
    #[error("{}: CA bundle certificate #{index} is not a usable trust anchor: {reason}", path.display())]
    InvalidCaCertificate {
        /// The CA bundle.
        path: PathBuf,
        /// Zero-based position of the offending certificate in the bundle.
        index: usize,
        /// Why it was rejected.
        reason: String,
    },
    /// rustls refused to build the server configuration.
    #[error("building the TLS server configuration failed: {reason}")]
    Config {
        /// rustls' description of the problem.
        reason: String,
    },
}

/// Prometheus metrics of the TLS subsystem, registered into a caller-provided registry.
///
/// Label children are resolved once here so hot paths only touch atomics, and so every series exists
/// (at 0) from startup, which keeps `increase()`-based alerts correct.
#[derive(Clone, Debug)]
pub(crate) struct TlsMetrics {
    reload_success: IntCounter,
    reload_failure: IntCounter,
    certificate_expiry: IntGauge,
    handshake_timeout: IntCounter,
    handshake_error: IntCounter,
    handshake_identity: IntCounter,
    handshake_per_source_limit: IntCounter,
}

impl TlsMetrics {
    /// Creates the metrics and registers them in `registry`. Fails if they are already registered there.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            Opts::new(
                TLS_RELOADS_TOTAL,
                "TLS certificate reload attempts that found changed files, by result.",
            ),
            &["result"],
        )?;
        let certificate_expiry = IntGauge::new(
            TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
            "NotAfter of the leaf certificate currently served, in unix seconds.",
        )?;
        let handshake_failures = IntCounterVec::new(
            Opts::new(TLS_HANDSHAKE_FAILURES_TOTAL, "TLS handshakes that failed or timed out, by reason."),
            &["reason"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        registry.register(Box::new(handshake_failures.clone()))?;
        Ok(TlsMetrics {
            reload_success: reloads.get_metric_with_label_values(&["success"])?,
            reload_failure: reloads.get_metric_with_label_values(&["failure"])?,
            certificate_expiry,
            handshake_timeout: handshake_failures.get_metric_with_label_values(&["timeout"])?,
            handshake_error: handshake_failures.get_metric_with_label_values(&["error"])?,
            handshake_identity: handshake_failures.get_metric_with_label_values(&["identity"])?,
            handshake_per_source_limit: handshake_failures
                .get_metric_with_label_values(&["per_source_limit"])?,
        })
    }
}
