//! What an unfriendly or careless client cannot do: starve unary calls with long-lived streams,
//! reach a handler with something that is not gRPC, stall the accept path with silent sockets,
//! or keep idle connections forever; and what a careless operator cannot do: start a server with
//! an invalid override or a service the chain cannot describe.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tonic::Code;

use crate::harness::{
    TestServer, http1, metric_value, misbehaving_server, raw_grpc_call, test_config, user_server,
};
use crate::service::pb::GetUserRequest;

/// An HTTP/2 connection from the `h2` crate, for exact control over streams.
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl H2 {
    async fn connect(addr: SocketAddr) -> H2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        H2 { send: send.ready().await.expect("ready"), driver }
    }

    /// Starts a call with one message; returns the response (headers) future's result and body.
    async fn call(
        &mut self,
        path: &str,
        message: &[u8],
    ) -> Result<http::Response<h2::RecvStream>, h2::Error> {
        let request = http::Request::post(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let mut send = self.send.clone().ready().await?;
        let (response, mut body) = send.send_request(request, false)?;
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        body.send_data(frame.into(), true)?;
        response.await
    }
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The `grpc-status` of a trailers-only response, if it is one.
fn trailers_only_status(response: &http::Response<h2::RecvStream>) -> Option<i32> {
    response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok())
}

/// Reads until the peer closes (or resets) the connection; returns what it sent.
async fn read_until_closed(mut tcp: tokio::net::TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GetUserRequest { user_id: 1 }`.
const GET_USER_1: &[u8] = &[0x08, 0x01];

#[tokio::test]
async fn two_thousand_health_watch_streams_do_not_starve_unary_calls() {
    // Misbehaving's ListUsers streams forever, so a stream holds its permits.
    let server = TestServer::start(misbehaving_server()).await;
    // 2,000 Watch streams over 40 connections (50 each: the per-connection streaming budget
    // with the default 100 HTTP/2 streams).
    let mut connections = Vec::new();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut conn = H2::connect(server.grpc).await;
        for _ in 0..50 {
            let response = conn.call("/grpc.health.v1.Health/Watch", &[]).await.expect("watch answered");
            match trailers_only_status(&response) {
                None => open.push(response),
                Some(8) => refused += 1,
                Some(other) => panic!("Watch answered grpc-status {other}"),
            }
        }
        connections.push(conn);
    }
    // The health budget (256 by default) admits some; the rest are refused, not queued.
    assert_eq!(open.len() + refused, 2000);
    assert!(!open.is_empty() && refused > 0, "open {} refused {refused}", open.len());

    // Health checks still succeed: Watch streams have a budget apart from Check's.
    let check =
        H2::connect(server.grpc).await.call("/grpc.health.v1.Health/Check", &[]).await.expect("check");
    assert_eq!(trailers_only_status(&check), None, "Check is served while Watch streams are at their limit");

    // Unary calls still succeed: on a fresh connection, and on a connection full of streams.
    let mut client = server.client().await;
    for id in 1..=20 {
        let user = client.get_user(GetUserRequest { user_id: 1 }).await.expect("unary call succeeds");
        assert_eq!(user.into_inner().id, 1, "call {id}");
    }
    let busy = connections.first_mut().expect("a connection");
    let response = busy.call("/user.v1.UserService/GetUser", GET_USER_1).await.expect("unary answered");
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(trailers_only_status(&response), None, "GetUser is served on a connection holding streams");

    // One connection cannot hold more streaming calls than its budget, whatever the server has.
    let mut greedy = H2::connect(server.grpc).await;
    let mut codes = Vec::new();
    for _ in 0..60 {
        let response = greedy.call("/user.v1.UserService/ListUsers", &[]).await.expect("answered");
        codes.push(trailers_only_status(&response));
        std::mem::forget(response); // keep the stream open
    }
    assert_eq!(codes.iter().filter(|c| c.is_none()).count(), 50, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == Some(8)).count(), 10, "{codes:?}");
    drop((open, connections, greedy));
    server.stop().await;
}

#[tokio::test]
async fn requests_that_are_not_grpc_never_reach_a_handler() {
    let web = misbehaving_server()
        .configure(|c| c.web_origins = grpc_runtime::WebOrigins::List(vec!["https://*.example.com".into()]));
    let server = TestServer::start(web).await;
    let started = "grpc_server_started_total{grpc_method=\"GetUser\",grpc_service=\"user.v1.UserService\",grpc_type=\"unary\"}";
    // GetUser(1): had any of these reached the chain, grpc_server_started_total would move.
    let frame = "\0\0\0\0\x02\x08\x01";
    let post = |content_type: &str, origin: &str| {
        format!(
            "POST /user.v1.UserService/GetUser HTTP/1.1\r\nHost: api\r\nOrigin: {origin}\r\n\
             Content-Type: {content_type}\r\nX-Grpc-Web: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{frame}",
            frame.len()
        )
    };
    // What a page on any site can send without a preflight: a `no-cors` text/plain POST.
    let (status, text) = http1(server.grpc, &post("text/plain;charset=UTF-8", "https://evil.io")).await;
    assert_eq!(status, 415, "{text}");
    // gRPC-Web from an origin that is not allowed: refused before any handler.
    let (status, text) = http1(server.grpc, &post("application/grpc-web+proto", "https://evil.io")).await;
    assert_eq!(status, 403, "{text}");
    let (status, text) =
        http1(server.grpc, &post("application/grpc-web+proto", "https://app.example.com.evil.io")).await;
    assert_eq!(status, 403, "{text}");
    // Native gRPC over HTTP/1.1.
    let (status, text) = http1(server.grpc, &post("application/grpc", "https://app.example.com")).await;
    assert_eq!(status, 505, "{text}");
    assert_eq!(metric_value(server.admin, started).await, 0.0);

    // A wildcard origin's subdomain is served, with its CORS headers.
    let get1 = "\0\0\0\0\x02\x08\x01";
    let request = format!(
        "POST /user.v1.UserService/GetUser HTTP/1.1\r\nHost: api\r\nOrigin: https://app.example.com\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{get1}",
        get1.len()
    );
    let (status, text) = http1(server.grpc, &request).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("access-control-allow-origin: https://app.example.com"),
        "{text}"
    );
    assert_eq!(metric_value(server.admin, started).await, 1.0);
    server.stop().await;

    // Without GRPC_WEB_ORIGINS the server speaks HTTP/2 only: HTTP/1.1 gets no response.
    let server = TestServer::start(misbehaving_server()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.grpc).await.expect("connect");
    let request = post("application/grpc-web+proto", "https://app.example.com");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await.expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(5), read_until_closed(tcp)).await.expect("closed");
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"), "{answer:?}");
    assert_eq!(metric_value(server.admin, started).await, 0.0);
    // Over HTTP/2, a content type that is not gRPC is refused with 415.
    let mut h2 = H2::connect(server.grpc).await;
    let request = http::Request::post("http://localhost/user.v1.UserService/GetUser")
        .header("content-type", "application/json")
        .body(())
        .expect("request");
    let (response, mut body) = h2.send.send_request(request, false).expect("send");
    body.send_data(Bytes::from_static(b"{}"), true).expect("body");
    assert_eq!(response.await.expect("response").status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(metric_value(server.admin, started).await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn a_service_without_descriptors_is_an_error_at_bind() {
    use crate::service::pb::user_service_server::UserServiceServer;
    let server = grpc_runtime::Server::new(test_config())
        .without_telemetry_init()
        .add_service(UserServiceServer::new(crate::harness::Misbehaving));
    let err = server.bind().await.expect_err("no descriptors");
    assert!(
        matches!(err, grpc_runtime::ServeError::MissingDescriptors { service: "user.v1.UserService" }),
        "{err}"
    );
    assert!(err.to_string().contains("file_descriptor_set"), "{err}");
}

#[tokio::test]
async fn invalid_builder_overrides_are_errors_naming_the_setting_not_panics() {
    type Change = Box<dyn FnOnce(&mut grpc_runtime::Config)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|c| c.shutdown.timeout = Duration::MAX), "SHUTDOWN_TIMEOUT"),
        (Box::new(|c| c.shutdown.drain_delay = Duration::from_secs(7200)), "SHUTDOWN_DRAIN_DELAY"),
        (Box::new(|c| c.limits.max_concurrent_rpcs = 0), "limits.max_concurrent_rpcs"),
        (Box::new(|c| c.limits.max_decoding_message_size = 0), "limits.max_decoding_message_size"),
        (Box::new(|c| c.limits.max_connection_age = Duration::MAX), "limits.max_connection_age"),
        (Box::new(|c| c.limits.keepalive_interval = Duration::ZERO), "limits.keepalive_interval"),
        (Box::new(|c| c.limits.max_control_frames = 0), "limits.max_control_frames"),
        (Box::new(|c| c.log_filter = "info,[".into()), "RUST_LOG"),
        (
            Box::new(|c| c.limits.max_streaming_rpcs_per_connection = Some(100)),
            "limits.max_streaming_rpcs_per_connection",
        ),
        (
            Box::new(|c| c.web_origins = grpc_runtime::WebOrigins::List(vec!["https://a.*.com".into()])),
            "GRPC_WEB_ORIGINS",
        ),
    ];
    for (change, variable) in cases {
        let server = misbehaving_server().configure(change);
        let err = server.bind().await.expect_err("refused");
        match &err {
            grpc_runtime::ServeError::Config(config) => assert_eq!(config.variable, variable, "{err}"),
            other => panic!("{variable}: expected a configuration error, got {other}"),
        }
    }
}

#[tokio::test]
async fn reflection_can_be_switched_off() {
    let server = TestServer::start(user_server().configure(|c| c.reflection = false)).await;
    let (code, _) = raw_grpc_call(
        server.grpc,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        &GetUserRequest { user_id: 1 },
        &[],
    )
    .await;
    assert_eq!(code, Code::Unimplemented as i32);
    server.stop().await;
}

#[tokio::test]
async fn the_default_listener_is_dual_stack() {
    // `[::]` is the default address; port 0 here. Clients connect over loopback only.
    let mut config = test_config();
    config.grpc_addr = "[::]:0".parse().expect("addr");
    let server = grpc_runtime::Server::new(config)
        .without_telemetry_init()
        .add_service(crate::service::pb::user_service_server::UserServiceServer::new(
            crate::service::Users::with_seed(),
        ))
        .file_descriptor_set(crate::service::pb::FILE_DESCRIPTOR_SET);
    let server = TestServer::start(server).await;
    let port = server.grpc.port();
    for host in ["127.0.0.1", "[::1]"] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
            .expect("url")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect over {host}: {e}"));
        let mut client = crate::service::pb::user_service_client::UserServiceClient::new(channel);
        client
            .get_user(GetUserRequest { user_id: 1 })
            .await
            .unwrap_or_else(|e| panic!("call over {host}: {e}"));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_silent_plaintext_connection_is_closed_after_the_preface_timeout_and_an_idle_one_gets_goaway() {
    let server = TestServer::start(misbehaving_server().configure(|c| {
        c.limits.preface_timeout = Duration::from_millis(300);
        c.limits.max_connection_idle = Duration::from_secs(1);
    }))
    .await;
    let silent = tokio::net::TcpStream::connect(server.grpc).await.expect("connect");
    tokio::time::timeout(Duration::from_secs(3), read_until_closed(silent))
        .await
        .expect("the server closes a silent connection");

    // A connection that made a call and then went quiet is closed with GOAWAY after the idle time.
    let mut conn = H2::connect(server.grpc).await;
    let response = conn.call("/user.v1.UserService/GetUser", GET_USER_1).await.expect("call");
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    let _ = body.trailers().await;
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut conn.driver).await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    assert!(started.elapsed() >= Duration::from_millis(700), "closed too early: {:?}", started.elapsed());
    server.stop().await;
}
