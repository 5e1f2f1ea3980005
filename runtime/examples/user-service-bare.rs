//! The user service on bare tonic (no runtime layers, health, reflection or telemetry): the
//! baseline of the runtime benchmark (`runtime-bench`). Serves h2c on `GRPC_PORT` until SIGTERM.

#[path = "user-service/service.rs"]
#[allow(dead_code)]
mod service;

use service::pb::user_service_server::UserServiceServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("GRPC_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(50051);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    tonic::transport::Server::builder()
        .add_service(UserServiceServer::new(service::Users::with_seed()))
        .serve_with_shutdown(addr, async {
            grpc_runtime::server::shutdown_signal().await;
        })
        .await?;
    Ok(())
}
