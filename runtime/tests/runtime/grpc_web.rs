//! gRPC-Web over HTTP/1.1 from real browser-side clients: `buf curl --protocol grpcweb` and
//! `@connectrpc/connect-web` in Node, plus the CORS preflight browsers send first.

use crate::harness::{TestServer, describe, http1, repo_root, require_tool, run, user_proto, user_server};

const ALLOWED: &str = "http://app.example.test";
const REFUSED: &str = "http://evil.example.test";

async fn web_server() -> TestServer {
    TestServer::start(user_server().configure(|c| {
        c.web_origins = grpc_runtime::WebOrigins::List(vec![ALLOWED.to_string()]);
    }))
    .await
}

#[tokio::test]
async fn buf_curl_calls_unary_and_server_streaming_methods_over_grpc_web() {
    let Some(buf) = require_tool("buf") else { return };
    let server = web_server().await;
    let schema = user_proto();
    let base = server.url();
    // `buf curl --protocol grpcweb` with the proto file as schema: one call, its output.
    let call = |method: &str, data: &str| {
        let mut cmd = tokio::process::Command::new(&buf);
        cmd.args(["curl", "--protocol", "grpcweb", "--schema"])
            .arg(&schema)
            .args(["-d", data])
            .arg(format!("{base}/user.v1.UserService/{method}"));
        async move { run(&mut cmd).await }
    };

    let out = call("GetUser", r#"{"userId": 1}"#).await;
    assert!(out.status.success(), "{}", describe(&out));
    let user: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!((user["id"].as_str(), user["name"].as_str()), (Some("1"), Some("alice")));

    // NOT_FOUND travels in the gRPC-Web trailer frame; buf curl exits with code × 8.
    let out = call("GetUser", r#"{"userId": 99}"#).await;
    assert_eq!(out.status.code(), Some(5 * 8), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"), "{}", describe(&out));

    let out = call("ListUsers", "{}").await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("alice") && text.contains("bob"), "{}", describe(&out));
    server.stop().await;
}

#[tokio::test]
async fn connect_web_from_node_calls_every_method_from_an_allowed_origin() {
    let Some(node) = require_tool("node") else { return };
    let server = web_server().await;
    let script = repo_root().join("runtime/tests/peers/connect_web_client.mjs");
    let out = run(tokio::process::Command::new(node).arg(script).args([
        "--base-url",
        &server.url(),
        "--origin",
        ALLOWED,
        "--calls",
        "get,create,list",
    ]))
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert_eq!(result["get"]["ok"], true, "{result}");
    assert_eq!(result["get"]["user"]["name"], "alice", "{result}");
    assert_eq!(result["create"]["ok"], true, "{result}");
    let users = result["list"]["users"].as_array().expect("list users");
    assert!(users.len() >= 3, "alice, bob and the created user: {result}");
    let headers = &result["get"]["headers"];
    assert_eq!(headers["access-control-allow-origin"], ALLOWED, "{result}");
    let exposed = headers["access-control-expose-headers"].as_str().unwrap_or_default();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{header} not exposed: {exposed}");
    }
    server.stop().await;
}

async fn preflight(server: &TestServer, origin: &str) -> String {
    let request = format!(
        "OPTIONS /user.v1.UserService/GetUser HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,grpc-timeout\r\n\
         Connection: close\r\n\r\n",
        server.grpc
    );
    let (status, text) = http1(server.grpc, &request).await;
    assert!((200..300).contains(&status), "preflight answered {status}:\n{text}");
    text.to_ascii_lowercase()
}

#[tokio::test]
async fn cors_preflight_allows_the_configured_origin_and_refuses_others() {
    let server = web_server().await;
    let allowed = preflight(&server, ALLOWED).await;
    assert!(allowed.contains(&format!("access-control-allow-origin: {ALLOWED}")), "{allowed}");
    assert!(allowed.contains("access-control-allow-methods: post"), "{allowed}");
    let allow_headers = allowed
        .lines()
        .find_map(|l| l.strip_prefix("access-control-allow-headers: "))
        .expect("allow-headers")
        .to_string();
    for header in ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"] {
        assert!(allow_headers.contains(header), "{header} not allowed: {allow_headers}");
    }

    // A refused origin gets no allow-origin header, so the browser blocks the call.
    let refused = preflight(&server, REFUSED).await;
    assert!(!refused.contains("access-control-allow-origin"), "{refused}");
    server.stop().await;
}
