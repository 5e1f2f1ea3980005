//! grpcurl (1.8, speaks reflection v1alpha only) against the user service.

use crate::harness::{TestServer, describe, require_tool, run, user_server};

#[tokio::test]
async fn grpcurl_checks_health_lists_services_by_reflection_and_gets_a_user() {
    let Some(grpcurl) = require_tool("grpcurl") else { return };
    let server = TestServer::start(user_server()).await;
    let addr = server.grpc.to_string();

    let out = run(tokio::process::Command::new(&grpcurl).args(["-plaintext", &addr, "list"])).await;
    assert!(out.status.success(), "{}", describe(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    for service in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "user.v1.UserService",
    ] {
        assert!(listing.lines().any(|l| l.trim() == service), "{service} missing from:\n{listing}");
    }

    let out = run(tokio::process::Command::new(&grpcurl).args([
        "-plaintext",
        &addr,
        "grpc.health.v1.Health/Check",
    ]))
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\": \"SERVING\""), "{}", describe(&out));

    let out = run(tokio::process::Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        r#"{"service": "user.v1.UserService"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]))
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"), "{}", describe(&out));

    let out = run(tokio::process::Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        r#"{"user_id": 1}"#,
        &addr,
        "user.v1.UserService/GetUser",
    ]))
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let user: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON user");
    assert_eq!(user["name"], "alice");
    assert_eq!(user["id"], "1", "int64 is a JSON string");

    // An unknown id is NOT_FOUND (grpcurl exits 64 + code).
    let out = run(tokio::process::Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        r#"{"user_id": 404}"#,
        &addr,
        "user.v1.UserService/GetUser",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(64 + 5), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "{}", describe(&out));

    server.stop().await;
}

#[tokio::test]
async fn the_descriptors_compiled_by_protox_match_protoc() {
    use prost::Message;
    let Some(protoc) = require_tool("protoc") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("user.pb");
    let proto_root = crate::harness::repo_root().join("runtime/proto");
    let result = run(tokio::process::Command::new(protoc)
        .arg(format!("--proto_path={}", proto_root.display()))
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("user/v1/user.proto"))
    .await;
    assert!(result.status.success(), "{}", describe(&result));
    let reference = prost_types::FileDescriptorSet::decode(std::fs::read(&out).expect("read").as_slice())
        .expect("decode");
    let ours =
        prost_types::FileDescriptorSet::decode(crate::service::pb::FILE_DESCRIPTOR_SET).expect("decode");
    let strip = |mut set: prost_types::FileDescriptorSet| {
        // protox keeps source info only when asked; compare the schema itself.
        for file in &mut set.file {
            file.source_code_info = None;
        }
        set
    };
    assert_eq!(strip(ours), strip(reference), "protox and protoc disagree on user/v1/user.proto");
}
