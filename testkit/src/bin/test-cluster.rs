//! `test-cluster`: a real Kubernetes control plane on loopback, for trying
//! the operator by hand and for scripts (e2e, benchmarks).
//!
//! ```sh
//! cargo run -p grpc-operator-testkit --bin test-cluster -- --kubeconfig /tmp/kc
//! KUBECONFIG=/tmp/kc kubectl get nodes
//! ```
//!
//! It builds missing components (scripts/build-test-infra.sh), starts etcd,
//! kube-apiserver (RBAC, admission, audit log), kube-controller-manager,
//! kube-scheduler and kwok with one untainted fake node, writes the admin
//! kubeconfig to `--kubeconfig` atomically once the API answers and the node
//! is Ready, and serves until SIGTERM or SIGINT (or, with
//! `--exit-on-stdin-close`, until its standard input closes); then it stops
//! every process it started.

use std::path::PathBuf;

use clap::Parser;
use grpc_operator_testkit::Cluster;
use tokio::io::AsyncReadExt as _;

#[derive(Parser, Debug)]
#[command(about = "A real Kubernetes control plane (kwok nodes) on loopback, for tests")]
struct Args {
    /// Where to write the admin kubeconfig once the cluster is ready (written atomically).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Also stop when standard input reaches end of file (for a parent process
    /// that holds the pipe: the cluster goes when the parent goes).
    #[arg(long)]
    exit_on_stdin_close: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let start = tokio::task::spawn_blocking(Cluster::start);
    // A signal during start-up still deletes what was started: the cluster
    // value is dropped (and so deleted) when the start finishes.
    let mut cluster = tokio::select! {
        c = start => c??,
        _ = term.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    let tmp = args.kubeconfig.with_extension("tmp");
    std::fs::copy(&cluster.info.kubeconfig, &tmp)?;
    std::fs::rename(&tmp, &args.kubeconfig)?;
    tracing::info!(
        kubeconfig = %args.kubeconfig.display(),
        audit_log = %cluster.info.audit_log.display(),
        "cluster ready; SIGTERM or SIGINT stops it"
    );
    let stdin_closed = async {
        if args.exit_on_stdin_close {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
        () = stdin_closed => {}
    }
    tracing::info!("stopping the cluster");
    // The kubeconfig points at a cluster that is about to be gone.
    let _ = std::fs::remove_file(&args.kubeconfig);
    tokio::task::spawn_blocking(move || cluster.stop()).await?;
    Ok(())
}
