//! `/metrics` against the real Prometheus tooling: `promtool check metrics` lints the exposition,
//! and a real `prometheus` server scrapes the admin port and answers PromQL over its HTTP API.

use grpc_operator_testkit::ports::free_port;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use grpc_runtime::metrics::{
    HANDLING_SECONDS_BUCKETS, LABEL_CODE, LABEL_METHOD, LABEL_SERVICE, LABEL_TYPE, SERVER_HANDLED_TOTAL,
    SERVER_HANDLING_SECONDS, SERVER_MSG_SENT_TOTAL, SERVER_STARTED_TOTAL,
};
use tokio::io::AsyncWriteExt;

use crate::harness::{TestServer, admin_get, eventually, http1, require_tool, user_server};
use crate::service::pb::{GetUserRequest, ListUsersRequest};

const SERVICE: &str = "user.v1.UserService";
/// Users the seeded store holds (alice and bob).
const SEEDED_USERS: usize = 2;

/// The body of a raw HTTP/1.1 response, de-chunked when sent with `Transfer-Encoding: chunked`.
fn body_of(response: &str) -> String {
    assert!(response.contains("\r\n\r\n"), "no end of headers in:\n{response}");
    let (head, body) = response.split_once("\r\n\r\n").expect("end of headers");
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    if !chunked {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").expect("CRLF after a chunk");
    }
}

/// Percent-encodes a URL query value (everything but RFC 3986 unreserved characters).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `/metrics` exposition of a server.
async fn scrape(admin: SocketAddr) -> String {
    let (status, response) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{response}");
    body_of(&response)
}

#[tokio::test]
async fn promtool_accepts_the_metrics_output() {
    let Some(promtool) = require_tool("promtool") else { return };
    let server = TestServer::start(user_server()).await;
    let mut client = server.client().await;

    let alice = client.get_user(GetUserRequest { user_id: 1 }).await.expect("GetUser 1").into_inner();
    assert_eq!(alice.name, "alice");
    let missing = client.get_user(GetUserRequest { user_id: 404 }).await.expect_err("GetUser 404");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut stream = client.list_users(ListUsersRequest::default()).await.expect("ListUsers").into_inner();
    let mut listed = 0;
    while let Some(user) = stream.message().await.expect("stream message") {
        assert!(!user.name.is_empty());
        listed += 1;
    }
    assert_eq!(listed, SEEDED_USERS);

    // The metrics layer records when the final status has been sent; the client may see it a
    // moment earlier.
    let admin = server.admin;
    let exposition = eventually(Duration::from_secs(5), || async move {
        let text = scrape(admin).await;
        text.contains(&format!(
            "{SERVER_MSG_SENT_TOTAL}{{{LABEL_METHOD}=\"ListUsers\",{LABEL_SERVICE}=\"{SERVICE}\",\
             {LABEL_TYPE}=\"server_stream\"}} {SEEDED_USERS}"
        ))
        .then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("ListUsers msg_sent never reached {SEEDED_USERS}"));

    // promtool reads the exposition from stdin, exits 0 and prints nothing when it is clean
    // (lint problems exit 3 with one line each).
    let mut child = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(exposition.as_bytes()).await.expect("write to promtool");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("promtool finishes within 60 s")
        .expect("promtool output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool check metrics: {:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.trim().is_empty() && stderr.trim().is_empty(), "promtool complaints:\n{stdout}\n{stderr}");

    // go-grpc-prometheus series, labels in the order the prometheus crate renders them
    // (alphabetical).
    let unary = |code: &str| {
        format!(
            "{SERVER_HANDLED_TOTAL}{{{LABEL_CODE}=\"{code}\",{LABEL_METHOD}=\"GetUser\",\
             {LABEL_SERVICE}=\"{SERVICE}\",{LABEL_TYPE}=\"unary\"}}"
        )
    };
    let has_line = |line: &str| exposition.lines().any(|l| l == line);
    for (code, count) in [("OK", 1), ("NotFound", 1), ("Internal", 0), ("DeadlineExceeded", 0)] {
        let line = format!("{} {count}", unary(code));
        assert!(has_line(&line), "missing `{line}` in:\n{exposition}");
    }
    let line = format!(
        "{SERVER_STARTED_TOTAL}{{{LABEL_METHOD}=\"GetUser\",{LABEL_SERVICE}=\"{SERVICE}\",{LABEL_TYPE}=\"unary\"}} 2"
    );
    assert!(has_line(&line), "missing `{line}` in:\n{exposition}");
    let line = format!(
        "{SERVER_HANDLED_TOTAL}{{{LABEL_CODE}=\"OK\",{LABEL_METHOD}=\"ListUsers\",{LABEL_SERVICE}=\"{SERVICE}\",\
         {LABEL_TYPE}=\"server_stream\"}} 1"
    );
    assert!(has_line(&line), "missing `{line}` in:\n{exposition}");

    // The histogram: client_golang's default buckets, no grpc_code label, both GetUser calls.
    let labels = format!("{LABEL_METHOD}=\"GetUser\",{LABEL_SERVICE}=\"{SERVICE}\",{LABEL_TYPE}=\"unary\"");
    let bounds: Vec<String> = HANDLING_SECONDS_BUCKETS.iter().map(f64::to_string).collect();
    assert_eq!(bounds, ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10"]);
    for le in bounds.iter().map(String::as_str).chain(["+Inf"]) {
        let prefix = format!("{SERVER_HANDLING_SECONDS}_bucket{{{labels},le=\"{le}\"}} ");
        assert!(exposition.lines().any(|l| l.starts_with(&prefix)), "missing `{prefix}` in:\n{exposition}");
    }
    let line = format!("{SERVER_HANDLING_SECONDS}_bucket{{{labels},le=\"+Inf\"}} 2");
    assert!(has_line(&line), "missing `{line}` in:\n{exposition}");
    let line = format!("{SERVER_HANDLING_SECONDS}_count{{{labels}}} 2");
    assert!(has_line(&line), "missing `{line}` in:\n{exposition}");
    assert!(
        !exposition.lines().any(|l| l.starts_with(SERVER_HANDLING_SECONDS) && l.contains(LABEL_CODE)),
        "{SERVER_HANDLING_SECONDS} must not carry {LABEL_CODE}:\n{exposition}"
    );
    assert!(exposition.contains(&format!("# TYPE {SERVER_HANDLING_SECONDS} histogram")));
    assert!(exposition.contains(&format!("# TYPE {SERVER_HANDLED_TOTAL} counter")));

    // Process metrics, read from /proc.
    let rss = exposition
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .unwrap_or_else(|| panic!("process_resident_memory_bytes missing:\n{exposition}"));
    assert!(rss.parse::<f64>().expect("RSS is a number") > 0.0, "RSS {rss}");
    for name in ["process_cpu_seconds_total", "process_open_fds", "process_start_time_seconds"] {
        assert!(exposition.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing");
    }

    server.stop().await;
}

/// A `prometheus` server scraping one target every second, killed on drop.
struct Prometheus {
    child: tokio::process::Child,
    web: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(binary: &std::path::Path, job: &str, target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        let mut prometheus = Prometheus { child, web, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let exited = prometheus.child.try_wait().expect("try_wait");
            assert!(exited.is_none(), "prometheus exited with {exited:?}:\n{}", prometheus.log());
            if tokio::net::TcpStream::connect(web).await.is_ok() {
                let (status, _) =
                    http1(web, "GET /-/ready HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n")
                        .await;
                if status == 200 {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within 20 s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: each series' labels and value.
    async fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let request = format!(
            "GET /api/v1/query?query={} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n",
            url_encode(promql)
        );
        let (status, response) = http1(self.web, &request).await;
        assert_eq!(status, 200, "query {promql}:\n{response}");
        let json: serde_json::Value = serde_json::from_str(&body_of(&response)).expect("JSON answer");
        assert_eq!(json["status"], "success", "{json}");
        assert_eq!(json["data"]["resultType"], "vector", "{json}");
        json["data"]["result"]
            .as_array()
            .expect("result list")
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().expect("sample value string").parse().expect("a number");
                (r["metric"].clone(), value)
            })
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_metrics_and_sees_the_calls_with_their_codes() {
    let Some(binary) = require_tool("prometheus") else { return };
    let server = TestServer::start(user_server()).await;
    let mut client = server.client().await;
    for id in [1, 2, 1] {
        client.get_user(GetUserRequest { user_id: id }).await.expect("GetUser of a seeded user");
    }
    for id in [404, 405] {
        let status = client.get_user(GetUserRequest { user_id: id }).await.expect_err("unknown user");
        assert_eq!(status.code(), tonic::Code::NotFound);
    }

    let job = "grpc-runtime-test";
    let prometheus = Prometheus::start(&binary, job, server.admin).await;

    let expected = [("OK", 3.0), ("NotFound", 2.0)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let last = loop {
        let mut answers = Vec::new();
        for (code, want) in expected {
            let promql = format!(
                "{SERVER_HANDLED_TOTAL}{{job=\"{job}\",{LABEL_METHOD}=\"GetUser\",{LABEL_CODE}=\"{code}\"}}"
            );
            let series = prometheus.query(&promql).await;
            let done = series.len() == 1 && series[0].1 == want;
            answers.push((promql, series, done));
        }
        if answers.iter().all(|a| a.2) {
            break answers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never saw 3 OK and 2 NotFound within 20 s; last answers: {answers:?}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for (_, series, _) in &last {
        let labels = &series[0].0;
        assert_eq!(labels[LABEL_SERVICE], SERVICE, "{labels}");
        assert_eq!(labels[LABEL_TYPE], "unary", "{labels}");
        assert_eq!(labels["instance"], server.admin.to_string(), "{labels}");
    }

    let up = prometheus.query(&format!("up{{job=\"{job}\"}}")).await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0, "target down: {up:?}");

    // PromQL over the pre-initialised series: every code exists from the first scrape (zero).
    let internal = prometheus
        .query(&format!(
            "{SERVER_HANDLED_TOTAL}{{job=\"{job}\",{LABEL_METHOD}=\"GetUser\",{LABEL_CODE}=\"Internal\"}}"
        ))
        .await;
    assert_eq!(internal.len(), 1, "{internal:?}");
    assert_eq!(internal[0].1, 0.0, "{internal:?}");
    let buckets = prometheus
        .query(&format!("{SERVER_HANDLING_SECONDS}_bucket{{job=\"{job}\",{LABEL_METHOD}=\"GetUser\"}}"))
        .await;
    assert_eq!(buckets.len(), HANDLING_SECONDS_BUCKETS.len() + 1, "{buckets:?}");

    prometheus.stop().await;
    server.stop().await;
}
