//! grpc-runtime against the Go stack it replaces, side by side: the same `user.v1.UserService`
//! in memory, `GetUser` under h2load.
//!
//! ```text
//! cargo build --release -p grpc-runtime --examples && scripts/build-go-peers.sh
//! ./target/release/examples/vs-go            # --seconds 10 --rounds 3
//! ```
//!
//! Each server runs alone on CPU 0 (`taskset`), h2load on CPU 1 with 50 connections × 4
//! streams (200 calls in flight); servers alternate within each round, and every figure is the
//! median over rounds. Per server:
//!
//! - **calls/s** at saturation, and **CPU per call** from the server's `utime + stime`;
//! - **RSS** under load (peak `VmRSS`);
//! - **p99 latency at half capacity**: every server gets the same open-loop rate, half of what
//!   the full Go chain sustains, and h2load's per-request log gives the percentile;
//! - **writes per call** (`syscw` of `/proc/<pid>/io`: write and writev calls) and **TCP
//!   segments per call** (`OutSegs` of `/proc/net/snmp`, both directions: h2load's share is
//!   the same for every server);
//! - h2load does not read `grpc-status`, so the calls are checked against the server's own
//!   `grpc_server_handled_total{grpc_code="OK"}` where it has metrics.
//!
//! Servers: grpc-go with go-grpc-prometheus-style metrics only; grpc-go with the equivalent of
//! the runtime's chain (go-grpc-middleware v2 recovery, zap JSON logging, prometheus with the
//! handling-time histogram, otelgrpc); bare tonic; grpc-runtime with its default chain (JSON
//! access log on); grpc-runtime with the access log off. Access logs go to a pipe this program
//! drains, as a log collector would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
#[command(about = "grpc-runtime vs grpc-go, side by side under h2load")]
struct Args {
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds; each figure is the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Directory of the release examples.
    #[arg(long, default_value = "target/release/examples")]
    examples: PathBuf,
    /// The Go server (scripts/build-go-peers.sh).
    #[arg(long, default_value = ".tools/bin/go-user-server")]
    go_server: PathBuf,
    /// h2load connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// h2load streams per connection.
    #[arg(long, default_value_t = 4)]
    streams: u32,
    /// Measure only the grpc-runtime servers (and the full Go chain, which sets the rate), for
    /// quick iterations.
    #[arg(long)]
    runtime_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GoPrometheus,
    GoFull,
    Bare,
    Runtime,
    RuntimeNoAccessLog,
}

impl Kind {
    const ALL: [Kind; 5] =
        [Kind::GoPrometheus, Kind::GoFull, Kind::Bare, Kind::Runtime, Kind::RuntimeNoAccessLog];

    fn name(self) -> &'static str {
        match self {
            Kind::GoPrometheus => "grpc-go + prometheus",
            Kind::GoFull => "grpc-go + full chain (recovery, zap JSON log, prometheus, otelgrpc)",
            Kind::Bare => "bare tonic",
            Kind::Runtime => "grpc-runtime, default chain (JSON access log on)",
            Kind::RuntimeNoAccessLog => "grpc-runtime, access log off",
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

struct Server {
    child: tokio::process::Child,
    pid: u32,
    port: u16,
    admin: Option<u16>,
    drain: tokio::task::JoinHandle<()>,
}

async fn start(kind: Kind, args: &Args) -> Result<Server, String> {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.args(["-c", "0"]);
    let admin = match kind {
        Kind::GoPrometheus | Kind::GoFull => {
            let chain = if kind == Kind::GoFull { "full" } else { "prometheus" };
            cmd.arg(&args.go_server).args([
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
                "--chain",
                chain,
            ]);
            Some(admin)
        }
        Kind::Bare => {
            cmd.arg(args.examples.join("user-service-bare")).env("GRPC_PORT", port.to_string());
            None
        }
        Kind::Runtime | Kind::RuntimeNoAccessLog => {
            cmd.arg(args.examples.join("user-service"))
                .env("GRPC_PORT", port.to_string())
                .env("ADMIN_PORT", admin.to_string())
                .env("LOG_FORMAT", "json");
            if kind == Kind::RuntimeNoAccessLog {
                cmd.env("RUST_LOG", "info,grpc_runtime::access=off");
            }
            Some(admin)
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", kind.name()))?;
    // taskset execs the server, so the child's pid is the server's.
    let pid = child.id().ok_or("no pid")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(stdout.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("{} did not start", kind.name()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Server { child, pid, port, admin, drain })
}

async fn stop(mut server: Server) {
    let _ = server.child.start_kill();
    let _ = server.child.wait().await;
    server.drain.abort();
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which may contain spaces, start after ") ".
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn proc_value(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn out_segments() -> u64 {
    // /proc/net/snmp: a "Tcp:" header line, then a "Tcp:" value line.
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn ok_calls(admin: Option<u16>) -> Option<u64> {
    let admin = admin?;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await.ok()?;
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let sum: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total{")
                && l.contains("grpc_code=\"OK\"")
                && l.contains("grpc_method=\"GetUser\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(sum as u64)
}

fn request_file() -> Result<PathBuf, String> {
    let path = std::env::temp_dir().join("vs-go-get-user-1.bin");
    // GetUserRequest { user_id: 1 }, framed.
    std::fs::write(&path, [0u8, 0, 0, 0, 2, 0x08, 0x01]).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Runs h2load on CPU 1; returns (calls completed, seconds, per-request latencies in µs if
/// `log` was asked for).
async fn h2load(
    port: u16,
    args: &Args,
    seconds: u64,
    rps_per_client: Option<u32>,
    log: Option<&Path>,
) -> Result<(u64, f64), String> {
    let body = request_file()?;
    let mut cmd = tokio::process::Command::new("taskset");
    cmd.args(["-c", "1", "h2load", "-t", "1"])
        .args(["-c", &args.connections.to_string(), "-m", &args.streams.to_string()])
        .args(["-D", &seconds.to_string()])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(&body);
    if let Some(rps) = rps_per_client {
        cmd.arg(format!("--rps={rps}"));
    }
    if let Some(log) = log {
        cmd.arg(format!("--log-file={}", log.display()));
    }
    cmd.arg(format!("http://127.0.0.1:{port}/user.v1.UserService/GetUser"));
    let out = cmd.kill_on_drop(true).output().await.map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "requests: 300000 total, 300000 started, 300000 done, 299990 succeeded, …"
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" succeeded")))
        .and_then(|p| p.trim_end_matches(" succeeded").trim().parse::<u64>().ok())
        .ok_or_else(|| format!("no h2load summary:\n{text}"))?;
    Ok((succeeded, seconds as f64))
}

/// The 99th percentile of the request times in an h2load log (µs), in ms.
fn p99_from_log(log: &Path) -> f64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // Each line: start time (µs since epoch), status, duration (µs).
    let mut durations: Vec<u64> =
        text.lines().filter_map(|l| l.split('\t').nth(2)?.trim().parse::<u64>().ok()).collect();
    if durations.is_empty() {
        return f64::NAN;
    }
    durations.sort_unstable();
    durations[(durations.len() * 99 / 100).min(durations.len() - 1)] as f64 / 1000.0
}

#[derive(Debug, Default, Clone)]
struct Sample {
    calls_per_s: f64,
    cpu_us_per_call: f64,
    rss_mib: f64,
    writes_per_call: f64,
    segments_per_call: f64,
    p99_ms: f64,
    ok_checked: Option<(u64, u64)>,
}

async fn measure(kind: Kind, args: &Args, half_rate: Option<f64>) -> Result<Sample, String> {
    let server = start(kind, args).await?;
    // Warm up.
    h2load(server.port, args, 2, None, None).await?;
    let ok_before = ok_calls(server.admin).await;
    let (cpu0, writes0, segs0) =
        (cpu_ticks(server.pid), proc_value(&format!("/proc/{}/io", server.pid), "syscw:"), out_segments());
    let rss_peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (peak, pid) = (rss_peak.clone(), server.pid);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(
                    proc_value(&format!("/proc/{pid}/status"), "VmRSS:"),
                    std::sync::atomic::Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (calls, secs) = h2load(server.port, args, args.seconds, None, None).await?;
    sampler.abort();
    let (cpu1, writes1, segs1) =
        (cpu_ticks(server.pid), proc_value(&format!("/proc/{}/io", server.pid), "syscw:"), out_segments());
    let ok_after = ok_calls(server.admin).await;
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let calls = calls.max(1);
    let mut sample = Sample {
        calls_per_s: calls as f64 / secs,
        cpu_us_per_call: (cpu1 - cpu0) as f64 / ticks_per_s * 1e6 / calls as f64,
        rss_mib: rss_peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        writes_per_call: (writes1 - writes0) as f64 / calls as f64,
        segments_per_call: (segs1 - segs0) as f64 / calls as f64,
        p99_ms: f64::NAN,
        ok_checked: ok_before.zip(ok_after).map(|(b, a)| (a - b, calls)),
    };
    if let Some(rate) = half_rate {
        let per_client = ((rate / f64::from(args.connections)).round() as u32).max(1);
        let log = std::env::temp_dir().join(format!("vs-go-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        h2load(server.port, args, args.seconds.min(10), Some(per_client), Some(&log)).await?;
        sample.p99_ms = p99_from_log(&log);
        let _ = std::fs::remove_file(&log);
    }
    stop(server).await;
    Ok(sample)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    for (path, hint) in [
        (args.examples.join("user-service"), "cargo build --release -p grpc-runtime --examples"),
        (args.go_server.clone(), "scripts/build-go-peers.sh"),
    ] {
        if !path.exists() {
            eprintln!("{} not found: {hint}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    let mut samples: Vec<(Kind, Vec<Sample>)> = Kind::ALL.iter().map(|k| (*k, Vec::new())).collect();
    for round in 1..=args.rounds {
        // The open-loop rate: half of what the full Go chain sustains, measured first.
        let go = match measure(Kind::GoFull, &args, None).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let half = go.calls_per_s / 2.0;
        eprintln!("round {round}: half of the full Go chain's capacity = {half:.0} calls/s");
        for (kind, list) in samples.iter_mut() {
            if args.runtime_only && !matches!(kind, Kind::Runtime | Kind::RuntimeNoAccessLog | Kind::GoFull) {
                continue;
            }
            match measure(*kind, &args, Some(half)).await {
                Ok(s) => {
                    eprintln!("  {}: {s:?}", kind.name());
                    list.push(s);
                }
                Err(e) => {
                    eprintln!("{e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    let med = |kind: Kind, f: fn(&Sample) -> f64| {
        median(
            samples
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| v.iter().map(f).collect())
                .unwrap_or_default(),
        )
    };
    let (go_cps, go_cpu, go_p99, go_rss) = (
        med(Kind::GoFull, |s| s.calls_per_s),
        med(Kind::GoFull, |s| s.cpu_us_per_call),
        med(Kind::GoFull, |s| s.p99_ms),
        med(Kind::GoFull, |s| s.rss_mib),
    );
    println!(
        "| server | calls/s | × Go full | CPU µs/call | × Go full | p99 at half capacity (ms) | × Go full | RSS under load (MiB) | × Go full | writes/call | TCP segments/call (both ways) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for kind in Kind::ALL {
        let (cps, cpu, p99, rss, w, seg) = (
            med(kind, |s| s.calls_per_s),
            med(kind, |s| s.cpu_us_per_call),
            med(kind, |s| s.p99_ms),
            med(kind, |s| s.rss_mib),
            med(kind, |s| s.writes_per_call),
            med(kind, |s| s.segments_per_call),
        );
        println!(
            "| {} | {cps:.0} | {:.2} | {cpu:.2} | {:.2} | {p99:.2} | {:.2} | {rss:.1} | {:.2} | {w:.2} | {seg:.2} |",
            kind.name(),
            cps / go_cps,
            cpu / go_cpu,
            p99 / go_p99,
            rss / go_rss
        );
    }
    let go_prom = med(Kind::GoPrometheus, |s| s.calls_per_s);
    let rt = med(Kind::Runtime, |s| s.calls_per_s);
    println!(
        "\ngrpc-runtime default chain vs grpc-go + prometheus only: {:.2}× the calls/s, {:.2}× the CPU per call",
        rt / go_prom,
        med(Kind::Runtime, |s| s.cpu_us_per_call) / med(Kind::GoPrometheus, |s| s.cpu_us_per_call)
    );
    // Every call h2load counted as done must be an OK in the server's own metrics.
    for (kind, list) in &samples {
        for s in list {
            if let Some((ok, calls)) = s.ok_checked
                && ok < calls
            {
                println!("warning: {}: h2load counted {calls} calls, the server {ok} OK", kind.name());
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
