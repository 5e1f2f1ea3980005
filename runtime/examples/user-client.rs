//! Calls the user service: `GetUser`, `CreateUser` and the `ListUsers` stream.
//!
//! ```text
//! cargo run -p grpc-runtime --example user-client -- http://127.0.0.1:50051
//! ```

#[path = "user-service/service.rs"]
#[allow(dead_code)]
mod service;

use service::pb::user_service_client::UserServiceClient;
use service::pb::{CreateUserRequest, GetUserRequest, ListUsersRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let channel = tonic::transport::Endpoint::from_shared(target)?.connect().await?;
    let mut client = UserServiceClient::new(channel);

    let alice = client.get_user(GetUserRequest { user_id: 1 }).await?.into_inner();
    println!("GetUser(1) = {alice:?}");
    match client.get_user(GetUserRequest { user_id: 999 }).await {
        Ok(user) => println!("GetUser(999) = {:?}", user.into_inner()),
        Err(status) => println!("GetUser(999) failed: {:?} {}", status.code(), status.message()),
    }
    let mut request =
        tonic::Request::new(CreateUserRequest { name: "carol".into(), tags: vec!["new".into()] });
    request.metadata_mut().insert("x-request-id", "user-client-1".parse()?);
    let response = client.create_user(request).await?;
    let echoed =
        response.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    println!("CreateUser = {:?} (x-request-id echoed: {echoed})", response.into_inner());
    let mut stream = client.list_users(ListUsersRequest::default()).await?.into_inner();
    while let Some(user) = stream.message().await? {
        println!("ListUsers: {user:?}");
    }
    Ok(())
}
