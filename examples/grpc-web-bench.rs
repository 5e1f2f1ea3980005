//! gRPC-Web: what the sidecar costs, and what building its configuration
//! costs the operator.
//!
//! 1. Building the bootstrap and SDS files from typed protos, as every
//!    reconcile of a GrpcService with the sidecar does: time per build.
//! 2. Native vs sidecar, side by side in one run: unary gRPC-Web calls
//!    (`GetUser`, HTTP/1.1 keep-alive, as browsers send them) to the runtime
//!    alone (`GRPC_WEB_ORIGINS`, tonic-web) and through the real Envoy built
//!    from the operator's bootstrap, in front of the runtime with mutual TLS
//!    (the production path). Rounds alternate between the modes; latency
//!    percentiles are per call, CPU per call is the servers' user + system
//!    time (runtime, plus Envoy for the sidecar) divided by the calls.
//!
//! ```sh
//! cargo build --release -p grpc-runtime --example user-service
//! cargo run --release --example grpc-web-bench -- --builds 20000 --seconds 8 --rounds 3
//! ```
//!
//! Envoy comes from scripts/install-tools.sh (`.tools/bin/envoy`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use grpc_operator::envoy::bootstrap::{self, Origins, SidecarInput, UpstreamTls, Writer};
use grpc_operator::pki::authority::generate_root;
use grpc_operator::pki::leaf::{LeafRequest, issue};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const ORIGIN: &str = "http://bench.example";
const SPIFFE_ID: &str = "spiffe://cluster.local/ns/bench/sa/web";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// user + system seconds of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
    });
    ticks.map_or(f64::NAN, |t| t / 100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn pod_input() -> SidecarInput {
    bootstrap::example_input()
}

/// Per-build times of `writer`, µs, sorted; and the mean.
fn time_builds(input: &SidecarInput, writer: Writer, builds: usize) -> anyhow::Result<(Vec<f64>, f64)> {
    for _ in 0..builds / 10 {
        std::hint::black_box(bootstrap::build_with(std::hint::black_box(input), writer)?);
    }
    let mut times = Vec::with_capacity(builds);
    let all = Instant::now();
    for _ in 0..builds {
        let t = Instant::now();
        std::hint::black_box(bootstrap::build_with(std::hint::black_box(input), writer)?);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mean = all.elapsed().as_secs_f64() * 1e6 / builds as f64;
    times.sort_by(f64::total_cmp);
    Ok((times, mean))
}

fn bench_build(builds: usize) -> anyhow::Result<()> {
    let input = pod_input();
    let first = Instant::now();
    let files = bootstrap::build(&input)?;
    let first = first.elapsed();
    let bytes: usize = files.values().map(String::len).sum();
    anyhow::ensure!(
        bootstrap::build_with(&input, Writer::Strict)? == bootstrap::build_with(&input, Writer::Reference)?,
        "the two writers disagree"
    );
    // Alternating halves, so that both writers see the same machine.
    let mut rows = Vec::new();
    for writer in [Writer::Strict, Writer::Reference, Writer::Strict, Writer::Reference] {
        rows.push((writer, time_builds(&input, writer, builds / 2)?));
    }
    println!("## Building the sidecar's configuration ({} files, {bytes} bytes)\n", files.len());
    println!("first build, which decodes the descriptor pool once: {:.0} µs\n", first.as_secs_f64() * 1e6);
    println!("| JSON writer | builds | mean µs | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|");
    for target in [Writer::Strict, Writer::Reference] {
        let mut times: Vec<f64> = Vec::new();
        let mut mean = 0.0;
        for (w, (t, m)) in &rows {
            if *w == target {
                times.extend(t);
                mean += m / 2.0;
            }
        }
        times.sort_by(f64::total_cmp);
        let name = match target {
            Writer::Reference => "prost-reflect DynamicMessage (reference)",
            _ => "wire walker over the descriptor pool (used)",
        };
        println!(
            "| {name} | {} | {mean:.1} | {:.1} | {:.1} |",
            times.len(),
            percentile(&times, 0.50),
            percentile(&times, 0.99)
        );
    }
    println!();
    Ok(())
}

/// A child process that is killed when dropped.
struct Proc(tokio::process::Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id().unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn wait_http_ok(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let uri: hyper::Uri = format!("http://{addr}{path}").parse()?;
        if let Ok(r) = client.get(uri).await
            && r.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{addr}{path} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The runtime example: native gRPC-Web and plaintext, or mutual TLS from `tls_dir`.
async fn runtime(tls_dir: Option<&Path>) -> anyhow::Result<(Proc, SocketAddr)> {
    let binary = repo().join("target/release/examples/user-service");
    anyhow::ensure!(
        binary.exists(),
        "build it first: cargo build --release -p grpc-runtime --example user-service"
    );
    let (grpc, admin) = (free_port()?, free_port()?);
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env_clear()
        .env("GRPC_PORT", grpc.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("RUST_LOG", "error")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    match tls_dir {
        Some(dir) => {
            cmd.env("TLS_MODE", "mutual").env("TLS_DIR", dir).env("GRPC_ALLOWED_PEERS", SPIFFE_ID);
        }
        None => {
            cmd.env("TLS_MODE", "disabled").env("GRPC_WEB_ORIGINS", ORIGIN);
        }
    }
    let child = Proc(cmd.spawn().context("user-service starts")?);
    wait_http_ok(SocketAddr::from(([127, 0, 0, 1], admin)), "/readyz").await?;
    Ok((child, SocketAddr::from(([127, 0, 0, 1], grpc))))
}

/// Envoy from the operator's bootstrap, in front of `upstream` with mTLS.
async fn sidecar(work: &Path, tls_dir: &Path, upstream: SocketAddr) -> anyhow::Result<(Proc, SocketAddr)> {
    let (web, metrics, admin) = (free_port()?, free_port()?, free_port()?);
    let config_dir = work.join("envoy");
    std::fs::create_dir_all(&config_dir)?;
    let input = SidecarInput {
        node: "bench/web".to_owned(),
        config_dir: config_dir.display().to_string(),
        listen_address: "127.0.0.1".to_owned(),
        web_port: web,
        metrics_port: metrics,
        admin_port: admin,
        upstream_port: upstream.port(),
        origins: Origins::List(vec![ORIGIN.to_owned()]),
        extra_allow_headers: Vec::new(),
        max_stream_duration_seconds: 0,
        upstream_tls: Some(UpstreamTls {
            dir: tls_dir.display().to_string(),
            server_spiffe_id: SPIFFE_ID.to_owned(),
        }),
        browser_tls_dir: None,
    };
    for (name, content) in bootstrap::build(&input)? {
        std::fs::write(config_dir.join(name), content)?;
    }
    let envoy = [repo().join(".tools/bin/envoy"), PathBuf::from("envoy")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("envoy"));
    // The pod's arguments (children::envoy_config::container).
    let child = Proc(
        tokio::process::Command::new(envoy)
            .arg("--config-path")
            .arg(config_dir.join(bootstrap::BOOTSTRAP_FILE))
            .args(["--disable-hot-restart", "--concurrency", "2", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("envoy starts (scripts/install-tools.sh)")?,
    );
    wait_http_ok(SocketAddr::from(([127, 0, 0, 1], metrics)), "/ready").await?;
    Ok((child, SocketAddr::from(([127, 0, 0, 1], web))))
}

/// `GetUser(1)` as gRPC-Web: one length-prefixed message.
fn request_body() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01])
}

struct Round {
    calls: u64,
    errors: u64,
    latencies_us: Vec<f64>,
    cpu_seconds: f64,
    wall: Duration,
}

/// `connections` clients, each with its own keep-alive connection, calling
/// back to back for `seconds`.
async fn round(target: SocketAddr, pids: &[u32], connections: usize, seconds: u64) -> anyhow::Result<Round> {
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client: Client<_, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1).build_http();
        let uri: hyper::Uri = format!("http://{target}/user.v1.UserService/GetUser").parse()?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < end {
                let req = hyper::Request::post(uri.clone())
                    .header("content-type", "application/grpc-web+proto")
                    .header("x-grpc-web", "1")
                    .header("origin", ORIGIN)
                    .body(Full::new(request_body()));
                let Ok(req) = req else {
                    errors += 1;
                    continue;
                };
                let t = Instant::now();
                let ok = match client.request(req).await {
                    Ok(res) => match res.into_body().collect().await {
                        Ok(body) => {
                            let bytes = body.to_bytes();
                            bytes.windows(13).any(|w| w == b"grpc-status:0")
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                latencies.push(t.elapsed().as_secs_f64() * 1e6);
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies_us.extend(l);
        errors += e;
    }
    let wall = start.elapsed();
    let cpu1: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    Ok(Round { calls: latencies_us.len() as u64, errors, latencies_us, cpu_seconds: cpu1 - cpu0, wall })
}

#[derive(Default)]
struct Totals {
    calls: u64,
    errors: u64,
    latencies_us: Vec<f64>,
    cpu_seconds: f64,
    wall_seconds: f64,
}

impl Totals {
    fn add(&mut self, r: Round) {
        self.calls += r.calls;
        self.errors += r.errors;
        self.latencies_us.extend(r.latencies_us);
        self.cpu_seconds += r.cpu_seconds;
        self.wall_seconds += r.wall.as_secs_f64();
    }

    fn row(&mut self, name: &str) -> String {
        self.latencies_us.sort_by(f64::total_cmp);
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {} |",
            self.calls as f64 / self.wall_seconds,
            percentile(&self.latencies_us, 0.50),
            percentile(&self.latencies_us, 0.99),
            percentile(&self.latencies_us, 0.999),
            self.cpu_seconds * 1e6 / self.calls.max(1) as f64,
            self.errors,
        )
    }
}

fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now().as_second();
    let ca = generate_root("cluster.local", 86_400, now)?;
    let names = vec!["web".to_owned(), "localhost".to_owned()];
    let request = LeafRequest {
        dns_names: &names,
        spiffe_id: SPIFFE_ID,
        duration_seconds: 3600,
        renew_before_seconds: 600,
        key_pem: None,
    };
    let leaf = issue(&ca, &request, now, 0.0)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("tls.crt"), leaf.cert_pem)?;
    std::fs::write(dir.join("tls.key"), leaf.key_pem)?;
    std::fs::write(dir.join("ca.crt"), ca.cert.pem())?;
    Ok(())
}

async fn bench_modes(seconds: u64, rounds: usize) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let tls_dir = work.path().join("tls");
    write_certificates(&tls_dir)?;
    let (native, native_addr) = runtime(None).await?;
    let (upstream, upstream_addr) = runtime(Some(&tls_dir)).await?;
    let (envoy, envoy_addr) = sidecar(work.path(), &tls_dir, upstream_addr).await?;
    let modes = [
        ("native (runtime alone, tonic-web)", native_addr, vec![native.pid()]),
        ("sidecar (Envoy, mTLS upstream)", envoy_addr, vec![envoy.pid(), upstream.pid()]),
    ];
    for connections in [1usize, 16] {
        // Warm-up: connections, TLS sessions, caches.
        for (_, addr, pids) in &modes {
            round(*addr, pids, connections, 1).await?;
        }
        let mut totals: Vec<Totals> = modes.iter().map(|_| Totals::default()).collect();
        for _ in 0..rounds {
            for (i, (_, addr, pids)) in modes.iter().enumerate() {
                totals[i].add(round(*addr, pids, connections, seconds).await?);
            }
        }
        println!(
            "## gRPC-Web unary, {connections} connection(s), {rounds} alternating rounds of {seconds} s\n"
        );
        println!("| mode | calls/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/call | errors |");
        println!("|---|---|---|---|---|---|---|");
        for (i, (name, _, _)) in modes.iter().enumerate() {
            println!("{}", totals[i].row(name));
        }
        println!();
    }
    drop((native, upstream, envoy));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut builds, mut seconds, mut rounds) = (20_000usize, 8u64, 3usize);
    // `--only-builds N`: N builds and nothing else, for callgrind's
    // instruction count per build ((I(N) - I(0)) / N).
    if let [flag, n] = std::env::args().skip(1).collect::<Vec<_>>().as_slice()
        && flag == "--only-builds"
    {
        let input = pod_input();
        for _ in 0..n.parse::<usize>()? {
            std::hint::black_box(bootstrap::build(std::hint::black_box(&input))?);
        }
        return Ok(());
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next().unwrap_or_default();
        match a.as_str() {
            "--builds" => builds = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--rounds" => rounds = value.parse()?,
            other => anyhow::bail!("unknown argument {other}; use --builds N --seconds S --rounds R"),
        }
    }
    bench_build(builds)?;
    if seconds > 0 {
        bench_modes(seconds, rounds).await?;
    }
    Ok(())
}
