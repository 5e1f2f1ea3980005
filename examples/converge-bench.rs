//! Convergence benchmark: N GrpcServices created at once on the real
//! control plane (testkit's TestCluster: kube-apiserver, controller-manager,
//! scheduler, etcd, kwok nodes), the real operator binary reconciling them as
//! a separate process, namespaced, under its own ServiceAccount and RBAC.
//!
//! ```sh
//! cargo build --release --bin grpc-operator
//! cargo run --release --example converge-bench -- --objects 1000 --idle-seconds 60
//! ```
//!
//! The real Deployment controller rolls out each Deployment and kwok runs its
//! pods. It measures time to converge (every GrpcService `Ready=True` at its
//! current generation), the operator's API requests per object by verb (seen
//! by a proxy between it and kube-apiserver), reconciles per object (the
//! operator's own metrics), writes during an idle period, the operator's RSS
//! per object (/proc/PID/status), and the CPU seconds kube-apiserver spent.
//! Then it deletes a child (a Service, then a Deployment, alternately) of
//! `--deletions` objects one at a time and measures how long until the
//! operator has recreated it (a new uid under the same name).
//! Prints a Markdown table for docs/benchmarks.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use grpc_operator::api::GrpcService;
use grpc_operator_testkit::{FaultProxy, TestCluster};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

struct Args {
    objects: usize,
    idle_seconds: u64,
    deletions: usize,
    /// `spec.replicas` of every object; unset by default. 2 or more adds a
    /// PodDisruptionBudget per object (one more child kind).
    replicas: Option<i32>,
    operator: PathBuf,
    /// Extra operator arguments, after `--`.
    extra: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut objects = 1000;
    let mut idle_seconds = 60;
    let mut deletions = 20;
    let mut replicas = None;
    let mut operator = std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("grpc-operator"))
        .unwrap_or_else(|| PathBuf::from("target/release/grpc-operator"));
    let mut extra = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--objects" => objects = it.next().unwrap_or_default().parse()?,
            "--idle-seconds" => idle_seconds = it.next().unwrap_or_default().parse()?,
            "--deletions" => deletions = it.next().unwrap_or_default().parse()?,
            "--replicas" => replicas = Some(it.next().unwrap_or_default().parse()?),
            "--operator" => operator = PathBuf::from(it.next().unwrap_or_default()),
            "--" => extra.extend(it.by_ref()),
            other => {
                anyhow::bail!(
                    "unknown argument {other}; use --objects N --idle-seconds S --deletions D --replicas R --operator PATH"
                )
            }
        }
    }
    Ok(Args { objects, idle_seconds, deletions, replicas, operator, extra })
}

fn n_objects(args: &Args) -> f64 {
    args.objects as f64
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
    });
    // USER_HZ is 100 on Linux for every architecture this project runs on.
    ticks.map_or(f64::NAN, |t| t / 100.0)
}

async fn scrape(port: u16, metric: &str) -> f64 {
    let Ok(body) = http_get_metrics(port).await else { return f64::NAN };
    body.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A minimal HTTP/1.1 GET of /metrics, to avoid an HTTP client dependency
/// in a benchmark.
async fn http_get_metrics(port: u16) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

struct Operator(Child);

impl Drop for Operator {
    /// SIGTERM first (the operator shuts down gracefully, and profilers
    /// wrapping it write their output), SIGKILL after 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    anyhow::ensure!(
        args.operator.exists(),
        "operator binary {} not found: cargo build --release --bin grpc-operator",
        args.operator.display()
    );
    let cluster = tokio::task::spawn_blocking(TestCluster::get).await??;
    let apiserver_pid =
        cluster.info().pid("kube-apiserver").ok_or_else(|| anyhow::anyhow!("no kube-apiserver pid"))?;
    let client = cluster.client().await?;
    let ns = cluster.namespace(&client, "bench").await?;
    let token = cluster.operator_token(&client, &ns.name).await?;
    let proxy = FaultProxy::start(&cluster.admin_config().await?).await?;

    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    cluster.write_operator_kubeconfig(&token, &proxy.url(), &kubeconfig).await?;
    let admin_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let start_operator = |admin_port: u16| -> std::io::Result<Child> {
        Command::new(&args.operator)
            .args([
                "run",
                "--namespace",
                &ns.name,
                "--ca-secret-namespace",
                &ns.name,
                "--admin-addr",
                &format!("127.0.0.1:{admin_port}"),
                "--log-format",
                "text",
            ])
            .args(&args.extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
    };
    let child = start_operator(admin_port)?;
    let pid = child.id();
    let operator = Operator(child);
    let start_wait = Instant::now();
    while scrape(admin_port, "process_resident_memory_bytes").await.is_nan() {
        anyhow::ensure!(start_wait.elapsed() < Duration::from_secs(30), "operator did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_rss = rss_kib(pid, "VmRSS:");
    let operator_cpu_start = cpu_seconds(pid);
    proxy.clear_requests();
    let apiserver_cpu_start = cpu_seconds(apiserver_pid);

    // Ctrl-C or SIGTERM: stop the operator (Drop) before going; the cluster's
    // watchdog removes the cluster when this process ends.
    let operator = std::sync::Arc::new(std::sync::Mutex::new(Some(operator)));
    let on_signal = operator.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
        }
        drop(on_signal.lock().map(|mut o| o.take()));
        std::process::exit(130);
    });

    // Create every object at once (64 in flight, like a kubectl apply of a big directory).
    let api: Api<GrpcService> = Api::namespaced(client.clone(), &ns.name);
    let t0 = Instant::now();
    let created: Vec<anyhow::Result<()>> = stream::iter(0..args.objects)
        .map(|i| {
            let api = api.clone();
            let replicas = args.replicas;
            async move {
                let mut obj: GrpcService = serde_json::from_value(json!({
                    "apiVersion": "grpcoperator.io/v1alpha1", "kind": "GrpcService",
                    "metadata": {"name": format!("svc-{i:04}")},
                    "spec": {"image": format!("registry.example.com/svc-{i}:1.0.0"), "services": [format!("svc{i}.v1.Service")]}
                }))?;
                obj.spec.replicas = replicas;
                api.create(&PostParams::default(), &obj).await?;
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for r in created {
        r?;
    }
    let created_in = t0.elapsed();

    // The real Deployment controller and kwok make each Deployment available.
    let converged_in = loop {
        let list = api.list(&ListParams::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|o| {
                let status = o.status.as_ref();
                status.is_some_and(|s| {
                    s.observed_generation == o.metadata.generation
                        && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == args.objects {
            break t0.elapsed();
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(900),
            "not converged after 900 s: {ready}/{}",
            args.objects
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Let trailing reconciles (triggered by the last status writes) finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let apiserver_cpu_converge = cpu_seconds(apiserver_pid) - apiserver_cpu_start;
    let converge_records = proxy.requests();
    let reconciles = scrape(admin_port, "grpc_operator_reconcile_total").await;
    let converged_rss = rss_kib(pid, "VmRSS:");
    let operator_cpu_converge = cpu_seconds(pid) - operator_cpu_start;
    let issued = scrape(admin_port, "grpc_operator_certificates_issued_total").await;

    proxy.clear_requests();
    let apiserver_cpu_idle_start = cpu_seconds(apiserver_pid);
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let apiserver_cpu_idle = cpu_seconds(apiserver_pid) - apiserver_cpu_idle_start;
    let idle_records = proxy.requests();
    let idle_writes = idle_records.iter().filter(|r| r.verb.is_write()).count();
    let peak_rss = rss_kib(pid, "VmHWM:");
    let idle_rss = rss_kib(pid, "VmRSS:");

    // Deleted children: time until the operator recreated each one.
    let mut recreate_ms: Vec<f64> = Vec::new();
    for i in 0..args.deletions {
        let name = format!("svc-{:04}", i % args.objects.max(1));
        let (api, kind): (Api<kube::api::DynamicObject>, &str) = if i % 2 == 0 {
            let ar = kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&());
            (Api::namespaced_with(client.clone(), &ns.name, &ar), "Service")
        } else {
            let ar = kube::discovery::ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
            (Api::namespaced_with(client.clone(), &ns.name, &ar), "Deployment")
        };
        let old = api.get(&name).await?.metadata.uid;
        api.delete(&name, &kube::api::DeleteParams::background()).await?;
        let deleted = Instant::now();
        loop {
            if let Some(obj) = api.get_opt(&name).await?
                && obj.metadata.uid != old
            {
                break;
            }
            anyhow::ensure!(
                deleted.elapsed() < Duration::from_secs(60),
                "{kind} {name} not recreated in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        recreate_ms.push(deleted.elapsed().as_secs_f64() * 1000.0);
        // Let the recreated Deployment settle before the next deletion.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    recreate_ms.sort_by(f64::total_cmp);

    // A second full reconcile pass: a restarted operator reconciles every
    // object once, with every certificate current. It must write nothing.
    drop(operator.lock().map(|mut o| o.take()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.clear_requests();
    let second_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let second = Operator(start_operator(second_port)?);
    let second_start = Instant::now();
    let second_pass = loop {
        let done = scrape(second_port, "grpc_operator_reconcile_total").await;
        if done >= n_objects(&args) {
            break second_start.elapsed();
        }
        anyhow::ensure!(
            second_start.elapsed() < Duration::from_secs(300),
            "second pass: {done} reconciles in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second_records = proxy.requests();
    let second_writes = second_records.iter().filter(|r| r.verb.is_write()).count();
    let second_reads = second_records.iter().filter(|r| r.verb == grpc_operator_testkit::Verb::Get).count();
    drop(second);

    let ops = &converge_records;
    let n = args.objects as f64;
    let mut by_verb: BTreeMap<String, usize> = BTreeMap::new();
    for r in ops {
        *by_verb
            .entry(format!(
                "{:?} {}{}",
                r.verb,
                r.resource,
                r.subresource.as_ref().map(|s| format!("/{s}")).unwrap_or_default()
            ))
            .or_default() += 1;
    }
    let writes = ops.iter().filter(|r| r.verb.is_write()).count();
    let event_writes = ops.iter().filter(|r| r.verb.is_write() && r.resource == "events").count();
    let failed = ops.iter().filter(|r| r.status >= 400 && r.status != 404).count();

    println!("| metric | value |");
    println!("|---|---|");
    println!("| objects | {} |", args.objects);
    println!("| created in (harness, 64 in flight) | {:.2} s |", created_in.as_secs_f64());
    println!("| time to converge (all Ready=True) | {:.2} s |", converged_in.as_secs_f64());
    println!("| reconciles per object | {:.2} |", reconciles / n);
    println!("| write requests per object (all) | {:.2} |", writes as f64 / n);
    println!("| of which Events | {:.2} |", event_writes as f64 / n);
    println!("| operator requests answered >= 400 (not 404) | {failed} |");
    println!("| writes during {} s idle | {idle_writes} |", args.idle_seconds);
    println!(
        "| second full reconcile pass (operator restarted): writes / GETs / time | {second_writes} / {second_reads} / {:.1} s |",
        second_pass.as_secs_f64()
    );
    println!("| certificates issued | {issued} |");
    println!("| operator CPU while converging (issuing included) | {operator_cpu_converge:.1} s |");
    println!("| kube-apiserver CPU while converging | {apiserver_cpu_converge:.1} s |");
    println!("| kube-apiserver CPU during {} s idle | {apiserver_cpu_idle:.1} s |", args.idle_seconds);
    println!("| operator RSS before objects | {:.1} MiB |", baseline_rss as f64 / 1024.0);
    println!("| operator RSS converged | {:.1} MiB |", converged_rss as f64 / 1024.0);
    println!("| operator RSS after idle | {:.1} MiB |", idle_rss as f64 / 1024.0);
    println!("| operator peak RSS (VmHWM) | {:.1} MiB |", peak_rss as f64 / 1024.0);
    println!(
        "| RSS per object ((converged - before) / N) | {:.2} KiB |",
        (converged_rss.saturating_sub(baseline_rss)) as f64 / n
    );
    if !recreate_ms.is_empty() {
        let median = recreate_ms[recreate_ms.len() / 2];
        let max = recreate_ms.last().copied().unwrap_or_default();
        println!(
            "| deleted child recreated ({} deletions, Service and Deployment alternately): median / max | {median:.0} ms / {max:.0} ms |",
            recreate_ms.len()
        );
    }
    println!();
    println!("| operator requests during convergence | total | per object |");
    println!("|---|---|---|");
    for (k, v) in &by_verb {
        println!("| {k} | {v} | {:.2} |", *v as f64 / n);
    }
    drop(ns);
    Ok(())
}
