//! Deadlines, concurrency limit, message size limits and panic recovery: each answers the right
//! status, and the server keeps serving afterwards.

use std::time::{Duration, Instant};

use tonic::Code;

use crate::harness::{TestServer, metric_value, misbehaving_server};
use crate::service::pb::{CreateUserRequest, GetUserRequest, ListUsersRequest};

fn get(id: i64) -> tonic::Request<GetUserRequest> {
    tonic::Request::new(GetUserRequest { user_id: id })
}

async fn still_serving(server: &TestServer) {
    let mut client = server.client().await;
    let user = client.get_user(get(7)).await.expect("a normal call still succeeds").into_inner();
    assert_eq!(user.name, "user-7");
}

#[tokio::test]
async fn a_client_deadline_is_answered_with_deadline_exceeded_not_cancelled() {
    let server = TestServer::start(misbehaving_server()).await;
    // A bare HTTP/2 call: a gRPC client library enforces `grpc-timeout` itself and would report
    // its own CANCELLED first; this test is about what the server answers.
    let started = Instant::now();
    let (code, _) = crate::harness::raw_grpc_call(
        server.grpc,
        "/user.v1.UserService/GetUser",
        &GetUserRequest { user_id: -1 },
        &[("grpc-timeout", "200m")],
    )
    .await;
    assert_eq!(code, Code::DeadlineExceeded as i32);
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "answered at the deadline, not when the handler finished"
    );
    let series = r#"grpc_server_handled_total{grpc_code="DeadlineExceeded",grpc_method="GetUser",grpc_service="user.v1.UserService",grpc_type="unary"}"#;
    assert_eq!(metric_value(server.admin, series).await, 1.0);
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn the_server_default_deadline_applies_when_the_client_sends_none() {
    let server = TestServer::start(
        misbehaving_server().configure(|c| c.limits.default_deadline = Some(Duration::from_millis(300))),
    )
    .await;
    let mut client = server.client().await;
    let status = client.get_user(get(-1)).await.expect_err("slow call hits the server default");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The handler sees the deadline it runs under.
    let user = client.get_user(get(-3)).await.expect("context call").into_inner();
    let remaining: u64 =
        user.name.split('|').nth(3).and_then(|s| s.parse().ok()).expect("deadline in context");
    assert!(remaining <= 300 && remaining > 0, "remaining {remaining} ms");
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_deadline_cuts_a_response_stream_with_deadline_exceeded() {
    let server = TestServer::start(misbehaving_server()).await;
    let mut client = server.client().await;
    let mut request = tonic::Request::new(ListUsersRequest::default());
    request.set_timeout(Duration::from_millis(450));
    let mut stream = client.list_users(request).await.expect("stream starts").into_inner();
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("an endless stream cannot end OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!((2..=5).contains(&received), "received {received} messages before the deadline");
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_with_resource_exhausted() {
    let server =
        TestServer::start(misbehaving_server().configure(|c| c.limits.max_concurrent_rpcs = 2)).await;
    let client = server.client().await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move { c.get_user(get(-1)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = client.clone().get_user(get(5)).await.expect_err("third concurrent call is shed");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    for call in slow {
        call.await.expect("join").expect("the calls holding permits succeed");
    }
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_request_and_response_messages_fail_with_resource_exhausted() {
    let server = TestServer::start(misbehaving_server().configure(|c| {
        c.limits.max_decoding_message_size = 1024;
        c.limits.max_encoding_message_size = 4096;
    }))
    .await;
    let mut client = server.client().await;
    let status = client
        .create_user(CreateUserRequest { name: "y".repeat(4096), tags: vec![] })
        .await
        .expect_err("request over the decode limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("exceeds the limit of 1024 bytes"), "{status:?}");
    let status = client
        .create_user(CreateUserRequest { name: "big".into(), tags: vec![] })
        .await
        .expect_err("response over the encode limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let ok = client.create_user(CreateUserRequest { name: "small".into(), tags: vec![] }).await;
    assert_eq!(ok.expect("a small message passes").into_inner().name, "small");
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_and_is_counted() {
    let server = TestServer::start(misbehaving_server()).await;
    let mut client = server.client().await;
    let status = client.get_user(get(-2)).await.expect_err("panic becomes a status");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error", "the panic text stays in the server log");

    let mut request = tonic::Request::new(ListUsersRequest::default());
    request.metadata_mut().insert("x-panic-stream", "1".parse().expect("value"));
    let mut stream = client.list_users(request).await.expect("stream starts").into_inner();
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("stream must end with INTERNAL"),
            Err(status) => break status,
        }
    };
    assert_eq!((received, status.code()), (2, Code::Internal), "{status:?}");
    assert_eq!(metric_value(server.admin, grpc_runtime::metrics::PANICS_RECOVERED_TOTAL).await, 2.0);
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn http2_settings_advertise_the_configured_stream_limit_and_oversized_metadata_is_refused() {
    let server =
        TestServer::start(misbehaving_server().configure(|c| c.limits.max_concurrent_streams = 37)).await;
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let request = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", server.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = send.send_request(request, false).expect("send");
    body.send_data(vec![0u8, 0, 0, 0, 0].into(), true).expect("empty message");
    let mut response = response.await.expect("response");
    assert_eq!(response.status(), http::StatusCode::OK);
    // The server's SETTINGS frame has been processed once a response arrived.
    assert_eq!(send.current_max_send_streams(), 37, "SETTINGS_MAX_CONCURRENT_STREAMS on the wire");
    while response.body_mut().data().await.is_some() {}
    drop((send, response));
    driver.abort();

    // Metadata beyond max_header_list_size (16 KiB) never reaches a handler.
    let mut client = server.client().await;
    let mut request = get(1);
    request.metadata_mut().insert("x-padding", "p".repeat(20 << 10).parse().expect("value"));
    let status = client.get_user(request).await.expect_err("oversized metadata is refused");
    assert_ne!(status.code(), Code::Ok);
    still_serving(&server).await;
    server.stop().await;
}
