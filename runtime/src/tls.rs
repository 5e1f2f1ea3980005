//! TLS and mutual TLS for the gRPC server: certificate loading with hot reload, the accept loop that
//! performs handshakes off the accept path, and the per-connection peer identity.
//!
//! Design notes:
//! - Only the `ring` crypto provider is used, always passed explicitly, so `aws-lc-rs` never enters the
//!   dependency tree and no process-wide default provider has to be installed.
//! - Certificates come from a directory holding `tls.crt`, `tls.key` and `ca.crt` (a mounted Kubernetes
//!   Secret). [`TlsReloader`] re-reads them by content so rotation needs no restart; a connection keeps
//!   the configuration it was accepted with, new connections use the newest valid one.
//! - [`incoming`] never lets one client stall the server: handshakes run in their own tasks, bounded by a
//!   timeout, and failures are counted and logged instead of surfacing as stream errors.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Name of the counter of certificate reload attempts, labelled `result="success"|"failure"`.
pub const TLS_RELOADS_TOTAL: &str = "grpc_runtime_tls_reloads_total";
/// Name of the gauge holding the NotAfter (unix seconds) of the leaf certificate currently served.
pub const TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS: &str =
    "grpc_runtime_tls_certificate_expiry_timestamp_seconds";
/// Name of the counter of failed TLS handshakes, labelled `reason="timeout"|"error"`.
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "grpc_runtime_tls_handshake_failures_total";

/// File name of the certificate chain (leaf first, then intermediates) inside the TLS directory.
pub const CERT_FILE: &str = grpc_contract::tls::CERT_FILE;
/// File name of the private key of the leaf certificate inside the TLS directory.
pub const KEY_FILE: &str = grpc_contract::tls::KEY_FILE;
/// File name of the CA bundle that client certificates are verified against (mutual TLS).
pub const CA_FILE: &str = grpc_contract::tls::CA_FILE;

/// ALPN protocols we offer, in preference order. `http/1.1` stays because gRPC-Web runs over HTTP/1.1.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Pause after an accept error that is not specific to one connection (EMFILE, ENFILE, ENOBUFS...).
/// Retrying at once would spin on the same error; waiting gives in-flight connections time to close.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connections accepted per `poll_next` before yielding back to the executor, so a connection flood
/// cannot monopolise the task that polls the listener.
const ACCEPT_BUDGET: usize = 64;

/// Upper bound on handshakes in progress. Beyond it we stop accepting (the kernel backlog absorbs
/// the excess) until some finish, so a flood of silent clients cannot exhaust memory or descriptors.
const MAX_IN_FLIGHT_HANDSHAKES: usize = 1024;

/// Smallest polling interval the watcher accepts; `tokio::time::interval` panics on zero.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// TLS_MODE values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Identity of an authenticated mTLS peer, parsed once per connection from the leaf certificate.
///
/// It is only ever built from a certificate that rustls has already verified against `ca.crt`, so
/// authorization code may trust its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI subject alternative names, e.g. `spiffe://cluster.local/ns/default/sa/client`.
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// RFC 4514-like rendering of the subject, e.g. `CN=client, O=example`.
    pub subject: String,
}

impl PeerIdentity {
    /// The SPIFFE IDs among the URI SANs (those starting with `spiffe://`; the SPIFFE specification
    /// requires the scheme in lower case, so the comparison is exact).
    pub fn spiffe_ids(&self) -> impl Iterator<Item = &str> {
        self.uris.iter().map(String::as_str).filter(|uri| uri.starts_with("spiffe://"))
    }

    /// Parses the identity out of a DER certificate. The error is a description for debug logs.
    fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(PeerIdentity { uris, dns_names, subject: cert.subject().to_string() })
    }
}

/// What tonic inserts into every request's extensions for connections we accept (our
/// [`tonic::transport::server::Connected::ConnectInfo`]).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Address of the client, when the socket could report it.
    pub remote_addr: Option<SocketAddr>,
    /// Local address the connection was accepted on.
    pub local_addr: Option<SocketAddr>,
    /// The verified client identity; `Some` exactly for connections accepted in [`TlsMode::Mutual`].
    pub identity: Option<Arc<PeerIdentity>>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Errors loading TLS material. Every variant names the file involved; no variant ever carries key
/// material (PEM errors of the key file are reduced to a fixed description for that reason).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// [`TlsReloader::load`] was called with [`TlsMode::Disabled`].
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
pub struct TlsMetrics {
    reload_success: IntCounter,
    reload_failure: IntCounter,
    certificate_expiry: IntGauge,
    handshake_timeout: IntCounter,
    handshake_error: IntCounter,
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
        })
    }
}

/// Raw bytes of the TLS files as read in one pass. Equality of snapshots is the change detector: it
/// works whether the files were replaced through a symlink swap or rewritten in place, and it cannot
/// be fooled by timestamps. Exact bytes rather than a hash: no collision question, and the key is in
/// memory inside the `ServerConfig` anyway. Never logged (deliberately no `Debug`).
#[derive(PartialEq, Eq)]
struct Snapshot {
    cert: Vec<u8>,
    key: Vec<u8>,
    /// Empty when the mode does not use a CA bundle.
    ca: Vec<u8>,
}

/// The configuration in force and what it was built from.
struct Active {
    config: Arc<ServerConfig>,
    snapshot: Snapshot,
    not_after: i64,
}

/// What the last failed reload saw: equal failures are logged at debug instead of warn.
#[derive(PartialEq, Eq)]
struct Failure {
    /// The rejected content, `None` when the files could not be read.
    snapshot: Option<Snapshot>,
    message: String,
}

struct Shared {
    mode: TlsMode,
    dir: PathBuf,
    metrics: TlsMetrics,
    active: RwLock<Arc<Active>>,
    /// Serializes reloads so concurrent callers (watcher, admin endpoint) neither race nor double
    /// count. Holds the last failure, so a persistently broken Secret warns once instead of every poll.
    reload: Mutex<Option<Failure>>,
}

/// Loads `tls.crt`, `tls.key` and `ca.crt` from a directory (the mounted Kubernetes Secret) and keeps
/// the current rustls [`ServerConfig`]; reloadable. Cheap to clone: clones share the same state.
///
/// Invariant: a valid configuration is always in force; a failed reload never replaces it.
#[derive(Clone)]
pub struct TlsReloader {
    shared: Arc<Shared>,
}

impl fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReloader")
            .field("mode", &self.shared.mode)
            .field("dir", &self.shared.dir)
            .field("not_after_unix", &self.not_after_unix())
            .finish()
    }
}

impl TlsReloader {
    /// Initial load; an error here is a startup error (the caller exits).
    ///
    /// `mode` must be [`TlsMode::Server`] or [`TlsMode::Mutual`]; `ca.crt` is required only in mutual
    /// mode (in server mode it is not read at all).
    pub fn load(mode: TlsMode, dir: impl Into<PathBuf>, metrics: TlsMetrics) -> Result<Self, TlsError> {
        if mode == TlsMode::Disabled {
            return Err(TlsError::Disabled);
        }
        let dir = dir.into();
        let snapshot = read_snapshot(mode, &dir)?;
        let (config, not_after) = build_config(mode, &dir, &snapshot)?;
        let active = Active { config: Arc::new(config), snapshot, not_after };
        metrics.certificate_expiry.set(active.not_after);
        warn_if_expired(&dir, active.not_after);
        info!(dir = %dir.display(), %mode, not_after = active.not_after, "loaded TLS certificate");
        Ok(TlsReloader {
            shared: Arc::new(Shared {
                mode,
                dir,
                metrics,
                active: RwLock::new(Arc::new(active)),
                reload: Mutex::new(None),
            }),
        })
    }

    /// The config new connections use. Established connections keep the config they were accepted with.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.active().config)
    }

    /// The mode this reloader was loaded for.
    pub fn mode(&self) -> TlsMode {
        self.shared.mode
    }

    /// Re-reads the files now.
    ///
    /// - Unchanged content: `Ok(false)`, nothing is rebuilt and no metric moves.
    /// - Changed and valid: the new config is swapped in, `Ok(true)`, success counted, info log.
    /// - Changed but invalid (unreadable, mismatched key, bad CA...): the old config stays, `Err`,
    ///   failure counted on every call (the counter keeps rising while the Secret stays broken), warn
    ///   log once per distinct failure (repeats of the same failure log at debug).
    ///
    /// Blocking file I/O: call it from a blocking context ([`TlsReloader::spawn_watcher`] does).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let shared = &*self.shared;
        let mut last_failure = shared.reload.lock().unwrap_or_else(PoisonError::into_inner);
        let mut failed_snapshot = None;
        match self.try_reload(&mut failed_snapshot) {
            Ok(changed) => {
                *last_failure = None;
                Ok(changed)
            }
            Err(error) => {
                shared.metrics.reload_failure.inc();
                let failure = Failure { snapshot: failed_snapshot, message: error.to_string() };
                let dir = shared.dir.display();
                if last_failure.as_ref() == Some(&failure) {
                    debug!(%dir, %error, "TLS material still invalid; keeping the previous certificate");
                } else {
                    warn!(%dir, %error, "TLS reload failed; keeping the previous certificate");
                }
                *last_failure = Some(failure);
                Err(error)
            }
        }
    }

    /// The body of [`TlsReloader::reload`], which holds the reload lock. When content was read but
    /// rejected, that content is left in `failed` for log de-duplication.
    fn try_reload(&self, failed: &mut Option<Snapshot>) -> Result<bool, TlsError> {
        let shared = &*self.shared;
        let snapshot = read_snapshot(shared.mode, &shared.dir)?;
        if snapshot == self.active().snapshot {
            return Ok(false);
        }
        let (snapshot, (config, not_after)) = match build_config(shared.mode, &shared.dir, &snapshot) {
            Ok(built) => (snapshot, built),
            Err(error) => {
                // The files are read one after the other; a Kubernetes `..data` swap between two reads
                // yields a mix of old and new files (typically "key does not match"). If the content
                // moved under us, judge the fresh content instead of reporting a transient mix.
                let again = read_snapshot(shared.mode, &shared.dir)?;
                if again == snapshot {
                    *failed = Some(snapshot);
                    return Err(error);
                }
                if again == self.active().snapshot {
                    return Ok(false);
                }
                match build_config(shared.mode, &shared.dir, &again) {
                    Ok(built) => (again, built),
                    Err(error) => {
                        *failed = Some(again);
                        return Err(error);
                    }
                }
            }
        };
        let active = Active { config: Arc::new(config), snapshot, not_after };
        *shared.active.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(active);
        shared.metrics.reload_success.inc();
        shared.metrics.certificate_expiry.set(not_after);
        warn_if_expired(&shared.dir, not_after);
        info!(dir = %shared.dir.display(), not_after, "reloaded TLS certificate; new connections use it");
        Ok(true)
    }

    /// Spawns a tokio task that polls the directory every `interval` (the server uses 2 s) and calls
    /// [`TlsReloader::reload`]; it stops when `shutdown` is cancelled. Must be called within a tokio
    /// runtime. `interval` is raised to at least 10 ms.
    ///
    /// Why polling file contents rather than inotify: Kubernetes updates a Secret volume by writing a
    /// new `..<timestamp>` directory and atomically renaming a `..data` symlink onto it; `tls.crt` etc.
    /// are symlinks through `..data`. Inotify watches on the files themselves see no event for that
    /// swap, and watches on the directory see events for the hidden names only. Reading three small
    /// files every couple of seconds is cheap and catches every way of updating them.
    pub fn spawn_watcher(&self, interval: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
        let reloader = self.clone();
        let interval = interval.max(MIN_WATCH_INTERVAL);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let attempt = reloader.clone();
                // Outcomes are logged and counted inside reload(); only a crashed task is news here.
                if let Err(error) = tokio::task::spawn_blocking(move || attempt.reload()).await {
                    warn!(%error, "TLS reload task failed");
                }
            }
            debug!(dir = %reloader.shared.dir.display(), "TLS certificate watcher stopped");
        })
    }

    /// NotAfter of the current leaf certificate (unix seconds), for the expiry metric.
    pub fn not_after_unix(&self) -> i64 {
        self.active().not_after
    }

    fn active(&self) -> Arc<Active> {
        Arc::clone(&self.shared.active.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn metrics(&self) -> &TlsMetrics {
        &self.shared.metrics
    }
}

fn warn_if_expired(dir: &Path, not_after: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if not_after <= now {
        warn!(dir = %dir.display(), not_after, "the TLS certificate being served has expired");
    }
}

fn read_file(path: PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(&path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing { path },
        _ => TlsError::Unreadable { path, source },
    })
}

fn read_snapshot(mode: TlsMode, dir: &Path) -> Result<Snapshot, TlsError> {
    Ok(Snapshot {
        cert: read_file(dir.join(CERT_FILE))?,
        key: read_file(dir.join(KEY_FILE))?,
        ca: if mode == TlsMode::Mutual { read_file(dir.join(CA_FILE))? } else { Vec::new() },
    })
}

/// A description of a PEM error that never echoes file content (some variants carry input lines).
fn pem_problem(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section body is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unparseable PEM",
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::MalformedPem { path: path.to_owned(), reason: pem_problem(&e) })
}

/// Validates a snapshot and builds the server configuration from it; also returns the leaf NotAfter.
fn build_config(mode: TlsMode, dir: &Path, snapshot: &Snapshot) -> Result<(ServerConfig, i64), TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let provider = provider();

    let chain = parse_certificates(&cert_path, &snapshot.cert)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate { path: cert_path.clone() })?;
    let (_, parsed_leaf) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| TlsError::InvalidCertificate { path: cert_path.clone(), reason: e.to_string() })?;
    let not_after = parsed_leaf.validity().not_after.timestamp();

    // from_pem_slice takes the first PKCS#8, PKCS#1 or SEC1 block and skips others (e.g. EC PARAMETERS).
    let key = PrivateKeyDer::from_pem_slice(&snapshot.key).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: key_path.clone() },
        other => TlsError::MalformedPem { path: key_path.clone(), reason: pem_problem(&other) },
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::InvalidPrivateKey { path: key_path.clone(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown` means the key cannot report its public half; ring keys always can, and rustls'
        // own `with_single_cert` accepts it too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch { cert_path, key_path });
        }
        Err(other) => {
            return Err(TlsError::InvalidCertificate { path: cert_path, reason: other.to_string() });
        }
    }

    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config { reason: e.to_string() })?;
    let builder = match mode {
        TlsMode::Mutual => {
            let ca_path = dir.join(CA_FILE);
            let cas = parse_certificates(&ca_path, &snapshot.ca)?;
            if cas.is_empty() {
                return Err(TlsError::NoCaCertificate { path: ca_path });
            }
            // Every certificate is trusted, so a bundle of old + new CA covers a CA rotation.
            let mut roots = rustls::RootCertStore::empty();
            for (index, ca) in cas.into_iter().enumerate() {
                roots.add(ca).map_err(|e| TlsError::InvalidCaCertificate {
                    path: ca_path.clone(),
                    index,
                    reason: e.to_string(),
                })?;
            }
            // Default builder settings: a client certificate is mandatory, validity dates are checked.
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsError::Config { reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        TlsMode::Server | TlsMode::Disabled => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok((config, not_after))
}

/// One accepted connection: plain TCP or TLS over TCP.
///
/// Implements tokio's `AsyncRead + AsyncWrite + Unpin` and tonic's `Connected` with
/// `ConnectInfo = PeerInfo`, so handlers find a [`PeerInfo`] in every request's extensions.
pub struct Conn {
    io: ConnIo,
    info: PeerInfo,
}

enum ConnIo {
    Plain(TcpStream),
    // Boxed: a rustls connection is several hundred bytes, a TcpStream a few words.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Conn {
    /// What is known about the peer; the same value tonic puts in request extensions.
    pub fn peer_info(&self) -> &PeerInfo {
        &self.info
    }

    /// The ALPN protocol negotiated by the TLS handshake (`None` for plain TCP or no agreement).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.io {
            ConnIo::Plain(_) => None,
            ConnIo::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Turns a bound listener into the stream tonic's `serve_with_incoming_shutdown` consumes.
///
/// - TCP_NODELAY is set on every accepted socket (gRPC messages are small and latency-bound).
/// - With TLS, each handshake runs in its own task, bounded by `handshake_timeout`, so a slow or
///   malicious client never stalls accepting. Failed handshakes are logged at debug and counted in
///   `grpc_runtime_tls_handshake_failures_total`; they are never yielded as stream errors. Each
///   connection uses the configuration current when it was accepted.
/// - In mutual mode the client's leaf certificate is parsed into [`PeerInfo::identity`].
/// - Accept errors are logged and retried (after a short pause for resource exhaustion such as
///   EMFILE), never ending the stream. The stream therefore never yields `Err` and never ends.
/// - Accepting and spawning happen when the stream is polled, which must be inside a tokio runtime.
///   Dropping the stream closes the listener and aborts the handshakes in progress.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    handshake_timeout: Duration,
) -> impl futures::Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    Incoming { listener, tls, handshake_timeout, handshakes: JoinSet::new(), backoff: None }
}

struct Incoming {
    listener: TcpListener,
    tls: Option<TlsReloader>,
    handshake_timeout: Duration,
    /// Handshakes in progress; `None` results are failures that were already logged and counted.
    handshakes: JoinSet<Option<Conn>>,
    /// Set after a resource-exhaustion accept error; accepting resumes when it fires.
    backoff: Option<Pin<Box<Sleep>>>,
}

impl futures::Stream for Incoming {
    type Item = Result<Conn, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(conn) = this.poll_accept(cx) {
            return Poll::Ready(Some(Ok(conn)));
        }
        // Polled after accepting so handshakes spawned just now register this task's waker.
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(conn)))) => return Poll::Ready(Some(Ok(conn))),
                Poll::Ready(Some(Ok(None))) => {}
                Poll::Ready(Some(Err(error))) => warn!(%error, "TLS handshake task failed"),
                // An empty set registers no waker; the listener (or backoff timer) is registered.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Incoming {
    /// Accepts what the listener has ready. Returns a plain connection at once; TLS connections are
    /// handed to handshake tasks. When it returns `None`, a waker is registered (listener, backoff
    /// timer, self-wake after the budget, or the handshake set at the in-flight limit).
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Option<Conn> {
        for _ in 0..ACCEPT_BUDGET {
            if let Some(backoff) = self.backoff.as_mut() {
                if backoff.as_mut().poll(cx).is_pending() {
                    return None;
                }
                self.backoff = None;
            }
            if self.handshakes.len() >= MAX_IN_FLIGHT_HANDSHAKES {
                return None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Pending => return None,
                Poll::Ready(Ok((stream, remote_addr))) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%remote_addr, %error, "cannot set TCP_NODELAY");
                    }
                    let info = PeerInfo {
                        remote_addr: Some(remote_addr),
                        local_addr: stream.local_addr().ok(),
                        identity: None,
                        tls: false,
                    };
                    match &self.tls {
                        None => return Some(Conn { io: ConnIo::Plain(stream), info }),
                        Some(reloader) => self.spawn_handshake(reloader.clone(), stream, info),
                    }
                }
                // The failing connection is already gone; the next one may be fine.
                Poll::Ready(Err(error)) if is_connection_error(&error) => {
                    debug!(%error, "accepted connection failed before use");
                }
                Poll::Ready(Err(error)) => {
                    warn!(%error, backoff_ms = ACCEPT_ERROR_BACKOFF.as_millis(), "accept failed; retrying");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF)));
                }
            }
        }
        cx.waker().wake_by_ref();
        None
    }

    fn spawn_handshake(&mut self, reloader: TlsReloader, stream: TcpStream, info: PeerInfo) {
        // try_current instead of JoinSet::spawn, which would panic outside a runtime.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let config = reloader.current();
                let task = handshake(config, reloader, stream, info, self.handshake_timeout);
                self.handshakes.spawn_on(task, &runtime);
            }
            Err(error) => warn!(%error, "incoming polled outside a tokio runtime; dropping connection"),
        }
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

async fn handshake(
    config: Arc<ServerConfig>,
    reloader: TlsReloader,
    stream: TcpStream,
    mut info: PeerInfo,
    timeout: Duration,
) -> Option<Conn> {
    let metrics = reloader.metrics();
    let remote = info.remote_addr;
    let tls = match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            metrics.handshake_error.inc();
            debug!(?remote, %error, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            metrics.handshake_timeout.inc();
            debug!(?remote, timeout_ms = timeout.as_millis(), "TLS handshake timed out");
            return None;
        }
    };
    if reloader.mode() == TlsMode::Mutual {
        // rustls verified the chain; without a parsable identity authorization would be blind, so
        // such a connection is refused rather than accepted anonymously.
        let leaf = tls.get_ref().1.peer_certificates().and_then(|certs| certs.first());
        match leaf.map(|der| PeerIdentity::from_der(der.as_ref())) {
            Some(Ok(identity)) => info.identity = Some(Arc::new(identity)),
            Some(Err(error)) => {
                metrics.handshake_error.inc();
                debug!(?remote, %error, "cannot parse the client certificate");
                return None;
            }
            None => {
                metrics.handshake_error.inc();
                debug!(?remote, "mutual TLS connection without a client certificate");
                return None;
            }
        }
    }
    info.tls = true;
    Some(Conn { io: ConnIo::Tls(Box::new(tls)), info })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType, date_time_ymd,
    };
    use rustls::ClientConfig;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream as ClientTls;

    const SPIFFE_ID: &str = "spiffe://example.org/ns/default/sa/client";
    const CLIENT_DNS: &str = "client.example.org";

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let params = ca_params(name);
            let cert = params.self_signed(&key).unwrap();
            Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
        }

        fn intermediate(&self, name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let params = ca_params(name);
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
        }

        fn issue(&self, params: &CertificateParams) -> Leaf {
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
        }
    }

    fn server_params(serial: u64, not_after_year: i32) -> CertificateParams {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "server");
        params.serial_number = Some(serial.into());
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(not_after_year, 1, 1);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params
    }

    fn client_params() -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "client");
        params.distinguished_name.push(DnType::OrganizationName, "example");
        params.subject_alt_names = vec![
            SanType::URI(SPIFFE_ID.try_into().unwrap()),
            SanType::DnsName(CLIENT_DNS.try_into().unwrap()),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params
    }

    fn unix(year: i32) -> i64 {
        date_time_ymd(year, 1, 1).unix_timestamp()
    }

    fn write_tls(dir: &Path, leaf: &Leaf, ca_pem: Option<&str>) {
        std::fs::write(dir.join(CERT_FILE), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join(KEY_FILE), &leaf.key_pem).unwrap();
        if let Some(ca_pem) = ca_pem {
            std::fs::write(dir.join(CA_FILE), ca_pem).unwrap();
        }
    }

    fn metrics() -> TlsMetrics {
        TlsMetrics::new(&Registry::new()).unwrap()
    }

    struct Server {
        addr: SocketAddr,
        conns: mpsc::UnboundedReceiver<Conn>,
    }

    impl Server {
        async fn start(tls: Option<TlsReloader>, handshake_timeout: Duration) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, conns) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(incoming(listener, tls, handshake_timeout));
                while let Some(conn) = stream.next().await {
                    if tx.send(conn.unwrap()).is_err() {
                        break;
                    }
                }
            });
            Server { addr, conns }
        }

        async fn next_conn(&mut self) -> Conn {
            tokio::time::timeout(Duration::from_secs(2), self.conns.recv()).await.unwrap().unwrap()
        }
    }

    fn client_config(ca_pem: &str, identity: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![leaf.der.clone()],
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<ClientTls<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(config).connect(name, tcp).await
    }

    fn spawn_echo(conn: Conn) {
        tokio::spawn(async move {
            let (mut reader, mut writer) = tokio::io::split(conn);
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        });
    }

    async fn assert_echo(client: &mut ClientTls<TcpStream>, message: &[u8]) {
        client.write_all(message).await.unwrap();
        client.flush().await.unwrap();
        let mut echoed = vec![0; message.len()];
        tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(echoed, message);
    }

    fn served_leaf(client: &ClientTls<TcpStream>) -> CertificateDer<'static> {
        client.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    async fn wait_for(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..200 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Asserts that a client is refused: the handshake fails on the client, or (TLS 1.3, where the
    /// client finishes before the server has checked its certificate) the first read fails; the
    /// server counts one handshake error and yields no connection.
    async fn assert_rejected(server: &mut Server, metrics: &TlsMetrics, config: Arc<ClientConfig>) {
        if let Ok(mut client) = connect(server.addr, config).await {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut byte)).await.unwrap();
            assert!(matches!(read, Err(_) | Ok(0)), "client read {read:?}");
        }
        wait_for("a handshake error", || metrics.handshake_error.get() == 1).await;
        assert!(server.conns.try_recv().is_err(), "a rejected handshake must not yield a connection");
    }

    struct MutualSetup {
        _dir: tempfile::TempDir,
        ca: Ca,
        metrics: TlsMetrics,
        server: Server,
    }

    async fn mutual_setup() -> MutualSetup {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), Some(&ca.pem));
        let metrics = metrics();
        let reloader = TlsReloader::load(TlsMode::Mutual, dir.path(), metrics.clone()).unwrap();
        let server = Server::start(Some(reloader), Duration::from_secs(2)).await;
        MutualSetup { _dir: dir, ca, metrics, server }
    }

    #[test]
    fn tls_mode_parses_the_allowed_values_and_names_them_on_error() {
        assert_eq!("disabled".parse::<TlsMode>().unwrap(), TlsMode::Disabled);
        assert_eq!("server".parse::<TlsMode>().unwrap(), TlsMode::Server);
        assert_eq!(" Mutual ".parse::<TlsMode>().unwrap(), TlsMode::Mutual);
        for mode in [TlsMode::Disabled, TlsMode::Server, TlsMode::Mutual] {
            assert_eq!(mode.as_str().parse::<TlsMode>().unwrap(), mode);
        }
        let error = "mtls".parse::<TlsMode>().unwrap_err().to_string();
        assert!(error.contains("mtls") && error.contains("disabled") && error.contains("mutual"), "{error}");
    }

    #[test]
    fn peer_identity_lists_only_spiffe_uris_as_spiffe_ids() {
        let identity = PeerIdentity {
            uris: vec!["https://example.org/x".to_owned(), SPIFFE_ID.to_owned()],
            dns_names: vec![],
            subject: String::new(),
        };
        assert_eq!(identity.spiffe_ids().collect::<Vec<_>>(), vec![SPIFFE_ID]);
    }

    #[test]
    fn metrics_are_registered_under_the_documented_names() {
        let registry = Registry::new();
        let _metrics = TlsMetrics::new(&registry).unwrap();
        let names: Vec<String> = registry.gather().iter().map(|family| family.name().to_owned()).collect();
        for name in
            [TLS_RELOADS_TOTAL, TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, TLS_HANDSHAKE_FAILURES_TOTAL]
        {
            assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
        }
    }

    #[tokio::test]
    async fn tonic_serves_the_incoming_stream_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), None);
        let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let serve = tonic::transport::Server::builder().add_service(health).serve_with_incoming_shutdown(
            incoming(listener, Some(reloader), Duration::from_secs(1)),
            std::future::ready(()),
        );
        tokio::time::timeout(Duration::from_secs(2), serve).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn plain_tcp_connections_are_yielded_without_tls() {
        let mut server = Server::start(None, Duration::from_secs(1)).await;
        let client = TcpStream::connect(server.addr).await.unwrap();
        let conn = server.next_conn().await;
        assert!(!conn.peer_info().tls);
        assert!(conn.peer_info().identity.is_none());
        assert_eq!(conn.peer_info().remote_addr, Some(client.local_addr().unwrap()));
        assert_eq!(conn.peer_info().local_addr, Some(server.addr));
        assert_eq!(conn.alpn_protocol(), None);
    }

    #[tokio::test]
    async fn server_mode_handshake_works_and_negotiates_h2_via_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let leaf = ca.issue(&server_params(1, 2090));
        write_tls(dir.path(), &leaf, None);
        let metrics = metrics();
        let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone()).unwrap();
        assert_eq!(reloader.not_after_unix(), unix(2090));
        assert_eq!(metrics.certificate_expiry.get(), unix(2090));
        let mut server = Server::start(Some(reloader), Duration::from_secs(2)).await;

        let mut client =
            connect(server.addr, client_config(&ca.pem, None, &[b"h2", b"http/1.1"])).await.unwrap();
        let conn = server.next_conn().await;
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert!(conn.peer_info().tls);
        assert!(conn.peer_info().identity.is_none());
        assert_eq!(served_leaf(&client), leaf.der);
        spawn_echo(conn);
        assert_echo(&mut client, b"ping").await;

        // gRPC-Web clients speak HTTP/1.1 only.
        let client = connect(server.addr, client_config(&ca.pem, None, &[b"http/1.1"])).await.unwrap();
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(server.next_conn().await.alpn_protocol(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn server_mode_serves_a_chain_with_an_intermediate() {
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::new("root CA");
        let intermediate = root.intermediate("intermediate CA");
        let mut leaf = intermediate.issue(&server_params(7, 2090));
        leaf.cert_pem = format!("{}{}", leaf.cert_pem, intermediate.pem);
        write_tls(dir.path(), &leaf, None);
        let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics()).unwrap();
        let mut server = Server::start(Some(reloader), Duration::from_secs(2)).await;

        let client = connect(server.addr, client_config(&root.pem, None, &[b"h2"])).await.unwrap();
        server.next_conn().await;
        assert_eq!(client.get_ref().1.peer_certificates().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn mutual_tls_accepts_a_valid_client_and_exposes_its_identity() {
        let mut setup = mutual_setup().await;
        let client_leaf = setup.ca.issue(&client_params());
        let config = client_config(&setup.ca.pem, Some(&client_leaf), &[b"h2"]);
        let mut client = connect(setup.server.addr, config).await.unwrap();
        let conn = setup.server.next_conn().await;

        let info = tonic::transport::server::Connected::connect_info(&conn);
        assert!(info.tls);
        let identity = info.identity.expect("mutual TLS connections carry an identity");
        assert_eq!(identity.uris, vec![SPIFFE_ID.to_owned()]);
        assert_eq!(identity.spiffe_ids().collect::<Vec<_>>(), vec![SPIFFE_ID]);
        assert_eq!(identity.dns_names, vec![CLIENT_DNS.to_owned()]);
        assert!(identity.subject.contains("CN=client"), "{}", identity.subject);
        spawn_echo(conn);
        assert_echo(&mut client, b"hello").await;
        assert_eq!(setup.metrics.handshake_error.get(), 0);
    }

    #[tokio::test]
    async fn mutual_tls_rejects_a_client_without_a_certificate() {
        let mut setup = mutual_setup().await;
        let config = client_config(&setup.ca.pem, None, &[b"h2"]);
        assert_rejected(&mut setup.server, &setup.metrics, config).await;
    }

    #[tokio::test]
    async fn mutual_tls_rejects_a_client_certificate_from_another_ca() {
        let mut setup = mutual_setup().await;
        let other = Ca::new("other CA").issue(&client_params());
        let config = client_config(&setup.ca.pem, Some(&other), &[b"h2"]);
        assert_rejected(&mut setup.server, &setup.metrics, config).await;
    }

    #[tokio::test]
    async fn mutual_tls_rejects_an_expired_client_certificate() {
        let mut setup = mutual_setup().await;
        let mut params = client_params();
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        let expired = setup.ca.issue(&params);
        let config = client_config(&setup.ca.pem, Some(&expired), &[b"h2"]);
        assert_rejected(&mut setup.server, &setup.metrics, config).await;
    }

    #[tokio::test]
    async fn mutual_tls_trusts_every_ca_in_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let old_ca = Ca::new("old CA");
        let new_ca = Ca::new("new CA");
        let bundle = format!("{}{}", old_ca.pem, new_ca.pem);
        write_tls(dir.path(), &new_ca.issue(&server_params(1, 2090)), Some(&bundle));
        let reloader = TlsReloader::load(TlsMode::Mutual, dir.path(), metrics()).unwrap();
        let mut server = Server::start(Some(reloader), Duration::from_secs(2)).await;

        for ca in [&old_ca, &new_ca] {
            let config = client_config(&new_ca.pem, Some(&ca.issue(&client_params())), &[b"h2"]);
            let mut client = connect(server.addr, config).await.unwrap();
            spawn_echo(server.next_conn().await);
            assert_echo(&mut client, b"trusted").await;
        }
    }

    #[tokio::test]
    async fn reload_swaps_the_certificate_for_new_connections_and_keeps_established_ones_working() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let first = ca.issue(&server_params(1, 2090));
        write_tls(dir.path(), &first, None);
        let metrics = metrics();
        let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone()).unwrap();
        let mut server = Server::start(Some(reloader.clone()), Duration::from_secs(2)).await;
        let config = client_config(&ca.pem, None, &[b"h2"]);

        let mut established = connect(server.addr, config.clone()).await.unwrap();
        spawn_echo(server.next_conn().await);
        assert_echo(&mut established, b"before").await;
        assert_eq!(served_leaf(&established), first.der);
        assert!(!reloader.reload().unwrap(), "unchanged files must not count as a reload");

        let second = ca.issue(&server_params(2, 2091));
        write_tls(dir.path(), &second, None);
        assert!(reloader.reload().unwrap());
        assert!(!reloader.reload().unwrap());
        assert_eq!(metrics.reload_success.get(), 1);
        assert_eq!(metrics.reload_failure.get(), 0);
        assert_eq!(reloader.not_after_unix(), unix(2091));
        assert_eq!(metrics.certificate_expiry.get(), unix(2091));

        let mut fresh = connect(server.addr, config).await.unwrap();
        spawn_echo(server.next_conn().await);
        let leaf = served_leaf(&fresh);
        assert_eq!(leaf, second.der);
        let (_, parsed) = X509Certificate::from_der(leaf.as_ref()).unwrap();
        assert_eq!(parsed.raw_serial(), &[2]);
        assert_echo(&mut fresh, b"new").await;
        assert_echo(&mut established, b"after the swap").await;
    }

    #[tokio::test]
    async fn reload_keeps_the_old_config_when_the_new_key_is_garbage_or_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let first = ca.issue(&server_params(1, 2090));
        write_tls(dir.path(), &first, None);
        let metrics = metrics();
        let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone()).unwrap();
        let before = reloader.current();

        std::fs::write(dir.path().join(KEY_FILE), "garbage, not a key").unwrap();
        let error = reloader.reload().unwrap_err();
        assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error}");
        assert!(error.to_string().contains(KEY_FILE), "{error}");
        assert_eq!(metrics.reload_failure.get(), 1);
        assert!(Arc::ptr_eq(&before, &reloader.current()));

        let pem_garbage = "-----BEGIN PRIVATE KEY-----\n!!!secret!!!\n-----END PRIVATE KEY-----\n";
        std::fs::write(dir.path().join(KEY_FILE), pem_garbage).unwrap();
        let error = reloader.reload().unwrap_err();
        assert!(!error.to_string().contains("secret"), "key material leaked into {error}");
        assert_eq!(metrics.reload_failure.get(), 2);

        // Half-rotated Secret: the new certificate next to the old key.
        let second = ca.issue(&server_params(2, 2091));
        std::fs::write(dir.path().join(CERT_FILE), &second.cert_pem).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), &first.key_pem).unwrap();
        let error = reloader.reload().unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        assert_eq!(metrics.reload_failure.get(), 3);
        assert_eq!(metrics.reload_success.get(), 0);
        assert!(Arc::ptr_eq(&before, &reloader.current()));
        assert_eq!(reloader.not_after_unix(), unix(2090));
        assert_eq!(metrics.certificate_expiry.get(), unix(2090));

        // The old certificate is still served.
        let mut server = Server::start(Some(reloader.clone()), Duration::from_secs(2)).await;
        let client = connect(server.addr, client_config(&ca.pem, None, &[b"h2"])).await.unwrap();
        server.next_conn().await;
        assert_eq!(served_leaf(&client), first.der);

        // Completing the rotation recovers.
        std::fs::write(dir.path().join(KEY_FILE), &second.key_pem).unwrap();
        assert!(reloader.reload().unwrap());
        assert_eq!(reloader.not_after_unix(), unix(2091));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn reload_detects_a_kubernetes_style_data_symlink_swap() {
        use std::os::unix::fs::symlink;

        fn write_version(dir: &Path, version: &str, leaf: &Leaf, ca_pem: &str) {
            let version_dir = dir.join(version);
            std::fs::create_dir(&version_dir).unwrap();
            write_tls(&version_dir, leaf, Some(ca_pem));
            symlink(version, dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        }

        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        write_version(
            dir.path(),
            "..2026_01_01_00_00_00.000000001",
            &ca.issue(&server_params(1, 2090)),
            &ca.pem,
        );
        for file in [CERT_FILE, KEY_FILE, CA_FILE] {
            symlink(format!("..data/{file}"), dir.path().join(file)).unwrap();
        }
        let metrics = metrics();
        let reloader = TlsReloader::load(TlsMode::Mutual, dir.path(), metrics.clone()).unwrap();
        assert_eq!(reloader.not_after_unix(), unix(2090));
        assert!(!reloader.reload().unwrap());

        write_version(
            dir.path(),
            "..2026_02_01_00_00_00.000000002",
            &ca.issue(&server_params(2, 2091)),
            &ca.pem,
        );
        assert!(reloader.reload().unwrap());
        assert_eq!(reloader.not_after_unix(), unix(2091));
        assert_eq!(metrics.reload_success.get(), 1);
    }

    #[tokio::test]
    async fn the_watcher_picks_up_a_new_certificate_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), None);
        let metrics = metrics();
        let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone()).unwrap();
        let shutdown = CancellationToken::new();
        let watcher = reloader.spawn_watcher(Duration::from_millis(20), shutdown.clone());

        write_tls(dir.path(), &ca.issue(&server_params(2, 2091)), None);
        wait_for("the watcher to reload", || reloader.not_after_unix() == unix(2091)).await;
        assert_eq!(metrics.reload_success.get(), 1);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), watcher).await.unwrap().unwrap();
    }

    #[test]
    fn a_missing_file_at_initial_load_gives_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let error = TlsReloader::load(TlsMode::Server, dir.path(), metrics()).unwrap_err();
        let expected = dir.path().join(CERT_FILE);
        assert!(matches!(&error, TlsError::Missing { path } if *path == expected), "{error}");
        assert!(error.to_string().contains(&expected.display().to_string()), "{error}");

        // ca.crt is required in mutual mode only.
        let ca = Ca::new("test CA");
        write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), None);
        TlsReloader::load(TlsMode::Server, dir.path(), metrics()).unwrap();
        let error = TlsReloader::load(TlsMode::Mutual, dir.path(), metrics()).unwrap_err();
        assert!(error.to_string().contains(CA_FILE), "{error}");

        let error = TlsReloader::load(TlsMode::Disabled, dir.path(), metrics()).unwrap_err();
        assert!(matches!(error, TlsError::Disabled));
    }

    #[test]
    fn an_empty_ca_bundle_or_certificate_file_is_rejected_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), Some("no certificates here\n"));
        let error = TlsReloader::load(TlsMode::Mutual, dir.path(), metrics()).unwrap_err();
        assert!(matches!(error, TlsError::NoCaCertificate { .. }), "{error}");

        std::fs::write(dir.path().join(CERT_FILE), "").unwrap();
        let error = TlsReloader::load(TlsMode::Server, dir.path(), metrics()).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        assert!(error.to_string().contains(CERT_FILE), "{error}");
    }

    /// Splits one DER TLV into (tag, content, rest); enough DER for the PKCS#8 -> SEC1 conversion.
    fn der_tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, header) = match input[1] {
            short if short < 0x80 => (usize::from(short), 2),
            0x81 => (usize::from(input[2]), 3),
            0x82 => ((usize::from(input[2]) << 8) | usize::from(input[3]), 4),
            other => panic!("unsupported DER length byte {other:#x}"),
        };
        (input[0], &input[header..header + len], &input[header + len..])
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut base64 = String::new();
        for chunk in der.chunks(3) {
            let bytes = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
            let value = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
            for i in 0..4 {
                if i <= chunk.len() {
                    base64.push(char::from(ALPHABET[((value >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    base64.push('=');
                }
            }
        }
        let lines: Vec<&str> =
            base64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }

    #[tokio::test]
    async fn a_sec1_ec_private_key_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let mut leaf = ca.issue(&server_params(1, 2090));
        // PKCS#8 = SEQUENCE { version, algorithm, OCTET STRING { SEC1 ECPrivateKey } }.
        let pkcs8 = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let (_, body, _) = der_tlv(pkcs8.secret_der());
        let (_, _, rest) = der_tlv(body);
        let (_, _, rest) = der_tlv(rest);
        let (tag, sec1, _) = der_tlv(rest);
        assert_eq!(tag, 0x04);
        leaf.key_pem = pem_encode("EC PRIVATE KEY", sec1);
        assert!(matches!(
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
        write_tls(dir.path(), &leaf, None);

        let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics()).unwrap();
        let mut server = Server::start(Some(reloader), Duration::from_secs(2)).await;
        let client = connect(server.addr, client_config(&ca.pem, None, &[b"h2"])).await.unwrap();
        server.next_conn().await;
        assert_eq!(served_leaf(&client), leaf.der);
    }

    #[tokio::test]
    async fn a_handshake_that_never_sends_client_hello_times_out_without_blocking_others() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), None);
        let metrics = metrics();
        let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone()).unwrap();
        let mut server = Server::start(Some(reloader), Duration::from_millis(800)).await;

        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        // Let the server accept the silent connection before the real client arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut client = connect(server.addr, client_config(&ca.pem, None, &[b"h2"])).await.unwrap();
        spawn_echo(server.next_conn().await);
        assert_echo(&mut client, b"not blocked").await;
        // Had handshakes been serialized, the silent one would have timed out before this one ran.
        assert_eq!(metrics.handshake_timeout.get(), 0);

        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut byte)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "the server must close the silent connection: {read:?}");
        wait_for("the timeout to be counted", || metrics.handshake_timeout.get() == 1).await;
        assert_eq!(metrics.handshake_error.get(), 0);
        assert!(server.conns.try_recv().is_err());
    }
}
