//! HTTP/2 abuse under load: for each attack of [`attacks`], the user service on grpc-runtime (this
//! program re-run with `--serve` as a separate process, pinned to CPU 0 when `taskset` exists,
//! with the default configuration except that only 127.0.0.1 counts as a sidecar address, so
//! 127.0.0.2 plays an outside client) is attacked from 127.0.0.2 by
//! several connections that reconnect as soon as they are cut off (a connect timeout of 1 s, as
//! a real client has), while legitimate callers on 127.0.0.1 keep calling `GetUser`. It reports, per attack, how the offenders were treated, the server's peak RSS
//! against its baseline, and the legitimate callers' p99 against theirs.
//!
//! ```text
//! cargo build --release -p grpc-runtime --examples
//! taskset -c 1 ./target/release/examples/h2-abuse [--seconds 5] [--attackers 4] [--callers 4]
//! ```

#[allow(dead_code)] // the integration tests read every field
mod attacks;
#[path = "../user-service/service.rs"]
#[allow(dead_code)]
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attacks::{Attack, Verdict};
use clap::Parser;
use service::pb::GetUserRequest;
use service::pb::user_service_client::UserServiceClient;

#[derive(Parser, Debug)]
#[command(about = "HTTP/2 abuse against the user-service example, with legitimate load")]
struct Args {
    /// Internal: serve the user service on this gRPC port (and the next free admin port) until
    /// killed; the benchmark starts itself this way for each phase.
    #[arg(long, hide = true)]
    serve: Option<u16>,
    /// Seconds per phase (the baseline and each attack).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Attacking connections at a time; each reconnects when cut off.
    #[arg(long, default_value_t = 4)]
    attackers: usize,
    /// Legitimate callers, each making one call at a time.
    #[arg(long, default_value_t = 4)]
    callers: usize,
}

/// Where the attackers connect from: loopback, but not 127.0.0.1, which a sidecar would use and
/// the penalty box therefore exempts.
const ATTACKER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// The server's resident set, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// What the legitimate callers saw in one phase.
struct Load {
    ok: u64,
    failed: u64,
    histogram: hdrhistogram::Histogram<u64>,
}

async fn legitimate_load(addr: SocketAddr, callers: usize, stop: Arc<AtomicBool>) -> Load {
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                hdrhistogram::Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable_histogram());
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut client: Option<UserServiceClient<tonic::transport::Channel>> = None;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"));
                    client = match endpoint {
                        Ok(e) => e.connect().await.ok().map(UserServiceClient::new),
                        Err(_) => None,
                    };
                }
                let Some(c) = client.as_mut() else {
                    failed += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let started = Instant::now();
                match c.get_user(GetUserRequest { user_id: 1 }).await {
                    Ok(_) => {
                        ok += 1;
                        let _ = histogram.record(started.elapsed().as_micros() as u64);
                    }
                    Err(_) => {
                        failed += 1;
                        client = None;
                    }
                }
            }
            (ok, failed, histogram)
        }));
    }
    let mut load = Load {
        ok: 0,
        failed: 0,
        histogram: hdrhistogram::Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()),
    };
    for task in tasks {
        if let Ok((ok, failed, histogram)) = task.await {
            load.ok += ok;
            load.failed += failed;
            let _ = load.histogram.add(histogram);
        }
    }
    load
}

fn unreachable_histogram() -> hdrhistogram::Histogram<u64> {
    // 3 significant figures is always valid; this only satisfies the types.
    hdrhistogram::Histogram::new(1).unwrap_or_else(|_| std::process::exit(2))
}

/// Offenders' outcomes in one phase.
#[derive(Default)]
struct Offence {
    /// Connections that got no answer in time (held off by the penalty box).
    stalled: u64,
    connections: u64,
    goaway: u64,
    closed: u64,
    open: u64,
    frames: u64,
    first: Option<Verdict>,
}

async fn attack_phase(attack: Attack, addr: SocketAddr, attackers: usize, until: Instant) -> Offence {
    let mut tasks = Vec::new();
    for _ in 0..attackers {
        tasks.push(tokio::spawn(async move {
            let mut offence = Offence::default();
            while Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                let run = attacks::run(attack, addr, Some(ATTACKER), left);
                // A held (tarpitted) connection answers nothing; give up on it like a client would.
                let Ok(Ok(report)) =
                    tokio::time::timeout(left.min(Duration::from_secs(1)).max(Duration::from_millis(1)), run)
                        .await
                else {
                    offence.stalled += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                offence.connections += 1;
                offence.frames += report.sent;
                match &report.verdict {
                    Verdict::GoAway(_) => offence.goaway += 1,
                    Verdict::Closed => offence.closed += 1,
                    Verdict::Open => offence.open += 1,
                }
                offence.first.get_or_insert(report.verdict);
            }
            offence
        }));
    }
    let mut total = Offence::default();
    for task in tasks {
        if let Ok(o) = task.await {
            total.connections += o.connections;
            total.stalled += o.stalled;
            total.goaway += o.goaway;
            total.closed += o.closed;
            total.open += o.open;
            total.frames += o.frames;
            if total.first.is_none() {
                total.first = o.first;
            }
        }
    }
    total
}

/// A running server: the process, its pid and its gRPC address.
struct Running {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
}

/// The server side: the user service with the default configuration from the environment,
/// except the sidecar exemption (see the module documentation).
async fn serve(port: u16) -> std::process::ExitCode {
    let result = async {
        grpc_runtime::Server::from_env()?
            .configure(|c| {
                c.grpc_addr.set_port(port);
                c.admin_addr.set_port(free_port());
                c.limits.exempt_all_loopback = false;
            })
            .add_service(
                service::pb::user_service_server::UserServiceServer::new(service::Users::with_seed()),
            )
            .file_descriptor_set(service::pb::FILE_DESCRIPTOR_SET)
            .bind()
            .await?
            .serve()
            .await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let err: grpc_runtime::ServeError = err;
            eprintln!("h2-abuse --serve: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start_server(taskset: bool) -> Result<Running, String> {
    let grpc = free_port();
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = if taskset {
        let mut c = tokio::process::Command::new("/usr/bin/taskset");
        c.args(["-c", "0"]).arg(me);
        c
    } else {
        tokio::process::Command::new(me)
    };
    let child = command
        .args(["--serve", &grpc.to_string()])
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the server: {e}"))?;
    let pid = child.id().ok_or("the server has no pid")?;
    let addr: SocketAddr = ([127, 0, 0, 1], grpc).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err("the server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm up: connections, allocator, caches.
    let stop = Arc::new(AtomicBool::new(false));
    let warm = tokio::spawn(legitimate_load(addr, 4, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = warm.await;
    Ok(Running { child, pid, addr })
}

/// Samples a process's RSS until aborted, keeping the peak.
fn sample_rss(pid: u32) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let task = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    (peak, task)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(port) = args.serve {
        return serve(port).await;
    }
    let taskset = std::path::Path::new("/usr/bin/taskset").exists();
    let phase = Duration::from_secs(args.seconds);
    println!(
        "server pinned to CPU 0: {taskset}; a fresh server per phase; {} s per phase, {} attacking connections from {ATTACKER}, {} legitimate callers from 127.0.0.1\n",
        args.seconds, args.attackers, args.callers
    );

    // The baseline: legitimate load alone.
    let mut server = match start_server(taskset).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (peak, sampler) = sample_rss(server.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(legitimate_load(server.addr, args.callers, stop.clone()));
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    let baseline = load.await.unwrap_or(Load { ok: 0, failed: 0, histogram: unreachable_histogram() });
    sampler.abort();
    let baseline_rss = peak.load(Ordering::Relaxed);
    let _ = server.child.start_kill();
    let _ = server.child.wait().await;
    let baseline_p99 = baseline.histogram.value_at_quantile(0.99).max(1);
    println!(
        "| phase | first offender got | attack connections: GOAWAY / closed / left open / held off | peak RSS | RSS − baseline (goal ≤ 64 MiB) | legitimate p99 | × baseline (goal ≤ 2×) | legitimate calls ok / failed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| baseline | — | — | {:.1} MiB | — | {:.2} ms | 1.00 | {} / {} |",
        baseline_rss as f64 / 1048576.0,
        baseline_p99 as f64 / 1000.0,
        baseline.ok,
        baseline.failed
    );
    let mut all_met = true;
    for attack in Attack::ALL {
        let mut server = match start_server(taskset).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let (peak, sampler) = sample_rss(server.pid);
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(legitimate_load(server.addr, args.callers, stop.clone()));
        let offence = attack_phase(attack, server.addr, args.attackers, Instant::now() + phase).await;
        stop.store(true, Ordering::Relaxed);
        let load = load.await.unwrap_or(Load { ok: 0, failed: 0, histogram: unreachable_histogram() });
        sampler.abort();
        let rss = peak.load(Ordering::Relaxed);
        let _ = server.child.start_kill();
        let _ = server.child.wait().await;
        let p99 = load.histogram.value_at_quantile(0.99);
        let delta = rss.saturating_sub(baseline_rss) as f64 / 1048576.0;
        let ratio = p99 as f64 / baseline_p99 as f64;
        let goaway = matches!(offence.first, Some(Verdict::GoAway(_)));
        all_met &= goaway && delta <= 64.0 && ratio <= 2.0 && load.failed == 0;
        println!(
            "| {} | {} | {} / {} / {} / {} | {:.1} MiB | {:+.1} MiB | {:.2} ms | {:.2} | {} / {} |",
            attack.name(),
            offence.first.map(|v| v.to_string()).unwrap_or_else(|| "—".into()),
            offence.goaway,
            offence.closed,
            offence.open,
            offence.stalled,
            rss as f64 / 1048576.0,
            delta,
            p99 as f64 / 1000.0,
            ratio,
            load.ok,
            load.failed
        );
    }
    println!("\nall goals met: {all_met}");
    std::process::ExitCode::SUCCESS
}
