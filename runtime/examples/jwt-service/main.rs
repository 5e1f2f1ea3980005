//! The user service behind JWT bearer authentication: [`authenticator::JwtAuthenticator`]
//! checks every call (health excepted) against the issuer's JWKS.
//!
//! ```text
//! JWKS_URL=https://issuer.example/.well-known/jwks.json JWT_ISSUER=https://issuer.example \
//! JWT_AUDIENCE=user-service cargo run -p grpc-runtime --example jwt-service
//! ```

mod authenticator;
#[path = "../user-service/service.rs"]
mod service;

use grpc_runtime::Server;
use service::pb::user_service_server::UserServiceServer;

fn required(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} must be set"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = async {
        let jwks: http::Uri = required("JWKS_URL")?.parse().map_err(|e| format!("JWKS_URL: {e}"))?;
        let authenticator =
            authenticator::JwtAuthenticator::new(jwks, &required("JWT_ISSUER")?, &required("JWT_AUDIENCE")?)?;
        Server::from_env()
            .map_err(|e| e.to_string())?
            .add_service(UserServiceServer::new(service::Users::with_seed()))
            .file_descriptor_set(service::pb::FILE_DESCRIPTOR_SET)
            .authenticator(authenticator)
            .bind()
            .await
            .map_err(|e| e.to_string())?
            .serve()
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jwt-service: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
