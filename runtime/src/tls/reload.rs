//! Certificate loading and hot reload.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{CA_FILE, CERT_FILE, KEY_FILE, TlsError, TlsMetrics, TlsMode};

/// A Kubernetes Secret volume's link to the directory holding one consistent version of its files.
const DATA_LINK: &str = "..data";

/// How far in the future a leaf's NotBefore may be and still be served: clocks of the issuer and
/// this pod may disagree a little, and a certificate issued a moment ago must not be refused.
const CLOCK_SKEW_SECS: i64 = 60;

/// The application protocols offered in the TLS handshake (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/2 only: gRPC.
    Http2,
    /// HTTP/2, then HTTP/1.1 for gRPC-Web from browsers.
    Http2AndHttp1,
}

impl Protocols {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocols::Http2 => vec![b"h2".to_vec()],
            Protocols::Http2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// Smallest polling interval the watcher accepts; `tokio::time::interval` panics on zero.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(10);

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
    protocols: Protocols,
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
    /// mode (in server mode it is not read at all). A leaf that has expired, or whose NotBefore is
    /// more than a minute away, is refused.
    pub fn load(
        mode: TlsMode,
        dir: impl Into<PathBuf>,
        metrics: TlsMetrics,
        protocols: Protocols,
    ) -> Result<Self, TlsError> {
        if mode == TlsMode::Disabled {
            return Err(TlsError::Disabled);
        }
        let dir = dir.into();
        let snapshot = read_snapshot(mode, &dir)?;
        let (config, not_after) = build_config(mode, &dir, &snapshot, protocols)?;
        let active = Active { config: Arc::new(config), snapshot, not_after };
        metrics.certificate_expiry.set(active.not_after);
        info!(dir = %dir.display(), %mode, not_after = active.not_after, "loaded TLS certificate");
        Ok(TlsReloader {
            shared: Arc::new(Shared {
                mode,
                protocols,
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
        let (snapshot, (config, not_after)) =
            match build_config(shared.mode, &shared.dir, &snapshot, shared.protocols) {
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
                    match build_config(shared.mode, &shared.dir, &again, shared.protocols) {
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

    pub(super) fn metrics(&self) -> &TlsMetrics {
        &self.shared.metrics
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads `from/name`; errors name `dir/name`, the path the user configured.
fn read_file(from: &Path, dir: &Path, name: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(from.join(name)).map_err(|source| {
        let path = dir.join(name);
        match source.kind() {
            io::ErrorKind::NotFound => TlsError::Missing { path },
            _ => TlsError::Unreadable { path, source },
        }
    })
}

/// Reads the three files as one version. In a Kubernetes Secret volume they are read through
/// the `..data` link resolved once, so a rotation between two reads cannot mix old and new files;
/// if the kubelet removes the resolved version mid-read, the read starts over. Elsewhere the
/// files are read one by one, and [`TlsReloader::reload`] re-reads when they do not match.
fn read_snapshot(mode: TlsMode, dir: &Path) -> Result<Snapshot, TlsError> {
    let mut attempt = 0;
    loop {
        let version = std::fs::read_link(dir.join(DATA_LINK)).ok().map(|target| dir.join(target));
        let from = version.as_deref().unwrap_or(dir);
        let read = || -> Result<Snapshot, TlsError> {
            Ok(Snapshot {
                cert: read_file(from, dir, CERT_FILE)?,
                key: read_file(from, dir, KEY_FILE)?,
                ca: if mode == TlsMode::Mutual { read_file(from, dir, CA_FILE)? } else { Vec::new() },
            })
        };
        match read() {
            Err(TlsError::Missing { .. }) if version.is_some() && attempt < 2 => attempt += 1,
            result => return result,
        }
    }
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
fn build_config(
    mode: TlsMode,
    dir: &Path,
    snapshot: &Snapshot,
    protocols: Protocols,
) -> Result<(ServerConfig, i64), TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let provider = provider();

    let chain = parse_certificates(&cert_path, &snapshot.cert)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate { path: cert_path.clone() })?;
    let (_, parsed_leaf) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| TlsError::InvalidCertificate { path: cert_path.clone(), reason: e.to_string() })?;
    let not_after = parsed_leaf.validity().not_after.timestamp();
    let not_before = parsed_leaf.validity().not_before.timestamp();
    let now = unix_now();
    if not_after <= now {
        return Err(TlsError::Expired { path: cert_path, not_after });
    }
    if not_before > now + CLOCK_SKEW_SECS {
        return Err(TlsError::NotYetValid { path: cert_path, not_before });
    }

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
    config.alpn_protocols = protocols.alpn();
    Ok((config, not_after))
}
