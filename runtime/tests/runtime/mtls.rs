//! TLS and mutual TLS against a real grpcio (gRPC C-core) client: a valid client certificate,
//! rejected ones (none, another CA, expired), certificate rotation through a Kubernetes-style
//! `..data` symlink swap while a client keeps calling, a broken rotation, and server-only TLS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use grpc_runtime::TlsMode;
use grpc_runtime::metrics::{LABEL_METHOD, SERVER_HANDLED_TOTAL};
use grpc_runtime::tls::{
    CA_FILE, CERT_FILE, KEY_FILE, TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, TLS_HANDSHAKE_FAILURES_TOTAL,
    TLS_RELOADS_TOTAL,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{
    TestServer, admin_get, describe, eventually, repo_root, require_tool, run, user_server,
};

const SPIFFE_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

/// The server certificate's NotAfter year for a given serial, so the expiry gauge tells them apart.
fn not_after_year(serial: u64) -> i32 {
    2090 + i32::try_from(serial).expect("small serial")
}

fn unix(year: i32) -> f64 {
    date_time_ymd(year, 1, 1).unix_timestamp() as f64
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    fn issue(&self, params: &CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    fn server(&self, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("server params");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("DNS name")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.distinguished_name.push(DnType::CommonName, "user-service");
        params.serial_number = Some(serial.into());
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(not_after_year(serial), 1, 1);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(&params)
    }

    /// A client certificate with a SPIFFE URI SAN, valid from 2020 to `not_after`.
    fn client(&self, not_after: (i32, u8, u8)) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, "client");
        params.subject_alt_names = vec![SanType::URI(SPIFFE_ID.try_into().expect("URI"))];
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&params)
    }

    fn valid_client(&self) -> Leaf {
        self.client((2090, 1, 1))
    }
}

// ---------------------------------------------------------------------------------------------
// The TLS directory, laid out like a kubelet-managed Secret volume
// ---------------------------------------------------------------------------------------------

/// `..<timestamp>/` holding the files, `..data -> ..<timestamp>`, and `tls.crt` etc. as symlinks
/// to `..data/<file>`. An update writes a new timestamped directory, renames a fresh symlink over
/// `..data` (atomic) and removes the previous directory, as the kubelet's atomic writer does.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn create(dir: &Path, files: &[(&str, &str)]) -> SecretVolume {
        std::fs::create_dir_all(dir).expect("secret dir");
        let mut volume = SecretVolume { dir: dir.to_path_buf(), generation: 0 };
        volume.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("file symlink");
        }
        volume
    }

    fn version_name(generation: u32) -> String {
        format!("..2026_11_24_00_00_00.{generation}")
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        let previous = self.generation;
        self.generation += 1;
        let version = Self::version_name(self.generation);
        let version_dir = self.dir.join(&version);
        std::fs::create_dir(&version_dir).expect("version dir");
        for (name, content) in files {
            std::fs::write(version_dir.join(name), content).expect("write secret file");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("..data_tmp symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if previous > 0 {
            std::fs::remove_dir_all(self.dir.join(Self::version_name(previous))).expect("remove old version");
        }
    }
}

fn server_files<'a>(leaf: &'a Leaf, ca: &'a Ca) -> [(&'static str, &'a str); 3] {
    [(CERT_FILE, &leaf.cert_pem), (KEY_FILE, &leaf.key_pem), (CA_FILE, &ca.pem)]
}

/// `server` in TLS `mode`, reading `dir`.
fn with_tls(
    server: grpc_runtime::Server,
    mode: TlsMode,
    dir: &Path,
    reload_interval: Option<Duration>,
) -> grpc_runtime::Server {
    let dir = dir.to_path_buf();
    server.configure(move |c| {
        c.tls_mode = mode;
        c.tls_dir = Some(dir);
        if let Some(interval) = reload_interval {
            c.tls_reload_interval = interval;
        }
    })
}

/// A server with the seeded user service in `mode`, reading `dir`.
fn tls_server(mode: TlsMode, dir: &Path, reload_interval: Option<Duration>) -> grpc_runtime::Server {
    with_tls(user_server(), mode, dir, reload_interval)
}

/// The setup most tests share: a CA, server certificate 1 in a Secret-style volume, and a valid
/// client certificate (with a SPIFFE ID) written out for grpcio.
struct MutualTls {
    tmp: TempDir,
    ca: Ca,
    first: Leaf,
    volume: SecretVolume,
    client: Leaf,
    creds: Creds,
}

impl MutualTls {
    fn new() -> MutualTls {
        let tmp = TempDir::new().expect("tempdir");
        let ca = Ca::new("test CA");
        let first = ca.server(1);
        let volume = SecretVolume::create(&tmp.path().join("tls"), &server_files(&first, &ca));
        let client = ca.valid_client();
        let creds = client_creds(tmp.path(), "client", &ca.pem, Some(&client));
        MutualTls { tmp, ca, first, volume, client, creds }
    }

    /// The TLS directory (the mounted Secret).
    fn dir(&self) -> PathBuf {
        self.tmp.path().join("tls")
    }
}

// ---------------------------------------------------------------------------------------------
// The grpcio client
// ---------------------------------------------------------------------------------------------

/// What a grpcio client presents: the CA it trusts, and maybe a certificate and key.
struct Creds {
    ca: PathBuf,
    cert_and_key: Option<(PathBuf, PathBuf)>,
}

/// Writes the client's files into `dir` under `name`.
fn client_creds(dir: &Path, name: &str, ca_pem: &str, leaf: Option<&Leaf>) -> Creds {
    let ca = dir.join(format!("{name}-ca.crt"));
    std::fs::write(&ca, ca_pem).expect("write client CA");
    let cert_and_key = leaf.map(|leaf| {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &leaf.cert_pem).expect("write client cert");
        std::fs::write(&key, &leaf.key_pem).expect("write client key");
        (cert, key)
    });
    Creds { ca, cert_and_key }
}

struct Grpcio {
    python: PathBuf,
}

impl Grpcio {
    fn find() -> Option<Grpcio> {
        require_tool("python-peers").map(|python| Grpcio { python })
    }

    fn command(&self, target: SocketAddr, creds: &Creds, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.python);
        cmd.arg(repo_root().join("runtime/tests/peers/grpcio_client.py"))
            .arg("--target")
            .arg(target.to_string())
            .arg("--ca")
            .arg(&creds.ca);
        if let Some((cert, key)) = &creds.cert_and_key {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        // ERROR is grpcio's default; set so the handshake errors always reach stderr.
        cmd.args(args).env("GRPC_VERBOSITY", "ERROR");
        cmd
    }

    /// `GetUser(id)`; the client's JSON result and its output.
    async fn get_user(&self, target: SocketAddr, creds: &Creds, id: i64) -> (Value, Output) {
        let id = id.to_string();
        let out = run(&mut self.command(target, creds, &["--call", "get", "--user-id", &id])).await;
        (grpcio_json(&out), out)
    }
}

/// The one JSON line the grpcio client prints.
fn grpcio_json(out: &Output) -> Value {
    assert!(out.status.success(), "the grpcio client crashed: {}", describe(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let parsed = serde_json::from_str(line);
    assert!(parsed.is_ok(), "no JSON line from the grpcio client: {}", describe(out));
    parsed.expect("checked above")
}

fn assert_alice(result: &Value, out: &Output) {
    assert_eq!(result["ok"], true, "{}", describe(out));
    assert_eq!(result["user"]["id"], 1, "{}", describe(out));
    assert_eq!(result["user"]["name"], "alice", "{}", describe(out));
}

// ---------------------------------------------------------------------------------------------
// A Rust TLS probe and /metrics
// ---------------------------------------------------------------------------------------------

/// A TLS connection to the server (verifying it as `localhost` against `ca_pem`, presenting
/// `client` if given), offering `h2`.
async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&Leaf>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM")).expect("CA root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// Opens a new TLS connection and returns the leaf certificate the server sent.
async fn served_leaf(addr: SocketAddr, ca_pem: &str, client: Option<&Leaf>) -> CertificateDer<'static> {
    let tls = tls_connect(addr, ca_pem, client).await.expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().and_then(|certs| certs.first()).expect("a server leaf");
    leaf.clone().into_owned()
}

/// `grpc.health.v1.Health/Check` for the server (`""`) over a TLS connection; the grpc-status.
async fn health_check_over_tls(addr: SocketAddr, ca_pem: &str, client: Option<&Leaf>) -> i32 {
    let tls = tls_connect(addr, ca_pem, client).await.expect("TLS handshake");
    let (send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let request = http::Request::post("https://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = send.send_request(request, false).expect("send");
    body.send_data(vec![0u8, 0, 0, 0, 0].into(), true).expect("message");
    let response = response.await.expect("response");
    let status =
        |h: &http::HeaderMap| h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
    let code = match status(response.headers()) {
        Some(code) => code,
        None => {
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("data");
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            status(&body.trailers().await.expect("trailers").unwrap_or_default()).expect("grpc-status")
        }
    };
    driver.abort();
    code
}

/// Waits up to `timeout` for new connections to be served `expected`.
async fn wait_for_leaf(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&Leaf>,
    expected: &CertificateDer<'static>,
    timeout: Duration,
) -> bool {
    eventually(
        timeout,
        || async move { (served_leaf(addr, ca_pem, client).await == *expected).then_some(()) },
    )
    .await
    .is_some()
}

/// The sum of the samples of `name` whose labels include every `key="value"` of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name && labels.iter().all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.trim().parse::<f64>().expect("a sample value"))
        .sum()
}

async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits up to `timeout` for `predicate` on the metric; returns its last value.
async fn wait_for_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    predicate: impl Fn(f64) -> bool,
) -> f64 {
    let predicate = &predicate;
    let seen = eventually(timeout, || async move {
        let value = metric(&scrape(admin).await, name, labels);
        predicate(value).then_some(value)
    })
    .await;
    match seen {
        Some(value) => value,
        None => metric(&scrape(admin).await, name, labels),
    }
}

async fn assert_ready(admin: SocketAddr) {
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, 200, "/readyz: {body}");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn mutual_tls_accepts_a_grpcio_client_with_a_valid_certificate() {
    let Some(grpcio) = Grpcio::find() else { return };
    let tls = MutualTls::new();
    let server = TestServer::start(tls_server(TlsMode::Mutual, &tls.dir(), None)).await;

    let (result, out) = grpcio.get_user(server.grpc, &tls.creds, 1).await;
    assert_alice(&result, &out);
    assert_ready(server.admin).await;
    let metrics = scrape(server.admin).await;
    assert_eq!(metric(&metrics, TLS_HANDSHAKE_FAILURES_TOTAL, &[]), 0.0, "{metrics}");
    assert_eq!(
        metric(&metrics, TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, &[]),
        unix(not_after_year(1)),
        "{metrics}"
    );

    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_rejects_grpcio_clients_without_a_certificate_from_another_ca_or_expired() {
    let Some(grpcio) = Grpcio::find() else { return };
    let tls = MutualTls::new();
    let (tmp, ca) = (&tls.tmp, &tls.ca);
    let other_ca = Ca::new("other CA");
    let server = TestServer::start(tls_server(TlsMode::Mutual, &tls.dir(), None)).await;
    let before = metric(&scrape(server.admin).await, TLS_HANDSHAKE_FAILURES_TOTAL, &[]);

    let no_cert = client_creds(tmp.path(), "anonymous", &ca.pem, None);
    let foreign = client_creds(tmp.path(), "foreign", &ca.pem, Some(&other_ca.valid_client()));
    let expired = client_creds(tmp.path(), "expired", &ca.pem, Some(&ca.client((2001, 1, 1))));
    let (a, b, c) = futures::join!(
        grpcio.get_user(server.grpc, &no_cert, 1),
        grpcio.get_user(server.grpc, &foreign, 1),
        grpcio.get_user(server.grpc, &expired, 1),
    );
    // The TLS alert the server sent, as BoringSSL logs it on the client's stderr.
    let cases = [
        ("no certificate", "CERTIFICATE_REQUIRED", a),
        ("another CA", "UNKNOWN_CA", b),
        ("expired", "CERTIFICATE_EXPIRED", c),
    ];
    for (case, alert, (result, out)) in cases {
        assert_eq!(result["ok"], false, "{case}: {}", describe(&out));
        assert_eq!(result["code"], "UNAVAILABLE", "{case}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(alert),
            "{case}: no {alert} alert: {}",
            describe(&out)
        );
    }

    let failures =
        wait_for_metric(server.admin, TLS_HANDSHAKE_FAILURES_TOTAL, &[], Duration::from_secs(3), |v| {
            v >= before + 3.0
        })
        .await;
    assert!(failures >= before + 3.0, "handshake failures went from {before} to {failures}");
    let errors = metric(&scrape(server.admin).await, TLS_HANDSHAKE_FAILURES_TOTAL, &[("reason", "error")]);
    assert!(errors >= 3.0, "reason=\"error\" is {errors}");

    // The server keeps serving.
    let (result, out) = grpcio.get_user(server.grpc, &tls.creds, 1).await;
    assert_alice(&result, &out);
    assert_ready(server.admin).await;

    server.stop().await;
}

#[tokio::test]
async fn certificate_rotation_on_disk_is_picked_up_while_a_client_keeps_calling_without_a_failed_rpc() {
    let Some(grpcio) = Grpcio::find() else { return };
    let tls = MutualTls::new();
    let server =
        TestServer::start(tls_server(TlsMode::Mutual, &tls.dir(), Some(Duration::from_millis(200)))).await;
    // The temp dir stays in `tls` (dropped at the end of the test).
    let MutualTls { ca, first, mut volume, client, creds, .. } = tls;
    assert_eq!(served_leaf(server.grpc, &ca.pem, Some(&client)).await, first.der);

    let mut looping = grpcio.command(
        server.grpc,
        &creds,
        &["--call", "loop", "--seconds", "5", "--interval-ms", "20", "--timeout", "5"],
    );
    looping.kill_on_drop(true).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let looping = looping.spawn().expect("grpcio loop client starts");

    // Rotate once the loop is calling (Python start-up time varies with load), ~1.5 s in.
    let get_user = [(LABEL_METHOD, "GetUser")];
    let calling =
        wait_for_metric(server.admin, SERVER_HANDLED_TOTAL, &get_user, Duration::from_secs(10), |v| v >= 1.0)
            .await;
    assert!(calling >= 1.0, "the grpcio loop client made no call within 10 s");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = ca.server(2);
    let handled_before_rotation = metric(&scrape(server.admin).await, SERVER_HANDLED_TOTAL, &get_user);
    volume.update(&server_files(&second, &ca));
    let rotated =
        wait_for_leaf(server.grpc, &ca.pem, Some(&client), &second.der, Duration::from_secs(3)).await;

    let out = tokio::time::timeout(Duration::from_secs(30), looping.wait_with_output())
        .await
        .expect("the loop client finishes")
        .expect("the loop client runs");
    let result = grpcio_json(&out);
    assert!(rotated, "new connections were not served the new certificate within 3 s");
    assert_eq!(result["failures"], 0, "{}", describe(&out));
    let calls = result["calls"].as_u64().unwrap_or(0);
    assert!(calls > 50, "only {calls} calls: {}", describe(&out));
    assert_eq!(result["codes"]["OK"], calls, "{}", describe(&out));
    // One connection throughout: the rotation did not disturb the established one.
    assert_eq!(result["ready_transitions"], 1, "{}", describe(&out));
    let after_rotation = calls as f64 - handled_before_rotation;
    assert!(after_rotation >= 20.0, "only {after_rotation} calls after the rotation: {}", describe(&out));

    let metrics = scrape(server.admin).await;
    assert!(metric(&metrics, TLS_RELOADS_TOTAL, &[("result", "success")]) >= 1.0, "{metrics}");
    assert_eq!(metric(&metrics, TLS_RELOADS_TOTAL, &[("result", "failure")]), 0.0, "{metrics}");
    assert_eq!(
        metric(&metrics, TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, &[]),
        unix(not_after_year(2)),
        "{metrics}"
    );
    // A fresh grpcio channel works with the new certificate too.
    let (result, out) = grpcio.get_user(server.grpc, &creds, 1).await;
    assert_alice(&result, &out);

    server.stop().await;
}

#[tokio::test]
async fn a_broken_certificate_file_keeps_the_old_certificate_and_is_reported() {
    let Some(grpcio) = Grpcio::find() else { return };
    let tls = MutualTls::new();
    let server =
        TestServer::start(tls_server(TlsMode::Mutual, &tls.dir(), Some(Duration::from_millis(200)))).await;
    // The temp dir stays in `tls` (dropped at the end of the test).
    let MutualTls { ca, first, mut volume, client, creds, .. } = tls;
    let failure = [("result", "failure")];

    // A garbage key.
    volume.update(&[(CERT_FILE, &first.cert_pem), (KEY_FILE, "garbage, not a key\n"), (CA_FILE, &ca.pem)]);
    let failures =
        wait_for_metric(server.admin, TLS_RELOADS_TOTAL, &failure, Duration::from_secs(3), |v| v >= 1.0)
            .await;
    assert!(failures >= 1.0, "no failed reload counted for a garbage key");
    assert_eq!(served_leaf(server.grpc, &ca.pem, Some(&client)).await, first.der);
    let (result, out) = grpcio.get_user(server.grpc, &creds, 1).await;
    assert_alice(&result, &out);
    assert_ready(server.admin).await;

    // A half-rotated Secret: the new certificate next to the old key.
    let second = ca.server(2);
    volume.update(&[(CERT_FILE, &second.cert_pem), (KEY_FILE, &first.key_pem), (CA_FILE, &ca.pem)]);
    let more = wait_for_metric(server.admin, TLS_RELOADS_TOTAL, &failure, Duration::from_secs(3), |v| {
        v >= failures + 2.0
    })
    .await;
    assert!(more >= failures + 2.0, "failed reloads stopped being counted: {failures} then {more}");
    assert_eq!(served_leaf(server.grpc, &ca.pem, Some(&client)).await, first.der);
    let (result, out) = grpcio.get_user(server.grpc, &creds, 2).await;
    assert_eq!(result["ok"], true, "{}", describe(&out));
    assert_eq!(result["user"]["name"], "bob", "{}", describe(&out));
    assert_ready(server.admin).await;
    let metrics = scrape(server.admin).await;
    assert_eq!(metric(&metrics, TLS_RELOADS_TOTAL, &[("result", "success")]), 0.0, "{metrics}");
    assert_eq!(
        metric(&metrics, TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, &[]),
        unix(not_after_year(1)),
        "{metrics}"
    );

    // Completing the rotation recovers.
    volume.update(&server_files(&second, &ca));
    assert!(
        wait_for_leaf(server.grpc, &ca.pem, Some(&client), &second.der, Duration::from_secs(3)).await,
        "the repaired certificate was not picked up within 3 s"
    );
    let metrics = scrape(server.admin).await;
    assert!(metric(&metrics, TLS_RELOADS_TOTAL, &[("result", "success")]) >= 1.0, "{metrics}");
    let (result, out) = grpcio.get_user(server.grpc, &creds, 1).await;
    assert_alice(&result, &out);

    server.stop().await;
}

#[tokio::test]
async fn server_tls_mode_serves_clients_without_certificates() {
    let Some(grpcio) = Grpcio::find() else { return };
    let tmp = TempDir::new().expect("tempdir");
    let ca = Ca::new("test CA");
    let server_leaf = ca.server(1);
    // No ca.crt: server mode does not need one.
    let files = [(CERT_FILE, server_leaf.cert_pem.as_str()), (KEY_FILE, server_leaf.key_pem.as_str())];
    SecretVolume::create(&tmp.path().join("tls"), &files);
    let server = TestServer::start(tls_server(TlsMode::Server, &tmp.path().join("tls"), None)).await;

    let creds = client_creds(tmp.path(), "anonymous", &ca.pem, None);
    let (result, out) = grpcio.get_user(server.grpc, &creds, 1).await;
    assert_alice(&result, &out);
    assert_eq!(served_leaf(server.grpc, &ca.pem, None).await, server_leaf.der);
    assert_ready(server.admin).await;

    server.stop().await;
}

#[tokio::test]
async fn the_mtls_allow_list_admits_a_listed_spiffe_id_and_denies_others_with_the_identity_in_the_handler() {
    let Some(grpcio) = Grpcio::find() else { return };
    let tls = MutualTls::new();
    let creds = &tls.creds;
    let listed = with_tls(crate::harness::misbehaving_server(), TlsMode::Mutual, &tls.dir(), None)
        .authenticator(grpc_runtime::MtlsAllowList::new().allow_spiffe_id(SPIFFE_ID).expect("valid pattern"));
    let server = TestServer::start(listed).await;
    // GetUser(-3) answers with the request context; its third field is the principal.
    let (result, out) = grpcio.get_user(server.grpc, creds, -3).await;
    assert_eq!(result["ok"], true, "{}", describe(&out));
    let name = result["user"]["name"].as_str().unwrap_or_default().to_string();
    assert_eq!(name.split('|').nth(2), Some(SPIFFE_ID), "{}", describe(&out));
    server.stop().await;

    let other = with_tls(crate::harness::misbehaving_server(), TlsMode::Mutual, &tls.dir(), None)
        .authenticator(
            grpc_runtime::MtlsAllowList::new()
                .allow_spiffe_id("spiffe://cluster.local/ns/x/sa/other")
                .expect("valid pattern"),
        );
    let server = TestServer::start(other).await;
    let (result, out) = grpcio.get_user(server.grpc, creds, -3).await;
    assert_eq!(
        (result["ok"].as_bool(), result["code"].as_str()),
        (Some(false), Some("PERMISSION_DENIED")),
        "{}",
        describe(&out)
    );
    server.stop().await;
}

#[tokio::test]
async fn grpc_allowed_peers_admits_matching_spiffe_ids_and_denies_others_but_not_health() {
    let Some(grpcio) = Grpcio::find() else { return };
    let tls = MutualTls::new();
    let creds = &tls.creds;
    // The client is spiffe://cluster.local/ns/default/sa/client.
    let allowed = |patterns: &str| {
        let peers = grpc_runtime::AllowedPeers::parse(patterns).expect("valid patterns");
        with_tls(crate::harness::misbehaving_server(), TlsMode::Mutual, &tls.dir(), None)
            .configure(move |c| c.allowed_peers = Some(peers))
    };

    let server = TestServer::start(allowed("spiffe://cluster.local/ns/*/sa/client")).await;
    let (result, out) = grpcio.get_user(server.grpc, creds, -3).await;
    assert_eq!(result["ok"], true, "{}", describe(&out));
    let name = result["user"]["name"].as_str().unwrap_or_default().to_string();
    assert_eq!(name.split('|').nth(2), Some(SPIFFE_ID), "the principal is the peer: {}", describe(&out));
    server.stop().await;

    let server = TestServer::start(allowed(
        "spiffe://cluster.local/ns/shop/sa/*, spiffe://cluster.local/ns/default/sa/*/x",
    ))
    .await;
    let (result, out) = grpcio.get_user(server.grpc, creds, 1).await;
    assert_eq!(
        (result["ok"].as_bool(), result["code"].as_str()),
        (Some(false), Some("PERMISSION_DENIED")),
        "{}",
        describe(&out)
    );
    // Health stays reachable for probes and load balancers.
    assert_eq!(health_check_over_tls(server.grpc, &tls.ca.pem, Some(&tls.client)).await, 0);
    server.stop().await;

    // The environment variable is parsed with the same grammar, and a bad pattern names it.
    let err = grpc_runtime::Config::from_lookup(|name| match name {
        "TLS_MODE" => Some("mutual".into()),
        "TLS_DIR" => Some("/tls".into()),
        "GRPC_ALLOWED_PEERS" => Some("spiffe://cluster.local/ns/shop*/sa/x".into()),
        _ => None,
    })
    .expect_err("a * inside a segment");
    assert_eq!(err.variable, "GRPC_ALLOWED_PEERS", "{err}");
}

#[tokio::test]
async fn a_client_certificate_without_client_auth_or_with_two_uris_is_refused_at_the_handshake() {
    let tls = MutualTls::new();
    let server = TestServer::start(tls_server(TlsMode::Mutual, &tls.dir(), None)).await;
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::URI(SPIFFE_ID.try_into().expect("URI"))];
    // A server certificate used as a client credential: rustls refuses it in the handshake.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_auth_only = tls.ca.issue(&params);
    // No extended key usage at all: rustls accepts any use, the runtime requires clientAuth.
    params.extended_key_usages = vec![];
    let no_eku = tls.ca.issue(&params);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
        .subject_alt_names
        .push(SanType::URI("spiffe://cluster.local/ns/default/sa/other".try_into().expect("URI")));
    let two_ids = tls.ca.issue(&params);
    let cases = [(&server_auth_only, "serverAuth only"), (&no_eku, "no EKU"), (&two_ids, "two URI SANs")];
    for (leaf, reason) in cases {
        // TLS 1.3: the client learns of the refusal on its first read, after the handshake.
        let result = tokio::time::timeout(Duration::from_secs(5), async {
            let mut conn = tls_connect(server.grpc, &tls.ca.pem, Some(leaf)).await?;
            let mut buf = [0u8; 64];
            match tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await? {
                0 => Err(std::io::Error::other("closed")),
                n => Ok(n),
            }
        })
        .await
        .expect("answered within 5 s");
        assert!(result.is_err(), "{reason}: the connection must be closed, got {result:?}");
    }
    let text = scrape(server.admin).await;
    let failures = |reason| metric(&text, "grpc_runtime_tls_handshake_failures_total", &[("reason", reason)]);
    assert_eq!((failures("error"), failures("identity")), (1.0, 2.0), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_silent_tls_sockets_from_one_address_does_not_stop_a_real_client() {
    let Some(grpcio) = Grpcio::find() else { return };
    let tls = MutualTls::new();
    // 127.0.0.2 plays an outside client: by default the whole loopback range is exempt.
    let server = TestServer::start(
        tls_server(TlsMode::Mutual, &tls.dir(), None).configure(|c| c.limits.exempt_all_loopback = false),
    )
    .await;
    // 1,500 connections that never send a ClientHello, from 127.0.0.2 (the loopback address
    // 127.0.0.1, where a sidecar connects from, is exempt from the per-source cap), held open
    // while the real client calls. Without the cap, the first 1,024 fill the handshakes in
    // progress for 10 s, the accept queue fills behind them, and new clients wait.
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let target = server.grpc;
    let flood = tokio::spawn(async move {
        let mut silent = Vec::new();
        for n in 1..=1500 {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
            silent.push(socket.connect(target).await.expect("connect"));
            let _ = count_tx.send(n);
        }
        std::future::pending::<()>().await;
        drop(silent);
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), count.wait_for(|n| *n >= 1200)).await;
    let started = std::time::Instant::now();
    let (result, out) = grpcio.get_user(server.grpc, &tls.creds, 1).await;
    assert_alice(&result, &out);
    assert!(started.elapsed() < Duration::from_secs(4), "the real client waited {:?}", started.elapsed());
    let text = scrape(server.admin).await;
    assert!(
        metric(&text, "grpc_runtime_tls_handshake_failures_total", &[("reason", "per_source_limit")])
            >= 1400.0,
        "{text}"
    );
    flood.abort();
    server.stop().await;
}

#[tokio::test]
async fn grpc_go_over_mutual_tls_is_allowed_or_denied_by_its_spiffe_id() {
    let Some(go) = require_tool("go-peer-client") else { return };
    let tls = MutualTls::new();
    let (cert, key) = tls.creds.cert_and_key.clone().expect("client credentials");
    let run_go = |target: SocketAddr| {
        let mut cmd = tokio::process::Command::new(&go);
        cmd.args(["--target", &target.to_string(), "--server-name", "localhost", "--call", "get"])
            .arg("--ca")
            .arg(&tls.creds.ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key);
        cmd
    };
    for (patterns, expected) in [
        ("spiffe://cluster.local/ns/default/sa/*", "ok"),
        ("spiffe://cluster.local/ns/shop/sa/*", "PermissionDenied"),
    ] {
        let peers = grpc_runtime::AllowedPeers::parse(patterns).expect("patterns");
        let server = TestServer::start(
            tls_server(TlsMode::Mutual, &tls.dir(), None).configure(move |c| c.allowed_peers = Some(peers)),
        )
        .await;
        let out = run(&mut run_go(server.grpc)).await;
        let result = grpcio_json(&out);
        match expected {
            "ok" => assert_alice(&result, &out),
            code => assert_eq!(result["code"], code, "{}", describe(&out)),
        }
        server.stop().await;
    }
}
