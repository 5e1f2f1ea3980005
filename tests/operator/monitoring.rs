//! The monitoring objects against the real Prometheus tools (Debian's
//! `promtool`): every generated rule group passes `promtool check rules`,
//! and `promtool test rules` shows each alert firing when it should (every
//! burn-rate window pair included) and staying quiet when it should not.

use std::fmt::Write as _;
use std::path::Path;

use grpc_operator::monitoring::rules::{
    CERTIFICATE_EXPIRING, ERROR_BUDGET_BURN, ERROR_RATE_HIGH, LATENCY_HIGH, PANICS_RECOVERED, TARGET_DOWN,
};
use serde_json::{Value, json};

use crate::harness::Harness;
use crate::workload::{Creds, tool};

/// The ServiceMonitors of the test's namespace.
pub(crate) fn service_monitor_api(h: &Harness) -> kube::Api<kube::api::DynamicObject> {
    let ar = grpc_operator::children::service_monitor::monitoring_api("ServiceMonitor", "servicemonitors");
    kube::Api::namespaced_with(h.client.clone(), h.ns(), &ar)
}

/// The PrometheusRules of the test's namespace.
pub(crate) fn prometheus_rule_api(h: &Harness) -> kube::Api<kube::api::DynamicObject> {
    let ar = grpc_operator::children::service_monitor::monitoring_api("PrometheusRule", "prometheusrules");
    kube::Api::namespaced_with(h.client.clone(), h.ns(), &ar)
}

/// The rendered documents of `yaml`.
fn render(yaml: &str) -> Vec<Value> {
    let text =
        grpc_operator::render::render_texts(&[("input".to_owned(), yaml.to_owned())]).expect("renders");
    serde_saphyr::from_multiple::<Value>(&text).expect("yaml").into_iter().filter(|d| !d.is_null()).collect()
}

fn prometheus_rule(docs: &[Value]) -> Option<Value> {
    docs.iter().find(|d| d["kind"] == "PrometheusRule").cloned()
}

/// A GrpcService manifest with `spec` lines added.
fn service(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  image: i:1\n  services: [user.v1.UserService]\n{spec}"
    )
}

/// Every sample, and variants covering each rule: TLS off (no certificate
/// rule), an SLO over 7 and 90 days, custom severities and thresholds.
fn rule_inputs() -> Vec<(String, String)> {
    let mut inputs = Vec::new();
    let samples = grpc_operator_testkit::repo_root().join("config/samples");
    for entry in std::fs::read_dir(&samples).expect("samples") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "kustomization.yaml") {
            inputs.push((path.display().to_string(), std::fs::read_to_string(&path).expect("sample")));
        }
    }
    inputs.push(("defaults".into(), service("defaults", "")));
    inputs.push(("no-tls".into(), service("no-tls", "  tls: {mode: disabled}\n")));
    inputs.push((
        "slo-7d".into(),
        service(
            "slo-7d",
            "  monitoring: {slo: {objective: 99, window: 7d}, alerts: {for: 30s, errorRatePercent: 0.5}}\n",
        ),
    ));
    inputs.push((
        "slo-90d".into(),
        service(
            "slo-90d",
            "  monitoring: {slo: {objective: 99.99, window: 90d}, alerts: {severity: {page: sev1, ticket: sev3}, latencyP99Seconds: 10}}\n",
        ),
    ));
    inputs
}

fn write_rules(dir: &Path, file: &str, rule: &Value) -> std::path::PathBuf {
    let path = dir.join(file);
    let groups = json!({"groups": rule["spec"]["groups"]});
    std::fs::write(&path, serde_json::to_string_pretty(&groups).expect("json")).expect("write");
    path
}

#[test]
fn generated_rules_of_every_sample_pass_promtool_check_rules() {
    let promtool = tool("promtool");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, (name, yaml)) in rule_inputs().into_iter().enumerate() {
        let rule =
            prometheus_rule(&render(&yaml)).unwrap_or_else(|| Value::String(format!("{name}: no rule")));
        assert!(rule.is_object(), "{rule}");
        files.push(write_rules(dir.path(), &format!("rules-{i}.json"), &rule));
    }
    let out = std::process::Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .args(&files)
        .output()
        .expect("promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    assert_eq!(text.matches("SUCCESS").count(), files.len(), "{text}");
    assert!(!text.contains("WARNING"), "{text}");
}

/// A counter's samples, one per minute: `(minutes, increase per minute)`
/// segments, written in promtool's expanding notation.
fn counter(segments: &[(u32, f64)]) -> String {
    let mut out = String::new();
    let mut value = 0.0;
    for (i, (minutes, per_minute)) in segments.iter().enumerate() {
        // The first segment starts at 0; later ones continue from the last value.
        let (start, count) = if i == 0 { (0.0, *minutes) } else { (value + per_minute, minutes - 1) };
        let _ = write!(out, "{start}+{per_minute}x{count} ");
        value = start + per_minute * f64::from(count);
    }
    out.trim_end().to_owned()
}

/// `grpc_server_handled_total` of GetUser with `code`.
fn handled(code: &str) -> String {
    format!(
        r#"grpc_server_handled_total{{namespace="shop", job="svc", pod="svc-0", grpc_type="unary", grpc_service="user.v1.UserService", grpc_method="GetUser", grpc_code="{code}"}}"#
    )
}

fn series(name: String, values: String) -> Value {
    json!({"series": name, "values": values})
}

fn method_labels(severity: &str) -> Value {
    json!({"severity": severity, "namespace": "shop", "job": "svc", "grpc_service": "user.v1.UserService", "grpc_method": "GetUser"})
}

/// One `promtool test rules` case: input series and the alerts expected at
/// `eval_minutes` (an empty list: the alert must be quiet).
fn case(name: &str, input: Vec<Value>, checks: Vec<(u32, &str, Vec<Value>)>) -> Value {
    let alerts: Vec<Value> = checks
        .into_iter()
        .map(|(minutes, alert, expected)| {
            json!({
                "eval_time": format!("{minutes}m"),
                "alertname": alert,
                "exp_alerts": expected.into_iter().map(|l| json!({"exp_labels": l})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"name": name, "interval": "1m", "input_series": input, "alert_rule_test": alerts})
}

fn burn(long: &str, short: &str, page: bool) -> Value {
    json!({"severity": if page { "critical" } else { "warning" }, "namespace": "shop", "job": "svc", "long_window": long, "short_window": short})
}

/// Three days (4320 minutes) of clean traffic at 600 calls a minute, then
/// `minutes` at `error_share` server errors: the history the long windows
/// need.
fn after_clean_history(minutes: u32, error_share: f64) -> Vec<Value> {
    let per_minute = 600.0;
    let errors = per_minute * error_share;
    vec![
        series(handled("OK"), counter(&[(4320, per_minute), (minutes, per_minute - errors)])),
        series(handled("Unavailable"), counter(&[(4320, 0.0), (minutes, errors)])),
    ]
}

#[test]
fn every_alert_fires_when_it_should_and_stays_quiet_when_it_should_not() {
    let promtool = tool("promtool");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = service("svc", "  monitoring: {slo: {objective: 99.9, window: 30d}}\n");
    let mut rule = prometheus_rule(&render(&yaml)).expect("rule");
    // Annotations are templates rendered with the firing value; promtool
    // compares them verbatim, so the unit tests check expressions, labels
    // and `for` on a copy without them (`promtool check rules` parses the
    // templates, and the live Prometheus test renders them).
    if let Some(rules) = rule.pointer_mut("/spec/groups/0/rules").and_then(Value::as_array_mut) {
        for r in rules {
            if let Some(obj) = r.as_object_mut() {
                obj.remove("annotations");
            }
        }
    }
    write_rules(dir.path(), "rules.json", &rule);

    let per_minute = |per_second: f64| per_second * 60.0;
    let mut tests = vec![
        case(
            "9% Unavailable at 10 calls/s fires after `for` (5m)",
            vec![
                series(handled("OK"), counter(&[(30, per_minute(9.1))])),
                series(handled("Unavailable"), counter(&[(30, per_minute(0.9))])),
            ],
            vec![(4, ERROR_RATE_HIGH, vec![]), (15, ERROR_RATE_HIGH, vec![method_labels("critical")])],
        ),
        case(
            "1% server errors at errorRatePercent 5 stay quiet",
            vec![
                series(handled("OK"), counter(&[(30, per_minute(9.9))])),
                series(handled("Internal"), counter(&[(30, per_minute(0.1))])),
            ],
            vec![(20, ERROR_RATE_HIGH, vec![])],
        ),
        case(
            "a NotFound storm is the callers' error: no error-rate or burn alert",
            vec![
                series(handled("OK"), counter(&[(120, per_minute(5.0))])),
                series(handled("NotFound"), counter(&[(120, per_minute(5.0))])),
                series(handled("InvalidArgument"), counter(&[(120, per_minute(2.0))])),
            ],
            vec![(100, ERROR_RATE_HIGH, vec![]), (100, ERROR_BUDGET_BURN, vec![])],
        ),
        case(
            "all calls failing below 0.1 calls/s stay quiet (the traffic guard)",
            vec![series(handled("Internal"), counter(&[(30, per_minute(0.05))]))],
            vec![(20, ERROR_RATE_HIGH, vec![])],
        ),
    ];

    // Latency: unary GetUser, every call in the 2.5 s bucket (p99 > 1 s),
    // and health Watch streams of an hour, which never count.
    let bucket = |service: &str, method: &str, typ: &str, le: &str| {
        format!(
            r#"grpc_server_handling_seconds_bucket{{namespace="shop", job="svc", pod="svc-0", grpc_type="{typ}", grpc_service="{service}", grpc_method="{method}", le="{le}"}}"#
        )
    };
    let count = |service: &str, method: &str, typ: &str| {
        format!(
            r#"grpc_server_handling_seconds_count{{namespace="shop", job="svc", pod="svc-0", grpc_type="{typ}", grpc_service="{service}", grpc_method="{method}"}}"#
        )
    };
    let mut slow = Vec::new();
    for (svc, method, typ, fast_le) in [
        ("user.v1.UserService", "GetUser", "unary", "1"),
        ("grpc.health.v1.Health", "Check", "unary", "1"),
        ("user.v1.UserService", "ListUsers", "server_stream", "1"),
    ] {
        slow.push(series(bucket(svc, method, typ, fast_le), counter(&[(30, 0.0)])));
        slow.push(series(bucket(svc, method, typ, "2.5"), counter(&[(30, 600.0)])));
        slow.push(series(bucket(svc, method, typ, "+Inf"), counter(&[(30, 600.0)])));
        slow.push(series(count(svc, method, typ), counter(&[(30, 600.0)])));
    }
    tests.push(case(
        "p99 above 1 s on unary GetUser fires; health checks and streams never do",
        slow,
        vec![(3, LATENCY_HIGH, vec![]), (15, LATENCY_HIGH, vec![method_labels("critical")])],
    ));
    let fast = vec![
        series(bucket("user.v1.UserService", "GetUser", "unary", "0.25"), counter(&[(30, 600.0)])),
        series(bucket("user.v1.UserService", "GetUser", "unary", "1"), counter(&[(30, 600.0)])),
        series(bucket("user.v1.UserService", "GetUser", "unary", "+Inf"), counter(&[(30, 600.0)])),
        series(count("user.v1.UserService", "GetUser", "unary"), counter(&[(30, 600.0)])),
    ];
    tests.push(case("p99 under 0.25 s stays quiet", fast, vec![(20, LATENCY_HIGH, vec![])]));

    let up = r#"up{namespace="shop", job="svc", instance="10.0.0.1:9090", endpoint="admin"}"#;
    tests.push(case(
        "a target down for `for` fires",
        vec![series(up.to_owned(), "1x5 0x20".to_owned())],
        vec![
            (8, TARGET_DOWN, vec![]),
            (
                15,
                TARGET_DOWN,
                vec![json!({"severity": "critical", "namespace": "shop", "job": "svc", "instance": "10.0.0.1:9090", "endpoint": "admin"})],
            ),
        ],
    ));
    let panics = r#"grpc_req_panics_recovered_total{namespace="shop", job="svc", pod="svc-0"}"#;
    tests.push(case(
        "a recovered panic alerts at once, and stops five minutes after the last",
        vec![series(panics.to_owned(), "0x10 1 1x30".to_owned())],
        vec![
            (9, PANICS_RECOVERED, vec![]),
            (
                12,
                PANICS_RECOVERED,
                vec![json!({"severity": "warning", "namespace": "shop", "job": "svc", "pod": "svc-0"})],
            ),
            (25, PANICS_RECOVERED, vec![]),
        ],
    ));
    // renewBefore defaults to a third of 720h (240h): the alert fires below
    // 120h (432000 s) left. promtool's clock starts at 0.
    let expiry = |pod: &str| {
        format!(
            r#"grpc_runtime_tls_certificate_expiry_timestamp_seconds{{namespace="shop", job="svc", pod="{pod}"}}"#
        )
    };
    tests.push(case(
        "a certificate with less than half of renewBefore left fires; a fresh one and TLS off (0) do not",
        vec![
            series(expiry("svc-0"), "400000x30".to_owned()),
            series(expiry("svc-1"), "10000000x30".to_owned()),
            series(expiry("svc-2"), "0x30".to_owned()),
        ],
        vec![(
            20,
            CERTIFICATE_EXPIRING,
            vec![json!({"severity": "warning", "namespace": "shop", "job": "svc", "pod": "svc-0"})],
        )],
    ));

    // The burn-rate pairs at 99.9% over 30 days: thresholds 1.44%, 0.6%,
    // 0.3% and 0.1% of server errors.
    tests.push(case(
        "1h of 3% errors after clean days pages on the 1h/5m pair only",
        after_clean_history(60, 0.03),
        vec![(4380, ERROR_BUDGET_BURN, vec![burn("1h", "5m", true)])],
    ));
    tests.push(case(
        "6h of 1% errors pages on the 6h/30m pair only",
        after_clean_history(360, 0.01),
        vec![(4680, ERROR_BUDGET_BURN, vec![burn("6h", "30m", true)])],
    ));
    tests.push(case(
        "a day of 0.5% errors opens the 1d/2h ticket (and the 3d/6h one: a third of it is over 0.1%)",
        after_clean_history(1440, 0.005),
        vec![(5760, ERROR_BUDGET_BURN, vec![burn("1d", "2h", false), burn("3d", "6h", false)])],
    ));
    tests.push(case(
        "three days of 0.15% errors open the 3d/6h ticket only",
        vec![
            series(handled("OK"), counter(&[(4380, 600.0 * 0.9985)])),
            series(handled("Unavailable"), counter(&[(4380, 600.0 * 0.0015)])),
        ],
        vec![(4370, ERROR_BUDGET_BURN, vec![burn("3d", "6h", false)])],
    ));
    tests.push(case(
        "errors that stopped 10 minutes ago no longer page: the short window resets the alert",
        {
            let mut s = after_clean_history(50, 0.03);
            // Ten clean minutes after the burst.
            s[0] = series(handled("OK"), counter(&[(4320, 600.0), (50, 582.0), (10, 600.0)]));
            s[1] = series(handled("Unavailable"), counter(&[(4320, 0.0), (50, 18.0), (10, 0.0)]));
            s
        },
        vec![(4378, ERROR_BUDGET_BURN, vec![])],
    ));

    let file = json!({"rule_files": ["rules.json"], "evaluation_interval": "1m", "tests": tests});
    let test_path = dir.path().join("tests.json");
    std::fs::write(&test_path, serde_json::to_string_pretty(&file).expect("json")).expect("write");
    let out = std::process::Command::new(&promtool)
        .arg("test")
        .arg("rules")
        .arg(&test_path)
        .current_dir(dir.path())
        .output()
        .expect("promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool test rules failed:\n{text}");
}

/// Puts prometheus-operator's CRDs back when dropped, even after a failed
/// assertion.
struct ReinstallPrometheusOperatorCrds(&'static grpc_operator_testkit::TestCluster);

impl Drop for ReinstallPrometheusOperatorCrds {
    fn drop(&mut self) {
        let dir = self.0.info().prometheus_operator_crds.display().to_string();
        let _ = self.0.kubectl(&["apply", "--server-side", "-f", &dir], None);
        let _ = self.0.wait_established(&[
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ]);
    }
}

#[tokio::test]
async fn without_prometheus_operators_crds_monitoring_waits_for_them_and_everything_else_is_ready() {
    let mut h = Harness::exclusive().await;
    let reinstall = ReinstallPrometheusOperatorCrds(h.cluster);
    h.cluster
        .kubectl(
            &[
                "delete",
                "crd",
                "servicemonitors.monitoring.coreos.com",
                "prometheusrules.monitoring.coreos.com",
                "--wait=true",
            ],
            None,
        )
        .expect("prometheus-operator's CRDs removed");
    h.start_controller().await;
    crate::harness::create(&h, &crate::harness::sample("a")).await;
    let obj = h.wait_condition("a", "MonitoringReady", "False", "CRDNotInstalled").await;
    let message = crate::harness::condition(&obj, "MonitoringReady")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("monitoring.coreos.com/v1"), "{message}");
    // Monitoring never gates serving.
    h.wait_ready("a", "True", "Ready").await;

    // Installed later: both objects appear without a restart.
    drop(reinstall);
    let (monitors, rules) = (service_monitor_api(&h), prometheus_rule_api(&h));
    crate::harness::eventually(
        "the ServiceMonitor and the PrometheusRule once the CRDs are back",
        || async {
            monitors.get_opt("a").await.ok()??;
            rules.get_opt("a").await.ok()??;
            Some(())
        },
    )
    .await;
    // No Prometheus object selects them (this test runs alone on the cluster).
    h.wait_condition("a", "MonitoringReady", "False", "NotSelectedByAnyPrometheus").await;

    // Monitoring off: both pruned, and the condition goes away with them.
    crate::harness::patch_spec(
        &h,
        "a",
        json!({"monitoring": {"serviceMonitor": {"enabled": false}, "alerts": {"enabled": false}}}),
    )
    .await;
    crate::harness::eventually("ServiceMonitor and PrometheusRule pruned", || async {
        let sm = monitors.get_opt("a").await.ok()?;
        let rule = rules.get_opt("a").await.ok()?;
        (sm.is_none() && rule.is_none()).then_some(())
    })
    .await;
    crate::harness::eventually("MonitoringReady gone", || async {
        let obj = h.grpc_service("a").await?;
        crate::harness::condition(&obj, "MonitoringReady").is_none().then_some(())
    })
    .await;
    h.shutdown().await;
}

/// `value` percent-encoded for a URL query.
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GET to Prometheus's HTTP API (HTTP/1.0: no chunked body); the JSON body.
async fn prometheus_api(addr: std::net::SocketAddr, path: &str) -> Option<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Prometheus (Debian's) on loopback with `config`, stopped on drop.
struct Prometheus {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(config: &str, rules: &[(&str, &Value)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for (file, rule) in rules {
            write_rules(dir.path(), file, rule);
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let port = grpc_operator_testkit::ports::free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = tokio::process::Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        let p = Self { child, addr, _dir: dir };
        crate::harness::eventually("Prometheus ready", || async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").await.ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.ok()?;
            out.starts_with("HTTP/1.0 200").then_some(())
        })
        .await;
        p
    }

    async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let body = prometheus_api(self.addr, &format!("/api/v1/query?query={}", urlencode(promql))).await?;
        (body["status"] == "success").then(|| body["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Active alerts named `name`: (state, labels); `None` when the API did
    /// not answer.
    async fn alerts(&self, name: &str) -> Option<Vec<(String, Value)>> {
        let body = prometheus_api(self.addr, "/api/v1/alerts").await?;
        let alerts = body["data"]["alerts"].as_array()?;
        Some(
            alerts
                .iter()
                .filter(|a| a["labels"]["alertname"] == name)
                .map(|a| (a["state"].as_str().unwrap_or_default().to_owned(), a["labels"].clone()))
                .collect(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The validated GrpcService of a manifest.
fn svc_of(yaml: &str) -> grpc_operator::reconcile::validate::ValidatedService {
    grpc_operator::reconcile::validate::validate(
        &serde_saphyr::from_str(yaml).expect("manifest"),
        grpc_operator::reconcile::validate::Origin::Manifest,
    )
    .expect("valid")
}

/// A self-signed certificate for `localhost` written as a kubelet would
/// mount the workload's Secret (`tls.crt`, `tls.key`, `ca.crt`).
fn server_tls(dir: &Path) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), signing_key.serialize_pem()).expect("write");
    std::fs::write(dir.join("ca.crt"), cert.pem()).expect("write");
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_runtime_fires_and_resolves_the_error_alert_and_answers_every_dashboard_query()
 {
    // The GrpcService: server TLS (so the certificate panel has data), an
    // SLO, the dashboard, and short `for` and scrape intervals for the test.
    let yaml = service(
        "svc",
        "  tls: {mode: server}\n  monitoring: {serviceMonitor: {interval: 1s}, alerts: {for: 5s}, slo: {objective: 99.9}, dashboard: {enabled: true}}\n",
    );
    let docs = render(&yaml);
    let rule = prometheus_rule(&docs).expect("rule");
    let sm = docs.iter().find(|d| d["kind"] == "ServiceMonitor").expect("service monitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");

    let dir = tempfile::tempdir().expect("tempdir");
    server_tls(dir.path());
    let (grpc, admin) =
        (grpc_operator_testkit::ports::free_port(), grpc_operator_testkit::ports::free_port());
    let _runtime = tokio::process::Command::new(crate::workload::example_binary())
        .env_clear()
        .env("GRPC_PORT", grpc.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("TLS_MODE", "server")
        .env("TLS_DIR", dir.path())
        .env("EXAMPLE_FAULT_INJECTION", "1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the runtime example starts");

    // The labels the ServiceMonitor's target gets from prometheus-operator
    // (`job` from jobLabel, the target's namespace and pod, the endpoint).
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [rules.json]\n\
         scrape_configs:\n\
         - job_name: serviceMonitor/shop/svc/0\n\
         \x20 static_configs:\n\
         \x20 - targets: ['127.0.0.1:{admin}']\n\
         \x20   labels: {{job: svc, namespace: shop, pod: svc-0, endpoint: admin, service: svc}}\n"
    );
    let prometheus = Prometheus::start(&config, &[("rules.json", &rule)]).await;
    let ca = Creds::write(dir.path(), "client", &std::fs::read(dir.path().join("ca.crt")).expect("ca"), None);
    let target: std::net::SocketAddr = format!("127.0.0.1:{grpc}").parse().expect("addr");
    crate::harness::eventually("the runtime serves", || async {
        let v = crate::workload::grpcio(target, "localhost", &ca, &[]).await;
        (v["ok"] == true).then_some(())
    })
    .await;

    // 20 calls/s succeed and 2/s fail with Unavailable (9%), for up to 60 s:
    // the error-rate alert goes pending, then firing.
    let load = |seconds: &str, interval_ms: &str, fail: Option<&str>| {
        let mut args = vec!["--call", "loop", "--seconds", seconds, "--interval-ms", interval_ms];
        let metadata;
        if let Some(code) = fail {
            metadata = format!("x-example-fail={code}");
            args.extend(["--metadata", metadata.as_str()]);
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let ca =
            Creds::write(dir.path(), "client", &std::fs::read(dir.path().join("ca.crt")).expect("ca"), None);
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::workload::grpcio(target, "localhost", &ca, &args).await
        })
    };
    let ok_load = load("150", "50", None);
    let failing = load("60", "500", Some("unavailable"));
    let not_found = load("150", "200", Some("not_found"));
    let firing = crate::harness::eventually("GrpcServiceErrorRateHigh firing", || async {
        prometheus.alerts(ERROR_RATE_HIGH).await?.into_iter().find(|(state, _)| state == "firing")
    })
    .await;
    assert_eq!(firing.1["grpc_method"], "GetUser", "{}", firing.1);
    assert_eq!(firing.1["severity"], "critical");
    // The dashboard's error-ratio panel shows them, on GetUser.
    let ratio = grpc_operator::monitoring::dashboard::panel_queries(&svc_of(&yaml), None, "1m")
        .into_iter()
        .find(|(panel, _)| panel.starts_with("Server-error ratio"))
        .map(|(_, q)| q)
        .expect("error-ratio panel");
    crate::harness::eventually("the error-ratio panel above 0 for GetUser", || async {
        let result = prometheus.query(&ratio).await?;
        result
            .iter()
            .any(|r| {
                r["metric"]["grpc_method"] == "GetUser"
                    && r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0)
            })
            .then_some(())
    })
    .await;
    // The errors stop (the failing caller is killed).
    failing.abort();

    // Every dashboard query returns data.
    let svc = svc_of(&yaml);
    for (panel, query) in
        grpc_operator::monitoring::dashboard::panel_queries(&svc, svc.monitoring.alerts.as_ref(), "1m")
    {
        let result = crate::harness::eventually(&format!("data for {panel}: {query}"), || async {
            prometheus.query(&query).await.filter(|r| !r.is_empty())
        })
        .await;
        assert!(!result.is_empty(), "{panel}");
    }
    // The rules evaluate without errors.
    let rules = prometheus_api(prometheus.addr, "/api/v1/rules").await.expect("rules");
    let group = &rules["data"]["groups"][0];
    for r in group["rules"].as_array().into_iter().flatten() {
        assert_eq!(r["health"], "ok", "{r}");
    }

    // With the errors stopped (NotFound goes on: a client error), successes
    // dilute the 5-minute ratio under 5% and the alert resolves.
    crate::harness::eventually("GrpcServiceErrorRateHigh resolved", || async {
        prometheus.alerts(ERROR_RATE_HIGH).await?.is_empty().then_some(())
    })
    .await;
    ok_load.abort();
    not_found.abort();
}

/// The Prometheuses of the test's namespace.
fn prometheus_api_of(h: &Harness) -> kube::Api<kube::api::DynamicObject> {
    let ar = grpc_operator::monitoring::selection::SELECTING_KINDS[0].api();
    kube::Api::namespaced_with(h.client.clone(), h.ns(), &ar)
}

/// A `Prometheus` named `name` selecting ServiceMonitors and rules labelled
/// `release=<release>` in its own namespace.
async fn create_prometheus(h: &Harness, name: &str, release: &str) {
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": name, "namespace": h.ns()},
        "spec": {
            "replicas": 1,
            "serviceMonitorSelector": {"matchLabels": {"release": release}},
            "ruleSelector": {"matchLabels": {"release": release}},
        },
    }))
    .expect("Prometheus");
    prometheus_api_of(h).create(&kube::api::PostParams::default(), &obj).await.expect("Prometheus created");
}

fn condition_message(obj: &Value, type_: &str) -> String {
    crate::harness::condition(obj, type_).and_then(|c| c["message"].as_str()).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn monitoring_ready_names_the_missing_labels_until_a_prometheus_selects_and_follows_its_changes() {
    let h = Harness::start().await;
    let release = h.ns().to_owned();
    create_prometheus(&h, "k8s", &release).await;
    crate::harness::create(&h, &crate::harness::sample("a")).await;
    let obj = h.wait_condition("a", "MonitoringReady", "False", "NotSelectedByAnyPrometheus").await;
    let message = condition_message(&obj, "MonitoringReady");
    assert!(
        message.contains(&format!(
            "Prometheus {release}/k8s selects ServiceMonitors labelled release={release}"
        )) && message.contains("spec.monitoring.labels"),
        "{message}"
    );

    // The label it asks for: selected, both objects.
    crate::harness::patch_spec(&h, "a", json!({"monitoring": {"labels": {"release": release}}})).await;
    let obj = h.wait_condition("a", "MonitoringReady", "True", "Selected").await;
    let message = condition_message(&obj, "MonitoringReady");
    assert!(
        message.contains("ServiceMonitor is selected by Prometheus")
            && message.contains("PrometheusRule is selected"),
        "{message}"
    );

    // The Prometheus changes its selector: re-checked without a spec change.
    let patch = json!({"spec": {"serviceMonitorSelector": {"matchLabels": {"release": "elsewhere"}}}});
    prometheus_api_of(&h)
        .patch("k8s", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .expect("selector changed");
    let obj = h.wait_condition("a", "MonitoringReady", "False", "NotSelectedByAnyPrometheus").await;
    assert!(condition_message(&obj, "MonitoringReady").contains("release=elsewhere"), "{obj}");
    h.shutdown().await;
}

#[tokio::test]
async fn an_operator_that_may_not_read_prometheus_objects_says_selection_unknown() {
    let mut h = Harness::without_controller().await;
    // As a namespaced install without config/monitoring-selection.
    let bindings: kube::Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> =
        kube::Api::all(h.client.clone());
    bindings
        .delete(
            &format!("{}-{}", grpc_operator_testkit::MONITORING_SELECTION_ROLE, h.ns()),
            &kube::api::DeleteParams::default(),
        )
        .await
        .expect("selection binding removed");
    h.start_controller().await;
    crate::harness::create(&h, &crate::harness::sample("a")).await;
    let obj = h.wait_condition("a", "MonitoringReady", "Unknown", "SelectionUnknown").await;
    assert!(condition_message(&obj, "MonitoringReady").contains("forbidden"), "{obj}");
    h.wait_ready("a", "True", "Ready").await;
    h.shutdown().await;
}

/// The admin's API server address and client TLS files, for a Go client
/// that takes them as flags.
fn admin_tls_files(h: &Harness, dir: &Path) -> (String, [std::path::PathBuf; 3]) {
    let text = std::fs::read_to_string(h.cluster.kubeconfig()).expect("kubeconfig");
    let kubeconfig: Value = serde_saphyr::from_str(&text).expect("kubeconfig YAML");
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let user = &kubeconfig["users"][0]["user"];
    let file = |name: &str, from: &Value, path: &str| {
        let out = dir.join(name);
        if let Some(p) = from[path].as_str() {
            std::fs::copy(p, &out).expect("copy");
        } else {
            use base64::Engine as _;
            let data = from[format!("{path}-data")].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD.decode(data.trim()).expect("base64");
            std::fs::write(&out, bytes).expect("write");
        }
        out
    };
    (
        cluster["server"].as_str().expect("server").to_owned(),
        [
            file("ca.crt", cluster, "certificate-authority"),
            file("admin.crt", user, "client-certificate"),
            file("admin.key", user, "client-key"),
        ],
    )
}

#[tokio::test]
async fn the_real_prometheus_operator_scrapes_our_service_monitor_and_loads_our_rules() {
    let h = Harness::start().await;
    let release = h.ns().to_owned();
    crate::harness::create(&h, &crate::harness::sample("a")).await;
    crate::harness::patch_spec(
        &h,
        "a",
        json!({"monitoring": {"labels": {"release": release}, "slo": {"objective": 99.9}}}),
    )
    .await;
    create_prometheus(&h, "k8s", &release).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let (server, [ca, cert, key]) = admin_tls_files(&h, dir.path());
    let port = grpc_operator_testkit::ports::free_port();
    let log = std::fs::File::create(dir.path().join("prometheus-operator.log")).expect("log");
    let _operator = tokio::process::Command::new(&h.cluster.info().prometheus_operator)
        .arg(format!("--apiserver={server}"))
        .arg(format!("--ca-file={}", ca.display()))
        .arg(format!("--cert-file={}", cert.display()))
        .arg(format!("--key-file={}", key.display()))
        .arg(format!("--namespaces={}", h.ns()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--feature-gates=StatusForConfigurationResources=true")
        .arg("--kubelet-endpoints=false")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus-operator starts");
    let log_text = || std::fs::read_to_string(dir.path().join("prometheus-operator.log")).unwrap_or_default();

    // The scrape configuration it generates: our ServiceMonitor's job, and
    // valid for promtool.
    let secrets = h.api::<k8s_openapi::api::core::v1::Secret>();
    let gz = crate::harness::eventually("prometheus-operator's generated configuration", || async {
        let secret = secrets.get_opt("prometheus-k8s").await.ok()??;
        let gz = secret.data?.get("prometheus.yaml.gz")?.0.clone();
        (!gz.is_empty()).then_some(gz)
    })
    .await;
    let gz_path = dir.path().join("prometheus.yaml.gz");
    std::fs::write(&gz_path, &gz).expect("write");
    let out = std::process::Command::new("gzip").arg("-dkf").arg(&gz_path).output().expect("gzip");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config_path = dir.path().join("prometheus.yaml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    let job = format!("serviceMonitor/{}/a/0", h.ns());
    assert!(
        config.contains(&job),
        "{job} missing from the generated configuration:\n{config}\n{}",
        log_text()
    );
    // `job` is the Service's app.kubernetes.io/name (jobLabel), the
    // GrpcService's name every rule selects on.
    let relabels_job =
        config.match_indices("__meta_kubernetes_service_label_app_kubernetes_io_name").any(|(i, m)| {
            let after = &config[i + m.len()..config.len().min(i + m.len() + 40)];
            after.trim_start().starts_with("target_label: job")
        });
    assert!(relabels_job, "jobLabel does not become job:\n{config}");
    // promtool of Prometheus 3 (built from its Go module): Debian's lacks
    // Kubernetes service discovery.
    let out = std::process::Command::new(&h.cluster.info().promtool)
        .args(["check", "config", "--syntax-only"])
        .arg(&config_path)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The rules pass its own validation: they reach the rule files it mounts.
    let config_maps = h.api::<k8s_openapi::api::core::v1::ConfigMap>();
    let group = format!("grpcservice.{}.a", h.ns());
    crate::harness::eventually("our rule group in prometheus-operator's rule files", || async {
        let cm = config_maps.get_opt("prometheus-k8s-rulefiles-0").await.ok()??;
        cm.data?
            .values()
            .any(|v| v.contains(&group) && v.contains("GrpcServiceErrorBudgetBurn"))
            .then_some(())
    })
    .await;

    // It reports on our objects (status.bindings), and the condition says so.
    let monitors = service_monitor_api(&h);
    crate::harness::eventually("prometheus-operator's binding on the ServiceMonitor", || async {
        let sm = monitors.get_opt("a").await.ok()??;
        let bindings = sm.data.pointer("/status/bindings")?.as_array()?.clone();
        bindings.iter().any(|b| b["name"] == "k8s").then_some(())
    })
    .await;
    let obj = h.wait_condition("a", "MonitoringReady", "True", "Selected").await;
    assert!(condition_message(&obj, "MonitoringReady").contains("k8s"), "{obj}");

    // A selector that no longer matches: not selected, by its own account or ours.
    let patch = json!({"spec": {"serviceMonitorSelector": {"matchLabels": {"release": "elsewhere"}},
                                "ruleSelector": {"matchLabels": {"release": "elsewhere"}}}});
    prometheus_api_of(&h)
        .patch("k8s", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .expect("selector changed");
    h.wait_condition("a", "MonitoringReady", "False", "NotSelectedByAnyPrometheus").await;
    h.shutdown().await;
}

#[test]
fn the_alertmanager_example_passes_amtool_and_routes_by_severity_and_namespace() {
    let amtool = tool("amtool");
    let config = grpc_operator_testkit::repo_root().join("config/alertmanager/alertmanager.yaml");
    let out = std::process::Command::new(&amtool).arg("check-config").arg(&config).output().expect("amtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
    // Labels as the generated alerts carry them.
    for (labels, receiver) in [
        (
            ["alertname=GrpcServiceErrorRateHigh", "severity=critical", "namespace=shop", "job=user-service"],
            "shop-pager",
        ),
        (
            [
                "alertname=GrpcServicePanicsRecovered",
                "severity=warning",
                "namespace=shop",
                "job=user-service",
            ],
            "shop-tickets",
        ),
        (
            ["alertname=GrpcServiceTargetDown", "severity=critical", "namespace=billing", "job=invoices"],
            "platform-pager",
        ),
        (
            [
                "alertname=GrpcServiceCertificateExpiring",
                "severity=warning",
                "namespace=billing",
                "job=invoices",
            ],
            "platform-tickets",
        ),
    ] {
        let out = std::process::Command::new(&amtool)
            .args(["config", "routes", "test"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--verify.receivers={receiver}"))
            .args(labels)
            .output()
            .expect("amtool");
        assert!(
            out.status.success(),
            "{labels:?} should reach {receiver}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn generated_monitoring_objects_pass_strict_validation_against_prometheus_operators_crds() {
    // The operator's server-side apply does not ask for strict field
    // validation, so a misspelt field would be dropped silently; here every
    // generated ServiceMonitor, PrometheusRule and dashboard ConfigMap is
    // dry-run applied with unknown fields refused.
    let h = Harness::start().await;
    let inputs = rule_inputs();
    let mut checked: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (name, yaml) in &inputs {
        for mut doc in render(yaml) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let dashboard = kind == "ConfigMap"
                && doc["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-dashboard"));
            if !(kind == "ServiceMonitor" || kind == "PrometheusRule" || dashboard) {
                continue;
            }
            doc["metadata"]["namespace"] = json!(h.ns());
            if let Some(meta) = doc["metadata"].as_object_mut() {
                meta.remove("ownerReferences");
            }
            let text = serde_json::to_string(&doc).expect("json");
            let out = h.cluster.kubectl(
                &[
                    "apply",
                    "--server-side",
                    "--dry-run=server",
                    "--validate=strict",
                    "--field-manager=grpc-operator",
                    "-f",
                    "-",
                ],
                Some(&text),
            );
            assert!(out.is_ok(), "{name}: {kind} refused: {out:?}");
            *checked.entry(kind).or_default() += 1;
        }
    }
    assert_eq!(checked.get("ServiceMonitor"), Some(&inputs.len()), "{checked:?}");
    assert_eq!(checked.get("PrometheusRule"), Some(&inputs.len()), "{checked:?}");
    assert!(checked.get("ConfigMap").is_some_and(|n| *n >= 1), "the sample's dashboard: {checked:?}");
    h.shutdown().await;
}
