//! Runs the Kubernetes API double until SIGTERM/SIGINT.

use clap::Parser;
use grpc_operator_testkit::FakeApiServer;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Kubernetes API server double for tests (plain HTTP, no auth)")]
struct Args {
    /// Where to write the kubeconfig once listening (written atomically).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let server = FakeApiServer::start_on(args.addr).await?;
    server.write_kubeconfig(&args.kubeconfig)?;
    tracing::info!(url = %server.url(), kubeconfig = %args.kubeconfig.display(), "fake apiserver listening");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
