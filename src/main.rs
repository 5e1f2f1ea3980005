//! The `grpc-operator` binary: `crd`, `render`, `run`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;

use grpc_operator::admin;
use grpc_operator::children::Registry;
use grpc_operator::health::{Health, HealthConfig};
use grpc_operator::metrics::Metrics;
use grpc_operator::pki::trust::{PkiSettings, Trust};
use grpc_operator::reconcile::{ReconcileConfig, error_chain};
use grpc_operator::render::{self, Source};
use grpc_operator::run::{self, ControllerOptions};
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "grpc-operator", version, about = "Kubernetes operator for gRPC microservices")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the GrpcService CustomResourceDefinition as YAML.
    Crd,
    /// Print, offline, the objects the controller would apply for GrpcService manifests.
    Render {
        /// A manifest file, a directory of manifests, or `-` for standard input. Repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
        /// The SPIFFE trust domain of the operator the output is for.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// The cluster DNS domain of the operator the output is for.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// The gRPC-Web sidecar image of the operator the output is for.
        #[arg(long, default_value = grpc_operator::children::envoy_config::DEFAULT_ENVOY_IMAGE)]
        envoy_image: String,
    },
    /// Run the controller against the cluster of the kubeconfig (or in-cluster config).
    Run(RunArgs),
    /// Operate the operator's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Ask the running operator to rotate its CA with overlapping trust (4 stages; see docs/tls.md).
    Rotate(CaArgs),
}

#[derive(clap::Args)]
struct CaArgs {
    /// Namespace of the CA Secret (default: POD_NAMESPACE, otherwise the kubeconfig's namespace).
    #[arg(long, env = "CA_SECRET_NAMESPACE")]
    ca_secret_namespace: Option<String>,
    /// Name of the CA Secret.
    #[arg(long, default_value = "grpc-operator-ca")]
    ca_secret_name: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only these namespaces, comma-separated (default, or empty: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    namespace: String,
    /// Address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Maximum concurrent reconciles.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Seconds between periodic re-checks of a healthy GrpcService (plus a random part of up to as much again).
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// /readyz fails once the API server has not answered for this many seconds.
    #[arg(long, default_value_t = 30)]
    api_unreachable_seconds: u64,
    /// /healthz fails once a reconcile has run this many seconds while the API server answers.
    #[arg(long, default_value_t = 600)]
    stall_seconds: u64,
    /// Milliseconds to wait after a trigger before reconciling, merging bursts of events.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// SPIFFE trust domain of the workload identities (spiffe://<trust-domain>/ns/<ns>/sa/<sa>).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Cluster DNS domain, for the <name>.<ns>.svc.<cluster-domain> name of certificates.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    #[command(flatten)]
    ca: CaArgs,
    /// Validity of a root CA the operator creates, in hours (default 10 years).
    #[arg(long, default_value_t = 87_600)]
    ca_validity_hours: u64,
    /// During a CA rotation, seconds to wait after every leaf Secret is written, for kubelets to sync the volumes and workloads to reload them.
    #[arg(long, default_value_t = 120)]
    ca_propagation_delay_seconds: u64,
    /// Image of the gRPC-Web Envoy sidecar, unless a GrpcService sets spec.grpcWeb.envoy.image.
    #[arg(long, env = "ENVOY_IMAGE", default_value = grpc_operator::children::envoy_config::DEFAULT_ENVOY_IMAGE)]
    envoy_image: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match grpc_operator::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Render { files, trust_domain, cluster_domain, envoy_image } => {
            let sources: Vec<Source> = files.iter().map(|f| Source::parse(f)).collect();
            let pki = PkiSettings { trust_domain, cluster_domain, ..PkiSettings::default() };
            match render::render(&sources, &render::RenderSettings { pki, envoy_image }) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Ca { command: CaCommand::Rotate(args) } => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(&e),
            };
            match runtime.block_on(rotate(args)) {
                Ok(note) => {
                    println!("{note}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", error_chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            init_logging(args.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(&e),
            };
            match runtime.block_on(run_operator(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %error_chain(e.as_ref()), "grpc-operator failed");
                    eprintln!("error: {}", error_chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", error_chain(e));
    ExitCode::FAILURE
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn kube_config() -> Result<kube::Config, BoxError> {
    Ok(kube::Config::infer().await.map_err(|e| {
        format!("no Kubernetes configuration found (set KUBECONFIG, or run in a pod): {}", error_chain(&e))
    })?)
}

/// The CA Secret's namespace: the flag, else the operator's own namespace,
/// else the kubeconfig's.
fn ca_namespace(args: &CaArgs, config: &kube::Config) -> String {
    args.ca_secret_namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| config.default_namespace.clone())
}

async fn rotate(args: CaArgs) -> Result<String, BoxError> {
    let mut config = kube_config().await?;
    run::tune_client_config(&mut config);
    let namespace = ca_namespace(&args, &config);
    let client = kube::Client::try_from(config)?;
    grpc_operator::pki::ca_manager::request_rotation(client, &namespace, &args.ca_secret_name).await?;
    Ok(format!(
        "rotation of CA Secret {namespace}/{} requested; follow it with `kubectl get events -n {namespace} --field-selector reason=CARotation` or the grpc_operator_ca_rotation_stage metric",
        args.ca_secret_name
    ))
}

async fn run_operator(args: RunArgs) -> Result<(), BoxError> {
    let mut config = kube_config().await?;
    let ca_namespace = ca_namespace(&args.ca, &config);
    run::tune_client_config(&mut config);
    let cluster_url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)?;
    let namespaces = run::parse_namespaces(&args.namespace);
    run::preflight(&client, &cluster_url, &namespaces).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics = Metrics::new()?;
    let health = Health::new(HealthConfig {
        unreachable_after: Duration::from_secs(args.api_unreachable_seconds),
        stall_after: Duration::from_secs(args.stall_seconds),
        ..HealthConfig::default()
    });
    let (addr, admin_server) =
        admin::serve(args.admin_addr, metrics.clone(), health.clone(), stopped(stop_rx.clone())).await?;
    info!(%addr, %cluster_url, namespaces = ?namespaces, "grpc-operator starting");
    let admin_task = tokio::spawn(admin_server);

    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown signal received; draining");
        let _ = stop_tx.send(true);
    });

    if args.envoy_image.trim().is_empty() || args.envoy_image.chars().any(char::is_whitespace) {
        return Err(format!(
            "--envoy-image {:?}: must be an image reference without whitespace",
            args.envoy_image
        )
        .into());
    }
    grpc_contract::spiffe::check_id(&format!("spiffe://{}", args.trust_domain))
        .map_err(|e| format!("--trust-domain {:?}: {}", args.trust_domain, e.reason()))?;
    let trust = Trust::new(PkiSettings {
        trust_domain: args.trust_domain,
        cluster_domain: args.cluster_domain,
        ca_namespace,
        ca_name: args.ca.ca_secret_name,
        ca_validity: Duration::from_secs(args.ca_validity_hours.saturating_mul(3600)),
        propagation_delay: Duration::from_secs(args.ca_propagation_delay_seconds),
    });
    let opts = ControllerOptions {
        registry: Registry::configured(Arc::clone(&trust), args.envoy_image),
        trust: Some(trust),
        namespaces,
        reconcile: ReconcileConfig {
            resync: Duration::from_secs(args.resync_seconds),
            ..ReconcileConfig::default()
        },
        concurrency: args.concurrency,
        instance: std::env::var("POD_NAME").ok(),
        debounce: Duration::from_millis(args.debounce_ms),
        ..ControllerOptions::default()
    };
    run::run_controller(client, opts, metrics, health, stopped(stop_rx)).await;
    admin_task.await??;
    info!("grpc-operator stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
