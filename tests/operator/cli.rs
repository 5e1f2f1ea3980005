//! The `grpc-operator` binary as a user runs it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use grpc_operator_testkit::TestCluster;

const BIN: &str = env!("CARGO_BIN_EXE_grpc-operator");

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).display().to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("binary runs")
}

#[test]
fn crd_command_prints_exactly_the_committed_crd() {
    let out = run(&["crd"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(repo("crds/grpcservices.grpcoperator.io.yaml")).expect("committed CRD");
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn render_of_the_sample_prints_its_identity_its_redacted_certificate_its_sidecar_config_its_workload_and_its_monitoring()
 {
    let out = run(&["render", "-f", &repo("config/samples/user-service.yaml")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert_eq!(yaml.matches("\n---\n").count() + usize::from(yaml.starts_with("---\n")), 9);
    for kind in
        ["ServiceAccount", "Secret", "ConfigMap", "Deployment", "Service", "ServiceMonitor", "PrometheusRule"]
    {
        assert!(yaml.contains(&format!("kind: {kind}\n")), "{kind}: {yaml}");
    }
    assert!(yaml.contains("kind: PodDisruptionBudget"), "2 replicas get a default budget");
    assert!(yaml.contains("name: user-service-dashboard"), "the sample enables the dashboard");
    assert!(!yaml.contains("BEGIN"), "no key or certificate material in a GitOps preview: {yaml}");
    assert!(yaml.contains("tls.key: \"<redacted"), "{yaml}");
    assert!(yaml.contains("name: GRPC_ALLOWED_PEERS"), "the wiring as applied: {yaml}");
    assert!(yaml.contains("envoy.filters.http.grpc_web"), "the gRPC-Web sidecar's bootstrap: {yaml}");
}

#[test]
fn render_of_invalid_input_exits_non_zero_naming_file_object_field_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {name: api, namespace: shop}\nspec: {image: i, services: [Api]}\n",
    )
    .expect("write");
    let out = run(&["render", "-f", &dir.path().display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing is printed for invalid input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: document 1 (GrpcService shop/api): spec.services[0]: Invalid value",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn render_reads_standard_input() {
    let mut child = Command::new(BIN)
        .args(["render", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let text = std::fs::read_to_string(repo("config/samples/user-service.yaml")).expect("sample");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("name: user-service"));
}

#[test]
fn run_without_a_reachable_cluster_exits_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let port = grpc_operator_testkit::ports::free_port();
    // Nothing listens on `port` once the listener above is dropped.
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .expect("write kubeconfig");
    let out = Command::new(BIN)
        .args(["run", "--admin-addr", "127.0.0.1:0", "--log-format", "text"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the Kubernetes API server at http://127.0.0.1:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

async fn http_get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn run_reports_a_missing_crd_then_serves_admin_endpoints_and_stops_on_sigterm() {
    let cluster = TestCluster::get().expect("test cluster");
    // Deletes the CRD: no other test may run meanwhile.
    let _exclusive = cluster.crds_exclusive().await;
    let client = cluster.client().await.expect("client");
    let ns = cluster.namespace(&client, "cli").await.expect("namespace");
    let token = cluster.operator_token(&client, &ns.name).await.expect("token");
    let admin = cluster.admin_config().await.expect("admin config");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    cluster
        .write_operator_kubeconfig(&token, &admin.cluster_url.to_string(), &kubeconfig)
        .await
        .expect("kubeconfig");

    // A cluster without the CRD: a clear message, not a retry loop.
    let crd_file = repo("crds/grpcservices.grpcoperator.io.yaml");
    cluster.kubectl(&["delete", "-f", &crd_file, "--wait=true"], None).expect("CRD deleted");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BIN)
            .args(["run", "--namespace", &ns.name, "--admin-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", &kubeconfig)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the operator exits promptly without its CRD")
    .expect("runs");
    let restored = cluster
        .kubectl(&["apply", "--server-side", "-f", &crd_file], None)
        .and_then(|_| cluster.wait_established(&["crd/grpcservices.grpcoperator.io"]));
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kubectl apply -f crds/"));
    restored.expect("CRD re-created");

    let port = grpc_operator_testkit::ports::free_port();
    let child = tokio::process::Command::new(BIN)
        .args(["run", "--namespace", &ns.name, "--admin-addr", &format!("127.0.0.1:{port}")])
        .env("KUBECONFIG", &kubeconfig)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            && http_get(port, "/readyz").await.starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(Instant::now() < deadline, "operator never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(http_get(port, "/healthz").await.starts_with("HTTP/1.1 200"));
    let metrics = http_get(port, "/metrics").await;
    assert!(metrics.contains("process_resident_memory_bytes"), "{metrics}");

    let pid = child.id().expect("running").to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("operator stops within 10 s of SIGTERM")
        .expect("wait");
    assert!(out.status.success(), "graceful shutdown exits 0");
    let logs = String::from_utf8_lossy(&out.stderr);
    let first = logs.lines().next().unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(first).expect("JSON logs by default");
    assert_eq!(parsed["level"], "INFO", "{first}");
}
