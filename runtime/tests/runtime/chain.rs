//! The interceptor chain seen from a client: authentication outcomes, request metadata reaching
//! handlers, and the request id echoed back.

use tonic::Code;

use crate::harness::{TestServer, metric_value, misbehaving_server};
use crate::service::pb::GetUserRequest;

fn context_call() -> tonic::Request<GetUserRequest> {
    tonic::Request::new(GetUserRequest { user_id: -3 })
}

fn with(
    mut request: tonic::Request<GetUserRequest>,
    key: &'static str,
    value: &str,
) -> tonic::Request<GetUserRequest> {
    request.metadata_mut().insert(key, value.parse().expect("metadata value"));
    request
}

#[tokio::test]
async fn bearer_token_auth_answers_unauthenticated_permission_denied_or_lets_the_call_through() {
    let tokens = grpc_runtime::BearerTokens::new().allow("good-token", "ci-bot").allow_services(
        "other-token",
        "reporting",
        ["reports.v1.Reports"],
    );
    let server = TestServer::start(misbehaving_server().authenticator(tokens)).await;
    let mut client = server.client().await;

    let status = client.get_user(context_call()).await.expect_err("no credentials");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status =
        client.get_user(with(context_call(), "authorization", "Bearer nope")).await.expect_err("bad token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client
        .get_user(with(context_call(), "authorization", "Bearer other-token"))
        .await
        .expect_err("wrong service");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let user = client
        .get_user(with(context_call(), "authorization", "Bearer good-token"))
        .await
        .expect("valid token")
        .into_inner();
    let principal = user.name.split('|').nth(2).expect("principal field");
    assert_eq!(principal, "ci-bot", "the principal reaches the handler");

    // Rejections are counted like any other outcome.
    let series = r#"grpc_server_handled_total{grpc_code="Unauthenticated",grpc_method="GetUser",grpc_service="user.v1.UserService",grpc_type="unary"}"#;
    assert_eq!(metric_value(server.admin, series).await, 2.0);

    // Health checks need no credentials (probes and load balancers call them).
    let channel =
        tonic::transport::Endpoint::from_shared(server.url()).expect("url").connect().await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health is exempt from auth");
    assert_eq!(
        reply.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

#[tokio::test]
async fn request_id_and_tenant_reach_the_handler_and_the_request_id_is_echoed() {
    let server = TestServer::start(misbehaving_server()).await;
    let mut client = server.client().await;

    let request = with(with(context_call(), "x-request-id", "req-42"), "x-tenant-id", "acme");
    let response = client.get_user(request).await.expect("call");
    assert_eq!(response.metadata().get("x-request-id").expect("echoed"), "req-42");
    let fields: Vec<String> = response.into_inner().name.split('|').map(str::to_string).collect();
    assert_eq!((fields[0].as_str(), fields[1].as_str()), ("req-42", "acme"));

    // Absent (or unusable) request ids are generated, and the generated one is echoed.
    let response =
        client.get_user(with(context_call(), "x-request-id", "has spaces in it")).await.expect("call");
    let echoed =
        response.metadata().get("x-request-id").expect("echoed").to_str().expect("ascii").to_string();
    let seen = response.into_inner().name.split('|').next().expect("id").to_string();
    assert_eq!(echoed.len(), 32, "generated ids are 128-bit hex: {echoed}");
    assert_eq!(seen, echoed, "the handler sees the id the client gets back");

    // Errors answered by a layer (trailers-only responses) carry it too.
    let status = client
        .get_user(with(tonic::Request::new(GetUserRequest { user_id: -2 }), "x-request-id", "req-panic"))
        .await
        .expect_err("panic");
    assert_eq!(status.metadata().get("x-request-id").expect("echoed on errors"), "req-panic");
    server.stop().await;
}

#[tokio::test]
async fn mtls_allow_list_without_a_client_certificate_is_unauthenticated() {
    // Plaintext connection: there is no peer identity, so the allow-list refuses.
    let allow = grpc_runtime::MtlsAllowList::new()
        .allow_spiffe_id("spiffe://cluster.local/ns/a/sa/b")
        .expect("valid pattern");
    let server = TestServer::start(misbehaving_server().authenticator(allow)).await;
    let mut client = server.client().await;
    let status = client.get_user(context_call()).await.expect_err("no certificate");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn readyz_fails_while_any_registered_service_is_not_serving() {
    let server = TestServer::start(misbehaving_server()).await;
    let (status, _) = crate::harness::admin_get(server.admin, "/readyz").await;
    assert_eq!(status, 200);
    server.health.set_serving("user.v1.UserService", false).await;
    let (status, body) = crate::harness::admin_get(server.admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("user.v1.UserService is not SERVING"), "{body}");
    assert_eq!(crate::harness::admin_get(server.admin, "/healthz").await.0, 200, "liveness is unaffected");
    server.health.set_serving("user.v1.UserService", true).await;
    assert_eq!(crate::harness::admin_get(server.admin, "/readyz").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn traceparent_and_baggage_from_the_caller_reach_the_handler() {
    // What Telemetry::init installs; in-process test servers skip the global setup.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry::propagation::TextMapCompositePropagator::new(vec![
            Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
            Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
        ]),
    );
    let server = TestServer::start(misbehaving_server()).await;
    let mut client = server.client().await;
    let request = with(
        with(context_call(), "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        "baggage",
        "plan=gold,region=eu",
    );
    let fields: Vec<String> = client
        .get_user(request)
        .await
        .expect("call")
        .into_inner()
        .name
        .split('|')
        .map(str::to_string)
        .collect();
    assert_eq!(fields[4], "4bf92f3577b34da6a3ce929d0e0e4736", "the caller's trace continues");
    assert_eq!(fields[5], "gold", "baggage reaches the handler");

    // Without a traceparent, a new trace starts.
    let fields: Vec<String> = client
        .get_user(context_call())
        .await
        .expect("call")
        .into_inner()
        .name
        .split('|')
        .map(str::to_string)
        .collect();
    assert_eq!(fields[4].len(), 32);
    assert_ne!(fields[4], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(fields[5], "");
    server.stop().await;
}
