//! The user service on grpc-runtime, configured by the workload contract's environment
//! (`GRPC_PORT` 50051 and `ADMIN_PORT` 9090 by default).
//!
//! ```text
//! cargo run -p grpc-runtime --example user-service
//! grpcurl -plaintext 127.0.0.1:50051 list
//! curl 127.0.0.1:9090/metrics
//! ```
//!
//! With `EXAMPLE_FAULT_INJECTION=1`, `GetUser` fails with the code named in the
//! `x-example-fail` metadata (`grpcurl -H 'x-example-fail: unavailable' ...`), to drive
//! error-rate alerts and dashboards.

mod service;

use grpc_runtime::Server;
use service::pb::user_service_server::UserServiceServer;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = async {
        Server::from_env()?
            .add_service(UserServiceServer::new(
                service::Users::with_seed()
                    .with_faults(std::env::var("EXAMPLE_FAULT_INJECTION").is_ok_and(|v| v == "1")),
            ))
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
            // Also printed to stderr: the subscriber may not be installed when config fails.
            eprintln!("user-service: {err}");
            tracing::error!(error = %err, "user-service failed");
            std::process::ExitCode::FAILURE
        }
    }
}
