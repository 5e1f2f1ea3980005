//! gzip, as teams moving from grpc-go use it: requests compressed by real clients are accepted,
//! responses are compressed when the client asks, and a small compressed message that inflates
//! past the limit is refused before it is inflated.

use std::io::Write;
use std::process::Output;

use bytes::Bytes;
use serde_json::Value;

use crate::harness::{
    TestServer, describe, metric_value, misbehaving_server, repo_root, require_tool, run, user_server,
};

/// Runs a peer client and parses the one JSON line it prints.
async fn peer_json(cmd: &mut tokio::process::Command) -> (Value, Output) {
    let out = run(cmd).await;
    assert!(out.status.success(), "the peer crashed: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
    let parsed = serde_json::from_str(&line).unwrap_or_else(|_| panic!("no JSON line: {}", describe(&out)));
    (parsed, out)
}

/// One call over a raw HTTP/2 connection with the given request frame and headers; returns the
/// response headers, the response messages as (compressed flag, payload) and the grpc-status.
async fn raw_call(
    addr: std::net::SocketAddr,
    path: &str,
    frame: Vec<u8>,
    headers: &[(&str, &str)],
) -> (http::HeaderMap, Vec<(u8, Vec<u8>)>, Option<i32>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2");
    let driver = tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let mut builder = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let (response, mut body) = send.send_request(builder.body(()).expect("request"), false).expect("send");
    body.send_data(Bytes::from(frame), true).expect("body");
    let response = response.await.expect("response");
    let headers = response.headers().clone();
    let status_of =
        |h: &http::HeaderMap| h.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
    if let Some(code) = status_of(&headers) {
        driver.abort();
        return (headers, Vec::new(), Some(code));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    driver.abort();
    let mut messages = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        messages.push((rest[0], rest[5..5 + len].to_vec()));
        rest = &rest[5 + len..];
    }
    (headers, messages, status_of(&trailers))
}

fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn gzip(payload: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(payload).expect("compress");
    encoder.finish().expect("finish")
}

/// `CreateUserRequest { name }`, encoded.
fn create_request(name: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&crate::service::pb::CreateUserRequest { name: name.into(), tags: vec![] })
}

#[tokio::test]
async fn grpcio_with_gzip_calls_every_method() {
    let Some(python) = require_tool("python-peers") else { return };
    let server = TestServer::start(user_server()).await;
    let client = repo_root().join("runtime/tests/peers/grpcio_client.py");
    let command = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(&client).args(["--target", &server.grpc.to_string(), "--insecure", "--gzip"]).args(args);
        cmd
    };
    let (get, out) = peer_json(&mut command(&["--call", "get", "--user-id", "1"])).await;
    assert_eq!(
        (get["ok"].as_bool(), get["user"]["name"].as_str()),
        (Some(true), Some("alice")),
        "{}",
        describe(&out)
    );
    let long = "n".repeat(4000);
    let (created, out) = peer_json(&mut command(&["--call", "create", "--name", &long])).await;
    assert_eq!(created["user"]["name"].as_str(), Some(long.as_str()), "{}", describe(&out));
    let (list, out) = peer_json(&mut command(&["--call", "list"])).await;
    assert!(list["users"].as_array().is_some_and(|u| u.len() >= 3), "{}", describe(&out));
    let received = metric_value(
        server.admin,
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"CreateUser\",grpc_service=\"user.v1.UserService\",grpc_type=\"unary\"}",
    )
    .await;
    assert_eq!(received, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn responses_are_compressed_only_when_the_client_accepts_gzip_and_requests_inflate_within_the_limit() {
    let server = TestServer::start(misbehaving_server()).await;
    // CreateUser("big") answers an 8 KiB name: worth compressing.
    let big = frame(0, &create_request("big"));
    let (headers, messages, status) = raw_call(
        server.grpc,
        "/user.v1.UserService/CreateUser",
        big.clone(),
        &[("grpc-accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, Some(0));
    assert_eq!(headers.get("grpc-encoding").map(|v| v.as_bytes()), Some(&b"gzip"[..]));
    assert_eq!(headers.get("grpc-accept-encoding").map(|v| v.as_bytes()), Some(&b"gzip,identity"[..]));
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, 1, "the big message is sent compressed");
    assert!(messages[0].1.len() < 1024, "8 KiB of one letter compresses well: {} bytes", messages[0].1.len());
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(messages[0].1.as_slice()), &mut inflated)
        .expect("valid gzip");
    let user: crate::service::pb::User = prost::Message::decode(inflated.as_slice()).expect("a User");
    assert_eq!(user.name.len(), 8 << 10);

    // Without grpc-accept-encoding: plain.
    let (headers, messages, _) = raw_call(server.grpc, "/user.v1.UserService/CreateUser", big, &[]).await;
    assert!(headers.get("grpc-encoding").is_none());
    assert_eq!(messages[0].0, 0);

    // A compressed request.
    let compressed = frame(1, &gzip(&create_request("zipped")));
    let (_, messages, status) =
        raw_call(server.grpc, "/user.v1.UserService/CreateUser", compressed, &[("grpc-encoding", "gzip")])
            .await;
    assert_eq!(status, Some(0));
    let user: crate::service::pb::User = prost::Message::decode(messages[0].1.as_slice()).expect("a User");
    assert_eq!(user.name, "zipped");

    // 16 MiB of zeros compress to about 16 KiB: refused once inflating passes the 4 MiB limit.
    let bomb = frame(1, &gzip(&create_request(&"\0".repeat(16 << 20))));
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let (_, _, status) =
        raw_call(server.grpc, "/user.v1.UserService/CreateUser", bomb, &[("grpc-encoding", "gzip")]).await;
    assert_eq!(status, Some(tonic::Code::ResourceExhausted as i32));

    // An encoding the server does not have.
    let (headers, _, status) = raw_call(
        server.grpc,
        "/user.v1.UserService/CreateUser",
        frame(1, b"??"),
        &[("grpc-encoding", "snappy")],
    )
    .await;
    assert_eq!(status, Some(tonic::Code::Unimplemented as i32));
    assert!(headers.get("grpc-message").is_some_and(|m| m.to_str().unwrap_or("").contains("gzip")));
    server.stop().await;
}

#[tokio::test]
async fn grpc_go_with_gzip_sends_compressed_requests_and_gets_compressed_responses() {
    let Some(go) = require_tool("go-peer-client") else { return };
    let server = TestServer::start(user_server()).await;
    let command = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&go);
        cmd.args(["--target", &server.grpc.to_string(), "--insecure"]).args(args);
        cmd
    };
    let (get, out) = peer_json(&mut command(&["--call", "get", "--user-id", "1", "--gzip"])).await;
    assert_eq!(get["ok"], true, "{}", describe(&out));
    assert_eq!(get["user"]["name"], "alice", "{}", describe(&out));
    assert_eq!(get["response_compressed"], true, "grpc-encoding: gzip answered: {}", describe(&out));
    let long = "g".repeat(4000);
    let (created, out) = peer_json(&mut command(&["--call", "create", "--name", &long, "--gzip"])).await;
    assert_eq!(created["user"]["name"].as_str(), Some(long.as_str()), "{}", describe(&out));
    let (list, out) = peer_json(&mut command(&["--call", "list", "--gzip"])).await;
    assert!(list["users"].as_array().is_some_and(|u| u.len() >= 3), "{}", describe(&out));
    assert_eq!(list["response_compressed"], true, "{}", describe(&out));
    // Without --gzip the request goes plain; grpc-go (with gzip registered) still lists gzip in
    // grpc-accept-encoding, so the answer may be compressed, and is decoded either way.
    let (plain, out) = peer_json(&mut command(&["--call", "get", "--user-id", "2"])).await;
    assert_eq!(plain["user"]["name"], "bob", "{}", describe(&out));
    let (health, out) = peer_json(&mut command(&["--call", "health"])).await;
    assert_eq!(health["status"], "SERVING", "{}", describe(&out));
    server.stop().await;
}
