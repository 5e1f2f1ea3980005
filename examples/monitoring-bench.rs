//! The generated rules of many GrpcServices in a real Prometheus: do they
//! load, how long does each group take to evaluate, and how many series do
//! they create per GrpcService.
//!
//! Renders `--services` GrpcServices (mutual TLS and a 99.9% SLO: every
//! rule the operator generates), loads their rule groups into Debian's
//! Prometheus, and feeds it a synthetic scrape target with the series the
//! runtime exports for one method per service (the 17 codes of
//! `grpc_server_handled_total`, the latency histogram, started, messages,
//! panics, certificate expiry), labelled as the ServiceMonitor's targets
//! are. After `--minutes` it reads Prometheus's own view: rule groups
//! loaded and healthy, evaluation time per group, and the series the rules
//! recorded.
//!
//! ```sh
//! cargo run --release --example monitoring-bench -- --services 1000 --minutes 3
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use grpc_operator::api::GrpcService;
use grpc_operator::monitoring::rules;
use grpc_operator::reconcile::validate::{Origin, validate};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// GrpcServices whose rules are loaded.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// How long Prometheus evaluates before the figures are read.
    #[arg(long, default_value_t = 3)]
    minutes: u64,
    /// Rule evaluation interval, seconds (Prometheus's default is 60 s;
    /// kube-prometheus-stack uses 30 s).
    #[arg(long, default_value_t = 30)]
    evaluation_interval: u64,
}

fn service(i: usize) -> anyhow::Result<GrpcService> {
    let yaml = format!(
        "apiVersion: grpcoperator.io/v1alpha1\nkind: GrpcService\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  image: i:1\n  services: [bench.v1.Svc]\n  monitoring: {{slo: {{objective: 99.9, window: 30d}}}}\n"
    );
    Ok(serde_saphyr::from_str(&yaml)?)
}

/// The exposition of every service's series at `elapsed` seconds: 10 calls/s
/// per service, 0.05% of them `Unavailable` (under every threshold, so the
/// rules compute but nothing fires).
fn exposition(services: usize, elapsed: f64) -> String {
    let mut out = String::with_capacity(services * 4096);
    let calls = 10.0 * elapsed;
    for i in 0..services {
        let base = format!(
            "namespace=\"bench\",job=\"svc-{i}\",pod=\"svc-{i}-0\",grpc_type=\"unary\",grpc_service=\"bench.v1.Svc\",grpc_method=\"Get\""
        );
        for code in grpc_contract::metrics::ALL_CODES {
            let v = match code {
                "OK" => calls * 0.9995,
                "Unavailable" => calls * 0.0005,
                _ => 0.0,
            };
            let _ = writeln!(out, "grpc_server_handled_total{{{base},grpc_code=\"{code}\"}} {v}");
        }
        let _ = writeln!(out, "grpc_server_started_total{{{base}}} {calls}");
        let _ = writeln!(out, "grpc_server_msg_received_total{{{base}}} {calls}");
        let _ = writeln!(out, "grpc_server_msg_sent_total{{{base}}} {calls}");
        for le in grpc_contract::metrics::HANDLING_SECONDS_BUCKETS {
            let share = if le >= 0.025 { 1.0 } else { 0.5 };
            let _ =
                writeln!(out, "grpc_server_handling_seconds_bucket{{{base},le=\"{le}\"}} {}", calls * share);
        }
        let _ = writeln!(out, "grpc_server_handling_seconds_bucket{{{base},le=\"+Inf\"}} {calls}");
        let _ = writeln!(out, "grpc_server_handling_seconds_count{{{base}}} {calls}");
        let _ = writeln!(out, "grpc_server_handling_seconds_sum{{{base}}} {}", calls * 0.01);
        let pod = format!("namespace=\"bench\",job=\"svc-{i}\",pod=\"svc-{i}-0\"");
        let _ = writeln!(out, "grpc_req_panics_recovered_total{{{pod}}} 0");
        let _ = writeln!(out, "grpc_runtime_tls_certificate_expiry_timestamp_seconds{{{pod}}} 4102444800");
    }
    out
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: p\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;

    // 1. The rule groups, as the operator renders them.
    let started = Instant::now();
    let mut groups = Vec::with_capacity(args.services);
    let mut rules_per_group = 0;
    for i in 0..args.services {
        let svc = validate(&service(i)?, Origin::Manifest).map_err(|e| anyhow::anyhow!("{e}"))?;
        let alerts = svc.monitoring.alerts.clone().context("alerts on")?;
        let group = rules::group(&svc, &alerts);
        rules_per_group = group["rules"].as_array().map_or(0, Vec::len);
        groups.push(group);
    }
    let build = started.elapsed();
    let rules_file = dir.path().join("rules.json");
    std::fs::write(&rules_file, serde_json::to_vec(&json!({"groups": groups}))?)?;
    let rules_bytes = std::fs::metadata(&rules_file)?.len();

    // 2. The synthetic target.
    let start = Instant::now();
    let services = args.services;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { exposition(services, start.elapsed().as_secs_f64()) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // 3. Prometheus.
    let port = free_port()?;
    let prom: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let config = format!(
        "global: {{scrape_interval: 15s, evaluation_interval: {}s}}\nrule_files: [rules.json]\nscrape_configs:\n- job_name: runtime\n  honor_labels: true\n  static_configs:\n  - targets: ['{target}']\n- job_name: prometheus\n  static_configs:\n  - targets: ['{prom}']\n",
        args.evaluation_interval
    );
    std::fs::write(dir.path().join("prometheus.yml"), config)?;
    let prometheus_bin = ["prometheus"]
        .iter()
        .map(|t| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin").join(t))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("prometheus"));
    let mut child = tokio::process::Command::new(prometheus_bin)
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={prom}"))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting prometheus (scripts/install-tools.sh installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if get(prom, "/-/ready").await.is_ok_and(|b| b.contains("Ready")) {
            break;
        }
        if Instant::now() > deadline {
            bail!("Prometheus did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let loaded_in = start.elapsed();
    eprintln!(
        "Prometheus ready with {} groups in {loaded_in:.1?}; evaluating for {} min",
        args.services, args.minutes
    );
    tokio::time::sleep(Duration::from_secs(args.minutes * 60)).await;

    // 4. Its own view.
    let rules: Value = serde_json::from_str(&get(prom, "/api/v1/rules").await?)?;
    let loaded = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
    let unhealthy: Vec<String> = loaded
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{} {}: {}", r["name"], r["health"], r["lastError"]))
        .collect();
    let mut eval: Vec<f64> = loaded.iter().filter_map(|g| g["evaluationTime"].as_f64()).collect();
    eval.sort_by(f64::total_cmp);
    let total: f64 = eval.iter().sum();
    let query = |q: &str| {
        let q = urlencode(q);
        async move {
            let v: Value = serde_json::from_str(&get(prom, &format!("/api/v1/query?query={q}")).await?)?;
            anyhow::Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
        }
    };
    let recorded = query("count by (job) ({__name__=~\"grpcservice:.+\", namespace=\"bench\"})").await?;
    let mut per_service: BTreeMap<u64, usize> = BTreeMap::new();
    for r in &recorded {
        let n = r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        *per_service.entry(n).or_default() += 1;
    }
    let alerts = query("count(ALERTS{namespace=\"bench\"})").await?;
    let head_series = query("prometheus_tsdb_head_series").await?;
    let cpu = query("rate(process_cpu_seconds_total{job=\"prometheus\"}[1m])").await?;
    let rss = query("process_resident_memory_bytes{job=\"prometheus\"}").await?;
    let first = |v: &[Value]| v.first().and_then(|r| r["value"][1].as_str()).unwrap_or("0").to_owned();
    let _ = child.start_kill();

    println!("| figure | value |");
    println!("|---|---|");
    println!("| GrpcServices (mutual TLS, 99.9% SLO) | {} |", args.services);
    println!(
        "| rules per group | {rules_per_group} (9 recording, {} alerting) |",
        rules_per_group.saturating_sub(9)
    );
    println!("| rules file | {:.1} MiB, built in {build:.2?} |", rules_bytes as f64 / 1048576.0);
    println!("| groups loaded / with an unhealthy rule | {} / {} |", loaded.len(), unhealthy.len());
    println!(
        "| evaluation time per group: p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        percentile(&eval, 50.0) * 1e3,
        percentile(&eval, 99.0) * 1e3,
        eval.last().copied().unwrap_or(0.0) * 1e3
    );
    println!(
        "| evaluation time of all groups (per {} s interval) | {:.0} ms |",
        args.evaluation_interval,
        total * 1e3
    );
    println!("| series recorded per GrpcService (count of services) | {per_service:?} |");
    println!("| firing or pending alerts | {} |", first(&alerts));
    println!("| Prometheus head series (input + recorded) | {} |", first(&head_series));
    println!(
        "| Prometheus CPU (cores) / RSS | {:.3} / {:.0} MiB |",
        first(&cpu).parse::<f64>().unwrap_or(0.0),
        first(&rss).parse::<f64>().unwrap_or(0.0) / 1048576.0
    );
    if !unhealthy.is_empty() {
        bail!("unhealthy rules: {:?}", &unhealthy[..unhealthy.len().min(5)]);
    }
    if loaded.len() != args.services {
        bail!("{} of {} groups loaded", loaded.len(), args.services);
    }
    Ok(())
}
