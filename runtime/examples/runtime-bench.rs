//! Benchmark: the user service with grpc-runtime's full default chain vs the same service on
//! bare tonic, side by side in one run. Not a test: run it with `make bench-runtime`
//! (release build) and copy its table into `docs/benchmarks.md`.
//!
//! Measures, for each server process:
//! - CPU instructions per unary call, with valgrind's callgrind (repeatable on a noisy machine):
//!   the difference between a run of N₂ and one of N₁ sequential calls, divided by N₂ − N₁, so
//!   startup and shutdown cancel out;
//! - throughput at saturation: closed loop, 64 concurrent callers over 4 connections;
//! - p50 / p99 latency at a fixed rate of half the bare server's throughput (open loop, latency
//!   measured from the scheduled start so queueing is not hidden);
//! - resident memory idle and with 200 concurrent streams open.
//!
//! Every call's gRPC status is checked (h2load would count gRPC errors as successes); a run
//! with errors is reported as such.

#[path = "user-service/service.rs"]
#[allow(dead_code)]
mod service;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use service::pb::GetUserRequest;
use service::pb::user_service_client::UserServiceClient;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
struct Args {
    /// Seconds of each saturation and fixed-rate run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Alternating rounds (bare, full, bare, full, …); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calls of the short and the long callgrind run.
    #[arg(long, default_value_t = 200)]
    callgrind_short: u64,
    #[arg(long, default_value_t = 1200)]
    callgrind_long: u64,
    /// Skip the callgrind measurement (when valgrind is missing).
    #[arg(long)]
    no_callgrind: bool,
    /// Only measure instructions per call (callgrind), no load runs.
    #[arg(long)]
    callgrind_only: bool,
    /// Extra environment for the full-chain server, `KEY=VALUE` (repeatable), e.g.
    /// `RUST_LOG=warn` to see what the access log costs.
    #[arg(long = "full-env")]
    full_env: Vec<String>,
    /// Keep the callgrind output files in this directory (for `callgrind_annotate`).
    #[arg(long)]
    keep_callgrind: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Bare,
    Full,
}

impl Variant {
    fn binary(self) -> PathBuf {
        let dir =
            std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
        dir.join(match self {
            Variant::Bare => "user-service-bare",
            Variant::Full => "user-service",
        })
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare tonic",
            Variant::Full => "grpc-runtime, full chain",
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

struct Running {
    child: tokio::process::Child,
    port: u16,
}

static FULL_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

async fn start(
    variant: Variant,
    wrapper: Option<Vec<String>>,
) -> Result<Running, Box<dyn std::error::Error>> {
    let port = free_port();
    let binary = variant.binary();
    let mut cmd = match &wrapper {
        Some(w) => {
            let mut c = tokio::process::Command::new(&w[0]);
            c.args(&w[1..]).arg(&binary);
            c
        }
        None => tokio::process::Command::new(&binary),
    };
    cmd.env("GRPC_PORT", port.to_string())
        .env("ADMIN_PORT", free_port().to_string())
        // The production log format; lines go to /dev/null so the terminal is not measured.
        .env("LOG_FORMAT", "json")
        .env("SHUTDOWN_DRAIN_DELAY", "0ms")
        .env("SHUTDOWN_TIMEOUT", "2s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if variant == Variant::Full {
        for (k, v) in FULL_ENV.get().map(Vec::as_slice).unwrap_or_default() {
            cmd.env(k, v);
        }
    }
    let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let running = Running { child, port };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut client) = connect(port).await
            && client.get_user(GetUserRequest { user_id: 1 }).await.is_ok()
        {
            return Ok(running);
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not become ready", variant.name()).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop(mut running: Running) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(pid) = running.child.id() {
        tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    }
    tokio::time::timeout(Duration::from_secs(60), running.child.wait()).await??;
    Ok(())
}

async fn connect(port: u16) -> Result<UserServiceClient<Channel>, tonic::transport::Error> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await?;
    Ok(UserServiceClient::new(channel))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// Closed loop: `callers` tasks over `connections` channels call GetUser as fast as they can.
async fn saturate(port: u16, seconds: u64) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    let connections = 4;
    let callers = 64;
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(connect(port).await?);
    }
    let counts = Arc::new(Counts { ok: AtomicU64::new(0), errors: AtomicU64::new(0) });
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut client = clients[i % connections].clone();
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                match client.get_user(GetUserRequest { user_id: 1 }).await {
                    Ok(_) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        if counts.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first failed call: {:?} {}", status.code(), status.message());
                        }
                        0
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((counts.ok.load(Ordering::Relaxed) as f64 / elapsed, counts.errors.load(Ordering::Relaxed)))
}

/// Open loop at `rate` calls/s; latency from each call's scheduled start.
async fn fixed_rate(
    port: u16,
    rate: f64,
    seconds: u64,
) -> Result<(f64, f64, u64), Box<dyn std::error::Error>> {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(port).await?);
    }
    let histogram = Arc::new(std::sync::Mutex::new(hdrhistogram::Histogram::<u64>::new(3)?));
    let errors = Arc::new(AtomicU64::new(0));
    let total = (rate * seconds as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let mut client = clients[(n % 4) as usize].clone();
        let histogram = histogram.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            match client.get_user(GetUserRequest { user_id: 1 }).await {
                Ok(_) => {
                    let micros = scheduled.elapsed().as_micros() as u64;
                    if let Ok(mut h) = histogram.lock() {
                        let _ = h.record(micros.max(1));
                    }
                }
                Err(status) => {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("first failed call: {:?} {}", status.code(), status.message());
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let h = histogram.lock().map_err(|_| "histogram lock")?;
    Ok((
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        errors.load(Ordering::Relaxed),
    ))
}

/// Opens `n` streams whose request bodies stay open (the handler waits on them) and returns the
/// server's RSS while they are open.
async fn rss_with_streams(running: &Running, n: usize) -> Result<u64, Box<dyn std::error::Error>> {
    // 4 connections: the runtime allows 100 concurrent streams per connection by default.
    let mut held = Vec::new();
    let mut senders = Vec::new();
    for c in 0..4 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", running.port)).await?;
        let (h2, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(connection);
        let mut h2 = h2.ready().await?;
        for _ in 0..n / 4 + usize::from(c < n % 4) {
            h2 = h2.ready().await?;
            let request = http::Request::post(format!(
                "http://127.0.0.1:{}/user.v1.UserService/CreateUser",
                running.port
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
            let (response, send) = h2.send_request(request, false)?;
            held.push(response);
            senders.push(send);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = running.child.id().map(rss_kib).unwrap_or(0);
    drop(senders);
    drop(held);
    Ok(rss)
}

async fn callgrind_per_call(
    variant: Variant,
    short: u64,
    long: u64,
    keep: Option<&Path>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut totals = Vec::new();
    for calls in [short, long] {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("callgrind.out");
        let wrapper = vec![
            "valgrind".to_string(),
            "--tool=callgrind".to_string(),
            format!("--callgrind-out-file={}", out.display()),
        ];
        let running = start(variant, Some(wrapper)).await?;
        let mut client = connect(running.port).await?;
        for _ in 0..calls {
            client.get_user(GetUserRequest { user_id: 1 }).await?;
        }
        drop(client);
        stop(running).await?;
        let text = std::fs::read_to_string(&out)?;
        if let Some(keep) = keep {
            std::fs::create_dir_all(keep)?;
            let name =
                format!("{}-{calls}.callgrind", if variant == Variant::Bare { "bare" } else { "full" });
            std::fs::copy(&out, keep.join(name))?;
        }
        let total: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or("no totals in callgrind output")?;
        totals.push(total);
    }
    Ok((totals[1] as f64 - totals[0] as f64) / (long - short) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

#[derive(Default)]
struct Results {
    throughput: Vec<f64>,
    errors: u64,
    p50: Vec<f64>,
    p99: Vec<f64>,
    rss_idle: Vec<f64>,
    rss_streams: Vec<f64>,
    instructions: Option<f64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let env: Vec<(String, String)> = args
        .full_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or(format!("{kv}: not KEY=VALUE"))
        })
        .collect::<Result<_, _>>()?;
    let _ = FULL_ENV.set(env);
    let variants = [Variant::Bare, Variant::Full];
    let mut results = [Results::default(), Results::default()];
    let load_rounds = if args.callgrind_only { 0 } else { args.rounds };

    for round in 0..load_rounds {
        for (i, variant) in variants.iter().enumerate() {
            eprintln!("round {}: {} saturation", round + 1, variant.name());
            let running = start(*variant, None).await?;
            let mut client = connect(running.port).await?;
            for _ in 0..200 {
                client.get_user(GetUserRequest { user_id: 1 }).await?;
            }
            results[i].rss_idle.push(running.child.id().map(rss_kib).unwrap_or(0) as f64);
            let (throughput, errors) = saturate(running.port, args.seconds).await?;
            results[i].throughput.push(throughput);
            results[i].errors += errors;
            results[i].rss_streams.push(rss_with_streams(&running, 200).await? as f64);
            stop(running).await?;
        }
    }
    let rate = median(results[0].throughput.clone()) / 2.0;
    for round in 0..load_rounds {
        for (i, variant) in variants.iter().enumerate() {
            eprintln!("round {}: {} at {rate:.0} calls/s", round + 1, variant.name());
            let running = start(*variant, None).await?;
            let (p50, p99, errors) = fixed_rate(running.port, rate, args.seconds).await?;
            results[i].p50.push(p50);
            results[i].p99.push(p99);
            results[i].errors += errors;
            stop(running).await?;
        }
    }
    if !args.no_callgrind {
        for (i, variant) in variants.iter().enumerate() {
            eprintln!("callgrind: {}", variant.name());
            results[i].instructions = Some(
                callgrind_per_call(
                    *variant,
                    args.callgrind_short,
                    args.callgrind_long,
                    args.keep_callgrind.as_deref(),
                )
                .await?,
            );
        }
    }

    let [bare, full] = &results;
    println!("| measure | bare tonic | grpc-runtime (full chain) | ratio | goal |");
    println!("|---|---|---|---|---|");
    if let (Some(b), Some(f)) = (bare.instructions, full.instructions) {
        println!("| instructions per unary call (callgrind) | {b:.0} | {f:.0} | {:.2}× | ≤ 1.15× |", f / b);
    }
    if args.callgrind_only {
        return Ok(());
    }
    let (tb, tf) = (median(bare.throughput.clone()), median(full.throughput.clone()));
    println!(
        "| throughput at saturation (calls/s, median of {}) | {tb:.0} | {tf:.0} | {:.2}× | ≥ 0.85× |",
        args.rounds,
        tf / tb
    );
    let (pb, pf) = (median(bare.p50.clone()), median(full.p50.clone()));
    println!("| p50 latency at {rate:.0} calls/s (ms) | {pb:.3} | {pf:.3} | {:.2}× | — |", pf / pb);
    let (pb, pf) = (median(bare.p99.clone()), median(full.p99.clone()));
    println!("| p99 latency at {rate:.0} calls/s (ms) | {pb:.3} | {pf:.3} | {:.2}× | ≤ 1.5× |", pf / pb);
    let (rb, rf) = (median(bare.rss_idle.clone()) / 1024.0, median(full.rss_idle.clone()) / 1024.0);
    println!("| RSS idle (MiB) | {rb:.1} | {rf:.1} | — | ≤ 20 MB |");
    let (rb, rf) = (median(bare.rss_streams.clone()) / 1024.0, median(full.rss_streams.clone()) / 1024.0);
    println!("| RSS with 200 concurrent streams (MiB) | {rb:.1} | {rf:.1} | — | ≤ 20 MB |");
    println!("| calls that failed (any gRPC error) | {} | {} | — | 0 |", bare.errors, full.errors);
    Ok(())
}
