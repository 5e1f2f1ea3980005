//! Tests of the TLS listener, reload and identity, against real rustls clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus::Registry;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
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
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
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
    params.subject_alt_names =
        vec![SanType::URI(SPIFFE_ID.try_into().unwrap()), SanType::DnsName(CLIENT_DNS.try_into().unwrap())];
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
            let mut stream = std::pin::pin!(incoming(
                listener,
                tls,
                AcceptLimits {
                    handshake_timeout,
                    max_handshakes_per_source: 16,
                    min_ping_interval: None,
                    max_control_frames: 100,
                    penalize_abuse: false,
                    exempt_all_loopback: true,
                }
            ));
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
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
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
    let reloader =
        TlsReloader::load(TlsMode::Mutual, dir.path(), metrics.clone(), Protocols::Http2AndHttp1).unwrap();
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
fn client_identities_must_be_for_client_auth_and_valid_svids() {
    use identity::IdentityError;
    let ca = Ca::new("test CA");
    let identity = |params: &CertificateParams| PeerIdentity::from_client_der(ca.issue(params).der.as_ref());

    let good = identity(&client_params()).unwrap();
    assert_eq!(good.spiffe_id(), Some(SPIFFE_ID));
    assert_eq!(good.dns_names(), [CLIENT_DNS.to_owned()]);

    let mut dns_only = client_params();
    dns_only.subject_alt_names = vec![SanType::DnsName(CLIENT_DNS.try_into().unwrap())];
    assert_eq!(identity(&dns_only).unwrap().spiffe_id(), None);

    let mut no_eku = client_params();
    no_eku.extended_key_usages = vec![];
    assert_eq!(identity(&no_eku), Err(IdentityError::NotForClientAuth));
    let mut server_only = client_params();
    server_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    assert_eq!(identity(&server_only), Err(IdentityError::NotForClientAuth));

    let mut two_uris = client_params();
    two_uris.subject_alt_names = vec![
        SanType::URI(SPIFFE_ID.try_into().unwrap()),
        SanType::URI("https://example.org/x".try_into().unwrap()),
    ];
    assert!(matches!(identity(&two_uris), Err(IdentityError::NotAnSvid(m)) if m.contains("exactly one")));

    let mut bad_id = client_params();
    bad_id.subject_alt_names = vec![SanType::URI("spiffe://example.org/ns//sa".try_into().unwrap())];
    assert!(matches!(identity(&bad_id), Err(IdentityError::NotAnSvid(_))));

    let mut a_ca = client_params();
    a_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert!(matches!(identity(&a_ca), Err(IdentityError::NotAnSvid(m)) if m.contains("CA")));

    let mut signer = client_params();
    signer.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign];
    assert!(matches!(identity(&signer), Err(IdentityError::NotAnSvid(m)) if m.contains("sign")));
}

#[test]
fn metrics_are_registered_under_the_documented_names() {
    let registry = Registry::new();
    let _metrics = TlsMetrics::new(&registry).unwrap();
    let names: Vec<String> = registry.gather().iter().map(|family| family.name().to_owned()).collect();
    for name in [TLS_RELOADS_TOTAL, TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, TLS_HANDSHAKE_FAILURES_TOTAL] {
        assert!(names.iter().any(|n| n == name), "{name} missing from {names:?}");
    }
}

#[tokio::test]
async fn tonic_serves_the_incoming_stream_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), None);
    let reloader =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let serve = tonic::transport::Server::builder().add_service(health).serve_with_incoming_shutdown(
        incoming(
            listener,
            Some(reloader),
            AcceptLimits {
                handshake_timeout: Duration::from_secs(1),
                max_handshakes_per_source: 16,
                min_ping_interval: None,
                max_control_frames: 100,
                penalize_abuse: false,
                exempt_all_loopback: true,
            },
        ),
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
    let reloader =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone(), Protocols::Http2AndHttp1).unwrap();
    assert_eq!(reloader.not_after_unix(), unix(2090));
    assert_eq!(metrics.certificate_expiry.get(), unix(2090));
    let mut server = Server::start(Some(reloader), Duration::from_secs(2)).await;

    let mut client = connect(server.addr, client_config(&ca.pem, None, &[b"h2", b"http/1.1"])).await.unwrap();
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
    let reloader =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap();
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
    assert_eq!(identity.spiffe_id(), Some(SPIFFE_ID));
    assert_eq!(identity.dns_names(), [CLIENT_DNS.to_owned()]);
    assert!(identity.subject().contains("CN=client"), "{}", identity.subject());
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
    let reloader =
        TlsReloader::load(TlsMode::Mutual, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap();
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
    let reloader =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone(), Protocols::Http2AndHttp1).unwrap();
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
    let reloader =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone(), Protocols::Http2AndHttp1).unwrap();
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
    write_version(dir.path(), "..2026_01_01_00_00_00.000000001", &ca.issue(&server_params(1, 2090)), &ca.pem);
    for file in [CERT_FILE, KEY_FILE, CA_FILE] {
        symlink(format!("..data/{file}"), dir.path().join(file)).unwrap();
    }
    let metrics = metrics();
    let reloader =
        TlsReloader::load(TlsMode::Mutual, dir.path(), metrics.clone(), Protocols::Http2AndHttp1).unwrap();
    assert_eq!(reloader.not_after_unix(), unix(2090));
    assert!(!reloader.reload().unwrap());

    write_version(dir.path(), "..2026_02_01_00_00_00.000000002", &ca.issue(&server_params(2, 2091)), &ca.pem);
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
    let reloader =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone(), Protocols::Http2AndHttp1).unwrap();
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
    let error =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap_err();
    let expected = dir.path().join(CERT_FILE);
    assert!(matches!(&error, TlsError::Missing { path } if *path == expected), "{error}");
    assert!(error.to_string().contains(&expected.display().to_string()), "{error}");

    // ca.crt is required in mutual mode only.
    let ca = Ca::new("test CA");
    write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), None);
    TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap();
    let error =
        TlsReloader::load(TlsMode::Mutual, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap_err();
    assert!(error.to_string().contains(CA_FILE), "{error}");

    let error =
        TlsReloader::load(TlsMode::Disabled, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap_err();
    assert!(matches!(error, TlsError::Disabled));
}

#[test]
fn an_empty_ca_bundle_or_certificate_file_is_rejected_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), Some("no certificates here\n"));
    let error =
        TlsReloader::load(TlsMode::Mutual, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap_err();
    assert!(matches!(error, TlsError::NoCaCertificate { .. }), "{error}");

    std::fs::write(dir.path().join(CERT_FILE), "").unwrap();
    let error =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap_err();
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
    let lines: Vec<&str> = base64.as_bytes().chunks(64).map(|l| std::str::from_utf8(l).unwrap()).collect();
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

    let reloader =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap();
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
    let reloader =
        TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone(), Protocols::Http2AndHttp1).unwrap();
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

#[test]
fn an_expired_or_not_yet_valid_leaf_is_refused_at_load_and_reload_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let mut expired = server_params(9, 2021);
    expired.not_before = date_time_ymd(2020, 1, 1);
    write_tls(dir.path(), &ca.issue(&expired), None);
    let error = TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2).unwrap_err();
    assert!(matches!(error, TlsError::Expired { .. }), "{error}");
    assert!(error.to_string().contains(CERT_FILE), "{error}");

    let good = ca.issue(&server_params(1, 2090));
    write_tls(dir.path(), &good, None);
    let metrics = metrics();
    let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics.clone(), Protocols::Http2).unwrap();
    let before = reloader.current();

    write_tls(dir.path(), &ca.issue(&expired), None);
    assert!(matches!(reloader.reload(), Err(TlsError::Expired { .. })));
    assert!(Arc::ptr_eq(&before, &reloader.current()), "the valid certificate stays");

    let mut future = server_params(10, 2090);
    future.not_before = date_time_ymd(2080, 1, 1);
    write_tls(dir.path(), &ca.issue(&future), None);
    assert!(matches!(reloader.reload(), Err(TlsError::NotYetValid { .. })));
    assert!(Arc::ptr_eq(&before, &reloader.current()));
    assert_eq!(metrics.reload_failure.get(), 2);
    assert_eq!(reloader.not_after_unix(), unix(2090));

    // Issued a few seconds "in the future" by a clock slightly ahead: within the skew allowance.
    let mut fresh = server_params(11, 2091);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    fresh.not_before = date_time_ymd(1970, 1, 1) + (now + Duration::from_secs(20));
    write_tls(dir.path(), &ca.issue(&fresh), None);
    assert!(reloader.reload().unwrap());
    assert_eq!(reloader.not_after_unix(), unix(2091));
}

#[tokio::test]
async fn without_grpc_web_only_h2_is_offered_in_the_tls_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    write_tls(dir.path(), &ca.issue(&server_params(1, 2090)), None);
    let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2).unwrap();
    assert_eq!(reloader.current().alpn_protocols, vec![b"h2".to_vec()]);
    let both = TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2AndHttp1).unwrap();
    assert_eq!(both.current().alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[cfg(unix)]
#[test]
fn files_are_read_through_the_data_link_so_a_rotation_cannot_mix_versions() {
    use std::os::unix::fs::symlink;
    // The top-level names hold an old, inconsistent set (the new certificate beside the old key,
    // as a reader going file by file could see mid-rotation); `..data` points at one complete
    // version. Reading through the link gets that version whole.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let old = ca.issue(&server_params(1, 2090));
    let new = ca.issue(&server_params(2, 2091));
    std::fs::write(dir.path().join(CERT_FILE), &new.cert_pem).unwrap();
    std::fs::write(dir.path().join(KEY_FILE), &old.key_pem).unwrap();
    let version = dir.path().join("..2026_11_30_00_00_00.000000001");
    std::fs::create_dir(&version).unwrap();
    write_tls(&version, &new, None);
    symlink("..2026_11_30_00_00_00.000000001", dir.path().join("..data")).unwrap();
    let reloader = TlsReloader::load(TlsMode::Server, dir.path(), metrics(), Protocols::Http2).unwrap();
    assert_eq!(reloader.not_after_unix(), unix(2091));
}
